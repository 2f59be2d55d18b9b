"""The supernet F against hand-written formulas; export / discrete model; validation."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from structsel import basis, family
from structsel.family import Edge, Family

# float64 hand formulas vs float64 apply: only summation order differs.
TOL64 = 1e-10
# Supernet at a vertex vs the discrete model, float32: the same ops on the same weights
# (1 * g + 0 * g' = g exactly), so equality up to 1e-6 is asked for by the spec.
TOL_VERTEX = 1e-6


def _perturb(weights, key, dtype=None):
    """Random weights (constant ops start at zero): w + N(0, 0.5^2) per leaf."""
    leaves, tree = jax.tree.flatten(weights)
    keys = jax.random.split(key, max(len(leaves), 1))
    new = [(p if dtype is None else p.astype(dtype)) + 0.5 * jax.random.normal(k, p.shape, dtype or p.dtype)
           for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, new)


def _mlp_cell():
    return family.darts_cell(2, family.mlp_ops(6), stem=basis.linear(6), readout=3, output="concat")


def _conv_cell():
    return family.darts_cell(2, family.conv1d_ops(4), stem=basis.conv1d(4, 3), readout=3, output="sum")


def _x_vec():
    return jax.random.normal(jax.random.key(0), (5, 4))


def _x_seq():
    return jax.random.normal(jax.random.key(0), (3, 10, 2))


def test_two_layer_net_equals_formula():
    with jax.enable_x64(True):
        fam = family.two_layer_net(4, 3, 2, activations=("sigmoid", "tanh"))
        x = _x_vec()
        w = _perturb(fam.init(jax.random.key(1), x), jax.random.key(2), jnp.float64)
        gamma = (jnp.array([0.3, 0.8]), jnp.array([1.0]))
        (a, b), (c,) = w
        sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
        xs = np.asarray(x)
        f1 = 0.3 * sig(xs @ a["dense"]["kernel"] + a["dense"]["bias"]) \
            + 0.8 * np.tanh(xs @ b["dense"]["kernel"] + b["dense"]["bias"])
        ref = f1 @ c["dense"]["kernel"] + c["dense"]["bias"]
        np.testing.assert_allclose(fam.apply(w, gamma, x), ref, atol=TOL64)
        # parameter count of the model with only sigma_0: W_0, b_0, W_2, b_2
        assert fam.num_params(w, fam.vertex_gamma((0, 0))) == 4 * 3 + 3 + 3 * 2 + 2
        assert fam.num_params(w) == 2 * (4 * 3 + 3) + 3 * 2 + 2


def test_glm_family_equals_formula():
    with jax.enable_x64(True):
        fam = family.glm_family(12)
        x = jnp.concatenate([jax.random.normal(jax.random.key(0), (7, 11)), jnp.ones((7, 1))], axis=1)
        w = _perturb(fam.init(jax.random.key(1), x), jax.random.key(2), jnp.float64)
        gamma = (jnp.array([0.2, 0.5, 0.3]),)
        (w0, w1, w2), = w
        xs = np.asarray(x)
        assert w2["dense"]["kernel"].shape == (12, 1) and "bias" not in w2["dense"]
        ref = (0.2 * w0["bias"][0] + 0.5 * np.tanh(w1["dense"]["kernel"][0, 0] * xs[:, 0] + w1["dense"]["bias"][0])
               + 0.3 * np.tanh(xs @ w2["dense"]["kernel"][:, 0]))
        out = fam.apply(w, gamma, x)
        assert out.shape == (7, 1)
        np.testing.assert_allclose(out[:, 0], ref, atol=TOL64)


@pytest.mark.parametrize("agg", ["sum", "mean", "concat"])
def test_aggregations(agg):
    with jax.enable_x64(True):
        fam = Family(3, (Edge(0, 1, (basis.dense(3, "tanh"),)), Edge(0, 2, (basis.dense(3, "relu"),)),
                         Edge(1, 2, (basis.identity(), basis.zero()))), ("sum", agg))
        x = _x_vec()
        w = _perturb(fam.init(jax.random.key(1), x), jax.random.key(2), jnp.float64)
        gamma = (jnp.array([0.7]), jnp.array([0.4]), jnp.array([0.9, 0.5]))
        xs = np.asarray(x)
        d1, d2 = w[0][0]["dense"], w[1][0]["dense"]
        f1 = 0.7 * np.tanh(xs @ d1["kernel"] + d1["bias"])
        a = 0.4 * np.maximum(xs @ d2["kernel"] + d2["bias"], 0)   # edge 0->2
        b = 0.9 * np.tanh(xs @ d1["kernel"] + d1["bias"]) * 0.7   # edge 1->2: identity(f1), zero adds 0
        ref = {"sum": a + b, "mean": (a + b) / 2, "concat": np.concatenate([a, b], axis=1)}[agg]
        np.testing.assert_allclose(fam.apply(w, gamma, x), ref, atol=TOL64)


@pytest.mark.parametrize("make,xfn", [(_mlp_cell, _x_vec), (_conv_cell, _x_seq)], ids=["mlp", "conv1d"])
def test_random_gammas_in_cube_are_finite_and_jit_matches(make, xfn):
    fam, x = make(), xfn()
    w = fam.init(jax.random.key(1), x)
    keys = jax.random.split(jax.random.key(3), fam.num_edges)
    gammas = tuple(jax.random.uniform(k, (4, n)) for k, n in zip(keys, fam.num_ops))
    outs = jax.jit(jax.vmap(lambda g: fam.apply(w, g, x)))(gammas)
    assert outs.shape == (4, x.shape[0], 3) and bool(jnp.all(jnp.isfinite(outs)))
    # jit vs eager on one gamma; XLA may fuse differently, so float32 round-off (1e-5).
    g0 = tuple(g[0] for g in gammas)
    np.testing.assert_allclose(jax.jit(fam.apply)(w, g0, x), fam.apply(w, g0, x), rtol=1e-5, atol=1e-5)


def test_family_is_a_static_argument():
    fam = family.two_layer_net(4, 3, 2)
    assert fam == family.two_layer_net(4, 3, 2) and hash(fam) == hash(family.two_layer_net(4, 3, 2))
    w = fam.init(jax.random.key(1), _x_vec())
    static = jax.jit(lambda f, w, g, x: f.apply(w, g, x), static_argnums=0)
    np.testing.assert_allclose(static(fam, w, fam.uniform_gamma(), _x_vec()),
                               fam.apply(w, fam.uniform_gamma(), _x_vec()), rtol=1e-5, atol=1e-5)


def _check_vertex(fam, w, gamma, x):
    structure = json.loads(json.dumps(family.export_structure(fam, gamma)))
    sub, select = family.discrete_model(fam, structure)
    sub_w = select(w)
    # both eager: the same kernels on the same weights (jit may pick other conv algorithms)
    np.testing.assert_allclose(sub.apply(sub_w, sub.ones_gamma(), x), fam.apply(w, gamma, x), atol=TOL_VERTEX)
    # the stand-alone model has exactly the weights of the kept ops
    assert fam.num_params(w, gamma) == sum(int(c.sum()) for c in sub.param_counts(sub_w))
    return structure, sub


@pytest.mark.parametrize("make,xfn", [(_mlp_cell, _x_vec), (_conv_cell, _x_seq)], ids=["mlp", "conv1d"])
def test_simplex_vertices_match_discrete_model(make, xfn):
    fam, x = make(), xfn()
    w = _perturb(fam.init(jax.random.key(1), x), jax.random.key(2))
    rng = np.random.default_rng(0)
    for _ in range(3):
        idx = [int(rng.integers(k)) for k in fam.num_ops]
        structure, sub = _check_vertex(fam, w, fam.vertex_gamma(idx), x)
        kept = {item["edge"]: [op["index"] for op in item["ops"]] for item in structure["edges"]}
        assert kept == {e: [i] for e, i in enumerate(idx)}  # one op per edge, nothing dropped
        assert sub.num_ops == (1,) * fam.num_edges


@pytest.mark.parametrize("make,xfn", [(_mlp_cell, _x_vec), (_conv_cell, _x_seq)], ids=["mlp", "conv1d"])
def test_apply_vertex_equals_apply_at_the_one_hot_gamma(make, xfn):
    """Oracle: apply(w, e_a, x), which computes every op and weights all but one by 0.
    float32 and, per edge, 1 * g_a(z) + sum of exact zeros = g_a(z): equal to TOL_VERTEX,
    outputs and weight gradients, with the choice traced under jit (lax.switch)."""
    fam, x = make(), xfn()
    w = _perturb(fam.init(jax.random.key(1), x), jax.random.key(2))
    at_vertex = jax.jit(fam.apply_vertex)
    grad_vertex = jax.jit(jax.grad(lambda w, a: jnp.sum(fam.apply_vertex(w, a, x) ** 2)))
    grad_mixed = jax.jit(jax.grad(lambda w, g: jnp.sum(fam.apply(w, g, x) ** 2)))
    rng = np.random.default_rng(1)
    for _ in range(4):
        idx = np.array([int(rng.integers(k)) for k in fam.num_ops], np.int32)
        gamma = fam.vertex_gamma(idx)
        np.testing.assert_allclose(at_vertex(w, idx, x), fam.apply(w, gamma, x), atol=TOL_VERTEX)
        np.testing.assert_allclose(fam.apply_vertex(w, idx, x), fam.apply(w, gamma, x), atol=TOL_VERTEX)
        gv, gm = grad_vertex(w, idx), grad_mixed(w, gamma)
        for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(gm)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        # unchosen ops get exactly zero gradient (the switch never runs them)
        for e, a in enumerate(idx):
            for l, g_l in enumerate(gv[e]):
                if l != a:
                    assert all(not np.any(leaf) for leaf in jax.tree.leaves(g_l))
    with pytest.raises(ValueError, match=r"choice must have shape \(%d,\)" % fam.num_edges):
        fam.apply_vertex(w, np.zeros(2, np.int32), x)
    with pytest.raises(ValueError, match="choice must be an integer array"):
        fam.apply_vertex(w, np.zeros(fam.num_edges), x)
    bad = np.zeros(fam.num_edges, np.int32)
    bad[1] = fam.num_ops[1]
    with pytest.raises(ValueError, match=r"choice\[1\] = %d out of range 0\.\.%d for edge 1"
                       % (fam.num_ops[1], fam.num_ops[1] - 1)):
        fam.apply_vertex(w, bad, x)

@pytest.mark.parametrize("make,xfn", [(_mlp_cell, _x_vec), (_conv_cell, _x_seq)], ids=["mlp", "conv1d"])
def test_a_known_choice_traces_only_its_ops(make, xfn):
    """A numpy choice closed over by a traced function (the runner's program of one
    structure) picks its ops in Python: no `cond` in the jaxpr, and the outputs and
    gradients of the traced-choice program (lax.switch), which is the oracle here with
    TOL_VERTEX / 1e-5 as above (the same ops on the same weights, fused otherwise)."""
    fam, x = make(), xfn()
    w = _perturb(fam.init(jax.random.key(1), x), jax.random.key(2))
    loss = lambda w, a: jnp.sum(fam.apply_vertex(w, a, x) ** 2)  # noqa: E731
    traced = jax.jit(jax.value_and_grad(loss))
    rng = np.random.default_rng(3)
    for _ in range(3):
        idx = np.array([int(rng.integers(k)) for k in fam.num_ops], np.int32)
        known = jax.jit(jax.value_and_grad(lambda w: loss(w, idx)))
        assert "cond" not in str(jax.make_jaxpr(lambda w: loss(w, idx))(w))
        assert "cond" in str(jax.make_jaxpr(loss)(w, idx))
        (v1, g1), (v2, g2) = known(w), traced(w, idx)
        np.testing.assert_allclose(v1, v2, rtol=TOL_VERTEX)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)



def test_vertices_of_two_layer_net_and_glm():
    fam = family.glm_family(12)
    x = jax.random.normal(jax.random.key(0), (6, 12))
    w = _perturb(fam.init(jax.random.key(1), x), jax.random.key(2))
    for i in range(3):
        structure, _ = _check_vertex(fam, w, fam.vertex_gamma((i,)), x)
        assert structure["edges"][0]["ops"][0]["spec"] == fam.edges[0].ops[i].to_dict()
    fam = family.two_layer_net(4, 3, 2)
    w = _perturb(fam.init(jax.random.key(1), _x_vec()), jax.random.key(2))
    for i in range(2):
        _check_vertex(fam, w, fam.vertex_gamma((i, 0)), _x_vec())
    _check_vertex(fam, w, fam.ones_gamma(), _x_vec())  # cube vertex: both ops kept


def test_cube_vertices_with_switched_off_edges():
    # Vertex 3 sums (1->3, 2->3); vertex 4 means (0->4, 3->4); vertex 5 concatenates (2->5, 4->5).
    ops = (basis.dense(3, "tanh"), basis.linear(3))
    fam = Family(6, (Edge(0, 1, ops), Edge(0, 2, ops), Edge(1, 3, ops), Edge(2, 3, ops), Edge(0, 4, ops),
                     Edge(3, 4, ops), Edge(2, 5, ops), Edge(4, 5, ops)), ("sum", "sum", "sum", "mean", "concat"))
    x = _x_vec()
    w = _perturb(fam.init(jax.random.key(1), x), jax.random.key(2))
    on, off, both = jnp.array([1.0, 0.0]), jnp.zeros(2), jnp.ones(2)
    # 2->3 off into a sum vertex: dropped. 0->4 off into a mean vertex, 2->5 into concat: zero_like.
    gamma = (on, both, on, off, off, on, off, both)
    structure, sub = _check_vertex(fam, w, gamma, x)
    labels = {item["edge"]: [op["label"] for op in item["ops"]] for item in structure["edges"]}
    assert 3 not in labels and labels[4][0].startswith("zero_like") and labels[6][0].startswith("zero_like")
    assert labels[7] == ["dense(features=3, activation=tanh)", "linear(features=3)"]
    # 1->3 off: vertex 1 then feeds nothing and is dropped (the discrete model is renumbered).
    gamma = (on, on, off, on, on, on, on, on)
    structure, sub = _check_vertex(fam, w, gamma, x)
    assert structure["vertices"] == [0, 2, 3, 4, 5] and sub.num_vertices == 5
    # Both inputs of sum vertex 3 off: it keeps a zero_like input from vertex 1 (earliest source).
    gamma = (on, on, off, off, on, on, on, on)
    structure, sub = _check_vertex(fam, w, gamma, x)
    assert [op["label"][:9] for item in structure["edges"] if item["edge"] == 2 for op in item["ops"]] == ["zero_like"]


def test_weights_layout_and_helpers():
    fam = _conv_cell()
    w = fam.init(jax.random.key(1), _x_seq())
    assert len(w) == fam.num_edges and tuple(len(we) for we in w) == fam.num_ops
    assert w[1][0] == {} and w[1][1] == {} and set(w[1][2]) == {"conv"}  # zero, identity, conv3
    assert fam.op_names[1][:2] == ("zero", "identity")
    assert fam.edge_pairs[:4] == ((0, 1), (1, 2), (1, 3), (2, 3))
    assert fam.searchable[0] is False and fam.searchable[1] is True
    np.testing.assert_allclose(fam.uniform_gamma()[1], np.full(5, 1 / 5))
    shapes = fam.validate(_x_seq())
    assert shapes[-2].shape == (3, 10, 4) and shapes[-1].shape == (3, 3)


def test_validation_errors():
    d = (basis.dense(3),)
    with pytest.raises(ValueError, match=r"edge 1 \(2->1\).*topological order"):
        Family(3, (Edge(0, 2, d), Edge(2, 1, d)), "sum")
    with pytest.raises(ValueError, match=r"edge 0 \(1->1\).*topological order"):
        Family(2, (Edge(1, 1, d),), "sum")
    with pytest.raises(ValueError, match="vertex 1 has no incoming edge"):
        Family(3, (Edge(0, 2, d),), "sum")
    with pytest.raises(ValueError, match=r"vertices must lie in 0\.\.2"):
        Family(3, (Edge(0, 1, d), Edge(1, 3, d)), "sum")
    with pytest.raises(ValueError, match=r"edge 1 \(0->1\) is duplicated"):
        Family(2, (Edge(0, 1, d), Edge(0, 1, d)), "sum")
    with pytest.raises(ValueError, match=r"aggregation of vertex 2 must be one of \['concat', 'mean', 'sum'\]"):
        Family(3, (Edge(0, 1, d), Edge(1, 2, d)), ("sum", "max"))
    with pytest.raises(ValueError, match="one entry per vertex"):
        Family(3, (Edge(0, 1, d), Edge(1, 2, d)), ("sum",))
    with pytest.raises(ValueError, match="ops must be a non-empty tuple"):
        Edge(0, 1, ())
    with pytest.raises(ValueError, match="output must be one of"):
        family.darts_cell(2, family.mlp_ops(4), output="max")

    fam = family.two_layer_net(4, 3, 2)
    x = _x_vec()
    w = fam.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"gamma must have one array per edge \(2\), got 1"):
        fam.apply(w, (jnp.ones(2),), x)
    with pytest.raises(ValueError, match=r"gamma\[0\] for edge 0 \(0->1\) has shape \(3,\), expected \(2,\)"):
        fam.apply(w, (jnp.ones(3), jnp.ones(1)), x)
    with pytest.raises(ValueError, match="not binary"):
        family.export_structure(fam, (jnp.array([0.5, 0.5]), jnp.ones(1)))
    with pytest.raises(ValueError, match=r"indices\[0\] = 2 out of range"):
        fam.vertex_gamma((2, 0))
    with pytest.raises(ValueError, match="expected in_features=4"):
        fam.init(jax.random.key(0), jnp.ones((2, 5)))

    bad = Family(2, (Edge(0, 1, (basis.dense(3), basis.identity())),), "sum")
    with pytest.raises(ValueError, match=r"edge 0 \(0->1\): basis functions give different output shapes"
                                         r".*dense\(features=3\) -> \(5, 3\), identity -> \(5, 4\)"):
        bad.init(jax.random.key(0), x)
    bad = Family(3, (Edge(0, 1, (basis.dense(3),)), Edge(0, 2, d), Edge(1, 2, (basis.dense(2),))), "sum")
    with pytest.raises(ValueError, match=r"vertex 2: aggregation 'sum' cannot combine shapes "
                                         r"edge 1 -> \(5, 3\), edge 2 -> \(5, 2\)"):
        bad.validate(x)
    with pytest.raises(ValueError, match=r"edge 0 \(0->1\), op conv1d.*expects inputs of rank 3"):
        Family(2, (Edge(0, 1, (basis.conv1d(2),)),), "sum").validate(x)
