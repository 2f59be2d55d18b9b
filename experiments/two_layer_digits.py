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

    python -m experiments.two_layer_digits [--smoke] [--workdir DIR] [--figures docs/figures]
        [--checkpoint-every N] [--resume]
"""
from __future__ import annotations

if not __package__:  # run as a file (python experiments/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from experiments.common import Timer, checkpointer, finish, parse
from structsel import basis, data
from structsel.bilevel import BilevelTrainer, check_divergence
from structsel.family import two_layer_net
from structsel.hypergradient import METHODS
from structsel.loop import run_chunks
from structsel.objective import Context, Objective, darts
from structsel.structure import Softmax, argmax_vertex

NAME = "two_layer_digits"


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
        for name in ("num_seeds", "hidden", "outer_steps", "inner_steps", "retrain_steps",
                     "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.outer_steps % self.log_every:
            raise ValueError(f"log_every must divide outer_steps ({self.outer_steps}), "
                             f"got {self.log_every}")
        every = self.checkpoint_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0 \
                or every % self.log_every:
            raise ValueError(f"checkpoint_every must be 0 or a multiple of log_every "
                             f"({self.log_every}), got {every!r}")


def accuracy(objective: Objective, weights, gamma, batch) -> jax.Array:
    """Share of correct argmax predictions of f(w, gamma, x)."""
    logits = objective.family.apply(weights, gamma, batch[0])
    return jnp.mean(jnp.argmax(logits, -1) == batch[1])


def cross_entropy(family, weights, gamma, batch) -> jax.Array:
    """Mean cross-entropy of softmax(f(w, gamma, x)) at a given gamma (no relaxation)."""
    logits = family.apply(weights, gamma, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()


def train_fixed(family, opt, steps: int, train, weights, gamma):
    """`steps` optimiser steps on the train cross-entropy with gamma fixed (lax.scan)."""
    def body(carry, _):
        w, s = carry
        g = jax.grad(cross_entropy, argnums=1)(family, w, gamma, train)
        u, s = opt.update(g, s, w)
        return (optax.apply_updates(w, u), s), None

    (weights, _), _ = jax.lax.scan(body, (weights, opt.init(weights)), length=steps)
    return weights


def main(argv=None) -> dict:
    import matplotlib
    matplotlib.use("Agg")

    config, run, args = parse(Config, argv, name=NAME, description=__doc__)
    with Timer() as timer:
        summary, figures = _experiment(config, run, args)
    return finish(run, args, summary, figures, timer.seconds)


def _experiment(config: Config, run, args=None):
    ds = data.load_sklearn("digits", seed=config.seed)
    train, val, test = ((jnp.asarray(x), jnp.asarray(y)) for x, y in
                        ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)))
    fam = two_layer_net(ds.num_features, config.hidden, ds.num_classes, config.activations)
    objective = Objective(fam, "categorical", relaxation=Softmax(), coefficients=darts(),
                          weights="point")
    inner_opt = optax.adamw(config.inner_lr, weight_decay=config.weight_decay)
    trainer = BilevelTrainer(objective.inner_loss, objective.outer_loss, inner_opt,
                             optax.adam(config.outer_lr), inner_steps=config.inner_steps,
                             hypergradient_method=config.method,
                             structure_fn=objective.structure)
    ctx = Context.create(jax.random.key(0))  # point weights, Softmax: no randomness used
    keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
    init = jax.jit(functools.partial(trainer.init_many, lambda k: objective.init(k, train[0])))
    state = init(keys)
    initial_weights = state.params          # the same initial weights for retraining

    run_chunk = jax.jit(functools.partial(trainer.run_many, num_steps=config.log_every))

    def log(step, chunk_state, hist):
        if chunk_state is not None:                 # None: a chunk restored from a checkpoint
            check_divergence(chunk_state, hist)
        for t in range(config.log_every):
            run.log_metrics(int(hist["step"][0, t]) + 1, gamma=hist["structure"][0][:, t],
                            val_loss=hist["outer_loss"][:, t], train_loss=hist["inner_loss"][:, t])
    ckpt = checkpointer(run, args, config, "search", state=state)
    state, hist, _ = run_chunks(run_chunk, state, num_steps=config.outer_steps,
                                chunk=config.log_every, args=(train, val), checkpointer=ckpt,
                                on_chunk=log, history_axis=1, desc="structure search",
                                check_finite=lambda st, _: {"state": st})
    gamma_path = np.asarray(hist["structure"][0])                 # (seeds, T, 2)

    # test accuracies: relaxed supernet, discretised supernet, models trained alone
    acc = jax.jit(jax.vmap(functools.partial(accuracy, objective), in_axes=(0, 0, None)))
    gamma = jax.vmap(lambda p, h: objective.structure(p, h, ctx))(state.params, state.hparams)
    selected = (jax.vmap(argmax_vertex)(gamma[0]), gamma[1])
    vertices = [fam.vertex_gamma((b, 0)) for b in range(2)]
    retrain = jax.jit(jax.vmap(functools.partial(train_fixed, fam, inner_opt,
                                                 config.retrain_steps, train)))
    branch_acc, branch_val = [], []
    for v in tqdm.tqdm(vertices, desc="single-branch models"):
        batched = jax.tree.map(lambda g: jnp.broadcast_to(g, (config.num_seeds,) + g.shape), v)
        w = retrain(initial_weights, batched)
        branch_acc.append(np.asarray(acc(w, batched, test)))
        branch_val.append(np.asarray(acc(w, batched, val)))
    choice = np.asarray(selected[0]).argmax(-1)                    # selected branch per seed
    branch_acc = np.stack(branch_acc)                              # (2, seeds)
    results = {
        "supernet (relaxed gamma)": np.asarray(acc(state.params, gamma, test)),
        "selected, supernet weights": np.asarray(acc(state.params, selected, test)),
        "selected, retrained": branch_acc[choice, np.arange(config.num_seeds)],
        f"{config.activations[0]} branch alone": branch_acc[0],
        f"{config.activations[1]} branch alone": branch_acc[1],
    }
    summary = {
        "final_gamma": np.asarray(gamma[0]).tolist(),
        "selected_branch": [config.activations[c] for c in choice],
        "final_val_loss": np.asarray(hist["outer_loss"][:, -1]).tolist(),
        "test_accuracy": {k: v.tolist() for k, v in results.items()},
        "test_accuracy_mean": {k: float(v.mean()) for k, v in results.items()},
        "val_accuracy_alone": {config.activations[b]: branch_val[b].tolist() for b in range(2)},
        "num_test": int(test[1].shape[0]),
    }
    figures = {"two_layer_gamma.png": plot_gamma(gamma_path, hist, config),
               "two_layer_accuracy.png": plot_accuracy(results, config)}
    return summary, figures


def plot_gamma(gamma_path, hist, config):
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
    val = np.asarray(hist["outer_loss"])
    for s in range(config.num_seeds):
        axes[1].plot(steps, val[s], color="tab:gray", alpha=0.7)
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
