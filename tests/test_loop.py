"""Tests of structsel/loop.py: chunks = one long run, resume = no interruption, divergence."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from structsel.bilevel import BilevelTrainer
from structsel.checkpoint import CheckpointError, Checkpointer, fingerprint
from structsel.loop import run_chunks

STEPS, CHUNK = 12, 3


def _inner(w, h, batch, ctx):
    x, y = batch
    return 0.5 * jnp.mean((x @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(h) * w**2)


def _outer(w, h, batch, ctx):
    x, y = batch
    return 0.5 * jnp.mean((x @ w - y) ** 2)


@functools.lru_cache(maxsize=None)
def _problem():
    """3 restarts of a ridge bilevel problem (Adam on w and on log-precisions h), and the
    jitted chunk; the one-long-run oracle is the same trainer over all steps at once."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -0.5, 0.2]) + 0.3 * rng.normal(size=20)).astype(np.float32)
    trainer = BilevelTrainer(_inner, _outer, optax.adam(0.05), optax.adam(0.05), inner_steps=2)
    keys = jax.random.split(jax.random.key(0), 3)
    state = trainer.init_many(lambda k: (0.1 * jax.random.normal(k, (3,)), jnp.zeros(3)), keys)
    data = ((x, y), (x[::-1], y[::-1]))
    chunk = jax.jit(functools.partial(trainer.run_many, num_steps=CHUNK))
    whole = jax.jit(functools.partial(trainer.run_many, num_steps=STEPS))
    return state, data, chunk, whole


def _same(a, b) -> bool:
    def data(x):
        x = jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        return np.asarray(x)
    return (jax.tree.structure(a) == jax.tree.structure(b)
            and all(data(x).tobytes() == data(y).tobytes() and data(x).dtype == data(y).dtype
                    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def test_chunks_equal_one_long_run():
    # oracle: the whole run in one jitted scan; bit-identical since every step is the same
    # compiled body on the same inputs (CPU, same ops: no tolerance needed)
    state, data, chunk, whole = _problem()
    seen = []
    out, hist, info = run_chunks(chunk, state, num_steps=STEPS, chunk=CHUNK, args=data,
                                 history_axis=1, progress=False,
                                 on_chunk=lambda step, s, h: seen.append((step, h["step"][0])))
    ref_state, ref_hist = whole(state, *data)
    assert _same(out, ref_state) and _same(hist, jax.device_get(ref_hist))
    assert [s for s, _ in seen] == [3, 6, 9, 12]
    assert [h.tolist() for _, h in seen] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert len(info["chunk_seconds"]) == 4 and info["resumed_from"] is None


class _Stop(Exception):
    pass


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    state, data, chunk, _ = _problem()
    ref_state, ref_hist, _ = run_chunks(chunk, state, num_steps=STEPS, chunk=CHUNK, args=data,
                                        history_axis=1, progress=False)
    fp = fingerprint({"test": "ridge"}, state=state)

    def stop_at_9(step, s, h):                    # "killed" after the save at step 6
        if step == 9:
            raise _Stop
    with Checkpointer(tmp_path, every=6, fingerprint=fp) as ck, pytest.raises(_Stop):
        run_chunks(chunk, state, num_steps=STEPS, chunk=CHUNK, args=data, history_axis=1,
                   progress=False, checkpointer=ck, on_chunk=stop_at_9)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["6"]
    logged = []
    with Checkpointer(tmp_path, every=6, fingerprint=fp) as ck:
        out, hist, info = run_chunks(chunk, state, num_steps=STEPS, chunk=CHUNK, args=data,
                                     history_axis=1, progress=False, checkpointer=ck,
                                     on_chunk=lambda step, s, h: logged.append((step, s is None)))
    assert info["resumed_from"] == 6 and len(info["chunk_seconds"]) == 2
    assert _same(out, ref_state) and _same(hist, ref_hist)
    # restored chunks are replayed to on_chunk without a state, so logs are complete
    assert logged == [(3, True), (6, True), (9, False), (12, False)]
    # a finished run resumes at its end: nothing is run again
    with Checkpointer(tmp_path, every=6, fingerprint=fp) as ck:
        again, hist2, info2 = run_chunks(chunk, state, num_steps=STEPS, chunk=CHUNK, args=data,
                                         history_axis=1, progress=False, checkpointer=ck)
    assert info2 == {"chunk_seconds": [], "resumed_from": 12}
    assert _same(again, ref_state) and _same(hist2, ref_hist)


def _decay_chunk(bad_step: int, where: str):
    """x <- x / 2 + 1 per step; at `bad_step` the state or the history turns NaN."""
    def body(carry, _):
        x, t = carry
        x = x / 2 + 1
        if where == "state":
            x = jnp.where(t == bad_step, jnp.nan, x)
        loss = jnp.where(t == bad_step, jnp.log(-1.0), 0.0) if where == "history" else x.sum()
        return (x, t + 1), {"loss": loss}

    @jax.jit
    def run(state):
        (x, t), hist = jax.lax.scan(body, (state["x"], state["t"]), length=4)
        return {"x": x, "t": t}, hist
    return run


@pytest.mark.parametrize("where, match", [
    ("state", r"non-finite state\['x'\] in steps 8-11; 2 of 2 values"),
    ("history", r"non-finite history\['loss'\] in steps 8-11 \(first at step 9\)"),
], ids=["state", "history"])
def test_divergence_names_steps_and_quantity_and_keeps_last_checkpoint(tmp_path, where, match):
    state = {"x": jnp.zeros(2), "t": jnp.asarray(0)}
    run = _decay_chunk(9, where)
    with Checkpointer(tmp_path, every=4, fingerprint={"t": where}) as ck:
        with pytest.raises(FloatingPointError, match=match):
            run_chunks(run, state, num_steps=16, chunk=4, checkpointer=ck, progress=False)
    with Checkpointer(tmp_path, every=4, fingerprint={"t": where}) as ck:
        step, tree = ck.restore({"state": state, "history": {"loss": np.zeros(8, np.float32)}})
    assert step == 8 and int(tree["state"]["t"]) == 8
    assert np.all(np.isfinite(tree["state"]["x"])) and np.all(np.isfinite(tree["history"]["loss"]))
    # a caller that records divergence itself checks only what must stay finite
    out, hist, _ = run_chunks(run, state, num_steps=16, chunk=4, progress=False,
                              check_finite=lambda s, h: {"state": s} if where == "history"
                              else {})
    if where == "history":
        assert np.isnan(hist["loss"][9]) and np.isfinite(out["x"]).all()
    else:
        assert np.isnan(out["x"]).all()


def test_bad_arguments_and_foreign_checkpoint(tmp_path):
    state = {"x": jnp.zeros(2), "t": jnp.asarray(0)}
    run = _decay_chunk(-1, "state")
    for kwargs, message in [
            ({"num_steps": 10, "chunk": 4}, "chunk must divide num_steps \\(10\\), got 4"),
            ({"num_steps": 0, "chunk": 4}, "num_steps must be an int >= 1, got 0"),
            ({"num_steps": 8, "chunk": 4, "args": [1]}, "args must be a tuple"),
            ({"num_steps": 8, "chunk": 4, "check_finite": "yes"}, "check_finite must be"),
            ({"num_steps": 8, "chunk": 4,
              "checkpointer": Checkpointer(tmp_path, every=6, fingerprint={})},
             "checkpointer.every \\(6\\) must be a multiple of chunk \\(4\\)")]:
        with pytest.raises(ValueError, match=message):
            run_chunks(run, state, progress=False, **kwargs)
    # a checkpoint written with another chunk length cannot be continued
    with Checkpointer(tmp_path / "c", every=2, fingerprint={}) as ck:
        ck.save(2, {"state": state, "history": {"loss": np.zeros(2, np.float32)}})
        with pytest.raises(CheckpointError, match="step 2 is not a multiple of chunk \\(4\\)"):
            run_chunks(run, state, num_steps=8, chunk=4, checkpointer=Checkpointer(
                tmp_path / "c", every=4, fingerprint={}), progress=False)

