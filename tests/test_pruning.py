"""Tests for structsel.pruning: rho vs Gaussian densities, C_p vs numerical minimisation,
pruning counts on a hand-made posterior, and ARD regression against scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree
from sklearn.linear_model import ARDRegression
from tensorflow_probability.substrates import jax as tfp

from structsel import basis, family, structure
from structsel import objective as O
from structsel import pruning as P
from structsel.variational import GaussianPosterior, weight_kl

tfd = tfp.distributions


def _posterior():
    """Hand-made q: edge 0 has an op with 3 weights and a parameter-free op; edge 1 has two ops."""
    mu = (({"k": jnp.array([2.0, 0.01, -0.02])}, {}),
          ({"k": jnp.array([0.0, 0.001])}, {"k": jnp.array([1.0]), "b": jnp.array([0.0])}))
    log_sigma = jax.tree.map(lambda m: jnp.full_like(m, np.log(0.1)), mu)
    return GaussianPosterior(mu, log_sigma)


def test_relative_density_matches_gaussian_densities():
    with jax.enable_x64(True):
        q = _posterior()
        rho = P.relative_density(q)
        for m, s, r in zip(jax.tree.leaves(q.mu), jax.tree.leaves(q.log_sigma), jax.tree.leaves(rho)):
            d = tfd.Normal(m, jnp.exp(s))
            np.testing.assert_allclose(r, d.prob(0.0) / d.prob(m), rtol=1e-12)  # float64 closed forms
        # Generalised: q at the prior mode m over q at its own mode.
        mode = jax.tree.map(lambda m: jnp.full_like(m, 0.5), q.mu)
        rho_m = P.relative_density(q, mode)
        for m, s, r in zip(jax.tree.leaves(q.mu), jax.tree.leaves(q.log_sigma), jax.tree.leaves(rho_m)):
            d = tfd.Normal(m, jnp.exp(s))
            np.testing.assert_allclose(r, d.prob(0.5) / d.prob(m), rtol=1e-12)


def test_op_and_edge_aggregation():
    q = _posterior()
    rho = P.relative_density(q)
    r = lambda m: np.exp(-np.asarray(m) ** 2 / 0.02)
    e0 = r([2.0, 0.01, -0.02])
    e1a, e1b = r([0.0, 0.001]), r([1.0, 0.0])
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # float32
    close(P.op_density(rho, "mean")[0], [e0.mean(), 0.0])  # parameter-free op scores 0
    close(P.op_density(rho, "max")[1], [e1a.max(), e1b.max()])
    close(P.op_density(rho, "min")[1], [e1a.min(), e1b.min()])
    close(P.edge_density(rho, "mean"), [e0.mean(), np.concatenate([e1a, e1b]).mean()])
    with pytest.raises(ValueError, match="reduce"):
        P.op_density(rho, "median")


def test_prune_counts_and_switched_off_ops():
    q = _posterior()
    # rho: edge 0 op 0: [~0, 0.995, 0.98]; edge 1 op 0: [1, 0.9999]; op 1: [~0, 1].
    gamma = (jnp.array([0.6, 0.4]), jnp.array([0.5, 0.5]))
    out = P.prune(q, 0.5, gamma=gamma)
    assert int(out.num_pruned) == 5
    assert int(out.num_ops_off) == 1  # only edge 1 op 0 loses all its weights
    np.testing.assert_array_equal(out.gamma[0], gamma[0])  # parameter-free op kept
    np.testing.assert_array_equal(out.gamma[1], [0.0, 0.5])
    np.testing.assert_array_equal(out.weights[0][0]["k"], [2.0, 0.0, 0.0])
    np.testing.assert_array_equal(out.weights[1][1]["k"], [1.0])
    assert P.prune(q, 1.0).num_pruned == 0  # rho <= 1 always: nothing is strictly above 1
    with pytest.raises(ValueError, match="threshold"):
        P.prune(q, 1.5)


def _numerical_cp(q, log_gamma_samples):
    """min over log A of the MC average of KL(q_w || N(0, gamma^2 A^-1)) by scipy L-BFGS, float64."""
    la0 = jax.tree.map(jnp.zeros_like, q.mu)
    flat0, unravel = ravel_pytree(la0)

    def objective(v):
        la = unravel(v)
        if log_gamma_samples is None:
            return weight_kl(q, la, None, log_std_floor=None)
        kls = [weight_kl(q, la, tuple(lg[s] for lg in log_gamma_samples), log_std_floor=None)
               for s in range(log_gamma_samples[0].shape[0])]
        return jnp.mean(jnp.stack(kls))

    f = jax.jit(jax.value_and_grad(objective))
    res = scipy.optimize.minimize(lambda v: tuple(np.asarray(a, np.float64) for a in f(v)),
                                  np.asarray(flat0), jac=True, method="L-BFGS-B",
                                  options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 1000})
    return res.fun, unravel(jnp.asarray(res.x))


@pytest.mark.parametrize("with_gamma", [False, True])
def test_parametric_complexity_closed_form_vs_numerical_minimum(with_gamma):
    with jax.enable_x64(True):
        q = _posterior()
        q = GaussianPosterior(q.mu, jax.tree.map(lambda s: s + 1.0, q.log_sigma))
        lgs = None
        if with_gamma:  # 4 samples of log gamma per edge (K_e = 2)
            g = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (2, 4, 2)), axis=-1)
            lgs = (g[0], g[1])
        value, argmin = _numerical_cp(q, lgs)
        # L-BFGS on a smooth convex 1-D problem per weight: 1e-8 relative.
        np.testing.assert_allclose(P.parametric_complexity(q, lgs), value, rtol=1e-8)
        np.testing.assert_allclose(ravel_pytree(P.optimal_log_alpha(q, lgs))[0],
                                   ravel_pytree(argmin)[0], atol=1e-5)
        # Identity with rho: C_p = sum 0.5 log(1 - 2 log rho) when Gamma is deterministic.
        if not with_gamma:
            rho = ravel_pytree(P.relative_density(q))[0]
            np.testing.assert_allclose(P.parametric_complexity(q),
                                       jnp.sum(0.5 * jnp.log(1 - 2 * jnp.log(rho))), rtol=1e-12)


def test_ard_regression_agrees_with_sklearn():
    """Linear model + per-weight ARD, fitted by the evidence (ELBO) preset, vs ARDRegression."""
    n, d, relevant = 200, 10, (0, 3, 7)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w_true = np.zeros(d, np.float32)
    w_true[list(relevant)] = [2.0, -1.5, 1.0]
    y = (x @ w_true + 0.5 * rng.standard_normal(n)).astype(np.float32)

    sk = ARDRegression(fit_intercept=False).fit(x, y)
    sk_kept = set(np.flatnonzero(np.abs(sk.coef_) > 0))  # sklearn prunes lambda > 1e4 to 0

    fam = family.Family(2, (family.Edge(0, 1, (basis.linear(1, use_bias=False),)),))
    # No log-std floor: ARD must be free to send irrelevant prior variances to 0.
    obj = O.Objective(fam, "gaussian", structure.Softmax(), O.elbo(), num_samples=4,
                      noise_std=None, log_std_floor=None)
    params, hparams = obj.init(jax.random.key(0), x)
    opt = optax.adam(optax.cosine_decay_schedule(0.05, 3000, alpha=0.1))
    batch = (jnp.asarray(x), jnp.asarray(y))

    @jax.jit
    def fit(params, hparams):
        def step(carry, i):
            ph, state = carry
            # Evidence maximisation: single-level (Q = L on the same data), joint in (theta, h).
            g = jax.grad(lambda ph: obj.inner_loss(*ph, batch, O.Context.create(
                jax.random.fold_in(jax.random.key(1), i))))(ph)
            updates, state = opt.update(g, state)
            return (optax.apply_updates(ph, updates), state), None

        ph = (params, hparams)
        return jax.lax.scan(step, (ph, opt.init(ph)), jnp.arange(3000))[0][0]

    params, hparams = fit(params, hparams)
    kernel = lambda tree: np.asarray(tree[0][0]["dense"]["kernel"][:, 0])
    rho, mu = kernel(P.relative_density(params["w"])), kernel(params["w"].mu)
    log_alpha = kernel(hparams["log_alpha"])
    # Same survival rule as sklearn (precision below threshold_lambda = 1e4): same features.
    kept = set(np.flatnonzero(log_alpha < np.log(sk.threshold_lambda)))
    assert kept == sk_kept
    # The relevant features are recovered: they survive with rho ~ 0; every feature sklearn
    # prunes has rho > 0.9 here (indistinguishable from 0) and is removed by prune at 0.5.
    assert set(relevant) <= kept
    assert np.all(rho[list(relevant)] < 1e-3)
    pruned_by_sk = sorted(set(range(d)) - sk_kept)
    assert np.all(rho[pruned_by_sk] > 0.9)
    assert set(pruned_by_sk) <= set(np.flatnonzero(np.asarray(
        kernel(P.prune(params["w"], 0.5).mask))))
    # Both fit the same evidence: posterior means agree (MC / optimiser noise, atol 0.02) and
    # so do the precisions of the clearly kept features (log A within 0.3).
    np.testing.assert_allclose(mu[sorted(sk_kept)], sk.coef_[sorted(sk_kept)], atol=0.02)
    clear = np.flatnonzero(sk.lambda_ < 1e3)
    np.testing.assert_allclose(log_alpha[clear], np.log(sk.lambda_[clear]), atol=0.3)
