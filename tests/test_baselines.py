"""Tests of the non-gradient structure-search baselines (method.md section 8)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from structsel.search import adanet
from structsel.search.random_search import random_search
from structsel.search.reinforce import (controller_init, controller_log_prob,
                                        controller_sample, reinforce_loss, run_reinforce)
from structsel.search.discrete import MAX_INDEXABLE, DiscreteSpace, incumbent_history


def _table_reward(space, table):
    return lambda choices: table[space.index(choices)]


# ---------------------------------------------------------------- space


def test_space_enumerate_index_gamma_roundtrip():
    space = DiscreteSpace((2, 3, 4))
    allc = np.asarray(space.enumerate())
    assert space.size == 24 and allc.shape == (24, 3)
    # Oracle: itertools.product gives the lexicographic order, last edge fastest.
    np.testing.assert_array_equal(allc, np.array(list(itertools.product(range(2), range(3),
                                                                        range(4)))))
    np.testing.assert_array_equal(space.index(allc), np.arange(24))
    gamma = space.to_gamma(allc)
    assert [g.shape for g in gamma] == [(24, 2), (24, 3), (24, 4)]
    assert all(np.all(np.asarray(g).sum(-1) == 1) for g in gamma)  # simplex vertices
    np.testing.assert_array_equal(space.from_gamma(gamma), allc)


def test_space_sample_is_uniform():
    space = DiscreteSpace((3, 4))
    n = 24000
    counts = np.bincount(np.asarray(space.index(space.sample(n, key=jax.random.key(0)))),
                         minlength=12)
    chi2 = np.sum((counts - n / 12) ** 2 / (n / 12))
    # chi^2 with 11 dof: P(chi2 > 31.3) = 0.001, so a uniform sampler passes this test.
    assert chi2 < 31.3
    distinct = np.asarray(space.sample_distinct(12, key=jax.random.key(1)))
    assert sorted(space.index(distinct).tolist()) == list(range(12))


def test_space_validation():
    for bad in ((), (3, 0), (2.5,), "abc"):
        with pytest.raises(ValueError, match="num_ops"):
            DiscreteSpace(bad)
    with pytest.raises(ValueError, match="too large"):
        DiscreteSpace((10,) * 8).enumerate()
    with pytest.raises(ValueError, match="n must be <= size"):
        DiscreteSpace((2, 2)).sample_distinct(5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="choice"):
        DiscreteSpace((2, 2)).to_gamma(jnp.zeros((3,), jnp.int32))


def test_incumbent_history_matches_numpy():
    rewards = jnp.asarray([0.3, 0.1, 0.5, 0.5, 0.2, 0.9, 0.4])
    values, indices = incumbent_history(rewards)
    np.testing.assert_array_equal(values, np.maximum.accumulate(np.asarray(rewards)))
    np.testing.assert_array_equal(indices, [0, 0, 2, 2, 2, 5, 5])  # first argmax on ties


# ---------------------------------------------------------------- random search


def test_random_search_enumerates_when_budget_allows():
    space = DiscreteSpace((3, 3, 3))
    table = jax.random.uniform(jax.random.key(0), (27,))
    calls = []

    def evaluate(c):
        calls.append(c.shape[0])
        return table[space.index(c)]

    res = random_search(evaluate, space, key=jax.random.key(1), budget=100, batch_size=10)
    # budget >= |space|: every structure exactly once, in batches of 10.
    assert sorted(np.asarray(space.index(res.choices)).tolist()) == list(range(27))
    assert calls == [10, 10, 7]
    assert int(space.index(res.best_choice)) == int(jnp.argmax(table))


def test_random_search_partial_budget():
    space = DiscreteSpace((3, 3, 3))
    table = jax.random.uniform(jax.random.key(0), (27,))
    res = random_search(_table_reward(space, table), space, key=jax.random.key(3), budget=20)
    idx = np.asarray(space.index(res.choices))
    assert len(set(idx.tolist())) == 20  # without replacement
    np.testing.assert_array_equal(res.rewards, np.asarray(table)[idx])
    np.testing.assert_array_equal(res.incumbent, np.maximum.accumulate(np.asarray(res.rewards)))
    # This seed's 20 draws include the optimum (probability 20/27 for a random seed).
    assert int(space.index(res.best_choice)) == int(jnp.argmax(table))
    assert float(res.best_reward) == float(table.max())


def test_random_search_huge_space_and_validation():
    space = DiscreteSpace((10,) * 8)
    assert space.size > MAX_INDEXABLE
    res = random_search(lambda c: jnp.sum(c, axis=-1).astype(jnp.float32), space,
                        key=jax.random.key(0), budget=50, batch_size=16)
    assert res.choices.shape == (50, 8)
    assert float(res.best_reward) == float(jnp.max(jnp.sum(res.choices, -1)))
    with pytest.raises(ValueError, match="budget"):
        random_search(lambda c: c[:, 0], space, key=jax.random.key(0), budget=0)
    with pytest.raises(ValueError, match="evaluate must return"):
        random_search(lambda c: c, space, key=jax.random.key(0), budget=4)


# ---------------------------------------------------------------- REINFORCE


@pytest.fixture(scope="module")
def reinforce_toy():
    """A float64 controller on 2 edges x 3 ops, its reward table and the exact gradient."""
    with jax.enable_x64(True):
        space = DiscreteSpace((3, 3))
        params = controller_init(space, 4, key=jax.random.key(0))
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        allc = space.enumerate()
        rewards = jax.random.normal(jax.random.key(1), (9,), jnp.float64) + 2.0

        def expected_reward(p):  # E_pi R = sum_a pi(a) R(a), by enumeration
            return jnp.sum(jnp.exp(controller_log_prob(p, allc)[0]) * rewards)

        exact = jax.jit(jax.grad(expected_reward))(params)
        probs = jnp.exp(jax.jit(controller_log_prob)(params, allc)[0])
    return space, params, allc, rewards, exact, probs


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_controller_log_prob_is_a_distribution(reinforce_toy):
    space, params, allc, _, _, probs = reinforce_toy
    with jax.enable_x64(True):
        # Oracle: the probabilities of all 9 structures sum to one.
        assert abs(float(probs.sum()) - 1.0) < 1e-12
        choices, log_prob = jax.jit(controller_sample, static_argnums=1)(
            params, 5, key=jax.random.key(2))
        np.testing.assert_allclose(log_prob, jax.jit(controller_log_prob)(params, choices)[0],
                                   rtol=1e-12)


@pytest.mark.parametrize("baseline", [0.0, 0.7, -3.0])
def test_reinforce_enumeration_weights_equal_exact_gradient(reinforce_toy, baseline):
    _, params, allc, rewards, exact, probs = reinforce_toy
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(reinforce_loss))(params, allc, rewards, baseline, weights=probs)
    # -grad of the surrogate is sum_a pi(a) (R(a) - b) grad log pi(a) = grad E_pi R for
    # any constant b; float64, so only rounding (~1e-14) separates them: 1e-10.
    np.testing.assert_allclose(-_flat(grad), _flat(exact), rtol=0, atol=1e-10)
    assert np.linalg.norm(_flat(exact)) > 1e-2  # the check is not vacuous


def test_reinforce_monte_carlo_converges_to_exact_gradient(reinforce_toy):
    space, params, allc, rewards, exact, _ = reinforce_toy
    n = 20000
    with jax.enable_x64(True):
        choices, _ = jax.jit(controller_sample, static_argnums=1)(params, n, key=jax.random.key(3))
        idx = np.asarray(space.index(choices))
        # grad log pi(a) for the 9 structures (one Jacobian), gathered per sample.
        jac = jax.jit(jax.jacrev(lambda p: controller_log_prob(p, allc)[0]))(params)
        g = np.concatenate([np.asarray(x).reshape(9, -1) for x in jax.tree.leaves(jac)], 1)[idx]
        r = np.asarray(rewards)[idx]
        # The library's estimator on these samples is the mean of (R - b) grad log pi.
        b = float(r.mean())
        lib = -_flat(jax.jit(jax.grad(reinforce_loss))(params, choices, jnp.asarray(r), b))
    exact_flat = _flat(exact)
    for base in (0.0, b):
        per_sample = (r - base)[:, None] * g
        mean, std = per_sample.mean(0), per_sample.std(0)
        # Per coordinate the MC error is ~N(0, std^2/n); 5 standard errors over ~150
        # coordinates fail with probability < 1e-4.
        assert np.all(np.abs(mean - exact_flat) <= 5 * std / np.sqrt(n) + 1e-12)
    np.testing.assert_allclose(lib, ((r - b)[:, None] * g).mean(0), atol=1e-10)
    # The baseline reduces the variance when rewards are offset from zero (here by 2).
    assert np.sum(((r - b)[:, None] * g).var(0)) < np.sum((r[:, None] * g).var(0))


def test_run_reinforce_finds_argmax_of_toy_reward():
    space = DiscreteSpace((5, 5, 5, 5))
    k1, k2 = jax.random.split(jax.random.key(0))
    unary = jax.random.uniform(k1, (4, 5))
    pair = 0.3 * jax.random.uniform(k2, (5, 5))

    def evaluate(c):  # additive reward plus one pairwise interaction
        return unary[jnp.arange(4), c].sum(-1) + pair[c[..., 0], c[..., 1]]

    best = int(jnp.argmax(evaluate(space.enumerate())))
    res = run_reinforce(evaluate, space, key=jax.random.key(1), num_iterations=30,
                        batch_size=8, hidden=16, learning_rate=0.05)
    # 240 evaluations of a 625-structure space (random search: P(find) = 0.38). Seeds 0-9
    # find the optimum 9 times out of 10, but the policy concentrates on it only for
    # seeds 1 and 9 (else on a near-optimal structure): this seed does both.
    assert res.search.choices.shape == (240, 4)
    assert int(space.index(res.search.best_choice)) == best
    log_prob, _ = controller_log_prob(res.state.params, space.from_index(jnp.asarray([best])))
    assert float(jnp.exp(log_prob[0])) > 0.5
    rewards = evaluate(space.enumerate())
    pi = jnp.exp(controller_log_prob(res.state.params, space.enumerate())[0])
    # The learned policy's expected reward is close to the best, far above uniform's.
    assert float(pi @ rewards) > float(rewards.min() + 0.95 * (rewards.max() - rewards.min()))
    assert res.baselines.shape == (30,) and float(res.baselines[-1]) > float(res.baselines[0])
    with pytest.raises(ValueError, match="baseline_decay"):
        run_reinforce(evaluate, space, key=jax.random.key(0), num_iterations=1,
                      batch_size=2, baseline_decay=1.0)


# ---------------------------------------------------------------- AdaNet


def _np_objective(y, f_prev, f_cand, gamma, penalty, phi):
    u = 1.0 - y * f_prev - y * gamma * f_cand
    vals = np.exp(u) if phi == "exp" else np.log1p(np.exp(u))
    return vals.sum(-1).mean() + penalty * abs(gamma)


@pytest.mark.parametrize("phi", ["exp", "logistic"])
@pytest.mark.parametrize("classes", [1, 3])
def test_adanet_objective_matches_numpy(phi, classes):
    rng = np.random.default_rng(0)
    y = np.where(rng.random((20, classes)) > 0.5, 1.0, -1.0)
    f_prev, f_cand = rng.normal(size=(2, 20, classes))
    with jax.enable_x64(True):
        q = adanet.adanet_objective(jnp.asarray(y), jnp.asarray(f_prev), jnp.asarray(f_cand),
                                    -0.7, 0.3, surrogate=phi)
    np.testing.assert_allclose(q, _np_objective(y, f_prev, f_cand, -0.7, 0.3, phi), rtol=1e-12)


def _choose(y, f_prev, cands, gammas, penalties, phi="exp", tol=0.0):
    with jax.enable_x64(True):
        c = adanet.choose_candidate(jnp.asarray(y), jnp.asarray(f_prev), jnp.asarray(cands),
                                    jnp.asarray(gammas), jnp.asarray(penalties),
                                    surrogate=phi, tol=tol)
        q = [_np_objective(y, f_prev, f, g, p, phi) for f, g, p in zip(cands, gammas, penalties)]
        np.testing.assert_allclose(c.objectives, q, rtol=1e-12)
        prev = _np_objective(y, f_prev, np.zeros_like(f_prev), 0.0, 0.0, phi)
        np.testing.assert_allclose(c.previous, prev, rtol=1e-12)
        return int(c.index), bool(c.improves), q, prev


def test_choose_candidate_rules():
    x = np.linspace(-1, 1, 40)[:, None]
    y = np.sign(x + 1e-3)
    f_prev = np.zeros_like(y)
    # (a) Depth 1 already fits (h = y); the deeper net computes the same outputs, so only
    # its larger complexity Gamma_h differs: the shallow one must win.
    idx, improves, q, prev = _choose(y, f_prev, np.stack([y, y]), [1.0, 1.0], [0.1, 0.3])
    assert (idx, improves) == (0, True) and q[0] < q[1] < prev
    # (b) The deeper net fits better (h_2 = y everywhere, h_1 wrong on a quarter of the
    # points); a small penalty lets the fit decide, a large penalty on depth 2 flips it.
    h1 = y.copy()
    h1[:10] *= -1
    cands, gammas = np.stack([h1, y]), [1.0, 1.0]
    assert _choose(y, f_prev, cands, gammas, [0.01, 0.02])[0] == 1
    idx, improves, q, _ = _choose(y, f_prev, cands, gammas, [0.01, 2.0])
    assert (idx, improves) == (0, True) and np.argmin(q) == 0
    # (c) The ensemble already separates the data with a wide margin: adding anything
    # costs more penalty than it saves, so the rule stops boosting.
    idx, improves, q, prev = _choose(y, 5.0 * y, cands, [0.5, 0.5], [0.1, 0.2])
    assert not improves and min(q) > prev
    # (d) tol: an improvement smaller than tol is rejected.
    _, improves, q, prev = _choose(y, f_prev, cands, gammas, [0.01, 0.02], tol=10.0)
    assert min(q) < prev and not improves


def test_adanet_validation():
    with pytest.raises(ValueError, match="surrogate"):
        adanet.get_surrogate("hinge")
    with pytest.raises(ValueError, match="num_classes"):
        adanet.encode_labels(jnp.zeros(3, jnp.int32), 1)
    with pytest.raises(ValueError, match="lam"):
        adanet.run_adanet(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32), key=jax.random.key(0),
                          num_classes=2, lam=-1.0)


@pytest.mark.slow
def test_adanet_breast_cancer_accuracy_and_stopping():
    from sklearn.datasets import load_breast_cancer

    x, labels = load_breast_cancer(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    train, test = perm[:400], perm[400:]
    mu, sd = x[train].mean(0), x[train].std(0)
    xs = ((x - mu) / sd).astype(np.float32)
    res = adanet.run_adanet(jnp.asarray(xs[train]), jnp.asarray(labels[train]),
                            key=jax.random.key(0), num_classes=2, width=8, lam=1e-3,
                            beta=1e-3, max_rounds=6, steps=200)
    # A linear model reaches ~0.95 on this split; 0.9 leaves room for seed variation.
    acc = float(np.mean(np.asarray(res.predict(jnp.asarray(xs[test]))) == labels[test]))
    assert acc >= 0.9
    assert res.stopped and 1 <= len(res.ensemble) < 6
    assert not res.history[-1].accepted
    for rec in res.history[:-1]:
        assert rec.accepted and float(rec.objectives[rec.chosen]) < float(rec.previous)
    # Objectives decrease round over round (each accepted member lowers Q).
    prev = [float(r.previous) for r in res.history]
    assert all(a > b for a, b in zip(prev, prev[1:]))
