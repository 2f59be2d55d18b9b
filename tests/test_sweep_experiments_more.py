"""Experiments vectorised in a sweep, beyond two_layer_digits: vae_ard, relaxations and
complexity `run_many` (docs/sweep.md, "Vectorised experiments").

For each, one group of smoke runs that differ in their seeds and a traced hyperparameter
is run once (a module fixture) and serves as the reference: a run alone (`main`) equals
the same run in the group, the group's programs are traced once, and a group that
differs in a static field is refused before anything is compiled.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import vae_ard
from structsel.sweep import SweepError, sweep


def _argv(workdir, seed, *extra, **sets):
    """main's command line of a smoke run: its seed and a --set for each of `sets`."""
    return ["--smoke", "--workdir", str(workdir), "--seed", str(seed),
            *(a for k, v in sets.items() for a in ("--set", f"{k}={v}")), *extra]


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_each_run_has_its_record(root, runs, summaries, num_metrics):
    """runs[i] = (seed, {field: value}) wrote root/g<i>: config.json with its seed, fields,
    versions and git revision; its summary with the group's size; its metrics.jsonl."""
    for i, (seed, fields) in enumerate(runs):
        record = json.loads((root / f"g{i}" / "config.json").read_text())
        assert record["seed"] == seed and record["git_revision"] and record["versions"]
        assert {k: record["config"][k] for k in fields} == fields
        assert summaries[i]["batched_runs"] == len(runs)
        assert len(_metrics(root / f"g{i}")) == num_metrics


def _run_recording(module, run_many, names):
    """`run_many()` with `module.programs` cleared and its programs `names` wrapped: the
    calls (the leading (runs, seeds) shape of the first argument's leaves), the programs'
    trace counts and the cache's misses, right after the group."""
    programs, calls = module.programs, {name: [] for name in names}
    programs.cache_clear()

    def wrap(name, fn):
        def call(*args):
            calls[name].append({leaf.shape[:2] for leaf in jax.tree.leaves(args[0])})
            return fn(*args)
        return call

    def recording(*args):
        prog = programs(*args)
        return prog._replace(**{n: wrap(n, getattr(prog, n)) for n in names}), prog

    built = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "programs", lambda *a: built.append(recording(*a)) or built[-1][0])
        summaries = run_many()
    traces = {n: getattr(prog, n)._cache_size() for _, prog in built for n in names}
    return summaries, {"calls": calls, "traces": traces, "misses": programs.cache_info().misses,
                       "built": len(built)}


# ------------------------------------------------------------------------------ vae_ard
# seed, learning_rate, weight_decay, gate_prior of the runs of the group
VAE_RUNS = [(0, 2e-3, 1.0, 0.05), (4, 5e-3, 0.5, 0.2), (9, 1e-3, 2.0, 0.0)]
# A run alone and in the group is the same computation per run, but vmap over 1 or 3 runs
# lets XLA vectorise the float32 matmuls and reductions differently: equal up to a few
# float32 ulps accumulated over the smoke run's 40 Adam steps (observed: the training
# bit-identical, the test ELBOs within 1 ulp, 4e-6 of ~40 nats).
VAE_RTOL, VAE_ATOL = 1e-5, 1e-6
VAE_KEYS = ("gamma", "kl_per_dim", "val_elbo_by_kept_dims", "test_elbo_full",
            "test_elbo_pruned")


def _vae_argv(workdir, seed, learning_rate, weight_decay, gate_prior):
    return _argv(workdir, seed, learning_rate=learning_rate, weight_decay=weight_decay,
                 gate_prior=gate_prior)


@pytest.fixture(scope="module")
def vae_group(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae_group")
    argvs = [_vae_argv(root / f"g{i}", *run) for i, run in enumerate(VAE_RUNS)]
    summaries, record = _run_recording(vae_ard, lambda: vae_ard.run_many(argvs),
                                       ("init", "chunk", "val_elbo", "evaluate"))
    return {"root": root, "summaries": summaries, **record}


def test_vae_group_is_one_traced_program_and_keeps_each_runs_record(vae_group):
    cfg = vae_ard.Config.smoke()
    # one set of programs, each traced once; training is steps / log_every calls of ONE
    # chunk program over all runs x seeds (not a loop over runs)
    assert vae_group["misses"] == 1 and vae_group["built"] == 1
    assert vae_group["traces"] == dict.fromkeys(("init", "chunk", "val_elbo", "evaluate"), 1)
    batch = {(len(VAE_RUNS), cfg.num_seeds)}
    assert vae_group["calls"]["chunk"] == [batch] * (cfg.steps // cfg.log_every)
    assert vae_group["calls"]["evaluate"] == [batch]
    runs = [(seed, {"learning_rate": lr, "weight_decay": wd, "gate_prior": gp})
            for seed, lr, wd, gp in VAE_RUNS]
    _assert_each_run_has_its_record(vae_group["root"], runs, vae_group["summaries"],
                                    cfg.steps // cfg.log_every)
    assert all((vae_group["root"] / f"g{i}" / "vae_relevance.png").exists() for i in range(3))
    gammas = [np.asarray(s["gamma"]) for s in vae_group["summaries"]]
    assert all(not np.allclose(gammas[i], gammas[j]) for i in range(3) for j in range(i))


def test_vae_run_alone_equals_the_same_run_in_the_group(vae_group, tmp_path):
    i = 1
    alone = vae_ard.main(_vae_argv(tmp_path, *VAE_RUNS[i]))
    grouped = vae_group["summaries"][i]
    assert alone["batched_runs"] == 1
    for key in VAE_KEYS:
        np.testing.assert_allclose(alone[key], grouped[key], rtol=VAE_RTOL, atol=VAE_ATOL,
                                   err_msg=key)
    assert alone["kept_dims"] == grouped["kept_dims"] and alone["best_k"] == grouped["best_k"]
    a, b = _metrics(tmp_path), _metrics(vae_group["root"] / f"g{i}")
    for key in ("train_loss", "val_elbo", "gamma"):
        np.testing.assert_allclose([m[key] for m in a], [m[key] for m in b], rtol=VAE_RTOL,
                                   atol=VAE_ATOL, err_msg=key)


def test_vae_run_in_the_group_equals_the_static_hyperparameter_program(vae_group):
    # the oracle: what vae_ard ran before its hyperparameters were traced, plain
    # optax.adam(lr) and Python-float coefficients, x_train a constant of the program
    i = 2
    seed, lr, wd, gp = VAE_RUNS[i]
    cfg = vae_ard.Config.smoke()
    model = vae_ard.GatedVAE(cfg)
    x_train = jnp.asarray(vae_ard.load_pixels(seed)[0])
    opt = optax.adam(lr)
    k_init, k_train, _ = jax.random.split(jax.random.key(seed), 3)

    def init(key):
        params = model.init(key, x_train)
        return params, opt.init(params)

    params, opt_state = jax.jit(jax.vmap(init))(jax.random.split(k_init, cfg.num_seeds))
    carry = (params, opt_state, jax.random.split(k_train, cfg.num_seeds))
    penalty = vae_ard.Penalty(wd, gp)
    chunk = jax.jit(jax.vmap(lambda c, t: vae_ard.train_chunk(model, opt, x_train, penalty,
                                                              c, t), in_axes=(0, None)))
    losses = []
    for start in range(0, cfg.steps, cfg.log_every):
        carry, loss = chunk(carry, jnp.arange(start, start + cfg.log_every))
        losses.append(np.asarray(loss))
    got = _metrics(vae_group["root"] / f"g{i}")
    np.testing.assert_allclose([m["train_loss"] for m in got], losses, rtol=VAE_RTOL,
                               atol=VAE_ATOL)
    np.testing.assert_allclose(vae_group["summaries"][i]["gamma"],
                               jax.vmap(model.gamma)(carry[0]), rtol=VAE_RTOL, atol=VAE_ATOL)


def test_vae_sweep_runs_seeds_and_a_traced_key_as_one_run_many_call(vae_group, tmp_path,
                                                                     monkeypatch):
    calls, run_many = [], vae_ard.run_many

    def recording(argvs):
        calls.append(len(argvs))
        return run_many(argvs)
    monkeypatch.setattr(vae_ard, "run_many", recording)
    seed, lr, wd, gp = VAE_RUNS[1]
    grid = {"smoke": [True], "learning_rate": [lr, 3e-3], "weight_decay": [wd],
            "gate_prior": [gp]}
    out = sweep("vae_ard", grid, seeds=[seed, 7], workdir=tmp_path / "w", progress=False)
    assert calls == [4]
    assert [r["group_runs"] for r in out["rows"]] == ["4"] * 4
    run0 = json.loads((tmp_path / "w" / "runs" / "00000" / "summary.json").read_text())
    for key in VAE_KEYS:          # its run 0 is VAE_RUNS[1]: the same run as in the group
        np.testing.assert_allclose(run0[key], vae_group["summaries"][1][key], rtol=VAE_RTOL,
                                   atol=VAE_ATOL, err_msg=key)


# ----------------------------------------------------------- relaxations and complexity
# Their runs differ in the GLM toy data (seeded by the run's seed) and the keys, so a
# group is one more vmapped axis (runs) over their programs' settings x restarts, each run
# with its own data. A run alone and in the group: the same per-run computation, vmapped
# over 1 or 2 runs; equal to float32 rounding (observed: bit-identical on the smoke runs).
# The summaries hold Monte Carlo submodel masses (counts of argmax over the draws), so
# they are compared at the resolution of one draw; the losses to rtol 1e-5.
GLM_RTOL, GLM_ATOL = 1e-5, 1e-6


def _runner_recording(module, run_many):
    """`run_many()` with `module.make_runner` recording the runners it builds and the
    leading (runs, rows) shapes of the states of each call."""
    built, make_runner = [], module.make_runner

    def recording(*args, **kwargs):
        runner = make_runner(*args, **kwargs)
        calls = []

        def call(states, *rest):
            calls.append({leaf.shape[:2] for leaf in jax.tree.leaves(states)})
            return runner(states, *rest)
        built.append((runner, calls))
        return call
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "make_runner", recording)
        summaries = run_many()
    return summaries, [{"traces": r._cache_size(), "calls": c} for r, c in built]


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}
    return {prefix: tree}


def _assert_same_glm_run(a, b, dir_a, dir_b, *, draws: int):
    """Two summaries (and metrics.jsonl) of the same run: masses to one draw in `draws`,
    every other number to GLM_RTOL; times and the group size left out."""
    fa, fb = _flat(a), _flat(b)
    assert set(fa) == set(fb)
    for key in fa:
        if key.endswith(("seconds", "batched_runs")):
            continue
        if isinstance(fa[key], str) or isinstance(fa[key], bool) or fa[key] is None:
            assert fa[key] == fb[key], key
        elif "mass" in key:
            np.testing.assert_allclose(fa[key], fb[key], atol=1 / draws, err_msg=key)
        elif not isinstance(fa[key], list) or fa[key]:
            np.testing.assert_allclose(np.asarray(fa[key], float), np.asarray(fb[key], float),
                                       rtol=GLM_RTOL, atol=GLM_ATOL, err_msg=key)
    ma, mb = _metrics(dir_a), _metrics(dir_b)
    assert [(m["step"], m["phase"], m["diverged"]) for m in ma] == [
        (m["step"], m["phase"], m["diverged"]) for m in mb]
    for key in ("inner_loss", "outer_loss"):
        np.testing.assert_allclose([m[key] for m in ma], [m[key] for m in mb], rtol=GLM_RTOL,
                                   atol=GLM_ATOL, err_msg=key)


GLM_CASES = {   # experiment: (traced key, [(seed, value) per run of the group])
    "relaxations": ("temperature", [(0, 1.0), (3, 0.5)]),
    "complexity": ("prior_l", [(0, 1.0), (3, 0.3)]),
}


@pytest.fixture(scope="module", params=sorted(GLM_CASES))
def glm_group(request, tmp_path_factory):
    import importlib

    module = importlib.import_module(f"experiments.{request.param}")
    key, runs = GLM_CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    argvs = [_argv(root / f"g{i}", seed, **{key: value}) for i, (seed, value) in enumerate(runs)]
    summaries, runners = _runner_recording(module, lambda: module.run_many(argvs))
    return {"module": module, "key": key, "runs": runs, "root": root,
            "summaries": summaries, "runners": runners}


def _draws(module):
    cfg = module.Config.smoke()
    return cfg.restarts * cfg.hist_samples if hasattr(cfg, "hist_samples") else 1


def test_glm_group_is_one_traced_program_and_keeps_each_runs_record(glm_group):
    module, runs = glm_group["module"], glm_group["runs"]
    cfg = module.Config.smoke()
    programs = len(getattr(cfg, "relaxations", ("one",)))     # one per relaxation
    rows = (len(cfg.settings) * cfg.restarts if hasattr(cfg, "settings")
            else len(cfg.prior_q) * cfg.seeds)
    assert len(glm_group["runners"]) == programs
    chunks = cfg.iterations // cfg.chunk
    for runner in glm_group["runners"]:
        assert runner["traces"] == 1
        assert runner["calls"] == [{(len(runs), rows)}] * chunks
    _assert_each_run_has_its_record(glm_group["root"],
                                    [(seed, {glm_group["key"]: v}) for seed, v in runs],
                                    glm_group["summaries"], programs * chunks)
    a, b = (_flat(s) for s in glm_group["summaries"])
    assert any(not np.allclose(a[k], b[k]) for k in a if "mean" in k)


def test_glm_run_alone_equals_the_same_run_in_the_group(glm_group, tmp_path):
    module = glm_group["module"]
    i = 1
    seed, value = glm_group["runs"][i]
    alone = module.main(_argv(tmp_path, seed, **{glm_group["key"]: value}))
    assert alone["batched_runs"] == 1
    _assert_same_glm_run(json.loads((tmp_path / "summary.json").read_text()),
                         json.loads((glm_group["root"] / f"g{i}" / "summary.json").read_text()),
                         tmp_path, glm_group["root"] / f"g{i}", draws=_draws(module))


# ------------------------------------------------------------ refused before compiling
# what each experiment compiles first: a refused group must not get there
COMPILES = {"vae_ard": "programs", "relaxations": "make_runner", "complexity": "make_runner"}


@pytest.mark.parametrize("name, traced, static, first", [
    ("vae_ard", {"learning_rate": 5e-3}, "hidden=8", 16),
    ("relaxations", {"temperature": 0.5}, "restarts=3", 2),
    ("complexity", {"prior_l": 0.3}, "iterations=15", 10),
])
def test_runs_differing_in_a_static_field_are_refused_before_compiling(
        tmp_path, monkeypatch, name, traced, static, first):
    import importlib

    module = importlib.import_module(f"experiments.{name}")
    monkeypatch.setattr(module, COMPILES[name], lambda *a, **k: pytest.fail("compiled"))
    argvs = [_argv(tmp_path / "a", 0), _argv(tmp_path / "b", 3, "--set", static, **traced)]
    field, value = static.split("=")
    key = next(iter(traced))
    with pytest.raises(ValueError, match=rf"may differ only in .*{key}.*; {field} is {first} "
                                         rf"in the first and {value} in another"):
        module.run_many(argvs)


@pytest.mark.parametrize("name, grid, match", [
    ("vae_ard", ["learning_rate=abc"], "grid key learning_rate must be a finite number, got 'abc'"),
    ("vae_ard", ["smoke=true", "gate_prior=-1"], "gate_prior must be >= 0 and finite, got -1.0"),
    ("relaxations", ["temperature=abc"], "grid key temperature must be a finite number"),
    ("relaxations", ["smoke=true", "temperature=0"], "temperature must be a finite number > 0"),
    ("complexity", ["smoke=true", "lik_q=-1"], "lik_q must be a finite number >= 0, got -1.0"),
])
def test_a_bad_traced_key_is_refused_before_compiling(tmp_path, monkeypatch, name, grid, match):
    import importlib

    module = importlib.import_module(f"experiments.{name}")
    monkeypatch.setattr(module, COMPILES[name], lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(SweepError, match=match):
        sweep(name, grid, seeds=1, workdir=tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()
