"""Distributions over the structure simplex (method.md section 3) and their KL divergences.

Three families of distributions over one gamma in the simplex Delta^{K-1}, all distrax
distributions with event shape (K,) (batched over leading axes of their parameters),
reparameterised `sample(seed=..., sample_shape=...)` and `log_prob`:

- `gumbel_softmax(logits, temperature)`: GS(s, t) with logits = log s,
  gamma = softmax((log s + G) / t), G ~ Gumbel(0, 1);
- `dirichlet(concentration, temperature)`: Dir(alpha) with alpha = t * s, sampled through
  Gamma variables with implicit reparameterisation (Figurnov et al. 2018, as implemented
  by `jax.random.loggamma`'s derivative);
- `logit_normal(loc, scale)`: gamma = SoftmaxCentered(x), x ~ N(loc, diag(scale^2)) in
  R^{K-1}, a distrax.Transformed distribution with a density on the simplex.

Float32 safety. At low temperature / concentration most coordinates of gamma are far below
the smallest float32 (log gamma reaches -1000), so GS and Dirichlet samples are drawn in
log space (log gamma = log_softmax(.)) and their densities are computed from log gamma.
Returned samples are exp(max(log gamma, log tiny)), tiny = finfo(dtype).tiny: coordinates
below ~1e-38 are floored, changing each coordinate by at most tiny (the sum stays 1 to
machine precision). `sample_and_log_prob` returns the density of the unfloored draw;
`log_prob(value)` evaluates log(max(value, tiny)). Samples, densities and gradients stay
finite at temperature (or concentration) 0.05 in float32.

`kl_divergence(q, p)` is closed form for Dirichlet-Dirichlet and for two logit-normals
(the KL of the underlying Normals, since the same bijection maps both) and Monte Carlo,
with a required `key`, for every other pair.
"""

from __future__ import annotations

import abc
from typing import Callable

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, logsumexp
from tensorflow_probability.substrates import jax as tfp

__all__ = [
    "Concrete",
    "TemperedDirichlet",
    "LogitNormal",
    "gumbel_softmax",
    "dirichlet",
    "logit_normal",
    "kl_divergence",
]


# --------------------------------------------------------------------------- validation
def concrete_or_none(*values):
    """The values as numpy arrays if none is a jax tracer, else None (skip validation)."""
    leaves = jax.tree.leaves(values)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return None
    return tuple(np.asarray(v) for v in values)


def check_positive(name: str, value) -> None:
    """ValueError naming `name` unless the (concrete) value is > 0 everywhere."""
    concrete = concrete_or_none(value)
    if concrete is not None and not np.all(concrete[0] > 0):
        raise ValueError(f"{name} must be > 0 everywhere (allowed: positive reals); got {value}")


def check_finite(name: str, value) -> None:
    """ValueError naming `name` unless the (concrete) value is finite everywhere."""
    concrete = concrete_or_none(value)
    if concrete is not None and not np.all(np.isfinite(concrete[0])):
        raise ValueError(f"{name} must be finite everywhere (allowed: finite reals); got {value}")


def _check_event(name: str, value) -> None:
    if jnp.ndim(value) < 1 or jnp.shape(value)[-1] < 2:
        raise ValueError(f"{name} must have a last axis of size K >= 2; got shape "
                         f"{jnp.shape(value)}")


def _log_floor(x):
    """log(max(x, tiny)): the log of a simplex value with underflowed coordinates floored."""
    return jnp.log(jnp.maximum(x, jnp.finfo(x.dtype).tiny))


def _floored_exp(log_value):
    """max(exp(log gamma), tiny): a simplex sample without exact zeros."""
    return jnp.maximum(jnp.exp(log_value), jnp.finfo(log_value.dtype).tiny)


# ----------------------------------------------------------------- log-space base class
class LogSimplexDistribution(distrax.Distribution):
    """A distribution on the simplex sampled and scored through log gamma (see module doc)."""

    @abc.abstractmethod
    def _sample_log_n(self, key, n: int):
        """n draws of log gamma, shape (n,) + batch_shape + (K,)."""

    @abc.abstractmethod
    def log_prob_from_log(self, log_value):
        """log p(gamma) evaluated from log gamma (exact for gamma below float32 range)."""

    def _sample_n(self, key, n: int):
        return _floored_exp(self._sample_log_n(key, n))

    def _sample_n_and_log_prob(self, key, n: int):
        log_value = self._sample_log_n(key, n)
        return _floored_exp(log_value), self.log_prob_from_log(log_value)

    def log_prob(self, value):
        """log p(gamma) with gamma floored at the dtype's tiny."""
        return self.log_prob_from_log(_log_floor(jnp.asarray(value, self.dtype)))

    @property
    def event_shape(self):
        return self._params.shape[-1:]

    @property
    def batch_shape(self):
        return self._params.shape[:-1]

    @property
    def dtype(self):
        return self._params.dtype


class Concrete(LogSimplexDistribution):
    """Gumbel-Softmax / Concrete GS(s, t): gamma = softmax((log s + G) / t), G ~ Gumbel(0,1).

    log p(gamma) = log (K-1)! + (K-1) log t + sum_l (log s_l - (t+1) log gamma_l)
                   - K logsumexp_l(log s_l - t log gamma_l).
    """

    def __init__(self, logits, temperature):
        logits = jnp.asarray(logits)
        if not jnp.issubdtype(logits.dtype, jnp.floating):
            logits = logits.astype(jnp.result_type(float))
        self.temperature = jnp.asarray(temperature, logits.dtype)
        shape = jnp.broadcast_shapes(logits.shape, self.temperature.shape + (1,))
        self._params = jnp.broadcast_to(logits, shape)

    @property
    def logits(self):
        return self._params

    def _sample_log_n(self, key, n: int):
        shape = (n,) + self.batch_shape + self.event_shape
        gumbel = jax.random.gumbel(key, shape, self.dtype)
        t = self.temperature[..., None]
        return jax.nn.log_softmax((self.logits + gumbel) / t, axis=-1)

    def log_prob_from_log(self, log_value):
        k = self.event_shape[0]
        t = self.temperature
        return (gammaln(jnp.asarray(k, self.dtype)) + (k - 1) * jnp.log(t)
                + jnp.sum(self.logits - (t[..., None] + 1) * log_value, axis=-1)
                - k * logsumexp(self.logits - t[..., None] * log_value, axis=-1))


class TemperedDirichlet(LogSimplexDistribution):
    """Dir(alpha), alpha = t * s: log p(gamma) = sum_l (alpha_l - 1) log gamma_l - log B(alpha).

    Sampling: log g_l = log Gamma(alpha_l, 1) (jax.random.loggamma, implicitly
    reparameterised), log gamma = log_softmax(log g).
    """

    def __init__(self, concentration, temperature):
        s = jnp.asarray(concentration)
        if not jnp.issubdtype(s.dtype, jnp.floating):
            s = s.astype(jnp.result_type(float))
        self.temperature = jnp.asarray(temperature, s.dtype)
        self._params = self.temperature[..., None] * s

    @property
    def concentration(self):
        """alpha = t * s."""
        return self._params

    def _sample_log_n(self, key, n: int):
        shape = (n,) + self.batch_shape + self.event_shape
        log_g = jax.random.loggamma(key, self.concentration, shape, self.dtype)
        return jax.nn.log_softmax(log_g, axis=-1)

    def log_prob_from_log(self, log_value):
        alpha = self.concentration
        log_beta = jnp.sum(gammaln(alpha), -1) - gammaln(jnp.sum(alpha, -1))
        return jnp.sum((alpha - 1) * log_value, axis=-1) - log_beta

    def mean(self):
        """E gamma = alpha / sum(alpha) = s / sum(s)."""
        return self.concentration / jnp.sum(self.concentration, -1, keepdims=True)


class LogitNormal(distrax.Transformed):
    """gamma = SoftmaxCentered(x), x ~ N(loc, diag(scale^2)) in R^{K-1}; density on Delta^{K-1}.

    SoftmaxCentered(x) = softmax([x, 0]); log p(gamma) = log N(x | loc, scale) - log|J| with
    J the Jacobian of x -> (gamma_1..gamma_{K-1}). TFP's SoftmaxCentered log-det is taken
    w.r.t. the surface measure of the simplex in R^K, which is sqrt(K) times the Lebesgue
    measure of the first K-1 coordinates used by GS and Dirichlet; log p adds 0.5 log K so
    that all three densities (and the mixed-pair KLs) share one base measure.
    """

    def __init__(self, loc, scale):
        self.loc = jnp.asarray(loc)
        self.scale = jnp.asarray(scale, self.loc.dtype)
        super().__init__(distrax.MultivariateNormalDiag(self.loc, self.scale),
                         distrax.as_bijector(tfp.bijectors.SoftmaxCentered()))

    def _measure_correction(self):
        """0.5 log K: surface measure of Delta^{K-1} -> Lebesgue measure of K-1 coordinates."""
        return 0.5 * jnp.log(jnp.asarray(self.loc.shape[-1] + 1, self.loc.dtype))

    def log_prob(self, value):
        """log p(gamma) w.r.t. the Lebesgue measure of (gamma_1, ..., gamma_{K-1}).

        = log N(x | loc, scale) - sum_{l=1}^{K} log gamma_l with x_l = log gamma_l - log
        gamma_K (the inverse of SoftmaxCentered), evaluated from log max(gamma, tiny) like
        GS and Dirichlet: at large scales float32 draws have exact zeros, where the
        bijector's inverse gave NaN.
        """
        log_value = _log_floor(jnp.asarray(value, self.loc.dtype))
        x = log_value[..., :-1] - log_value[..., -1:]
        return self.distribution.log_prob(x) - jnp.sum(log_value, axis=-1)

    def _sample_n_and_log_prob(self, key, n: int):
        value, log_prob = super()._sample_n_and_log_prob(key, n)
        return value, log_prob + self._measure_correction()


# ------------------------------------------------------------------------ constructors
def gumbel_softmax(logits, temperature) -> Concrete:
    """GS(s, t) over Delta^{K-1} with logits = log s (last axis K), temperature t > 0."""
    _check_event("logits", logits)
    check_finite("logits", logits)
    check_positive("temperature", temperature)
    check_finite("temperature", temperature)
    return Concrete(logits, temperature)


def dirichlet(concentration, temperature) -> TemperedDirichlet:
    """Dir(alpha) with alpha = temperature * concentration (= t * s), both > 0."""
    _check_event("concentration", concentration)
    check_positive("concentration", concentration)
    check_finite("concentration", concentration)
    check_positive("temperature", temperature)
    check_finite("temperature", temperature)
    return TemperedDirichlet(concentration, temperature)


def logit_normal(loc, scale) -> LogitNormal:
    """Softmax-centred logit-normal: gamma = softmax([x, 0]), x ~ N(loc, diag(scale^2))."""
    if jnp.ndim(loc) < 1 or jnp.shape(loc) != jnp.shape(scale):
        raise ValueError(f"loc and scale must have the same shape (..., K-1) with K >= 2; "
                         f"got loc {jnp.shape(loc)} and scale {jnp.shape(scale)}")
    check_finite("loc", loc)
    check_positive("scale", scale)
    check_finite("scale", scale)
    return LogitNormal(loc, scale)


# ------------------------------------------------------------------------------- KL
def _kl_dirichlet(q: TemperedDirichlet, p: TemperedDirichlet):
    """KL(Dir(a) || Dir(b)) = log B(b) - log B(a) + sum (a - b)(psi(a) - psi(a_0))."""
    a, b = q.concentration, p.concentration
    a0 = jnp.sum(a, -1, keepdims=True)
    log_beta = lambda c: jnp.sum(gammaln(c), -1) - gammaln(jnp.sum(c, -1))
    return (log_beta(b) - log_beta(a)
            + jnp.sum((a - b) * (jax.scipy.special.digamma(a)
                                 - jax.scipy.special.digamma(a0)), -1))


def _kl_logit_normal(q: LogitNormal, p: LogitNormal):
    """KL of the underlying diagonal Normals (invariant under the shared bijection)."""
    return q.distribution.kl_divergence(p.distribution)


_CLOSED_FORM: dict[tuple[type, type], Callable] = {
    (TemperedDirichlet, TemperedDirichlet): _kl_dirichlet,
    (LogitNormal, LogitNormal): _kl_logit_normal,
}


def _mc_log_ratio(q, p, key, num_samples: int):
    """Draws of log q(gamma) - log p(gamma), gamma ~ q (in log space when both allow it)."""
    if isinstance(q, LogSimplexDistribution) and isinstance(p, LogSimplexDistribution):
        log_gamma = q._sample_log_n(key, num_samples)
        return q.log_prob_from_log(log_gamma) - p.log_prob_from_log(log_gamma)
    gamma, log_q = q.sample_and_log_prob(seed=key, sample_shape=num_samples)
    return log_q - p.log_prob(gamma)


def kl_divergence(q, p, *, key=None, num_samples: int = 1000):
    """KL(q || p) = E_q[log q(gamma) - log p(gamma)]: closed form if known, else Monte Carlo.

    Closed forms: Dirichlet-Dirichlet, logit-normal-logit-normal. Other pairs average
    `num_samples` reparameterised draws of log q - log p (differentiable), which needs `key`.
    """
    closed = _CLOSED_FORM.get((type(q), type(p)))
    if closed is not None:
        return closed(q, p)
    if key is None:
        raise ValueError(f"key is required for the Monte Carlo KL between "
                         f"{type(q).__name__} and {type(p).__name__} (closed forms exist only "
                         f"for {sorted({a.__name__ for a, _ in _CLOSED_FORM})} pairs)")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int; got {num_samples!r}")
    return jnp.mean(_mc_log_ratio(q, p, key, num_samples), axis=0)

