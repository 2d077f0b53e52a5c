"""RELU ops: NumPy spec vs plain loops, gradient checks, in-place use, errors; GPU vs NumPy."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.ops import activation as act
from gpuconv.ops._checks import OpArgumentError
from helpers import numeric_grad, poison, rel_error

SHAPES = [(1,), (7,), (3, 5), (2, 3, 5, 7), (1, 1, 1, 1), (4, 33, 9, 11)]
SLOPES = [0.0, 0.01, 0.2]


def loop_relu(x: np.ndarray, slope: float) -> np.ndarray:
    s = x.dtype.type(slope)  # same precision as the op
    flat = [v if (v > 0 or v != v) else (x.dtype.type(0) if slope == 0 else s * v) for v in x.reshape(-1)]
    return np.array(flat, dtype=x.dtype).reshape(x.shape)


def loop_relu_backward(dy: np.ndarray, y: np.ndarray, slope: float) -> np.ndarray:
    s = dy.dtype.type(slope)
    flat = [g if v > 0 else (dy.dtype.type(0) if slope == 0 else s * g)
            for g, v in zip(dy.reshape(-1), y.reshape(-1))]
    return np.array(flat, dtype=dy.dtype).reshape(dy.shape)


def _away_from_zero(rng: np.random.Generator, shape) -> np.ndarray:
    x = rng.standard_normal(shape)
    return x + np.sign(x) * 0.01  # finite differences never cross the kink


@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_match_loops(shape, slope: float, rng: np.random.Generator) -> None:
    x = rng.standard_normal(shape)
    y = act.relu_forward(x, slope)
    np.testing.assert_array_equal(y, loop_relu(x, slope))
    dy = rng.standard_normal(shape)
    dx = act.relu_backward(dy, y, slope)
    np.testing.assert_array_equal(dx, loop_relu_backward(dy, y, slope))
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, slope * dy))


@pytest.mark.parametrize("slope", SLOPES)
def test_gradient_check(slope: float, rng: np.random.Generator) -> None:
    x = _away_from_zero(rng, (2, 3, 4, 5))
    dy = rng.standard_normal(x.shape)
    num = numeric_grad(lambda: float(np.sum(act.relu_forward(x, slope) * dy)), x)
    assert rel_error(act.relu_backward(dy, act.relu_forward(x, slope), slope), num) < 1e-8


def test_in_place_and_out(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    ref = loop_relu(x, 0.1)
    x2 = x.copy()
    y = act.relu_forward(x2, 0.1, out=x2)
    assert y is x2
    np.testing.assert_array_equal(y, ref)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    expect = loop_relu_backward(dy, y, 0.1)
    dy2 = dy.copy()
    dx = act.relu_backward(dy2, y, 0.1, out=dy2)
    assert dx is dy2 and dx.dtype == np.float32
    np.testing.assert_array_equal(dx, expect)
    out = np.full(x.shape, np.nan, np.float32)
    assert act.relu_forward(x, out=out) is out
    np.testing.assert_array_equal(out, np.maximum(x, 0))


def test_special_values() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-300, -1e-300])
    y = act.relu_forward(x)
    np.testing.assert_array_equal(y, [np.nan, np.inf, 0, 0, 0, 1e-300, 0])
    assert not np.signbit(y[2:]).any()  # exact +0, not -0
    np.testing.assert_array_equal(act.relu_forward(x, 0.5), [np.nan, np.inf, -np.inf, 0, 0, 1e-300, -5e-301])
    dy = np.array([np.inf, np.nan, 1.0, 2.0])
    yy = np.array([0.0, -1.0, np.nan, 2.0])
    np.testing.assert_array_equal(act.relu_backward(dy, yy), [0.0, 0.0, 0.0, 2.0])
    np.testing.assert_array_equal(act.relu_backward(dy, yy, 0.5), [np.inf, np.nan, 0.5, 2.0])


def test_bad_inputs() -> None:
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(OpArgumentError, match="relu_forward: x must be float32 or float64"):
        act.relu_forward(x.astype(np.int64))
    with pytest.raises(OpArgumentError, match="relu_forward: x must be C-contiguous"):
        act.relu_forward(np.zeros((4, 6), np.float32)[:, ::2])
    with pytest.raises(OpArgumentError, match="slope"):
        act.relu_forward(x, -0.1)
    with pytest.raises(OpArgumentError, match="slope"):
        act.relu_forward(x, float("nan"))
    with pytest.raises(OpArgumentError, match="out must have shape"):
        act.relu_forward(x, out=np.zeros((3, 2), np.float32))
    with pytest.raises(OpArgumentError, match="out must be float32"):
        act.relu_forward(x, out=np.zeros((2, 3), np.float64))
    with pytest.raises(OpArgumentError, match="relu_backward: y must have shape"):
        act.relu_backward(x, np.zeros((2, 4), np.float32))
    with pytest.raises(OpArgumentError, match="relu_backward: y must be float32"):
        act.relu_backward(x, np.zeros((2, 3), np.float64))
    with pytest.raises(OpArgumentError, match="relu_backward: dy must be an array"):
        act.relu_backward(1.0, x)


# ------------------------------------------------------------------------------------------ GPU

GPU_SHAPES = SHAPES + [(1025,), (4096 + 3,), (8, 64, 17, 19), (3, 1000)]


@pytest.mark.gpu
@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_matches_cpu_fp32(shape, slope: float, cp, rng: np.random.Generator) -> None:
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y_ref = act.relu_forward(x, slope)
    dx_ref = act.relu_backward(dy, y_ref, slope)
    xg, dyg = cp.asarray(x), cp.asarray(dy)
    y = act.relu_forward(xg, slope, out=poison(cp, shape))
    assert rel_error(y, y_ref) < 1e-6 and not cp.isnan(y).any()
    dx = act.relu_backward(dyg, y, slope, out=poison(cp, shape))
    assert rel_error(dx, dx_ref) < 1e-6 and not cp.isnan(dx).any()
    # in place
    assert act.relu_forward(xg, slope, out=xg) is xg
    assert rel_error(xg, y_ref) < 1e-6
    assert act.relu_backward(dyg, xg, slope, out=dyg) is dyg
    assert rel_error(dyg, dx_ref) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("slope", SLOPES)
def test_gpu_float64_matches_cpu(slope: float, cp, rng: np.random.Generator) -> None:
    x = _away_from_zero(rng, (3, 5, 7, 9))
    dy = rng.standard_normal(x.shape)
    y = act.relu_forward(cp.asarray(x), slope, out=poison(cp, x.shape, np.float64))
    dx = act.relu_backward(cp.asarray(dy), y, slope, out=poison(cp, x.shape, np.float64))
    y_ref = act.relu_forward(x, slope)
    assert y.dtype == np.float64 and rel_error(y, y_ref) < 1e-14
    assert rel_error(dx, act.relu_backward(dy, y_ref, slope)) < 1e-14


@pytest.mark.gpu
@pytest.mark.parametrize("slope", [0.0, 0.5])
def test_gpu_special_values_match_cpu(slope: float, cp) -> None:
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0], np.float32)
    dy = np.array([np.inf, np.nan, 1.0, 2.0, -np.inf, 5.0, 6.0, np.nan, 7.0], np.float32)
    y_ref = act.relu_forward(x, slope)
    y = act.relu_forward(cp.asarray(x), slope)
    np.testing.assert_array_equal(cp.asnumpy(y), y_ref)
    np.testing.assert_array_equal(cp.asnumpy(act.relu_backward(cp.asarray(dy), y, slope)),
                                  act.relu_backward(dy, y_ref, slope))


@pytest.mark.gpu
def test_gpu_bad_inputs(cp) -> None:
    xg = cp.zeros((2, 3), cp.float32)
    with pytest.raises(OpArgumentError, match="x must be float32 or float64"):
        act.relu_forward(xg.astype(cp.float16))
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        act.relu_forward(cp.zeros((4, 6), cp.float32)[:, ::2])
    with pytest.raises(OpArgumentError, match="out is on cpu"):
        act.relu_forward(xg, out=np.zeros((2, 3), np.float32))
    with pytest.raises(OpArgumentError, match="relu_backward: y is on cpu"):
        act.relu_backward(xg, np.zeros((2, 3), np.float32))
    with pytest.raises(OpArgumentError, match="shape"):
        act.relu_backward(xg, cp.zeros((3, 2), cp.float32))


# ----------------------------------------------------------------- channel-slice views (concat buffers)

def test_channel_slice_views_on_the_cpu(rng: np.random.Generator) -> None:
    buf = rng.standard_normal((3, 9, 4, 5))
    x = np.ascontiguousarray(buf[:, 2:6])
    ybuf = np.full((3, 7, 4, 5), 7.0)
    y = act.relu_forward(buf[:, 2:6], 0.1, out=ybuf[:, 3:7])
    np.testing.assert_array_equal(y, loop_relu(x, 0.1))
    assert (ybuf[:, :3] == 7.0).all()
    expect = loop_relu_backward(np.ascontiguousarray(buf[:, 5:9]), y, 0.1)
    dx = act.relu_backward(buf[:, 5:9], y, 0.1, out=buf[:, 5:9])   # in place on a slice
    np.testing.assert_array_equal(dx, expect)


@pytest.mark.gpu
@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 1, 1, 1), (5, 3, 7, 9), (4, 70)])
def test_gpu_channel_slice_views(shape, slope: float, cp, rng: np.random.Generator) -> None:
    """x, y, dy, dx each a channel slice of its own bigger buffer; other channels untouched."""
    n, c = shape[:2]
    rest = shape[2:]
    xbuf = rng.standard_normal((n, c + 3, *rest)).astype(np.float32)
    dybuf = rng.standard_normal((n, c + 1, *rest)).astype(np.float32)
    x, dy = np.ascontiguousarray(xbuf[:, 1:1 + c]), np.ascontiguousarray(dybuf[:, 1:])
    y_ref = act.relu_forward(x, slope)
    dx_ref = act.relu_backward(dy, y_ref, slope)
    ybuf = poison(cp, (n, c + 2, *rest))
    y = act.relu_forward(cp.asarray(xbuf)[:, 1:1 + c], slope, out=ybuf[:, 2:])
    np.testing.assert_array_equal(cp.asnumpy(y), y_ref)
    assert np.isnan(cp.asnumpy(ybuf)[:, :2]).all()
    dxbuf = poison(cp, (n, c + 2, *rest))
    dx = act.relu_backward(cp.asarray(dybuf)[:, 1:], y, slope, out=dxbuf[:, :c])
    np.testing.assert_array_equal(cp.asnumpy(dx), dx_ref)
    assert np.isnan(cp.asnumpy(dxbuf)[:, c:]).all()
    xg = cp.asarray(xbuf)
    act.relu_forward(xg[:, 1:1 + c], slope, out=xg[:, 1:1 + c])   # in place on a slice
    got = cp.asnumpy(xg)
    np.testing.assert_array_equal(got[:, 1:1 + c], y_ref)
    np.testing.assert_array_equal(got[:, [0, c + 1, c + 2]], xbuf[:, [0, c + 1, c + 2]])
