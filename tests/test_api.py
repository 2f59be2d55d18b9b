"""The public API: every name in structsel.__all__ resolves, and the top-level functions are the module ones."""
import importlib

import jax.numpy as jnp

import structsel
from structsel import distributions

# The function structsel.hypergradient shadows its module's name on the package.
hg_module = importlib.import_module("structsel.hypergradient")


def test_all_names_resolve():
    missing = [name for name in structsel.__all__ if not hasattr(structsel, name)]
    assert missing == []


def test_top_level_functions_are_the_library_ones():
    assert structsel.gumbel_softmax is distributions.gumbel_softmax
    assert structsel.dirichlet is distributions.dirichlet
    assert structsel.logit_normal is distributions.logit_normal
    assert structsel.hypergradient is hg_module.hypergradient
    d = structsel.gumbel_softmax(jnp.zeros(3), 0.5)
    assert d.event_shape == (3,)
