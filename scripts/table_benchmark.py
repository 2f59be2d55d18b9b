"""The default `structsel search` on tables against scikit-learn on the same splits (issue 11).

For every dataset and split seed: the default search (space, budget and method as a user
gets them, through `runner.search_config` + `runner.run_search`) and LogisticRegression /
Ridge, MLPClassifier / MLPRegressor(64) and HistGradientBoosting fitted on exactly the
arrays of the loaded `Dataset` (scikit-learn fits on the training rows; structsel also
uses the validation rows, for selection and early stopping). Test accuracy, or test RMSE
in the target's units for regression.

Run it in pieces (one dataset per process), then merge:

    python scripts/table_benchmark.py --dataset wine            # results/tables/piece_wine.json
    python scripts/table_benchmark.py --timing                  # 3000 x 60, cold and warm cache
    python scripts/table_benchmark.py --report                  # markdown + JSON (+ docs/tables.md)

Every piece runs in a fresh process with an empty persistent compilation cache, so the
first split seed's search is "cold"; the later seeds reuse the compiled programs of the
process ("warm"). `--timing` measures the default search on a synthetic 3000 x 60 table
in two fresh processes: with an empty cache (cold) and with the cache the first filled.

Goal (issue 11): mean accuracy within 0.5 points of the best scikit-learn model on each
classification set, RMSE within 3 % on regression, and never below the linear model by
more than the seed noise (here: the larger of the two methods' std over split seeds).
"""
from __future__ import annotations

if not __package__:  # run as a file (python scripts/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

OUT = pathlib.Path("results/tables")
SPLIT_SEEDS = (0, 1, 2)
BUNDLED = ("breast_cancer", "wine", "digits", "diabetes")
GENERATED = ("mnist1d_table", "synth_linear", "synth_interaction")
DATASETS = BUNDLED + GENERATED
SKLEARN = ("linear", "mlp64", "hgb")


# --- data ---------------------------------------------------------------------------------

def generated_table(name: str, out: pathlib.Path) -> pathlib.Path:
    """Writes (once) the .npz of a generated table and returns its path.

    mnist1d_table: the 4000 mnist1d sequences (40 steps) as 40 features, 10 classes.
    synth_linear: 3000 x 20, y ~ Bernoulli(sigmoid(x^T b)) with 10 informative features:
      the Bayes classifier is linear, so the linear model is the right structure.
    synth_interaction: 3000 x 20, y = [x_0 x_1 + sin(2 x_2) + 0.5 x_3 + 0.3 e > 0]: an
      interaction and a nonlinearity on 4 of 20 features, the rest noise.
    """
    path = out / "data" / f"{name}.npz"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    if name == "mnist1d_table":
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = 4000
        d = make_dataset(args)
        x, y = np.concatenate([d["x"], d["x_test"]]), np.concatenate([d["y"], d["y_test"]])
    elif name == "synth_linear":
        x = rng.normal(size=(3000, 20))
        b = np.concatenate([rng.normal(size=10), np.zeros(10)])
        y = (rng.random(3000) < 1 / (1 + np.exp(-x @ b))).astype(np.int64)
    elif name == "synth_interaction":
        x = rng.normal(size=(3000, 20))
        z = x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + 0.5 * x[:, 3] + 0.3 * rng.normal(size=3000)
        y = (z > 0).astype(np.int64)
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def search_args(name: str, out: pathlib.Path) -> dict:
    """search_config arguments of a dataset: a bundled name, a generated table, or the path
    of a user's CSV / npz file (`--data`, a table outside the repository)."""
    if name in BUNDLED:
        return {"dataset": name}
    if name in GENERATED:
        return {"data": str(generated_table(name, out))}
    return {"data": name}


# --- scikit-learn on the same split -------------------------------------------------------

def sklearn_scores(ds, seed: int) -> dict:
    """{model: {"val", "test", "time_s"}} for the three scikit-learn models on `ds`."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    cls = ds.task == "classification"
    models = {"linear": LogisticRegression(max_iter=5000) if cls else Ridge(),
              "mlp64": (MLPClassifier if cls else MLPRegressor)(hidden_layer_sizes=(64,),
                                                                random_state=seed,
                                                                max_iter=500),
              "hgb": (HistGradientBoostingClassifier if cls else
                      HistGradientBoostingRegressor)(random_state=seed)}
    from threadpoolctl import threadpool_limits

    flat = lambda a: np.asarray(a).reshape(len(a), -1)  # noqa: E731
    out = {}
    for name, model in models.items():
        start = time.perf_counter()
        # one BLAS / OpenMP thread: on the shared 2-core machine, next to XLA's threads,
        # multithreaded BLAS made LogisticRegression on mnist1d take minutes
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")  # MLP convergence warnings at max_iter
            model.fit(flat(ds.x_train), ds.y_train)
        scores = {}
        for split, x, y in (("val", ds.x_val, ds.y_val), ("test", ds.x_test, ds.y_test)):
            pred = model.predict(flat(x))
            scores[split] = (float(np.mean(pred == y)) if cls else
                             float(ds.target_scale[1] * np.sqrt(np.mean((pred - y) ** 2))))
        out[name] = {**scores, "time_s": time.perf_counter() - start}
    return out


# --- one piece: a dataset x split seeds ---------------------------------------------------

def run_piece(name: str, out: pathlib.Path, seeds=SPLIT_SEEDS, method: str | None = None,
              target: str | None = None, budget: str | None = None,
              cache: str | None = None) -> dict:
    """`cache`: a persistent compilation cache shared between pieces (their first search
    is then warm too, when an earlier piece compiled the same shapes); default: an empty
    one (the first search is cold)."""
    import jax

    shared = cache is not None
    cache = cache or tempfile.mkdtemp(prefix="structsel_cold_cache_")
    jax.config.update("jax_compilation_cache_dir", cache)  # empty: the first search is cold
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from structsel.search import runner

    rows = []
    label = name if name in DATASETS else pathlib.Path(name).stem
    for i, seed in enumerate(seeds):
        kwargs = search_args(name, out)
        extra = {"method": method} if method else {}
        if budget:
            extra["budget"] = budget
        config = runner.search_config(**kwargs, seed=seed, split_seed=seed,
                                      workdir=str(out / "runs" / f"{label}_{seed}"), **extra)
        ds = runner.load_data(dataset=config.dataset, data=config.data, target=target,
                              task=None, split_seed=seed, budget=config.budget)
        start = time.perf_counter()
        summary = runner.run_search(config, progress=False, dataset=ds)
        wall = time.perf_counter() - start
        row = {"split_seed": seed, "cache": ("shared cache" if shared else
                                             "cold" if i == 0 else "warm (same process)"),
               "wall_time_s": wall, "search_time_s": summary.get("search_time_s"),
               "space": summary["space"], "method": summary["method"],
               "budget": summary["budget"]["name"], "selected": summary["selected"],
               "model": summary.get("model"), "params": summary["params"],
               "val": summary["val_metric"], "test": summary["test_metric"],
               "fallback": summary.get("fallback"), "warnings": summary.get("warnings"),
               "versus_linear": summary.get("versus_linear"),
               "ensemble": summary.get("ensemble"),
               "features": ({k: summary["features"][k] for k in ("proposed", "kept")}
                            if summary.get("features") else None),
               "regret": summary.get("regret"), "rank": summary.get("rank"),
               "metric": summary["metric"], "n": int(len(ds.y_train) + len(ds.y_val)
                                                     + len(ds.y_test)),
               "d": int(np.prod(ds.x_train.shape[1:])), "task": ds.task,
               "sklearn": sklearn_scores(ds, seed)}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("split_seed", "wall_time_s", "selected",
                                                "model", "test")}), flush=True)
        print("  sklearn:", {k: round(v["test"], 4) for k, v in row["sklearn"].items()},
              flush=True)
    piece = {"dataset": label, "rows": rows, "jax": jax.__version__,
             "conditions": machine_conditions()}
    path = out / f"piece_{label}.json"
    path.write_text(json.dumps(piece, indent=1) + "\n")
    print(f"wrote {path}")
    return piece


def machine_conditions() -> dict:
    """CPU count and load average when the piece finished (the machine is shared)."""
    import os
    return {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg())}


# --- timing on 3000 x 60 ------------------------------------------------------------------

def synthetic_3000x60(out: pathlib.Path) -> pathlib.Path:
    path = out / "data" / "timing_3000x60.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(60)
        x = rng.normal(size=(3000, 60))
        y = (np.tanh(x[:, :8]) @ rng.normal(size=8) + 0.5 * rng.normal(size=3000) > 0)
        np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))
    return path


def time_one(data: str, cache: str, workdir: str, budget: str | None = None) -> None:
    """(subprocess) one default search on `data` with the persistent cache `cache`
    (`budget`: an ablation of the default's budget)."""
    import jax
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from structsel.search import runner

    start = time.perf_counter()
    config = runner.search_config(data=data, workdir=workdir, budget=budget)  # None: default
    summary = runner.run_search(config, progress=False)
    print(json.dumps({"wall_time_s": time.perf_counter() - start, "space": summary["space"],
                      "budget": summary["budget"]["name"], "method": summary["method"],
                      "test": summary["test_metric"], "model": summary.get("model")}))


def run_timing(out: pathlib.Path, budget: str | None = None) -> dict:
    data = synthetic_3000x60(out)
    cache = tempfile.mkdtemp(prefix="structsel_timing_cache_")
    result = {}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--time-one", str(data), "--cache", cache,
                               "--workdir", str(out / "runs" / f"timing_{label}")]
                              + (["--budget", budget] if budget else []),
                              capture_output=True, text=True, check=True)
        inner = json.loads(proc.stdout.strip().splitlines()[-1])
        result[label] = {**inner, "process_s": time.perf_counter() - start}
        print(label, result[label], flush=True)
    result["conditions"] = machine_conditions()
    result["budget_arg"] = budget
    (out / "timing_3000x60.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# --- report -------------------------------------------------------------------------------

def _ms(values, scale=1.0):
    v = np.asarray(values, float) * scale
    return float(v.mean()), float(v.std())


def level_only(workdir: pathlib.Path, level: str) -> float | None:
    """Test metric the default would have returned with q(Gamma) at one structure `level`
    ("inner" / "outer") only: the two levels run as separate programs with the same keys and
    every candidate is retrained with the same keys, so this is the candidate of that level
    with the best ensemble validation metric (ties as `selection.select` breaks them), or the
    linear model when it does not beat the linear model on validation (the fallback rule).
    The feature screening after the selection is not replayed: a level's candidate is
    scored on all columns."""
    from structsel.search.selection import one_se_choice

    front_path, summary_path = workdir / "front.json", workdir / "summary.json"
    if not (front_path.is_file() and summary_path.is_file()):
        return None
    front, summary = json.loads(front_path.read_text()), json.loads(summary_path.read_text())
    sign = 1.0 if front["higher_is_better"] else -1.0
    rows = [r for r in front["candidates"] if "ensemble_val" in r
            and any(label.endswith(" " + level) for label in r["proposed_by"])]
    if not rows:
        return None
    losses = [r.get("ensemble_val_loss") for r in rows]
    best = rows[one_se_choice([[r["ensemble_val"]] for r in rows], [r["params"] for r in rows],
                              higher_is_better=front["higher_is_better"], rule="best",
                              loss=None if None in losses else losses)[0]]
    linear = summary["baselines"]["linear"]
    if not sign * best["ensemble_val"] > sign * linear["val_metric"]:
        return float(linear["test_metric"])
    return float(best["ensemble_test"])


def _kept_columns(row: dict, workdir: pathlib.Path) -> list | None:
    """The columns a run's returned model reads when the feature screening kept a subset
    (None: all columns, or a linear fallback); rows of pieces written before the field
    existed read it from the run's summary.json."""
    fs = row.get("features")
    if fs is None and (workdir / "summary.json").is_file():
        fs = json.loads((workdir / "summary.json").read_text()).get("features")
    if not fs or fs.get("kept") in (None, "all") or row.get("model") == "linear":
        return None
    return list(fs["kept"])


def summarise(piece: dict, out: pathlib.Path = OUT) -> dict:
    rows = piece["rows"]
    cls = rows[0]["task"] == "classification"
    scale = 100.0 if cls else 1.0
    res = {"dataset": piece["dataset"], "task": rows[0]["task"], "n": rows[0]["n"],
           "d": rows[0]["d"], "metric": "accuracy %" if cls else "RMSE",
           "seeds": len(rows), "structsel": _ms([r["test"] for r in rows], scale)}
    for m in SKLEARN:
        res[m] = _ms([r["sklearn"][m]["test"] for r in rows], scale)
    best = max(SKLEARN, key=lambda m: res[m][0]) if cls else min(SKLEARN, key=lambda m: res[m][0])
    res["best_sklearn"] = best
    ours, ref, lin = res["structsel"][0], res[best][0], res["linear"]
    noise = max(res["structsel"][1], lin[1])
    if cls:
        res["gap"] = ours - ref                      # accuracy points, < 0: worse
        res["within_goal"] = ours >= ref - 0.5
        res["below_linear"] = ours < lin[0] - noise
    else:
        res["gap"] = 100.0 * (ours - ref) / ref      # % RMSE, > 0: worse
        res["within_goal"] = ours <= 1.03 * ref
        res["below_linear"] = ours > lin[0] + noise
    res["wall_cold_s"] = rows[0]["wall_time_s"]
    res["wall_warm_s"] = float(np.mean([r["wall_time_s"] for r in rows[1:]])) if len(rows) > 1 else None
    res["selected"] = [",".join(r["selected"].values()) if isinstance(r["selected"], dict)
                       else str(r["selected"]) for r in rows]
    res["fallbacks"] = sum(r.get("model") == "linear" for r in rows)
    kept = [_kept_columns(r, out / "runs" / f"{piece['dataset']}_{r['split_seed']}")
            for r in rows]
    res["screened"] = sum(k is not None for k in kept)  # runs returning a column subset
    res["selected"] = [s + (f" (columns {','.join(map(str, k))})" if k is not None else "")
                       for s, k in zip(res["selected"], kept)]
    if all(r.get("ensemble") for r in rows):  # the single models inside the ensembles
        res["single"] = _ms([r["ensemble"]["test_metric_single"] for r in rows], scale)
    for level in ("inner", "outer"):
        only = [level_only(out / "runs" / f"{piece['dataset']}_{r['split_seed']}", level)
                for r in rows]
        if None not in only:
            res[f"{level}_only"] = _ms(only, scale)
    res["method"], res["space"], res["budget"] = rows[0]["method"], rows[0]["space"], rows[0]["budget"]
    res["conditions"] = piece.get("conditions")
    return res


def _f(ms) -> str:
    return f"{ms[0]:.2f} ± {ms[1]:.2f}"


def result_rows(results: list[dict]) -> list[str]:
    """The markdown table of `summarise` results against scikit-learn."""
    f = _f
    lines = ["| dataset | n x d | metric | structsel | linear | MLP(64) | HistGB | gap to best | "
             "goal | below linear? | linear fallbacks | column subsets | wall s (cold / warm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        gap = f"{r['gap']:+.2f} pt" if r["task"] == "classification" else f"{r['gap']:+.1f} %"
        warm = f"{r['wall_warm_s']:.0f}" if r["wall_warm_s"] is not None else "-"
        lines.append(f"| {r['dataset']} | {r['n']} x {r['d']} | {r['metric']} | "
                     f"{f(r['structsel'])} | {f(r['linear'])} | {f(r['mlp64'])} | {f(r['hgb'])} | "
                     f"{gap} ({r['best_sklearn']}) | {'met' if r['within_goal'] else 'NOT met'} | "
                     f"{'yes' if r['below_linear'] else 'no'} | {r['fallbacks']}/{r['seeds']} | "
                     f"{r.get('screened', 0)}/{r['seeds']} | "
                     f"{r['wall_cold_s']:.0f} / {warm} |")
    return lines


def markdown(results: list[dict], timing: dict | None, outside: list[dict] = ()) -> str:
    f = _f
    lines = result_rows(results)
    if outside:
        lines += ["", "Tables that are not among the seven (the default was not tuned on them; "
                      "`--data FILE`, split seeds as stated):", ""] + result_rows(list(outside))
    results = list(results) + list(outside)
    if any("single" in r or "outer_only" in r for r in results):
        lines += ["", "What the ensemble and the two structure levels contribute (same runs; "
                      "'single': the mean of the single retrained models inside the returned "
                      "ensemble; 'inner only' / 'outer only': what the default would have "
                      "returned with q(Gamma) at that level alone, `level_only`):", "",
                  "| dataset | structsel | single model | inner only | outer only |",
                  "|---|---|---|---|---|"]
        dash = lambda r, k: f(r[k]) if k in r else "-"  # noqa: E731
        for r in results:
            lines.append(f"| {r['dataset']} | {f(r['structsel'])} | {dash(r, 'single')} | "
                         f"{dash(r, 'inner_only')} | {dash(r, 'outer_only')} |")
    lines.append("")
    lines.append("Selected structures (blocks 0->1, 1->2, 2->3) per split seed:")
    lines.append("")
    for r in results:
        lines.append(f"- {r['dataset']} ({r['method']}, space {r['space']}, budget "
                     f"{r['budget']}): " + "; ".join(r["selected"]))
    if timing:
        lines += ["", f"Default search on a synthetic 3000 x 60 table: cold cache "
                      f"{timing['cold']['wall_time_s']:.1f} s (process {timing['cold']['process_s']:.1f} s), "
                      f"warm cache {timing['warm']['wall_time_s']:.1f} s (process "
                      f"{timing['warm']['process_s']:.1f} s); load average at the end "
                      f"{timing['conditions']['loadavg'][0]:.1f} on {timing['conditions']['cpus']} CPUs."]
    return "\n".join(lines) + "\n"


def run_report(out: pathlib.Path, docs: pathlib.Path | None) -> str:
    results = [summarise(json.loads((out / f"piece_{n}.json").read_text()), out)
               for n in DATASETS if (out / f"piece_{n}.json").is_file()]
    outside = [summarise(json.loads(p.read_text()), out)
               for p in sorted(out.glob("piece_*.json"))
               if p.stem.removeprefix("piece_") not in DATASETS]
    timing_path = out / "timing_3000x60.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    text = markdown(results, timing, outside)
    (out / "benchmark.md").write_text(text)
    (out / "benchmark.json").write_text(json.dumps({"results": results, "outside": outside,
                                                    "timing": timing}, indent=1) + "\n")
    if docs is not None:
        docs.write_text(docs.read_text().split("<!-- table -->")[0] + "<!-- table -->\n\n" + text
                        if docs.is_file() else text)
    print(text)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=DATASETS, help="run one piece")
    p.add_argument("--data", help="run one piece on a CSV / npz file (a table outside the "
                                  "repository; reported apart from the seven)")
    p.add_argument("--target", help="the target column of --data (default: the last)")
    p.add_argument("--seeds", default=",".join(map(str, SPLIT_SEEDS)))
    p.add_argument("--method", default=None, help="search method (default: the default)")
    p.add_argument("--budget", default=None,
                   help="budget preset and overrides (default: the default; an ablation)")
    p.add_argument("--timing", action="store_true", help="3000 x 60 cold / warm timing")
    p.add_argument("--report", action="store_true", help="merge the pieces")
    p.add_argument("--docs", default="docs/tables.md", help="markdown file to update ('' none)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--shared-cache", default=None,
                   help="a compilation cache directory shared by pieces (default: an empty "
                        "one per piece, so that its first search is cold)")
    p.add_argument("--time-one", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from structsel import devices
    devices.use_cpu_cores()  # as the CLI does: one CPU device per core
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.time_one:
        return time_one(args.time_one, args.cache, args.workdir, args.budget)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.dataset:
        run_piece(args.dataset, out, seeds, args.method, budget=args.budget,
                  cache=args.shared_cache)
    if args.data:
        run_piece(args.data, out, seeds, args.method, target=args.target, budget=args.budget,
                  cache=args.shared_cache)
    if args.timing:
        run_timing(out, args.budget)
    if args.report:
        run_report(out, pathlib.Path(args.docs) if args.docs else None)


if __name__ == "__main__":
    main()
