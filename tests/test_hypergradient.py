"""Tests for structsel.hypergradient against closed forms, dense solves and finite differences."""
import importlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# The package re-exports the function `hypergradient` under the module's name, so the
# module itself is reached through importlib (or `from structsel.hypergradient import ...`).
hg = importlib.import_module("structsel.hypergradient")
from structsel.hypergradient import hypergradient

RHO = 0.1  # weight of the explicit 0.5 * RHO * ||h||^2 term of the outer losses


# ----------------------------------------------------------------------------- problems
def _ridge_data(seed=0, n=40, n_val=20, d=5):
    rng = np.random.default_rng(seed)
    x, x_val = rng.normal(size=(n, d)), rng.normal(size=(n_val, d))
    w_true = rng.normal(size=d)
    y = x @ w_true + 0.3 * rng.normal(size=n)
    y_val = x_val @ w_true + 0.3 * rng.normal(size=n_val)
    h = np.log(rng.uniform(0.5, 5.0, size=d))
    return x, y, x_val, y_val, h


def ridge_inner(w, h, x, y):
    """||Xw - y||^2 / 2 + 0.5 sum_i exp(h_i) w_i^2."""
    return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(h) * w**2)


def ridge_outer(w, h, x, y):
    """Validation MSE / 2 + 0.5 RHO ||h||^2 (explicit h term so greedy is testable)."""
    return 0.5 * jnp.mean((x @ w - y) ** 2) + 0.5 * RHO * jnp.sum(h**2)


def ridge_closed_form(x, y, x_val, y_val, h, ridge=0.0):
    """w* = A^{-1} X^T y, A = X^T X + diag(e^h).

    dQ/dh = RHO h - diag(e^h w*) (A + ridge I)^{-1} g_w, g_w = X_val^T (X_val w* - y_val) / m_val.
    """
    a = x.T @ x + np.diag(np.exp(h))
    w_star = np.linalg.solve(a, x.T @ y)
    g_w = x_val.T @ (x_val @ w_star - y_val) / len(y_val)
    # d(grad_w L)/dh = diag(e^h w*), so (d_h d_w L)^T v = e^h * w* * v.
    v = np.linalg.solve(a + ridge * np.eye(len(h)), g_w)
    return w_star, RHO * h - np.exp(h) * w_star * v, a


def logistic_inner(w, h, x, y):
    """sum log(1 + exp(-y x^T w)) + 0.5 sum_i exp(h_i) w_i^2, y in {-1, +1}."""
    return jnp.sum(jax.nn.softplus(-y * (x @ w))) + 0.5 * jnp.sum(jnp.exp(h) * w**2)


def logistic_outer(w, h, x, y):
    return jnp.mean(jax.nn.softplus(-y * (x @ w))) + 0.5 * RHO * jnp.sum(h**2)


def _logistic_data(seed=1, n=60, n_val=40, d=4):
    rng = np.random.default_rng(seed)
    x, x_val = rng.normal(size=(n, d)), rng.normal(size=(n_val, d))
    w_true = rng.normal(size=d) * 2
    y = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-x @ w_true)), 1.0, -1.0)
    y_val = np.where(rng.uniform(size=n_val) < 1 / (1 + np.exp(-x_val @ w_true)), 1.0, -1.0)
    return x, y, x_val, y_val, np.log(rng.uniform(0.5, 3.0, size=d))


def newton_solve(h, x, y, steps=30):
    """w*(h) by undamped Newton on the strictly convex logistic inner loss (float64)."""
    def step(_, w):
        g = jax.grad(logistic_inner)(w, h, x, y)
        return w - jnp.linalg.solve(jax.hessian(logistic_inner)(w, h, x, y), g)
    return jax.lax.fori_loop(0, steps, step, jnp.zeros(x.shape[1]))


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


# ----------------------------------------------------------------------------- ridge
def test_implicit_methods_match_closed_form_on_ridge():
    with jax.enable_x64(True):
        x, y, xv, yv, h = _ridge_data()
        w_star, expected, a = ridge_closed_form(x, y, xv, yv, h)
        lam = np.linalg.eigvalsh(a)
        args = dict(inner_args=(x, y), outer_args=(xv, yv))
        w, hh = jnp.asarray(w_star), jnp.asarray(h)
        # Dense float64 solve of a well-conditioned 5x5 system (cond < 100): ~1e-14.
        assert _rel(hypergradient(ridge_inner, ridge_outer, w, hh, method="exact", **args),
                    expected) < 1e-10
        # Krylov solvers stopped at relative residual 1e-12 -> error <= cond * 1e-12.
        for method in ("cg", "gmres"):
            got = hypergradient(ridge_inner, ridge_outer, w, hh, method=method, tol=1e-12,
                                maxiter=50, **args)
            assert _rel(got, expected) < 1e-8, method
        # Neumann with lr = 1 / lambda_max contracts by (1 - lambda_min / lambda_max) per
        # term; cond(A) ~ 10 here, so 2000 terms reach the 1e-13 residual tolerance.
        got = hypergradient(ridge_inner, ridge_outer, w, hh, method="neumann",
                            lr=1.0 / lam[-1], maxiter=2000, tol=1e-13, **args)
        assert _rel(got, expected) < 1e-8
        # Too few Neumann terms must give a visibly wrong answer (the series is truncated).
        short = hypergradient(ridge_inner, ridge_outer, w, hh, method="neumann",
                              lr=1.0 / lam[-1], maxiter=1, tol=0.0, **args)
        assert _rel(short, expected) > 1e-3


def test_ridge_option_solves_damped_system():
    with jax.enable_x64(True):
        x, y, xv, yv, h = _ridge_data(seed=3)
        w_star, undamped, _ = ridge_closed_form(x, y, xv, yv, h)
        _, expected, _ = ridge_closed_form(x, y, xv, yv, h, ridge=20.0)
        assert _rel(undamped, expected) > 1e-2  # the damping must matter at this size
        args = dict(inner_args=(x, y), outer_args=(xv, yv), ridge=20.0)
        w, hh = jnp.asarray(w_star), jnp.asarray(h)
        for method, opts in (("exact", {}), ("cg", dict(tol=1e-12)),
                             ("neumann", dict(tol=1e-13, maxiter=3000, lr=0.01))):
            got = hypergradient(ridge_inner, ridge_outer, w, hh, method=method, **args, **opts)
            assert _rel(got, expected) < 1e-8, method  # dense solve / residual 1e-12 x cond


def test_unrolled_converges_and_greedy_matches_hand_formula():
    with jax.enable_x64(True):
        x, y, xv, yv, h = _ridge_data(seed=2)
        _, expected, a = ridge_closed_form(x, y, xv, yv, h)
        lr = 1.0 / np.linalg.eigvalsh(a)[-1]
        w0, hh = jnp.zeros(5), jnp.asarray(h)
        args = dict(inner_args=(x, y), outer_args=(xv, yv))
        errors = [_rel(hypergradient(ridge_inner, ridge_outer, w0, hh, method="unrolled",
                                     steps=s, lr=lr, **args), expected)
                  for s in (3, 30, 600)]
        # GD on a quadratic: w_T and dw_T/dh converge linearly at rate 1 - 1/cond(A).
        assert errors[0] > errors[1] > errors[2]
        assert errors[2] < 1e-8
        # Greedy = d_h outer at the current params: RHO h (outer's w-term is h-free).
        w_any = jnp.asarray(np.random.default_rng(5).normal(size=5))
        greedy = hypergradient(ridge_inner, ridge_outer, w_any, hh,
                               method="greedy", **args)
        np.testing.assert_allclose(greedy, RHO * h, rtol=1e-14)


# ----------------------------------------------------------------------------- logistic
def test_non_quadratic_inner_matches_finite_differences():
    with jax.enable_x64(True):
        x, y, xv, yv, h = _logistic_data()
        x, y, xv, yv, h = map(jnp.asarray, (x, y, xv, yv, h))
        w_star = newton_solve(h, x, y)
        assert float(jnp.linalg.norm(jax.grad(logistic_inner)(w_star, h, x, y))) < 1e-10
        args = dict(inner_args=(x, y), outer_args=(xv, yv))
        exact = hypergradient(logistic_inner, logistic_outer, w_star, h, method="exact", **args)
        cg = hypergradient(logistic_inner, logistic_outer, w_star, h, method="cg", tol=1e-12,
                           maxiter=50, **args)
        gmres = hypergradient(logistic_inner, logistic_outer, w_star, h, method="gmres",
                              tol=1e-12, **args)
        assert _rel(cg, exact) < 1e-9 and _rel(gmres, exact) < 1e-9  # residual 1e-12 x cond

        # Oracle: central differences of F(h) = outer(w*(h), h), with w*(h) solved by Newton
        # to machine precision. Step 1e-5: truncation ~ delta^2 F''' ~ 1e-10, round-off
        # ~ 1e-16 |F| / delta ~ 1e-11, so 1e-6 relative leaves a wide margin.
        def total(hv):
            return logistic_outer(newton_solve(hv, x, y), hv, xv, yv)

        delta = 1e-5
        eye = jnp.eye(4) * delta
        fd = (jax.vmap(total)(h + eye) - jax.vmap(total)(h - eye)) / (2 * delta)
        assert _rel(exact, fd) < 1e-6
        assert _rel(cg, fd) < 1e-6
        # The implicit term matters here: greedy alone is far from the total derivative.
        greedy = hypergradient(logistic_inner, logistic_outer, w_star, h, method="greedy",
                               **args)
        assert _rel(greedy, fd) > 1e-2


# ----------------------------------------------------------------------------- darts
def darts_inner(w, h, x, y):
    """Logistic loss + ARD penalty + a cubic term, so grad_h L is not quadratic in w."""
    return logistic_inner(w, h, x, y) + 0.1 * jnp.sum(jnp.tanh(h) * w**3)


def test_darts_second_order():
    with jax.enable_x64(True):
        x, y, xv, yv, h = map(jnp.asarray, _logistic_data(seed=4))
        w = jnp.asarray(np.random.default_rng(6).normal(size=4))
        xi = 0.05
        args = dict(inner_args=(x, y), outer_args=(xv, yv))
        # Hand computation: virtual step, then a dense mixed Jacobian from jax.jacobian.
        w1 = w - xi * jax.grad(darts_inner)(w, h, x, y)
        v = jax.grad(logistic_outer, 0)(w1, h, xv, yv)
        mixed = jax.jacobian(jax.grad(darts_inner, 0), 1)(w, h, x, y)  # [i, j] = d2L/dw_i dh_j
        expected = jax.grad(logistic_outer, 1)(w1, h, xv, yv) - xi * mixed.T @ v

        exact = hypergradient(darts_inner, logistic_outer, w, h, method="darts", xi=xi,
                              exact_hvp=True, **args)
        assert _rel(exact, expected) < 1e-12  # same math, different AD order
        fd = hypergradient(darts_inner, logistic_outer, w, h, method="darts", xi=xi, **args)
        # eps ||v|| = 0.01, so the central difference is O(1e-4) off the exact mixed term
        # (relative); after the xi-scaling the total is within 1e-3, but not bit-equal.
        assert 1e-12 < _rel(fd, exact) < 1e-3
        greedy = hypergradient(darts_inner, logistic_outer, w, h, method="greedy", **args)
        for exact_hvp in (True, False):
            zero = hypergradient(darts_inner, logistic_outer, w, h, method="darts", xi=0.0,
                                 exact_hvp=exact_hvp, **args)
            np.testing.assert_allclose(zero, greedy, rtol=1e-14)
        # grad_w Q = 0 (outer free of w): eps = 0.01 / ||v|| is guarded, no NaN, = greedy.
        h_only = hypergradient(darts_inner, lambda w_, h_: 0.5 * RHO * jnp.sum(h_**2), w, h,
                               method="darts", xi=xi, inner_args=(x, y))
        np.testing.assert_allclose(h_only, RHO * h, rtol=1e-14)


# ----------------------------------------------------------------------------- pytrees / jit
class HParams(NamedTuple):
    first: jax.Array
    second: jax.Array


_OPTIONS = {
    "exact": {}, "cg": dict(tol=1e-12),  # "gmres" runs the same Implicit code path as "cg"
    "neumann": dict(lr=0.01, maxiter=3000, tol=1e-13), "greedy": {},
    "darts": dict(xi=0.01), "unrolled": dict(steps=20, lr=0.01),
}


@pytest.mark.parametrize("container", [lambda *parts: parts, HParams])
def test_pytrees_match_flat(container):
    def tree_inner(p, hp, x, y):
        return ridge_inner(jnp.concatenate([p["a"], p["b"]]), jnp.concatenate(hp), x, y)

    def tree_outer(p, hp, x, y):
        return ridge_outer(jnp.concatenate([p["a"], p["b"]]), jnp.concatenate(hp), x, y)

    assert set(_OPTIONS) == set(hg.METHODS) - {"gmres"}
    with jax.enable_x64(True):
        x, y, xv, yv, h = _ridge_data(seed=7)
        w_star, _, _ = ridge_closed_form(x, y, xv, yv, h)
        w, hh = jnp.asarray(w_star), jnp.asarray(h)
        params, hparams = {"a": w[:3], "b": w[3:]}, container(hh[:2], hh[2:])
        args = dict(inner_args=(x, y), outer_args=(xv, yv))
        for method, opts in _OPTIONS.items():
            flat = hypergradient(ridge_inner, ridge_outer, w, hh, method=method, **args, **opts)
            tree = hypergradient(tree_inner, tree_outer, params, hparams, method=method,
                                 **args, **opts)
            assert type(tree) is type(hparams), method
            # Same arithmetic in a different layout: agreement to round-off.
            np.testing.assert_allclose(jnp.concatenate(tree), flat, rtol=1e-9, err_msg=method)


@pytest.mark.parametrize("method", ["exact", "cg", "neumann", "darts", "unrolled"])
def test_jit_matches_eager_and_float32_matches_float64(method):
    x, y, xv, yv, h = _ridge_data(seed=8)
    w_star, _, _ = ridge_closed_form(x, y, xv, yv, h)
    opts = dict(_OPTIONS[method], inner_args=(x, y), outer_args=(xv, yv))
    if method in ("cg", "neumann"):
        opts["tol"] = 1e-6  # reachable in float32

    def call(w, hh):
        return hypergradient(ridge_inner, ridge_outer, w, hh, method=method, **opts)

    with jax.enable_x64(True):
        ref64 = np.asarray(call(jnp.asarray(w_star), jnp.asarray(h)))
    w32, h32 = jnp.asarray(w_star, jnp.float32), jnp.asarray(h, jnp.float32)
    eager = call(w32, h32)
    jitted = jax.jit(call)(w32, h32)
    assert eager.dtype == jnp.float32 and jitted.dtype == jnp.float32
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)  # XLA fusion reorders sums
    # float32 eps ~ 1e-7 times cond(A) ~ 10 and the 1e-6 solver tolerance: 1e-4 relative.
    assert _rel(eager, ref64) < 1e-4


def test_strategy_objects_equal_named_methods():
    with jax.enable_x64(True):
        x, y, xv, yv, h = _ridge_data(seed=9)
        w_star, _, _ = ridge_closed_form(x, y, xv, yv, h)
        w, hh = jnp.asarray(w_star), jnp.asarray(h)
        args = dict(inner_args=(x, y), outer_args=(xv, yv))
        pairs = [(hg.Implicit("cg", tol=1e-12), dict(method="cg", tol=1e-12)),
                 (hg.Darts(xi=0.02), dict(method="darts", xi=0.02)),
                 (hg.Unrolled(5, 0.01), dict(method="unrolled", steps=5, lr=0.01))]
        for strategy, named in pairs:
            assert hash(strategy) == hash(hg.get_method(**named))  # static under jax.jit
            a = hypergradient(ridge_inner, ridge_outer, w, hh, method=strategy, **args)
            b = hypergradient(ridge_inner, ridge_outer, w, hh, **named, **args)
            np.testing.assert_array_equal(a, b)
        # A strategy object is hashable, so it can be a static argument of jax.jit.
        jitted = jax.jit(hypergradient, static_argnums=(0, 1), static_argnames=("method",))
        np.testing.assert_allclose(
            jitted(ridge_inner, ridge_outer, w, hh, method=hg.Darts(xi=0.02), **args),
            hypergradient(ridge_inner, ridge_outer, w, hh, method="darts", xi=0.02, **args),
            rtol=1e-12)  # same arithmetic; XLA may reorder sums
        np.testing.assert_allclose(hg.hvp(ridge_inner, w, hh, hh, x, y),
                                   (x.T @ x + np.diag(np.exp(h))) @ h, rtol=1e-12)


# ----------------------------------------------------------------------------- validation
def _never_called(*_):
    raise AssertionError("validation must happen before any loss is evaluated")


@pytest.mark.parametrize("method, options, match", [
    ("newton", {}, "method must be one of .*'cg'.*'unrolled'"),
    ("cg", {"lr": 0.1}, r"unknown option.*'lr'.*valid options: \('maxiter', 'tol', 'ridge'\)"),
    ("greedy", {"xi": 0.1}, r"valid options: \(\)"),
    ("darts", {"steps": 3}, r"valid options: \('xi', 'exact_hvp'\)"),
    ("cg", {"maxiter": 0}, "maxiter must be a Python int >= 1"),
    ("neumann", {"maxiter": 2.5}, "maxiter must be a Python int >= 1"),
    ("cg", {"ridge": -1.0}, "ridge must be a finite number >= 0"),
    ("exact", {"ridge": -1e-3}, "ridge must be a finite number >= 0"),
    ("neumann", {"lr": 0.0}, "lr must be a finite number > 0"),
    ("unrolled", {"lr": -0.1}, "lr must be a finite number > 0"),
    ("unrolled", {"steps": 0}, "steps must be a Python int >= 1"),
    ("cg", {"tol": -1.0}, "tol must be a finite number >= 0"),
    ("darts", {"xi": float("nan")}, "xi must be a finite number >= 0"),
    ("darts", {"exact_hvp": "yes"}, "exact_hvp must be True or False"),
    ("gmres", {"restart": 0}, "restart must be a Python int >= 1"),
])
def test_invalid_arguments_raise_before_tracing(method, options, match):
    with pytest.raises(ValueError, match=match):
        hypergradient(_never_called, _never_called, jnp.zeros(2), jnp.zeros(2),
                      method=method, **options)


def test_invalid_strategy_usage():
    with pytest.raises(ValueError, match="cannot be combined"):
        hg.get_method(hg.Greedy(), xi=0.1)
    with pytest.raises(ValueError, match="solver must be one of"):
        hg.Implicit("lu")

    def traced_lr(lr):  # options are static: a traced value is refused, not silently used
        return hypergradient(ridge_inner, ridge_outer, jnp.zeros(2), jnp.zeros(2),
                             method="unrolled", lr=lr, inner_args=(jnp.eye(2), jnp.ones(2)),
                             outer_args=(jnp.eye(2), jnp.ones(2)))

    with pytest.raises(ValueError, match="lr must be a static Python number"):
        jax.jit(traced_lr)(0.1)
