"""structsel.sweep: validation, rows and summary, reproducibility, devices, resume, hosts.

One small GLM grid (2 lik_q x 2 data seeds x 2 seeds = 8 runs in 2 static groups of 4;
`data_seed` is static but leaves the program unchanged, so both groups share one
compilation) is swept once in-process (`full`) and serves as the reference of every other
test. conftest.py gives this process 4 emulated CPU devices; subprocesses inherit them.
"""
import csv
import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import optax
import pytest
import jax
import jax.numpy as jnp

from structsel import cli
from structsel.sweep import SweepError, read_rows, result_columns, sweep
from structsel.bilevel import traced_optimizer, with_hyperparams

REPO = pathlib.Path(__file__).resolve().parent.parent
STATIC = ["iterations=40", "warmup=4", "chunk=2", "num_samples=1", "num_objects=10",
          "fast_compile=true"]
GRID = ["lik_q=0.01,1", "data_seed=0,1", *STATIC]
METRICS = ("mass_f0", "mass_f1", "mass_f2", "inner_loss", "outer_loss")
# Runs alone, or in another batch / on other devices, are the same computation per run but
# vmap may vectorise it differently (batch size changes XLA's loop and reduction order):
# float32 rounding, so a relative tolerance of a few ulps accumulated over 40 steps.
RTOL, ATOL = 1e-5, 1e-6


def _env():
    cache = os.path.abspath(REPO / ".jax_cache")
    return {**os.environ, "STRUCTSEL_JAX_CACHE": os.environ.get("STRUCTSEL_JAX_CACHE", cache)}


def _cli(workdir, *extra, grid=GRID, seeds=2):
    args = [sys.executable, "-m", "structsel.cli", "sweep", "glm_toy", "--seeds", str(seeds),
            "--workdir", str(workdir), "--no-progress"]
    for g in grid:
        args += ["--grid", g]
    return args + list(extra)


def _results(rows):
    return [{k: r[k] for k in result_columns(list(r))} for r in rows]


def _by_setting(rows):
    return {(r["lik_q"], r["data_seed"], r["seed"]): r for r in rows}


def _close(a, b):
    for m in METRICS:
        np.testing.assert_allclose(float(a[m]), float(b[m]), rtol=RTOL, atol=ATOL, err_msg=m)
    assert a["status"] == b["status"] == "ok"


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep") / "full"
    out = sweep("glm_toy", GRID, seeds=2, workdir=workdir, checkpoint_every=40, progress=False)
    return workdir, out


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("target, grid, match", [
    ("nope", [], "target must be one of .*glm_toy.*search.*two_layer_digits"),
    ("glm_toy", ["foo=1"], "unknown grid key 'foo'.*allowed keys: lik_q, prior_q"),
    ("glm_toy", ["lr=-1"], "grid key lr must be a finite number > 0"),
    ("glm_toy", ["lr"], "--grid expects key=v1,v2"),
    ("glm_toy", ["iterations=2.5"], "grid key iterations must be an int"),
    ("glm_toy", ["lik_q=1,1"], "repeats a value"),
    ("glm_toy", ["iterations=15", "chunk=10"], "multiple of chunk"),
    ("search", ["method=xx"], "grid key method must be one of"),
    ("search", ["train_steps=0"], "train_steps must be an int >= 1"),
    ("two_layer_digits", ["foo=1"], "allowed keys: smoke, num_seeds"),
])
def test_bad_grid_is_refused_before_compiling(tmp_path, target, grid, match):
    with pytest.raises(SweepError if target != "nope" else ValueError, match=match):
        sweep(target, grid, seeds=1, workdir=tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    for argv in (["sweep", "nope"], ["sweep", "glm_toy", "--grid", "foo=1"],
                 ["sweep", "glm_toy", "--grid", "temperature=0"],
                 ["sweep", "glm_toy", "--devices", "99"]):
        assert cli.main(argv + ["--workdir", str(tmp_path / "w"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("structsel: error: ") and "Traceback" not in err


def test_learning_rate_in_the_state_equals_adam():
    """traced_optimizer(adam) with lr written into its state (what the sweep traces per
    run) == optax.adam(lr), bit for bit, on a quadratic over 5 steps."""
    params = {"a": jnp.asarray([1.0, -2.0, 3.0])}
    grad = jax.grad(lambda p: jnp.sum(p["a"] ** 2 * jnp.arange(1.0, 4.0)))
    ref = optax.adam(0.03)
    opt = traced_optimizer(optax.adam, "learning_rate")
    s_ref, s = ref.init(params), opt.init(params)
    s = with_hyperparams(s, {"learning_rate": jnp.float32(0.03)})
    p_ref = p = params
    for _ in range(5):
        u, s_ref = ref.update(grad(p_ref), s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        u, s = opt.update(grad(p), s, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_array_equal(p["a"], p_ref["a"])


# ------------------------------------------------------------------ rows and summary
def test_rows_summary_and_records(full):
    workdir, out = full
    rows = read_rows(workdir)
    assert len(rows) == 8 and [int(r["run_id"]) for r in rows] == list(range(8))
    assert {r["group"] for r in rows} == {"0", "1"}          # grouped by data_seed
    assert all(r["status"] == "ok" and r["group_runs"] == "4" for r in rows)
    for r in rows:                                            # the masses are a softmax
        assert math.isclose(sum(float(r[f"mass_f{j}"]) for j in range(3)), 1.0, rel_tol=1e-5)
    # summary.csv against an independent computation (n = 2: t_{0.975, 1} = 12.7062...)
    with open(workdir / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 4
    for s in summary:
        seeds = [r for r in rows if r["setting_id"] == s["setting_id"]]
        for m in METRICS:
            a, b = (float(r[m]) for r in seeds)
            mean, std = (a + b) / 2, abs(a - b) / math.sqrt(2)
            half = 12.706204736174698 * std / math.sqrt(2)
            for col, want in (("mean", mean), ("std", std), ("ci95_low", mean - half),
                              ("ci95_high", mean + half)):
                assert math.isclose(float(s[f"{m}_{col}"]), want, rel_tol=1e-9, abs_tol=1e-12)
    assert "lik_q" in out["table"] and "95 %" in out["table"]
    record = json.loads((workdir / "runs" / "00005" / "config.json").read_text())
    assert record["seed"] == 1 and record["config"]["lik_q"] == 1.0
    assert record["versions"]["jax"] == jax.__version__ and "git_revision" in record
    result = json.loads((workdir / "runs" / "00005" / "summary.json").read_text())
    assert result["metrics"]["outer_loss"] == float(rows[5]["outer_loss"])
    assert not (workdir / "checkpoints").exists()


def test_same_sweep_twice_is_bit_identical(full, tmp_path):
    sweep("glm_toy", GRID, seeds=2, workdir=tmp_path / "again", checkpoint_every=40,
          progress=False)
    assert _results(read_rows(tmp_path / "again")) == _results(read_rows(full[0]))


def test_four_devices_give_the_single_device_rows(full, tmp_path):
    """Run axis sharded over 4 (emulated) devices with shard_map: 1 run per device."""
    sweep("glm_toy", GRID, seeds=2, workdir=tmp_path / "dev", devices=4, checkpoint_every=40,
          progress=False)
    rows, ref = read_rows(tmp_path / "dev"), read_rows(full[0])
    for a, b in zip(rows, ref, strict=True):
        _close(a, b)


# ------------------------------------------------------------------ resume
def test_resume_refuses_another_sweep(full, tmp_path):
    with pytest.raises(SweepError, match="pass --resume"):
        sweep("glm_toy", GRID, seeds=2, workdir=full[0], progress=False)
    with pytest.raises(SweepError, match=r"another sweep \(grid: stored"):
        sweep("glm_toy", ["lik_q=0.01,2", *GRID[1:]], seeds=2, workdir=full[0], resume=True,
              progress=False)
    with pytest.raises(SweepError, match=r"another sweep \(seeds: stored \[0, 1\], now \[0"):
        sweep("glm_toy", GRID, seeds=3, workdir=full[0], resume=True, progress=False)


def test_sigkill_then_resume_gives_the_uninterrupted_rows(full, tmp_path):
    """The CLI sweep is killed once the first group's rows are written and the second
    group has a checkpoint; resume keeps those rows and continues the group from it."""
    workdir = tmp_path / "killed"
    second = workdir / "checkpoints" / "runs00002-00007"    # group of data_seed 1
    log = tmp_path / "killed.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(_cli(workdir, "--checkpoint-every", "10"), cwd=REPO,
                                env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len(read_rows(workdir)) >= 4 and second.is_dir() and any(
                    p.name.isdigit() for p in second.iterdir()):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        assert proc.wait(timeout=30) == -signal.SIGKILL, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = read_rows(workdir)
    assert len(before) == 4 and {r["group"] for r in before} == {"0"}
    # resumed in this process (its program is compiled already by `full`)
    sweep("glm_toy", GRID, seeds=2, workdir=workdir, resume=True, checkpoint_every=10,
          progress=False)
    rows = read_rows(workdir)
    assert _results(rows) == _results(read_rows(full[0]))
    assert [r for r in rows if r["group"] == "0"] == before        # finished rows kept
    assert all(r["resumed_from"] not in ("", "none") for r in rows if r["group"] == "1")


# ------------------------------------------------------------------ hosts
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_one_process_rows(full, tmp_path):
    """jax.distributed over loopback: each process runs one of the 2 runs of the group,
    alone in its batch; so this is also the test that a run alone equals the same run
    inside a sweep (`full` ran it in a batch of 4), to RTOL."""
    workdir, port = tmp_path / "hosts", _free_port()
    grid = ["lik_q=1", "data_seed=0", *STATIC]
    procs = [subprocess.Popen(
        _cli(workdir, "--distributed", "--coordinator", f"127.0.0.1:{port}",
             "--num-processes", "2", "--process-id", str(i), grid=grid),
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    rows = read_rows(workdir)
    assert [r["process"] for r in rows] == ["0", "1"]
    ref = _by_setting(read_rows(full[0]))
    for r in rows:
        _close(r, ref[("1.0", "0", r["seed"])])
    assert "2 of 2 runs finished" in outs[0][0]
    assert not list(workdir.glob("runs.p*.csv"))


def test_a_row_cut_by_a_kill_is_ignored_and_appending_goes_on(tmp_path):
    from structsel.sweep import _write_rows

    header = ["run_id", "setting_id", "status", "resumed_from"]
    _write_rows(tmp_path / "runs.csv", header, [{"run_id": 0, "setting_id": 0, "status": "ok"}])
    with open(tmp_path / "runs.csv", "a") as f:
        f.write("1,0,o")                                  # killed in the middle of a row
    assert [r["run_id"] for r in read_rows(tmp_path)] == ["0"]
    _write_rows(tmp_path / "runs.csv", header, [{"run_id": 1, "setting_id": 0, "status": "ok"}])
    assert [(r["run_id"], r["status"]) for r in read_rows(tmp_path)] == [("0", "ok"), ("1", "ok")]


def test_an_interrupted_search_run_resumes_inside_the_sweep(tmp_path, monkeypatch):
    # The seeds of a search setting are one group: one vmapped search program
    # (run_search_many), checkpointed under the sweep's checkpoints/ every chunk. Two
    # settings x 2 seeds; the second group is interrupted after its checkpoint at outer
    # step 8 of 13. The resumed sweep keeps the first group's rows, continues the second
    # group's search from step 8 and gives the rows of an uninterrupted sweep (the same
    # compiled programs on the same states).
    from structsel import checkpoint as ckpt_lib

    grid = {"space": ["mlp3"], "method": ["darts1"], "budget": ["tiny"],
            "search_steps": [13], "search_lr": [0.03, 0.05]}
    ref = sweep("search", grid, seeds=2, workdir=tmp_path / "ref", progress=False)
    assert [r["group"] for r in ref["rows"]] == ["0", "0", "1", "1"]
    save, restore = ckpt_lib.Checkpointer.save, ckpt_lib.Checkpointer.restore
    restored = []

    def save_then_interrupt(self, step, tree):
        save(self, step, tree)
        if step == 8 and "runs00002-00003" in str(self.directory):
            raise KeyboardInterrupt

    def recording_restore(self, template):
        out = restore(self, template)
        restored.append((self.directory.parent.name, out[0]))
        return out
    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save_then_interrupt)
    monkeypatch.setattr(ckpt_lib.Checkpointer, "restore", recording_restore)
    work = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        sweep("search", grid, seeds=2, workdir=work, progress=False)
    assert [r["run_id"] for r in read_rows(work)] == ["0", "1"]
    assert any((work / "checkpoints").rglob("8"))
    with pytest.raises(SweepError, match="--resume"):
        sweep("search", grid, seeds=2, workdir=work, progress=False)
    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save)
    out = sweep("search", grid, seeds=2, workdir=work, resume=True, progress=False)
    assert restored == [("runs00002-00003", 8)]  # continued from step 8 of its first part
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "search_time_s"}  # noqa: E731
                             for r in _results(rows)]  # search_time_s: a wall time
    assert timeless(out["rows"]) == timeless(ref["rows"])
    assert not (work / "checkpoints").exists()
    summary = json.loads((work / "runs" / "00003" / "summary.json").read_text())
    assert summary["search_batched_runs"] == 2
