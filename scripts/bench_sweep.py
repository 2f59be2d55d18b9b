"""Sweep throughput (issue 12, section 5): one vmapped program against a loop of runs.

GLM toy: R runs (3 coefficient settings x 3 temperatures x seeds, cycled) trained for the
same number of outer steps either as ONE jitted program vmapped over the run axis (what
`structsel sweep glm_toy` runs for a static group) or as a Python loop over the R runs,
each a call of a separately jitted single-run program (compiled once; the loop's other
runs hit the jit cache). Small search: the supernet training of R seeds of a gradient
search, each on its own split, as one program vmapped over the runs and their data
(`GradientSearch.search_many`, what `structsel sweep search` runs for a setting) against
the R searches one after the other. Experiment (two_layer_digits): R runs (seed r, inner_lr
cycled over 1e-3 / 3e-3 / 1e-2) as one `run_many` group (one search and one retraining
program vmapped over runs x restarts, what `structsel sweep two_layer_digits` runs)
against the R runs one after the other; the compute only (`_experiment`: search,
retraining, accuracies; not the figures and files, which cost the same in both). Compile
time is reported apart
(AOT `lower().compile()` for the GLM, the first call for the search); run times are the
median of interleaved repeats (A B A B ...). With more than one device, the R = max GLM
sweep is also run sharded over 1, 2, ... devices (`--host-devices N` emulates N CPU
devices: on this 2-core machine 2 is the most that can show real parallelism).

    python scripts/bench_sweep.py [--quick | --tiny] [--host-devices N] [--out FILE]
"""
from __future__ import annotations

import os
import sys
import time

if not __package__:  # run as a file (python scripts/x.py), from any directory
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _host_devices(argv) -> None:
    """--host-devices N must reach XLA before jax is imported."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--host-devices" in argv:
        n = argv[argv.index("--host-devices") + 1]
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={n}").strip()


def _glm_rows(n: int, base: dict) -> tuple[list[dict], list[int]]:
    coefs = ((0.01, 1.0, 100.0), (1.0, 1.0, 1.0), (100.0, 1.0, 0.01))
    temps = (0.2, 1.0, 10.0)
    rows, seeds = [], []
    for i in range(n):
        (lq, pq, pl), t = coefs[i % 3], temps[(i // 3) % 3]
        rows.append(dict(base, lik_q=lq, prior_q=pq, prior_l=pl, temperature=t))
        seeds.append(i // 9)
    return rows, seeds


def bench_glm(sizes, *, iterations: int, chunk: int, fast_compile: bool, repeats: int,
              mesh_sizes=()) -> list[dict]:
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    import _bench
    from structsel.sweep import local_mesh
    from structsel.sweep_targets import GlmToy, glm_data, glm_program

    base = {k: key.default for k, key in GlmToy.keys.items()}
    base.update(iterations=iterations, chunk=chunk, warmup=iterations // 2,
                fast_compile=fast_compile)
    program = glm_program(iterations=iterations, warmup=iterations // 2, chunk=chunk,
                          num_samples=base["num_samples"], fast_compile=fast_compile)
    x, y = glm_data(base["num_objects"], base["noise"], base["data_seed"])

    def prepared(rows, seeds, mesh=None):
        traced = program.settings(rows)
        states = program.init(np.asarray(seeds), traced, x)
        args = (traced, x, y)
        if mesh is not None:
            runs = NamedSharding(mesh, PartitionSpec("runs"))
            states, traced = jax.device_put((states, traced), runs)
            args = (traced, *jax.device_put((x, y), NamedSharding(mesh, PartitionSpec())))
        return states, args

    def advance(fn, states, args):
        for _ in range(iterations // chunk):
            states, hist = fn(states, *args)
        return jax.block_until_ready((states, hist))

    single = program.chunk_for(None)
    one_states, one_args = prepared(*_glm_rows(1, base))
    _, compile_one = _bench.compile_seconds(single, one_states, *one_args)
    results = []
    for n in sizes:
        rows, seeds = _glm_rows(n, base)
        states, args = prepared(rows, seeds)
        _, compile_n = _bench.compile_seconds(single, states, *args)
        loop_inputs = [prepared([r], [s]) for r, s in zip(rows, seeds)]
        advance(single, states, args)                        # warm (dispatch caches)
        advance(single, *loop_inputs[0])

        def vmapped():
            return advance(single, states, args)

        def loop():
            return [advance(single, st, a) for st, a in loop_inputs]

        samples = _bench.interleaved({"vmapped": vmapped, "loop": loop}, repeats=repeats,
                                     target=0.0)
        sv, sl = _bench.median(samples["vmapped"]), _bench.median(samples["loop"])
        final_v = np.asarray(vmapped()[0].params["struct"][0])
        final_l = np.concatenate([np.asarray(o[0].params["struct"][0]) for o in loop()])
        results.append({"runs": n, "steps": iterations, "vmapped_s": sv, "loop_s": sl,
                        "ratio": _bench.ratio(sl, sv), "compile_vmapped_s": compile_n,
                        "compile_loop_s": compile_one,
                        "max_abs_diff_theta": float(np.max(np.abs(final_v - final_l)))})
        print(f"glm R={n}: vmapped {_bench.fmt_seconds(sv)}, loop {_bench.fmt_seconds(sl)}, "
              f"ratio {sl / sv:.1f}x (compile {compile_n:.1f} s / {compile_one:.1f} s)",
              flush=True)
    n = max(sizes)
    rows, seeds = _glm_rows(n, base)
    for d in mesh_sizes:
        mesh = local_mesh(d)
        fn = program.chunk_for(mesh)
        size = -(-n // d) * d
        st, a = prepared(rows + rows[-1:] * (size - n), seeds + seeds[-1:] * (size - n), mesh)
        _, comp = _bench.compile_seconds(fn, st, *a)
        advance(fn, st, a)
        s = _bench.interleaved({"sharded": lambda: advance(fn, st, a)}, repeats=repeats,
                               target=0.0)["sharded"]
        results.append({"runs": n, "devices": d, "sharded_s": _bench.median(s),
                        "compile_sharded_s": comp})
        print(f"glm R={n} on {d} device(s): {_bench.fmt_seconds(_bench.median(s))}", flush=True)
    return results


def _vmapped_vs_loop(sizes, many, loop, *, steps: int, label: str, repeats: int) -> list[dict]:
    """For each R in `sizes`: many(R) (one vmapped program) against loop(R) (R single
    runs), medians of interleaved repeats after a first call of each (its excess over a
    timed call is the compile time)."""
    import _bench

    results = []
    t0 = time.perf_counter()
    loop(1)
    first_one = time.perf_counter() - t0
    for n in sizes:
        t0 = time.perf_counter()
        many(n)
        first_n = time.perf_counter() - t0
        samples = _bench.interleaved({"vmapped": lambda: many(n), "loop": lambda: loop(n)},
                                     repeats=repeats, target=0.0, sync=lambda x: x)
        sv, sl = _bench.median(samples["vmapped"]), _bench.median(samples["loop"])
        results.append({"runs": n, "steps": steps, "vmapped_s": sv, "loop_s": sl,
                        "ratio": _bench.ratio(sl, sv),
                        "compile_vmapped_s": max(0.0, first_n - sv),
                        "compile_loop_s": max(0.0, first_one - sl / n)})
        print(f"{label} R={n}: vmapped {_bench.fmt_seconds(sv)}, loop {_bench.fmt_seconds(sl)}, "
              f"ratio {sl / sv:.1f}x", flush=True)
    return results


def bench_search(sizes, *, budget: str, repeats: int) -> list[dict]:
    """The seeds of a search setting as `structsel sweep search` runs them: R searches
    (darts1, mlp3 x digits, one restart each, seed r with its own split r) as ONE program
    vmapped over the runs and their data (`GradientSearch.search_many`), against the R
    searches one after the other (`search`, one compiled program reused)."""
    import jax

    from structsel.search import methods, runner

    b = runner.parse_budget(budget)
    problems = [runner.make_problem(runner.load_data(
        dataset="digits", data=None, target=None, task=None, split_seed=r, budget=b),
        "mlp3", b) for r in range(max(sizes))]
    method = methods.METHODS["darts1"]
    evaluator = runner.Evaluator(problems[0])
    keys = list(jax.random.split(runner.prng_key(0), max(sizes)))

    def many(n):
        return [o.gamma for o in method.search_many(problems[:n], keys=keys[:n], restarts=1,
                                                    jit=jax.jit)]

    def loop(n):
        return [method.search(problems[i], evaluator, key=keys[i], restarts=1,
                              jit=jax.jit).gamma for i in range(n)]

    return _vmapped_vs_loop(sizes, many, loop, steps=b.search_steps, label="search",
                            repeats=repeats)


def bench_experiment(sizes, *, overrides: dict, repeats: int) -> list[dict]:
    """two_layer_digits: R runs as ONE run_many group against a loop of R single runs."""
    import tempfile

    from experiments import two_layer_digits as tld
    from experiments.common import parse

    root = tempfile.mkdtemp(prefix="bench_sweep_experiment_")
    sets = [f"{k}={v}" for k, v in overrides.items()]
    parsed = [parse(tld.Config, ["--workdir", f"{root}/{r}", "--seed", str(r), "--set",
                                 f"inner_lr={(1e-3, 3e-3, 1e-2)[r % 3]}",
                                 *(a for kv in sets for a in ("--set", kv))],
                    name=tld.NAME, description="") for r in range(max(sizes))]
    configs, runs, args = ([p[i] for p in parsed] for i in range(3))

    def many(n):
        return tld._experiment(configs[:n], runs[:n], args[0])

    def loop(n):
        return [tld._experiment([configs[i]], [runs[i]], args[i])[0] for i in range(n)]

    return _vmapped_vs_loop(sizes, many, loop, steps=configs[0].outer_steps,
                            label="two_layer_digits", repeats=repeats)


def main(argv=None) -> dict:
    _host_devices(argv)
    import jax

    import _bench

    p = _bench.parser(__doc__.split("\n")[0])
    p.add_argument("--host-devices", type=int, default=None,
                   help="emulate N CPU devices (XLA flag) for the device scaling rows")
    p.add_argument("--only", choices=("glm", "search", "experiment"), default=None,
                   help="run one of the parts (each part of the full run takes minutes)")
    args = _bench.parse(p, argv)
    glm_sizes = _bench.pick(args, tiny=(1, 4), quick=(1, 128), full=(1, 8, 32, 128))
    search_sizes = _bench.pick(args, tiny=(2,), quick=(8,), full=(1, 8, 32, 128))
    steps, chunk = _bench.pick(args, tiny=(20, 10), quick=(100, 100), full=(1000, 100))
    repeats = _bench.pick(args, tiny=1, quick=2, full=3)
    budget = _bench.pick(args, tiny="tiny", quick="tiny,search_steps=10",
                         full="small,search_steps=60")
    experiment_sizes = _bench.pick(args, tiny=(2,), quick=(4,), full=(1, 4, 16))
    experiment = _bench.pick(args, tiny={"outer_steps": 4, "log_every": 2, "num_seeds": 2,
                                         "hidden": 4, "retrain_steps": 10},
                             quick={"outer_steps": 50, "retrain_steps": 200},
                             full={"outer_steps": 100, "retrain_steps": 500})
    ndev = len(jax.local_devices())
    glm, search, exp = [], [], []
    with _bench.on_device(args.device):
        if args.only in (None, "glm"):
            glm = bench_glm(glm_sizes, iterations=steps, chunk=chunk,
                            fast_compile=args.mode != "full", repeats=repeats,
                            mesh_sizes=[d for d in (1, 2, 4, 8) if d <= ndev]
                            if ndev > 1 else ())
        if args.only in (None, "search"):
            search = bench_search(search_sizes, budget=budget, repeats=repeats)
        if args.only in (None, "experiment"):
            exp = bench_experiment(experiment_sizes, overrides=experiment, repeats=repeats)
    columns = ["runs", "steps", "vmapped_s", "loop_s", "ratio", "compile_vmapped_s",
               "compile_loop_s"]
    print(_bench.table([r for r in glm if "ratio" in r], columns,
                       title="GLM toy: one vmapped program vs a loop of jitted runs"))
    print(_bench.table(search, columns, title="search (darts1, mlp3 x digits): R seeds in "
                                              "one vmapped program vs a loop of searches"))
    print(_bench.table(exp, columns, title="two_layer_digits: R runs as one run_many group vs "
                                           "a loop of runs"))
    scaling = [r for r in glm if "devices" in r]
    if scaling:
        print(_bench.table(scaling, ["runs", "devices", "sharded_s", "compile_sharded_s"],
                           title="GLM toy sweep sharded over devices"))
    result = {"benchmark": "bench_sweep", "mode": args.mode, "machine": _bench.machine(args.device),
              "glm": glm, "search": search, "search_budget": budget,
              "experiment": exp, "experiment_overrides": experiment,
              "fast_compile": args.mode != "full"}
    _bench.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
