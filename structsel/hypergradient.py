"""Hypergradients of a bilevel problem (method.md section 7).

The code minimises: ``inner_loss(params, hparams, *inner_args) = -L`` and
``outer_loss(params, hparams, *outer_args) = -Q``. With w*(h) defined by
grad_w L(w*, h) = 0, the implicit function theorem gives

    dQ/dh = grad_h Q - (grad_h grad_w L)^T H^{-1} grad_w Q,    H = grad_w^2 L,

and every method below approximates this total derivative, returned as a pytree shaped
like ``hparams``. Methods are strategy objects (frozen, hashable dataclasses, so they can
be static arguments of ``jax.jit``) sharing one call signature
``strategy(inner_loss, outer_loss, params, hparams, inner_args=(), outer_args=())``:

- ``Exact()``: dense Hessian solve on flattened pytrees (small problems, tests);
- ``Implicit("cg" | "neumann" | "gmres")``: H^{-1} v from Hessian-vector products only
  (forward-over-reverse), solved in `structsel._implicit` (jaxopt);
- ``Greedy()``: DARTS first order, grad_h Q at the current params;
- ``Darts(xi)``: DARTS second order, one virtual inner step then the mixed term by
  central finite differences (or exactly with ``exact_hvp=True``);
- ``Unrolled(steps, lr)``: reverse mode through ``steps`` inner gradient steps.

`hypergradient(..., method=name, **options)` builds the strategy from a registry and
validates the options before anything is traced. The library never calls ``jax.jit``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from structsel import _implicit

Pytree = Any
Loss = Callable[..., jax.Array]

__all__ = ["METHODS", "Darts", "Exact", "Greedy", "Implicit", "Unrolled", "get_method",
           "hvp", "hypergradient"]


# ----------------------------------------------------------------------------- helpers
def hvp(f: Loss, params: Pytree, v: Pytree, *args) -> Pytree:
    """Hessian-vector product H v = d/dt grad_w f(w + t v, *args)|_{t=0} (forward over reverse)."""
    return jax.jvp(lambda p: jax.grad(f)(p, *args), (params,), (v,))[1]


def _mixed_vjp(inner_loss: Loss, params: Pytree, hparams: Pytree, v: Pytree,
               inner_args: tuple) -> Pytree:
    """(grad_h grad_w L)^T v = grad_h <grad_w L(w, h), v>, exactly by one VJP."""
    _, vjp = jax.vjp(lambda h: jax.grad(inner_loss)(params, h, *inner_args), hparams)
    return vjp(v)[0]


def _mixed_fd(inner_loss: Loss, params: Pytree, hparams: Pytree, v: Pytree,
              inner_args: tuple) -> Pytree:
    """(grad_h L(w + eps v) - grad_h L(w - eps v)) / (2 eps), eps = 0.01 / ||v|| (DARTS)."""
    v_norm = optax.tree.norm(v)
    eps = 0.01 / jnp.maximum(v_norm, jnp.finfo(v_norm.dtype).tiny)
    grad_h = jax.grad(inner_loss, argnums=1)
    plus = grad_h(optax.tree.add_scale(params, eps, v), hparams, *inner_args)
    minus = grad_h(optax.tree.add_scale(params, -eps, v), hparams, *inner_args)
    return optax.tree.scale(0.5 / eps, optax.tree.sub(plus, minus))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, *, positive: bool) -> float:
    """A static (Python) non-negative or positive finite number."""
    try:
        out = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise ValueError(f"{name} must be a static Python number, got {value!r}") from err
    if isinstance(value, bool) or not math.isfinite(out) or out < 0 or (positive and out == 0):
        allowed = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")
    return out


def _set(obj, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalise a field of a frozen dataclass


# ----------------------------------------------------------------------------- strategies
@dataclasses.dataclass(frozen=True)
class Exact:
    """dQ/dh = grad_h Q - M^T (H + ridge I)^{-1} grad_w Q; dense H = grad_w^2 L, M = grad_h grad_w L."""

    ridge: float = 0.0

    def __post_init__(self):
        _set(self, "ridge", _check_float("ridge", self.ridge, positive=False))

    def __call__(self, inner_loss, outer_loss, params, hparams, inner_args=(), outer_args=()):
        w_flat, unravel_w = ravel_pytree(params)
        h_flat, unravel_h = ravel_pytree(hparams)

        def inner(w, h):
            return inner_loss(unravel_w(w), unravel_h(h), *inner_args)

        def outer(w, h):
            return outer_loss(unravel_w(w), unravel_h(h), *outer_args)

        hess = jax.hessian(inner, argnums=0)(w_flat, h_flat)
        mixed = jax.jacfwd(jax.grad(inner, argnums=0), argnums=1)(w_flat, h_flat)
        g_w, g_h = jax.grad(outer, argnums=(0, 1))(w_flat, h_flat)
        hess = hess + self.ridge * jnp.eye(w_flat.size, dtype=hess.dtype)
        v = jnp.linalg.solve(hess, g_w)
        return unravel_h(g_h - mixed.T @ v)


@dataclasses.dataclass(frozen=True)
class Implicit:
    """dQ/dh = grad_h Q - (grad_h grad_w L)^T v, (H + ridge I) v = grad_w Q from H u products.

    ``solver`` is "cg" (H symmetric positive definite), "neumann" (series
    lr sum_{k=0}^{maxiter} (I - lr H)^k, needs 0 < lr < 2 / lambda_max) or "gmres"
    (``maxiter`` restarts of a ``restart``-dimensional Krylov space). All stop when the
    relative residual falls below ``tol``. ``ridge`` damps non-convex inner losses.
    ``lr`` is used by "neumann" only, ``restart`` by "gmres" only.
    """

    solver: str = "cg"
    maxiter: int = 100
    tol: float = 1e-6
    ridge: float = 0.0
    lr: float = 0.01
    restart: int = 20

    def __post_init__(self):
        if self.solver not in _implicit.LINEAR_SOLVERS:
            raise ValueError(f"solver must be one of {tuple(_implicit.LINEAR_SOLVERS)}, "
                             f"got {self.solver!r}")
        _set(self, "maxiter", _check_int("maxiter", self.maxiter, 1))
        _set(self, "restart", _check_int("restart", self.restart, 1))
        _set(self, "tol", _check_float("tol", self.tol, positive=False))
        _set(self, "ridge", _check_float("ridge", self.ridge, positive=False))
        _set(self, "lr", _check_float("lr", self.lr, positive=True))

    def __call__(self, inner_loss, outer_loss, params, hparams, inner_args=(), outer_args=()):
        solve, extra_names = _implicit.LINEAR_SOLVERS[self.solver]
        extra = {name: getattr(self, name) for name in extra_names}
        g_w, g_h = jax.grad(outer_loss, argnums=(0, 1))(params, hparams, *outer_args)
        matvec = functools.partial(hvp, inner_loss, params)
        v = solve(lambda u: matvec(u, hparams, *inner_args), g_w,
                  maxiter=self.maxiter, tol=self.tol, ridge=self.ridge, **extra)
        return optax.tree.sub(g_h, _mixed_vjp(inner_loss, params, hparams, v, inner_args))


@dataclasses.dataclass(frozen=True)
class Greedy:
    """DARTS first order: dQ/dh ~ grad_h Q(w, h) at the current w (implicit term dropped)."""

    def __call__(self, inner_loss, outer_loss, params, hparams, inner_args=(), outer_args=()):
        return jax.grad(outer_loss, argnums=1)(params, hparams, *outer_args)


@dataclasses.dataclass(frozen=True)
class Darts:
    """DARTS 2nd order: grad_h Q(w', h) - xi (grad_h grad_w L(w, h)) grad_w Q(w', h).

    The virtual step is w' = w - xi grad_w L(w, h); the mixed term is a central finite difference with eps = 0.01 / ||grad_w Q(w', h)||
    (as in DARTS) or, with ``exact_hvp=True``, one exact VJP.
    """

    xi: float = 0.01
    exact_hvp: bool = False

    def __post_init__(self):
        _set(self, "xi", _check_float("xi", self.xi, positive=False))
        if not isinstance(self.exact_hvp, bool):
            raise ValueError(f"exact_hvp must be True or False, got {self.exact_hvp!r}")

    def __call__(self, inner_loss, outer_loss, params, hparams, inner_args=(), outer_args=()):
        g_inner = jax.grad(inner_loss)(params, hparams, *inner_args)
        virtual = optax.tree.add_scale(params, -self.xi, g_inner)
        v, g_h = jax.grad(outer_loss, argnums=(0, 1))(virtual, hparams, *outer_args)
        mixed_term = _mixed_vjp if self.exact_hvp else _mixed_fd
        mixed = mixed_term(inner_loss, params, hparams, v, inner_args)
        return optax.tree.add_scale(g_h, -self.xi, mixed)


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """d/dh Q(w_T(h), h) by reverse mode, w_{t+1} = w_t - lr grad_w L(w_t, h), w_0 = params."""

    steps: int = 10
    lr: float = 0.01

    def __post_init__(self):
        _set(self, "steps", _check_int("steps", self.steps, 1))
        _set(self, "lr", _check_float("lr", self.lr, positive=True))

    def __call__(self, inner_loss, outer_loss, params, hparams, inner_args=(), outer_args=()):
        opt = optax.sgd(self.lr)

        def unrolled_outer(h):
            def step(carry, _):
                w, state = carry
                grads = jax.grad(inner_loss)(w, h, *inner_args)
                updates, state = opt.update(grads, state, w)
                return (optax.apply_updates(w, updates), state), None

            (w_final, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                           length=self.steps)
            return outer_loss(w_final, h, *outer_args)

        return jax.grad(unrolled_outer)(hparams)


# ----------------------------------------------------------------------------- dispatch
# method name -> (strategy constructor, option names it accepts)
_REGISTRY: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "exact": (Exact, ("ridge",)),
    "cg": (functools.partial(Implicit, "cg"), ("maxiter", "tol", "ridge")),
    "neumann": (functools.partial(Implicit, "neumann"), ("maxiter", "tol", "ridge", "lr")),
    "gmres": (functools.partial(Implicit, "gmres"), ("maxiter", "tol", "ridge", "restart")),
    "greedy": (Greedy, ()),
    "darts": (Darts, ("xi", "exact_hvp")),
    "unrolled": (Unrolled, ("steps", "lr")),
}
METHODS: tuple[str, ...] = tuple(_REGISTRY)
_STRATEGY_TYPES = (Exact, Implicit, Greedy, Darts, Unrolled)


def get_method(method: str | Any = "cg", **options) -> Any:
    """The strategy object for ``method`` (a name in METHODS, or a strategy passed through)."""
    if isinstance(method, _STRATEGY_TYPES):
        if options:
            raise ValueError(f"options {sorted(options)} cannot be combined with a strategy "
                             f"object {method!r}; set them on the object instead")
        return method
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ValueError(f"method must be one of {METHODS} or a strategy object, got {method!r}")
    make, valid = _REGISTRY[method]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; "
                         f"valid options: {valid}")
    return make(**options)


def hypergradient(inner_loss: Loss, outer_loss: Loss, params: Pytree, hparams: Pytree, *,
                  method: str | Any = "cg", inner_args: tuple = (), outer_args: tuple = (),
                  **options) -> Pytree:
    """d outer/d hparams = d_h outer - (d_h d_w inner)^T H^{-1} d_w outer, by ``method``.

    Args:
      inner_loss, outer_loss: ``f(params, hparams, *args) -> scalar`` to minimise (-L, -Q).
      params: the inner solution w* (exact / cg / neumann / gmres) or the current inner
        iterate (greedy / darts / unrolled).
      hparams: pytree of hyperparameters h.
      method: a name in ``METHODS`` or a strategy object (`Implicit`, `Darts`, ...).
      inner_args, outer_args: extra positional arguments (e.g. data batches).
      **options: method options (``maxiter``, ``tol``, ``ridge``, ``lr``, ``restart``,
        ``xi``, ``exact_hvp``, ``steps``); must be static Python values.

    Returns:
      A pytree shaped like ``hparams``.

    Raises:
      FloatingPointError: called outside jit, if the result is not finite (e.g. a Neumann
        series that diverged on an indefinite Hessian returns NaN).
    """
    strategy = get_method(method, **options)
    out = strategy(inner_loss, outer_loss, params, hparams, tuple(inner_args),
                   tuple(outer_args))
    _raise_if_not_finite(out, strategy)
    return out


def _raise_if_not_finite(value: Pytree, strategy) -> None:
    """Called eagerly: FloatingPointError naming the method if the hypergradient is NaN/inf.
    Traced (under jit) nothing can be raised: the bilevel trainer checks it and names the
    outer step (`structsel.bilevel.DivergenceError`)."""
    leaves = jax.tree.leaves(value)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in leaves):
        raise FloatingPointError(
            f"hypergradient with {strategy!r} is not finite: the inner Hessian is singular or "
            "indefinite at these params, or the Neumann lr is >= 2 / lambda_max (the series "
            "diverged); try method 'gmres', a ridge > 0 or a smaller lr")
