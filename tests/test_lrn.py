"""Local response normalization: NumPy path vs loops, gradient checks, GPU vs NumPy."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.ops._checks import OpArgumentError
from gpuconv.ops.lrn import lrn_backward, lrn_forward
from tests.helpers import numeric_grad, poison, rel_error


def loop_lrn(x, size, alpha, beta, k):
    """Plain loops over every element and its channel window (PyTorch's convention)."""
    n, c, h, w = x.shape
    x = x.astype(np.float64)
    scale = np.empty_like(x)
    for a in range(n):
        for ch in range(c):
            lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
            for i in range(h):
                for j in range(w):
                    s = sum(x[a, q, i, j] ** 2 for q in range(lo, hi + 1))
                    scale[a, ch, i, j] = k + alpha / size * s
    return x * scale ** (-beta), scale


CASES = [  # (shape, size, alpha, beta, k)
    ((2, 7, 3, 4), 5, 1e-4, 0.75, 2.0),     # AlexNet constants
    ((1, 6, 2, 3), 4, 0.5, 0.75, 1.0),      # even size: window [c-2, c+1]
    ((2, 3, 3, 1), 7, 0.3, 0.6, 1.5),       # window wider than C
    ((1, 5, 1, 1), 1, 1.0, 1.0, 1.0),       # size 1: pointwise
    ((3, 1, 2, 2), 5, 0.2, 0.75, 2.0),      # single channel
]


@pytest.mark.parametrize("shape,size,alpha,beta,k", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_loops(rng, shape, size, alpha, beta, k, dtype):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    ry, rs = loop_lrn(x, size, alpha, beta, k)
    y, s = lrn_forward(x, size, alpha, beta, k)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert y.dtype == dtype and s.dtype == dtype
    assert rel_error(y, ry) < tol
    assert rel_error(s, rs) < tol


def test_alexnet_defaults(rng):
    x = rng.standard_normal((2, 8, 3, 3)).astype(np.float32)
    y, s = lrn_forward(x)
    ry, rs = loop_lrn(x, 5, 1e-4, 0.75, 2.0)
    assert rel_error(y, ry) < 1e-6 and rel_error(s, rs) < 1e-6


@pytest.mark.parametrize("shape,size,alpha,beta,k", CASES)
def test_backward_gradient_check(rng, shape, size, alpha, beta, k):
    if alpha < 1e-2:
        alpha = 0.5  # make the cross-channel term large enough to be checked tightly
    x = rng.standard_normal(shape) * 2
    dy = rng.standard_normal(shape)

    def loss() -> float:
        y, _ = lrn_forward(x, size, alpha, beta, k)
        return float(np.sum(y * dy))

    y, s = lrn_forward(x, size, alpha, beta, k)
    dx = lrn_backward(dy, x, y, s, size, alpha, beta, k)
    assert rel_error(dx, numeric_grad(loss, x)) < 1e-7


def test_backward_float32_matches_float64(rng):
    x = rng.standard_normal((2, 9, 4, 5)) * 2
    dy = rng.standard_normal(x.shape)
    y, s = lrn_forward(x, 5, 0.1, 0.75, 2.0)
    ref = lrn_backward(dy, x, y, s, 5, 0.1, 0.75, 2.0)
    f = [a.astype(np.float32) for a in (dy, x, y, s)]
    got = lrn_backward(*f, 5, 0.1, 0.75, 2.0)
    assert got.dtype == np.float32 and rel_error(got, ref) < 1e-5


def test_out_buffers_are_used(rng):
    x = rng.standard_normal((2, 4, 3, 3))
    out, sc = np.full_like(x, np.nan), np.full_like(x, np.nan)
    y, s = lrn_forward(x, out=out, scale_out=sc)
    assert y is out and s is sc and np.isfinite(y).all() and np.isfinite(s).all()
    dx_o = np.full_like(x, np.nan)
    dx = lrn_backward(x, x, y, s, out=dx_o)
    assert dx is dx_o and np.isfinite(dx).all()


def test_errors(rng):
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    with pytest.raises(OpArgumentError, match="lrn_forward: x must be float32 or float64"):
        lrn_forward(x.astype(np.int32))
    with pytest.raises(OpArgumentError, match="x must have 4 dimensions"):
        lrn_forward(x[0])
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        lrn_forward(x[:, ::2])
    with pytest.raises(OpArgumentError, match="size must be an integer >= 1"):
        lrn_forward(x, size=0)
    with pytest.raises(OpArgumentError, match="k must be > 0"):
        lrn_forward(x, k=0.0)
    with pytest.raises(OpArgumentError, match="out must have shape"):
        lrn_forward(x, out=np.empty((2, 4, 3, 2), np.float32))
    with pytest.raises(OpArgumentError, match="scale_out must be float32"):
        lrn_forward(x, scale_out=np.empty(x.shape, np.float64))
    y, s = lrn_forward(x)
    with pytest.raises(OpArgumentError, match="lrn_backward: scale must have shape"):
        lrn_backward(x, x, y, s[:1].copy())
    with pytest.raises(OpArgumentError, match="lrn_backward: dy must be float32"):
        lrn_backward(x.astype(np.float64), x, y, s)


# ----------------------------------------------------------------------------- GPU

GPU_CASES = [
    ((2, 7, 3, 4), 5, 1e-4, 0.75, 2.0),
    ((1, 96, 27, 27), 5, 1e-4, 0.75, 2.0),   # AlexNet-like, batch 1
    ((3, 13, 5, 7), 4, 0.5, 0.75, 1.0),
    ((2, 3, 1, 1), 7, 0.3, 0.6, 1.5),
    ((5, 33, 17, 9), 3, 0.1, 0.5, 1.0),
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape,size,alpha,beta,k", GPU_CASES)
def test_gpu_fp32_matches_numpy(cp, rng, shape, size, alpha, beta, k):
    x64 = rng.standard_normal(shape) * 3
    dy64 = rng.standard_normal(shape)
    ry, rs = lrn_forward(x64, size, alpha, beta, k)
    rdx = lrn_backward(dy64, x64, ry, rs, size, alpha, beta, k)
    x = cp.asarray(x64.astype(np.float32))
    out, sc = poison(cp, shape), poison(cp, shape)
    y, s = lrn_forward(x, size, alpha, beta, k, out=out, scale_out=sc)
    assert y is out and s is sc
    assert rel_error(y, ry) < 1e-4
    assert rel_error(s, rs) < 1e-4
    dx_o = poison(cp, shape)
    dx = lrn_backward(cp.asarray(dy64.astype(np.float32)), x, y, s, size, alpha, beta, k, out=dx_o)
    assert dx is dx_o
    assert rel_error(dx, rdx) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("shape,size,alpha,beta,k", GPU_CASES)
def test_gpu_float64_matches_cpu(cp, rng, shape, size, alpha, beta, k):
    x = rng.standard_normal(shape) * 3
    dy = rng.standard_normal(shape)
    ry, rs = lrn_forward(x, size, alpha, beta, k)
    rdx = lrn_backward(dy, x, ry, rs, size, alpha, beta, k)
    gx = cp.asarray(x)
    y, s = lrn_forward(gx, size, alpha, beta, k)
    dx = lrn_backward(cp.asarray(dy), gx, y, s, size, alpha, beta, k)
    assert y.dtype == np.float64
    assert rel_error(y, ry) < 1e-10
    assert rel_error(s, rs) < 1e-10
    assert rel_error(dx, rdx) < 1e-10


@pytest.mark.gpu
def test_gpu_errors(cp, rng):
    x = cp.asarray(rng.standard_normal((2, 4, 3, 3)).astype(np.float32))
    with pytest.raises(OpArgumentError, match="x must be float32 or float64"):
        lrn_forward(x.astype(cp.int32))
    with pytest.raises(OpArgumentError, match="x must have 4 dimensions"):
        lrn_forward(x[0])
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        lrn_forward(x[:, ::2])
    with pytest.raises(OpArgumentError, match="out is on cpu"):
        lrn_forward(x, out=np.empty(x.shape, np.float32))
    y, s = lrn_forward(x)
    with pytest.raises(OpArgumentError, match="dy is on cpu"):
        lrn_backward(cp.asnumpy(x), x, y, s)
    with pytest.raises(OpArgumentError, match="scale must have shape"):
        lrn_backward(x, x, y, s[:1].copy())


