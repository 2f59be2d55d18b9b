"""`structsel` CLI: bad data and bad arguments end with one stderr line and exit code 2."""
import subprocess
import sys

import numpy as np
import pytest

from structsel import cli


def _write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def _good_rows(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return [[round(float(a), 3), round(float(b), 3), int(c)]
            for a, b, c in zip(rng.normal(size=n), rng.normal(size=n), rng.integers(0, 2, n))]


BAD_DATA = {
    "missing file": lambda tmp: (["--data", str(tmp / "nope.csv")], "not found"),
    "unknown column": lambda tmp: (
        ["--data", str(_write_csv(tmp / "d.csv", ["a", "b", "label"], _good_rows())),
         "--target", "klass"], "unknown target column"),
    "non-numeric": lambda tmp: (
        ["--data", str(_write_csv(tmp / "d.csv", ["a", "b", "label"],
                                  _good_rows()[:5] + [["x1", 0.5, 1]] + _good_rows()[5:]))],
        "not numeric"),
    "inf": lambda tmp: (
        ["--data", str(_write_csv(tmp / "d.csv", ["a", "b", "label"],
                                  _good_rows()[:3] + [["inf", 0.1, 0]] + _good_rows()[3:]))],
        "contain inf"),
    "one class": lambda tmp: (
        ["--data", str(_write_csv(tmp / "d.csv", ["a", "b", "label"],
                                  [[r[0], r[1], 1] for r in _good_rows()])),
         "--task", "classification"], "at least 2 classes"),
    "too few rows": lambda tmp: (
        ["--data", str(_write_csv(tmp / "d.csv", ["a", "b", "label"], _good_rows(n=5)))],
        "too few rows"),
    "text target for regression": lambda tmp: (
        ["--data", str(_write_csv(tmp / "d.csv", ["a", "b", "label"],
                                  [[r[0], r[1], "gh"[r[2]]] for r in _good_rows()])),
         "--task", "regression"], "regression needs a numeric target"),
    "empty text label": lambda tmp: (
        ["--data", str(_write_csv(tmp / "d.csv", ["a", "b", "label"],
                                  [[r[0], r[1], "gh"[r[2]]] for r in _good_rows()[:4]]
                                  + [[0.1, 0.2, ""]] + [[r[0], r[1], "g"] for r in _good_rows()]))],
        "target column 'label' has no value on 1 row(s) (first at line 6"),
    "unknown method": lambda tmp: (["--method", "magic"], "method must be one of"),
    "unknown space": lambda tmp: (["--space", "resnet"], "space must be one of"),
    "bad budget": lambda tmp: (["--budget", "tiny,steps=3"], "budget override"),
    "bad batching": lambda tmp: (["--budget", "tiny,batching=pmap"],
                                 "budget batching must be one of ('auto', 'vmap', 'map')"),
    "relaxation of a black-box method": lambda tmp: (
        ["--method", "random", "--relaxation", "dirichlet"], "gradient methods only"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path, capsys):
    args, expected = BAD_DATA[case](tmp_path)
    workdir = tmp_path / "run"
    budget = [] if "--budget" in args else ["--budget", "tiny"]
    code = cli.main(["search", *args, *budget, "--workdir", str(workdir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("structsel: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert not workdir.exists()  # nothing was run


def test_retrain_missing_structure_is_exit_code_2(tmp_path, capsys):
    code = cli.main(["retrain", "--structure", str(tmp_path / "structure.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "structure file not found" in err


def test_optuna_missing_is_one_clear_line(tmp_path, capsys, monkeypatch):
    # optuna is an optional extra: without it the method is refused with one clear line,
    # before anything runs. sys.modules[name] = None makes `import optuna` raise ImportError.
    monkeypatch.setitem(sys.modules, "optuna", None)
    code = cli.main(["search", "--method", "optuna", "--workdir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install optuna" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_console_script_exit_code_in_a_subprocess(tmp_path):
    # The real process boundary: exit status 2, a single stderr line, no traceback.
    proc = subprocess.run([sys.executable, "-m", "structsel.cli", "search", "--data",
                           str(tmp_path / "missing.npz")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "data file not found" in proc.stderr


def test_argparse_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["search", "--seeds", "0"])
    assert exc.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err


# --- seeds, splits, text labels, references ----------------------------------------------

def test_seed_seeds_the_split_unless_split_seed_is_given():
    from structsel.search import runner

    assert runner.search_config(seed=3, budget="tiny").split_seed == 3
    assert runner.search_config(seed=3, split_seed=0, budget="tiny").split_seed == 0
    search_help = " ".join(cli.build_parser()._subparsers._group_actions[0]
                           .choices["search"].format_help().split())
    assert "seed of the train / validation / test split, the initialisations and the search" \
        in search_help and "--split-seed" in search_help


def _labelled_csv(path, n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    label = np.where(x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=n) > 0, "h", "g")
    return _write_csv(path, ["a", "b", "c", "class"],
                      [[*np.round(r, 3), c] for r, c in zip(x, label)])


def test_text_labels_search_and_retrain_agree(tmp_path, capsys):
    import json

    data = _labelled_csv(tmp_path / "gh.csv")
    workdir = tmp_path / "s"
    assert cli.main(["search", "--data", str(data), "--target", "class", "--space", "mlp1",
                     "--method", "random", "--budget", "tiny", "--seed", "2",
                     "--no-gradient-boosting", "--workdir", str(workdir),
                     "--no-progress"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads((workdir / "summary.json").read_text())
    structure = json.loads((workdir / "structure.json").read_text())
    assert summary["classes"] == structure["classes"] == ["g", "h"]
    assert summary["split"]["seed"] == structure["split"]["seed"] == 2  # --seed seeds the split
    assert "classes" in out and "0: g, 1: h" in out and "baseline linear" in out
    assert set(summary["baselines"]) == {"constant", "linear"}
    # The tiny budget cannot beat logistic regression: the linear model is returned, said
    # so on stderr, in summary.json and in structure.json (which retrain refits).
    assert summary["model"] == "linear" and structure["format"] == "structsel.linear/1"
    assert summary["val_metric"] == summary["fallback"]["linear_val"]
    assert structure["replaces"]["space"] == "mlp1"
    assert err.startswith("structsel: warning: the selected structure does not beat the "
                          "linear model on validation") and "Traceback" not in err
    assert cli.main(["retrain", "--structure", str(workdir / "structure.json"), "--data",
                     str(data), "--target", "class", "--no-progress"]) == 0
    rerun = json.loads((workdir / "retrain" / "summary.json").read_text())
    assert rerun["classes"] == ["g", "h"] and rerun["split"] == summary["split"]
    assert rerun["val_metric"] == pytest.approx(summary["val_metric"], abs=1e-6)
    assert rerun["test_metric"] == pytest.approx(summary["test_metric"], abs=1e-6)
    assert rerun["params"] == summary["params"] == 4  # 3 weights + bias (binary: one column)


def test_other_split_is_not_scored_like_for_like(tmp_path, capsys):
    from structsel.search import runner

    config = runner.search_config(space="mlp3", method="random", budget="tiny", seed=1,
                                  workdir=str(tmp_path / "d"), gradient_boosting=False,
                                  fallback=False)
    summary = runner.run_search(config, progress=False)
    assert summary["split"]["seed"] == 1 and summary["table_matches_split"] is False
    assert summary["table_like_for_like"] is False and summary["model"] == "selected structure"
    assert "not like for like" in runner.format_summary(summary)
    assert any("returning it anyway" in w for w in summary["warnings"])  # tiny budget


def test_no_fallback_keeps_the_structure_and_retrain_counts_it_alike(tmp_path, capsys):
    import json

    data = _labelled_csv(tmp_path / "gh.csv", seed=1)
    workdir = tmp_path / "k"
    assert cli.main(["search", "--data", str(data), "--space", "mlp3", "--method", "random",
                     "--budget", "tiny", "--no-fallback", "--no-gradient-boosting",
                     "--workdir", str(workdir), "--no-progress"]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    structure = json.loads((workdir / "structure.json").read_text())
    assert summary["model"] == "selected structure" and "fallback" not in summary
    assert structure["format"] == "structsel.structure/1" and structure["classes"] == ["g", "h"]
    assert cli.main(["retrain", "--structure", str(workdir / "structure.json"), "--data",
                     str(data), "--budget", "tiny", "--seeds", "1", "--no-progress"]) == 0
    rerun = json.loads((workdir / "retrain" / "summary.json").read_text())
    assert rerun["selected"] == summary["selected"] and rerun["classes"] == ["g", "h"]
    assert rerun["params"] == summary["params"]  # path counting on the rebuilt model
    assert rerun["split"] == summary["split"]
    assert "Traceback" not in capsys.readouterr().err


def test_text_columns_and_missing_values_search_and_retrain(tmp_path, capsys):
    """A table with a text column, a two-valued text column, missing numbers and an
    identifier: the search encodes it on its training rows, says so on the terminal and
    in summary.json / structure.json, and retrain applies the recorded encoding (same
    columns, same params, the same selected model)."""
    import json

    rng = np.random.default_rng(3)
    n = 120
    a, b = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    label = np.where(a + (colour == "red") + 0.3 * rng.normal(size=n) > 0.4, "yes", "no")
    rows = [["" if i % 11 == 0 else round(float(a[i]), 3), round(float(b[i]), 3), colour[i],
             "MF"[i % 2], f"p{i}", label[i]] for i in range(n)]
    data = _write_csv(tmp_path / "mixed.csv", ["a", "b", "colour", "sex", "id", "label"], rows)
    workdir = tmp_path / "m"
    assert cli.main(["search", "--data", str(data), "--space", "mlp1", "--method", "random",
                     "--budget", "tiny", "--no-fallback", "--no-gradient-boosting",
                     "--workdir", str(workdir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((workdir / "summary.json").read_text())
    structure = json.loads((workdir / "structure.json").read_text())
    assert summary["encoding"] == structure["encoding"]
    assert [c["kind"] for c in structure["encoding"]["columns"]] == [
        "numeric", "numeric", "categorical", "categorical", "dropped"]
    assert summary["feature_names"] == ["a", "a (missing)", "b", "colour=blue", "colour=green",
                                        "colour=red", "sex=M"]
    assert "text columns" in out and "colour (3), sex (2)" in out
    assert "filled with the training median: a (+ indicator)" in out and "id (no value" in out
    assert cli.main(["retrain", "--structure", str(workdir / "structure.json"), "--data",
                     str(data), "--budget", "tiny", "--seeds", "1", "--no-progress"]) == 0
    rerun = json.loads((workdir / "retrain" / "summary.json").read_text())
    assert rerun["selected"] == summary["selected"] and rerun["params"] == summary["params"]
    assert rerun["split"] == summary["split"]
