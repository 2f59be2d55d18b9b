"""The search driver behind `structsel search` / `structsel enumerate` (entry-point layer).

Turns typed arguments into a `Problem` (space + task + data + budget), runs a method of
`structsel.search.methods.METHODS`, retrains the selected structure from scratch and
writes the workdir: config.json, metrics.jsonl, summary.json, structure.json and two
PNGs (the selected cell, gamma over time). Like the experiments, this layer owns the jit
boundary: the `Evaluator` jits the vmapped from-scratch trainer once per batch shape.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import math
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from structsel import data as data_lib
from structsel import devices as devices_lib
from structsel import runs as runs_lib
from structsel.runs import Run
from structsel.search import crossval, enumeration, features, references, spaces
from structsel.search.enumeration import TrainConfig, train_structures


# XLA's RngBitGenerator ("rbg") instead of threefry: the variational objective draws one
# normal per weight leaf, and inlined threefry made its compilation 2-3x slower.
PRNG_IMPL = "rbg"


def prng_key(seed: int) -> jax.Array:
    """The typed PRNG key of a run (impl PRNG_IMPL)."""
    return jax.random.key(seed, impl=PRNG_IMPL)


BATCHINGS = ("auto", "vmap", "map")

# Cross-validated tables: a screening trial retrains this many of the candidates, the best
# out of fold on all columns (`_out_of_fold_ranking`), on the proposed columns, split and
# folds, instead of all of them. Measured on the 57 trials recorded in sessions 30-32
# (39 of the two proposals, 18 of the relevance one alone; tables of 400-1000 rows with
# 1-6 candidates): the best candidate on the proposed columns was the first or second on
# all columns in 52, the 3rd or 4th in 5 trials, all 5 rejected, so the 2 best make
# every one of the 57 decisions (keep or not, and which candidate) as all candidates did;
# the best alone would have changed 16 of them. Rerun on iris and wine (6 trials), 2
# decisions changed: the old rule had kept a candidate 3rd on all columns (session 33).
SCREENING_CANDIDATES = 2


@dataclasses.dataclass(frozen=True)
class Budget:
    """Compute settings of a search: widths, step counts, evaluation budget."""

    name: str = "default"
    width: int = 16              # hidden width / channels of the cell
    train_steps: int = 200       # Adam steps of a discrete model trained from scratch
    learning_rate: float = 1e-2  # of those steps (the peak of a cosine schedule)
    batch_size: int = 0          # minibatch of those steps (0: full batch)
    weight_decay: float = 1e-4   # AdamW's decoupled weight decay of those steps
    schedule: str = "constant"   # learning rate: "constant" or "cosine" (warm-up, decay to 0)
    warmup_steps: int = 0        # linear warm-up steps of the cosine schedule
    eval_every: int = 0          # early stopping: validation metric every k steps (0: off)
    search_steps: int = 150      # outer steps of the gradient methods
    inner_steps: int = 5         # inner steps per outer step
    search_lr: float = 3e-2      # Adam step on the structure parameters
    # rows per inner step of a gradient search (and per hypergradient's inner term), drawn
    # without replacement; 0 (or >= the training rows): the full training set
    search_batch_size: int = 0
    evaluations: int = 0         # black-box evaluations (0: the gradient methods' compute)
    retrain_seeds: int = 3       # seeds of the final from-scratch retrain
    # width of the space in which the proposals are retrained and returned (0: `width`):
    # the search runs on a narrow proxy of the space, the selection is trained wider
    # (as DARTS searches 8 cells of 16 channels and trains 20 cells of 36)
    retrain_width: int = 0
    # dropout rate on the hidden units of the retrained model's residual blocks (space
    # tabular only; the search's supernet is never dropped out)
    dropout: float = 0.0
    # the returned model is the deep ensemble of the retrain_seeds models (their averaged
    # class probabilities / predictions), selected by the ensemble's validation metric
    ensemble: bool = False
    # tables: retrain the selected structure on the columns that the search's input
    # relevances set clearly apart (`structsel.search.features`), kept when better on
    # validation
    feature_screening: bool = False
    # small tables: with fewer training + validation rows than this (0: never), the
    # choice of the candidate, of the screening's columns and between the selection and
    # the linear model are made on out-of-fold outputs of K folds of those rows
    # (`structsel.search.crossval`; only with `ensemble`, whose outputs the folds score);
    # the returned models are unchanged
    cv_rows: int = 0
    # tables: columns whose |skewness| on the training rows exceeds this (0: none), with
    # more than 5 % distinct values, are mapped to normal scores through their training
    # quantiles (`features.quantile_normalise`) for the networks; the references keep the
    # standardised columns
    quantile_skew: float = 0.0
    # tables read from a file: each numeric column with more distinct training values
    # than this (0: off) also gets one 0/1 column per training-quantile bin, this many
    # bins (`data.fit_encoding`), for every model of the run, the references included
    numeric_bins: int = 0
    # tables (vector spaces) without cross-validation: after the screening, the returned
    # model is retrained with this many piecewise-linear columns of training-quantile bins
    # (`data.piecewise_linear`) next to each number with more distinct training values
    # (0: off), kept when its validation loss is lower (`_try_pieces`)
    numeric_ple: int = 0
    chunk: int = 32              # structures per call of the jitted evaluator
    mnist1d_samples: int = 4000  # size of the generated mnist1d set
    # restarts of a gradient search: one vmapped program, or lax.map (one after the other);
    # "auto": map for conv cells on a CPU (measured faster there), vmap otherwise.
    batching: str = "auto"

    def __post_init__(self):
        if self.batching not in BATCHINGS:
            raise ValueError(f"budget batching must be one of {BATCHINGS}, got {self.batching!r}")
        if self.schedule not in enumeration.SCHEDULES:
            raise ValueError(f"budget schedule must be one of {enumeration.SCHEDULES}, "
                             f"got {self.schedule!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "batching", "schedule"):
                continue
            if f.type == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"budget {f.name} must be 0 or 1, got {value!r}")
                continue
            lower = 0 if f.name in ("batch_size", "evaluations", "warmup_steps",
                                    "eval_every", "search_batch_size", "retrain_width",
                                    "cv_rows", "numeric_bins", "numeric_ple") else 1
            if f.type in ("int",) and (not isinstance(value, int) or value < lower):
                raise ValueError(f"budget {f.name} must be an int >= {lower}, got {value!r}")
            if f.name in ("numeric_bins", "numeric_ple") and value == 1:
                raise ValueError(f"budget {f.name} must be 0 (off) or an int >= 2, got 1")
            if f.name == "quantile_skew":
                if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                    raise ValueError(f"budget quantile_skew must be a finite number >= 0 "
                                     f"(0: off), got {value!r}")
            elif f.name == "weight_decay":
                if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                    raise ValueError(f"budget weight_decay must be a finite number >= 0, "
                                     f"got {value!r}")
            elif f.name == "dropout":
                if not (isinstance(value, (int, float)) and 0 <= value < 1):
                    raise ValueError(f"budget dropout must be a number in [0, 1), "
                                     f"got {value!r}")
            elif f.type in ("float",) and not (isinstance(value, (int, float))
                                               and 0 < value < math.inf):
                raise ValueError(f"budget {f.name} must be a finite number > 0, got {value!r}")
        self.train  # TrainConfig's checks (warm-up and evaluation period against the steps)

    @property
    def train(self) -> TrainConfig:
        """The from-scratch training of one discrete structure."""
        return TrainConfig(steps=self.train_steps, learning_rate=self.learning_rate,
                           batch_size=self.batch_size or None, weight_decay=self.weight_decay,
                           schedule=self.schedule, warmup_steps=self.warmup_steps,
                           eval_every=self.eval_every)

    @property
    def final_width(self) -> int:
        """The width of the returned model: `retrain_width`, or `width` when it is 0."""
        return self.retrain_width or self.width

    def restart_batching(self, layout: str) -> str:
        """'vmap' or 'map' for the restarts of a gradient search on a space of `layout`."""
        if self.batching != "auto":
            return self.batching
        return "map" if layout == "sequence" and jax.default_backend() == "cpu" else "vmap"

    def equivalent_evaluations(self, grads_per_step: float) -> int:
        """Compute of a gradient search in from-scratch trainings: T (S + c) / train_steps."""
        return max(1, math.ceil(self.search_steps * grads_per_step / self.train_steps))


BUDGETS = {
    "tiny": Budget("tiny", width=4, train_steps=10, search_steps=4, inner_steps=2,
                   evaluations=4, retrain_seeds=1, chunk=4, mnist1d_samples=400),
    "small": Budget("small", width=8, train_steps=100, search_steps=60, inner_steps=3,
                    retrain_seeds=2, mnist1d_samples=2000),
    "default": Budget("default"),
    # mnist1d sequences: minibatches and 8 channels keep the 125 x 3 enumeration ~10 min.
    "mnist1d": Budget("mnist1d", width=8, train_steps=400, batch_size=128, search_steps=100,
                      inner_steps=4),
    # tables (space "tabular"): stream width 16 (blocks 16 / 64 / 256 wide), minibatch
    # AdamW with warm-up + cosine decay and early stopping on the validation metric, the
    # returned model retrained at width 64 with dropout 0.1 on the blocks' hidden units;
    # the search's inner steps on minibatches of 512 rows (full batch on smaller tables);
    # on tables of fewer than 1000 training + validation rows the decisions cross-validated;
    # columns with |skewness| > 1 (and > 5 % distinct values) mapped to normal scores;
    # the returned model retrained with 4 piecewise-linear columns per number, kept when
    # they lower its validation loss.
    "tabular": Budget("tabular", width=16, train_steps=1500, learning_rate=3e-3,
                      batch_size=128, weight_decay=1e-2, schedule="cosine", warmup_steps=75,
                      eval_every=50, search_steps=100, inner_steps=5, search_batch_size=512,
                      retrain_width=64, dropout=0.1, ensemble=True, feature_screening=True,
                      cv_rows=1000, quantile_skew=1.0, numeric_ple=4),
}


# Budget fields that decide what a from-scratch training measures: a search is scored
# against a table like for like only when they equal the table's. A field missing from a
# table's record (tables written before it existed) had the Budget default.
TABLE_FIELDS = ("width", "train_steps", "learning_rate", "batch_size", "weight_decay",
                "schedule", "warmup_steps", "eval_every", "dropout")


def table_matches(table: dict, budget: Budget) -> bool:
    """Whether `budget` trains structures as the enumeration `table` did (same data size too)."""
    fields = TABLE_FIELDS + (("mnist1d_samples",) if table.get("dataset") == "mnist1d" else ())
    defaults = {f.name: f.default for f in dataclasses.fields(Budget)}
    stored = {**defaults, **table.get("settings", {}).get("budget", {})}
    # "width": the width the structures are trained at (the table's, the returned model's)
    stored["width"] = stored["retrain_width"] or stored["width"]
    mine = {**dataclasses.asdict(budget), "width": budget.final_width}
    return all(stored[k] == mine[k] for k in fields)


def default_budget(dataset: str, space: str | None = None) -> str:
    """The preset used when none is given: 'tabular' for the space 'tabular', else
    'mnist1d' for mnist1d and 'default' otherwise (also when `space` is None: the budget
    of the mlp3 and conv1d3 tables)."""
    if space == "tabular":
        return "tabular"
    return "mnist1d" if dataset == "mnist1d" else "default"


def budget_names() -> list[str]:
    return list(BUDGETS)


def parse_budget(text: str | Budget) -> Budget:
    """'preset' or 'preset,key=value,...' (e.g. 'small,search_steps=100') -> Budget."""
    if isinstance(text, Budget):
        return text
    name, *overrides = [t.strip() for t in str(text).split(",") if t.strip()] or ["default"]
    if name not in BUDGETS:
        raise ValueError(f"budget must start with one of {list(BUDGETS)}, got {name!r}")
    fields = {f.name: f for f in dataclasses.fields(Budget) if f.name != "name"}
    changes = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"budget override must be key=value with key one of "
                             f"{sorted(fields)}, got {item!r}")
        try:
            changes[key] = {"float": float, "str": str, "bool": _flag}.get(fields[key].type,
                                                                          int)(value)
        except ValueError:
            kind = {"int": "an int", "float": "a number"}.get(fields[key].type, fields[key].type)
            raise ValueError(f"budget {key} must be {kind}, got {value!r}") from None
    return dataclasses.replace(BUDGETS[name], **changes)


def _flag(value: str) -> bool:
    """A budget override of a bool field: 0 / 1 (also false / true)."""
    if value.lower() not in ("0", "1", "false", "true"):
        raise ValueError(value)
    return value.lower() in ("1", "true")


def space_names() -> list[str]:
    return sorted(spaces.SPACES)


def method_names() -> list[str]:
    from structsel.search import methods
    return list(methods.METHODS)


def relaxation_names() -> list[str]:
    from structsel.search import methods
    return list(methods.RELAXATIONS)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Typed arguments of one search run (what config.json records)."""

    dataset: str
    data: str | None
    target: str | None
    task: str | None
    space: str
    method: str
    relaxation: str | None
    seed: int
    seeds: int
    budget: Budget
    workdir: str
    split_seed: int = 0      # seed of the train / validation / test split
    fallback: bool = True    # return the linear model when the selection does not beat it
    gradient_boosting: bool = True  # HistGradientBoosting baseline (if scikit-learn is there)
    kl_weights: tuple | None = None  # KL weights c of a Bayesian method (None: its path)
    # checkpoints of a gradient search every this many outer steps (0: none), in
    # <workdir>/checkpoints; `resume` continues from them (else they are cleared first)
    checkpoint_every: int = 0
    resume: bool = False
    checkpoint_dir: str | None = None  # where the checkpoints go (None: <workdir>/checkpoints)
    devices: int | str | None = None  # "all" or N: the search's minibatch rows over N devices


def search_config(*, data=None, target=None, task=None, dataset=None, space=None,
                  method=None, relaxation=None, seed=0, seeds=1, budget=None,
                  workdir=None, split_seed=None, fallback=True,
                  gradient_boosting=True, kl_weights=None, checkpoint_every=0,
                  resume=False, checkpoint_dir=None, devices=None) -> SearchConfig:
    """Validated SearchConfig (ValueError / DataError naming the bad argument).

    `seed` seeds the split, the initialisations and the search; `split_seed` (default:
    `seed`) overrides the split's seed alone. `checkpoint_every` > 0 saves the state of a
    gradient search every that many outer steps (rounded up to the search's chunk);
    `resume` continues an interrupted search of the same config in the same workdir.
    `devices` ("all" or N) splits the rows of the gradient search's minibatches over N
    local devices (`data_mesh`; data parallelism of the one run).
    """
    from structsel.search import methods

    if data is not None and dataset is not None:
        raise ValueError("give either --data FILE or --dataset NAME, not both")
    if data is None:
        dataset = dataset or "digits"
        allowed = data_lib.SKLEARN_SETS + ("mnist1d",)
        if dataset not in allowed:
            raise ValueError(f"dataset must be one of {allowed}, got {dataset!r}")
        if target is not None:
            raise ValueError("--target applies to --data files only")
    else:
        dataset = pathlib.Path(data).stem
    if method is not None and method not in methods.METHODS:
        raise ValueError(f"method must be one of {list(methods.METHODS)}, got {method!r}")
    if relaxation is not None and relaxation not in methods.RELAXATIONS:
        raise ValueError(f"relaxation must be one of {list(methods.RELAXATIONS)}, "
                         f"got {relaxation!r}")
    space = space or spaces.space_for_dataset(dataset)
    if space not in spaces.SPACES:
        raise ValueError(f"space must be one of {sorted(spaces.SPACES)}, got {space!r}")
    if method is None and kl_weights is None:      # the space's default method and path
        kl_weights = spaces.DEFAULT_KL_WEIGHTS.get(space)
    method = method or spaces.default_method(space)
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1, got {seeds!r}")
    split_seed = seed if split_seed is None else split_seed
    for name, value in (("seed", seed), ("split_seed", split_seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    budget = parse_budget(budget if budget is not None else default_budget(dataset, space))
    if budget.dropout and space != "tabular":
        raise ValueError(f"budget dropout applies to the space 'tabular' only, got space "
                         f"{space!r}")
    methods.METHODS[method].check(relaxation=relaxation, space=space)
    if kl_weights is not None:
        kl_weights = methods.check_kl_weights(method, kl_weights)
    if (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer))
            or checkpoint_every < 0):
        raise ValueError(f"checkpoint_every must be an int >= 0 (0: no checkpoints), "
                         f"got {checkpoint_every!r}")
    if checkpoint_every and not isinstance(methods.METHODS[method], methods.GradientSearch):
        gradient = [n for n, m in methods.METHODS.items()
                    if isinstance(m, methods.GradientSearch)]
        raise ValueError(f"checkpoint_every applies to the gradient methods ({', '.join(gradient)}), "
                         f"not to method {method!r}")
    workdir = workdir or f"results/search/{dataset}_{method}_{seed}"
    return SearchConfig(dataset, data, target, task, space, method, relaxation, int(seed),
                        int(seeds), budget, str(workdir), int(split_seed), bool(fallback),
                        bool(gradient_boosting), kl_weights, int(checkpoint_every),
                        bool(resume), None if checkpoint_dir is None else str(checkpoint_dir),
                        devices_lib.check_devices(devices))


def load_data(*, dataset: str, data: str | None, target: str | None, task: str | None,
              split_seed: int, budget: Budget, classes=None,
              encoding: dict | None = None, pieces: bool = False) -> data_lib.Dataset:
    """The split, standardised dataset (DataError on bad data). `classes`: the label of
    each class 0..C-1 of a trained model (`structsel retrain`), None to derive them;
    `encoding`: a trained model's record of how the table's text and missing values became
    feature columns (`data.fit_encoding`), None to derive it from the training rows;
    `pieces`: with the budget's `numeric_ple` piecewise-linear columns (`_try_pieces`)."""
    ple = budget.numeric_ple if pieces else 0
    if data is not None:
        return data_lib.load_table(data, target=target, task=task, seed=split_seed,
                                   classes=classes, encoding=encoding,
                                   bins=budget.numeric_bins, ple=ple)
    if budget.numeric_bins:
        raise ValueError(f"budget numeric_bins applies to tables read with --data, not to "
                         f"the embedded dataset {dataset}")
    kwargs = {"num_samples": budget.mnist1d_samples} if dataset == "mnist1d" else {}
    if classes is not None:
        kwargs["classes"] = classes
    ds = data_lib.load(dataset, seed=split_seed, ple=ple, encoding=encoding, **kwargs)
    if task is not None and task != ds.task:
        raise ValueError(f"task of the embedded dataset {dataset} is {ds.task}, got --task {task}")
    return ds


class Problem(NamedTuple):
    """Everything a method needs: the space, the task strategy, the arrays, the budget."""

    space: spaces.Space
    task: Any
    data: enumeration.Splits
    budget: Budget
    dataset: str
    mesh: Any = None  # 1-D device mesh "data" of the search's minibatch rows, or None
    # the table's columns mapped to normal scores (budget quantile_skew), indices
    quantile_columns: tuple = ()


def make_problem(ds: data_lib.Dataset, space_name: str, budget: Budget, *,
                 mesh=None) -> Problem:
    """Builds the space for the dataset's task and the (prepared) arrays; `mesh`
    (`data_mesh`) splits the rows of the gradient search's minibatches over devices. On a
    table with budget `quantile_skew` the skewed columns are mapped to normal scores
    (`features.skewed_columns`, `features.quantile_normalise`): every network of the run
    (search, retraining, folds) reads them; `quantile_columns` lists them."""
    task = enumeration.task_of(ds)
    space = spaces.build_space(space_name, num_outputs=task.num_outputs, width=budget.width)
    if space.layout == "vector" and ds.x_train.ndim != 2:
        raise ValueError(f"space {space_name} needs tabular features (n, d)")
    data = enumeration.splits_of(ds, space.prepare)
    quantile = ()
    if budget.quantile_skew and space.layout == "vector":
        quantile = tuple(int(j) for j in features.skewed_columns(ds.x_train,
                                                                  budget.quantile_skew))
        if quantile:
            data = features.quantile_normalise(data, quantile)
    return Problem(space, task, data, budget, ds.name, mesh, quantile)


def data_mesh(devices) -> jax.sharding.Mesh | None:
    """The 1-D mesh "data" over `devices` local devices ("all" or an int; None or 1: no
    mesh, the default device). ValueError naming the allowed values otherwise."""
    mesh = devices_lib.local_mesh(devices, "data")
    return None if mesh is None or mesh.size == 1 else mesh


def final_problem(problem: Problem) -> Problem:
    """`problem` with its space at the budget's `final_width` (the width the proposals are
    retrained and returned at) and its `dropout`; `problem` itself when both are the
    search's."""
    width, dropout = problem.budget.final_width, problem.budget.dropout
    if width == problem.budget.width and not dropout:
        return problem
    space = spaces.build_space(problem.space.name, num_outputs=problem.task.num_outputs,
                               width=width, dropout=dropout)
    if space.family.num_ops != problem.space.family.num_ops:  # a space whose op set grows
        raise ValueError(f"budget retrain_width {width}: space {space.name} has other ops at "
                         f"width {width} than at width {problem.budget.width}")
    return problem._replace(space=space)


@functools.lru_cache(maxsize=32)
def _compiled_trainer(family, task, config: TrainConfig, outputs: bool = False,
                      mesh: jax.sharding.Mesh | None = None, columns: bool = False,
                      val_path: bool = False):
    """jit(train_structures) per (family, task, config, outputs, mesh, columns), cached
    across runs. The data is an argument, not a closed-over constant: smaller programs, one
    compilation for all runs. With a "runs" mesh (`devices.run_mesh`) each device trains
    its slice of the structures (`shard_map`, no collectives): the same per-structure
    program, so the same numbers as on one device. `columns`: the program takes a column
    mask (d,) too (`train_structures`), so that a subset of a table's columns trains with
    the program of all of them. `val_path`: the validation outputs at every checkpoint
    too (`train_structures`)."""
    def train(structures, keys, data, valid, *mask):
        return train_structures(family, task, config, structures, data, keys=keys,
                                outputs=outputs, valid=valid,
                                columns=mask[0] if columns else None, val_path=val_path)
    if mesh is None:
        return jax.jit(train)
    from jax.sharding import PartitionSpec as P
    runs = P("runs")
    specs = (runs, P(), P(), runs) + ((P(),) if columns else ())
    return jax.jit(jax.shard_map(train, mesh=mesh, in_specs=specs, out_specs=runs,
                                 check_vma=False))


@functools.lru_cache(maxsize=128)
def _structure_trainer(family, task, config: TrainConfig, choice: tuple, outputs: bool,
                       columns: bool, val_path: bool):
    """jit of `train_structure` at the one structure `choice` (a tuple over every edge of
    `family`), seeds vmapped: (keys, data, *mask) -> its metrics (num_seeds, ...). The
    choice is a constant, so only its ops are traced (`Family.apply_vertex`): no switch
    over the ops, no map over structures. Session 35, 3000 x 60 table at the final width:
    2-4 s to compile and 0.3-6 s to run (3 seeds x 1500 steps) against 10 s and 2.7-10 s
    a structure for the program of every structure (`_compiled_trainer`), whose switches
    cost about 2.5 s a training. `columns`: the program takes a column mask (d,)."""
    structure = np.asarray(choice, np.int32)

    def train(keys, data, *mask):
        return jax.vmap(lambda k: enumeration.train_structure(
            family, task, config, structure, data, key=k, outputs=outputs,
            columns=mask[0] if columns else None, val_path=val_path))(keys)
    return jax.jit(train)


class Evaluator:
    """Trains structures from scratch, structures one after the other (`lax.map`, only the
    chosen op of each edge computed) x seeds vmapped, jitted per batch size. A call's
    structures are padded to the next power of two (at most the budget's `chunk`) so that
    few programs are compiled; the padding rows are skipped, not trained (`valid`). With
    several local devices (one per core on a CPU host: `devices.use_cpu_cores`) a batch is
    split over them (`devices.run_mesh`), the structures balanced by their parameter
    counts (`devices.balance`, a proxy of their cost); the numbers do not depend on it.

    `__call__(choices, keys)` returns {"val_metric", "test_metric", "train_loss"} as numpy
    arrays (num_structures, num_seeds); `count` is the number of (structure, seed) trainings.
    With `outputs=True` also "val_out" / "test_out", the models' outputs on those rows
    (num_structures, num_seeds, rows, outputs), for the deep ensemble of the seeds, and
    with `val_path` (early stopping) "val_path", the validation outputs at every
    checkpoint (num_structures, num_seeds, checkpoints, rows, outputs): the
    cross-validated decisions re-choose each fold's stop on the other folds
    (`crossval.held_out_stopping`).

    `specialise=True` (the runner's retraining of a search's few proposals): each
    structure trains with a program of its own (`_structure_trainer`: only its ops), the
    structures side by side in threads (one per usable core, the costliest first) on the
    default device; the padding, the batch sizes and the mesh do not apply. Same numbers
    up to float reassociation as the program of every structure (tested); on the
    3000 x 60 table 1.4-10 x faster to run (the lighter the structure, the more), each
    structure compiled once (2-4 s).
    """

    def __init__(self, problem: Problem, *, progress: bool = False, min_size: int = 1,
                 val_path: bool = False, specialise: bool = False):
        self.problem, self.progress, self.count = problem, progress, 0
        self.specialise = specialise
        self.val_path = val_path and bool(problem.budget.eval_every)
        self.min_size = min_size  # the smallest padded batch (an earlier one, reused)
        self.size = None  # the padded batch size of the last call

    def batch_size(self, n: int) -> int:
        """The padded batch of a call with n structures: the next power of two of n, at
        least `min_size`, at most the budget's chunk (few distinct compiled shapes)."""
        return min(self.problem.budget.chunk,
                   max(self.min_size, 1 << max(0, (n - 1).bit_length())))

    def _masked(self) -> bool:
        """Whether the programs take a column mask: tables (a vector layout, x (n, d))."""
        return self.problem.space.layout == "vector" and np.ndim(self.problem.data.x_train) == 2

    def _mask(self, columns=None) -> tuple:
        """The programs' mask argument: () without one, else (mask of `columns`,) (None:
        every column)."""
        if not self._masked():
            if columns is not None:
                raise ValueError("columns applies to tables (a vector layout with x of shape "
                                 "(rows, columns))")
            return ()
        d = int(self.problem.data.x_train.shape[-1])
        return (features.column_mask(range(d) if columns is None else columns, d),)

    def _fn(self, outputs: bool, mesh):
        space, task, cfg = self.problem.space, self.problem.task, self.problem.budget.train
        return _compiled_trainer(space.family, task, cfg, outputs, mesh, self._masked(),
                                 outputs and self.val_path)

    def _costs(self, choices) -> np.ndarray:
        """A proxy of each structure's training time: its parameters that reach the output
        plus a tenth of the largest count (the per-step work common to every structure)."""
        p = self.problem.space.all_num_params(choices, self.problem.data.x_train[:1])
        return p + 0.1 * p.max()

    def __call__(self, choices, keys, *, outputs: bool = False, columns=None,
                 size: int | None = None) -> dict[str, np.ndarray]:
        """`columns`: None (all), or the indices of the table columns to train on (the
        same program: `features.mask_columns`). `size`: the padded batch size of the
        call (default: the next power of two of the count, at most the budget's chunk),
        e.g. that of an earlier call, whose compiled program is then reused (default:
        `batch_size`)."""
        choices = np.asarray(choices, np.int32)
        if self.specialise:
            return self._specialised(choices, keys, outputs=outputs, columns=columns)
        n = len(choices)
        size = self.batch_size(n) if size is None else size
        self.size = size
        mask = self._mask(columns)
        mesh = devices_lib.run_mesh(size)
        starts = range(0, n, size)
        if self.progress and len(starts) > 1:
            from tqdm import tqdm
            starts = tqdm(starts, desc="train structures", unit="batch", leave=False)
        outs = []
        for s in starts:
            part = choices[s:s + size]
            padded = np.concatenate([part, np.repeat(part[-1:], size - len(part), 0)])
            valid = np.arange(size) < len(part)  # the padding rows are not trained
            order = (np.arange(size) if mesh is None or len(part) < 2 else
                     devices_lib.balance(np.where(valid, self._costs(padded), 0.0),
                                         mesh.size))
            out = self._fn(outputs, mesh)(self.problem.space.vertex(padded[order]), keys,
                                          self.problem.data, valid[order], *mask)
            back = np.argsort(order)  # row i of the batch is row back[i] of the output
            outs.append({k: np.asarray(v)[back][:len(part)] for k, v in out.items()})
        self.count += n * int(np.shape(keys)[0])
        scores = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        enumeration.check_diverged(scores, [self.problem.space.selected(c) for c in choices],
                                   self.problem.budget.learning_rate)
        return scores

    def _structure_fn(self, choice, outputs: bool):
        """The compiled trainer of one structure (`_structure_trainer`); choice: searchable
        edges'."""
        space, task, cfg = self.problem.space, self.problem.task, self.problem.budget.train
        full = tuple(int(a) for a in space.vertex(choice))
        return _structure_trainer(space.family, task, cfg, full, outputs, self._masked(),
                                  outputs and self.val_path)

    def prewarm_structure(self, choice, keys, *, outputs: bool) -> None:
        """Compiles (without running) the program of one structure that a specialised call
        with keys shaped like `keys` uses: `runner` calls it in a thread for the pieces'
        trial while the screening trains on one core."""
        self._structure_fn(choice, outputs).lower(keys, self.problem.data,
                                                  *self._mask()).compile()

    def _specialised(self, choices, keys, *, outputs: bool, columns) -> dict[str, np.ndarray]:
        """`__call__` with `specialise`: each distinct structure with its own program, in
        threads (one per usable core), the costliest first; rows in the caller's order."""
        distinct, back = np.unique(choices, axis=0, return_inverse=True)
        data, mask = self.problem.data, self._mask(columns)

        def one(i):
            out = self._structure_fn(distinct[i], outputs)(keys, data, *mask)
            return i, {k: np.asarray(v) for k, v in out.items()}

        order = np.argsort(-self._costs(distinct), kind="stable")
        workers = min(len(distinct), devices_lib.usable_cores())
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            done = dict(pool.map(one, order))
        rows = [done[i] for i in np.reshape(back, -1)]
        scores = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        self.count += len(choices) * int(np.shape(keys)[0])
        enumeration.check_diverged(scores, [self.problem.space.selected(c) for c in choices],
                                   self.problem.budget.learning_rate)
        return scores

    def reward(self, choices, *, key) -> np.ndarray:
        """Validation reward of each structure (one seed): accuracy, or -RMSE."""
        sign = 1.0 if self.problem.task.higher_is_better else -1.0
        return sign * self(choices, key[None])["val_metric"][:, 0]


# --- outputs ------------------------------------------------------------------------------

def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_summary(summary: dict) -> str:
    """The final table printed by `structsel search`: the selection, what is returned (the
    linear model after a fallback), regret / rank against the table (flagged when not like
    for like), and the baselines fitted on the same split."""
    keys = ["dataset", "space", "method", "seed", "split", "selected", "model", "features",
            "params", "val_metric", "test_metric", "regret", "rank", "table_matches_budget",
            "table_matches_split", "num_evaluations", "wall_time_s", "workdir"]
    values = dict(summary)
    if isinstance(summary.get("split"), dict):
        sp = summary["split"]
        values["split"] = f"seed {sp['seed']}: {sp['train']} / {sp['val']} / {sp['test']} rows"
    if summary.get("fallback"):
        fb = summary["fallback"]
        values["model"] = (f"linear (fallback; the selection had val {fb['selected_val']:.4g}, "
                           f"test {fb['selected_test']:.4g}, {fb['selected_params']} params)")
    elif summary.get("ensemble"):
        en = summary["ensemble"]
        values["model"] = (f"deep ensemble of the {en['members']} retrained models (single "
                           f"models: val {en['val_metric_single']:.4g}, test "
                           f"{en['test_metric_single']:.4g} +- {en['test_metric_single_std']:.2g})")
        values["params"] = f"{summary['params']} per model, {en['params_total']} in all"
    fs, names = summary.get("features"), summary.get("feature_names")
    if fs:
        n = fs.get("num_features") or len(fs["relevance"])

        def named(cols):  # column indices, with the table's names when it has them
            return f"{cols}" + ("" if not names or len(names) != n else
                                f" ({', '.join(str(names[j]) for j in cols)})")
        sources = {"relevance": "the search's input relevances",
                   "univariate": "univariate F tests"}
        tried = fs.get("proposals") or [{"proposed": fs["proposed"], "source": None}]
        values["features"] = (
            f"all {n} columns (no clearly separated group)" if fs["proposed"] is None else
            f"all {n} columns (proposed " + "; ".join(
                named(t["proposed"]) + (f" by {sources[t['source']]}" if t["source"] else "")
                for t in tried) + ": not better on validation)"
            if fs["kept"] == "all" else f"{len(fs['kept'])} of {n} columns: {named(fs['kept'])}"
            + (f" (from {sources[fs['source']]})" if fs.get("source") else "")
            + (" (with a network of a second search on them)"
               if (fs.get("second_search") or {}).get("better") else
               " (with another candidate than on all columns)" if fs.get("candidate_changed")
               else ""))
        if summary.get("fallback") and fs["kept"] != "all":
            values["features"] += " (the selection's; the returned linear model reads all)"
    if "regret" in summary:
        notes = ([] if not summary.get("fallback") else ["of the selection"]) + (
            [] if summary.get("table_like_for_like", True) else ["not like for like"])
        if notes:
            values["regret"] = f"{_fmt(summary['regret'])} ({', '.join(notes)})"
    rows = [(k, values[k]) for k in keys if k in values]
    rows = [(k, ", ".join(f"{e}: {o}" for e, o in v.items()) if isinstance(v, dict) else _fmt(v))
            for k, v in rows]
    for name, b in summary.get("baselines", {}).items():
        extra = f"  ({b['params']} params)" if "params" in b else ""
        rows.append((f"baseline {name}", f"val {b['val_metric']:.4g}  test "
                                         f"{b['test_metric']:.4g}{extra}"))
    cv = summary.get("cross_validation")
    if cv:
        against = cv.get("versus_linear")
        rows.append(("cross-validation", (
            f"{cv['folds']} folds of the {cv['training_rows'] + cv['validation_rows']} training "
            f"+ validation rows decided ({cv['rows']} out-of-fold rows): candidate "
            + ("changed from the split's" if cv.get("changed") else "as on the split")
            + ("" if not against else
               f"; {summary['metric']} selection {against['selected']:.4g}, linear "
               f"{against['linear']:.4g}"))))
    vs = summary.get("versus_linear")
    if vs:
        rows.append(("versus linear", (
            f"the selection's validation loss per row is lower by {vs['val_loss_gain']:.4g} "
            f"(SE {vs['se']:.2g}, {vs['rows']} rows)"
            + ("" if vs["decides"] else "; recorded, the metric decides"))))
    rows += data_lib.describe_encoding(summary.get("encoding"))
    pieces = summary.get("pieces")
    if pieces and "subset" in pieces:
        rows.append(("piecewise columns", ("kept: " if pieces["kept"] else "not kept: ")
                     + pieces["reason"] + f" (with them: val {pieces['subset']['val_metric']:.4g}"
                     f", test {pieces['subset']['test_metric']:.4g})"))
    if summary.get("quantile_columns"):
        cols = summary["quantile_columns"]
        rows.append(("normal scores", f"{len(cols)} skewed column(s) for the networks: " + ", ".join(
            str(names[j]) if names else str(j) for j in cols)))
    if summary.get("classes") and any(isinstance(c, str) for c in summary["classes"]):
        rows.append(("classes", ", ".join(f"{i}: {c}" for i, c in enumerate(summary["classes"]))))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k:<{width}} | {v}" for k, v in rows] + [line])


def format_table(table: dict, top: int = 10) -> str:
    """The best `top` rows of an enumeration table."""
    sign = 1 if table["higher_is_better"] else -1
    rows = sorted(table["rows"], key=lambda r: -sign * r["test_mean"])[:top]
    out = [f"{table['space']} x {table['dataset']}: {table['num_structures']} structures, "
           f"{table['num_seeds']} seeds; best {top} by mean test metric",
           f"{'rank':>4}  {'ops':<40} {'params':>7} {'val':>14} {'test':>14}"]
    for i, r in enumerate(rows, 1):
        out.append(f"{i:>4}  {','.join(r['ops']):<40} {r['params']:>7} "
                   f"{r['val_mean']:.4f}+-{r['val_std']:.4f} {r['test_mean']:.4f}+-{r['test_std']:.4f}")
    return "\n".join(out)


def run_search(config: SearchConfig, *, progress: bool = True,
               dataset: data_lib.Dataset | None = None) -> dict:
    """Runs one search end to end and writes the workdir; returns summary.json's dict."""
    start = time.perf_counter()
    config, ds, problem, method = _prepare(config, dataset)
    run = _create_run(config, ds)
    with run.recording():  # status.json: failed / interrupted if this raises
        return _search_and_write(run, config, ds, problem, method, progress, start)


def _prepare(config: SearchConfig, dataset=None):
    """(config with the split's seed, dataset, problem, method) of one run."""
    from structsel.search import methods

    ds = dataset if dataset is not None else load_data(
        dataset=config.dataset, data=config.data, target=config.target, task=config.task,
        split_seed=config.split_seed, budget=config.budget)
    if ds.split is not None:  # a dataset passed in was split by its caller: record that seed
        config = dataclasses.replace(config, split_seed=int(ds.split["seed"]))
    mesh = data_mesh(config.devices)
    problem = make_problem(ds, config.space, config.budget, mesh=mesh)
    batch = config.budget.search_batch_size
    minibatched = 0 < batch < len(ds.y_train)
    if mesh is not None and minibatched and batch % mesh.size:
        raise ValueError(f"devices {mesh.size}: budget search_batch_size ({batch}) must be "
                         f"divisible by the number of devices")
    method = methods.METHODS[config.method]
    if config.kl_weights is not None:
        method = dataclasses.replace(method, path=config.kl_weights)
    return config, ds, problem, method


def _create_run(config: SearchConfig, ds) -> Run:
    return Run.create(config.workdir, config={**dataclasses.asdict(config),
                                              "split": ds.split, "task": ds.task},
                      seed=config.seed)


def run_search_many(configs: list[SearchConfig], *, progress: bool = False) -> list[dict]:
    """Several runs of one gradient search setting that differ only in `seed` /
    `split_seed` / `workdir` (e.g. the seeds of a sweep): their searches as ONE compiled
    program vmapped over the runs and their splits (`GradientSearch.search_many`), then
    each run's retraining, references and files exactly as `run_search` writes them.
    Each run's numbers equal its own `run_search` up to float32 reassociation (tested).
    `search_time_s` of a run is the shared search's wall time divided by the runs;
    `search_batched_runs` says how many shared it. Checkpoints (configs[0]'s
    `checkpoint_every` / `checkpoint_dir`) are the group's. Other methods: `run_search`
    one after the other."""
    from structsel.search import methods

    if not configs:
        return []
    def shared(c):
        return {k: v for k, v in dataclasses.asdict(c).items()
                if k not in ("seed", "split_seed", "workdir")}
    same = shared(configs[0])
    for c in configs[1:]:
        if (other := shared(c)) != same:
            diff = sorted(k for k in same if same[k] != other[k])
            raise ValueError(f"run_search_many: the configs may differ only in seed, "
                             f"split_seed and workdir; they differ in {diff}")
    if len(configs) == 1 or not isinstance(methods.METHODS[configs[0].method],
                                           methods.GradientSearch):
        return [run_search(c, progress=progress) for c in configs]
    start = time.perf_counter()
    prepared = [_prepare(c) for c in configs]
    configs = [p[0] for p in prepared]
    method = prepared[0][3]
    created = [_create_run(c, p[1]) for c, p in zip(configs, prepared)]
    first = configs[0]
    checkpoints = (created[0].path("checkpoints") if first.checkpoint_dir is None
                   else pathlib.Path(first.checkpoint_dir))
    if not first.resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoint = None
    if first.checkpoint_every:
        checkpoint = search_checkpoints(first, None, checkpoints, group=[
            {"seed": c.seed, "split": p[1].split} for c, p in zip(configs, prepared)])
    keys = [jax.random.split(prng_key(c.seed))[0] for c in configs]
    try:
        outcomes = method.search_many([p[2] for p in prepared], keys=keys,
                                      restarts=first.seeds, relaxation=first.relaxation,
                                      progress=progress, jit=jax.jit, checkpoint=checkpoint)
    except BaseException as err:
        for run in created:
            with contextlib.suppress(OSError):
                run.set_status("interrupted" if isinstance(err, KeyboardInterrupt)
                               else "failed", error=f"{type(err).__name__}: {err}".strip(": "))
        raise
    shared = (time.perf_counter() - start) / len(configs)
    out = []
    for run, (config, ds, problem, _), outcome in zip(created, prepared, outcomes):
        with run.recording():
            summary = _search_and_write(run, config, ds, problem, method, progress,
                                        time.perf_counter() - shared, outcome=outcome,
                                        batched=len(configs))
        out.append(summary)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return out


def _search_and_write(run, config, ds, problem, method, progress, start, *, outcome=None,
                      batched: int = 0) -> dict:
    """The search, the retrain and the reviews of `run_search`, writing into `run`;
    summary.json last (its presence says the run finished). `outcome`: the run's search
    already done (`run_search_many`, shared by `batched` runs)."""
    final = final_problem(problem)  # the proposals are retrained at the final width
    cv = _cv_state(config, final)  # cross-validated decisions: held-out stops need the paths
    evaluator = Evaluator(problem, progress=progress)
    # the proposals' retraining: a program per structure (`Evaluator(specialise=True)`),
    # compiled once the search has named them
    retrainer = Evaluator(final, progress=progress, val_path=cv is not None, specialise=True)
    key = prng_key(config.seed)
    k_search, k_retrain = jax.random.split(key)
    pieces = _pieces_setup(final, config, ds, cv, progress)
    # Next to the search, in a thread: the references' fits; after the retraining, the
    # pieces' program next to the screening (which trains one structure on one core)
    with _background() as pool:
        baselines = pool.submit(references.baselines_of, problem.task, enumeration.splits_of(ds),
                                seed=config.seed, gradient_boosting=config.gradient_boosting,
                                jit=jax.jit, outputs=True)
        checkpoints = (run.path("checkpoints") if config.checkpoint_dir is None
                       else pathlib.Path(config.checkpoint_dir))
        if outcome is None:
            if not config.resume:  # a fresh run: an earlier run's checkpoints are not this one's
                shutil.rmtree(checkpoints, ignore_errors=True)
            checkpoint = (search_checkpoints(config, ds, checkpoints) if config.checkpoint_every
                          else None)
            outcome = method.search(problem, evaluator, key=k_search, restarts=config.seeds,
                                    relaxation=config.relaxation, progress=progress,
                                    jit=jax.jit, checkpoint=checkpoint)
        for t, row in enumerate(outcome.history):
            run.log_metrics(t, **row)
        divergence_warnings = _check_divergence(outcome, run)
        search_time = time.perf_counter() - start
        base = {"dataset": problem.dataset, "space": problem.space.name, "method": config.method,
                "relaxation": outcome.relaxation, "seed": config.seed, "restarts": config.seeds,
                "num_evaluations": int(outcome.num_evaluations), "search_time_s": search_time,
                "budget": dataclasses.asdict(config.budget), "split": ds.split,
                "metric": problem.task.metric_name, "workdir": str(run.workdir)}
        if config.budget.quantile_skew and problem.space.layout == "vector":
            base["quantile_columns"] = list(problem.quantile_columns)
        if batched:
            base["search_batched_runs"] = batched
        if problem.mesh is not None:
            from structsel.search import methods
            gradient = isinstance(method, methods.GradientSearch)
            minibatched = 0 < config.budget.search_batch_size < problem.data.x_train.shape[0]
            sharded = ("nothing: not a gradient search" if not gradient else
                       "the search's minibatch rows" if minibatched else
                       "nothing: a full-batch search")
            base["data_parallel"] = {"devices": int(problem.mesh.size), "sharded": sharded}
        predictions = {}  # outputs on the validation / test rows, for predictions.npz
        wide = None  # the dataset with piecewise-linear columns, when the model reads them
        if outcome.choices is None:  # a method with its own structure space (AdaNet)
            report = outcome.extra["adanet"]
            summary = {**base, "space": "adanet", "selected": {
                           f"subnetwork {i}": f"depth {m['depth']} x width {m['width']}"
                           for i, m in enumerate(report["ensemble"])},
                       "gamma": {f"subnetwork {i}": m["gamma"]
                                 for i, m in enumerate(report["ensemble"])},
                       "params": report["params"], "val_metric": report["val_metric"],
                       "test_metric": report["test_metric"], "extra": outcome.extra}
            run.write_json("structure.json", {"adanet_ensemble": report["ensemble"]})
        else:
            summary = _retrain_selected(final, retrainer, outcome, run, config, k_retrain, base,
                                        search_space=problem.space, predictions=predictions,
                                        cv=cv)
            if pieces is not None and "evaluator" in pieces:  # compiled on the idle core
                pieces["prewarmed"] = pool.submit(
                    pieces["evaluator"].prewarm_structure, summary["choice"],
                    jax.random.split(k_retrain, config.budget.retrain_seeds),
                    outputs=config.budget.ensemble)
            summary = _screen_features(final, outcome, run, config, k_retrain, summary,
                                       evaluator=retrainer, predictions=predictions, cv=cv)
            summary = _search_kept_columns(
                problem, final, method, outcome, run, config, summary, base,
                search_key=jax.random.fold_in(k_search, 1), retrain_key=k_retrain,
                search_evaluator=evaluator, evaluator=retrainer, predictions=predictions,
                cv=cv, progress=progress)
            summary, wide = _try_pieces(pieces, run, config, k_retrain, summary,
                                        predictions=predictions)
        # Compare with the constant and linear references (and HistGradientBoosting) on the
        # same split; return the linear model when the selection does not beat it.
        baselines = baselines.result()
        cross_validated = (None if cv is None or "selected" not in cv else  # standardised
                           _cv_references(final.task, enumeration.splits_of(
                               ds, final.space.prepare), cv, predictions))
        summary, decision = references.review(
            summary, problem.task, enumeration.splits_of(ds), family=final.space.family,
            choice=final.space.vertex(summary["choice"]) if "choice" in summary else None,
            seed=config.seed, fallback=config.fallback,
            gradient_boosting=config.gradient_boosting, jit=jax.jit, baselines=baselines,
            selected_out=predictions.get("selected_val"), cross_validated=cross_validated)
        _write_predictions(run, ds, baselines, predictions, decision)
        summary["warnings"] = divergence_warnings + summary["warnings"]
        if ds.classes is not None:
            summary["classes"] = list(ds.classes)
        if wide is not None and decision.model == "linear":  # the plain columns' model
            wide = None
        encoding = ds.encoding if wide is None else wide.encoding
        if encoding is not None:  # text categories / missing values / pieces of a table
            summary["encoding"] = encoding
        names = ds.feature_names if wide is None else wide.feature_names
        if names is not None:
            summary["feature_names"] = list(names)
        if "table" in summary:  # the tables were computed on one split: like for like only on it
            table = enumeration.load_enumeration_table(problem.space.name, problem.dataset,
                                                       summary["table"])
            summary["table_matches_split"] = table["settings"].get("split") == ds.split
            summary["table_like_for_like"] = bool(summary.get("table_matches_budget")
                                                  and summary["table_matches_split"])
        structure = json.loads(run.path("structure.json").read_text())
        if decision.model == "linear":
            structure = references.linear_structure(
                problem.task, num_features=int(np.prod(ds.x_train.shape[1:])),
                dataset=problem.dataset, replaces=structure, reason=decision.reason)
        run.write_json("structure.json", {**structure, "classes": summary.get("classes"),
                                          "split": ds.split,
                                          **({"encoding": encoding} if encoding else {})})
        summary["wall_time_s"] = time.perf_counter() - start
        run.write_summary(summary)
        if not batched:  # finished: summary.json says so (a group's are its caller's)
            shutil.rmtree(checkpoints, ignore_errors=True)
        return summary


def _write_predictions(run, ds, baselines: dict, predictions: dict, decision) -> None:
    """predictions.npz: the outputs (log class probabilities, or predictions in
    standardised units) on the validation and test rows of the returned model
    (`returned_*`), of the selection (`selected_*`: the deep ensemble, on the kept
    columns), of every retrained candidate (`candidates_*`, rows of `candidates`), of the
    all-column and subset models of the screening (with cross-validation the best
    candidates on the subset, `subset_candidates_*`), of the references and the folds'
    out-of-fold outputs (`cv_*`), with `y_val` / `y_test`: every decision of the run can be recomputed
    from it."""
    arrays = {"y_val": np.asarray(ds.y_val), "y_test": np.asarray(ds.y_test), **predictions}
    for name, ref in baselines.items():
        if "val_out" in ref:
            arrays.update({f"{name}_val": ref["val_out"], f"{name}_test": ref["test_out"]})
    source = "linear" if decision.model == "linear" else "selected"
    if f"{source}_val" in arrays:
        arrays.update(returned_val=arrays[f"{source}_val"],
                      returned_test=arrays[f"{source}_test"])
    np.savez_compressed(run.path("predictions.npz"), **arrays)


@contextlib.contextmanager
def _background():
    """A one-thread pool for work next to the search, shut down on leaving without waiting
    (calls not started are cancelled). Not a daemon: a thread killed inside XLA at exit
    aborts the process; after an interrupt the exit waits for the call it is running."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                 thread_name_prefix="structsel-background")
    try:
        yield pool
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def search_checkpoints(config: SearchConfig, ds: data_lib.Dataset | None,
                       directory: pathlib.Path, *, group: list | None = None) -> Callable:
    """checkpoint(name, chunk) -> the Checkpointer of one part of a gradient search
    (`GradientSearch.search`): <directory>/<name>, saving every `config.checkpoint_every`
    outer steps rounded up to a multiple of the part's `chunk`. Its fingerprint is the
    config (less the workdir and the checkpoint settings), the split and the versions of
    the packages that decide the numbers: a checkpoint of another run is refused
    (CheckpointError naming the mismatch), never silently restarted. `group`: the
    seeds and splits of the runs of `run_search_many` sharing the checkpoints."""
    from structsel.checkpoint import Checkpointer

    skip = ("workdir", "checkpoint_every", "resume", "checkpoint_dir") + (
        ("seed", "split_seed") if group is not None else ())
    identity = {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}
    versions = runs_lib.package_versions(("structsel", "jax", "jaxlib", "flax", "optax",
                                          "distrax"))

    def checkpoint(name: str, chunk: int) -> Checkpointer:
        every = -(-config.checkpoint_every // chunk) * chunk
        return Checkpointer(directory / name, every=every, fingerprint={
            "config": identity, "part": name, "chunk": chunk, "versions": versions,
            **({"runs": group} if group is not None else {"split": ds.split})})
    return checkpoint


def _check_divergence(outcome, run) -> list[str]:
    """Raises DivergenceError (step, quantity, run) when every search run diverged; when
    some did, returns a warning (the others' proposals stand), else []."""
    from structsel.bilevel import DivergenceError

    runs = outcome.extra.get("divergence_of_run") or []
    bad = [(i, d) for i, d in enumerate(runs) if d is not None]
    if not bad:
        return []
    i, first = min(bad, key=lambda b: b[1]["step"])
    where = (f"non-finite {first['quantity']} at outer step {first['step']} in run {i}; "
             f"the per-step metrics are in {run.path('metrics.jsonl')}")
    if len(bad) == len(runs):
        err = DivergenceError(first["step"], first["quantity"], None, outcome.history, (i,))
        err.args = (f"every search run diverged: {where}",)
        raise err
    return [f"{len(bad)} of {len(runs)} search runs diverged (first: {where}); their "
            "proposals are the structures of their last finite state"]


def _retrain_selected(problem, evaluator, outcome, run, config, key, base, *,
                      search_space, predictions: dict | None = None,
                      cv: dict | None = None) -> dict:
    """Retrains every distinct proposal (restarts x the path's c values) from scratch, keeps
    the best by validation metric (`selection.select`: exact ties go to the ensemble's
    lower validation loss when the budget ensembles, then to fewer parameters) and returns
    its summary (`_selection_summary`, which writes structure.json, front.json and the
    figures). `problem` is at the final width (`final_problem`); `search_space` names the
    ops of the searched Gamma. `predictions`: a dict that receives the ensembles' outputs
    (candidates_*, selected_*) when the budget ensembles. `cv` (`_cv_state`): the
    candidate is chosen by the out-of-fold outputs of the folds instead (the split's models
    are fold 0's, still the ones returned), and `cv` receives the chosen one's
    ("selected", its metric and loss), the retrained candidates ("candidates") and
    "summary_for" (index -> the summary of that candidate), for the screening's joint
    choice of candidate and columns."""
    from structsel.search import selection as sel

    proposals = np.asarray(outcome.choices)
    retrain_keys = jax.random.split(key, config.budget.retrain_seeds)
    x_train = np.asarray(problem.data.x_train)
    chosen = sel.select(evaluator, problem.space, proposals, keys=retrain_keys,
                        x_train=x_train, higher_is_better=problem.task.higher_is_better,
                        ensemble=(problem.task, problem.data) if config.budget.ensemble
                        else None)
    cv_record = None
    if cv is not None and chosen.ensemble_val_out is not None:
        start = time.perf_counter()
        oof, fold_test = _fold_outputs(evaluator, problem, cv["plan"], chosen.choices,
                                       retrain_keys, fold0_val=chosen.ensemble_val_out,
                                       fold0_path=chosen.val_path)
        best, metric, loss, rows = _out_of_fold_choice(problem.task, oof, cv["y"], chosen)
        cv_record = {**crossval.record(cv["plan"]), "stopping": _stopping(chosen),
                     "candidates": rows,
                     "split_choice": [int(c) for c in chosen.choices[chosen.best]],
                     "changed": bool(best != chosen.best)}
        cv.update(selected=oof[best], selected_metric=float(metric[best]),
                  selected_loss=float(loss[best]),
                  ranking=_out_of_fold_ranking(problem.task, metric, loss, chosen.params))
        chosen = chosen._replace(best=best)
        if predictions is not None:
            predictions.update(cv_candidates=oof, cv_candidates_test=fold_test)
        cv_record["time_s"] = time.perf_counter() - start
        # the screening may return another candidate (its joint choice on the folds)
        cv.update(candidates=chosen, summary_for=functools.partial(
            _selection_summary, problem, outcome, run, config, base, chosen,
            search_space=search_space, cv_record=cv_record))
    return _selection_summary(problem, outcome, run, config, base, chosen, chosen.best,
                              search_space=search_space, predictions=predictions,
                              cv_record=cv_record)


def _selection_summary(problem, outcome, run, config, base, chosen, best: int, *,
                       search_space, predictions: dict | None = None,
                       cv_record: dict | None = None) -> dict:
    """The summary of candidate `best` of the retrained candidates `chosen`
    (`selection.select`), its regret / rank against the enumeration table; writes
    structure.json, front.json and the figures (`_retrain_selected`)."""
    from structsel.search import selection as sel

    proposals = np.asarray(outcome.choices)
    chosen = chosen._replace(best=best)
    choice = chosen.choices[best]
    if predictions is not None and chosen.ensemble_val_out is not None:
        predictions.update(candidates=chosen.choices, candidates_val=chosen.ensemble_val_out,
                           candidates_test=chosen.ensemble_test_out,
                           selected_val=chosen.ensemble_val_out[best],
                           selected_test=chosen.ensemble_test_out[best])
    runs = [i for i, c in enumerate(proposals) if np.array_equal(c, choice)]
    space = problem.space
    gamma = outcome.gamma[runs[0]]
    kl_weights = outcome.extra.get("kl_weight_of_run")
    levels = outcome.extra.get("structure_level_of_run")
    labels = [(f"c={kl_weights[i]:g}" + (f" {levels[i]}" if levels else "")) if kl_weights
              else f"restart {r}"
              for i, r in enumerate(outcome.extra.get("restart_of_run",
                                                      range(len(proposals))))]
    summary = {
        **base, "selected": space.selected(choice), "choice": [int(c) for c in choice],
        "gamma": {label: {op: float(v) for op, v in zip(search_space.op_names, g)}
                  for label, g in zip(space.edge_labels, gamma)},
        "params": int(chosen.params[best]),
        "val_metric": float(chosen.val[best].mean()),
        "test_metric": float(chosen.test[best].mean()),
        "test_metric_std": float(chosen.test[best].std()),
        "selection_tolerance": chosen.tolerance,
        **_ensemble_record(chosen, best),
        "proposed_by": [labels[i] for i in runs],
        "restart_choices": proposals.tolist(),
        "extra": outcome.extra,
    }
    if cv_record is not None:
        summary["cross_validation"] = cv_record
    if kl_weights:
        summary["kl_weight"] = sorted({kl_weights[i] for i in runs}, reverse=True)
        summary["kl_weight_path"] = sorted(set(kl_weights), reverse=True)
    table = (enumeration.load_enumeration_table(space.name, problem.dataset)
             if config.data is None else None)
    if table is not None:
        summary.update(enumeration.regret_and_rank(table, choice))
        summary["table_matches_budget"] = (table_matches(table, config.budget) and list(
            table["settings"].get("quantile_columns", [])) == list(problem.quantile_columns))
        summary["restart_regrets"] = [enumeration.regret_and_rank(table, c)["regret"]
                                      for c in proposals]
        summary["table"] = str(enumeration.table_path(space.name, problem.dataset))
    front = sel.front_record(chosen, space, proposals, labels)
    if table is not None:
        for row in front["candidates"]:
            row.update({f"table_{k}": v for k, v in
                        enumeration.regret_and_rank(table, row["choice"]).items()})
    run.write_json("front.json", front)
    sel.plot_front(front, run.path("front.png"), table=table,
                   metric=problem.task.metric_name)
    run.write_json("structure.json", {**space.export(choice), "dataset": problem.dataset,
                                      "task": problem.task.name,
                                      "width": config.budget.final_width,
                                      "budget": dataclasses.asdict(config.budget),
                                      "quantile_columns": list(problem.quantile_columns),
                                      "num_outputs": problem.task.num_outputs})
    spaces.plot_cell(space, choice, run.path("cell.png"))
    if outcome.gamma_history is not None:
        spaces.plot_gamma_history(search_space, np.asarray(outcome.gamma_history[runs[0]]),
                                 run.path("gamma.png"))
    return summary


def _screen_features(problem, outcome, run, config, key, summary, *, evaluator,
                     predictions: dict | None = None, cv: dict | None = None) -> dict:
    """Budget `feature_screening` (tables): retrains the selection on proposed groups of
    columns and keeps a group when its validation metric is better. Two proposals, tried
    in this order, each against the best so far (all columns, then the first group if it
    was kept):

    - "relevance": the search's input relevances (`features.propose`: Otsu's upper group);
    - "univariate": the columns whose F test against the target passes the
      Benjamini-Hochberg procedure (`features.propose_univariate`), tried when it keeps at
      most half of them and kept only with a lower validation loss too (`_is_better`): on
      a wide table the supernet's input kernels interpolate and their relevances do not
      single out the informative columns (session 32). With
      cross-validation the filter is repeated on every fold's training rows
      (`features.univariate_columns`), so the out-of-fold score is the whole procedure's.

    The model is the deep ensemble's when the budget ensembles (an exact tie goes to the
    lower ensemble validation loss, else to the columns already held). Records `features`
    in the summary (the deciding trial's fields; every trial under "proposals") and, when
    a group is kept, the columns in structure.json (`retrain` reads them).

    `key` is the candidates' retraining key on purpose: a paired comparison, the subset's
    models see the same minibatch rows and dropout masks as the all-column ones.
    `evaluator`: the candidates' (at the final width); the subset trains with its
    compiled program, the dropped columns masked (`Evaluator(columns=)`), not retraced.
    `predictions`: receives each trial's outputs (relevance: subset_*; univariate:
    univariate_subset_*), the all-column ones (all_columns_*) and, when a group is kept,
    makes its outputs the selection's (selected_*).

    `cv` (`_cv_state`, holding the selection's out-of-fold outputs and the retrained
    candidates): the choice of candidate and columns is joint. The `SCREENING_CANDIDATES`
    best candidates out of fold on all columns are trained on the proposed columns too, on
    the split and on every fold (all of them until session 33); the best of them by
    out-of-fold metric (ties: lower out-of-fold loss, then fewer parameters) is kept when
    it beats the best so far out of fold (ties: lower loss), and is returned even
    when it is another candidate than the all-column one (session 26: on a moons table the
    linear candidate won on all 12 columns, and gained nothing from the 2 moon columns on
    which the networks beat it)."""
    r = outcome.extra.get("input_relevance")
    if not config.budget.feature_screening or (r is None and problem is None):
        return summary
    d = None if r is None else len(r)
    trials = []  # (source, columns, fold filter or None)
    if r is not None:
        trials.append(("relevance", features.propose(r), None))
    data = problem.data if problem is not None else None
    if data is not None and problem.space.layout == "vector" and np.ndim(data.x_train) == 2:
        d = int(data.x_train.shape[1])
        classification = problem.task.name == "classification"
        uni = features.propose_univariate(data.x_train, data.y_train, classification)
        trials.append(("univariate", uni, functools.partial(
            _fold_univariate, classification=classification)))
    if d is None:
        return summary
    tried = {}  # columns -> the trial record, each group once
    all_record = {**{k: summary.get(k) for k in ("choice", "val_metric", "test_metric",
                                                 "params")},
                  "val_loss": summary.get("ensemble", {}).get("val_loss")}
    if predictions is not None and "selected_val" in predictions:
        predictions.update(all_columns_val=predictions["selected_val"],
                           all_columns_test=predictions["selected_test"])
    held, kept_trial = "all", None  # the columns the summary's model reads
    for source, cols, fold_filter in trials:
        if cols is None or len(cols) == d or tuple(cols) in tried:
            continue
        trial = _try_columns(problem, run, config, key, summary, cols, source, fold_filter,
                             evaluator=evaluator, predictions=predictions, cv=cv)
        tried[tuple(cols)] = trial["record"]
        if trial["better"]:
            summary, held, kept_trial = trial["summary"], [int(j) for j in cols], trial
    records = list(tried.values())
    uni = next((c for s, c, _ in trials if s == "univariate"), None)
    record = {"num_features": d, "relevance": r, "separation": features.SEPARATION,
              "univariate": {"fdr": features.FDR,
                             "max_fraction": features.UNIVARIATE_FRACTION,
                             "proposed": None if uni is None else [int(j) for j in uni]},
              "proposals": records, "all": all_record}
    if not records:
        summary["features"] = {**record, "proposed": None, "kept": "all", "source": None,
                               "reason": "no clearly separated group of columns"}
        return summary
    decisive = kept_trial["record"] if kept_trial else records[0]
    record.update({k: v for k, v in decisive.items() if k != "better"})
    record["time_s"] = sum(t["time_s"] for t in records)
    if kept_trial is None:
        basis = "cross-validation" if "cross_validation" in decisive else "validation"
        summary["features"] = {**record, "kept": "all",
                               "reason": f"the proposed columns were not better on {basis}"}
        return summary
    changed = decisive["subset"]["choice"] != all_record["choice"]
    basis = "cross-validation" if "cross_validation" in decisive else "validation"
    record.update(kept=held, candidate_changed=changed,
                  reason=f"{len(held)} of {d} columns ({decisive['source']}): better on "
                         f"{basis}" + (" (another candidate than on all columns)"
                                       if changed else ""))
    _write_columns(run, held, d)
    return {**summary, "features": record}


def _write_columns(run, kept, num_features: int) -> None:
    """Adds the kept columns to structure.json (`retrain` reads them)."""
    structure = json.loads(run.path("structure.json").read_text())
    run.write_json("structure.json", {**structure, "features": [int(j) for j in kept],
                                      "num_features": num_features})


def _is_linear(space, choice) -> bool:
    """Whether `choice` puts the identity op on every edge (the tabular space's linear
    model)."""
    return all(space.op_names[c] == "identity" for c in choice)


def _search_kept_columns(problem, final, method, outcome, run, config, summary, base, *,
                         search_key, retrain_key, search_evaluator, evaluator, predictions,
                         cv, progress) -> dict:
    """A second search on the kept columns, when the screening kept a group of columns and
    every structure the first search proposed is the linear model (the identity op on
    every edge). On a wide table (300 columns, 360 training rows) the linear skip of the
    supernet interpolates the training rows, so the search proposes the linear model
    whatever the columns say (session 32); on the columns kept the networks get their
    chance. The search reads the table with the other columns set to 0 (its compiled
    program, the same shapes); its proposals are retrained on the kept columns (on every
    fold when cross-validated) and the best is held when it beats the screening's model
    (`_try_columns`). Records `features["second_search"]`."""
    fs = summary.get("features") or {}
    if (fs.get("kept", "all") == "all" or outcome.choices is None
            or not all(_is_linear(problem.space, ch) for ch in np.asarray(outcome.choices))):
        return summary
    start = time.perf_counter()
    kept, d = fs["kept"], int(problem.data.x_train.shape[-1])
    masked = problem._replace(data=features.mask_columns(
        problem.data, features.column_mask(kept, d)))
    second = method.search(masked, Evaluator(masked, progress=progress,
                                             val_path=search_evaluator.val_path),
                           key=search_key, restarts=config.seeds,
                           relaxation=config.relaxation, progress=progress, jit=jax.jit)
    search_time = time.perf_counter() - start
    choices = np.unique(np.asarray(second.choices, np.int32), axis=0)
    record = {"proposed": choices.tolist(), "search_time_s": search_time}
    networks = np.array([not _is_linear(problem.space, ch) for ch in choices])
    if not networks.any():
        summary["features"] = {**fs, "second_search": {
            **record, "better": False, "reason": "it proposed the linear model again"}}
        return summary
    candidates = choices[networks]
    carried = {k: summary[k] for k in ("cross_validation",) if k in summary}
    trial = _try_columns(
        final, run, config, retrain_key, summary, kept, "second_search", None,
        evaluator=evaluator, predictions=predictions, cv=cv, candidates=candidates,
        summarise=lambda chosen, j: {**_selection_summary(
            final, second, run, config, base, chosen, j, search_space=problem.space),
            **carried})
    record.update({k: v for k, v in trial["record"].items() if k not in ("source", "proposed")},
                  time_s=time.perf_counter() - start)
    held = trial["summary"] if trial["better"] else summary
    features_record = {**fs, "second_search": record}
    if trial["better"]:
        features_record["candidate_changed"] = True  # a network, the all-column one linear
        basis = "cross-validation" if "cross_validation" in record else "validation"
        features_record["reason"] = (fs["reason"] + f"; a network of a second search on "
                                     f"them better on {basis}")
        _write_columns(run, kept, d)
    return {**held, "features": features_record}


def _pieces_setup(final, config, ds, cv, progress) -> dict | None:
    """What `_try_pieces` needs, made before the search (the program of the returned
    structure is compiled in a thread while the screening trains): the dataset with the
    pieces ("wide"), the role of each of its columns, its problem at the final width (the
    numbers that `make_problem` mapped to normal scores mapped again, not their pieces)
    and its evaluator (`specialise`: the one structure's program). None when
    the budget has no `numeric_ple` or the space is not a table's; {"skipped": why} on a
    cross-validated table; without "evaluator" when no number has more than K distinct
    training values.

    Not on cross-validated tables (session 34, breast_cancer and wine, split seeds 0-1):
    the pieces lowered the out-of-fold loss on all 4 splits and were kept, and gained
    nothing on test (-0.88, 0.00); on wine split 1 the model with them, kept for its
    loss, was less accurate out of fold than the linear model, so the run returned the
    linear model (97.22) instead of a network at 100.00; and the trial took 65-111 s, a
    third of those runs."""
    b = config.budget
    if not b.numeric_ple or final.space.layout != "vector" or np.ndim(ds.x_train) != 2:
        return None
    if cv is not None:
        return {"skipped": f"not tried on a cross-validated table (fewer than {b.cv_rows} "
                           "training + validation rows)"}
    wide = load_data(dataset=config.dataset, data=config.data, target=config.target,
                     task=ds.task, split_seed=config.split_seed, budget=b, classes=ds.classes,
                     pieces=True)
    roles = data_lib.column_roles(wide.encoding)
    plain = [j for j, (role, _) in enumerate(roles) if role != "piece"]  # ds's columns
    setup = {"wide": wide, "roles": roles, "plain": plain}
    if len(plain) == len(roles):
        return setup
    if len(plain) != ds.x_train.shape[1]:
        raise AssertionError("the table with the pieces has other columns than without")
    quantile = tuple(plain[j] for j in final.quantile_columns)
    data = enumeration.splits_of(wide, final.space.prepare)
    if quantile:
        data = features.quantile_normalise(data, quantile)
    problem = final._replace(data=data, quantile_columns=quantile)
    setup["evaluator"] = Evaluator(problem, progress=progress, specialise=True)  # no folds
    return setup


def _try_pieces(setup, run, config, key, summary, *, predictions):
    """Budget `numeric_ple` (K): the returned model retrained on its columns plus K
    piecewise-linear columns of training-quantile bins of each of its numbers with more
    than K distinct training values (`data.piecewise_linear`: a linear function of them is
    a linear spline of the number; Gorishniy et al. 2022), kept when its validation loss
    is lower (`_is_better`, by_loss; not on cross-validated tables: `_pieces_setup`).
    Session 34, whole runs with the pieces against without: they gained 1-2.5 test points
    on a 10000-row table whose logit has sin(2 x) and x^2 terms (HistGB was better than
    every network there) and 4-11 % RMSE on a revenue table, and lost 1.5-2 points on a
    census-like table and a make_classification table, whose validation losses were
    higher with the pieces on every split (docs/tables.md, session 34). `setup`:
    `_pieces_setup`'s. Returns (summary, the dataset with the pieces when the model reads
    them, else None); records `pieces`."""
    if setup is None or "choice" not in summary:
        return summary, None
    if "skipped" in setup:
        summary["pieces"] = {"bins": config.budget.numeric_ple, "kept": False,
                             "reason": setup["skipped"]}
        return summary, None
    start = time.perf_counter()
    b, roles, plain = config.budget, setup["roles"], setup["plain"]
    record = {"bins": b.numeric_ple, "num_features": len(roles),
              "held": {"choice": summary["choice"], "params": summary["params"],
                       **{k: summary.get(k) for k in ("val_metric", "test_metric")},
                       "val_loss": summary.get("ensemble", {}).get("val_loss")}}
    if "evaluator" not in setup:
        summary["pieces"] = {**record, "kept": False, "reason": f"no number with more than "
                             f"{b.numeric_ple} distinct training values"}
        return summary, None
    held = (summary.get("features") or {}).get("kept", "all")
    numbers = {plain[j] for j in (range(len(plain)) if held == "all" else held)}
    kept = sorted(numbers | {j for j, (role, number) in enumerate(roles)
                             if role == "piece" and number in numbers})
    if "prewarmed" in setup:
        setup["prewarmed"].result()  # compiled once, not again by a call racing it
    evaluator = setup["evaluator"]
    trial = _try_columns(evaluator.problem, run, config, key, summary, kept, "pieces", None,
                         evaluator=evaluator, predictions=predictions, cv=None)
    record.update({k: v for k, v in trial["record"].items() if k != "source"},
                  kept=trial["better"], time_s=time.perf_counter() - start)
    if not trial["better"]:
        summary["pieces"] = {**record, "reason": "no lower validation loss"}
        return summary, None
    pieced = {roles[j][1] for j in kept if roles[j][0] == "piece"}
    record["reason"] = (f"{len(kept) - len(numbers)} piecewise-linear columns of "
                        f"{len(pieced)} numbers: a lower validation loss")
    quantile = list(evaluator.problem.quantile_columns)
    structure = json.loads(run.path("structure.json").read_text())
    run.write_json("structure.json", {**structure, "features": kept,
                                      "num_features": len(roles), "quantile_columns": quantile})
    carried = {k: summary[k] for k in ("features",) if k in summary}  # the screening's
    return ({**trial["summary"], **carried, "pieces": record, "quantile_columns": quantile},
            setup["wide"])


def _is_better(gain: float, loss, held_loss, *, strict: bool = False,
               by_loss: bool = False) -> bool:
    """Whether a trial's model replaces the held one: `gain` its metric's improvement
    (positive: better), `loss` / `held_loss` their validation losses (None: unknown).
    Not strict: a better metric, or an equal one and a lower loss. Strict (the univariate
    proposal, tried after the relevance one on the same validation rows): a metric at
    least as good and a lower loss, when the losses are known. On adult-like split 0
    (session 32) the univariate columns were 7 of 500 validation rows better in accuracy
    with a higher loss, and 1.2 points worse on test; every kept univariate trial on the
    wide tables had both a better accuracy and a lower loss (by 0.3-1.2 nats). By loss
    (the piecewise-linear columns, `_try_pieces`): a lower loss, the metric aside (a better
    metric when the losses are unknown)."""
    if by_loss:
        return gain > 0 if loss is None or held_loss is None else loss < held_loss
    if gain > 0 and not (strict and loss is not None and held_loss is not None):
        return True
    return gain >= 0 and loss is not None and held_loss is not None and loss < held_loss


def _fold_univariate(fold, *, classification: bool):
    """The univariate filter (`features.univariate_columns`) on a fold's training rows."""
    return features.univariate_columns(fold.x_train, fold.y_train, classification)


def _try_columns(problem, run, config, key, summary, kept, source: str, fold_filter, *,
                 evaluator, predictions, cv, candidates=None, summarise=None) -> dict:
    """One trial of `_screen_features`: the selection (with cross-validation the
    `SCREENING_CANDIDATES` best candidates out of fold) retrained on the columns `kept`
    and compared with `summary`'s model (or, cross-validated, with cv's selected
    out-of-fold outputs). Returns {"better", "record",
    "summary" (the summary to hold when better), "time_s"}; updates `cv` and
    `predictions` when better. `fold_filter` (fold splits -> columns): the folds train on
    the columns it picks on their own training rows (None: on `kept`). `candidates` (N, E)
    and `summarise` ((chosen, index) -> summary): other structures than the run's retrained
    candidates (a second search's), and how the summary of the one held is written."""
    from structsel.search import selection as sel

    start = time.perf_counter()
    sub = features.take_columns(problem.data, kept)  # its parameter count, its labels
    task, b = problem.task, config.budget
    subset = functools.partial(evaluator, columns=kept, size=evaluator.size)
    keys = jax.random.split(key, b.retrain_seeds)  # the candidates' retraining keys
    joint = cv is not None and "selected" in cv  # cross-validated: the best candidates
    tried = None  # cross-validated: (candidates tried, of how many)
    if candidates is None and joint:
        ranked = cv["candidates"].choices[cv["ranking"]]
        candidates = ranked[:SCREENING_CANDIDATES]
        tried = (len(candidates), len(ranked))
    elif candidates is None:
        candidates = np.asarray(summary["choice"], np.int32)[None]
    chosen = sel.select(subset, problem.space, candidates, keys=keys,
                        x_train=np.asarray(sub.x_train),
                        higher_is_better=task.higher_is_better,
                        ensemble=(task, sub) if b.ensemble else None)
    j = chosen.best  # the split's pick (the only candidate without folds)
    sign = 1.0 if task.higher_is_better else -1.0
    strict = source == "univariate"  # a second look at the validation rows: see _is_better
    rule = functools.partial(_is_better, strict=strict, by_loss=source == "pieces")
    record = {"source": source, "proposed": [int(c) for c in kept]}
    prefix = "" if source == "relevance" else f"{source}_"
    if joint:
        oof, fold_test = _fold_outputs(evaluator, problem, cv["plan"], chosen.choices, keys,
                                       fold0_val=chosen.ensemble_val_out,
                                       fold0_path=chosen.val_path,
                                       columns=kept if fold_filter is None else fold_filter)
        j, metric, loss, rows = _out_of_fold_choice(task, oof, cv["y"], chosen)
        cv_metric, cv_loss = float(metric[j]), float(loss[j])
        cv_gain = sign * (cv_metric - cv["selected_metric"])
        better = rule(cv_gain, cv_loss, cv["selected_loss"])
        record["cross_validation"] = {"subset_val_metric": cv_metric,
                                      "subset_val_loss": cv_loss,
                                      "compared_val_metric": cv["selected_metric"],
                                      "compared_val_loss": cv["selected_loss"],
                                      "folds_filtered": fold_filter is not None,
                                      "subset_candidates": rows}
        if tried is not None:
            record["cross_validation"]["candidates_tried"] = {
                "tried": tried[0], "of": tried[1],
                "rule": "the best out of fold on all columns"}
        if predictions is not None:
            predictions.update({f"cv_{prefix}subset": oof[j],
                                f"cv_{prefix}subset_test": fold_test[j],
                                f"cv_{prefix}subset_candidates": oof})
        if better:
            cv.update(selected=oof[j], selected_metric=cv_metric, selected_loss=cv_loss)
    scores = {"val_metric": float(chosen.val[j].mean()),
              "test_metric": float(chosen.test[j].mean()),
              "test_metric_std": float(chosen.test[j].std()), "params": int(chosen.params[j]),
              **_ensemble_record(chosen, j)}
    if not joint:
        gain = sign * (scores["val_metric"] - summary["val_metric"])
        loss_sub = scores.get("ensemble", {}).get("val_loss")
        loss_held = summary.get("ensemble", {}).get("val_loss")
        better = rule(gain, loss_sub, loss_held)
    subset_choice = [int(c) for c in chosen.choices[j]]
    record["subset"] = {"choice": subset_choice,
                        **{k: scores[k] for k in ("val_metric", "test_metric", "params")}}
    if "ensemble" in scores:
        record["subset"]["val_loss"] = scores["ensemble"]["val_loss"]
    record["better"] = bool(better)
    record["time_s"] = time.perf_counter() - start  # the subset's retraining
    if predictions is not None and chosen.ensemble_val_out is not None:
        predictions.update({f"{prefix}subset_columns": np.asarray(kept),
                            f"{prefix}subset_val": chosen.ensemble_val_out[j],
                            f"{prefix}subset_test": chosen.ensemble_test_out[j]})
        if joint:  # the candidates tried on the columns (rows of the trial's `candidates`)
            predictions.update({f"{prefix}subset_candidates_val": chosen.ensemble_val_out,
                                f"{prefix}subset_candidates_test": chosen.ensemble_test_out})
        if better:
            predictions.update(selected_val=chosen.ensemble_val_out[j],
                               selected_test=chosen.ensemble_test_out[j])
    held = summary
    if better:
        if summarise is not None:
            held = summarise(chosen, j)
        elif subset_choice != summary["choice"]:  # the summary, structure.json, figures
            all_choices = cv["candidates"].choices.tolist()
            held = cv["summary_for"](all_choices.index(subset_choice))
        held = {**held, **scores}
    return {"better": bool(better), "record": record, "summary": held,
            "time_s": record["time_s"]}


def _out_of_fold_choice(task, oof, y, chosen) -> tuple:
    """(best, metric, loss, rows): the candidate of `chosen` (`selection.select`) with the
    best out-of-fold metric of its outputs `oof` (N, rows, C) on `y` (ties: lower loss,
    then fewer parameters), every candidate's metric and loss, and their records."""
    from structsel.search import selection as sel

    metric, loss = crossval.scores(task, oof, y)
    best, _ = sel.one_se_choice(metric[:, None], chosen.params,
                                higher_is_better=task.higher_is_better, rule="best",
                                loss=loss)
    rows = [{"choice": [int(c) for c in ch], "val_metric": float(m), "val_loss": float(lo)}
            for ch, m, lo in zip(chosen.choices, metric, loss)]
    return best, metric, loss, rows


def _out_of_fold_ranking(task, metric, loss, params) -> list[int]:
    """The candidates best first by out-of-fold metric, then lower loss, then fewer
    parameters (the order of `_out_of_fold_choice`, whose pick is the first)."""
    sign = 1.0 if task.higher_is_better else -1.0
    return sorted(range(len(metric)), key=lambda i: (-sign * float(metric[i]),
                                                     float(loss[i]), int(params[i])))


def _ensemble_record(chosen, best: int) -> dict:
    """With a deep ensemble: its val / test metric as the run's, the single models' kept."""
    if chosen.ensemble_val is None:
        return {}
    return {"val_metric": float(chosen.ensemble_val[best]),
            "test_metric": float(chosen.ensemble_test[best]),
            "ensemble": {"members": int(chosen.val.shape[1]),
                         "val_loss": float(chosen.ensemble_val_loss[best]),
                         "val_metric_single": float(chosen.val[best].mean()),
                         "test_metric_single": float(chosen.test[best].mean()),
                         "test_metric_single_std": float(chosen.test[best].std()),
                         "params_total": int(chosen.val.shape[1] * chosen.params[best])}}


def _cv_state(config: SearchConfig, problem: Problem) -> dict | None:
    """{"plan": `crossval.Plan`, "y": pooled out-of-fold targets} when the budget
    cross-validates this split's decisions (`cv_rows`), else None."""
    n_train, n_val = (int(problem.data.x_train.shape[0]), int(problem.data.x_val.shape[0]))
    if not (config.budget.ensemble and crossval.applies(n_train, n_val, config.budget.cv_rows)):
        return None
    p = crossval.plan(n_train, n_val, seed=config.seed)
    return {"plan": p, "y": crossval.pooled_targets(problem.data, p)}


def _fold_outputs(evaluator, problem: Problem, plan: crossval.Plan, choices, keys, *,
                  fold0_val, fold0_path=None, columns=None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold deep-ensemble outputs of each structure: (N, rows, C) pooled over the
    folds, fold 0's being `fold0_val` (N, n_val, C) (the split's, already trained), and
    (N, K - 1, n_test, C) the other folds' models' outputs on the test rows. Each fold
    trains with the same keys and the evaluator's compiled program (same shapes).

    With `fold0_path` (fold 0's checkpoint outputs, `Selection.val_path`) and an evaluator
    that returns them (`Evaluator(val_path=)`), every fold's models are scored at the stop
    the other folds choose (`crossval.held_out_stopping`), not at their own stop, chosen
    on the rows scored; the returned models keep their own stop. `columns`: the columns
    every fold trains on, or a function of the fold's splits that picks them (a column
    filter repeated on each fold's training rows)."""
    from structsel.search import selection as sel

    vals, tests = [np.asarray(fold0_val)], []
    paths, y_val = [fold0_path], [np.asarray(problem.data.y_val)]
    for k in range(1, plan.folds):
        fold = crossval.fold_splits(problem.data, plan, k)
        ev = Evaluator(problem._replace(data=fold), progress=evaluator.progress,
                       val_path=evaluator.val_path, specialise=evaluator.specialise)
        cols = columns(fold) if callable(columns) else columns
        out = ev(choices, keys, outputs=True, columns=cols, size=evaluator.size)
        *_, val_out, test_out = sel._ensemble_scorer(problem.task)(
            out["val_out"], fold.y_val, out["test_out"], fold.y_test)
        vals.append(np.asarray(val_out))
        tests.append(np.asarray(test_out))
        paths.append(out.get("val_path"))
        y_val.append(np.asarray(fold.y_val))
        evaluator.count += ev.count
    if all(p is not None for p in paths):
        vals = crossval.held_out_stopping(problem.task, np.stack(paths), np.stack(y_val))[0]
    return crossval.pool(np.stack(vals), plan), np.stack(tests, axis=1)


def _stopping(chosen) -> str:
    """How the out-of-fold outputs were stopped (`_fold_outputs`), for summary.json."""
    return ("held out: each fold's models at the checkpoint the other folds choose"
            if chosen.val_path is not None else "each model's own stop on its fold")


def _cv_references(task, data, cv: dict, predictions: dict) -> dict:
    """The linear model and the constant predictor fitted on every fold's training rows,
    scored on the pooled out-of-fold rows like the selection (`references.review`'s
    `cross_validated`); their outputs go to `predictions` (cv_linear, cv_constant)."""
    p = cv["plan"]
    lin, const = crossval.reference_outputs(task, data, p)
    (lin_m,), _ = crossval.scores(task, lin[None], cv["y"])
    (const_m,), _ = crossval.scores(task, const[None], cv["y"])
    predictions.update(cv_y=cv["y"], cv_selected=cv["selected"], cv_linear=lin,
                       cv_constant=const)
    return {**crossval.record(p), "selected": cv["selected_metric"], "linear": float(lin_m),
            "constant": float(const_m)}


def run_enumeration(*, space: str, dataset: str, seeds: int = 3, seed: int = 0,
                    budget: str | Budget | None = None, out: str | None = None,
                    progress: bool = True) -> tuple[dict, pathlib.Path]:
    """Trains every structure of `space` on `dataset` with `seeds` seeds; writes the table."""
    if space not in spaces.SPACES:
        raise ValueError(f"space must be one of {sorted(spaces.SPACES)}, got {space!r}")
    if out is not None and pathlib.Path(out).is_dir():
        raise ValueError(f"out {out} is a directory; give the path of the table's .json file")
    b = parse_budget(budget if budget is not None else default_budget(dataset, space))
    ds = load_data(dataset=dataset, data=None, target=None, task=None, split_seed=seed, budget=b)
    problem = final_problem(make_problem(ds, space, b))  # trained as a search returns them
    if problem.space.discrete.size > 4096:
        raise ValueError(f"space {space} has {problem.space.discrete.size} structures; "
                         "enumerate spaces with at most 4096")
    start = time.perf_counter()
    choices = np.asarray(problem.space.discrete.enumerate())
    params = problem.space.all_num_params(choices, np.asarray(problem.data.x_train))
    keys = jax.random.split(prng_key(seed), seeds)
    scores = Evaluator(problem, progress=progress)(choices, keys)
    command = (f"structsel enumerate --space {space} --dataset {dataset} --seeds {seeds} "
               f"--seed {seed} --budget {b.name}" + "".join(
                   f",{k}={v}" for k, v in dataclasses.asdict(b).items()
                   if k != "name" and v != getattr(BUDGETS[b.name], k)))
    table = enumeration.make_table(
        space=space, dataset=dataset, op_names=[problem.space.op_names] * len(choices[0]),
        choices=choices, params=params, val=scores["val_metric"], test=scores["test_metric"],
        higher_is_better=problem.task.higher_is_better,
        settings={"budget": dataclasses.asdict(b), "split": ds.split,
                  **({"quantile_columns": list(problem.quantile_columns)}
                     if problem.quantile_columns else {}),
                  "wall_time_s": time.perf_counter() - start,
                  "edges": list(problem.space.edge_labels)},
        command=command)
    path = enumeration.save_table(table, out or enumeration.table_path(space, dataset))
    return table, path
