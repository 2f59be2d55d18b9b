"""A VAE on digits whose latent dimensions are gated by relevance parameters (method.md section 5).

Data: scikit-learn digits, 8x8 pixels scaled to [0, 1] (raw values / 16), split by
`structsel.data.split_indices`. Model (flax linen MLPs, optax Adam):

    q(z | x) = N(mu(x), diag sigma(x)^2),    p(z) = N(0, I),    z in R^D
    p(x | z * gamma) = prod_pixels Bernoulli(x_i | sigmoid(decoder(z * gamma)_i))
    gamma = sigmoid(theta) in the cube (0, 1)^D     (structsel.structure.Sigmoid)

The Bernoulli likelihood is used on grey levels in [0, 1] (the usual cross-entropy
surrogate; it is not normalised for non-binary x, so ELBOs are comparable between models
here but not with published binary-MNIST numbers).

Relevance prior (the choice documented here). The gate multiplies the latent that enters
the decoder, so the first decoder layer sees gamma_d V_d z_d: with V ~ N(0, I / weight_decay)
this is the ARD prior of method.md section 4, the effective weights gamma_d V_d ~
N(0, gamma_d^2 / weight_decay), written in non-centred form. The likelihood depends only
on the product gamma_d V_d, so without a prior on gamma the gates are not identifiable;
an exponential prior p(gamma_d) ~ exp(-gate_prior * gamma_d) on the cube (an L1 penalty)
supplies the Occam pressure. Maximised per image:

    ELBO(x) - (weight_decay / 2m) ||V||^2 - gate_prior * sum_d gamma_d

A dimension the data do not need ends with gamma_d -> 0 and q(z_d | x) -> p(z_d) (its KL
term vanishes). Pruning keeps the k dimensions of largest gamma (the others are removed:
gate 0 and no KL term) and re-evaluates the validation ELBO for k = 0..D.
Seeds are trained together with `jax.vmap` in one jitted `lax.scan`.

`run_many` runs several runs that differ only in the `TRACED` fields (seed, learning rate,
weight_decay, gate_prior, kl_threshold) as the same programs vmapped over runs x seeds,
each run on its own split with its own keys and coefficients, and writes every run's own
record; `structsel sweep vae_ard` groups its runs that way (docs/sweep.md). `main` is
`run_many` of one run.

    python -m experiments.vae_ard [--smoke] [--workdir DIR] [--figures docs/figures]
"""
from __future__ import annotations

if not __package__:  # run as a file (python experiments/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from experiments import common
from structsel import data
from structsel.bilevel import traced_optimizer, with_hyperparams
from structsel.structure import Sigmoid, threshold_vertex

NAME = "vae_ard"
# Config fields that are traced (arguments of the compiled programs, vmapped over runs;
# kl_threshold is only used after them): runs that differ only in these share one program
# (`run_many`, `structsel sweep`).
TRACED = ("seed", "learning_rate", "weight_decay", "gate_prior", "kl_threshold")


@dataclasses.dataclass(frozen=True)
class Config:
    """VAE with relevance-gated latent dimensions on 8x8 digits."""

    seed: int = 0
    num_seeds: int = 3
    latent_dim: int = 16
    hidden: int = 128
    steps: int = 6000
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1.0      # precision of the N(0, I / weight_decay) prior on V
    gate_prior: float = 0.05       # rate of the exponential prior on gamma_d (nats per image)
    init_gate_logit: float = 2.0   # gamma_d = sigmoid(2) = 0.88 at the start
    eval_samples: int = 16         # Monte Carlo samples of z for the validation ELBO
    log_every: int = 200           # steps per jitted chunk (progress bar, metrics.jsonl)
    kl_threshold: float = 0.01     # nats: a latent with a larger mean KL counts as active

    @classmethod
    def smoke(cls) -> "Config":
        return cls(num_seeds=2, latent_dim=4, hidden=16, steps=40, batch_size=32,
                   eval_samples=2, log_every=20)

    def __post_init__(self):
        for name in ("num_seeds", "latent_dim", "hidden", "steps", "batch_size", "eval_samples",
                     "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.steps % self.log_every:
            raise ValueError(f"log_every must divide steps ({self.steps}), got {self.log_every}")
        for name in ("learning_rate", "weight_decay", "gate_prior", "kl_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0 and finite, got {value!r}")


class Penalty(NamedTuple):
    """The prior terms' coefficients of one run (traced, so a group of runs shares the
    program): weight_decay, the precision of V's prior, and gate_prior, the rate of the
    exponential prior on gamma_d."""

    weight_decay: Any
    gate_prior: Any

    @classmethod
    def of(cls, configs: Sequence[Config]) -> "Penalty":
        """The runs' coefficients as (R,) float32 arrays."""
        return cls(*(jnp.asarray([getattr(c, f) for c in configs], jnp.float32)
                     for f in cls._fields))


class Encoder(nn.Module):
    """x -> (mu, log sigma) of q(z | x)."""

    hidden: int
    latent_dim: int

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.hidden)(x))
        h = nn.relu(nn.Dense(self.hidden)(h))
        out = nn.Dense(2 * self.latent_dim)(h)
        return out[..., :self.latent_dim], out[..., self.latent_dim:]


class Decoder(nn.Module):
    """z * gamma -> Bernoulli logits of the 64 pixels; the first layer's kernel is V."""

    hidden: int
    num_pixels: int = 64

    @nn.compact
    def __call__(self, z):
        h = nn.relu(nn.Dense(self.hidden, name="gated")(z))
        h = nn.relu(nn.Dense(self.hidden)(h))
        return nn.Dense(self.num_pixels)(h)


class GatedVAE:
    """Pure functions of the gated VAE; params = {"enc", "dec", "theta"}."""

    relaxation = Sigmoid()

    def __init__(self, config: Config):
        self.config = config
        self.encoder = Encoder(config.hidden, config.latent_dim)
        self.decoder = Decoder(config.hidden)

    def init(self, key, x):
        k_enc, k_dec = jax.random.split(key)
        z = jnp.zeros((1, self.config.latent_dim))
        return {"enc": self.encoder.init(k_enc, x[:1])["params"],
                "dec": self.decoder.init(k_dec, z)["params"],
                "theta": jnp.full((self.config.latent_dim,), self.config.init_gate_logit,
                                  jnp.float32)}

    def gamma(self, params):
        """gamma = sigmoid(theta), the relevance of each latent dimension."""
        return self.relaxation.mean(params["theta"], 1.0)

    def elbo_terms(self, params, x, mask, *, key, num_samples: int = 1):
        """Per image: (E_q log p(x | z * gamma * mask), KL_d(q(z_d | x) || N(0, 1)) * mask)."""
        mu, log_sigma = self.encoder.apply({"params": params["enc"]}, x)
        q = distrax.Normal(mu, jnp.exp(log_sigma))
        z = q.sample(seed=key, sample_shape=(num_samples,))          # (S, n, D)
        logits = self.decoder.apply({"params": params["dec"]}, z * self.gamma(params) * mask)
        log_lik = -jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), -1).mean(0)
        kl = q.kl_divergence(distrax.Normal(jnp.zeros_like(mu), jnp.ones_like(mu))) * mask
        return log_lik, kl

    def loss(self, params, x, num_data, penalty: Penalty, *, key):
        """-(ELBO(x) - (wd / 2m) ||V||^2 - gate_prior sum_d gamma_d), mean over the batch."""
        ones = jnp.ones((self.config.latent_dim,))
        log_lik, kl = self.elbo_terms(params, x, ones, key=key)
        elbo = jnp.mean(log_lik - kl.sum(-1))
        decay = (0.5 * penalty.weight_decay * jnp.sum(params["dec"]["gated"]["kernel"] ** 2)
                 / num_data)
        return -elbo + decay + penalty.gate_prior * jnp.sum(self.gamma(params))

    def elbo(self, params, x, mask, *, key):
        """Mean validation ELBO (nats per image) of the model restricted to `mask`."""
        log_lik, kl = self.elbo_terms(params, x, mask, key=key,
                                      num_samples=self.config.eval_samples)
        return jnp.mean(log_lik - kl.sum(-1))


def load_pixels(seed: int):
    """Digits pixels / 16 in [0, 1], split train / validation / test with `seed`."""
    import sklearn.datasets

    x = sklearn.datasets.load_digits().data.astype(np.float32) / 16.0
    tr, va, te = data.split_indices(len(x), seed=seed)
    return x[tr], x[va], x[te]


def train_chunk(model: GatedVAE, opt, x_train, penalty: Penalty, carry, steps):
    """`len(steps)` Adam steps on random minibatches (lax.scan); fold_in(key, step) per step."""
    m, b = x_train.shape[0], model.config.batch_size

    def body(c, t):
        params, opt_state, key = c
        k_batch, k_z = jax.random.split(jax.random.fold_in(key, t))
        idx = jax.random.choice(k_batch, m, (b,), replace=False)
        loss, grads = jax.value_and_grad(model.loss)(params, x_train[idx], m, penalty, key=k_z)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), loss

    carry, losses = jax.lax.scan(body, carry, steps)
    return carry, losses.mean()


def prune_curve(model: GatedVAE, params, x, *, key):
    """Validation ELBO keeping the k most relevant dimensions, k = 0..D (one row per k)."""
    d = model.config.latent_dim
    order = jnp.argsort(-model.gamma(params))
    rank = jnp.empty((d,), jnp.int32).at[order].set(jnp.arange(d))
    masks = (rank[None, :] < jnp.arange(d + 1)[:, None]).astype(jnp.float32)   # (D+1, D)
    return jax.vmap(lambda mask: model.elbo(params, x, mask, key=key))(masks)


class Programs(NamedTuple):
    """The jitted programs of one static config, over runs (R) x seeds (S = num_seeds).

    Data carry a leading run axis (each run's split); `k_eval` is one key per run.
    """

    model: GatedVAE
    init: Callable      # (keys (R, S), x_train, learning_rate (R,)) -> (params, opt_state)
    chunk: Callable     # (carry, steps (T,), x_train, Penalty (R,)) -> (carry, loss (R, S))
    val_elbo: Callable  # (params, x_val, k_eval) -> validation ELBO (R, S)
    evaluate: Callable  # (params, x_val, x_test, k_eval) -> gamma, KL_d, prune curve, test ELBOs


@functools.lru_cache(maxsize=8)
def programs(config: Config) -> Programs:
    """Builds the programs of `config` (its static fields: `common.static_config`) once."""
    model = GatedVAE(config)
    opt = traced_optimizer(optax.adam, "learning_rate")  # the lr traced per run, in the state
    ones = jnp.ones((config.latent_dim,))

    def init(keys, x, learning_rate):
        def one(key):
            params = model.init(key, x)
            state = opt.init(params)
            return params, with_hyperparams(state, {"learning_rate": learning_rate})
        return jax.vmap(one)(keys)

    def chunk(carry, steps, x, penalty):
        return jax.vmap(lambda c: train_chunk(model, opt, x, penalty, c, steps))(carry)

    def val_elbo(params, x, key):
        return jax.vmap(lambda p: model.elbo(p, x, ones, key=key))(params)

    def evaluate(params, x_val, x_test, key):
        def one(p):
            _, kl = model.elbo_terms(p, x_val, ones, key=key, num_samples=config.eval_samples)
            return (model.gamma(p), kl.mean(0), prune_curve(model, p, x_val, key=key),
                    model.elbo(p, x_test, ones, key=key),
                    model.elbo(p, x_test, threshold_vertex(model.gamma(p)), key=key))
        return jax.vmap(one)(params)

    return Programs(model, jax.jit(jax.vmap(init)),
                    jax.jit(jax.vmap(chunk, in_axes=(0, None, 0, 0))),
                    jax.jit(jax.vmap(val_elbo)), jax.jit(jax.vmap(evaluate)))


def _splits(configs: Sequence[Config]):
    """Each run's pixels split (seeded by its seed), stacked: (train, val, test) with a
    leading run axis (the splits of digits have the same sizes for every seed)."""
    return common.stack_runs([load_pixels(c.seed) for c in configs])


def main(argv=None) -> dict:
    """One run: `run_many` of one command line."""
    return run_many([argv])[0]


def run_many(argvs: Sequence[Sequence[str] | None]) -> list[dict]:
    """Runs, given by `main`'s command lines, as ONE vmapped training program (and one
    program per evaluation); returns their summaries (each also in its workdir).

    The runs may differ only in the `TRACED` fields (else ValueError, before compiling).
    Each run keeps what `main` gives it alone: its own digits split, its keys
    (`split(key(seed), 3)`: init, training, evaluation; `num_seeds` seeds from each), its
    learning rate (in its optimiser state) and coefficients (`Penalty`), and its own
    record (config.json, metrics.jsonl, summary.json, figures). `wall_seconds` is the
    group's; `batched_runs` says how many runs shared the programs.
    """
    return common.run_many(Config, argvs, name=NAME, description=__doc__, traced=TRACED,
                           experiment=_experiment, report=_report)


def _experiment(configs: Sequence[Config], runs, args=None) -> list[dict]:
    """The training and evaluation of the group; per run, the arrays `_report` needs."""
    config, num = configs[0], len(configs)
    prog = programs(common.static_config(config, TRACED))
    x_train, x_val, x_test = _splits(configs)
    keys = jnp.stack([jax.random.split(jax.random.key(c.seed), 3) for c in configs])
    k_init, k_train, k_eval = keys[:, 0], keys[:, 1], keys[:, 2]
    per_seed = jax.vmap(lambda k: jax.random.split(k, config.num_seeds))
    params, opt_state = prog.init(per_seed(k_init), x_train,
                                  jnp.asarray([c.learning_rate for c in configs], jnp.float32))
    carry = (params, opt_state, per_seed(k_train))
    penalty = Penalty.of(configs)
    gamma_of = jax.vmap(jax.vmap(prog.model.gamma))
    for start in tqdm.trange(0, config.steps, config.log_every, desc="VAE training"):
        carry, loss = prog.chunk(carry, jnp.arange(start, start + config.log_every), x_train,
                                 penalty)
        params = carry[0]
        loss, val, gamma = (np.asarray(a) for a in (loss, prog.val_elbo(params, x_val, k_eval),
                                                    gamma_of(params)))
        for r, run in enumerate(runs):
            run.log_metrics(start + config.log_every, train_loss=loss[r], val_elbo=val[r],
                            gamma=gamma[r])
    outcome = (np.asarray(a) for a in prog.evaluate(params, x_val, x_test, k_eval))
    batched = dict(zip(("gamma", "kl", "curve", "test_full", "test_pruned"), outcome))
    return [{k: v[r] for k, v in batched.items()} for r in range(num)]


def _report(config: Config, out: dict, batched_runs: int):
    """summary.json and the figures of one run from its slice of the group's outcome."""
    gamma, kl, curve = out["gamma"], out["kl"], out["curve"]
    kept = (gamma > 0.5).sum(-1)
    active = (kl > config.kl_threshold).sum(-1)
    summary = {
        "gamma": gamma.tolist(),                      # (seeds, D)
        "kl_per_dim": kl.tolist(),                    # mean KL_d over validation images
        "kept_dims": kept.tolist(),                   # gamma_d > 0.5
        "active_dims": active.tolist(),               # KL_d > kl_threshold
        "val_elbo_by_kept_dims": curve.tolist(),      # (seeds, D + 1), k = 0..D
        "val_elbo_full": curve[:, -1].tolist(),
        "best_k": curve.argmax(-1).tolist(),
        "test_elbo_full": out["test_full"].tolist(),
        "test_elbo_pruned": out["test_pruned"].tolist(),   # gates thresholded at 0.5
        "batched_runs": batched_runs,
    }
    figures = {"vae_relevance.png": plot_relevance(gamma, kl, config),
               "vae_elbo.png": plot_elbo(curve, kept, config)}
    return summary, figures


def plot_relevance(gamma, kl, config):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    dims = np.arange(config.latent_dim)
    width = 0.8 / gamma.shape[0]
    for s in range(gamma.shape[0]):
        axes[0].bar(dims + s * width, gamma[s], width, label=f"seed {s}")
        axes[1].bar(dims + s * width, kl[s], width, label=f"seed {s}")
    axes[0].axhline(0.5, color="k", ls="--", lw=1, label="threshold 0.5")
    axes[0].set(xlabel="latent dimension d", ylabel="gamma_d = sigmoid(theta_d)", ylim=(0, 1),
                title="Relevance gate of each latent dimension")
    axes[1].set(xlabel="latent dimension d", ylabel="mean KL(q(z_d|x) || N(0,1)) [nats]",
                title="Information carried by each dimension (validation)")
    for ax in axes:
        ax.set_xticks(dims + 0.4 - width / 2, dims)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_elbo(curve, kept, config):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = np.arange(config.latent_dim + 1)
    for s in range(curve.shape[0]):
        ax.plot(ks, curve[s], marker="o", ms=3, label=f"seed {s} ({kept[s]} kept at gamma > 0.5)")
        ax.axvline(kept[s], color=ax.lines[-1].get_color(), ls=":", lw=1)
    ax.set(xlabel="number of latent dimensions kept (largest gamma first)",
           ylabel="validation ELBO [nats / image]",
           title="ELBO after pruning latent dimensions by relevance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
