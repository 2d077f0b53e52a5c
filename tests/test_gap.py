"""GAP ops: NumPy spec vs plain loops, float64 gradient checks, channel-slice views, errors;
kernels vs NumPy (emulator / GPU) including strided views, odd planes and grid striding."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.ops import gap
from gpuconv.ops._checks import OpArgumentError
from helpers import numeric_grad, poison, rel_error

SHAPES = [(1, 1, 1, 1), (2, 3, 4, 5), (3, 7, 1, 1), (2, 5, 7, 7), (1, 2, 33, 31), (4, 9, 8, 8)]


def loop_gap(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    y = np.zeros((n, c), np.float64)
    for i in range(n):
        for j in range(c):
            s = 0.0
            for a in range(h):
                for b in range(w):
                    s += float(x[i, j, a, b])
            y[i, j] = s / (h * w)
    return y


def loop_gap_backward(dy: np.ndarray, shape) -> np.ndarray:
    n, c, h, w = shape
    dx = np.zeros(shape, np.float64)
    for i in range(n):
        for j in range(c):
            for a in range(h):
                for b in range(w):
                    dx[i, j, a, b] = dy[i, j] / (h * w)
    return dx


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_match_loops(shape, rng: np.random.Generator) -> None:
    x = rng.standard_normal(shape)
    y = gap.gap_forward(x)
    assert y.shape == shape[:2] and y.dtype == np.float64
    assert rel_error(y, loop_gap(x)) < 1e-14
    dy = rng.standard_normal(shape[:2])
    dx = gap.gap_backward(dy, shape)
    assert dx.shape == shape
    assert rel_error(dx, loop_gap_backward(dy, shape)) < 1e-15
    y32 = gap.gap_forward(x.astype(np.float32))
    assert y32.dtype == np.float32 and rel_error(y32, loop_gap(x.astype(np.float32))) < 1e-6


def test_gradient_check(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 4, 5))
    dy = rng.standard_normal((2, 3))
    num = numeric_grad(lambda: float(np.sum(gap.gap_forward(x) * dy)), x)
    assert rel_error(gap.gap_backward(dy, x.shape), num) < 1e-8


def test_channel_slice_views_on_the_cpu(rng: np.random.Generator) -> None:
    buf = rng.standard_normal((3, 10, 5, 6))
    np.testing.assert_array_equal(gap.gap_forward(buf[:, 2:7]), gap.gap_forward(np.ascontiguousarray(buf[:, 2:7])))
    keep = buf.copy()
    dy = rng.standard_normal((3, 4))
    dx = gap.gap_backward(dy, (3, 4, 5, 6), out=buf[:, 6:10])
    np.testing.assert_array_equal(dx, gap.gap_backward(dy, (3, 4, 5, 6)))
    np.testing.assert_array_equal(buf[:, :6], keep[:, :6])
    out = np.full((3, 5), np.nan)
    assert gap.gap_forward(buf[:, 0:5], out=out) is out
    assert gap.gap_output_shape((3, 5, 2, 2)) == (3, 5)


def test_bad_inputs() -> None:
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(OpArgumentError, match="gap_forward: x must have 4 dimensions"):
        gap.gap_forward(np.zeros((2, 3), np.float32))
    with pytest.raises(OpArgumentError, match="x must be float32 or float64"):
        gap.gap_forward(x.astype(np.int64))
    with pytest.raises(OpArgumentError, match="empty H x W plane"):
        gap.gap_forward(np.zeros((2, 3, 0, 4), np.float32))
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        gap.gap_forward(np.zeros((2, 3, 4, 8), np.float32)[..., ::2])
    with pytest.raises(OpArgumentError, match=r"out must have shape \(2, 3\)"):
        gap.gap_forward(x, out=np.zeros((2, 4), np.float32))
    with pytest.raises(OpArgumentError, match="out must be float32"):
        gap.gap_forward(x, out=np.zeros((2, 3), np.float64))
    with pytest.raises(OpArgumentError, match=r"gap_backward: dy must have shape \(2, 3\)"):
        gap.gap_backward(np.zeros((2, 4), np.float32), (2, 3, 4, 4))
    with pytest.raises(OpArgumentError, match="input_shape must be 4 non-negative integers"):
        gap.gap_backward(np.zeros((2, 3), np.float32), (2, 3, 4))
    with pytest.raises(OpArgumentError, match=r"out must have shape \(2, 3, 4, 4\)"):
        gap.gap_backward(np.zeros((2, 3), np.float32), (2, 3, 4, 4), out=np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(OpArgumentError, match="out must be float32"):
        gap.gap_backward(np.zeros((2, 3), np.float32), (2, 3, 4, 4), out=np.zeros((2, 3, 4, 4)))


# ------------------------------------------------------------------------------------------ GPU

GPU_SHAPES = SHAPES + [(2, 3, 17, 19), (8, 64, 7, 7), (1, 1, 129, 1), (3, 5, 2, 16)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_matches_cpu_fp32(shape, cp, rng: np.random.Generator) -> None:
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape[:2]).astype(np.float32)
    y = gap.gap_forward(cp.asarray(x), out=poison(cp, shape[:2]))
    assert rel_error(y, gap.gap_forward(x)) < 1e-6 and not cp.isnan(y).any()
    assert rel_error(y, loop_gap(x)) < 1e-6
    dx = gap.gap_backward(cp.asarray(dy), shape, out=poison(cp, shape))
    np.testing.assert_array_equal(cp.asnumpy(dx), gap.gap_backward(dy, shape))   # one division, exact


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 3, 1, 1), (4, 2, 9, 7)])
def test_gpu_channel_slice_views(shape, cp, rng: np.random.Generator) -> None:
    n, c, h, w = shape
    buf = rng.standard_normal((n, c + 5, h, w)).astype(np.float32)
    y = gap.gap_forward(cp.asarray(buf)[:, 2:2 + c], out=poison(cp, (n, c)))
    assert rel_error(y, loop_gap(buf[:, 2:2 + c])) < 1e-6
    dy = rng.standard_normal((n, c)).astype(np.float32)
    dxbuf = poison(cp, (n, c + 3, h, w))
    dx = gap.gap_backward(cp.asarray(dy), shape, out=dxbuf[:, 1:1 + c])
    np.testing.assert_array_equal(cp.asnumpy(dx), gap.gap_backward(dy, shape))
    rest = cp.asnumpy(dxbuf)
    assert np.isnan(rest[:, 0]).all() and np.isnan(rest[:, 1 + c:]).all()


@pytest.mark.gpu
def test_gpu_warps_grid_stride_over_planes(cp, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gap, "_MAX_BLOCKS", 1)    # 8 warps for 3*7 = 21 planes
    x = rng.standard_normal((3, 7, 5, 13)).astype(np.float32)
    y = gap.gap_forward(cp.asarray(x), out=poison(cp, (3, 7)))
    assert rel_error(y, loop_gap(x)) < 1e-6
    dy = rng.standard_normal((3, 7)).astype(np.float32)
    dx = gap.gap_backward(cp.asarray(dy), x.shape, out=poison(cp, x.shape))
    np.testing.assert_array_equal(cp.asnumpy(dx), gap.gap_backward(dy, x.shape))


@pytest.mark.gpu
def test_gpu_float64(cp, rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 5, 9, 11))
    dy = rng.standard_normal((3, 5))
    y = gap.gap_forward(cp.asarray(x), out=poison(cp, (3, 5), np.float64))
    assert y.dtype == np.float64 and rel_error(y, loop_gap(x)) < 1e-14
    dx = gap.gap_backward(cp.asarray(dy), x.shape, out=poison(cp, x.shape, np.float64))
    np.testing.assert_array_equal(cp.asnumpy(dx), gap.gap_backward(dy, x.shape))


@pytest.mark.gpu
def test_gpu_bad_inputs(cp) -> None:
    xg = cp.zeros((2, 3, 4, 4), cp.float32)
    with pytest.raises(OpArgumentError, match="out is on cpu"):
        gap.gap_forward(xg, out=np.zeros((2, 3), np.float32))
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        gap.gap_forward(cp.zeros((2, 3, 4, 8), cp.float32)[..., ::2])
    with pytest.raises(OpArgumentError, match="out is on cpu"):
        gap.gap_backward(cp.zeros((2, 3), cp.float32), (2, 3, 4, 4), out=np.zeros((2, 3, 4, 4), np.float32))
