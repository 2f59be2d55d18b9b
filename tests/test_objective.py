"""Tests for structsel.objective: the special cases of method.md M6 against independent oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from tensorflow_probability.substrates import jax as tfp

from structsel import distributions, family, structure
from structsel import objective as O
from structsel.hypergradient import hypergradient

tfd = tfp.distributions
T = 1.5  # temperature used by the float64 tests: gamma stays far from 0, no floor binds


def _data(m=30, d=3, seed=0):
    x = jax.random.normal(jax.random.key(seed), (m, d))
    y = jnp.tanh(x[:, 0]) + 0.3 * jax.random.normal(jax.random.key(seed + 1), (m,))
    return x, y


def _glm(**kw):
    fam = family.glm_family(3)
    kw.setdefault("relaxation", structure.LogitNormal())
    return O.Objective(fam, "gaussian", **kw)


def _perturbed(obj, x, seed=5):
    """Params/hparams away from the init so that every term is non-trivial."""
    p, h = obj.init(jax.random.key(seed), x)
    flat, unravel = ravel_pytree((p, h))
    flat = flat + 0.3 * jax.random.normal(jax.random.key(seed + 1), flat.shape, flat.dtype)
    return unravel(flat)


def _normal(theta):
    """The Gaussian under the logit-normal relaxation at temperature T: N(mu / T, sigma^2 / T^2)."""
    loc, log_scale = jnp.split(theta, 2)
    return tfd.MultivariateNormalDiag(loc / T, jnp.exp(log_scale) / T)


def _independent_terms(p, h, x, y, key, r, noise_std):
    """Sum-over-data MC log-likelihood and KL(q||p), written out by hand (glm_family(3), logit-normal).

    Same key schedule as Objective.terms (documented there) so the samples coincide.
    """
    k_samples, _ = jax.random.split(key)
    q, theta_q = p["w"], p["struct"][0]
    log_liks, kl_ws, min_log_std = [], [], jnp.inf
    for k in jax.random.split(k_samples, r):
        k_w, k_g = jax.random.split(k)
        dist = structure.LogitNormal().distribution(theta_q, T)
        gamma = dist.sample(seed=jax.random.split(k_g, 1)[0])
        leaves, treedef = jax.tree.flatten(q.mu)
        eps = [jax.random.normal(kk, l.shape, l.dtype)
               for kk, l in zip(jax.random.split(k_w, len(leaves)), leaves)]
        w = jax.tree.map(lambda m, s, e: m + jnp.exp(s) * e, q.mu, q.log_sigma,
                         jax.tree.unflatten(treedef, eps))
        (op0, op1, op2), = w
        f = (gamma[0] * op0["bias"][0]
             + gamma[1] * jnp.tanh(x[:, 0] * op1["dense"]["kernel"][0, 0] + op1["dense"]["bias"][0])
             + gamma[2] * jnp.tanh(x @ op2["dense"]["kernel"][:, 0]))
        log_liks.append(jnp.sum(tfd.Normal(f, noise_std).log_prob(y)))
        kl = 0.0
        for l in range(3):
            mu_l, ls_l, la_l = (jax.tree.leaves(t[0][l]) for t in (q.mu, q.log_sigma, h["log_alpha"]))
            for mu, ls, la in zip(mu_l, ls_l, la_l):
                prior_std = gamma[l] / jnp.sqrt(jnp.exp(la))  # the naive N(0, gamma^2 A^-1)
                min_log_std = jnp.minimum(min_log_std, jnp.min(jnp.log(prior_std)))
                kl += jnp.sum(tfd.kl_divergence(tfd.Normal(mu, jnp.exp(ls)), tfd.Normal(0.0, prior_std)))
        kl_ws.append(kl)
    kl_struct = tfd.kl_divergence(_normal(theta_q), _normal(h["struct"][0]))
    return jnp.mean(jnp.stack(log_liks)), jnp.mean(jnp.stack(kl_ws)) + kl_struct, min_log_std


@pytest.fixture(scope="module")
def glm64():
    """Data and perturbed (params, hparams) in float64, initialised once for the module."""
    with jax.enable_x64(True):
        x, y = _data()
        p, h = _perturbed(_glm(noise_std=None, coefficients=O.elbo()), x)
        return x, y, p, h


def test_elbo_ml_and_effective_sample_size_match_independent_mc(glm64):
    x, y, p, h_learned = glm64
    h = {k: v for k, v in h_learned.items() if k != "log_noise"}  # fixed noise std 1
    m, r, c = x.shape[0], 3, 4.0
    objs = {
        "elbo": _glm(coefficients=O.elbo(), num_samples=r),
        "ml": _glm(coefficients=O.max_likelihood(), num_samples=r),
        "sl": _glm(coefficients=O.single_level(c), num_samples=r),
        "big": _glm(coefficients=O.elbo(), num_samples=r, num_data=10 * m),
        "lik": _glm(coefficients=O.Coefficients(2.0, 0.0, 1.0), num_samples=r),
    }
    learned = _glm(coefficients=O.elbo(), num_samples=r, noise_std=None)

    @jax.jit
    def run(p, h, h_learned, key):
        ctx = O.Context.create(key, T)
        out = {k: (o.inner_loss(p, h, (x, y), ctx), o.outer_loss(p, h, (x, y), ctx))
               for k, o in objs.items()}
        out["learned"] = (learned.inner_loss(p, h_learned, (x, y), ctx),) * 2
        noise = jnp.exp(h_learned["log_noise"])
        return out, _independent_terms(p, h, x, y, key, r, 1.0), \
            _independent_terms(p, h, x, y, key, r, noise)

    with jax.enable_x64(True):
        out, (log_lik, kl, min_log_std), (log_lik_n, _, _) = jax.tree.map(
            np.asarray, run(p, h, h_learned, jax.random.key(7)))
        noise = float(np.exp(np.asarray(h_learned["log_noise"])))
    assert min_log_std > -4.0  # the log-std floor does not bind: the naive formula applies
    assert abs(noise - 1.0) > 0.01  # the learned noise std really differs from 1
    neg_elbo = -(log_lik - kl) / m
    # float64, same samples, same formulas written differently: rtol 1e-10.
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10)
    # (b) all three coefficients 1, no lambda_struct: both levels are the MC ELBO (per datum).
    close(out["elbo"][0], neg_elbo)
    close(out["elbo"][1], neg_elbo)
    # Gaussian noise std learned in h: the same ELBO with that std.
    close(out["learned"][0], -(log_lik_n - kl) / m)
    # (c) lambda_prior^L = 0: the pure expected negative log-likelihood.
    close(out["ml"][0], -log_lik / m)
    # (d) lambda_prior^L = c: c times the ELBO whose likelihood is scaled by 1/c (m/c data).
    close(out["sl"][0], -c * (log_lik / c - kl) / m)
    # num_data = M: the batch mean stands for 1/M of a data set of size M.
    close(out["big"][0], -log_lik / m + kl / (10 * m))
    # lambda_prior^Q = 0, lambda_prior^L = 1: ELBO inner, the outer is the (scaled) likelihood.
    close(out["lik"][1], -2.0 * log_lik / m)
    close(out["lik"][0], neg_elbo)


def _solve_inner(obj, p, h, batch, ctx):
    """theta* with ||grad|| ~ 1e-15 by Newton steps on the dense Hessian (float64).

    Damped (H + lambda I) while H is indefinite or the step is long; plain Newton near the
    optimum, where it converges quadratically.
    """
    flat, unravel = ravel_pytree(p)
    f = lambda v: obj.inner_loss(unravel(v), h, batch, ctx)
    hess_grad = jax.jit(jax.jacfwd(lambda v: (jax.grad(f)(v),) * 2, has_aux=True))
    for _ in range(30):
        hess, grad = hess_grad(flat)
        if float(jnp.max(jnp.abs(grad))) < 1e-13:
            break
        damping = max(0.0, 1e-3 - float(jnp.min(jnp.linalg.eigvalsh(hess))))
        step = jnp.linalg.solve(hess + damping * jnp.eye(flat.size), grad)
        flat = flat - step / max(1.0, float(jnp.max(jnp.abs(step))))  # trust region 1
    hess, grad = hess_grad(flat)
    assert float(jnp.max(jnp.abs(grad))) < 1e-10
    assert float(jnp.min(jnp.linalg.eigvalsh(hess))) > 0  # a strict local minimum
    return unravel(flat)


@pytest.mark.slow  # a float64 Newton solve and a CG hypergradient: ~30 s CPU to compile
def test_single_level_hypergradient_equals_partial_gradient(glm64):
    x, y, _, _ = glm64
    batch = (x, y)
    # Logit-normal structure: smooth reparameterisation, closed-form KLs, no logit-shift
    # invariance (which would make the inner Hessian singular, as with Gumbel-Softmax).
    ref = (distributions.logit_normal(jnp.array([1.0, -0.5]), jnp.array([0.5, 0.5])),)
    c = 0.5
    make = lambda prior_q: _glm(coefficients=O.Coefficients(2.0, prior_q, c, (0.3,)),
                                references=(ref,), num_samples=2, noise_std=None,
                                inv_gamma=(1.0, 0.5))
    obj = make(2.0 * c)  # lambda_prior^Q / lambda_lik^Q = lambda_prior^L
    broken = make(4.0 * c)  # negative control: the ratio broken
    with jax.enable_x64(True):
        ctx = O.Context.create(jax.random.key(11), T)
        p0, h = _perturbed(obj, x)
        p_star = _solve_inner(obj, p0, h, batch, ctx)  # p0 stays the "other" point below

        @jax.jit
        def run(p):
            hg = hypergradient(obj.inner_loss, obj.outer_loss, p, h, method="cg", tol=1e-13,
                               maxiter=200, inner_args=(batch, ctx), outer_args=(batch, ctx))
            g_theta, partial = jax.grad(obj.outer_loss, argnums=(0, 1))(p, h, batch, ctx)
            # -Q - lambda_lik^Q (-L): free of theta in the single-level setting only.
            diff = lambda o, p: o.outer_loss(p, h, batch, ctx) - 2.0 * o.inner_loss(p, h, batch, ctx)
            return (ravel_pytree(hg)[0], ravel_pytree(partial)[0], ravel_pytree(g_theta)[0],
                    diff(obj, p) - diff(obj, p0), diff(broken, p) - diff(broken, p0))

        hg, partial, g_theta, d_single, d_broken = jax.tree.map(np.asarray, run(p_star))
    # Q = lambda_lik^Q L + terms free of theta: float64 rounding only (atol 1e-12 on O(1) values).
    assert abs(d_single) < 1e-12
    assert abs(d_broken) > 1e-3  # negative control: not so when the ratio is broken
    # grad_theta Q = 0 at theta*, so the implicit term vanishes ...
    assert np.max(np.abs(g_theta)) < 1e-10
    # ... and the hypergradient equals the partial gradient of the joint objective. The
    # implicit term is ~ |grad_theta Q| / lambda_min(H) < 1e-8 plus CG tolerance: atol 1e-8.
    np.testing.assert_allclose(hg, partial, atol=1e-8)
    assert np.max(np.abs(partial)) > 1e-2  # the gradient itself is not trivially 0


def test_structure_term_sign_convention(glm64):
    x, y, p, h = glm64
    h = {k: v for k, v in h.items() if k != "log_noise"}
    loc_ref, scale_ref = jnp.array([2.0, -1.0]), jnp.array([0.3, 0.3])
    ref = (distributions.logit_normal(loc_ref, scale_ref),)
    base = _glm(coefficients=O.elbo())
    objs = [_glm(coefficients=O.Coefficients(1.0, 1.0, 1.0, (lam,)), references=(ref,))
            for lam in (2.0, -2.0)]
    direct = lambda s: tfd.kl_divergence(_normal(s), tfd.MultivariateNormalDiag(loc_ref, scale_ref))

    @jax.jit
    def run(h, key):
        ctx = O.Context.create(key, T)
        out = []
        for obj in objs:
            delta = obj.outer_loss(p, h, (x, y), ctx) - base.outer_loss(p, h, (x, y), ctx)
            g = jax.grad(lambda s: obj.outer_loss(p, {**h, "struct": (s,)}, (x, y), ctx)
                         - base.outer_loss(p, {**h, "struct": (s,)}, (x, y), ctx))(h["struct"][0])
            s0 = h["struct"][0]
            out.append((delta, direct(s0), direct(s0 - 1e-3 * g / jnp.max(jnp.abs(g)))))
        return out

    with jax.enable_x64(True):
        out = jax.tree.map(np.asarray, run(h, jax.random.key(0)))
    for lam, (delta, kl, kl_moved) in zip((2.0, -2.0), out):
        # -Q / m gains + lambda_struct KL(p(Gamma|h) || p') / m: closed forms, rtol 1e-10.
        np.testing.assert_allclose(delta, lam * kl / 30, rtol=1e-10)
        # A gradient step on h: lambda > 0 attracts the prior to p', lambda < 0 repels it.
        assert (kl_moved < kl) == (lam > 0)


def test_low_temperature_float32_finite():
    x, y = _data()
    obj = O.Objective(family.glm_family(3), "gaussian", structure.GumbelSoftmax(), O.elbo(),
                      num_samples=3, inv_gamma=(1.0, 1.0))
    p, h = obj.init(jax.random.key(0), x)
    ctx = O.Context.create(jax.random.key(1), 0.05)
    f = jax.jit(jax.value_and_grad(lambda p, h: obj.outer_loss(p, h, (x, y), ctx), argnums=(0, 1)))
    val, grads = f(p, h)
    # At t = 0.05 the 3 draws of gamma have coordinates far below e^-4 (checked in
    # test_variational), so the floor and the log-space prior are exercised.
    assert val.dtype == jnp.float32 and bool(jnp.isfinite(val))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_darts_point_weights_are_cross_entropy_at_softmax_alpha():
    x = jax.random.normal(jax.random.key(0), (20, 4))
    y = jax.random.randint(jax.random.key(1), (20,), 0, 3)
    fam = family.two_layer_net(4, 5, 3)
    obj = O.Objective(fam, "categorical", structure.Softmax(), O.darts(), weights="point")
    w, alpha = obj.init(jax.random.key(2), x)
    alpha = (jnp.array([0.5, -0.5]), jnp.zeros(1))
    logits = fam.apply(w, (jax.nn.softmax(alpha[0]), jnp.ones(1)), x)
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    @jax.jit
    def run(w, alpha, key):
        ctx = O.Context.create(key)
        return (obj.inner_loss(w, alpha, (x, y), ctx), obj.outer_loss(w, alpha, (x, y), ctx),
                obj.predict(w, alpha, x, ctx), obj.structure(w, alpha, ctx)[0])

    inner, outer, pred, gamma = run(w, alpha, jax.random.key(3))
    np.testing.assert_allclose(inner, ce, rtol=1e-6)  # float32 rounding
    np.testing.assert_allclose(outer, ce, rtol=1e-6)
    np.testing.assert_allclose(pred, logits, atol=1e-6)
    np.testing.assert_allclose(gamma, jax.nn.softmax(alpha[0]), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"likelihood": "poisson"}, "likelihood"),
    ({"weights": "laplace"}, "weights"),
    ({"coefficients": O.Coefficients(1.0, 1.0, 1.0, (1.0,))}, "coefficients.struct"),
    ({"num_samples": 0}, "num_samples"),
    ({"inv_gamma": (-1.0, 0.0)}, "inv_gamma"),
    ({"weights": "point"}, "weights='point'"),
    ({"relaxation": structure.Softmax(),
      "references": ((distributions.dirichlet(jnp.ones(3), 1.0),),),
      "coefficients": O.Coefficients(1.0, 1.0, 1.0, (1.0,))}, "stochastic"),
])
def test_validation(kwargs, match):
    args = {"likelihood": "gaussian", **kwargs}
    with pytest.raises(ValueError, match=match):
        O.Objective(family.glm_family(3), **args)


def test_batch_must_be_a_pair():
    obj = _glm()
    x, y = _data()
    p, h = obj.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="batch"):
        obj.inner_loss(p, h, x, O.Context.create(jax.random.key(0)))


# ------------------------------------------------ traced coefficients, weight models
def test_traced_coefficients_equal_static_objectives():
    # Runs with different lambdas (and lambda_struct) vmapped in one program through
    # ctx.coefficients must equal separate objectives with those static coefficients
    # (same key, so the same Monte Carlo draws): float64, rtol 1e-12 (the same arithmetic,
    # reassociated at most by the vmap).
    x, y = _data()
    loc_ref, scale_ref = jnp.array([2.0, -1.0]), jnp.array([0.3, 0.3])
    refs = ((distributions.logit_normal(loc_ref, scale_ref),),)
    rows = [O.Coefficients(1.0, 1.0, 1.0, (0.0,)), O.Coefficients(2.0, 0.3, 0.1, (-1.0,)),
            O.Coefficients(0.5, 3.0, 0.0, (2.0,))]
    with jax.enable_x64(True):
        x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        base = _glm(coefficients=rows[0], references=refs, num_samples=2)
        p, h = _perturbed(base, x64)
        key = jax.random.key(4)
        batch = O.coefficient_batch(rows)
        assert batch.prior_q.dtype == jnp.float64 and batch.struct.shape == (3, 1)

        def both(obj, ctx):
            return (obj.inner_loss(p, h, (x64, y64), ctx), obj.outer_loss(p, h, (x64, y64), ctx),
                    jax.grad(obj.outer_loss, argnums=1)(p, h, (x64, y64), ctx))

        traced = jax.jit(jax.vmap(lambda c: both(base, O.Context.create(key, T).replace(
            coefficients=c))))(batch)
        for i, row in enumerate(rows):
            static = jax.jit(lambda: both(_glm(coefficients=row, references=refs, num_samples=2),
                                          O.Context.create(key, T)))()
            for a, b in zip(jax.tree.leaves(static), jax.tree.leaves(traced)):
                np.testing.assert_allclose(b[i], a, rtol=1e-12, atol=1e-14)


def test_coefficient_batch_validation():
    with pytest.raises(ValueError, match=r"coefficients\[1\].prior_l"):
        O.coefficient_batch([O.elbo(), O.Coefficients(1.0, 1.0, float("nan"))])
    with pytest.raises(ValueError, match="same number of lambda_struct"):
        O.coefficient_batch([O.Coefficients(1.0, 1.0, 1.0, (1.0,)), O.elbo()])
    obj = _glm()
    x, y = _data()
    p, h = obj.init(jax.random.key(0), x)
    ctx = O.Context.create(jax.random.key(0), coefficients=O.Coefficients(1.0, 1.0, 1.0, (1.0,)))
    with pytest.raises(ValueError, match="ctx.coefficients.struct"):
        obj.inner_loss(p, h, (x, y), ctx)


def test_weight_models_are_strategies():
    fam = family.glm_family(3)
    assert O.Objective(fam, "gaussian").weights == O.GaussianWeights()
    assert O.Objective(fam, "gaussian", structure.Softmax(), O.darts(),
                       weights="point").weights == O.PointWeights()
    with pytest.raises(ValueError, match="GaussianWeights structure"):
        O.GaussianWeights(structure="middle")
    with pytest.raises(ValueError, match="weights must be one of"):
        O.Objective(fam, "gaussian", weights=3)


def test_structure_at_the_outer_level():
    # GaussianWeights(structure="outer") moves theta_q of q(Gamma) from params to
    # hparams["q_struct"]; with the same values both losses are unchanged (oracle: the
    # inner-level objective, same key, float64 rtol 1e-12) and the outer gradient w.r.t.
    # theta_q is the gradient of -Q (validation likelihood + lambda_prior^Q KL / m_Q).
    x, y = _data()
    with jax.enable_x64(True):
        x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        inner_obj = _glm(coefficients=O.single_level(0.3), num_samples=2)
        outer_obj = _glm(coefficients=O.single_level(0.3), num_samples=2,
                         weights=O.GaussianWeights(structure="outer"))
        p, h = _perturbed(inner_obj, x64)
        p2 = {"w": p["w"]}
        h2 = {**h, "q_struct": p["struct"]}
        p0, h0 = outer_obj.init(jax.random.key(0), x64)
        assert "struct" not in p0 and "q_struct" in h0
        ctx = O.Context.create(jax.random.key(3), T)
        for f in ("inner_loss", "outer_loss"):
            np.testing.assert_allclose(getattr(outer_obj, f)(p2, h2, (x64, y64), ctx),
                                       getattr(inner_obj, f)(p, h, (x64, y64), ctx), rtol=1e-12)
        g_outer = jax.grad(outer_obj.outer_loss, argnums=1)(p2, h2, (x64, y64), ctx)["q_struct"]
        g_ref = jax.grad(lambda s: inner_obj.outer_loss({**p, "struct": s}, h, (x64, y64),
                                                        ctx))(p["struct"])
        np.testing.assert_allclose(g_outer[0], g_ref[0], rtol=1e-12)
        # the inner loss no longer moves q(Gamma): params carry only q(w)
        assert set(jax.grad(outer_obj.inner_loss)(p2, h2, (x64, y64), ctx)) == {"w"}
