"""Ground truth for structure search: train discrete structures from scratch (method.md M2).

A discrete structure is a simplex vertex Gamma = {gamma^{j,k}} of the supernet: exactly one
basis function per edge. Training the supernet with Gamma fixed at a vertex trains exactly
the stand-alone discrete model (an op with gamma_l = 0 adds nothing to f and gets a zero
gradient), so a batch of structures is trained by one program, `jax.vmap` over vertices
and over seeds. `train_structures` is that program (pure; the caller jits). The task
strategy (`Classification` / `Regression`) supplies the training loss and the reported
metric: validation / test accuracy, or RMSE in the target's original units.

An enumeration *table* (JSON, `structsel/data/enumeration_<space>_<dataset>.json`) lists
every structure of a space with its parameter count and the mean / std over seeds of the
validation and test metric; `regret_and_rank` scores a selected structure against it.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from structsel.search import features

DATA_DIR = pathlib.Path(__file__).resolve().parent.parent / "data"


@dataclasses.dataclass(frozen=True)
class Classification:
    """Softmax cross-entropy training; metric = accuracy (higher is better)."""

    num_classes: int
    name: str = "classification"
    metric_name: str = "accuracy"
    higher_is_better: bool = True

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def loss(self, out, y):
        """-1/n sum_i log softmax(f(x_i))_{y_i}."""
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    def row_losses(self, out, y):
        """The per-row terms of `loss`: -log softmax(f(x_i))_{y_i}, shape (n,)."""
        return optax.softmax_cross_entropy_with_integer_labels(out, y)

    def metric(self, out, y):
        """Accuracy 1/n sum_i [argmax f(x_i) = y_i]."""
        return jnp.mean(jnp.argmax(out, -1) == y)

    def ensemble(self, outs):
        """The deep ensemble of S models' logits `outs` (S, ..., C): log (1/S sum_s
        softmax(f_s(x))), the log of the averaged class probabilities."""
        return jax.nn.logsumexp(jax.nn.log_softmax(outs, -1), axis=0) - jnp.log(outs.shape[0])


@dataclasses.dataclass(frozen=True)
class Regression:
    """Squared-error training on the standardised target; metric = RMSE in original units."""

    target_std: float = 1.0
    name: str = "regression"
    metric_name: str = "rmse"
    higher_is_better: bool = False

    @property
    def num_outputs(self) -> int:
        return 1

    def loss(self, out, y):
        """1/n sum_i (f(x_i) - y_i)^2 (standardised units)."""
        return jnp.mean((out[..., 0] - y) ** 2)

    def row_losses(self, out, y):
        """The per-row terms of `loss`: (f(x_i) - y_i)^2, shape (n,)."""
        return (out[..., 0] - y) ** 2

    def metric(self, out, y):
        """RMSE = target_std * sqrt(1/n sum_i (f(x_i) - y_i)^2)."""
        return self.target_std * jnp.sqrt(jnp.mean((out[..., 0] - y) ** 2))

    def ensemble(self, outs):
        """The deep ensemble of S models' predictions `outs` (S, ..., 1): their mean."""
        return jnp.mean(outs, axis=0)


def task_of(dataset) -> Classification | Regression:
    """The task strategy of a `structsel.data.Dataset`."""
    if dataset.task == "classification":
        return Classification(int(dataset.num_classes))
    return Regression(float(dataset.target_scale[1]))


class Splits(NamedTuple):
    """Train / validation / test arrays (a pytree, so it can be passed through jit)."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any


def splits_of(dataset, reshape=None) -> Splits:
    """The arrays of a `Dataset` as jnp arrays; `reshape(x)` adapts features (e.g. to sequences)."""
    reshape = reshape or (lambda x: x)
    return Splits(*(jnp.asarray(reshape(a)) if i % 2 == 0 else jnp.asarray(a)
                    for i, a in enumerate(dataset[:6])))


SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """AdamW from scratch: `steps` steps on minibatches of `batch_size` rows (None: full
    batch), decoupled weight decay `weight_decay`.

    Learning rate: `learning_rate` throughout ("constant"), or a linear warm-up from 0 over
    `warmup_steps` then a cosine decay to 0 at `steps` ("cosine", optax
    `warmup_cosine_decay_schedule`). Early stopping: every `eval_every` steps (0: never)
    the validation metric is computed and the weights with the best one so far are kept
    (ties go to the later step); the last evaluation is at step `steps`. The defaults are
    the original trainer, bit for bit.
    """

    steps: int = 300
    learning_rate: float = 1e-2
    batch_size: int | None = None
    weight_decay: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    eval_every: int = 0

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ValueError(f"batch_size must be None or an int >= 1, got {self.batch_size!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if (isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int)
                or not 0 <= self.warmup_steps < self.steps):
            raise ValueError(f"warmup_steps must be an int in 0..steps-1 ({self.steps - 1}), "
                             f"got {self.warmup_steps!r}")
        if self.warmup_steps and self.schedule == "constant":
            raise ValueError("warmup_steps needs schedule='cosine' (the constant schedule has "
                             f"no warm-up), got warmup_steps={self.warmup_steps}")
        if (isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int)
                or not 0 <= self.eval_every <= self.steps):
            raise ValueError(f"eval_every must be an int in 0..steps ({self.steps}); 0 turns "
                             f"early stopping off, got {self.eval_every!r}")

    def optimizer(self) -> optax.GradientTransformation:
        """optax.adamw with this learning-rate schedule and weight decay."""
        lr = self.learning_rate
        if self.schedule == "cosine":
            lr = optax.warmup_cosine_decay_schedule(0.0, self.learning_rate, self.warmup_steps,
                                                    self.steps, 0.0)
        return optax.adamw(lr, weight_decay=self.weight_decay)


def forward(family, structure):
    """(w, x, key=None) -> f(w, x) at a fixed `structure`: a Gamma (tuple over edges of
    arrays (K_e,), any point of the cube, `Family.apply`) or a vertex choice (int array
    (E,), one op index per edge, `Family.apply_vertex`: only the chosen ops are computed).
    `key`: None (deterministic), or a key for stochastic ops (dropout) in training."""
    if isinstance(structure, (tuple, list)):
        return lambda w, x, key=None: family.apply(w, structure, x, key=key)
    return lambda w, x, key=None: family.apply_vertex(w, structure, x, key=key)


def stochastic(family) -> bool:
    """Whether an op of `family` is stochastic in training (a dropout rate > 0)."""
    return any(dict(op.kwargs).get("dropout", 0) for edge in family.edges for op in edge.ops)


_DROPOUT_STREAM = 0xD809  # fold_in tag of the dropout keys, apart from the minibatch keys


def fit(family, task, config: TrainConfig, structure, weights, data: Splits, *, key):
    """AdamW on the training loss at a fixed structure Gamma, from `weights`.

    w_{t+1} = AdamW(w_t, grad_w loss(f(w_t, Gamma, x_B), y_B)), minibatches B_t drawn with
    fold_in(key, t) (full batch if config.batch_size is None). `structure`: a Gamma or a
    vertex choice (see `forward`). Returns (weights, losses): the final weights, or with
    early stopping (config.eval_every > 0) the best-validation ones (`fit_with_stopping`).
    """
    weights, losses, _ = fit_with_stopping(family, task, config, structure, weights, data,
                                           key=key)
    return weights, losses


def fit_with_stopping(family, task, config: TrainConfig, structure, weights, data: Splits, *,
                      key, val_path: bool = False):
    """`fit`, also returning the step whose weights are returned (config.steps without
    early stopping): (weights, losses, stop). With `val_path` (early stopping only) also
    the model's validation outputs after every block, (T, val rows, outputs), T =
    ceil(steps / k): the checkpoints the stop chose among (`crossval.held_out_stopping`
    re-chooses it on other rows).

    Early stopping in jittable form: the steps run as an outer `lax.scan` over blocks of
    k = config.eval_every steps (an inner `lax.scan`), plus a last block of steps mod k;
    after each block the validation metric m_t is computed and the carried best weights
    are replaced when s m_t >= s m_best (s = +1 for accuracy, -1 for RMSE).
    """
    opt = config.optimizer()
    n = data.x_train.shape[0]
    batch = config.batch_size if config.batch_size is not None and config.batch_size < n else None
    apply = forward(family, structure)
    dropout = stochastic(family)  # training applies the ops with a key (evaluation never)

    def loss_fn(w, x, y, k):
        return task.loss(apply(w, x, key=k), y)

    def body(carry, step):
        w, opt_state = carry
        if batch is None:
            x, y = data.x_train, data.y_train
        else:
            idx = jax.random.randint(jax.random.fold_in(key, step), (batch,), 0, n)
            x, y = data.x_train[idx], data.y_train[idx]
        k = (jax.random.fold_in(jax.random.fold_in(key, step), _DROPOUT_STREAM) if dropout
             else None)
        loss, grads = jax.value_and_grad(loss_fn)(w, x, y, k)
        updates, opt_state = opt.update(grads, opt_state, w)
        return (optax.apply_updates(w, updates), opt_state), loss

    state = (weights, opt.init(weights))
    if val_path and not config.eval_every:
        raise ValueError("val_path needs early stopping (config.eval_every > 0): the "
                         "checkpoints are its blocks")
    if not config.eval_every:
        (weights, _), losses = jax.lax.scan(body, state, jnp.arange(config.steps))
        return weights, losses, jnp.asarray(config.steps)

    sign = 1.0 if task.higher_is_better else -1.0
    k = config.eval_every
    blocks, rest = divmod(config.steps, k)

    def run_block(carry, start, size):
        state, best = carry
        state, losses = jax.lax.scan(body, state, start + jnp.arange(size))
        out = apply(state[0], data.x_val)
        score = sign * task.metric(out, data.y_val)
        better = score >= best[1]
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old),
                            (state[0], score, start + size), best)
        return (state, best), (losses, out if val_path else None)

    best = (weights, -jnp.inf, jnp.asarray(0))
    carry, (losses, path) = jax.lax.scan(lambda c, s: run_block(c, s, k), (state, best),
                                         k * jnp.arange(blocks))
    losses = losses.reshape(-1)
    if rest:
        carry, (last, last_out) = run_block(carry, jnp.asarray(blocks * k), rest)
        losses = jnp.concatenate([losses, last])
        if val_path:
            path = jnp.concatenate([path, last_out[None]])
    _, (weights, _, stop) = carry
    return (weights, losses, stop, path) if val_path else (weights, losses, stop)


def train_structure(family, task, config: TrainConfig, structure, data: Splits, *, key,
                    outputs: bool = False, columns=None, val_path: bool = False):
    """Trains the discrete model at a vertex from scratch (w_0 ~ init(key)); its metrics.

    `structure`: the vertex as a one-hot Gamma or as a choice (see `forward`).
    Returns {"train_loss", "val_metric", "test_metric"} (scalars), "diverged_at" (the
    first step whose training loss is not finite, -1 if none: `check_diverged`),
    "stop_step" (the step of the returned weights) with early stopping, and with `outputs`
    the model's outputs "val_out" / "test_out" on the validation and test rows (ensembles).
    `val_path` (with early stopping): also "val_path", the validation outputs at every
    checkpoint (`fit_with_stopping`), for stopping that does not see the rows scored.
    `columns`: None, or a 0/1 mask (d,) of the table's columns: the model on those columns
    alone (`features.mask_columns` on the data, `features.fan_in_rescale` on the initial
    weights), in the shapes of all columns so that one compiled program serves both.
    """
    k_init, k_batch = jax.random.split(key)
    if columns is not None:
        data = features.mask_columns(data, columns)
    weights = family.init(k_init, data.x_train[:1])
    if columns is not None:
        weights = features.fan_in_rescale(family, weights, columns)
    weights, losses, stop, *path = fit_with_stopping(family, task, config, structure, weights,
                                                     data, key=k_batch, val_path=val_path)
    apply = forward(family, structure)
    finite = jnp.isfinite(losses)
    out = {"train_loss": losses[-1],
           "diverged_at": jnp.where(finite.all(), -1, jnp.argmin(finite)),
           "val_metric": task.metric(apply(weights, data.x_val), data.y_val),
           "test_metric": task.metric(apply(weights, data.x_test), data.y_test)}
    if config.eval_every:
        out["stop_step"] = stop
    if outputs:
        out["val_out"] = apply(weights, data.x_val)
        out["test_out"] = apply(weights, data.x_test)
    if val_path:
        out["val_path"] = path[0]
    return out


def check_diverged(scores: dict, labels: Sequence, learning_rate: float) -> None:
    """FloatingPointError naming the first training of `scores` (arrays (structures, seeds)
    from `train_structures`; labels: one per structure) whose loss became non-finite: its
    metrics would be those of NaN weights (an accuracy of argmax over NaN), not a result."""
    diverged = np.asarray(scores.get("diverged_at", -1))
    if diverged.ndim != 2 or not (diverged >= 0).any():
        return
    i, seed = np.argwhere(diverged >= 0)[0]
    raise FloatingPointError(
        f"from-scratch training diverged: non-finite training loss at step {diverged[i, seed]} "
        f"(structure {labels[i]}, seed {seed}; {int((diverged >= 0).sum())} of "
        f"{diverged.size} trainings diverged); lower the budget's learning_rate "
        f"(now {learning_rate:g})")


def train_structures(family, task, config: TrainConfig, structures, data: Splits, *, keys,
                     outputs: bool = False, valid=None, columns=None, val_path: bool = False):
    """`train_structure` over a batch of vertices and `keys`; metrics (num_structures, num_seeds).

    `structures` is either Gamma with a leading batch axis on every leaf (the supernet at
    each vertex, `jax.vmap` over structures: every op of every edge is computed), or
    choices, an int array (num_structures, E) (`lax.map` over structures and
    `Family.apply_vertex`: only the chosen op of each edge is computed, K_e times fewer
    FLOPs per edge where the ops cost alike). Seeds are vmapped in both. Same numbers up
    to float reassociation (tested).

    `valid` (choices only): a bool array (num_structures,); a structure marked False is
    not trained (`lax.cond` inside the map skips it) and its rows are zeros. A caller
    that pads a batch to a fixed size to reuse one compiled program marks the padding
    rows so, instead of training them for nothing. `columns`, `val_path`: see
    `train_structure`.
    """
    def per_structure(structure):
        return jax.vmap(lambda k: train_structure(family, task, config, structure, data,
                                                  key=k, outputs=outputs, columns=columns,
                                                  val_path=val_path))(keys)
    if isinstance(structures, (tuple, list)):
        if valid is not None:
            raise ValueError("valid applies to choices (lax.map over structures), not to "
                             "a batch of Gammas")
        return jax.vmap(per_structure)(tuple(structures))
    structures = jnp.asarray(structures)
    if valid is None:
        return jax.lax.map(per_structure, structures)
    shapes = jax.eval_shape(per_structure, structures[0])

    def skipped(_):
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    return jax.lax.map(lambda sv: jax.lax.cond(sv[1], per_structure, skipped, sv[0]),
                       (structures, jnp.asarray(valid, bool)))


# --- enumeration tables -------------------------------------------------------------------

def table_path(space: str, dataset: str) -> pathlib.Path:
    """Where the committed table of `space` x `dataset` lives."""
    return DATA_DIR / f"enumeration_{space}_{dataset}.json"


def make_table(*, space: str, dataset: str, op_names: Sequence[Sequence[str]], choices,
               params, val, test, higher_is_better: bool, settings: dict,
               command: str) -> dict:
    """The table dict: one row per structure with params, mean / std over seeds and the
    per-seed values (`val`, `test`: what a tabular benchmark returns for one query).

    `val`, `test`: arrays (num_structures, num_seeds); `choices`: (num_structures, num_edges).
    """
    choices, val, test = np.asarray(choices), np.asarray(val), np.asarray(test)
    rows = []
    for i, choice in enumerate(choices):
        rows.append({"choice": [int(c) for c in choice],
                     "ops": [op_names[e][int(c)] for e, c in enumerate(choice)],
                     "params": int(params[i]),
                     "val_mean": float(val[i].mean()), "val_std": float(val[i].std()),
                     "test_mean": float(test[i].mean()), "test_std": float(test[i].std()),
                     "val": [float(v) for v in val[i]], "test": [float(v) for v in test[i]]})
    return {"space": space, "dataset": dataset, "higher_is_better": bool(higher_is_better),
            "num_structures": len(rows), "num_seeds": int(val.shape[1]),
            "settings": settings, "command": command, "rows": rows}


def save_table(table: dict, path: str | pathlib.Path) -> pathlib.Path:
    """Writes a table as JSON."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path


def load_enumeration_table(space: str, dataset: str,
                           path: str | pathlib.Path | None = None) -> dict | None:
    """The committed table of `space` x `dataset` (or the file `path`); None if there is none."""
    path = pathlib.Path(path) if path is not None else table_path(space, dataset)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def regret_and_rank(table: dict, choice: Sequence[int]) -> dict:
    """Regret and rank of `choice` by mean test metric in `table`.

    regret = best test metric - selected one (accuracy), or selected - best (RMSE): >= 0;
    rank = 1 + number of structures strictly better than the selected one (1 = best).
    """
    rows = table["rows"]
    sign = 1.0 if table["higher_is_better"] else -1.0
    scores = np.array([sign * r["test_mean"] for r in rows])
    key = [int(c) for c in choice]
    match = [i for i, r in enumerate(rows) if r["choice"] == key]
    if not match:
        raise ValueError(f"choice {key} is not a structure of the table "
                         f"{table['space']} x {table['dataset']}")
    s = scores[match[0]]
    return {"regret": float(scores.max() - s), "rank": int(np.sum(scores > s)) + 1,
            "table_test_metric": float(rows[match[0]]["test_mean"]),
            "best_test_metric": float(sign * scores.max()),
            "num_structures": len(rows)}


class TableLookup:
    """A tabular benchmark (NAS-Bench-201 style) over an enumeration table.

    Answers the black-box query of the search baselines, `reward(choices, key=)`, with the
    stored validation metric of one of the table's seeds, drawn uniformly per query: the
    same distribution as training the structure from scratch with a fresh seed, restricted
    to the seeds the table holds, at no training cost. Rewards are the metric (accuracy) or
    -metric (RMSE), larger is better, as `runner.Evaluator.reward` returns them.
    """

    def __init__(self, table: dict):
        rows = table["rows"]
        if any("val" not in r for r in rows):
            raise ValueError(f"table {table['space']} x {table['dataset']} has no per-seed "
                             "values (key 'val'); regenerate it with structsel enumerate")
        self.table, self.count = table, 0
        self._sign = 1.0 if table["higher_is_better"] else -1.0
        self._index = {tuple(r["choice"]): i for i, r in enumerate(rows)}
        self._val = np.array([r["val"] for r in rows], dtype=np.float64)

    def reward(self, choices, *, key) -> np.ndarray:
        """sign * val metric of seed s_i ~ U{0..S-1} for every structure a_i of `choices`."""
        choices = np.asarray(choices)
        try:
            rows = np.array([self._index[tuple(int(c) for c in a)] for a in choices])
        except KeyError as err:
            raise ValueError(f"choice {list(err.args[0])} is not a structure of the table "
                             f"{self.table['space']} x {self.table['dataset']}") from None
        seeds = np.asarray(jax.random.randint(key, (len(rows),), 0, self._val.shape[1]))
        self.count += len(rows)
        return self._sign * self._val[rows, seeds]
