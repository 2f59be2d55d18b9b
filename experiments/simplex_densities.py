"""Densities of Gumbel-Softmax, Dirichlet and logit-normal on the 2-simplex (method.md s. 9).

The seminar's practical homework: draw GS(s, t), Dir(t s) and a logit-normal at
temperatures t in {0.1, 0.995, 5.0} for one s, rows = distribution, columns = temperature.
Where a density is too peaked to show on a grid (t = 0.1: all mass at the vertices and
edges) the panel shows samples instead.

The temperature of the logit-normal: gamma = softmax([x / t, 0]) with
x ~ N(log s_{:2} - log s_2, sigma^2 I), sigma = pi / sqrt(6) (the standard deviation of a
Gumbel variable), i.e. loc = (log s_l - log s_2) / t, scale = sigma / t. As for GS, the
noise-free point is softmax(log s / t) and t scales the logits, so t -> 0 sends the mass to
the vertices and t -> infinity to the centre. The Dirichlet uses alpha = t s (structsel's
convention): t -> infinity concentrates it at s / sum(s), not at the centre.

    python -m experiments.simplex_densities --out docs/figures/simplex_densities.png
"""

from __future__ import annotations

if not __package__:  # run as a file (python experiments/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import dataclasses
import math
import pathlib
import shutil
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from structsel import distributions, plotting

NAME = "simplex_densities"
GUMBEL_STD = math.pi / math.sqrt(6)


@dataclasses.dataclass(frozen=True)
class Config:
    """Simplex densities of GS, Dirichlet and logit-normal at three temperatures."""

    s: tuple[float, ...] = (0.6, 0.3, 0.1)
    temperatures: tuple[float, ...] = (0.1, 0.995, 5.0)
    sample_below: float = 0.5       # columns with t below this show samples, not a density
    resolution: int = 300           # lattice points per triangle side
    num_samples: int = 4000
    seed: int = 0

    @classmethod
    def smoke(cls) -> "Config":
        return cls(resolution=30, num_samples=300)

    def __post_init__(self):
        if len(self.s) != 3 or not all(0 < v < math.inf for v in self.s):
            raise ValueError(f"s must hold 3 finite positive numbers (the 2-simplex); got {self.s}")
        if not self.temperatures or not all(0 < t < math.inf for t in self.temperatures):
            raise ValueError(f"temperatures must be finite numbers > 0; got {self.temperatures}")
        for name in ("resolution", "num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an int >= 2, got {value!r}")


def make_distributions(s, t):
    """(name, distribution) for GS(s, t), Dir(t s) and the tempered logit-normal."""
    log_s = jnp.log(jnp.asarray(s, jnp.float32))
    loc = (log_s[:-1] - log_s[-1]) / t
    return (
        ("Gumbel-Softmax GS(s, t)", distributions.gumbel_softmax(log_s, t)),
        ("Dirichlet Dir(t s)", distributions.dirichlet(jnp.exp(log_s), t)),
        ("Logit-normal (x / t)",
         distributions.logit_normal(loc, jnp.full_like(loc, GUMBEL_STD / t))),
    )


def sample_stats(samples: np.ndarray, s: Sequence[float]) -> dict:
    """Mean largest coordinate, mean distance to the centre and to s/sum(s), argmax freqs."""
    s = np.asarray(s) / np.sum(s)
    freq = np.bincount(samples.argmax(-1), minlength=samples.shape[-1]) / len(samples)
    return {
        "mean_max_coordinate": float(samples.max(-1).mean()),
        "mean_dist_to_centre": float(np.linalg.norm(samples - 1 / 3, axis=-1).mean()),
        "mean_dist_to_s": float(np.linalg.norm(samples - s, axis=-1).mean()),
        "argmax_freq": freq.tolist(),
    }


def draw(config: Config, key):
    """Samples and grid log-densities for every (distribution, temperature) panel."""
    grid = jnp.asarray(plotting.simplex_grid(config.resolution), jnp.float32)
    names = [name for name, _ in make_distributions(config.s, 1.0)]

    @jax.jit  # one compilation for all temperatures (t is traced)
    def column(t, key):
        return [(dist.sample(seed=jax.random.fold_in(key, row), sample_shape=config.num_samples),
                 dist.log_prob(grid))
                for row, (_, dist) in enumerate(make_distributions(config.s, t))]

    panels = {}
    keys = jax.random.split(key, len(config.temperatures))
    for col, (t, k) in enumerate(zip(config.temperatures, keys)):
        for row, (samples, log_prob) in enumerate(column(jnp.float32(t), k)):
            panels[row, col] = names[row], np.asarray(samples), np.asarray(log_prob)
    return panels


def figure(config: Config, panels):
    """The rows x columns grid of simplex panels."""
    import matplotlib.pyplot as plt

    rows, cols = 3, len(config.temperatures)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows + 0.6))
    labels = ("$e_0$", "$e_1$", "$e_2$")
    for (row, col), (name, samples, log_prob) in panels.items():
        ax, t = axes[row, col], config.temperatures[col]
        if t < config.sample_below:
            plotting.plot_simplex_samples(ax, samples, labels=labels, size=4.0, alpha=0.3)
            freq = np.bincount(samples.argmax(-1), minlength=3) / len(samples)
            inner = 0.8 * plotting.CORNERS + 0.2 * plotting.CORNERS.mean(0)
            for (x, y), f in zip(inner, freq):
                ax.text(x, y, f"{100 * f:.0f}%", ha="center", va="center", fontsize=8,
                        color="C3")
            ax.text(0.5, -0.13, f"{len(samples)} samples; %: share with argmax at that vertex",
                    ha="center", va="top", fontsize=7, color="0.3")
        else:
            m = plotting.plot_simplex_density(ax, lambda _: log_prob, resolution=config.resolution,
                                              labels=labels, log_scale=False,
                                              clip_quantiles=(0.0, 0.99))
            cbar = fig.colorbar(m, ax=ax, fraction=0.04, pad=0.0, shrink=0.8)
            cbar.ax.tick_params(labelsize=7)
            cbar.set_label("density (top 1% clipped)", fontsize=7)
        if row == 0:
            ax.set_title(f"t = {t:g}", fontsize=11)
        if col == 0:
            ax.text(-0.18, 0.43, name, rotation=90, ha="center", va="center", fontsize=10)
    s = ", ".join(f"{v:g}" for v in config.s)
    fig.suptitle(
        f"Structure distributions on the 2-simplex, s = ({s})\n"
        f"GS: $\\gamma$ = softmax((log s + G)/t);  Dirichlet: $\\alpha$ = t s;  logit-normal: "
        f"$\\gamma$ = softmax([x/t, 0]), x ~ N(log $s_{{0:2}}$ - log $s_2$, "
        f"($\\pi/\\sqrt{{6}})^2$ I)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def main(argv: Sequence[str] | None = None) -> dict:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--out", default=None, help="also copy the PNG to this path")
    known, rest = pre.parse_known_args(argv)
    config, run, args = common.parse(Config, rest, name=NAME, description=__doc__)
    panels = draw(config, jax.random.key(config.seed))
    summary = {}
    for step, ((row, col), (name, samples, _)) in enumerate(sorted(panels.items())):
        stats = sample_stats(samples, config.s)
        t = config.temperatures[col]
        run.log_metrics(step, distribution=name, temperature=t, **stats)
        summary[f"{name} | t={t:g}"] = stats
    fig = figure(config, panels)
    png = common.save_figure(fig, run, f"{NAME}.png", args)
    if known.out:
        out = pathlib.Path(known.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, out)
    run.write_summary(summary)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
