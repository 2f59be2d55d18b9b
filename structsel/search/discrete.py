"""Discrete search spaces and the black-box evaluation interface (method.md sections 2, 8).

A discrete structure puts one basis function on each edge: gamma^{j,k} is a vertex of the
simplex Delta^{K_e - 1}. `DiscreteSpace(num_ops)` encodes such a structure as an integer
vector `choice` of length E (one index a_e in {0..K_e-1} per edge, edges in the order of
`Family.edges`). Baselines consume a black box

    evaluate(choices: int array (n, E)) -> rewards: float array (n,)

(e.g. validation accuracy of the discrete model gamma = to_gamma(choice), trained by a
jitted trainer vmapped over simplex vertices). Larger rewards are better.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Evaluate = Callable[[jax.Array], jax.Array]

# Spaces up to this many structures can be indexed in int32 and permuted in memory.
MAX_INDEXABLE = 2**24


@dataclasses.dataclass(frozen=True)
class DiscreteSpace:
    """One categorical choice a_e in {0..K_e-1} per edge e; |space| = prod_e K_e."""

    num_ops: tuple[int, ...]

    def __post_init__(self):
        ops = tuple(self.num_ops) if isinstance(self.num_ops, (tuple, list)) else None
        if not ops or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool)
                              and k >= 1 for k in ops):
            raise ValueError(
                f"num_ops must be a non-empty tuple of integers >= 1 (K_e per edge), "
                f"got {self.num_ops!r}")
        object.__setattr__(self, "num_ops", tuple(int(k) for k in ops))

    @property
    def num_edges(self) -> int:
        """E, the number of categorical decisions."""
        return len(self.num_ops)

    @property
    def size(self) -> int:
        """|space| = prod_e K_e (a Python int, exact for any size)."""
        return math.prod(self.num_ops)

    def _radix(self) -> jax.Array:
        """Mixed-radix place values: index = sum_e a_e prod_{e' > e} K_e'."""
        if self.size > MAX_INDEXABLE:
            raise ValueError(
                f"space of size {self.size} is too large to index or enumerate; "
                f"allowed: size <= {MAX_INDEXABLE} (use sample instead)")
        places = [math.prod(self.num_ops[e + 1:]) for e in range(self.num_edges)]
        return jnp.asarray(places, jnp.int32)

    def enumerate(self) -> jax.Array:
        """All structures, int32 (size, E), in lexicographic order (last edge fastest)."""
        return self.from_index(jnp.arange(self.size, dtype=jnp.int32))

    def index(self, choices: jax.Array) -> jax.Array:
        """Lexicographic index of each structure: sum_e a_e prod_{e' > e} K_e'."""
        return jnp.sum(jnp.asarray(choices, jnp.int32) * self._radix(), axis=-1)

    def from_index(self, index: jax.Array) -> jax.Array:
        """Inverse of `index`: a_e = (index // prod_{e' > e} K_e') mod K_e."""
        index = jnp.asarray(index, jnp.int32)[..., None]
        return (index // self._radix()) % jnp.asarray(self.num_ops, jnp.int32)

    def sample(self, n: int, *, key: jax.Array) -> jax.Array:
        """n structures drawn uniformly with replacement, a_e ~ U{0..K_e-1}: int32 (n, E)."""
        _check_positive_int("n", n)
        keys = jax.random.split(key, self.num_edges)
        cols = [jax.random.randint(k, (n,), 0, num, dtype=jnp.int32)
                for k, num in zip(keys, self.num_ops)]
        return jnp.stack(cols, axis=-1)

    def sample_distinct(self, n: int, *, key: jax.Array) -> jax.Array:
        """n distinct structures, uniform without replacement (n <= size <= MAX_INDEXABLE)."""
        _check_positive_int("n", n)
        if n > self.size:
            raise ValueError(f"n must be <= size = {self.size} to sample without "
                             f"replacement, got {n}")
        self._radix()  # raises for spaces that cannot be indexed
        idx = jax.random.choice(key, self.size, (n,), replace=False)
        return self.from_index(idx)

    def to_gamma(self, choice: jax.Array) -> tuple[jax.Array, ...]:
        """Simplex vertex of a structure: gamma^e = one_hot(a_e, K_e); batched over leading axes."""
        choice = jnp.asarray(choice)
        if choice.shape[-1:] != (self.num_edges,):
            raise ValueError(f"choice must have last axis of length num_edges = "
                             f"{self.num_edges}, got shape {choice.shape}")
        return tuple(jax.nn.one_hot(choice[..., e], k) for e, k in enumerate(self.num_ops))

    def from_gamma(self, gamma: tuple[jax.Array, ...]) -> jax.Array:
        """Discretise gamma by argmax per edge (method.md section 2): a_e = argmax_l gamma^e_l."""
        if len(gamma) != self.num_edges:
            raise ValueError(f"gamma must have one array per edge ({self.num_edges}), "
                             f"got {len(gamma)}")
        return jnp.stack([jnp.argmax(g, axis=-1).astype(jnp.int32) for g in gamma], axis=-1)


class SearchResult(NamedTuple):
    """Everything a black-box search evaluated, in evaluation order."""

    best_choice: jax.Array       # (E,) the structure with the largest reward
    best_reward: jax.Array       # ()
    choices: jax.Array           # (N, E) every evaluated structure
    rewards: jax.Array           # (N,)
    incumbent: jax.Array         # (N,) best reward after each evaluation
    incumbent_index: jax.Array   # (N,) index into `choices` of the incumbent


def incumbent_history(rewards: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Best-so-far reward max_{j <= i} R_j and its first index, for every evaluation i."""
    rewards = jnp.asarray(rewards)

    def step(carry, xs):
        best, best_i = carry
        r, i = xs
        better = r > best
        carry = (jnp.where(better, r, best), jnp.where(better, i, best_i))
        return carry, carry

    init = (jnp.asarray(-jnp.inf, rewards.dtype), jnp.asarray(0, jnp.int32))
    idx = jnp.arange(rewards.shape[0], dtype=jnp.int32)
    _, (values, indices) = jax.lax.scan(step, init, (rewards, idx))
    return values, indices


def search_result(choices: jax.Array, rewards: jax.Array) -> SearchResult:
    """Pack evaluated (choice, reward) pairs with the incumbent history."""
    values, indices = incumbent_history(rewards)
    best = indices[-1]
    return SearchResult(choices[best], rewards[best], choices, rewards, values, indices)


def evaluate_checked(evaluate: Evaluate, choices: jax.Array) -> jax.Array:
    """Call the black box and check it returned one finite reward per structure."""
    rewards = jnp.asarray(evaluate(choices))
    if rewards.shape != (choices.shape[0],):
        raise ValueError(f"evaluate must return rewards of shape ({choices.shape[0]},) "
                         f"for choices of shape {choices.shape}, got {rewards.shape}")
    if not bool(jnp.all(jnp.isfinite(rewards))):
        raise ValueError("evaluate returned non-finite rewards; allowed: finite floats")
    return rewards


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
