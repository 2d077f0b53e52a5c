"""2-D convolution (the notes' CONV layer): forward, backward-data, backward-filter.

Conventions (the notes'): x[N,C,H,W], w[K,C,FH,FW], b[K], y[N,K,Ho,Wo]; the
operation is a cross-correlation; stride S, zero padding P and dilation D are
ints applied to both axes (D=1 is an ordinary filter, effective size D*(F-1)+1);
Ho = (H - F_eff + 2P)/S + 1, exact unless ``rounding`` is 'floor' or 'ceil' (see
``geometry``: the windows still start at -P + i*S; any read outside the input is zero).

CPU path (``*_cpu``): im2col + one matrix multiply, as the notes describe.  The
column matrix is read from the padded input through a strided view and copied
once into [C*FH*FW, n*Ho*Wo] so a chunk of n examples is a single BLAS GEMM (one
chunk = the whole batch, except inside ``cpu_threads.engine()`` where chunks run
in parallel).
Backward-data is the transposed GEMM followed by col2im, done as FH*FW strided
slice-adds (one per filter tap) rather than per-element scatter.

GPU path: ``ops.conv_gpu`` (the launchers ``*_gpu`` and the selection of the kernel that
runs, re-exported here).  This file holds the API, the argument checks and the NumPy spec.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import device
from ..geometry import window_output_size
from ..kernel_config import current
from . import _views, cpu_threads
from ._checks import PRECISIONS, OpArgumentError, check_array, check_out, check_precision

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
    "ConvProblem",
    "CONV",
    "select",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# ----------------------------------------------------------------------------------
# Geometry and argument checks
# ----------------------------------------------------------------------------------

def _check_hparams(op: str, stride: int, pad: int, dilation: int) -> None:
    for name, value, low in (("stride", stride, 1), ("pad", pad, 0), ("dilation", dilation, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise OpArgumentError(f"{op}: {name} must be an int >= {low}, got {value!r}")


def conv_output_shape(x_shape: Sequence[int], w_shape: Sequence[int], stride: int = 1, pad: int = 0,
                      dilation: int = 1, rounding: str = "exact") -> tuple[int, int, int, int]:
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
    ho = window_output_size(h, fh, stride, pad, dilation, layer=op, axis="height", rounding=rounding)
    wo = window_output_size(wd, fw, stride, pad, dilation, layer=op, axis="width", rounding=rounding)
    return (n, k, ho, wo)


def _check_dtype(op: str, name: str, a: Any, view: bool = False) -> np.dtype:
    if view:  # y / dy may be a channel slice of a bigger buffer (a concat's): ``_views``
        _views.check_view(op, name, a, ndim=4)
    else:
        check_array(op, name, a, ndim=4, dtype=None)
    if a.dtype not in _FLOAT_DTYPES:
        raise OpArgumentError(f"{op}: {name} must be float32 or float64, got {a.dtype}")
    return a.dtype


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
    """'winograd' or 'auto' where that was asked for (``algo``, else the kernel configuration's
    ``conv_algo``) and Winograd applies: float32 data (float64 keeps its direct kernels; fp32
    or TF32 precision) and F(2x2,3x3) geometry.  None: the GEMM, no Winograd workspace."""
    from . import winograd  # noqa: PLC0415  (it registers with conv_gpu, which imports this module)

    a = winograd.chosen_algo(algo)
    if a == "gemm" or np.dtype(dtype) != np.float32 or precision not in PRECISIONS:
        return None
    return a if winograd.eligible(w_shape, stride, pad, dilation) else None


def _check_algo(algo: str | None) -> None:
    from . import winograd  # noqa: PLC0415

    winograd.chosen_algo(algo)


def use_winograd(algo: str | None, dtype: np.dtype, precision: str, w_shape: Sequence[int], stride: int,
                 pad: int, dilation: int) -> bool:
    """True where the op may run Winograd (always with 'winograd', if faster with 'auto'): the
    layers whose memory plan holds a Winograd workspace."""
    return winograd_mode(algo, dtype, precision, w_shape, stride, pad, dilation) is not None


# ----------------------------------------------------------------------------------
# Public API (dispatch on where the data lives)
# ----------------------------------------------------------------------------------

def conv_forward(x: Any, w: Any, b: Any = None, stride: int = 1, pad: int = 0, dilation: int = 1,
                 relu: bool = False, out: Any = None, precision: str | None = None, algo: str | None = None,
                 workspace: Any = None, rounding: str = "exact", residual: Any = None) -> Any:
    """y[N,K,Ho,Wo] = conv(x, w) + b (+ residual), optionally followed by ReLU (fused on the GPU).

    ``out`` may be a channel slice of a bigger buffer (``concat.channel_slice``: the conv writes
    its part of a concatenation in place).
    ``residual`` (the shape and layout of out): added after the bias and before the ReLU, in the
    epilogue of every kernel (as cuDNN/CUTLASS fuse bias+residual+activation); the result is
    bit-identical to the conv followed by ``add_forward(y, residual, relu=relu)``.  It may be
    ``out`` itself (in place).

    ``precision`` (GPU, float32): 'fp32' or 'tf32'; None: the kernel configuration's.
    ``algo`` (GPU, float32, either precision): 'gemm' (implicit GEMM), 'winograd' (F(2x2,3x3),
    used where ``winograd.eligible``; elsewhere the GEMM) or 'auto' (where eligible, the faster
    of the two, timed once per shape and cached); None: the kernel configuration's ``conv_algo``.
    ``workspace``: a float32 array for Winograd's transformed tensors (the memory plan's; None
    allocates one).  The CPU path ignores all three.  ``rounding``: the output size's
    ('exact', 'floor' or 'ceil'; ``geometry.window_output_size``).
    """
    op = "conv_forward"
    dt = _check_dtype(op, "x", x)
    check_array(op, "w", w, ndim=4, dtype=dt, like=x)
    if b is not None:
        check_array(op, "b", b, shape=(w.shape[0],), dtype=dt, like=x)
    precision = current().precision if precision is None else precision
    check_precision(op, precision)
    shape = conv_output_shape(x.shape, w.shape, stride, pad, dilation, rounding)
    if out is not None:  # out (and the residual, which has its layout) may be a channel slice
        _views.check_view(op, "out", out, shape=shape, dtype=dt, like=x)
    y = check_out(op, None, shape, like=x, dtype=dt) if out is None else out
    if residual is not None:
        _views.check_view(op, "residual", residual, shape=shape, dtype=dt, like=x)
    if device.is_gpu_array(x):
        p = conv_gpu.problem("fwd", x.shape, w.shape, stride, pad, dilation, dt, precision, algo, b is not None, relu,
                             rounding=rounding, residual=residual is not None)
        return conv_gpu.run(p, {"x": x, "w": w, "b": b, "r": residual, "y": y, "workspace": workspace})
    _check_algo(algo)  # a bad algo is an error on every device
    return conv_forward_cpu(x, w, b, stride, pad, dilation, relu, y, residual)


def conv_backward_data(dy: Any, w: Any, x_shape: Sequence[int], stride: int = 1, pad: int = 0,
                       dilation: int = 1, out: Any = None, precision: str | None = None, algo: str | None = None,
                       workspace: Any = None, rounding: str = "exact") -> Any:
    """dx[N,C,H,W] = d(sum y*dy)/dx for y = conv(x, w).  ``precision``/``algo``/``workspace``: as conv_forward.
    ``dy`` may be a channel slice of a bigger buffer (a concat's gradient)."""
    op = "conv_backward_data"
    dt = _check_dtype(op, "dy", dy, view=True)
    check_array(op, "w", w, ndim=4, dtype=dt, like=dy)
    precision = current().precision if precision is None else precision
    check_precision(op, precision)
    x_shape = _check_shape_tuple(op, "x_shape", x_shape)
    y_shape = conv_output_shape(x_shape, w.shape, stride, pad, dilation, rounding)
    _views.check_view(op, "dy", dy, shape=y_shape, dtype=dt)
    dx = check_out(op, out, x_shape, like=dy, dtype=dt)
    if device.is_gpu_array(dy):
        p = conv_gpu.problem("bwdd", x_shape, w.shape, stride, pad, dilation, dt, precision, algo, rounding=rounding)
        return conv_gpu.run(p, {"dy": dy, "w": w, "dx": dx, "workspace": workspace})
    _check_algo(algo)
    return conv_backward_data_cpu(dy, w, stride, pad, dilation, dx)


def conv_backward_filter(x: Any, dy: Any, w_shape: Sequence[int], stride: int = 1, pad: int = 0,
                         dilation: int = 1, with_bias: bool = True, dw_out: Any = None, db_out: Any = None,
                         precision: str | None = None, algo: str | None = None,
                         workspace: Any = None, rounding: str = "exact") -> tuple[Any, Any]:
    """(dw[K,C,FH,FW], db[K] or None): gradients of sum(y*dy) for y = conv(x, w) + b.

    The buffers are overwritten (not accumulated into).  ``precision``/``algo``/``workspace``:
    as conv_forward.  ``dy`` may be a channel slice of a bigger buffer (a concat's gradient).
    """
    op = "conv_backward_filter"
    dt = _check_dtype(op, "x", x)
    _views.check_view(op, "dy", dy, ndim=4, dtype=dt, like=x)
    precision = current().precision if precision is None else precision
    check_precision(op, precision)
    w_shape = _check_shape_tuple(op, "w_shape", w_shape)
    y_shape = conv_output_shape(x.shape, w_shape, stride, pad, dilation, rounding)
    _views.check_view(op, "dy", dy, shape=y_shape, dtype=dt)
    dw = check_out(op, dw_out, w_shape, like=x, dtype=dt)
    db = check_out(op, db_out, (w_shape[0],), like=x, dtype=dt) if with_bias else None
    if device.is_gpu_array(x):
        p = conv_gpu.problem("bwdf", x.shape, w_shape, stride, pad, dilation, dt, precision, algo, db is not None,
                             rounding=rounding)
        return conv_gpu.run(p, {"x": x, "dy": dy, "dw": dw, "db": db, "workspace": workspace})
    _check_algo(algo)
    return conv_backward_filter_cpu(x, dy, stride, pad, dilation, dw, db)


# ----------------------------------------------------------------------------------
# Plain-loop reference (tests only: slow, obviously correct)
# ----------------------------------------------------------------------------------

def conv_forward_loops(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int,
                       dilation: int, rounding: str = "exact") -> np.ndarray:
    """The notes' definition, one output neuron at a time (float64); zeros wherever a window
    reaches past the input (a 'ceil' window may reach past the padding too)."""
    n_, c_, h_, w_ = x.shape
    k_, _, fh_, fw_ = w.shape
    _, _, ho_, wo_ = conv_output_shape(x.shape, w.shape, stride, pad, dilation, rounding)
    big = stride + dilation * max(fh_, fw_)  # zeros past the padding on the right and bottom
    xp = np.zeros((n_, c_, h_ + 2 * pad + big, w_ + 2 * pad + big), dtype=np.float64)
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

def _padded_size(n: int, f: int, out: int, stride: int, pad: int, dilation: int) -> int:
    """Rows the windows span in the padded input: n + 2P, or more where a 'ceil' window reaches
    past the padding (floor's windows never do; the rows they skip are simply not read)."""
    return max(n + 2 * pad, (out - 1) * stride + dilation * (f - 1) + 1)


def _pad(x: np.ndarray, pad: int, hp: int | None = None, wp: int | None = None) -> np.ndarray:
    """x zero-padded by ``pad`` before, to ``hp`` x ``wp`` in all (default: ``pad`` after too)."""
    n, c, h, w = x.shape
    hp = h + 2 * pad if hp is None else hp
    wp = w + 2 * pad if wp is None else wp
    if (hp, wp) == (h, w):
        return x
    xp = np.zeros((n, c, hp, wp), dtype=x.dtype)
    xp[:, :, pad:pad + h, pad:pad + w] = x
    return xp


def _im2col(x: np.ndarray, fh: int, fw: int, ho: int, wo: int, stride: int, pad: int,
            dilation: int) -> np.ndarray:
    """X_col[C*FH*FW, N*Ho*Wo]: every column one receptive field (the notes' im2col)."""
    xp = _pad(x, pad, _padded_size(x.shape[2], fh, ho, stride, pad, dilation),
              _padded_size(x.shape[3], fw, wo, stride, pad, dilation))
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
                     relu: bool, out: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
    """NumPy forward into ``out``: y = W_row @ X_col (+ b, + residual, ReLU); ``residual`` may be
    ``out`` (each chunk reads its samples of it before writing them)."""
    n = x.shape[0]
    k, _, fh, fw = w.shape
    ho, wo = out.shape[2:]
    w_row = w.reshape(k, -1)

    def chunk(lo: int, hi: int) -> None:
        cols = _im2col(x[lo:hi], fh, fw, ho, wo, stride, pad, dilation)
        y2 = (w_row @ cols).reshape(k, hi - lo, ho, wo)           # [K, n, Ho, Wo]
        if b is not None:
            y2 += b[:, None, None, None]
        if residual is not None:
            y2 += residual[lo:hi].transpose(1, 0, 2, 3)
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
        dxp = np.zeros((c, m, _padded_size(h, fh, ho, stride, pad, dilation),
                        _padded_size(wd, fw, wo, stride, pad, dilation)), dtype=dy.dtype)
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




# The GPU path: launchers, kernel selection and the variants (imported last: it builds on the
# geometry above; it imports the opt-in variants, which register themselves with its selector).
from . import conv_gpu  # noqa: E402

def __getattr__(name: str) -> Any:
    """The GPU path's names (CONV, ConvProblem, problem, select, conv_forward_gpu, ...), from
    ``ops.conv_gpu`` (looked up on use: either module may be imported first)."""
    if not name.startswith("__"):
        try:
            return getattr(conv_gpu, name)
        except AttributeError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
