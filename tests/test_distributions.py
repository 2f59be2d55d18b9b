"""Tests of structsel.distributions against closed forms, quadrature, TFP and Monte Carlo."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorflow_probability.substrates import jax as tfp

from structsel import distributions as D

tfd, tfb = tfp.distributions, tfp.bijectors


def gs_density_np(gamma, s, t):
    """method.md section 3, written independently in numpy float64:
    (K-1)! t^{K-1} prod_l s_l gamma_l^{-t-1} (sum_l s_l gamma_l^{-t})^{-K}."""
    gamma, s = np.asarray(gamma, np.float64), np.asarray(s, np.float64)
    k = gamma.shape[-1]
    return (math.factorial(k - 1) * t ** (k - 1) * np.prod(s * gamma ** (-t - 1), -1)
            * np.sum(s * gamma ** (-t), -1) ** (-k))


def simplex_quadrature(n=120):
    """Gauss-Legendre points/weights on the 2-simplex: g1 = u, g2 = (1-u) v, |J| = 1-u."""
    x, w = np.polynomial.legendre.leggauss(n)
    x, w = (x + 1) / 2, w / 2
    u, v = np.meshgrid(x, x, indexing="ij")
    wu, wv = np.meshgrid(w, w, indexing="ij")
    g1, g2 = u, (1 - u) * v
    pts = np.stack([g1, g2, 1 - g1 - g2], -1).reshape(-1, 3)
    return pts, (wu * wv * (1 - u)).reshape(-1)


# ------------------------------------------------------------------ Gumbel-Softmax
def test_gumbel_softmax_log_prob_matches_closed_form_and_tfp():
    s = np.array([0.5, 1.5, 3.0])
    with jax.enable_x64(True):
        @jax.jit
        def run(logits, t):
            q = D.gumbel_softmax(logits, t)
            g, lp = q.sample_and_log_prob(seed=jax.random.key(0), sample_shape=64)
            ref = tfd.RelaxedOneHotCategorical(t, logits=logits)
            return g, lp, q.log_prob(g), ref.log_prob(g)

        for t in (0.3, 0.7, 2.0):
            g, lp, lp_value, lp_tfp = map(np.asarray, run(jnp.log(jnp.asarray(s)), t))
            # float64 evaluation of the same formula: agreement to rounding.
            ref = np.log(gs_density_np(g, s, t))
            np.testing.assert_allclose(lp_value, ref, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(lp, ref, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(lp_tfp, ref, rtol=1e-8, atol=1e-8)


def test_gumbel_softmax_integrates_to_one():
    pts, w = simplex_quadrature()
    with jax.enable_x64(True):
        for t in (1.0, 2.5):
            q = D.gumbel_softmax(jnp.log(jnp.array([0.2, 0.3, 0.5])), t)
            total = float(np.sum(w * np.exp(np.asarray(q.log_prob(jnp.asarray(pts))))))
            # smooth integrand, 120^2 Gauss-Legendre points: error far below 1e-4.
            assert abs(total - 1) < 1e-4, (t, total)


def test_gumbel_softmax_argmax_probabilities():
    s = jnp.array([0.1, 0.3, 0.6])
    n = 40_000
    gamma = D.gumbel_softmax(jnp.log(s), 0.5).sample(seed=jax.random.key(2), sample_shape=n)
    freq = np.bincount(np.asarray(jnp.argmax(gamma, -1)), minlength=3) / n
    # binomial std sqrt(p(1-p)/n) <= 0.0025; allow 5 std.
    np.testing.assert_allclose(freq, s / s.sum(), atol=5 * 0.0025)


def test_gumbel_softmax_temperature_limits():
    s = jnp.log(jnp.array([10.0, 1.0, 0.1]))
    key = jax.random.key(3)
    low = D.gumbel_softmax(s, 0.01).sample(seed=key, sample_shape=2000)
    # t -> 0: mass at the vertices, E max_l gamma_l = 1 - O(t).
    assert float(jnp.mean(jnp.max(low, -1))) > 0.98
    dists = []
    for t in (1.0, 10.0, 100.0, 1000.0):
        g = D.gumbel_softmax(s, t).sample(seed=key, sample_shape=2000)
        dists.append(float(jnp.mean(jnp.linalg.norm(g - 1 / 3, axis=-1))))
    # t -> infinity: concentrates at the centre whatever s (seminar homework 1).
    assert all(a > b for a, b in zip(dists, dists[1:])), dists
    assert dists[-1] < 0.01, dists


# ------------------------------------------------------------------------ Dirichlet
def test_dirichlet_pathwise_gradient_matches_closed_form():
    a_mat = np.array([[1.0, 0.5, -0.3], [0.5, 2.0, 0.1], [-0.3, 0.1, -1.0]])
    with jax.enable_x64(True):
        a_mat = jnp.asarray(a_mat)
        s = jnp.array([0.7, 1.3, 2.0])
        t = 1.5

        def exact(s):
            # E[g_i g_j] = (alpha_i alpha_j + delta_ij alpha_i) / (a0 (a0 + 1)).
            alpha = t * s
            a0 = alpha.sum()
            return (alpha @ a_mat @ alpha + jnp.sum(jnp.diag(a_mat) * alpha)) / (a0 * (a0 + 1))

        def f_samples(s):
            g = D.dirichlet(s, t).sample(seed=jax.random.key(4), sample_shape=40_000)
            return jnp.einsum("ni,ij,nj->n", g, a_mat, g)

        # (n, K) per-sample pathwise gradients (implicit reparameterisation)
        per_sample = jax.jit(jax.jacfwd(f_samples))(s)
        est, se = per_sample.mean(0), per_sample.std(0) / np.sqrt(per_sample.shape[0])
        ref = jax.grad(exact)(s)
        # 5 standard errors of the Monte Carlo mean.
        assert np.all(np.abs(est - ref) < 5 * se + 1e-12), (est, ref, se)
        assert np.all(np.abs(ref) > 10 * se)  # the check can fail: the gradient is resolved


def test_dirichlet_temperature_limits():
    s = jnp.array([1.0, 2.0, 3.0])
    key = jax.random.key(5)
    sample = jax.jit(lambda s, t: D.dirichlet(s, t).sample(seed=key, sample_shape=2000))
    low = sample(s, 0.01)
    # alpha = 0.01 s: mass at the vertices (E max -> 1 as alpha -> 0).
    assert float(jnp.mean(jnp.max(low, -1))) > 0.97
    high = sample(s, 1e4)
    # alpha = 1e4 s: std of each coordinate ~ sqrt(p(1-p)/6e4) < 0.003.
    np.testing.assert_allclose(jnp.mean(high, 0), s / s.sum(), atol=1e-3)
    assert float(jnp.max(jnp.std(high, 0))) < 0.003


# --------------------------------------------------------------------- logit-normal
def test_logit_normal_log_prob_matches_tfp_and_integrates():
    pts, w = simplex_quadrature(200)
    with jax.enable_x64(True):
        @jax.jit
        def run(loc, scale, pts):
            q = D.logit_normal(loc, scale)
            g, lp = q.sample_and_log_prob(seed=jax.random.key(6), sample_shape=50)
            ref = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(loc, scale),
                                              tfb.SoftmaxCentered())
            return lp, q.log_prob(g), ref.log_prob(g), q.log_prob(pts)

        lp, lp_value, lp_tfp, lp_grid = run(jnp.array([0.3, -0.5]), jnp.array([0.8, 1.2]),
                                            jnp.asarray(pts))
        # TFP's density is w.r.t. the simplex surface measure (sqrt(K) x ours, see LogitNormal).
        np.testing.assert_allclose(lp_value, lp_tfp + 0.5 * np.log(3), rtol=1e-9)
        np.testing.assert_allclose(lp, lp_value, rtol=1e-9)
        total = float(np.sum(w * np.exp(np.asarray(lp_grid))))
        # density vanishes at the boundary; 200^2 points resolve it to better than 1e-3.
        assert abs(total - 1) < 1e-3, total
        assert D.logit_normal(jnp.zeros(2), jnp.ones(2)).event_shape == (3,)


def test_logit_normal_sampling_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        c = jnp.array([1.0, -2.0, 0.5])

        def f(params):
            g = D.logit_normal(params[:2], jnp.exp(params[2:])).sample(
                seed=jax.random.key(7), sample_shape=16)
            return jnp.sum(jnp.sin(g @ c))

        x = jnp.array([0.2, -0.4, -0.3, 0.1])
        f = jax.jit(f)
        grad = jax.jit(jax.grad(f))(x)
        eps = 1e-6
        fd = np.array([(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in jnp.eye(4)])
        # central differences in float64: error O(eps^2) + rounding 1e-16/eps ~ 1e-9.
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------- KL
def test_kl_closed_forms():
    with jax.enable_x64(True):
        s1, s2 = jnp.array([0.5, 2.0, 1.0]), jnp.array([1.5, 0.3, 4.0])
        kl = D.kl_divergence(D.dirichlet(s1, 2.0), D.dirichlet(s2, 0.5))
        ref = tfd.kl_divergence(tfd.Dirichlet(2.0 * s1), tfd.Dirichlet(0.5 * s2))
        np.testing.assert_allclose(kl, ref, rtol=1e-10)
        mq, sq = jnp.array([0.1, -1.0]), jnp.array([0.5, 2.0])
        mp, sp = jnp.array([1.0, 0.0]), jnp.array([1.0, 0.7])
        kl = D.kl_divergence(D.logit_normal(mq, sq), D.logit_normal(mp, sp))
        ref = jnp.sum(jnp.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5)
        np.testing.assert_allclose(kl, ref, rtol=1e-10)


def test_kl_monte_carlo_gumbel_softmax():
    with jax.enable_x64(True):
        sq, sp, tq, tp = np.array([0.2, 0.5, 0.3]), np.array([0.6, 0.2, 0.2]), 0.8, 1.3
        q = D.gumbel_softmax(jnp.log(jnp.asarray(sq)), tq)
        p = D.gumbel_softmax(jnp.log(jnp.asarray(sp)), tp)
        n = 20_000
        kl = jax.jit(lambda q, p: D.kl_divergence(q, p, key=jax.random.key(8), num_samples=n))
        est = float(kl(q, p))
        # independent estimate: TFP sampler + the numpy closed-form densities.
        g = np.asarray(jax.jit(lambda: tfd.RelaxedOneHotCategorical(
            tq, logits=jnp.log(jnp.asarray(sq))).sample(n, seed=jax.random.key(9)))())
        ratio = np.log(gs_density_np(g, sq, tq)) - np.log(gs_density_np(g, sp, tp))
        se = ratio.std() / np.sqrt(n)
        # two independent estimates: their difference has std sqrt(2) se; allow 5 of those.
        assert abs(est - ratio.mean()) < 5 * np.sqrt(2) * se, (est, ratio.mean(), se)
        assert ratio.mean() > 10 * se  # the KL is resolved away from zero
        same = D.kl_divergence(q, D.gumbel_softmax(jnp.log(jnp.asarray(sq)), tq),
                               key=jax.random.key(8), num_samples=100)
        assert abs(float(same)) < 1e-12


def test_kl_monte_carlo_mixed_pair_matches_quadrature():
    pts, w = simplex_quadrature(200)
    with jax.enable_x64(True):
        q = D.dirichlet(jnp.array([2.0, 3.0, 4.0]), 1.0)
        p = D.gumbel_softmax(jnp.log(jnp.array([0.3, 0.3, 0.4])), 1.0)
        x = jnp.asarray(pts)
        lq, lp = np.asarray(jax.jit(q.log_prob)(x)), np.asarray(jax.jit(p.log_prob)(x))
        ref = float(np.sum(w * np.exp(lq) * (lq - lp)))
        n = 20_000

        @jax.jit
        def run(q, p):
            key = jax.random.key(10)
            draws = D._mc_log_ratio(q, p, key, n)
            return D.kl_divergence(q, p, key=key, num_samples=n), jnp.std(draws)

        est, std = map(float, run(q, p))
        se = std / np.sqrt(n)
        # 5 Monte Carlo standard errors (quadrature error is far smaller).
        assert abs(est - ref) < 5 * se, (est, ref, se)
        ln = D.logit_normal(jnp.array([0.2, 0.1]), jnp.array([0.5, 0.5]))
        est = float(jax.jit(lambda a, b: D.kl_divergence(a, b, key=jax.random.key(11),
                                                         num_samples=n))(ln, q))
        lln = np.asarray(jax.jit(ln.log_prob)(x))
        ref = float(np.sum(w * np.exp(lln) * (lln - lq)))
        assert abs(est - ref) < 0.02 * abs(ref) + 0.01, (est, ref)  # ~5 standard errors


# ---------------------------------------------------------------- float32 safety
def _float32_checks(kind, theta, scale, t):
    """Samples, log-densities and gradients of a low-temperature GS / Dirichlet (one jit)."""
    key = jax.random.key(12)
    c = jnp.array([1.0, -1.0, 2.0], jnp.float32)
    make = {"gs": lambda th: D.gumbel_softmax(th, t),
            "dir": lambda th: D.dirichlet(scale * jnp.exp(th), t)}[kind]

    def objective(th):
        g, lp = make(th).sample_and_log_prob(seed=key, sample_shape=2000)
        lp_value = make(th).log_prob(g)
        loss = jnp.mean(g @ c) + 1e-3 * jnp.mean(lp) + 1e-3 * jnp.mean(lp_value)
        return loss, (g, lp, lp_value)

    grad, (g, lp, lp_value) = jax.grad(objective, has_aux=True)(theta)
    other = D.gumbel_softmax(jnp.zeros(3, jnp.float32), 0.05)
    kl_grad = jax.grad(lambda th: D.kl_divergence(make(th), other, key=key, num_samples=500))
    return g, lp, lp_value, grad, kl_grad(theta)


_float32_checks_jit = jax.jit(_float32_checks, static_argnums=0)


@pytest.mark.parametrize("kind, scale, t", [("gs", 1.0, 0.05), ("dir", 1.0, 0.05),
                                            ("dir", 0.05, 1.0)],
                         ids=["gs_t0.05", "dir_t0.05", "dir_c0.05"])
def test_float32_safety_low_temperature(kind, scale, t):
    theta = jnp.log(jnp.array([0.5, 0.3, 0.2], jnp.float32))
    g, lp, lp_value, grad, kl_grad = _float32_checks_jit(kind, theta, jnp.float32(scale),
                                                         jnp.float32(t))
    assert g.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(g)) & jnp.all(g > 0))
    np.testing.assert_allclose(jnp.sum(g, -1), 1.0, atol=1e-5)  # float32 rounding
    # the regime is really extreme: coordinates below float32 range occur.
    assert float(jnp.mean(g <= jnp.finfo(jnp.float32).tiny)) > 0.01
    for x in (lp, lp_value, grad, kl_grad):
        assert bool(jnp.all(jnp.isfinite(x)))


# ------------------------------------------------------------------------ validation
@pytest.mark.parametrize("call, name", [
    (lambda: D.gumbel_softmax(jnp.zeros(3), 0.0), "temperature"),
    (lambda: D.gumbel_softmax(jnp.zeros(3), -1.0), "temperature"),
    (lambda: D.gumbel_softmax(jnp.array([0.0, jnp.inf, 1.0]), 1.0), "logits"),
    (lambda: D.gumbel_softmax(jnp.array([0.0, jnp.nan, 1.0]), 1.0), "logits"),
    (lambda: D.gumbel_softmax(jnp.zeros(()), 1.0), "logits"),
    (lambda: D.dirichlet(jnp.array([1.0, 0.0, 1.0]), 1.0), "concentration"),
    (lambda: D.dirichlet(jnp.ones(3), 0.0), "temperature"),
    (lambda: D.logit_normal(jnp.zeros(2), jnp.ones(3)), "loc and scale"),
    (lambda: D.logit_normal(jnp.zeros(2), jnp.array([1.0, -1.0])), "scale"),
    (lambda: D.kl_divergence(D.gumbel_softmax(jnp.zeros(3), 1.0),
                             D.gumbel_softmax(jnp.zeros(3), 2.0)), "key"),
    (lambda: D.kl_divergence(D.dirichlet(jnp.ones(3), 1.0), D.gumbel_softmax(jnp.zeros(3), 1.0),
                             key=jax.random.key(0), num_samples=0), "num_samples"),
])
def test_invalid_arguments_raise(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_validation_skipped_under_jit():
    @jax.jit
    def sample(t, logits):
        return D.gumbel_softmax(logits, t).sample(seed=jax.random.key(0))

    g = sample(0.5, jnp.zeros(3))
    np.testing.assert_allclose(jnp.sum(g), 1.0, atol=1e-6)
