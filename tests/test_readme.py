"""The README's code runs as written (the one-screen tour of the library)."""
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_readme_tour_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    history, g, hparams = namespace["history"], namespace["g"], namespace["state"].hparams
    assert np.all(np.isfinite(np.asarray(history["outer_loss"])))
    # The hypergradient has the structure of hparams and is finite.
    import jax
    assert jax.tree.structure(g) == jax.tree.structure(hparams)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(g))
