"""Shared helpers for the benchmark scripts: flags, device selection, timing, tables, JSON.

Timing protocol (every script): compile first and report the compile time on its own;
then run the contenders interleaved (A B A B ...) so that load from other processes on a
shared machine hits them alike; report the median over repeats and the ratio of medians.
Every timed call ends with `jax.block_until_ready` (or the torch equivalent), so the time
is the time of the computation, not of its dispatch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

DEVICES = ("cpu", "gpu")


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark accepts: --quick, --tiny, --device, --out, --repeats."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few repeats (under a minute on a 2-core CPU)")
    p.add_argument("--tiny", action="store_true",
                   help="smallest sizes, for the smoke test of the script itself")
    p.add_argument("--device", default="cpu",
                   help=f"where to run: one of {DEVICES} (default cpu)")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per contender (default: by mode)")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses and validates the common flags; sets `args.mode` to tiny | quick | full."""
    args = p.parse_args(argv)
    if args.device not in DEVICES:
        p.error(f"--device must be one of {DEVICES}, got {args.device!r}")
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be a positive integer, got {args.repeats}")
    args.mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    if args.repeats is None:
        args.repeats = {"tiny": 3, "quick": 5, "full": 15}[args.mode]
    return args


def pick(args: argparse.Namespace, *, tiny: Any, quick: Any, full: Any) -> Any:
    """The size for the current mode."""
    return {"tiny": tiny, "quick": quick, "full": full}[args.mode]


@contextlib.contextmanager
def on_device(name: str):
    """Makes `name` ('cpu' or 'gpu') the default jax device; fails with a clear message."""
    import jax

    try:
        device = jax.devices(name)[0]
    except RuntimeError as err:
        raise SystemExit(f"--device {name}: no such jax backend here ({err})") from None
    with jax.default_device(device):
        yield device


def block(x):
    """Waits for every array in the pytree `x`; returns it."""
    import jax

    return jax.block_until_ready(x)


def compile_seconds(fn, *args, **kwargs) -> tuple[Any, float]:
    """Lowers and compiles the jitted `fn` for these arguments; returns (compiled, seconds)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t0


def time_call(fn: Callable[[], Any], *, number: int = 1, sync: Callable[[Any], Any] = block) -> float:
    """Seconds per call of `fn()` averaged over `number` back-to-back calls (synchronised)."""
    t0 = time.perf_counter()
    out = None
    for _ in range(number):
        out = fn()
    sync(out)
    return (time.perf_counter() - t0) / number


def calibrate(fn: Callable[[], Any], *, target: float = 0.02, sync=block) -> int:
    """How many calls of `fn` make one timed sample last about `target` seconds (>= 1)."""
    sync(fn())  # warm
    t = time_call(fn, number=1, sync=sync)
    return max(1, min(10_000, int(target / max(t, 1e-7))))


def interleaved(fns: Mapping[str, Callable[[], Any]], *, repeats: int, target: float = 0.02,
                sync=block) -> dict[str, list[float]]:
    """Times every contender `repeats` times, round-robin (A B A B ...); seconds per call."""
    numbers = {name: calibrate(fn, target=target, sync=sync) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_call(fn, number=numbers[name], sync=sync))
    return samples


def median(xs: Iterable[float]) -> float:
    """The median of the samples."""
    return float(statistics.median(list(xs)))


def summary(samples: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median, min and max (seconds) of each contender's samples."""
    return {k: {"median_s": median(v), "min_s": min(v), "max_s": max(v), "repeats": len(v)}
            for k, v in samples.items()}


def ratio(a: float, b: float) -> float:
    """a / b, or inf when b is zero."""
    return float(a / b) if b else float("inf")


def fmt_seconds(s: float) -> str:
    """A time in the unit that reads best (us, ms, s)."""
    if s is None or s != s:
        return "-"
    if abs(s) < 1e-3:
        return f"{s * 1e6:.1f} us"
    if abs(s) < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt(value: Any) -> str:
    """Cell text: floats with 3 significant digits, the rest as str."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, title: str = "") -> str:
    """A GitHub-markdown table of `rows` (dicts) restricted to `columns`."""
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    line = lambda xs: "| " + " | ".join(x.ljust(w) for x, w in zip(xs, widths)) + " |"
    out = [f"### {title}", ""] if title else []
    out += [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out)


def machine(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    import jax

    info = {"python": platform.python_version(), "jax": jax.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "device": device, "jax_devices": [str(d) for d in jax.devices(device)]}
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        info["loadavg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def write_json(path: str | None, payload: Mapping[str, Any]) -> None:
    """Writes `payload` (with `argv` added) as indented JSON when `path` is given."""
    if not path:
        return
    payload = {"argv": sys.argv[1:], **payload}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
        f.write("\n")
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- problems
OP_NAMES = ("zero", "identity", "linear", "relu", "tanh", "sigmoid", "gelu", "silu")


def cell_ops(width: int, num_ops: int = 5):
    """The first `num_ops` of `family.mlp_ops` (zero, identity, linear, dense+relu/tanh)
    followed by dense+sigmoid/gelu/silu: cells with more candidate ops per edge."""
    from structsel import basis, family

    if not 1 <= num_ops <= len(OP_NAMES):
        raise ValueError(f"num_ops must be in 1..{len(OP_NAMES)}, got {num_ops}")
    extra = tuple(basis.dense(width, n) for n in OP_NAMES[5:])
    return (family.mlp_ops(width) + extra)[:num_ops]


_DATA: dict = {}


def load_data(name: str, *, max_train: int | None = None, seed: int = 0):
    """(x_train, y_train), (x_val, y_val), num_classes for digits / mnist1d (cached per process)."""
    import jax.numpy as jnp

    from structsel import data

    key = (name, max_train, seed)
    if key not in _DATA:
        if name == "mnist1d":
            # mnist1d is generated on the fly: only as many samples as the split needs
            num = 5000 if max_train is None else max(200, int(max_train / 0.6) + 1)
            ds = data.load_mnist1d(seed=seed, num_samples=num)
        else:
            ds = data.load_sklearn(name, seed=seed)
        n = max_train or len(ds.x_train)
        _DATA[key] = ((jnp.asarray(ds.x_train[:n]), jnp.asarray(ds.y_train[:n])),
                      (jnp.asarray(ds.x_val[:n]), jnp.asarray(ds.y_val[:n])), ds.num_classes)
    return _DATA[key]


class Supernet:
    """DARTS-style MLP cell on a classification set: gamma^e = softmax(alpha^e).

    inner(w, alpha, x, y) = CE(f(w, gamma, x), y) + wd ||w||^2 / 2 on train data,
    outer(w, alpha, x, y) = CE on validation data.
    """

    def __init__(self, *, dataset: str, hidden: int, nodes: int, num_ops: int = 5,
                 max_train: int | None = None, seed: int = 0):
        import jax
        import jax.numpy as jnp

        from structsel import basis, family

        self.train, self.val, classes = load_data(dataset, max_train=max_train, seed=seed)
        self.family = family.darts_cell(nodes, cell_ops(hidden, num_ops),
                                        stem=basis.dense(hidden, "relu"), readout=classes,
                                        output="sum")
        self.weights = self.family.init(jax.random.key(seed), self.train[0])
        self.alphas = tuple(jnp.zeros((k,), jnp.float32) for k in self.family.num_ops)
        self.num_params = self.family.num_params(self.weights)
        self.num_edges = sum(self.family.searchable)
        self.num_hparams = sum(k for k in self.family.num_ops if k > 1)

    def logits(self, w, alphas, x):
        """f(w, gamma, x) with gamma^e = softmax(alpha^e)."""
        import jax

        return self.family.apply(w, tuple(jax.nn.softmax(a) for a in alphas), x)

    def cross_entropy(self, w, alphas, x, y):
        """Mean cross-entropy of the class logits."""
        import optax

        return optax.softmax_cross_entropy_with_integer_labels(self.logits(w, alphas, x), y).mean()

    def inner(self, weight_decay: float):
        """inner(w, alpha, x, y) = CE + weight_decay ||w||^2 / 2."""
        import optax

        def inner(w, alphas, x, y):
            return self.cross_entropy(w, alphas, x, y) + 0.5 * weight_decay * optax.tree.norm(w, squared=True)
        return inner

    def outer(self):
        """outer(w, alpha, x, y) = validation CE."""
        return self.cross_entropy
