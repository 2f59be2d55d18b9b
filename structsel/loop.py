"""The chunked training loop: "run n steps, report, continue", with checkpoints.

Long runs are one jitted ``run_chunk(state, *args) -> (state, history)`` (a ``lax.scan``
of `chunk` steps, e.g. ``BilevelTrainer.run_many``) called again and again from Python,
so that a progress bar moves, metrics are written and the state can be saved between
calls without recompiling. :func:`run_chunks` is that loop, written once; with a
:class:`structsel.checkpoint.Checkpointer` it resumes an interrupted run from its latest
checkpoint, bit-identical to an uninterrupted one (the same compiled chunk applied to
the same state). The caller owns ``jax.jit``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:  # orbax is imported only by a loop that checkpoints (import time)
    from structsel.checkpoint import Checkpointer

__all__ = ["run_chunks", "concatenate"]


def _int_at_least(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def concatenate(parts: list, axis: int):
    """Concatenates history pytrees (host numpy arrays) along `axis`."""
    return jax.tree.map(lambda *a: np.concatenate(a, axis=axis), *parts)


def _split(history, axis: int, count: int) -> list:
    """The `count` equal per-chunk pieces of a concatenated history (per leaf, so that a
    leaf with one entry per chunk splits too)."""
    def piece(a, i):
        a = np.asarray(a)
        n = a.shape[axis] // count
        return np.take(a, np.arange(i * n, (i + 1) * n), axis)
    return [jax.tree.map(lambda a: piece(a, i), history) for i in range(count)]


def _history_template(run_chunk, state, args, axis: int, count: int):
    """ShapeDtypeStructs of `count` chunks of history (host arrays: no sharding)."""
    one = jax.eval_shape(run_chunk, state, *args)[1]

    def grow(s):
        shape = list(s.shape)
        shape[axis] *= count
        return jax.ShapeDtypeStruct(tuple(shape), s.dtype)
    return jax.tree.map(grow, one)


def _check_finite(trees: dict, lo: int, hi: int, axis: int) -> None:
    for name, tree in trees.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not jax.dtypes.issubdtype(leaf.dtype, np.inexact):
                continue
            value = np.asarray(leaf)
            bad = ~np.isfinite(value)
            if not bad.any():
                continue
            where = ""
            if name == "history" and value.ndim > axis:
                first = int(np.argwhere(bad)[0][axis])
                where = f" (first at step {lo + first})"
            raise FloatingPointError(
                f"non-finite {name}{jax.tree_util.keystr(path)} in steps {lo}-{hi - 1}{where}; "
                f"{int(bad.sum())} of {bad.size} values")


def run_chunks(run_chunk: Callable, state, *, num_steps: int, chunk: int, args: tuple = (),
               checkpointer: "Checkpointer | None" = None,
               on_chunk: Callable[[int, Any, Any], None] | None = None,
               history_axis: int = 0, desc: str | None = None, progress: bool = True,
               check_finite: bool | Callable[[Any, Any], dict] = True
               ) -> tuple[Any, Any, dict]:
    """Advances `state` by `num_steps` steps in calls ``run_chunk(state, *args)`` of `chunk`.

    ``run_chunk(state, *args) -> (state, hist)`` is the caller's jitted function; hist is
    a pytree of arrays with `chunk` entries along `history_axis`; the histories of all
    chunks are concatenated along that axis (host numpy arrays).

    After each chunk, in this order: (1) divergence: a non-finite leaf of the state or of
    the chunk's history raises FloatingPointError naming the quantity (its pytree path)
    and the step range (`check_finite`: False skips it; a callable
    ``(state, hist) -> {name: tree}`` chooses what is checked); (2) ``on_chunk(step,
    state, hist)`` with the number of steps done and that chunk's history; (3) with a
    `checkpointer`, ``{"state", "history"}`` (the history so far) is saved when the step
    is a multiple of ``checkpointer.every`` and at the end. A chunk that fails (1) or (2)
    is never saved, so the last checkpoint is the last good state.

    Resuming: with a `checkpointer` holding a checkpoint, the loop restores its state and
    history and continues from its step (``info["resumed_from"]``), then returns the
    same state and history as an uninterrupted run (same compiled chunk, same inputs);
    `on_chunk` is first called again for each restored chunk, with state None, so that
    logs it writes are complete. Returns (state, history, info) with
    info = {"chunk_seconds": wall seconds of each chunk run by this call (the first
    includes compilation), "resumed_from": the restored step or None}.
    """
    num_steps = _int_at_least("num_steps", num_steps, 1)
    chunk = _int_at_least("chunk", chunk, 1)
    if num_steps % chunk:
        raise ValueError(f"chunk must divide num_steps ({num_steps}), got {chunk}")
    if not callable(run_chunk):
        raise ValueError("run_chunk must be a callable run_chunk(state, *args) -> (state, hist)")
    if not isinstance(args, tuple):
        raise ValueError(f"args must be a tuple, got {type(args).__name__}")
    if on_chunk is not None and not callable(on_chunk):
        raise ValueError("on_chunk must be None or a callable on_chunk(step, state, hist)")
    history_axis = _int_at_least("history_axis", history_axis, 0)
    if not (isinstance(check_finite, bool) or callable(check_finite)):
        raise ValueError("check_finite must be True, False or a callable (state, hist) -> dict")
    if checkpointer is not None:
        from structsel.checkpoint import CheckpointError, Checkpointer
        if not isinstance(checkpointer, Checkpointer):
            raise ValueError(f"checkpointer must be a structsel.checkpoint.Checkpointer or "
                             f"None, got {type(checkpointer).__name__}")
        if checkpointer.every % chunk:
            raise ValueError(f"checkpointer.every ({checkpointer.every}) must be a multiple "
                             f"of chunk ({chunk})")

    parts, done, resumed = [], 0, None
    if checkpointer is not None:
        step = checkpointer.latest_step()
        if step is not None:
            if step % chunk or step > num_steps or step < chunk:
                raise CheckpointError(
                    f"incompatible checkpoint {checkpointer.directory / str(step)}: step {step} "
                    f"is not a multiple of chunk ({chunk}) in 1..num_steps ({num_steps})")
            template = {"state": state,
                        "history": _history_template(run_chunk, state, args, history_axis,
                                                     step // chunk)}
            done, tree = checkpointer.restore(template)
            state, resumed = tree["state"], done
            parts = [tree["history"]]
            if on_chunk is not None:
                for i, hist in enumerate(_split(tree["history"], history_axis, done // chunk)):
                    on_chunk((i + 1) * chunk, None, hist)

    seconds = []
    total = num_steps // chunk
    with tqdm(total=total, initial=done // chunk, desc=desc, unit="chunk",
              disable=not progress) as bar:
        for lo in range(done, num_steps, chunk):
            start = time.perf_counter()
            state, hist = run_chunk(state, *args)
            hist = jax.device_get(hist)
            seconds.append(time.perf_counter() - start)
            hi = lo + chunk
            if check_finite is not False:
                trees = ({"state": state, "history": hist} if check_finite is True
                         else check_finite(state, hist))
                _check_finite(trees, lo, hi, history_axis)
            parts.append(hist)
            if on_chunk is not None:
                on_chunk(hi, state, hist)
            if checkpointer is not None and (hi % checkpointer.every == 0 or hi == num_steps):
                parts = [concatenate(parts, history_axis)]
                checkpointer.save(hi, {"state": state, "history": parts[0]})
            bar.update()
    return state, concatenate(parts, history_axis), {"chunk_seconds": seconds,
                                                     "resumed_from": resumed}
