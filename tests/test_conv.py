"""conv: NumPy path vs plain loops, float64 gradient checks, edge cases, errors; GPU vs NumPy."""
from __future__ import annotations

from dataclasses import replace
from math import gcd

import numpy as np
import pytest

from gpuconv import cuda
from gpuconv.geometry import GeometryError
from gpuconv.ops import autotune
from gpuconv.ops import conv as C
from gpuconv.ops import conv_gpu as G
from gpuconv.ops._checks import OpArgumentError
from gpuconv.ops.add import add_forward
from helpers import configure, device_tf32, numeric_grad, poison, rel_error, tf32_truncate

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
                    bm, bn, splits = G._choose_variant(kind, rows, cols, red, "fp32")
                    assert (bm, bn) in G._TILES
                    assert splits >= 1 and (kind == "bwdf" or splits == 1)
                    assert splits == 1 or red >= splits * 16 * G._BK


# ----------------------------------------------------------------------------------
# Direct backward-data: plan, chooser, and a NumPy transcription of the kernel's indexing
# ----------------------------------------------------------------------------------

def _random_direct_geom(rng: np.random.Generator, c: int) -> tuple:
    """A valid random geometry with c input channels: odd sizes, stride 1-4, dilation 1-3, padding."""
    n = int(rng.choice([1, 2, 3]))
    k = int(rng.integers(1, 40))
    s, d, p = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(0, 4))
    fh, fw = (int(v) for v in rng.choice([1, 2, 3, 4, 5, 7], size=2))
    dims = []
    for f in (fh, fw):
        fe = d * (f - 1) + 1
        lo = max(0, -(-(2 * p - fe + 1) // s))  # smallest output-1 giving an input >= 1
        dims.append((int(rng.integers(lo, lo + 9)) * s) + fe - 2 * p)  # (H - fe + 2p) a multiple of s
    h, w = dims
    return (n, c, h, w, k, fh, fw, s, p, d)


def _emulate_bwdd_direct(dy: np.ndarray, w: np.ndarray, x_shape: tuple, s: int, p: int, d: int,
                         plan: dict) -> np.ndarray:
    """NumPy transcription of bwdd_direct in kernels/conv.cu (same residue classes, taps, tiles
    and shared-memory tile bounds), so its index arithmetic is checked without a GPU."""
    n_, c_, h_, w_ = x_shape
    _, _, fh_, fw_ = w.shape
    ho_, wo_ = dy.shape[2:]
    ti, tj = plan["tile"]
    dx = np.full(x_shape, np.nan)

    def axis_taps(r: int, f: int) -> tuple[int, int, int, int, int]:
        g = gcd(s, d)
        step, dstep = s // g, d // g
        for f0 in range(min(step, f)):
            q = r + p - f0 * d
            if q % s == 0:
                return f0, (f - 1 - f0) // step + 1, step, dstep, q // s
        return 0, 0, step, dstep, 0

    hsm, wsm = -(-h_ // s), -(-w_ // s)
    for rh in range(s):
        for rw in range(s):
            hs = -(-(h_ - rh) // s) if rh < h_ else 0
            ws = -(-(w_ - rw) // s) if rw < w_ else 0
            f0h, nvh, sth, dsh, oh0 = axis_taps(rh, fh_)
            f0w, nvw, stw, dsw, ow0 = axis_taps(rw, fw_)
            for i0 in range(0, hsm, ti):
                for j0 in range(0, wsm, tj):
                    if i0 >= hs or j0 >= ws:
                        continue
                    acc = np.zeros((n_, c_, ti, tj))
                    if nvh > 0 and nvw > 0:
                        rows, cols = ti + (nvh - 1) * dsh, tj + (nvw - 1) * dsw
                        assert rows <= plan["rs"] and cols <= plan["pitch"] and nvh * nvw <= plan["ts"]
                        oh_base, ow_base = oh0 - (nvh - 1) * dsh + i0, ow0 - (nvw - 1) * dsw + j0
                        tile = np.zeros(dy.shape[:2] + (rows, cols))
                        for r in range(rows):
                            oh = oh_base + r
                            if 0 <= oh < ho_:
                                for cc in range(cols):
                                    if 0 <= ow_base + cc < wo_:
                                        tile[:, :, r, cc] = dy[:, :, oh, ow_base + cc]
                        for a in range(nvh):
                            for b in range(nvw):
                                r0, q0 = (nvh - 1 - a) * dsh, (nvw - 1 - b) * dsw
                                acc += np.einsum("kc,nkij->ncij", w[:, :, f0h + a * sth, f0w + b * stw],
                                                 tile[:, :, r0:r0 + ti, q0:q0 + tj])
                    for i in range(ti):
                        for j in range(tj):
                            if i0 + i < hs and j0 + j < ws:
                                dx[:, :, rh + s * (i0 + i), rw + s * (j0 + j)] = acc[:, :, i, j]
    return dx


DIRECT_GEOMS = GEOMS + [
    (1, 3, 67, 67, 5, 11, 11, 4, 0, 1),   # AlexNet conv1, shrunk
    (1, 2, 7, 9, 3, 3, 2, 4, 3, 2),       # stride 4 > window extent: pixels with no taps
    (1, 1, 5, 5, 2, 1, 1, 4, 0, 1),       # 1x1 / stride 4
    (2, 2, 13, 11, 3, 3, 3, 2, 2, 3),     # gcd(stride, dilation) = 1, dilation 3
    (1, 2, 13, 13, 2, 3, 3, 2, 2, 2),     # dilation == stride
]


@pytest.mark.parametrize("g", DIRECT_GEOMS, ids=_geom_id)
def test_direct_bwdd_indexing_emulated(rng, g):
    x, w, _, s, p, d = _make(rng, g)
    dy = rng.standard_normal(C.conv_output_shape(x.shape, w.shape, s, p, d))
    n, c, h, wd, k, fh, fw = g[:7]
    for tile in G._DIRECT_TILES:
        plan = G._bwdd_direct_plan(n, c, h, wd, k, fh, fw, s, d, tile=tile)
        assert plan is not None
        dx = _emulate_bwdd_direct(dy, w, x.shape, s, p, d, plan)
        assert rel_error(dx, C.conv_backward_data(dy, w, x.shape, s, p, d)) < 1e-12, (g, tile)


def test_direct_bwdd_indexing_emulated_random(rng):
    for _ in range(12):
        g = _random_direct_geom(rng, int(rng.integers(1, 4)))
        x, w, _, s, p, d = _make(rng, g)
        dy = rng.standard_normal(C.conv_output_shape(x.shape, w.shape, s, p, d))
        plan = G._bwdd_direct_plan(*g[:7], s, d, tile=G._DIRECT_TILES[int(rng.integers(0, 2))])
        dx = _emulate_bwdd_direct(dy, w, x.shape, s, p, d, plan)
        assert rel_error(dx, C.conv_backward_data(dy, w, x.shape, s, p, d)) < 1e-12, g


def test_direct_bwdd_plan_is_valid():
    for c in (1, 2, 3, 4, 5, 8, 37, 64):
        for s in (1, 2, 3, 4):
            for d in (1, 2, 3):
                for f in (1, 3, 5, 11):
                    for ct in (None, *G._DIRECT_CTS):
                        plan = G._bwdd_direct_plan(2, c, 57, 31, 70, f, f, s, d, ct=ct)
                        if plan is None:  # only a huge dilated window may not fit shared memory
                            assert (f - 1) * d // gcd(s, d) > 40
                            continue
                        ti, tj = plan["tile"]
                        assert plan["ct"] in G._DIRECT_CTS and (ct is None or plan["ct"] == ct)
                        assert plan["func"] == f"conv_bwdd_direct_f32_c{plan['ct']}_{ti}x{tj}"
                        assert plan["smem"] <= G._DIRECT_SMEM_MAX and 1 <= plan["kc"] <= 8
                        assert plan["pitch"] % 32 == (tj // 4) % 32 and plan["pitch"] % 8 == 0
                        assert plan["ctp"] % 4 == 0 or plan["ctp"] == plan["ct"] <= 2


def test_choose_bwdd_picks_direct_where_gemm_wastes():
    alex = G._choose_bwdd(128, 3, 227, 227, 96, 11, 11, 4, 1)   # AlexNet conv1 3->96 11x11/4
    assert alex is not None and alex["ct"] == 3
    l1 = G._choose_bwdd(128, 3, 128, 128, 96, 11, 11, 1, 1)     # convnet-benchmarks L1
    assert l1 is not None and l1["ct"] == 3
    assert G._choose_bwdd(64, 16, 56, 56, 64, 3, 3, 1, 1) is not None     # C < 32
    assert G._choose_bwdd(64, 256, 56, 56, 256, 3, 3, 2, 1) is not None   # stride 2
    assert G._choose_bwdd(64, 256, 56, 56, 256, 3, 3, 1, 1) is None       # GEMM: C >= 32, stride 1
    assert G._choose_bwdd(128, 64, 64, 64, 128, 9, 9, 1, 1) is None       # L2
    assert G._choose_bwdd(32, 64, 56, 56, 64, 3, 3, 1, 4) is None         # dilated, stride 1


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


def _exact(a: np.ndarray, precision: str) -> np.ndarray:
    """Operands for comparing a GPU precision mode with fp64: for tf32, values the tensor cores
    use exactly, so every kernel must agree with fp64 to fp32-accumulation accuracy (TOL);
    that pins down operand addressing and fragment layout, where a 1e-2 tolerance would hide a
    wrong tap.  test_gpu_tf32_rounds_inputs covers the rounding of arbitrary inputs."""
    return tf32_truncate(a) if precision == "tf32" else a


TOL = 1e-4  # fp32 accumulation order only


def _gpu_case(cp, rng, g, dtype=np.float32, precision="fp32"):
    x, w, b, s, p, d = _make(rng, g, dtype)
    x, w = _exact(x, precision), _exact(w, precision)
    return x, w, b, cp.asarray(x), cp.asarray(w), cp.asarray(b), s, p, d


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", autotune.SCHEDULES)
@pytest.mark.parametrize("precision", C.PRECISIONS)
@pytest.mark.parametrize("g", GPU_GEOMS, ids=_geom_id)
def test_gpu_matches_cpu_fp32(cp, rng, monkeypatch, g, precision, schedule):
    configure(gemm_schedule=schedule)
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, g, precision=precision)
    yshape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    for relu in (False, True):
        out = poison(cp, yshape)
        y = C.conv_forward(gx, gw, gb, s, p, d, relu=relu, out=out, precision=precision)
        assert y is out
        ref = C.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), s, p, d, relu=relu)
        assert rel_error(y, ref) < TOL, (g, relu, precision)
    out = poison(cp, yshape)
    C.conv_forward(gx, gw, None, s, p, d, out=out, precision=precision)
    assert rel_error(out, C.conv_forward(x.astype(np.float64), w.astype(np.float64), None, s, p, d)) < TOL

    dy = _exact(rng.standard_normal(yshape).astype(np.float32), precision)
    gdy = cp.asarray(dy)
    dx = poison(cp, x.shape)
    assert C.conv_backward_data(gdy, gw, x.shape, s, p, d, out=dx, precision=precision) is dx
    dx_ref = C.conv_backward_data(dy.astype(np.float64), w.astype(np.float64), x.shape, s, p, d)
    assert rel_error(dx, dx_ref) < TOL, (g, precision)

    dw_out, db_out = poison(cp, w.shape), poison(cp, b.shape)
    dw, db = C.conv_backward_filter(gx, gdy, w.shape, s, p, d, dw_out=dw_out, db_out=db_out, precision=precision)
    assert dw is dw_out and db is db_out
    dw_ref, db_ref = C.conv_backward_filter(x.astype(np.float64), dy.astype(np.float64), w.shape, s, p, d)
    assert rel_error(dw, dw_ref) < TOL, (g, precision)
    assert rel_error(db, db_ref) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", autotune.SCHEDULES)
def test_gpu_tf32_rounds_inputs(cp, rng, monkeypatch, schedule):
    # Arbitrary fp32 inputs: the TF32 GEMMs must round each operand to nearest (the device's
    # cvt: ties to even on sm_90) and accumulate in fp32.  Against a reference on rounded
    # operands that leaves accumulation error only; against the unrounded fp64 result, TF32
    # error (it is TF32).
    configure(gemm_schedule=schedule)
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, (2, 16, 9, 9, 24, 3, 3, 1, 1, 1))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    xr, wr = device_tf32(cp, x).astype(np.float64), device_tf32(cp, w).astype(np.float64)
    y = C.conv_forward(gx, gw, None, s, p, d, precision="tf32")
    assert rel_error(y, C.conv_forward(xr, wr, None, s, p, d)) < 1e-5
    assert 1e-5 < rel_error(y, C.conv_forward(x64, w64, None, s, p, d)) < 5e-3
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dw, _ = C.conv_backward_filter(gx, cp.asarray(dy), w.shape, s, p, d, precision="tf32")
    dyr = device_tf32(cp, dy).astype(np.float64)
    assert rel_error(dw, C.conv_backward_filter(xr, dyr, w.shape, s, p, d)[0]) < 1e-5
    assert 1e-5 < rel_error(dw, C.conv_backward_filter(x64, dy.astype(np.float64), w.shape, s, p, d)[0]) < 5e-3


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", autotune.SCHEDULES)
@pytest.mark.parametrize("precision", C.PRECISIONS)
@pytest.mark.parametrize("tile", G._TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_gpu_every_tile_variant(cp, rng, monkeypatch, tile, precision, schedule):
    """Force each compiled (BM, BN, schedule) entry point and several split counts, so none goes untested.

    The second geometry has more than 96 rows in every GEMM (K = 110 filters, C = 100
    channels): a 128-row tile's last quarter of A rows is then partly valid, partly not.
    """
    configure(gemm_schedule=schedule)
    monkeypatch.setattr(G, "_choose_bwdd", lambda *a: None)  # small C would pick the direct kernel
    for g, split_counts in (((2, 21, 11, 13, 75, 3, 3, 1, 1, 1), (1, 2, 7, 50)),
                            ((1, 100, 5, 5, 110, 3, 3, 1, 1, 1), (1, 7))):
        x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, g, precision=precision)
        x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
        yshape = C.conv_output_shape(x.shape, w.shape, s, p, d)
        dy = _exact(rng.standard_normal(yshape).astype(np.float32), precision)
        gdy = cp.asarray(dy)
        for splits in split_counts:
            monkeypatch.setattr(G, "_choose_variant", lambda *a, **k: (tile[0], tile[1], splits))
            y = C.conv_forward(gx, gw, gb, s, p, d, relu=True, out=poison(cp, yshape), precision=precision)
            assert rel_error(y, C.conv_forward(x64, w64, b64, s, p, d, relu=True)) < TOL, (g, splits)
            dx = C.conv_backward_data(gdy, gw, x.shape, s, p, d, out=poison(cp, x.shape), precision=precision)
            assert rel_error(dx, C.conv_backward_data(dy.astype(np.float64), w64, x.shape, s, p, d)) < TOL, (g, splits)
            dw, _ = C.conv_backward_filter(gx, gdy, w.shape, s, p, d, with_bias=False,
                                           dw_out=poison(cp, w.shape), precision=precision)
            dw_ref, _ = C.conv_backward_filter(x64, dy.astype(np.float64), w.shape, s, p, d)
            assert rel_error(dw, dw_ref) < TOL, (g, tile, splits, precision)


# ---------------------------------------------------------------- the wgmma kernels (sm_90a)
# KernelConfig(wgmma=True): TF32 implicit GEMMs run conv_*_tf32_wgmma (on the emulator, which
# models wgmma from the PTX ISA; on a GPU only an sm_90 one).  Their tensor cores truncate.
def _use_wgmma(cp, monkeypatch):
    configure(wgmma=True)
    if not isinstance(cp.zeros(1), np.ndarray) and not cuda.wgmma_capable():
        pytest.skip("the wgmma kernels need a compute-capability-9.0 GPU")


def _misaligned(cp, h):
    """h on the device at an address 4 bytes past 16-byte alignment (no 16-byte copies)."""
    base = cp.empty(h.size + 1, dtype=h.dtype)
    v = base[1:].reshape(h.shape)
    v[...] = cp.asarray(h)
    return v


def _spy_launches(monkeypatch):
    launches: list[str] = []
    launch = G.cuda.launch
    monkeypatch.setattr(G.cuda, "launch", lambda m, f, *a, **k: (launches.append(f), launch(m, f, *a, **k))[1])
    return launches


# Geometries for the copy paths: 4-byte A (C*FH*FW, FH*FW and Ho*Wo not multiples of 4),
# 128-row tiles partly filled (K = 110, C = 100), 16-byte A in all three GEMMs (C*FH*FW = 64,
# FH*FW = 4, Ho*Wo = 16), and stride + dilation.
WGMMA_GEOMS = [((2, 21, 11, 13, 75, 3, 3, 1, 1, 1), (1, 2, 7)),
               ((1, 100, 5, 5, 110, 3, 3, 1, 1, 1), (1, 5)),
               ((2, 16, 8, 8, 40, 2, 2, 2, 0, 1), (1, 3)),
               ((1, 12, 13, 13, 20, 3, 3, 2, 2, 2), (1,))]


@pytest.mark.gpu
@pytest.mark.parametrize("tile", G._TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_gpu_wgmma_every_tile(cp, rng, monkeypatch, tile):
    """Each wgmma entry point (forced tile, several split counts) on TF32-exact operands at
    fp32-accumulation accuracy: a wrong descriptor, swizzle, copy role or fragment position
    moves an element by a row or a k and fails at 1e-4."""
    _use_wgmma(cp, monkeypatch)
    monkeypatch.setattr(G, "_choose_bwdd", lambda *a: None)  # the GEMM backward-data at any C and stride
    launches = _spy_launches(monkeypatch)
    for g, split_counts in WGMMA_GEOMS:
        x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, g, precision="tf32")
        x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
        yshape = C.conv_output_shape(x.shape, w.shape, s, p, d)
        dy = _exact(rng.standard_normal(yshape).astype(np.float32), "tf32")
        gdy = cp.asarray(dy)
        for splits in split_counts:
            monkeypatch.setattr(G, "_choose_variant", lambda *a, **k: (tile[0], tile[1], splits))
            y = C.conv_forward(gx, gw, gb, s, p, d, relu=True, out=poison(cp, yshape), precision="tf32")
            assert rel_error(y, C.conv_forward(x64, w64, b64, s, p, d, relu=True)) < TOL, (g, splits)
            dx = C.conv_backward_data(gdy, gw, x.shape, s, p, d, out=poison(cp, x.shape), precision="tf32")
            assert rel_error(dx, C.conv_backward_data(dy.astype(np.float64), w64, x.shape, s, p, d)) < TOL, (g, splits)
            dw, _ = C.conv_backward_filter(gx, gdy, w.shape, s, p, d, with_bias=False,
                                           dw_out=poison(cp, w.shape), precision="tf32")
            dw_ref, _ = C.conv_backward_filter(x64, dy.astype(np.float64), w.shape, s, p, d)
            assert rel_error(dw, dw_ref) < TOL, (g, tile, splits)
    suffix = f"_{tile[0]}x{tile[1]}_tf32_wgmma"
    assert {f"conv_{k}_f32{suffix}" for k in ("fwd", "bwdd", "bwdf")} == set(launches)


@pytest.mark.gpu
def test_gpu_wgmma_misaligned_operands(cp, rng, monkeypatch):
    """Tensors 4 bytes off 16-byte alignment take the 4-byte copies where the 16-byte ones
    would otherwise run (Prob::a_vec4 checks the address, not only the sizes)."""
    _use_wgmma(cp, monkeypatch)
    monkeypatch.setattr(G, "_choose_bwdd", lambda *a: None)
    x, w, b, _, _, _, s, p, d = _gpu_case(cp, rng, WGMMA_GEOMS[2][0], precision="tf32")
    gx, gw = _misaligned(cp, x), _misaligned(cp, w)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    yshape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    dy = _exact(rng.standard_normal(yshape).astype(np.float32), "tf32")
    gdy = _misaligned(cp, dy)
    assert rel_error(C.conv_forward(gx, gw, None, s, p, d, precision="tf32"),
                     C.conv_forward(x64, w64, None, s, p, d)) < TOL
    assert rel_error(C.conv_backward_data(gdy, gw, x.shape, s, p, d, precision="tf32"),
                     C.conv_backward_data(dy.astype(np.float64), w64, x.shape, s, p, d)) < TOL
    dw, _ = C.conv_backward_filter(gx, gdy, w.shape, s, p, d, with_bias=False, precision="tf32")
    assert rel_error(dw, C.conv_backward_filter(x64, dy.astype(np.float64), w.shape, s, p, d)[0]) < TOL


@pytest.mark.gpu
@pytest.mark.parametrize("g", GPU_GEOMS, ids=_geom_id)
def test_gpu_wgmma_matches_cpu(cp, rng, monkeypatch, g):
    """The launchers' own tile choice with the wgmma switch on, over the GPU geometries (the
    backward-data takes the direct kernel where _choose_bwdd picks it, as without wgmma)."""
    _use_wgmma(cp, monkeypatch)
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, g, precision="tf32")
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    yshape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    y = C.conv_forward(gx, gw, gb, s, p, d, relu=True, out=poison(cp, yshape), precision="tf32")
    assert rel_error(y, C.conv_forward(x64, w64, b64, s, p, d, relu=True)) < TOL, g
    dy = _exact(rng.standard_normal(yshape).astype(np.float32), "tf32")
    dx = C.conv_backward_data(cp.asarray(dy), gw, x.shape, s, p, d, out=poison(cp, x.shape), precision="tf32")
    assert rel_error(dx, C.conv_backward_data(dy.astype(np.float64), w64, x.shape, s, p, d)) < TOL, g
    dw, db = C.conv_backward_filter(gx, cp.asarray(dy), w.shape, s, p, d, dw_out=poison(cp, w.shape),
                                    db_out=poison(cp, b.shape), precision="tf32")
    dw_ref, db_ref = C.conv_backward_filter(x64, dy.astype(np.float64), w.shape, s, p, d)
    assert rel_error(dw, dw_ref) < TOL and rel_error(db, db_ref) < 1e-4, g


@pytest.mark.gpu
def test_gpu_wgmma_truncates_to_tf32(cp, rng, monkeypatch):
    # Arbitrary fp32 inputs reach shared memory unrounded and the tensor cores read their top
    # 19 bits: the product of the truncated operands to accumulation accuracy, measurably
    # not the exact one (the mma.sync kernels round to nearest instead).
    _use_wgmma(cp, monkeypatch)
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, (2, 16, 9, 9, 24, 3, 3, 1, 1, 1))
    y = C.conv_forward(gx, gw, None, s, p, d, precision="tf32")
    xt, wt = tf32_truncate(x).astype(np.float64), tf32_truncate(w).astype(np.float64)
    assert rel_error(y, C.conv_forward(xt, wt, None, s, p, d)) < 2e-6
    assert 1e-5 < rel_error(y, C.conv_forward(x.astype(np.float64), w.astype(np.float64), None, s, p, d)) < 5e-3
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dw, _ = C.conv_backward_filter(gx, cp.asarray(dy), w.shape, s, p, d, with_bias=False, precision="tf32")
    dyt = tf32_truncate(dy).astype(np.float64)
    assert rel_error(dw, C.conv_backward_filter(xt, dyt, w.shape, s, p, d)[0]) < 2e-6


def test_wgmma_choice_and_names(monkeypatch):
    # The switch picks the wgmma variant for TF32 on an sm_90 GPU only; fp32 never.
    from gpuconv.kernel_config import KernelConfig
    from gpuconv.ops import conv_variants as CV

    on, off = KernelConfig(wgmma=True), KernelConfig()
    monkeypatch.setattr(cuda, "wgmma_capable", lambda dev_id=None: True)
    assert CV._heuristic(128, 64, "tf32", on) == (128, 64, "wgmma")
    assert CV._heuristic(128, 64, "fp32", on) == (128, 64, "reg")
    p = C.problem("fwd", (8, 64, 16, 16), (128, 64, 3, 3), 1, 1, 1, np.float32, "tf32", "gemm", cfg=on)
    choice = C.select(p, on)
    assert choice.variant == "gemm-wgmma" and choice.kernels[0].endswith("_tf32_wgmma")
    assert C.select(p, off).variant == "gemm" and C.select(p, off).kernels[0].endswith("_tf32")
    assert C.select(replace(p, precision="fp32"), on).variant == "gemm"
    assert G._kernel("bwdf", (64, 128, "wgmma"), "tf32") == "conv_bwdf_f32_64x128_tf32_wgmma"
    assert G._kernel("bwdf", (64, 128, "reg"), "tf32") == "conv_bwdf_f32_64x128_tf32"
    assert G._launch_opts((64, 128, "wgmma")) == {"defines": ("GEMM_WGMMA",), "shared_mem": C.wgmma_smem(64, 128)}
    monkeypatch.setattr(cuda, "wgmma_capable", lambda dev_id=None: False)
    assert CV._heuristic(128, 64, "tf32", on)[2] != "wgmma"
    assert C.select(p, on).variant == "gemm"
    monkeypatch.setattr(cuda, "wgmma_capable", lambda dev_id=None: True)
    assert CV._heuristic(128, 64, "tf32", off)[2] != "wgmma"


def test_wgmma_shared_memory_size_matches_the_kernel():
    # The launcher's dynamic shared memory must cover what conv.cu's igemm_wgmma lays out:
    # WG_STAGES stages of (BM + BN) rows of WG_BK floats, + 1 KB alignment slack.
    import re

    src = cuda.kernel_source("conv")
    d = dict(re.findall(r"#define (WG_BK|WG_STAGES) (\d+)", src))
    assert (int(d["WG_BK"]), int(d["WG_STAGES"])) == (G._WG_BK, G._WG_STAGES)
    assert "constexpr int STAGE = (BM + BN) * 128;" in src and G._WG_BK * 4 == 128
    assert C.wgmma_smem(128, 128) == 99_328 and C.wgmma_smem(64, 64) == 50_176


@pytest.mark.gpu
@pytest.mark.parametrize("precision", C.PRECISIONS)
@pytest.mark.parametrize("g", [g for g in GPU_GEOMS if g[7] > 1], ids=_geom_id)
def test_gpu_gemm_backward_data_at_stride(cp, rng, monkeypatch, g, precision):
    """The implicit-GEMM backward-data at stride > 1 (the direct kernel takes these shapes
    unless its tiles do not fit shared memory): only taps on the output grid contribute."""
    monkeypatch.setattr(G, "_choose_bwdd", lambda *a: None)
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, g, precision=precision)
    yshape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    dy = _exact(rng.standard_normal(yshape).astype(np.float32), precision)
    dx = C.conv_backward_data(cp.asarray(dy), gw, x.shape, s, p, d, out=poison(cp, x.shape), precision=precision)
    dx_ref = C.conv_backward_data(dy.astype(np.float64), w.astype(np.float64), x.shape, s, p, d)
    assert rel_error(dx, dx_ref) < TOL, (g, precision)


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


# ----------------------------------------------------------------------------------
# GPU: the direct backward-data kernel
# ----------------------------------------------------------------------------------

def _record_launches(monkeypatch) -> list[str]:
    names: list[str] = []
    real = G.cuda.launch

    def spy(module, function, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        names.append(function)
        return real(module, function, *a, **kw)

    monkeypatch.setattr(G.cuda, "launch", spy)
    return names


def _check_direct_bwdd(cp, rng, g, precision: str, launches: list[str], expect: str | None = None) -> None:
    n, c, h, wd, k, fh, fw, s, p, d = g
    w = rng.standard_normal((k, c, fh, fw)).astype(np.float32)
    dy = rng.standard_normal(C.conv_output_shape((n, c, h, wd), w.shape, s, p, d)).astype(np.float32)
    launches.clear()
    dx = poison(cp, (n, c, h, wd))
    assert C.conv_backward_data(cp.asarray(dy), cp.asarray(w), (n, c, h, wd), s, p, d, out=dx,
                                precision=precision) is dx
    assert len(launches) == 1 and launches[0].startswith("conv_bwdd_direct_f32_"), (launches, g)
    if expect is not None:
        assert launches[0] == expect, (launches, g)
    ref = C.conv_backward_data(dy.astype(np.float64), w.astype(np.float64), (n, c, h, wd), s, p, d)
    assert rel_error(dx, ref) < 1e-4, (g, launches[0], precision)  # exact fp32 even for tf32 requests


@pytest.mark.gpu
@pytest.mark.parametrize("tile", G._DIRECT_TILES, ids=lambda t: f"{t[0]}x{4 * t[1]}")
@pytest.mark.parametrize("ct", G._DIRECT_CTS)
def test_gpu_direct_bwdd_every_variant_random(cp, rng, monkeypatch, ct, tile):
    """Force each direct entry point on random geometries with C = 1..5 and 37."""
    launches = _record_launches(monkeypatch)
    monkeypatch.setattr(G, "_choose_bwdd", lambda *a: G._bwdd_direct_plan(*a, ct=ct, tile=tile))
    for c in (1, 2, 3, 4, 5, 37):
        for _ in range(3):
            g = _random_direct_geom(rng, c)
            ti, tj = tile[0], 4 * tile[1]
            _check_direct_bwdd(cp, rng, g, "fp32", launches, f"conv_bwdd_direct_f32_c{ct}_{ti}x{tj}")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", C.PRECISIONS)
@pytest.mark.parametrize("g", DIRECT_GEOMS + [
    (1, 5, 31, 29, 70, 3, 3, 1, 1, 1),      # K not a multiple of the k-chunk
    (3, 37, 13, 13, 130, 3, 3, 2, 1, 1),    # C = 37 (channel groups), stride 2
    (2, 3, 67, 67, 96, 11, 11, 4, 0, 1),    # AlexNet conv1 geometry, small image
    (1, 3, 40, 40, 96, 11, 11, 1, 0, 1),    # L1 geometry, small image
    (1, 4, 70, 70, 9, 2, 2, 2, 0, 1),       # several tiles per residue class
], ids=_geom_id)
def test_gpu_direct_bwdd_forced(cp, rng, monkeypatch, g, precision):
    """Force the direct path with the plan's own variant choice (both precisions)."""
    launches = _record_launches(monkeypatch)
    monkeypatch.setattr(G, "_choose_bwdd", lambda *a: G._bwdd_direct_plan(*a))
    _check_direct_bwdd(cp, rng, g, precision, launches)


@pytest.mark.gpu
def test_gpu_direct_bwdd_alexnet_conv1(cp, rng, monkeypatch):
    """The chooser routes AlexNet conv1 (3->96 11x11/4, 227^2) to the direct kernel; check values."""
    launches = _record_launches(monkeypatch)
    _check_direct_bwdd(cp, rng, (2, 3, 227, 227, 96, 11, 11, 4, 0, 1), "fp32", launches,
                       "conv_bwdd_direct_f32_c3_16x64")
    _check_direct_bwdd(cp, rng, (2, 3, 227, 227, 96, 11, 11, 4, 0, 1), "tf32", launches,
                       "conv_bwdd_direct_f32_c3_16x64")


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


# ----------------------------------------------------------------------------------
# The residual fused into the forward epilogue: y = act(conv(x, w) + b + r), against the
# unfused conv followed by add_forward (the reference), bit for bit: the same operations in
# the same order.
# ----------------------------------------------------------------------------------

def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _check_fused_residual(xp, rng, g, dtype=np.float32, **kw):
    """Fused == conv then add (with and without bias and ReLU), and in place (r is out)."""
    x, w, b, s, p, d = _make(rng, g, dtype)
    x, w, b = (xp.asarray(_exact(v, kw.get("precision", "fp32"))) for v in (x, w, b))
    shape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    r = xp.asarray(rng.standard_normal(shape).astype(dtype))
    for bias, relu in ((b, True), (None, False)):
        want = _host(add_forward(C.conv_forward(x, w, bias, s, p, d, **kw), r, relu=relu))
        out = xp.full(shape, np.nan, dtype=dtype)
        got = C.conv_forward(x, w, bias, s, p, d, relu=relu, out=out, residual=r, **kw)
        assert got is out
        assert np.array_equal(_host(got), want), (g, bias is None, relu, kw)
    inplace = r.copy()
    C.conv_forward(x, w, b, s, p, d, relu=True, out=inplace, residual=inplace, **kw)
    assert np.array_equal(_host(inplace), _host(add_forward(C.conv_forward(x, w, b, s, p, d, **kw), r, relu=True)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_residual_cpu_is_conv_then_add(rng, dtype):
    for g in GEOMS[:5]:
        _check_fused_residual(np, rng, g, dtype)


def test_fused_residual_errors(rng):
    x, w, b, s, p, d = _make(rng, GEOMS[0], np.float32)
    shape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    with pytest.raises(OpArgumentError, match="conv_forward: residual must have shape"):
        C.conv_forward(x, w, b, s, p, d, residual=np.zeros(shape[:3] + (shape[3] + 1,), np.float32))
    with pytest.raises(OpArgumentError, match="conv_forward: residual must be float32"):
        C.conv_forward(x, w, b, s, p, d, residual=np.zeros(shape, np.float64))
    with pytest.raises(OpArgumentError, match="conv_forward: residual must be C-contiguous"):
        C.conv_forward(x, w, b, s, p, d, residual=np.zeros(shape[::-1], np.float32).transpose(3, 2, 1, 0))


RES_GEOMS = [(2, 5, 6, 7, 9, 3, 3, 1, 1, 1),      # Winograd-eligible, odd Wo
             (1, 6, 10, 9, 70, 2, 3, 2, 1, 1)]    # stride 2, K > 64: two row tiles


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", autotune.SCHEDULES)
@pytest.mark.parametrize("precision", C.PRECISIONS)
@pytest.mark.parametrize("tile", G._TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_gpu_fused_residual_every_gemm_entry(cp, rng, monkeypatch, tile, precision, schedule):
    configure(gemm_schedule=schedule)
    monkeypatch.setattr(G, "_choose_variant", lambda *a, **k: (tile[0], tile[1], 1))
    launches = _spy_launches(monkeypatch)
    for g in RES_GEOMS:
        _check_fused_residual(cp, rng, g, precision=precision, algo="gemm")
    suffix = "" if schedule == "reg" else f"_{schedule}"
    assert set(launches) == {f"conv_fwd_f32_{tile[0]}x{tile[1]}_{precision}{suffix}", "add_fwd_f32"}


@pytest.mark.gpu
@pytest.mark.parametrize("tile", G._TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_gpu_fused_residual_wgmma(cp, rng, monkeypatch, tile):
    _use_wgmma(cp, monkeypatch)
    monkeypatch.setattr(G, "_choose_variant", lambda *a, **k: (tile[0], tile[1], 1))
    launches = _spy_launches(monkeypatch)
    for g in RES_GEOMS:
        _check_fused_residual(cp, rng, g, precision="tf32", algo="gemm")
    assert f"conv_fwd_f32_{tile[0]}x{tile[1]}_tf32_wgmma" in launches


@pytest.mark.gpu
def test_gpu_fused_residual_float64_direct(cp, rng, monkeypatch):
    launches = _spy_launches(monkeypatch)
    for g in RES_GEOMS:
        _check_fused_residual(cp, rng, g, np.float64)
    assert "conv_fwd_direct_f64" in launches


@pytest.mark.gpu
@pytest.mark.parametrize("precision", C.PRECISIONS)
def test_gpu_fused_residual_winograd(cp, rng, monkeypatch, precision):
    launches = _spy_launches(monkeypatch)
    _check_fused_residual(cp, rng, RES_GEOMS[0], precision=precision, algo="winograd")
    assert "wino_output_f32" in launches


@pytest.mark.gpu
@pytest.mark.parametrize("algo", ["gemm", "auto"])
def test_gpu_fused_residual_in_place_under_timed_trials(cp, rng, monkeypatch, tmp_path, algo):
    """The autotuner and conv_algo=auto run every candidate into the output: an in-place
    residual is kept intact for them (copied first), so the result is still conv + r."""
    configure(autotune=True)
    tuner = autotune.Autotuner(lambda fn: (fn(), 1.0)[1], tmp_path / "t.json")  # ties: the first candidate
    monkeypatch.setattr(autotune, "_tuner", tuner)
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, RES_GEOMS[0])
    r = rng.standard_normal(C.conv_output_shape(x.shape, w.shape, s, p, d)).astype(np.float32)
    inplace = cp.asarray(r)
    C.conv_forward(gx, gw, gb, s, p, d, relu=True, out=inplace, residual=inplace, algo=algo)  # trials run here
    assert tuner.trials >= 2
    want = add_forward(C.conv_forward(gx, gw, gb, s, p, d, algo=algo), cp.asarray(r), relu=True)
    assert np.array_equal(_host(inplace), _host(want))


# ----------------------------------------------------------------------------------
# GPU: rounded output sizes (floor / ceil where (W - F + 2P)/S + 1 is not an integer)
# ----------------------------------------------------------------------------------

# 3x3/2 p1 over 8x8 (ResNet's strided 3x3), 1x1/2 over 8x8 (its projection: the last row is
# never read), 7x7/2 p3 over 16x16 (its stem), stride and dilation over a non-square input.
ROUNDED_GEOMS = [(2, 3, 8, 8, 4, 3, 3, 2, 1, 1), (2, 4, 8, 8, 5, 1, 1, 2, 0, 1),
                 (1, 3, 16, 16, 4, 7, 7, 2, 3, 1), (1, 2, 9, 7, 3, 3, 3, 3, 0, 2)]


def _check_rounded(cp, rng, g, rounding, precision="fp32", dtype=np.float32, launches=None, expect=None):
    x, w, b, gx, gw, gb, s, p, d = _gpu_case(cp, rng, g, dtype, precision)
    yshape = C.conv_output_shape(x.shape, w.shape, s, p, d, rounding)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    tol = 1e-10 if dtype == np.float64 else TOL
    # the NumPy spec itself against the loops with the windows written out
    ref = C.conv_forward(x64, w64, b64, s, p, d, relu=True, rounding=rounding)
    assert rel_error(ref, np.maximum(C.conv_forward_loops(x64, w64, b64, s, p, d, rounding), 0)) < 1e-12
    if launches is not None:
        launches.clear()
    y = C.conv_forward(gx, gw, gb, s, p, d, relu=True, out=poison(cp, yshape, dtype), precision=precision,
                       rounding=rounding)
    assert rel_error(y, ref) < tol, (g, rounding, precision)
    dy = _exact(rng.standard_normal(yshape), precision).astype(dtype)
    gdy = cp.asarray(dy)
    dx = C.conv_backward_data(gdy, gw, x.shape, s, p, d, out=poison(cp, x.shape, dtype), precision=precision,
                              rounding=rounding)
    assert rel_error(dx, C.conv_backward_data(dy.astype(np.float64), w64, x.shape, s, p, d,
                                              rounding=rounding)) < tol, (g, rounding, precision)
    dw, db = C.conv_backward_filter(gx, gdy, w.shape, s, p, d, dw_out=poison(cp, w.shape, dtype),
                                    db_out=poison(cp, b.shape, dtype), precision=precision, rounding=rounding)
    dw_ref, db_ref = C.conv_backward_filter(x64, dy.astype(np.float64), w.shape, s, p, d, rounding=rounding)
    assert rel_error(dw, dw_ref) < tol and rel_error(db, db_ref) < tol, (g, rounding, precision)
    if expect is not None:
        assert any(n.startswith(expect) for n in launches), (launches, expect)


@pytest.mark.gpu
@pytest.mark.parametrize("rounding", ["floor", "ceil"])
@pytest.mark.parametrize("precision", C.PRECISIONS)
def test_gpu_rounded_geometry_gemm(cp, rng, monkeypatch, precision, rounding):
    """The implicit GEMMs (forward, backward-data forced off the direct kernel, backward-filter)
    take the rounded output size: windows past the input read zeros, skipped rows get dx = 0."""
    monkeypatch.setattr(G, "_choose_bwdd", lambda *a: None)
    launches = _record_launches(monkeypatch)
    for g in ROUNDED_GEOMS:
        _check_rounded(cp, rng, g, rounding, precision, launches=launches, expect="conv_bwdd_f32_")


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", [s for s in autotune.SCHEDULES if s != "reg"])
def test_gpu_rounded_geometry_schedules(cp, rng, monkeypatch, schedule):
    configure(gemm_schedule=schedule)
    for g in ROUNDED_GEOMS[:3]:
        _check_rounded(cp, rng, g, "floor", "tf32")


@pytest.mark.gpu
def test_gpu_rounded_geometry_wgmma(cp, rng, monkeypatch):
    _use_wgmma(cp, monkeypatch)
    launches = _spy_launches(monkeypatch)
    for g in ROUNDED_GEOMS[:3]:
        _check_rounded(cp, rng, g, "ceil", "tf32")
    assert any(n.endswith("_wgmma") for n in launches), launches


@pytest.mark.gpu
def test_gpu_rounded_geometry_direct(cp, rng, monkeypatch):
    """The direct backward-data kernel (forced) and the float64 direct kernels."""
    monkeypatch.setattr(G, "_choose_bwdd", lambda *a: G._bwdd_direct_plan(*a))
    launches = _record_launches(monkeypatch)
    for g in ROUNDED_GEOMS:
        for rounding in ("floor", "ceil"):
            _check_rounded(cp, rng, g, rounding, launches=launches, expect="conv_bwdd_direct_f32_")
            _check_rounded(cp, rng, g, rounding, dtype=np.float64, launches=launches, expect="conv_fwd_direct_f64")


def test_rounded_output_shape_and_cpu_gradients(rng):
    assert C.conv_output_shape((1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, "floor") == (1, 64, 112, 112)
    assert C.conv_output_shape((1, 3, 8, 8), (4, 3, 3, 3), 2, 1, 1, "ceil") == (1, 4, 5, 5)
    with pytest.raises(GeometryError, match="not an integer"):
        C.conv_output_shape((1, 3, 8, 8), (4, 3, 3, 3), 2, 1, 1)
    for g in ROUNDED_GEOMS:
        for rounding in ("floor", "ceil"):
            x, w, b, s, p, d = _make(rng, g)
            y = C.conv_forward(x, w, b, s, p, d, rounding=rounding)
            assert rel_error(y, C.conv_forward_loops(x, w, b, s, p, d, rounding)) < 1e-12
            dy = rng.standard_normal(y.shape)
            f = lambda: float(np.sum(C.conv_forward(x, w, b, s, p, d, rounding=rounding) * dy))  # noqa: E731
            dx = C.conv_backward_data(dy, w, x.shape, s, p, d, rounding=rounding)
            dw, db = C.conv_backward_filter(x, dy, w.shape, s, p, d, rounding=rounding)
            assert rel_error(dx, numeric_grad(f, x)) < 1e-6 and rel_error(dw, numeric_grad(f, w)) < 1e-6


# ----------------------------------------------------------------------------------
# Channel-strided y and dy: a conv writes its output into its channel slice of a concat buffer
# and reads its gradient from its slice; the neighbouring channels stay untouched.
# ----------------------------------------------------------------------------------

_SENTINEL = 12345.0


def _slice_of(xp, a, before=3, after=2, fill=_SENTINEL):
    """A channel slice holding ``a`` (or, with a None ``a``, nothing yet) in a bigger buffer whose
    other channels are ``fill``; returns (buffer, slice)."""
    n, k, ho, wo = a.shape
    buf = xp.full((n, before + k + after, ho, wo), fill, dtype=a.dtype)
    view = buf[:, before:before + k]
    view[...] = a
    return buf, view


def _neighbours_untouched(buf, before=3, after=2):
    h = _host(buf)
    return (h[:, :before] == _SENTINEL).all() and (h[:, h.shape[1] - after:] == _SENTINEL).all()


def _check_channel_slices(xp, rng, g, dtype=np.float32, **kw):
    """Every pass on channel-slice views == on contiguous arrays (forward and backward-data bit
    for bit; backward-filter and the bias gradient, atomic sums, to rounding), neighbours kept."""
    x, w, b, s, p, d = _make(rng, g, dtype)
    x, w, b = (xp.asarray(_exact(v, kw.get("precision", "fp32"))) for v in (x, w, b))
    shape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    y_ref = C.conv_forward(x, w, b, s, p, d, relu=True, **kw)
    buf, y = _slice_of(xp, xp.full(shape, np.nan, dtype=dtype))
    assert C.conv_forward(x, w, b, s, p, d, relu=True, out=y, **kw) is y
    assert np.array_equal(_host(y), _host(y_ref)), (g, kw)
    assert _neighbours_untouched(buf)
    r = xp.asarray(rng.standard_normal(shape).astype(dtype))
    rbuf, ry = _slice_of(xp, r)  # the fused residual in place, in the slice
    C.conv_forward(x, w, b, s, p, d, out=ry, residual=ry, **kw)
    assert np.array_equal(_host(ry), _host(add_forward(C.conv_forward(x, w, b, s, p, d, **kw), r)))
    assert _neighbours_untouched(rbuf)

    dy_c = xp.asarray(_exact(rng.standard_normal(shape).astype(dtype), kw.get("precision", "fp32")))
    dbuf, dy = _slice_of(xp, dy_c)
    dx = C.conv_backward_data(dy, w, x.shape, s, p, d, **kw)
    assert np.array_equal(_host(dx), _host(C.conv_backward_data(dy_c, w, x.shape, s, p, d, **kw))), (g, kw)
    dw, db = C.conv_backward_filter(x, dy, w.shape, s, p, d, **kw)
    dw_ref, db_ref = C.conv_backward_filter(x, dy_c, w.shape, s, p, d, **kw)
    assert rel_error(dw, _host(dw_ref)) < 1e-6 and rel_error(db, _host(db_ref)) < 1e-6, (g, kw)
    assert _neighbours_untouched(dbuf)


SLICE_GEOMS = [(2, 5, 6, 7, 9, 3, 3, 1, 1, 1),      # Winograd-eligible; C < 32: direct backward-data
               (2, 40, 5, 6, 70, 3, 3, 1, 1, 1),    # C >= 32 at stride 1: the GEMM backward-data
               (2, 6, 10, 9, 12, 2, 3, 2, 1, 1)]    # stride 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_slices_cpu(rng, dtype):
    for g in SLICE_GEOMS:
        _check_channel_slices(np, rng, g, dtype)


def test_channel_slice_errors(rng):
    x, w, b, s, p, d = _make(rng, SLICE_GEOMS[0], np.float32)
    shape = C.conv_output_shape(x.shape, w.shape, s, p, d)
    crop = np.zeros(shape[:3] + (shape[3] + 1,), np.float32)[..., 1:]  # rows not contiguous
    with pytest.raises(OpArgumentError, match="conv_forward: out must be C-contiguous, or a view"):
        C.conv_forward(x, w, b, s, p, d, out=crop)
    with pytest.raises(OpArgumentError, match="conv_backward_data: dy must be C-contiguous, or a view"):
        C.conv_backward_data(crop, w, x.shape, s, p, d)
    with pytest.raises(OpArgumentError, match="conv_backward_filter: dy must be C-contiguous, or a view"):
        C.conv_backward_filter(x, crop, w.shape, s, p, d)


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", autotune.SCHEDULES)
@pytest.mark.parametrize("precision", C.PRECISIONS)
@pytest.mark.parametrize("tile", G._TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_gpu_channel_slices_every_gemm_entry(cp, rng, monkeypatch, tile, precision, schedule):
    configure(gemm_schedule=schedule)
    monkeypatch.setattr(G, "_choose_bwdd", lambda *a: None)  # the GEMM backward-data everywhere
    for splits in (1, 3):
        monkeypatch.setattr(G, "_choose_variant", lambda *a, **k: (tile[0], tile[1], splits))
        for g in SLICE_GEOMS:
            _check_channel_slices(cp, rng, g, precision=precision, algo="gemm")


@pytest.mark.gpu
@pytest.mark.parametrize("tile", G._TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_gpu_channel_slices_wgmma(cp, rng, monkeypatch, tile):
    _use_wgmma(cp, monkeypatch)
    monkeypatch.setattr(G, "_choose_bwdd", lambda *a: None)
    monkeypatch.setattr(G, "_choose_variant", lambda *a, **k: (tile[0], tile[1], 2))
    launches = _spy_launches(monkeypatch)
    for g in SLICE_GEOMS:
        _check_channel_slices(cp, rng, g, precision="tf32", algo="gemm")
    assert f"conv_bwdf_f32_{tile[0]}x{tile[1]}_tf32_wgmma" in launches


@pytest.mark.gpu
def test_gpu_channel_slices_direct_kernels(cp, rng, monkeypatch):
    """float64's direct kernels, and float32's direct backward-data (small C, stride 2)."""
    launches = _spy_launches(monkeypatch)
    for g in SLICE_GEOMS:
        _check_channel_slices(cp, rng, g, np.float64)
        _check_channel_slices(cp, rng, g, np.float32, algo="gemm")
    assert {"conv_fwd_direct_f64", "conv_bwdd_direct_f64", "conv_bwdf_direct_f64", "conv_bias_grad_f64",
            "conv_bias_grad_f32"} <= set(launches)
    assert any(f.startswith("conv_bwdd_direct_f32") for f in launches)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", C.PRECISIONS)
def test_gpu_channel_slices_winograd(cp, rng, monkeypatch, precision):
    launches = _spy_launches(monkeypatch)
    _check_channel_slices(cp, rng, SLICE_GEOMS[0], precision=precision, algo="winograd")
    assert {"wino_output_f32", "wino_grad_output_f32", "wino_input_f32"} <= set(launches)
    assert not any(f.startswith("conv_fwd") or f.startswith("conv_bwd") for f in launches)
