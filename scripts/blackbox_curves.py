"""Black-box baselines on the enumeration tables used as tabular benchmarks (docs/search.md).

Random search, REINFORCE (LSTM controller) and Optuna's TPE sampler are run as
`structsel search` runs them (`methods.METHODS[name].search`), but every query is
answered by `enumeration.TableLookup`: the stored validation accuracy of one of the
table's seeds, drawn per query, as NAS-Bench-201 does. So each method can be run with
many seeds and budgets at no training cost, and its regret (best mean test accuracy of
the table minus that of the selected structure) is measured against evaluations N.
Two reference rows come from the table itself: picking the structure with the best
mean validation accuracy of all 125 (full enumeration, 3 seeds each), and a uniformly
random structure (the expected regret of a guess).

    python scripts/blackbox_curves.py [--seeds 20] [--budgets 5,10,20,40,80]
        [--methods random,reinforce,optuna] [--out results/blackbox_curves]
        [--figure docs/figures/blackbox_regret.png]
    python scripts/blackbox_curves.py --tiny --out /tmp/bb.json   # smoke test

Writes JSON (every seed's regret) and prints a markdown table; --figure draws regret
against N, one panel per table, with the gradient methods of `search_benchmark.py` runs
as points at their equivalent compute (--overlay space:dataset=JSON, repeatable);
--replot redraws from the JSON of --out without running anything.
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

import jax
import numpy as np

from structsel.search import enumeration, methods, runner, spaces

TABLES = (("mlp3", "digits"), ("conv1d3", "mnist1d"))


def problem_of(table: dict, evaluations: int) -> runner.Problem:
    """A Problem with the table's space and a budget of `evaluations` (no data: lookups only)."""
    budget = dataclasses.replace(runner.parse_budget(table["settings"]["budget"]["name"]),
                                 evaluations=evaluations)
    space = spaces.build_space(table["space"], num_outputs=10, width=budget.width)
    return runner.Problem(space, None, None, budget, table["dataset"])


def run_method(name: str, table: dict, evaluations: int, seeds: int, *, seed: int = 0) -> dict:
    """`seeds` independent runs of black-box method `name` with N = `evaluations` queries."""
    problem = problem_of(table, evaluations)
    regrets, ranks, queries = [], [], []
    start = time.perf_counter()
    for s in range(seeds):
        lookup = enumeration.TableLookup(table)
        outcome = methods.METHODS[name].search(problem, lookup, restarts=1,
                                               key=runner.prng_key(seed * 100_003 + s))
        scored = enumeration.regret_and_rank(table, outcome.choices[0])
        regrets.append(scored["regret"])
        ranks.append(scored["rank"])
        queries.append(lookup.count)
    return {"regret": regrets, "rank": ranks, "queries": queries,
            "wall_time_s": time.perf_counter() - start}


def references(table: dict) -> dict:
    """Regret of the best-validation structure of the whole table, and of a random guess."""
    rows = table["rows"]
    best_test = max(r["test_mean"] for r in rows)
    by_val = max(rows, key=lambda r: r["val_mean"])
    return {"enumeration_by_val": {"regret": best_test - by_val["test_mean"],
                                   "ops": by_val["ops"],
                                   "rank": enumeration.regret_and_rank(table, by_val["choice"])["rank"]},
            "uniform_guess": {"regret": float(np.mean([best_test - r["test_mean"] for r in rows]))}}


def markdown(result: dict) -> str:
    lines = []
    for key, res in result["tables"].items():
        budgets = result["budgets"]
        lines += ["", f"{key}: regret (mean +- standard error over {result['seeds']} seeds) "
                  "against evaluations N (table lookups)", "",
                  "| method | " + " | ".join(f"N = {n}" for n in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for name in result["methods"]:
            cells = []
            for n in budgets:
                r = np.asarray(res["runs"][name][str(n)]["regret"])
                cells.append(f"{r.mean():.4f} +- {r.std(ddof=1) / np.sqrt(len(r)):.4f}"
                             if len(r) > 1 else f"{r.mean():.4f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        ref = res["references"]
        lines.append(f"| full enumeration, best mean val. ({ref['enumeration_by_val']['ops']}, "
                     f"rank {ref['enumeration_by_val']['rank']}) | "
                     + " | ".join(f"{ref['enumeration_by_val']['regret']:.4f}" for _ in budgets) + " |")
        lines.append("| a uniformly random structure | "
                     + " | ".join(f"{ref['uniform_guess']['regret']:.4f}" for _ in budgets) + " |")
    return "\n".join(lines) + "\n"


GRADIENT_MARKERS = {"bayes": "s", "darts1": "^", "darts2": "v", "gdas": "D", "drnas": "P",
                    "logitnormal": "X"}


def overlay_points(specs) -> dict:
    """{'space x dataset': {method: (evaluations, mean regret, s.e.)}} from search_benchmark JSONs."""
    points = {}
    for spec in specs or []:
        pair, _, path = spec.partition("=")
        space, dataset = pair.split(":")
        rows = json.loads(pathlib.Path(path).read_text())["methods"]
        points[f"{space} x {dataset}"] = {
            name: (row["num_evaluations"], row["regret"]["mean"],
                   float(np.std(row["regret"]["values"], ddof=1) / np.sqrt(len(row["regret"]["values"]))))
            for name, row in rows.items() if name in GRADIENT_MARKERS and "regret" in row}
    return points


def figure(result: dict, path, points=None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result["tables"])
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.8), squeeze=False)
    budgets = np.asarray(result["budgets"])
    for ax, key in zip(axes[0], keys):
        res = result["tables"][key]
        for name in result["methods"]:
            r = [np.asarray(res["runs"][name][str(n)]["regret"]) for n in budgets]
            mean = np.array([v.mean() for v in r])
            sem = np.array([v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0 for v in r])
            ax.errorbar(budgets, mean, yerr=sem, marker="o", capsize=3, label=name)
        ref = res["references"]
        for i, (name, (n, mean, sem)) in enumerate((points or {}).get(key, {}).items()):
            jitter = 2.0 ** (0.05 * (i - 2.5))  # side by side, not on top of each other
            ax.errorbar([n * jitter], [mean], yerr=[sem], marker=GRADIENT_MARKERS[name], ls="none",
                        capsize=3, color="k", mfc="white", label=f"{name} (gradient)")
        ax.axhline(ref["enumeration_by_val"]["regret"], color="k", ls="--", lw=1,
                   label="full enumeration (best val.)")
        ax.axhline(ref["uniform_guess"]["regret"], color="gray", ls=":", lw=1,
                   label="random guess")
        ax.set_xscale("log", base=2)
        ticks = sorted(set(budgets) | {p[0] for p in (points or {}).get(key, {}).values()})
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("evaluations N (trainings from scratch)")
        ax.set_ylabel("regret (test accuracy)")
        ax.set_title(key, fontsize=10)
    axes[0, -1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--budgets", default="5,10,20,40,80")
    p.add_argument("--methods", default="random,reinforce,optuna")
    p.add_argument("--tables", default=",".join(f"{s}:{d}" for s, d in TABLES),
                   help="space:dataset pairs with a committed table")
    p.add_argument("--cache", default=str(pathlib.Path.home() / ".cache/structsel/jax"),
                   help="persistent XLA compilation cache ('' to disable)")
    p.add_argument("--tiny", action="store_true", help="2 seeds, budgets 4,8, random + reinforce")
    p.add_argument("--out", default="results/blackbox_curves/blackbox_curves.json")
    p.add_argument("--figure", default=None)
    p.add_argument("--overlay", action="append", default=[],
                   help="space:dataset=search_benchmark.json: gradient methods as points")
    p.add_argument("--replot", action="store_true", help="only redraw --figure from --out")
    args = p.parse_args(argv)
    if args.replot:
        figure(json.loads(pathlib.Path(args.out).read_text()), args.figure,
               overlay_points(args.overlay))
        return 0
    if args.tiny:
        args.seeds, args.budgets, args.methods = 2, "4,8", "random,reinforce"
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
    names = [n for n in args.methods.split(",") if n]
    for n in names:
        if n not in ("random", "reinforce", "optuna"):
            raise SystemExit(f"--methods: each must be one of random, reinforce, optuna; got {n!r}")
    if "optuna" in names:
        methods.METHODS["optuna"].check(relaxation=None, space="")  # clear error if missing
    budgets = [int(b) for b in args.budgets.split(",")]
    result = {"benchmark": "blackbox_curves", "seeds": args.seeds, "budgets": budgets,
              "methods": names, "tables": {}}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for pair in args.tables.split(","):
        space, dataset = pair.split(":")
        table = enumeration.load_enumeration_table(space, dataset)
        if table is None:
            raise SystemExit(f"no enumeration table for {space} x {dataset}")
        res = {"references": references(table), "runs": {}}
        result["tables"][f"{space} x {dataset}"] = res
        for name in names:
            res["runs"][name] = {}
            for n in budgets:
                res["runs"][name][str(n)] = run_method(name, table, n, args.seeds)
                r = res["runs"][name][str(n)]
                print(f"{space} x {dataset} {name:9s} N={n:3d}: regret "
                      f"{np.mean(r['regret']):.4f} ({r['wall_time_s']:.1f} s)", flush=True)
                out.write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)
    if args.figure:
        figure(result, args.figure, overlay_points(args.overlay))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
