"""Tests of structsel.structure: relaxations (domains, limits) and discretisation rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from structsel import distributions as D
from structsel import structure as S

ALL = (S.Softmax(), S.Sigmoid(), S.GumbelSoftmax(), S.Dirichlet(), S.LogitNormal())
STOCHASTIC = (S.GumbelSoftmax(), S.Dirichlet(), S.LogitNormal())


def test_deterministic_relaxations_equal_jax_nn():
    theta = jnp.array([0.3, -1.2, 2.0, 0.0])
    key = jax.random.key(0)
    for t in (0.1, 1.0):  # the temperature is ignored (DARTS has none)
        np.testing.assert_array_equal(S.Softmax().sample(theta, t, key=key),
                                      jax.nn.softmax(theta))
        np.testing.assert_array_equal(S.Sigmoid().mean(theta, t), jax.nn.sigmoid(theta))
    assert S.Softmax().distribution(theta, 1.0) is None
    assert not S.Softmax().stochastic and S.GumbelSoftmax().stochastic


def test_protocol_static_fields_hashable_and_init_uniform():
    assert [r.domain for r in ALL] == ["simplex", "cube", "simplex", "simplex", "simplex"]
    assert len(set(ALL)) == len(ALL) and S.Softmax() == S.Softmax()  # hashable, distinct
    assert [r.num_params(4) for r in ALL] == [4, 4, 4, 4, 6]
    for r in ALL:
        theta = r.init(4)
        assert theta.shape == (r.num_params(4),)
        expected = 0.5 if r.domain == "cube" else 0.25  # zeros -> the uniform structure
        np.testing.assert_allclose(r.mean(theta, 1.0), np.full(4, expected), rtol=1e-6)


@pytest.mark.parametrize("relaxation", STOCHASTIC, ids=lambda r: type(r).__name__)
def test_samples_lie_in_the_simplex(relaxation):
    k = 4
    theta = jax.random.normal(jax.random.key(1), (relaxation.num_params(k),))
    draw = jax.jit(jax.vmap(lambda key, t: relaxation.sample(theta, t, key=key)))
    keys = jax.random.split(jax.random.key(2), 300)
    for t in (0.05, 1.0, 20.0):
        g = draw(keys, jnp.full(300, t))
        assert g.shape == (300, k)
        assert bool(jnp.all(g >= 0) & jnp.all(jnp.isfinite(g)))
        np.testing.assert_allclose(jnp.sum(g, -1), 1.0, atol=1e-5)  # float32 rounding


def test_sigmoid_in_cube():
    g = S.Sigmoid().sample(jnp.array([-30.0, 0.0, 30.0]), 1.0, key=jax.random.key(0))
    assert bool(jnp.all((g >= 0) & (g <= 1)))


@pytest.mark.parametrize("relaxation", STOCHASTIC, ids=lambda r: type(r).__name__)
def test_temperature_limits_of_relaxations(relaxation):
    theta = jnp.array([1.0, -0.5, 0.2, 0.3])[: relaxation.num_params(3)]
    draw = jax.jit(jax.vmap(lambda key, t: relaxation.sample(theta, t, key=key)))
    keys = jax.random.split(jax.random.key(3), 1000)
    low = draw(keys, jnp.full(1000, 0.01))
    # t -> 0: mass at the vertices.
    assert float(jnp.mean(jnp.max(low, -1))) > 0.95
    high = draw(keys, jnp.full(1000, 1e4))
    centre = relaxation.mean(theta, 1e4)
    # t -> infinity: concentrated at a point (the centre; s/sum s for the Dirichlet).
    assert float(jnp.max(jnp.abs(high - centre))) < 0.02
    if not isinstance(relaxation, S.Dirichlet):
        np.testing.assert_allclose(centre, np.full(3, 1 / 3), atol=1e-3)


def test_dirichlet_relaxation_mean_is_s_over_sum():
    theta = jnp.log(jnp.array([1.0, 2.0, 5.0]))
    keys = jax.random.split(jax.random.key(4), 20_000)
    g = jax.jit(jax.vmap(lambda k: S.Dirichlet().sample(theta, 2.0, key=k)))(keys)
    # Dir(2 s): coordinate std <= 0.2, so the MC mean has std <= 0.0015; allow 5 std.
    np.testing.assert_allclose(g.mean(0), np.array([1, 2, 5]) / 8, atol=0.0075)


def test_sample_structure_splits_keys_per_edge():
    thetas = (jnp.zeros(3), jnp.zeros(3), jnp.zeros(2))
    gam = jax.jit(lambda th, key: S.sample_structure(S.GumbelSoftmax(), th, 1.0, key=key))(
        thetas, jax.random.key(5))
    assert [g.shape for g in gam] == [(3,), (3,), (2,)]
    assert not np.allclose(gam[0], gam[1])  # equal thetas, different per-edge keys
    again = S.sample_structure(S.GumbelSoftmax(), thetas, 1.0, key=jax.random.key(5))
    for a, b in zip(gam, again):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    means = S.mean_structure(S.Softmax(), thetas, 1.0)
    np.testing.assert_allclose(means[2], [0.5, 0.5])


def test_argmax_and_threshold_vertex():
    np.testing.assert_array_equal(S.argmax_vertex(jnp.array([0.2, 0.5, 0.3])), [0, 1, 0])
    np.testing.assert_array_equal(S.argmax_vertex(jnp.array([[0.6, 0.4], [0.1, 0.9]])),
                                  [[1, 0], [0, 1]])
    np.testing.assert_array_equal(S.threshold_vertex(jnp.array([0.2, 0.51, 0.5, 0.9])),
                                  [0, 1, 0, 1])
    np.testing.assert_array_equal(S.threshold_vertex(jnp.array([0.2, 0.9]), 0.1), [1, 1])
    with pytest.raises(ValueError, match="threshold"):
        S.threshold_vertex(jnp.array([0.2]), 1.5)


def test_darts_topk_hand_made_cell():
    # DARTS-like cell: inputs 0, 1; node 2 <- 0, 1; node 3 <- 0, 1, 2. Op 0 is 'zero'.
    edges = [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    gamma = (jnp.array([0.9, 0.05, 0.05]),   # strongest non-zero op 0.05
             jnp.array([0.1, 0.3, 0.6]),     # 0.6 (op 2)
             jnp.array([0.2, 0.7, 0.1]),     # 0.7 (op 1)
             jnp.array([0.5, 0.2, 0.3]),     # 0.3 (op 2)
             jnp.array([0.0, 0.45, 0.55]))   # 0.55 (op 2)
    exclude = ((0,),) * 5
    out = S.darts_topk(edges, gamma, k=2, exclude=exclude)
    expected = ([0, 1, 0], [0, 0, 1],      # node 2: both kept; tie -> first op
                [0, 1, 0], [0, 0, 0], [0, 0, 1])  # node 3 keeps (0,3) and (2,3)
    for o, e in zip(out, expected):
        np.testing.assert_array_equal(o, e)
    # without excluding the zero op, (0,2) is chosen on op 0 and k=1 keeps only it at node 2.
    out = S.darts_topk(edges, gamma, k=1)
    np.testing.assert_array_equal(out[0], [1, 0, 0])
    np.testing.assert_array_equal(out[1], [0, 0, 0])
    np.testing.assert_array_equal(out[2], [0, 1, 0])
    # an edge whose ops are all excluded is dropped even if it is among the top k.
    out = S.darts_topk([(0, 1), (0, 1)], (jnp.array([0.9]), jnp.array([0.1, 0.2])), k=2,
                       exclude=((0,), ()))
    np.testing.assert_array_equal(out[0], [0])
    np.testing.assert_array_equal(out[1], [0, 1])
    jitted = jax.jit(lambda g: S.darts_topk(edges, g, k=2, exclude=exclude))(gamma)
    for o, e in zip(jitted, expected):
        np.testing.assert_array_equal(o, e)


@pytest.mark.parametrize("kwargs, name", [
    (dict(k=0), "k"), (dict(k=1.5), "k"), (dict(k=True), "k"),
    (dict(exclude=((0,),)), "exclude"), (dict(exclude=((3,), (0,))), "exclude"),
])
def test_darts_topk_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        S.darts_topk([(0, 1), (0, 1)], (jnp.ones(3), jnp.ones(3)), **kwargs)


def test_relaxation_validation():
    with pytest.raises(ValueError, match="temperature"):
        S.GumbelSoftmax().sample(jnp.zeros(3), 0.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="temperature"):
        S.LogitNormal().mean(jnp.zeros(4), -1.0)
    with pytest.raises(ValueError, match="theta"):
        S.LogitNormal().mean(jnp.zeros(3), 1.0)
    with pytest.raises(ValueError, match="K"):
        S.Softmax().num_params(0)


@pytest.mark.parametrize("relaxation", [S.GumbelSoftmax(), S.Dirichlet(), S.LogitNormal()])
def test_single_op_edges_are_a_point_mass(relaxation):
    # A distribution over the 1-point simplex is the point gamma = 1 with no parameters
    # (cell stems and readouts); its KL to itself is exactly 0.
    theta = relaxation.init(1)
    assert theta.shape == (0,)
    gamma = relaxation.sample(theta, 0.3, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(gamma), [1.0])
    np.testing.assert_array_equal(np.asarray(relaxation.mean(theta, 0.3)), [1.0])
    dist = relaxation.distribution(theta, 0.3)
    assert float(D.kl_divergence(dist, dist, key=jax.random.key(1), num_samples=4)) == 0.0
