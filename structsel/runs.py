"""Run directories: every run writes its config, seed, package versions and git revision.

A workdir holds `config.json` (written at creation), `metrics.jsonl` (appended as the run
goes, so nothing already finished is lost when it stops), `status.json`, `summary.json`
and figures. This module is for entry points (experiments, the CLI); the library proper
writes nothing.

What survives a crash: every JSON file is written atomically (a temporary file in the same
directory, then `os.replace`), so a reader sees the old file or the new one, never a part;
a metrics line that does not fit on the disk is cut off again, so metrics.jsonl holds whole
lines only. `status.json` says "running" from creation, "complete" once summary.json is
written, "failed" / "interrupted" (with the error) when a `Run.recording()` block raises.
A stale summary.json of an earlier run in the same workdir is removed at creation, so
summary.json exists only when this run finished (docs/guarantees.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import subprocess
from typing import Any, Mapping

import numpy as np

_PACKAGES = ("structsel", "jax", "jaxlib", "flax", "optax", "distrax", "jaxopt",
             "tfp-nightly", "numpy", "scikit-learn", "mnist1d", "matplotlib")


def package_versions(names=_PACKAGES) -> dict[str, str | None]:
    """Installed versions of `names` (default: the packages a result depends on; None if
    absent)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(path: str | pathlib.Path | None = None) -> str | None:
    """The git commit of the checkout holding `path` (with '-dirty' if modified), or None."""
    cwd = pathlib.Path(path or pathlib.Path(__file__).parent)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty.strip() else "")


def to_jsonable(value: Any) -> Any:
    """Converts numpy/jax scalars and arrays, dataclasses, tuples and paths for json.dump."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, pathlib.Path):
        return str(value)
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else to_jsonable(arr.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunWriteError(OSError):
    """A result file could not be written (e.g. the disk is full); the message names the file
    and says that the files written before are intact. `errno` / `filename` as OSError's."""

    def __str__(self) -> str:
        return self.strerror


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of data is written (a full disk: a short write, then ENOSPC)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _write_error(path: pathlib.Path, err: OSError) -> RunWriteError:
    return RunWriteError(err.errno, f"could not write {path.name} in {path.parent}: "
                         f"{err.strerror or err}; the files written before are intact", str(path))


def write_atomic(path: str | pathlib.Path, text: str) -> pathlib.Path:
    """Writes text to path atomically: a temporary file in the same directory, fsync, then
    os.replace. On failure the temporary file is removed, an existing path is left as it
    was, and RunWriteError (an OSError) names the file."""
    path = pathlib.Path(path)
    fd, tmp = None, path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _write_all(fd, text.encode())
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
    except BaseException as err:  # also an interrupt: no temporary file is left behind
        with contextlib.suppress(OSError):
            if fd is not None:
                os.close(fd)
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _write_error(path, err) from err
        raise
    return path


def append_line(path: str | pathlib.Path, line: str) -> None:
    """Appends one line; if it does not fit, the file is cut back to its whole lines and
    RunWriteError names it."""
    path = pathlib.Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, (line + "\n").encode())
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise _write_error(path, err) from err
    finally:
        os.close(fd)


STATES = ("running", "complete", "failed", "interrupted")


def read_status(workdir: str | pathlib.Path) -> dict | None:
    """status.json of a workdir ({"state": one of STATES, ...}), or None if absent."""
    path = pathlib.Path(workdir) / "status.json"
    return json.loads(path.read_text()) if path.exists() else None


@dataclasses.dataclass(frozen=True)
class Run:
    """A workdir with config.json, metrics.jsonl and summary.json."""

    workdir: pathlib.Path

    @classmethod
    def create(cls, workdir: str | pathlib.Path, *, config: Any, seed: int) -> "Run":
        """Makes `workdir` and writes config.json with config, seed, versions, revision."""
        path = pathlib.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        record = {
            "config": to_jsonable(config),
            "seed": int(seed),
            "versions": package_versions(),
            "git_revision": git_revision(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        with contextlib.suppress(FileNotFoundError):  # an earlier run's: not this one's
            (path / "summary.json").unlink()
        write_atomic(path / "config.json", json.dumps(record, indent=2) + "\n")
        write_atomic(path / "metrics.jsonl", "")
        run = cls(path)
        run.set_status("running", started=record["started"])
        return run

    def set_status(self, state: str, **details: Any) -> None:
        """Writes status.json: {"state": state, "updated": time, **details}."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        self.write_json("status.json", {"state": state, "updated": now, **details})

    @contextlib.contextmanager
    def recording(self):
        """A block whose exception marks the run "interrupted" (KeyboardInterrupt) or
        "failed" (anything else, with the error's message) in status.json, then re-raises."""
        try:
            yield self
        except BaseException as err:
            state = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            with contextlib.suppress(OSError):
                self.set_status(state, error=f"{type(err).__name__}: {err}".strip(": "))
            raise

    def path(self, name: str) -> pathlib.Path:
        """A file inside the workdir."""
        return self.workdir / name

    def log_metrics(self, step: int, **scalars: Any) -> None:
        """Appends one line {"step": step, **scalars} to metrics.jsonl."""
        append_line(self.workdir / "metrics.jsonl",
                    json.dumps({"step": int(step), **to_jsonable(scalars)}))

    def write_summary(self, summary: Mapping[str, Any]) -> pathlib.Path:
        """Writes summary.json (atomically) and marks the run complete in status.json."""
        out = self.write_json("summary.json", summary)
        self.set_status("complete")
        return out

    def write_json(self, name: str, value: Any) -> pathlib.Path:
        """Writes any JSON file into the workdir (atomically)."""
        return write_atomic(self.workdir / name, json.dumps(to_jsonable(value), indent=2) + "\n")
