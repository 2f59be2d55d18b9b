"""Oracle tests of structsel.evidence (float64 where a closed form is compared).

Bayesian linear regression y = Phi w + eps, eps ~ N(0, s^2 I), w_g ~ N(0, alpha_g^{-1} I):
the GGN of a linear model is its exact Hessian and the posterior is Gaussian, so the Laplace
evidence, the linearised predictive and the MacKay fixed point are exact; differences are
rounding only (tolerances 1e-8 in float64).
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
import scipy.stats

from structsel import evidence as ev

NOISE = 0.3


def jit(fn, *static, **kwargs):
    """jax.jit of fn with its leading (function) arguments and keywords bound."""
    return jax.jit(functools.partial(fn, *static, **kwargs))


def linear(params, x):
    return x @ params["kernel"] + params["bias"]


def blr_data(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ np.array([1.0, -0.5, 0.25])[:d] + 0.7 + NOISE * rng.normal(size=n)
    return x, y


def closed_form(x, y, alpha):
    """Exact log N(y | 0, s^2 I + Phi A^{-1} Phi^T), MAP mean and posterior covariance."""
    phi = np.hstack([x, np.ones((len(x), 1))])
    a = np.array([alpha[0]] * x.shape[1] + [alpha[1]])
    cov = NOISE ** 2 * np.eye(len(x)) + phi @ np.diag(1 / a) @ phi.T
    log_z = scipy.stats.multivariate_normal(np.zeros(len(x)), cov).logpdf(y)
    s = np.linalg.inv(phi.T @ phi / NOISE ** 2 + np.diag(a))
    return log_z, s @ phi.T @ y / NOISE ** 2, s


def as_params(m):
    return {"bias": jnp.asarray(m[-1:]), "kernel": jnp.asarray(m[:-1, None])}


def test_laplace_equals_closed_form_blr_evidence():
    with jax.enable_x64(True):
        x, y = blr_data()
        alpha = np.array([2.0, 0.5])  # groups follow the leaf order: bias, kernel
        log_z, m, _ = closed_form(x, y, alpha[::-1])
        curv = jit(ev.ggn, linear, likelihood=ev.Gaussian(NOISE))(
            as_params(m), jnp.asarray(x), jnp.asarray(y))
        assert float(ev.log_evidence(curv, jnp.asarray(alpha))) == pytest.approx(log_z, abs=1e-8)


def test_mackay_reaches_closed_form_optimum_of_alpha():
    """alpha-hat maximises the exact evidence (scipy, independent); at w* = MAP(alpha-hat) the
    post-hoc MacKay iteration from alpha = 1 must return alpha-hat (envelope theorem)."""
    with jax.enable_x64(True):
        x, y = blr_data()
        res = scipy.optimize.minimize(lambda la: -closed_form(x, y, np.exp(la))[0], np.zeros(2),
                                      method="Nelder-Mead",
                                      options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 4000})
        a_hat = np.exp(res.x)                      # (kernel, bias)
        _, m, _ = closed_form(x, y, a_hat)
        out = jit(ev.laplace_evidence, linear, likelihood=ev.Gaussian(NOISE), tol=1e-10,
                  max_iter=500)(as_params(m), jnp.asarray(x), jnp.asarray(y))
        assert bool(out.converged) and int(out.iterations) < 500
        np.testing.assert_allclose(np.asarray(out.precision)[::-1], a_hat, rtol=1e-5)
        assert float(out.log_evidence) == pytest.approx(-res.fun, abs=1e-8)


def test_dense_ggn_is_hessian_of_linear_models():
    """For a model linear in w the GGN is the exact Hessian of -log p(D | w)."""
    with jax.enable_x64(True):
        x, y = blr_data()
        params = as_params(np.array([0.3, -0.2, 0.1, 0.4]))
        for lik, yy, p in [(ev.Gaussian(NOISE), y, params),
                           (ev.Categorical(), (y > 0.7).astype(int) + (y > 1.5),
                            {"bias": jnp.zeros(3), "kernel": jnp.ones((3, 3)) * 0.1})]:
            w, unravel = jax.flatten_util.ravel_pytree(p)
            nll = lambda v: -jnp.sum(lik.log_prob(linear(unravel(v), jnp.asarray(x)), yy))
            curv = jit(ev.ggn, linear, likelihood=lik)(p, jnp.asarray(x), jnp.asarray(yy))
            np.testing.assert_allclose(curv.matrix, jax.jit(jax.hessian(nll))(w), atol=1e-10,
                                       rtol=1e-10)


def mlp(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def mlp_setup(extra=False):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (30, 3))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    p = {"w1": jax.random.normal(k2, (3, 5)), "b1": 0.1 * jnp.arange(5.0) - 0.2,
         "w2": jax.random.normal(k3, (5, 3))}
    if extra:
        p["unused"] = jnp.ones((4,))
    return p, x, y


def test_diagonal_ggn_is_diagonal_of_full():
    with jax.enable_x64(True):
        p, x, y = mlp_setup()
        kw = dict(likelihood=ev.Categorical(), chunk=7)
        full = jit(ev.ggn, mlp, **kw)(p, x, y)
        diag = jit(ev.ggn, mlp, diagonal=True, **kw)(p, x, y)
        np.testing.assert_allclose(diag.matrix, jnp.diag(full.matrix), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("curvature", ev.CURVATURES)
def test_mackay_converges_to_stationary_evidence(curvature):
    """At the returned alpha, d log p(D | alpha) / d log alpha = 0 (autodiff through slogdet)."""
    with jax.enable_x64(True):
        p, x, y = mlp_setup()
        out = jit(ev.laplace_evidence, mlp, likelihood=ev.Categorical(), curvature=curvature,
                  tol=1e-9, max_iter=1000)(p, x, y)
        assert bool(out.converged) and float(out.rel_change) <= 1e-9
        grad = jax.jit(jax.grad(lambda la: ev.log_evidence(out.curvature, jnp.exp(la))))(
            jnp.log(out.precision))
        np.testing.assert_allclose(grad, 0.0, atol=1e-6)
        one = ev.log_evidence(out.curvature, jnp.ones(3))
        assert float(out.log_evidence) >= float(one)


def test_dropped_weights_change_nothing():
    """A leaf the likelihood ignores, or one masked out and gathered away, gives the same
    evidence and predictive as the model without it."""
    with jax.enable_x64(True):
        p, x, y = mlp_setup()
        q, _, _ = mlp_setup(extra=True)
        lik = ev.Categorical()
        fit = jit(ev.laplace_evidence, mlp, likelihood=lik, tol=1e-10)
        base, ignored = fit(p, x, y), fit(q, x, y)
        mask = {"w1": True, "b1": True, "w2": True, "unused": False}
        masked = jit(ev.laplace_evidence, mlp, likelihood=lik, size=40, tol=1e-10)(
            q, x, y, mask=mask)
        for out in (ignored, masked):
            assert float(out.log_evidence) == pytest.approx(float(base.log_evidence), abs=1e-9)
            assert int(out.num_params) == int(base.num_params) == 35
        key = jax.random.key(1)
        predictive = jit(ev.conditional_log_marginal, mlp, likelihood=lik)
        clml = [predictive(pp, out, x, y, key=key, mask=mk)
                for pp, out, mk in ((p, base, None), (q, masked, mask))]
        assert float(clml[0]) == pytest.approx(float(clml[1]), abs=1e-9)
        too_small = jit(ev.ggn, mlp, likelihood=lik, size=20)(q, x, y, mask=mask)
        assert np.isnan(float(too_small.log_likelihood))


def test_conditional_marginal_is_exact_blr_predictive():
    """Linear-Gaussian: sum_i log N(y_i | phi_i^T m, s^2 + phi_i^T S phi_i) with the exact posterior."""
    with jax.enable_x64(True):
        x, y = blr_data(60)
        alpha = np.array([0.5, 2.0])
        _, m, s = closed_form(x[:40], y[:40], alpha)
        phi = np.hstack([x[40:], np.ones((20, 1))])
        oracle = scipy.stats.norm(phi @ m, np.sqrt(NOISE ** 2 + np.einsum("ij,jk,ik->i", phi, s,
                                                                          phi))).logpdf(y[40:]).sum()
        curv = jit(ev.ggn, linear, likelihood=ev.Gaussian(NOISE))(
            as_params(m), jnp.asarray(x[:40]), jnp.asarray(y[:40]))
        for diagonal in (False, True):
            c = curv if not diagonal else curv.replace(matrix=jnp.diag(curv.matrix), diagonal=True)
            lap = ev.mackay(c, init_precision=jnp.asarray(alpha[::-1]), max_iter=1)
            lap = lap.replace(factor=ev._factor(c, jnp.asarray(alpha[::-1]))[0])
            got = jit(ev.conditional_log_marginal, linear, likelihood=ev.Gaussian(NOISE))(
                as_params(m), lap, jnp.asarray(x[40:]), jnp.asarray(y[40:]), key=jax.random.key(0))
            if not diagonal:
                assert float(got) == pytest.approx(oracle, abs=1e-8)
            else:  # the diagonal posterior is a different (wider-or-narrower) approximation
                assert np.isfinite(float(got)) and float(got) != pytest.approx(oracle, abs=1e-6)


def test_mean_field_elbo_is_exact_for_diagonal_posterior():
    """Orthogonal design: the BLR posterior is diagonal, so the best mean-field q with the
    optimal alpha reaches max_alpha log p(D | alpha) (the ELBO is <= it, equal at the optimum;
    tolerance 0.02 nats: Adam steps and 512 Monte Carlo samples)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        q_mat, _ = np.linalg.qr(np.hstack([np.ones((64, 1)), rng.normal(size=(64, 3))]))
        x = 8.0 * q_mat[:, 1:]                     # columns orthogonal to each other and to 1
        y = x @ np.array([0.2, -0.1, 0.05]) + 0.7 + NOISE * rng.normal(size=64)
        best = scipy.optimize.minimize(lambda la: -closed_form(x, y, np.exp(la))[0], np.zeros(2),
                                       method="Nelder-Mead", options={"xatol": 1e-8})
        _, m, _ = closed_form(x, y, np.exp(best.x))
        lik = ev.Gaussian(NOISE)
        xs, ys = jnp.asarray(x), jnp.asarray(y)
        schedule = optax.cosine_decay_schedule(1e-2, 3000)
        q, losses = jit(ev.fit_mean_field, linear, likelihood=lik, steps=3000, learning_rate=schedule,
                        num_samples=4, init_log_sigma=-3.0)(as_params(m), xs, ys,
                                                            key=jax.random.key(0))
        out = jit(ev.mean_field_elbo, linear, likelihood=lik, num_samples=512)(
            as_params(m), q, xs, ys, key=jax.random.key(1))
        assert float(out.elbo) == pytest.approx(-best.fun, abs=0.02)
        assert float(out.elbo) <= -best.fun + 0.005
        assert losses.shape == (3000,) and float(losses[-1]) < float(losses[0])


def test_bad_inputs_name_the_argument():
    p, x, y = mlp_setup()
    lik = ev.Categorical()
    cases = [
        (lambda: ev.ggn(mlp, p, x, y, likelihood="softmax"), "likelihood"),
        (lambda: ev.laplace_evidence(mlp, p, x, y, likelihood=lik, curvature="kfac"), "curvature"),
        (lambda: ev.ggn(mlp, p, x, y[:-1], likelihood=lik), "same number of rows"),
        (lambda: ev.Gaussian(0.0), "noise_std"),
        (lambda: ev.laplace_evidence(mlp, p, x, y, likelihood=lik, max_iter=0), "max_iter"),
        (lambda: ev.laplace_evidence(mlp, p, x, y, likelihood=lik, tol=-1.0), "tol"),
        (lambda: ev.ggn(mlp, p, x, y, likelihood=lik, size=0), "size"),
        (lambda: ev.ggn(mlp, p, x, y, likelihood=lik, mask={"w1": True}), "mask"),
        (lambda: ev.laplace_evidence(mlp, p, x, y, likelihood=lik, init_precision=-1.0),
         "init_precision"),
        (lambda: ev.fit_mean_field(mlp, p, x, y, likelihood=lik, key=jax.random.key(0), steps=0),
         "steps"),
        (lambda: ev.mean_field_elbo(mlp, p, None, x, y, likelihood=lik, key=jax.random.key(0),
                                    num_samples=0), "num_samples"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


@pytest.mark.slow
def test_experiment_smoke(tmp_path):
    """Tiny budget, 3 mlp3 x digits structures: the pipeline end to end (~40-100 s, compiling)."""
    from experiments import evidence_vs_truth

    summary = evidence_vs_truth.main(["--smoke", "--workdir", str(tmp_path)])
    assert (tmp_path / "evidence_vs_truth.png").is_file()
    rows = json.loads((tmp_path / "structures.json").read_text())
    for table in summary["tables"].values():
        assert set(table["spearman"]) == set(evidence_vs_truth.ESTIMATORS)
        for est, rank in table["selected_rank"].items():
            assert 1 <= rank <= table["table_size"]
        assert table["num_structures"] == len(rows[table["name"]])
