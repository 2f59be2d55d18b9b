"""Search methods of `structsel search`: a registry name -> strategy object (method.md M6-M8).

Gradient methods train the supernet of a space with the bilevel trainer
(`structsel.bilevel.BilevelTrainer`: inner steps in `lax.scan`, restarts vmapped, the
whole run one compiled program, called in a few segments for the progress bar) on the
generalised objective (`structsel.objective.Objective`), then discretise by argmax per
edge of the mean structure gamma:

| name        | weights        | relaxation     | coefficients            | hypergradient        |
|-------------|----------------|----------------|-------------------------|----------------------|
| bayes       | q(w) Gaussian  | Gumbel-Softmax | (1, c, c), c on a path  | greedy; both levels  |
| bayes_inner | q(w) Gaussian  | Gumbel-Softmax | (1, c, c), c on a path  | greedy; q(Gamma) in θ|
| bayes_outer | q(w) Gaussian  | Gumbel-Softmax | (1, c, c), c on a path  | greedy; q(Gamma) in h|
| darts1      | point          | Softmax        | likelihood only (DARTS) | greedy (1st order)   |
| darts2      | point          | Softmax        | likelihood only         | darts (2nd order)    |
| gdas        | point          | Gumbel-Softmax | likelihood only         | greedy, t: 10 -> 0.1 |
| drnas       | point          | Dirichlet      | likelihood only         | greedy               |
| logitnormal | point          | logit-normal   | likelihood only         | greedy               |

`bayes` runs a complexity path: the tempered ELBO with KL weight c (coefficients
(1, c, c): the ELBO at an effective sample size m / c, method.md M6) for every c of
`path`, all runs (c values x restarts) in one compiled program, the coefficients traced per
run; the driver retrains every distinct selection and keeps the best on validation
(`structsel.search.selection`: one-standard-error rule, ties to fewer parameters).
In `bayes_outer` the parameters of q(Gamma) are outer variables (h), trained along the
outer objective -Q on validation data as DARTS trains its logits; `bayes_inner` keeps them
in theta (the thesis' form: q(Gamma) chosen by the training-set ELBO); `bayes` runs both
and lets the validation data choose among their proposals.

Black-box methods call the `Evaluator` (structures trained from scratch) or any object
with its `reward(choices, key=)`, such as `enumeration.TableLookup`:
random search and REINFORCE from the baselines, Optuna TPE (optional extra), and AdaNet,
which grows its own ensemble of MLPs instead of searching the cell (its ensemble is
reported as the selected structure). `num_evaluations` of a gradient method is its
compute in from-scratch trainings: T (S + c) / train_steps gradient evaluations, c the
hypergradient's cost in gradients.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from structsel import bilevel, loop, objective, structure
from structsel.search import features
from structsel.search.random_search import random_search


class Outcome(NamedTuple):
    """What a method returns to the driver (numpy arrays, one row per restart)."""

    choices: np.ndarray | None        # (R, E) selected structures (None: not a cell search)
    gamma: np.ndarray | None          # (R, E, K) final relaxed structure of the cell
    gamma_history: np.ndarray | None  # (R, T, E, K) gamma after every outer step
    num_evaluations: int              # model evaluations (or equivalent compute)
    history: list                     # per-step scalars for metrics.jsonl
    relaxation: str | None
    extra: dict


RELAXATIONS = {
    "softmax": structure.Softmax(),
    "gumbel_softmax": structure.GumbelSoftmax(),
    "dirichlet": structure.Dirichlet(),
    "logitnormal": structure.LogitNormal(),
}

# Cost of one hypergradient in gradient evaluations (greedy: one outer gradient; darts:
# the virtual step, the outer gradient at w' and two gradients for the finite difference).
_HYPERGRADIENT_COST = {"greedy": 1.0, "darts": 4.0}

_SCHEDULES = {"constant": lambda t0, t1, n: bilevel.constant(t0),
              "exponential": lambda t0, t1, n: bilevel.exponential(t0, t1, n)}


def _stack_cell(space, gammas) -> np.ndarray:
    """Searchable edges of a full Gamma (tuple over edges, leading axes ...) -> (..., E, K)."""
    return np.stack([np.asarray(g) for g in space.restrict(gammas)], axis=-2)


@dataclasses.dataclass(frozen=True)
class GradientSearch:
    """A supernet search: objective preset x relaxation x hypergradient x temperature."""

    relaxation: str
    weights: str = "point"
    coefficients: Callable[[], objective.Coefficients] = objective.darts
    hypergradient: str = "greedy"
    hypergradient_options: tuple = ()
    schedule: tuple = ("constant", 1.0, 1.0)
    num_segments: int = 10
    log_std_floor: float = -4.0      # floor of the prior log std (Bayesian weights only)
    warmup_fraction: float = 0.0     # outer steps with the gamma-free prior N(0, A^-1)
    # DARTS' derivation rule: the argmax ignores the zero op (a likelihood-only supernet
    # uses gamma_zero as a free output scale, so zero would otherwise win spuriously).
    exclude_zero: bool = False
    learn_noise: bool = False        # regression: noise std in h (evidence), else 1
    # KL weights c of the complexity path: every run uses the preset's coefficients with
    # lambda_prior^Q and lambda_prior^L multiplied by c (Bayesian weights only); () = no path.
    path: tuple = ()
    # where q(Gamma) is trained: "inner" (training-set ELBO), "outer" (validation Q), or
    # "both" (the path run at each level, the proposals of both retrained and compared)
    structure_level: str = "inner"

    def check(self, *, relaxation: str | None, space: str) -> None:
        """Validates a --relaxation override (before anything is built)."""
        if relaxation is not None and relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {list(RELAXATIONS)}, got {relaxation!r}")

    def objective(self, problem, relaxation: str | None = None) -> objective.Objective:
        """The generalised objective over the space's supernet (M6)."""
        likelihood = "categorical" if problem.task.name == "classification" else "gaussian"
        relax = RELAXATIONS[relaxation or self.relaxation]
        extra = {"log_std_floor": self.log_std_floor} if self.weights == "gaussian" else {}
        if likelihood == "gaussian" and self.learn_noise:
            extra["noise_std"] = None
        if self.structure_level not in ("inner", "outer"):
            raise ValueError(f"structure_level must be 'inner' or 'outer' for one objective, "
                             f"got {self.structure_level!r}")
        weights = (objective.GaussianWeights(structure=self.structure_level)
                   if self.weights == "gaussian" else objective.PointWeights())
        if _search_batch(problem) is not None:  # minibatches: the prior terms scale by m
            extra["num_data"] = problem.num_train
        return objective.Objective(problem.space.family, likelihood, relax,
                                   self.coefficients(), weights=weights, **extra)

    def path_coefficients(self) -> list[objective.Coefficients]:
        """The coefficients of each point of the path (c scales both prior weights)."""
        base = self.coefficients()
        return [base._replace(prior_q=c * base.prior_q, prior_l=c * base.prior_l)
                for c in self.path]

    def trainer(self, problem, obj: objective.Objective) -> bilevel.BilevelTrainer:
        """Adam on theta and on h; the temperature schedule over the outer steps."""
        b = problem.budget
        kind, t0, t1 = self.schedule
        options = dict(self.hypergradient_options)
        if self.hypergradient == "darts":
            options.setdefault("xi", b.learning_rate)
        return bilevel.BilevelTrainer(
            obj.inner_loss, obj.outer_loss, optax.adam(b.learning_rate), optax.adam(b.search_lr),
            inner_steps=b.inner_steps, hypergradient_method=self.hypergradient,
            hypergradient_options=tuple(sorted(options.items())),
            temperature=_SCHEDULES[kind](t0, t1, b.search_steps), structure_fn=obj.structure,
            warmup_steps=int(self.warmup_fraction * b.search_steps),
            batch_size=_search_batch(problem),
            data_mesh=problem.mesh if _search_batch(problem) is not None else None)

    def grads_per_step(self, problem) -> float:
        """Gradient evaluations per outer step: S inner + the hypergradient's cost."""
        return problem.budget.inner_steps + _HYPERGRADIENT_COST[self.hypergradient]

    def search(self, problem, evaluator, *, key, restarts: int, relaxation: str | None = None,
               progress: bool = False, jit: Callable = jax.jit,
               checkpoint: Callable | None = None) -> Outcome:
        """Bilevel training of `restarts` supernets (x the path's c values), argmax per edge.

        structure_level "both": the path with q(Gamma) at the inner level, then at the outer
        level (two compiled programs, the same keys), the proposals of both returned.
        `checkpoint(name, chunk)`: None, or the `structsel.checkpoint.Checkpointer` of the
        part `name` of the search, advanced `chunk` outer steps per call (`run_chunks`
        saves and resumes through it; `runner.search_checkpoints`).
        """
        if self.structure_level == "both":
            runs = [dataclasses.replace(self, structure_level=level).search(
                problem, evaluator, key=key, restarts=restarts, relaxation=relaxation,
                progress=progress, jit=jit, checkpoint=checkpoint)
                for level in ("inner", "outer")]
            return _concatenate(runs, ("inner", "outer"))
        return self._search([problem], [key], restarts=restarts, relaxation=relaxation,
                            progress=progress, jit=jit, checkpoint=checkpoint)[0]

    def search_many(self, problems, *, keys, restarts: int, relaxation: str | None = None,
                    progress: bool = False, jit: Callable = jax.jit,
                    checkpoint: Callable | None = None) -> list[Outcome]:
        """`search` of several runs that differ only in their data split and key (same
        space, task, budget and data shapes: e.g. the seeds of a sweep) as ONE compiled
        program, vmapped over the runs (their data included); one Outcome per run.
        Each run's numbers equal its own `search` up to float32 reassociation."""
        if len(problems) != len(keys) or not problems:
            raise ValueError(f"search_many needs one key per problem, got {len(problems)} "
                             f"problems and {len(keys)} keys")
        if self.structure_level == "both":
            levels = [dataclasses.replace(self, structure_level=level).search_many(
                problems, keys=keys, restarts=restarts, relaxation=relaxation,
                progress=progress, jit=jit, checkpoint=checkpoint)
                for level in ("inner", "outer")]
            return [_concatenate(list(runs), ("inner", "outer")) for runs in zip(*levels)]
        return self._search(problems, keys, restarts=restarts, relaxation=relaxation,
                            progress=progress, jit=jit, checkpoint=checkpoint)

    def _search(self, problems, keys, *, restarts, relaxation, progress, jit,
                checkpoint=None) -> list[Outcome]:
        """One structure level of `search` (one problem) or `search_many` (several).

        All runs of a problem (restart-major: row r * P + p is restart r at c = path[p];
        the c values of one restart share its initialisation) are one compiled program,
        vmapped or mapped; several problems add an outer vmap over their data and states.
        """
        many = len(problems) > 1
        problem = problems[0]
        d, space, b = problem.data, problem.space, problem.budget
        obj, trainer, compiled = PROGRAMS.get(self, space, problem.task, b, relaxation,
                                              num_train=int(d.x_train.shape[0]),
                                              mesh=problem.mesh)
        num_c = max(1, len(self.path))
        coefficients = None
        if self.path:
            coefficients = objective.coefficient_batch(self.path_coefficients() * restarts,
                                                       dtype=d.x_train.dtype)
        # the initial states: one compiled program for all problems (same shapes), not the
        # eager dispatch of each op of the init
        init = jit(lambda ks, cs, x: trainer.init_many(lambda k: obj.init(k, x), ks, cs))
        states = []
        for pr, key in zip(problems, keys):
            run_keys = jax.random.split(key, restarts)[np.repeat(np.arange(restarts), num_c)]
            states.append(init(run_keys, coefficients, pr.data.x_train[:1]))
        stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)  # noqa: E731
        if many:
            states = stack(states)
            train = stack([(pr.data.x_train, pr.data.y_train) for pr in problems])
            val = stack([(pr.data.x_val, pr.data.y_val) for pr in problems])
        else:
            states, train, val = states[0], (d.x_train, d.y_train), (d.x_val, d.y_val)
        segments = _segments(b.search_steps, self.num_segments)
        batching = b.restart_batching(space.layout)
        for n in set(segments):
            name = (n, "many") if many else n
            if name in compiled:
                continue
            one = lambda s, tr, va, n=n: trainer.run_many(s, tr, va, n,  # noqa: E731
                                                          batching=batching)
            compiled[name] = jit(jax.vmap(one) if many else one)
        # equal segments in one run_chunks, then the remainder (its own compiled length);
        # the trainer freezes a diverged run at its last finite state: only that is checked
        axis = 2 if many else 1
        parts, size = [], segments[0]
        for part, (n, steps) in enumerate(((size, size * segments.count(size)),
                                           (segments[-1], segments[-1] if segments[-1] != size
                                            else 0))):
            if steps:
                ckpt = (None if checkpoint is None
                        else checkpoint(f"{self.structure_level}_{part}", n))
                try:
                    states, hist, _ = loop.run_chunks(
                        compiled[(n, "many") if many else n], states, num_steps=steps,
                        chunk=n, args=(train, val), history_axis=axis,
                        desc=f"search ({space.name})", progress=progress,
                        check_finite=lambda st, _: {"state": st}, checkpointer=ckpt)
                finally:
                    if ckpt is not None:
                        ckpt.close()
                parts.append(hist)
        full = loop.concatenate(parts, axis=axis)
        if not many:
            return [self._outcome(problem, obj, trainer, states, full, restarts, relaxation)]
        return [self._outcome(pr, obj, trainer, jax.tree.map(lambda a, i=i: a[i], states),
                              jax.tree.map(lambda a, i=i: a[i], full), restarts, relaxation)
                for i, pr in enumerate(problems)]

    def _outcome(self, problem, obj, trainer, states, full, restarts, relaxation) -> Outcome:
        """The Outcome of one problem's runs: final states and history (runs, steps)."""
        space, b = problem.space, problem.budget
        num_c = max(1, len(self.path))
        history = {k: v for k, v in full.items() if k != "structure"}
        gamma_history = _stack_cell(space, tuple(full["structure"]))
        ctx = objective.Context.create(jax.random.key(0), trainer.temperature(b.search_steps))
        final = jax.vmap(lambda s: obj.structure(s.params, s.hparams, ctx))(states)
        gamma = _stack_cell(space, final)
        scores = np.where(np.arange(gamma.shape[-1]) == space.zero_op, -np.inf, gamma) \
            if self.exclude_zero else gamma
        choices = np.argmax(scores, axis=-1).astype(np.int32)
        rows = [{"outer_loss": float(np.mean(history["outer_loss"][:, t])),
                 "inner_loss": float(np.mean(history["inner_loss"][:, t])),
                 "temperature": float(np.mean(history["temperature"][:, t])),
                 "hypergradient_norm": float(np.mean(history["hypergradient_norm"][:, t]))}
                for t in range(history["outer_loss"].shape[1])]
        diverged = history["diverged"].any(axis=1)
        equivalent = num_c * b.equivalent_evaluations(self.grads_per_step(problem))
        collapsed = float(np.mean(np.argmax(gamma, axis=-1) == space.zero_op))
        extra = {"diverged_restarts": int(diverged.sum()), "zero_fraction": collapsed,
                 "final_outer_loss": history["outer_loss"][:, -1].tolist(),
                 "restart_of_run": np.repeat(np.arange(restarts), num_c).tolist(),
                 "divergence_of_run": _divergence_of_runs(history)}
        if self.path:
            extra["kl_weight_of_run"] = [float(c) for c in self.path] * restarts
        if space.layout == "vector":  # tables: how much each column is read (`features`)
            r = features.relevance(space.family, obj.mean_weights(states.params),
                                   int(problem.data.x_train.shape[-1]))
            if r is not None:
                extra["input_relevance"] = [float(v) for v in r]
        return Outcome(choices, gamma, gamma_history, equivalent, rows,
                       relaxation or self.relaxation, extra)


def check_kl_weights(method: str, values) -> tuple[float, ...]:
    """Validated KL weights c (finite, > 0; a str 'c1,c2,...' or a sequence) of a method
    with Bayesian weights; one value is a single tempered ELBO, several a complexity path."""
    m = METHODS[method]
    if not (isinstance(m, GradientSearch) and m.weights == "gaussian"):
        bayesian = [n for n, v in METHODS.items()
                    if isinstance(v, GradientSearch) and v.weights == "gaussian"]
        raise ValueError(f"kl_weights applies to the Bayesian methods ({', '.join(bayesian)}), "
                         f"not {method!r}")
    items = values.split(",") if isinstance(values, str) else list(np.atleast_1d(values))
    out = []
    for v in items:
        try:
            c = float(v)
        except (TypeError, ValueError):
            c = float("nan")
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"kl_weights must be finite numbers > 0 (e.g. 1,0.3,0.1), got {v!r}")
        out.append(c)
    if not out:
        raise ValueError("kl_weights must hold at least one value")
    return tuple(out)


def _divergence_of_runs(history) -> list:
    """Per run: None, or {"step", "quantity"} of its first non-finite outer step (the
    trainer froze it there: `bilevel.BilevelTrainer.run`)."""
    first = np.argmax(history["diverged"], axis=1)
    return [{"step": int(history["step"][r, s]),
             "quantity": bilevel.QUANTITIES[int(history["nonfinite"][r, s])]}
            if history["diverged"][r, s] else None for r, s in enumerate(first)]


def _concatenate(outcomes, levels) -> Outcome:
    """The runs of several searches as one outcome (rows one search after the other)."""
    cat = lambda xs: np.concatenate(xs, axis=0)  # noqa: E731
    first = outcomes[0]
    extra = {"diverged_restarts": sum(o.extra["diverged_restarts"] for o in outcomes),
             "zero_fraction": float(np.mean([o.extra["zero_fraction"] for o in outcomes])),
             "structure_level_of_run": sum(([lv] * len(o.choices)
                                            for o, lv in zip(outcomes, levels)), [])}
    for k in ("final_outer_loss", "restart_of_run", "kl_weight_of_run", "divergence_of_run"):
        if k in first.extra:
            extra[k] = sum((list(o.extra[k]) for o in outcomes), [])
    if all("input_relevance" in o.extra for o in outcomes):  # runs-weighted mean
        runs = np.array([len(o.choices) for o in outcomes], np.float64)
        r = np.array([o.extra["input_relevance"] for o in outcomes])
        extra["input_relevance"] = [float(v) for v in (runs @ r) / runs.sum()]
    rows = [{k: float(np.mean([o.history[t][k] for o in outcomes])) for k in first.history[t]}
            for t in range(len(first.history))]
    return Outcome(cat([o.choices for o in outcomes]), cat([o.gamma for o in outcomes]),
                   cat([o.gamma_history for o in outcomes]),
                   sum(o.num_evaluations for o in outcomes), rows, first.relaxation, extra)


class ProgramCache:
    """Compiled search programs by static configuration (method, space, task, budget,
    relaxation): `get` returns (objective, trainer, {num_steps: jit(run_many)}), so repeated
    searches (benchmarks, tests) reuse the compiled programs; the data and the traced
    coefficients are arguments of the programs. Least recently used entries go first."""

    def __init__(self, maxsize: int = 16):
        self.maxsize, self._entries = maxsize, {}

    def get(self, method: "GradientSearch", space, task, budget, relaxation, *,
            num_train: int, mesh=None):
        key = (method, space, task, budget, relaxation, num_train, mesh)
        entry = self._entries.pop(key, None)
        if entry is None:
            problem = _Static(space, task, budget, num_train, mesh)
            obj = method.objective(problem, relaxation)
            entry = (obj, method.trainer(problem, obj), {})
        self._entries[key] = entry
        while len(self._entries) > self.maxsize:
            self._entries.pop(next(iter(self._entries)))
        return entry

    def clear(self) -> None:
        self._entries.clear()


PROGRAMS = ProgramCache()


class _Static(NamedTuple):
    space: Any
    task: Any
    budget: Any
    num_train: int  # training rows (the minibatches' data size m)
    mesh: Any = None  # 1-D device mesh of the minibatches' rows (data parallelism), or None


def _search_batch(problem) -> int | None:
    """The search's minibatch size, or None for full batch (0, or >= the training rows)."""
    size = problem.budget.search_batch_size
    return size if 0 < size < problem.num_train else None


def _segments(total: int, parts: int) -> list[int]:
    """Split `total` outer steps into at most `parts` equal segments (plus a remainder)."""
    size = max(1, math.ceil(total / parts))
    out = [size] * (total // size)
    return out + ([total % size] if total % size else [])


def _blackbox_budget(problem) -> int:
    """Evaluations of a black-box method: the budget's, else the compute of `bayes`."""
    b = problem.budget
    return b.evaluations or b.equivalent_evaluations(b.inner_steps + 1.0)


def _one_hot(space, choices) -> np.ndarray:
    return np.stack([np.eye(k)[np.asarray(choices)[..., e]]
                     for e, k in enumerate(space.discrete.num_ops)], axis=-2)


@dataclasses.dataclass(frozen=True)
class BlackBoxSearch:
    """Common checks of the methods that only evaluate discrete structures."""

    def check(self, *, relaxation: str | None, space: str) -> None:
        if relaxation is not None:
            raise ValueError(f"--relaxation applies to the gradient methods only "
                             f"({', '.join(n for n, m in METHODS.items() if isinstance(m, GradientSearch))})")

    @staticmethod
    def _reward_fn(evaluator, key):
        calls = [0]

        def evaluate(choices):
            calls[0] += 1
            return jnp.asarray(evaluator.reward(choices, key=jax.random.fold_in(key, calls[0])))
        return evaluate


@dataclasses.dataclass(frozen=True)
class RandomSearch(BlackBoxSearch):
    """Uniform draws without replacement, evaluated in vmapped batches; keep the best."""

    def search(self, problem, evaluator, *, key, restarts, relaxation=None, progress=False,
               jit=jax.jit, checkpoint=None) -> Outcome:
        n = _blackbox_budget(problem)
        choices, rows = [], []
        for r, k in enumerate(jax.random.split(key, restarts)):
            k_draw, k_eval = jax.random.split(k)
            res = random_search(self._reward_fn(evaluator, k_eval), problem.space.discrete,
                                key=k_draw, budget=n, batch_size=problem.budget.chunk)
            choices.append(np.asarray(res.best_choice))
            rows = rows or [{"incumbent": float(v)} for v in np.asarray(res.incumbent)]
        choices = np.stack(choices)
        return Outcome(choices, _one_hot(problem.space, choices), None,
                       min(n, problem.space.discrete.size), rows, None, {})


@dataclasses.dataclass(frozen=True)
class Reinforce(BlackBoxSearch):
    """NAS-RL: an LSTM controller trained by REINFORCE on the validation reward."""

    batch_size: int = 8

    def search(self, problem, evaluator, *, key, restarts, relaxation=None, progress=False,
               jit=jax.jit, checkpoint=None) -> Outcome:
        from structsel.search.reinforce import controller_sample, run_reinforce

        n = _blackbox_budget(problem)
        batch = min(self.batch_size, n)
        iterations = max(1, math.ceil(n / batch))
        choices, gammas, rows = [], [], []
        for k in jax.random.split(key, restarts):
            k_run, k_eval, k_marg = jax.random.split(k, 3)
            res = run_reinforce(self._reward_fn(evaluator, k_eval), problem.space.discrete,
                                key=k_run, num_iterations=iterations, batch_size=batch)
            choices.append(np.asarray(res.search.best_choice))
            sample, _ = controller_sample(res.state.params, 512, key=k_marg)
            gammas.append(_one_hot(problem.space, np.asarray(sample)).mean(0))
            rows = rows or [{"incumbent": float(v), "baseline": float(b)} for v, b in
                            zip(np.asarray(res.search.incumbent)[batch - 1::batch],
                                np.asarray(res.baselines))]
        return Outcome(np.stack(choices), np.stack(gammas), None, iterations * batch, rows,
                       None, {"iterations": iterations, "batch_size": batch})


@dataclasses.dataclass(frozen=True)
class OptunaTPE(BlackBoxSearch):
    """Optuna's TPE sampler over the categorical choices (optional extra: `pip install -e ".[optuna]"`)."""

    batch_size: int = 4

    def check(self, *, relaxation, space) -> None:
        super().check(relaxation=relaxation, space=space)
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ValueError("method 'optuna' needs the optional package optuna "
                             "(pip install optuna, or the extra .[optuna]); it is not installed") from None

    def search(self, problem, evaluator, *, key, restarts, relaxation=None, progress=False,
               jit=jax.jit, checkpoint=None) -> Outcome:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        n = _blackbox_budget(problem)
        space, choices, rows = problem.space, [], []
        for r, k in enumerate(jax.random.split(key, restarts)):
            seed = int(jax.random.randint(k, (), 0, 2**31 - 1))
            study = optuna.create_study(direction="maximize",
                                        sampler=optuna.samplers.TPESampler(seed=seed))
            evaluate = self._reward_fn(evaluator, k)
            done = 0
            while done < n:
                trials = [study.ask() for _ in range(min(self.batch_size, n - done))]
                batch = np.array([[t.suggest_categorical(lab, list(range(kk)))
                                   for lab, kk in zip(space.edge_labels, space.discrete.num_ops)]
                                  for t in trials], np.int32)
                for t, v in zip(trials, np.asarray(evaluate(batch))):
                    study.tell(t, float(v))
                done += len(trials)
            best = study.best_trial.params
            choices.append(np.array([best[lab] for lab in space.edge_labels], np.int32))
            rows = rows or [{"value": float(t.value)} for t in study.trials]
        choices = np.stack(choices)
        return Outcome(choices, _one_hot(space, choices), None, n, rows, None, {})


@dataclasses.dataclass(frozen=True)
class AdaNetSearch(BlackBoxSearch):
    """AdaNet boosting (Cortes et al. 2017) of ReLU MLPs on the raw features.

    AdaNet grows its own structure (an ensemble of subnetworks of depth d or d + 1) rather
    than choosing ops of the cell, so it reports the ensemble: depths, mixture weights,
    parameter count, and validation / test accuracy of the ensemble itself.
    """

    max_rounds: int = 5

    def search(self, problem, evaluator, *, key, restarts, relaxation=None, progress=False,
               jit=jax.jit, checkpoint=None) -> Outcome:
        from structsel.search.adanet import run_adanet

        if problem.task.name != "classification":
            raise ValueError("method 'adanet' supports classification only "
                             "(its boosting surrogate needs class labels)")
        d, b = problem.data, problem.budget
        flat = lambda x: np.asarray(x).reshape(len(x), -1)
        rounds = 2 if b.name == "tiny" else self.max_rounds
        runs = []
        for k in jax.random.split(key, restarts):
            res = run_adanet(flat(d.x_train), d.y_train, key=k,
                             num_classes=problem.task.num_classes, width=b.width,
                             max_rounds=rounds, steps=b.train_steps,
                             learning_rate=b.learning_rate)
            acc = lambda x, y: float(np.mean(np.asarray(res.predict(flat(x))) == np.asarray(y)))
            params = sum(1 + sum(int(np.size(leaf)) for leaf in jax.tree.leaves(sub.params))
                         for sub in res.ensemble)  # weights + one mixture weight each
            runs.append({"ensemble": [{"depth": s.spec.depth, "width": s.spec.width,
                                       "gamma": float(s.gamma)} for s in res.ensemble],
                         "params": params, "rounds": len(res.history),
                         "stopped": bool(res.stopped),
                         "val_metric": acc(d.x_val, d.y_val),
                         "test_metric": acc(d.x_test, d.y_test)})
        best = max(runs, key=lambda r: r["val_metric"])
        candidates = sum(2 * r["rounds"] for r in runs) // restarts
        rows = [{"val_metric": r["val_metric"], "params": r["params"]} for r in runs]
        return Outcome(None, None, None, candidates, rows, None,
                       {"adanet": best, "restarts": runs})


METHODS: dict[str, Any] = {
    # Prior log-std floor -1 (not the objective's -4): with -4 the gamma-scaled ARD prior
    # makes the search anti-Occam on small data (docs/search.md); noise std learned in h.
    # A path of KL weights c, run with q(Gamma) at the inner and at the outer level (each
    # better on one of the two tables, docs/search.md), every proposal retrained and the
    # best on validation kept.
    "bayes": GradientSearch("gumbel_softmax", weights="gaussian", coefficients=objective.elbo,
                            schedule=("exponential", 1.0, 0.3), log_std_floor=-1.0,
                            learn_noise=True, path=(1.0, 0.3, 0.1, 0.03, 0.01),
                            structure_level="both"),
    # the thesis' form: q(Gamma) an inner variable, chosen by the training-set ELBO
    "bayes_inner": GradientSearch("gumbel_softmax", weights="gaussian",
                                  coefficients=objective.elbo,
                                  schedule=("exponential", 1.0, 0.3), log_std_floor=-1.0,
                                  learn_noise=True, path=(1.0, 0.3, 0.1, 0.03, 0.01)),
    # q(Gamma) trained by the outer (validation) objective, as DARTS trains its logits
    "bayes_outer": GradientSearch("gumbel_softmax", weights="gaussian",
                                  coefficients=objective.elbo,
                                  schedule=("exponential", 1.0, 0.3), log_std_floor=-1.0,
                                  learn_noise=True, path=(1.0, 0.3, 0.1, 0.03, 0.01),
                                  structure_level="outer"),
    "darts1": GradientSearch("softmax", exclude_zero=True),
    "darts2": GradientSearch("softmax", hypergradient="darts", exclude_zero=True),
    "gdas": GradientSearch("gumbel_softmax", schedule=("exponential", 10.0, 0.1),
                           exclude_zero=True),
    "drnas": GradientSearch("dirichlet", exclude_zero=True),
    "logitnormal": GradientSearch("logitnormal", exclude_zero=True),
    "random": RandomSearch(),
    "reinforce": Reinforce(),
    "adanet": AdaNetSearch(),
    "optuna": OptunaTPE(),
}
