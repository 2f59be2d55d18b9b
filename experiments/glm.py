"""GLM machinery shared by the GLM experiments (glm_toy, complexity, relaxations,
enumeration_demo): traced per-run settings, the library losses with those coefficients,
the trainer, the vmapped chunk runner and its training loop, q(Gamma) statistics.

A run's coefficients (lambda_lik^Q, lambda_prior^Q, lambda_prior^L, lambda_struct),
temperature lambda_temp and ARD switch are arrays inside the batch (`Setting`), so a
grid of settings x restarts is one vmapped, jitted `BilevelTrainer.run`, called chunk by
chunk (`train`, on `structsel.loop.run_chunks`) without recompiling. With `runs=True`
the runner, the init and `sample_q` take one more leading axis, the runs of a group
(`run_many` of complexity and relaxations): each run with its own data, keys and settings.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from structsel.bilevel import BilevelTrainer, DivergenceError, check_divergence
from structsel.family import glm_family
from structsel.loop import run_chunks
from structsel.objective import Coefficients, Objective
from structsel.structure import GumbelSoftmax, Relaxation

SUBMODELS = ("f_0", "f_1", "f_2")
LABELS = tuple(f"${name}$" for name in SUBMODELS)    # simplex corners (structsel.plotting)


# ------------------------------------------------------------------ traced settings
class Setting(NamedTuple):
    """Per-run coefficients as arrays (vmappable): lambdas, lambda_temp, lambda_struct, ARD."""

    lik_q: Any
    prior_q: Any
    prior_l: Any
    temperature: Any
    struct: Any            # (P,) lambda_struct per reference
    fix_ard: Any           # bool: after warm-up use log A = fixed_log_alpha
    fixed_log_alpha: Any


def stack_settings(rows: Sequence[Setting]) -> Setting:
    """Stacks settings along a leading run axis (float32 / bool arrays)."""
    cols = [np.asarray(col, dtype=bool if name == "fix_ard" else np.float32)
            for name, col in zip(Setting._fields, zip(*rows))]
    return Setting(*cols)


def glm_objective(num_features: int, *, relaxation: Relaxation = GumbelSoftmax(),
                  num_samples: int = 3, log_std_floor: float | None = -4.0,
                  noise_std: float = 0.5) -> Objective:
    """The GLM objective; its static coefficients are replaced per run (see `make_losses`)."""
    return Objective(glm_family(num_features), "gaussian", relaxation=relaxation,
                     num_samples=num_samples, log_std_floor=log_std_floor,
                     noise_std=noise_std)


def make_losses(objective: Objective, references: Sequence[tuple] = ()):
    """(-L/m, -Q/m) of method.md M6: the library's losses with the coefficients traced.

    batch = (x, y, setting): the run's lambdas reach `Objective` as `ctx.coefficients`
    (lambda_struct[j] multiplies KL(p(Gamma|h) || references[j])), its lambda_temp as
    `ctx.temperature`, and the ARD switch replaces log A after the warm-up.
    """
    objective = dataclasses.replace(
        objective, references=tuple(references),
        coefficients=Coefficients(1.0, 1.0, 1.0, (0.0,) * len(references)))

    def prepare(hparams, batch, ctx):
        x, y, s = batch
        ctx = ctx.replace(temperature=s.temperature.astype(ctx.temperature.dtype),
                          coefficients=Coefficients(s.lik_q, s.prior_q, s.prior_l, s.struct))
        fixed = s.fix_ard & jnp.logical_not(ctx.warmup)
        log_alpha = jax.tree.map(lambda a: jnp.where(fixed, s.fixed_log_alpha, a),
                                 hparams["log_alpha"])
        return dict(hparams, log_alpha=log_alpha), (x, y), ctx

    def inner(params, hparams, batch, ctx):
        hparams, data, ctx = prepare(hparams, batch, ctx)
        return objective.inner_loss(params, hparams, data, ctx)

    def outer(params, hparams, batch, ctx):
        hparams, data, ctx = prepare(hparams, batch, ctx)
        return objective.outer_loss(params, hparams, data, ctx)

    return inner, outer


def make_trainer(objective: Objective, *, lr: float, warmup: int, references=(),
                 method: str = "greedy", inner_steps: int = 1, **options) -> BilevelTrainer:
    """Adam on theta and on h; the history records theta_Gamma of q (params["struct"])."""
    inner, outer = make_losses(objective, references)
    return BilevelTrainer(inner, outer, optax.adam(lr), optax.adam(lr), inner_steps=inner_steps,
                          hypergradient_method=method, hypergradient_options=options,
                          warmup_steps=warmup, structure_fn=lambda p, h, c: p["struct"][0])


def init_states(trainer: BilevelTrainer, objective: Objective, x, keys, *,
                fast_compile: bool = False, runs: bool = False):
    """One trainer state per key (restart), q(w) at the family init, uniform structure;
    with `runs`, x (G, m, d) and keys (G, R) carry a leading run axis."""
    def init(ks, xx):
        return trainer.init_many(lambda k: objective.init(k, xx), ks)
    return jit(jax.vmap(init) if runs else init, fast_compile)(keys, x)


# XLA options for --smoke: backend optimisation off cuts compile time ~3x on CPU (the
# smoke runs are a few steps, so their slower code does not matter; full runs keep -O2).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit(fun, fast_compile: bool = False):
    """jax.jit, with FAST_COMPILE options when `fast_compile` (smoke runs)."""
    return jax.jit(fun, compiler_options=FAST_COMPILE if fast_compile else None)


def make_runner(trainer: BilevelTrainer, chunk: int, *, fast_compile: bool = False,
                runs: bool = False):
    """jit(vmap over rows of trainer.run for `chunk` iterations) (states, settings, x, y);
    with `runs`, one more vmap over a leading run axis of every argument (its own data)."""
    def run(states, settings, x, y):
        return jax.vmap(lambda st, s: trainer.run(st, (x, y, s), (x, y, s), chunk))(
            states, settings)
    return jit(jax.vmap(run) if runs else run, fast_compile)


@functools.lru_cache(maxsize=4)
def grid_program(objective: Objective, *, lr: float, warmup: int, chunk: int,
                 fast_compile: bool = False):
    """(trainer, jitted chunk runner) of the plain grid (no references, greedy), built once
    per process for equal arguments: a rerun in the same process (a resumed run, a test)
    reuses the traced and compiled chunk."""
    trainer = make_trainer(objective, lr=lr, warmup=warmup)
    return trainer, make_runner(trainer, chunk, fast_compile=fast_compile)


def train(runner, states, settings, x, y, iterations: int, chunk: int, *, run_record=None,
          desc: str = "train", checkpointer=None, runs: Sequence | None = None):
    """`structsel.loop.run_chunks` of the chunk runner for `iterations` steps (histories
    concatenated along the step axis); with a `checkpointer` it resumes and saves there.

    Each chunk logs the mean last inner/outer loss and the diverged runs to `run_record`;
    with `runs` (the records of a group), the runner has a leading run axis
    (`make_runner(runs=True)`) and each run logs its own slice to its own record.
    Only the state must stay finite: the trainer freezes a diverged run at its last finite
    state and `divergence_report` reports it. history["chunk_seconds"]: wall time per
    chunk run by this call (the first one includes compilation).
    """
    records = [run_record] if runs is None else list(runs)

    def log(step, _, hist):
        for r, record in enumerate(records):
            if record is None:
                continue
            h = hist if runs is None else {k: hist[k][r] for k in hist}
            record.log_metrics(int(h["step"][0, -1]) + 1, phase=desc,
                               inner_loss=float(np.mean(h["inner_loss"][:, -1])),
                               outer_loss=float(np.mean(h["outer_loss"][:, -1])),
                               diverged=int(np.sum(h["diverged"][:, -1])))
    states, history, info = run_chunks(runner, states, num_steps=iterations, chunk=chunk,
                                       args=(settings, x, y), checkpointer=checkpointer,
                                       on_chunk=log, history_axis=1 if runs is None else 2,
                                       desc=desc, check_finite=lambda st, _: {"state": st})
    history["chunk_seconds"] = np.asarray(info["chunk_seconds"])
    return states, history


def divergence_report(states, history) -> dict:
    """{"diverged_runs": [...], "first": message or None} from bilevel.check_divergence."""
    try:
        check_divergence(states, {k: v for k, v in history.items() if k != "chunk_seconds"})
    except DivergenceError as err:
        runs = np.flatnonzero(np.asarray(history["diverged"]).any(axis=-1)).tolist()
        return {"diverged_runs": runs, "first": str(err)}
    return {"diverged_runs": [], "first": None}


# --------------------------------------------------------------- q(Gamma) statistics
def sample_q(relaxation: Relaxation, thetas, temperatures, n: int, *, key,
             fast_compile: bool = False, runs: bool = False):
    """n draws of gamma from q per run: thetas (R, P), temperatures (R,) -> (R, n, K);
    with `runs`, a leading run axis on thetas, temperatures and key (one key per run)."""
    def one(theta, t, k):
        return jax.vmap(lambda kk: relaxation.sample(theta, t, key=kk))(jax.random.split(k, n))

    def rows(th, ts, k):
        return jax.vmap(one)(th, ts, jax.random.split(k, th.shape[0]))
    return np.asarray(jit(jax.vmap(rows) if runs else rows, fast_compile)(
        jnp.asarray(thetas), jnp.asarray(temperatures), key))


def submodel_mass(samples) -> np.ndarray:
    """q(argmax gamma = l) estimated from samples (..., n, K) -> (..., K)."""
    k = samples.shape[-1]
    return np.mean(np.eye(k)[np.argmax(samples, axis=-1)], axis=-2)
