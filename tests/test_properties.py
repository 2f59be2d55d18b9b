"""Property-based tests (hypothesis) over random DAGs, random gamma in the four domains of
method.md section 2, random distributions and random strongly convex bilevel quadratics.

Examples are derandomised (the same examples every run: a failure reproduces) and few, so
the file runs in well under a minute; the DAG properties run eagerly (every DAG has its own
shapes, so jitting would compile per example), the distribution and hypergradient
properties jit once per shape and feed the drawn values in as arrays.
"""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from structsel import basis, distributions as D
from structsel.family import Edge, Family, discrete_model, export_structure
from structsel.hypergradient import hypergradient
from structsel.structure import argmax_vertex, darts_topk, threshold_vertex
from structsel.variational import gaussian_kl

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

WIDTH = 3  # every op maps (n, 3) -> (n, 3), so any DAG over them is well shaped
OPS = (basis.zero(), basis.identity(), basis.linear(WIDTH), basis.dense(WIDTH, "relu"),
       basis.dense(WIDTH, "tanh"))
DOMAINS = ("cube vertex", "simplex vertex", "cube interior", "simplex interior")
X = jax.random.normal(jax.random.key(0), (5, WIDTH))


@st.composite
def families(draw) -> Family:
    """A DAG of 2-4 vertices in topological order; every vertex but the output has 1+
    outgoing edges and every vertex but the input 1+ incoming ones; each edge 1-3 distinct
    ops; aggregation sum or mean per vertex."""
    num_vertices = draw(st.integers(2, 4))
    pairs = {(src, dst) for dst in range(1, num_vertices)
             for src in draw(st.sets(st.integers(0, dst - 1), min_size=1))}
    for src in range(num_vertices - 1):
        if not any(s == src for s, _ in pairs):
            pairs.add((src, draw(st.integers(src + 1, num_vertices - 1))))
    edges = []
    for src, dst in sorted(pairs, key=lambda p: (p[1], p[0])):
        ops = draw(st.lists(st.integers(0, len(OPS) - 1), min_size=1, max_size=3, unique=True))
        edges.append(Edge(src, dst, tuple(OPS[i] for i in sorted(ops))))
    aggregation = tuple(draw(st.sampled_from(["sum", "mean"]))
                        for _ in range(num_vertices - 1))
    return Family(num_vertices, tuple(edges), aggregation)


def _gamma(draw, k: int, domain: str) -> np.ndarray:
    """One gamma of length k in `domain`."""
    if domain == "cube vertex":
        return np.array(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=k, max_size=k)),
                        np.float32)
    if domain == "simplex vertex":
        return np.eye(k, dtype=np.float32)[draw(st.integers(0, k - 1))]
    inside = np.array(draw(st.lists(st.floats(0.01, 0.99), min_size=k, max_size=k)),
                      np.float32)
    return inside if domain == "cube interior" else inside / inside.sum()


@settings(max_examples=15, **SETTINGS)
@given(fam=families(), domain=st.sampled_from(DOMAINS), seed=st.integers(0, 2**16),
       data=st.data())
def test_supernet_outputs_are_finite_and_vertices_match_their_exported_model(
        fam, domain, seed, data):
    gamma = tuple(_gamma(data.draw, k, domain) for k in fam.num_ops)
    weights = fam.init(jax.random.key(seed), X)
    out = np.asarray(fam.apply(weights, gamma, X))
    assert out.shape == (5, WIDTH) and np.all(np.isfinite(out))
    if "vertex" not in domain:
        return
    # The stand-alone model rebuilt from the JSON text computes what the supernet computes
    # at that vertex. Same ops on the same inputs; only multiplications by exact 0 / 1 and
    # additions of exact zeros differ, so the match is exact up to float32 reassociation.
    structure = json.loads(json.dumps(export_structure(fam, gamma)))
    sub, select = discrete_model(fam, structure)
    rebuilt = np.asarray(sub.apply(select(weights), sub.ones_gamma(), X))
    np.testing.assert_allclose(rebuilt, out, rtol=1e-6, atol=1e-6)
    if domain == "simplex vertex":  # the lax.switch path computes the same model
        choice = np.array([int(np.argmax(g)) for g in gamma], np.int32)
        np.testing.assert_allclose(np.asarray(fam.apply_vertex(weights, choice, X)), out,
                                   rtol=1e-6, atol=1e-6)


@settings(max_examples=25, **SETTINGS)
@given(fam=families(), domain=st.sampled_from(DOMAINS), data=st.data())
def test_discretisation_is_the_identity_on_vertices_and_lands_on_one(fam, domain, data):
    gamma = tuple(_gamma(data.draw, k, domain) for k in fam.num_ops)
    simplex = tuple(np.asarray(argmax_vertex(g)) for g in gamma)
    cube = tuple(np.asarray(threshold_vertex(g)) for g in gamma)
    for g, s, c in zip(gamma, simplex, cube):
        assert s.sum() == 1 and set(np.unique(s)) <= {0, 1} and set(np.unique(c)) <= {0, 1}
        assert np.argmax(s) == np.argmax(g)  # ties: the first index, as documented
        if domain == "simplex vertex":
            np.testing.assert_array_equal(s, g)
        if "vertex" in domain:
            np.testing.assert_array_equal(c, g)
    if domain == "simplex vertex":  # DARTS' rule keeping every incoming edge: identity too
        most = max(len(e) for e in fam.in_edges)
        kept = darts_topk(fam.edge_pairs, gamma, k=most)
        for g, d in zip(gamma, kept):
            np.testing.assert_array_equal(np.asarray(d), g)


# ------------------------------------------------------------------ distributions
K = 4  # fixed event size: one compilation per function below
# The documented float32 range (structsel/distributions.py): temperatures and
# concentrations down to 0.05; we go up to 1e2 (temperature) and 1e4 (concentration).
log_uniform = lambda lo, hi: st.floats(math.log(lo), math.log(hi)).map(math.exp)  # noqa: E731
vectors = lambda lo, hi: st.lists(st.floats(lo, hi), min_size=K, max_size=K)  # noqa: E731


@jax.jit
def _draws_and_densities(logits, temperature, concentration, loc, scale, key):
    k1, k2, k3 = jax.random.split(key, 3)
    out = {}
    for name, dist, k in (("gumbel_softmax", D.gumbel_softmax(logits, temperature), k1),
                          ("dirichlet", D.dirichlet(concentration, 1.0), k2),
                          ("logit_normal", D.logit_normal(loc, scale), k3)):
        sample, log_prob = dist.sample_and_log_prob(seed=k, sample_shape=64)
        out[name] = (sample, log_prob, dist.log_prob(sample))
    return out


@settings(max_examples=20, **SETTINGS)
@given(logits=vectors(-10, 10), temperature=log_uniform(0.05, 1e2),
       concentration=st.lists(log_uniform(0.05, 1e4), min_size=K, max_size=K),
       loc=st.lists(st.floats(-10, 10), min_size=K - 1, max_size=K - 1),
       scale=st.lists(log_uniform(0.05, 10), min_size=K - 1, max_size=K - 1),
       seed=st.integers(0, 2**16))
def test_float32_samples_and_log_densities_are_finite_over_the_documented_range(
        logits, temperature, concentration, loc, scale, seed):
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    out = _draws_and_densities(f32(logits), f32(temperature), f32(concentration), f32(loc),
                               f32(scale), jax.random.key(seed))
    for name, (sample, log_prob, rescored) in out.items():
        sample = np.asarray(sample)
        assert sample.dtype == np.float32, name
        assert np.all(np.isfinite(sample)) and np.all(sample >= 0), name
        np.testing.assert_allclose(sample.sum(-1), 1.0, atol=1e-5, err_msg=name)
        assert np.all(np.isfinite(np.asarray(log_prob))), (name, log_prob)
        assert np.all(np.isfinite(np.asarray(rescored))), (name, rescored)


@jax.jit
def _closed_form_kls(cq, cp, temperature, loc_q, scale_q, loc_p, scale_p, mu, ls_q, ls_p):
    return (D.kl_divergence(D.dirichlet(cq, temperature), D.dirichlet(cp, temperature)),
            D.kl_divergence(D.logit_normal(loc_q, scale_q), D.logit_normal(loc_p, scale_p)),
            gaussian_kl(mu, ls_q, ls_p))


@settings(max_examples=30, **SETTINGS)
@given(cq=st.lists(log_uniform(0.05, 1e3), min_size=K, max_size=K),
       cp=st.lists(log_uniform(0.05, 1e3), min_size=K, max_size=K),
       temperature=log_uniform(0.05, 1e2),
       loc_q=vectors(-10, 10), loc_p=vectors(-10, 10),
       scale_q=st.lists(log_uniform(1e-2, 1e2), min_size=K, max_size=K),
       scale_p=st.lists(log_uniform(1e-2, 1e2), min_size=K, max_size=K),
       mu=vectors(-10, 10), ls_q=vectors(-8, 8), ls_p=vectors(-8, 8), same=st.booleans())
def test_kl_divergences_are_non_negative_and_zero_at_equality(
        cq, cp, temperature, loc_q, loc_p, scale_q, scale_p, mu, ls_q, ls_p, same):
    if same:
        cp, loc_p, scale_p, ls_p, mu = cq, loc_q, scale_q, ls_q, [0.0] * K
    args = [jnp.asarray(v, jnp.float32) for v in
            (cq, cp, temperature, loc_q, scale_q, loc_p, scale_p, mu, ls_q, ls_p)]
    kls = [np.asarray(v, np.float64) for v in _closed_form_kls(*args)]
    with jax.enable_x64(True):  # the float64 oracle of the same closed forms
        ref = [np.asarray(v) for v in _closed_form_kls(
            *[jnp.asarray(np.asarray(a, np.float64)) for a in args])]
    for name, kl, r in zip(("dirichlet", "logit_normal", "gaussian"), kls, ref):
        assert np.all(r >= 0), (name, r)
        # float32: the Dirichlet closed form subtracts log-Beta terms of size up to ~1e3
        # (concentrations up to 1e5), so a KL that is 0 in float64 may come out at -1e-3.
        tol = 1e-5 * (1.0 + np.abs(r)) + (2e-3 if name == "dirichlet" else 1e-5)
        assert np.all(kl >= -tol), (name, kl, r)
        np.testing.assert_allclose(kl, r, rtol=1e-3, atol=tol.max(), err_msg=name)
        if same:
            np.testing.assert_allclose(r, 0.0, atol=1e-9, err_msg=name)


# --------------------------------------------------------------- hypergradients
N, M = 6, 3  # inner parameters, hyperparameters


def _inner(w, h, a, b, c):
    """L(w, h) = w^T A w / 2 - w^T (B h + c): strongly convex in w, w*(h) = A^-1 (B h + c)."""
    return 0.5 * w @ a @ w - w @ (b @ h + c)


def _outer(w, h, cm, t, d):
    """Q(w, h) = ||C w - t||^2 / 2 + d ||h||^2 / 2."""
    return 0.5 * jnp.sum((cm @ w - t) ** 2) + 0.5 * d * h @ h


@jax.jit
def _both(w, h, a, b, c, cm, t, d):
    kw = dict(inner_args=(a, b, c), outer_args=(cm, t, d))
    return (hypergradient(_inner, _outer, w, h, method="exact", **kw),
            hypergradient(_inner, _outer, w, h, method="cg", maxiter=4 * N, tol=1e-12, **kw))


@settings(max_examples=15, **SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), log_cond=st.floats(0.0, 3.0),
       scale=log_uniform(1e-2, 1e2))
def test_exact_and_cg_hypergradients_agree_on_strongly_convex_quadratics(seed, log_cond, scale):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(N, N)))
    eig = scale * np.logspace(0.0, log_cond, N)  # condition number up to 1e3
    a = (q * eig) @ q.T
    a = (a + a.T) / 2
    b, c, cm = rng.normal(size=(N, M)), rng.normal(size=N), rng.normal(size=(4, N))
    t, h, d = rng.normal(size=4), rng.normal(size=M), float(rng.uniform(0.1, 1.0))
    w = np.linalg.solve(a, b @ h + c)  # the inner solution w*(h)
    # Oracle: dQ/dh = d h + B^T A^-1 C^T (C w* - t), in float64 numpy.
    oracle = d * h + b.T @ np.linalg.solve(a, cm.T @ (cm @ w - t))
    with jax.enable_x64(True):
        exact, cg = (np.asarray(v) for v in _both(*(jnp.asarray(v, jnp.float64) for v in
                                                    (w, h, a, b, c, cm, t, d))))
    # float64 with condition numbers up to 1e3: a backward-stable solve is good to
    # ~cond * 1e-16 relative; CG stopped at a relative residual of 1e-12 to ~cond * 1e-12.
    norm = np.linalg.norm(oracle)
    assert np.linalg.norm(exact - oracle) <= 1e-10 * norm
    assert np.linalg.norm(cg - exact) <= 1e-8 * norm
