"""The GLM structure search under four relaxations of Gamma (method.md sections 2-3, 9).

The GLM toy of `experiments.glm_toy` (same data, protocol and coefficient settings, one
temperature) with q(Gamma) a Gumbel-Softmax GS(s, t), a Dirichlet Dir(t s) (implicitly
reparameterised), a softmax-centred logit-normal (logits / t) or the deterministic DARTS
softmax (a point, no structure prior, no temperature). Each relaxation is a different
static strategy, hence its own compiled program; within it the settings x restarts are
one vmapped, jitted scan. The figure shows, per setting and relaxation, samples of the
final q(Gamma) on the simplex (the learned points for softmax); summary.json holds the
probability of each submodel, q(argmax gamma = f_l), estimated from the samples.
`run_many` runs several runs that differ only in the `TRACED` fields (seed, temperature)
as the same programs with one more vmapped axis, the runs (each with its own data, keys
and lambda_temp), and writes every run's own record; `main` is `run_many` of one run.

Run: python -m experiments.relaxations [--smoke] [--workdir DIR] [--figures docs/figures]
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
from experiments.glm import (LABELS, SUBMODELS, Setting, divergence_report,
                             glm_objective, init_states, make_runner, make_trainer,
                             sample_q, stack_settings, submodel_mass, train)
from structsel.data import glm_toy
from structsel.plotting import plot_simplex_hist, simplex_axes, to_cartesian
from structsel.structure import Dirichlet, GumbelSoftmax, LogitNormal, Softmax

NAME = "relaxations"
# Config fields that are traced (arguments of the compiled programs, vmapped over runs):
# runs that differ only in these share one program per relaxation (`run_many`, sweep).
TRACED = ("seed", "temperature")
RELAXATIONS = {"gumbel_softmax": GumbelSoftmax(), "dirichlet": Dirichlet(),
               "logit_normal": LogitNormal(), "softmax": Softmax()}
TITLES = {"gumbel_softmax": "Gumbel-Softmax", "dirichlet": "Dirichlet",
          "logit_normal": "logit-normal", "softmax": "softmax (DARTS, point)"}


@dataclasses.dataclass(frozen=True)
class Config:
    """GLM toy structure search with each relaxation: settings x restarts per relaxation."""

    seed: int = 0
    relaxations: tuple = ("gumbel_softmax", "dirichlet", "logit_normal", "softmax")
    settings: tuple = ((0.01, 1.0, 100.0), (1.0, 1.0, 1.0), (100.0, 1.0, 0.01))
    temperature: float = 1.0
    restarts: int = 5
    iterations: int = 1000
    warmup: int = 500
    num_samples: int = 3
    lr: float = 0.01
    fixed_log_alpha: float | None = -10.0
    log_std_floor: float = -4.0
    noise_std: float = 0.5
    hist_samples: int = 400
    chunk: int = 100
    fast_compile: bool = False     # XLA -O0 (smoke runs)

    @classmethod
    def smoke(cls) -> "Config":
        # two relaxations keep the test short: LogitNormal (theta of length 2K-2) and the
        # deterministic Softmax exercise both code paths of this script; GS runs in glm_toy.
        return cls(relaxations=("logit_normal", "softmax"), restarts=2, iterations=20,
                   warmup=10, hist_samples=50, chunk=10, fast_compile=True)

    def __post_init__(self):
        common.check_fields(self, positive=("temperature",))


def main(argv: Sequence[str] | None = None) -> dict:
    """One run: `run_many` of one command line (summary.json and relaxations.png)."""
    return run_many([argv])[0]


def run_many(argvs: Sequence[Sequence[str] | None]) -> list[dict]:
    """Runs, given by `main`'s command lines, as ONE vmapped program per relaxation over
    runs x settings x restarts; returns their summaries (each also in its workdir).

    The runs may differ only in the `TRACED` fields (else ValueError, before compiling).
    Each run keeps what `main` gives it alone: its own GLM toy data and keys (seeded by
    its seed), its lambda_temp, and its own record. `seconds` and `wall_seconds` are the
    group's; `batched_runs` says how many runs shared the programs.
    """
    return common.run_many(Config, argvs, name=NAME, description=__doc__, traced=TRACED,
                           experiment=_experiment, report=_report)


def _experiment(configs: Sequence[Config], runs, args=None) -> list[dict]:
    """Every relaxation's training and q(Gamma) samples; per run, what `_report` needs."""
    cfg = configs[0]
    unknown = [r for r in cfg.relaxations if r not in RELAXATIONS]
    if unknown or not cfg.relaxations:
        raise ValueError(f"relaxations must be a non-empty tuple of {tuple(RELAXATIONS)}, "
                         f"got {cfg.relaxations!r}")
    x, y = common.stack_runs([glm_toy(seed=c.seed) for c in configs])
    fix = cfg.fixed_log_alpha is not None

    def settings(c):
        rows = [Setting(*coef, c.temperature, np.zeros(0), fix,
                        cfg.fixed_log_alpha if fix else 0.0)
                for coef in cfg.settings for _ in range(cfg.restarts)]
        return stack_settings(rows)._replace(struct=np.zeros((len(rows), 0), np.float32))
    setting = jax.tree.map(lambda *cols: np.stack(cols), *map(settings, configs))
    k_init, k_hist = (jnp.stack(k) for k in zip(*(jax.random.split(jax.random.PRNGKey(c.seed))
                                                 for c in configs)))
    keys = jax.vmap(lambda k: jnp.tile(jax.random.split(k, cfg.restarts),
                                       (len(cfg.settings), 1)))(k_init)
    outcome = [{"samples": {}, "seconds": {}, "divergence": {}} for _ in configs]
    for j, name in enumerate(cfg.relaxations):
        relaxation = RELAXATIONS[name]
        objective = glm_objective(x.shape[-1], relaxation=relaxation,
                                  num_samples=cfg.num_samples, log_std_floor=cfg.log_std_floor,
                                  noise_std=cfg.noise_std)
        trainer = make_trainer(objective, lr=cfg.lr, warmup=cfg.warmup)
        runner = make_runner(trainer, cfg.chunk, fast_compile=cfg.fast_compile, runs=True)
        states = init_states(trainer, objective, x, keys, fast_compile=cfg.fast_compile,
                             runs=True)
        with Timer() as timer:
            states, hist = train(runner, states, setting, x, y, cfg.iterations, cfg.chunk,
                                 desc=name, runs=runs)
        draws = sample_q(relaxation, states.params["struct"][0], setting.temperature,
                         cfg.hist_samples, key=jax.vmap(lambda k: jax.random.fold_in(k, j))(k_hist),
                         fast_compile=cfg.fast_compile, runs=True)
        draws = draws.reshape((len(configs), len(cfg.settings), cfg.restarts) + draws.shape[2:])
        for r, out in enumerate(outcome):
            out["samples"][name] = draws[r]
            out["seconds"][name] = timer.seconds
            out["divergence"][name] = divergence_report(
                jax.tree.map(lambda v: v[r], states),
                {k: v[r] for k, v in hist.items() if k != "chunk_seconds"})
    return outcome


def _report(cfg: Config, out: dict, batched_runs: int):
    """summary.json and relaxations.png of one run from its slice of the group's outcome."""
    import matplotlib.pyplot as plt

    summary: dict[str, Any] = {"log_std_floor": cfg.log_std_floor, "relaxations": {}}
    samples = out["samples"]
    for name, draws in samples.items():
        mass = submodel_mass(draws)                       # (settings, restarts, 3)
        summary["relaxations"][name] = {
            "seconds": out["seconds"][name],
            "divergence": out["divergence"][name],
            "settings": {
                f"lik_q={c[0]:g},prior_q={c[1]:g},prior_l={c[2]:g}": {
                    "mass_mean": mass[i].mean(0), "mass_std": mass[i].std(0),
                    "mean_gamma": draws[i].mean((0, 1)),
                    "argmax": SUBMODELS[int(np.argmax(mass[i].mean(0)))]}
                for i, c in enumerate(cfg.settings)}}
    summary["batched_runs"] = batched_runs

    nr, nc = len(cfg.settings), len(cfg.relaxations)
    fig, axes = plt.subplots(nr, nc, figsize=(3.0 * nc, 2.9 * nr), squeeze=False)
    for j, name in enumerate(cfg.relaxations):
        for i, coef in enumerate(cfg.settings):
            ax, draws = axes[i, j], samples[name][i]
            if RELAXATIONS[name].stochastic:
                plot_simplex_hist(ax, draws.reshape(-1, 3), gridsize=24, log=True, labels=LABELS)
            else:
                simplex_axes(ax, LABELS)
                xy = to_cartesian(draws[:, 0])
                ax.plot(xy[:, 0], xy[:, 1], "o", color="tab:red", ms=5, alpha=0.7,
                        label="gamma per restart")
                if i == 0:
                    ax.legend(fontsize=6, loc="upper left")
            mass = submodel_mass(draws).mean(0)
            ax.set_title(f"{TITLES[name]}\nq: " + "/".join(f"{v:.2f}" for v in mass), fontsize=8,
                         pad=12)
    for i, coef in enumerate(cfg.settings):
        axes[i, 0].text(-0.22, 0.43, rf"$\lambda^Q_{{lik}}$={coef[0]:g}, "
                        rf"$\lambda^Q_{{prior}}$={coef[1]:g}, $\lambda^L_{{prior}}$={coef[2]:g}",
                        rotation=90, ha="center", va="center", fontsize=7)
    fig.suptitle(rf"GLM toy, $\lambda_{{temp}}$={cfg.temperature:g}: final q(Gamma) per "
                 "relaxation (log-count histogram of samples, all restarts); "
                 "q = mass on f_0/f_1/f_2", fontsize=9)
    return summary, {"relaxations.png": fig}


if __name__ == "__main__":
    main()
