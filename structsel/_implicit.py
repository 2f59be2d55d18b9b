"""Linear solvers for implicit hypergradients: v = (H + ridge I)^{-1} b from products H u.

Backend of `structsel.hypergradient` (method.md section 7, "implicit"). Every solver has
the signature ``solve(matvec, b, *, maxiter, tol, ridge, **extra) -> v`` where ``matvec``
is a Hessian-vector product u -> H u over pytrees shaped like ``b`` and H is never
materialised. This is the only module of structsel that imports jaxopt, so the backend
can be swapped without touching the hypergradient methods.

- ``"cg"``: conjugate gradient (H symmetric), ``jaxopt.linear_solve.solve_cg``;
- ``"gmres"``: restarted GMRES, ``jaxopt.linear_solve.solve_gmres`` (symmetric but
  indefinite H, e.g. a non-convex inner loss away from a minimum);
- ``"neumann"``: truncated Neumann series v = lr sum_{k=0}^{K} (I - lr H)^k b, written
  here with ``lax.while_loop`` because jaxopt has none.

All three stop on the relative residual ||b - (H + ridge I) v|| <= tol ||b|| or after
``maxiter`` iterations (for GMRES: ``maxiter`` restarts of a ``restart``-dimensional
Krylov space, the jax.scipy convention). A diverging Neumann series (residual above
2 ||b||, impossible when it converges) returns NaN rather than a finite wrong vector, so
that the bilevel trainer reports a non-finite hypergradient at that step.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxopt import linear_solve

Pytree = Any
MatVec = Callable[[Pytree], Pytree]


def _ridge(ridge: float) -> float | None:
    """jaxopt's convention: ``ridge=None`` means no damping."""
    return ridge if ridge > 0 else None


def solve_cg(matvec: MatVec, b: Pytree, *, maxiter: int, tol: float, ridge: float) -> Pytree:
    """Conjugate gradient for (H + ridge I) v = b, H symmetric positive definite."""
    return linear_solve.solve_cg(matvec, b, ridge=_ridge(ridge), tol=tol, atol=0.0,
                                 maxiter=maxiter)


def solve_gmres(matvec: MatVec, b: Pytree, *, maxiter: int, tol: float, ridge: float,
                restart: int) -> Pytree:
    """Restarted GMRES for (H + ridge I) v = b (any non-singular H)."""
    return linear_solve.solve_gmres(matvec, b, ridge=_ridge(ridge), tol=tol, atol=0.0,
                                    maxiter=maxiter, restart=restart)


class _NeumannState(NamedTuple):
    k: jax.Array          # number of terms summed so far
    v: Pytree             # v_k = lr sum_{j<k} (I - lr A)^j b
    p: Pytree             # p_k = (I - lr A)^k b, which is also the residual b - A v_k
    res_norm: jax.Array   # ||p_k||


def solve_neumann(matvec: MatVec, b: Pytree, *, maxiter: int, tol: float, ridge: float,
                  lr: float) -> Pytree:
    """Neumann series v = lr sum_{k=0}^{maxiter} (I - lr A)^k b, A = H + ridge I.

    Converges to A^{-1} b iff 0 < lr < 2 / lambda_max(A) and A is positive definite.
    Since A v_K = b - (I - lr A)^{K+1} b, the next term p_{K+1} is exactly the residual,
    so the tolerance test costs nothing extra. When it converges ||I - lr A|| < 1 (A is
    symmetric), so the residual never grows; once it exceeds 2 ||b|| the series diverges
    (lr >= 2 / lambda_max or an indefinite A) and the result is NaN.
    """
    b_norm = optax.tree.norm(b)
    threshold = tol * b_norm

    def damped(u):
        return optax.tree.add_scale(matvec(u), ridge, u) if ridge > 0 else matvec(u)

    def cond(s: _NeumannState):
        return (s.k <= maxiter) & (s.res_norm > threshold) & (s.res_norm <= 2 * b_norm)

    def body(s: _NeumannState) -> _NeumannState:
        v = optax.tree.add_scale(s.v, lr, s.p)
        p = optax.tree.add_scale(s.p, -lr, damped(s.p))
        return _NeumannState(s.k + 1, v, p, optax.tree.norm(p))

    init = _NeumannState(jnp.asarray(0), optax.tree.zeros_like(b), b, b_norm)
    out = jax.lax.while_loop(cond, body, init)
    return jax.tree.map(lambda v: jnp.where(out.res_norm <= 2 * b_norm, v, jnp.nan), out.v)


# name -> (solver, names of the extra keyword options it takes beyond maxiter/tol/ridge)
LINEAR_SOLVERS: dict[str, tuple[Callable[..., Pytree], tuple[str, ...]]] = {
    "cg": (solve_cg, ()),
    "gmres": (solve_gmres, ("restart",)),
    "neumann": (solve_neumann, ("lr",)),
}
