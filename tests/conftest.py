"""Test configuration: 4 emulated CPU devices and a persistent compilation cache."""
import os

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = os.environ.get(
    "STRUCTSEL_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def interrupt_after_save(monkeypatch):
    """`with interrupt_after_save(step):` Checkpointer.save raises KeyboardInterrupt right
    after it has saved `step` (a run killed just after that checkpoint); saves are normal
    again after the block."""
    import contextlib

    from structsel import checkpoint as ckpt_lib

    save = ckpt_lib.Checkpointer.save

    @contextlib.contextmanager
    def interrupting(step):
        def save_then_interrupt(self, at, tree):
            save(self, at, tree)
            if at == step:
                raise KeyboardInterrupt
        monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save_then_interrupt)
        try:
            yield
        finally:
            monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save)
    return interrupting


@pytest.fixture
def interaction_csv(tmp_path):
    """A 240-row CSV (columns a, b, c, target y = [a b + 0.3 c > 0]) in tmp_path."""
    import numpy as np

    rng = np.random.default_rng(4)
    x = rng.normal(size=(240, 3))
    y = (x[:, 0] * x[:, 1] + 0.3 * x[:, 2] > 0).astype(int)
    path = tmp_path / "t.csv"
    path.write_text("a,b,c,y\n" + "".join(f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f},{v}\n"
                                          for r, v in zip(x, y)))
    return path
