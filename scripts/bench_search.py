"""Search throughput of the DARTS-style supernet (issue 6, benchmark 4).

One outer step of `structsel.bilevel.BilevelTrainer` (one inner SGD step on w, then the
DARTS second-order hypergradient and an Adam step on the architecture logits) on a
DARTS-style MLP cell: the per-step time on digits and on mnist1d; the throughput of 8
seeds run as one `jax.vmap`-ed step against 8 sequential jitted steps; and how the step
time scales with the number of searchable edges and of candidate ops per edge (least
squares line t = a + b x with its slope b and R^2).

    python scripts/bench_search.py [--quick] [--device cpu|gpu] [--out FILE]
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

SEEDS = 8


def trainer_for(net: "_bench.Supernet", *, method: str = "darts"):
    """A BilevelTrainer for DARTS on `net`: inner CE + 3e-4 L2 by SGD, outer val CE by Adam."""
    import optax

    from structsel.bilevel import BilevelTrainer

    inner, outer = net.inner(3e-4), net.outer()
    options = {"darts": {"xi": 0.05}, "greedy": {},
               "cg": {"maxiter": 10, "tol": 1e-3, "ridge": 1e-2}}[method]
    return BilevelTrainer(inner_loss=lambda w, a, batch, ctx: inner(w, a, *batch),
                          outer_loss=lambda w, a, batch, ctx: outer(w, a, *batch),
                          inner_opt=optax.sgd(0.05), outer_opt=optax.adam(3e-3),
                          inner_steps=1, hypergradient_method=method,
                          hypergradient_options=options)


_STEPS: dict = {}


def compiled_step(net: "_bench.Supernet", key: tuple):
    """(trainer, state, compiled step, compile seconds), memoised per configuration `key`.

    `key` ends with the hypergradient method ("darts"; "greedy" for --tiny, which only
    checks that the script runs: it compiles in a fraction of the time).
    """
    import jax

    method = key[-1]
    if key not in _STEPS:
        trainer = trainer_for(net, method=method)
        state = trainer.init(net.weights, net.alphas, key=jax.random.key(0))
        compiled, seconds = _bench.compile_seconds(jax.jit(trainer.step), state, net.train,
                                                   net.val)
        _STEPS[key] = (trainer, state, compiled, seconds)
    return _STEPS[key]


def step_time(args, net, key: tuple) -> dict:
    """Compile time and median time of one jitted outer step."""
    _, state, compiled, compile_s = compiled_step(net, key)
    samples = _bench.interleaved({"step": lambda: compiled(state, net.train, net.val)},
                                 repeats=args.repeats)
    return {"compile_s": compile_s, "step_s": _bench.median(samples["step"]),
            "samples": samples["step"]}


def vmap_vs_sequential(args, net, key: tuple) -> dict:
    """Steps per second: one vmapped step over 8 seeds vs 8 sequential jitted steps (interleaved)."""
    import jax

    trainer, _, single, c_seq = compiled_step(net, key)
    keys = jax.random.split(jax.random.key(0), SEEDS)
    init = lambda key: (net.family.init(key, net.train[0]), net.alphas)
    states = jax.jit(lambda keys: trainer.init_many(init, keys))(keys)
    singles = [jax.tree.map(lambda a, i=i: a[i], states) for i in range(SEEDS)]
    batched, c_vmap = _bench.compile_seconds(
        jax.jit(jax.vmap(trainer.step, in_axes=(0, None, None))), states, net.train, net.val)

    def sequential():
        return [single(s, net.train, net.val) for s in singles]

    samples = _bench.interleaved({"vmap": lambda: batched(states, net.train, net.val),
                                  "sequential": sequential}, repeats=args.repeats)
    t_v, t_s = _bench.median(samples["vmap"]), _bench.median(samples["sequential"])
    return {"seeds": SEEDS, "vmap_s": t_v, "sequential_s": t_s,
            "vmap_steps_per_s": SEEDS / t_v, "sequential_steps_per_s": SEEDS / t_s,
            "speedup": _bench.ratio(t_s, t_v), "compile_vmap_s": c_vmap,
            "compile_sequential_s": c_seq}


def fit_line(x, y) -> dict:
    """Least squares t = a + b x; slope b, intercept a and R^2."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    total = ((y - y.mean()) ** 2).sum()
    return {"slope_s": float(b), "intercept_s": float(a),
            "r2": float(1 - (resid ** 2).sum() / total) if total > 0 else float("nan")}


def scaling(args, *, hidden: int, nodes_grid, ops_grid, fixed_nodes: int, max_train,
            method: str) -> dict:
    """Step time over a grid of cells: vs searchable edges (5 ops) and vs ops (fixed nodes).

    All cells are compiled first, then timed round-robin (one sample of each in turn), so
    that a change of load on a shared machine hits every cell alike.
    """
    grid = [("edges", nodes, 5) for nodes in nodes_grid]
    grid += [("ops", fixed_nodes, ops) for ops in ops_grid]
    rows, fns = [], {}
    for i, (sweep, nodes, ops) in enumerate(grid):
        net = _bench.Supernet(dataset="digits", hidden=hidden, nodes=nodes, num_ops=ops,
                              max_train=max_train)
        _, state, compiled, compile_s = compiled_step(
            net, ("digits", hidden, nodes, ops, max_train, method))
        fns[i] = lambda c=compiled, s=state, n=net: c(s, n.train, n.val)
        rows.append({"sweep": sweep, "nodes": nodes, "edges": net.num_edges, "ops": ops,
                     "params": net.num_params, "compile_s": compile_s})
    samples = _bench.interleaved(fns, repeats=args.repeats)
    for i, row in enumerate(rows):
        row.update(step_s=_bench.median(samples[i]), samples=samples[i])
    by = lambda sweep, col: [(r[col], r["step_s"]) for r in rows if r["sweep"] == sweep]
    fits = {"per_edge": fit_line(*zip(*by("edges", "edges"))),
            "per_op": fit_line(*zip(*by("ops", "ops"))),
            "per_edge_op": fit_line([r["edges"] * r["ops"] for r in rows],
                                    [r["step_s"] for r in rows]),
            "per_param": fit_line([r["params"] for r in rows], [r["step_s"] for r in rows])}
    return {"rows": rows, "fits": fits}


def main(argv=None) -> dict:
    """Runs the three measurements, prints the tables, writes the JSON."""
    args = _bench.parse(_bench.parser(__doc__.splitlines()[0]), argv)
    hidden, nodes = _bench.pick(args, tiny=(4, 1), quick=(8, 1), full=(32, 3))
    max_train = _bench.pick(args, tiny=100, quick=None, full=None)
    method = _bench.pick(args, tiny="greedy", quick="darts", full="darts")
    with _bench.on_device(args.device):
        per_dataset = []
        for dataset in ("digits", "mnist1d"):
            net = _bench.Supernet(dataset=dataset, hidden=hidden, nodes=nodes,
                                  max_train=max_train)
            key = (dataset, hidden, nodes, 5, max_train, method)
            per_dataset.append({"dataset": dataset, "train_rows": int(net.train[0].shape[0]),
                                "nodes": nodes, "edges": net.num_edges, "params": net.num_params,
                                **step_time(args, net, key)})
            if dataset == "digits" or args.mode != "tiny":  # tiny: one vmap comparison
                per_dataset[-1].update(vmap_vs_sequential(args, net, key))
        # tiny: the sweeps share the (hidden, nodes=1, 5 ops) cell compiled above
        scale = scaling(args, hidden=_bench.pick(args, tiny=4, quick=8, full=32),
                        nodes_grid=_bench.pick(args, tiny=(1, 2), quick=(1, 2), full=(1, 2, 3, 4)),
                        ops_grid=_bench.pick(args, tiny=(2, 5), quick=(2, 5), full=(2, 3, 5, 8)),
                        fixed_nodes=_bench.pick(args, tiny=1, quick=1, full=3), max_train=max_train,
                        method=method)
        info = _bench.machine(args.device)
    s = _bench.fmt_seconds
    print(_bench.table([{**r, "step_s": s(r["step_s"]), "compile_s": s(r["compile_s"]),
                         "vmap_steps_per_s": f"{r.get('vmap_steps_per_s', float('nan')):.1f}",
                         "sequential_steps_per_s":
                             f"{r.get('sequential_steps_per_s', float('nan')):.1f}"}
                        for r in per_dataset],
                       ["dataset", "train_rows", "edges", "params", "step_s", "compile_s",
                        "vmap_steps_per_s", "sequential_steps_per_s", "speedup"],
                       title=f"one bilevel step ({method}); {SEEDS} seeds vmapped vs sequential"))
    print()
    print(_bench.table([{**r, "step_s": s(r["step_s"])} for r in scale["rows"]],
                       ["sweep", "nodes", "edges", "ops", "params", "step_s"],
                       title="step time vs cell size (digits)"))
    print()
    print(_bench.table([{"fit": k, "slope": s(v["slope_s"]), "intercept": s(v["intercept_s"]),
                         "r2": v["r2"]} for k, v in scale["fits"].items()],
                       ["fit", "slope", "intercept", "r2"],
                       title="linear fits t = a + b x (x = edges, ops, edges*ops, weights)"))
    result = {"benchmark": "search", "mode": args.mode, "machine": info, "method": method,
              "datasets": per_dataset, "scaling": scale}
    _bench.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
