"""Reproducibility sweeps: `structsel sweep TARGET --grid key=v1,v2 ... --seeds N`.

The grid x seeds is expanded into runs (row-major over the grid keys in the order given,
seeds innermost; `run_id` is the position). Runs whose *static* keys agree (what changes
the compiled program: shapes, step counts, options) form a group; a group of a vectorised
target (`glm_toy`) is ONE jitted program vmapped over the run axis (seeds and the numeric
hyperparameters traced), its run axis sharded over the local devices
(`NamedSharding` on a 1-D mesh "runs", padded to a multiple of the device count), and
advanced chunk by chunk with `structsel.loop.run_chunks`, checkpointed with orbax as one
pytree. Groups run one after another. With `distributed`, `jax.distributed.initialize`
joins the processes (it auto-detects SLURM), each process takes a contiguous share of every
group and writes its rows to its own file; process 0 merges them once every share is there.

Workdir: `sweep.json` (the sweep's identity: target, grid, seeds; a resume with another one
is refused, naming the difference), `runs.csv` (one row per run: every key, seed, metrics,
status, wall time; appended and fsynced as each group finishes), `summary.csv` (per grid
point over seeds: mean, std, and the 95 % t interval mean +- t_{0.975, n-1} std / sqrt(n)),
`runs/<run_id>/` (each run's record: config, seed, package versions, git revision, and its
metrics), `checkpoints/` (groups in progress; removed when their rows are written).

Entry-point layer, like `structsel.search.runner`: it reads and writes files and owns jit.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import itertools
import json
import math
import os
import pathlib
import platform
import shutil
import time
from collections.abc import Mapping, Sequence

import numpy as np

from structsel import devices as devices_lib
from structsel.runs import Run, git_revision, package_versions, to_jsonable, write_atomic
from structsel.sweep_targets import GroupEnv, get_target, target_names

__all__ = ["sweep", "parse_grid", "expand", "read_rows", "result_columns", "summarise",
           "format_table", "SweepError", "VOLATILE_COLUMNS"]

FORMAT = 1
# Columns that legitimately differ between two identical sweeps (timing, how the runs were
# shared out); every other column of runs.csv is reproducible bit for bit.
VOLATILE_COLUMNS = ("wall_s", "compile_s", "group_runs", "process", "resumed_from")
FINISHED = ("ok", "diverged")


class SweepError(ValueError):
    """A sweep that cannot start: bad grid, or a workdir that holds another sweep."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run: its position, grid point, full setting (every key), seed and group."""

    run_id: int
    setting_id: int
    setting: dict
    seed: int
    group: int


# ------------------------------------------------------------------------ grid
def parse_grid(target, grid) -> dict[str, list]:
    """{key: [values]} validated against the target's keys.

    `grid`: a mapping key -> list of values (or a 'v1,v2' string), or a sequence of
    'key=v1,v2,...' strings (the command line's --grid). Raises SweepError naming the key
    and the allowed keys or values.
    """
    items = []
    if isinstance(grid, Mapping):
        items = [(k, v.split(",") if isinstance(v, str) else list(v)) for k, v in grid.items()]
    else:
        for text in grid or ():
            key, sep, values = str(text).partition("=")
            if not sep or not values.strip():
                raise SweepError(f"--grid expects key=v1,v2,... got {text!r}")
            items.append((key.strip(), values.split(",")))
    out: dict[str, list] = {}
    for key, values in items:
        if key not in target.keys:
            raise SweepError(f"unknown grid key {key!r} for target {target.name}; allowed "
                             f"keys: {', '.join(target.keys)}")
        if key in out:
            raise SweepError(f"grid key {key!r} given twice")
        if not values:
            raise SweepError(f"grid key {key!r} has no values")
        try:
            parsed = [target.keys[key].parse(v.strip() if isinstance(v, str) else v)
                      for v in values]
        except ValueError as err:
            raise SweepError(str(err)) from None
        if len(set(map(json.dumps, to_jsonable(parsed)))) != len(parsed):
            raise SweepError(f"grid key {key!r} repeats a value: {values}")
        out[key] = parsed
    return out


def _seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SweepError(f"seeds must be an int >= 1 or a list of seeds, got {seeds}")
        return list(range(int(seeds)))
    out = list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else None
    if not out or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0
                      for s in out) or len(set(out)) != len(out):
        raise SweepError(f"seeds must be an int >= 1 or a list of distinct ints >= 0, "
                         f"got {seeds!r}")
    return [int(s) for s in out]


def expand(target, grid: dict[str, list], seeds: Sequence[int]) -> list[RunSpec]:
    """Every (grid point, seed), validated by the target; groups by the static keys."""
    defaults = {k: key.default for k, key in target.keys.items()}
    static = [k for k, key in target.keys.items() if key.static]
    points = [dict(defaults, **dict(zip(grid, values)))
              for values in itertools.product(*grid.values())]
    for point in points:
        try:
            target.check(point)
        except (ValueError, TypeError) as err:
            raise SweepError(f"setting {_describe(point, grid)}: {err}") from None
    groups: dict[tuple, int] = {}
    runs = []
    for sid, point in enumerate(points):
        together = getattr(target, "vectorised", False) or getattr(target, "groups_seeds",
                                                                   False)
        gkey = tuple(json.dumps(to_jsonable(point[k])) for k in static)
        for seed in seeds:
            g = groups.setdefault(gkey if together else (sid, seed), len(groups))
            runs.append(RunSpec(len(runs), sid, point, seed, g))
    return runs


def _describe(point, grid) -> str:
    return ", ".join(f"{k}={point[k]}" for k in grid) or "(defaults)"


# ------------------------------------------------------------------------ rows
def _cell(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (list, tuple)):
        return json.dumps(to_jsonable(value))
    return str(value)


def _write_rows(path: pathlib.Path, header: list[str], rows: list[dict]) -> None:
    """Appends rows (header first if the file is new), then flush + fsync."""
    new = not path.exists() or path.stat().st_size == 0
    cut = False
    if not new:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"                 # a row cut by a kill mid-write
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        if new:
            writer.writeheader()
        if cut:
            f.write("\r\n")
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
        f.flush()
        os.fsync(f.fileno())


def read_rows(workdir) -> list[dict]:
    """Rows of runs.csv and of the per-process part files, one per run_id (str values),
    sorted by run_id; finished rows win over error rows."""
    workdir = pathlib.Path(workdir)
    rows: dict[int, dict] = {}
    for path in [workdir / "runs.csv", *sorted(workdir.glob("runs.p*.csv"))]:
        if not path.exists():
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("run_id", "") == "" or row.get("resumed_from") is None:
                    continue                     # a line cut by a kill mid-write
                rid = int(row["run_id"])
                if rid not in rows or row["status"] in FINISHED:
                    rows[rid] = row
    return [rows[k] for k in sorted(rows)]


def result_columns(header: Sequence[str]) -> list[str]:
    """The columns of runs.csv that two identical sweeps reproduce bit for bit."""
    return [c for c in header if c not in VOLATILE_COLUMNS]


def _header(target, metrics: Sequence[str]) -> list[str]:
    return (["run_id", "setting_id", "group", *target.keys, "seed", *metrics, "status",
             "wall_s", "compile_s", "group_runs", "process", "resumed_from"])


# ------------------------------------------------------------------------ summary
def summarise(rows: list[dict], keys: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Per grid point over its finished seeds: n, mean, std (ddof 1) and the 95 % interval
    mean +- t_{0.975, n-1} std / sqrt(n) (Student t; nan when n < 2)."""
    from scipy import stats

    out = []
    for sid, group in itertools.groupby(sorted(rows, key=lambda r: int(r["setting_id"])),
                                        key=lambda r: int(r["setting_id"])):
        group = list(group)
        ok = [r for r in group if r["status"] == "ok"]
        row = {"setting_id": sid, **{k: group[0][k] for k in keys},
               "seeds": len(group), "ok": len(ok)}
        for m in metrics:
            vals = np.asarray([float(r[m]) for r in ok if r.get(m, "") not in ("", "nan")])
            n = len(vals)
            mean = float(vals.mean()) if n else math.nan
            std = float(vals.std(ddof=1)) if n > 1 else math.nan
            half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_ci95_low": mean - half,
                        f"{m}_ci95_high": mean + half})
        out.append(row)
    return out


def format_table(summary: list[dict], keys: Sequence[str], metrics: Sequence[str]) -> str:
    """The end-of-sweep table: grid keys, seeds ok/total, mean +- 95 % half-width."""
    head = [*keys, "ok/seeds", *metrics]
    body = []
    for r in summary:
        cells = [str(r[k]) for k in keys] + [f"{r['ok']}/{r['seeds']}"]
        for m in metrics:
            mean, hi = r[f"{m}_mean"], r[f"{m}_ci95_high"]
            cells.append(f"{mean:.4g}" + (f" +- {hi - mean:.2g}" if math.isfinite(hi) else ""))
        body.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body),
                      "(mean +- half-width of the 95 % Student-t interval over seeds)"])


# ------------------------------------------------------------------------ devices, hosts
def local_mesh(devices):
    """The 1-D mesh "runs" over `devices` local devices ("all", an int, or None: no mesh)."""
    return devices_lib.local_mesh(devices, "runs", error=SweepError)


def _check_devices(devices):
    return devices_lib.check_devices(devices, error=SweepError)


def _initialize_distributed(coordinator, num_processes, process_id) -> tuple[int, int]:
    import jax

    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return jax.process_index(), jax.process_count()


def _share(runs: list[RunSpec], index: int, count: int) -> list[RunSpec]:
    """This process' runs: a contiguous slice of every group (groups stay vectorised)."""
    mine = []
    for _, group in itertools.groupby(sorted(runs, key=lambda r: (r.group, r.run_id)),
                                      key=lambda r: r.group):
        group = list(group)
        bounds = np.linspace(0, len(group), count + 1).round().astype(int)
        mine += group[bounds[index]:bounds[index + 1]]
    return mine


# ------------------------------------------------------------------------ the sweep
def _identity(target, grid, seeds) -> dict:
    return {"format": FORMAT, "target": target.name,
            "grid": {k: to_jsonable(v) for k, v in grid.items()}, "seeds": list(seeds)}


def _check_workdir(workdir: pathlib.Path, identity: dict, resume: bool) -> None:
    record = workdir / "sweep.json"
    if record.exists():
        stored = json.loads(record.read_text())
        diff = [k for k in identity if stored.get(k) != identity[k]]
        if diff:
            detail = "; ".join(f"{k}: stored {stored.get(k)!r}, now {identity[k]!r}"
                               for k in diff)
            raise SweepError(f"{record} records another sweep ({detail}); use another "
                             f"workdir or the same target, grid and seeds")
    busy = read_rows(workdir) or any((workdir / "checkpoints").glob("*"))
    if busy and not resume:
        raise SweepError(f"{workdir} holds finished runs or checkpoints of this sweep; pass "
                         f"--resume to continue it, or use another workdir")


def sweep(target: str, grid, seeds=1, workdir="results/sweep", devices=None,
          resume: bool = False, *, distributed: bool = False, coordinator: str | None = None,
          num_processes: int | None = None, process_id: int | None = None,
          checkpoint_every: int | None = None, progress: bool = True,
          merge_timeout: float = 7 * 24 * 3600.0) -> dict:
    """Runs (or resumes) a sweep; returns {"rows", "summary", "table", "workdir", ...}.

    Args:
      target: "glm_toy", "search" or an experiment name (`target_names()`).
      grid: {key: [values]} or ["key=v1,v2", ...]; unknown keys or bad values raise
        SweepError before anything is compiled.
      seeds: N (seeds 0..N-1) or a list of seeds.
      devices: None (default device), "all" or N: shard the run axis over N local devices.
      resume: continue a sweep in `workdir`: finished runs are kept, interrupted groups
        continue from their last checkpoint.
      distributed: `jax.distributed.initialize(coordinator, num_processes, process_id)`
        (all None: auto-detected, e.g. SLURM); each process runs its share, process 0
        merges the rows (waiting up to `merge_timeout` s for the other shares).
      checkpoint_every: steps between checkpoints of a group (default: every chunk).
    On processes other than 0 of a distributed sweep, "rows" holds this process' rows only.
    """
    target_obj = get_target(target) if isinstance(target, str) else target
    seed_list = _seeds(seeds)
    grid = parse_grid(target_obj, grid)
    runs = expand(target_obj, grid, seed_list)
    devices = _check_devices(devices)
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise SweepError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    index, count = (_initialize_distributed(coordinator, num_processes, process_id)
                    if distributed else (0, 1))
    mesh = local_mesh(devices)
    workdir = pathlib.Path(workdir)
    identity = _identity(target_obj, grid, seed_list)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir(workdir, identity, resume)
    if index == 0:
        write_atomic(workdir / "sweep.json", json.dumps(identity, indent=2) + "\n")
    done = {int(r["run_id"]) for r in read_rows(workdir) if r["status"] in FINISHED}
    todo = [r for r in _share(runs, index, count) if r.run_id not in done]
    rows_path = workdir / ("runs.csv" if count == 1 else f"runs.p{index}.csv")
    (workdir / f"done.p{index}").unlink(missing_ok=True)
    record = {"versions": package_versions(), "git_revision": git_revision(),
              "python": platform.python_version(), "platform": platform.platform()}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=f"sweep {target_obj.name}", unit="run")
    for _, group in itertools.groupby(todo, key=lambda r: r.group):
        group = list(group)
        _run_group(target_obj, group, workdir, rows_path, mesh, record, index,
                   checkpoint_every, bar)
    if bar is not None:
        bar.close()
    (workdir / f"done.p{index}").write_text("")
    if index != 0:
        return {"rows": read_rows(workdir), "workdir": str(workdir), "process": index}
    return _finish(target_obj, grid, workdir, count, merge_timeout, len(runs))


def _run_group(target, group, workdir, rows_path, mesh, record, process, every, bar):
    first, last = group[0].run_id, group[-1].run_id
    run_dirs = [workdir / "runs" / f"{r.run_id:05d}" for r in group]
    vectorised = getattr(target, "vectorised", False)
    if vectorised:
        started = datetime.datetime.now(datetime.timezone.utc).isoformat()
        for r, d in zip(group, run_dirs):
            d.mkdir(parents=True, exist_ok=True)
            Run(d).write_json("config.json", {
                "config": {"target": target.name, **r.setting}, "seed": r.seed,
                "run_id": r.run_id, **record, "started": started})
    ckpt = workdir / "checkpoints" / f"runs{first:05d}-{last:05d}"
    fingerprint = {"target": target.name,
                   "setting": {k: to_jsonable(v) for k, v in group[0].setting.items()
                               if target.keys[k].static},
                   "run_ids": [r.run_id for r in group], "seeds": [r.seed for r in group],
                   "jax": record["versions"]["jax"], "flax": record["versions"]["flax"],
                   "optax": record["versions"]["optax"]}

    def report(step, total):
        if bar is not None:
            bar.set_postfix_str(f"runs {first}-{last}: step {step}/{total}")

    checkpointed = vectorised or getattr(target, "checkpoints_runs", False)
    env = GroupEnv(mesh=mesh, checkpoint_dir=ckpt if checkpointed else None,
                   checkpoint_every=every, fingerprint=fingerprint, run_dirs=run_dirs,
                   progress=report)
    start = time.perf_counter()
    try:
        results = target.run_group([r.setting for r in group], [r.seed for r in group], env)
    except (ValueError, TypeError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001  a crashed run is recorded, the sweep goes on
        if vectorised:
            raise
        message = f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        results = [{"metrics": {}, "status": message, "compile_s": math.nan,
                    "run_s": time.perf_counter() - start}] * len(group)
    metrics = target.metrics or sorted({m for res in results for m in res["metrics"]})
    header = _header(target, metrics)
    if rows_path.exists() and rows_path.stat().st_size:
        with open(rows_path, newline="") as f:
            header = next(csv.reader(f))
    rows = []
    for r, res in zip(group, results):
        rows.append({"run_id": r.run_id, "setting_id": r.setting_id, "group": r.group,
                     **r.setting, "seed": r.seed, **res["metrics"], "status": res["status"],
                     "wall_s": res["run_s"] / (len(group) if vectorised else 1),
                     "compile_s": res["compile_s"], "group_runs": len(group),
                     "process": process, "resumed_from": res.get("resumed_from")})
    _write_rows(rows_path, header, rows)
    if vectorised:
        for d, res in zip(run_dirs, results):
            Run(d).write_summary({"metrics": res["metrics"], "status": res["status"]})
    if checkpointed:
        shutil.rmtree(ckpt, ignore_errors=True)
    if bar is not None:
        bar.update(len(group))


def _finish(target, grid, workdir, count, timeout, total) -> dict:
    deadline = time.monotonic() + timeout
    # every share done (its marker) and every run with a row (a stale marker of an earlier
    # attempt alone does not count)
    missing = [i for i in range(count) if not (workdir / f"done.p{i}").exists()]
    while count > 1 and (missing or len(read_rows(workdir)) < total):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workdir}: the shares of processes {missing or 'all'} did "
                               f"not finish within {timeout} s; rerun with --resume")
        time.sleep(0.5)
        missing = [i for i in missing if not (workdir / f"done.p{i}").exists()]
    rows = read_rows(workdir)
    header = None
    for path in [workdir / "runs.csv", *sorted(workdir.glob("runs.p*.csv"))]:
        if path.exists() and path.stat().st_size:
            with open(path, newline="") as f:
                header = next(csv.reader(f))
            break
    if header is None:
        header = _header(target, target.metrics or [])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(workdir / "runs.csv", text.getvalue())
    for part in workdir.glob("runs.p*.csv"):
        part.unlink()
    if all(r["status"] in FINISHED for r in rows) and len(rows) == total:
        shutil.rmtree(workdir / "checkpoints", ignore_errors=True)  # a kill's leftovers
    keys = [k for k in target.keys]
    start, end = header.index("seed") + 1, header.index("status")
    metrics = header[start:end]
    summary = summarise(rows, keys, metrics)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(summary[0]) if summary else ["setting_id"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in s.items()} for s in summary)
    write_atomic(workdir / "summary.csv", text.getvalue())
    table = format_table(summary, list(grid), metrics)
    return {"rows": rows, "summary": summary, "table": table, "workdir": str(workdir),
            "num_runs": total, "finished": sum(r["status"] in FINISHED for r in rows)}


def names() -> list[str]:
    """The sweep targets."""
    return target_names()
