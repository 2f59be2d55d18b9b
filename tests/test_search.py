"""`structsel search`: every method end to end on a tiny budget, Occam's razor, regret, retrain."""
import json

import jax
import numpy as np
import pytest

from structsel import cli
from structsel.data import make_dataset
from structsel.family import discrete_model
from structsel.search import enumeration, methods, retrain, runner

TINY = "tiny"  # width 4, 10 training steps, 4 outer steps: seconds per method after compiling


@pytest.fixture(scope="module")
def digits():
    return runner.load_data(dataset="digits", data=None, target=None, task=None,
                            split_seed=0, budget=runner.parse_budget(TINY))


def _files(workdir):
    return {p.name for p in workdir.iterdir()}


GRADIENT = [n for n, m in methods.METHODS.items() if isinstance(m, methods.GradientSearch)]
BLACKBOX = ["random", "reinforce"]


@pytest.mark.parametrize("method", GRADIENT + BLACKBOX)
def test_every_method_runs_and_writes_its_workdir(method, digits, tmp_path):
    config = runner.search_config(method=method, space="mlp1", budget=TINY,
                                  workdir=str(tmp_path / method), seeds=2)
    summary = runner.run_search(config, progress=False, dataset=digits)
    space_ops = ("zero", "identity", "linear", "dense_relu", "dense_tanh")
    assert set(summary["selected"]) == {"0->1"}
    assert summary["selected"]["0->1"] in space_ops
    if method in GRADIENT and methods.METHODS[method].exclude_zero:
        # DARTS' derivation rule: the zero op is never selected.
        assert summary["selected"]["0->1"] != "zero"
    gamma = np.array(list(summary["gamma"]["0->1"].values()))
    assert gamma.shape == (5,) and np.all(gamma >= 0) and abs(gamma.sum() - 1) < 1e-4
    assert 0.0 <= summary["test_metric"] <= 1.0 and summary["num_evaluations"] >= 1
    assert summary["params"] > 0 and summary["method"] == method and summary["seed"] == 0
    files = _files(tmp_path / method)
    assert {"config.json", "metrics.jsonl", "summary.json", "structure.json",
            "cell.png"} <= files
    if method in GRADIENT:
        assert "gamma.png" in files
        lines = (tmp_path / method / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == runner.parse_budget(TINY).search_steps
        assert np.isfinite(json.loads(lines[-1])["outer_loss"])


def test_adanet_reports_its_ensemble(digits, tmp_path):
    config = runner.search_config(method="adanet", space="mlp1", budget=TINY,
                                  workdir=str(tmp_path / "a"))
    summary = runner.run_search(config, progress=False, dataset=digits)
    ens = summary["extra"]["adanet"]["ensemble"]
    assert 1 <= len(ens) <= 2 and summary["space"] == "adanet"
    # params = sum over members of (weights + 1 mixture weight); width 4, 64 -> 10 classes.
    expect = sum(64 * 4 + 4 * 4 * (m["depth"] - 1) + 4 * 10 + 1 for m in ens)
    assert summary["params"] == expect
    assert summary["test_metric"] > 0.1  # better than chance even on the tiny budget


def test_regret_and_rank_come_from_the_table(digits, tmp_path, monkeypatch):
    # A hand-made table for mlp1 x digits: the structure ranked r has test accuracy 1 - r/10.
    order = [2, 0, 4, 1, 3]  # choice 2 is the best, then 0, 4, 1, 3
    acc = {c: 1.0 - r / 10 for r, c in enumerate(order)}
    table = enumeration.make_table(
        space="mlp1", dataset="digits", op_names=[("zero", "identity", "linear", "dense_relu",
                                                   "dense_tanh")],
        choices=[[c] for c in range(5)], params=[1] * 5,
        val=[[acc[c]] for c in range(5)], test=[[acc[c]] for c in range(5)],
        higher_is_better=True, settings={}, command="by hand")
    path = enumeration.save_table(table, tmp_path / "table.json")
    monkeypatch.setattr(enumeration, "table_path", lambda space, dataset: path)
    config = runner.search_config(method="random", space="mlp1", budget=TINY,
                                  workdir=str(tmp_path / "r"))
    summary = runner.run_search(config, progress=False, dataset=digits)
    choice = summary["choice"][0]
    assert summary["rank"] == order.index(choice) + 1
    assert summary["regret"] == pytest.approx(1.0 - acc[choice])


def _occam_data(kind, seed=0, n=1000, d=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if kind == "linear":
        y = x @ rng.normal(size=d)
    else:  # strongly nonlinear: a saturating and a quadratic term (no product terms)
        y = 3.0 * np.tanh(2.0 * x[:, 0]) + 2.0 * (x[:, 1] ** 2 - 1.0)
    y = y + 0.1 * rng.normal(size=n)
    return make_dataset(x, y, name=kind, seed=seed, task="regression")


@pytest.mark.slow
def test_occams_razor_linear_target_selects_a_smaller_model(tmp_path):
    """Same amount of data (1000 rows): the Bayesian search selects fewer parameters for a
    target linear in the features than for a strongly nonlinear one (3 restarts, fixed
    seeds, the restart with the best validation RMSE after retraining is selected). The
    stem and readout are linear, so the identity op already gives a linear model."""
    budget = "small,width=4,search_steps=100,inner_steps=5,retrain_seeds=1"
    summaries = {}
    for kind in ("linear", "nonlinear"):
        config = runner.search_config(method="bayes", space="mlp1", budget=budget, seeds=3,
                                      workdir=str(tmp_path / kind))
        summaries[kind] = runner.run_search(config, progress=False, dataset=_occam_data(kind))
    assert summaries["linear"]["selected"]["0->1"] in ("identity", "zero")
    assert summaries["linear"]["params"] < summaries["nonlinear"]["params"], summaries


def test_retrain_rebuilds_the_selected_structure(digits, tmp_path, capsys):
    workdir = tmp_path / "s"
    assert cli.main(["search", "--space", "mlp3", "--method", "random", "--budget", TINY,
                     "--workdir", str(workdir), "--no-progress"]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    structure = json.loads((workdir / "structure.json").read_text())
    assert cli.main(["retrain", "--structure", str(workdir / "structure.json"),
                     "--budget", TINY, "--seeds", "1", "--no-progress"]) == 0
    rerun = json.loads((workdir / "retrain" / "summary.json").read_text())
    assert rerun["selected"] == summary["selected"]
    assert rerun["params"] == summary["params"]  # the same model, counted independently
    # The rebuilt discrete family keeps exactly the selected op on every live edge.
    problem = runner.make_problem(digits, "mlp3", runner.parse_budget(TINY))
    space, sub = retrain.rebuild(structure, num_outputs=10)
    labels = {op["label"] for e in structure["edges"] for op in e["ops"]}
    assert {op.label for edge in sub.edges for op in edge.ops} == labels
    # ... and computes what the supernet computes at the selected simplex vertex.
    w = space.family.init(jax.random.key(0), problem.data.x_train[:1])
    _, select = discrete_model(space.family, structure)
    np.testing.assert_allclose(sub.apply(select(w), sub.ones_gamma(), problem.data.x_val),
                               space.family.apply(w, space.gamma(summary["choice"]),
                                                  problem.data.x_val), rtol=1e-5, atol=1e-5)
    assert "Traceback" not in capsys.readouterr().err
