"""ARD pruning: relative variational density rho, parametric complexity C_p, pruning (method.md M5).

Relative variational density of weight i (Graves 2011), q at the prior mode m_i over q at
its own mode mu_i:

    rho_i = q(m_i) / q(mu_i) = exp(-(m_i - mu_i)^2 / (2 sigma_i^2))      (m_i = 0 by default).

High rho: the weight is indistinguishable from the prior mode and can be removed. Per-op and
per-edge scores aggregate rho over the weights of one basis function / one edge with a
named reduction ("mean" by default, "max" or "min"); a parameter-free op (skip, zero) has
no weight to remove and scores 0 (always kept).

Parametric complexity C_p(theta) = min_h KL(q(w, Gamma | theta) || p(w, Gamma | h)). For the
Gaussian ARD prior N(0, A^{-1}) the minimum over each precision is closed form:

    KL_i(A_i) = 0.5 [A_i (sigma_i^2 + mu_i^2) - log A_i - 1 - log sigma_i^2],
    dKL_i/dA_i = 0  =>  A_i* = 1 / (mu_i^2 + sigma_i^2),  KL_i(A_i*) = 0.5 log(1 + mu_i^2 / sigma_i^2)
                                                               = 0.5 log(1 - 2 log rho_i).

With the gamma-scaled prior N(0, gamma_l^2 A^{-1}) averaged over samples of q_Gamma,
A_i* = 1 / ((mu_i^2 + sigma_i^2) E[gamma_l^{-2}]) and each weight adds the Jensen gap
0.5 log E[gamma_l^{-2}] + E[log gamma_l] >= 0 (zero for a deterministic Gamma). The structure
part min_s KL(q_Gamma || p_Gamma(s)) is 0 when p_Gamma and q_Gamma are the same family at
the same temperature (as in `structsel.objective`), so it does not appear.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from structsel.variational import GaussianPosterior, per_op

PyTree = Any

__all__ = [
    "relative_density",
    "aggregate",
    "op_density",
    "edge_density",
    "optimal_log_alpha",
    "parametric_complexity",
    "Pruned",
    "prune",
]

_REDUCTIONS = {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}


def _check_reduce(reduce: str) -> None:
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {sorted(_REDUCTIONS)}, got {reduce!r}")


def _sum_leaves(tree: PyTree) -> jax.Array:
    return sum((jnp.sum(x) for x in jax.tree.leaves(tree)), jnp.zeros(()))


def relative_density(q: GaussianPosterior, prior_mode: PyTree | None = None) -> PyTree:
    """rho_i = q(m_i) / q(mu_i) = exp(-(m_i - mu_i)^2 / (2 sigma_i^2)), a pytree like q.mu."""
    mode = jax.tree.map(jnp.zeros_like, q.mu) if prior_mode is None else prior_mode
    return jax.tree.map(
        lambda m, s, p: jnp.exp(-0.5 * jnp.square(m - p) * jnp.exp(-2.0 * s)),
        q.mu, q.log_sigma, mode)


def aggregate(tree: PyTree, reduce: str = "mean") -> jax.Array:
    """One score for all leaves of `tree` (their concatenation reduced); 0 if it has none."""
    _check_reduce(reduce)
    leaves = [jnp.ravel(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros(())
    return _REDUCTIONS[reduce](jnp.concatenate(leaves))


def op_density(rho: PyTree, reduce: str = "mean") -> tuple[jax.Array, ...]:
    """Per basis function: tuple over edges e of arrays (K_e,) of reduce_i rho_i over op (e, l)."""
    _check_reduce(reduce)
    return tuple(jnp.stack([aggregate(op, reduce) for op in edge]) for edge in rho)


def edge_density(rho: PyTree, reduce: str = "mean") -> jax.Array:
    """Per edge: array (E,) of reduce_i rho_i over all weights of edge e."""
    _check_reduce(reduce)
    return jnp.stack([aggregate(edge, reduce) for edge in rho])


def _log_inv_gamma_sq(log_gamma_samples: Sequence[jax.Array], like: PyTree):
    """Per weight, log E[gamma^{-2}] and E[log gamma] over the leading sample axis."""
    r = log_gamma_samples[0].shape[0]
    log_e_inv_sq = tuple(jax.nn.logsumexp(-2.0 * lg, axis=0) - jnp.log(r)
                         for lg in log_gamma_samples)
    e_log = tuple(jnp.mean(lg, axis=0) for lg in log_gamma_samples)
    return per_op(log_e_inv_sq, like), per_op(e_log, like)


def optimal_log_alpha(q: GaussianPosterior,
                      log_gamma_samples: Sequence[jax.Array] | None = None) -> PyTree:
    """argmin_A KL(q_w || p(w | Gamma, A)): log A_i* = -log(mu_i^2 + sigma_i^2) - log E[gamma_l^{-2}].

    `log_gamma_samples`: tuple over edges of arrays (r, K_e) of log gamma samples of q_Gamma;
    None for the warm-up prior N(0, A^{-1}) (or a deterministic Gamma = 1).
    """
    base = jax.tree.map(lambda m, s: -jnp.log(jnp.square(m) + jnp.exp(2.0 * s)),
                        q.mu, q.log_sigma)
    if log_gamma_samples is None:
        return base
    log_e_inv_sq, _ = _log_inv_gamma_sq(log_gamma_samples, q.mu)
    return jax.tree.map(lambda b, g: b - g, base, log_e_inv_sq)


def parametric_complexity(q: GaussianPosterior,
                          log_gamma_samples: Sequence[jax.Array] | None = None) -> jax.Array:
    """C_p(theta) = min_A KL = sum_i 0.5 log(1 + mu_i^2 / sigma_i^2) [+ 0.5 log E gamma^-2 + E log gamma].

    The bracket (the Jensen gap of the gamma-scaled prior, Monte Carlo over
    `log_gamma_samples`, tuple over edges of (r, K_e)) is added only when samples are given.
    No log-std floor is applied: this is the minimum of the unfloored KL.
    """
    per_weight = jax.tree.map(lambda m, s: 0.5 * jnp.log1p(jnp.square(m) * jnp.exp(-2.0 * s)),
                              q.mu, q.log_sigma)
    if log_gamma_samples is None:
        return _sum_leaves(per_weight)
    log_e_inv_sq, e_log = _log_inv_gamma_sq(log_gamma_samples, q.mu)
    gap = jax.tree.map(lambda w, a, b: jnp.broadcast_to(0.5 * a + b, jnp.shape(w)),
                       q.mu, log_e_inv_sq, e_log)
    return _sum_leaves(per_weight) + _sum_leaves(gap)


def _all_pruned(op_mask: PyTree) -> jax.Array:
    """True iff the op has at least one weight and every one of them is pruned."""
    leaves = jax.tree.leaves(op_mask)
    if not leaves:
        return jnp.asarray(False)
    return jnp.all(jnp.stack([jnp.all(k) for k in leaves]))


class Pruned(NamedTuple):
    """A pruned model: mean weights with pruned entries zeroed, gamma with dead ops off."""

    weights: PyTree           # mu with every pruned weight set to 0
    gamma: tuple | None       # gamma with ops whose weights are all pruned set to 0 (None if not given)
    mask: PyTree              # True where a weight is pruned, like the weights
    num_pruned: jax.Array     # number of weights removed
    num_ops_off: jax.Array    # number of ops switched off in gamma


def prune(q: GaussianPosterior, threshold: float, *, gamma: Sequence[jax.Array] | None = None,
          prior_mode: PyTree | None = None) -> Pruned:
    """Removes every weight with rho_i > threshold; switches off ops whose weights all go.

    An op is switched off (gamma_l = 0) only if it has at least one weight and all of its
    weights are pruned; parameter-free ops are never switched off.
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (a relative density), got {threshold!r}")
    rho = relative_density(q, prior_mode)
    mask = jax.tree.map(lambda r: r > threshold, rho)
    weights = jax.tree.map(lambda m, k: jnp.where(k, jnp.zeros_like(m), m), q.mu, mask)
    num_pruned = _sum_leaves(jax.tree.map(lambda k: jnp.sum(k, dtype=jnp.int32), mask))
    if gamma is None:
        return Pruned(weights, None, mask, num_pruned.astype(jnp.int32), jnp.zeros((), jnp.int32))
    if len(gamma) != len(q.mu):
        raise ValueError(f"gamma: expected one array per edge ({len(q.mu)}), got {len(gamma)}")
    dead = tuple(jnp.stack([_all_pruned(op) for op in edge_mask]) for edge_mask in mask)
    new_gamma = tuple(jnp.where(d, jnp.zeros_like(g), g) for d, g in zip(dead, gamma))
    num_off = sum((jnp.sum(d, dtype=jnp.int32) for d in dead), jnp.zeros((), jnp.int32))
    return Pruned(weights, new_gamma, mask, num_pruned.astype(jnp.int32), num_off)
