"""Experiments vectorised in a sweep: two_layer_digits.run_many and the sweep's grouping.

One group of three smoke runs (different seeds, learning rates and weight decays) is run
once (`group`) and serves as the reference: each run equals the same run alone (`main`),
equals the pre-vectorisation program (plain optax.adamw / optax.adam, static learning
rates), and the group is one traced program, not a loop of runs.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import two_layer_digits as tld
from experiments.common import static_config
from structsel import data
from structsel.bilevel import BilevelTrainer
from structsel.objective import Objective, darts
from structsel.structure import Softmax
from structsel.sweep import SweepError, read_rows, sweep

# seed, inner_lr, outer_lr, weight_decay of the three runs of the group
RUNS = [(0, 3e-3, 3e-2, 1e-4), (3, 5e-3, 1e-1, 1e-3), (5, 1e-2, 5e-2, 0.0)]
# A run alone and in the group is the same computation per run, but vmap over 1 or 3 runs
# vectorises the float32 matmuls and reductions differently (XLA's loop and summation
# order): equal to float32 rounding, a few ulps accumulated over the smoke run's steps
# (observed: at most 6e-8 absolute on gamma, bit-identical losses and accuracies).
RTOL, ATOL = 1e-5, 1e-6


def _argv(workdir, seed, inner_lr, outer_lr, weight_decay, *extra):
    return ["--smoke", "--workdir", str(workdir), "--seed", str(seed),
            "--set", f"inner_lr={inner_lr}", "--set", f"outer_lr={outer_lr}",
            "--set", f"weight_decay={weight_decay}", *extra]


def _metrics(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _assert_same_run(a, b, dir_a, dir_b):
    for key in ("final_gamma", "final_val_loss"):
        np.testing.assert_allclose(a[key], b[key], rtol=RTOL, atol=ATOL, err_msg=key)
    assert a["selected_branch"] == b["selected_branch"]
    for name in a["test_accuracy"]:          # counts / num_test: the same predictions
        np.testing.assert_allclose(a["test_accuracy"][name], b["test_accuracy"][name],
                                   atol=0.5 / a["num_test"], err_msg=name)
    ma, mb = _metrics(dir_a), _metrics(dir_b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb]
    for key in ("gamma", "val_loss", "train_loss"):
        np.testing.assert_allclose([m[key] for m in ma], [m[key] for m in mb], rtol=RTOL,
                                   atol=ATOL, err_msg=key)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """run_many of RUNS, recording the calls of run_chunks and the programs' caches."""
    root = tmp_path_factory.mktemp("group")
    calls, run_chunks = [], tld.run_chunks

    def recording(run_chunk, state, **kwargs):
        calls.append({"run_chunk": run_chunk,
                      "batch": {leaf.shape[:2] for leaf in jax.tree.leaves(state.params)}})
        return run_chunks(run_chunk, state, **kwargs)

    tld.programs.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tld, "run_chunks", recording)
        summaries = tld.run_many([_argv(root / f"g{i}", *run) for i, run in enumerate(RUNS)])
    info = tld.programs.cache_info()
    prog = tld.programs(static_config(tld.Config.smoke(), tld.TRACED), 64, 10)
    return {"root": root, "summaries": summaries, "calls": calls, "programs": prog,
            "cache_info": info}


def test_the_group_is_one_traced_program(group):
    cfg = tld.Config.smoke()
    assert group["cache_info"].misses == 1                  # one set of programs built
    # the search: ONE run_chunks over all runs x restarts, its chunk traced once
    assert len(group["calls"]) == 1
    assert group["calls"][0]["batch"] == {(len(RUNS), cfg.num_seeds)}
    prog = group["programs"]
    assert group["calls"][0]["run_chunk"] is prog.search_chunk
    for name in ("init", "search_chunk", "structure", "retrain", "accuracy"):
        assert getattr(prog, name)._cache_size() == 1, name
    # every run keeps its own record, with its own seed and hyperparameters
    for i, (seed, inner_lr, outer_lr, wd) in enumerate(RUNS):
        record = json.loads((group["root"] / f"g{i}" / "config.json").read_text())
        assert record["seed"] == seed and record["git_revision"] and record["versions"]
        assert (record["config"]["inner_lr"], record["config"]["outer_lr"],
                record["config"]["weight_decay"]) == (inner_lr, outer_lr, wd)
        assert group["summaries"][i]["batched_runs"] == len(RUNS)
        assert len(_metrics(group["root"] / f"g{i}")) == cfg.outer_steps
        assert (group["root"] / f"g{i}" / "two_layer_gamma.png").exists()
    gammas = [np.asarray(s["final_gamma"]) for s in group["summaries"]]
    assert all(not np.allclose(gammas[i], gammas[j]) for i in range(3) for j in range(i))


def test_a_run_alone_equals_the_same_run_in_the_group(group, tmp_path):
    i = 1
    alone = tld.main(_argv(tmp_path / "alone", *RUNS[i]))
    assert alone["batched_runs"] == 1
    _assert_same_run(alone, group["summaries"][i], tmp_path / "alone", group["root"] / f"g{i}")


def test_a_run_in_the_group_equals_the_static_learning_rate_program(group):
    # the oracle: what two_layer_digits ran before the hyperparameters were traced, plain
    # optax.adamw(lr, weight_decay) / optax.adam(lr) on the run's own split and keys
    i = 2
    seed, inner_lr, outer_lr, wd = RUNS[i]
    cfg = dataclasses.replace(tld.Config.smoke(), seed=seed)
    ds = data.load_sklearn("digits", seed=seed)
    train, val = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)), (
        jnp.asarray(ds.x_val), jnp.asarray(ds.y_val))
    objective = Objective(group["programs"].family, "categorical", relaxation=Softmax(),
                          coefficients=darts(), weights="point")
    trainer = BilevelTrainer(objective.inner_loss, objective.outer_loss,
                             optax.adamw(inner_lr, weight_decay=wd), optax.adam(outer_lr),
                             inner_steps=cfg.inner_steps, hypergradient_method=cfg.method,
                             structure_fn=objective.structure)
    keys = jax.random.split(jax.random.key(seed), cfg.num_seeds)
    states = trainer.init_many(lambda k: objective.init(k, train[0]), keys)
    _, hist = jax.jit(trainer.run_many, static_argnums=3)(states, train, val, cfg.outer_steps)
    got = _metrics(group["root"] / f"g{i}")
    np.testing.assert_allclose([m["gamma"] for m in got],
                               np.swapaxes(np.asarray(hist["structure"][0]), 0, 1),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose([m["val_loss"] for m in got],
                               np.asarray(hist["outer_loss"]).T, rtol=RTOL, atol=ATOL)


def test_a_group_checkpoints_as_one_pytree_and_resumes(group, tmp_path, interrupt_after_save):
    # killed after the first checkpoint (step 2 of 4), then --resume on the first command
    # line: the group continues from step 2 and ends where the uninterrupted group did
    from structsel import checkpoint as ckpt_lib

    argvs = [_argv(tmp_path / f"r{i}", *run, "--checkpoint-every", "2")
             for i, run in enumerate(RUNS)]
    with interrupt_after_save(2), pytest.raises(KeyboardInterrupt):
        tld.run_many(argvs)
    assert (tmp_path / "r0" / "checkpoints" / "search" / "2").exists()
    # another group (a later run's learning rate changed) does not match the checkpoint
    other = [argvs[0] + ["--resume"], argvs[1],
             _argv(tmp_path / "r2", RUNS[2][0], 0.02, *RUNS[2][2:], "--checkpoint-every", "2")]
    with pytest.raises(ckpt_lib.CheckpointError, match=r"group\.2\.inner_lr: saved 0.01, now 0.02"):
        tld.run_many(other)
    resumed = tld.run_many([argvs[0] + ["--resume"], *argvs[1:]])
    for i, (a, b) in enumerate(zip(resumed, group["summaries"])):
        _assert_same_run(a, b, tmp_path / f"r{i}", group["root"] / f"g{i}")


def test_runs_that_differ_in_a_static_field_are_refused_before_compiling(tmp_path):
    before = tld.programs.cache_info()
    argvs = [_argv(tmp_path / "a", *RUNS[0]),
             _argv(tmp_path / "b", *RUNS[1], "--set", "hidden=8")]
    with pytest.raises(ValueError, match=r"may differ only in .*inner_lr.*; hidden is 4 .* 8"):
        tld.run_many(argvs)
    assert tld.programs.cache_info() == before


@pytest.mark.parametrize("grid, match", [
    (["inner_lr=abc"], "grid key inner_lr must be a finite number, got 'abc'"),
    (["outer_lr=0.1,true"], "grid key outer_lr must be a finite number, got 'true'"),
    (["smoke=true", "weight_decay=-1"], "weight_decay must be a finite number >= 0, got -1.0"),
    (["smoke=true", "inner_lr=0"], "inner_lr must be a finite number > 0, got 0.0"),
])
def test_a_bad_traced_key_is_refused_before_compiling(tmp_path, grid, match):
    before = tld.programs.cache_info()
    with pytest.raises(SweepError, match=match):
        sweep("two_layer_digits", grid, seeds=1, workdir=tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()
    assert tld.programs.cache_info() == before


def test_a_bad_traced_value_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tld.main(["--smoke", "--workdir", str(tmp_path), "--set", 'outer_lr="fast"'])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "outer_lr must be a finite number > 0, got 'fast'" in err and "Traceback" not in err


def test_the_sweep_runs_a_group_as_one_run_many_call(group, tmp_path, monkeypatch):
    # 2 learning rates x 2 seeds, all other keys equal: one group, one run_many call of 4
    calls = []
    run_many = tld.run_many

    def recording(argvs):
        calls.append(len(argvs))
        return run_many(argvs)
    monkeypatch.setattr(tld, "run_many", recording)
    grid = {"smoke": [True], "inner_lr": [RUNS[1][1], 0.02], "outer_lr": [RUNS[1][2]],
            "weight_decay": [RUNS[1][3]]}
    out = sweep("two_layer_digits", grid, seeds=[RUNS[1][0], 7], workdir=tmp_path / "w",
                progress=False)
    assert calls == [4]
    rows = out["rows"]
    assert [r["group"] for r in rows] == ["0"] * 4
    assert [r["group_runs"] for r in rows] == ["4"] * 4
    assert all(r["status"] == "ok" for r in rows)
    # its run 0 is RUNS[1] (seed 3, the same lrs): the same run as in the 3-run group
    run0 = tmp_path / "w" / "runs" / "00000"
    summary = json.loads((run0 / "summary.json").read_text())
    _assert_same_run(summary, group["summaries"][1], run0, group["root"] / "g1")
    assert float(read_rows(tmp_path / "w")[0]["batched_runs"]) == 4


def test_a_group_whose_runs_are_not_consecutive_is_still_one_call(tmp_path, monkeypatch):
    # a static key after a traced one: the runs of hidden=2 are run_ids 0, 1, 4, 5 and
    # those of hidden=3 are 2, 3, 6, 7; each group is still ONE run_many call of 4 runs
    calls = []
    run_many = tld.run_many

    def recording(argvs):
        calls.append(sorted(a[a.index("--workdir") + 1][-5:] for a in argvs))
        return run_many(argvs)
    monkeypatch.setattr(tld, "run_many", recording)
    grid = {"smoke": [True], "inner_lr": [0.01, 0.02], "hidden": [2, 3]}
    out = sweep("two_layer_digits", grid, seeds=2, workdir=tmp_path / "w", progress=False)
    assert calls == [["00000", "00001", "00004", "00005"], ["00002", "00003", "00006", "00007"]]
    assert [r["group"] for r in out["rows"]] == ["0", "0", "1", "1", "0", "0", "1", "1"]
    assert all(r["status"] == "ok" and r["group_runs"] == "4" for r in out["rows"])


def test_an_interrupted_experiment_sweep_resumes_from_the_runs_checkpoint(
        tmp_path, interrupt_after_save, monkeypatch):
    # the sweep checkpoints an experiment's runs every chunk (2 outer steps of the smoke
    # run's 4) in the first run's workdir; killed after step 2 and resumed, the group
    # restores step 2 (not a restart) and its rows equal an uninterrupted sweep's
    from structsel import checkpoint as ckpt_lib
    from structsel.sweep import VOLATILE_COLUMNS

    grid = {"smoke": [True], "inner_lr": [0.01, 0.02]}
    whole = sweep("two_layer_digits", grid, seeds=1, workdir=tmp_path / "a", progress=False)
    assert not list((tmp_path / "a" / "runs").glob("*/checkpoints"))   # dropped when done
    with interrupt_after_save(2), pytest.raises(KeyboardInterrupt):
        sweep("two_layer_digits", grid, seeds=1, workdir=tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "runs" / "00000" / "checkpoints" / "search" / "2").is_dir()
    restored = []
    restore = ckpt_lib.Checkpointer.restore

    def recording(self, *args, **kwargs):
        out = restore(self, *args, **kwargs)
        restored.append(out[0])
        return out
    monkeypatch.setattr(ckpt_lib.Checkpointer, "restore", recording)
    resumed = sweep("two_layer_digits", grid, seeds=1, workdir=tmp_path / "b", resume=True,
                    progress=False)
    assert restored == [2]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in VOLATILE_COLUMNS}  # noqa: E731
                          for r in rows]
    assert strip(resumed["rows"]) == strip(whole["rows"])
