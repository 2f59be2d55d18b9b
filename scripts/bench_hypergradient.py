"""Cost of one implicit hypergradient against its floor (issue 6, benchmark 1).

For an implicit method that needs k linear-solver iterations the floor is about
(2 + c k) gradient evaluations: one gradient of the outer loss (grad_w Q and grad_h Q in
one pass), one mixed product (grad_h grad_w L)^T v, and k Hessian-vector products of
c gradients each (c = t_hvp / t_grad, measured). So

    floor = 2 t_grad + k t_hvp,       ratio = t_hypergradient / floor   (goal <= 1.2).

k is chosen by the tolerance: this script counts the iterations with its own CG /
Neumann loop that uses the same stopping rule as `structsel._implicit`
(||b - A v|| <= tol ||b||, at most maxiter), because `hypergradient` returns only the
hypergradient. Problems: ridge regression with per-feature log precisions h, and a
DARTS-style supernet on digits (cross-entropy + L2 inner loss, validation cross-entropy
outer loss, h = architecture logits) at weights trained for a few hundred Adam steps.
Also: the per-call dispatch overhead of one jitted bilevel step (a jitted trivial
step over the same state vs the real step) and whether that step recompiles.

    python scripts/bench_hypergradient.py [--quick] [--device cpu|gpu] [--out FILE]
"""

from __future__ import annotations

if not __package__:  # run as a file (python scripts/x.py), from any directory
    import os, sys  # noqa: E401
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench  # noqa: E402

IMPLICIT = ("cg", "neumann")


def count_iterations(matvec, b, *, solver, tol, maxiter, lr=None):
    """(k, v): iterations used and solution of A v = b by CG / Neumann, stopping as structsel does."""
    import jax
    import jax.numpy as jnp
    import optax

    threshold = (tol * optax.tree.norm(b)) ** 2
    dot = lambda a, c: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))
    if solver == "cg":
        # jax.scipy.sparse.linalg.cg: iterate while r.r > tol^2 b.b and k < maxiter.
        def cond(s):
            k, _, r, _, rs = s
            return (rs > threshold) & (k < maxiter)

        def body(s):
            k, x, r, p, rs = s
            ap = matvec(p)
            alpha = rs / dot(p, ap)
            x = optax.tree.add_scale(x, alpha, p)
            r = optax.tree.add_scale(r, -alpha, ap)
            rs_new = dot(r, r)
            p = optax.tree.add_scale(r, rs_new / rs, p)
            return k + 1, x, r, p, rs_new

        init = (0, optax.tree.zeros_like(b), b, b, dot(b, b))
        k, x, *_ = jax.lax.while_loop(cond, body, init)
        return k, x

    # Neumann: v += lr p, p -= lr A p while ||p|| > tol ||b|| and k <= maxiter.
    def cond(s):
        k, _, p = s
        return (k <= maxiter) & (dot(p, p) > threshold)

    def body(s):
        k, v, p = s
        return k + 1, optax.tree.add_scale(v, lr, p), optax.tree.add_scale(p, -lr, matvec(p))

    k, v, _ = jax.lax.while_loop(cond, body, (0, optax.tree.zeros_like(b), b))
    return k, v


def max_eigenvalue(matvec, like, *, key, iters=100):
    """Largest eigenvalue of the PSD operator by power iteration (for the Neumann step size)."""
    import jax
    import optax

    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(key, len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype)
                                     for k, x in zip(keys, leaves)])

    def body(_, v):
        w = matvec(v)
        return optax.tree.scale(1.0 / optax.tree.norm(w), w)

    v = jax.lax.fori_loop(0, iters, body, v)
    w = matvec(v)
    return sum((x * y).sum() for x, y in zip(jax.tree.leaves(v), jax.tree.leaves(w)))


def ridge_problem(n: int, d: int, *, seed: int = 0):
    """Ridge regression, h = per-feature log precisions; returns the problem and its exact answer.

    inner(w, h) = ||X w - y||^2 / (2n) + sum_i exp(h_i) w_i^2 / 2, outer = ||X_v w - y_v||^2 / (2n).
    """
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    cov = 0.5 ** np.abs(np.subtract.outer(np.arange(d), np.arange(d)))  # correlated features
    chol = np.linalg.cholesky(cov)
    x, xv = rng.normal(size=(n, d)) @ chol.T, rng.normal(size=(n, d)) @ chol.T
    w_true = rng.normal(size=d) * (rng.random(d) < 0.3)
    y, yv = x @ w_true + 0.5 * rng.normal(size=n), xv @ w_true + 0.5 * rng.normal(size=n)
    h = np.full(d, np.log(0.1))
    # exact w* and dQ/dh in float64
    hess = x.T @ x / n + np.diag(np.exp(h))
    w_star = np.linalg.solve(hess, x.T @ y / n)
    g_w = xv.T @ (xv @ w_star - yv) / n
    exact = -np.exp(h) * w_star * np.linalg.solve(hess, g_w)

    def inner(w, h, x, y):
        r = x @ w - y
        return 0.5 * jnp.mean(r ** 2) + 0.5 * jnp.sum(jnp.exp(h) * w ** 2)

    def outer(w, h, x, y):
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return dict(name=f"ridge n={n} d={d}", inner=inner, outer=outer, params=f32(w_star),
                hparams=f32(h), inner_args=(f32(x), f32(y)), outer_args=(f32(xv), f32(yv)),
                exact=exact, num_params=d, num_hparams=d)


def supernet_problem(*, dataset: str, hidden: int, nodes: int, train_steps: int,
                     weight_decay: float = 1e-3, max_train: int | None = None, seed: int = 0):
    """DARTS-style MLP cell supernet; w trained by Adam on inner = CE + wd ||w||^2 / 2."""
    import jax
    import optax

    net = _bench.Supernet(dataset=dataset, hidden=hidden, nodes=nodes, max_train=max_train,
                          seed=seed)
    inner, outer = net.inner(weight_decay), net.outer()
    opt = optax.adam(1e-2)

    @jax.jit
    def train(w, h, data):
        def body(carry, _):
            w, s = carry
            u, s = opt.update(jax.grad(inner)(w, h, *data), s, w)
            return (optax.apply_updates(w, u), s), None
        return jax.lax.scan(body, (w, opt.init(w)), length=train_steps)[0][0]

    params = _bench.block(train(net.weights, net.alphas, net.train))
    return dict(name=f"supernet {dataset} nodes={nodes} hidden={hidden}", inner=inner,
                outer=outer, params=params, hparams=net.alphas, inner_args=net.train,
                outer_args=net.val, exact=None, num_params=net.num_params,
                num_hparams=net.num_hparams, net=net, weight_decay=weight_decay)


def rel_error(a, b) -> float:
    """||a - b|| / ||b|| over pytrees (float64 on the host)."""
    import jax
    import numpy as np

    fa = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
    fb = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
    return float(np.linalg.norm(fa - fb) / np.linalg.norm(fb))


def measure(problem: dict, args, *, tol: float, maxiter: int, ridge: float = 0.0,
            methods: tuple[str, ...] = IMPLICIT) -> list[dict]:
    """Times grad, HVP and the cg / neumann hypergradients of one problem; one row per method.

    Data are arguments of every jitted function, never closed over: XLA would fold
    closed-over arrays as constants (X^T X for ridge) and time a different program.
    """
    import jax
    import optax

    from structsel.hypergradient import hvp, hypergradient

    inner, outer = problem["inner"], problem["outer"]
    w, h = problem["params"], problem["hparams"]
    ia, oa = problem["inner_args"], problem["outer_args"]
    @jax.jit
    def prepare(w, h, ia, oa):
        """lambda_max (for the Neumann step), grad_w Q, the iteration counts, a reference."""
        matvec = lambda v: optax.tree.add_scale(hvp(inner, w, v, h, *ia), ridge, v)
        lam = max_eigenvalue(matvec, w, key=jax.random.key(1))
        g_w = jax.grad(outer)(w, h, *oa)
        k_cg, _ = count_iterations(matvec, g_w, solver="cg", tol=tol, maxiter=maxiter)
        k_ns, _ = count_iterations(matvec, g_w, solver="neumann", tol=tol,
                                   maxiter=50 * maxiter, lr=1.0 / lam)
        # a tight CG solve stands in for the exact hypergradient where there is none
        ref = hypergradient(inner, outer, w, h, method="cg", inner_args=ia, outer_args=oa,
                            ridge=ridge, maxiter=10 * maxiter, tol=tol * 1e-2)
        return lam, g_w, k_cg, k_ns, ref

    lam, g_w, k_cg, k_ns, reference = prepare(w, h, ia, oa)
    neumann_lr = 1.0 / float(lam)  # 0 < lr < 2 / lambda_max(H + ridge I): converges
    options = {"cg": dict(maxiter=maxiter, tol=tol, ridge=ridge),
               "neumann": dict(maxiter=50 * maxiter, tol=tol, ridge=ridge, lr=neumann_lr)}
    iters = {"cg": int(k_cg), "neumann": int(k_ns)}

    fns = {
        "grad": jax.jit(lambda w, h, ia: jax.grad(inner)(w, h, *ia)),
        "hvp": jax.jit(lambda w, h, v, ia: hvp(inner, w, v, h, *ia)),
    }
    for name in methods:
        fns[name] = jax.jit(lambda w, h, ia, oa, name=name: hypergradient(
            inner, outer, w, h, method=name, inner_args=ia, outer_args=oa, **options[name]))
    call_args = {"grad": (w, h, ia), "hvp": (w, h, g_w, ia),
                 **{name: (w, h, ia, oa) for name in methods}}
    compiled, compile_s = {}, {}
    for name, fn in fns.items():
        compiled[name], compile_s[name] = _bench.compile_seconds(fn, *call_args[name])
    samples = _bench.interleaved({n: (lambda n=n: compiled[n](*call_args[n])) for n in fns},
                                 repeats=args.repeats)
    t = {n: _bench.median(s) for n, s in samples.items()}
    c = t["hvp"] / t["grad"]
    if problem["exact"] is not None:
        reference = problem["exact"]
    rows = []
    for name in methods:
        k = iters[name]
        floor = 2 * t["grad"] + k * t["hvp"]
        hyper = compiled[name](*call_args[name])
        cost = compiled[name].cost_analysis() or {}
        rows.append({
            "problem": problem["name"], "method": name, "params": problem["num_params"],
            "hparams": problem["num_hparams"], "tol": tol, "k": k,
            "grad_s": t["grad"], "hvp_s": t["hvp"], "c": c, "hypergradient_s": t[name],
            "floor_s": floor, "ratio": _bench.ratio(t[name], floor),
            "in_grads": _bench.ratio(t[name], t["grad"]),
            "rel_error": rel_error(hyper, reference),
            "reference": "closed form" if problem["exact"] is not None else "cg tol/100",
            "neumann_lr": neumann_lr, "compile_s": compile_s[name],
            "flops": float(cost.get("flops", float("nan"))),
            "grad_flops": float((compiled["grad"].cost_analysis() or {}).get("flops", float("nan"))),
            "hvp_flops": float((compiled["hvp"].cost_analysis() or {}).get("flops", float("nan"))),
            "samples_s": samples[name],
        })
    return rows


def dispatch_overhead(args, *, hidden: int, nodes: int, inner_steps: int, max_train=None,
                      method: str = "cg"):
    """Median time of a jitted bilevel step vs a jitted trivial step over the same state."""
    import jax
    import optax

    from structsel.bilevel import BilevelTrainer

    net = _bench.Supernet(dataset="digits", hidden=hidden, nodes=nodes, max_train=max_train)
    inner, outer = net.inner(1e-3), net.outer()
    trainer = BilevelTrainer(
        inner_loss=lambda w, a, batch, ctx: inner(w, a, *batch),
        outer_loss=lambda w, a, batch, ctx: outer(w, a, *batch),
        inner_opt=optax.sgd(0.05), outer_opt=optax.adam(3e-3), inner_steps=inner_steps,
        hypergradient_method=method,
        hypergradient_options={"maxiter": 10, "tol": 1e-3, "ridge": 1e-2} if method == "cg" else {})
    state = trainer.init(net.weights, net.alphas, key=jax.random.key(0))
    step = jax.jit(trainer.step)
    trivial = jax.jit(lambda s, tb, vb: (s.replace(step=s.step + 1), {}))
    t0 = time.perf_counter()
    out = _bench.block(step(state, net.train, net.val))
    first_call_s = time.perf_counter() - t0
    s = out[0]
    for _ in range(5):  # feed the state back: a changed dtype / weak type would recompile
        s = _bench.block(step(s, net.train, net.val))[0]
    cache = step._cache_size()
    _bench.block(trivial(state, net.train, net.val))
    samples = _bench.interleaved({
        "step": lambda: step(state, net.train, net.val),
        "trivial": lambda: trivial(state, net.train, net.val)}, repeats=args.repeats)
    t_step, t_triv = _bench.median(samples["step"]), _bench.median(samples["trivial"])
    return {"problem": f"bilevel step digits nodes={nodes} hidden={hidden} "
                       f"inner_steps={inner_steps} {method}" + (" maxiter=10" if method == "cg" else ""),
            "step_s": t_step, "trivial_step_s": t_triv,
            "overhead_fraction": _bench.ratio(t_triv, t_step),
            "first_call_s": first_call_s, "cache_size_after_6_steps": cache,
            "recompiled": cache != 1}


def main(argv=None) -> dict:
    """Runs the benchmark, prints the tables, writes the JSON; returns the results."""
    args = _bench.parse(_bench.parser(__doc__.splitlines()[0]), argv)
    with _bench.on_device(args.device):
        n, d = _bench.pick(args, tiny=(200, 20), quick=(1000, 200), full=(4000, 1000))
        hidden, nodes, steps = _bench.pick(args, tiny=(4, 1, 100), quick=(8, 1, 200),
                                           full=(32, 3, 500))
        max_train = _bench.pick(args, tiny=100, quick=None, full=None)
        rows = measure(ridge_problem(n, d), args, tol=1e-4,
                       maxiter=_bench.pick(args, tiny=50, quick=200, full=200))
        # --tiny only checks that the script runs: cg alone on the supernet, and a
        # greedy step (a fraction of the compile time) for the dispatch measurement
        rows += measure(supernet_problem(dataset="digits", hidden=hidden, nodes=nodes,
                                         train_steps=steps, max_train=max_train),
                        args, tol=1e-3, maxiter=_bench.pick(args, tiny=20, quick=100, full=100),
                        ridge=1e-2,
                        methods=_bench.pick(args, tiny=("cg",), quick=IMPLICIT, full=IMPLICIT))
        overhead = dispatch_overhead(args, hidden=hidden, nodes=nodes,
                                     inner_steps=_bench.pick(args, tiny=2, quick=5, full=10),
                                     max_train=max_train,
                                     method=_bench.pick(args, tiny="greedy", quick="cg", full="cg"))
        info = _bench.machine(args.device)
    cols = ["problem", "method", "params", "k", "grad_s", "hvp_s", "c", "hypergradient_s",
            "floor_s", "ratio", "rel_error", "compile_s"]
    print(_bench.table([{**r, **{c: _bench.fmt_seconds(r[c]) for c in cols if c.endswith("_s")}}
                        for r in rows], cols, title="hypergradient vs floor 2 t_grad + k t_hvp"))
    print()
    print(_bench.table([{**overhead, "step_s": _bench.fmt_seconds(overhead["step_s"]),
                         "trivial_step_s": _bench.fmt_seconds(overhead["trivial_step_s"])}],
                       ["problem", "step_s", "trivial_step_s", "overhead_fraction",
                        "cache_size_after_6_steps"], title="one jitted call per outer step"))
    result = {"benchmark": "hypergradient", "mode": args.mode, "machine": info,
              "rows": rows, "dispatch": overhead}
    _bench.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
