"""Smoke tests of the benchmark scripts: each --tiny run finishes and writes its JSON.

Speed is never asserted here (benchmarks measure it); these tests check that every
script runs end to end at its smallest sizes and that its JSON carries the keys that
docs/performance.md and the README tables are built from, with sane values where the
value is determined by construction (iteration counts within bounds, implicit memory
not growing with the number of inner steps, relative errors of converged solves small).
"""
from __future__ import annotations

import importlib
import json
import math
import pathlib
import sys

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "scripts"


def _run(name: str, tmp_path) -> tuple[dict, dict]:
    """Imports scripts/<name>.py, runs main(--tiny --out FILE); returns (returned, read JSON)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        module = importlib.import_module(name)
        out = tmp_path / f"{name}.json"
        returned = module.main(["--tiny", "--out", str(out)])
    finally:
        sys.path.remove(str(SCRIPTS))
    return returned, json.loads(out.read_text())


def _check_machine(result: dict, benchmark: str) -> None:
    assert result["benchmark"] == benchmark and result["mode"] == "tiny"
    assert result["machine"]["device"] == "cpu" and result["machine"]["jax"]


def test_bench_common_flags():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import _bench
    finally:
        sys.path.remove(str(SCRIPTS))
    args = _bench.parse(_bench.parser("x"), ["--quick"])
    assert (args.mode, args.device, args.repeats) == ("quick", "cpu", 5)
    with pytest.raises(SystemExit):  # argparse error: --device must be cpu or gpu
        _bench.parse(_bench.parser("x"), ["--device", "tpu"])
    text = _bench.table([{"a": 1.23456, "b": "x"}], ["a", "b"])
    assert text.splitlines()[2] == "| 1.23 | x |"


def test_fit_line_recovers_slope():
    sys.path.insert(0, str(SCRIPTS))
    try:
        from bench_search import fit_line
    finally:
        sys.path.remove(str(SCRIPTS))
    fit = fit_line([1, 2, 3, 4], [3.0, 5.0, 7.0, 9.0])  # exact line 1 + 2 x
    assert math.isclose(fit["slope_s"], 2.0, rel_tol=1e-9)
    assert math.isclose(fit["intercept_s"], 1.0, rel_tol=1e-9) and math.isclose(fit["r2"], 1.0)


@pytest.mark.slow  # end to end, a script's subprocess, ~80 s cold: run with -m slow
def test_bench_hypergradient_tiny(tmp_path):
    returned, result = _run("bench_hypergradient", tmp_path)
    _check_machine(result, "hypergradient")
    # --tiny: ridge x {cg, neumann}, supernet x {cg}
    assert [(r["problem"].split()[0], r["method"]) for r in result["rows"]] == [
        ("ridge", "cg"), ("ridge", "neumann"), ("supernet", "cg")]
    for row in result["rows"]:
        for key in ("problem", "method", "k", "grad_s", "hvp_s", "c", "hypergradient_s",
                    "floor_s", "ratio", "rel_error", "compile_s"):
            assert key in row, key
        assert row["grad_s"] > 0 and row["hvp_s"] > 0 and row["floor_s"] > 0
        maxiter = 50 if row["problem"].startswith("ridge") else 20  # the --tiny settings
        assert 0 <= row["k"] <= (maxiter if row["method"] == "cg" else 50 * maxiter)
    ridge_cg = result["rows"][0]
    # ridge: float32 CG to relative residual 1e-4 on a well-conditioned 20x20 system;
    # 1e-3 leaves room for float32 rounding of the gradients against the float64 oracle.
    assert ridge_cg["method"] == "cg" and ridge_cg["rel_error"] < 1e-3
    dispatch = result["dispatch"]
    assert dispatch["cache_size_after_6_steps"] == 1  # one compiled step, no recompilation
    assert 0 < dispatch["trivial_step_s"] and 0 < dispatch["step_s"]
    assert returned["rows"][0]["k"] == ridge_cg["k"]


@pytest.mark.slow  # end to end, a script's subprocess, ~75 s cold: run with -m slow
def test_bench_memory_tiny(tmp_path):
    _, result = _run("bench_memory", tmp_path)
    _check_machine(result, "memory")
    assert {r["method"] for r in result["rows"]} == {"implicit_cg", "unrolled"}
    for row in result["rows"]:
        for key in ("problem", "steps", "temp_bytes", "peak_bytes", "compile_s"):
            assert key in row, key
        assert row.get("finite", True)
    growth = result["growth"]
    for name, g in growth.items():
        if name.endswith("implicit_cg"):  # the implicit program is the same for every T
            assert g["growth"] == pytest.approx(1.0, abs=0.05), name
    supernet_unrolled = [g for n, g in growth.items() if "supernet" in n and "unrolled" in n]
    assert supernet_unrolled and supernet_unrolled[0]["growth"] > 2  # stores every step


@pytest.mark.slow  # end to end, a script's subprocess, ~50 s cold: run with -m slow
def test_bench_search_tiny(tmp_path):
    _, result = _run("bench_search", tmp_path)
    _check_machine(result, "search")
    assert [d["dataset"] for d in result["datasets"]] == ["digits", "mnist1d"]
    for d in result["datasets"]:
        assert d["step_s"] > 0 and d["compile_s"] > 0
    digits = result["datasets"][0]  # --tiny compares vmap vs sequential on digits only
    for key in ("vmap_steps_per_s", "sequential_steps_per_s", "speedup"):
        assert digits[key] > 0, key
    assert digits["vmap_steps_per_s"] == pytest.approx(8 / digits["vmap_s"])
    assert set(result["scaling"]["fits"]) == {"per_edge", "per_op", "per_edge_op", "per_param"}
    for fit in result["scaling"]["fits"].values():
        assert set(fit) == {"slope_s", "intercept_s", "r2"}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_torch_tiny(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchopt")
    _, result = _run("bench_torch", tmp_path)
    _check_machine(result, "torch")
    hyper = [r for r in result["rows"] if r["what"] == "hyper"]
    assert {r["method"] for r in hyper} == {"cg", "neumann", "unrolled"}
    for r in hyper:
        # same algorithm, same iterations, float32 on both sides: the two answers agree
        # to float32 rounding amplified by the solver (1e-3 relative).
        assert abs(r["structsel_rel_error"] - r["torch_rel_error"]) < 1e-3
        assert r["structsel_s"] > 0 and r["torch_s"] > 0


@pytest.mark.slow  # end to end, a script's subprocess, ~90 s cold: run with -m slow
def test_bench_enumeration_tiny(tmp_path):
    _, result = _run("bench_enumeration", tmp_path)
    _check_machine(result, "enumeration")
    assert [(r["space"], r["dataset"]) for r in result["rows"]] == [("mlp3", "digits"),
                                                                   ("conv1d3", "mnist1d")]
    for r in result["rows"]:
        assert r["vmap_per_training_s"] > 0 and r["map_per_training_s"] > 0
        assert r["ratio_vmap_over_map"] == pytest.approx(
            r["vmap_per_training_s"] / r["map_per_training_s"], rel=1e-9)
        assert len(r["samples"]["vmap"]) == len(r["samples"]["map"]) == 3
    search = result["restarts"]
    assert search["restarts"] == 5 and search["outer_steps"] == 1
    assert search["ratio_vmap_over_map"] == pytest.approx(
        search["vmap_per_outer_step_s"] / search["map_per_outer_step_s"], rel=1e-9)


def test_blackbox_curves_tiny(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    try:
        module = importlib.import_module("blackbox_curves")
        out = tmp_path / "bb.json"
        module.main(["--tiny", "--tables", "mlp3:digits", "--cache", "", "--out", str(out)])
    finally:
        sys.path.remove(str(SCRIPTS))
    result = json.loads(out.read_text())
    res = result["tables"]["mlp3 x digits"]
    from structsel.search import enumeration
    table = enumeration.load_enumeration_table("mlp3", "digits")
    best = max(r["test_mean"] for r in table["rows"])
    by_val = max(table["rows"], key=lambda r: r["val_mean"])
    # the reference rows are the table's own numbers
    assert res["references"]["enumeration_by_val"]["regret"] == pytest.approx(best - by_val["test_mean"])
    assert res["references"]["uniform_guess"]["regret"] == pytest.approx(
        best - sum(r["test_mean"] for r in table["rows"]) / len(table["rows"]))
    for name in ("random", "reinforce"):
        for n in ("4", "8"):
            run = res["runs"][name][n]
            assert len(run["regret"]) == 2 and all(r >= 0 for r in run["regret"])
            assert run["queries"] == [int(n)] * 2  # every query answered by the table
    assert (tmp_path / "bb.md").read_text().count("| random |") == 1


def test_bench_sweep_experiment_part(tmp_path):
    # the two_layer_digits part: R = 2 runs as one run_many group and as a loop, both timed
    sys.path.insert(0, str(SCRIPTS))
    try:
        module = importlib.import_module("bench_sweep")
        out = tmp_path / "bench_sweep.json"
        module.main(["--tiny", "--only", "experiment", "--out", str(out)])
    finally:
        sys.path.remove(str(SCRIPTS))
    result = json.loads(out.read_text())
    _check_machine(result, "bench_sweep")
    assert result["glm"] == [] and result["search"] == []
    (row,) = result["experiment"]
    assert row["runs"] == 2 and row["steps"] == result["experiment_overrides"]["outer_steps"]
    assert row["vmapped_s"] > 0 and row["loop_s"] > 0
    assert math.isclose(row["ratio"], row["loop_s"] / row["vmapped_s"], rel_tol=1e-6)


def _table_benchmark():
    """scripts/table_benchmark.py imported as a module."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module("table_benchmark")
    finally:
        sys.path.remove(str(SCRIPTS))


def test_table_benchmark_level_only_breaks_ties_as_the_search_does(tmp_path):
    # one level's candidates tied on the ensemble's validation accuracy: the lower validation
    # loss wins (as selection.select); a candidate not beating the linear model gives the
    # linear model's test metric (the fallback)
    table_benchmark = _table_benchmark()

    def row(params, val, test, loss, level="outer"):
        return {"params": params, "ensemble_val": val, "ensemble_test": test,
                "ensemble_val_loss": loss, "proposed_by": [f"c=0.1 {level}"]}

    def write(candidates, linear_val):
        (tmp_path / "front.json").write_text(json.dumps(
            {"higher_is_better": True, "candidates": candidates}))
        (tmp_path / "summary.json").write_text(json.dumps(
            {"baselines": {"linear": {"val_metric": linear_val, "test_metric": 0.5}}}))

    write([row(10, 0.9, 0.7, 0.3), row(100, 0.9, 0.8, 0.2), row(5, 0.95, 0.6, 0.1, "inner")],
          0.8)
    assert table_benchmark.level_only(tmp_path, "outer") == 0.8
    assert table_benchmark.level_only(tmp_path, "inner") == 0.6
    write([row(10, 0.9, 0.7, 0.3), row(100, 0.9, 0.8, 0.2)], 0.9)
    assert table_benchmark.level_only(tmp_path, "outer") == 0.5


def test_table_benchmark_counts_the_runs_that_return_a_column_subset(tmp_path):
    table_benchmark = _table_benchmark()
    kept = table_benchmark._kept_columns
    assert kept({"features": {"proposed": [0, 1], "kept": [0, 1]}}, tmp_path) == [0, 1]
    assert kept({"features": {"proposed": [0, 1], "kept": "all"}}, tmp_path) is None
    # a linear fallback reads every column, whatever the screening kept for the selection
    assert kept({"features": {"proposed": [2], "kept": [2]}, "model": "linear"}, tmp_path) is None
    # a row written before the field existed: the run's summary.json says
    assert kept({}, tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({"features": {"kept": [3, 5]}}))
    assert kept({}, tmp_path) == [3, 5]
