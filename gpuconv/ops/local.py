"""Locally-connected layer: a CONV layer without parameter sharing (the notes' variant).

Every output position (i, j) has its own K filters of shape [C, FH, FW]:

    x [N, C, H, W], w [Ho, Wo, K, C, FH, FW], b [K, Ho, Wo]  ->  y [N, K, Ho, Wo]
    y[n,k,i,j] = b[k,i,j] + sum_{c,fh,fw} w[i,j,k,c,fh,fw] * xpad[n, c, i*S + fh*D, j*S + fw*D]

(cross-correlation, zero padding P, dilation D; Ho, Wo from geometry.window_output_size).
Per position this is a GEMM of the im2col patch matrix X_p [N, R] (R = C*FH*FW) with
W_p [K, R]; the NumPy path batches those GEMMs over positions with np.matmul.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import cuda, device
from ..geometry import window_output_size
from ._checks import OpArgumentError, check_array, check_out
from ._checks import float_dtype as _float_dtype

_TILE = 16          # LC_TILE in kernels/local.cu
_MAX_GRID_YZ = 65535




def _ints(op: str, stride: int, pad: int, dilation: int) -> tuple[int, int, int]:
    for name, v, low in (("stride", stride, 1), ("pad", pad, 0), ("dilation", dilation, 1)):
        if isinstance(v, bool) or int(v) != v or v < low:
            raise OpArgumentError(f"{op}: {name} must be an integer >= {low}, got {v!r}")
    return int(stride), int(pad), int(dilation)


def local_output_shape(x_shape: Sequence[int], K: int, FH: int, FW: int, stride: int = 1, pad: int = 0,
                       dilation: int = 1) -> tuple[int, int, int, int]:
    """(N, K, Ho, Wo) of a locally-connected layer on an [N, C, H, W] input (GeometryError if it does not fit)."""
    if len(x_shape) != 4:
        raise OpArgumentError(f"local: x must be [N, C, H, W], got shape {tuple(x_shape)}")
    n, _, h, w = (int(s) for s in x_shape)
    ho = window_output_size(h, FH, stride, pad, dilation, layer="local", axis="height")
    wo = window_output_size(w, FW, stride, pad, dilation, layer="local", axis="width")
    return n, int(K), ho, wo


def _patches(x: np.ndarray, fh: int, fw: int, stride: int, pad: int, dil: int, ho: int, wo: int) -> np.ndarray:
    """im2col per position: [P, N, R] with R ordered (c, fh, fw), like w's last three axes."""
    n, c = x.shape[:2]
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    sn, sc, sh, sw = xp_.strides
    view = as_strided(xp_, shape=(n, c, fh, fw, ho, wo),
                      strides=(sn, sc, sh * dil, sw * dil, sh * stride, sw * stride), writeable=False)
    return view.transpose(4, 5, 0, 1, 2, 3).reshape(ho * wo, n, c * fh * fw)


# ----------------------------------------------------------------------------- NumPy spec

def local_forward_cpu(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int, dilation: int,
                      out: np.ndarray) -> None:
    ho, wo, k, c, fh, fw = w.shape
    n = x.shape[0]
    cols = _patches(x, fh, fw, stride, pad, dilation, ho, wo)                 # [P, N, R]
    ypnk = np.matmul(cols, w.reshape(ho * wo, k, c * fh * fw).transpose(0, 2, 1))  # [P, N, K]
    out[...] = ypnk.transpose(1, 2, 0).reshape(n, k, ho, wo)
    if b is not None:
        out += b[None]


def local_backward_data_cpu(dy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...], stride: int, pad: int,
                            dilation: int, out: np.ndarray) -> None:
    ho, wo, k, c, fh, fw = w.shape
    n, _, h, wd = x_shape
    dyp = dy.reshape(n, k, ho * wo).transpose(2, 0, 1)                        # [P, N, K]
    dcols = np.matmul(dyp, w.reshape(ho * wo, k, c * fh * fw))                # [P, N, R]
    dcols = dcols.reshape(ho, wo, n, c, fh, fw).transpose(2, 3, 4, 5, 0, 1)  # [N, C, FH, FW, Ho, Wo]
    dxp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), dtype=dy.dtype)
    for a in range(fh):           # col2im: FH*FW strided adds, vectorized over everything else
        h0 = a * dilation
        for e in range(fw):
            w0 = e * dilation
            dxp[:, :, h0:h0 + stride * (ho - 1) + 1:stride, w0:w0 + stride * (wo - 1) + 1:stride] += dcols[:, :, a, e]
    out[...] = dxp[:, :, pad:pad + h, pad:pad + wd]


def local_backward_filter_cpu(x: np.ndarray, dy: np.ndarray, w_shape: tuple[int, ...], stride: int, pad: int,
                              dilation: int, dw_out: np.ndarray, db_out: np.ndarray | None) -> None:
    ho, wo, k, c, fh, fw = w_shape
    n = x.shape[0]
    cols = _patches(x, fh, fw, stride, pad, dilation, ho, wo)                 # [P, N, R]
    dyp = dy.reshape(n, k, ho * wo).transpose(2, 1, 0)                        # [P, K, N]
    dw_out[...] = np.matmul(dyp, cols).reshape(w_shape)
    if db_out is not None:
        db_out[...] = dy.sum(axis=0)


# ----------------------------------------------------------------------------- CUDA path

def _geom_args(x_shape: Sequence[int], w_shape: Sequence[int], stride: int, pad: int, dil: int) -> tuple[int, ...]:
    n, c, h, w = x_shape
    ho, wo, k, _, fh, fw = w_shape
    return tuple(int(v) for v in (n, c, h, w, k, ho, wo, fh, fw, stride, pad, dil))


def _suffix(dt: Any) -> str:
    return "f32" if np.dtype(dt) == np.float32 else "f64"


def local_forward_gpu(x: Any, w: Any, b: Any, stride: int, pad: int, dilation: int, out: Any) -> None:
    ho, wo, k = w.shape[:3]
    n = x.shape[0]
    grid = (min(ho * wo, 1 << 30), min(cuda.cdiv(n, _TILE), _MAX_GRID_YZ), min(cuda.cdiv(k, _TILE), _MAX_GRID_YZ))
    has_bias = b is not None
    cuda.launch("local", f"local_fwd_{_suffix(x.dtype)}", grid, (_TILE, _TILE),
                (x, w, b if has_bias else out, out, *_geom_args(x.shape, w.shape, stride, pad, dilation),
                 int(has_bias)))


def local_backward_data_gpu(dy: Any, w: Any, x_shape: tuple[int, ...], stride: int, pad: int, dilation: int,
                            out: Any) -> None:
    total = int(np.prod(x_shape))
    cuda.launch("local", f"local_bwd_data_{_suffix(dy.dtype)}", (min(max(cuda.cdiv(total, 256), 1), 1 << 20),),
                (256,), (dy, w, out, *_geom_args(x_shape, w.shape, stride, pad, dilation)))


def local_backward_filter_gpu(x: Any, dy: Any, w_shape: tuple[int, ...], stride: int, pad: int, dilation: int,
                              dw_out: Any, db_out: Any | None) -> None:
    ho, wo, k, c, fh, fw = w_shape
    r = c * fh * fw
    suf = _suffix(x.dtype)
    grid = (min(ho * wo, 1 << 30), min(cuda.cdiv(k, _TILE), _MAX_GRID_YZ), min(cuda.cdiv(r, _TILE), _MAX_GRID_YZ))
    cuda.launch("local", f"local_bwd_filter_{suf}", grid, (_TILE, _TILE),
                (x, dy, dw_out, *_geom_args(x.shape, w_shape, stride, pad, dilation)))
    if db_out is not None:
        kp = k * ho * wo
        cuda.launch("local", f"local_bwd_bias_{suf}", (min(max(cuda.cdiv(kp, 256), 1), 1 << 20),), (256,),
                    (dy, db_out, int(x.shape[0]), np.int64(kp)))


# ----------------------------------------------------------------------------- public API

def _check_w_shape(op: str, w_shape: Sequence[int], x_shape: Sequence[int], stride: int, pad: int,
                   dilation: int) -> tuple[int, ...]:
    if len(w_shape) != 6:
        raise OpArgumentError(f"{op}: w must be [Ho, Wo, K, C, FH, FW], got shape {tuple(w_shape)}")
    ho, wo, k, c, fh, fw = (int(s) for s in w_shape)
    if c != int(x_shape[1]):
        raise OpArgumentError(f"{op}: w has C={c} input channels but x has {x_shape[1]} (x shape {tuple(x_shape)})")
    _, _, eho, ewo = local_output_shape(x_shape, k, fh, fw, stride, pad, dilation)
    if (ho, wo) != (eho, ewo):
        raise OpArgumentError(f"{op}: w is for a {ho}x{wo} output but x {tuple(x_shape)} with F={fh}x{fw}, "
                              f"stride={stride}, pad={pad}, dilation={dilation} gives {eho}x{ewo}")
    return ho, wo, k, c, fh, fw


def _buf(op: str, name: str, a: Any, shape: Sequence[int], like: Any, dt: np.dtype) -> Any:
    """An output buffer named ``name``: the given one after checks, or a new one."""
    if a is None:
        return device.array_module(like).empty(tuple(shape), dtype=dt)
    check_array(op, name, a, shape=shape, dtype=dt, like=like)
    return a


def local_forward(x: Any, w: Any, b: Any = None, stride: int = 1, pad: int = 0, dilation: int = 1,
                  out: Any = None) -> Any:
    """y[N, K, Ho, Wo] of a locally-connected layer (w [Ho, Wo, K, C, FH, FW], b [K, Ho, Wo] or None)."""
    op = "local_forward"
    stride, pad, dilation = _ints(op, stride, pad, dilation)
    dt = _float_dtype(op, "x", x)
    check_array(op, "x", x, ndim=4, dtype=dt)
    check_array(op, "w", w, ndim=6, dtype=dt, like=x)
    ho, wo, k, _, _, _ = _check_w_shape(op, w.shape, x.shape, stride, pad, dilation)
    if b is not None:
        check_array(op, "b", b, shape=(k, ho, wo), dtype=dt, like=x)
    out = check_out(op, out, (x.shape[0], k, ho, wo), x, dt)
    impl = local_forward_gpu if device.is_gpu_array(x) else local_forward_cpu
    impl(x, w, b, stride, pad, dilation, out)
    return out


def local_backward_data(dy: Any, w: Any, x_shape: Sequence[int], stride: int = 1, pad: int = 0, dilation: int = 1,
                        out: Any = None) -> Any:
    """dx [N, C, H, W] of a locally-connected layer."""
    op = "local_backward_data"
    stride, pad, dilation = _ints(op, stride, pad, dilation)
    x_shape = tuple(int(s) for s in x_shape)
    dt = _float_dtype(op, "dy", dy)
    check_array(op, "dy", dy, ndim=4, dtype=dt)
    check_array(op, "w", w, ndim=6, dtype=dt, like=dy)
    if len(x_shape) != 4:
        raise OpArgumentError(f"{op}: x_shape must be (N, C, H, W), got {x_shape}")
    ho, wo, k, _, _, _ = _check_w_shape(op, w.shape, x_shape, stride, pad, dilation)
    check_array(op, "dy", dy, shape=(x_shape[0], k, ho, wo), dtype=dt)
    out = check_out(op, out, x_shape, dy, dt)
    impl = local_backward_data_gpu if device.is_gpu_array(dy) else local_backward_data_cpu
    impl(dy, w, x_shape, stride, pad, dilation, out)
    return out


def local_backward_filter(x: Any, dy: Any, w_shape: Sequence[int], stride: int = 1, pad: int = 0,
                          dilation: int = 1, with_bias: bool = True, dw_out: Any = None,
                          db_out: Any = None) -> tuple[Any, Any]:
    """(dw [Ho, Wo, K, C, FH, FW], db [K, Ho, Wo] or None when with_bias is False)."""
    op = "local_backward_filter"
    stride, pad, dilation = _ints(op, stride, pad, dilation)
    w_shape = tuple(int(s) for s in w_shape)
    dt = _float_dtype(op, "x", x)
    check_array(op, "x", x, ndim=4, dtype=dt)
    ho, wo, k, _, _, _ = _check_w_shape(op, w_shape, x.shape, stride, pad, dilation)
    check_array(op, "dy", dy, shape=(x.shape[0], k, ho, wo), dtype=dt, like=x)
    dw_out = _buf(op, "dw_out", dw_out, w_shape, x, dt)
    if with_bias:
        db_out = _buf(op, "db_out", db_out, (k, ho, wo), x, dt)
    elif db_out is not None:
        raise OpArgumentError(f"{op}: db_out was given but with_bias is False")
    impl = local_backward_filter_gpu if device.is_gpu_array(x) else local_backward_filter_cpu
    impl(x, dy, w_shape, stride, pad, dilation, dw_out, db_out if with_bias else None)
    return dw_out, (db_out if with_bias else None)
