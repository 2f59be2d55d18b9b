"""`structsel search`: every method end to end on a tiny budget, Occam's razor, regret, retrain."""
import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest

from structsel import cli
from structsel.data import make_dataset
from structsel.family import discrete_model
from structsel.search import enumeration, methods, retrain, runner, spaces

TINY = "tiny"  # width 4, 10 training steps, 4 outer steps: seconds per method after compiling


@pytest.fixture(scope="module")
def digits():
    return runner.load_data(dataset="digits", data=None, target=None, task=None,
                            split_seed=0, budget=runner.parse_budget(TINY))


def _files(workdir):
    return {p.name for p in workdir.iterdir()}


GRADIENT = [n for n, m in methods.METHODS.items() if isinstance(m, methods.GradientSearch)]
BLACKBOX = ["random", "reinforce", "optuna"]


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow)
                                    if m in ("bayes", "bayes_outer") else m
                                    for m in GRADIENT + BLACKBOX])  # the default bayes_inner is not slow
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
    if getattr(methods.METHODS[method], "path", ()):
        # the complexity path: one run per KL weight c, every proposal retrained, the front
        path = methods.METHODS[method].path
        assert summary["kl_weight_path"] == sorted(path, reverse=True)
        assert set(summary["kl_weight"]) <= set(path)
        levels = 2 if methods.METHODS[method].structure_level == "both" else 1
        assert len(summary["restart_choices"]) == 2 * len(path) * levels
        front = json.loads((tmp_path / method / "front.json").read_text())
        assert sum(r["chosen"] for r in front["candidates"]) == 1
        assert {"front.json", "front.png"} <= files


class _SeparableReward:
    """Black box R(a) = -sum_e (a_e - target_e)^2 on mlp3's 125 structures (one optimum)."""

    target = np.array([3, 0, 4])

    def __init__(self):
        self.count, self.seen = 0, []

    def reward(self, choices, *, key):
        choices = np.asarray(choices)
        self.count += len(choices)
        self.seen += [tuple(c) for c in choices]
        return -np.sum((choices - self.target) ** 2, axis=1).astype(float)


def test_optuna_tpe_adaptor_finds_the_optimum_of_a_separable_reward():
    """The adaptor maps each edge to its own categorical parameter and back: on a separable
    reward with one optimum TPE (pinned optuna, seeded) reaches it within 40 of 125
    evaluations (random search would with probability 40/125), and the same key repeats
    the same trials."""
    problem = runner.Problem(spaces.build_space("mlp3", num_outputs=2, width=4), None, None,
                             runner.parse_budget("default,evaluations=40"), "toy")
    runs = []
    for _ in range(2):
        box = _SeparableReward()
        outcome = methods.METHODS["optuna"].search(problem, box, key=jax.random.key(7),
                                                   restarts=1)
        runs.append(box.seen)
        assert box.count == outcome.num_evaluations == 40
        np.testing.assert_array_equal(outcome.choices[0], _SeparableReward.target)
        assert outcome.gamma.shape == (1, 3, 5) and outcome.gamma[0, 0, 3] == 1.0
    assert runs[0] == runs[1]


def test_restart_batching_of_the_budget():
    assert runner.parse_budget("mnist1d,batching=map").batching == "map"
    auto = runner.parse_budget("mnist1d")
    assert auto.batching == "auto" and auto.restart_batching("vector") == "vmap"
    # on this CPU-only test machine conv cells run their restarts one after the other
    assert auto.restart_batching("sequence") == ("map" if jax.default_backend() == "cpu" else "vmap")
    assert runner.parse_budget("default,batching=vmap").restart_batching("sequence") == "vmap"


def test_conv1d3_params_by_hand():
    """Counted by hand, width 8, 10 classes, structure (conv3, conv5, maxpool3) with every
    vertex live: stem conv3 1->8 (3*1*8 + 8) + conv3 8->8 (3*8*8 + 8) + conv5 (5*8*8 + 8)
    + readout on concat(v1, v2), 16 -> 10 (16*10 + 10) = 32 + 200 + 328 + 170 = 730; on
    the prepared (n, L, 1) inputs the search passes."""
    space = spaces.build_space("conv1d3", num_outputs=10, width=8)
    x = space.prepare(np.zeros((2, 40), np.float32))
    assert space.num_params([2, 3, 4], x) == 730
    # identity into v1 and zero 1->2: v1 = stem output, no cell weights but conv5 on 0->2
    assert space.num_params([1, 3, 0], x) == 32 + 328 + 170
    np.testing.assert_array_equal(space.all_num_params(np.array([[2, 3, 4], [1, 3, 0]]), x),
                                  [730, 530])


@pytest.mark.slow  # end to end, conv supernet on mnist1d, ~2 min cold: run with -m slow
def test_mnist1d_search_end_to_end(tmp_path):
    """The sequence path: mnist1d generated locally, conv1d3 space, search, retrain, regret
    against the committed table (flagged as not like for like: the tiny budget)."""
    config = runner.search_config(dataset="mnist1d", method="darts1", budget=TINY,
                                  workdir=str(tmp_path / "m"))
    summary = runner.run_search(config, progress=False)
    assert summary["space"] == "conv1d3" and set(summary["selected"]) == {"0->1", "0->2", "1->2"}
    # width 4: at least the stem conv3 1->4 (16) and the readout 8->10 (90)
    assert summary["params"] >= 16 + 90 and 0.0 <= summary["test_metric"] <= 1.0
    assert {"structure.json", "cell.png", "gamma.png"} <= _files(tmp_path / "m")
    table = enumeration.load_enumeration_table("conv1d3", "mnist1d")
    if table is not None:
        # read off the table directly: the selected row's mean test accuracy vs the best
        row = next(r for r in table["rows"] if r["choice"] == summary["choice"])
        best = max(r["test_mean"] for r in table["rows"])
        assert summary["regret"] == pytest.approx(best - row["test_mean"])
        assert summary["rank"] == 1 + sum(r["test_mean"] > row["test_mean"] for r in table["rows"])
        assert summary["table_matches_budget"] is False


def test_adanet_reports_its_ensemble(digits, tmp_path):
    config = runner.search_config(method="adanet", space="mlp1", budget=TINY,
                                  workdir=str(tmp_path / "a"), fallback=False)
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
    """Same amount of data (1000 rows): the default Bayesian search (the path of KL weights
    c at both structure levels, every distinct selection retrained with 3 seeds) selects a
    parameter-free or linear op for a target linear in the features, and a nonlinear op
    for a strongly nonlinear one, whose test RMSE is then well below the target's standard
    deviation (a model that predicts). The stem and readout are linear, so the identity op
    already gives a linear model. The fallback to the linear reference is off: this tests
    the search itself."""
    budget = "small,width=4,search_steps=100,inner_steps=5,retrain_seeds=3"
    summaries, data = {}, {}
    for kind in ("linear", "nonlinear"):
        data[kind] = _occam_data(kind)
        config = runner.search_config(method="bayes", space="mlp1", budget=budget,
                                      workdir=str(tmp_path / kind), fallback=False)
        summaries[kind] = runner.run_search(config, progress=False, dataset=data[kind])
    lin, nonlin = summaries["linear"], summaries["nonlinear"]
    assert lin["selected"]["0->1"] in ("identity", "zero", "linear"), lin["selected"]
    assert nonlin["selected"]["0->1"] in ("dense_relu", "dense_tanh"), nonlin["selected"]
    assert lin["params"] < nonlin["params"], summaries
    # measured: test RMSE 1.22 (width 4, 100 train steps) against 3.19 for the constant
    # predictor (the target's std) and 2.34 for the linear model; the linear target's
    # identity cell matches the linear model (0.098 vs 0.096)
    base = nonlin["baselines"]
    assert nonlin["test_metric"] < 0.5 * base["constant"]["test_metric"], nonlin["test_metric"]
    assert nonlin["test_metric"] < 0.7 * base["linear"]["test_metric"], nonlin["test_metric"]
    assert set(nonlin["kl_weight_path"]) == {1.0, 0.3, 0.1, 0.03, 0.01}
    assert (tmp_path / "nonlinear" / "front.json").is_file()
    assert (tmp_path / "nonlinear" / "front.png").is_file()


def test_retrain_rebuilds_the_selected_structure(digits, tmp_path, capsys):
    workdir = tmp_path / "s"
    assert cli.main(["search", "--space", "mlp3", "--method", "random", "--budget", TINY,
                     "--workdir", str(workdir), "--no-progress", "--no-fallback"]) == 0
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


def test_retrain_width_searches_narrow_and_returns_the_wide_model(digits, tmp_path):
    # The search runs at width 4 (TINY), the proposals are retrained and returned at 7: the
    # params, structure.json and `structsel retrain` are those of the width-7 model; the
    # searched Gamma keeps the width-4 op names.
    workdir = tmp_path / "w"
    budget = TINY + ",retrain_width=7"
    assert cli.main(["search", "--space", "mlp3", "--method", "random", "--budget", budget,
                     "--workdir", str(workdir), "--no-progress", "--no-fallback"]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    structure = json.loads((workdir / "structure.json").read_text())
    assert structure["width"] == 7 and summary["budget"]["retrain_width"] == 7
    narrow, wide = (spaces.build_space("mlp3", num_outputs=10, width=w) for w in (4, 7))
    x = np.asarray(runner.make_problem(digits, "mlp3", runner.parse_budget(TINY)).data.x_train)
    choice = np.asarray(summary["choice"])
    assert summary["params"] == wide.num_params(choice, x) != narrow.num_params(choice, x)
    assert summary["selected"] == wide.selected(choice)
    assert {op for ops in summary["gamma"].values() for op in ops} == set(narrow.op_names)
    assert cli.main(["retrain", "--structure", str(workdir / "structure.json"),
                     "--budget", TINY, "--seeds", "1", "--no-progress"]) == 0
    rerun = json.loads((workdir / "retrain" / "summary.json").read_text())
    assert rerun["params"] == summary["params"]  # rebuilt at width 7, counted independently
    # a table is like for like only for the width the structures are returned at
    table = {"settings": {"budget": dataclasses.asdict(runner.parse_budget(TINY))}}
    assert runner.table_matches(table, runner.parse_budget(TINY))
    assert not runner.table_matches(table, runner.parse_budget(budget))
    assert runner.table_matches({"settings": {"budget": dataclasses.asdict(
        runner.parse_budget("tiny,width=7"))}}, runner.parse_budget(budget))
    with pytest.raises(ValueError, match="retrain_width"):
        runner.parse_budget("tiny,retrain_width=-1")


def test_budget_dropout_trains_the_returned_model_with_dropout(tmp_path):
    # dropout > 0: the retrained tabular model's residual blocks carry the rate (in
    # structure.json, so `structsel retrain` rebuilds them) and train with dropout; the
    # run differs from the same run at rate 0 unless no block was selected.
    base = ["search", "--dataset", "breast_cancer", "--method", "random", "--no-progress",
            "--no-fallback", "--no-gradient-boosting"]
    runs = {}
    for rate in (0.0, 0.5):
        workdir = tmp_path / f"d{rate}"
        assert cli.main(base + ["--budget", f"tiny,train_steps=30,dropout={rate}",
                                "--workdir", str(workdir)]) == 0
        runs[rate] = (json.loads((workdir / "summary.json").read_text()),
                      json.loads((workdir / "structure.json").read_text()))
    (plain, _), (dropped, structure) = runs[0.0], runs[0.5]
    assert plain["choice"] == dropped["choice"]  # the search does not see the rate
    rates = {op["spec"]["kwargs"]["dropout"] for e in structure["edges"] for op in e["ops"]
             if op["spec"]["name"] == "residual"}
    if rates:  # a residual block was selected: it carries the rate and trains with it
        assert rates == {0.5} and dropped["val_metric"] != plain["val_metric"]
    assert cli.main(["retrain", "--structure", str(tmp_path / "d0.5" / "structure.json"),
                     "--budget", "tiny", "--seeds", "1", "--no-progress"]) == 0
    with pytest.raises(ValueError, match="dropout applies to the space 'tabular' only"):
        runner.search_config(space="mlp3", budget="tiny,dropout=0.1")
    with pytest.raises(ValueError, match=r"budget dropout must be a number in \[0, 1\)"):
        runner.parse_budget("tabular,dropout=1")


def test_an_interrupted_search_resumes_from_its_checkpoint_bit_identically(tmp_path, capsys,
                                                                          interrupt_after_save):
    # 13 outer steps = 6 calls of 2 steps + 1 of 1 (two checkpointed parts); checkpoints
    # every 4 steps (at 4, 8, 12 of the first part). The run is interrupted right after
    # the save at step 8, resumed, and must end exactly where the uninterrupted run ends.
    args = ["search", "--space", "mlp3", "--method", "darts1", "--no-progress",
            "--budget", "tiny,search_steps=13", "--no-fallback", "--no-gradient-boosting"]
    assert cli.main(args + ["--workdir", str(tmp_path / "a")]) == 0
    b = tmp_path / "b"
    resumable = args + ["--workdir", str(b), "--checkpoint-every", "4"]
    with interrupt_after_save(8):
        assert cli.main(resumable) == 130
    assert not (b / "summary.json").exists()
    assert json.loads((b / "status.json").read_text())["state"] == "interrupted"
    assert (b / "checkpoints" / "inner_0" / "8").is_dir()
    # another config's checkpoint is refused, naming what differs, and left in place
    other = [a.replace("search_steps=13", "search_steps=13,search_lr=0.1") for a in resumable]
    capsys.readouterr()
    assert cli.main(other + ["--resume"]) == 2
    assert "search_lr" in capsys.readouterr().err
    assert (b / "checkpoints" / "inner_0" / "8").is_dir()
    assert cli.main(resumable + ["--resume"]) == 0
    first, resumed = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "a", b))
    for key in ("choice", "gamma", "val_metric", "test_metric", "restart_choices", "params"):
        assert resumed[key] == first[key], key
    rows = [[{k: v for k, v in json.loads(line).items() if k != "time"}
             for line in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (tmp_path / "a", b)]
    assert rows[0] == rows[1] and len(rows[0]) == 13
    assert not (b / "checkpoints").exists()  # removed once the run finished
    with pytest.raises(ValueError, match="checkpoint_every applies to the gradient methods"):
        runner.search_config(method="random", checkpoint_every=4)


def test_devices_split_the_search_minibatches_and_keep_the_selection(digits, tmp_path):
    # --devices 4: the gradient search's minibatch rows are split over 4 emulated devices
    # (one run, data parallel). Same proposals as on one device; gamma to float32
    # reassociation (rtol 1e-4 after 4 outer steps of Adam on the logits).
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (conftest emulates them)")
    kwargs = dict(space="mlp3", method="darts1", budget="tiny,search_batch_size=8",
                  gradient_boosting=False, fallback=False)
    one = runner.run_search(runner.search_config(**kwargs, workdir=str(tmp_path / "one")),
                            progress=False, dataset=digits)
    four = runner.run_search(runner.search_config(**kwargs, devices=4,
                                                  workdir=str(tmp_path / "four")),
                             progress=False, dataset=digits)
    assert "data_parallel" not in one
    assert four["data_parallel"] == {"devices": 4, "sharded": "the search's minibatch rows"}
    assert four["restart_choices"] == one["restart_choices"]
    for edge, ops in one["gamma"].items():
        np.testing.assert_allclose(list(four["gamma"][edge].values()), list(ops.values()),
                                   rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"search_batch_size \(8\) must be divisible"):
        runner.run_search(runner.search_config(**kwargs, devices=3,
                                               workdir=str(tmp_path / "three")),
                          progress=False, dataset=digits)
    for bad in (0, "two", True):
        with pytest.raises(ValueError, match="devices must be 'all' or an int"):
            runner.search_config(devices=bad)


def test_the_seeds_of_a_search_as_one_vmapped_program_equal_each_run_alone(tmp_path):
    # run_search_many: the searches of seeds 0 and 1 (each its own split) in one program
    # vmapped over the runs and their data. Oracle: run_search of each seed alone; the
    # same proposals, gamma to float32 reassociation (rtol 1e-4), and then the same
    # retrained models (the retraining is per run and identical).
    kwargs = dict(space="mlp3", method="darts1", budget="tiny", gradient_boosting=False,
                  fallback=False)
    configs = [runner.search_config(**kwargs, seed=s, workdir=str(tmp_path / f"many{s}"))
               for s in (0, 1)]
    many = runner.run_search_many(configs)
    alone = [runner.run_search(runner.search_config(**kwargs, seed=s,
                                                    workdir=str(tmp_path / f"one{s}")),
                               progress=False) for s in (0, 1)]
    assert many[0]["split"] != many[1]["split"]
    for m, a in zip(many, alone):
        assert m["search_batched_runs"] == 2 and "search_batched_runs" not in a
        assert m["split"] == a["split"] and m["restart_choices"] == a["restart_choices"]
        for edge, ops in a["gamma"].items():
            np.testing.assert_allclose(list(m["gamma"][edge].values()), list(ops.values()),
                                       rtol=1e-4, atol=1e-6)
        assert m["selected"] == a["selected"] and m["test_metric"] == a["test_metric"]
        assert (pathlib.Path(m["workdir"]) / "summary.json").is_file()
    other = dataclasses.replace(configs[1], method="gdas")
    with pytest.raises(ValueError, match=r"differ in \['method'\]"):
        runner.run_search_many([configs[0], other])


@pytest.mark.slow  # a search program of its own, ~1 min cold
def test_kl_weight_runs_one_tempered_elbo(digits, tmp_path):
    # --kl-weight 0.1: one tempered ELBO instead of the path
    config = runner.search_config(method="bayes_inner", space="mlp1", budget=TINY, kl_weights="0.1",
                                  workdir=str(tmp_path / "one"))
    summary = runner.run_search(config, progress=False, dataset=digits)
    assert summary["kl_weight"] == [0.1] and summary["kl_weight_path"] == [0.1]


def test_kl_weights_override_the_path():
    # --kl-weight 0.1: one tempered ELBO; a list is a path; only for Bayesian methods
    assert runner.search_config(method="bayes_inner", kl_weights="0.1").kl_weights == (0.1,)
    assert runner.search_config(method="bayes", kl_weights=[1, 0.5]).kl_weights == (1.0, 0.5)
    with pytest.raises(ValueError, match="kl_weights must be finite numbers > 0"):
        runner.search_config(method="bayes", kl_weights="1,-0.1")
    with pytest.raises(ValueError, match="kl_weights applies to the Bayesian methods"):
        runner.search_config(method="darts1", kl_weights="0.1")


def test_search_minibatches_scale_the_prior_by_the_training_rows(digits):
    """budget search_batch_size=B < m: the trainer draws B rows per inner step and the
    objective scales its prior terms by the m training rows (an unbiased minibatch ELBO);
    0 or B >= m: full batch, the objective's m is the batch's own size (None)."""
    method = methods.METHODS["bayes_inner"]
    for size, num_train, want in [(8, 100, 8), (0, 100, None), (100, 100, None)]:
        budget = runner.parse_budget(f"tiny,search_batch_size={size}")
        problem = runner.make_problem(digits, "mlp1", budget)
        obj, trainer, _ = methods.ProgramCache().get(method, problem.space, problem.task,
                                                     budget, None, num_train=num_train)
        assert trainer.batch_size == want
        assert obj.num_data == (num_train if want else None)
    with pytest.raises(ValueError, match="budget search_batch_size must be an int >= 0"):
        runner.parse_budget("tiny,search_batch_size=-1")


def test_selection_rules():
    # rule "one_se": candidates within one SE (pooled seed std / sqrt(S)) of the best mean: fewest
    # parameters win; the SE here: seed std 0.01 (ddof 1) over sqrt(4) = 0.005
    from structsel.search.selection import one_se_choice
    noise = np.array([-0.01, 0.01, -0.01, 0.01]) * np.sqrt(3) / 2  # std (ddof 1) 0.01
    val = np.array([0.90, 0.904, 0.95]) [:, None] + noise
    best, se = one_se_choice(val, [100, 10, 1000], higher_is_better=True)
    assert best == 2 and abs(se - 0.005) < 1e-12          # 0.95 is 0.046 above the rest
    val = np.array([0.95, 0.947, 0.90])[:, None] + noise
    assert one_se_choice(val, [1000, 10, 100], higher_is_better=True)[0] == 1  # a tie
    assert one_se_choice(val, [1000, 10, 100], higher_is_better=False)[0] == 2  # RMSE
    assert one_se_choice(val[:, :1], [1000, 10, 100], higher_is_better=True)[0] == 0
    # rule "best" (the default of select): only exact ties go to fewer parameters
    assert one_se_choice(val, [1000, 10, 100], higher_is_better=True, rule="best") == (0, 0.0)
    tied = np.array([[0.9, 0.9], [0.9, 0.9], [0.8, 0.8]])
    assert one_se_choice(tied, [500, 50, 5], higher_is_better=True, rule="best")[0] == 1
    with pytest.raises(ValueError, match="rule must be one of"):
        one_se_choice(val, [1, 2, 3], higher_is_better=True, rule="median")
    # a validation loss breaks rule "best"'s exact ties before the parameter count does,
    # never a strict difference in the metric, and rule "one_se" ignores it
    loss = [0.2, 0.3, 0.01]
    assert one_se_choice(tied, [500, 50, 5], higher_is_better=True, rule="best",
                         loss=loss)[0] == 0
    assert one_se_choice(tied, [500, 50, 5], higher_is_better=True, rule="best",
                         loss=[0.2, 0.2, 0.01])[0] == 1       # equal losses: fewer params
    assert one_se_choice(tied, [500, 50, 5], higher_is_better=True, rule="one_se",
                         loss=loss)[0] == 1
    with pytest.raises(ValueError, match=r"loss must have shape \(3,\)"):
        one_se_choice(tied, [500, 50, 5], higher_is_better=True, rule="best", loss=[0.1])
