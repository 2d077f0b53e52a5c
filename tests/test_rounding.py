"""CONV and max POOL that round their output size (PyTorch's floor, Caffe's ceil) where the notes'
integer rule has no answer: against loop code with the padded windows written out, and float64
gradient checks.  The layers give the ops the rounded size; nothing pads a copy of the input."""
import math

import numpy as np
import pytest

from gpuconv.geometry import GeometryError
from gpuconv.layers import Conv, MaxPool
from gpuconv.layers.rounding import ConvRounded, MaxPoolRounded
from tests.helpers import numeric_grad, rel_error


def _size(n, f, s, p, rounding):
    return (math.floor if rounding == "floor" else math.ceil)((n + 2 * p - f) / s) + 1


def _conv_ref(x, w, b, s, p, ho, wo):
    n, c, h, wd = x.shape
    k, _, f, _ = w.shape
    big = np.zeros((n, c, h + 2 * p + f + s, wd + 2 * p + f + s))  # zeros past the input on every side
    big[:, :, p:p + h, p:p + wd] = x
    y = np.zeros((n, k, ho, wo))
    for r in range(ho):
        for q in range(wo):
            y[:, :, r, q] = np.einsum("ncij,kcij->nk", big[:, :, r * s:r * s + f, q * s:q * s + f], w) + b
    return y


def _layer(layer, in_shape, params=None):
    layer.dtype = np.dtype(np.float64)
    layer.build(in_shape)
    layer.params = params or {}
    layer.grads = {k: np.zeros_like(v) for k, v in layer.params.items()}
    return layer


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
@pytest.mark.parametrize("h,f,s,p", [(8, 3, 2, 1), (8, 1, 2, 0), (10, 7, 2, 3), (9, 3, 2, 1), (7, 5, 3, 1)])
def test_conv_rounding_matches_loops_and_gradients(rng, rounding, h, f, s, p):
    w = rng.standard_normal((3, 2, f, f))
    b = rng.standard_normal(3)
    conv = _layer(Conv(3, f, s, p, rounding=rounding), (2, h, h), {"w": w, "b": b})
    ho = _size(h, f, s, p, rounding)
    if rounding == "ceil" and (ho - 1) * s >= h + p:
        ho -= 1  # PyTorch's rule: the last window starts inside the input or its left padding
    assert conv.out_shape == (3, ho, ho)
    x = rng.standard_normal((2, 2, h, h))
    y = conv.forward(x, train=True)
    assert rel_error(y, _conv_ref(x, w, b, s, p, ho, ho)) < 1e-12
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy.copy())

    def f_():
        out = conv.forward(x, train=False)
        return float(np.sum(out * dy))
    assert rel_error(numeric_grad(f_, x), dx) < 1e-6
    conv.forward(x, train=True)
    conv.backward(dy.copy())
    assert rel_error(numeric_grad(f_, w), conv.grads["w"]) < 1e-6


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
@pytest.mark.parametrize("h,f,s,p", [(112, 3, 2, 1), (8, 3, 2, 0), (9, 3, 2, 0), (6, 2, 2, 0)])
def test_maxpool_rounding_matches_loops(rng, rounding, h, f, s, p):
    pool = _layer(MaxPool(f, s, p, rounding=rounding), (2, h, h))
    ho = _size(h, f, s, p, rounding)
    assert pool.out_shape == (2, ho, ho)
    x = rng.permutation(2 * h * h).reshape(1, 2, h, h) * 1e-2   # distinct: no ties, finite differences safe
    y = pool.forward(x, train=True)
    big = np.full((1, 2, h + 2 * p + f + s, h + 2 * p + f + s), -np.inf)
    big[:, :, p:p + h, p:p + h] = x
    ref = np.array([[[[big[0, c, r * s:r * s + f, q * s:q * s + f].max() for q in range(ho)] for r in range(ho)]
                     for c in range(2)]])
    assert rel_error(y, ref) == 0.0
    dx = pool.backward(np.ones_like(y))
    assert dx.shape == x.shape and dx.sum() == y.size  # each output's gradient lands on one input
    if h < 20:
        dy = rng.standard_normal(y.shape)
        pool.forward(x, train=True)
        dx = pool.backward(dy.copy())
        assert rel_error(numeric_grad(lambda: float(np.sum(pool.forward(x, train=False) * dy)), x, 1e-6), dx) < 1e-7


def test_exact_geometry_is_the_ordinary_layer(rng):
    conv = _layer(ConvRounded(4, 3, 1, 1), (2, 6, 6), {"w": rng.standard_normal((4, 2, 3, 3)), "b": np.zeros(4)})
    assert conv.exact and conv.out_shape == (4, 6, 6) and conv.rounding == "floor"
    assert not _layer(Conv(4, 3, 2, 1, rounding="floor"), (2, 8, 8)).exact
    assert MaxPoolRounded(3, 2).rounding == "floor" and isinstance(MaxPoolRounded(3, 2), MaxPool)
    with pytest.raises(GeometryError, match="not an integer"):
        Conv(4, 3, 2, 1, name="c").build((2, 8, 8))   # the notes' rule stays the default
    with pytest.raises(GeometryError, match="does not fit"):
        ConvRounded(4, 5, 2, 0, name="c").build((2, 3, 3))
    with pytest.raises(ValueError, match="rounding"):
        MaxPoolRounded(3, 2, rounding="nearest")
    with pytest.raises(ValueError, match="max pooling only"):
        from gpuconv.layers import AvgPool
        AvgPool(3, 2, rounding="ceil")


def test_rounded_layers_plan_no_padded_copy():
    from gpuconv.memory import make_plan
    from gpuconv.zoo import get_model
    net = get_model("resnet18")
    layers = {layer.name: layer for layer in net.layers}
    assert layers["conv1"].out_shape == (64, 112, 112) and layers["conv1"].rounding == "floor"   # 7x7/2 p3 over 224
    assert layers["maxpool"].out_shape == (64, 56, 56)
    assert layers["layer2.0.proj"].out_shape == (128, 28, 28)   # 1x1/2 over 56: the last row never read
    plan = make_plan(net, 2, optimizer="sgd")
    assert not any(t.name.endswith(".pad") for t in plan.tensors)
    assert not any(t.kind == "workspace" and t.name.startswith(("conv1", "maxpool")) for t in plan.tensors)


@pytest.mark.parametrize("h,f,s,p", [(8, 1, 2, 0), (8, 3, 2, 1), (6, 2, 4, 0), (10, 3, 3, 0), (10, 3, 4, 1)])
def test_ceil_never_adds_a_window_of_padding_only(h, f, s, p):
    """PyTorch's ceil_mode rule: the extra window must start inside the input or its left padding."""
    pool = MaxPoolRounded(f, s, p, rounding="ceil")
    pool.name = "pool"
    out = pool.build((1, h, h))[1]
    ceil = _size(h, f, s, p, "ceil")
    expect = ceil - 1 if (ceil - 1) * s >= h + p else ceil
    assert out == expect
    x = np.arange(h * h, dtype=np.float32).reshape(1, 1, h, h) - 1e3   # all negative: -inf shows
    assert np.isfinite(pool.forward(x, train=False)).all()
