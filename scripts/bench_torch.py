"""structsel against PyTorch peers on ridge and logistic problems (issue 6, benchmark 3).

Peers: torchopt's implicit differentiation (`torchopt.diff.implicit.custom_root` with
`linear_solve.solve_cg` and the Neumann series `solve_inv(ns=True)`) and plain torch
autograd through T unrolled gradient steps. Same data (float32), same iteration counts
(tolerance 0 on both sides, so each solver runs exactly k iterations), and the same
accuracy check against the exact hypergradient computed in float64 with numpy.
Reported: time per hypergradient at the inner solution w* (unrolled: T steps from
w_0 = 0) and per full bilevel step (S warm-started inner GD steps, the hypergradient,
one SGD step on h), structsel / torch ratio (< 1: structsel faster).

Needs torch and torchopt (the optional `bench` extra; never part of CI):
    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/benchvenv/bin/pip install torchopt -e .
    /tmp/benchvenv/bin/python scripts/bench_torch.py [--quick] [--device cpu|gpu] [--out FILE]
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


# ----------------------------------------------------------------------------- problems
def make_problem(kind: str, n: int, d: int, *, seed: int = 0) -> dict:
    """Data (float32), w*, the exact hypergradient (float64) and step sizes for ridge / logistic.

    ridge:    inner = ||X w - y||^2 / (2n) + sum_i exp(h_i) w_i^2 / 2,  outer = val MSE / 2;
    logistic: inner = mean softplus(-s X w) + sum_i exp(h_i) w_i^2 / 2, outer = val log-loss,
              labels s in {-1, +1}.
    """
    rng = np.random.default_rng(seed)
    x, xv = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    w_true = rng.normal(size=d) * (rng.random(d) < 0.3)
    h = np.full(d, np.log(0.1 if kind == "ridge" else 0.01))
    lam = np.exp(h)
    if kind == "ridge":
        y, yv = x @ w_true + 0.5 * rng.normal(size=n), xv @ w_true + 0.5 * rng.normal(size=n)
        hess = x.T @ x / n + np.diag(lam)
        w = np.linalg.solve(hess, x.T @ y / n)
        g_w = xv.T @ (xv @ w - yv) / n
    elif kind == "logistic":
        sig = lambda z: 1 / (1 + np.exp(-z))
        y = np.where(rng.random(n) < sig(x @ w_true), 1.0, -1.0)
        yv = np.where(rng.random(n) < sig(xv @ w_true), 1.0, -1.0)
        w = np.zeros(d)
        for _ in range(50):  # Newton in float64
            m = y * (x @ w)
            grad = -x.T @ (y * sig(-m)) / n + lam * w
            hess = (x * (sig(m) * sig(-m))[:, None]).T @ x / n + np.diag(lam)
            w -= np.linalg.solve(hess, grad)
        mv = yv * (xv @ w)
        g_w = -xv.T @ (yv * sig(-mv)) / n
    else:
        raise ValueError(f"kind must be one of ('ridge', 'logistic'), got {kind!r}")
    exact = -lam * w * np.linalg.solve(hess, g_w)
    lmax = float(np.linalg.eigvalsh(hess)[-1])
    f32 = lambda a: np.asarray(a, np.float32)
    return dict(kind=kind, name=f"{kind} n={n} d={d}", x=f32(x), y=f32(y), xv=f32(xv),
                yv=f32(yv), h=f32(h), w_star=f32(w), exact=exact, lr=1.0 / lmax,
                cond=float(lmax / np.linalg.eigvalsh(hess)[0]))


def iterations_for(problem: dict, *, tol_cg: float, tol_ns: float, maxiter: int) -> tuple[int, int]:
    """k for CG and Neumann (step 1/lambda_max) to reach the relative residual tolerance (float64)."""
    x, n = problem["x"].astype(np.float64), len(problem["x"])
    w, lam = problem["w_star"].astype(np.float64), np.exp(problem["h"].astype(np.float64))
    if problem["kind"] == "ridge":
        hess = x.T @ x / n + np.diag(lam)
    else:
        m = problem["y"] * (x @ w)
        s = 1 / (1 + np.exp(-m))
        hess = (x * (s * (1 - s))[:, None]).T @ x / n + np.diag(lam)
    b = np.random.default_rng(1).normal(size=len(w))
    r, p, v, k_cg = b.copy(), b.copy(), np.zeros_like(b), 0
    while np.linalg.norm(r) > tol_cg * np.linalg.norm(b) and k_cg < maxiter:
        ap = hess @ p
        alpha = (r @ r) / (p @ ap)
        v, r_new = v + alpha * p, r - alpha * ap
        p, r, k_cg = r_new + (r_new @ r_new) / (r @ r) * p, r_new, k_cg + 1
    p, k_ns = b.copy(), 0
    while np.linalg.norm(p) > tol_ns * np.linalg.norm(b) and k_ns < 50 * maxiter:
        p, k_ns = p - problem["lr"] * (hess @ p), k_ns + 1
    return k_cg, k_ns


# ----------------------------------------------------------------------------- jax side
def jax_contenders(problem: dict, *, k_cg: int, k_ns: int, unroll: int, inner_steps: int,
                   outer_lr: float):
    """{name: (jitted fn, args)} for structsel's hypergradients and bilevel steps."""
    import jax
    import jax.numpy as jnp
    import optax

    from structsel.hypergradient import hypergradient

    logistic = problem["kind"] == "logistic"

    def data_loss(w, x, y):
        z = x @ w
        return jnp.mean(jax.nn.softplus(-y * z)) if logistic else 0.5 * jnp.mean((z - y) ** 2)

    def inner(w, h, x, y):
        return data_loss(w, x, y) + 0.5 * jnp.sum(jnp.exp(h) * w ** 2)

    def outer(w, h, x, y):
        return data_loss(w, x, y)

    x, y, xv, yv = (jnp.asarray(problem[k]) for k in ("x", "y", "xv", "yv"))
    w_star, h = jnp.asarray(problem["w_star"]), jnp.asarray(problem["h"])
    lr = problem["lr"]
    opts = {"cg": dict(method="cg", maxiter=k_cg, tol=0.0),
            "neumann": dict(method="neumann", maxiter=k_ns - 1, tol=0.0, lr=lr),
            "unrolled": dict(method="unrolled", steps=unroll, lr=lr)}

    # the data are arguments: closed-over arrays would be folded in as constants
    def hyper(name, w, h, x, y, xv, yv):
        return hypergradient(inner, outer, w, h, inner_args=(x, y), outer_args=(xv, yv),
                             **opts[name])

    def bilevel_step(name, w, h, x, y, xv, yv):
        if name != "unrolled":  # S warm-started GD steps, then the implicit hypergradient
            w = jax.lax.fori_loop(0, inner_steps,
                                  lambda _, w: w - lr * jax.grad(inner)(w, h, x, y), w)
        g = hyper(name, w, h, x, y, xv, yv)
        if name == "unrolled":
            w = jax.lax.fori_loop(0, unroll, lambda _, w: w - lr * jax.grad(inner)(w, h, x, y), w)
        return w, h - outer_lr * g

    out = {}
    for name in opts:
        start = jnp.zeros_like(w_star) if name == "unrolled" else w_star
        args = (start, h, x, y, xv, yv)
        out[f"hyper/{name}"] = (jax.jit(lambda *a, name=name: hyper(name, *a)), args)
        out[f"step/{name}"] = (jax.jit(lambda *a, name=name: bilevel_step(name, *a)), args)
    return out


# ----------------------------------------------------------------------------- torch side
def torch_contenders(problem: dict, *, k_cg: int, k_ns: int, unroll: int, inner_steps: int,
                     outer_lr: float, device: str):
    """{name: (fn, args)} for torchopt implicit (cg, Neumann) and torch unrolled autograd."""
    import torch
    import torch.nn.functional as F
    import torchopt

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    t = lambda a: torch.tensor(a, device=dev)
    x, y, xv, yv = (t(problem[k]) for k in ("x", "y", "xv", "yv"))
    w_star, h0 = t(problem["w_star"]), t(problem["h"])
    lr, logistic = problem["lr"], problem["kind"] == "logistic"

    def data_loss(w, x, y):
        z = x @ w
        return F.softplus(-y * z).mean() if logistic else 0.5 * ((z - y) ** 2).mean()

    def inner(w, h, x, y):
        return data_loss(w, x, y) + 0.5 * (torch.exp(h) * w ** 2).sum()

    def stationary(w, h, x, y):
        return torch.func.grad(inner)(w, h, x, y)

    solvers = {"cg": torchopt.linear_solve.solve_cg(maxiter=k_cg, rtol=0.0),
               "neumann": torchopt.linear_solve.solve_inv(ns=True, maxiter=k_ns - 1, alpha=lr)}
    roots = {name: torchopt.diff.implicit.custom_root(stationary, argnums=1, solve=s)(
        lambda w, h, x, y: w) for name, s in solvers.items()}

    def hyper(name, w, h):
        h = h.detach().requires_grad_(True)
        if name == "unrolled":
            for _ in range(unroll):
                w = w - lr * torch.autograd.grad(inner(w, h, x, y), w, create_graph=True)[0]
        else:
            w = roots[name](w.detach(), h, x, y)
        return torch.autograd.grad(data_loss(w, xv, yv), h)[0]

    def bilevel_step(name, w, h):
        if name != "unrolled":
            w = w.detach().requires_grad_(True)
            for _ in range(inner_steps):
                w = (w - lr * torch.autograd.grad(inner(w, h, x, y), w)[0]).detach().requires_grad_(True)
        g = hyper(name, w.detach().requires_grad_(True), h)
        if name == "unrolled":
            w = w.detach().requires_grad_(True)
            for _ in range(unroll):
                w = (w - lr * torch.autograd.grad(inner(w, h, x, y), w)[0]).detach().requires_grad_(True)
        return w.detach(), (h - outer_lr * g).detach()

    out = {}
    for name in ("cg", "neumann", "unrolled"):
        start = torch.zeros_like(w_star) if name == "unrolled" else w_star
        start = start.clone().requires_grad_(True)
        out[f"hyper/{name}"] = (lambda w, h, name=name: hyper(name, w, h), (start, h0))
        out[f"step/{name}"] = (lambda w, h, name=name: bilevel_step(name, w, h), (start, h0))
    return out


def torch_sync(device: str):
    """The synchronisation used after each timed torch call."""
    import torch

    if device == "gpu":
        return lambda _: torch.cuda.synchronize()
    return lambda _: None


def rel_error(a, exact) -> float:
    """||a - exact|| / ||exact||, a a jax or torch vector."""
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, np.float64)
    return float(np.linalg.norm(a - exact) / np.linalg.norm(exact))


def measure(problem: dict, args, *, unroll: int, inner_steps: int) -> list[dict]:
    """Times every (method, hypergradient | bilevel step) pair, structsel and torch interleaved."""
    k_cg, k_ns = iterations_for(problem, tol_cg=1e-4, tol_ns=1e-3, maxiter=500)
    k_cg, k_ns = max(k_cg, 1), max(k_ns, 2)
    kw = dict(k_cg=k_cg, k_ns=k_ns, unroll=unroll, inner_steps=inner_steps, outer_lr=0.1)
    jx = jax_contenders(problem, **kw)
    th = torch_contenders(problem, device=args.device, **kw)
    sync = torch_sync(args.device)
    rows = []
    for key, (fn, fargs) in jx.items():
        compiled, compile_s = _bench.compile_seconds(fn, *fargs)
        tfn, targs = th[key]
        fns = {"structsel": lambda: compiled(*fargs), "torch": lambda: tfn(*targs)}
        tnum = _bench.calibrate(fns["torch"], sync=sync)
        jnum = _bench.calibrate(fns["structsel"])
        samples = {"structsel": [], "torch": []}
        for _ in range(args.repeats):  # interleaved A B A B
            samples["structsel"].append(_bench.time_call(fns["structsel"], number=jnum))
            samples["torch"].append(_bench.time_call(fns["torch"], number=tnum, sync=sync))
        kind, method = key.split("/")
        t_j, t_t = _bench.median(samples["structsel"]), _bench.median(samples["torch"])
        row = {"problem": problem["name"], "what": kind, "method": method,
               "iterations": {"cg": k_cg, "neumann": k_ns, "unrolled": unroll}[method],
               "structsel_s": t_j, "torch_s": t_t, "ratio": _bench.ratio(t_j, t_t),
               "compile_s": compile_s, "samples": samples}
        if kind == "hyper":
            row["structsel_rel_error"] = rel_error(compiled(*fargs), problem["exact"])
            row["torch_rel_error"] = rel_error(tfn(*targs), problem["exact"])
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    """Runs both problems, prints the table, writes the JSON."""
    args = _bench.parse(_bench.parser(__doc__.splitlines()[0]), argv)
    try:
        import torch
        import torchopt
    except ImportError as err:  # the optional extra is missing: one line, no traceback
        print(f"bench_torch.py: error: {err.name} is not installed; it needs the optional "
              'extra: pip install -e ".[bench]"', file=sys.stderr)
        raise SystemExit(2) from None

    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--device gpu: torch has no CUDA device here")
    with _bench.on_device(args.device):
        n, d = _bench.pick(args, tiny=(100, 10), quick=(1000, 200), full=(4000, 1000))
        unroll, inner_steps = _bench.pick(args, tiny=(5, 5), quick=(50, 20), full=(100, 20))
        rows = []
        for kind in ("ridge", "logistic"):
            rows += measure(make_problem(kind, n, d), args, unroll=unroll,
                            inner_steps=inner_steps)
        info = _bench.machine(args.device)
    info.update(torch=torch.__version__, torchopt=torchopt.__version__,
                torch_threads=torch.get_num_threads())
    cols = ["problem", "what", "method", "iterations", "structsel_s", "torch_s", "ratio",
            "structsel_rel_error", "torch_rel_error"]
    print(_bench.table([{**r, "structsel_s": _bench.fmt_seconds(r["structsel_s"]),
                         "torch_s": _bench.fmt_seconds(r["torch_s"])} for r in rows], cols,
                       title="structsel (jax) vs torchopt / torch; ratio = structsel / torch"))
    result = {"benchmark": "torch", "mode": args.mode, "machine": info, "rows": rows}
    _bench.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
