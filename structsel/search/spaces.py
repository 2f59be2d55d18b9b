"""Search spaces of `structsel search`: DARTS-style cells built with the family API (M1-M2).

Every space is a `Family` (`family.darts_cell`): a stem projection, a cell whose
intermediate vertices each sum <gamma^{j,v}, g^{j,v}>(f_j) over all earlier cell vertices,
the intermediates concatenated, and a linear readout (global average pooling for
sequences). The stem, the identity edges into the cell output and the readout carry a
single op (K_e = 1, gamma^e = 1 always); the *searchable* edges carry the same candidate
ops, and a discrete structure is one op per searchable edge (a `DiscreteSpace` choice).

| space   | data                 | cell edges | ops per edge                                         | structures |
|---------|----------------------|------------|------------------------------------------------------|------------|
| mlp1    | tabular (n, d)       | 1          | same as mlp3 (for tests and smoke runs)              | 5          |
| mlp3    | tabular (n, d)       | 3          | zero, identity, linear, dense_relu, dense_tanh       | 125        |
| mlp6    | tabular (n, d)       | 6          | same                                                 | 15625      |
| conv1d3 | sequences (n, L)     | 3          | zero, identity, conv3, conv5, maxpool3 (relu convs)  | 125        |
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from structsel import basis
from structsel.family import (CONV1D_OP_NAMES, MLP_OP_NAMES, Family, darts_cell,
                              export_structure)
from structsel.family import conv1d_ops as family_conv1d_ops
from structsel.family import mlp_ops as family_mlp_ops
from structsel.search.discrete import DiscreteSpace


def mlp_ops(width: int) -> tuple[tuple[str, basis.BasisSpec], ...]:
    """(name, op) pairs of `family.mlp_ops`: zero, identity, linear, dense_relu, dense_tanh."""
    return tuple(zip(MLP_OP_NAMES, family_mlp_ops(width)))


def conv1d_ops(channels: int) -> tuple[tuple[str, basis.BasisSpec], ...]:
    """(name, op) pairs of `family.conv1d_ops`: zero, identity, conv3, conv5, maxpool3."""
    return tuple(zip(CONV1D_OP_NAMES, family_conv1d_ops(channels)))


@dataclasses.dataclass(frozen=True)
class Space:
    """A supernet `family` whose searchable edges (K_e > 1) choose one of `op_names` each.

    `layout` is "vector" (inputs (n, d)) or "sequence" (inputs (n, L) fed as (n, L, 1)).
    """

    name: str
    family: Family
    op_names: tuple[str, ...]
    layout: str = "vector"

    @functools.cached_property
    def searchable_edges(self) -> tuple[int, ...]:
        """Indices (into family.edges) of the edges that carry a choice."""
        return tuple(e for e, k in enumerate(self.family.num_ops) if k > 1)

    @functools.cached_property
    def discrete(self) -> DiscreteSpace:
        """The categorical space: one op index per searchable edge."""
        return DiscreteSpace(tuple(self.family.num_ops[e] for e in self.searchable_edges))

    @property
    def zero_op(self) -> int:
        """Index of the 'zero' op (the op DARTS-style searches collapse onto)."""
        return self.op_names.index("zero")

    @functools.cached_property
    def edge_labels(self) -> tuple[str, ...]:
        """'j->k' per searchable edge, vertices numbered in the cell (0 = cell input)."""
        fam = self.family
        cell_in = min(fam.edges[e].src for e in self.searchable_edges)
        return tuple(f"{fam.edges[e].src - cell_in}->{fam.edges[e].dst - cell_in}"
                     for e in self.searchable_edges)

    def prepare(self, x):
        """Features as the family expects them: (n, d), or (n, L, 1) for sequences."""
        return x[..., None] if self.layout == "sequence" else x

    def embed(self, cell_gamma):
        """Full Gamma over every family edge: gamma^e = 1 on single-op edges.

        `cell_gamma`: tuple over searchable edges of arrays (..., K); leading axes broadcast.
        """
        lead = jnp.shape(cell_gamma[0])[:-1]
        dtype = jnp.result_type(cell_gamma[0])
        it = iter(cell_gamma)
        return tuple(next(it) if k > 1 else jnp.ones(lead + (1,), dtype)
                     for k in self.family.num_ops)

    def restrict(self, gamma):
        """The searchable edges' part of a full Gamma."""
        return tuple(gamma[e] for e in self.searchable_edges)

    def gamma(self, choices):
        """Simplex vertex of each structure: full Gamma, batched over leading axes of choices."""
        return self.embed(self.discrete.to_gamma(jnp.asarray(choices)))

    def vertex(self, choices) -> np.ndarray:
        """Choices over every family edge (op 0 on single-op edges), for `Family.apply_vertex`;
        batched over leading axes of `choices` (num_searchable_edges last)."""
        choices = np.asarray(choices, np.int32)
        full = np.zeros(choices.shape[:-1] + (self.family.num_edges,), np.int32)
        full[..., list(self.searchable_edges)] = choices
        return full

    def selected(self, choice) -> dict[str, str]:
        """{'j->k': op name} of a structure."""
        return {label: self.op_names[int(c)] for label, c in zip(self.edge_labels, choice)}

    def num_params(self, choice, x) -> int:
        """Weights that reach the output: the stem, kept ops and readout on a path from the
        input to the output that no zero op cuts (`references.path_num_params`); a structure
        whose output does not depend on the input counts its constant output (num_outputs).

        `x`: model inputs as the family takes them (already `prepare`d, e.g. Problem.data).
        """
        return int(self.all_num_params(np.asarray(choice)[None], x)[0])

    def all_num_params(self, choices, x) -> np.ndarray:
        """`num_params` of every row of `choices` (int array); `x` as for `num_params`."""
        from structsel.search import references

        shapes = jax.eval_shape(lambda k: self.family.init(k, x[:1]), jax.random.key(0))
        counts = self.family.param_counts(shapes)
        num_outputs = self.family.validate(x[:1])[-1].shape[-1]
        return np.array([references.path_num_params(self.family, counts, full, num_outputs)
                         for full in self.vertex(np.asarray(choices))], dtype=np.int64)

    def export(self, choice) -> dict:
        """`family.export_structure` of a structure, plus the space name and choice."""
        structure = export_structure(self.family, tuple(np.asarray(g) for g in
                                                        self.gamma(np.asarray(choice))))
        return {**structure, "space": self.name, "choice": [int(c) for c in choice],
                "selected": self.selected(choice), "layout": self.layout}


def _mlp_space(name: str, num_intermediate: int) -> Callable[..., Space]:
    def build(*, num_outputs: int, width: int) -> Space:
        ops = mlp_ops(width)
        fam = darts_cell(num_intermediate, tuple(op for _, op in ops),
                         stem=basis.linear(width), readout=num_outputs, output="concat")
        return Space(name, fam, tuple(n for n, _ in ops), "vector")
    return build


def _conv_space(name: str, num_intermediate: int) -> Callable[..., Space]:
    def build(*, num_outputs: int, width: int) -> Space:
        ops = conv1d_ops(width)
        fam = darts_cell(num_intermediate, tuple(op for _, op in ops),
                         stem=basis.conv1d(width, 3, "relu"), readout=num_outputs,
                         output="concat")
        return Space(name, fam, tuple(n for n, _ in ops), "sequence")
    return build


def _tabular_space(*, num_outputs: int, width: int, dropout: float = 0.0) -> Space:
    """`structsel.search.tabular.tabular_space` (imported here: that module imports Space)."""
    from structsel.search.tabular import tabular_space
    return tabular_space(num_outputs=num_outputs, width=width, dropout=dropout)


SPACES: dict[str, Callable[..., Space]] = {
    "mlp1": _mlp_space("mlp1", 1),
    "mlp3": _mlp_space("mlp3", 2),
    "mlp6": _mlp_space("mlp6", 3),
    "conv1d3": _conv_space("conv1d3", 2),
    "tabular": _tabular_space,
}


def build_space(name: str, *, num_outputs: int, width: int, dropout: float = 0.0) -> Space:
    """The space `name` for a task with `num_outputs` outputs and hidden width `width`;
    `dropout` > 0 (the tabular space only) on the hidden units of its residual blocks."""
    if name not in SPACES:
        raise ValueError(f"space must be one of {sorted(SPACES)}, got {name!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an int >= 1, got {width!r}")
    if dropout:
        if name != "tabular":
            raise ValueError(f"dropout applies to the space 'tabular' only, got space {name!r}")
        return SPACES[name](num_outputs=num_outputs, width=width, dropout=dropout)
    return SPACES[name](num_outputs=num_outputs, width=width)


# The default search method per space (`default_method`). On the tabular space the
# Bayesian path runs at the inner structure level only: on breast_cancer, wine, digits and
# synth_interaction (3 split seeds each) it returned exactly what both levels returned, at half the
# search's compilation and compute (docs/tables.md).
DEFAULT_METHODS = {"tabular": "bayes_inner"}
# The default method's KL-weight path where it differs from the method's own. On tables
# it runs two steps further towards maximum likelihood (c = 3e-3, 1e-3): the proposals
# are retrained at retrain_width and the validation split picks among them, and with
# c >= 0.01 alone the search never proposed the larger cells that win on a larger
# regression table (friedman2, docs/tables.md, session 18).
DEFAULT_KL_WEIGHTS = {"tabular": (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)}


def default_method(space: str) -> str:
    """The method `structsel search` runs when none is given: `bayes`, or the space's own."""
    return DEFAULT_METHODS.get(space, "bayes")


def space_for_dataset(dataset_name: str) -> str:
    """Default space: conv1d3 for the mnist1d sequences, tabular for tabular data."""
    return "conv1d3" if dataset_name == "mnist1d" else "tabular"


def structure_space(structure: dict, *, num_outputs: int, width: int) -> Space:
    """The space a structure.json was exported from (checked against its ops; with the
    dropout of the budget it was trained with)."""
    if not isinstance(structure, dict) or "space" not in structure:
        raise ValueError("structure must be a structure.json written by structsel search "
                         "(it needs the key 'space')")
    budget = structure.get("budget")
    dropout = float(budget.get("dropout", 0.0)) if isinstance(budget, dict) else 0.0
    return build_space(structure["space"], num_outputs=num_outputs, width=width,
                       dropout=dropout)


# --- figures (matplotlib imported lazily) -------------------------------------------------

def plot_cell(space: Space, choice, path) -> None:
    """PNG of the selected cell: vertices 0 (input) .. N and every kept edge labelled with its op."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [tuple(int(v) for v in label.split("->")) for label in space.edge_labels]
    num = max(v for p in pairs for v in p) + 1
    pos = {v: (v * 2.0, 0.0) for v in range(num)}
    fig, ax = plt.subplots(figsize=(2.2 * num + 1, 3.2))
    for (src, dst), c in zip(pairs, choice):
        name = space.op_names[int(c)]
        if name == "zero":
            continue
        rad = 0.0 if dst - src == 1 else -0.45 * (dst - src - 1) - 0.3
        ax.annotate("", xy=pos[dst], xytext=pos[src],
                    arrowprops=dict(arrowstyle="-|>", lw=1.6, color="tab:blue",
                                    shrinkA=16, shrinkB=16, connectionstyle=f"arc3,rad={rad}"))
        height = 0.18 if rad == 0 else 0.55 * abs(rad) * (dst - src) + 0.1
        ax.text((pos[src][0] + pos[dst][0]) / 2, height, name, ha="center", va="bottom",
                fontsize=10, color="tab:blue")
    for v, (x, y) in pos.items():
        ax.add_patch(plt.Circle((x, y), 0.28, color="white", ec="black", zorder=3))
        ax.text(x, y, "in" if v == 0 else str(v), ha="center", va="center", zorder=4)
    ax.set_xlim(-0.8, 2.0 * (num - 1) + 0.8)
    ax.set_ylim(-0.6, 2.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"{space.name}: selected cell (zero edges omitted; intermediates concatenated "
                 "-> readout)", fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_gamma_history(space: Space, history, path) -> None:
    """PNG of gamma over the outer steps: one panel per searchable edge, one line per op.

    `history`: array (T, E, K).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = np.asarray(history)
    num_edges = history.shape[1]
    fig, axes = plt.subplots(1, num_edges, figsize=(3.2 * num_edges, 2.8), sharey=True,
                             squeeze=False)
    for e, ax in enumerate(axes[0]):
        for k, name in enumerate(space.op_names):
            ax.plot(history[:, e, k], label=name)
        ax.set_title(f"edge {space.edge_labels[e]}", fontsize=10)
        ax.set_xlabel("outer step")
    axes[0, 0].set_ylabel("mean gamma")
    axes[0, -1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
