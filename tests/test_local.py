"""Locally-connected layer: NumPy path vs loops, gradient checks, GPU vs NumPy."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.geometry import GeometryError
from gpuconv.ops._checks import OpArgumentError
from gpuconv.ops.local import (local_backward_data, local_backward_filter, local_forward,
                               local_output_shape)
from tests.helpers import numeric_grad, poison, rel_error


def loop_local(x, w, b, stride, pad, dil):
    """y[n,k,i,j] by plain loops over every output and every tap."""
    n, c, h, wd = x.shape
    ho, wo, k, _, fh, fw = w.shape
    y = np.zeros((n, k, ho, wo))
    for a in range(n):
        for kk in range(k):
            for i in range(ho):
                for j in range(wo):
                    s = 0.0 if b is None else float(b[kk, i, j])
                    for ch in range(c):
                        for p in range(fh):
                            for q in range(fw):
                                hh, ww = i * stride - pad + p * dil, j * stride - pad + q * dil
                                if 0 <= hh < h and 0 <= ww < wd:
                                    s += float(w[i, j, kk, ch, p, q]) * float(x[a, ch, hh, ww])
                    y[a, kk, i, j] = s
    return y


def make(rng, n, c, h, w, k, fh, fw, stride, pad, dil, dtype=np.float64, bias=True):
    _, _, ho, wo = local_output_shape((n, c, h, w), k, fh, fw, stride, pad, dil)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((ho, wo, k, c, fh, fw)) / np.sqrt(c * fh * fw)).astype(dtype)
    b = rng.standard_normal((k, ho, wo)).astype(dtype) if bias else None
    return x, wt, b


CASES = [  # n, c, h, w, k, fh, fw, stride, pad, dil
    (2, 3, 5, 5, 2, 3, 3, 1, 0, 1),
    (1, 2, 7, 8, 3, 3, 2, 2, 1, 1),
    (2, 2, 7, 6, 1, 2, 3, 1, 2, 2),
    (3, 1, 4, 4, 2, 1, 1, 1, 0, 1),
    (1, 3, 10, 7, 2, 3, 3, 3, 1, 1),
]


def test_output_shape():
    assert local_output_shape((2, 3, 32, 32), 16, 5, 5, 1, 2) == (2, 16, 32, 32)
    assert local_output_shape((1, 3, 227, 227), 96, 11, 11, 4, 0) == (1, 96, 55, 55)
    assert local_output_shape((1, 3, 9, 9), 4, 3, 3, 1, 0, 2) == (1, 4, 5, 5)
    with pytest.raises(GeometryError, match="local"):
        local_output_shape((1, 3, 10, 10), 4, 3, 3, 2, 0)
    with pytest.raises(GeometryError):
        local_output_shape((1, 3, 2, 2), 4, 3, 3, 1, 0)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_loops(rng, case, dtype, bias):
    *dims, stride, pad, dil = case
    x, w, b = make(rng, *dims, stride, pad, dil, dtype, bias)
    y = local_forward(x, w, b, stride, pad, dil)
    assert y.dtype == dtype
    assert rel_error(y, loop_local(x, w, b, stride, pad, dil)) < (1e-5 if dtype == np.float32 else 1e-13)


def test_shared_weights_equal_convolution(rng):
    # With the same filters at every position a locally-connected layer is a CONV layer.
    x = rng.standard_normal((2, 3, 6, 6))
    f = rng.standard_normal((4, 3, 3, 3))
    w = np.ascontiguousarray(np.broadcast_to(f, (4, 4) + f.shape))
    y = local_forward(x, w, None)
    conv = np.zeros((2, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            conv[:, :, i, j] = np.einsum("nchw,kchw->nk", x[:, :, i:i + 3, j:j + 3], f)
    assert rel_error(y, conv) < 1e-13


@pytest.mark.parametrize("case", CASES)
def test_gradient_check(rng, case):
    *dims, stride, pad, dil = case
    x, w, b = make(rng, *dims, stride, pad, dil)
    dy = rng.standard_normal(local_output_shape(x.shape, w.shape[2], w.shape[4], w.shape[5], stride, pad, dil))

    def loss() -> float:
        return float(np.sum(local_forward(x, w, b, stride, pad, dil) * dy))

    dx = local_backward_data(dy, w, x.shape, stride, pad, dil)
    dw, db = local_backward_filter(x, dy, w.shape, stride, pad, dil)
    assert rel_error(dx, numeric_grad(loss, x)) < 1e-7
    assert rel_error(dw, numeric_grad(loss, w)) < 1e-7
    assert rel_error(db, numeric_grad(loss, b)) < 1e-7
    dw2, none = local_backward_filter(x, dy, w.shape, stride, pad, dil, with_bias=False)
    assert none is None and rel_error(dw2, dw) == 0.0


def test_out_buffers_are_used(rng):
    x, w, b = make(rng, 2, 3, 5, 5, 2, 3, 3, 1, 1, 1)
    out = np.full((2, 2, 5, 5), np.nan)
    assert local_forward(x, w, b, 1, 1, out=out) is out and np.isfinite(out).all()
    dx_o = np.full(x.shape, np.nan)
    assert local_backward_data(out, w, x.shape, 1, 1, out=dx_o) is dx_o and np.isfinite(dx_o).all()
    dw_o, db_o = np.full(w.shape, np.nan), np.full(b.shape, np.nan)
    dw, db = local_backward_filter(x, out, w.shape, 1, 1, dw_out=dw_o, db_out=db_o)
    assert dw is dw_o and db is db_o and np.isfinite(dw).all() and np.isfinite(db).all()


def test_errors(rng):
    x, w, b = make(rng, 2, 3, 5, 5, 2, 3, 3, 1, 0, 1, np.float32)
    with pytest.raises(OpArgumentError, match="local_forward: x must be float32 or float64"):
        local_forward(x.astype(np.float16), w, b)
    with pytest.raises(OpArgumentError, match="w must be float32"):
        local_forward(x, w.astype(np.float64), b)
    with pytest.raises(OpArgumentError, match="w has C=3 input channels but x has 2"):
        local_forward(x[:, :2].copy(), w, b)
    with pytest.raises(OpArgumentError, match="w is for a 3x3 output"):
        local_forward(x, w, b, pad=1)
    with pytest.raises(OpArgumentError, match="w must have 6 dimensions"):
        local_forward(x, w[0], b)
    with pytest.raises(OpArgumentError, match="b must have shape"):
        local_forward(x, w, b[:1].copy())
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        local_forward(np.asfortranarray(x), w, b)
    with pytest.raises(OpArgumentError, match="stride must be an integer >= 1"):
        local_forward(x, w, b, stride=0)
    with pytest.raises(GeometryError):
        local_forward(x, w, b, stride=3)
    with pytest.raises(OpArgumentError, match="out must have shape"):
        local_forward(x, w, b, out=np.empty((2, 2, 3, 4), np.float32))
    y = local_forward(x, w, b)
    with pytest.raises(OpArgumentError, match="local_backward_data: dy must have shape"):
        local_backward_data(y[:1].copy(), w, x.shape)
    with pytest.raises(OpArgumentError, match="x_shape must be"):
        local_backward_data(y, w, x.shape[1:])
    with pytest.raises(OpArgumentError, match="local_backward_filter: dy must have shape"):
        local_backward_filter(x, y[:, :1].copy(), w.shape)
    with pytest.raises(OpArgumentError, match="dw_out must have shape"):
        local_backward_filter(x, y, w.shape, dw_out=np.empty(w.shape[1:], np.float32))
    with pytest.raises(OpArgumentError, match="db_out was given but with_bias is False"):
        local_backward_filter(x, y, w.shape, with_bias=False, db_out=np.empty(b.shape, np.float32))


# ----------------------------------------------------------------------------- GPU

GPU_CASES = [  # n, c, h, w, k, fh, fw, stride, pad, dil
    (1, 3, 8, 8, 4, 3, 3, 1, 1, 1),
    (17, 5, 9, 7, 17, 3, 3, 2, 1, 1),      # N, K not multiples of the 16x16 tile; R = 45
    (2, 1, 6, 6, 1, 1, 1, 1, 0, 1),        # R = 1
    (3, 7, 11, 10, 33, 3, 2, 1, 2, 2),     # dilation, asymmetric filter
    (20, 16, 12, 12, 16, 5, 5, 1, 0, 1),   # exact tiles: R = 400 = 25 x 16
    (4, 3, 13, 13, 5, 4, 4, 3, 0, 1),      # stride 3
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_gpu_fp32_matches_numpy(cp, rng, case, bias):
    *dims, stride, pad, dil = case
    x64, w64, b64 = make(rng, *dims, stride, pad, dil, np.float64, bias)
    ry = local_forward(x64, w64, b64, stride, pad, dil)
    dy64 = rng.standard_normal(ry.shape)
    rdx = local_backward_data(dy64, w64, x64.shape, stride, pad, dil)
    rdw, rdb = local_backward_filter(x64, dy64, w64.shape, stride, pad, dil, with_bias=bias)

    x, w, dy = (cp.asarray(a.astype(np.float32)) for a in (x64, w64, dy64))
    b = None if b64 is None else cp.asarray(b64.astype(np.float32))
    out = poison(cp, ry.shape)
    assert local_forward(x, w, b, stride, pad, dil, out=out) is out
    assert rel_error(out, ry) < 1e-4
    dx_o = poison(cp, x.shape)
    assert local_backward_data(dy, w, x.shape, stride, pad, dil, out=dx_o) is dx_o
    assert rel_error(dx_o, rdx) < 1e-4
    dw_o = poison(cp, w.shape)
    db_o = poison(cp, rdb.shape) if bias else None
    dw, db = local_backward_filter(x, dy, w.shape, stride, pad, dil, with_bias=bias, dw_out=dw_o, db_out=db_o)
    assert dw is dw_o and rel_error(dw, rdw) < 1e-4
    if bias:
        assert db is db_o and rel_error(db, rdb) < 1e-4
    else:
        assert db is None


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES[:4])
def test_gpu_float64_matches_cpu(cp, rng, case):
    # The CPU float64 path is gradient-checked above; the GPU float64 path must agree with it.
    *dims, stride, pad, dil = case
    x, w, b = make(rng, *dims, stride, pad, dil)
    y = local_forward(x, w, b, stride, pad, dil)
    dy = rng.standard_normal(y.shape)
    dx = local_backward_data(dy, w, x.shape, stride, pad, dil)
    dw, db = local_backward_filter(x, dy, w.shape, stride, pad, dil)
    gx, gw, gb, gdy = (cp.asarray(a) for a in (x, w, b, dy))
    assert rel_error(local_forward(gx, gw, gb, stride, pad, dil), y) < 1e-10
    assert rel_error(local_backward_data(gdy, gw, x.shape, stride, pad, dil), dx) < 1e-10
    gdw, gdb = local_backward_filter(gx, gdy, w.shape, stride, pad, dil)
    assert gdw.dtype == np.float64
    assert rel_error(gdw, dw) < 1e-10 and rel_error(gdb, db) < 1e-10


@pytest.mark.gpu
def test_gpu_errors(cp, rng):
    x64, w64, b64 = make(rng, 2, 3, 5, 5, 2, 3, 3, 1, 0, 1, np.float32)
    x, w, b = cp.asarray(x64), cp.asarray(w64), cp.asarray(b64)
    with pytest.raises(OpArgumentError, match="w is on cpu"):
        local_forward(x, w64, b)
    with pytest.raises(OpArgumentError, match="b is on cpu"):
        local_forward(x, w, b64)
    with pytest.raises(OpArgumentError, match="x must be float32 or float64"):
        local_forward(x.astype(cp.float16), w, b)
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        local_forward(x[:, :, :, ::-1], w, b)
    with pytest.raises(OpArgumentError, match="w must have 6 dimensions"):
        local_forward(x, w[0], b)
    y = local_forward(x, w, b)
    with pytest.raises(OpArgumentError, match="w is on cpu"):
        local_backward_data(y, w64, x.shape)
    with pytest.raises(OpArgumentError, match="dy is on cpu"):
        local_backward_filter(x, cp.asnumpy(y), w.shape)
    with pytest.raises(OpArgumentError, match="dw_out is on cpu"):
        local_backward_filter(x, y, w.shape, dw_out=np.empty(w.shape, np.float32))


