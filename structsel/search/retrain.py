"""`structsel retrain`: rebuild a structure.json as a stand-alone model and train it from scratch.

The structure written by `structsel search` is `family.export_structure` of the selected
simplex vertex (plus the space, width and task it came from). `rebuild` turns it back into
a discrete `Family` with `family.discrete_model` (ops with gamma_l = 0 and dead vertices
removed, applied with gamma = 1 everywhere) and `run_retrain` trains that model with
`retrain_seeds` seeds (vmapped, one jitted program) and reports val / test metrics.

A structure.json may instead describe the linear model that `structsel search` returned
when its selection did not beat it (format `structsel.linear/1`): that model is refitted
(`references.fit_linear`, convex, so the seeds do not matter). Either way the data is
split as the search split it (the split seed recorded in structure.json) and class labels
are mapped to the integers recorded there (`classes`), so metrics are comparable.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import numpy as np

from structsel.family import Family, discrete_model
from structsel.runs import Run
from structsel.search import enumeration, features, references, runner, spaces


def read_structure(path: str | pathlib.Path) -> dict:
    """The JSON dict of a structure file (ValueError if missing or malformed)."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"structure file {path} is a directory; expected a structure.json")
    if not path.is_file():
        raise ValueError(f"structure file not found: {path}")
    try:
        structure = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the structure file "
                         f"({getattr(err, 'strerror', None) or 'not UTF-8 text'})") from None
    if not isinstance(structure, dict):
        raise ValueError(f"{path}: a structure.json holds a JSON object, got a "
                         f"{type(structure).__name__}")
    _check_record(path, structure)
    if structure.get("format") == "structsel.linear/1":
        return structure
    for key in ("space", "width", "edges", "format"):
        if key not in structure:
            raise ValueError(f"{path}: not a structure.json of structsel search (no {key!r})")
    width = structure["width"]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"{path}: 'width' must be an int >= 1, got {width!r}")
    return structure


_KINDS = ("numeric", "categorical", "dropped")


def _check_record(path: pathlib.Path, structure: dict) -> None:
    """The recorded split seed, outputs and classes have the types run_retrain uses."""
    split = structure.get("split")
    seed = split.get("seed", 0) if isinstance(split, dict) else 0
    if split is not None and not isinstance(split, dict) or (
            isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"{path}: 'split' must be null or an object whose 'seed' is an int "
                         f">= 0, got {split!r}")
    outputs = structure.get("num_outputs")
    if outputs is not None and (isinstance(outputs, bool) or not isinstance(outputs, int)
                                or outputs < 1):
        raise ValueError(f"{path}: 'num_outputs' must be null or an int >= 1, got {outputs!r}")
    encoding = structure.get("encoding")
    if encoding is not None and not (isinstance(encoding, dict) and isinstance(
            encoding.get("columns"), list) and all(
            isinstance(c, dict) and "name" in c and c.get("kind") in _KINDS
            for c in encoding["columns"])):
        raise ValueError(f"{path}: 'encoding' must be null or an object with a list "
                         f"'columns' of {{name, kind in {list(_KINDS)}}}, got {encoding!r}"[:300])
    if not isinstance(structure.get("classes") or [], list):
        raise ValueError(f"{path}: 'classes' must be null or a list of labels, got "
                         f"{structure['classes']!r}")


def rebuild(structure: dict, *, num_outputs: int) -> tuple[spaces.Space, Family]:
    """(space, discrete Family) of a structure dict; the Family is applied with ones_gamma()."""
    space = spaces.structure_space(structure, num_outputs=num_outputs,
                                   width=int(structure["width"]))
    try:
        sub, _ = discrete_model(space.family, structure)
    except ValueError as err:
        raise ValueError(f"the structure does not fit its space {structure['space']!r} (exported "
                         f"from another space?): {err}") from None
    return space, sub


def kept_ops(structure: dict) -> dict[str, str]:
    """{'j->k': op name} of the searchable edges recorded in a structure dict."""
    return dict(structure.get("selected", {}))


def train_discrete(sub: Family, task, config, data: enumeration.Splits, *, keys,
                   outputs: bool = False):
    """Trains the discrete model `sub` (gamma = 1 on every edge) with each key; numpy metrics
    (and with `outputs` the models' outputs "val_out" / "test_out", for an ensemble)."""
    gammas = tuple(g[None] for g in sub.ones_gamma())
    fn = jax.jit(lambda k, d: enumeration.train_structures(sub, task, config, gammas, d, keys=k,
                                                           outputs=outputs))
    return {k: np.asarray(v)[0] for k, v in fn(keys, data).items()}


def budget_of(record: dict, budget) -> runner.Budget:
    """The budget to retrain with: `budget` if given, else the one the structure was
    selected with (recorded in structure.json), else 'default'."""
    if budget is not None:
        return runner.parse_budget(budget)
    recorded = record.get("budget")
    if isinstance(recorded, dict):
        fields = {f.name for f in dataclasses.fields(runner.Budget)}
        return runner.Budget(**{k: v for k, v in recorded.items() if k in fields})
    return runner.parse_budget("default")


def path_num_params(sub: Family, x) -> int:
    """Weights of the discrete model `sub` that reach its output (`references.path_num_params`
    with the single op of every edge), counted on the rebuilt model itself."""
    shapes = jax.eval_shape(lambda k: sub.init(k, x[:1]), jax.random.key(0))
    if any(k != 1 for k in sub.num_ops):  # not a simplex vertex: every kept op counts
        return int(sub.num_params(shapes))
    return references.path_num_params(sub, sub.param_counts(shapes), np.zeros(sub.num_edges, int),
                                      sub.validate(x[:1])[-1].shape[-1])


def select_columns(splits: enumeration.Splits, record: dict) -> enumeration.Splits:
    """The splits restricted to the columns the structure reads (`features` of
    structure.json, written when the search's feature screening kept a subset); all
    columns when it has none. ValueError when the data has another number of columns."""
    cols = record.get("features")
    if cols is None:
        return splits
    d = int(splits.x_train.shape[-1])
    if record.get("num_features") not in (None, d) or max(cols) >= d:
        raise ValueError(f"the structure reads columns {cols} of {record.get('num_features')} "
                         f"feature columns, the data has {d}")
    return features.take_columns(splits, cols)


def run_retrain(*, structure, data=None, target=None, task=None, dataset=None, seed=0,
                split_seed=None, seeds=3, budget=None, workdir=None,
                progress=False) -> dict:
    """Rebuilds `structure` (a path) and trains it from scratch on the given data, split with
    `split_seed` (default: the structure's recorded split seed, else 0)."""
    start = time.perf_counter()
    record = read_structure(structure)
    linear = record.get("format") == "structsel.linear/1"
    if data is None:
        dataset = dataset or record.get("dataset", "digits")
    elif dataset is not None:
        raise ValueError("give either --data FILE or --dataset NAME, not both")
    if split_seed is None:
        split_seed = int((record.get("split") or {}).get("seed", 0))
    b = budget_of(record, budget)
    if not linear:
        b = dataclasses.replace(b, width=int(record["width"]))
    ds = runner.load_data(dataset=dataset, data=data, target=target, task=task,
                          split_seed=split_seed, budget=b, classes=record.get("classes"),
                          encoding=record.get("encoding"))
    t = enumeration.task_of(ds)
    if record.get("num_outputs") not in (None, t.num_outputs):
        raise ValueError(f"the structure was built for {record['num_outputs']} outputs, "
                         f"the data needs {t.num_outputs}")
    if linear:
        splits = enumeration.splits_of(ds)
        base = {"selected": {"model": "linear"}, "space": "linear",
                **references.reference_scores(t, splits, jit=jax.jit)["linear"]}
        base.update(val_metric_std=0.0, test_metric_std=0.0)
    else:
        space, sub = rebuild(record, num_outputs=t.num_outputs)
        splits = enumeration.splits_of(ds, space.prepare)
        if record.get("quantile_columns"):  # the columns the search mapped to normal scores
            splits = features.quantile_normalise(splits, record["quantile_columns"])
        splits = select_columns(splits, record)
        keys = jax.random.split(runner.prng_key(seed), seeds)
        scores = train_discrete(sub, t, b.train, splits, keys=keys, outputs=b.ensemble)
        enumeration.check_diverged({k: v[None] for k, v in scores.items()},
                                   [kept_ops(record)], b.learning_rate)
        base = {"selected": kept_ops(record), "space": space.name,
                "params": path_num_params(sub, splits.x_train),
                "val_metric": float(scores["val_metric"].mean()),
                "val_metric_std": float(scores["val_metric"].std()),
                "test_metric": float(scores["test_metric"].mean()),
                "test_metric_std": float(scores["test_metric"].std())}
        if b.ensemble:  # the returned model is the seeds' deep ensemble (as in search)
            base["ensemble"] = {
                "members": int(seeds),
                **{f"{split}_metric": float(t.metric(t.ensemble(scores[f"{split}_out"]), y))
                   for split, y in (("val", splits.y_val), ("test", splits.y_test))}}
    workdir = pathlib.Path(workdir or pathlib.Path(structure).parent / "retrain")
    run = Run.create(workdir, config={"structure": str(structure), "data": data,
                                      "dataset": ds.name, "seeds": seeds,
                                      "split": ds.split,
                                      "budget": dataclasses.asdict(b)}, seed=seed)
    summary = {"structure": str(structure), "dataset": ds.name, "space": base["space"],
               "selected": base["selected"], "params": base["params"],
               "metric": t.metric_name,
               **{k: base[k] for k in ("val_metric", "val_metric_std", "test_metric",
                                       "test_metric_std")},
               **({"ensemble": base["ensemble"]} if "ensemble" in base else {}),
               "seeds": 1 if linear else seeds, "split": ds.split,
               **({"features": record["features"]} if record.get("features") else {}),
               "wall_time_s": time.perf_counter() - start, "workdir": str(run.workdir)}
    if ds.classes is not None:
        summary["classes"] = list(ds.classes)
    run.write_summary(summary)
    return summary


def format_retrain(summary: dict) -> str:
    """The table printed by `structsel retrain`."""
    ops = ", ".join(f"{e}: {o}" for e, o in summary["selected"].items())
    return "\n".join([
        f"structure     | {ops}",
        f"params        | {summary['params']}",
        f"val {summary['metric']:<9} | {summary['val_metric']:.4f} +- {summary['val_metric_std']:.4f}",
        f"test {summary['metric']:<8} | {summary['test_metric']:.4f} +- {summary['test_metric_std']:.4f}",
        *([f"ensemble of {summary['ensemble']['members']} | val "
           f"{summary['ensemble']['val_metric']:.4f}  test {summary['ensemble']['test_metric']:.4f}"]
          if "ensemble" in summary else []),
        f"workdir       | {summary['workdir']}"])
