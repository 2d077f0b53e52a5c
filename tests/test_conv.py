"""conv: NumPy path vs plain loops, float64 gradient checks, edge cases, errors; GPU vs NumPy."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.geometry import GeometryError
from gpuconv.ops import conv as C
from gpuconv.ops._checks import OpArgumentError
from helpers import numeric_grad, poison, rel_error

# (N, Cin, H, W, K, FH, FW, stride, pad, dilation): odd sizes, batch 1, stride > 1,
# dilation, 1x1, non-square filters, strides that skip input pixels.
GEOMS = [
    (2, 3, 7, 7, 4, 3, 3, 1, 1, 1),
    (1, 1, 5, 6, 2, 1, 1, 1, 0, 1),
    (2, 2, 8, 8, 3, 2, 2, 3, 0, 1),     # stride 3 leaves pixels uncovered
    (1, 3, 9, 7, 2, 3, 3, 2, 1, 2),     # stride and dilation
    (3, 2, 6, 9, 5, 2, 3, 1, 2, 1),     # non-square filter, pad > F/2
    (1, 2, 11, 11, 3, 3, 3, 1, 0, 3),   # dilation 3
    (2, 1, 15, 15, 2, 11, 11, 4, 0, 1),  # AlexNet-style 11x11/4
]


def _geom_id(g: tuple) -> str:
    n, c, h, w, k, fh, fw, s, p, d = g
    return f"n{n}c{c}_{h}x{w}_k{k}f{fh}x{fw}s{s}p{p}d{d}"


def _make(rng: np.random.Generator, g: tuple, dtype=np.float64):
    n, c, h, w, k, fh, fw, s, p, d = g
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c, fh, fw)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    return x, wt, b, s, p, d


# ----------------------------------------------------------------------------------
# CPU: shapes and values
# ----------------------------------------------------------------------------------

def test_output_shape():
    assert C.conv_output_shape((2, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1) == (2, 96, 55, 55)
    assert C.conv_output_shape((1, 3, 32, 32), (8, 3, 3, 3), 1, 1, 1) == (1, 8, 32, 32)
    assert C.conv_output_shape((1, 3, 32, 32), (8, 3, 3, 3), 1, 2, 2) == (1, 8, 32, 32)  # dilated, F_eff 5
    assert C.conv_output_shape((1, 1, 9, 6), (1, 1, 3, 2), 1, 0, 1) == (1, 1, 7, 5)
    with pytest.raises(GeometryError, match="not an integer"):
        C.conv_output_shape((1, 3, 10, 10), (8, 3, 3, 3), 2, 0, 1)
    with pytest.raises(GeometryError, match="does not fit"):
        C.conv_output_shape((1, 3, 4, 4), (8, 3, 3, 3), 1, 0, 3)
    with pytest.raises(OpArgumentError, match="input channels"):
        C.conv_output_shape((1, 3, 8, 8), (8, 4, 3, 3))


@pytest.mark.parametrize("g", GEOMS, ids=_geom_id)
def test_forward_matches_loops(rng, g):
    x, w, b, s, p, d = _make(rng, g)
    ref = C.conv_forward_loops(x, w, b, s, p, d)
    y = C.conv_forward(x, w, b, s, p, d)
    assert y.shape == ref.shape and y.dtype == np.float64
    assert rel_error(y, ref) < 1e-12
    y_nob = C.conv_forward(x, w, None, s, p, d)
    assert rel_error(y_nob, C.conv_forward_loops(x, w, None, s, p, d)) < 1e-12
    # fused ReLU == ReLU after
    assert rel_error(C.conv_forward(x, w, b, s, p, d, relu=True), np.maximum(ref, 0)) < 1e-12


def test_forward_float32_close_to_float64(rng):
    x, w, b, s, p, d = _make(rng, (4, 5, 12, 13, 7, 3, 3, 1, 1, 1))
    y64 = C.conv_forward(x, w, b, s, p, d)
    y32 = C.conv_forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), s, p, d)
    assert y32.dtype == np.float32
    assert rel_error(y32, y64) < 1e-5
    dy = rng.standard_normal(y64.shape)
    dx32 = C.conv_backward_data(dy.astype(np.float32), w.astype(np.float32), x.shape, s, p, d)
    assert dx32.dtype == np.float32
    assert rel_error(dx32, C.conv_backward_data(dy, w, x.shape, s, p, d)) < 1e-5
    dw32, db32 = C.conv_backward_filter(x.astype(np.float32), dy.astype(np.float32), w.shape, s, p, d)
    dw64, db64 = C.conv_backward_filter(x, dy, w.shape, s, p, d)
    assert dw32.dtype == np.float32 and db32.dtype == np.float32
    assert rel_error(dw32, dw64) < 1e-5 and rel_error(db32, db64) < 1e-5


@pytest.mark.parametrize("g", GEOMS, ids=_geom_id)
def test_backward_is_adjoint(rng, g):
    """<conv(x), dy> == <x, dX(dy)> == <w, dW(x, dy)>: exact linear-algebra identities."""
    x, w, b, s, p, d = _make(rng, g)
    y = C.conv_forward(x, w, None, s, p, d)
    dy = rng.standard_normal(y.shape)
    dx = C.conv_backward_data(dy, w, x.shape, s, p, d)
    dw, db = C.conv_backward_filter(x, dy, w.shape, s, p, d)
    lhs = float(np.sum(y * dy))
    assert abs(lhs - float(np.sum(x * dx))) <= 1e-10 * max(1.0, abs(lhs))
    assert abs(lhs - float(np.sum(w * dw))) <= 1e-10 * max(1.0, abs(lhs))
    assert np.allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)


GRAD_GEOMS = [
    (2, 2, 5, 6, 3, 3, 3, 1, 1, 1),
    (1, 2, 7, 8, 2, 3, 2, 2, 1, 1),
    (2, 1, 7, 9, 2, 2, 2, 2, 1, 2),
    (1, 2, 4, 5, 3, 1, 1, 1, 0, 1),
    (1, 1, 8, 8, 2, 2, 2, 3, 0, 1),
]


@pytest.mark.parametrize("g", GRAD_GEOMS, ids=_geom_id)
def test_gradients_numeric(rng, g):
    x, w, b, s, p, d = _make(rng, g)
    dy = rng.standard_normal(C.conv_output_shape(x.shape, w.shape, s, p, d))

    def loss() -> float:
        return float(np.sum(C.conv_forward(x, w, b, s, p, d) * dy))

    dx = C.conv_backward_data(dy, w, x.shape, s, p, d)
    dw, db = C.conv_backward_filter(x, dy, w.shape, s, p, d)
    assert rel_error(dx, numeric_grad(loss, x)) < 1e-7
    assert rel_error(dw, numeric_grad(loss, w)) < 1e-7
    assert rel_error(db, numeric_grad(loss, b)) < 1e-7


def test_gradient_through_fused_relu(rng):
    """The layer masks dy with y > 0 before the conv backward: check that chain numerically."""
    x, w, b, s, p, d = _make(rng, (2, 2, 6, 6, 3, 3, 3, 1, 1, 1))
    dy = rng.standard_normal(C.conv_output_shape(x.shape, w.shape, s, p, d))

    def loss() -> float:
        return float(np.sum(C.conv_forward(x, w, b, s, p, d, relu=True) * dy))

    y = C.conv_forward(x, w, b, s, p, d, relu=True)
    dym = dy * (y > 0)
    assert rel_error(C.conv_backward_data(dym, w, x.shape, s, p, d), numeric_grad(loss, x)) < 1e-6
    assert rel_error(C.conv_backward_filter(x, dym, w.shape, s, p, d)[0], numeric_grad(loss, w)) < 1e-6


def test_out_buffers_are_used_and_overwritten(rng):
    x, w, b, s, p, d = _make(rng, (2, 3, 6, 7, 4, 3, 3, 1, 1, 1), np.float32)
    yshape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    out = poison(np, yshape)
    y = C.conv_forward(x, w, b, s, p, d, out=out)
    assert y is out and np.isfinite(out).all()
    dy = rng.standard_normal(yshape).astype(np.float32)
    dx_out = poison(np, x.shape)
    assert C.conv_backward_data(dy, w, x.shape, s, p, d, out=dx_out) is dx_out
    assert np.isfinite(dx_out).all()
    dw_out, db_out = np.full(w.shape, 7.0, np.float32), np.full(b.shape, 7.0, np.float32)
    dw, db = C.conv_backward_filter(x, dy, w.shape, s, p, d, dw_out=dw_out, db_out=db_out)
    assert dw is dw_out and db is db_out
    dw2, db2 = C.conv_backward_filter(x, dy, w.shape, s, p, d)  # fresh buffers: same values
    assert rel_error(dw, dw2) == 0 and rel_error(db, db2) == 0
    dw3, db3 = C.conv_backward_filter(x, dy, w.shape, s, p, d, with_bias=False)
    assert db3 is None and rel_error(dw3, dw2) == 0


def test_precision_ignored_on_cpu(rng):
    x, w, b, s, p, d = _make(rng, (1, 2, 5, 5, 2, 3, 3, 1, 1, 1), np.float32)
    assert rel_error(C.conv_forward(x, w, b, precision="tf32"), C.conv_forward(x, w, b)) == 0


def test_choose_variant_is_valid():
    for kind in ("fwd", "bwdd", "bwdf"):
        for rows in (1, 3, 64, 65, 96, 512):
            for cols in (1, 63, 64, 129, 12544, 3_211_264):
                for red in (1, 27, 4608, 3_211_264):
                    bm, bn, splits = C._choose_variant(kind, rows, cols, red, "fp32")
                    assert (bm, bn) in C._TILES
                    assert splits >= 1 and (kind == "bwdf" or splits == 1)
                    assert splits == 1 or red >= splits * 16 * C._BK


# ----------------------------------------------------------------------------------
# CPU: argument errors
# ----------------------------------------------------------------------------------

def test_errors(rng):
    x, w, b, s, p, d = _make(rng, (2, 3, 6, 6, 4, 3, 3, 1, 1, 1), np.float32)
    y = C.conv_forward(x, w, b, 1, 1)
    with pytest.raises(OpArgumentError, match="conv_forward: x must be float32 or float64"):
        C.conv_forward(x.astype(np.int32), w, b)
    with pytest.raises(OpArgumentError, match="conv_forward: w must be float32"):
        C.conv_forward(x, w.astype(np.float64), b)
    with pytest.raises(OpArgumentError, match="conv_forward: b must have shape"):
        C.conv_forward(x, w, b[:2])
    with pytest.raises(OpArgumentError, match="conv_forward: x must have 4 dimensions"):
        C.conv_forward(x[0], w, b)
    with pytest.raises(OpArgumentError, match="conv_forward: x must be C-contiguous"):
        C.conv_forward(x.transpose(0, 1, 3, 2), w, b)
    with pytest.raises(OpArgumentError, match="conv_forward: w must be C-contiguous"):
        C.conv_forward(x, w[:, :, ::-1, :], b)
    with pytest.raises(OpArgumentError, match="input channels"):
        C.conv_forward(x, w[:, :2].copy(), b)
    with pytest.raises(OpArgumentError, match="conv_forward: out must have shape"):
        C.conv_forward(x, w, b, 1, 1, out=np.empty((2, 4, 5, 5), np.float32))
    with pytest.raises(OpArgumentError, match="conv_forward: out must be float32"):
        C.conv_forward(x, w, b, 1, 1, out=np.empty(y.shape, np.float64))
    with pytest.raises(OpArgumentError, match="precision"):
        C.conv_forward(x, w, b, precision="fp16")
    with pytest.raises(OpArgumentError, match="stride"):
        C.conv_forward(x, w, b, stride=0)
    with pytest.raises(OpArgumentError, match="pad"):
        C.conv_forward(x, w, b, pad=1.5)
    with pytest.raises(GeometryError):
        C.conv_forward(x, w, b, stride=2)
    with pytest.raises(OpArgumentError, match="conv_forward: x must be an array"):
        C.conv_forward(x.tolist(), w, b)
    with pytest.raises(OpArgumentError, match="conv_backward_data: dy must have shape"):
        C.conv_backward_data(y, w, x.shape, 1, 0)
    with pytest.raises(OpArgumentError, match="conv_backward_data: w must be float32"):
        C.conv_backward_data(y, w.astype(np.float64), x.shape, 1, 1)
    with pytest.raises(OpArgumentError, match="conv_backward_data: out must have shape"):
        C.conv_backward_data(y, w, x.shape, 1, 1, out=np.empty((2, 3, 6, 5), np.float32))
    with pytest.raises(OpArgumentError, match="conv_backward_data: x_shape"):
        C.conv_backward_data(y, w, x.shape[1:], 1, 1)
    with pytest.raises(OpArgumentError, match="conv_backward_filter: dy must have shape"):
        C.conv_backward_filter(x, y, w.shape, 1, 0)
    with pytest.raises(OpArgumentError, match="conv_backward_filter: dy must be float32"):
        C.conv_backward_filter(x, y.astype(np.float64), w.shape, 1, 1)
    with pytest.raises(OpArgumentError, match="conv_backward_filter: out must have shape"):
        C.conv_backward_filter(x, y, w.shape, 1, 1, db_out=np.empty(3, np.float32))
    with pytest.raises(OpArgumentError, match="conv_backward_filter: out must be float32"):
        C.conv_backward_filter(x, y, w.shape, 1, 1, dw_out=np.empty(w.shape, np.float64))


# ----------------------------------------------------------------------------------
# Kernel source compiles (NVRTC only, no GPU)
# ----------------------------------------------------------------------------------

@pytest.mark.nvrtc
@pytest.mark.slow
def test_kernels_compile_ptx():
    pytest.importorskip("cupy")
    from gpuconv import cuda

    ptx = cuda.compile_ptx("conv", "compute_80")
    for bm, bn in C._TILES:
        for kind in ("fwd", "bwdd", "bwdf"):
            for prec in C.PRECISIONS:
                assert f".entry conv_{kind}_f32_{bm}x{bn}_{prec}(" in ptx
    for name in ("conv_fwd_direct_f64", "conv_bwdd_direct_f64", "conv_bwdf_direct_f64",
                 "conv_bias_grad_f32", "conv_bias_grad_f64"):
        assert f".entry {name}(" in ptx
    assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in ptx


# ----------------------------------------------------------------------------------
# GPU: kernels vs the NumPy path
# ----------------------------------------------------------------------------------

# larger than the tiles in some dimension, K/C not multiples of 64, odd spatial sizes
GPU_GEOMS = GEOMS + [
    (1, 3, 33, 31, 70, 3, 3, 1, 1, 1),
    (3, 37, 13, 13, 130, 3, 3, 1, 1, 1),
    (2, 64, 14, 14, 96, 5, 5, 1, 2, 1),
    (2, 19, 17, 17, 65, 3, 3, 2, 1, 1),
    (2, 16, 21, 21, 24, 3, 3, 1, 4, 4),
    (5, 130, 7, 9, 33, 1, 1, 1, 0, 1),
    (2, 3, 67, 67, 96, 11, 11, 4, 0, 1),
    (1, 256, 6, 6, 3, 3, 3, 1, 1, 1),
]


def _gpu_case(cp, rng, g, dtype=np.float32):
    x, w, b, s, p, d = _make(rng, g, dtype)
    return x, w, b, cp.asarray(x), cp.asarray(w), cp.asarray(b), s, p, d


def _tol(precision: str) -> float:
    # tf32 keeps 10 mantissa bits: ~1e-3 relative per product, averaging out over the sum
    return 1e-4 if precision == "fp32" else 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("precision", C.PRECISIONS)
@pytest.mark.parametrize("g", GPU_GEOMS, ids=_geom_id)
def test_gpu_matches_cpu_fp32(cp, rng, g, precision):
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, g)
    yshape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    for relu in (False, True):
        out = poison(cp, yshape)
        y = C.conv_forward(gx, gw, gb, s, p, d, relu=relu, out=out, precision=precision)
        assert y is out
        ref = C.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), s, p, d, relu=relu)
        assert rel_error(y, ref) < _tol(precision), (g, relu, precision)
    out = poison(cp, yshape)
    C.conv_forward(gx, gw, None, s, p, d, out=out, precision=precision)
    assert rel_error(out, C.conv_forward(x.astype(np.float64), w.astype(np.float64), None, s, p, d)) < _tol(precision)

    dy = rng.standard_normal(yshape).astype(np.float32)
    gdy = cp.asarray(dy)
    dx = poison(cp, x.shape)
    assert C.conv_backward_data(gdy, gw, x.shape, s, p, d, out=dx, precision=precision) is dx
    dx_ref = C.conv_backward_data(dy.astype(np.float64), w.astype(np.float64), x.shape, s, p, d)
    assert rel_error(dx, dx_ref) < _tol(precision), (g, precision)

    dw_out, db_out = poison(cp, w.shape), poison(cp, b.shape)
    dw, db = C.conv_backward_filter(gx, gdy, w.shape, s, p, d, dw_out=dw_out, db_out=db_out, precision=precision)
    assert dw is dw_out and db is db_out
    dw_ref, db_ref = C.conv_backward_filter(x.astype(np.float64), dy.astype(np.float64), w.shape, s, p, d)
    assert rel_error(dw, dw_ref) < _tol(precision), (g, precision)
    assert rel_error(db, db_ref) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("precision", C.PRECISIONS)
@pytest.mark.parametrize("tile", C._TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_gpu_every_tile_variant(cp, rng, monkeypatch, tile, precision):
    """Force each compiled (BM, BN) entry point and several split counts, so none goes untested."""
    g = (2, 21, 11, 13, 75, 3, 3, 1, 1, 1)
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, g)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    yshape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    dy = rng.standard_normal(yshape).astype(np.float32)
    gdy = cp.asarray(dy)
    for splits in (1, 2, 7, 50):
        monkeypatch.setattr(C, "_choose_variant", lambda *a, **k: (tile[0], tile[1], splits))
        y = C.conv_forward(gx, gw, gb, s, p, d, relu=True, out=poison(cp, yshape), precision=precision)
        assert rel_error(y, C.conv_forward(x64, w64, b64, s, p, d, relu=True)) < _tol(precision)
        dx = C.conv_backward_data(gdy, gw, x.shape, s, p, d, out=poison(cp, x.shape), precision=precision)
        assert rel_error(dx, C.conv_backward_data(dy.astype(np.float64), w64, x.shape, s, p, d)) < _tol(precision)
        dw, _ = C.conv_backward_filter(gx, gdy, w.shape, s, p, d, with_bias=False,
                                       dw_out=poison(cp, w.shape), precision=precision)
        dw_ref, _ = C.conv_backward_filter(x64, dy.astype(np.float64), w.shape, s, p, d)
        assert rel_error(dw, dw_ref) < _tol(precision), (tile, splits, precision)


@pytest.mark.gpu
@pytest.mark.parametrize("g", GPU_GEOMS[:7] + GPU_GEOMS[-3:-1], ids=_geom_id)
def test_gpu_float64_matches_cpu(cp, rng, g):
    """The GPU float64 path vs the gradient-checked CPU float64 path."""
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, g, np.float64)
    yshape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    out = poison(cp, yshape, np.float64)
    C.conv_forward(gx, gw, gb, s, p, d, relu=True, out=out)
    assert rel_error(out, C.conv_forward(x, w, b, s, p, d, relu=True)) < 1e-10
    dy = rng.standard_normal(yshape)
    gdy = cp.asarray(dy)
    dx = poison(cp, x.shape, np.float64)
    C.conv_backward_data(gdy, gw, x.shape, s, p, d, out=dx)
    assert rel_error(dx, C.conv_backward_data(dy, w, x.shape, s, p, d)) < 1e-10
    dw_out, db_out = poison(cp, w.shape, np.float64), poison(cp, b.shape, np.float64)
    C.conv_backward_filter(gx, gdy, w.shape, s, p, d, dw_out=dw_out, db_out=db_out)
    dw_ref, db_ref = C.conv_backward_filter(x, dy, w.shape, s, p, d)
    assert rel_error(dw_out, dw_ref) < 1e-10 and rel_error(db_out, db_ref) < 1e-10


@pytest.mark.gpu
def test_gpu_backward_filter_split_reduction_large(cp, rng):
    """A long N*Ho*Wo reduction (many splits + atomicAdd) on a VGG-like shape."""
    g = (8, 32, 56, 56, 64, 3, 3, 1, 1, 1)
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, g)
    dy = rng.standard_normal(C.conv_output_shape(x.shape, w.shape, s, p, d)).astype(np.float32)
    dw, db = C.conv_backward_filter(gx, cp.asarray(dy), w.shape, s, p, d,
                                    dw_out=poison(cp, w.shape), db_out=poison(cp, b.shape))
    dw_ref, db_ref = C.conv_backward_filter(x.astype(np.float64), dy.astype(np.float64), w.shape, s, p, d)
    assert rel_error(dw, dw_ref) < 1e-4 and rel_error(db, db_ref) < 1e-4


@pytest.mark.gpu
def test_gpu_errors(cp, rng):
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, (2, 3, 6, 6, 4, 3, 3, 1, 1, 1))
    gy = C.conv_forward(gx, gw, gb, 1, 1)
    with pytest.raises(OpArgumentError, match="conv_forward: w is on cpu"):
        C.conv_forward(gx, w, gb)
    with pytest.raises(OpArgumentError, match="conv_forward: b is on cpu"):
        C.conv_forward(gx, gw, b)
    with pytest.raises(OpArgumentError, match="conv_forward: out is on cpu"):
        C.conv_forward(gx, gw, gb, 1, 1, out=np.empty(gy.shape, np.float32))
    with pytest.raises(OpArgumentError, match="conv_forward: x must be float32 or float64"):
        C.conv_forward(gx.astype(cp.float16), gw, gb)
    with pytest.raises(OpArgumentError, match="conv_forward: x must be C-contiguous"):
        C.conv_forward(gx.transpose(0, 1, 3, 2), gw, gb)
    with pytest.raises(OpArgumentError, match="conv_backward_data: w is on cpu"):
        C.conv_backward_data(gy, w, x.shape, 1, 1)
    with pytest.raises(OpArgumentError, match="conv_backward_filter: dy is on cpu"):
        C.conv_backward_filter(gx, cp.asnumpy(gy), w.shape, 1, 1)
    with pytest.raises(OpArgumentError, match="conv_backward_filter: out is on cpu"):
        C.conv_backward_filter(gx, gy, w.shape, 1, 1, dw_out=np.empty(w.shape, np.float32))
