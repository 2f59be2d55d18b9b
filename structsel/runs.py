"""Run directories: every run writes its config, seed, package versions and git revision.

A workdir holds `config.json` (written at creation), `metrics.jsonl` (appended as the run
goes, so nothing already finished is lost when it stops), `summary.json` and figures.
This module is for entry points (experiments, the CLI); the library proper writes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import pathlib
import platform
import subprocess
from typing import Any, Mapping

import numpy as np

_PACKAGES = ("structsel", "jax", "jaxlib", "flax", "optax", "distrax", "jaxopt",
             "tfp-nightly", "numpy", "scikit-learn", "mnist1d", "matplotlib")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None if absent)."""
    out = {}
    for name in _PACKAGES:
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
        (path / "config.json").write_text(json.dumps(record, indent=2) + "\n")
        (path / "metrics.jsonl").write_text("")
        return cls(path)

    def path(self, name: str) -> pathlib.Path:
        """A file inside the workdir."""
        return self.workdir / name

    def log_metrics(self, step: int, **scalars: Any) -> None:
        """Appends one line {"step": step, **scalars} to metrics.jsonl."""
        line = json.dumps({"step": int(step), **to_jsonable(scalars)})
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(line + "\n")

    def write_summary(self, summary: Mapping[str, Any]) -> pathlib.Path:
        """Writes summary.json."""
        out = self.workdir / "summary.json"
        out.write_text(json.dumps(to_jsonable(summary), indent=2) + "\n")
        return out

    def write_json(self, name: str, value: Any) -> pathlib.Path:
        """Writes any JSON file into the workdir."""
        out = self.workdir / name
        out.write_text(json.dumps(to_jsonable(value), indent=2) + "\n")
        return out
