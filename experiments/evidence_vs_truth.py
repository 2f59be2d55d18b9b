"""Evidence estimates of trained structures against the enumeration tables' test accuracy.

For every structure of the committed tables (mlp3 x digits, conv1d3 x mnist1d), or a subset
stratified by the table's test-accuracy rank (`subset` > 0: evenly spaced ranks, best and
worst included), the structure is trained from scratch exactly as the table trained its
seed 0 (`runner.BUDGETS`, `enumeration.fit`, key split(prng_key(seed), num_seeds)[0]), then
`structsel.evidence` gives on the training split:

- laplace_full / laplace_diag: Laplace log evidence with the dense / diagonal GGN, per-leaf
  prior precisions by MacKay's fixed point (the full one started from the diagonal's);
- elbo: mean-field ELBO at the vertex (q(w) trained from w*, per-leaf alpha at its optimum);
- clml_full / clml_diag: log p(D_val | D_train) by the linearised Laplace predictive;

and as references the validation accuracy of the same network (val_accuracy) and the
table's 3-seed validation mean (table_val). Reported per table and estimator: the Spearman
correlation with the table's mean test accuracy over the evaluated structures, and the
table rank (1 = best of all 125) of the structure each estimator would select (argmax).
The experiment owns the jit boundary: one compiled training program (lax.map over the
structures) and one compiled estimation program per table, called once per structure.

Run: python -m experiments.evidence_vs_truth [--smoke] [--workdir DIR] [--figures docs/figures]
"""
from __future__ import annotations

if not __package__:  # run as a file (python experiments/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jax.flatten_util import ravel_pytree

from experiments.common import Timer, finish, parse
from structsel import evidence as ev
from structsel.search import enumeration, runner
from structsel.variational import per_op

ESTIMATORS = ("laplace_full", "laplace_diag", "elbo", "clml_full", "clml_diag",
              "val_accuracy", "table_val")
PLOTTED = ("laplace_full", "laplace_diag", "elbo", "clml_full", "val_accuracy")
# (space, dataset, budget): how the committed tables were trained.
TABLES = {"mlp3_digits": ("mlp3", "digits", "default"),
          "conv1d3_mnist1d": ("conv1d3", "mnist1d", "mnist1d")}


@dataclasses.dataclass(frozen=True)
class Config:
    """Which tables, how many structures, MacKay / ELBO / predictive settings."""

    seed: int = 0
    tables: tuple = ("mlp3_digits", "conv1d3_mnist1d")
    subset: int = 40              # structures per table, stratified by test rank (0: all)
    budget: str | None = None     # None: the table's own budget (smoke: "tiny")
    mackay_tol: float = 1e-3      # relative change of alpha
    mackay_iter: int = 300        # diagonal GGN (cheap; also stops once its evidence is unchanged)
    # dense GGN, started from the diagonal's alpha: each iteration is a P x P Cholesky and
    # triangular inverse, so it also stops once the evidence moves <= evidence_tol nats
    mackay_full_iter: int = 30
    mackay_evidence_tol: float = 0.01
    elbo_steps: int = 500
    elbo_lr: float = 1e-2
    elbo_eval_samples: int = 16
    clml_samples: int = 64

    @classmethod
    def smoke(cls) -> "Config":
        return cls(tables=("mlp3_digits",), subset=3, budget="tiny", mackay_iter=20,
                   mackay_full_iter=3, elbo_steps=5, elbo_eval_samples=2, clml_samples=4)


def stratified(rows, subset: int) -> np.ndarray:
    """Row indices: all, or `subset` evenly spaced test-accuracy ranks (best and worst kept)."""
    order = np.argsort([-r["test_mean"] for r in rows], kind="stable")
    if subset <= 0 or subset >= len(rows):
        return np.sort(order)
    return np.sort(order[np.unique(np.round(np.linspace(0, len(rows) - 1, subset)).astype(int))])


def likelihood_of(task):
    """Categorical for classification tasks; Gaussian with unit noise (standardised) otherwise."""
    return ev.Categorical() if isinstance(task, enumeration.Classification) else ev.Gaussian(1.0)


def make_trainer(family, task, train_cfg):
    """jit: (vertex choices (S, E), key, data) -> stacked trained weights, seed as the table's."""
    def one(choice, key, data):
        k_init, k_batch = jax.random.split(key)
        w = family.init(k_init, data.x_train[:1])
        return enumeration.fit(family, task, train_cfg, choice, w, data, key=k_batch)[0]
    return jax.jit(lambda choices, key, data: jax.lax.map(lambda c: one(c, key, data), choices))


def make_estimator(family, task, cfg: Config, size: int, batch_size: int | None):
    """jit: (weights, vertex choice, data, key) -> dict of scalar estimates of one structure."""
    lik = likelihood_of(task)

    def estimate(weights, choice, data, key):
        apply = lambda w, x: family.apply_vertex(w, choice, x)
        gamma = tuple(jax.nn.one_hot(choice[e], k) for e, k in enumerate(family.num_ops))
        mask = per_op(gamma, weights)
        xt, yt, xv, yv = data.x_train, data.y_train, data.x_val, data.y_val
        full = ev.ggn(apply, weights, xt, yt, likelihood=lik, mask=mask, size=size)
        diag = full.replace(matrix=jnp.diag(full.matrix), diagonal=True)
        lap_d = ev.mackay(diag, max_iter=cfg.mackay_iter, tol=cfg.mackay_tol, evidence_tol=0.0)
        lap_f = ev.mackay(full, init_precision=lap_d.precision, max_iter=cfg.mackay_full_iter,
                          tol=cfg.mackay_tol, evidence_tol=cfg.mackay_evidence_tol)
        k_f, k_d, k_q, k_e = jax.random.split(key, 4)
        clml = functools.partial(ev.conditional_log_marginal, apply, weights, likelihood=lik,
                                 mask=mask, num_samples=cfg.clml_samples)
        flat, unravel = ravel_pytree(weights)
        active = jnp.zeros(flat.shape, flat.dtype).at[full.index].max(full.active.astype(flat.dtype))
        q, _ = ev.fit_mean_field(apply, weights, xt, yt, likelihood=lik, key=k_q,
                                 mask=unravel(active), steps=cfg.elbo_steps,
                                 learning_rate=cfg.elbo_lr, batch_size=batch_size)
        elbo = ev.mean_field_elbo(apply, weights, q, xt, yt, likelihood=lik, key=k_e,
                                  mask=unravel(active), num_samples=cfg.elbo_eval_samples)
        out = {"laplace_full": lap_f.log_evidence, "laplace_diag": lap_d.log_evidence,
               "clml_full": clml(lap_f, xv, yv, key=k_f), "clml_diag": clml(lap_d, xv, yv, key=k_d),
               "elbo": elbo.elbo, "elbo_kl": elbo.kl, "log_likelihood": lap_f.log_likelihood,
               "val_accuracy": task.metric(apply(weights, xv), yv),
               "test_accuracy": task.metric(apply(weights, data.x_test), data.y_test)}
        for name, lap in (("full", lap_f), ("diag", lap_d)):
            out[f"occam_{name}"] = lap.log_evidence - lap.log_likelihood
            out[f"iterations_{name}"] = lap.iterations
            out[f"rel_change_{name}"] = lap.rel_change
            out[f"evidence_change_{name}"] = lap.evidence_change
            out[f"converged_{name}"] = lap.converged
        out["active_params"] = lap_f.num_params
        return out
    return jax.jit(estimate)


def spearman(a, b) -> float:
    return float(scipy.stats.spearmanr(a, b).statistic)


def run_table(name: str, cfg: Config) -> tuple[dict, list[dict]]:
    """Trains and scores the chosen structures of one table; (summary, per-structure rows)."""
    space_name, dataset, budget_name = TABLES[name]
    table = enumeration.load_enumeration_table(space_name, dataset)
    budget = runner.parse_budget(cfg.budget or budget_name)
    ds = runner.load_data(dataset=dataset, data=None, target=None, task=None, split_seed=cfg.seed,
                          budget=budget)
    problem = runner.make_problem(ds, space_name, budget)
    family, task, data = problem.space.family, problem.task, problem.data
    rows = [table["rows"][i] for i in stratified(table["rows"], cfg.subset)]
    choices = np.array([r["choice"] for r in rows])
    key = jax.random.split(runner.prng_key(cfg.seed), table["num_seeds"])[0]
    with Timer() as t_train:
        weights = jax.block_until_ready(make_trainer(family, task, budget.train)(
            problem.space.vertex(choices), key, data))
    size = int(problem.space.all_num_params(choices, np.asarray(data.x_train)).max())
    estimate = make_estimator(family, task, cfg, size, budget.train.batch_size)
    out, times = [], []
    with Timer() as t_est:
        for i, row in enumerate(rows):
            start = time.perf_counter()
            w_i = jax.tree.map(lambda a: a[i], weights)
            res = estimate(w_i, jnp.asarray(problem.space.vertex(choices[i])), data,
                           jax.random.fold_in(key, i))
            res = {k: v.item() for k, v in jax.device_get(res).items()}
            times.append(time.perf_counter() - start)
            out.append({"choice": row["choice"], "ops": row["ops"], "params": row["params"],
                        "table_test": row["test_mean"], "table_val": row["val_mean"],
                        "table_val_seed0": row["val"][0], **res, "seconds": times[-1]})
            print(f"{name} {i + 1}/{len(rows)} {','.join(row['ops'])}: "
                  f"laplace {res['laplace_full']:.1f} ({res['iterations_full']} it) "
                  f"elbo {res['elbo']:.1f} clml {res['clml_full']:.1f} "
                  f"val {res['val_accuracy']:.3f} [{times[-1]:.1f} s]", flush=True)
    truth = [r["table_test"] for r in out]
    summary = {"name": name, "space": space_name, "dataset": dataset, "budget": budget.name,
               "table_size": len(table["rows"]), "num_structures": len(out),
               "subset": "all" if len(out) == len(table["rows"]) else
               f"{len(out)} stratified by test rank",
               "spearman": {}, "selected_rank": {}, "selected_regret": {}, "selected_ops": {},
               "train_seconds": t_train.seconds, "estimate_seconds": t_est.seconds,
               "first_call_seconds": times[0],
               "median_structure_seconds": float(np.median(times)),
               "max_val_diff_to_table_seed0": float(max(abs(r["val_accuracy"] - r["table_val_seed0"])
                                                        for r in out)),
               "mackay_converged": {n: int(sum(r[f"converged_{n}"] for r in out))
                                    for n in ("full", "diag")},
               "mackay_iterations_max": {n: int(max(r[f"iterations_{n}"] for r in out))
                                         for n in ("full", "diag")},
               "mackay_evidence_change_max": {n: float(max(r[f"evidence_change_{n}"] for r in out))
                                              for n in ("full", "diag")},
               "spearman_params_vs_test": spearman([r["params"] for r in out], truth)}
    for est in ESTIMATORS:
        values = np.array([r[est] for r in out], dtype=float)
        best = int(np.nanargmax(values))
        scored = enumeration.regret_and_rank(table, out[best]["choice"])
        summary["spearman"][est] = spearman(values, truth)
        summary["selected_rank"][est] = scored["rank"]
        summary["selected_regret"][est] = scored["regret"]
        summary["selected_ops"][est] = out[best]["ops"]
    return summary, out


def plot(results: dict, cfg: Config):
    """One panel per table (rows) and estimator (columns): estimate vs table test accuracy."""
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(len(names), len(PLOTTED), figsize=(3.1 * len(PLOTTED),
                                                                 2.9 * len(names)),
                             squeeze=False)
    for i, name in enumerate(names):
        summary, rows = results[name]
        truth = np.array([r["table_test"] for r in rows])
        params = np.array([r["params"] for r in rows])
        for j, est in enumerate(PLOTTED):
            ax = axes[i, j]
            x = np.array([r[est] for r in rows], dtype=float)
            sc = ax.scatter(x, truth, c=params, s=12, cmap="viridis")
            best = int(np.nanargmax(x))
            ax.scatter(x[best], truth[best], s=90, facecolors="none", edgecolors="tab:red",
                       label=f"selected: rank {summary['selected_rank'][est]}")
            ax.set_title(f"{name}\n{est}: Spearman {summary['spearman'][est]:+.2f}", fontsize=8)
            ax.legend(fontsize=6, loc="lower right")
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.set_ylabel("table test accuracy (3-seed mean)", fontsize=7)
            if i == len(names) - 1:
                ax.set_xlabel("estimate (nats)" if est != "val_accuracy" else "val accuracy",
                              fontsize=7)
        fig.colorbar(sc, ax=axes[i, -1], fraction=0.05, label="params")
    fig.suptitle("Evidence estimates of trained structures vs the enumeration tables' test "
                 "accuracy (red: the structure each estimate selects)", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs every table of the config; writes summary.json, structures.json and the figure."""
    cfg, run, args = parse(Config, argv, name="evidence_vs_truth", description=__doc__)
    unknown = [t for t in cfg.tables if t not in TABLES]
    if unknown or not cfg.tables:
        raise ValueError(f"tables must be a non-empty tuple of {sorted(TABLES)}, got {cfg.tables!r}")
    if not isinstance(cfg.subset, int) or cfg.subset < 0 or 0 < cfg.subset < 2:
        raise ValueError(f"subset must be 0 (all) or an int >= 2, got {cfg.subset!r}")
    results = {}
    with Timer() as timer:
        for name in cfg.tables:
            results[name] = run_table(name, cfg)
    run.write_json("structures.json", {n: rows for n, (_, rows) in results.items()})
    summary = {"tables": {n: s for n, (s, _) in results.items()},
               "estimators": list(ESTIMATORS), "devices": str(jax.devices())}
    return finish(run, args, summary, {"evidence_vs_truth.png": plot(results, cfg)},
                  timer.seconds)


if __name__ == "__main__":
    main()
