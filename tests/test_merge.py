"""Merge layers (ADD, CONCAT) and GAP: float64 gradient checks against finite differences,
forward against plain NumPy, and declaration-time shape errors that name both branches."""
import numpy as np
import pytest

from gpuconv.geometry import GeometryError
from gpuconv.layers import Add, Concat, GlobalAvgPool
from tests.helpers import numeric_grad, rel_error


def _built(layer, shapes, names=None):
    layer.dtype = np.dtype(np.float64)
    names = names or [f"in{i}" for i in range(len(shapes))]
    layer.build_inputs(shapes, names)
    return layer


def _objective(layer, xs, dy):
    def f():
        y = layer.forward([x.copy() for x in xs], train=True)
        layer.clear_cache()
        return float(np.sum(y * dy))
    return f


@pytest.mark.parametrize("relu", [False, True])
def test_add_forward_and_gradient_float64(rng, relu):
    a, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    layer = _built(Add(relu), [(3, 4, 5), (3, 4, 5)])
    y = layer.forward([a, b], train=True)
    ref = np.maximum(a + b, 0) if relu else a + b
    assert rel_error(y, ref) < 1e-15
    dy = rng.standard_normal(y.shape)
    da, db = layer.backward(dy.copy())
    assert rel_error(da, dy * (ref > 0) if relu else dy) < 1e-15
    f = _objective(layer, [a, b], dy)
    assert rel_error(numeric_grad(f, a), da) < 1e-6
    assert rel_error(numeric_grad(f, b), db) < 1e-6


def test_concat_forward_and_gradient_float64(rng):
    xs = [rng.standard_normal((2, c, 3, 4)) for c in (1, 3, 2)]
    layer = _built(Concat(), [x.shape[1:] for x in xs])
    assert layer.out_shape == (6, 3, 4)
    y = layer.forward(xs, train=True)
    assert rel_error(y, np.concatenate(xs, axis=1)) == 0.0
    dy = rng.standard_normal(y.shape)
    dxs = layer.backward(dy)
    f = _objective(layer, xs, dy)
    for x, dx in zip(xs, dxs):
        assert dx.flags.c_contiguous  # the convolutions that read it need NCHW
        assert rel_error(numeric_grad(f, x), dx) < 1e-6


def test_gap_forward_and_gradient_float64(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    layer = GlobalAvgPool()
    layer.dtype = np.dtype(np.float64)
    assert layer.build((3, 4, 5)) == (3,)
    y = layer.forward(x, train=True)
    ref = np.array([[x[n, c].sum() / 20 for c in range(3)] for n in range(2)])
    assert rel_error(y, ref) < 1e-15
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)

    def f():
        return float(np.sum(layer.forward(x, train=False) * dy))
    assert rel_error(numeric_grad(f, x), dx) < 1e-6


def test_add_shape_mismatch_names_both_branches():
    with pytest.raises(GeometryError) as e:
        _built(Add(name="add1"), [(64, 8, 8), (32, 8, 8)], ["conv3", "proj"])
    msg = str(e.value)
    assert "add1" in msg and "conv3" in msg and "proj" in msg
    assert "(64, 8, 8)" in msg and "(32, 8, 8)" in msg


def test_concat_spatial_mismatch_names_both_branches():
    with pytest.raises(GeometryError) as e:
        _built(Concat(name="cat"), [(8, 8, 8), (4, 8, 8), (4, 7, 7)], ["b1", "b2", "b3"])
    msg = str(e.value)
    assert "b1" in msg and "b3" in msg and "(4, 7, 7)" in msg and "(8, 8, 8)" in msg


def test_merge_needs_several_inputs():
    with pytest.raises(GeometryError, match="2 inputs"):
        _built(Add(name="a"), [(3, 4, 4)])
    with pytest.raises(GeometryError, match="several branches"):
        Concat(name="c").build((3, 4, 4))
