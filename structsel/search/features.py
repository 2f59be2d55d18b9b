"""Input-feature screening on tables: which columns the returned model reads (issue 11).

Networks trained on a few hundred rows are hurt by uninformative columns that trees ignore
(measured, docs/tables.md: circles + 6 noise columns, 96.5 % with all 8 columns against
99.0 % with the 2 informative ones; synth_interaction 86.3 % with 20 columns against
92.3 % with its 4 informative ones). The search already estimates which columns matter:
in the supernet's posterior (method.md M5: ARD drives the weights of uninformative inputs
toward 0) the rows of the input layers that read an uninformative column stay small.

Relevance of column j: the Euclidean norm of row j of the kernels of the linear ops on the
edges that leave the input vertex (the stem and the linear skip of the space `tabular`),
concatenated, at the posterior mean (point weights for the point methods), averaged over
the search runs:

    r_j = mean_runs || [S_j, L_j] ||_2 .

Proposal (`propose`): sort log r and split it in two groups by Otsu's rule (the split that
maximises the between-group variance w_0 w_1 (m_0 - m_1)^2 of the log relevances); the
upper group is proposed whenever its smallest relevance is above the largest of the lower
group (always, unless relevances tie across the split) and at least `SEPARATION` times it.
A proposal is a candidate, not a decision: the driver retrains the selected structure on
the proposed columns and keeps it only when its validation metric is better (`runner`), as
it compares the other candidates. `SEPARATION` is 1 since session 22: session 21's 1.5
never tried groups that validation accepts once tried (a 40-column make_classification
with 12 informative columns, moons + 10 noise columns, friedman1 + 15 noise columns, the
mnist1d steps: separations 1.04-1.42), and validation rejects the wrong ones
(docs/tables.md, session 22).

A second proposal (`propose_univariate`, session 32) does not come from the supernet: the
columns whose F test against the target passes Benjamini-Hochberg at `FDR`. On a wide
table (300 columns, 360 training rows) the input kernels interpolate and the relevances
do not single out the informative columns, while the marginal tests do; columns that act
only jointly (an XOR) pass no marginal test and remain the relevance proposal's. The
driver tries it after the relevance proposal (`runner._screen_features`).
"""
from __future__ import annotations

import numpy as np

SEPARATION = 1.0  # smallest kept relevance / largest dropped relevance, at least


def _is_input_kernel(path, leaf, num_features: int) -> bool:
    """Whether a weight leaf (of an op on an edge leaving the input) is a dense kernel
    whose input axis has `num_features` rows."""
    name = str(getattr(path[-1], "key", path[-1]))
    return name == "kernel" and leaf.ndim >= 2 and leaf.shape[-2] == num_features


def input_kernels(family, weights, num_features: int) -> list:
    """The (runs..., d, k) kernels of the ops on edges leaving vertex 0 (the input) whose
    leading input axis has `num_features` rows: the dense layers that read the columns."""
    import jax

    return [np.asarray(leaf) for edge, w in zip(family.edges, weights) if edge.src == 0
            for path, leaf in jax.tree_util.tree_leaves_with_path(w)
            if _is_input_kernel(path, leaf, num_features)]


def relevance(family, weights, num_features: int) -> np.ndarray | None:
    """r (d,): the norm of each column's row of the input kernels, averaged over any leading
    (run) axes; None when no dense op reads the columns (conv cells, sequences)."""
    kernels = input_kernels(family, weights, num_features)
    if not kernels:
        return None
    sq = sum(np.sum(np.square(k.astype(np.float64)), axis=-1) for k in kernels)  # (..., d)
    norms = np.sqrt(sq)
    return norms.reshape(-1, num_features).mean(axis=0)


def otsu_split(values) -> int:
    """k: the number of largest `values` in the upper group of Otsu's two-group split of
    the sorted values (maximises w_0 w_1 (m_0 - m_1)^2; ties to the smaller upper group)."""
    v = np.sort(np.asarray(values, np.float64))[::-1]
    n = len(v)
    if n < 2:
        raise ValueError(f"otsu_split needs at least 2 values, got {n}")
    best, best_k = -np.inf, 1
    for k in range(1, n):
        upper, lower = v[:k], v[k:]
        score = (k / n) * ((n - k) / n) * (upper.mean() - lower.mean()) ** 2
        if score > best + 1e-12:
            best, best_k = score, k
    return best_k


# --- univariate screening: a second proposal, for wide tables ---------------------------------
# False discovery rate of the univariate proposal (Benjamini-Hochberg), and the largest
# fraction of the columns it may keep to be tried at all.
FDR = 0.05
UNIVARIATE_FRACTION = 0.5


def univariate_pvalues(x, y, classification: bool) -> np.ndarray:
    """p (d,): the p-value of each column of x (n, d) against y (n,) under the F test of
    no association. Classification (y: class indices): one-way ANOVA over the classes,
    F = [sum_c n_c (m_c - m)^2 / (C - 1)] / [sum_c sum_{i in c} (x_i - m_c)^2 / (n - C)]
    on (C - 1, n - C) degrees of freedom. Regression: F = (n - 2) rho^2 / (1 - rho^2) on
    (1, n - 2), rho the Pearson correlation. A constant column gets p = 1. float64."""
    from scipy.special import fdtrc

    x, y = np.asarray(x, np.float64), np.asarray(y)
    n = x.shape[0]
    if classification:
        classes, index = np.unique(y, return_inverse=True)
        c = len(classes)
        if c < 2 or n <= c:
            return np.ones(x.shape[1])
        onehot = np.eye(c)[index]  # (n, C)
        counts = onehot.sum(0)
        means = (onehot.T @ x) / counts[:, None]  # (C, d) class means
        between = (counts[:, None] * (means - x.mean(0)) ** 2).sum(0) / (c - 1)
        within = ((x - means[index]) ** 2).sum(0) / (n - c)
        dfn, dfd = c - 1, n - c
    else:
        if n <= 2:
            return np.ones(x.shape[1])
        xc, yc = x - x.mean(0), np.asarray(y, np.float64) - np.mean(y)
        sxx, syy = (xc ** 2).sum(0), float((yc ** 2).sum())
        rho2 = np.where(sxx > 0, (xc.T @ yc) ** 2 / np.where(sxx > 0, sxx, 1.0)
                        / (syy if syy > 0 else 1.0), 0.0)
        between, within = rho2, (1.0 - rho2) / (n - 2)
        dfn, dfd = 1, n - 2
    positive = within > 0
    f = np.where(positive, between / np.where(positive, within, 1.0), 0.0)
    f = np.where(~positive & (between > 0), np.inf, f)  # a column that separates perfectly
    return np.where(f > 0, fdtrc(dfn, dfd, f), 1.0)


def fdr_columns(p, level: float = FDR) -> np.ndarray:
    """Sorted indices of the columns that the Benjamini-Hochberg procedure at false
    discovery rate `level` rejects: the k smallest p-values, k the largest with
    p_(k) <= level k / d (empty when there is none)."""
    p = np.asarray(p, np.float64)
    d = len(p)
    order = np.argsort(p, kind="stable")
    passed = np.flatnonzero(p[order] <= level * np.arange(1, d + 1) / d)
    return np.sort(order[:passed[-1] + 1]) if passed.size else np.array([], int)


def univariate_columns(x, y, classification: bool, level: float = FDR) -> np.ndarray:
    """The columns of x associated with y on their own (`fdr_columns` of
    `univariate_pvalues`), all columns when none is: the column filter that the
    cross-validation repeats on each fold's training rows."""
    kept = fdr_columns(univariate_pvalues(x, y, classification), level)
    return kept if kept.size else np.arange(np.shape(x)[1])


def propose_univariate(x, y, classification: bool, level: float = FDR,
                       max_fraction: float = UNIVARIATE_FRACTION) -> np.ndarray | None:
    """The univariate proposal (`univariate_columns`), or None when no column or more than
    `max_fraction` of them pass. On a wide table (300 columns, 360 training rows, 25 of them
    informative) the supernet's relevance does not single out the informative columns (its
    input kernels interpolate) and the marginal F tests do (docs/tables.md, session 32); a
    filter that keeps most columns would rarely pay for another retraining round. Columns
    that act only jointly (an XOR) pass no univariate test: the relevance proposal is the
    one for them."""
    d = np.shape(x)[1]
    kept = fdr_columns(univariate_pvalues(x, y, classification), level)
    if kept.size == 0 or kept.size > max_fraction * d:
        return None
    return kept


def take_columns(splits, columns):
    """`splits` (an `enumeration.Splits`) with x_train / x_val / x_test restricted to
    `columns` (indices of the last axis)."""
    cols = np.asarray(columns)
    return splits._replace(**{k: getattr(splits, k)[..., cols]
                              for k in ("x_train", "x_val", "x_test")})


# --- skewed columns: a quantile map to normal scores ----------------------------------------
# Fewest distinct training values, as a fraction of the training rows, of a column that the
# quantile map applies to: codes, ordinal levels and pixel intensities (digits: 17 values
# in 1078 rows) keep their standardised levels.
QUANTILE_DISTINCT = 0.05


def skewness(x) -> np.ndarray:
    """Sample skewness of each column of x (n, d), m3 / m2^1.5 (biased moments, float64);
    0 for a constant column."""
    x = np.asarray(x, np.float64)
    c = x - x.mean(0)
    m2, m3 = (c ** 2).mean(0), (c ** 3).mean(0)
    return np.where(m2 > 0, m3 / np.where(m2 > 0, m2, 1.0) ** 1.5, 0.0)


def skewed_columns(x_train, threshold: float,
                   min_distinct: float = QUANTILE_DISTINCT) -> np.ndarray:
    """Indices of the columns of x_train (n, d) whose |skewness| exceeds `threshold` and
    that hold more than `min_distinct` * n distinct values."""
    x = np.asarray(x_train, np.float64)
    distinct = 1 + (np.diff(np.sort(x, axis=0), axis=0) != 0).sum(0)  # per column, one sort
    return np.flatnonzero((np.abs(skewness(x)) > threshold) & (distinct > min_distinct * len(x)))


def normal_scores(train_col) -> tuple[np.ndarray, np.ndarray]:
    """The quantile map of one training column: its distinct values u (sorted) and their
    normal scores z, z_k = the mean over the rows i (in sorted order) holding u_k of
    Phi^-1((i + 1/2) / n) (tied rows share their mean score, as ranks take midranks)."""
    from scipy.special import ndtri

    v = np.sort(np.asarray(train_col, np.float64))
    n = v.size
    scores = ndtri((np.arange(n) + 0.5) / n)
    u, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    return u, np.bincount(inverse, scores) / counts


def quantile_normalise(splits, columns):
    """`splits` with each column in `columns` mapped to normal scores through its training
    quantiles (`normal_scores`; linear between the training values, clamped beyond them,
    like the binning of gradient-boosted trees) and standardised again on the training
    rows; the other columns unchanged. A monotone transform of a column (exp, a power)
    leaves its training values' result unchanged; a two-valued column ends as plain
    standardisation leaves it."""
    xs = {k: np.array(getattr(splits, k), np.float64) for k in ("x_train", "x_val", "x_test")}
    for j in np.asarray(columns, int):
        u, z = normal_scores(xs["x_train"][:, j])
        mapped = {k: np.interp(x[:, j], u, z) for k, x in xs.items()}
        mean, std = mapped["x_train"].mean(), mapped["x_train"].std()
        for k, x in xs.items():
            x[:, j] = (mapped[k] - mean) / (std if std > 0 else 1.0)
    dtype = np.asarray(splits.x_train).dtype
    return splits._replace(**{k: _like(getattr(splits, k), x.astype(dtype))
                              for k, x in xs.items()})


def _like(array, values):
    """`values` as the array type of `array` (jax arrays stay jax arrays)."""
    if isinstance(array, np.ndarray):
        return values
    import jax.numpy as jnp

    return jnp.asarray(values)


def column_mask(columns, num_features: int) -> np.ndarray:
    """The float32 mask (d,) that is 1 on `columns` and 0 elsewhere."""
    mask = np.zeros(num_features, np.float32)
    mask[np.asarray(columns, int)] = 1.0
    return mask


def mask_columns(splits, mask):
    """`splits` with every column whose `mask` entry is 0 set to 0 (on standardised data,
    its training mean), the shapes unchanged: x * mask on x_train / x_val / x_test."""
    return splits._replace(**{k: getattr(splits, k) * mask
                              for k in ("x_train", "x_val", "x_test")})


def fan_in_rescale(family, weights, mask):
    """The model on the columns of `mask` (d,) with the same shapes: the rows of the input
    kernels (`input_kernels`: the dense ops on edges leaving the input) times
    mask_j sqrt(d / k), k = sum(mask). A kernel drawn at fan-in d (Lecun normal, flax's
    Dense) then has the rows the k-column model would draw at fan-in k, the dropped rows
    0; on data masked by `mask_columns` those rows get no gradient, and AdamW's decay keeps
    them 0, so the model trains as the k-column one (`take_columns`) from another draw
    of the same initial distribution. A mask of ones leaves the weights exactly as they
    are (the factor is 1.0). jittable."""
    import jax
    import jax.numpy as jnp

    mask = jnp.asarray(mask)
    d = mask.shape[-1]
    factor = mask * jnp.sqrt(d / jnp.sum(mask))

    def scale(path, leaf):
        if _is_input_kernel(path, leaf, d):
            return leaf * factor.astype(leaf.dtype)[:, None]
        return leaf

    return tuple(jax.tree_util.tree_map_with_path(scale, w) if edge.src == 0 else w
                 for edge, w in zip(family.edges, weights))


def propose(r, separation: float = SEPARATION) -> np.ndarray | None:
    """Sorted indices of the columns to keep, or None (keep all): Otsu's split of log r,
    proposed when min(kept r) > max(dropped r) and min(kept r) >= `separation` x max(dropped r)."""
    r = np.asarray(r, np.float64)
    if r.ndim != 1 or len(r) < 2 or not np.all(np.isfinite(r)) or np.any(r <= 0):
        return None
    if not separation >= 1:
        raise ValueError(f"separation must be a number >= 1, got {separation!r}")
    order = np.argsort(-r, kind="stable")
    k = otsu_split(np.log(r))
    kept, dropped = r[order[:k]], r[order[k:]]
    if kept.min() <= dropped.max() or kept.min() < separation * dropped.max():
        return None
    return np.sort(order[:k])
