"""Shared entry-point plumbing for experiment scripts.

Each experiment declares a frozen dataclass config with defaults (the full run) and a
`smoke()` variant. `parse(Config, argv)` turns the command line into a typed config:
`--smoke`, `--workdir DIR`, `--seed N` and `--set field=value` overrides (values parsed as
JSON, falling back to strings), so `python experiments/glm_toy.py --set iterations=200`
works for every field without per-script argparse code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Sequence, TypeVar

from structsel.runs import Run, to_jsonable

C = TypeVar("C")

REPO = pathlib.Path(__file__).resolve().parent.parent
FIGURES = REPO / "docs" / "figures"


def _coerce(field: dataclasses.Field, text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if isinstance(value, list):
        value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if field.type in ("float", float) and isinstance(value, int):
        value = float(value)
    return value


def parse(config_cls: type[C], argv: Sequence[str] | None = None, *, name: str,
          description: str = "") -> tuple[C, Run, argparse.Namespace]:
    """Builds the config from defaults, `--smoke` and `--set k=v`; creates the workdir Run."""
    p = argparse.ArgumentParser(description=description or config_cls.__doc__)
    p.add_argument("--smoke", action="store_true", help="shrink everything to seconds (tests)")
    p.add_argument("--workdir", default=f"results/{name}", help="where results are written")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field (JSON value); repeatable")
    p.add_argument("--figures", default=None,
                   help="also copy the PNG figures to this folder (e.g. docs/figures)")
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if "checkpoint_every" in fields:                     # experiments with long runs
        p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                       help="save the training state every N steps into WORKDIR/checkpoints "
                            "(0: never; docs/checkpoint.md)")
        p.add_argument("--resume", action="store_true",
                       help="continue from the checkpoints in --workdir (same config)")
    args = p.parse_args(argv)
    config = config_cls.smoke() if args.smoke else config_cls()
    updates = {}
    if getattr(args, "checkpoint_every", None) is not None:
        updates["checkpoint_every"] = args.checkpoint_every
    for item in args.overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            p.error(f"--set expects FIELD=VALUE with FIELD one of {sorted(fields)}, got {item!r}")
        updates[key] = _coerce(fields[key], text)
    if args.seed is not None:
        if "seed" not in fields:
            p.error("this experiment has no seed field")
        updates["seed"] = args.seed
    try:
        config = dataclasses.replace(config, **updates)
    except ValueError as err:  # the config's own checks (__post_init__): one line, exit 2
        p.error(str(err))
    run = Run.create(args.workdir, config=config, seed=getattr(config, "seed", 0))
    return config, run, args


def checkpointer(run: Run, args: argparse.Namespace, config: Any, phase: str, *, state: Any,
                 **extra: Any):
    """The Checkpointer of one training phase, in WORKDIR/checkpoints/<phase>, or None when
    `config.checkpoint_every` is 0. Its fingerprint is the config (less checkpoint_every),
    the package versions, the state's structure and `extra` (e.g. the traced values of
    the other runs of a batched group). Without --resume an earlier run's checkpoints of
    the phase are deleted (a fresh run); with it they are continued."""
    if not config.checkpoint_every:
        return None
    from structsel.checkpoint import Checkpointer, fingerprint

    directory = run.path("checkpoints") / phase
    resume = getattr(args, "resume", False)
    if not resume and directory.exists():
        shutil.rmtree(directory)
    identity = {k: v for k, v in to_jsonable(config).items() if k != "checkpoint_every"}
    ckpt = Checkpointer(directory, every=config.checkpoint_every,
                        fingerprint=fingerprint(identity, state=state, phase=phase, **extra))
    if resume and ckpt.latest_step() is None:
        print(f"--resume: no checkpoint in {directory}; {phase} starts at step 0",
              file=sys.stderr)
    return ckpt


def check_fields(config: Any, *, ints: Sequence[str] = (), positive: Sequence[str] = (),
                 nonnegative: Sequence[str] = (), positive_tuples: Sequence[str] = ()) -> None:
    """Config checks for `__post_init__`: ValueError naming the first field that is not an
    int >= 1 (`ints`), a finite number > 0 (`positive`) or >= 0 (`nonnegative`), or a
    non-empty tuple of finite numbers > 0 (`positive_tuples`)."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    for name in ints:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    for names, ok, what in ((positive, lambda v: number(v) and v > 0, "a finite number > 0"),
                            (nonnegative, lambda v: number(v) and v >= 0,
                             "a finite number >= 0")):
        for name in names:
            if not ok(getattr(config, name)):
                raise ValueError(f"{name} must be {what}, got {getattr(config, name)!r}")
    for name in positive_tuples:
        v = getattr(config, name)
        if not (isinstance(v, tuple) and v and all(number(t) and t > 0 for t in v)):
            raise ValueError(f"{name} must be a non-empty tuple of finite numbers > 0, got {v!r}")


def static_config(config: C, traced: Sequence[str]) -> C:
    """`config` with its `traced` fields at the class defaults: equal for the runs that
    can share one compiled program (the vectorised-experiment protocol, docs/sweep.md)."""
    cls = type(config)
    return dataclasses.replace(config, **{name: getattr(cls, name) for name in traced})


def check_group(configs: Sequence[Any], traced: Sequence[str]) -> None:
    """ValueError naming the first field outside `traced` on which the runs differ."""
    if not configs:
        raise ValueError("run_many needs at least one run")
    base = static_config(configs[0], traced)
    for config in configs[1:]:
        other = static_config(config, traced)
        for f in dataclasses.fields(base):
            a, b = getattr(base, f.name), getattr(other, f.name)
            if a != b:
                raise ValueError(f"the runs of one run_many call may differ only in "
                                 f"{tuple(traced)}; {f.name} is {a!r} in the first and "
                                 f"{b!r} in another")


def stack_runs(per_run: Sequence[Sequence[Any]]) -> tuple:
    """Each run's arrays (the same list per run: e.g. its train / val / test split) stacked
    along a new leading run axis, as jax arrays; ValueError naming the shapes when the
    runs' arrays differ in shape (they could not share one vmapped program)."""
    import jax.numpy as jnp
    import numpy as np

    shapes = {tuple(np.shape(a) for a in arrays) for arrays in per_run}
    if len(shapes) != 1:
        raise ValueError(f"the runs' data differ in shape, so they cannot be one vmapped "
                         f"program: {sorted(shapes)}")
    return tuple(jnp.asarray(np.stack(column)) for column in zip(*per_run))


def run_many(config_cls: type[C], argvs: Sequence[Sequence[str] | None], *, name: str,
             description: str, traced: Sequence[str],
             experiment: Callable[[list, list, argparse.Namespace], list],
             report: Callable[[Any, Any, int], tuple[dict, dict]]) -> list[dict]:
    """The `run_many` of an experiment (docs/sweep.md, "Vectorised experiments"): parses
    each command line (`parse`: every run gets its own workdir record), refuses runs that
    differ outside `traced` before anything is compiled (`check_group`), runs
    `experiment(configs, runs, args) -> [outcome per run]` once for the group (`args`:
    the first command line's, e.g. its checkpoint flags), then writes each
    run's `report(config, outcome, batched_runs) -> (summary, figures)` with `finish`
    (`wall_seconds`: the group's). Returns the summaries."""
    import matplotlib
    matplotlib.use("Agg")

    parsed = [parse(config_cls, argv, name=name, description=description) for argv in argvs]
    configs = [config for config, _, _ in parsed]
    check_group(configs, traced)
    with Timer() as timer:
        outcomes = experiment(configs, [run for _, run, _ in parsed], parsed[0][2])
    summaries = []
    for (config, run, args), outcome in zip(parsed, outcomes):
        summary, figures = report(config, outcome, len(configs))
        summaries.append(finish(run, args, summary, figures, timer.seconds))
    return summaries


def save_figure(fig, run: Run, filename: str, args: argparse.Namespace) -> pathlib.Path:
    """Saves a matplotlib figure into the workdir (and into --figures if given)."""
    out = run.path(filename)
    fig.savefig(out, dpi=150, bbox_inches="tight")
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        fig.savefig(pathlib.Path(args.figures) / filename, dpi=150, bbox_inches="tight")
    return out


def finish(run: Run, args: argparse.Namespace, summary: dict, figures: dict,
           seconds: float) -> dict:
    """Writes summary.json (with `wall_seconds`) and the figures, closes them; returns summary."""
    import matplotlib.pyplot as plt

    summary["wall_seconds"] = seconds
    run.write_summary(summary)
    for filename, fig in figures.items():
        save_figure(fig, run, filename, args)
    plt.close("all")
    return summary


class Timer:
    """Wall-clock timer for summary.json: `with Timer() as t: ...; t.seconds`."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
