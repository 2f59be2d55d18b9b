"""The bilevel trainer (method.md sections 6-7).

Solves  h* = argmin_h outer(theta*(h), h),  theta*(h) = argmin_theta inner(theta, h)
(``inner_loss = -L`` on train data, ``outer_loss = -Q`` on validation data) by
alternating ``inner_steps`` optax steps on theta (warm-started from the previous outer
step, inside ``lax.scan``) with one optax step on h along the hypergradient

    dQ/dh = grad_h Q - grad_h grad_theta L^T H^{-1} grad_theta Q,   H = grad_theta^2 L,

computed by :func:`structsel.hypergradient.hypergradient` with a chosen method.

The trainer is generic over any loss pair ``loss(params, hparams, batch, ctx)``; it only
builds the :class:`structsel.objective.Context` (PRNG key, temperature lambda_temp,
warm-up flag) that the losses receive. Everything is pure and jittable; the caller
owns ``jax.jit``. ``run`` performs all outer steps in one ``lax.scan``; ``run_many``
vmaps it over restarts/seeds in the same compiled program. A non-finite loss, parameter
or hypergradient freezes the state at the last finite one; :func:`check_divergence`
(and :meth:`BilevelTrainer.fit`) then raise :class:`DivergenceError` outside the trace.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from structsel.hypergradient import METHODS, get_method, hypergradient
from structsel.objective import Context

Schedule = Callable[[Any], Any]

# Codes of the quantity that went non-finite first (history["nonfinite"]); 0 = all finite.
QUANTITIES = ("none", "inner_loss", "params", "outer_loss", "hypergradient", "hparams")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive(name, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_steps(steps):
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")


def constant(t: float) -> Schedule:
    """Constant temperature schedule: lambda_temp(k) = t."""
    _check_positive("t", t)
    return optax.constant_schedule(float(t))


def linear(t0: float, t1: float, steps: int) -> Schedule:
    """Linear schedule: lambda_temp(k) = t0 + (t1 - t0) min(k, steps) / steps."""
    _check_positive("t0", t0)
    _check_positive("t1", t1)
    _check_steps(steps)
    return optax.linear_schedule(float(t0), float(t1), steps)


def exponential(t0: float, t1: float, steps: int) -> Schedule:
    """Geometric schedule: lambda_temp(k) = t0 (t1 / t0)^(min(k, steps) / steps)."""
    _check_positive("t0", t0)
    _check_positive("t1", t1)
    _check_steps(steps)
    return optax.exponential_decay(float(t0), steps, float(t1) / float(t0), end_value=float(t1))


# Adam's hyperparameters that stay Python floats when others are traced per run.
ADAM_STATIC = ("b1", "b2", "eps", "eps_root")


def traced_optimizer(opt_fn: Callable[..., optax.GradientTransformation],
                     *names: str) -> optax.GradientTransformation:
    """`opt_fn` (optax.adam, optax.adamw, ...) with the hyperparameters `names` (e.g.
    "learning_rate", "weight_decay") held in the optimiser state by
    `optax.inject_hyperparams`, so that runs vmapped together each have their own values
    (set with `with_hyperparams` after `init`). Adam's b1, b2, eps, eps_root stay Python
    floats, so the update is `opt_fn`'s bit for bit. The traced values start unset (NaN):
    a state that was never given its run's values shows a NaN loss at the first step,
    never a silent default."""
    return optax.inject_hyperparams(opt_fn, static_args=ADAM_STATIC)(
        **{name: float("nan") for name in names})


def with_hyperparams(opt_state, hyper: Mapping[str, Any]):
    """A `traced_optimizer` state (or a batch of them) with `hyper` (name -> value, arrays
    with the batch's shape for a batch) in place."""
    return opt_state._replace(hyperparams={**opt_state.hyperparams, **hyper})


@flax.struct.dataclass
class BilevelState:
    """Trainer state: theta (params), h (hparams), both optimiser states, step, PRNG key,
    and the run's traced objective coefficients (`objective.Coefficients` of arrays, passed
    to the losses as ``ctx.coefficients``; None: the objective's static ones)."""

    params: Any
    hparams: Any
    inner_opt_state: Any
    outer_opt_state: Any
    step: jax.Array
    key: jax.Array
    coefficients: Any = None


class DivergenceError(RuntimeError):
    """A loss, parameter or hypergradient became NaN/inf at outer step ``step``.

    ``state`` is the last finite state, ``history`` the history of the outer steps that
    finished before the bad one; ``index`` locates the run in a batch of runs (() if none).
    """

    def __init__(self, step, quantity, state, history, index=()):
        where = f" in run {index}" if index else ""
        super().__init__(f"non-finite {quantity} at outer step {step}{where}")
        self.step, self.quantity, self.state = step, quantity, state
        self.history, self.index = history, index


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _first_nonfinite(checks) -> jax.Array:
    """Code (index in QUANTITIES) of the first non-finite quantity, 0 if all are finite."""
    code = jnp.asarray(0, jnp.int32)
    for c, ok in reversed(list(enumerate(checks, start=1))):
        code = jnp.where(ok, code, c)
    return code


# fold_in tag of the minibatch stream (apart from the losses' keys of the same step)
_BATCH_STREAM = 0x5EED


def _select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


@dataclasses.dataclass(frozen=True)
class BilevelTrainer:
    """Alternating inner/outer optimisation of a generic loss pair.

    Args:
      inner_loss, outer_loss: ``loss(params, hparams, batch, ctx) -> scalar`` to minimise
        (-L on train data, -Q on validation data).
      inner_opt, outer_opt: optax transformations for theta and for h.
      inner_steps: inner optimiser steps per outer step (warm-started).
      hypergradient_method: a name in ``structsel.hypergradient.METHODS`` or a strategy
        object (``Implicit(...)``, ``Darts(...)``, ...).
      hypergradient_options: keyword options of a named method (a mapping or a tuple of
        (name, value) pairs; stored as a sorted tuple so the trainer stays hashable);
        validated at construction by ``structsel.hypergradient.get_method``.
      temperature: schedule step -> lambda_temp (``constant``, ``linear``,
        ``exponential`` or any optax schedule).
      warmup_steps: outer steps during which ``ctx.warmup`` is True (simpler prior).
      structure_fn: optional ``structure_fn(params, hparams, ctx) -> gamma`` recorded in
        the history under "structure".
      batch_size: None (full batch) or B: each inner step, and the inner term of the
        hypergradient, sees B rows of the training batch drawn without replacement
        (fresh rows per step; keys from ``fold_in(key, step)``, apart from the losses'
        keys, so full-batch runs are unchanged). The validation batch stays whole. The
        losses must then scale their prior terms by the full data size (e.g.
        ``Objective(num_data=...)``), not by B.
      data_mesh: None, or a 1-D ``jax.sharding.Mesh``: data parallelism of one run. The
        rows of every minibatch are split over the mesh's devices
        (``with_sharding_constraint``, so XLA partitions the steps and all-reduces the
        gradients); needs `batch_size` divisible by the number of devices. The numbers
        are those of one device up to float32 reassociation.
    """

    inner_loss: Callable
    outer_loss: Callable
    inner_opt: optax.GradientTransformation
    outer_opt: optax.GradientTransformation
    inner_steps: int = 1
    hypergradient_method: Any = "greedy"
    hypergradient_options: Any = ()
    temperature: Schedule = dataclasses.field(default_factory=lambda: constant(1.0))
    warmup_steps: int = 0
    structure_fn: Callable | None = None
    batch_size: int | None = None
    data_mesh: Any = None

    def __post_init__(self):
        if not callable(self.inner_loss) or not callable(self.outer_loss):
            raise ValueError("inner_loss and outer_loss must be callables "
                             "loss(params, hparams, batch, ctx)")
        for name in ("inner_opt", "outer_opt"):
            if not isinstance(getattr(self, name), optax.GradientTransformation):
                raise ValueError(f"{name} must be an optax.GradientTransformation")
        if not _is_int(self.inner_steps) or self.inner_steps < 1:
            raise ValueError(f"inner_steps must be an int >= 1, got {self.inner_steps!r}")
        opts = self.hypergradient_options
        opts = tuple(sorted(opts.items() if isinstance(opts, Mapping) else tuple(opts)))
        object.__setattr__(self, "hypergradient_options", opts)
        try:
            get_method(self.hypergradient_method, **dict(opts))
        except (ValueError, TypeError) as err:
            raise ValueError(f"hypergradient_method / hypergradient_options: {err} "
                             f"(methods: {METHODS})") from err
        if not callable(self.temperature):
            raise ValueError("temperature must be a schedule: constant, linear, exponential "
                             "or any callable step -> lambda_temp")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if self.batch_size is not None and (not _is_int(self.batch_size)
                                            or self.batch_size < 1):
            raise ValueError(f"batch_size must be None or an int >= 1, got {self.batch_size!r}")
        if self.data_mesh is not None:
            if (not isinstance(self.data_mesh, jax.sharding.Mesh)
                    or len(self.data_mesh.axis_names) != 1):
                raise ValueError(f"data_mesh must be None or a 1-D jax.sharding.Mesh, got "
                                 f"{self.data_mesh!r}")
            if self.batch_size is None or self.batch_size % self.data_mesh.size:
                raise ValueError(f"data_mesh of {self.data_mesh.size} devices needs a "
                                 f"batch_size divisible by {self.data_mesh.size}, got "
                                 f"{self.batch_size!r}")
        if self.structure_fn is not None and not callable(self.structure_fn):
            raise ValueError("structure_fn must be None or a callable (params, hparams, ctx)")

    def init(self, params, hparams, *, key, coefficients=None) -> BilevelState:
        """Initial state: optimiser states of theta and h, step 0, the run's PRNG key and
        (optionally) its traced coefficients."""
        return BilevelState(params=params, hparams=hparams,
                            inner_opt_state=self.inner_opt.init(params),
                            outer_opt_state=self.outer_opt.init(hparams),
                            step=jnp.zeros((), jnp.int32), key=key, coefficients=coefficients)

    def init_many(self, init_fn: Callable, keys, coefficients=None) -> BilevelState:
        """Batched initial states: ``init_fn(key) -> (params, hparams)`` vmapped over keys;
        ``coefficients`` (optional, e.g. ``objective.coefficient_batch``) has the same
        leading run axis as ``keys``: runs with different lambdas in one program."""
        def one(key, coef):
            k_init, k_run = jax.random.split(key)
            params, hparams = init_fn(k_init)
            return self.init(params, hparams, key=k_run, coefficients=coef)
        return jax.vmap(one)(keys, coefficients)

    def _context(self, key, step, coefficients=None) -> Context:
        return Context.create(key, self.temperature(step), step < self.warmup_steps,
                              coefficients)

    def step(self, state: BilevelState, train_batch, val_batch):
        """One outer step: ``inner_steps`` optax steps on theta, then h <- optax(dQ/dh).

        Randomness: ``fold_in(key, step)`` split into the inner steps, the hypergradient
        and the structure record. A non-finite quantity leaves the state unchanged and is
        reported in ``metrics["nonfinite"]`` (a code into QUANTITIES).
        """
        keys = jax.random.split(jax.random.fold_in(state.key, state.step), self.inner_steps + 3)
        k_inner, (k_hyper_in, k_hyper_out, k_struct) = keys[:-3], keys[-3:]
        ctx0 = self._context(k_struct, state.step, state.coefficients)
        hparams = state.hparams
        batches = self._minibatches(state, train_batch)  # None: the whole batch each time

        def inner_body(carry, xs):
            params, opt_state = carry
            key, batch = xs
            batch = train_batch if batch is None else batch
            ctx = ctx0.replace(key=key)
            loss, grads = jax.value_and_grad(self.inner_loss)(params, hparams, batch, ctx)
            updates, opt_state = self.inner_opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        inner_batches = None if batches is None else jax.tree.map(lambda a: a[:-1], batches)
        (params, inner_opt_state), inner_losses = jax.lax.scan(
            inner_body, (state.params, state.inner_opt_state), (k_inner, inner_batches))
        hyper_batch = train_batch if batches is None else jax.tree.map(lambda a: a[-1], batches)
        ctx_in, ctx_out = ctx0.replace(key=k_hyper_in), ctx0.replace(key=k_hyper_out)
        outer = self.outer_loss(params, hparams, val_batch, ctx_out)
        hgrad = hypergradient(self.inner_loss, self.outer_loss, params, hparams,
                              method=self.hypergradient_method,
                              inner_args=(hyper_batch, ctx_in), outer_args=(val_batch, ctx_out),
                              **dict(self.hypergradient_options))
        updates, outer_opt_state = self.outer_opt.update(hgrad, state.outer_opt_state, hparams)
        new_hparams = optax.apply_updates(hparams, updates)

        code = _first_nonfinite([_all_finite(inner_losses), _all_finite(params),
                                 jnp.isfinite(outer), _all_finite(hgrad),
                                 _all_finite(new_hparams)])
        new_state = BilevelState(params=params, hparams=new_hparams,
                                 inner_opt_state=inner_opt_state,
                                 outer_opt_state=outer_opt_state,
                                 step=state.step + 1, key=state.key,
                                 coefficients=state.coefficients)
        new_state = _select(code == 0, new_state, state)
        metrics = {"step": state.step, "inner_loss": inner_losses[-1], "outer_loss": outer,
                   "hypergradient_norm": optax.tree.norm(hgrad),
                   "temperature": ctx0.temperature, "warmup": ctx0.warmup, "nonfinite": code}
        if self.structure_fn is not None:
            metrics["structure"] = self.structure_fn(new_state.params, new_state.hparams, ctx0)
        return new_state, metrics

    def _minibatches(self, state: BilevelState, train_batch):
        """inner_steps + 1 minibatches of `batch_size` rows (stacked; the last one is the
        hypergradient's), each drawn without replacement; None when full batch."""
        if self.batch_size is None:
            return None
        num = jax.tree.leaves(train_batch)[0].shape[0]
        if self.batch_size >= num:
            return None
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), _BATCH_STREAM)
        idx = jax.vmap(lambda k: jax.random.choice(k, num, (self.batch_size,), replace=False))(
            jax.random.split(key, self.inner_steps + 1))
        batches = jax.tree.map(lambda a: a[idx], train_batch)
        if self.data_mesh is not None:  # (steps, rows, ...): the rows over the devices
            rows = jax.sharding.NamedSharding(
                self.data_mesh, jax.sharding.PartitionSpec(None, self.data_mesh.axis_names[0]))
            batches = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, rows), batches)
        return batches

    def run(self, state: BilevelState, train_batch, val_batch, num_steps: int):
        """``num_steps`` outer steps in one ``lax.scan`` (full-batch data, or minibatches
        of the training batch when ``batch_size`` is set).

        Returns the final state and a history dict of arrays with a leading axis of
        length num_steps: the metrics of :meth:`step` plus "diverged" (True from the
        first non-finite step on; from then on the state stays frozen).
        """
        if not _is_int(num_steps) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")

        def body(carry, _):
            state, diverged = carry
            new_state, metrics = self.step(state, train_batch, val_batch)
            diverged = diverged | (metrics["nonfinite"] != 0)
            new_state = _select(diverged, state, new_state)
            return (new_state, diverged), dict(metrics, diverged=diverged)

        (state, _), history = jax.lax.scan(body, (state, jnp.asarray(False)), None,
                                           length=num_steps)
        return state, history

    def run_many(self, states: BilevelState, train_batch, val_batch, num_steps: int, *,
                 batching: str = "vmap"):
        """``run`` over a batch of states (restarts/seeds, e.g. from init_many).

        ``batching="vmap"`` runs them as one vectorised program (the default: what an
        accelerator wants); ``"map"`` one after the other in ``lax.map`` (same numbers, one
        program; faster on a CPU for conv supernets, whose vmapped kernels XLA:CPU batches
        poorly: docs/performance.md).
        """
        if batching not in ("vmap", "map"):
            raise ValueError(f"batching must be one of ('vmap', 'map'), got {batching!r}")
        one = lambda s: self.run(s, train_batch, val_batch, num_steps)  # noqa: E731
        return jax.vmap(one)(states) if batching == "vmap" else jax.lax.map(one, states)

    def fit(self, state: BilevelState, train_batch, val_batch, num_steps: int, *,
            run_fn: Callable | None = None):
        """Python driver: run (or a caller-jitted ``run_fn`` with run's signature), then
        raise DivergenceError if any step was non-finite; else return (state, history)."""
        run_fn = self.run if run_fn is None else run_fn
        state, history = run_fn(state, train_batch, val_batch, num_steps)
        check_divergence(state, history)
        return state, history


def check_divergence(state: BilevelState, history: Mapping[str, Any]) -> None:
    """Raise DivergenceError(step, quantity, state, history) if a run diverged.

    For a single run the error's history is cut to the steps before the bad one. For a
    batch of runs (leading batch axes before the step axis) it reports the first diverged
    run (``index``) and keeps the whole batched history and state.
    """
    diverged = np.asarray(history["diverged"])
    if not diverged.any():
        return
    if diverged.ndim == 1:
        first = int(np.argmax(diverged))
        cut = {k: jax.tree.map(lambda a: a[:first], v) for k, v in history.items()}
        raise DivergenceError(int(np.asarray(history["step"])[first]),
                              QUANTITIES[int(np.asarray(history["nonfinite"])[first])],
                              state, cut)
    runs = diverged.any(axis=-1)
    index = tuple(int(i) for i in np.argwhere(runs)[0])
    first = int(np.argmax(diverged[index]))
    raise DivergenceError(int(np.asarray(history["step"])[index][first]),
                          QUANTITIES[int(np.asarray(history["nonfinite"])[index][first])],
                          state, dict(history), index)
