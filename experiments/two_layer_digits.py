"""Structure selection in the seminar's two-layer network on scikit-learn digits (method.md 1).

The family (`structsel.family.two_layer_net`) is

    f_1(x) = gamma_0 a_0(W_0^T x) + gamma_1 a_1(W_1^T x),    f(x) = W_2^T f_1(x)  (logits)

with two hidden branches of the same width that differ in their activation (default
tanh vs identity: a one-hidden-layer network vs a linear classifier, so the choice is
between a nonlinear and a linear model). gamma = softmax(alpha) (DARTS relaxation) is
selected by the bilevel problem with point weights: inner = cross-entropy on the train
split (AdamW), outer = cross-entropy on the validation split (Adam on alpha, hypergradient
by `method`, DARTS second order by default), via `structsel.bilevel.BilevelTrainer`.

After the search the structure is discretised (argmax vertex of the simplex) and compared
on the test split with both single-branch models trained alone (gamma fixed at a vertex,
same number of weight updates, same seeds): the selected model retrained from scratch,
the selected model with the supernet's weights, and the relaxed supernet itself.
Seeds are batched with `jax.vmap` in one jitted program (search and retraining).

`run_many` runs several runs that differ only in the `TRACED` fields (seed, learning
rates, weight decay) as the same two programs vmapped over runs x restarts, each run on
its own digits split with its own keys and hyperparameters, and writes every run's own
record; `structsel sweep two_layer_digits` groups its runs that way (docs/sweep.md).
`main` is `run_many` of one run.

    python -m experiments.two_layer_digits [--smoke] [--workdir DIR] [--figures docs/figures]
        [--checkpoint-every N] [--resume]
"""
from __future__ import annotations

if not __package__:  # run as a file (python experiments/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from experiments import common
from experiments.common import check_fields, checkpointer
from structsel import basis, data
from structsel.bilevel import (BilevelTrainer, check_divergence, traced_optimizer,
                               with_hyperparams)
from structsel.family import two_layer_net
from structsel.hypergradient import METHODS
from structsel.loop import run_chunks
from structsel.objective import Context, Objective, darts
from structsel.structure import Softmax, argmax_vertex

NAME = "two_layer_digits"
# Config fields that are traced (arguments of the compiled programs, vmapped over runs):
# runs that differ only in these share one program (`run_many`, `structsel sweep`).
TRACED = ("seed", "inner_lr", "outer_lr", "weight_decay")


@dataclasses.dataclass(frozen=True)
class Config:
    """Two-layer net on digits: select one of two hidden branches."""

    seed: int = 0
    num_seeds: int = 5
    hidden: int = 32
    activations: tuple[str, str] = ("tanh", "identity")
    method: str = "darts"
    outer_steps: int = 300
    inner_steps: int = 5
    inner_lr: float = 3e-3
    outer_lr: float = 3e-2
    weight_decay: float = 1e-4       # AdamW decoupled decay of the weights
    retrain_steps: int = 1500        # weight updates of every model trained alone
    log_every: int = 25              # outer steps per jitted chunk (progress bar)
    checkpoint_every: int = 0        # save every N outer steps in WORKDIR/checkpoints; 0: never

    @classmethod
    def smoke(cls) -> "Config":
        return cls(num_seeds=2, hidden=4, outer_steps=4, inner_steps=2, retrain_steps=10,
                   log_every=2)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if len(self.activations) != 2 or any(a not in basis.ACTIVATIONS for a in self.activations):
            raise ValueError(f"activations must be 2 names from {sorted(basis.ACTIVATIONS)}, "
                             f"got {self.activations!r}")
        check_fields(self, ints=("num_seeds", "hidden", "outer_steps", "inner_steps",
                                 "retrain_steps", "log_every"),
                     positive=("inner_lr", "outer_lr"), nonnegative=("weight_decay",))
        if self.outer_steps % self.log_every:
            raise ValueError(f"log_every must divide outer_steps ({self.outer_steps}), "
                             f"got {self.log_every}")
        every = self.checkpoint_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0 \
                or every % self.log_every:
            raise ValueError(f"checkpoint_every must be 0 or a multiple of log_every "
                             f"({self.log_every}), got {every!r}")


def checkpoint_unit(config: Config) -> int:
    """Outer steps per jitted chunk: `checkpoint_every` is a multiple of it (structsel
    sweep checkpoints this experiment's runs every chunk by default)."""
    return config.log_every


def accuracy(objective: Objective, weights, gamma, batch) -> jax.Array:
    """Share of correct argmax predictions of f(w, gamma, x)."""
    logits = objective.family.apply(weights, gamma, batch[0])
    return jnp.mean(jnp.argmax(logits, -1) == batch[1])


def cross_entropy(family, weights, gamma, batch) -> jax.Array:
    """Mean cross-entropy of softmax(f(w, gamma, x)) at a given gamma (no relaxation)."""
    logits = family.apply(weights, gamma, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()


def train_fixed(family, opt, steps: int, train, weights, gamma, hyper: dict):
    """`steps` optimiser steps on the train cross-entropy with gamma fixed (lax.scan);
    `opt` is a `traced_optimizer`, `hyper` its values for this run."""
    def body(carry, _):
        w, s = carry
        g = jax.grad(cross_entropy, argnums=1)(family, w, gamma, train)
        u, s = opt.update(g, s, w)
        return (optax.apply_updates(w, u), s), None

    state = with_hyperparams(opt.init(weights), hyper)
    (weights, _), _ = jax.lax.scan(body, (weights, state), length=steps)
    return weights


def _runs_x_restarts(fn, num_args: int, shared: Sequence[int] = ()):
    """jit(vmap over runs (every argument) of vmap over restarts (all but `shared`))."""
    inner = tuple(None if i in shared else 0 for i in range(num_args))
    return jax.jit(jax.vmap(jax.vmap(fn, in_axes=inner)))


class Programs(NamedTuple):
    """The jitted programs of one static config, over runs (R) x restarts (S = num_seeds).

    `hyper` is {"inner": {"learning_rate", "weight_decay"}, "outer": {"learning_rate"}}
    of (R,) arrays (`_hyper`); data batches carry a leading run axis (each run's split).
    """

    family: object
    init: Callable          # (keys (R, S), x_train, hyper) -> BilevelState (R, S)
    search_chunk: Callable  # (states, train, val) -> (states, history (R, S, log_every))
    structure: Callable     # (params, hparams) -> gamma (R, S, ...)
    retrain: Callable       # (weights, gamma, train, hyper) -> weights after retrain_steps
    accuracy: Callable      # (weights, gamma, batch) -> (R, S)


@functools.lru_cache(maxsize=8)
def programs(config: Config, num_features: int, num_classes: int) -> Programs:
    """Builds the programs of `config` (its static fields: `common.static_config`) once."""
    fam = two_layer_net(num_features, config.hidden, num_classes, config.activations)
    objective = Objective(fam, "categorical", relaxation=Softmax(), coefficients=darts(),
                          weights="point")
    # learning rates and weight decay are traced per run, in the optimiser states
    inner_opt = traced_optimizer(optax.adamw, "learning_rate", "weight_decay")
    outer_opt = traced_optimizer(optax.adam, "learning_rate")
    trainer = BilevelTrainer(objective.inner_loss, objective.outer_loss, inner_opt, outer_opt,
                             inner_steps=config.inner_steps,
                             hypergradient_method=config.method,
                             structure_fn=objective.structure)
    ctx = Context.create(jax.random.key(0))  # point weights, Softmax: no randomness used

    def init(keys, x, hyper):
        states = trainer.init_many(lambda k: objective.init(k, x), keys)
        spread = lambda h: jax.tree.map(lambda v: jnp.full(keys.shape, v), h)  # noqa: E731
        return states.replace(
            inner_opt_state=with_hyperparams(states.inner_opt_state, spread(hyper["inner"])),
            outer_opt_state=with_hyperparams(states.outer_opt_state, spread(hyper["outer"])))

    def retrain(weights, gamma, train, hyper):
        return train_fixed(fam, inner_opt, config.retrain_steps, train, weights, gamma,
                           hyper["inner"])

    return Programs(
        family=fam,
        init=jax.jit(jax.vmap(init)),
        search_chunk=jax.jit(jax.vmap(functools.partial(trainer.run_many,
                                                        num_steps=config.log_every))),
        structure=_runs_x_restarts(lambda p, h: objective.structure(p, h, ctx), 2),
        retrain=_runs_x_restarts(retrain, 4, shared=(2, 3)),
        accuracy=_runs_x_restarts(functools.partial(accuracy, objective), 3, shared=(2,)))


def _hyper(configs: Sequence[Config]) -> dict:
    """The traced hyperparameters of the runs, (R,) float32 arrays."""
    col = lambda name: jnp.asarray([getattr(c, name) for c in configs], jnp.float32)  # noqa: E731
    return {"inner": {"learning_rate": col("inner_lr"), "weight_decay": col("weight_decay")},
            "outer": {"learning_rate": col("outer_lr")}}


def _splits(configs: Sequence[Config]):
    """Each run's digits split (seeded by its seed), stacked: (train, val, test) batches
    with a leading run axis (the splits of digits have the same sizes for every seed)."""
    sets = [data.load_sklearn("digits", seed=c.seed) for c in configs]
    xtr, ytr, xva, yva, xte, yte = common.stack_runs(
        [(d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test) for d in sets])
    return sets[0], ((xtr, ytr), (xva, yva), (xte, yte))


def main(argv=None) -> dict:
    """One run: `run_many` of one command line."""
    return run_many([argv])[0]


def run_many(argvs: Sequence[Sequence[str] | None]) -> list[dict]:
    """Runs, given by `main`'s command lines, as ONE vmapped search program and ONE
    vmapped retraining program; returns their summaries (each also in its workdir).

    The runs may differ only in the `TRACED` fields (else ValueError, before compiling).
    Each run keeps what `main` gives it alone: its own digits split and restart keys
    (`split(key(seed), num_seeds)`), learning rates and weight decay (in its optimiser
    states), and its own record (`common.run_many`: config.json with seed, versions and
    git revision, metrics.jsonl, summary.json, figures). `wall_seconds` is the group's;
    `batched_runs` says how many runs shared the programs. With `checkpoint_every`, the
    group's search state is checkpointed as one pytree in the FIRST run's workdir (its
    fingerprint lists every run's traced values) and `--resume` of the first command line
    continues it.
    """
    return common.run_many(Config, argvs, name=NAME, description=__doc__, traced=TRACED,
                           experiment=_experiment, report=_report)


def _experiment(configs, runs, args=None) -> list[dict]:
    """The search and retraining of the group; per run, the arrays `_report` needs."""
    config, num = configs[0], len(configs)
    ds, (train, val, test) = _splits(configs)
    prog = programs(common.static_config(config, TRACED), ds.num_features, ds.num_classes)
    hyper = _hyper(configs)
    keys = jnp.stack([jax.random.split(jax.random.key(c.seed), c.num_seeds) for c in configs])
    state = prog.init(keys, train[0], hyper)
    initial_weights = state.params          # the same initial weights for retraining

    def log(step, chunk_state, hist):
        if chunk_state is not None:                 # None: a chunk restored from a checkpoint
            check_divergence(chunk_state, hist)
        for r, run in enumerate(runs):
            for t in range(config.log_every):
                run.log_metrics(int(hist["step"][r, 0, t]) + 1,
                                gamma=hist["structure"][0][r, :, t],
                                val_loss=hist["outer_loss"][r, :, t],
                                train_loss=hist["inner_loss"][r, :, t])
    ckpt = checkpointer(runs[0], args, config, "search", state=state,
                        group={str(r): {k: getattr(c, k) for k in TRACED}
                               for r, c in enumerate(configs)})
    state, hist, _ = run_chunks(prog.search_chunk, state, num_steps=config.outer_steps,
                                chunk=config.log_every, args=(train, val), checkpointer=ckpt,
                                on_chunk=log, history_axis=2, desc="structure search",
                                check_finite=lambda st, _: {"state": st})

    # test accuracies: relaxed supernet, discretised supernet, models trained alone
    gamma = prog.structure(state.params, state.hparams)
    selected = (argmax_vertex(gamma[0]), gamma[1])
    branch_acc, branch_val = [], []
    for b in tqdm.tqdm(range(2), desc="single-branch models"):
        vertex = jax.tree.map(lambda g: jnp.broadcast_to(g, (num, config.num_seeds) + g.shape),
                              prog.family.vertex_gamma((b, 0)))
        w = prog.retrain(initial_weights, vertex, train, hyper)
        branch_acc.append(np.asarray(prog.accuracy(w, vertex, test)))
        branch_val.append(np.asarray(prog.accuracy(w, vertex, val)))
    choice = np.asarray(selected[0]).argmax(-1)                    # (runs, seeds)
    branch_acc, branch_val = np.stack(branch_acc, 1), np.stack(branch_val, 1)  # (runs, 2, seeds)
    batched = {
        "gamma": np.asarray(gamma[0]), "choice": choice,
        "gamma_path": np.asarray(hist["structure"][0]), "val_loss": np.asarray(hist["outer_loss"]),
        "branch_val": branch_val,
        "supernet": np.asarray(prog.accuracy(state.params, gamma, test)),
        "supernet_selected": np.asarray(prog.accuracy(state.params, selected, test)),
        "retrained": np.take_along_axis(branch_acc, choice[:, None], 1)[:, 0],
        "branch_acc": branch_acc, "num_test": np.full(num, test[1].shape[1]),
    }
    return [{k: v[r] for k, v in batched.items()} for r in range(num)]


def _report(config: Config, out: dict, batched_runs: int):
    """summary.json and the figures of one run from its slice of the group's outcome."""
    names = config.activations
    results = {
        "supernet (relaxed gamma)": out["supernet"],
        "selected, supernet weights": out["supernet_selected"],
        "selected, retrained": out["retrained"],
        f"{names[0]} branch alone": out["branch_acc"][0],
        f"{names[1]} branch alone": out["branch_acc"][1],
    }
    summary = {
        "final_gamma": out["gamma"].tolist(),
        "selected_branch": [names[c] for c in out["choice"]],
        "final_val_loss": out["val_loss"][:, -1].tolist(),
        "test_accuracy": {k: v.tolist() for k, v in results.items()},
        "test_accuracy_mean": {k: float(v.mean()) for k, v in results.items()},
        "val_accuracy_alone": {names[b]: out["branch_val"][b].tolist() for b in range(2)},
        "num_test": int(out["num_test"]),
        "batched_runs": batched_runs,
    }
    figures = {"two_layer_gamma.png": plot_gamma(out["gamma_path"], out["val_loss"], config),
               "two_layer_accuracy.png": plot_accuracy(results, config)}
    return summary, figures


def plot_gamma(gamma_path, val_loss, config):
    import matplotlib.pyplot as plt

    steps = np.arange(1, config.outer_steps + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colors = ("tab:blue", "tab:orange")
    for b in range(2):
        for s in range(config.num_seeds):
            axes[0].plot(steps, gamma_path[s, :, b], color=colors[b], alpha=0.7,
                         label=f"gamma_{b} ({config.activations[b]} branch)" if s == 0 else None)
    axes[0].set(xlabel="outer step", ylabel="gamma = softmax(alpha)", ylim=(0, 1),
                title=f"Structure over training ({config.num_seeds} seeds, {config.method})")
    axes[0].legend()
    for s in range(config.num_seeds):
        axes[1].plot(steps, val_loss[s], color="tab:gray", alpha=0.7)
    axes[1].set(xlabel="outer step", ylabel="validation cross-entropy",
                title="Outer objective -Q (validation)")
    fig.tight_layout()
    return fig


def plot_accuracy(results, config):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(results)
    means = [100 * results[k].mean() for k in names]
    stds = [100 * results[k].std() for k in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=4,
           color=["tab:gray", "tab:purple", "tab:green", "tab:blue", "tab:orange"])
    for i, k in enumerate(names):
        ax.scatter(np.full(len(results[k]), i), 100 * results[k], color="k", s=10, zorder=3)
    lo = min(100 * min(v.min() for v in results.values()) - 2, 100)
    ax.set_ylim(max(lo, 0), 100)
    ax.set_xticks(range(len(names)), names, rotation=15, ha="right")
    ax.set(ylabel="test accuracy [%]",
           title=f"Digits test accuracy ({config.num_seeds} seeds: mean +- std, dots = seeds)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
