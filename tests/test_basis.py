"""Basis functions against hand-written numpy references; registry and JSON round trip."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from structsel import basis

# All numeric checks run in float64 against float64 numpy references: 1e-10 leaves
# room only for summation-order differences.
TOL = 1e-10


def _params64(spec, key, x):
    return jax.tree.map(lambda p: p.astype(jnp.float64) + jax.random.normal(key, p.shape, jnp.float64),
                        spec.init(key, x))


def _conv_ref(x, kernel, bias, stride=1):
    """out[n, i, o] = sum_{j, c} xpad[n, i*stride + j, c] W[j, c, o] + b[o], "SAME" padding."""
    k = kernel.shape[0]
    length = x.shape[1]
    out_len = -(-length // stride)
    pad_total = max((out_len - 1) * stride + k - length, 0)
    xpad = np.pad(x, ((0, 0), (pad_total // 2, pad_total - pad_total // 2), (0, 0)))
    out = np.stack([np.einsum("njc,jco->no", xpad[:, i * stride:i * stride + k], kernel)
                    for i in range(out_len)], axis=1)
    return out + bias


def _pool_ref(x, window, op):
    half = (window - 1) // 2
    out = np.empty_like(x)
    for i in range(x.shape[1]):
        lo, hi = max(i - half, 0), min(i - half + window, x.shape[1])
        out[:, i] = op(x[:, lo:hi], axis=1)
    return out


def test_constant_identity_zero():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (5, 3))
        spec = basis.constant(2)
        params = _params64(spec, jax.random.key(1), x)
        out = spec.apply(params, x)
        assert out.shape == (5, 2)
        np.testing.assert_array_equal(out, np.broadcast_to(params["bias"], (5, 2)))
        assert basis.identity().init(jax.random.key(0), x) == {}
        np.testing.assert_array_equal(basis.identity().apply({}, x), x)
        np.testing.assert_array_equal(basis.zero().apply({}, x), np.zeros((5, 3)))
        like = basis.zero_like(basis.dense(7)).apply({}, x)
        assert like.shape == (5, 7) and not np.any(like)


def test_linear_on_subset_uses_only_those_features():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (6, 4))
        spec = basis.linear(1, subset=(0, 2), activation="tanh")
        params = _params64(spec, jax.random.key(1), x)
        kernel, bias = np.asarray(params["dense"]["kernel"]), np.asarray(params["dense"]["bias"])
        assert kernel.shape == (2, 1)
        ref = np.tanh(np.asarray(x)[:, [0, 2]] @ kernel + bias)
        np.testing.assert_allclose(spec.apply(params, x), ref, atol=TOL)
        # Changing the unused features 1 and 3 must not change the output.
        x2 = x.at[:, 1].set(100.0).at[:, 3].set(-7.0)
        np.testing.assert_array_equal(spec.apply(params, x2), spec.apply(params, x))


@pytest.mark.parametrize("activation,fn", [("relu", lambda z: np.maximum(z, 0)), ("tanh", np.tanh),
                                           ("sigmoid", lambda z: 1 / (1 + np.exp(-z)))])
def test_dense(activation, fn):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (6, 4))
        spec = basis.dense(3, activation)
        params = _params64(spec, jax.random.key(1), x)
        ref = fn(np.asarray(x) @ np.asarray(params["dense"]["kernel"]) + np.asarray(params["dense"]["bias"]))
        np.testing.assert_allclose(spec.apply(params, x), ref, atol=TOL)


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (5, 1), (4, 1), (3, 2)])
def test_conv1d_matches_reference(kernel_size, stride):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 9, 3))
        spec = basis.conv1d(4, kernel_size, stride=stride)
        params = _params64(spec, jax.random.key(1), x)
        out = spec.apply(params, x)
        ref = _conv_ref(np.asarray(x), np.asarray(params["conv"]["kernel"]),
                        np.asarray(params["conv"]["bias"]), stride)
        assert out.shape == ref.shape == (2, -(-9 // stride), 4)
        np.testing.assert_allclose(out, ref, atol=TOL)


def test_conv1d_single_channel_equals_np_correlate():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 11, 1))
        spec = basis.conv1d(1, 5)
        params = _params64(spec, jax.random.key(1), x)
        w = np.asarray(params["conv"]["kernel"])[:, 0, 0]
        ref = np.correlate(np.pad(np.asarray(x)[0, :, 0], 2), w, "valid") + np.asarray(params["conv"]["bias"])
        np.testing.assert_allclose(spec.apply(params, x)[0, :, 0], ref, atol=TOL)


def test_conv2d_matches_lax_reference():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
        spec = basis.conv2d(4, 3, activation="relu")
        params = _params64(spec, jax.random.key(1), x)
        k = np.asarray(params["conv"]["kernel"])
        xpad = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
        ref = np.zeros((2, 6, 5, 4))
        for i in range(6):
            for j in range(5):
                ref[:, i, j] = np.einsum("nabc,abco->no", xpad[:, i:i + 3, j:j + 3], k)
        ref = np.maximum(ref + np.asarray(params["conv"]["bias"]), 0)
        np.testing.assert_allclose(spec.apply(params, x), ref, atol=TOL)


@pytest.mark.parametrize("window", [3, 5])
def test_pools_match_reference(window):
    with jax.enable_x64(True):
        x = np.asarray(jax.random.normal(jax.random.key(0), (2, 8, 3)))
        np.testing.assert_allclose(basis.avg_pool(window).apply({}, x), _pool_ref(x, window, np.mean), atol=TOL)
        np.testing.assert_allclose(basis.max_pool(window).apply({}, x), _pool_ref(x, window, np.max), atol=TOL)
        x2 = jnp.ones((2, 6, 7, 3))
        assert basis.avg_pool((3, 3)).apply({}, x2).shape == (2, 6, 7, 3)
        assert basis.max_pool((3, 3), stride=2).apply({}, x2).shape == (2, 3, 4, 3)


def test_fast_conv_and_max_pool_equal_lax_and_flax_with_gradients_under_vmap():
    """The patch-matmul convolution and the shifted-maxima max pool (stride 1) against
    lax.conv_general_dilated and flax nn.max_pool: values and gradients (w.r.t. weights
    and inputs), vmapped over a batch of weight sets and inputs as the search runs them.
    float64, continuous inputs (no ties for the max): summation order only, 1e-10."""
    import flax.linen as nn
    with jax.enable_x64(True):
        z2 = jax.random.normal(jax.random.key(0), (3, 2, 9, 5, 4))  # (batch, n, h, w, c)
        z1 = z2[:, :, :, 0, :]                                        # (batch, n, length, c)
        for spec, ref_fn, x in [
            (basis.conv1d(6, 5, "tanh"), lambda p, x: jnp.tanh(jax.lax.conv_general_dilated(
                x, p["conv"]["kernel"], (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
                + p["conv"]["bias"]), z1),
            (basis.conv2d(6, 3), lambda p, x: jax.lax.conv_general_dilated(
                x, p["conv"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
                + p["conv"]["bias"], z2),
            (basis.max_pool(3), lambda p, x: nn.max_pool(x, (3,), (1,), padding="SAME"), z1),
            (basis.max_pool((3, 2)), lambda p, x: nn.max_pool(x, (3, 2), (1, 1), padding="SAME"), z2),
        ]:
            params = jax.jit(jax.vmap(lambda k: _params64(spec, k, x[0])))(
                jax.random.split(jax.random.key(1), 3))  # jitted: eager vmapped init took ~8 s
            loss = lambda f: lambda p, xx: jnp.sum(jnp.sin(f(p, xx)))  # noqa: E731
            # jitted: one compiled program per side (eager op-by-op dispatch of the vmapped
            # gradients took ~30 s on 2 CPU cores)
            ours = jax.jit(jax.vmap(jax.value_and_grad(loss(spec.apply), argnums=(0, 1))))(params, x)
            ref = jax.jit(jax.vmap(jax.value_and_grad(loss(ref_fn), argnums=(0, 1))))(params, x)
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
                np.testing.assert_allclose(a, b, atol=TOL, err_msg=spec.label)
    # the other cases still go to lax: stride 2 and dilation 2 against the numpy reference
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(2), (2, 11, 3))
        spec = basis.conv1d(4, 3, dilation=2)
        p = _params64(spec, jax.random.key(3), x)
        k = np.asarray(p["conv"]["kernel"])
        dilated = np.zeros((5,) + k.shape[1:])
        dilated[::2] = k
        np.testing.assert_allclose(spec.apply(p, x), _conv_ref(np.asarray(x), dilated,
                                                               np.asarray(p["conv"]["bias"])), atol=TOL)


def test_readout_pools_then_linear():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 7, 3))
        spec = basis.readout(5)
        params = _params64(spec, jax.random.key(1), x)
        ref = np.asarray(x).mean(axis=1) @ np.asarray(params["dense"]["kernel"]) + np.asarray(params["dense"]["bias"])
        np.testing.assert_allclose(spec.apply(params, x), ref, atol=TOL)


ALL_SPECS = [basis.constant(3), basis.linear(2, subset=(0, 1), activation="tanh"), basis.dense(4),
             basis.identity(), basis.zero(), basis.zero_like(basis.conv1d(2, 5)), basis.conv1d(2, 5, "relu"),
             basis.conv2d(3, (3, 1), stride=(1, 2)), basis.avg_pool(3), basis.max_pool((3, 3), stride=2),
             basis.readout(10)]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.label)
def test_json_round_trip(spec):
    back = basis.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and hash(back) == hash(spec)


def test_register_new_basis_function():
    @basis.register("test_scaled_identity")
    def scaled(scale: float = 2.0):
        """g(z) = scale z."""
        return lambda z: scale * z

    spec = scaled(3.0)
    assert spec.label == "test_scaled_identity(scale=3.0)" and scaled().label == "test_scaled_identity"
    np.testing.assert_array_equal(spec.apply({}, jnp.ones(2)), 3.0 * np.ones(2))
    assert basis.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert "test_scaled_identity" in basis.registered()
    with pytest.raises(ValueError, match="already registered"):
        basis.register("test_scaled_identity")


def test_validation_errors():
    with pytest.raises(ValueError, match="activation must be one of"):
        basis.dense(3, "swishy")
    with pytest.raises(ValueError, match="features must be a positive int"):
        basis.linear(0)
    with pytest.raises(ValueError, match="subset must be None or a non-empty tuple"):
        basis.linear(1, subset=())
    with pytest.raises(ValueError, match="kernel_size must be an int or a tuple of 2 ints"):
        basis.conv2d(3, (3, 3, 3))
    with pytest.raises(ValueError, match="unknown basis function 'nope'"):
        basis.from_dict({"name": "nope", "kwargs": {}})
    with pytest.raises(ValueError, match=r"has no arguments \['width'\]"):
        basis.from_dict({"name": "dense", "kwargs": {"features": 3, "width": 2}})
    with pytest.raises(ValueError, match="subset .* out of range"):
        basis.linear(1, subset=(5,)).output_shape(jax.ShapeDtypeStruct((2, 3), jnp.float32))
    with pytest.raises(ValueError, match="expected in_features=12"):
        basis.dense(1, in_features=12).output_shape(jax.ShapeDtypeStruct((2, 3), jnp.float32))
    with pytest.raises(ValueError, match="expects inputs of rank 3"):
        basis.conv1d(2).output_shape(jax.ShapeDtypeStruct((2, 3), jnp.float32))
