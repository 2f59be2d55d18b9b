"""The generalised bilevel objective over a parametric family (method.md M6).

Inner problem (train data), outer problem (validation data):

    L = E_q log p(y | X, w, Gamma) - lambda_prior^L KL(q || p(. | h))
    Q = lambda_lik^Q E_q log p(y | X, w, Gamma) - lambda_prior^Q KL(q || p(. | h))
        - sum_{p' in P} lambda_struct[p'] KL(p(Gamma | h) || p') + log p(h)

with KL(q || p(. | h)) = KL(q(w, Gamma) || p(w, Gamma | h)) decomposed as in
`structsel.variational`. Conventions of this module:

- the losses are per datum: `inner_loss = -L / m`, `outer_loss = -Q / m_Q`, where m
  (`num_data`, default the batch size) and m_Q (`num_data_outer`) are the sizes of the
  train and validation sets; the expected log-likelihood is the batch mean over r
  Monte Carlo samples of (w, Gamma), i.e. (1/m) * (m/n) sum_batch, an unbiased estimate
  of E_q log p / m for a batch of n drawn from m. Hence lambda_prior^L = c is the ELBO
  for an effective sample size m / c, scaled by c: L_c = c (E log p / c - KL).
- the structure term is KL(p(Gamma | h) || p'): it acts on the prior (the form the
  thesis' theorems use). Sign: lambda_struct > 0 attracts p(Gamma | h) to p', < 0 repels
  it (the enumeration demo of the thesis uses -1 to push the structure away from
  vertex-concentrated references). References are tuples over edges of distributions
  (`structsel.distributions`); their KL is closed form or Monte Carlo with r samples.
- Gaussian likelihood: noise std `noise_std` fixed, or learned as `hparams["log_noise"]`
  (an outer variable, also used by the inner loss) when `noise_std=None`. Categorical:
  softmax over the model outputs (logits), integer labels.
- one temperature lambda_temp (`ctx.temperature`) for q(Gamma) and p(Gamma | h); the
  warm-up prior N(0, A^{-1}) replaces N(0, gamma^2 A^{-1}) while `ctx.warmup` is True.
- randomness: the same `ctx.key` gives the same samples in both losses (common random
  numbers); callers fold in a step index or use different keys per level.
- traced coefficients: `ctx.coefficients` (a `Coefficients` of arrays, or None for the
  objective's own static `coefficients`) overrides the lambdas per call, so runs with
  different lambdas share one compiled program and vmap (`coefficient_batch`). Only the
  number of lambda_struct (one per reference) is static.

Variables: the weight model is a strategy value (`GaussianWeights`, `PointWeights`; the
strings "gaussian" / "point" name their defaults). Bayesian (`GaussianWeights()`): params =
{"w": GaussianPosterior, "struct": per-edge theta_q}, hparams = {"log_alpha": ARD log
precisions like the weights, "struct": per-edge prior parameters (stochastic relaxations
only), "log_noise" (learned noise only)}. With `GaussianWeights(structure="outer")` the
parameters theta_q of q(Gamma) move from params to hparams["q_struct"]: q(Gamma) is then
trained by the outer objective (validation likelihood plus its lambda-weighted KL), as
DARTS trains its architecture logits, instead of by the training-set ELBO. DARTS
(`PointWeights()`, coefficients `darts()`, relaxation `Softmax()`): params = point
weights, hparams = per-edge architecture logits alpha; -L, -Q are the train / validation
negative log-likelihoods (cross-entropy) at gamma = relaxation(alpha).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar, NamedTuple

import distrax
import flax.struct
import jax
import jax.numpy as jnp
import optax

from structsel.distributions import concrete_or_none, kl_divergence
from structsel.family import Family
from structsel.structure import GumbelSoftmax, Relaxation, mean_structure, sample_structure
from structsel.variational import (init_posterior, inv_gamma_log_prior,
                                   log_structure, sample_weights, structure_kl, weight_kl)

PyTree = Any

__all__ = ["Coefficients", "max_likelihood", "elbo", "single_level", "darts", "Context",
           "Terms", "Objective", "LIKELIHOODS", "WEIGHTS", "GaussianWeights", "PointWeights",
           "coefficient_batch"]


class Coefficients(NamedTuple):
    """(lambda_lik^Q, lambda_prior^Q, lambda_prior^L, lambda_struct per reference p').

    Python floats (a static setting of an `Objective`) or arrays (traced per run through
    `Context.coefficients`; see `coefficient_batch`).
    """

    lik_q: Any = 1.0
    prior_q: Any = 1.0
    prior_l: Any = 1.0
    struct: Any = ()


def max_likelihood() -> Coefficients:
    """lambda_prior^L = 0: maximum-likelihood inner problem; the outer fits h to q by the evidence."""
    return Coefficients(1.0, 1.0, 0.0)


def elbo() -> Coefficients:
    """All coefficients 1, lambda_struct = 0: the ELBO (evidence lower bound) at both levels."""
    return Coefficients(1.0, 1.0, 1.0)


def single_level(c: float = 1.0) -> Coefficients:
    """lambda_prior^Q / lambda_lik^Q = lambda_prior^L = c: one joint problem (ELBO at m / c).

    c is the KL weight of a tempered (cold-posterior) ELBO: E log p - c KL = c (E log p / c
    - KL), the ELBO of the data set counted 1/c times. At c != 1 it is no longer a bound on
    the evidence of this data set.
    """
    return Coefficients(1.0, float(c), float(c))


def darts() -> Coefficients:
    """DARTS: likelihood only at both levels (use with weights="point" and Softmax())."""
    return Coefficients(1.0, 0.0, 0.0)


def _check_float(name: str, value: Any, *, minimum: float | None = None,
                 positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite Python number, got {value!r}")
    if (minimum is not None and value < minimum) or (positive and value <= 0):
        bound = "> 0" if positive else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return float(value)


def _check_coefficients(c: Any, name: str = "coefficients") -> Coefficients:
    """Validated Coefficients of Python floats (finite; lik_q, prior_q, prior_l >= 0;
    lambda_struct may be negative: attract or repel)."""
    if not isinstance(c, tuple) or len(c) != 4:
        raise ValueError(f"{name} must be a Coefficients(lik_q, prior_q, prior_l, struct), "
                         f"got {c!r}")
    return Coefficients(*(_check_float(f"{name}.{n}", v, minimum=0.0) for n, v in
                          zip(Coefficients._fields[:3], c[:3])),
                        tuple(_check_float(f"{name}.struct", v) for v in c[3]))


def coefficient_batch(rows, dtype=None) -> Coefficients:
    """Stacks per-run `Coefficients` of Python floats into one `Coefficients` of arrays
    with a leading run axis (each field (R,), struct (R, P)), for `Context.coefficients`
    under `jax.vmap` (e.g. `BilevelTrainer.init_many(..., coefficients=...)`).

    Every row is validated (finite numbers, the same number P of lambda_struct).
    """
    rows = [_check_coefficients(r, f"coefficients[{i}]") for i, r in enumerate(rows)]
    if not rows:
        raise ValueError("coefficient_batch needs at least one Coefficients row")
    if len({len(r.struct) for r in rows}) != 1:
        raise ValueError("every Coefficients row must have the same number of lambda_struct, "
                         f"got {[len(r.struct) for r in rows]}")
    dtype = dtype or jnp.result_type(float)
    col = lambda i: jnp.asarray([r[i] for r in rows], dtype)  # noqa: E731
    struct = jnp.asarray([r.struct for r in rows], dtype).reshape(len(rows), len(rows[0].struct))
    return Coefficients(col(0), col(1), col(2), struct)


@flax.struct.dataclass
class Context:
    """Per-step inputs: PRNG key, temperature lambda_temp, warm-up flag (prior N(0, A^{-1})),
    and optionally traced coefficients (None: the objective's static ones)."""

    key: jax.Array
    temperature: jax.Array
    warmup: jax.Array
    coefficients: Any = None

    @classmethod
    def create(cls, key: jax.Array, temperature: float = 1.0, warmup: bool = False,
               coefficients: Coefficients | None = None) -> "Context":
        """A context with the temperature and the flag as arrays (traceable, jit-friendly)."""
        if coefficients is not None:
            coefficients = Coefficients(*(jnp.asarray(v, jnp.result_type(float))
                                          for v in coefficients))
        return cls(key, jnp.asarray(temperature, jnp.result_type(float)), jnp.asarray(warmup),
                   coefficients)


class Terms(NamedTuple):
    """Monte Carlo pieces of L: per-datum expected log-likelihood and the two KL parts."""

    log_lik: jax.Array        # (1/n) sum_batch E_q log p(y_i | x_i, w, Gamma)
    kl_weights: jax.Array     # E_{q_Gamma} KL(q_w || p(w | Gamma, h))
    kl_structure: jax.Array   # KL(q_Gamma || p_Gamma)


# ------------------------------------------------------------------------ likelihoods
@dataclasses.dataclass(frozen=True)
class _Gaussian:
    """log N(y | f(x), s^2) summed over output dimensions; s fixed or exp(hparams["log_noise"])."""

    noise_std: float | None

    def init(self, dtype) -> dict:
        return {"log_noise": jnp.zeros((), dtype)} if self.noise_std is None else {}

    def log_prob(self, out, y, hparams):
        if jnp.size(y) != out.size:
            raise ValueError(f"target y of shape {jnp.shape(y)} does not match the model output "
                             f"of shape {out.shape}: the readout must give one output per "
                             "target value")
        y = jnp.reshape(y, out.shape)
        std = jnp.exp(hparams["log_noise"]) if self.noise_std is None else self.noise_std
        lp = distrax.Normal(out, std).log_prob(y)
        return jnp.sum(jnp.reshape(lp, (lp.shape[0], -1)), axis=-1)


@dataclasses.dataclass(frozen=True)
class _Categorical:
    """log softmax(f(x))_y for integer labels y."""

    def init(self, dtype) -> dict:
        return {}

    def log_prob(self, out, y, hparams):
        if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
            raise ValueError(f"labels y must be integer class indices 0..C-1, got dtype "
                             f"{jnp.result_type(y)}")
        if jnp.shape(y) != out.shape[:-1]:
            raise ValueError(f"labels y of shape {jnp.shape(y)} do not match the model output "
                             f"of shape {out.shape} (one label per row)")
        concrete = concrete_or_none(y)
        if concrete is not None and concrete[0].size and not (
                0 <= concrete[0].min() and concrete[0].max() < out.shape[-1]):
            raise ValueError(f"labels y must lie in 0..{out.shape[-1] - 1} (the readout has "
                             f"{out.shape[-1]} outputs), got labels {concrete[0].min()}.."
                             f"{concrete[0].max()}")
        return -optax.softmax_cross_entropy_with_integer_labels(out, y)


_LIKELIHOODS = {"gaussian": lambda noise_std: _Gaussian(noise_std),
                "categorical": lambda noise_std: _Categorical()}
LIKELIHOODS = tuple(_LIKELIHOODS)


# ---------------------------------------------------------------------- weight models
STRUCTURE_LEVELS = ("inner", "outer")


@dataclasses.dataclass(frozen=True)
class GaussianWeights:
    """Variational q(w) = N(mu, diag sigma^2) with the ARD prior p(w | Gamma, h) (M4).

    `structure`: where the parameters theta_q of q(Gamma) live: "inner" (params["struct"],
    trained by the training-set ELBO L, the thesis' form) or "outer" (hparams["q_struct"],
    trained by Q on validation data, as DARTS trains its architecture logits).
    """

    structure: str = "inner"
    name: ClassVar[str] = "gaussian"
    bayesian: ClassVar[bool] = True

    def __post_init__(self):
        if self.structure not in STRUCTURE_LEVELS:
            raise ValueError(f"GaussianWeights structure must be one of {STRUCTURE_LEVELS}, "
                             f"got {self.structure!r}")

    def check(self, obj: "Objective") -> None:
        pass

    def init(self, obj: "Objective", weights, thetas, dtype):
        params = {"w": init_posterior(weights, obj.init_log_sigma)}
        hparams = {"log_alpha": jax.tree.map(lambda w: jnp.full_like(w, obj.init_log_alpha),
                                             weights)}
        if self.structure == "inner":
            params["struct"] = thetas
        else:
            hparams["q_struct"] = thetas
        return params, hparams

    def thetas(self, params, hparams):
        """Per-edge parameters of q(Gamma)."""
        return params["struct"] if self.structure == "inner" else hparams["q_struct"]

    def sample(self, params, *, key):
        return sample_weights(params["w"], key=key)

    def mean(self, params):
        return params["w"].mu

    def kl(self, obj: "Objective", params, hparams, gamma, ctx: Context) -> jax.Array:
        """KL(q(w) || p(w | Gamma, h)) at one sample of Gamma."""
        return weight_kl(params["w"], hparams["log_alpha"], log_structure(gamma),
                         warmup=ctx.warmup, log_std_floor=obj.log_std_floor)

    def structure_kl(self, obj: "Objective", params, hparams, ctx: Context, key) -> jax.Array:
        return structure_kl(obj.relaxation, self.thetas(params, hparams),
                            hparams.get("struct", ()), ctx.temperature, key=key,
                            num_samples=obj.num_samples)

    def log_hyperprior(self, obj: "Objective", hparams) -> jax.Array:
        return inv_gamma_log_prior(hparams["log_alpha"], *obj.inv_gamma)


@dataclasses.dataclass(frozen=True)
class PointWeights:
    """Point weights w (DARTS): no q(w), no priors; the architecture logits alpha are h."""

    name: ClassVar[str] = "point"
    bayesian: ClassVar[bool] = False

    def check(self, obj: "Objective") -> None:
        c = obj.coefficients
        if (c.prior_q or c.prior_l or obj.references or any(obj.inv_gamma)
                or obj.noise_std is None):
            raise ValueError("weights='point' has no priors: it needs coefficients with "
                             "prior_q = prior_l = 0 (e.g. darts()), no references, "
                             "inv_gamma=(0, 0) and a fixed noise_std")

    def init(self, obj, weights, thetas, dtype):
        return weights, thetas

    def thetas(self, params, hparams):
        return hparams

    def sample(self, params, *, key):
        return params

    def mean(self, params):
        return params

    def kl(self, obj, params, hparams, gamma, ctx) -> jax.Array:
        return jnp.zeros(())

    def structure_kl(self, obj, params, hparams, ctx, key) -> jax.Array:
        return jnp.zeros(())

    def log_hyperprior(self, obj, hparams) -> jax.Array:
        return jnp.zeros(())


_WEIGHTS = {"gaussian": GaussianWeights(), "point": PointWeights()}
WEIGHTS = tuple(_WEIGHTS)


def _check_count(name: str, value: Any, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, "
                         f"got {value!r}")


# -------------------------------------------------------------------------- objective
@dataclasses.dataclass(frozen=True)
class Objective:
    """Inner loss -L / m and outer loss -Q / m_Q of method.md M6 over `family`.

    Args:
      family: the supernet (static).
      likelihood: "gaussian" (regression) or "categorical" (softmax classification).
      relaxation: structure relaxation strategy (`structsel.structure`); q(Gamma) and
        p(Gamma | h) are its distributions.
      coefficients: `Coefficients` (see the presets); `ctx.coefficients`, when given,
        overrides them per call (traced).
      references: the set P, a tuple of references, each a tuple over edges of
        distributions over gamma; one lambda_struct per reference.
      num_samples: r, Monte Carlo samples of (w, Gamma) (and of MC structure KLs).
      num_data, num_data_outer: m and m_Q (None: the batch is the whole data set).
      log_std_floor: floor of the prior log std (`structsel.variational`); None: none.
      inv_gamma: (lambda_1, lambda_2) of the inv-gamma regulariser on A^{-1}; (0, 0): none.
      noise_std: Gaussian noise std, or None to learn it in h.
      weights: the weight model, `GaussianWeights(...)` (variational q(w)) or
        `PointWeights()` (DARTS point weights); "gaussian" / "point" name their defaults.
      init_log_sigma, init_log_alpha: initial log sigma of q(w) and log A.
    """

    family: Family
    likelihood: str
    relaxation: Relaxation = GumbelSoftmax()
    coefficients: Coefficients = Coefficients()
    references: tuple = ()
    num_samples: int = 1
    num_data: int | None = None
    log_std_floor: float | None = -4.0
    inv_gamma: tuple[float, float] = (0.0, 0.0)
    noise_std: float | None = 1.0
    weights: Any = "gaussian"
    num_data_outer: int | None = None
    init_log_sigma: float = -3.0
    init_log_alpha: float = 0.0

    def __post_init__(self):
        setf = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if not isinstance(self.family, Family):
            raise ValueError(f"family must be a structsel.family.Family, got {self.family!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if isinstance(self.weights, str):
            if self.weights not in _WEIGHTS:
                raise ValueError(f"weights must be one of {WEIGHTS} or a weight model "
                                 f"(GaussianWeights, PointWeights), got {self.weights!r}")
            setf("weights", _WEIGHTS[self.weights])
        elif not isinstance(self.weights, (GaussianWeights, PointWeights)):
            raise ValueError(f"weights must be one of {WEIGHTS} or a weight model "
                             f"(GaussianWeights, PointWeights), got {self.weights!r}")
        if not isinstance(self.relaxation, Relaxation):
            raise ValueError(f"relaxation must be a structsel.structure relaxation (Softmax, "
                             f"Sigmoid, GumbelSoftmax, Dirichlet, LogitNormal), got "
                             f"{self.relaxation!r}")
        c = _check_coefficients(self.coefficients)
        setf("coefficients", c)
        setf("references", tuple(tuple(r) for r in self.references))
        if len(c.struct) != len(self.references):
            raise ValueError(f"coefficients.struct must have one lambda_struct per reference "
                             f"({len(self.references)}), got {len(c.struct)}")
        for j, ref in enumerate(self.references):
            if len(ref) != self.family.num_edges:
                raise ValueError(f"references[{j}] must have one distribution per edge "
                                 f"({self.family.num_edges}), got {len(ref)}")
        if self.references and not self.relaxation.stochastic:
            raise ValueError("references need a stochastic relaxation (GumbelSoftmax, Dirichlet, "
                             f"LogitNormal): {self.relaxation!r} has no prior over Gamma")
        _check_count("num_samples", self.num_samples, allow_none=False)
        _check_count("num_data", self.num_data, allow_none=True)
        _check_count("num_data_outer", self.num_data_outer, allow_none=True)
        if self.log_std_floor is not None:
            setf("log_std_floor", _check_float("log_std_floor", self.log_std_floor))
        if len(tuple(self.inv_gamma)) != 2:
            raise ValueError(f"inv_gamma must be a pair (lambda_1, lambda_2), got {self.inv_gamma!r}")
        setf("inv_gamma", tuple(_check_float("inv_gamma", v, minimum=0.0) for v in self.inv_gamma))
        if self.noise_std is not None:
            setf("noise_std", _check_float("noise_std", self.noise_std, positive=True))
        setf("init_log_sigma", _check_float("init_log_sigma", self.init_log_sigma))
        setf("init_log_alpha", _check_float("init_log_alpha", self.init_log_alpha))
        self.weights.check(self)

    # ---------------------------------------------------------------- helpers
    @property
    def _lik(self):
        return _LIKELIHOODS[self.likelihood](self.noise_std)

    @staticmethod
    def _unpack(batch):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("batch must be a pair (x, y)")
        return batch

    def _scale(self, x, num_data):
        return float(num_data) if num_data is not None else float(jnp.shape(x)[0])

    def lambdas(self, ctx: Context) -> Coefficients:
        """The coefficients in force: `ctx.coefficients` if given (traced), else the static ones."""
        c = ctx.coefficients
        if c is None:
            return self.coefficients
        if jnp.shape(c.struct)[-1:] != (len(self.references),):
            raise ValueError(f"ctx.coefficients.struct must have one lambda_struct per reference "
                             f"({len(self.references)}), got shape {jnp.shape(c.struct)}")
        return c

    # ---------------------------------------------------------------- public API
    def init(self, key: jax.Array, x) -> tuple[PyTree, PyTree]:
        """(params, hparams): q(w) centred on the family init, uniform structures, log A const.

        Every variable takes the floating dtype of `x` (float64 inputs give float64 params
        even though flax initialises in float32).
        """
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.result_type(float)
        weights = jax.tree.map(lambda w: jnp.asarray(w, dtype), self.family.init(key, x))
        thetas = tuple(self.relaxation.init(k, dtype) for k in self.family.num_ops)
        params, hparams = self.weights.init(self, weights, thetas, dtype)
        if self.weights.bayesian:
            if self.relaxation.stochastic:
                hparams["struct"] = tuple(self.relaxation.init(k, dtype)
                                          for k in self.family.num_ops)
            hparams.update(self._lik.init(dtype))
        return params, hparams

    def terms(self, params, hparams, batch, ctx: Context) -> Terms:
        """Monte Carlo estimates (r samples, common to both levels) of the pieces of L.

        Key schedule: k_samples, k_struct = split(ctx.key); sample s uses
        k_w, k_g = split(split(k_samples, r)[s]) for w and Gamma; k_struct feeds a
        Monte Carlo KL(q_Gamma || p_Gamma) when there is no closed form.
        """
        x, y = self._unpack(batch)
        k_samples, k_struct = jax.random.split(ctx.key)
        t, wm = ctx.temperature, self.weights
        thetas = wm.thetas(params, hparams)

        def one(k):
            k_w, k_g = jax.random.split(k)
            gamma = sample_structure(self.relaxation, thetas, t, key=k_g)
            w = wm.sample(params, key=k_w)
            log_lik = jnp.mean(self._lik.log_prob(self.family.apply(w, gamma, x), y, hparams))
            return log_lik, wm.kl(self, params, hparams, gamma, ctx)

        log_lik, kl_w = jax.vmap(one)(jax.random.split(k_samples, self.num_samples))
        kl_s = wm.structure_kl(self, params, hparams, ctx, k_struct)
        return Terms(jnp.mean(log_lik), jnp.mean(kl_w), kl_s)

    def structure_penalty(self, hparams, ctx: Context) -> jax.Array:
        """sum_{p' in P} lambda_struct[p'] sum_e KL(p(gamma^e | h) || p'^e) (0 if P is empty)."""
        if not self.references:
            return jnp.zeros(())
        lambdas = jnp.asarray(self.lambdas(ctx).struct)
        keys = jax.random.split(jax.random.fold_in(ctx.key, 1),
                                len(self.references) * self.family.num_edges)
        total, i = jnp.zeros(()), 0
        for j, ref in enumerate(self.references):
            for theta, p_ref in zip(hparams["struct"], ref):
                prior = self.relaxation.distribution(theta, ctx.temperature)
                total = total + lambdas[..., j] * kl_divergence(prior, p_ref, key=keys[i],
                                                                num_samples=self.num_samples)
                i += 1
        return total

    def log_hyperprior(self, hparams) -> jax.Array:
        """log p(h): the inv-gamma(lambda_1, lambda_2) regulariser on A^{-1} (0 for point weights)."""
        return self.weights.log_hyperprior(self, hparams)

    def inner_loss(self, params, hparams, batch, ctx: Context) -> jax.Array:
        """-L / m = -(1/n) sum_batch E_q log p(y|x,w,Gamma) + lambda_prior^L KL(q || p(.|h)) / m."""
        x, _ = self._unpack(batch)
        tm = self.terms(params, hparams, batch, ctx)
        kl = tm.kl_weights + tm.kl_structure
        return -tm.log_lik + self.lambdas(ctx).prior_l * kl / self._scale(x, self.num_data)

    def outer_loss(self, params, hparams, batch, ctx: Context) -> jax.Array:
        """-Q / m_Q = -lambda_lik^Q E log p + (lambda_prior^Q KL + sum lambda_struct KL_p' - log p(h)) / m_Q."""
        x, _ = self._unpack(batch)
        c = self.lambdas(ctx)
        tm = self.terms(params, hparams, batch, ctx)
        extra = (c.prior_q * (tm.kl_weights + tm.kl_structure)
                 + self.structure_penalty(hparams, ctx) - self.log_hyperprior(hparams))
        return -c.lik_q * tm.log_lik + extra / self._scale(x, self.num_data_outer)

    def structure(self, params, hparams, ctx: Context) -> tuple[jax.Array, ...]:
        """Mean gamma per edge of q(Gamma) (Bayesian) or relaxation(alpha) (point), for logging."""
        return mean_structure(self.relaxation, self.weights.thetas(params, hparams),
                              ctx.temperature)

    def mean_weights(self, params) -> PyTree:
        """The posterior mean mu (Bayesian) or the point weights."""
        return self.weights.mean(params)

    def predict(self, params, hparams, x, ctx: Context) -> jax.Array:
        """f(x) at the mean weights and the mean structure (logits or regression outputs)."""
        return self.family.apply(self.mean_weights(params),
                                 self.structure(params, hparams, ctx), x)
