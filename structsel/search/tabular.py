"""The search space for tables: a chain of residual MLP blocks with a linear skip (M1-M2).

A ResNet-style MLP for tabular data (Gorishniy et al. 2021, "Revisiting deep learning
models for tabular data") whose depth, hidden widths and normalisation are searched:

    h_0 = S^T x + s                                  (stem, width D)
    h_b = <gamma^b, g^b>(h_{b-1}),  b = 1..B         (searchable edges, one per block)
    f(x) = R^T h_B + r + L^T x                       (readout + linear skip, no bias)

Every op on a searchable edge maps width D to width D, so the simplex mixture of the
supernet is again a residual block: with gamma on the simplex,
<gamma, g>(z) = z + sum_l gamma_l block_l(z). The ops are `identity` (the block is
skipped: this is how depth is searched) and `basis.residual(h, layer_norm=...)`:
z + W_2^T relu(W_1^T LN(z) + b_1) + b_2 with hidden width h in (D, 4D, 16D), plain, and
4D also pre-normalised with LayerNorm. The linear skip L^T x makes the linear model on all
d features a member of every structure (all-identity = stem and readout composed, plus L:
a full-rank linear model), so no structure is worse than linear for lack of capacity.
There is no zero op: zeroing a block of a chain would cut the whole network
(`TabularSpace.zero_op` is -1, "none", so DARTS' zero exclusion is a no-op).

With stream width D = 16 (budget "tabular"): hidden widths 16 / 64 / 256, B = 3 blocks,
K = 5 ops per edge (identity, res16, res64, res256, ln_res64), 5^3 = 125 structures, from
the linear model (all identity: (d + 1) D + (D + 1) c + d c weights for d features and c
outputs) to three 256-wide blocks (+ 25k weights). The supernet computes every op of
every edge, so its cost per row, 3 x 2D (16 + 64 + 256 + 64) multiply-adds, is what the
default search pays; the widest op alone is 64 % of it.

Dropout (budget field `dropout`: 0.1 in the budget `tabular`, the default on tables, 0
elsewhere) acts on the hidden units of the residual blocks of the retrained model: the
from-scratch training applies the ops with a PRNG key (`Family.apply_vertex(..., key=)`),
evaluation without one. The search's supernet is never dropped out.
"""
from __future__ import annotations

import dataclasses

from structsel import basis
from structsel.family import Edge, Family
from structsel.search.spaces import Space

NUM_BLOCKS = 3
HIDDEN_FACTORS = (1, 4, 16)    # hidden width of a block = factor x D
NORMED_FACTORS = (4,)          # the widths that also come pre-normalised (LayerNorm)


def hidden_widths(width: int) -> tuple[int, ...]:
    """Hidden widths of the blocks for stream width D = `width`: (D, 4D, 16D), at least 1."""
    return tuple(max(1, int(f * width)) for f in HIDDEN_FACTORS)


def tabular_ops(width: int, dropout: float = 0.0) -> tuple[tuple[str, basis.BasisSpec], ...]:
    """(name, op) candidates of a block edge: identity, res<h> for every hidden width h,
    ln_res<h> (pre-LayerNorm) for the wider ones; `dropout` on their hidden units."""
    ops = [("identity", basis.identity())]
    ops += [(f"res{h}", basis.residual(h, dropout=dropout)) for h in hidden_widths(width)]
    ops += [(f"ln_res{max(1, int(f * width))}",
             basis.residual(max(1, int(f * width)), layer_norm=True, dropout=dropout))
            for f in NORMED_FACTORS]
    return tuple(ops)


def residual_chain(num_blocks: int, ops, *, width: int, num_outputs: int) -> Family:
    """Stem linear(D) -> `num_blocks` edges carrying `ops` -> linear readout, plus a linear
    skip from x to the output (no bias), summed at the output vertex.

    Vertices: 0 = x, 1 = stem output, 2..B+1 = block outputs, B+2 = f(x).
    """
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be an int >= 1, got {num_blocks!r}")
    ops = tuple(ops)
    last = num_blocks + 1
    edges = [Edge(0, 1, (basis.linear(width),))]
    edges += [Edge(v, v + 1, ops) for v in range(1, last)]
    edges += [Edge(0, last + 1, (basis.linear(num_outputs, use_bias=False),)),
              Edge(last, last + 1, (basis.linear(num_outputs),))]
    return Family(last + 2, tuple(edges), "sum")


@dataclasses.dataclass(frozen=True)
class TabularSpace(Space):
    """A `Space` without a zero op (`zero_op` = -1 matches no op index)."""

    @property
    def zero_op(self) -> int:
        return -1


def tabular_space(*, num_outputs: int, width: int, dropout: float = 0.0) -> TabularSpace:
    """The `tabular` space: NUM_BLOCKS block edges x `tabular_ops(width, dropout)`, stream
    width D."""
    ops = tabular_ops(width, dropout)
    fam = residual_chain(NUM_BLOCKS, (op for _, op in ops), width=width,
                         num_outputs=num_outputs)
    return TabularSpace("tabular", fam, tuple(n for n, _ in ops), "vector")
