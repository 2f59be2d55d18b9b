"""Figures on the 2-simplex (method.md section 9): densities, samples and histograms of gamma.

A point gamma = (gamma_0, gamma_1, gamma_2) of Delta^2 is drawn at the barycentric
combination of the triangle corners C_0 = (0, 0), C_1 = (1, 0), C_2 = (1/2, sqrt(3)/2):
xy = sum_l gamma_l C_l, so corner l is the vertex gamma = e_l (the submodel f_l in the GLM
experiment) and the centre is the uniform structure. matplotlib is imported inside the
functions, so the library does not depend on it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = [
    "CORNERS",
    "to_cartesian",
    "simplex_grid",
    "simplex_axes",
    "plot_simplex_density",
    "plot_simplex_samples",
    "plot_simplex_hist",
]

CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])


def to_cartesian(gamma) -> np.ndarray:
    """xy = gamma @ CORNERS for gamma of shape (..., 3)."""
    gamma = np.asarray(gamma, np.float64)
    if gamma.shape[-1] != 3:
        raise ValueError(f"gamma must have a last axis of size 3 (the 2-simplex); got shape "
                         f"{gamma.shape}")
    return gamma @ CORNERS


def simplex_grid(resolution: int = 200, margin: float = 1e-3) -> np.ndarray:
    """Barycentric points of a triangular lattice inside Delta^2, each coordinate >= margin."""
    if not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an int >= 2; got {resolution!r}")
    i, j = np.meshgrid(np.arange(resolution + 1), np.arange(resolution + 1), indexing="ij")
    keep = i + j <= resolution
    g = np.stack([i[keep], j[keep], resolution - i[keep] - j[keep]], -1) / resolution
    g = margin + (1 - 3 * margin) * g
    return g


def simplex_axes(ax, labels: Sequence[str] = ("$e_0$", "$e_1$", "$e_2$"), *,
                 fontsize: float = 10, title: str | None = None):
    """Draws the triangle, labels its corners (vertex l = label l) and hides the axes."""
    if len(labels) != 3:
        raise ValueError(f"labels must name the 3 corners; got {labels!r}")
    closed = np.vstack([CORNERS, CORNERS[:1]])
    ax.plot(closed[:, 0], closed[:, 1], color="black", lw=0.8, zorder=5)
    offsets = ((-0.04, -0.05), (0.04, -0.05), (0.0, 0.04))
    aligns = (("right", "top"), ("left", "top"), ("center", "bottom"))
    for corner, label, (dx, dy), (ha, va) in zip(CORNERS, labels, offsets, aligns):
        ax.text(corner[0] + dx, corner[1] + dy, label, ha=ha, va=va, fontsize=fontsize)
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(-0.1, np.sqrt(3) / 2 + 0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    if title is not None:
        ax.set_title(title, fontsize=fontsize)
    return ax


def plot_simplex_density(ax, log_prob_fn: Callable, *, resolution: int = 200,
                         log_scale: bool = True, cmap: str = "viridis",
                         labels: Sequence[str] = ("$e_0$", "$e_1$", "$e_2$"),
                         clip_quantiles: tuple[float, float] = (0.01, 0.99), title=None):
    """Colours Delta^2 by p(gamma) (or log p(gamma) when log_scale) on a triangular lattice.

    `log_prob_fn` maps an (N, 3) float array of gamma to N log-densities; the colour range
    is clipped to `clip_quantiles` of the values so that the singular corners of
    low-temperature densities do not wash the picture out. Returns the mappable.
    """
    import matplotlib.tri as mtri

    gamma = simplex_grid(resolution)
    values = np.asarray(log_prob_fn(gamma), np.float64)
    if not log_scale:
        values = np.exp(values)
    finite = values[np.isfinite(values)]
    lo, hi = np.quantile(finite, clip_quantiles) if finite.size else (0.0, 1.0)
    values = np.clip(np.nan_to_num(values, nan=lo, neginf=lo, posinf=hi), lo, hi)
    xy = to_cartesian(gamma)
    tri = mtri.Triangulation(xy[:, 0], xy[:, 1])
    mappable = ax.tripcolor(tri, values, shading="gouraud", cmap=cmap, vmin=lo, vmax=hi,
                            rasterized=True)
    simplex_axes(ax, labels, title=title)
    return mappable


def plot_simplex_samples(ax, samples, *, labels: Sequence[str] = ("$e_0$", "$e_1$", "$e_2$"),
                         size: float = 2.0, alpha: float = 0.3, color="C0", title=None):
    """Scatter of gamma samples (N, 3) on Delta^2. Returns the PathCollection."""
    xy = to_cartesian(samples).reshape(-1, 2)
    points = ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=alpha, color=color, lw=0,
                        rasterized=True)
    simplex_axes(ax, labels, title=title)
    return points


def plot_simplex_hist(ax, samples, *, gridsize: int = 30, cmap: str = "viridis",
                      labels: Sequence[str] = ("$e_0$", "$e_1$", "$e_2$"), log: bool = False,
                      title=None):
    """Hexagonal histogram of gamma samples (N, 3) on Delta^2 (empty bins left blank)."""
    xy = to_cartesian(samples).reshape(-1, 2)
    hexes = ax.hexbin(xy[:, 0], xy[:, 1], gridsize=gridsize, cmap=cmap, mincnt=1,
                      extent=(0.0, 1.0, 0.0, np.sqrt(3) / 2), bins="log" if log else None,
                      linewidths=0.1, rasterized=True)
    simplex_axes(ax, labels, title=title)
    return hexes
