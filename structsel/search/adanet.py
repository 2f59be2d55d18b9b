"""AdaNet: adaptive structural learning by boosting subnetworks (Cortes et al. 2017;
method.md section 8).

The ensemble is f_t = f_{t-1} + gamma_t h_t. At round t two candidates are trained: a
new ReLU MLP h of the current depth d and one of depth d + 1 (width n, no biases), each
jointly with its mixture weight gamma', by Adam on the AdaNet objective

    Q(h, gamma') = (1/m) sum_i sum_c Phi(1 - y_ic f_{t-1,c}(x_i) - y_ic gamma' h_c(x_i))
                   + Gamma_h |gamma'|,          Gamma_h = lambda r(h) + beta,

with Phi = exp or logistic (softplus). This is the paper's objective: method.md writes the
sum over i, which is m times it with the penalty scaled by m. The candidate with the
smaller Q is added, and boosting stops when neither improves on the current ensemble,
Q_prev = (1/m) sum_i sum_c Phi(1 - y_ic f_{t-1,c}(x_i)), by more than `tol`.

Labels: y_ic in {-1, +1}. Binary problems use C = 1 column; multiclass problems use the
one-vs-all surrogate (column c is +1 for class c, -1 otherwise), whose prediction is
argmax_c f_c. Subnetworks are independent MLPs (the AdaNet library's simple-DNN search
space) rather than the paper's connections into earlier subnetworks' layers.

Rademacher proxy (Golowich, Rakhlin & Shamir 2018, Thm 1, bias-free nets with a
positive-homogeneous activation): for L = d + 1 layers with kernels W_l and inputs with
||x_i|| <= B,  r(h) = B (sqrt(2 L log 2) + 1) prod_l ||W_l||_F / sqrt(m). It grows with the
depth through sqrt(L) and the extra norm factor, and because ReLU nets are homogeneous
|gamma'| r(h) penalises the scale of gamma' h itself.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from structsel.search.discrete import _check_positive_int


@dataclasses.dataclass(frozen=True)
class ExpSurrogate:
    """Phi(u) = exp(u) (AdaBoost's exponential loss)."""

    def __call__(self, u: jax.Array) -> jax.Array:
        return jnp.exp(u)


@dataclasses.dataclass(frozen=True)
class LogisticSurrogate:
    """Phi(u) = log(1 + exp(u)) (logistic loss)."""

    def __call__(self, u: jax.Array) -> jax.Array:
        return jax.nn.softplus(u)


SURROGATES = {"exp": ExpSurrogate(), "logistic": LogisticSurrogate()}


def get_surrogate(surrogate) -> ExpSurrogate | LogisticSurrogate:
    """Resolve a surrogate name ("exp" | "logistic") or instance."""
    if isinstance(surrogate, (ExpSurrogate, LogisticSurrogate)):
        return surrogate
    if isinstance(surrogate, str) and surrogate in SURROGATES:
        return SURROGATES[surrogate]
    raise ValueError(f"surrogate must be one of {sorted(SURROGATES)} or a surrogate "
                     f"instance, got {surrogate!r}")


@dataclasses.dataclass(frozen=True)
class SubnetSpec:
    """Static shape of one subnetwork: `depth` hidden ReLU layers of `width`, `out` outputs."""

    depth: int
    width: int
    out: int


class _MLP(nn.Module):
    spec: SubnetSpec

    @nn.compact
    def __call__(self, x):
        for _ in range(self.spec.depth):
            x = nn.relu(nn.Dense(self.spec.width, use_bias=False)(x))
        return nn.Dense(self.spec.out, use_bias=False)(x)


class Subnetwork(NamedTuple):
    """One ensemble member gamma h: its static spec, flax variables and mixture weight."""

    spec: SubnetSpec
    params: Any
    gamma: jax.Array


class RoundRecord(NamedTuple):
    """What happened at one boosting round."""

    depths: tuple[int, int]      # candidate depths (d, d + 1)
    objectives: jax.Array        # (2,) Q of both trained candidates
    previous: jax.Array          # Q_prev of the ensemble without a new member
    chosen: int                  # index of the argmin candidate
    accepted: bool               # whether it was added (Q < Q_prev - tol)


class AdaNetResult(NamedTuple):
    """The learned ensemble, the round history and whether the stopping rule fired."""

    ensemble: tuple[Subnetwork, ...]
    history: tuple[RoundRecord, ...]
    stopped: bool

    def predict(self, x: jax.Array) -> jax.Array:
        """Class labels of the ensemble on x (see `adanet_predict`)."""
        return adanet_predict(self.ensemble, x)


def encode_labels(labels: jax.Array, num_classes: int) -> jax.Array:
    """y in {-1, +1}: (m, 1) with +1 for class 1 if num_classes == 2, else one-vs-all (m, C)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    labels = jnp.asarray(labels)
    if num_classes == 2:
        return (2.0 * (labels == 1) - 1.0)[:, None]
    return 2.0 * jax.nn.one_hot(labels, num_classes) - 1.0


def adanet_objective(y: jax.Array, f_prev: jax.Array, f_cand: jax.Array, gamma: jax.Array,
                     penalty: jax.Array, *, surrogate=LogisticSurrogate()) -> jax.Array:
    """Q = (1/m) sum_i sum_c Phi(1 - y_ic f_prev,ic - y_ic gamma f_cand,ic) + penalty |gamma|.

    `penalty` is Gamma_h = lambda r(h) + beta; y, f_prev, f_cand have shape (m, C).
    """
    phi = get_surrogate(surrogate)
    margin = 1.0 - y * f_prev - y * gamma * f_cand
    return jnp.mean(jnp.sum(phi(margin), axis=-1)) + penalty * jnp.abs(gamma)


class Choice(NamedTuple):
    """Outcome of the AdaNet selection rule."""

    index: jax.Array         # argmin_j Q_j
    objectives: jax.Array    # (J,) Q_j
    previous: jax.Array      # Q_prev = Q with gamma = 0
    improves: jax.Array      # Q_index < Q_prev - tol


def choose_candidate(y: jax.Array, f_prev: jax.Array, f_cands: jax.Array,
                     gammas: jax.Array, penalties: jax.Array, *,
                     surrogate=LogisticSurrogate(), tol: float = 0.0) -> Choice:
    """AdaNet rule: j* = argmin_j Q(h_j, gamma_j); add it iff Q_j* < Q_prev - tol.

    f_cands: (J, m, C) candidate outputs h_j(x_i); gammas, penalties: (J,).
    """
    objective = jax.vmap(lambda f, g, p: adanet_objective(y, f_prev, f, g, p,
                                                          surrogate=surrogate))
    q = objective(f_cands, jnp.asarray(gammas), jnp.asarray(penalties))
    previous = adanet_objective(y, f_prev, jnp.zeros_like(f_prev), 0.0, 0.0,
                                surrogate=surrogate)
    index = jnp.argmin(q)
    return Choice(index, q, previous, q[index] < previous - tol)


def rademacher_proxy(params: Any, spec: SubnetSpec, radius: jax.Array, m: int) -> jax.Array:
    """r(h) = B (sqrt(2 L log 2) + 1) prod_l ||W_l||_F / sqrt(m), L = depth + 1 layers."""
    norms = [jnp.linalg.norm(w) for w in jax.tree.leaves(params)]
    layers = spec.depth + 1
    return radius * (math.sqrt(2 * layers * math.log(2)) + 1) * jnp.prod(jnp.stack(norms)) \
        / math.sqrt(m)


def subnet_apply(sub: Subnetwork, x: jax.Array) -> jax.Array:
    """gamma h(x) of one ensemble member, (m, C)."""
    return sub.gamma * _MLP(sub.spec).apply(sub.params, x)


def adanet_logits(ensemble: tuple[Subnetwork, ...], x: jax.Array, out: int) -> jax.Array:
    """f(x) = sum_t gamma_t h_t(x), (m, out); zeros for the empty ensemble."""
    f = jnp.zeros((x.shape[0], out), x.dtype)
    for sub in ensemble:
        f = f + subnet_apply(sub, x)
    return f


def adanet_predict(ensemble: tuple[Subnetwork, ...], x: jax.Array) -> jax.Array:
    """Labels: 1[f(x) > 0] for one output column, argmax_c f_c(x) for one-vs-all."""
    if not ensemble:
        raise ValueError("ensemble must contain at least one subnetwork")
    out = ensemble[0].spec.out
    f = adanet_logits(ensemble, x, out)
    return (f[:, 0] > 0).astype(jnp.int32) if out == 1 else jnp.argmax(f, axis=-1)


def train_candidate(spec: SubnetSpec, x: jax.Array, y: jax.Array, f_prev: jax.Array, *,
                    key: jax.Array, lam: float, beta: float, radius: jax.Array,
                    optimizer: optax.GradientTransformation, steps: int,
                    surrogate=LogisticSurrogate()):
    """Fit (h, gamma') minimising Q(h, gamma') with Gamma_h = lam r(h) + beta, by `steps`
    full-batch optimiser steps in lax.scan. Returns (params, gamma, Q, h(x), Gamma_h)."""
    net, m = _MLP(spec), x.shape[0]
    params = net.init(key, x[:1])

    def penalty(p):
        return lam * rademacher_proxy(p, spec, radius, m) + beta

    def loss(theta):
        p, g = theta
        return adanet_objective(y, f_prev, net.apply(p, x), g, penalty(p), surrogate=surrogate)

    def step(carry, _):
        theta, opt_state = carry
        value, grads = jax.value_and_grad(loss)(theta)
        updates, opt_state = optimizer.update(grads, opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state), value

    theta = (params, jnp.asarray(1.0, x.dtype))
    (theta, _), _ = jax.lax.scan(step, (theta, optimizer.init(theta)), None, length=steps)
    params, gamma = theta
    return params, gamma, loss(theta), net.apply(params, x), penalty(params)


def run_adanet(x: jax.Array, labels: jax.Array, *, key: jax.Array, num_classes: int,
               width: int = 16, lam: float = 1e-3, beta: float = 1e-3,
               max_rounds: int = 10, steps: int = 300, learning_rate: float = 1e-2,
               surrogate="logistic", tol: float = 0.0) -> AdaNetResult:
    """AdaNet driver: boost subnetworks of depth d or d + 1 until Q stops improving.

    Args:
      x: (m, D) inputs; labels: (m,) integer classes in {0..num_classes-1}.
      key: PRNG key; round t uses fold_in(key, t), split over the two candidates.
      width: hidden width n of every subnetwork.
      lam, beta: Gamma_h = lam r(h) + beta.
      max_rounds: the most subnetworks to add; steps, learning_rate: Adam per candidate.
      surrogate: "exp" | "logistic" | a surrogate instance; tol: required decrease of Q.
    """
    phi = get_surrogate(surrogate)
    for name, value in (("width", width), ("max_rounds", max_rounds), ("steps", steps)):
        _check_positive_int(name, value)
    for name, value in (("lam", lam), ("beta", beta), ("tol", tol)):
        if not value >= 0.0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not learning_rate > 0.0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    x = jnp.asarray(x)
    if x.ndim != 2 or jnp.shape(labels) != (x.shape[0],):
        raise ValueError(f"x must be (m, D) and labels (m,), got {x.shape} and "
                         f"{jnp.shape(labels)}")
    y = encode_labels(labels, num_classes).astype(x.dtype)
    radius = jnp.max(jnp.linalg.norm(x, axis=-1))
    optimizer = optax.adam(learning_rate)
    # The driver owns the jit boundary: one compilation per depth, reused across rounds.
    train = jax.jit(lambda spec, f_prev, k: train_candidate(
        spec, x, y, f_prev, key=k, lam=lam, beta=beta, radius=radius,
        optimizer=optimizer, steps=steps, surrogate=phi), static_argnums=0)
    ensemble, history, depth, stopped = [], [], 1, False
    f_prev = jnp.zeros_like(y)
    for t in range(max_rounds):
        specs = (SubnetSpec(depth, width, y.shape[1]), SubnetSpec(depth + 1, width, y.shape[1]))
        keys = jax.random.split(jax.random.fold_in(key, t), 2)
        fits = [train(spec, f_prev, k) for spec, k in zip(specs, keys)]
        choice = choose_candidate(y, f_prev, jnp.stack([f[3] for f in fits]),
                                  jnp.stack([f[1] for f in fits]),
                                  jnp.stack([f[4] for f in fits]), surrogate=phi, tol=tol)
        j, accepted = int(choice.index), bool(choice.improves)
        history.append(RoundRecord((depth, depth + 1), choice.objectives, choice.previous,
                                   j, accepted))
        if not accepted:
            stopped = True
            break
        params, gamma = fits[j][0], fits[j][1]
        ensemble.append(Subnetwork(specs[j], params, gamma))
        f_prev = f_prev + gamma * fits[j][3]
        depth = specs[j].depth
    return AdaNetResult(tuple(ensemble), tuple(history), stopped)
