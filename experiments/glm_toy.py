"""The thesis' GLM toy (method.md section 9): structure search over f = sum_l gamma_l f_l.

Data: m = 50 objects, x in R^11 ~ N(0, 1) plus a constant feature, y = tanh(x_0) + 0.5 eps.
Family: f_0 = w_0, f_1 = tanh(w_1[0] x_0 + w_1[1]), f_2 = tanh(w_2^T x) (12 weights).
Grid: (lambda_lik^Q, lambda_prior^Q, lambda_prior^L) in {(0.01,1,100), (1,1,1), (100,1,0.01)}
x lambda_temp in {0.2, 1, 10} x 5 restarts, lambda_struct = 0, Adam, r = 3, 1000
iterations (one inner Adam step on theta, then one outer Adam step on h).

Protocol ("first 500 iterations with prior N(0, A^{-1}), then diag A^{-1} = e^10"), read
as: during warm-up the prior is N(0, A^{-1}) with the ARD precisions A learned in h; from
iteration 500 on the prior is the gamma-scaled N(0, gamma^2 A^{-1}) with A fixed at
A^{-1} = e^10 (`fixed_log_alpha = -10`; `None` keeps learning A). Q and L use the same
50 objects, as in the thesis. Every grid setting satisfies lambda_prior^Q / lambda_lik^Q =
lambda_prior^L, the single-level case of method.md M6, so the first-order ("greedy")
hypergradient is exact at theta*.

The settings (coefficients, temperature, ARD switch) travel as traced arrays inside the
batch, so the 45 runs are one vmapped, jitted `lax.scan` (`BilevelTrainer.run`) called
chunk by chunk for the progress bar, without recompiling (the machinery shared with the
other GLM experiments is in experiments/glm.py).

Run: python -m experiments.glm_toy [--smoke] [--workdir DIR] [--figures docs/figures]
     [--checkpoint-every N] [--resume]
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

from experiments.common import Timer, checkpointer, parse, save_figure
from experiments.glm import (LABELS, Setting, divergence_report, glm_objective, grid_program,
                             init_states, jit, sample_q, stack_settings, train)
from experiments.glm import make_losses  # noqa: F401  (structsel/sweep_targets.py reads it here)
from structsel.data import glm_toy
from structsel.objective import Objective
from structsel.plotting import plot_simplex_hist
from structsel.pruning import relative_density

WEIGHT_NAMES = ("w0", "w1[b]", "w1[x0]") + tuple(f"w2[x{i}]" for i in range(11)) + ("w2[const]",)


# ------------------------------------------------------------------------ experiment
@dataclasses.dataclass(frozen=True)
class Config:
    """GLM toy: 3 coefficient settings x 3 temperatures x restarts, one vmapped scan."""

    seed: int = 0
    num_objects: int = 50
    num_features: int = 11
    noise: float = 0.5
    settings: tuple = ((0.01, 1.0, 100.0), (1.0, 1.0, 1.0), (100.0, 1.0, 0.01))
    temperatures: tuple = (0.2, 1.0, 10.0)
    restarts: int = 5
    iterations: int = 1000
    warmup: int = 500
    num_samples: int = 3
    lr: float = 0.01
    fixed_log_alpha: float | None = -10.0   # log A after warm-up (A^{-1} = e^10); None: learned
    log_std_floor: float = -4.0
    noise_std: float = 0.5
    long_iterations: int = 5000             # glm_long.png: training length study
    hist_samples: int = 400                 # gamma draws per run for the histograms
    chunk: int = 100
    fast_compile: bool = False              # XLA -O0 (smoke runs)
    checkpoint_every: int = 0               # save every N steps in WORKDIR/checkpoints; 0: never

    @classmethod
    def smoke(cls) -> "Config":
        return cls(restarts=2, iterations=20, warmup=10, long_iterations=30, hist_samples=50,
                   chunk=10, fast_compile=True)

    def __post_init__(self):
        from experiments.common import check_fields
        check_fields(self, ints=("num_objects", "num_features", "restarts", "iterations",
                                 "num_samples", "long_iterations", "hist_samples", "chunk"),
                     positive=("lr", "noise_std"), nonnegative=("noise", "warmup"),
                     positive_tuples=("temperatures",))
        for row in self.settings:
            if not (isinstance(row, tuple) and len(row) == 3 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < np.inf
                    for v in row)):
                raise ValueError(f"settings must hold (lambda_lik^Q, lambda_prior^Q, "
                                 f"lambda_prior^L) rows of finite numbers >= 0, got {row!r}")
        every = self.checkpoint_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0 or every % self.chunk:
            raise ValueError(f"checkpoint_every must be 0 or a multiple of chunk ({self.chunk}), "
                             f"got {every!r}")


def _grid_settings(cfg: Config, settings, temperatures, fix_variants) -> tuple[Setting, list]:
    rows, cells = [], []
    for fix in fix_variants:
        for lq, pq, pl in settings:
            for t in temperatures:
                for r in range(cfg.restarts):
                    rows.append(Setting(lq, pq, pl, t, np.zeros(0), fix,
                                        cfg.fixed_log_alpha if fix else 0.0))
                    cells.append((fix, (lq, pq, pl), t, r))
    s = stack_settings(rows)
    return s._replace(struct=np.zeros((len(rows), 0), np.float32)), cells


def fit_curves(objective: Objective, params, thetas, temperatures, x_grid, n: int, *, key,
               fast_compile: bool = False):
    """Predictive mean f(x_0) at the other features 0 (constant 1): mu weights, E over q(Gamma)."""
    num_features = int(params["w"].mu[0][2]["dense"]["kernel"].shape[-2])
    xs = np.zeros((len(x_grid), num_features), np.float32)
    xs[:, 0], xs[:, -1] = x_grid, 1.0
    gam = sample_q(objective.relaxation, thetas, temperatures, n, key=key,
                   fast_compile=fast_compile)                                # (R, n, K)

    def one(mu, g):
        return jnp.mean(jax.vmap(lambda gg: objective.family.apply(mu, (gg,), xs)[:, 0])(g), 0)
    return np.asarray(jit(jax.vmap(one), fast_compile)(params["w"].mu, jnp.asarray(gam)))


def _cell_key(coef, t) -> str:
    return f"{_plain(coef)},temp={t:g}"


def _plain(coef) -> str:
    return f"lik_q={coef[0]:g},prior_q={coef[1]:g},prior_l={coef[2]:g}"


def _label(coef) -> str:
    return (rf"$\lambda^Q_{{lik}}$={coef[0]:g}, $\lambda^Q_{{prior}}$={coef[1]:g}, "
            rf"$\lambda^L_{{prior}}$={coef[2]:g}")


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the grid and the training-length study; writes summary.json and four figures."""
    import matplotlib.pyplot as plt

    cfg, run, args = parse(Config, argv, name="glm_toy", description=__doc__)
    x, y = glm_toy(seed=cfg.seed, num_objects=cfg.num_objects, num_features=cfg.num_features,
                   noise=cfg.noise)
    objective = glm_objective(cfg.num_features + 1, num_samples=cfg.num_samples,
                              log_std_floor=cfg.log_std_floor, noise_std=cfg.noise_std)
    trainer, runner = grid_program(objective, lr=cfg.lr, warmup=cfg.warmup, chunk=cfg.chunk,
                                   fast_compile=cfg.fast_compile)
    key = jax.random.PRNGKey(cfg.seed)
    k_init, k_hist, k_fit = jax.random.split(key, 3)
    restart_keys = jax.random.split(k_init, cfg.restarts)
    fixed = cfg.fixed_log_alpha is not None
    summary: dict[str, Any] = {"log_std_floor": cfg.log_std_floor,
                               "ard_after_warmup": (f"fixed log A = {cfg.fixed_log_alpha}"
                                                    if fixed else "learned")}

    # ---- one vmapped scan: the 3 x 3 grid (A fixed after warm-up) plus, for the
    # training-length study, the same cells with A learned; grid snapshot at `iterations`,
    # then the same compiled chunk continues all runs to `long_iterations`.
    variants = (True, False) if fixed else (False,)
    settings, cells = _grid_settings(cfg, cfg.settings, cfg.temperatures, variants)
    keys = jnp.tile(restart_keys, (len(cells) // cfg.restarts, 1))
    states = init_states(trainer, objective, x, keys, fast_compile=cfg.fast_compile)
    ckpt = checkpointer(run, args, cfg, "grid", state=states)
    with Timer() as t_grid:
        states, hist = train(runner, states, settings, x, y, cfg.iterations, cfg.chunk,
                             run_record=run, desc="grid", checkpointer=ckpt)
    summary["num_runs"] = len(cells)
    summary["grid_seconds"] = t_grid.seconds
    summary["seconds_per_chunk_after_compile"] = float(np.median(hist["chunk_seconds"][1:])) \
        if len(hist["chunk_seconds"]) > 1 else None
    summary["grid_divergence"] = divergence_report(states, hist)
    long_states, long_hist = states, hist
    if cfg.long_iterations > cfg.iterations:
        ckpt = checkpointer(run, args, cfg, "long", state=states)
        with Timer() as t_long:
            long_states, more = train(runner, states, settings, x, y,
                                      cfg.long_iterations - cfg.iterations, cfg.chunk,
                                      run_record=run, desc="long", checkpointer=ckpt)
        summary["long_seconds"] = t_long.seconds
        long_hist = {k: np.concatenate([hist[k], more[k]], axis=1) for k in ("structure",
                                                                            "diverged", "step",
                                                                            "nonfinite")}
        summary["long_divergence"] = divergence_report(long_states, long_hist)
    n_grid = len(cfg.settings) * len(cfg.temperatures) * cfg.restarts
    states = jax.tree.map(lambda a: a[:n_grid], states)
    settings = jax.tree.map(lambda a: a[:n_grid], settings)
    cells = cells[:n_grid]
    thetas = np.asarray(states.params["struct"][0])
    temps = np.asarray(settings.temperature)
    samples = sample_q(objective.relaxation, thetas, temps, cfg.hist_samples, key=k_hist,
                       fast_compile=cfg.fast_compile)
    mass = np.asarray(jax.nn.softmax(thetas, axis=-1))          # GS: q(argmax gamma = l)
    centre = np.linalg.norm(samples - 1 / 3, axis=-1).mean(-1)  # mean ||gamma - centre||
    shape = (len(cfg.settings), len(cfg.temperatures), cfg.restarts)
    mass_c, centre_c = mass.reshape(shape + (3,)), centre.reshape(shape)
    samples_c = samples.reshape(shape + samples.shape[1:])
    summary["cells"] = {
        _cell_key(coef, t): {"mass_mean": mass_c[i, j].mean(0), "mass_std": mass_c[i, j].std(0),
                             "mass_per_restart": mass_c[i, j],
                             "centre_distance": centre_c[i, j].mean()}
        for i, coef in enumerate(cfg.settings) for j, t in enumerate(cfg.temperatures)}
    nr, nc = len(cfg.settings), len(cfg.temperatures)
    prior_l = [c[2] for c in cfg.settings]
    strong, weak = int(np.argmax(prior_l)), int(np.argmin(prior_l))
    summary["findings"] = {
        "stronger_prior_less_f2_mass": {f"{t:g}": bool(mass_c[strong, j, :, 2].mean()
                                                       < mass_c[weak, j, :, 2].mean())
                                        for j, t in enumerate(cfg.temperatures)},
        "more_likelihood_less_f0_mass": {f"{t:g}": bool(mass_c[weak, j, :, 0].mean()
                                                        < mass_c[strong, j, :, 0].mean())
                                         for j, t in enumerate(cfg.temperatures)},
        "higher_temperature_closer_to_centre": {
            _plain(c): bool(np.all(np.diff(centre_c[i].mean(-1)) < 0))
            for i, c in enumerate(cfg.settings)}}

    fig, axes = plt.subplots(nr, nc, figsize=(3.2 * nc, 3.0 * nr), squeeze=False)
    for i, coef in enumerate(cfg.settings):
        for j, t in enumerate(cfg.temperatures):
            ax = axes[i, j]
            plot_simplex_hist(ax, samples_c[i, j].reshape(-1, 3), gridsize=24, log=True,
                              labels=LABELS)
            m = mass_c[i, j].mean(0)
            ax.set_title(rf"$\lambda_{{temp}}$={t:g}   q: " + "/".join(f"{v:.2f}" for v in m),
                         fontsize=8, pad=12)
        axes[i, 0].text(-0.2, 0.43, _label(coef), rotation=90, ha="center", va="center",
                        fontsize=7, transform=axes[i, 0].transData)
    fig.suptitle("GLM toy: samples of q(Gamma) (log-count histogram, all restarts); "
                 "q = mass on f_0/f_1/f_2", fontsize=9)
    save_figure(fig, run, "glm_grid.png", args)
    plt.close(fig)

    # ---- fitted curves f(x_0), other features 0, constant 1
    x_grid = np.linspace(-3, 3, 121)
    curves = fit_curves(objective, states.params, thetas, temps, x_grid, 64, key=k_fit,
                        fast_compile=cfg.fast_compile)
    curves = curves.reshape(shape + (len(x_grid),))
    fig, axes = plt.subplots(nr, nc, figsize=(3.2 * nc, 2.6 * nr), sharex=True, sharey=True,
                             squeeze=False)
    for i, coef in enumerate(cfg.settings):
        for j, t in enumerate(cfg.temperatures):
            ax = axes[i, j]
            ax.scatter(x[:, 0], y, s=6, color="0.5", label="data")
            ax.plot(x_grid, np.tanh(x_grid), "k--", lw=1, label=r"tanh$(x_0)$")
            for r in range(cfg.restarts):
                ax.plot(x_grid, curves[i, j, r], lw=1, alpha=0.8,
                        label="fit (restarts)" if r == 0 else None)
            ax.set_title(rf"$\lambda_{{temp}}$={t:g}", fontsize=8)
        axes[i, 0].set_ylabel(_label(coef), fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel(r"$x_0$")
    axes[0, 0].legend(fontsize=6, loc="upper left")
    fig.suptitle(r"GLM toy: predictive mean $E_{q}f(x)$ along $x_0$ (other features 0)",
                 fontsize=9)
    save_figure(fig, run, "glm_fits.png", args)
    plt.close(fig)

    # ---- rho per parameter at the lowest temperature
    j0 = int(np.argmin(cfg.temperatures))
    rho = relative_density(states.params["w"])
    rho_flat = np.concatenate([np.asarray(leaf).reshape(len(cells), -1)
                               for op in rho[0] for leaf in jax.tree.leaves(op)], axis=1)
    rho_c = rho_flat.reshape(shape + (-1,))[:, j0]
    names = WEIGHT_NAMES if rho_c.shape[-1] == len(WEIGHT_NAMES) else \
        tuple(f"w{i}" for i in range(rho_c.shape[-1]))
    summary["rho_at_lowest_temperature"] = {
        "temperature": cfg.temperatures[j0], "names": names,
        **{_plain(c): rho_c[i].mean(0) for i, c in enumerate(cfg.settings)}}
    fig, ax = plt.subplots(figsize=(10, 3.2))
    width = 0.8 / nr
    pos = np.arange(len(names))
    for i, coef in enumerate(cfg.settings):
        mean, std = rho_c[i].mean(0), rho_c[i].std(0)
        err = np.stack([np.minimum(std, mean), np.minimum(std, 1 - mean)])  # clipped to [0, 1]
        ax.bar(pos + (i - (nr - 1) / 2) * width, mean, width, yerr=err, capsize=1.5,
               label=_label(coef))
    ax.set_xticks(pos, [f"${n}$".replace("[", "_{").replace("]", "}") for n in names],
                  rotation=60, fontsize=7)
    ax.set_ylabel(r"$\rho_i = q(0)/q(\mu_i)$")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.08))
    ax.set_title(rf"Relative density per parameter at $\lambda_{{temp}}$="
                 rf"{cfg.temperatures[j0]:g} (mean $\pm$ std over restarts)", fontsize=9)
    save_figure(fig, run, "glm_rho.png", args)
    plt.close(fig)

    # ---- training length and ARD: mass on f_2 vs iterations (GS: softmax(log s_q)_2)
    f2 = np.asarray(jax.nn.softmax(long_hist["structure"], axis=-1))[..., 2]  # (runs, steps)
    f2 = f2.reshape((len(variants), nr, nc, cfg.restarts, -1))
    steps = np.arange(1, f2.shape[-1] + 1)
    fig, axes = plt.subplots(1, nc, figsize=(4.0 * nc, 3.4), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    summary["long"] = {}
    for j, t in enumerate(cfg.temperatures):
        ax = axes[0, j]
        for v, fix in enumerate(variants):
            for i, coef in enumerate(cfg.settings):
                curve = f2[v, i, j]
                lab = f"{tuple(coef)}, A {'fixed' if fix else 'learned'}"
                ax.plot(steps, curve.mean(0), lw=1.2, ls="-" if fix else "--", color=colors[i],
                        label=lab)
                ax.fill_between(steps, curve.min(0), curve.max(0), color=colors[i], alpha=0.12,
                                lw=0)
                ard = "fixed" if fix else "learned"
                summary["long"][f"{_plain(coef)},temp={t:g},ard={ard}"] = {
                    f"f2_mass_at_{it}": curve[:, it - 1].mean()
                    for it in sorted({cfg.warmup, cfg.iterations, f2.shape[-1]}) if it >= 1}
        ax.axvline(cfg.warmup, color="0.6", lw=0.8, ls=":")
        ax.axvline(cfg.iterations, color="0.3", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("iteration (dotted: end of warm-up; grid length)", fontsize=8)
        ax.set_title(rf"$\lambda_{{temp}}$={t:g}", fontsize=9)
    axes[0, 0].set_ylabel(r"$q(\mathrm{argmax}\,\gamma = f_2)$")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=len(variants), loc="upper center",
               bbox_to_anchor=(0.5, -0.1), title=r"($\lambda^Q_{lik}, \lambda^Q_{prior}, "
               r"\lambda^L_{prior}$), ARD precisions A after warm-up", title_fontsize=7)
    fig.suptitle("Does a stronger prior move q(Gamma) off f_2? Mass on f_2 over training "
                 "(mean, min-max band over restarts)", fontsize=9)
    save_figure(fig, run, "glm_long.png", args)
    plt.close(fig)

    run.write_summary(summary)
    return summary


if __name__ == "__main__":
    main()
