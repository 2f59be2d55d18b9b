"""Benchmark of the search methods against full enumeration (docs/search.md).

For every method: `--seeds` independent searches (restarts; vmapped in one program for
the gradient methods) on a space x dataset with a committed enumeration table (mlp3 x
digits, or conv1d3 x mnist1d), each selection scored against the table (regret = best
mean test accuracy - the selected structure's, rank 1 = best of 125), with the parameter
count, the wall time and the number of model evaluations (or equivalent compute). The
black-box methods (random, reinforce, optuna) get the same compute as `bayes` unless the
budget sets `evaluations`. Then one real tabular dataset (breast_cancer) against
scikit-learn baselines.

    python scripts/search_benchmark.py [--seeds 5] [--budget default] [--out results/search_benchmark]
    python scripts/search_benchmark.py --space conv1d3 --dataset mnist1d --no-tabular
    python scripts/search_benchmark.py --quick      # tiny budget, 2 seeds, a few methods
    python scripts/search_benchmark.py --methods bayes,random --no-tabular
    python scripts/search_benchmark.py --tabular-only --tabular-methods bayes --seeds 3

The JSON and markdown are rewritten after every method, so an interrupted run keeps its
finished rows. The XLA compilation cache defaults to the CLI's (~/.cache/structsel/jax).
"""
from __future__ import annotations

if not __package__:  # run as a file (python scripts/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import dataclasses
import json
import pathlib
import time

import numpy as np

from structsel.search import enumeration, methods, runner

GRADIENT = ["bayes", "bayes_inner", "bayes_outer", "darts1", "darts2", "gdas", "drnas", "logitnormal"]


def _stats(values) -> dict:
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "std": float(values.std()), "values": values.tolist()}


def bench_methods(names, *, seeds: int, budget: runner.Budget, table: dict,
                  on_row=None) -> dict:
    """Each method `seeds` times on the table's space x dataset; regret/rank from the table.
    `on_row(out)` is called after each method (incremental writes)."""
    ds = runner.load_data(dataset=table["dataset"], data=None, target=None, task=None,
                          split_seed=0, budget=budget)
    problem = runner.make_problem(ds, table["space"], budget)
    x = np.asarray(problem.data.x_train)
    same_compute = methods.METHODS["bayes"].grads_per_step(problem)
    out = {}
    for name in names:
        b = budget
        if name in ("random", "reinforce", "optuna") and not budget.evaluations:
            b = dataclasses.replace(budget, evaluations=budget.equivalent_evaluations(same_compute))
        prob = problem._replace(budget=b)
        evaluator = runner.Evaluator(prob)
        start = time.perf_counter()
        outcome = methods.METHODS[name].search(prob, evaluator, key=runner.prng_key(0),
                                               restarts=seeds)
        path = outcome.extra.get("kl_weight_of_run")
        if path:  # a complexity path: retrain each seed's proposals, choose on validation
            outcome = _select_per_restart(prob, evaluator, outcome, seeds)
        wall = time.perf_counter() - start
        row = {"wall_time_s_total": wall, "wall_time_s_per_seed": wall / seeds,
               "num_evaluations": int(outcome.num_evaluations), "extra": outcome.extra}
        if outcome.choices is None:  # AdaNet: its own ensemble
            runs = outcome.extra["restarts"]
            row.update(params=_stats([r["params"] for r in runs]),
                       test_metric=_stats([r["test_metric"] for r in runs]))
        else:
            scored = [enumeration.regret_and_rank(table, c) for c in outcome.choices]
            row.update(regret=_stats([s["regret"] for s in scored]),
                       rank=_stats([s["rank"] for s in scored]),
                       params=_stats([prob.space.num_params(c, x) for c in outcome.choices]),
                       test_metric=_stats([s["table_test_metric"] for s in scored]),
                       selected=[prob.space.selected(c) for c in outcome.choices],
                       zero_fraction=float(np.mean(np.asarray(outcome.choices)
                                                   == prob.space.zero_op)))
        out[name] = row
        if on_row is not None:
            on_row(out)
        print(f"{name:12s} {wall:7.1f}s  " + (f"regret {row['regret']['mean']:.4f}"
                                              if "regret" in row else
                                              f"test {row['test_metric']['mean']:.4f}"),
              flush=True)
    return out


def _select_per_restart(problem, evaluator, outcome, seeds):
    """One selection per seed from its path's proposals (`selection.select`, as `structsel
    search` does), counted in the evaluations; the outcome's rows become the selections."""
    import jax

    from structsel.search import selection

    proposals = np.asarray(outcome.choices)
    restart = np.asarray(outcome.extra["restart_of_run"])
    c_of_run = np.asarray(outcome.extra["kl_weight_of_run"])
    chosen, path, before = [], [], evaluator.count
    x = np.asarray(problem.data.x_train)
    for r in range(seeds):
        keys = jax.random.split(jax.random.fold_in(runner.prng_key(1), r),
                                problem.budget.retrain_seeds)
        cand = proposals[restart == r]
        sel = selection.select(evaluator, problem.space, cand, keys=keys, x_train=x,
                               higher_is_better=problem.task.higher_is_better)
        best = sel.choices[sel.best]
        chosen.append(best)
        levels = outcome.extra.get("structure_level_of_run")
        path.append({"kl_weights": [float(c) for c, p in zip(c_of_run[restart == r], cand)
                                    if np.array_equal(p, best)],
                     "levels": [lv for lv, p in zip(np.asarray(levels)[restart == r], cand)
                                if np.array_equal(p, best)] if levels else None,
                     "num_candidates": len(sel.choices),
                     "candidates": sel.choices.tolist(),
                     "candidate_val_seeds": sel.val.tolist(),
                     "candidate_test": sel.test.mean(1).tolist(),
                     "candidate_val": sel.val.mean(1).tolist(),
                     "candidate_params": sel.params.tolist(),
                     "tolerance": sel.tolerance})
    retrains = (evaluator.count - before) // seeds
    extra = dict(outcome.extra, selection=path, retrain_evaluations_per_seed=int(retrains))
    return outcome._replace(choices=np.stack(chosen),
                            num_evaluations=outcome.num_evaluations + int(retrains),
                            extra=extra)


def bench_tabular(*, budget: runner.Budget, seeds: int, dataset: str = "breast_cancer",
                  names=("bayes", "darts1", "random")) -> dict:
    """`bayes` on a real tabular dataset vs LogisticRegression and MLPClassifier."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    ds = runner.load_data(dataset=dataset, data=None, target=None, task=None, split_seed=0,
                          budget=budget)
    xtr = np.concatenate([ds.x_train, ds.x_val])
    ytr = np.concatenate([ds.y_train, ds.y_val])
    res = {"dataset": dataset, "split": ds.split}
    res["logistic_regression"] = float(LogisticRegression(max_iter=2000).fit(xtr, ytr)
                                       .score(ds.x_test, ds.y_test))
    res["mlp_classifier"] = _stats([MLPClassifier((32,), max_iter=1000, random_state=s)
                                    .fit(xtr, ytr).score(ds.x_test, ds.y_test)
                                    for s in range(seeds)])
    for name in names:
        tests, params, selected = [], [], []
        start = time.perf_counter()
        for seed in range(seeds):
            cfg = runner.search_config(method=name, dataset=dataset, budget=budget,
                                       seed=seed, workdir=f"/tmp/structsel_bench/{dataset}_{name}_{seed}")
            summary = runner.run_search(cfg, progress=False, dataset=ds)
            tests.append(summary["test_metric"])
            params.append(summary["params"])
            selected.append(summary["selected"])
        res[name] = {"test_metric": _stats(tests), "params": _stats(params),
                     "selected": selected, "wall_time_s_total": time.perf_counter() - start}
        print(f"{dataset} {name}: test {np.mean(tests):.4f}", flush=True)
    return res


def markdown(result: dict) -> str:
    """The tables of docs/search.md."""
    table, seeds = result["table"], result["seeds"]
    lines = []
    if "methods" in result:
        lines += _method_lines(result["methods"], table, seeds, result["budget"]["name"],
                               result["budget"])
    if "tabular" in result:
        lines += _tabular_lines(result["tabular"])
    return "\n".join(lines) + "\n"


def _fmt(s, p=4):
    return f"{s['mean']:.{p}f} +- {s['std']:.{p}f}"


def _method_lines(rows, table, seeds, budget_name, budget=None) -> list:
    """The space x dataset table: one row per method, then the enumeration."""
    fmt = _fmt
    lines = [f"Search on {table['space']} x {table['dataset']} ({table['num_structures']} "
             f"structures), {seeds} seeds, "
             f"budget `{budget_name}`; regret / rank against the enumeration "
             "table (mean test accuracy over 3 seeds).", "",
             f"| method | regret (acc.) | rank (of {table['num_structures']}) | params | "
             "test acc. (table) | "
             "evaluations | wall time / seed (s) | zero-op fraction |",
             "|---|---|---|---|---|---|---|---|"]
    if budget is not None and not runner.table_matches(table, runner.Budget(**budget)):
        lines[1:1] = ["", "Warning: this run's training settings ("
                      + ", ".join(f"{k}={budget[k]}" for k in runner.TABLE_FIELDS)
                      + ") differ from the table's; regret, rank and params are not "
                      "comparable with it (smoke test only)."]
    for name, row in rows.items():
        if "regret" in row:
            lines.append(f"| {name} | {fmt(row['regret'])} | {fmt(row['rank'], 1)} | "
                         f"{fmt(row['params'], 0)} | {fmt(row['test_metric'])} | "
                         f"{row['num_evaluations']} | {row['wall_time_s_per_seed']:.1f} | "
                         f"{row['zero_fraction']:.2f} |")
        else:
            lines.append(f"| {name} (own ensemble) | - | - | {fmt(row['params'], 0)} | "
                         f"{fmt(row['test_metric'])} (ensemble) | {row['num_evaluations']} | "
                         f"{row['wall_time_s_per_seed']:.1f} | - |")
    best = max(table["rows"], key=lambda r: r["test_mean"])
    lines.append(f"| enumeration | 0 | 1 | {best['params']} | {best['test_mean']:.4f} | "
                 f"{table['num_structures'] * table['num_seeds']} | "
                 f"{table['settings']['wall_time_s']:.0f} (all) | - |")
    return lines


def _tabular_lines(t) -> list:
    """breast_cancer: scikit-learn baselines and structsel search."""
    fmt = _fmt
    lines = ["", f"Real tabular data: {t['dataset']} (split {t['split']}), test accuracy.",
             "", "| model | test acc. | params |", "|---|---|---|",
             f"| LogisticRegression (sklearn) | {t['logistic_regression']:.4f} | - |",
             f"| MLPClassifier(32) (sklearn) | {fmt(t['mlp_classifier'])} | - |"]
    for name in ("bayes", "darts1", "random"):
        if name in t and isinstance(t[name], dict):
            lines.append(f"| structsel search --method {name} | "
                         f"{fmt(t[name]['test_metric'])} | {fmt(t[name]['params'], 0)} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--space", default="mlp3", help="space of the enumeration table")
    p.add_argument("--dataset", default="digits", help="dataset of the enumeration table")
    p.add_argument("--budget", default=None,
                   help="budget preset and overrides (default: the dataset's, as for search)")
    p.add_argument("--methods", default=",".join(GRADIENT + ["random", "reinforce", "adanet",
                                                             "optuna"]))
    p.add_argument("--no-tabular", action="store_true")
    p.add_argument("--tabular-only", action="store_true", help="skip the space x dataset rows")
    p.add_argument("--tabular-methods", default="bayes,darts1,random")
    p.add_argument("--tabular-budget", default=None, help="budget of the tabular searches "
                   "(default: --budget)")
    p.add_argument("--tabular-seeds", type=int, default=None)
    p.add_argument("--cache", default=str(pathlib.Path.home() / ".cache/structsel/jax"),
                   help="persistent XLA compilation cache ('' to disable)")
    p.add_argument("--quick", action="store_true", help="tiny budget, 2 seeds, 3 methods")
    p.add_argument("--out", default="results/search_benchmark")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.budget, args.methods = 2, "tiny", "bayes,darts1,random"
    args.budget = args.budget or runner.default_budget(args.dataset)
    if args.cache:
        import jax
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    budget = runner.parse_budget(args.budget)
    table = enumeration.load_enumeration_table(args.space, args.dataset)
    if table is None:
        raise SystemExit(f"no enumeration table for {args.space} x {args.dataset}: run "
                         "structsel enumerate first")
    names = [n for n in args.methods.split(",") if n]
    if "optuna" in names:
        try:
            import optuna  # noqa: F401
        except ImportError:
            print("optuna not installed: skipping the TPE row")
            names.remove("optuna")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"seeds": args.seeds, "budget": dataclasses.asdict(budget), "table": table}

    def write():
        (out / "search_benchmark.json").write_text(json.dumps(
            {k: v for k, v in result.items() if k != "table"}, indent=1, default=str) + "\n")
        md = markdown(result)
        (out / "search_benchmark.md").write_text(md)
        return md

    if not args.tabular_only:
        result["methods"] = {}

        def on_row(rows):
            result["methods"] = dict(rows)
            write()
        result["methods"] = bench_methods(names, seeds=args.seeds, budget=budget, table=table,
                                          on_row=on_row)
    if not args.no_tabular:
        tb = runner.parse_budget(args.tabular_budget) if args.tabular_budget else budget
        result["tabular_budget"] = dataclasses.asdict(tb)
        result["tabular"] = bench_tabular(
            budget=tb, seeds=args.tabular_seeds or min(args.seeds, 3),
            names=[n for n in args.tabular_methods.split(",") if n])
    print(write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
