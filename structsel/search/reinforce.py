"""NAS with an RNN controller trained by REINFORCE (Zoph & Le 2017; method.md section 8).

The controller pi_theta is an LSTM (flax OptimizedLSTMCell, shared over decisions) that
emits one categorical decision a_e per edge autoregressively:

    x_0 = s (a learned start vector),  (c_e, h_e) = LSTM((c_{e-1}, h_{e-1}), x_e),
    pi(a_e | a_<e) = softmax(W_e h_e + b_e),  x_{e+1} = Embed_e(a_e),

so log pi(a) = sum_e log pi(a_e | a_<e). Each edge has its own head (K_e outputs) and its
own embedding table, so spaces with different K_e per edge need no padding; the loop over
edges is a static Python loop over the E decisions. The objective J(theta) = E_pi R(a) is
maximised with the REINFORCE estimator

    grad J ~= (1/n) sum_i (R(a_i) - b) grad log pi(a_i),   a_i ~ pi_theta,

with b an exponential moving average of past rewards, b <- d b + (1 - d) mean_i R(a_i),
and an optional entropy bonus beta_H H(pi). All functions are pure; `run_reinforce` is
the experiment-facing driver that jits the controller sampler and update once per run and
loops in Python only around the black-box evaluation.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from structsel.search.discrete import (DiscreteSpace, Evaluate, SearchResult,
                                    _check_positive_int, evaluate_checked, search_result)


class ControllerParams(NamedTuple):
    """Parameters of the LSTM controller; the space (K_e per edge) is read off `head`."""

    lstm: Any                 # flax OptimizedLSTMCell variables
    start: jax.Array          # (H,) first input x_0
    embed: tuple[Any, ...]    # E-1 nn.Embed(K_e, H) variables: x_{e+1} = Embed_e(a_e)
    head: tuple[Any, ...]     # E nn.Dense(K_e) variables: logits of decision e


class ReinforceState(NamedTuple):
    """Controller parameters, optimiser state, the EMA baseline b and the step count."""

    params: ControllerParams
    opt_state: Any
    baseline: jax.Array
    step: jax.Array


class ReinforceResult(NamedTuple):
    """Search record (as random search) plus the trained controller state."""

    search: SearchResult
    state: ReinforceState
    baselines: jax.Array      # (T,) baseline b used at each iteration


def controller_num_ops(params: ControllerParams) -> tuple[int, ...]:
    """K_e of every decision, from the static shapes of the output heads."""
    return tuple(int(h["params"]["bias"].shape[-1]) for h in params.head)


def controller_init(space: DiscreteSpace, hidden: int = 32, *, key: jax.Array
                    ) -> ControllerParams:
    """Initialise pi_theta for `space` with an LSTM of `hidden` units."""
    if not isinstance(space, DiscreteSpace):
        raise ValueError(f"space must be a DiscreteSpace, got {type(space).__name__}")
    _check_positive_int("hidden", hidden)
    k_lstm, k_start, k_embed, k_head = jax.random.split(key, 4)
    cell = nn.OptimizedLSTMCell(features=hidden)
    x = jnp.zeros((1, hidden))
    lstm = cell.init(k_lstm, (x, x), x)
    start = jax.random.normal(k_start, (hidden,)) / jnp.sqrt(hidden)
    ops = space.num_ops
    embed = tuple(nn.Embed(k, hidden).init(kk, jnp.zeros((1,), jnp.int32))
                  for k, kk in zip(ops[:-1], jax.random.split(k_embed, len(ops))))
    head = tuple(nn.Dense(k).init(kk, x)
                 for k, kk in zip(ops, jax.random.split(k_head, len(ops))))
    return ControllerParams(lstm, start, embed, head)


def _unroll(params: ControllerParams, n: int, actions=None, key=None):
    """Run the controller for n sequences, sampling (key) or teacher-forced (actions)."""
    ops = controller_num_ops(params)
    hidden = params.start.shape[-1]
    cell = nn.OptimizedLSTMCell(features=hidden)
    zeros = jnp.zeros((n, hidden), params.start.dtype)
    carry, x = (zeros, zeros), jnp.broadcast_to(params.start, (n, hidden))
    keys = jax.random.split(key, len(ops)) if actions is None else None
    chosen, log_prob, entropy = [], jnp.zeros((n,), zeros.dtype), jnp.zeros((n,), zeros.dtype)
    for e, k in enumerate(ops):
        carry, h = cell.apply(params.lstm, carry, x)
        logp = jax.nn.log_softmax(nn.Dense(k).apply(params.head[e], h))
        a = (jax.random.categorical(keys[e], logp) if actions is None
             else actions[:, e]).astype(jnp.int32)
        log_prob = log_prob + jnp.take_along_axis(logp, a[:, None], axis=-1)[:, 0]
        entropy = entropy - jnp.sum(jnp.exp(logp) * logp, axis=-1)
        chosen.append(a)
        if e + 1 < len(ops):
            x = nn.Embed(k, hidden).apply(params.embed[e], a)
    return jnp.stack(chosen, axis=-1), log_prob, entropy


def controller_sample(params: ControllerParams, n: int, *, key: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """Draw a_i ~ pi_theta, i = 1..n: (choices int32 (n, E), log pi(a_i) (n,))."""
    _check_positive_int("n", n)
    choices, log_prob, _ = _unroll(params, n, key=key)
    return choices, log_prob


def controller_log_prob(params: ControllerParams, choices: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
    """log pi(a) = sum_e log pi(a_e | a_<e) and the summed per-decision entropies, (n,) each."""
    choices = jnp.asarray(choices)
    if choices.ndim != 2 or choices.shape[1] != len(params.head):
        raise ValueError(f"choices must have shape (n, {len(params.head)}), "
                         f"got {choices.shape}")
    _, log_prob, entropy = _unroll(params, choices.shape[0], actions=choices)
    return log_prob, entropy


def reinforce_loss(params: ControllerParams, choices: jax.Array, rewards: jax.Array,
                   baseline: jax.Array, *, entropy_weight: float = 0.0,
                   weights: jax.Array | None = None) -> jax.Array:
    """Surrogate whose gradient is minus the REINFORCE estimate:
    -sum_i w_i (R_i - b) log pi(a_i) - beta_H sum_i w_i H_i, w_i = 1/n by default.

    With `weights` = pi(a) over an enumeration of the space, its gradient is exactly
    -grad E_pi R (for any constant b, since sum_a grad pi(a) = 0).
    """
    log_prob, entropy = controller_log_prob(params, choices)
    advantage = jax.lax.stop_gradient(jnp.asarray(rewards) - baseline)
    if weights is None:
        weights = jnp.full(log_prob.shape, 1.0 / log_prob.shape[0], log_prob.dtype)
    weights = jax.lax.stop_gradient(weights)
    return -jnp.sum(weights * advantage * log_prob) - entropy_weight * jnp.sum(weights * entropy)


def reinforce_init(params: ControllerParams, optimizer: optax.GradientTransformation
                   ) -> ReinforceState:
    """Initial REINFORCE state: optimiser state, b = 0 (replaced by the first batch mean)."""
    return ReinforceState(params, optimizer.init(params),
                          jnp.zeros((), params.start.dtype), jnp.zeros((), jnp.int32))


def reinforce_step(state: ReinforceState, choices: jax.Array, rewards: jax.Array, *,
                   optimizer: optax.GradientTransformation, baseline_decay: float = 0.9,
                   entropy_weight: float = 0.0) -> tuple[ReinforceState, jax.Array, jax.Array]:
    """One controller update on a batch of evaluated structures.

    b = EMA of earlier batches (the first batch uses its own mean), theta <- optimiser step on
    reinforce_loss, then b <- d b + (1 - d) mean_i R_i. Returns (state, loss, b used).
    """
    rewards = jnp.asarray(rewards, state.baseline.dtype)
    mean_r = jnp.mean(rewards)
    baseline = jnp.where(state.step == 0, mean_r, state.baseline)
    loss, grads = jax.value_and_grad(reinforce_loss)(
        state.params, choices, rewards, baseline, entropy_weight=entropy_weight)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_baseline = baseline_decay * baseline + (1.0 - baseline_decay) * mean_r
    return ReinforceState(params, opt_state, new_baseline, state.step + 1), loss, baseline


def run_reinforce(evaluate: Evaluate, space: DiscreteSpace, *, key: jax.Array,
                  num_iterations: int, batch_size: int, hidden: int = 32,
                  optimizer: optax.GradientTransformation | None = None,
                  learning_rate: float = 1e-2, baseline_decay: float = 0.9,
                  entropy_weight: float = 0.0) -> ReinforceResult:
    """NAS-RL driver: T iterations of (sample n structures, evaluate, update pi_theta).

    Args:
      evaluate: black box, int (n, E) structures -> (n,) rewards (larger is better).
      space: the discrete space.
      key: PRNG key; split into init and per-iteration sampling keys (fold_in(key, t)).
      num_iterations, batch_size: T and n; the budget is T * n evaluations.
      hidden: LSTM width.
      optimizer: optax transformation (default Adam(learning_rate), as Zoph & Le).
      baseline_decay: d of the moving-average baseline, in [0, 1).
      entropy_weight: beta_H >= 0, weight of the entropy bonus.
    """
    _check_positive_int("num_iterations", num_iterations)
    _check_positive_int("batch_size", batch_size)
    if not 0.0 <= baseline_decay < 1.0:
        raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
    if entropy_weight < 0.0:
        raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}")
    if optimizer is None:
        if not learning_rate > 0.0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        optimizer = optax.adam(learning_rate)
    init_key, sample_key = jax.random.split(key)
    state = reinforce_init(controller_init(space, hidden, key=init_key), optimizer)
    # The driver owns the jit boundary: compiled once per run, reused every iteration.
    sample = jax.jit(lambda p, k: controller_sample(p, batch_size, key=k))
    update = jax.jit(lambda s, a, r: reinforce_step(
        s, a, r, optimizer=optimizer, baseline_decay=baseline_decay,
        entropy_weight=entropy_weight))
    all_choices, all_rewards, baselines = [], [], []
    for t in range(num_iterations):
        choices, _ = sample(state.params, jax.random.fold_in(sample_key, t))
        rewards = evaluate_checked(evaluate, choices)
        state, _, baseline = update(state, choices, rewards)
        all_choices.append(choices)
        all_rewards.append(rewards)
        baselines.append(baseline)
    result = search_result(jnp.concatenate(all_choices), jnp.concatenate(all_rewards))
    return ReinforceResult(result, state, jnp.stack(baselines))
