"""Evidence estimates of a trained discrete structure: Laplace (GGN), mean-field ELBO, CLML.

Laplace (MacKay 1992; Immer et al. 2021). With w* the trained weights, the prior
p(w | alpha) = prod_g N(w_g | 0, alpha_g^{-1} I) (one precision per parameter group g,
here per weight leaf) and the generalised Gauss-Newton matrix

    G = sum_i J_i^T Lambda_i J_i,  J_i = d f(x_i, w*) / dw,  Lambda_i = -d^2 log p(y_i | f) / df^2

(Lambda = diag(p) - p p^T for softmax, I / sigma^2 for a Gaussian), H = G + diag(alpha):

    log p(D | alpha) ~= log p(D | w*) + log p(w* | alpha) + (P/2) log 2 pi - 1/2 log det H.

`curvature="full"` uses the dense G (P x P, small networks), "diag" its diagonal. The
precisions are tuned by MacKay's fixed point at fixed w* and G (post hoc, as Laplace Redux
does; w* is not re-fitted, so for a network it is the maximum-likelihood point of its own
training, not the MAP under the tuned prior):

    gamma_g = P_g - alpha_g tr_g(H^{-1}),   alpha_g <- gamma_g / ||w*_g||^2,

a stationary point of the evidence in alpha (d/d alpha_g = 0); iterated until the largest
relative change is below `tol`; iterations and the final change are reported. Weights
outside `mask` (ops not in the structure) and weights whose GGN diagonal is exactly 0 (the
likelihood does not depend on them: e.g. a kernel fed by a `zero` op) are dropped: their
exact marginal is 1, and the Laplace terms of a weight at its MAP 0 cancel exactly.

Conditional marginal likelihood (Lotfi et al. 2022), estimated as the product of per-point
posterior predictives of the validation data under the Laplace posterior fitted on the
training data, with the linearised (GLM) predictive f(x, w) ~= f(x, w*) + J(x)(w - w*):

    log p(D_val | D_train) ~= sum_{i in val} log E_{N(f | f*_i, J_i H^{-1} J_i^T)} p(y_i | f),

in closed form for a Gaussian likelihood, by Monte Carlo over f for softmax.

Mean-field ELBO at a vertex: q(w) = N(mu, diag sigma^2) over the structure's weights
(`structsel.variational`), trained by Adam on

    ELBO(q) = E_q log p(D | w) - KL(q || p(w | alpha*(q))),  alpha*_g = P_g / sum_{j in g} (mu_j^2 + sigma_j^2),

the per-group prior precision at its closed-form optimum (empirical Bayes), so the ELBO is a
lower bound on max_alpha log p(D | alpha), like the tuned Laplace evidence.

No maintained JAX library fits: `laplax` 0.0.2 (the one candidate on PyPI) has one scalar
prior precision, no Kronecker factors, and needs `jaxtyping` and `loguru`, which structsel
does not depend on. So this is written with jax primitives (`jax.jacrev` per example,
Cholesky, `solve_triangular`). The caller jits; nothing here reads files or configs.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import solve_triangular

from structsel.variational import GaussianPosterior, gaussian_kl, sample_weights

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]

__all__ = ["Categorical", "Gaussian", "Curvature", "Laplace", "ELBO", "ggn", "log_evidence",
           "mackay", "laplace_evidence", "conditional_log_marginal", "fit_mean_field",
           "mean_field_elbo", "CURVATURES"]

CURVATURES = ("full", "diag")


# ------------------------------------------------------------------------- likelihoods
@dataclasses.dataclass(frozen=True)
class Categorical:
    """p(y | f) = softmax(f)_y, integer labels; Lambda = diag(p) - p p^T."""

    def log_prob(self, out, y):
        """log p(y_i | f_i) per example, shape (n,)."""
        return -optax.softmax_cross_entropy_with_integer_labels(out, y)

    def hessian_sqrt(self, out):
        """M_i with M_i M_i^T = Lambda_i: M = diag(sqrt p) - p sqrt(p)^T, shape (n, C, C)."""
        p = jax.nn.softmax(out, axis=-1)
        s = jnp.sqrt(p)
        return jax.vmap(jnp.diag)(s) - p[:, :, None] * s[:, None, :]

    def predictive_log_prob(self, mean, cov, y, *, key, num_samples):
        """log E_{f ~ N(mean_i, cov_i)} softmax(f)_{y_i}, Monte Carlo with `num_samples` draws."""
        c = mean.shape[-1]
        chol = jnp.linalg.cholesky(cov + 1e-6 * jnp.eye(c, dtype=cov.dtype))
        eps = jax.random.normal(key, (num_samples,) + mean.shape, mean.dtype)
        f = mean + jnp.einsum("nab,snb->sna", chol, eps)
        lp = jnp.take_along_axis(jax.nn.log_softmax(f, -1), y[None, :, None], -1)[..., 0]
        return jax.nn.logsumexp(lp, axis=0) - math.log(num_samples)


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """p(y | f) = N(y | f, noise_std^2 I) summed over outputs; Lambda = I / noise_std^2."""

    noise_std: float = 1.0

    def __post_init__(self):
        if isinstance(self.noise_std, bool) or not isinstance(self.noise_std, numbers.Real) \
                or not self.noise_std > 0:
            raise ValueError(f"noise_std must be a number > 0, got {self.noise_std!r}")

    def log_prob(self, out, y):
        """sum over outputs of log N(y_i | f_i, s^2), shape (n,)."""
        r = (jnp.reshape(y, out.shape) - out).reshape(out.shape[0], -1)
        var = self.noise_std ** 2
        return -0.5 * jnp.sum(r ** 2 / var + math.log(2 * math.pi * var), axis=-1)

    def hessian_sqrt(self, out):
        """M_i = I / s, shape (n, C, C)."""
        c = math.prod(out.shape[1:])
        return jnp.broadcast_to(jnp.eye(c, dtype=out.dtype) / self.noise_std, (out.shape[0], c, c))

    def predictive_log_prob(self, mean, cov, y, *, key, num_samples):
        """log N(y_i | mean_i, cov_i + s^2 I), exact (key and num_samples unused)."""
        del key, num_samples
        c = mean.shape[-1]
        cov = cov + self.noise_std ** 2 * jnp.eye(c, dtype=cov.dtype)
        r = jnp.reshape(y, mean.shape) - mean
        chol = jnp.linalg.cholesky(cov)
        z = solve_triangular(chol, r[..., None], lower=True)[..., 0]
        logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
        return -0.5 * (jnp.sum(z ** 2, -1) + logdet + c * math.log(2 * math.pi))


# ---------------------------------------------------------------------- validation
def _check_likelihood(likelihood):
    if not isinstance(likelihood, (Categorical, Gaussian)):
        raise ValueError(f"likelihood must be evidence.Categorical() or evidence.Gaussian(noise_std), "
                         f"got {likelihood!r}")


def _check_data(x, y, name_x="x", name_y="y"):
    if jnp.ndim(x) < 1 or jnp.ndim(y) < 1 or jnp.shape(x)[0] != jnp.shape(y)[0]:
        raise ValueError(f"{name_x} and {name_y} must have the same number of rows, got shapes "
                         f"{jnp.shape(x)} and {jnp.shape(y)}")


def _check_int(name, value, minimum=1, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, "
                         f"got {value!r}")


def _check_precision(value):
    try:
        concrete = np.asarray(value)
    except jax.errors.TracerArrayConversionError:
        return  # traced: the caller owns the range
    if concrete.ndim > 1 or not np.all(concrete > 0):
        raise ValueError(f"init_precision must be > 0 (a scalar or one per group), got {value!r}")


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


# ------------------------------------------------------------------- flat parameters
def _flatten(apply_fn, params, mask):
    """(w, f(w, x), group id per weight, mask per weight, number of groups); groups = leaves."""
    w, unravel = ravel_pytree(params)
    leaves = jax.tree.leaves(params)
    group = np.repeat(np.arange(len(leaves)), [int(np.size(l)) for l in leaves])
    if mask is None:
        m = jnp.ones(w.shape, bool)
    else:
        if jax.tree.structure(mask) != jax.tree.structure(params):
            raise ValueError("mask must be a pytree with the structure of params (one entry per "
                             "weight leaf, broadcastable to it)")
        m = jnp.concatenate([jnp.broadcast_to(jnp.asarray(k) != 0, jnp.shape(l)).ravel()
                             for k, l in zip(jax.tree.leaves(mask), leaves)] or [m])
    return w, (lambda v, x: apply_fn(unravel(v), x)), jnp.asarray(group), m, len(leaves)


@flax.struct.dataclass
class Curvature:
    """The GGN at w* over the model's weights, gathered into `size` slots.

    matrix: (S, S) GGN G, or its diagonal (S,) if `diagonal`; params: w* (0 where inactive);
    group: leaf id per slot; active: slot holds a weight the likelihood depends on;
    index: position of each slot in ravel_pytree(params); log_likelihood: log p(D | w*).
    """

    matrix: jax.Array
    params: jax.Array
    group: jax.Array
    active: jax.Array
    index: jax.Array
    log_likelihood: jax.Array
    num_groups: int = flax.struct.field(pytree_node=False)
    diagonal: bool = flax.struct.field(pytree_node=False)


def _jacobians(f, w, x, index, valid, chunk):
    """J_i = d f(x_i, w) / dw at the gathered slots, shape (n, C, S) (zero on invalid slots)."""
    def one(xi):
        jac = jax.jacrev(lambda v: jnp.reshape(f(v, xi[None]), (-1,)))(w)
        return jnp.where(valid, jac[:, index], 0.0)
    return jax.lax.map(one, x, batch_size=chunk)


def ggn(apply_fn: ApplyFn, params: PyTree, x, y, *, likelihood, diagonal: bool = False,
        mask: PyTree | None = None, size: int | None = None, chunk: int | None = 256) -> Curvature:
    """G = sum_i J_i^T Lambda_i J_i at w* = `params` (dense, or its diagonal).

    `apply_fn(params, x)` -> outputs (n, ...); `mask`: pytree like params (leaves broadcast)
    selecting the model's weights (None: all); `size`: number of slots the selected weights
    are gathered into (static; None: all weights; the evidence is NaN if more are selected);
    `chunk`: examples per vectorised Jacobian batch.
    """
    _check_likelihood(likelihood)
    _check_data(x, y)
    _check_int("size", size, allow_none=True)
    _check_int("chunk", chunk, allow_none=True)
    w, f, group, m, num_groups = _flatten(apply_fn, params, mask)
    size = int(w.shape[0]) if size is None else size
    index = jnp.nonzero(m, size=size, fill_value=0)[0]
    count = jnp.sum(m)
    valid = jnp.arange(size) < count
    out = f(w, x)
    log_lik = jnp.sum(likelihood.log_prob(out, y))
    log_lik = jnp.where(count > size, jnp.nan, log_lik)
    sqrt = likelihood.hessian_sqrt(jnp.reshape(out, (out.shape[0], -1)))
    b = jnp.einsum("nca,ncs->nas", sqrt, _jacobians(f, w, x, index, valid, chunk))
    b = b.reshape(-1, size)
    diag = jnp.sum(b ** 2, axis=0)
    active = valid & (diag > 0)
    return Curvature(matrix=diag if diagonal else b.T @ b,
                     params=jnp.where(active, w[index], 0.0), group=group[index], active=active,
                     index=index, log_likelihood=log_lik, num_groups=num_groups,
                     diagonal=diagonal)


# ------------------------------------------------------------------------ evidence
def _segment(values, curv):
    return jax.ops.segment_sum(jnp.where(curv.active, values, 0.0), curv.group,
                               num_segments=curv.num_groups)


def _factor(curv: Curvature, precision):
    """(factor, diag of H^{-1}, log det H) for H = G + diag(alpha_g(j)), 1 on inactive slots."""
    a = jnp.where(curv.active, precision[curv.group], 1.0)
    if curv.diagonal:
        h = curv.matrix + a
        return h, 1.0 / h, jnp.sum(jnp.log(h))
    chol = jnp.linalg.cholesky(curv.matrix + jnp.diag(a))
    inv = solve_triangular(chol, jnp.eye(a.shape[0], dtype=a.dtype), lower=True)
    return chol, jnp.sum(inv ** 2, axis=0), 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


def log_evidence(curv: Curvature, precision) -> jax.Array:
    """log p(D | alpha) ~= log p(D | w*) + log p(w* | alpha) + (P/2) log 2 pi - 1/2 log det H.

    `precision`: alpha per group, shape (num_groups,); differentiable in it.
    """
    return _terms(curv, precision, _factor(curv, precision)[2])[0]


def _terms(curv, precision, logdet):
    a = precision[curv.group]
    log_prior = jnp.sum(jnp.where(curv.active, 0.5 * jnp.log(a / (2 * jnp.pi))
                                  - 0.5 * a * curv.params ** 2, 0.0))
    num = jnp.sum(curv.active)
    return (curv.log_likelihood + log_prior + 0.5 * num * jnp.log(2 * jnp.pi) - 0.5 * logdet,
            log_prior, num)


@flax.struct.dataclass
class Laplace:
    """Tuned Laplace evidence and its parts; `factor` is chol(H) (full) or diag H (diag)."""

    log_evidence: jax.Array
    log_likelihood: jax.Array
    log_prior: jax.Array
    log_det: jax.Array
    precision: jax.Array      # alpha per group (leaf); groups with no active weight keep the start
    num_params: jax.Array     # active weights P
    iterations: jax.Array
    rel_change: jax.Array     # max_g |alpha_new - alpha| / alpha at the last iteration
    evidence_change: jax.Array  # |change of the log evidence| in the last iteration (nats)
    converged: jax.Array
    factor: jax.Array
    curvature: Curvature


def mackay(curv: Curvature, *, init_precision=1.0, max_iter: int = 100, tol: float = 1e-4,
           evidence_tol: float | None = None, bounds: tuple[float, float] = (1e-8, 1e8)) -> Laplace:
    """MacKay's fixed point alpha_g <- (P_g - alpha_g tr_g H^{-1}) / ||w*_g||^2 until converged.

    `init_precision`: scalar or (num_groups,); stops when the largest relative change of alpha
    is <= tol, or (if `evidence_tol` is not None) the evidence changed by <= evidence_tol nats
    in the last iteration (0: once it no longer changes at all in the working precision), or after
    max_iter iterations; alpha is clipped to `bounds`. `converged` means the alpha criterion
    was met; `evidence_change` tells how flat the evidence was when it stopped.
    """
    _check_int("max_iter", max_iter)
    _check_positive("tol", tol)
    if evidence_tol is not None and (isinstance(evidence_tol, bool) or not isinstance(
            evidence_tol, numbers.Real) or evidence_tol < 0):
        raise ValueError(f"evidence_tol must be None or a number >= 0, got {evidence_tol!r}")
    _check_precision(init_precision)
    dtype = curv.params.dtype
    alpha0 = jnp.broadcast_to(jnp.asarray(init_precision, dtype), (curv.num_groups,))
    sq = _segment(curv.params ** 2, curv)
    num = _segment(jnp.ones_like(curv.params), curv)
    live = num > 0

    def body(carry):
        alpha, _, value, _, it = carry
        _, hinv, logdet = _factor(curv, alpha)   # evidence at alpha comes free with the step
        gamma = num - alpha * _segment(hinv, curv)
        ratio = jnp.where(sq > 0, gamma / jnp.where(sq > 0, sq, 1.0), bounds[1])  # w*_g = 0: alpha -> inf
        new = jnp.clip(jnp.where(live, ratio, alpha), *bounds)
        rel = jnp.max(jnp.where(live, jnp.abs(new - alpha) / alpha, 0.0))
        current = _terms(curv, alpha, logdet)[0]
        return new, rel, current, jnp.abs(current - value), it + 1

    def cond(c):
        going = (c[1] > tol) & (c[4] < max_iter)
        return going if evidence_tol is None else going & (c[3] > evidence_tol)

    inf = jnp.asarray(jnp.inf, dtype)
    alpha, rel, _, change, it = jax.lax.while_loop(cond, body, (alpha0, inf, inf, inf,
                                                                jnp.asarray(0)))
    factor, _, logdet = _factor(curv, alpha)
    value, log_prior, count = _terms(curv, alpha, logdet)
    return Laplace(log_evidence=value, log_likelihood=curv.log_likelihood, log_prior=log_prior,
                   log_det=logdet, precision=alpha, num_params=count, iterations=it,
                   rel_change=rel, evidence_change=change, converged=rel <= tol, factor=factor,
                   curvature=curv)


def laplace_evidence(apply_fn: ApplyFn, params: PyTree, x, y, *, likelihood,
                     curvature: str = "full", mask: PyTree | None = None,
                     size: int | None = None, init_precision=1.0, max_iter: int = 100,
                     tol: float = 1e-4, evidence_tol: float | None = None,
                     chunk: int | None = 256) -> Laplace:
    """Laplace log evidence of the model `apply_fn` at trained `params`, alpha by MacKay.

    `ggn` then `mackay` (see both for the arguments); `curvature`: "full" or "diag".
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    _check_int("max_iter", max_iter)
    _check_positive("tol", tol)
    _check_precision(init_precision)
    curv = ggn(apply_fn, params, x, y, likelihood=likelihood, diagonal=curvature == "diag",
               mask=mask, size=size, chunk=chunk)
    return mackay(curv, init_precision=init_precision, max_iter=max_iter, tol=tol,
                  evidence_tol=evidence_tol)


def conditional_log_marginal(apply_fn: ApplyFn, params: PyTree, laplace: Laplace, x, y, *,
                             likelihood, key: jax.Array, mask: PyTree | None = None,
                             num_samples: int = 64, chunk: int | None = 256) -> jax.Array:
    """log p(D_val | D_train) ~= sum_i log E_{N(f*_i, J_i H^{-1} J_i^T)} p(y_i | f) (see module doc).

    `laplace`: fitted on the training data with the same `params` and `mask`; (x, y) the
    held-out data.
    """
    _check_likelihood(likelihood)
    _check_data(x, y)
    _check_int("num_samples", num_samples)
    curv = laplace.curvature
    w, f, _, _, _ = _flatten(apply_fn, params, mask)
    out = f(w, x)
    mean = jnp.reshape(out, (out.shape[0], -1))
    jac = _jacobians(f, w, x, curv.index, curv.active, chunk)          # (n, C, S)
    if curv.diagonal:
        v = jac / jnp.sqrt(laplace.factor)
    else:  # J L^{-T}: J H^{-1} J^T = (L^{-1} J^T)^T (L^{-1} J^T)
        n, c, s = jac.shape
        v = solve_triangular(laplace.factor, jac.reshape(n * c, s).T, lower=True).T
        v = v.reshape(n, c, s)
    cov = jnp.einsum("nas,nbs->nab", v, v)
    return jnp.sum(likelihood.predictive_log_prob(mean, cov, y, key=key, num_samples=num_samples))


# ------------------------------------------------------------------------ mean field
class ELBO(NamedTuple):
    """ELBO = expected_log_likelihood - kl, with the prior precision at its optimum for q."""

    elbo: jax.Array
    expected_log_likelihood: jax.Array
    kl: jax.Array


def _kl(q: GaussianPosterior, m, group, num_groups):
    """KL(q || N(0, alpha*_g^{-1})) over the masked weights, alpha*_g = P_g / sum_g (mu^2 + sigma^2)."""
    seg = lambda v: jax.ops.segment_sum(jnp.where(m, v, 0.0), group, num_segments=num_groups)
    second = seg(q.mu ** 2 + jnp.exp(2 * q.log_sigma))
    num = seg(jnp.ones_like(q.mu))
    log_alpha = jnp.log(jnp.maximum(num, 1.0)) - jnp.log(jnp.maximum(second, 1e-30))
    return jnp.sum(jnp.where(m, gaussian_kl(q.mu, q.log_sigma, -0.5 * log_alpha[group]), 0.0))


def _sample(q, m, key):
    return jnp.where(m, sample_weights(q, key=key), q.mu)


def fit_mean_field(apply_fn: ApplyFn, params: PyTree, x, y, *, likelihood, key: jax.Array,
                   mask: PyTree | None = None, steps: int = 500,
                   learning_rate: float | optax.Schedule = 1e-2,
                   batch_size: int | None = None, num_samples: int = 1,
                   init_log_sigma: float = -5.0) -> tuple[GaussianPosterior, jax.Array]:
    """q(w) maximising the ELBO by Adam from mu = `params`, log sigma = `init_log_sigma`.

    Loss per datum -ELBO / m with the likelihood term (m / b) sum over a minibatch of b
    (`batch_size`, None: full batch) and `num_samples` reparameterised samples. q is over the
    flat weights (ravel_pytree order); weights outside `mask` stay at mu and pay no KL.
    `learning_rate`: a number or an optax schedule. Returns (q, losses per step).
    """
    _check_likelihood(likelihood)
    _check_data(x, y)
    for name, value in (("steps", steps), ("num_samples", num_samples)):
        _check_int(name, value)
    _check_int("batch_size", batch_size, allow_none=True)
    if not callable(learning_rate):
        _check_positive("learning_rate", learning_rate)
    w, f, group, m, num_groups = _flatten(apply_fn, params, mask)
    n = x.shape[0]
    batch = batch_size if batch_size is not None and batch_size < n else None
    q0 = GaussianPosterior(w, jnp.full_like(w, init_log_sigma))
    opt = optax.adam(learning_rate)

    def loss(q, k):
        k_b, k_w = jax.random.split(k)
        idx = jnp.arange(n) if batch is None else jax.random.randint(k_b, (batch,), 0, n)
        xb, yb = x[idx], y[idx]
        lik = jax.vmap(lambda kk: jnp.mean(likelihood.log_prob(f(_sample(q, m, kk), xb), yb)))(
            jax.random.split(k_w, num_samples))
        return -jnp.mean(lik) + _kl(q, m, group, num_groups) / n

    def body(carry, t):
        q, state = carry
        value, grads = jax.value_and_grad(loss)(q, jax.random.fold_in(key, t))
        updates, state = opt.update(grads, state, q)
        return (optax.apply_updates(q, updates), state), value

    (q, _), losses = jax.lax.scan(body, (q0, opt.init(q0)), jnp.arange(steps))
    return q, losses


def mean_field_elbo(apply_fn: ApplyFn, params: PyTree, q: GaussianPosterior, x, y, *,
                    likelihood, key: jax.Array, mask: PyTree | None = None,
                    num_samples: int = 16) -> ELBO:
    """ELBO(q) = E_q log p(D | w) - KL(q || p(w | alpha*(q))) on all of (x, y), `num_samples`
    Monte Carlo samples (one after the other). `params` gives the pytree layout of q."""
    _check_likelihood(likelihood)
    _check_data(x, y)
    _check_int("num_samples", num_samples)
    _, f, group, m, num_groups = _flatten(apply_fn, params, mask)
    lik = jax.lax.map(lambda k: jnp.sum(likelihood.log_prob(f(_sample(q, m, k), x), y)),
                      jax.random.split(key, num_samples))
    kl = _kl(q, m, group, num_groups)
    return ELBO(jnp.mean(lik) - kl, jnp.mean(lik), kl)
