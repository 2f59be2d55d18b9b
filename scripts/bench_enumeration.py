"""Throughput of from-scratch structure training: vmapped supernet vs lax.map + lax.switch.

`enumeration.train_structures` trains a batch of discrete structures (seeds vmapped) in
one of two ways: the supernet at each one-hot Gamma with `jax.vmap` over structures
(every op of every edge is computed and all but one weighted by 0), or `lax.map` over
structures with `Family.apply_vertex` (`lax.switch` runs only the chosen op). Both train
the same models (tests/test_enumeration.py); this script measures what each costs per
training of `train_steps` AdamW steps, on mlp3 x digits (budget `default`) and conv1d3 x
mnist1d (budget `mnist1d`), the settings of the committed enumeration tables, and prints
the ratio vmap / map (> 1: the switch path is faster), with the compile times. Then the
restarts of a gradient search (darts1, conv1d3 x mnist1d, 5 restarts): one vmapped
program against `lax.map` over the restarts (`Budget.batching`).

    python scripts/bench_enumeration.py [--quick] [--device cpu|gpu] [--out FILE]

`--quick` (about a minute on an idle 2-core CPU, nearly all of it compilation): 4
structures x 2 seeds x 20 steps on 1000 mnist1d samples, 2 repeats, no restarts table.
"""

from __future__ import annotations

if not __package__:  # run as a file (python scripts/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import _bench  # noqa: E402

CASES = (("mlp3", "digits", "default"), ("conv1d3", "mnist1d", "mnist1d"))


def measure(args, space_name: str, dataset: str, budget_name: str) -> dict:
    """Compile and time both strategies on the same structures, seeds and data."""
    import jax
    import jax.numpy as jnp

    from structsel.search import enumeration, runner

    structures, seeds, steps = _bench.pick(args, tiny=(2, 1, 5), quick=(4, 2, 20),
                                           full=(16, 3, 100))
    samples_n = _bench.pick(args, tiny=400, quick=1000, full=None)
    overrides = f",train_steps={steps}" + (f",mnist1d_samples={samples_n}" if samples_n else "")
    budget = runner.parse_budget(budget_name + overrides)
    ds = runner.load_data(dataset=dataset, data=None, target=None, task=None, split_seed=0,
                          budget=budget)
    problem = runner.make_problem(ds, space_name, budget)
    space, cfg = problem.space, budget.train
    rng = np.random.default_rng(0)
    all_choices = np.asarray(space.discrete.enumerate())
    choices = all_choices[rng.choice(len(all_choices), structures, replace=False)]
    keys = jax.random.split(runner.prng_key(0), seeds)
    fn = jax.jit(lambda s, k, d: enumeration.train_structures(space.family, problem.task, cfg,
                                                              s, d, keys=k))
    inputs = {"vmap": space.gamma(choices), "map": jnp.asarray(space.vertex(choices))}
    compiled, compile_s = {}, {}
    for name, s in inputs.items():
        compiled[name], compile_s[name] = _bench.compile_seconds(fn, s, keys, problem.data)
    samples = _bench.interleaved(
        {name: (lambda c=compiled[name], s=inputs[name]: c(s, keys, problem.data))
         for name in inputs}, repeats=args.repeats)
    trainings = structures * seeds
    t = {name: _bench.median(samples[name]) for name in inputs}
    return {"space": space_name, "dataset": dataset, "budget": budget_name,
            "structures": structures, "seeds": seeds, "train_steps": steps,
            "vmap_per_training_s": t["vmap"] / trainings, "map_per_training_s": t["map"] / trainings,
            "ratio_vmap_over_map": _bench.ratio(t["vmap"], t["map"]),
            "compile_vmap_s": compile_s["vmap"], "compile_map_s": compile_s["map"],
            "samples": samples}


def restarts(args) -> dict:
    """A darts1 search on conv1d3 x mnist1d, 5 restarts: `run_many` vmapped vs lax.map."""
    import jax

    from structsel.search import methods, runner

    steps, samples_n = _bench.pick(args, tiny=(1, 400), quick=None, full=(5, 4000))
    budget = runner.parse_budget(f"mnist1d,search_steps={steps},mnist1d_samples={samples_n}")
    ds = runner.load_data(dataset="mnist1d", data=None, target=None, task=None, split_seed=0,
                          budget=budget)
    problem = runner.make_problem(ds, "conv1d3", budget)
    obj, trainer, _ = methods.PROGRAMS.get(methods.METHODS["darts1"], problem.space, problem.task,
                                           budget, None,
                                           num_train=int(problem.data.x_train.shape[0]))
    d = problem.data
    train, val = (d.x_train, d.y_train), (d.x_val, d.y_val)
    states = trainer.init_many(lambda k: obj.init(k, d.x_train[:1]),
                               jax.random.split(runner.prng_key(0), 5))
    compiled, compile_s = {}, {}
    for mode in ("vmap", "map"):
        fn = jax.jit(lambda s, tr, va, mode=mode: trainer.run_many(s, tr, va, steps, batching=mode))
        compiled[mode], compile_s[mode] = _bench.compile_seconds(fn, states, train, val)
    samples = _bench.interleaved({m: (lambda c=compiled[m]: c(states, train, val))
                                  for m in compiled}, repeats=args.repeats)
    t = {m: _bench.median(samples[m]) for m in compiled}
    return {"restarts": 5, "outer_steps": steps, "train_rows": int(d.x_train.shape[0]),
            "vmap_per_outer_step_s": t["vmap"] / steps, "map_per_outer_step_s": t["map"] / steps,
            "ratio_vmap_over_map": _bench.ratio(t["vmap"], t["map"]),
            "compile_vmap_s": compile_s["vmap"], "compile_map_s": compile_s["map"],
            "samples": samples}


def main(argv=None) -> dict:
    args = _bench.parse(_bench.parser(__doc__.splitlines()[0]), argv)
    if "--repeats" not in (argv if argv is not None else sys.argv):
        # each sample is a whole batch of trainings (up to a minute); --quick: about a
        # minute in all on an idle 2-core CPU
        args.repeats = min(args.repeats, 2 if args.mode == "quick" else 3)
    with _bench.on_device(args.device):
        rows = [measure(args, *case) for case in CASES]
        # --quick skips the restarts table: its two conv1d3 search programs compile for
        # longer than everything else together (~2 min of a 2-core CPU)
        search = None if args.mode == "quick" else restarts(args)
        info = _bench.machine(args.device)
    s = _bench.fmt_seconds
    print(_bench.table([{**r, "vmap_per_training_s": s(r["vmap_per_training_s"]),
                         "map_per_training_s": s(r["map_per_training_s"]),
                         "compile_vmap_s": s(r["compile_vmap_s"]),
                         "compile_map_s": s(r["compile_map_s"])} for r in rows],
                       ["space", "dataset", "structures", "seeds", "train_steps",
                        "vmap_per_training_s", "map_per_training_s", "ratio_vmap_over_map",
                        "compile_vmap_s", "compile_map_s"],
                       title="one from-scratch training: vmapped supernet vs lax.map + switch"))
    if search is not None:
        print()
        print(_bench.table([{**search, "vmap_per_outer_step_s": s(search["vmap_per_outer_step_s"]),
                             "map_per_outer_step_s": s(search["map_per_outer_step_s"])}],
                           ["restarts", "outer_steps", "train_rows", "vmap_per_outer_step_s",
                            "map_per_outer_step_s", "ratio_vmap_over_map"],
                           title="darts1 search on conv1d3 x mnist1d: restarts vmapped vs "
                                 "lax.map"))
    result = {"benchmark": "enumeration", "mode": args.mode, "machine": info, "rows": rows,
              "restarts": search}
    _bench.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
