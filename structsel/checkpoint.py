"""Checkpoints of long runs: orbax underneath, plus the checks that make resuming safe.

A :class:`Checkpointer` keeps the latest ``keep`` checkpoints of ONE run (or one batch of
runs) in a directory, each a step folder written by ``orbax.checkpoint.CheckpointManager``:

    DIR/<step>/state/   the pytree (orbax StandardSave: OCDBT/zarr arrays)
    DIR/<step>/meta/    JSON: step, the run's fingerprint, the tree's structure
                        (path -> shape, dtype) and a SHA-256 per leaf
    DIR/<step>.sha256.json   SHA-256 of every file of DIR/<step> (written after it)

Saves are synchronous and atomic: orbax writes ``<step>.orbax-checkpoint-tmp-*`` and
renames it when complete (``commit_success.txt`` inside), so a process killed after
:meth:`Checkpointer.save` returns leaves a readable checkpoint, and one killed during a
save leaves only a temporary folder, which is never read (the previous checkpoint stays
the latest). :meth:`Checkpointer.restore` reads the latest step and raises
:class:`CheckpointError`, naming the file and the mismatch, when it is partial (no commit
marker, a missing part), corrupt (unreadable or a checksum differs) or incompatible (the
fingerprint or the tree structure differs): it never falls back to an older step or to a
fresh start on its own. docs/checkpoint.md has the details.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from structsel import runs
from structsel.runs import to_jsonable

COMMIT_MARKER = "commit_success.txt"            # orbax's marker of a finished step folder
TMP_MARKER = ".orbax-checkpoint-tmp"           # orbax's suffix of an unfinished one
LOCAL_FILE = "state.msgpack"                   # the arrays of a save among several processes
_VERSIONED = ("structsel", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint")


class CheckpointError(RuntimeError):
    """A checkpoint is partial, corrupt or belongs to another run; the message says which
    file and what differs."""


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _leaves(tree) -> list[tuple[str, Any]]:
    return [(jax.tree_util.keystr(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def tree_structure(tree) -> dict[str, str]:
    """{leaf path: "shape dtype"} of a pytree of arrays (or ShapeDtypeStructs), e.g.
    {".params['w']": "(3, 4) float32", ".key": "() key<fry>"}; identifies its layout."""
    out = {}
    for path, leaf in _leaves(tree):
        shape = tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        out[path] = f"{shape} {dtype}"
    return out


def package_versions() -> dict[str, str | None]:
    """Versions of the packages whose change can change the numbers of a resumed run."""
    return runs.package_versions(_VERSIONED)


def fingerprint(config: Any = None, *, state: Any = None, **extra: Any) -> dict[str, Any]:
    """The JSON identity of a run for :class:`Checkpointer`: its config (a dataclass or a
    mapping), the package versions of :func:`package_versions`, the structure of its state
    pytree (:func:`tree_structure`) and any `extra` values (seeds, data shapes, ...)."""
    out = {"config": to_jsonable(config), "versions": package_versions()}
    if state is not None:
        out["state"] = tree_structure(state)
    out.update({k: to_jsonable(v) for k, v in extra.items()})
    return json.loads(json.dumps(out))          # exactly what a JSON round trip gives back


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _differences(saved: Mapping, current: Mapping) -> list[str]:
    a, b = _flat(saved), _flat(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: saved {_short(a.get(key, '<absent>'))}, "
                       f"now {_short(b.get(key, '<absent>'))}")
    return out


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    return hashlib.sha256(str((array.shape, array.dtype)).encode() + array.tobytes()).hexdigest()


def _to_storable(leaf):
    """Typed PRNG keys as their raw uint32 data; other leaves as arrays."""
    if _is_key(leaf):
        return jax.random.key_data(leaf)
    return leaf if isinstance(leaf, (jax.Array, np.ndarray)) else np.asarray(leaf)


def _restore_target(leaf):
    """What orbax restores a template leaf into: a host numpy array (the key data of a
    typed key); :func:`_from_stored` then places it like the template."""
    if _is_key(leaf):
        data = jax.eval_shape(jax.random.key_data, leaf)
        return np.zeros(data.shape, data.dtype)
    return np.zeros(np.shape(leaf), getattr(leaf, "dtype", np.asarray(leaf).dtype))


def _from_stored(template, value):
    """The restored host array as the template leaf was: a typed key, a weakly typed scalar,
    a jax.Array on the template's devices (committed only if the template was), else numpy
    (also for a ShapeDtypeStruct without sharding).
    Matching the template keeps the jit cache hit of the caller's compiled chunk."""
    if _is_key(template):
        value = jax.random.wrap_key_data(np.asarray(value), impl=jax.random.key_impl(template))
    elif getattr(template, "weak_type", False) and np.ndim(value) == 0:
        value = jax.numpy.asarray(np.asarray(value).item())
    elif isinstance(template, jax.Array) or getattr(template, "sharding", None) is not None:
        value = jax.numpy.asarray(value)
    else:
        return value
    sharding = getattr(template, "sharding", None)
    committed = getattr(template, "committed", sharding is not None)
    return jax.device_put(value, sharding) if committed and sharding is not None else value


def _file_digest(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _file_digest(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Checkpointer:
    """Saves and restores one run's pytree every `every` steps with orbax (see module doc).

    Args:
      directory: the run's checkpoint folder (created on the first save).
      every: save period in steps (``structsel.loop.run_chunks`` saves every `every`
        steps and at the end).
      fingerprint: JSON-able identity of the run (:func:`fingerprint`); a checkpoint whose
        stored fingerprint differs is refused with CheckpointError naming the keys.
      keep: how many of the newest checkpoints to keep (older ones are deleted by orbax).
    """

    def __init__(self, directory, *, every: int, fingerprint: Mapping[str, Any], keep: int = 1):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        if not isinstance(fingerprint, Mapping):
            raise ValueError(f"fingerprint must be a mapping (JSON-able), got "
                             f"{type(fingerprint).__name__}")
        try:
            self.fingerprint = json.loads(json.dumps(to_jsonable(fingerprint)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"fingerprint must be JSON-able: {err}") from err
        self.directory = pathlib.Path(directory).absolute()
        self.every, self.keep = every, keep
        self._checked = False               # the latest checkpoint's fingerprint was compared
        self._manager: ocp.CheckpointManager | None = None

    # ------------------------------------------------------------------ orbax
    def _open(self) -> ocp.CheckpointManager:
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                                   enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_names=("state", "meta"))
        return self._manager

    def close(self) -> None:
        """Waits for pending orbax work and releases the manager."""
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ scanning
    def latest_step(self) -> int | None:
        """The newest finished step folder (None if none); CheckpointError if the newest
        step folder is partial (no commit marker)."""
        if not self.directory.is_dir():
            return None
        steps = sorted(int(p.name) for p in self.directory.iterdir()
                       if p.is_dir() and re.fullmatch(r"\d+", p.name))
        if not steps:
            return None
        latest = self.directory / str(steps[-1])
        for part in (COMMIT_MARKER, "meta", "state"):
            if not (latest / part).exists():
                raise CheckpointError(f"partial checkpoint {latest}: {part} is missing (a save "
                                      f"that did not finish, or files removed); delete the "
                                      f"folder to resume from an older step or from scratch")
        return steps[-1]

    def _meta(self, step: int) -> dict:
        path = self.directory / str(step) / "meta" / "metadata"
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"corrupt checkpoint {path}: {err}") from err
        missing = {"step", "fingerprint", "structure", "sha256"} - set(
            meta if isinstance(meta, dict) else ())
        if missing:
            raise CheckpointError(f"corrupt checkpoint {path}: not a structsel checkpoint "
                                  f"record (it lacks {sorted(missing)})")
        if meta["step"] != step:
            raise CheckpointError(f"corrupt checkpoint {path}: records step {meta['step']} "
                                  f"in the folder of step {step}")
        return meta

    def _check_fingerprint(self, step: int, meta: dict) -> None:
        diff = _differences(meta["fingerprint"], self.fingerprint)
        if diff:
            path = self.directory / str(step) / "meta" / "metadata"
            raise CheckpointError(f"incompatible checkpoint {path}: it belongs to another run; "
                                  f"fingerprint differs at " + "; ".join(diff))

    # ------------------------------------------------------------------ public
    def restore(self, template) -> tuple[int, Any] | None:
        """(step, tree) of the latest checkpoint, with the structure of `template` (a pytree
        of arrays or ShapeDtypeStructs of the same paths, shapes and dtypes); None when there
        is none. Raises CheckpointError for a partial, corrupt or incompatible one."""
        step = self.latest_step()
        if step is None:
            return None
        self._check_files(step)
        meta = self._meta(step)
        self._check_fingerprint(step, meta)
        self._checked = True
        folder = self.directory / str(step)
        diff = _differences(meta["structure"], tree_structure(template))
        if diff:
            raise CheckpointError(f"incompatible checkpoint {folder / 'state'}: the tree "
                                  f"differs from the template at " + "; ".join(diff))
        leaves, treedef = jax.tree.flatten(template)
        local = folder / "state" / LOCAL_FILE
        try:
            if local.exists():
                saved = ocp.msgpack_utils.msgpack_restore(local.read_bytes())
                values = [saved[path] for path, _ in _leaves(template)]
            else:
                target = jax.tree.unflatten(treedef, [_restore_target(x) for x in leaves])
                values = jax.tree.leaves(self._open().restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                  meta=ocp.args.JsonRestore())).state)
        except Exception as err:  # orbax/tensorstore raise many kinds on damaged files
            text = str(err)
            named = re.findall(r'local file "([^"]+)"', text)     # the innermost file
            where = named[-1] if named else folder / "state"
            raise CheckpointError(f"corrupt checkpoint {where}: orbax could not read it "
                                  f"({type(err).__name__}: {text[:300]})") from err
        for (path, _), value in zip(_leaves(template), values):
            if _digest(np.asarray(value)) != meta["sha256"].get(path):
                raise CheckpointError(f"corrupt checkpoint {folder / 'state'}: checksum of "
                                      f"leaf {path} differs from the one saved")
        return step, jax.tree.unflatten(treedef, [_from_stored(t, v)
                                                  for t, v in zip(leaves, values)])

    def save(self, step: int, tree) -> None:
        """Writes `tree` as step `step` atomically and returns once it is on disk. Refuses
        (CheckpointError) to write over checkpoints of another fingerprint or an existing step."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        step = int(step)
        if not self._checked:
            latest = self.latest_step()
            if latest is not None:
                self._check_fingerprint(latest, self._meta(latest))
            self._checked = True
        stored = jax.tree.map(_to_storable, tree)
        meta = {"step": step, "fingerprint": self.fingerprint,
                "structure": tree_structure(tree),
                "sha256": {path: _digest(np.asarray(leaf)) for path, leaf in _leaves(stored)}}
        if (self.directory / str(step)).exists():
            raise CheckpointError(f"checkpoint {self.directory / str(step)} exists already")
        if jax.process_count() > 1:
            self._save_local(step, stored, meta)
        else:
            manager = self._open()
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(stored),
                                                       meta=ocp.args.JsonSave(meta)), force=True)
            manager.wait_until_finished()
        # SHA-256 of every file of the step, checked before orbax reads any (a damaged file
        # is then named, and tensorstore never reads it). Written after orbax's atomic
        # rename, itself atomically; a step without it is still read (values are checked).
        runs.write_atomic(self._manifest(step), json.dumps(_files(self.directory / str(step))))
        kept = {p.name for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit()}
        for old in self.directory.glob("*.sha256.json"):
            if old.name.split(".")[0] not in kept:
                old.unlink(missing_ok=True)

    def _save_local(self, step: int, stored, meta: dict) -> None:
        """The save of one process among several: orbax's CheckpointManager (0.12) writes
        the arrays of global jax.Arrays only, so this process's own arrays go through
        orbax's msgpack serialisation into the same layout, with the same atomic protocol
        (a temporary folder with the commit marker, renamed when complete)."""
        tmp = self.directory / f"{step}{TMP_MARKER}-{time.time_ns()}"
        (tmp / "state").mkdir(parents=True)
        (tmp / "meta").mkdir()
        arrays = {path: np.asarray(leaf) for path, leaf in _leaves(stored)}
        for name, data in ((f"state/{LOCAL_FILE}", ocp.msgpack_utils.msgpack_serialize(arrays)),
                           ("meta/metadata", json.dumps(meta).encode()),
                           (COMMIT_MARKER, b"structsel local save")):
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, self.directory / str(step))
        steps = sorted(int(p.name) for p in self.directory.iterdir()
                       if p.is_dir() and p.name.isdigit())
        for old in steps[:-self.keep]:
            shutil.rmtree(self.directory / str(old))

    def _manifest(self, step: int) -> pathlib.Path:
        return self.directory / f"{step}.sha256.json"

    def _check_files(self, step: int) -> None:
        manifest = self._manifest(step)
        if not manifest.exists():
            return
        try:
            expected = json.loads(manifest.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"corrupt checkpoint {manifest}: {err}") from err
        folder = self.directory / str(step)
        for name, digest in expected.items():
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"partial checkpoint {folder}: file {path} is missing")
            if _file_digest(path) != digest:
                raise CheckpointError(f"corrupt checkpoint {path}: its SHA-256 differs from "
                                      f"the one recorded at save ({manifest.name})")
