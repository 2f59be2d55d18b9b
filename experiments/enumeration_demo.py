"""Structure references P and lambda_struct on the GLM toy (method.md sections 6 and 9).

Demo (thesis): lambda_struct = [-1, -1] with p_1 = GS(0.1, [0.99, 0.05, 0.05]) and
p_2 = GS(0.1, [0.05, 0.05, 0.99]) (temperature 0.1, concentration s, logits log s),
lambda_temp = 1, (lambda_lik^Q, lambda_prior^Q, lambda_prior^L) = (0.01, 1, 100): the
structure prior p(Gamma | h) is repelled from the f_0 and f_2 vertices and q(Gamma)
follows it (strongly, lambda_prior^L = 100) towards f_1. The structure term is
KL(p(Gamma | h) || p'), Monte Carlo with r samples (`structsel.objective`).

Schedule ("like full enumeration"): one reference per vertex, p'_l = GS(0.1, s_l) with
s_l = 0.99 on vertex l and 0.05 elsewhere, and a piecewise-constant lambda_struct (one row
per phase) aimed at one vertex per phase: f_0, f_1, f_2, f_1, f_0, a sequential increase
then decrease of complexity. The default rows repel the two other vertices (lambda_struct
= -1 on them, 0 on the target: the demo's mechanism); attracting rows (+c on the target)
can be given with --set schedule=... (docs/experiments_glm.md reports how both fare).
Both use the GLM protocol of `experiments.glm_toy` (warm-up prior N(0, A^{-1}) for 500
iterations, then N(0, gamma^2 A^{-1}) with A^{-1} = e^10). The demo is the same three references with
lambda_struct = [-1, 0, -1], identical to the thesis' two; demo and schedule restarts are
one vmapped batch, the phases successive calls of the same compiled chunk.

Run: python -m experiments.enumeration_demo [--smoke] [--workdir DIR] [--figures docs/figures]
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

from experiments.common import Timer, parse, save_figure
from experiments.glm import (LABELS, SUBMODELS, Setting, divergence_report,
                             glm_objective, init_states, make_runner, make_trainer,
                             sample_q, stack_settings, submodel_mass, train)
from structsel.data import glm_toy
from structsel.distributions import gumbel_softmax
from structsel.plotting import plot_simplex_hist, simplex_axes, to_cartesian


@dataclasses.dataclass(frozen=True)
class Config:
    """Repelling demo and a piecewise-constant lambda_struct schedule over vertex references."""

    seed: int = 0
    restarts: int = 5
    coefficients: tuple = (0.01, 1.0, 100.0)
    temperature: float = 1.0
    reference_temperature: float = 0.1
    reference_high: float = 0.99
    reference_low: float = 0.05
    demo_struct: tuple = (-1.0, 0.0, -1.0)     # lambda_struct on (p'_f0, p'_f1, p'_f2)
    # lambda_struct on (p'_f0, p'_f1, p'_f2) per phase; target = the largest entry. Default:
    # repel the two other vertices (the demo's mechanism), visiting f_0, f_1, f_2, f_1, f_0.
    schedule: tuple = ((0.0, -1.0, -1.0), (-1.0, 0.0, -1.0), (-1.0, -1.0, 0.0),
                       (-1.0, 0.0, -1.0), (0.0, -1.0, -1.0))
    demo_iterations: int = 1000
    phase_iterations: int = 400
    warmup: int = 500
    num_samples: int = 3
    lr: float = 0.01
    fixed_log_alpha: float | None = -10.0
    log_std_floor: float = -4.0
    noise_std: float = 0.5
    hist_samples: int = 400
    chunk: int = 100
    fast_compile: bool = False                 # XLA -O0 (smoke runs)

    @classmethod
    def smoke(cls) -> "Config":
        return cls(restarts=2, schedule=((1.0, 0.0, 0.0), (-1.0, -1.0, 0.0)), demo_iterations=20,
                   phase_iterations=10,
                   warmup=10, hist_samples=50, chunk=10, fast_compile=True)


def vertex_references(cfg: Config, k: int = 3) -> tuple:
    """p'_l = GS(reference_temperature, s_l), s_l = high on vertex l, low elsewhere (one edge)."""
    refs = []
    for v in range(k):
        s = np.full(k, cfg.reference_low, np.float32)
        s[v] = cfg.reference_high
        refs.append((gumbel_softmax(jnp.log(jnp.asarray(s)), cfg.reference_temperature),))
    return tuple(refs)


def _settings(cfg: Config, struct_rows) -> Setting:
    lq, pq, pl = cfg.coefficients
    fix = cfg.fixed_log_alpha is not None
    rows = [Setting(lq, pq, pl, cfg.temperature, np.zeros(0), fix,
                    cfg.fixed_log_alpha if fix else 0.0) for _ in struct_rows]
    return stack_settings(rows)._replace(struct=np.asarray(struct_rows, np.float32))


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs demo and schedule restarts in one batch; writes summary.json, enumeration_demo.png."""
    import matplotlib.pyplot as plt

    cfg, run, args = parse(Config, argv, name="enumeration_demo", description=__doc__)
    if not cfg.schedule or any(np.shape(row) != (3,) for row in cfg.schedule):
        raise ValueError(f"schedule must be a non-empty tuple of lambda_struct rows of length 3 "
                         f"(one per vertex reference), got {cfg.schedule!r}")
    targets = [int(np.argmax(row)) for row in cfg.schedule]
    x, y = glm_toy(seed=cfg.seed)
    objective = glm_objective(x.shape[1], num_samples=cfg.num_samples,
                              log_std_floor=cfg.log_std_floor, noise_std=cfg.noise_std)
    refs = vertex_references(cfg)
    trainer = make_trainer(objective, lr=cfg.lr, warmup=cfg.warmup, references=refs)
    runner = make_runner(trainer, cfg.chunk, fast_compile=cfg.fast_compile)
    k_init, k_hist = jax.random.split(jax.random.PRNGKey(cfg.seed))
    keys = jnp.tile(jax.random.split(k_init, cfg.restarts), (2, 1))  # demo runs, schedule runs
    states = init_states(trainer, objective, x, keys, fast_compile=cfg.fast_compile)
    total = len(cfg.schedule) * cfg.phase_iterations
    if total < cfg.demo_iterations:
        raise ValueError(f"the schedule ({total} iterations) must be at least demo_iterations "
                         f"({cfg.demo_iterations}) long: demo and schedule share one batch")
    histories = []
    with Timer() as timer:
        for phase, (row, vertex) in enumerate(zip(cfg.schedule, targets)):
            settings = _settings(cfg, [cfg.demo_struct] * cfg.restarts + [row] * cfg.restarts)
            states, hist = train(runner, states, settings, x, y, cfg.phase_iterations, cfg.chunk,
                                 run_record=run, desc=f"phase {phase} (target {SUBMODELS[vertex]})")
            histories.append(hist)
    history = {k: np.concatenate([h[k] for h in histories], axis=1)
               for k in ("structure", "diverged", "step", "nonfinite")}
    mass = np.asarray(jax.nn.softmax(history["structure"], axis=-1))   # (2R, steps, 3), GS exact
    demo, sched = mass[:cfg.restarts], mass[cfg.restarts:]
    it = cfg.demo_iterations
    demo_theta = history["structure"][:cfg.restarts, it - 1]
    demo_samples = sample_q(objective.relaxation, demo_theta,
                            np.full(cfg.restarts, cfg.temperature), cfg.hist_samples, key=k_hist,
                            fast_compile=cfg.fast_compile)
    phase_end = [(p + 1) * cfg.phase_iterations - 1 for p in range(len(cfg.schedule))]
    visited = [int(np.argmax(sched[:, e].mean(0))) for e in phase_end]
    summary: dict[str, Any] = {
        "seconds": timer.seconds,
        "divergence": divergence_report(states, history),
        "demo": {"iterations": it, "mass_mean": demo[:, it - 1].mean(0),
                 "mass_std": demo[:, it - 1].std(0),
                 "sampled_argmax_mass": submodel_mass(demo_samples).mean(0),
                 "mass_mean_at_end": demo[:, -1].mean(0),
                 "concentrates_on": SUBMODELS[int(np.argmax(demo[:, it - 1].mean(0)))]},
        "schedule": {"lambda_struct": cfg.schedule, "targets": [SUBMODELS[v] for v in targets],
                     "mass_mean_at_phase_end": [sched[:, e].mean(0) for e in phase_end],
                     "mass_std_at_phase_end": [sched[:, e].std(0) for e in phase_end],
                     "argmax_at_phase_end": [SUBMODELS[v] for v in visited],
                     "every_phase_reaches_target": bool(visited == targets)},
    }

    fig = plt.figure(figsize=(12, 3.8))
    ax_d, ax_s = fig.add_subplot(1, 3, 1), fig.add_subplot(1, 3, 2)
    ax_t = fig.add_subplot(1, 3, 3)
    plot_simplex_hist(ax_d, demo_samples.reshape(-1, 3), gridsize=24, log=True, cmap="Greys",
                      labels=LABELS)
    for r in range(cfg.restarts):
        xy = to_cartesian(demo[r, :it])
        ax_d.plot(xy[:, 0], xy[:, 1], lw=1, color="tab:red", alpha=0.8,
                  label="mass trajectory" if r == 0 else None)
        ax_d.plot(*xy[-1], "o", color="tab:red", ms=3)
    ax_d.legend(fontsize=6, loc="upper right")
    ax_d.set_title(rf"demo: $\lambda_{{struct}}$ = {list(cfg.demo_struct)} on $p'_{{f_0}}, "
                   rf"p'_{{f_1}}, p'_{{f_2}}$" "\n" rf"q(Gamma) samples at iteration {it}",
                   fontsize=8)
    simplex_axes(ax_s, LABELS)
    steps = np.arange(1, sched.shape[1] + 1)
    for r in range(cfg.restarts):
        xy = to_cartesian(sched[r])
        sc = ax_s.scatter(xy[:, 0], xy[:, 1], c=steps, s=2, cmap="viridis")
    fig.colorbar(sc, ax=ax_s, fraction=0.04, label="iteration")
    ax_s.set_title("schedule: q(argmax gamma) trajectory\ntargets " +
                   " -> ".join(f"${SUBMODELS[v]}$" for v in targets), fontsize=8)
    for l, name in enumerate(SUBMODELS):
        line, = ax_t.plot(steps, sched[:, :, l].mean(0), label=f"${name}$")
        ax_t.fill_between(steps, sched[:, :, l].min(0), sched[:, :, l].max(0),
                          color=line.get_color(), alpha=0.15, lw=0)
    for p, v in enumerate(targets):
        lo = p * cfg.phase_iterations
        ax_t.axvspan(lo, lo + cfg.phase_iterations, color=f"C{v}", alpha=0.07, lw=0)
        ax_t.text(lo + cfg.phase_iterations / 2, 1.02, f"${SUBMODELS[v]}$", ha="center",
                  fontsize=7)
    ax_t.axvline(cfg.warmup, color="0.5", ls=":", lw=0.8)
    ax_t.set_ylim(0, 1.08)
    ax_t.set_xlabel("iteration (dotted: end of warm-up)")
    ax_t.set_ylabel(r"$q(\mathrm{argmax}\,\gamma = f_l)$")
    ax_t.legend(fontsize=7, loc="center right")
    ax_t.set_title("schedule: mass per submodel (shaded: phase target)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, run, "enumeration_demo.png", args)
    plt.close(fig)
    run.write_summary(summary)
    return summary


if __name__ == "__main__":
    main()
