"""The parametric family F: a DAG supernet over basis functions (method.md sections 1-2).

    f_0(x) = x
    f_v(w, x) = agg_v({ <gamma^{j,v}, g^{j,v}>(f_j(x)) : j in Adj(v) }),  v = 1..|V|-1
    f = f_{|V|-1},   <gamma, g>(z) = sum_l gamma_l g_l(z).

`Family` is a frozen, hashable dataclass (static structure); `init` / `apply` are pure.
Vertices are numbered in topological order: every edge must satisfy src < dst, which
rules out cycles, every vertex v >= 1 needs an incoming edge, which makes every
vertex reachable from the input vertex 0, and every other vertex an outgoing edge, which
makes the output reachable from every vertex (no dangling vertices).

`export_structure` turns a binary gamma (a vertex of the cube or simplex) into a JSON
dict of the discrete model; `discrete_model` rebuilds that model as a stand-alone Family
(applied with `ones_gamma()`) plus a `select(weights)` that picks its weights out of the
supernet's, so that both give the same outputs.
"""
from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from structsel import basis, distributions
from structsel.basis import BasisSpec

__all__ = [
    "AGGREGATIONS", "Edge", "Family", "two_layer_net", "glm_family", "mlp_ops", "conv1d_ops",
    "MLP_OP_NAMES", "CONV1D_OP_NAMES",
    "darts_cell", "export_structure", "discrete_model",
]

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _Aggregation:
    """agg_v: combines the edge outputs entering a vertex (strategy object)."""

    name: str
    combine: Callable[[list[jax.Array]], jax.Array]
    out_shape: Callable[[list[Shape]], Shape | None]  # None: incompatible shapes


def _same(shapes):
    return shapes[0] if all(s == shapes[0] for s in shapes) else None


def _concat_shape(shapes):
    if any(len(s) == 0 or s[:-1] != shapes[0][:-1] for s in shapes):
        return None
    return shapes[0][:-1] + (sum(s[-1] for s in shapes),)


AGGREGATIONS = {
    "sum": _Aggregation("sum", lambda zs: functools.reduce(operator.add, zs), _same),
    "mean": _Aggregation("mean", lambda zs: functools.reduce(operator.add, zs) / len(zs), _same),
    "concat": _Aggregation("concat", lambda zs: jnp.concatenate(zs, axis=-1), _concat_shape),
}


@dataclasses.dataclass(frozen=True)
class Edge:
    """Edge (src, dst) carrying the basis-function vector g^{src,dst} = ops."""

    src: int
    dst: int
    ops: tuple[BasisSpec, ...]

    def __post_init__(self):
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops or not all(isinstance(op, BasisSpec) for op in self.ops):
            raise ValueError(f"Edge({self.src}, {self.dst}): ops must be a non-empty tuple of "
                             f"basis.BasisSpec, got {self.ops!r}")


def _op_key(key, edge: int, op: int):
    """The PRNG key of op `op` of edge `edge` (None stays None: deterministic)."""
    if key is None:
        return None
    return jax.random.fold_in(jax.random.fold_in(key, edge), op)


@dataclasses.dataclass(frozen=True)
class Family:
    """The supernet F: DAG with `num_vertices`, `edges`, one aggregation per vertex 1..V-1."""

    num_vertices: int
    edges: tuple[Edge, ...]
    aggregation: tuple[str, ...] | str = "sum"

    def __post_init__(self):
        v_count = self.num_vertices
        if isinstance(v_count, bool) or not isinstance(v_count, int) or v_count < 2:
            raise ValueError(f"num_vertices must be an int >= 2, got {v_count!r}")
        agg = self.aggregation
        agg = (agg,) * (v_count - 1) if isinstance(agg, str) else tuple(agg)
        object.__setattr__(self, "aggregation", agg)
        object.__setattr__(self, "edges", tuple(self.edges))
        if len(agg) != v_count - 1:
            raise ValueError(f"aggregation must have one entry per vertex 1..{v_count - 1} "
                             f"({v_count - 1} entries), got {len(agg)}")
        for v, a in enumerate(agg, start=1):
            if a not in AGGREGATIONS:
                raise ValueError(f"aggregation of vertex {v} must be one of {sorted(AGGREGATIONS)}, got {a!r}")
        if not self.edges:
            raise ValueError("edges must be a non-empty tuple of Edge")
        seen = set()
        for e, edge in enumerate(self.edges):
            if not isinstance(edge, Edge):
                raise ValueError(f"edges[{e}] must be an Edge, got {edge!r}")
            if not (0 <= edge.src < v_count and 0 <= edge.dst < v_count):
                raise ValueError(f"edge {e} ({edge.src}->{edge.dst}): vertices must lie in 0..{v_count - 1}")
            if edge.src >= edge.dst:
                raise ValueError(f"edge {e} ({edge.src}->{edge.dst}): vertices must be numbered in "
                                 "topological order (src < dst); this edge would allow a cycle")
            if (edge.src, edge.dst) in seen:
                raise ValueError(f"edge {e} ({edge.src}->{edge.dst}) is duplicated; put all its ops on one Edge")
            seen.add((edge.src, edge.dst))
        for v in range(1, v_count):
            if not self.in_edges[v]:
                raise ValueError(f"vertex {v} has no incoming edge, so it is unreachable from vertex 0")
        sources = {edge.src for edge in self.edges}
        for v in range(v_count - 1):
            if v not in sources:
                raise ValueError(f"vertex {v} has no outgoing edge, so it is dangling: it does not "
                                 f"reach the output vertex {v_count - 1}")

    # ------------------------------------------------------------------ structure
    @property
    def num_edges(self) -> int:
        return len(self.edges)

    @property
    def num_ops(self) -> tuple[int, ...]:
        """K_e for every edge e."""
        return tuple(len(edge.ops) for edge in self.edges)

    @property
    def op_names(self) -> tuple[tuple[str, ...], ...]:
        """Readable labels of the ops, per edge (e.g. 'zero', 'dense(features=16)')."""
        return tuple(tuple(op.label for op in edge.ops) for edge in self.edges)

    @property
    def edge_pairs(self) -> tuple[tuple[int, int], ...]:
        """(src, dst) of every edge."""
        return tuple((edge.src, edge.dst) for edge in self.edges)

    @functools.cached_property
    def in_edges(self) -> tuple[tuple[int, ...], ...]:
        """Indices of the edges entering each vertex v (empty for v = 0)."""
        return tuple(tuple(e for e, edge in enumerate(self.edges) if edge.dst == v)
                     for v in range(self.num_vertices))

    @property
    def searchable(self) -> tuple[bool, ...]:
        """Whether edge e offers a choice (K_e > 1)."""
        return tuple(k > 1 for k in self.num_ops)

    def uniform_gamma(self, dtype=jnp.float32) -> tuple[jax.Array, ...]:
        """gamma^e = 1/K_e (the centre of every simplex)."""
        return tuple(jnp.full((k,), 1.0 / k, dtype) for k in self.num_ops)

    def ones_gamma(self, dtype=jnp.float32) -> tuple[jax.Array, ...]:
        """gamma^e = 1 (every op on; how a discrete model is applied)."""
        return tuple(jnp.ones((k,), dtype) for k in self.num_ops)

    def vertex_gamma(self, indices: Sequence[int], dtype=jnp.float32) -> tuple[jax.Array, ...]:
        """One-hot gamma^e = e_{indices[e]}: a vertex of the simplex on every edge."""
        indices = tuple(indices)
        if len(indices) != self.num_edges:
            raise ValueError(f"indices must have one entry per edge ({self.num_edges}), got {len(indices)}")
        for e, (i, k) in enumerate(zip(indices, self.num_ops)):
            if not 0 <= int(i) < k:
                raise ValueError(f"indices[{e}] = {i} out of range for edge {e} with {k} ops")
        return tuple(jax.nn.one_hot(int(i), k, dtype=dtype) for i, k in zip(indices, self.num_ops))

    # ------------------------------------------------------------------ computation
    def validate(self, x) -> tuple[jax.ShapeDtypeStruct, ...]:
        """Check shapes edge by edge with `jax.eval_shape`; returns the shape of every f_v."""
        shapes = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))]
        for v in range(1, self.num_vertices):
            outs = []
            for e in self.in_edges[v]:
                edge = self.edges[e]
                op_shapes = []
                for op in edge.ops:
                    try:
                        op_shapes.append(op.output_shape(shapes[edge.src]))
                    except ValueError as err:
                        raise ValueError(f"edge {e} ({edge.src}->{edge.dst}), op {op.label} on input "
                                         f"shape {shapes[edge.src].shape}: {err}") from None
                if len({s.shape for s in op_shapes}) > 1:
                    detail = ", ".join(f"{op.label} -> {s.shape}" for op, s in zip(edge.ops, op_shapes))
                    raise ValueError(f"edge {e} ({edge.src}->{edge.dst}): basis functions give different "
                                     f"output shapes on input {shapes[edge.src].shape}: {detail}")
                outs.append(jax.ShapeDtypeStruct(op_shapes[0].shape,
                                                 jnp.result_type(*[s.dtype for s in op_shapes])))
            agg = self.aggregation[v - 1]
            shape = AGGREGATIONS[agg].out_shape([s.shape for s in outs])
            if shape is None:
                detail = ", ".join(f"edge {e} -> {s.shape}" for e, s in zip(self.in_edges[v], outs))
                raise ValueError(f"vertex {v}: aggregation {agg!r} cannot combine shapes {detail}")
            shapes.append(jax.ShapeDtypeStruct(shape, jnp.result_type(*[s.dtype for s in outs])))
        return tuple(shapes)

    def init(self, key: jax.Array, x) -> tuple[tuple[dict, ...], ...]:
        """Weights w: tuple over edges of tuple over ops of flax param dicts (after `validate`)."""
        shapes = self.validate(x)
        keys = iter(jax.random.split(key, sum(self.num_ops)))
        return tuple(tuple(op.init(next(keys), jnp.zeros(shapes[edge.src].shape, shapes[edge.src].dtype))
                           for op in edge.ops) for edge in self.edges)

    def _check_gamma(self, gamma) -> None:
        if len(gamma) != self.num_edges:
            raise ValueError(f"gamma must have one array per edge ({self.num_edges}), got {len(gamma)}")
        for e, (g, k) in enumerate(zip(gamma, self.num_ops)):
            if jnp.shape(g) != (k,):
                edge = self.edges[e]
                raise ValueError(f"gamma[{e}] for edge {e} ({edge.src}->{edge.dst}) has shape "
                                 f"{jnp.shape(g)}, expected ({k},)")
        concrete = distributions.concrete_or_none(*gamma)
        if concrete is not None:
            for e, g in enumerate(concrete):
                if not np.all(np.isfinite(g)):
                    raise ValueError(f"gamma[{e}] must be finite (allowed: the cube [0, 1]^K), "
                                     f"got {g}")

    def apply(self, weights, gamma, x, *, key=None) -> jax.Array:
        """f(w, x) = f_{|V|-1} with f_v = agg_v({sum_l gamma^{j,v}_l g^{j,v}_l(f_j)}); any gamma in the cube.
        `key`: None (deterministic), or a PRNG key for stochastic ops in training
        (dropout; op l of edge e gets fold_in(fold_in(key, e), l))."""
        self._check_gamma(gamma)

        def mix(e, z):
            return functools.reduce(operator.add, [
                gamma[e][l] * op.apply(weights[e][l], z, key=_op_key(key, e, l))
                for l, op in enumerate(self.edges[e].ops)])
        return self._forward(weights, mix, x)

    def apply_vertex(self, weights, choice, x, *, key=None) -> jax.Array:
        """f(w, x) at the simplex vertex gamma^e = e_{a_e}, a = `choice` (int array (E,)).

        Equals `apply(weights, vertex_gamma(choice), x)`, but computes only the chosen op
        g^e_{a_e} of each edge (`lax.switch`), so a batch of structures run one after the
        other (`lax.map`) costs the discrete models' compute, not the supernet's. Under
        `vmap` over `choice` the switch becomes a select and every op is computed again.
        A concrete `choice` (numpy, or a jax array outside a trace) picks the ops in
        Python: only they are traced, so a program specialised to one structure (e.g.
        `enumeration.train_structure` with a numpy choice under `jit`) compiles them alone.
        """
        if jnp.shape(choice) != (self.num_edges,):
            raise ValueError(f"choice must have shape ({self.num_edges},) (one op index per edge), "
                             f"got {jnp.shape(choice)}")
        if not jnp.issubdtype(jnp.result_type(choice), jnp.integer):
            raise ValueError(f"choice must be an integer array, got dtype {jnp.result_type(choice)}")
        try:
            concrete = np.asarray(choice)
        except jax.errors.TracerArrayConversionError:
            concrete = None  # traced: lax.switch clamps the index, the caller owns the range
        if concrete is not None:
            for e, (a, k) in enumerate(zip(concrete, self.num_ops)):
                if not 0 <= a < k:
                    raise ValueError(f"choice[{e}] = {int(a)} out of range 0..{k - 1} for edge {e}")

        def pick(e, z):
            ops = self.edges[e].ops
            if len(ops) == 1 or concrete is not None:  # known: only that op is traced
                a = 0 if len(ops) == 1 else int(concrete[e])
                return ops[a].apply(weights[e][a], z, key=_op_key(key, e, a))
            branches = [functools.partial(op.apply, weights[e][l], key=_op_key(key, e, l))
                        for l, op in enumerate(ops)]
            return jax.lax.switch(choice[e], branches, z)
        return self._forward(weights, pick, x)

    def _forward(self, weights, edge_fn, x) -> jax.Array:
        """f_v = agg_v({edge_fn(e, f_src(e)) : e into v}) in topological order; returns f_{|V|-1}."""
        if len(weights) != self.num_edges:
            raise ValueError(f"weights must have one entry per edge ({self.num_edges}), got {len(weights)}")
        f = [x]
        for v in range(1, self.num_vertices):
            outs = []
            for e in self.in_edges[v]:
                try:
                    outs.append(edge_fn(e, f[self.edges[e].src]))
                except flax.errors.ScopeParamShapeError:
                    edge = self.edges[e]
                    raise ValueError(
                        f"weights of edge {e} ({edge.src}->{edge.dst}) do not fit its input of "
                        f"shape {jnp.shape(f[edge.src])} (x of shape {jnp.shape(x)}): they were "
                        "initialised for inputs with another number of features") from None
            f.append(AGGREGATIONS[self.aggregation[v - 1]].combine(outs))
        return f[-1]

    def param_counts(self, weights) -> tuple[np.ndarray, ...]:
        """Number of weights of every op, per edge (int arrays of shape (K_e,); static)."""
        return tuple(np.array([sum(int(np.prod(jnp.shape(p))) for p in jax.tree.leaves(w_l)) for w_l in w_e],
                              dtype=np.int64) for w_e in weights)

    def num_params(self, weights, gamma=None) -> int:
        """Weights of the model selected by a binary gamma (all ops if None); dead ops excluded."""
        if gamma is None:
            return int(sum(c.sum() for c in self.param_counts(weights)))
        sub, select = discrete_model(self, export_structure(self, gamma))
        return int(sum(c.sum() for c in sub.param_counts(select(weights))))


# ---------------------------------------------------------------------- constructors

def two_layer_net(num_features: int, hidden: int, num_classes: int,
                  activations: tuple[str, str] = ("sigmoid", "sigmoid")) -> Family:
    """Seminar example: f_1 = gamma_0 s(W_0^T x) + gamma_1 s(W_1^T x), f = W_2^T f_1 (logits)."""
    if len(activations) != 2:
        raise ValueError(f"activations must have 2 entries, got {activations!r}")
    first = tuple(basis.dense(hidden, a, in_features=num_features) for a in activations)
    return Family(3, (Edge(0, 1, first), Edge(1, 2, (basis.linear(num_classes),))), ("sum", "sum"))


def glm_family(num_features: int = 12, *, feature: int = 0) -> Family:
    """Thesis GLM: f = gamma_0 w_0 + gamma_1 tanh(w_1[0] x_feature + w_1[1]) + gamma_2 tanh(w_2^T x).

    x has `num_features` columns including the constant one; the output has shape (n, 1).
    """
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < num_features:
        raise ValueError(f"feature must be an int in 0..{num_features - 1}, got {feature!r}")
    ops = (basis.constant(1),
           basis.linear(1, subset=(feature,), activation="tanh", in_features=num_features),
           basis.linear(1, activation="tanh", use_bias=False, in_features=num_features))
    return Family(2, (Edge(0, 1, ops),), ("sum",))


MLP_OP_NAMES = ("zero", "identity", "linear", "dense_relu", "dense_tanh")
CONV1D_OP_NAMES = ("zero", "identity", "conv3", "conv5", "maxpool3")


def mlp_ops(width: int) -> tuple[BasisSpec, ...]:
    """MLP candidate ops over vectors, named by MLP_OP_NAMES: zero, identity, linear,
    dense+relu, dense+tanh (the ops of the search spaces mlp1/mlp3/mlp6)."""
    return (basis.zero(), basis.identity(), basis.linear(width),
            basis.dense(width, "relu"), basis.dense(width, "tanh"))


def conv1d_ops(channels: int) -> tuple[BasisSpec, ...]:
    """1-D conv candidate ops over (n, length, channels), named by CONV1D_OP_NAMES: zero,
    identity, conv3, conv5 (relu), max pool 3 (the ops of the search space conv1d3)."""
    return (basis.zero(), basis.identity(), basis.conv1d(channels, 3, "relu"),
            basis.conv1d(channels, 5, "relu"), basis.max_pool(3))


def darts_cell(num_intermediate: int, ops: Sequence[BasisSpec], *, stem: BasisSpec | None = None,
               readout: int | BasisSpec | None = None, output: str = "concat") -> Family:
    """DARTS cell: each intermediate sums <gamma, ops>(f_j) over all earlier vertices j.

    Vertices: 0 = x, [stem output], intermediates (aggregation "sum"), the cell output
    (`output` over identity edges from every intermediate), [readout]. `readout` as an int
    adds `basis.readout(readout)` (global average pool + linear; class logits).
    """
    if isinstance(num_intermediate, bool) or not isinstance(num_intermediate, int) or num_intermediate < 1:
        raise ValueError(f"num_intermediate must be an int >= 1, got {num_intermediate!r}")
    if output not in AGGREGATIONS:
        raise ValueError(f"output must be one of {sorted(AGGREGATIONS)}, got {output!r}")
    ops = tuple(ops)
    edges, aggregation = [], []
    cell_in = 0
    if stem is not None:
        edges.append(Edge(0, 1, (stem,)))
        aggregation.append("sum")
        cell_in = 1
    inter = list(range(cell_in + 1, cell_in + 1 + num_intermediate))
    for v in inter:
        edges += [Edge(j, v, ops) for j in range(cell_in, v)]
        aggregation.append("sum")
    out = inter[-1] + 1
    edges += [Edge(v, out, (basis.identity(),)) for v in inter]
    aggregation.append(output)
    if readout is not None:
        head = basis.readout(readout) if isinstance(readout, int) else readout
        edges.append(Edge(out, out + 1, (head,)))
        aggregation.append("sum")
    return Family(len(aggregation) + 1, tuple(edges), tuple(aggregation))


# ---------------------------------------------------------------------- export

def _binary(fam: Family, gamma) -> list[np.ndarray]:
    try:
        gamma = [np.asarray(g) for g in gamma]
    except jax.errors.TracerArrayConversionError:
        raise ValueError("gamma must be concrete (export runs outside jit)") from None
    fam._check_gamma(gamma)
    for e, g in enumerate(gamma):
        if not np.all((g == 0) | (g == 1)):
            raise ValueError(f"gamma[{e}] = {g} is not binary; export needs a vertex of the cube or "
                             "simplex (discretise it first)")
    return gamma


def export_structure(fam: Family, gamma) -> dict[str, Any]:
    """JSON dict of the discrete model at a binary gamma (ops with gamma_l = 0 removed).

    An all-zero edge is dropped when its target sums its inputs; into a "mean"/"concat"
    vertex it becomes `zero_like`, which keeps the output exact; a "sum" vertex whose
    inputs are all off keeps its earliest-source one as `zero_like`. Vertices that no
    longer reach the output are dropped and the rest renumbered ("vertices" lists the
    original ids; every edge records its original index as "edge" and each op its
    original index as "index", None for `zero_like`).
    """
    gamma = _binary(fam, gamma)
    kept: dict[int, list[tuple[int | None, BasisSpec]]] = {}
    for v in range(1, fam.num_vertices):
        live = [e for e in fam.in_edges[v] if gamma[e].any()]
        first_src = min(fam.in_edges[v], key=lambda e: fam.edges[e].src)
        for e in fam.in_edges[v]:
            if gamma[e].any():
                kept[e] = [(l, op) for l, op in enumerate(fam.edges[e].ops) if gamma[e][l] == 1]
            elif fam.aggregation[v - 1] != "sum" or (not live and e == first_src):
                kept[e] = [(None, basis.zero_like(fam.edges[e].ops[0]))]
    useful = {fam.num_vertices - 1}  # vertices from which the output is reachable
    for v in range(fam.num_vertices - 1, 0, -1):
        if v in useful:
            useful.update(fam.edges[e].src for e in fam.in_edges[v] if e in kept)
    vertices = sorted(useful)
    new_id = {v: i for i, v in enumerate(vertices)}
    return {
        "format": "structsel.structure/1",
        "num_vertices": len(vertices),
        "vertices": vertices,
        "aggregation": [fam.aggregation[v - 1] for v in vertices[1:]],
        "edges": [{"edge": e, "src": new_id[fam.edges[e].src], "dst": new_id[fam.edges[e].dst],
                   "ops": [{"index": l, "label": op.label, "spec": op.to_dict()} for l, op in ops]}
                  for e, ops in sorted(kept.items()) if fam.edges[e].dst in useful],
    }


def _check_structure_dict(structure: dict) -> None:
    """The keys and types of an export_structure dict (ValueError naming the bad entry)."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    for key, check, what in (("num_vertices", is_int, "an int"),
                             ("aggregation", lambda v: isinstance(v, list | tuple), "a list"),
                             ("edges", lambda v: isinstance(v, list | tuple), "a list")):
        if not check(structure.get(key)):
            raise ValueError(f"structure {key!r} must be {what}, got {structure.get(key)!r}")
    for i, item in enumerate(structure["edges"]):
        if not (isinstance(item, dict) and all(is_int(item.get(k)) for k in ("edge", "src", "dst"))
                and isinstance(item.get("ops"), list | tuple)):
            raise ValueError(f"structure edges[{i}] must be an object with int 'edge', 'src', "
                             f"'dst' and a list 'ops', got {item!r}")
        for j, op in enumerate(item["ops"]):
            if not (isinstance(op, dict) and "spec" in op and "index" in op
                    and (op["index"] is None or is_int(op["index"]))):
                raise ValueError(f"structure edges[{i}].ops[{j}] must be an object with 'spec' "
                                 f"and an int (or null) 'index', got {op!r}")


def discrete_model(fam: Family, structure: dict) -> tuple[Family, Callable]:
    """(discrete Family, select) with sub.apply(select(w), sub.ones_gamma(), x) = fam.apply(w, gamma, x)."""
    if not isinstance(structure, dict) or structure.get("format") != "structsel.structure/1":
        raise ValueError("structure must be a dict from export_structure (format 'structsel.structure/1')")
    _check_structure_dict(structure)
    edges, picks = [], []
    for item in structure["edges"]:
        e = int(item["edge"])
        if not 0 <= e < fam.num_edges:
            raise ValueError(f"structure edge {e} does not exist in the family ({fam.num_edges} edges)")
        ops = []
        for op in item["ops"]:
            spec = basis.from_dict(op["spec"])
            if op["index"] is not None and not 0 <= op["index"] < fam.num_ops[e]:
                raise ValueError(f"structure edge {e} op index {op['index']} is out of range: the "
                                 f"family's edge {e} has {fam.num_ops[e]} ops")
            if op["index"] is not None and fam.edges[e].ops[op["index"]] != spec:
                raise ValueError(f"structure edge {e} op {op['index']} is {spec.label}, but the family "
                                 f"has {fam.edges[e].ops[op['index']].label}")
            ops.append(spec)
            picks.append((len(edges), e, op["index"]))
        edges.append(Edge(int(item["src"]), int(item["dst"]), tuple(ops)))
    sub = Family(int(structure["num_vertices"]), tuple(edges), tuple(structure["aggregation"]))

    def select(weights):
        """Weights of the discrete model: the kept ops' entries of the supernet weights."""
        out = [[] for _ in edges]
        for new_e, e, l in picks:
            out[new_e].append({} if l is None else weights[e][l])
        return tuple(tuple(w) for w in out)

    return sub, select
