"""Tests of structsel/checkpoint.py: exact round trips and every refusal (CheckpointError)."""
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from structsel.checkpoint import (CheckpointError, Checkpointer, fingerprint, package_versions,
                                  tree_structure)


def _tree():
    """A trainer-like state: params, an optax state, a typed PRNG key, a weak scalar, numpy."""
    params = {"w": jnp.linspace(-1.0, 1.0, 300).reshape(30, 10), "b": jnp.zeros(10)}
    return {"params": params, "opt": optax.adam(0.1).init(params), "key": jax.random.key(3),
            "temperature": jnp.asarray(0.5),                     # weakly typed scalar
            "history": np.arange(12, dtype=np.float32).reshape(3, 4),
            "step": jnp.asarray(7, jnp.int32)}


def _same(a, b) -> bool:
    """Bit equality of two pytrees of arrays (typed keys compared by their key data)."""
    def data(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
            x.dtype, jax.dtypes.prng_key) else x)
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(data(x).dtype == data(y).dtype and data(x).tobytes() == data(y).tobytes()
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _saved(tmp_path, step=4, config=None) -> pathlib.Path:
    tree = _tree()
    with Checkpointer(tmp_path, every=2, fingerprint=fingerprint(config or {"lr": 0.1},
                                                                 state=tree)) as ck:
        ck.save(step, tree)
    return tmp_path


def _restore(directory, config=None, template=None):
    template = _tree() if template is None else template
    with Checkpointer(directory, every=2, fingerprint=fingerprint(config or {"lr": 0.1},
                                                                  state=_tree())) as ck:
        return ck.restore(template)


def test_round_trip_is_exact_and_keeps_types(tmp_path):
    # oracle: the saved tree itself; bitwise, since a checkpoint must not round values
    tree = _tree()
    step, restored = _restore(_saved(tmp_path))
    assert step == 4 and _same(restored, tree)
    assert jax.dtypes.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(tree["key"])
    assert restored["temperature"].weak_type          # same jit signature as the original
    assert isinstance(restored["history"], np.ndarray)
    assert isinstance(restored["params"]["w"], jax.Array)


def test_no_checkpoint_is_none_and_keep_deletes_old_steps(tmp_path):
    assert _restore(tmp_path / "absent") is None
    tree = _tree()
    with Checkpointer(tmp_path, every=1, fingerprint={"a": 1}, keep=2) as ck:
        for step in (1, 2, 3):
            ck.save(step, tree)
        with pytest.raises(CheckpointError, match="exists already"):
            ck.save(3, tree)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "2.sha256.json", "3",
                                                          "3.sha256.json"]


def test_interrupted_save_is_ignored_but_missing_commit_marker_raises(tmp_path):
    _saved(tmp_path, step=4)
    # a save killed midway leaves only orbax's temporary folder: never read
    shutil.copytree(tmp_path / "4", tmp_path / "6.orbax-checkpoint-tmp-1700000000")
    (tmp_path / "6.orbax-checkpoint-tmp-1700000000" / "commit_success.txt").unlink()
    assert _restore(tmp_path)[0] == 4
    # a step folder without the commit marker is partial: refused, not skipped
    shutil.copytree(tmp_path / "4", tmp_path / "8")
    (tmp_path / "8" / "commit_success.txt").unlink()
    with pytest.raises(CheckpointError, match=r"partial checkpoint .*/8: commit_success.txt"):
        _restore(tmp_path)


def test_corrupt_metadata_raises_naming_the_file(tmp_path):
    meta = _saved(tmp_path) / "4" / "meta" / "metadata"
    meta.write_text(meta.read_text()[:40])                          # truncated JSON
    with pytest.raises(CheckpointError, match=f"corrupt checkpoint {meta}"):
        _restore(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_array_files_raise_naming_a_file(tmp_path, damage):
    _saved(tmp_path)
    files = [p for p in (tmp_path / "4" / "state").rglob("*")
             if p.is_file() and p.parent.name == "d"]
    assert files
    files.sort()
    for path in files:                                   # every data file of the arrays
        raw = bytearray(path.read_bytes())
        if damage == "truncate":
            raw = raw[:len(raw) // 2]
        else:
            raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"corrupt checkpoint {tmp_path}/4/state/.*/"
                                              f"{files[0].name}: its SHA-256 differs"):
        _restore(tmp_path)


def test_changed_values_fail_the_checksum(tmp_path):
    # rewrite the state with other values under the same metadata: only the SHA-256 sees it
    _saved(tmp_path)
    meta = (tmp_path / "4" / "meta" / "metadata").read_text()
    other = jax.tree.map(lambda x: x, _tree())
    other["params"]["w"] = other["params"]["w"] + 1.0
    with Checkpointer(tmp_path / "b", every=2, fingerprint={"a": 1}) as ck:
        ck.save(4, other)
    shutil.rmtree(tmp_path / "4" / "state")
    shutil.copytree(tmp_path / "b" / "4" / "state", tmp_path / "4" / "state")
    assert (tmp_path / "4" / "meta" / "metadata").read_text() == meta
    (tmp_path / "4.sha256.json").unlink()      # as if killed before the file list was written
    with pytest.raises(CheckpointError, match=r"checksum of leaf \['params'\]\['w'\]"):
        _restore(tmp_path)


def test_other_config_or_version_is_incompatible(tmp_path):
    _saved(tmp_path, config={"lr": 0.1, "seed": 0})
    with pytest.raises(CheckpointError, match=r"incompatible .*metadata.* config\.seed: saved 0, "
                                              r"now 1"):
        _restore(tmp_path, config={"lr": 0.1, "seed": 1})
    old = fingerprint({"lr": 0.1}, state=_tree())
    old["versions"]["jax"] = "0.0.1"                  # as written by another jax
    with Checkpointer(tmp_path / "v", every=2, fingerprint=old) as ck:
        ck.save(4, _tree())
    with pytest.raises(CheckpointError, match=r"versions\.jax: saved 0\.0\.1, now "
                                              + package_versions()["jax"]):
        _restore(tmp_path / "v")


def test_other_tree_is_incompatible(tmp_path):
    _saved(tmp_path)
    wrong_shape = _tree()
    wrong_shape["params"]["b"] = jnp.zeros(11)
    with pytest.raises(CheckpointError, match=r"\['params'\]\['b'\]: saved \(10,\) float32, "
                                              r"now \(11,\) float32"):
        _restore(tmp_path, template=wrong_shape)
    missing = _tree()
    del missing["step"]
    with pytest.raises(CheckpointError, match=r"\['step'\]: saved \(\) int32, now <absent>"):
        _restore(tmp_path, template=missing)


def test_save_refuses_another_runs_directory(tmp_path):
    _saved(tmp_path, config={"lr": 0.1})
    with Checkpointer(tmp_path, every=2, fingerprint=fingerprint({"lr": 0.2},
                                                                 state=_tree())) as ck:
        with pytest.raises(CheckpointError, match="config.lr: saved 0.1, now 0.2"):
            ck.save(6, _tree())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "4.sha256.json"]


def test_fingerprint_and_structure():
    tree = _tree()
    structure = tree_structure(tree)
    assert structure["['params']['w']"] == "(30, 10) float32"
    assert structure["['key']"] == "() key<fry>"
    fp = fingerprint({"lr": 0.1, "sizes": (1, 2)}, state=tree, seed=3)
    assert fp["config"] == {"lr": 0.1, "sizes": [1, 2]} and fp["seed"] == 3
    assert fp["versions"]["orbax-checkpoint"] == package_versions()["orbax-checkpoint"]


@pytest.mark.parametrize("kwargs, match", [
    ({"every": 0, "fingerprint": {}}, "every must be an int >= 1, got 0"),
    ({"every": 1, "fingerprint": {}, "keep": 0}, "keep must be an int >= 1, got 0"),
    ({"every": 1, "fingerprint": [1]}, "fingerprint must be a mapping"),
    ({"every": 1, "fingerprint": {"f": object()}}, "fingerprint must be JSON-able"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Checkpointer(tmp_path, **kwargs)
    with pytest.raises(ValueError, match="step must be an int >= 0, got -1"):
        Checkpointer(tmp_path, every=1, fingerprint={}).save(-1, {"a": np.zeros(1)})


def test_save_of_one_process_among_several(tmp_path, monkeypatch):
    # orbax 0.12 writes only global arrays with several processes: each process then saves
    # its own arrays (orbax msgpack) in the same layout and protocol; oracle: the tree
    tree = _tree()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    fp = fingerprint({"lr": 0.1}, state=tree)
    with Checkpointer(tmp_path, every=2, fingerprint=fp) as ck:
        ck.save(2, tree)
        ck.save(4, tree)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "4.sha256.json"]
    assert (tmp_path / "4" / "state" / "state.msgpack").is_file()
    step, restored = _restore(tmp_path)
    assert step == 4 and _same(restored, tree) and restored["temperature"].weak_type
    data = tmp_path / "4" / "state" / "state.msgpack"
    data.write_bytes(data.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=f"corrupt checkpoint {data}: its SHA-256"):
        _restore(tmp_path)
