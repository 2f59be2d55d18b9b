"""Hypergradient methods compared on one structure-selection problem (method.md section 7).

Problem: a DARTS-style supernet on scikit-learn digits (64 standardised pixels, 10 classes)
with one searchable edge of three dense branches of width `hidden` (tanh, relu, identity),
summed and read out by a linear layer:

    f(x) = W_2^T sum_l gamma_l g_l(x),   gamma = softmax(alpha)      (DARTS relaxation)
    inner  -L / m = CE_train(w, gamma) + (weight_decay / 2) ||w||^2
    outer  -Q / m_Q = CE_val(w, gamma)

The weight decay makes H = grad_w^2 L (close to) positive definite, so the implicit
hypergradient dQ/dh = grad_h Q - grad_h grad_w L^T H^{-1} grad_w Q is well defined; the
problem is small (about a thousand weights) so that the dense "exact" solve is affordable.

Two outputs:
1. one bilevel trajectory per method (greedy = DARTS 1st order, DARTS 2nd order, CG,
   Neumann, unrolled), all from the same pretrained weights: validation loss and gamma
   over the outer steps (`hypergradients_trajectory.png`);
2. the relative error ||g_method - g_exact|| / ||g_exact|| of every method at checkpoints
   of the reference (CG) trajectory, all methods evaluated at the *same* states
   (`hypergradients_error.png`, table in summary.json).

The Neumann series and the unrolled optimiser use the step 1 / lambda_max(H), lambda_max
estimated by power iteration at the pretrained weights (the series needs lr < 2 / lambda_max).
Seeds (initialisations) are batched with `jax.vmap` inside each jitted program.

    python -m experiments.hypergradients [--smoke] [--workdir DIR] [--figures docs/figures]
        [--checkpoint-every N] [--resume]
"""
from __future__ import annotations

if not __package__:  # run as a file (python experiments/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.flatten_util import ravel_pytree

from experiments.common import Timer, checkpointer, finish, parse
from structsel import basis, data
from structsel.bilevel import BilevelTrainer, check_divergence
from structsel.family import Edge, Family
from structsel.hypergradient import Darts, Exact, Greedy, Implicit, Unrolled, hvp
from structsel.loop import run_chunks
from structsel.objective import Context, Objective, darts
from structsel.structure import Softmax

NAME = "hypergradients"
METHOD_NAMES = ("greedy", "darts", "cg", "neumann", "unrolled")


@dataclasses.dataclass(frozen=True)
class Config:
    """Hypergradient comparison on a small DARTS supernet over digits."""

    seed: int = 0
    num_seeds: int = 2
    hidden: int = 6
    activations: tuple[str, ...] = ("tanh", "relu", "identity")
    train_subset: int = 0             # 0: the whole training split
    weight_decay: float = 0.05
    pretrain_steps: int = 1000
    inner_steps: int = 10
    outer_steps: int = 100
    num_checkpoints: int = 4          # error checkpoints at outer steps 0, T/n, ..., T
    inner_lr: float = 0.01
    outer_lr: float = 0.05
    solver_iterations: int = 100      # maxiter of CG and of the Neumann series
    solver_tol: float = 1e-10
    unrolled_steps: int = 20
    power_iterations: int = 50
    methods: tuple[str, ...] = METHOD_NAMES
    reference: str = "cg"
    float64: bool = True
    checkpoint_every: int = 0         # save every N outer steps in WORKDIR/checkpoints; 0: never

    @classmethod
    def smoke(cls) -> "Config":
        # two methods only: every method costs one compilation of the whole trainer
        return cls(num_seeds=1, hidden=2, train_subset=200, pretrain_steps=200, inner_steps=2,
                   outer_steps=4, num_checkpoints=2, unrolled_steps=3, power_iterations=10,
                   methods=("greedy", "cg"))

    def __post_init__(self):
        bad = sorted(set(self.methods) - set(METHOD_NAMES))
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHOD_NAMES}, got {self.methods}")
        if self.reference not in self.methods:
            raise ValueError(f"reference must be one of methods {self.methods}, got {self.reference!r}")
        if self.num_checkpoints < 1 or self.outer_steps % self.num_checkpoints:
            raise ValueError(f"num_checkpoints must be >= 1 and divide outer_steps "
                             f"({self.outer_steps}), got {self.num_checkpoints}")
        every, chunk = self.checkpoint_every, self.outer_steps // self.num_checkpoints
        if isinstance(every, bool) or not isinstance(every, int) or every < 0 \
                or every % chunk:
            raise ValueError(f"checkpoint_every must be 0 or a multiple of outer_steps / "
                             f"num_checkpoints ({chunk}), got {every!r}")
        for act in self.activations:
            if act not in basis.ACTIVATIONS:
                raise ValueError(f"activations must be in {sorted(basis.ACTIVATIONS)}, got {act!r}")


class Problem:
    """The supernet, the loss pair and the data of the comparison (all static)."""

    def __init__(self, config: Config, dtype):
        ds = data.load_sklearn("digits", seed=config.seed)
        n = config.train_subset or len(ds.y_train)
        self.train = (jnp.asarray(ds.x_train[:n], dtype), jnp.asarray(ds.y_train[:n]))
        self.val = (jnp.asarray(ds.x_val, dtype), jnp.asarray(ds.y_val))
        ops = tuple(basis.dense(config.hidden, a) for a in config.activations)
        self.family = Family(3, (Edge(0, 1, ops), Edge(1, 2, (basis.linear(ds.num_classes),))),
                             "sum")
        self.objective = Objective(self.family, "categorical", relaxation=Softmax(),
                                   coefficients=darts(), weights="point")
        self.weight_decay = config.weight_decay
        self.dtype = dtype
        # point weights and a deterministic relaxation: the context's key is never used
        self.ctx = Context.create(jax.random.key(0))

    def init(self, key):
        """Point weights w (cast to the working dtype) and alpha = 0 (uniform gamma)."""
        params, hparams = self.objective.init(key, self.train[0])
        return jax.tree.map(lambda a: a.astype(self.dtype), (params, hparams))

    def inner_loss(self, params, hparams, batch, ctx):
        """-L / m = CE_train + (weight_decay / 2) ||w||^2."""
        decay = 0.5 * self.weight_decay * optax.tree.norm(params, squared=True)
        return self.objective.inner_loss(params, hparams, batch, ctx) + decay

    def outer_loss(self, params, hparams, batch, ctx):
        """-Q / m_Q = CE_val."""
        return self.objective.outer_loss(params, hparams, batch, ctx)

    def hypergradient(self, strategy, params, hparams):
        """d(-Q)/d alpha by `strategy`, flattened."""
        g = strategy(self.inner_loss, self.outer_loss, params, hparams,
                     (self.train, self.ctx), (self.val, self.ctx))
        return ravel_pytree(g)[0]

    def accuracy(self, params, hparams, batch):
        logits = self.objective.predict(params, hparams, batch[0], self.ctx)
        return jnp.mean(jnp.argmax(logits, -1) == batch[1])


def checkpoint_unit(config: Config) -> int:
    """Outer steps per jitted chunk: `checkpoint_every` is a multiple of it (structsel
    sweep checkpoints this experiment's runs every chunk by default)."""
    return config.outer_steps // config.num_checkpoints


def pretrain(problem: Problem, opt, steps: int, params, hparams):
    """`steps` optax steps on the inner loss at alpha = 0 (lax.scan)."""
    def body(carry, _):
        p, s = carry
        g = jax.grad(problem.inner_loss)(p, hparams, problem.train, problem.ctx)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), length=steps)
    return params


def lambda_max(problem: Problem, params, hparams, iterations: int):
    """Largest eigenvalue of H = grad_w^2 L by power iteration on Hessian-vector products."""
    def body(_, v):
        hv = hvp(problem.inner_loss, params, v, hparams, problem.train, problem.ctx)
        return optax.tree.scale(1.0 / optax.tree.norm(hv), hv)

    v0 = jax.tree.map(jnp.ones_like, params)
    v = jax.lax.fori_loop(0, iterations, body, optax.tree.scale(1.0 / optax.tree.norm(v0), v0))
    hv = hvp(problem.inner_loss, params, v, hparams, problem.train, problem.ctx)
    return optax.tree.vdot(v, hv)


def strategies(config: Config, lr: float) -> dict:
    """The hypergradient strategy object of every method (lr: Neumann / unrolled step)."""
    return {
        "greedy": Greedy(),
        "darts": Darts(xi=config.inner_lr),  # DARTS: xi = the inner learning rate
        "cg": Implicit("cg", maxiter=config.solver_iterations, tol=config.solver_tol),
        "neumann": Implicit("neumann", maxiter=config.solver_iterations, tol=config.solver_tol,
                            lr=lr),
        "unrolled": Unrolled(steps=config.unrolled_steps, lr=lr),
        "exact": Exact(),
    }


def plot_trajectories(histories, config, num_params, steps):
    import matplotlib.pyplot as plt

    k = len(config.activations)
    fig, axes = plt.subplots(1, k + 1, figsize=(4.2 * (k + 1), 3.6))
    colors = dict(zip(METHOD_NAMES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for name, hist in histories.items():
        loss = np.asarray(hist["outer_loss"])                       # (seeds, T)
        gamma = np.asarray(hist["structure"][0])                    # (seeds, T, K)
        for ax, values in zip(axes, [loss] + [gamma[..., l] for l in range(k)]):
            ax.plot(steps, values.mean(0), color=colors[name], label=name)
            if values.shape[0] > 1:
                ax.fill_between(steps, values.min(0), values.max(0), color=colors[name], alpha=0.2)
    axes[0].set(title="validation loss", xlabel="outer step", ylabel="cross-entropy (val)")
    for l, ax in enumerate(axes[1:]):
        ax.set(title=f"gamma of branch '{config.activations[l]}'", xlabel="outer step",
               ylabel=f"gamma_{l}", ylim=(0, 1))
    axes[0].legend(title="hypergradient")
    fig.suptitle(f"Bilevel trajectories on digits ({num_params} weights, mean over "
                 f"{config.num_seeds} seed(s), band = range)")
    fig.tight_layout()
    return fig


def plot_errors(errors, checkpoint_steps, config):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = dict(zip(METHOD_NAMES, (("o", "-"), ("x", "--"), ("s", "-"), ("^", "-"),
                                     ("v", "-"))))
    for name, err in errors.items():
        marker, line = styles[name]
        ax.plot(checkpoint_steps, np.maximum(err, 1e-16), marker=marker, ls=line, label=name)
    ax.set_yscale("log")
    ax.set(xlabel=f"outer step of the {config.reference} trajectory",
           ylabel="||g - g_exact|| / ||g_exact||",
           title=f"Hypergradient error against the dense IFT solve\n(same states for all "
                 f"methods, mean over {config.num_seeds} seed(s))")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _chunk(trainer: BilevelTrainer, steps: int, record_start: bool, state, train, val):
    """`steps` outer steps of every seed; with `record_start` the history also holds the
    chunk's starting (params, hparams) under "start" (one entry per chunk)."""
    new_state, hist = trainer.run_many(state, train, val, steps)
    if record_start:
        hist["start"] = jax.tree.map(lambda a: a[:, None], (state.params, state.hparams))
    return new_state, hist


def main(argv=None) -> dict:
    import matplotlib
    matplotlib.use("Agg")

    config, run, args = parse(Config, argv, name=NAME, description=__doc__)
    with Timer() as timer, jax.enable_x64(config.float64):
        summary = _experiment(config, run, args)
    figures = summary.pop("_figures")
    return finish(run, args, summary, figures, timer.seconds)


def _experiment(config: Config, run, args=None) -> dict:
    dtype = jnp.float64 if config.float64 else jnp.float32
    problem = Problem(config, dtype)
    keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
    init_keys, run_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    params, hparams = jax.vmap(problem.init)(init_keys)
    num_params = int(ravel_pytree(jax.tree.map(lambda a: a[0], params))[0].size)
    params = jax.jit(jax.vmap(functools.partial(pretrain, problem, optax.adam(config.inner_lr),
                                                config.pretrain_steps)))(params, hparams)
    first = jax.tree.map(lambda a: a[0], (params, hparams))
    lam = float(jax.jit(functools.partial(lambda_max, problem,
                                          iterations=config.power_iterations))(*first))
    lr = 1.0 / lam
    strats = strategies(config, lr)

    chunk = config.outer_steps // config.num_checkpoints
    histories, checkpoints, final = {}, [], {}
    acc = jax.jit(jax.vmap(problem.accuracy, in_axes=(0, 0, None)))
    bar = tqdm.tqdm(total=len(config.methods) * config.num_checkpoints, desc="trajectories")
    for name in config.methods:
        trainer = BilevelTrainer(problem.inner_loss, problem.outer_loss,
                                 optax.adam(config.inner_lr), optax.adam(config.outer_lr),
                                 inner_steps=config.inner_steps, hypergradient_method=strats[name],
                                 structure_fn=problem.objective.structure)
        run_chunk = jax.jit(functools.partial(_chunk, trainer, chunk,
                                              name == config.reference))
        state = jax.vmap(lambda p, h, k: trainer.init(p, h, key=k))(params, hparams, run_keys)

        def report(step, chunk_state, hist):
            if chunk_state is not None:             # None: a chunk restored from a checkpoint
                check_divergence(chunk_state, hist)
            bar.update()
        ckpt = checkpointer(run, args, config, f"trajectory_{name}", state=state)
        state, hist, _ = run_chunks(run_chunk, state, num_steps=config.outer_steps,
                                    chunk=chunk, args=(problem.train, problem.val),
                                    checkpointer=ckpt, on_chunk=report, history_axis=1,
                                    progress=False, check_finite=lambda st, _: {"state": st})
        if name == config.reference:                # (params, hparams) at 0, chunk, ..., T
            start = hist.pop("start")
            checkpoints.extend(jax.tree.map(lambda a: a[:, c], start)
                               for c in range(config.num_checkpoints))
            checkpoints.append((state.params, state.hparams))
        histories[name] = hist
        gamma = np.asarray(hist["structure"][0])
        for t in range(config.outer_steps):
            run.log_metrics(t, method=name, val_loss=np.asarray(hist["outer_loss"])[:, t].mean(),
                            gamma=gamma[:, t].mean(0))
        final[name] = {
            "val_loss": float(np.asarray(hist["outer_loss"])[:, -1].mean()),
            "val_accuracy": float(np.mean(acc(state.params, state.hparams, problem.val))),
            "gamma": gamma[:, -1].mean(0).tolist(),
            "selected": [config.activations[int(i)] for i in gamma[:, -1].argmax(-1)],
        }
    bar.close()

    # errors against the dense solve, all methods at the same checkpoint states
    errors = {name: [] for name in config.methods}
    cosines = {name: [] for name in config.methods}
    seconds = {}
    evaluate = {name: jax.jit(jax.vmap(functools.partial(problem.hypergradient, strats[name])))
                for name in ("exact",) + tuple(config.methods)}
    for p, h in tqdm.tqdm(checkpoints, desc="errors vs exact"):
        g_exact = np.asarray(evaluate["exact"](p, h))
        for name in config.methods:
            g = np.asarray(evaluate[name](p, h))
            err = np.linalg.norm(g - g_exact, axis=-1) / np.linalg.norm(g_exact, axis=-1)
            cos = np.sum(g * g_exact, -1) / (np.linalg.norm(g, axis=-1)
                                             * np.linalg.norm(g_exact, axis=-1))
            errors[name].append(float(err.mean()))
            cosines[name].append(float(cos.mean()))
    for name in ("exact",) + tuple(config.methods):  # per call, batch of seeds, compiled
        p, h = checkpoints[-1]
        start = time.perf_counter()
        jax.block_until_ready(evaluate[name](p, h))
        seconds[name] = time.perf_counter() - start
    checkpoint_steps = [c * chunk for c in range(config.num_checkpoints + 1)]
    for i, step in enumerate(checkpoint_steps):
        run.log_metrics(step, checkpoint=True,
                        relative_error={n: errors[n][i] for n in config.methods})

    figures = {
        "hypergradients_trajectory.png": plot_trajectories(
            histories, config, num_params, np.arange(1, config.outer_steps + 1)),
        "hypergradients_error.png": plot_errors(errors, checkpoint_steps, config),
    }
    summary = {
        "num_params": num_params,
        "num_train": int(problem.train[1].shape[0]),
        "lambda_max": lam,
        "neumann_unrolled_lr": lr,
        "checkpoint_steps": checkpoint_steps,
        "relative_error": errors,
        "cosine_to_exact": cosines,
        "seconds_per_hypergradient": seconds,
        "final": final,
        "_figures": figures,
    }
    return summary


if __name__ == "__main__":
    main()
