"""Basis functions g^{j,k}_l of the parametric family (method.md section 1).

A basis function is described by a `BasisSpec`: a frozen, hashable, JSON-describable
value (registered name + keyword arguments), e.g. ``basis.dense(16, "relu")``. The
spec builds a flax linen module (ops with weights) or a plain function (parameter-free
ops) on demand, so families holding specs stay static and hashable.

Adding a basis function is one small function::

    @basis.register("scaled_identity")
    def scaled_identity(scale: float = 2.0):
        return lambda x: scale * x

The decorated function becomes the spec constructor (``scaled_identity(3.0)`` returns a
`BasisSpec`); ``basis.from_dict(spec.to_dict())`` rebuilds it from JSON.

Shapes: vector ops act on the last axis of ``(n, ..., d)``; ``conv1d``/``conv2d``/pools
act on ``(n, length, channels)`` / ``(n, height, width, channels)`` with "SAME" padding,
so with stride 1 the spatial shape is preserved.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ACTIVATIONS", "BasisSpec", "register", "registered", "from_dict",
    "constant", "linear", "dense", "identity", "zero", "zero_like",
    "conv1d", "conv2d", "avg_pool", "max_pool", "readout",
]

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda z: z,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
}

_REGISTRY: dict[str, Callable[..., Any]] = {}
_SIGNATURES: dict[str, inspect.Signature] = {}


@functools.lru_cache(maxsize=64)
def _takes_deterministic(module_type: type) -> bool:
    """Whether a flax module's __call__ has a `deterministic` switch (dropout)."""
    return "deterministic" in inspect.signature(module_type.__call__).parameters


@functools.lru_cache(maxsize=4096)
def _output_shape(spec: "BasisSpec", shape: tuple, dtype) -> jax.ShapeDtypeStruct:
    z = jax.ShapeDtypeStruct(shape, dtype)
    return jax.eval_shape(lambda u: spec.apply(spec.init(jax.random.key(0), u), u), z)


@dataclasses.dataclass(frozen=True)
class BasisSpec:
    """A basis function g: registered `name` plus keyword arguments (static, hashable)."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    def build(self) -> nn.Module | Callable[[jax.Array], jax.Array]:
        """The flax module (or pure function for parameter-free ops) computing g(z)."""
        return _REGISTRY[self.name](**dict(self.kwargs))

    def init(self, key: jax.Array, z: jax.Array) -> dict:
        """Flax parameter dict of g for input z (``{}`` for parameter-free ops)."""
        op = self.build()
        if not isinstance(op, nn.Module):
            return {}
        return dict(op.init(key, z).get("params", {}))

    def apply(self, params: Mapping, z: jax.Array, *, key: jax.Array | None = None
              ) -> jax.Array:
        """g(z) with weights `params`. `key`: None (deterministic: evaluation, and every op
        without randomness), or a PRNG key for a stochastic op in training (dropout)."""
        op = self.build()
        if not isinstance(op, nn.Module):
            return op(z)
        if key is not None and _takes_deterministic(type(op)):
            return op.apply({"params": params}, z, deterministic=False, rngs={"dropout": key})
        return op.apply({"params": params}, z)

    def output_shape(self, z: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        """Abstract shape/dtype of g(z), computed with `jax.eval_shape` (nothing is run;
        memoised per (spec, shape, dtype): families ask for it at every trace)."""
        return _output_shape(self, tuple(jnp.shape(z)), jnp.dtype(z.dtype))

    def to_dict(self) -> dict:
        """JSON-serialisable description ``{"name": ..., "kwargs": {...}}``."""
        return {"name": self.name, "kwargs": {k: _thaw(v) for k, v in self.kwargs}}

    @property
    def label(self) -> str:
        """Short readable name: `name(k=v, ...)` listing only non-default arguments."""
        sig = _SIGNATURES[self.name]
        parts = [f"{k}={_thaw(v)}" for k, v in self.kwargs
                 if sig.parameters[k].default is inspect.Parameter.empty
                 or sig.parameters[k].default != _thaw(v)]
        return f"{self.name}({', '.join(parts)})" if parts else self.name


def _freeze(value: Any) -> Any:
    """Make a JSON-like argument hashable: lists -> tuples, spec dicts -> BasisSpec."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        if set(value) == {"name", "kwargs"}:
            return from_dict(value)
        raise ValueError(f"basis arguments must be JSON scalars, lists or basis specs, got {value!r}")
    if isinstance(value, BasisSpec) or value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise ValueError(f"basis arguments must be JSON scalars, lists or basis specs, got {value!r}")


def _thaw(value: Any) -> Any:
    """Inverse of `_freeze` for JSON: tuples -> lists, BasisSpec -> dict."""
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, BasisSpec):
        return value.to_dict()
    return value


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., BasisSpec]]:
    """Register a builder `f(**kwargs) -> flax module | function`; returns the spec constructor."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"register: basis function {name!r} is already registered")

    def decorate(builder: Callable[..., Any]) -> Callable[..., BasisSpec]:
        sig = inspect.signature(builder)

        @functools.wraps(builder)
        def make_spec(*args, **kwargs) -> BasisSpec:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            spec = BasisSpec(name, tuple((k, _freeze(v)) for k, v in bound.arguments.items()))
            spec.build()  # validates the arguments now, before anything is traced
            return spec

        _REGISTRY[name] = builder
        _SIGNATURES[name] = sig
        return make_spec

    return decorate


def registered() -> tuple[str, ...]:
    """Names of all registered basis functions."""
    return tuple(sorted(_REGISTRY))


def from_dict(d: Mapping) -> BasisSpec:
    """Rebuild a `BasisSpec` from its `to_dict()` (also after a JSON round trip)."""
    if not isinstance(d, Mapping) or "name" not in d:
        raise ValueError(f"from_dict: expected a dict with keys 'name' and 'kwargs', got {d!r}")
    if d["name"] not in _REGISTRY:
        raise ValueError(f"from_dict: unknown basis function {d['name']!r}; registered: {registered()}")
    kwargs = {k: _freeze(v) for k, v in dict(d.get("kwargs", {})).items()}
    sig = _SIGNATURES[d["name"]]
    unknown = set(kwargs) - set(sig.parameters)
    if unknown:
        raise ValueError(f"from_dict: {d['name']!r} has no arguments {sorted(unknown)}; "
                         f"allowed: {list(sig.parameters)}")
    bound = sig.bind(**kwargs)
    bound.apply_defaults()
    spec = BasisSpec(d["name"], tuple((k, _freeze(v)) for k, v in bound.arguments.items()))
    spec.build()
    return spec


# --------------------------------------------------------------------------- checks

def _check_activation(activation: str) -> Callable[[jax.Array], jax.Array]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return ACTIVATIONS[activation]


def _check_positive(arg: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{arg} must be a positive int, got {value!r}")


def _window(arg: str, value: Any, ndim: int | None) -> tuple[int, ...]:
    """An int (repeated `ndim` times, 1 if None) or a tuple of positive ints."""
    window = (value,) * (ndim or 1) if isinstance(value, int) else tuple(value)
    for v in window:
        _check_positive(arg, v)
    if ndim is not None and len(window) != ndim:
        raise ValueError(f"{arg} must be an int or a tuple of {ndim} ints, got {value!r}")
    return window


# --------------------------------------------------------------------------- modules

class _Linear(nn.Module):
    """a(W^T z[..., subset] + b): a GLM / dense layer on chosen features."""

    features: int
    activation: str
    subset: tuple[int, ...] | None
    use_bias: bool
    in_features: int | None

    @nn.compact
    def __call__(self, z):
        if self.in_features is not None and z.shape[-1] != self.in_features:
            raise ValueError(f"input has {z.shape[-1]} features, expected in_features={self.in_features}")
        if self.subset is not None:
            if max(self.subset) >= z.shape[-1]:
                raise ValueError(f"subset {self.subset} out of range for {z.shape[-1]} input features")
            z = z[..., np.asarray(self.subset)]
        return ACTIVATIONS[self.activation](nn.Dense(self.features, use_bias=self.use_bias, name="dense")(z))


class _Constant(nn.Module):
    """g(z) = w, a learned vector broadcast over the leading axes of z."""

    features: int

    @nn.compact
    def __call__(self, z):
        w = self.param("bias", nn.initializers.zeros, (self.features,))
        return jnp.broadcast_to(w, z.shape[:-1] + (self.features,)).astype(jnp.result_type(w, z))


class _Conv(nn.Module):
    """a(conv(z, W) + b) with "SAME" padding over the spatial axes of (n, ..., channels)."""

    features: int
    kernel_size: tuple[int, ...]
    activation: str
    stride: tuple[int, ...]
    dilation: tuple[int, ...]

    @nn.compact
    def __call__(self, z):
        if z.ndim != len(self.kernel_size) + 2:
            raise ValueError(f"conv with kernel {self.kernel_size} expects inputs of rank "
                             f"{len(self.kernel_size) + 2} (n, spatial..., channels), got shape {z.shape}")
        conv = nn.Conv(self.features, self.kernel_size, strides=self.stride, padding="SAME",
                       kernel_dilation=self.dilation, conv_general_dilated=_patch_conv,
                       name="conv")
        return ACTIVATIONS[self.activation](conv(z))


def _shifts(z: jax.Array, window: tuple[int, ...], fill: float) -> list[jax.Array]:
    """The prod(window) shifted copies z[:, i + o - low] of a "SAME"-padded (n, spatial..., c)
    input, one per window offset o (row-major), padding value `fill`."""
    low = [(k - 1) // 2 for k in window]
    pads = [(0, 0)] + [(lo, k - 1 - lo) for lo, k in zip(low, window)] + [(0, 0)]
    zp = jnp.pad(z, pads, constant_values=fill)
    spatial = z.shape[1:-1]
    return [zp[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, spatial))]
            for offset in np.ndindex(*window)]


def _patch_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` for flax's channels-last layout: stride 1, "SAME", no
    dilation or groups as one matmul over patches, y = [z_{i+o}]_o @ W.reshape(-1, c_out);
    any other case goes to lax. Same numbers as lax (tested), but `vmap` over weights
    batches it as a batched matmul instead of a grouped convolution, which XLA:CPU runs
    several times slower (scripts/bench_enumeration.py)."""
    ones = lambda t: t is None or all(v == 1 for v in t)  # noqa: E731
    if not (padding == "SAME" and ones(window_strides) and ones(lhs_dilation)
            and ones(rhs_dilation) and feature_group_count == 1):
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision)
    window = rhs.shape[:-2]
    patches = jnp.concatenate(_shifts(lhs, window, 0.0), axis=-1)
    return jnp.matmul(patches, rhs.reshape(-1, rhs.shape[-1]), precision=precision)


class _Readout(nn.Module):
    """W^T mean_{spatial}(z) + b: global average pooling then a linear layer."""

    features: int

    @nn.compact
    def __call__(self, z):
        pooled = jnp.mean(z, axis=tuple(range(1, z.ndim - 1))) if z.ndim > 2 else z
        return nn.Dense(self.features, name="dense")(pooled)


def _pool(z: jax.Array, kind: str, window: tuple[int, ...], stride: tuple[int, ...]) -> jax.Array:
    if z.ndim != len(window) + 2:
        raise ValueError(f"{kind} with window {window} expects inputs of rank {len(window) + 2} "
                         f"(n, spatial..., channels), got shape {z.shape}")
    if kind == "avg_pool":  # DARTS convention: padded cells are not counted
        return nn.avg_pool(z, window, stride, padding="SAME", count_include_pad=False)
    if all(s == 1 for s in stride):
        # max over the window's shifted copies: elementwise, so vmap over a batch of inputs
        # stays cheap (XLA:CPU's batched reduce_window gradient is ~4x slower per element).
        return functools.reduce(jnp.maximum, _shifts(z, window, -jnp.inf))
    return nn.max_pool(z, window, stride, padding="SAME")


# --------------------------------------------------------------------------- library

@register("constant")
def constant(features: int = 1):
    """g(z) = w in R^features (a bias-only model; the thesis' f_0 = w_0)."""
    _check_positive("features", features)
    return _Constant(features)


@register("linear")
def linear(features: int, subset: tuple[int, ...] | None = None, activation: str = "identity",
           use_bias: bool = True, in_features: int | None = None):
    """g(z) = a(W^T z_S + b) on feature subset S (all if None); a GLM, e.g. tanh(w^T x_0 + b)."""
    _check_positive("features", features)
    _check_activation(activation)
    if subset is not None:
        subset = tuple(subset)
        if not subset or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in subset):
            raise ValueError(f"subset must be None or a non-empty tuple of feature indices >= 0, got {subset!r}")
    if in_features is not None:
        _check_positive("in_features", in_features)
    return _Linear(features, activation, subset, bool(use_bias), in_features)


@register("dense")
def dense(features: int, activation: str = "relu", use_bias: bool = True, in_features: int | None = None):
    """g(z) = a(W^T z + b), a fully connected layer with activation a."""
    _check_positive("features", features)
    _check_activation(activation)
    if in_features is not None:
        _check_positive("in_features", in_features)
    return _Linear(features, activation, None, bool(use_bias), in_features)


@register("identity")
def identity():
    """g(z) = z (skip connection)."""
    return lambda z: z


@register("zero")
def zero():
    """g(z) = 0 with the shape of z (DARTS 'none')."""
    return jnp.zeros_like


@register("zero_like")
def zero_like(like: BasisSpec):
    """g(z) = 0 with the shape of like(z) (stands in for a switched-off edge)."""
    if not isinstance(like, BasisSpec):
        raise ValueError(f"like must be a BasisSpec, got {like!r}")

    def fn(z):
        out = like.output_shape(jax.ShapeDtypeStruct(z.shape, z.dtype))
        return jnp.zeros(out.shape, out.dtype)

    return fn


@register("conv1d")
def conv1d(features: int, kernel_size: int = 3, activation: str = "identity", stride: int = 1,
           dilation: int = 1):
    """g(z) = a(conv1d(z, W) + b) on (n, length, channels), "SAME" padding."""
    _check_positive("features", features)
    _check_activation(activation)
    return _Conv(features, _window("kernel_size", kernel_size, 1), activation,
                 _window("stride", stride, 1), _window("dilation", dilation, 1))


@register("conv2d")
def conv2d(features: int, kernel_size: int | tuple[int, int] = 3, activation: str = "identity",
           stride: int | tuple[int, int] = 1, dilation: int | tuple[int, int] = 1):
    """g(z) = a(conv2d(z, W) + b) on (n, height, width, channels), "SAME" padding."""
    _check_positive("features", features)
    _check_activation(activation)
    return _Conv(features, _window("kernel_size", kernel_size, 2), activation,
                 _window("stride", stride, 2), _window("dilation", dilation, 2))


@register("avg_pool")
def avg_pool(window: int | tuple[int, ...] = 3, stride: int | tuple[int, ...] | None = None):
    """g(z) = mean of z over a window ("SAME" padding, padded cells not counted); int window: 1-D."""
    win = _window("window", window, None)
    strides = (1,) * len(win) if stride is None else _window("stride", stride, len(win))
    return functools.partial(_pool, kind="avg_pool", window=win, stride=strides)


@register("max_pool")
def max_pool(window: int | tuple[int, ...] = 3, stride: int | tuple[int, ...] | None = None):
    """g(z) = max of z over a window ("SAME" padding); int window: 1-D, tuple: len(window)-D."""
    win = _window("window", window, None)
    strides = (1,) * len(win) if stride is None else _window("stride", stride, len(win))
    return functools.partial(_pool, kind="max_pool", window=win, stride=strides)


@register("readout")
def readout(features: int):
    """g(z) = W^T mean_spatial(z) + b: classifier head for vectors or feature maps."""
    _check_positive("features", features)
    return _Readout(features)


# --------------------------------------------------------------------------- residual blocks

class _Residual(nn.Module):
    """z + W_2^T a(W_1^T LN(z) + b_1) + b_2: a pre-norm residual MLP block, width-preserving.

    All weights live in one flat parameter "packed" = [W_1, b_1, W_2, b_2 (, LN scale,
    LN shift)] (LeCun-normal kernels, zero biases, unit scale), sliced in the forward pass:
    one pytree leaf instead of four to six, because the Bayesian search compiles its
    per-leaf work (sampling, KL, ARD precisions, optimiser) once per leaf.
    """

    hidden: int
    activation: str
    layer_norm: bool
    dropout: float = 0.0

    def _shapes(self, d: int) -> list[tuple[int, ...]]:
        h = self.hidden
        return [(d, h), (h,), (h, d), (d,)] + ([(d,), (d,)] if self.layer_norm else [])

    @nn.compact
    def __call__(self, z, deterministic: bool = True):
        shapes = self._shapes(z.shape[-1])

        def init(key, shape, dtype=jnp.float32):
            k1, k2 = jax.random.split(key)
            lecun = nn.initializers.lecun_normal()
            parts = [lecun(k1, shapes[0], dtype), jnp.zeros(shapes[1], dtype),
                     lecun(k2, shapes[2], dtype), jnp.zeros(shapes[3], dtype)]
            parts += [jnp.ones(s, dtype) if i == 0 else jnp.zeros(s, dtype)
                      for i, s in enumerate(shapes[4:])]
            return jnp.concatenate([q.ravel() for q in parts])

        packed = self.param("packed", init, (sum(int(np.prod(s)) for s in shapes),))
        bounds = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
        w1, b1, w2, b2, *norm = [packed[a:b].reshape(s) for a, b, s in
                                 zip(bounds[:-1], bounds[1:], shapes)]
        h = z
        if norm:
            mean = jnp.mean(h, -1, keepdims=True)
            var = jnp.mean(jnp.square(h - mean), -1, keepdims=True)
            h = (h - mean) * jax.lax.rsqrt(var + 1e-6) * norm[0] + norm[1]
        h = ACTIVATIONS[self.activation](h @ w1 + b1)
        if self.dropout:  # inverted dropout on the hidden units (training only)
            h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return z + h @ w2 + b2


@register("residual")
def residual(hidden: int, activation: str = "relu", layer_norm: bool = False,
             dropout: float = 0.0):
    """g(z) = z + W_2^T D(a(W_1^T LN(z) + b_1)) + b_2 (LN only if `layer_norm`), hidden
    width `hidden`, output width = input width: the block of ResNet-style MLPs for tables.
    D is inverted dropout of rate `dropout` on the hidden units when the op is applied
    with a key (training), the identity without one (evaluation) or at rate 0."""
    _check_positive("hidden", hidden)
    _check_activation(activation)
    if (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
            or not 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return _Residual(hidden, activation, bool(layer_norm), float(dropout))


__all__.append("residual")
