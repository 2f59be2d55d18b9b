"""Variational posterior q(w, Gamma), priors p(w | Gamma, h) and the KL decomposition (method.md M4).

Weights: a mean-field Gaussian q(w | theta_w) = N(mu, diag sigma^2) over every basis-function
weight, stored as a `GaussianPosterior(mu, log_sigma)` of two pytrees shaped like the family
weights `weights[e][l]`; samples are reparameterised, w = mu + sigma * eps.

Prior on weights, per edge e and basis function l, with the ARD precisions A (one per weight,
stored as `log_alpha`, a pytree like the weights):

    p(w | Gamma, h) = N(0, gamma_l^2 A^{-1})        (the "warm-up" prior: N(0, A^{-1})).

At low temperature log gamma_l reaches -100 and gamma_l^{-2} overflows float32, so the prior
is handled in log space: its log standard deviation

    log s_p = max(log gamma_l - 0.5 log A, log_std_floor)

is floored (default -4, the value of the author's notebook). Where the floor binds the prior
is wider than N(0, gamma^2 A^{-1}) and its gradient with respect to gamma and A is zero, so
results at low temperature depend on the floor; `log_std_floor=None` removes it.

Structure: q(Gamma | theta_Gamma) and p(Gamma | h) are products over edges of the
distribution of a relaxation strategy (`structsel.structure`); both use the context
temperature lambda_temp. The KL decomposes as

    KL(q(w,Gamma) || p(w,Gamma)) = KL(q_Gamma || p_Gamma) + E_{q_Gamma} KL(q_w || p(w | Gamma)),

the Gaussian KL in closed form, the expectation over Gamma by Monte Carlo over the same
reparameterised gamma samples the likelihood uses, KL(q_Gamma || p_Gamma) closed form where
`structsel.distributions.kl_divergence` has one (Dirichlet) and Monte Carlo otherwise.

Regulariser on A^{-1}: inv-gamma(lambda_1, lambda_2), see `inv_gamma_log_prior`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from structsel.distributions import kl_divergence

PyTree = Any

__all__ = [
    "GaussianPosterior",
    "init_posterior",
    "sample_weights",
    "gaussian_kl",
    "per_op",
    "log_structure",
    "prior_log_std",
    "weight_kl",
    "inv_gamma_log_prior",
    "structure_kl",
]


class GaussianPosterior(NamedTuple):
    """q(w | theta_w) = N(mu, diag exp(2 log_sigma)); both fields are pytrees like the weights."""

    mu: PyTree
    log_sigma: PyTree


def init_posterior(weights: PyTree, log_sigma: float = -3.0) -> GaussianPosterior:
    """q(w) centred on `weights` (mu = weights) with every log sigma equal to `log_sigma`."""
    return GaussianPosterior(
        mu=weights, log_sigma=jax.tree.map(lambda w: jnp.full_like(w, log_sigma), weights))


def sample_weights(q: GaussianPosterior, *, key: jax.Array) -> PyTree:
    """One reparameterised sample w = mu + sigma * eps, eps ~ N(0, I) (one key per leaf)."""
    leaves, treedef = jax.tree.flatten(q.mu)
    keys = jax.random.split(key, max(len(leaves), 1))
    eps = jax.tree.unflatten(
        treedef, [jax.random.normal(k, jnp.shape(m), jnp.result_type(m))
                  for k, m in zip(keys, leaves)])
    return jax.tree.map(lambda m, s, e: m + jnp.exp(s) * e, q.mu, q.log_sigma, eps)


def gaussian_kl(mu_q: jax.Array, log_sigma_q: jax.Array, log_sigma_p: jax.Array) -> jax.Array:
    """Elementwise KL(N(mu_q, sigma_q^2) || N(0, sigma_p^2)), computed from the log scales.

    KL = log s_p - log s_q + (s_q^2 + mu_q^2) / (2 s_p^2) - 1/2, with the ratios formed as
    exp(2 (log s_q - log s_p)) and mu_q^2 exp(-2 log s_p), so no sigma^{-2} is ever built.
    """
    d = log_sigma_q - log_sigma_p
    return -d + 0.5 * jnp.exp(2.0 * d) + 0.5 * jnp.square(mu_q) * jnp.exp(-2.0 * log_sigma_p) - 0.5


def per_op(values: Sequence[jax.Array], like: PyTree) -> PyTree:
    """Spreads per-op values (tuple over edges of arrays (K_e,)) onto a pytree like the weights.

    Leaf (e, l, ...) of the result is the scalar values[e][l]; parameter-free ops stay `{}`.
    """
    if len(values) != len(like):
        raise ValueError(f"values: expected one array per edge ({len(like)}), got {len(values)}")
    return tuple(
        tuple(jax.tree.map(lambda _, v=v_e[l]: v, like_e[l]) for l in range(len(like_e)))
        for v_e, like_e in zip(values, like))


def log_structure(gamma: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """log gamma per edge, clipped below at log(finfo.tiny) (about -87 in float32).

    The clip keeps log 0 = -inf (and its gradient) out of the prior; with any
    `log_std_floor` above about -87 + 0.5 log A it never changes a result.
    """
    return tuple(jnp.log(jnp.maximum(g, jnp.finfo(jnp.result_type(g)).tiny)) for g in gamma)


def prior_log_std(log_alpha: PyTree, log_gamma: Sequence[jax.Array] | None = None, *,
                  warmup: jax.Array | bool = False,
                  log_std_floor: float | None = -4.0) -> PyTree:
    """Log std of p(w | Gamma, h): log s_p = max(log gamma_l - 0.5 log A, floor), per weight.

    `log_gamma=None` or `warmup=True` gives the warm-up prior N(0, A^{-1}): log s_p =
    max(-0.5 log A, floor). `warmup` may be a traced boolean scalar.
    """
    if log_gamma is None:
        log_std = jax.tree.map(lambda la: -0.5 * la, log_alpha)
    else:
        lg = per_op(log_gamma, log_alpha)
        log_std = jax.tree.map(
            lambda la, g: jnp.where(warmup, 0.0, g) - 0.5 * la, log_alpha, lg)
    if log_std_floor is None:
        return log_std
    return jax.tree.map(lambda s: jnp.maximum(s, log_std_floor), log_std)


def weight_kl(q: GaussianPosterior, log_alpha: PyTree,
              log_gamma: Sequence[jax.Array] | None = None, *,
              warmup: jax.Array | bool = False,
              log_std_floor: float | None = -4.0) -> jax.Array:
    """KL(q_w || p(w | Gamma, h)) = sum_i KL(N(mu_i, sigma_i^2) || N(0, s_p,i^2)), a scalar.

    s_p from `prior_log_std`. Averaging this over gamma samples gives the Monte Carlo
    estimate of E_{q_Gamma} KL(q_w || p(w | Gamma)).
    """
    log_sp = prior_log_std(log_alpha, log_gamma, warmup=warmup, log_std_floor=log_std_floor)
    kls = jax.tree.map(gaussian_kl, q.mu, q.log_sigma, log_sp)
    return sum((jnp.sum(k) for k in jax.tree.leaves(kls)), jnp.zeros(()))


def inv_gamma_log_prior(log_alpha: PyTree, concentration: float = 0.0,
                        rate: float = 0.0) -> jax.Array:
    """log p(h) of A^{-1} ~ inv-gamma(lambda_1, lambda_2), on the log-precision scale, per weight.

    With v = A^{-1}: log InvGamma(v; l1, l2) + log |dv / d log A| = -l1 log v - l2 / v + const
    = l1 log A - l2 A + const (the Gamma(l1, rate l2) prior on A of the RVM, as a density
    over log A, the variable optimised). The normalising constant is dropped (it is free of
    h), so lambda_1 = lambda_2 = 0 gives exactly 0: no regularisation.
    """
    terms = jax.tree.map(lambda la: concentration * la - rate * jnp.exp(la), log_alpha)
    return sum((jnp.sum(t) for t in jax.tree.leaves(terms)), jnp.zeros(()))


def structure_kl(relaxation: Any, theta_q: Sequence[jax.Array], theta_p: Sequence[jax.Array],
                 temperature: jax.Array, *, key: jax.Array, num_samples: int = 1) -> jax.Array:
    """KL(q_Gamma || p_Gamma) = sum_e KL(D(theta_q[e], t) || D(theta_p[e], t)), D the relaxation's.

    Closed form where `structsel.distributions.kl_divergence` has one, else Monte Carlo with
    `num_samples` samples (one key per edge). Deterministic relaxations have no structure
    distribution; their KL is 0.
    """
    if not relaxation.stochastic:
        return jnp.zeros(())
    keys = jax.random.split(key, max(len(theta_q), 1))
    total = jnp.zeros(())
    for k, tq, tp in zip(keys, theta_q, theta_p):
        total = total + kl_divergence(relaxation.distribution(tq, temperature),
                                      relaxation.distribution(tp, temperature),
                                      key=k, num_samples=num_samples)
    return total
