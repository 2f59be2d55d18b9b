"""Parametric complexity as lambda_prior^Q grows (seminar homework 2, method.md sections 5-6).

On the GLM toy, the inner problem is the ELBO (lambda_prior^L = 1, lambda_lik^Q = 1) and
the outer weight of the prior term lambda_prior^Q sweeps 0.01 .. 100 (log-spaced). The
claim to check: a larger lambda_prior^Q gives a solution of lower parametric complexity

    C_p(theta) = min_h KL(q(w, Gamma | theta) || p(w, Gamma | h))
               = sum_i 0.5 log(1 + mu_i^2 / sigma_i^2)          (ARD prior N(0, A^{-1})),

(`structsel.pruning.parametric_complexity`; the structure part is 0 since p_Gamma and q_Gamma
are the same GS family) and of lower KL(q || p(. | h*)) at the learned h*. The prior is the
ARD prior N(0, A^{-1}) for the whole run (the warm-up prior of the GLM protocol), for which
C_p is exact and no log-std floor is needed (floor: none). lambda_prior^Q changes h* only
through theta*(h), so the hypergradient is the exact implicit one (dense Hessian of -L,
small ridge), with `inner_steps` warm-started inner Adam steps per outer step. Every
(lambda_prior^Q, seed) pair is one run of a single vmapped, jitted scan. Whether C_p and
the KL decrease monotonically is computed (on the seed means) and reported, not assumed.
`run_many` runs several runs that differ only in the `TRACED` fields (seed, lik_q,
prior_l, temperature) as the same programs with one more vmapped axis, the runs (each
with its own data, keys and coefficients), and writes every run's own record; `main` is
`run_many` of one run.

Run: python -m experiments.complexity [--smoke] [--workdir DIR] [--figures docs/figures]
"""

from __future__ import annotations

if not __package__:  # run as a file (python experiments/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.common import Timer
from experiments.glm import (Setting, divergence_report, glm_objective, init_states, jit,
                             make_runner, make_trainer, stack_settings, train)
from structsel.data import glm_toy
from structsel.objective import Context
from structsel.pruning import parametric_complexity
from structsel.variational import structure_kl, weight_kl


NAME = "complexity"
# Config fields that are traced (arguments of the compiled programs, vmapped over runs):
# runs that differ only in these share one program (`run_many`, `structsel sweep`).
TRACED = ("seed", "lik_q", "prior_l", "temperature")


@dataclasses.dataclass(frozen=True)
class Config:
    """lambda_prior^Q sweep x seeds on the GLM toy; C_p and KL(q || p) of each solution."""

    seed: int = 0
    seeds: int = 4
    prior_q: tuple = tuple(float(v) for v in np.logspace(-2, 2, 9))
    lik_q: float = 1.0
    prior_l: float = 1.0
    temperature: float = 1.0
    iterations: int = 600          # outer steps
    inner_steps: int = 5
    lr: float = 0.01
    ridge: float = 1e-3            # Tikhonov damping of the Hessian in the exact solve
    num_samples: int = 3
    noise_std: float = 0.5
    eval_samples: int = 2000       # Monte Carlo samples for the structure KL and E log p
    chunk: int = 100
    fast_compile: bool = False     # XLA -O0 (smoke runs)

    @classmethod
    def smoke(cls) -> "Config":
        return cls(seeds=2, prior_q=(0.01, 1.0, 100.0), iterations=10, inner_steps=2,
                   eval_samples=50, chunk=5, fast_compile=True)

    def __post_init__(self):
        common.check_fields(self, positive=("temperature",), nonnegative=("lik_q", "prior_l"))


def _is_monotone_decreasing(values) -> bool:
    return bool(np.all(np.diff(np.asarray(values)) < 0))


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: Sequence[str] | None = None) -> dict:
    """One run: `run_many` of one command line (summary.json and complexity.png)."""
    return run_many([argv])[0]


def run_many(argvs: Sequence[Sequence[str] | None]) -> list[dict]:
    """Runs, given by `main`'s command lines, as ONE vmapped training program and ONE
    evaluation over runs x lambda_prior^Q x seeds; returns their summaries (each also in
    its workdir).

    The runs may differ only in the `TRACED` fields (else ValueError, before compiling).
    Each run keeps what `main` gives it alone: its own GLM toy data and keys (seeded by
    its seed), its lambda_lik^Q, lambda_prior^L and lambda_temp, and its own record.
    `seconds` and `wall_seconds` are the group's; `batched_runs` says how many runs
    shared the programs.
    """
    return common.run_many(Config, argvs, name=NAME, description=__doc__, traced=TRACED,
                           experiment=_experiment, report=_report)


def _experiment(configs: Sequence[Config], runs, args=None) -> list[dict]:
    """The sweep's training and the evaluation of every solution; per run, what
    `_report` needs."""
    cfg = configs[0]
    x, y = common.stack_runs([glm_toy(seed=c.seed) for c in configs])
    objective = glm_objective(x.shape[-1], num_samples=cfg.num_samples, log_std_floor=None,
                              noise_std=cfg.noise_std)
    trainer = make_trainer(objective, lr=cfg.lr, warmup=cfg.iterations, method="exact",
                           inner_steps=cfg.inner_steps, ridge=cfg.ridge)
    runner = make_runner(trainer, cfg.chunk, fast_compile=cfg.fast_compile, runs=True)
    lams = tuple(cfg.prior_q)

    def settings(c):
        rows = [Setting(c.lik_q, lam, c.prior_l, c.temperature, np.zeros(0), False, 0.0)
                for lam in lams for _ in range(cfg.seeds)]
        return stack_settings(rows)._replace(struct=np.zeros((len(rows), 0), np.float32))
    setting = jax.tree.map(lambda *cols: np.stack(cols), *map(settings, configs))
    k_init, k_eval = (jnp.stack(k) for k in zip(*(jax.random.split(jax.random.PRNGKey(c.seed))
                                                 for c in configs)))
    keys = jax.vmap(lambda k: jnp.tile(jax.random.split(k, cfg.seeds), (len(lams), 1)))(k_init)
    states = init_states(trainer, objective, x, keys, fast_compile=cfg.fast_compile, runs=True)
    with Timer() as timer:
        states, hist = train(runner, states, setting, x, y, cfg.iterations, cfg.chunk,
                             desc="sweep", runs=runs)

    evaluator = dataclasses.replace(objective, num_samples=cfg.eval_samples)

    def evaluate(params, hparams, key, x, y, temperature):
        k_s, k_t = jax.random.split(key)
        q = params["w"]
        ctx = Context.create(k_t, temperature, True)
        kl_w = weight_kl(q, hparams["log_alpha"], warmup=True, log_std_floor=None)
        kl_s = structure_kl(objective.relaxation, params["struct"], hparams["struct"],
                            ctx.temperature, key=k_s, num_samples=cfg.eval_samples)
        return {"c_p": parametric_complexity(q), "kl_weights": kl_w, "kl_structure": kl_s,
                "kl": kl_w + kl_s, "log_lik": evaluator.terms(params, hparams, (x, y), ctx).log_lik,
                "mass": jax.nn.softmax(params["struct"][0])}

    rows = keys.shape[1]
    run = jax.vmap(jax.vmap(evaluate, in_axes=(0, 0, 0, None, None, None)))
    ev = jit(run, cfg.fast_compile)(states.params, states.hparams,
                                    jax.vmap(lambda k: jax.random.split(k, rows))(k_eval), x, y,
                                    jnp.asarray([c.temperature for c in configs]))
    return [{"seconds": timer.seconds,
             "divergence": divergence_report(
                 jax.tree.map(lambda v: v[r], states),
                 {k: v[r] for k, v in hist.items() if k != "chunk_seconds"}),
             "ev": {k: np.asarray(v[r]).reshape((len(lams), cfg.seeds) + np.shape(v)[2:])
                    for k, v in ev.items()}}
            for r in range(len(configs))]


def _report(cfg: Config, out: dict, batched_runs: int):
    """summary.json and complexity.png of one run from its slice of the group's outcome."""
    import matplotlib.pyplot as plt

    lams, ev = tuple(cfg.prior_q), out["ev"]
    means = {k: v.mean(1) for k, v in ev.items()}
    summary: dict[str, Any] = {
        "seconds": out["seconds"],
        "divergence": out["divergence"],
        "prior_q": lams,
        "per_prior_q": {f"{lam:g}": {k: {"mean": ev[k][i].mean(0), "std": ev[k][i].std(0)}
                                     for k in ev} for i, lam in enumerate(lams)},
        "c_p_monotone_decreasing": _is_monotone_decreasing(means["c_p"]),
        "kl_monotone_decreasing": _is_monotone_decreasing(means["kl"]),
        "spearman_c_p_vs_log_prior_q": _spearman(np.log(lams), means["c_p"]),
        "spearman_kl_vs_log_prior_q": _spearman(np.log(lams), means["kl"]),
        "batched_runs": batched_runs,
    }

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = (("c_p", r"$C_p(\theta)=\min_h KL(q\,\|\,p(\cdot|h))$"),
              ("kl", r"$KL(q\,\|\,p(\cdot|h^*))$ (weights + structure)"),
              ("log_lik", r"$E_q \log p(y|x,w,\Gamma)$ per object"))
    for ax, (name, label) in zip(axes, panels):
        for s in range(cfg.seeds):
            ax.plot(lams, ev[name][:, s], "o", ms=3, color="0.6",
                    label="seeds" if s == 0 else None)
        ax.plot(lams, means[name], "-", color="tab:blue", label="mean over seeds")
        ax.set_xscale("log")
        ax.set_xlabel(r"$\lambda^Q_{prior}$")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(rf"GLM toy, ELBO inner problem ($\lambda^L_{{prior}}$={cfg.prior_l:g}, "
                 rf"$\lambda^Q_{{lik}}$={cfg.lik_q:g}, $\lambda_{{temp}}$={cfg.temperature:g}): "
                 rf"complexity of the solution vs $\lambda^Q_{{prior}}$ "
                 f"(C_p monotone decreasing: {summary['c_p_monotone_decreasing']})", fontsize=9)
    fig.tight_layout()
    return summary, {"complexity.png": fig}


if __name__ == "__main__":
    main()
