"""Reference models and sanity checks for a selected structure (what `structsel search`
compares its selection with before returning it).

- Structural checks on a discrete model (a vertex choice a, one op index per family edge):
  an op g^e_{a_e} *passes* its input unless it ignores it (`zero`, `zero_like`,
  `constant`); edge e is *on a path* when the input x reaches its source through passing
  ops and its target reaches the output f_{|V|-1} the same way. `depends_on_input` is
  "some path exists"; `path_num_params` counts the weights of the ops on paths, the only
  weights that shape how the prediction varies with x.
- Reference models trained on the training split of the same data, scored like the
  search's structures (`task.metric`: accuracy, or RMSE in the target's units):
  the constant predictor (log class prior / training mean), the linear model (multinomial
  logistic regression, L-BFGS; ridge regression in closed form; both with scikit-learn's
  default penalties, so they are the models a practitioner would fit first), and, when
  scikit-learn is installed, HistGradientBoosting at its defaults.
- `decide`: keep the selection only if it beats the linear model on validation (the
  metric; optionally also the per-row validation loss by more than `margin_se` standard
  errors, `paired_gain`: measured in session 24 and not the default, docs/tables.md).

Pure functions; the caller (`runner.run_search`) owns the jit boundary of the linear fit
(`jit=`); the scoring of outputs is one small jitted program per task (`_scorer`).
"""
from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

# Basis functions whose output does not depend on their input.
CONSTANT_OPS = ("zero", "zero_like", "constant")


# --- structure ----------------------------------------------------------------------------

def path_edges(family, choice) -> np.ndarray:
    """Bool (E,): edge e lies on a path input -> output along which every op passes its input.

    `choice`: int (E,), the op index a_e of every family edge (`Space.vertex`).
    """
    choice = np.asarray(choice)
    if choice.shape != (family.num_edges,):
        raise ValueError(f"choice must have one op index per family edge ({family.num_edges}), "
                         f"got shape {choice.shape}")
    passes = np.array([edge.ops[int(a)].name not in CONSTANT_OPS
                       for edge, a in zip(family.edges, choice)])
    last = family.num_vertices - 1
    from_input = np.zeros(family.num_vertices, bool)
    from_input[0] = True
    for v in range(1, family.num_vertices):  # vertices are topologically ordered (src < dst)
        from_input[v] = any(from_input[family.edges[e].src] and passes[e]
                            for e in family.in_edges[v])
    to_output = np.zeros(family.num_vertices, bool)
    to_output[last] = True
    for v in range(last, 0, -1):
        if to_output[v]:
            for e in family.in_edges[v]:
                to_output[family.edges[e].src] |= bool(passes[e])
    return np.array([from_input[edge.src] and passes[e] and to_output[edge.dst]
                     for e, edge in enumerate(family.edges)], bool)


def depends_on_input(family, choice) -> bool:
    """Whether the discrete model's output can depend on x (some input -> output path)."""
    return bool(path_edges(family, choice).any())


def path_num_params(family, param_counts, choice, num_outputs: int) -> int:
    """Weights of the ops on input -> output paths (`path_edges`); a model whose output does
    not depend on x is a constant predictor and counts `num_outputs` (the constant it learns).

    `param_counts`: `family.param_counts(weights)` (per edge, per op).
    """
    on = path_edges(family, choice)
    if not on.any():
        return int(num_outputs)
    return int(sum(param_counts[e][int(a)] for e, a in enumerate(np.asarray(choice)) if on[e]))


# --- reference models ---------------------------------------------------------------------

class Linear(NamedTuple):
    """f(x) = x W + b; binary classification uses one column and logits [0, x w + b]."""

    w: jax.Array
    b: jax.Array


def linear_outputs(params: Linear, x, num_outputs: int) -> jax.Array:
    """Logits (n, C) or the regression prediction (n, 1)."""
    z = x @ params.w + params.b
    if num_outputs == 2 and z.shape[-1] == 1:
        return jnp.concatenate([jnp.zeros_like(z), z], axis=-1)
    return z


def fit_logistic(x, y, num_classes: int, *, c: float = 1.0, max_iter: int = 1000,
                 tol: float = 1e-5) -> Linear:
    """Multinomial logistic regression: min_{W,b} 1/n sum_i CE(x_i W + b, y_i) + ||W||^2 / (2 C n)
    (scikit-learn's `LogisticRegression(C=c)` objective divided by C n), by L-BFGS.

    Two classes: one weight column (sigmoid logistic regression, as scikit-learn fits it).
    """
    x = jnp.asarray(x, jnp.float32)
    n, d = x.shape
    cols = 1 if num_classes == 2 else num_classes
    l2 = 1.0 / (c * n)

    def objective(p):
        logits = linear_outputs(p, x, num_classes)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + 0.5 * l2 * jnp.sum(p.w ** 2)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad,
                                    value_fn=objective)
        return optax.apply_updates(p, updates), state

    def running(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        return (count == 0) | ((count < max_iter)
                               & (otu.tree_norm(otu.tree_get(state, "grad")) >= tol))

    init = Linear(jnp.zeros((d, cols)), jnp.zeros((cols,)))
    params, _ = jax.lax.while_loop(running, step, (init, opt.init(init)))
    return params


def fit_ridge(x, y, *, alpha: float = 1.0) -> Linear:
    """Ridge regression in closed form: min ||y - X w - b||^2 + alpha ||w||^2 (b unpenalised):
    w = (Xc^T Xc + alpha I)^-1 Xc^T yc on centred Xc, yc; b = mean(y) - mean(X) w."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    mx, my = x.mean(0), y.mean()
    xc, yc = x - mx, y - my
    w = jnp.linalg.solve(xc.T @ xc + alpha * jnp.eye(x.shape[1]), xc.T @ yc)
    return Linear(w[:, None], (my - mx @ w)[None])


def fit_linear(task, x, y) -> Linear:
    """The linear reference of `task`: `fit_logistic` (classification) or `fit_ridge`."""
    if task.name == "classification":
        return fit_logistic(x, y, task.num_outputs)
    return fit_ridge(x, y)


def linear_num_params(task, num_features: int) -> int:
    """Weights of the linear reference: d C + C, one column for binary / regression."""
    cols = 1 if task.num_outputs <= 2 else task.num_outputs
    return (num_features + 1) * cols


def constant_outputs(task, y_train, n: int) -> np.ndarray:
    """The constant predictor on n rows: log class prior (train frequencies) or train mean."""
    y_train = np.asarray(y_train)
    if task.name == "classification":
        counts = np.bincount(y_train, minlength=task.num_outputs)
        return np.broadcast_to(np.log(counts / counts.sum() + 1e-12), (n, task.num_outputs))
    return np.full((n, 1), y_train.astype(np.float64).mean(), np.float32)


@functools.lru_cache(maxsize=16)
def _scorer(task) -> Callable:
    """jit((out_val, y_val, out_test, y_test) -> (val metric, test metric, val loss)): one
    compiled program per task instead of the eager dispatch of each op."""
    return jax.jit(lambda ov, yv, ot, yt: (task.metric(ov, yv), task.metric(ot, yt),
                                           task.loss(ov, yv)))


def _scores(task, out_val, out_test, data, outputs: bool = False) -> dict:
    """val / test metric and val loss of a model's outputs on the split; with `outputs`
    also the outputs themselves ("val_out", "test_out": float32 numpy arrays)."""
    out_val, out_test = (jnp.asarray(o, jnp.float32) for o in (out_val, out_test))
    val, test, loss = _scorer(task)(out_val, data.y_val, out_test, data.y_test)
    scores = {"val_metric": float(val), "test_metric": float(test), "val_loss": float(loss)}
    if outputs:
        scores.update(val_out=np.asarray(out_val), test_out=np.asarray(out_test))
    return scores


def reference_scores(task, data, *, jit: Callable = lambda f: f,
                     outputs: bool = False) -> dict:
    """{"constant": {...}, "linear": {...}}: val / test metric, params, fit time of each.

    `data`: train / val / test arrays of a table (`enumeration.Splits` of 2-D features).
    `outputs`: also each model's outputs on the validation and test rows ("val_out",
    "test_out"; `review` takes them out of what it writes).
    """
    start = time.perf_counter()
    n_val, n_test = data.x_val.shape[0], data.x_test.shape[0]
    constant = {**_scores(task, constant_outputs(task, data.y_train, n_val),
                          constant_outputs(task, data.y_train, n_test), data, outputs),
                "params": int(task.num_outputs), "fit_time_s": time.perf_counter() - start,
                "model": "class prior" if task.name == "classification" else "training mean"}
    start = time.perf_counter()
    params = jit(lambda x, y: fit_linear(task, x, y))(data.x_train, data.y_train)
    k = task.num_outputs
    linear = {**_scores(task, linear_outputs(params, data.x_val, k),
                        linear_outputs(params, data.x_test, k), data, outputs),
              "params": linear_num_params(task, data.x_train.shape[1]),
              "fit_time_s": time.perf_counter() - start,
              "model": ("logistic regression (L2, C = 1)" if task.name == "classification"
                        else "ridge regression (alpha = 1)")}
    return {"constant": constant, "linear": linear}


def hist_gradient_boosting(task, data, *, seed: int, outputs: bool = False) -> dict | None:
    """scikit-learn's HistGradientBoosting{Classifier,Regressor} at its defaults
    (random_state=seed) on the same split; None when scikit-learn is not installed.

    Fitted on one OpenMP thread: next to JAX's thread pool, two threads on a 2-core
    machine measured 14x slower (54 s against 3.8 s on digits).
    """
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    start = time.perf_counter()
    x_train, y_train = np.asarray(data.x_train), np.asarray(data.y_train)
    with threadpool_limits(1):
        return _fit_hgb(task, data, x_train, y_train, seed, start,
                        HistGradientBoostingClassifier, HistGradientBoostingRegressor, outputs)


def _fit_hgb(task, data, x_train, y_train, seed, start, classifier, regressor,
             outputs: bool = False) -> dict:
    if task.name == "classification":
        model = classifier(random_state=seed).fit(x_train, y_train)

        def out(x):  # logits over all classes (a class absent from training gets -inf)
            logits = np.full((len(x), task.num_outputs), -np.inf)
            logits[:, model.classes_] = np.log(model.predict_proba(np.asarray(x)) + 1e-12)
            return logits
    else:
        model = regressor(random_state=seed).fit(x_train, y_train)

        def out(x):
            return model.predict(np.asarray(x))[:, None]
    return {**_scores(task, out(data.x_val), out(data.x_test), data, outputs),
            "fit_time_s": time.perf_counter() - start,
            "model": f"{type(model).__name__}(random_state={seed})"}


# --- the decision -------------------------------------------------------------------------

class Decision(NamedTuple):
    """Which model `structsel search` returns and why."""

    model: str                    # "selected" | "linear"
    reason: str | None            # why the selection was not returned (None if it was)
    warnings: tuple[str, ...]     # lines for the terminal, also written to summary.json


class PairedGain(NamedTuple):
    """The linear model's mean per-row validation loss minus the selection's (positive:
    the selection is better) and the standard error of that mean."""

    gain: float
    se: float
    rows: int


def paired_gain(task, selected_out, linear_out, y) -> PairedGain:
    """Paired comparison of two models' outputs on the same validation rows: d_i =
    l_lin(x_i) - l_sel(x_i) with l the task's per-row loss (cross-entropy of the
    predicted class probabilities, or squared error in standardised units); gain =
    mean d, se = std(d, ddof=1) / sqrt(n)."""
    d = (np.asarray(task.row_losses(jnp.asarray(linear_out, jnp.float32), y), np.float64)
         - np.asarray(task.row_losses(jnp.asarray(selected_out, jnp.float32), y), np.float64))
    n = d.shape[0]
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return PairedGain(float(d.mean()), se, int(n))


def decide(*, selected_val: float, linear_val: float, constant_val: float,
           higher_is_better: bool, metric: str, input_independent: bool | None,
           fallback: bool = True, paired: PairedGain | None = None,
           margin_se: float = 1.0, basis: str = "validation") -> Decision:
    """Keep the selection iff it beats the linear model on validation: strictly in the
    metric (a tie goes to the linear model) and, when `paired` is given, in the per-row
    validation loss by more than `margin_se` standard errors (Occam's razor against the
    simplest member of every structure; not the default of `review`: on tables in
    session 24 it returned the linear model where networks were 5-30 points better,
    because a few confident errors dominate a cross-entropy). Warn whenever the
    selection loses to it, whenever the selection's output does not depend on the
    input, and whenever the returned model does not beat the constant predictor.
    `fallback=False` keeps the selection anyway (still warned). `basis`: what the three
    metrics were measured on, for the messages ("validation", or the cross-validation's
    folds)."""
    def better(a, b):
        return a > b if higher_is_better else a < b

    warnings, reason = [], None
    if input_independent:
        warnings.append("the selected structure's output does not depend on the input "
                        "(every path from the input passes through a zero op): it is a "
                        "constant predictor")
    if not better(selected_val, linear_val):
        reason = (f"the selected structure does not beat the linear model on {basis} "
                  f"({metric} {selected_val:.4g} vs {linear_val:.4g})")
    elif paired is not None and not paired.gain > margin_se * paired.se:
        reason = (f"the selected structure's validation loss is not lower than the linear "
                  f"model's by more than {margin_se:g} standard error of the per-row "
                  f"differences (gain {paired.gain:.3g}, SE {paired.se:.3g} over "
                  f"{paired.rows} rows; {metric} {selected_val:.4g} vs {linear_val:.4g})")
    if reason is not None:
        warnings.append(reason + ("; returning the linear model instead" if fallback
                                  else "; returning it anyway (fallback disabled)"))
    elif input_independent:
        reason = None  # kept with its warning: nothing simpler does better on validation
    model = "linear" if reason is not None and fallback else "selected"
    returned_val = linear_val if model == "linear" else selected_val
    if not better(returned_val, constant_val):
        warnings.append(f"the returned {'linear model' if model == 'linear' else 'structure'} "
                        f"does not beat the constant predictor on {basis} ({metric} "
                        f"{returned_val:.4g} vs {constant_val:.4g})")
    return Decision(model, reason if model == "linear" else None, tuple(warnings))


def linear_structure(task, *, num_features: int, dataset: str, replaces: dict,
                     reason: str) -> dict:
    """The structure.json of a returned linear model (`structsel retrain` refits it)."""
    return {"format": "structsel.linear/1", "model": "linear", "task": task.name,
            "num_features": int(num_features), "num_outputs": int(task.num_outputs),
            "params": linear_num_params(task, num_features), "dataset": dataset,
            "reason": reason, "replaces": replaces}


def as_table(data):
    """`data` (`enumeration.Splits`) with its features flattened to a table (n, d)."""
    return data._replace(**{k: jnp.reshape(getattr(data, k), (getattr(data, k).shape[0], -1))
                            for k in ("x_train", "x_val", "x_test")})


@functools.lru_cache(maxsize=16)
def jitted_fit_linear(task) -> Callable:
    """jit((x, y) -> `fit_linear(task, x, y)`), compiled once per task and shapes (the
    folds of `crossval` share their shapes: one compilation for all of them)."""
    return jax.jit(lambda x, y: fit_linear(task, x, y))


def baselines_of(task, data, *, seed: int = 0, gradient_boosting: bool = True,
                 jit: Callable = lambda f: f, outputs: bool = False) -> dict:
    """{"constant", "linear"[, "hist_gradient_boosting"]}: each reference's val / test
    metric on `data` (`enumeration.Splits`; features flattened to a table (n, d));
    `outputs`: with each model's outputs ("val_out", "test_out")."""
    flat = as_table(data)
    baselines = reference_scores(task, flat, jit=jit, outputs=outputs)
    if gradient_boosting:
        hgb = hist_gradient_boosting(task, flat, seed=seed, outputs=outputs)
        if hgb is not None:
            baselines["hist_gradient_boosting"] = hgb
    return baselines


def review(summary: dict, task, data, *, family=None, choice=None, seed: int = 0,
           fallback: bool = True, gradient_boosting: bool = True,
           jit: Callable = lambda f: f, baselines: dict | None = None,
           selected_out=None, margin_se: float | None = None,
           cross_validated: dict | None = None) -> tuple[dict, Decision]:
    """The summary of a search with its references and the decision applied.

    Adds `baselines` ({"constant", "linear"[, "hist_gradient_boosting"]}: val / test metric
    on `data`, the same split), `input_independent` (structural, from `family` and the full
    vertex `choice`; None without them), `model` ("selected structure" | "linear"),
    `warnings`, and, when the linear model is returned, `fallback` (reason, the selection's
    and the linear model's metrics) with `params` / `val_metric` / `test_metric` the linear
    model's. `data`: `enumeration.Splits` of the split's features as a table (n, d).
    `baselines`: those of `baselines_of` on `data` when the caller computed them already
    (the runner does, next to the search), else computed here; outputs in them are used
    and not written. `selected_out`: the selection's outputs on the validation rows; with
    it the per-row validation losses are compared (`paired_gain`) and recorded as
    `versus_linear`; `margin_se`: None (default: the record does not decide), or the
    standard errors the loss gain must exceed for the selection to be kept (`decide`).
    `cross_validated`: None, or {"selected", "linear", "constant": out-of-fold metrics,
    "folds", "rows"} (`runner`, budget `cv_rows`): the decision compares those instead of
    the validation metrics, and `cross_validation.versus_linear` records them.
    """
    if baselines is None or (selected_out is not None and "val_out" not in baselines["linear"]):
        baselines = baselines_of(task, data, seed=seed, gradient_boosting=gradient_boosting,
                                 jit=jit, outputs=selected_out is not None)
    independent = None if choice is None else not depends_on_input(family, choice)
    linear, constant = baselines["linear"], baselines["constant"]
    paired = (None if selected_out is None else
              paired_gain(task, selected_out, linear["val_out"], data.y_val))
    cvd = cross_validated
    decision = decide(selected_val=cvd["selected"] if cvd else summary["val_metric"],
                      linear_val=cvd["linear"] if cvd else linear["val_metric"],
                      constant_val=cvd["constant"] if cvd else constant["val_metric"],
                      basis=(f"cross-validation ({cvd['folds']} folds, {cvd['rows']} rows)"
                             if cvd else "validation"),
                      higher_is_better=task.higher_is_better, metric=task.metric_name,
                      input_independent=independent, fallback=fallback,
                      **({} if margin_se is None else {"paired": paired,
                                                       "margin_se": margin_se}))
    written = {name: {k: v for k, v in ref.items() if k not in ("val_out", "test_out")}
               for name, ref in baselines.items()}
    out = {**summary, "baselines": written, "input_independent": independent,
           "model": "selected structure", "warnings": list(decision.warnings)}
    if cvd:
        out["cross_validation"] = {**summary.get("cross_validation", {}), **{
            k: cvd[k] for k in ("folds", "rows", "validation_rows", "training_rows", "seed")
            if k in cvd}, "versus_linear": {k: cvd[k] for k in ("selected", "linear",
                                                                   "constant")}}
    if paired is not None:
        out["versus_linear"] = {"val_loss_gain": paired.gain, "se": paired.se,
                                "rows": paired.rows, "decides": margin_se is not None,
                                "margin_se": margin_se}
    if decision.model == "linear":
        out.update(model="linear", params=linear["params"], val_metric=linear["val_metric"],
                   test_metric=linear["test_metric"], test_metric_std=0.0, fallback={
                       "reason": decision.reason, "metric": task.metric_name,
                       "selected_val": summary["val_metric"],
                       "selected_test": summary["test_metric"],
                       "selected_params": summary["params"],
                       "linear_val": linear["val_metric"],
                       "linear_test": linear["test_metric"]})
        if cvd:
            out["fallback"].update(selected_cv=cvd["selected"], linear_cv=cvd["linear"])
    return out, decision
