"""Choosing among candidate structures by retraining them (entry-point layer of `search`).

A search proposes candidates: one structure per restart, and for a complexity path one per
KL weight c (and structure level) and restart. Each distinct candidate is retrained from
scratch with `retrain_seeds` seeds (`runner.Evaluator`) and the one with the best mean
validation metric is kept; ties go to the fewest parameters. What counts as a tie is the
rule: "best" (the default) breaks only exact ties (common on small validation sets, whose
accuracy moves in steps of 1/m_val); "one_se" is Breiman's one-standard-error rule: among
the candidates within one standard error of the best mean (the pooled seed standard
deviation over sqrt(retrain_seeds)) the fewest parameters win. Measured on both
enumeration tables, "one_se" never selected a better structure and cost 3 of 10 seeds of
`bayes_inner` 1 to 5 points of test accuracy (docs/search.md), so it is an option.

With a deep ensemble (the tabular budget) exact ties in the ensemble's validation metric
go to the lower validation loss of the ensemble (cross-entropy of its averaged class
probabilities, or squared error), and only then to fewer parameters: accuracy on a small
validation split moves in steps of 1/m_val and ties often (90 of wine's 125 mlp3-like
structures reach 1.0 on its 36 rows), while the loss, a proper scoring rule, still ranks
the tied candidates. The linear reference (`references.decide`) is not compared this way:
a tie with it still goes to the linear model.

`front.json` / `front.png` record the whole path: parameters against validation and test
metric for every candidate, labelled with its c, and the enumeration table's Pareto front
behind when a table exists.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import numpy as np


class Selection(NamedTuple):
    """The retrained candidates and the chosen one (index into `choices`)."""

    choices: np.ndarray          # (N, E) distinct candidate structures
    params: np.ndarray           # (N,) parameter counts
    val: np.ndarray              # (N, S) validation metric per retrain seed
    test: np.ndarray             # (N, S) test metric per retrain seed
    best: int                    # chosen candidate
    tolerance: float             # one standard error of the mean validation metric
    higher_is_better: bool
    ensemble_val: np.ndarray | None = None   # (N,) metric of the seeds' deep ensemble
    ensemble_test: np.ndarray | None = None
    ensemble_val_loss: np.ndarray | None = None   # (N,) the ensemble's validation loss
    ensemble_val_out: np.ndarray | None = None    # (N, val rows, outputs) its outputs
    ensemble_test_out: np.ndarray | None = None   # (N, test rows, outputs)
    # (N, S, checkpoints, val rows, outputs): each model's validation outputs at every
    # early-stopping checkpoint, when the evaluator returns them (`Evaluator(val_path=)`)
    val_path: np.ndarray | None = None


RULES = ("best", "one_se")


def one_se_choice(val, params, *, higher_is_better: bool, rule: str = "one_se",
                  loss=None) -> tuple[int, float]:
    """Index of the chosen candidate and the tie tolerance used.

    val: (N, S) validation metric per candidate and seed; params: (N,). Among candidates
    whose mean is within the tolerance of the best mean, the fewest parameters win (ties
    in parameters go to the better mean). Tolerance: rule "one_se": SE = sqrt(mean_i
    var_i) / sqrt(S) (var with ddof 1, pooled over candidates; 0 with one seed); rule
    "best": 0 (exact ties only). loss: None, or (N,) validation losses (lower is better)
    that break the exact ties of rule "best" before the parameter count does.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    val = np.asarray(val, float)
    if val.ndim != 2 or val.shape[0] < 1:
        raise ValueError(f"val must have shape (num_candidates, num_seeds), got {val.shape}")
    params = np.asarray(params)
    sign = 1.0 if higher_is_better else -1.0
    score = sign * val.mean(axis=1)
    seeds = val.shape[1]
    se = float(np.sqrt(np.mean(val.var(axis=1, ddof=1))) / np.sqrt(seeds)) \
        if seeds > 1 and rule == "one_se" else 0.0
    close = np.flatnonzero(score >= score.max() - se)
    if loss is not None and rule == "best":
        loss = np.asarray(loss, float)
        if loss.shape != score.shape:
            raise ValueError(f"loss must have shape {score.shape}, got {loss.shape}")
        order = sorted(close, key=lambda i: (loss[i], params[i]))
    else:
        order = sorted(close, key=lambda i: (params[i], -score[i]))
    return int(order[0]), se


@functools.lru_cache(maxsize=16)
def _ensemble_scorer(task):
    """jit((val_out, y_val, test_out, y_test) -> (val metric, test metric, val loss, val
    outputs, test outputs)) of each candidate's deep ensemble; outputs (N, S, rows,
    outputs) in, the ensembles' (N, rows, outputs) out. One compiled program instead of
    the eager dispatch of each op."""
    def scores(val_out, y_val, test_out, y_test):
        ens_val, ens_test = jax.vmap(task.ensemble)(val_out), jax.vmap(task.ensemble)(test_out)
        return (jax.vmap(task.metric, (0, None))(ens_val, y_val),
                jax.vmap(task.metric, (0, None))(ens_test, y_test),
                jax.vmap(task.loss, (0, None))(ens_val, y_val), ens_val, ens_test)
    return jax.jit(scores)


def select(evaluator, space, candidates, *, keys, x_train, higher_is_better: bool,
           rule: str = "best", ensemble=None) -> Selection:
    """Retrains each distinct row of `candidates` (N, E) with one seed per key; the best
    mean validation metric, ties by `rule` going to fewer parameters.

    ensemble: None, or (task, data) to score each candidate as the deep ensemble of its
    seeds (`task.ensemble` of their outputs, scored with `task.metric` on data.y_val /
    data.y_test) and choose by the ensemble's validation metric (rule "best"), exact
    ties going to the ensemble's lower validation loss (`task.loss`), then to fewer
    parameters.
    """
    choices = np.unique(np.asarray(candidates, np.int32), axis=0)
    scores = evaluator(choices, keys, outputs=ensemble is not None)
    params = np.asarray([space.num_params(c, x_train) for c in choices])
    ens_val = ens_test = ens_loss = val_out = test_out = None
    if ensemble is not None:
        task, data = ensemble
        *metrics, val_out, test_out = _ensemble_scorer(task)(
            scores["val_out"], data.y_val, scores["test_out"], data.y_test)
        ens_val, ens_test, ens_loss = (np.asarray(a, float) for a in metrics)
        val_out, test_out = np.asarray(val_out), np.asarray(test_out)
        best, tol = one_se_choice(ens_val[:, None], params, higher_is_better=higher_is_better,
                                  rule="best", loss=ens_loss)
    else:
        best, tol = one_se_choice(scores["val_metric"], params,
                                  higher_is_better=higher_is_better, rule=rule)
    path = scores.get("val_path")
    return Selection(choices, params, np.asarray(scores["val_metric"]),
                     np.asarray(scores["test_metric"]), best, tol, higher_is_better,
                     ens_val, ens_test, ens_loss, val_out, test_out,
                     None if path is None else np.asarray(path))


def front_record(selection: Selection, space, candidates, labels: Sequence) -> dict:
    """front.json's dict: every candidate with its parameters, metrics and the path labels
    (e.g. the KL weights c) of the runs that proposed it."""
    candidates = np.asarray(candidates)
    rows = []
    for i, choice in enumerate(selection.choices):
        runs = [labels[j] for j, c in enumerate(candidates) if np.array_equal(c, choice)]
        rows.append({"choice": [int(c) for c in choice], "selected": space.selected(choice),
                     "params": int(selection.params[i]),
                     "val_mean": float(selection.val[i].mean()),
                     "val_std": float(selection.val[i].std()),
                     "test_mean": float(selection.test[i].mean()),
                     "test_std": float(selection.test[i].std()),
                     **({} if selection.ensemble_val is None else {
                         "ensemble_val": float(selection.ensemble_val[i]),
                         "ensemble_test": float(selection.ensemble_test[i]),
                         "ensemble_val_loss": float(selection.ensemble_val_loss[i])}),
                     "proposed_by": runs, "chosen": i == selection.best})
    return {"rule": "best mean validation metric; candidates within `tolerance` of it are "
                    "ties, which go to the fewest parameters"
                    + ("" if selection.ensemble_val is None else
                       " (with the ensemble: exact ties go to the lower ensemble_val_loss, "
                       "then to the fewest parameters)"),
            "tolerance": selection.tolerance, "higher_is_better": selection.higher_is_better,
            "candidates": rows}


def _pareto(params, metric, higher_is_better: bool):
    """Indices of the Pareto front (fewer parameters, better metric), sorted by parameters."""
    sign = 1.0 if higher_is_better else -1.0
    order = np.lexsort((-sign * np.asarray(metric), np.asarray(params)))
    front, best = [], -np.inf
    for i in order:
        if sign * metric[i] > best:
            front.append(i)
            best = sign * metric[i]
    return front


def plot_front(record: dict, path, *, table: dict | None = None, metric: str = "metric") -> None:
    """PNG: parameters (log) against validation and test metric for every candidate,
    labelled with the c values that proposed it; the table's structures and Pareto front
    (by mean test metric) behind when `table` is given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hib = record["higher_is_better"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, kind in zip(axes, ("val", "test")):
        if table is not None:
            p = np.array([r["params"] for r in table["rows"]])
            m = np.array([r[f"{kind}_mean"] for r in table["rows"]])
            ax.scatter(p, m, s=8, color="0.8", label="table (every structure)")
            f = _pareto(p, m, hib)
            ax.step(p[f], m[f], where="post", color="0.5", lw=1, label="table Pareto front")
        for r in record["candidates"]:
            mark = dict(color="tab:red", s=60, marker="*") if r["chosen"] else \
                dict(color="tab:blue", s=25)
            ax.scatter(r["params"], r[f"{kind}_mean"], zorder=3, **mark)
            ax.errorbar(r["params"], r[f"{kind}_mean"], yerr=r[f"{kind}_std"], color="tab:blue",
                        lw=0.8, zorder=2)
            label = ", ".join(str(v) for v in r["proposed_by"])
            ax.annotate(label, (r["params"], r[f"{kind}_mean"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        shown = [r["params"] for r in record["candidates"]] + (
            [r["params"] for r in table["rows"]] if table is not None else [])
        ax.set_xlim(max(min(shown), 1) / 1.5, max(max(shown), 1) * 1.5)
        ax.set_xlabel("parameters")
        ax.set_ylabel(f"{kind} {metric}")
        ax.set_title(f"{kind}: candidates (labels: c), chosen = star", fontsize=9)
        if table is not None and kind == "val":
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
