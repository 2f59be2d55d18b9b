"""Cross-validated decisions on small tables (budget `cv_rows`).

On a small table the search's decisions (which retrained candidate, whether the
screening's column subset, whether the network or the linear model) are made on a
validation split of 30-200 rows, where one row is 0.5-3 accuracy points: session 24
measured the selected candidate 1.5-3 points below the best candidate on test on wine and
two fresh tables. With `cv_rows` > 0 and fewer training + validation rows than that, each
decision is made instead on the out-of-fold outputs of K folds of the pooled training +
validation rows: K times the validation rows, K times the retraining.

The folds keep the split's shapes (one compiled program for all of them): every fold
validates on as many rows as the split's validation set and trains on the rest of the
pool, as many as its training set. Fold 0 *is* the split (its models are the ones
returned); folds 1..K-1 validate on consecutive blocks of a seeded permutation of the
training rows, K = ceil(pool / validation rows) (at most `MAX_FOLDS`), so every pooled
row is validated once; the last fold's block wraps around onto rows fold 0 validated
already, which are counted once (fold 0's). The returned model is unchanged: fold 0's
models, trained on the split's training rows.

With early stopping (budget `eval_every`) each model keeps the checkpoint with the best
metric on its fold's validation rows, so its score on those rows is optimistic, and a
reference without a tuned stop (the linear model) is not. The out-of-fold outputs are
therefore taken at the stop the *other* folds choose (`held_out_stopping`, from every
checkpoint's outputs that the training returns with `Evaluator(val_path=True)`); the
returned models keep their own stop.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from structsel.search import references

MAX_FOLDS = 8


class Plan(NamedTuple):
    """The folds of a split's pooled training + validation rows (pool index: training
    rows first, then validation rows, in the split's order)."""

    train: np.ndarray    # (K, n_train) pool indices each fold trains on
    val: np.ndarray      # (K, n_val) pool indices each fold validates on
    counted: np.ndarray  # (K, n_val) bool: the row's out-of-fold output is pooled
    seed: int

    @property
    def folds(self) -> int:
        return int(self.train.shape[0])

    @property
    def rows(self) -> int:
        """Pooled out-of-fold rows."""
        return int(self.counted.sum())


def applies(n_train: int, n_val: int, cv_rows: int) -> bool:
    """Whether a split of n_train / n_val rows is cross-validated under budget `cv_rows`
    (0: never): fewer than `cv_rows` training + validation rows."""
    return cv_rows > 0 and n_train + n_val < cv_rows and n_val >= 1 and n_train >= 1


def plan(n_train: int, n_val: int, *, seed: int) -> Plan:
    """The folds of a split with n_train training and n_val validation rows (module
    docstring). Deterministic in `seed`."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f"a split to cross-validate needs training and validation rows, got "
                         f"n_train={n_train}, n_val={n_val}")
    pool = n_train + n_val
    k = min(MAX_FOLDS, max(2, math.ceil(pool / n_val)))
    order = np.concatenate([n_train + np.arange(n_val),
                            np.random.default_rng(seed).permutation(n_train)])
    positions = np.arange(k)[:, None] * n_val + np.arange(n_val)[None, :]
    val = order[positions % pool]
    counted = positions < pool
    train = np.stack([np.setdiff1d(np.arange(pool), v) for v in val])
    return Plan(train, val, counted, seed)


def fold_splits(data, p: Plan, k: int):
    """`data` (`enumeration.Splits`) with fold k's training and validation rows; the test
    rows unchanged. Fold 0 gives the split's arrays back in the split's order."""
    x = np.concatenate([np.asarray(data.x_train), np.asarray(data.x_val)])
    y = np.concatenate([np.asarray(data.y_train), np.asarray(data.y_val)])
    return data._replace(x_train=jnp.asarray(x[p.train[k]]), y_train=jnp.asarray(y[p.train[k]]),
                         x_val=jnp.asarray(x[p.val[k]]), y_val=jnp.asarray(y[p.val[k]]))


def pooled_targets(data, p: Plan) -> np.ndarray:
    """The targets of the pooled out-of-fold rows, in the order `pool` concatenates them."""
    y = np.concatenate([np.asarray(data.y_train), np.asarray(data.y_val)])
    return y[p.val[p.counted]]


def pool(fold_outputs, p: Plan) -> np.ndarray:
    """Out-of-fold outputs pooled over the folds: `fold_outputs` (K, ..., n_val, C) (fold
    k's outputs on its validation rows) -> (..., rows, C), the counted rows fold by fold."""
    out = np.asarray(fold_outputs)
    out = np.moveaxis(out, 0, -3)  # (..., K, n_val, C)
    return out[..., p.counted, :]


def scores(task, outputs, y) -> tuple[np.ndarray, np.ndarray]:
    """(metric, loss) of outputs (..., rows, C) on targets y (rows,): the task's
    validation metric and loss, per leading index."""
    out = jnp.asarray(outputs, jnp.float32)
    lead = out.shape[:-2]
    flat = out.reshape((-1,) + out.shape[-2:])
    y = jnp.asarray(y)
    metric = np.asarray([float(task.metric(o, y)) for o in flat]).reshape(lead)
    loss = np.asarray([float(task.loss(o, y)) for o in flat]).reshape(lead)
    return metric, loss


def held_out_stopping(task, paths, y_val) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold outputs whose early stop did not see the rows they are scored on.

    `paths` (K, N, S, T, n_val, C): fold k's models (structure n, seed s) on fold k's
    validation rows at each of the T early-stopping checkpoints (`Evaluator(val_path=)`);
    `y_val` (K, n_val) the folds' validation targets. Each model's own stop chose the
    checkpoint with the best metric on the very rows it is then scored on, an optimistic
    score that a reference without a tuned stop (the linear model) does not get. Here fold
    k's model (n, s) is stopped instead at the checkpoint t with the best mean metric
    m[j, n, s, t] of the other folds' models of the same structure and seed on their own
    validation rows (j != k; ties to the later checkpoint, as the stop itself; the means
    rounded to 1e-9 so that float sums of equal counts tie). Returns (outputs (K, N,
    n_val, C): the seeds' deep ensemble (`task.ensemble`) at those checkpoints, to `pool`;
    checkpoints (K, N, S): the chosen indices t)."""
    paths = jnp.asarray(paths, jnp.float32)
    k, n, s, t = paths.shape[:4]
    if k < 2:
        raise ValueError(f"held-out stopping needs at least 2 folds, got paths of shape "
                         f"{paths.shape}")
    y_val = jnp.asarray(y_val)
    per_fold = jax.vmap(jax.vmap(jax.vmap(task.metric, (0, None)), (0, None)), (0, None))
    m = np.stack([np.asarray(per_fold(paths[i], y_val[i]), np.float64) for i in range(k)])
    sign = 1.0 if task.higher_is_better else -1.0
    others = np.einsum("ij,j...->i...", (1.0 - np.eye(k)) / (k - 1), m)  # (K, N, S, T)
    score = np.round(sign * others, 9)
    chosen = t - 1 - np.argmax(score[..., ::-1], axis=-1)  # the last best checkpoint
    picked = np.take_along_axis(np.asarray(paths), chosen[..., None, None, None], axis=3)[:, :, :, 0]
    ens = jax.vmap(jax.vmap(task.ensemble))(jnp.asarray(picked))  # (K, N, n_val, C)
    return np.asarray(ens), chosen


def reference_outputs(task, data, p: Plan) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold outputs (rows, C) of the linear model and of the constant predictor,
    each fitted on every fold's training rows (`references.fit_linear`,
    `references.constant_outputs`), pooled like the structures' (`pool`)."""
    flat = references.as_table(data)
    lin, const = [], []
    for k in range(p.folds):
        fold = fold_splits(flat, p, k)
        params = references.jitted_fit_linear(task)(fold.x_train, fold.y_train)
        lin.append(np.asarray(references.linear_outputs(params, fold.x_val, task.num_outputs)))
        const.append(np.asarray(references.constant_outputs(task, fold.y_train,
                                                            fold.x_val.shape[0]), np.float32))
    return pool(np.stack(lin), p), pool(np.stack(const), p)


def record(p: Plan) -> dict:
    """What summary.json records of the folds."""
    return {"folds": p.folds, "rows": p.rows, "validation_rows": int(p.val.shape[1]),
            "training_rows": int(p.train.shape[1]), "seed": p.seed}
