"""Relaxations of the structure Gamma and their discretisation (method.md sections 2-3).

A relaxation is a strategy object (a frozen, hashable dataclass) that maps the
unconstrained parameters `theta` of one edge to gamma in one of the domains of section 2:

| relaxation        | domain  | theta                   | gamma                                      |
|-------------------|---------|-------------------------|--------------------------------------------|
| `Softmax()`       | simplex | alpha (K,)              | softmax(alpha)  (DARTS)                    |
| `Sigmoid()`       | cube    | alpha (K,)              | sigmoid(alpha)                             |
| `GumbelSoftmax()` | simplex | log s (K,)              | ~ GS(s, t)                                 |
| `Dirichlet()`     | simplex | log s (K,)              | ~ Dir(t * s)                               |
| `LogitNormal()`   | simplex | [mu, log sigma] (2K-2,) | SoftmaxCentered(x/t), x ~ N(mu, sigma^2 I) |

The deterministic relaxations (Softmax, Sigmoid) ignore the temperature, as in DARTS. For
the logit-normal the temperature divides the Gaussian logits, x / t ~ N(mu / t, sigma^2 /
t^2), so that t -> 0 sends the mass to the vertices and t -> infinity to the centre, as for
GS. Every relaxation provides `sample(theta, t, *, key)`, `mean(theta, t)` (a deterministic
gamma for evaluation), `distribution(theta, t)` (a distrax distribution, or None),
`num_params(K)` and `init(K)` (zeros: the uniform structure). On an edge with a single op
the stochastic relaxations have no parameters (theta of shape (0,)) and gamma = 1: a
distribution over a 1-point simplex is a point mass (stems and readouts of a cell).

Discretisation maps a relaxed gamma to a vertex: `argmax_vertex` (simplex),
`threshold_vertex` (cube) and `darts_topk` (DARTS: per destination vertex keep the k
incoming edges with the strongest non-zero op, one-hot on that op).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Sequence

import jax
import distrax
import jax.numpy as jnp
from tensorflow_probability.substrates import jax as tfp

from structsel import distributions

__all__ = [
    "Relaxation",
    "Softmax",
    "Sigmoid",
    "GumbelSoftmax",
    "Dirichlet",
    "LogitNormal",
    "sample_structure",
    "mean_structure",
    "argmax_vertex",
    "threshold_vertex",
    "darts_topk",
]

def _check_k(k) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"K (the number of ops on an edge) must be an int >= 1; got {k!r}")


def _check_temperature(temperature) -> None:
    distributions.check_positive("temperature", temperature)
    distributions.check_finite("temperature", temperature)


# ------------------------------------------------------------------------ relaxations
class Relaxation(abc.ABC):
    """Protocol of a relaxation: theta (num_params(K),) -> gamma (K,) in `domain`."""

    domain: ClassVar[str]
    stochastic: ClassVar[bool]

    @abc.abstractmethod
    def num_params(self, k: int) -> int:
        """Length of theta for an edge with K ops."""

    def init(self, k: int, dtype=jnp.float32):
        """Default theta (zeros: the uniform structure / a standard logit-normal)."""
        return jnp.zeros((self.num_params(k),), dtype)

    def mean(self, theta, temperature):
        """A deterministic gamma of shape (K,) representing the relaxation (for evaluation)."""
        if self._single_op(theta):
            return jnp.ones((1,), theta.dtype)
        return self._mean(theta, temperature)

    def distribution(self, theta, temperature):
        """The distrax distribution of gamma, or None for a deterministic relaxation."""
        if self._single_op(theta):
            return distrax.Independent(distrax.Deterministic(jnp.ones((1,), theta.dtype)), 1)
        return self._distribution(theta, temperature)

    def _single_op(self, theta) -> bool:
        """An edge with one op under a simplex distribution: gamma = 1, theta is empty."""
        return self.stochastic and theta.shape[-1] == 0

    @abc.abstractmethod
    def _mean(self, theta, temperature):
        """mean() for edges with K >= 2 (or any K for deterministic relaxations)."""

    @abc.abstractmethod
    def _distribution(self, theta, temperature):
        """distribution() for edges with K >= 2."""

    def sample(self, theta, temperature, *, key):
        """A reparameterised draw of gamma (K,); deterministic relaxations ignore `key`."""
        dist = self.distribution(theta, temperature)
        if dist is None:
            return self.mean(theta, temperature)
        return dist.sample(seed=key)


@dataclasses.dataclass(frozen=True)
class Softmax(Relaxation):
    """DARTS: gamma = softmax(alpha) in the simplex (no sampling, temperature ignored)."""

    domain: ClassVar[str] = "simplex"
    stochastic: ClassVar[bool] = False

    def num_params(self, k: int) -> int:
        _check_k(k)
        return k

    def _mean(self, theta, temperature):
        return jax.nn.softmax(theta, axis=-1)

    def _distribution(self, theta, temperature):
        return None


@dataclasses.dataclass(frozen=True)
class Sigmoid(Relaxation):
    """gamma = sigmoid(alpha) inside the cube [0,1]^K (no sampling, temperature ignored)."""

    domain: ClassVar[str] = "cube"
    stochastic: ClassVar[bool] = False

    def num_params(self, k: int) -> int:
        _check_k(k)
        return k

    def _mean(self, theta, temperature):
        return jax.nn.sigmoid(theta)

    def _distribution(self, theta, temperature):
        return None


@dataclasses.dataclass(frozen=True)
class GumbelSoftmax(Relaxation):
    """gamma ~ GS(s, t) with theta = log s; mean: the noise-free sample softmax(log s / t)."""

    domain: ClassVar[str] = "simplex"
    stochastic: ClassVar[bool] = True

    def num_params(self, k: int) -> int:
        _check_k(k)
        return 0 if k == 1 else k

    def _mean(self, theta, temperature):
        _check_temperature(temperature)
        return jax.nn.softmax(theta / temperature, axis=-1)

    def _distribution(self, theta, temperature):
        return distributions.gumbel_softmax(theta, temperature)


@dataclasses.dataclass(frozen=True)
class Dirichlet(Relaxation):
    """gamma ~ Dir(alpha), alpha = t * s, theta = log s; mean E gamma = s / sum(s)."""

    domain: ClassVar[str] = "simplex"
    stochastic: ClassVar[bool] = True

    def num_params(self, k: int) -> int:
        _check_k(k)
        return 0 if k == 1 else k

    def _mean(self, theta, temperature):
        _check_temperature(temperature)
        return jax.nn.softmax(theta, axis=-1)

    def _distribution(self, theta, temperature):
        return distributions.dirichlet(jnp.exp(theta), temperature)


@dataclasses.dataclass(frozen=True)
class LogitNormal(Relaxation):
    """gamma = SoftmaxCentered(x / t), x ~ N(mu, sigma^2), theta = [mu, log sigma] (2K-2,).

    mean: the noise-free gamma SoftmaxCentered(mu / t).
    """

    domain: ClassVar[str] = "simplex"
    stochastic: ClassVar[bool] = True

    def num_params(self, k: int) -> int:
        _check_k(k)
        return 2 * k - 2

    def _split(self, theta):
        if theta.shape[-1] % 2:
            raise ValueError(f"theta for LogitNormal must have even length 2K-2; got shape "
                             f"{theta.shape}")
        loc, log_scale = jnp.split(theta, 2, axis=-1)
        return loc, log_scale

    def _mean(self, theta, temperature):
        loc, _ = self._split(theta)
        _check_temperature(temperature)
        return tfp.bijectors.SoftmaxCentered().forward(loc / temperature)

    def _distribution(self, theta, temperature):
        loc, log_scale = self._split(theta)
        _check_temperature(temperature)
        return distributions.logit_normal(loc / temperature, jnp.exp(log_scale) / temperature)


# ---------------------------------------------------------------- structure helpers
def sample_structure(relaxation: Relaxation, thetas, temperature, *, key):
    """Gamma = (gamma^e)_e with gamma^e = relaxation.sample(theta^e, t), one key per edge."""
    keys = jax.random.split(key, len(thetas))
    return tuple(relaxation.sample(theta, temperature, key=k) for theta, k in zip(thetas, keys))


def mean_structure(relaxation: Relaxation, thetas, temperature):
    """The deterministic Gamma = (relaxation.mean(theta^e, t))_e."""
    return tuple(relaxation.mean(theta, temperature) for theta in thetas)


# ------------------------------------------------------------------- discretisation
def argmax_vertex(gamma):
    """Vertex of the simplex: one_hot(argmax_l gamma_l) (ties: the first index)."""
    gamma = jnp.asarray(gamma)
    return jax.nn.one_hot(jnp.argmax(gamma, axis=-1), gamma.shape[-1], dtype=gamma.dtype)


def threshold_vertex(gamma, threshold=0.5):
    """Vertex of the cube: 1[gamma_l > threshold]."""
    concrete = distributions.concrete_or_none(threshold)
    if concrete is not None and not 0 <= float(concrete[0]) <= 1:
        raise ValueError(f"threshold must lie in [0, 1]; got {threshold}")
    gamma = jnp.asarray(gamma)
    return (gamma > threshold).astype(gamma.dtype)


def _validate_topk(edges, gamma, k, exclude):
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1 (incoming edges kept per vertex); got {k!r}")
    if len(gamma) != len(edges):
        raise ValueError(f"gamma must have one array per edge ({len(edges)}); got {len(gamma)}")
    if any(len(e) != 2 for e in edges):
        raise ValueError(f"edges must be (src, dst) pairs; got {edges!r}")
    if exclude and len(exclude) != len(edges):
        raise ValueError(f"exclude must be () or one tuple of op indices per edge "
                         f"({len(edges)}); got {len(exclude)}")
    for e, ops in enumerate(exclude):
        size = jnp.shape(gamma[e])[-1]
        if any(not 0 <= int(o) < size for o in ops):
            raise ValueError(f"exclude[{e}] must hold op indices in [0, {size}); got {ops!r}")


def darts_topk(edges: Sequence[tuple[int, int]], gamma, *, k: int = 2, exclude=()):
    """DARTS discretisation: per destination v keep the k incoming edges (j, v) with the
    largest max_{l not excluded} gamma^{j,v}_l, one-hot on that l; other edges become zero.

    Args:
      edges: (src, dst) per edge, in the order of `gamma`.
      gamma: tuple over edges of (K_e,) arrays.
      k: number of incoming edges kept per destination vertex (all of them if fewer).
      exclude: () or, per edge, a tuple of op indices never selected (the 'zero' op). An
        edge whose ops are all excluded is dropped.
    Returns:
      tuple over edges of (K_e,) arrays, one-hot on kept edges, all-zero on dropped ones.
    """
    edges = tuple(tuple(int(v) for v in e) for e in edges)
    exclude = tuple(tuple(ops) for ops in exclude)
    _validate_topk(edges, gamma, k, exclude)
    masked, strength = [], []
    for e, g in enumerate(gamma):
        g = jnp.asarray(g)
        allowed = jnp.ones(g.shape[-1], bool)
        if exclude and exclude[e]:
            allowed = allowed.at[jnp.asarray(exclude[e])].set(False)
        m = jnp.where(allowed, g, -jnp.inf)
        masked.append(m)
        strength.append(jnp.max(m))
    keep = [None] * len(edges)
    for dst in sorted({d for _, d in edges}):
        incoming = [e for e, (_, d) in enumerate(edges) if d == dst]
        s = jnp.stack([strength[e] for e in incoming])
        _, top = jax.lax.top_k(s, min(k, len(incoming)))
        kept = jnp.zeros(len(incoming), bool).at[top].set(True) & jnp.isfinite(s)
        for i, e in enumerate(incoming):
            keep[e] = kept[i]
    return tuple(argmax_vertex(m) * keep[e].astype(jnp.asarray(g).dtype)
                 for e, (m, g) in enumerate(zip(masked, gamma)))
