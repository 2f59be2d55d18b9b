"""GLM-toy experiment scripts: traced-coefficient losses against the library objective, and
every script end to end with --smoke (files, keys, figures, invariants of the numbers)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import complexity, enumeration_demo, glm, glm_toy, relaxations
from structsel.data import glm_toy as glm_data
from structsel.objective import Coefficients, Context, Objective


def _record(path):
    config = json.loads((path / "config.json").read_text())
    assert {"config", "seed", "versions", "git_revision"} <= set(config)
    assert config["versions"]["jax"]
    summary = json.loads((path / "summary.json").read_text())
    assert (path / "metrics.jsonl").read_text().strip()
    return config, summary


def _png(path, name):
    data = (path / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


@pytest.mark.parametrize("fix", [False, True])
def test_traced_losses_match_objective(fix):
    # The scripts carry the coefficients in the batch so runs can be vmapped; they must
    # equal the library's Objective with the same static coefficients (same ctx key, so
    # the same Monte Carlo draws). float32 sums of ~15 terms: rtol 1e-5.
    x, y = glm_data(seed=1)
    base = glm.glm_objective(x.shape[1], num_samples=2)
    coef = (0.5, 2.0, 3.0)
    ref = Objective(base.family, "gaussian", coefficients=Coefficients(*coef), num_samples=2,
                    noise_std=0.5)
    params, hparams = ref.init(jax.random.PRNGKey(0), x)
    hparams = dict(hparams, struct=(jnp.array([0.3, -0.2, 0.1]),))
    setting = glm.Setting(*map(jnp.asarray, coef), jnp.asarray(0.7), jnp.zeros(0),
                          jnp.asarray(fix), jnp.asarray(-10.0))
    inner, outer = (glm.jit(f, True) for f in glm.make_losses(base))
    ref_inner, ref_outer = glm.jit(ref.inner_loss, True), glm.jit(ref.outer_loss, True)
    # the trainer's context says lambda_temp = 5; the losses must use the setting's 0.7
    ctx = Context.create(jax.random.PRNGKey(3), 5.0, False)
    ref_ctx = ctx.replace(temperature=jnp.asarray(0.7))
    expected_h = dict(hparams, log_alpha=jax.tree.map(lambda a: jnp.full_like(a, -10.0),
                                                      hparams["log_alpha"])) if fix else hparams
    batch = (x, y, setting)
    np.testing.assert_allclose(inner(params, hparams, batch, ctx),
                               ref_inner(params, expected_h, (x, y), ref_ctx), rtol=1e-5)
    np.testing.assert_allclose(outer(params, hparams, batch, ctx),
                               ref_outer(params, expected_h, (x, y), ref_ctx), rtol=1e-5)
    # during warm-up the learned A is always used
    warm = ctx.replace(warmup=jnp.asarray(True))
    np.testing.assert_allclose(inner(params, hparams, batch, warm),
                               ref_inner(params, hparams, (x, y),
                                         ref_ctx.replace(warmup=jnp.asarray(True))), rtol=1e-5)


def test_structure_penalty_matches_objective():
    # lambda_struct travels in the batch; with the same references the outer loss must
    # equal the library's Objective with static coefficients.struct (rtol as above).
    x, y = glm_data(seed=2)
    cfg = enumeration_demo.Config()
    refs = enumeration_demo.vertex_references(cfg)
    base = glm.glm_objective(x.shape[1], num_samples=2)
    lam = (-1.0, 0.5, -2.0)
    ref = Objective(base.family, "gaussian", coefficients=Coefficients(0.01, 1.0, 100.0, lam),
                    references=refs, num_samples=2, noise_std=0.5)
    params, hparams = ref.init(jax.random.PRNGKey(0), x)
    setting = glm.Setting(jnp.asarray(0.01), jnp.asarray(1.0), jnp.asarray(100.0),
                          jnp.asarray(1.0), jnp.asarray(lam), jnp.asarray(False),
                          jnp.asarray(0.0))
    outer = glm.jit(glm.make_losses(base, refs)[1], True)
    ref_outer = glm.jit(ref.outer_loss, True)
    ctx = Context.create(jax.random.PRNGKey(4), 1.0, False)
    np.testing.assert_allclose(outer(params, hparams, (x, y, setting), ctx),
                               ref_outer(params, hparams, (x, y), ctx), rtol=1e-5)


def test_submodel_mass():
    samples = np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]]])
    np.testing.assert_allclose(glm.submodel_mass(samples), [[0.5, 0.25, 0.25]])


SMOKE = ["--smoke", "--checkpoint-every", "10"]   # checkpoints: for the resume test below


@pytest.fixture(scope="module")
def glm_smoke(tmp_path_factory):
    """One uninterrupted glm_toy --smoke run (with checkpoints), shared by two tests."""
    path = tmp_path_factory.mktemp("glm_toy")
    return path, glm_toy.main(SMOKE + ["--workdir", str(path)])


def test_glm_toy_smoke(glm_smoke):
    tmp_path, summary = glm_smoke
    config, written = _record(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "grid").iterdir()) \
        == ["20", "20.sha256.json"]                         # keep = 1: the last one
    assert config["config"]["iterations"] == glm_toy.Config.smoke().iterations
    assert set(written) >= {"cells", "findings", "rho_at_lowest_temperature", "long",
                            "grid_divergence", "log_std_floor", "grid_seconds"}
    assert len(written["cells"]) == 9
    for cell in written["cells"].values():
        # GS mass = softmax(log s): a distribution over the 3 submodels per restart
        np.testing.assert_allclose(np.sum(cell["mass_per_restart"], -1), 1.0, rtol=1e-5)
        assert np.allclose(cell["mass_mean"], np.mean(cell["mass_per_restart"], 0), atol=1e-6)
    rho = written["rho_at_lowest_temperature"]
    values = [v for k, v in rho.items() if k.startswith("lik_q")]
    assert len(values) == 3 and all(0 <= r <= 1 for v in values for r in v)
    assert len(rho["names"]) == len(values[0]) == 15       # 1 + 2 + 12 GLM weights
    assert summary["log_std_floor"] == -4.0
    for name in ("glm_grid.png", "glm_fits.png", "glm_rho.png", "glm_long.png"):
        _png(tmp_path, name)


def test_enumeration_demo_smoke(tmp_path):
    enumeration_demo.main(["--smoke", "--workdir", str(tmp_path)])
    _, written = _record(tmp_path)
    assert set(written) >= {"demo", "schedule", "divergence", "seconds"}
    assert len(written["schedule"]["mass_mean_at_phase_end"]) == len(
        enumeration_demo.Config.smoke().schedule)
    np.testing.assert_allclose(np.sum(written["demo"]["mass_mean"]), 1.0, rtol=1e-5)
    _png(tmp_path, "enumeration_demo.png")


@pytest.mark.slow  # two compiled programs / the exact-Hessian hypergradient: ~20 s
def test_complexity_smoke(tmp_path):
    complexity.main(["--smoke", "--workdir", str(tmp_path)])
    _, written = _record(tmp_path)
    assert set(written) >= {"per_prior_q", "c_p_monotone_decreasing", "kl_monotone_decreasing",
                            "spearman_c_p_vs_log_prior_q", "divergence"}
    assert isinstance(written["c_p_monotone_decreasing"], bool)
    for stats in written["per_prior_q"].values():
        # C_p = min_h KL(q || p(h)) <= KL at the learned h (weights part); the structure
        # KL is a Monte Carlo estimate of a non-negative quantity. float32: 1e-4 slack.
        assert stats["c_p"]["mean"] <= stats["kl_weights"]["mean"] + 1e-4
        assert stats["c_p"]["mean"] >= 0
    _png(tmp_path, "complexity.png")


@pytest.mark.slow  # two compiled programs / the exact-Hessian hypergradient: ~20 s
def test_relaxations_smoke(tmp_path):
    relaxations.main(["--smoke", "--workdir", str(tmp_path)])
    _, written = _record(tmp_path)
    assert set(written["relaxations"]) == set(relaxations.Config.smoke().relaxations)
    for name, rec in written["relaxations"].items():
        assert len(rec["settings"]) == 3
        for cell in rec["settings"].values():
            np.testing.assert_allclose(np.sum(cell["mass_mean"]), 1.0, rtol=1e-5)
            np.testing.assert_allclose(np.sum(cell["mean_gamma"]), 1.0, rtol=1e-4)
    _png(tmp_path, "relaxations.png")


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="relaxations"):
        relaxations.main(["--smoke", "--workdir", str(tmp_path), "--set",
                          'relaxations=["hard_concrete"]'])
    with pytest.raises(ValueError, match="schedule"):
        enumeration_demo.main(["--smoke", "--workdir", str(tmp_path), "--set",
                               "schedule=[[1, 0]]"])


_SLOW_DRIVER = """
import sys, time
import experiments.glm_toy as g
grid_program = g.grid_program
def slow_program(*args, **kwargs):    # chunks after the first sleep: time to kill
    trainer, run = grid_program(*args, **kwargs)
    calls = []
    def chunk(*a):
        out = run(*a)
        calls.append(1)
        if len(calls) > 1:
            time.sleep(60)
        return out
    return trainer, chunk
g.grid_program = slow_program
g.main(sys.argv[1:])
"""


def _without_timings(summary):
    if isinstance(summary, dict):
        return {k: _without_timings(v) for k, v in summary.items() if "seconds" not in k}
    return summary


def test_sigkilled_glm_toy_resumes_identically(glm_smoke, tmp_path):
    """glm_toy --smoke with checkpoints every chunk, SIGKILLed after the first checkpoint,
    then rerun with --resume: summary and metrics equal the uninterrupted run's (the
    oracle; bitwise, since the same compiled chunks see the same states)."""
    reference, _ = glm_smoke
    repo = pathlib.Path(__file__).resolve().parent.parent
    args = SMOKE
    work = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(repo), MPLBACKEND="Agg",
               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _SLOW_DRIVER, *args, "--workdir",
                                 str(work)], cwd=repo, env=env, stdout=out, stderr=out)
    marker = work / "checkpoints" / "grid" / "10.sha256.json"   # written after step 10's save
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), log.read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)           # mid-run: chunk 2 of the grid is running
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(p.name for p in (work / "checkpoints" / "grid").iterdir() if p.is_dir()) \
        == ["10"]
    assert not (work / "summary.json").exists()
    glm_toy.main(args + ["--workdir", str(work), "--resume"])
    summaries = [json.loads((d / "summary.json").read_text()) for d in (reference, work)]
    assert _without_timings(summaries[1]) == _without_timings(summaries[0])
    assert (work / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    assert sorted(p.name for p in (work / "checkpoints" / "grid").iterdir() if p.is_dir()) \
        == ["20"]
