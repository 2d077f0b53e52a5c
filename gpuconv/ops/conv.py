"""2-D convolution (the notes' CONV layer): forward, backward-data, backward-filter.

Conventions (the notes'): x[N,C,H,W], w[K,C,FH,FW], b[K], y[N,K,Ho,Wo]; the
operation is a cross-correlation; stride S, zero padding P and dilation D are
ints applied to both axes (D=1 is an ordinary filter, effective size D*(F-1)+1);
Ho = (H - F_eff + 2P)/S + 1.

CPU path (``*_cpu``): im2col + one matrix multiply, as the notes describe.  The
column matrix is read from the padded input through a strided view and copied
once into [C*FH*FW, n*Ho*Wo] so a chunk of n examples is a single BLAS GEMM (one
chunk = the whole batch, except inside ``cpu_threads.engine()`` where chunks run
in parallel).
Backward-data is the transposed GEMM followed by col2im, done as FH*FW strided
slice-adds (one per filter tap) rather than per-element scatter.

GPU path (``*_gpu``): implicit GEMM kernels from ``kernels/conv.cu`` (no im2col
buffer), bias and ReLU fused into the forward epilogue; ``precision="tf32"``
uses tensor cores (mma.sync m16n8k8 tf32; with ``GPUCONV_GEMM_WGMMA=1`` on an H100/H200, Hopper's
wgmma from the sm_90a module variant, ``_use_wgmma``).  float64 runs simple direct kernels
(they back the GPU gradient checks).  Backward-data with few input channels or
stride >= 2 uses a direct "gather" kernel instead of the GEMM (``_choose_bwdd``):
it visits only the filter taps that land on the output grid.  With ``algo="winograd"``
(or ``GPUCONV_CONV_ALGO=winograd``) float32 3x3 stride-1 layers run Winograd F(2x2,3x3)
instead (``ops.winograd``: transform kernels + batched GEMM, in a planned workspace);
``algo="auto"`` times both on first use of a shape and keeps the faster (``_pick_algo``).
"""
from __future__ import annotations

from math import gcd
from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import cuda, device
from ..geometry import window_output_size
from . import autotune, cpu_threads, winograd
from ._checks import OpArgumentError, check_array, check_out

__all__ = [
    "conv_output_shape",
    "conv_forward",
    "conv_backward_data",
    "conv_backward_filter",
    "conv_forward_loops",
    "conv_forward_cpu",
    "conv_backward_data_cpu",
    "conv_backward_filter_cpu",
    "conv_forward_gpu",
    "conv_backward_data_gpu",
    "conv_backward_filter_gpu",
    "conv_bias_grad_gpu",
    "use_winograd",
    "winograd_mode",
]

PRECISIONS = ("fp32", "tf32")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INT32_MAX = 2**31 - 1
_BK = 8  # reduction slice depth of the GEMM kernels (kernels/conv.cu BK)
_TILES = ((128, 128), (128, 64), (64, 128), (64, 64))  # (BM, BN) entry points compiled in conv.cu
# (BM, BN, schedule): every tile is compiled in both autotune.SCHEDULES, and for TF32 in the
# sm_90a variant as schedule "wgmma" (conv_*_tf32_wgmma: Hopper's warpgroup MMA).
Variant = tuple[int, int, str]
WGMMA = "wgmma"
_WG_BK, _WG_STAGES = 32, 3  # conv.cu WG_BK, WG_STAGES (wgmma_layout.cuh)


def wgmma_smem(bm: int, bn: int) -> int:
    """Dynamic shared memory of a conv_*_tf32_wgmma launch: WG_STAGES stages of the A (bm rows)
    and B (bn rows) tiles, 128 bytes (32 fp32) per row, + 1 KB to align them to 1024 bytes."""
    return _WG_STAGES * (bm + bn) * _WG_BK * 4 + 1024


def _use_wgmma(precision: str) -> bool:
    """TF32 on an sm_90 GPU with $GPUCONV_GEMM_WGMMA set: the implicit GEMMs run on wgmma."""
    return precision == "tf32" and autotune.wgmma_enabled() and cuda.wgmma_capable()


def _launch_opts(v: Variant) -> dict[str, Any]:
    """cuda.launch's module variant and dynamic shared memory for a variant's entry point."""
    if v[2] == WGMMA:
        return {"defines": autotune.WGMMA_DEFINES, "shared_mem": wgmma_smem(v[0], v[1])}
    return {"defines": autotune.SCHEDULE_DEFINES[v[2]]}


# ----------------------------------------------------------------------------------
# Geometry and argument checks
# ----------------------------------------------------------------------------------

def _check_hparams(op: str, stride: int, pad: int, dilation: int) -> None:
    for name, value, low in (("stride", stride, 1), ("pad", pad, 0), ("dilation", dilation, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise OpArgumentError(f"{op}: {name} must be an int >= {low}, got {value!r}")


def conv_output_shape(x_shape: Sequence[int], w_shape: Sequence[int], stride: int = 1, pad: int = 0,
                      dilation: int = 1) -> tuple[int, int, int, int]:
    """(N, K, Ho, Wo) of conv(x[N,C,H,W], w[K,C,FH,FW]); GeometryError if the window does not fit."""
    op = "conv"
    if len(x_shape) != 4:
        raise OpArgumentError(f"{op}: x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise OpArgumentError(f"{op}: w must be 4-D (K, C, FH, FW), got shape {tuple(w_shape)}")
    n, c, h, wd = (int(v) for v in x_shape)
    k, cw, fh, fw = (int(v) for v in w_shape)
    if cw != c:
        raise OpArgumentError(f"{op}: w has {cw} input channels (shape {tuple(w_shape)}) but x has {c} "
                              f"(shape {tuple(x_shape)})")
    if min(n, c, h, wd, k, fh, fw) < 1:
        raise OpArgumentError(f"{op}: empty dimension in x {tuple(x_shape)} or w {tuple(w_shape)}")
    _check_hparams(op, stride, pad, dilation)
    ho = window_output_size(h, fh, stride, pad, dilation, layer=op, axis="height")
    wo = window_output_size(wd, fw, stride, pad, dilation, layer=op, axis="width")
    return (n, k, ho, wo)


def _check_dtype(op: str, name: str, a: Any) -> np.dtype:
    check_array(op, name, a, ndim=4, dtype=None)
    if a.dtype not in _FLOAT_DTYPES:
        raise OpArgumentError(f"{op}: {name} must be float32 or float64, got {a.dtype}")
    return a.dtype


def _check_precision(op: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise OpArgumentError(f"{op}: precision must be one of {PRECISIONS}, got {precision!r}")


def _check_shape_tuple(op: str, name: str, shape: Any) -> tuple[int, ...]:
    try:
        t = tuple(int(v) for v in shape)
    except TypeError:
        raise OpArgumentError(f"{op}: {name} must be a shape tuple, got {shape!r}") from None
    if len(t) != 4:
        raise OpArgumentError(f"{op}: {name} must have 4 entries, got {t}")
    return t


def winograd_mode(algo: str | None, dtype: np.dtype, precision: str, w_shape: Sequence[int], stride: int,
                  pad: int, dilation: int) -> str | None:
    """'winograd' or 'auto' where that was asked for (algo / $GPUCONV_CONV_ALGO) and Winograd
    applies: float32 data (float64 keeps its direct kernels; fp32 or TF32 precision) and
    F(2x2,3x3) geometry.  None: the GEMM, no Winograd workspace."""
    a = winograd.chosen_algo(algo)
    if a == "gemm" or dtype != np.float32 or precision not in PRECISIONS:
        return None
    return a if winograd.eligible(w_shape, stride, pad, dilation) else None


def use_winograd(algo: str | None, dtype: np.dtype, precision: str, w_shape: Sequence[int], stride: int,
                 pad: int, dilation: int) -> bool:
    """True where the op may run Winograd (always with 'winograd', if faster with 'auto'): the
    layers whose memory plan holds a Winograd workspace."""
    return winograd_mode(algo, dtype, precision, w_shape, stride, pad, dilation) is not None


def _pick_algo(kind: str, mode: str | None, precision: str, geo: Sequence[int], run: Any) -> str:
    """'gemm' or 'winograd' for one GPU call: as asked, or for 'auto' the faster on this GPU
    and shape (both timed on the first call, the choice cached like the tile choices).  The
    trials write only the op's own output, which the final run overwrites."""
    if mode != "auto":
        return mode or "gemm"
    key = f"{cuda.device_key()}|conv_algo_{kind}|{precision}|" + ",".join(str(v) for v in geo)
    return autotune.get_tuner(cuda.time_ms).choose(key, ("gemm", "winograd"), run)  # ties keep the GEMM


# ----------------------------------------------------------------------------------
# Public API (dispatch on where the data lives)
# ----------------------------------------------------------------------------------

def conv_forward(x: Any, w: Any, b: Any = None, stride: int = 1, pad: int = 0, dilation: int = 1,
                 relu: bool = False, out: Any = None, precision: str = "fp32", algo: str | None = None,
                 workspace: Any = None) -> Any:
    """y[N,K,Ho,Wo] = conv(x, w) + b, optionally followed by ReLU (fused on the GPU).

    ``algo`` (GPU, float32, either precision): 'gemm' (implicit GEMM), 'winograd' (F(2x2,3x3),
    used where ``winograd.eligible``; elsewhere the GEMM) or 'auto' (where eligible, the faster
    of the two, timed once per shape and cached); None reads $GPUCONV_CONV_ALGO (default 'gemm').
    ``workspace``: a float32 array for Winograd's transformed tensors (the memory plan's; None
    allocates one).  The CPU path ignores both.
    """
    op = "conv_forward"
    dt = _check_dtype(op, "x", x)
    check_array(op, "w", w, ndim=4, dtype=dt, like=x)
    if b is not None:
        check_array(op, "b", b, shape=(w.shape[0],), dtype=dt, like=x)
    _check_precision(op, precision)
    shape = conv_output_shape(x.shape, w.shape, stride, pad, dilation)
    y = check_out(op, out, shape, like=x, dtype=dt)
    mode = winograd_mode(algo, dt, precision, w.shape, stride, pad, dilation)
    if device.is_gpu_array(x):
        def run(a: str) -> Any:
            if a == "winograd":
                return winograd.conv_forward_winograd_gpu(x, w, b, pad, relu, y, workspace, precision)
            return conv_forward_gpu(x, w, b, stride, pad, dilation, relu, y, precision)
        geo = [*x.shape, w.shape[0], pad, int(b is not None), int(bool(relu))]
        return run(_pick_algo("fwd", mode, precision, geo, run))
    return conv_forward_cpu(x, w, b, stride, pad, dilation, relu, y)


def conv_backward_data(dy: Any, w: Any, x_shape: Sequence[int], stride: int = 1, pad: int = 0,
                       dilation: int = 1, out: Any = None, precision: str = "fp32", algo: str | None = None,
                       workspace: Any = None) -> Any:
    """dx[N,C,H,W] = d(sum y*dy)/dx for y = conv(x, w).  ``algo``/``workspace``: as conv_forward."""
    op = "conv_backward_data"
    dt = _check_dtype(op, "dy", dy)
    check_array(op, "w", w, ndim=4, dtype=dt, like=dy)
    _check_precision(op, precision)
    x_shape = _check_shape_tuple(op, "x_shape", x_shape)
    y_shape = conv_output_shape(x_shape, w.shape, stride, pad, dilation)
    check_array(op, "dy", dy, shape=y_shape, dtype=dt)
    dx = check_out(op, out, x_shape, like=dy, dtype=dt)
    mode = winograd_mode(algo, dt, precision, w.shape, stride, pad, dilation)
    if device.is_gpu_array(dy):
        def run(a: str) -> Any:
            if a == "winograd":
                return winograd.conv_backward_data_winograd_gpu(dy, w, pad, dx, workspace, precision)
            return conv_backward_data_gpu(dy, w, stride, pad, dilation, dx, precision)
        return run(_pick_algo("bwdd", mode, precision, [*x_shape, w.shape[0], pad], run))
    return conv_backward_data_cpu(dy, w, stride, pad, dilation, dx)


def conv_backward_filter(x: Any, dy: Any, w_shape: Sequence[int], stride: int = 1, pad: int = 0,
                         dilation: int = 1, with_bias: bool = True, dw_out: Any = None, db_out: Any = None,
                         precision: str = "fp32", algo: str | None = None,
                         workspace: Any = None) -> tuple[Any, Any]:
    """(dw[K,C,FH,FW], db[K] or None): gradients of sum(y*dy) for y = conv(x, w) + b.

    The buffers are overwritten (not accumulated into).  ``algo``/``workspace``: as conv_forward.
    """
    op = "conv_backward_filter"
    dt = _check_dtype(op, "x", x)
    check_array(op, "dy", dy, ndim=4, dtype=dt, like=x)
    _check_precision(op, precision)
    w_shape = _check_shape_tuple(op, "w_shape", w_shape)
    y_shape = conv_output_shape(x.shape, w_shape, stride, pad, dilation)
    check_array(op, "dy", dy, shape=y_shape, dtype=dt)
    dw = check_out(op, dw_out, w_shape, like=x, dtype=dt)
    db = check_out(op, db_out, (w_shape[0],), like=x, dtype=dt) if with_bias else None
    mode = winograd_mode(algo, dt, precision, w_shape, stride, pad, dilation)
    if device.is_gpu_array(x):
        def run(a: str) -> tuple[Any, Any]:
            if a == "winograd":
                winograd.conv_backward_filter_winograd_gpu(x, dy, pad, dw, workspace, precision)
                if db is not None:
                    conv_bias_grad_gpu(dy, db)
                return dw, db
            return conv_backward_filter_gpu(x, dy, stride, pad, dilation, dw, db, precision)
        return run(_pick_algo("bwdf", mode, precision, [*x.shape, w_shape[0], pad, int(db is not None)], run))
    return conv_backward_filter_cpu(x, dy, stride, pad, dilation, dw, db)


# ----------------------------------------------------------------------------------
# Plain-loop reference (tests only: slow, obviously correct)
# ----------------------------------------------------------------------------------

def conv_forward_loops(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int,
                       dilation: int) -> np.ndarray:
    """The notes' definition, one output neuron at a time (float64)."""
    n_, c_, h_, w_ = x.shape
    k_, _, fh_, fw_ = w.shape
    _, _, ho_, wo_ = conv_output_shape(x.shape, w.shape, stride, pad, dilation)
    xp = np.zeros((n_, c_, h_ + 2 * pad, w_ + 2 * pad), dtype=np.float64)
    xp[:, :, pad:pad + h_, pad:pad + w_] = x
    y = np.zeros((n_, k_, ho_, wo_), dtype=np.float64)
    ext_h, ext_w = dilation * (fh_ - 1) + 1, dilation * (fw_ - 1) + 1
    for n in range(n_):
        for k in range(k_):
            for i in range(ho_):
                for j in range(wo_):
                    hs, ws = i * stride, j * stride
                    patch = xp[n, :, hs:hs + ext_h:dilation, ws:ws + ext_w:dilation]
                    y[n, k, i, j] = np.sum(patch * w[k]) + (0.0 if b is None else b[k])
    return y


# ----------------------------------------------------------------------------------
# CPU path: im2col + GEMM (the spec)
# ----------------------------------------------------------------------------------

def _pad(x: np.ndarray, pad: int) -> np.ndarray:
    if pad == 0:
        return x
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    xp[:, :, pad:pad + h, pad:pad + w] = x
    return xp


def _im2col(x: np.ndarray, fh: int, fw: int, ho: int, wo: int, stride: int, pad: int,
            dilation: int) -> np.ndarray:
    """X_col[C*FH*FW, N*Ho*Wo]: every column one receptive field (the notes' im2col)."""
    xp = _pad(x, pad)
    n, c = xp.shape[:2]
    sn, sc, sh, sw = xp.strides
    # view [C, FH, FW, N, Ho, Wo] of the padded input; the reshape copies it once
    view = as_strided(xp, (c, fh, fw, n, ho, wo), (sc, sh * dilation, sw * dilation, sn, sh * stride, sw * stride),
                      writeable=False)
    return view.reshape(c * fh * fw, n * ho * wo)


# The three passes run chunk by chunk over the batch (``cpu_threads.over_batch``): inside
# ``cpu_threads.engine()`` the chunks run in parallel, each one's im2col matrix still in
# cache when its GEMM reads it; outside, one chunk is the whole batch.

def conv_forward_cpu(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int, dilation: int,
                     relu: bool, out: np.ndarray) -> np.ndarray:
    """NumPy forward into ``out``: y = W_row @ X_col (+ b, ReLU)."""
    n = x.shape[0]
    k, _, fh, fw = w.shape
    ho, wo = out.shape[2:]
    w_row = w.reshape(k, -1)

    def chunk(lo: int, hi: int) -> None:
        cols = _im2col(x[lo:hi], fh, fw, ho, wo, stride, pad, dilation)
        y2 = (w_row @ cols).reshape(k, hi - lo, ho, wo)           # [K, n, Ho, Wo]
        if b is not None:
            y2 += b[:, None, None, None]
        if relu:
            np.maximum(y2, 0, out=y2)
        out[lo:hi] = y2.transpose(1, 0, 2, 3)

    cpu_threads.over_batch(chunk, n, n * w_row.shape[1] * ho * wo)
    return out


def conv_backward_data_cpu(dy: np.ndarray, w: np.ndarray, stride: int, pad: int, dilation: int,
                           out: np.ndarray) -> np.ndarray:
    """NumPy backward-data into ``out``: dX_col = W_row^T @ dY, then col2im."""
    n, c, h, wd = out.shape
    k, _, fh, fw = w.shape
    ho, wo = dy.shape[2:]
    w_t = np.ascontiguousarray(w.reshape(k, -1).T)                 # [C*FH*FW, K]
    hspan, wspan = stride * (ho - 1) + 1, stride * (wo - 1) + 1

    def chunk(lo: int, hi: int) -> None:
        m = hi - lo
        dy2 = dy[lo:hi].transpose(1, 0, 2, 3).reshape(k, m * ho * wo)   # [K, n*Ho*Wo]
        dcols = (w_t @ dy2).reshape(c, fh, fw, m, ho, wo)
        # col2im: each filter tap (i, j) adds one strided slab into the padded gradient;
        # [C, n, Hp, Wp] order keeps the slabs of dcols contiguous.
        dxp = np.zeros((c, m, h + 2 * pad, wd + 2 * pad), dtype=dy.dtype)
        for i in range(fh):
            for j in range(fw):
                hi_, wj = i * dilation, j * dilation
                dxp[:, :, hi_:hi_ + hspan:stride, wj:wj + wspan:stride] += dcols[:, i, j]
        out[lo:hi] = dxp[:, :, pad:pad + h, pad:pad + wd].transpose(1, 0, 2, 3)

    cpu_threads.over_batch(chunk, n, n * w_t.shape[0] * ho * wo)
    return out


def conv_backward_filter_cpu(x: np.ndarray, dy: np.ndarray, stride: int, pad: int, dilation: int,
                             dw: np.ndarray, db: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """NumPy backward-filter: dW_row = dY @ X_col^T, db = sum of dy over (N, Ho, Wo)."""
    n = x.shape[0]
    k, _, fh, fw = dw.shape
    ho, wo = dy.shape[2:]
    rows = dw[0].size

    def chunk(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray | None]:
        cols = _im2col(x[lo:hi], fh, fw, ho, wo, stride, pad, dilation)
        dy2 = dy[lo:hi].transpose(1, 0, 2, 3).reshape(k, (hi - lo) * ho * wo)
        return dy2 @ cols.T, (dy2.sum(axis=1) if db is not None else None)

    parts = cpu_threads.over_batch(chunk, n, n * rows * ho * wo)
    # chunk partial sums added in a fixed order: the same numbers every run
    dw_row = dw.reshape(k, rows)
    dw_row[...] = parts[0][0]
    for p, _ in parts[1:]:
        dw_row += p
    if db is not None:
        db[...] = parts[0][1]
        for _, pb in parts[1:]:
            db += pb
    return dw, db


# ----------------------------------------------------------------------------------
# GPU path: implicit-GEMM kernels
# ----------------------------------------------------------------------------------

_NUM_SMS_GUESS = 132  # H100 SXM; only shapes the heuristics, never correctness


def _num_sms() -> int:
    try:
        return int(device.get_device("cuda").xp.cuda.Device().attributes["MultiProcessorCount"])
    except Exception:  # noqa: BLE001  (heuristic only)
        return _NUM_SMS_GUESS


def _choose_variant(kind: str, rows: int, cols: int, red: int, precision: str,
                    num_sms: int = _NUM_SMS_GUESS) -> tuple[int, int, int]:
    """(BM, BN, splits) for a GEMM of rows x cols reducing over red.

    kind is 'fwd', 'bwdd' or 'bwdf'; only 'bwdf' splits the reduction (its output,
    dW, is small while the reduction N*Ho*Wo is long).  The plug-in point for an
    autotuner: any (BM, BN) in _TILES and any splits >= 1 are valid for any shape.
    """
    bm = 64 if rows <= 64 else 128
    bn = 64 if cols <= 64 else 128
    target = 2 * num_sms  # at least two resident blocks per SM worth of tiles
    blocks = -(-rows // bm) * -(-cols // bn)
    if blocks < target and bn == 128:
        bn = 64
        blocks = -(-rows // bm) * -(-cols // bn)
    if blocks < target and bm == 128:
        bm = 64
        blocks = -(-rows // bm) * -(-cols // bn)
    splits = 1
    if kind == "bwdf" and blocks < 4 * num_sms:
        max_splits = max(1, red // (16 * _BK))  # keep >= 16 reduction slices per split
        splits = max(1, min(-(-4 * num_sms // blocks), max_splits, 4096))
    return bm, bn, splits


def _kernel(kind: str, variant: Variant, precision: str) -> str:
    """Entry-point name in conv.cu, e.g. conv_fwd_f32_128x64_tf32_async."""
    tm, tn, schedule = variant
    return f"conv_{kind}_f32_{tm}x{tn}_{precision}" + ("" if schedule == "reg" else f"_{schedule}")


def _heuristic(bm: int, bn: int, precision: str) -> Variant:
    return (bm, bn, WGMMA if _use_wgmma(precision) else autotune.schedule())


def _tuned_tile(kind: str, precision: str, geo: Sequence[int], heuristic: Variant, run: Any) -> Variant:
    """The (BM, BN, schedule) to launch: the heuristic's, or with GPUCONV_AUTOTUNE=1 the
    fastest compiled variant for this GPU and shape (timed once, cached; see ops.autotune)."""
    if not autotune.enabled():
        return heuristic
    wg = _use_wgmma(precision)
    key = f"{cuda.device_key()}|conv_{kind}|{precision}{'|wgmma' if wg else ''}|" + ",".join(str(v) for v in geo)
    schedules = (*autotune.SCHEDULES, WGMMA) if wg else autotune.SCHEDULES
    variants = [(tm, tn, sc) for tm, tn in _TILES for sc in schedules]
    candidates = [heuristic] + [v for v in variants if v != heuristic]   # ties keep the heuristic
    return autotune.get_tuner(cuda.time_ms).choose(key, candidates, run)


def _geo_args(x_shape: Sequence[int], w_shape: Sequence[int], y_shape: Sequence[int], stride: int, pad: int,
              dilation: int) -> list[int]:
    n, c, h, wd = x_shape
    k, _, fh, fw = w_shape
    _, _, ho, wo = y_shape
    # plain ints: cuda.launch turns them into int32 (a numpy int64 would be passed as 64-bit)
    return [int(v) for v in (n, c, h, wd, k, fh, fw, ho, wo, stride, pad, dilation)]


def _check_int32(op: str, **sizes: int) -> None:
    # the GEMM kernels index rows/cols/reduction with 32-bit unsigned arithmetic
    for name, v in sizes.items():
        if v > _INT32_MAX:
            raise OpArgumentError(f"{op}: {name} = {v} exceeds 2^31-1, too large for the conv kernels; "
                                  f"split the batch")


# --- direct ("gather") backward-data: kernels/conv.cu conv_bwdd_direct_f32_c<CT>_<TI>x<TJ> ---

_DIRECT_CTS = (1, 2, 3, 4, 8)          # channels per thread compiled in conv.cu
_DIRECT_TILES = ((16, 16), (32, 8))    # (TY, TX) thread shapes; the tile is TY x 4*TX sub-grid pixels
_DIRECT_SMEM_MAX = 48 * 1024           # dynamic shared memory usable without an opt-in
_DIRECT_SMEM_TARGET = 27 * 1024        # ~8 resident 256-thread blocks per SM (228 KiB)
_DIRECT_KC_MAX = 8


def _direct_ct_cost(c: int, ct: int) -> int:
    # per tap and thread: shared loads (w vector(s) + 4 dy) + FMA issue slots (4*CT/4), per group
    ctp = ct if ct <= 2 else -(-ct // 4) * 4
    return -(-c // ct) * (max(1, ctp // 4) + 4 + ct)


def _bwdd_direct_plan(n: int, c: int, h: int, wd: int, k: int, fh: int, fw: int, stride: int,
                      dilation: int, ct: int | None = None,
                      tile: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """Launch plan of the direct backward-data kernel, or None where it does not apply.

    Per axis, with g = gcd(stride, dilation), a residue class has at most
    cdiv(F, stride/g) valid taps whose output coordinates step by dilation/g, which
    bounds the shared-memory tiles (RS rows, row pitch P, TS taps) for every block.
    ``ct`` / ``tile`` force a variant (tests).
    """
    g = gcd(stride, dilation)
    step, dstep = stride // g, dilation // g
    nvh, nvw = -(-fh // step), -(-fw // step)
    hs, ws = -(-h // stride), -(-wd // stride)  # the largest residue sub-grid
    if ct is None:
        ct = min(_DIRECT_CTS, key=lambda t: (_direct_ct_cost(c, t), -t))
    if tile is None:
        def padded(t: tuple[int, int]) -> int:
            ti, tj = t[0], 4 * t[1]
            return -(-hs // ti) * ti * (-(-ws // tj) * tj)
        tile = min(_DIRECT_TILES, key=padded)  # ties keep the first (16 x 64)
    ty, tx = tile
    ti, tj = ty, 4 * tx
    ctp = ct if ct <= 2 else -(-ct // 4) * 4
    rs = ti + (nvh - 1) * dstep
    cols = tj + (nvw - 1) * dstep
    pitch = cols + (tx - cols) % 32  # smallest >= cols with pitch == TX (mod 32): a warp's rows in distinct banks
    ts = nvh * nvw
    per_k = 4 * (rs * pitch + ts * ctp)
    if per_k > _DIRECT_SMEM_MAX:
        return None
    kc = max(1, min(_DIRECT_KC_MAX, k, _DIRECT_SMEM_TARGET // per_k))
    groups = -(-c // ct)
    blocks = n * groups * stride * stride * -(-hs // ti) * -(-ws // tj)
    if blocks > _INT32_MAX:
        return None
    return {"func": f"conv_bwdd_direct_f32_c{ct}_{ti}x{tj}", "ct": ct, "tile": (ti, tj), "kc": kc,
            "rs": rs, "pitch": pitch, "ts": ts, "ctp": ctp, "blocks": blocks, "smem": kc * per_k}


def _bwdd_use_direct(c: int, k: int, fh: int, fw: int, stride: int, dilation: int) -> bool:
    """Heuristic: the direct kernel wins when the GEMM wastes most of its work.

    The GEMM's M dimension is C, padded to a 64-row tile (C < 32 wastes over half of
    it), and with stride S only ~1/S^2 of its reduction K*FH*FW is non-zero; the
    direct kernel pays neither.  For C >= 32 at stride 1 the GEMM's reuse wins.
    """
    return c < 32 or stride >= 2


def _choose_bwdd(n: int, c: int, h: int, wd: int, k: int, fh: int, fw: int, stride: int,
                 dilation: int) -> dict[str, Any] | None:
    """The direct backward-data plan when the heuristic picks it and it fits, else None (GEMM)."""
    if not _bwdd_use_direct(c, k, fh, fw, stride, dilation):
        return None
    return _bwdd_direct_plan(n, c, h, wd, k, fh, fw, stride, dilation)


def _direct_grid(total: int) -> tuple[int, int, int]:
    return (max(1, min(cuda.cdiv(total, 256), 65535)), 1, 1)


def conv_forward_gpu(x: Any, w: Any, b: Any, stride: int, pad: int, dilation: int, relu: bool, out: Any,
                     precision: str = "fp32") -> Any:
    """Implicit-GEMM forward into ``out`` with the bias + ReLU epilogue."""
    n, c, h, wd = x.shape
    k, _, fh, fw = w.shape
    _, _, ho, wo = out.shape
    geo = _geo_args(x.shape, w.shape, out.shape, stride, pad, dilation)
    has_bias = b is not None
    bptr = b if has_bias else w  # any valid pointer; the kernel does not read it
    if x.dtype == np.float64:
        cuda.launch("conv", "conv_fwd_direct_f64", _direct_grid(out.size), (256, 1, 1),
                    [x, w, bptr, out, *geo, int(has_bias), int(bool(relu))])
        return out
    rows, cols, red = k, n * ho * wo, c * fh * fw
    _check_int32("conv_forward", **{"N*Ho*Wo": cols, "C*FH*FW": red})
    bm, bn, _ = _choose_variant("fwd", rows, cols, red, precision, _num_sms())

    def run(v: Variant) -> None:
        cuda.launch("conv", _kernel("fwd", v, precision), (cuda.cdiv(cols, v[1]), cuda.cdiv(rows, v[0]), 1),
                    (256, 1, 1), [x, w, bptr, out, *geo, int(has_bias), int(bool(relu))], **_launch_opts(v))

    run(_tuned_tile("fwd", precision, [*geo, int(has_bias), int(bool(relu))], _heuristic(bm, bn, precision), run))
    return out


def conv_backward_data_gpu(dy: Any, w: Any, stride: int, pad: int, dilation: int, out: Any,
                           precision: str = "fp32") -> Any:
    """Backward-data into ``out`` (every element written).

    float32: the direct gather kernel where ``_choose_bwdd`` picks it (small C or
    stride >= 2), else the implicit GEMM.
    """
    n, c, h, wd = out.shape
    k, _, fh, fw = w.shape
    geo = _geo_args(out.shape, w.shape, dy.shape, stride, pad, dilation)
    if dy.dtype == np.float64:
        cuda.launch("conv", "conv_bwdd_direct_f64", _direct_grid(out.size), (256, 1, 1), [dy, w, out, *geo])
        return out
    plan = _choose_bwdd(n, c, h, wd, k, fh, fw, stride, dilation)
    if plan is not None:  # float32 and tf32 requests alike (the direct kernel is exact fp32)
        cuda.launch("conv", plan["func"], (plan["blocks"], 1, 1), (256, 1, 1),
                    [dy, w, out, *geo, plan["kc"], plan["rs"], plan["pitch"], plan["ts"]],
                    shared_mem=plan["smem"])
        return out
    rows, cols, red = c, n * h * wd, k * fh * fw
    _check_int32("conv_backward_data", **{"N*H*W": cols, "K*FH*FW": red})
    bm, bn, _ = _choose_variant("bwdd", rows, cols, red, precision, _num_sms())

    def run(v: Variant) -> None:
        cuda.launch("conv", _kernel("bwdd", v, precision), (cuda.cdiv(cols, v[1]), cuda.cdiv(rows, v[0]), 1),
                    (256, 1, 1), [dy, w, out, *geo], **_launch_opts(v))

    run(_tuned_tile("bwdd", precision, geo, _heuristic(bm, bn, precision), run))
    return out


def conv_backward_filter_gpu(x: Any, dy: Any, stride: int, pad: int, dilation: int, dw: Any, db: Any,
                             precision: str = "fp32") -> tuple[Any, Any]:
    """Implicit-GEMM backward-filter (split reduction + atomicAdd) and the bias reduction."""
    n, c, h, wd = x.shape
    k, _, fh, fw = dw.shape
    _, _, ho, wo = dy.shape
    geo = _geo_args(x.shape, dw.shape, dy.shape, stride, pad, dilation)
    if x.dtype == np.float64:
        cuda.launch("conv", "conv_bwdf_direct_f64", _direct_grid(dw.size), (256, 1, 1), [x, dy, dw, *geo])
    else:
        rows, cols, red = k, c * fh * fw, n * ho * wo
        _check_int32("conv_backward_filter", **{"N*Ho*Wo": red, "C*FH*FW": cols})
        bm, bn, splits = _choose_variant("bwdf", rows, cols, red, precision, _num_sms())

        def run(v: Variant) -> None:
            if splits > 1:
                cuda.zero(dw)  # the splits accumulate with atomicAdd
            cuda.launch("conv", _kernel("bwdf", v, precision),
                        (cuda.cdiv(cols, v[1]), cuda.cdiv(rows, v[0]), splits), (256, 1, 1),
                        [x, dy, dw, *geo, int(splits > 1)], **_launch_opts(v))

        run(_tuned_tile("bwdf", precision, [*geo, splits], _heuristic(bm, bn, precision), run))
    if db is not None:
        conv_bias_grad_gpu(dy, db)
    return dw, db


def conv_bias_grad_gpu(dy: Any, db: Any) -> Any:
    """db[k] = sum of dy[:, k] (overwritten)."""
    n, k, ho, wo = dy.shape
    cuda.zero(db)
    per_k = n * ho * wo
    gy = max(1, min(cuda.cdiv(per_k, 256 * 16), max(1, 1024 // max(k, 1)), 65535))
    suffix = "f64" if dy.dtype == np.float64 else "f32"
    cuda.launch("conv", f"conv_bias_grad_{suffix}", (k, gy, 1), (256, 1, 1), [dy, db, n, k, ho, wo])
    return db
