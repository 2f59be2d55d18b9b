"""Peak memory of implicit (cg) vs unrolled hypergradients as inner steps grow (issue 6, 2).

Both contenders start from the same w_0 and run T inner SGD steps w_{t+1} = w_t - lr
grad_w L(w_t, h):
- unrolled: dQ(w_T(h), h)/dh by reverse mode through the T steps (stores every step);
- implicit: the T steps without differentiation, then the cg hypergradient at w_T
  (the implicit function theorem needs only w_T), so memory should not grow with T.
Memory is read from the compiled executable (`jax.jit(f).lower(...).compile()
.memory_analysis()`): temp_size_in_bytes is XLA's scratch (the stacked residuals of the
scan for the unrolled method), plus arguments and outputs. Nothing is executed except
one call per contender to check the results are finite.

    python scripts/bench_memory.py [--quick] [--device cpu|gpu] [--out FILE]
"""

from __future__ import annotations

if not __package__:  # run as a file (python scripts/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench  # noqa: E402


def inner_sgd(inner, w, h, inner_args, *, steps: int, lr: float):
    """w_T after T SGD steps on inner(., h), inside lax.scan, not differentiated."""
    import jax
    import optax

    def body(w, _):
        return optax.tree.add_scale(w, -lr, jax.grad(inner)(w, h, *inner_args)), None

    w_final, _ = jax.lax.scan(body, w, length=steps)
    return jax.lax.stop_gradient(w_final)


def contenders(problem: dict, *, steps: int, lr: float, maxiter: int):
    """{name: jitted f(w0, h, ia, oa)} for the implicit and unrolled hypergradients after T steps.

    The data ia, oa are arguments (closed-over arrays would be folded in as constants).
    """
    import jax

    from structsel.hypergradient import hypergradient

    inner, outer = problem["inner"], problem["outer"]

    def implicit(w0, h, ia, oa):
        w = inner_sgd(inner, w0, h, ia, steps=steps, lr=lr)
        return hypergradient(inner, outer, w, h, method="cg", inner_args=ia, outer_args=oa,
                             maxiter=maxiter, tol=1e-4, ridge=problem.get("ridge", 0.0))

    def unrolled(w0, h, ia, oa):
        return hypergradient(inner, outer, w0, h, method="unrolled", inner_args=ia,
                             outer_args=oa, steps=steps, lr=lr)

    return {"implicit_cg": jax.jit(implicit), "unrolled": jax.jit(unrolled)}


def measure(problem: dict, steps_list, *, lr: float, maxiter: int, run_up_to: int) -> list[dict]:
    """One row per (T, method): bytes from memory_analysis() and compile seconds.

    Executes once (to check the result is finite) only when T <= run_up_to: the unrolled
    program at large T may need more memory than the machine has.
    """
    import jax
    import numpy as np

    rows = []
    w0, h = problem["params"], problem["hparams"]
    data = (problem["inner_args"], problem["outer_args"])
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(w0))
    for steps in steps_list:
        for name, fn in contenders(problem, steps=steps, lr=lr, maxiter=maxiter).items():
            compiled, seconds = _bench.compile_seconds(fn, w0, h, *data)
            mem = compiled.memory_analysis()
            temp, arg = int(mem.temp_size_in_bytes), int(mem.argument_size_in_bytes)
            out, alias = int(mem.output_size_in_bytes), int(mem.alias_size_in_bytes)
            row = {"problem": problem["name"], "method": name, "steps": steps,
                   "temp_bytes": temp, "argument_bytes": arg, "output_bytes": out,
                   "peak_bytes": temp + arg + out - alias, "param_bytes": int(param_bytes),
                   "temp_per_param_copy": temp / param_bytes, "compile_s": seconds}
            if steps <= run_up_to:
                result = _bench.block(compiled(w0, h, *data))
                row["finite"] = bool(all(np.isfinite(np.asarray(x)).all()
                                         for x in jax.tree.leaves(result)))
            rows.append(row)
    return rows


def growth(rows: list[dict]) -> dict[str, dict]:
    """Per (problem, method): peak bytes at the largest T over peak bytes at the smallest T."""
    out = {}
    for r in rows:
        key = f"{r['problem']}: {r['method']}"
        lo = out.setdefault(key, {"min_steps": r["steps"], "min_peak": r["peak_bytes"],
                                  "max_steps": r["steps"], "max_peak": r["peak_bytes"]})
        if r["steps"] < lo["min_steps"]:
            lo.update(min_steps=r["steps"], min_peak=r["peak_bytes"])
        if r["steps"] > lo["max_steps"]:
            lo.update(max_steps=r["steps"], max_peak=r["peak_bytes"])
    for v in out.values():
        v["growth"] = _bench.ratio(v["max_peak"], v["min_peak"])
    return out


def ridge(n: int, d: int):
    """Ridge regression problem of bench_hypergradient (float32), starting from w_0 = 0."""
    import jax.numpy as jnp

    from bench_hypergradient import ridge_problem

    p = ridge_problem(n, d)
    return dict(p, params=jnp.zeros_like(p["params"]))


def supernet(*, hidden: int, nodes: int, max_train=None):
    """DARTS-style MLP cell on digits at its initial weights (CE + 1e-3 L2 inner, val CE outer)."""
    net = _bench.Supernet(dataset="digits", hidden=hidden, nodes=nodes, max_train=max_train)
    return dict(name=f"supernet digits nodes={nodes} hidden={hidden}", inner=net.inner(1e-3),
                outer=net.outer(), params=net.weights, hparams=net.alphas,
                inner_args=net.train, outer_args=net.val, ridge=1e-2)


def mib(b: float) -> str:
    """Bytes in KiB below 1 MiB, else MiB / GiB."""
    if b < 2**20:
        return f"{b / 2**10:.1f} KiB"
    return f"{b / 2**20:.1f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def main(argv=None) -> dict:
    """Compiles both contenders for each T, prints the memory table, writes the JSON."""
    args = _bench.parse(_bench.parser(__doc__.splitlines()[0]), argv)
    steps_list = _bench.pick(args, tiny=(2, 20), quick=(10, 100, 1000), full=(10, 100, 1000, 10000))
    with _bench.on_device(args.device):
        n, d = _bench.pick(args, tiny=(100, 20), quick=(1000, 200), full=(4000, 1000))
        hidden, nodes = _bench.pick(args, tiny=(4, 1), quick=(8, 1), full=(32, 3))
        max_train = _bench.pick(args, tiny=100, quick=None, full=None)
        rows = measure(ridge(n, d), steps_list, lr=0.1, maxiter=100, run_up_to=1000)
        rows += measure(supernet(hidden=hidden, nodes=nodes, max_train=max_train), steps_list,
                        lr=0.05, maxiter=20, run_up_to=100)
        info = _bench.machine(args.device)
    cols = ["problem", "method", "steps", "temp_bytes", "peak_bytes", "temp_per_param_copy",
            "compile_s"]
    print(_bench.table([{**r, "temp_bytes": mib(r["temp_bytes"]), "peak_bytes": mib(r["peak_bytes"]),
                         "compile_s": _bench.fmt_seconds(r["compile_s"])} for r in rows],
                       cols, title="compiled memory (memory_analysis) vs inner steps T"))
    grow = growth(rows)
    print()
    print(_bench.table([{"contender": k, **v, "min_peak": mib(v["min_peak"]),
                         "max_peak": mib(v["max_peak"])} for k, v in grow.items()],
                       ["contender", "min_steps", "min_peak", "max_steps", "max_peak", "growth"],
                       title="peak growth from the smallest to the largest T"))
    result = {"benchmark": "memory", "mode": args.mode, "machine": info, "rows": rows,
              "growth": grow}
    _bench.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
