"""GAP ops: global average pooling, (N, C, H, W) -> (N, C), forward and backward.

The notes' GoogLeNet and ResNet end with it instead of a stack of FC layers: every channel's
H x W plane is averaged to one number, y[n, c] = mean over (h, w) of x[n, c, h, w], and the
backward spreads each gradient evenly, dx[n, c, h, w] = dy[n, c] / (H*W).

x and dx may be batch-strided views (``_views``: a channel slice of a concat buffer, e.g. an
Inception module's output read in place); y and dy are C-contiguous (N, C).  ``*_cpu`` is the
NumPy spec, ``*_gpu`` launches kernels/gap.cu (one warp per plane, a shuffle reduction).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import cuda, device
from . import _views
from ._checks import OpArgumentError, check_array

_WARPS = 8             # planes per 256-thread block, as in kernels/gap.cu
_MAX_BLOCKS = 65536    # the warps grid-stride over the rest


def _suffix(dtype: np.dtype) -> str:
    return "f32" if dtype == np.float32 else "f64"


def _input_shape(op: str, shape: Any) -> tuple[int, int, int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise OpArgumentError(f"{op}: input_shape must be a 4-tuple (N, C, H, W), got {shape!r}") from None
    if len(dims) != 4 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0 for d in dims):
        raise OpArgumentError(f"{op}: input_shape must be 4 non-negative integers (N, C, H, W), got {shape!r}")
    n, c, h, w = (int(d) for d in dims)
    if h * w == 0:
        raise OpArgumentError(f"{op}: input_shape {dims} has an empty H x W plane; its average is undefined")
    return n, c, h, w


def gap_output_shape(x_shape: Sequence[int]) -> tuple[int, int]:
    """(N, C) for an (N, C, H, W) input."""
    n, c, _, _ = _input_shape("gap", x_shape)
    return n, c


def _grid(planes: int) -> tuple[int, int, int]:
    return (max(1, min(cuda.cdiv(planes, _WARPS), _MAX_BLOCKS)), 1, 1)


# ---------------------------------------------------------------------------- NumPy reference

def gap_forward_cpu(x: np.ndarray, y: np.ndarray) -> None:
    hw = x.shape[2] * x.shape[3]
    np.sum(x, axis=(2, 3), out=y)
    np.divide(y, y.dtype.type(hw), out=y)


def gap_backward_cpu(dy: np.ndarray, dx: np.ndarray) -> None:
    hw = dx.shape[2] * dx.shape[3]
    np.copyto(dx, (dy / dy.dtype.type(hw))[:, :, None, None])


# ---------------------------------------------------------------------------- CUDA launchers

def gap_forward_gpu(x: Any, y: Any) -> None:
    n, c, h, w = x.shape
    lay = _views.layout("gap_forward", "x", x)
    if n * c == 0:
        return
    cuda.launch("gap", f"gap_fwd_{_suffix(x.dtype)}", _grid(n * c), (_WARPS * 32, 1, 1),
                (_views.span(x, lay), np.int64(lay.batch_stride), y, int(c), np.int64(h * w), np.int64(n * c)))


def gap_backward_gpu(dy: Any, dx: Any) -> None:
    n, c, h, w = dx.shape
    lay = _views.layout("gap_backward", "out", dx)
    if n * c == 0:
        return
    cuda.launch("gap", f"gap_bwd_{_suffix(dy.dtype)}", _grid(n * c), (_WARPS * 32, 1, 1),
                (dy, _views.span(dx, lay), np.int64(lay.batch_stride), int(c), np.int64(h * w), np.int64(n * c)))


# ---------------------------------------------------------------------------- public ops

def gap_forward(x: Any, *, out: Any = None) -> Any:
    """(N, C, H, W) -> (N, C): the mean of each channel's plane."""
    op = "gap_forward"
    _views.check_view(op, "x", x, ndim=4)
    n, c, _, _ = _input_shape(op, x.shape)
    if out is None:
        y = device.array_module(x).empty((n, c), dtype=x.dtype)
    else:
        check_array(op, "out", out, shape=(n, c), dtype=x.dtype, like=x)
        y = out
    if device.is_gpu_array(x):
        gap_forward_gpu(x, y)
    else:
        gap_forward_cpu(x, y)
    return y


def gap_backward(dy: Any, input_shape: Sequence[int], *, out: Any = None) -> Any:
    """(N, C) -> (N, C, H, W): each dy[n, c] / (H*W) spread over its plane."""
    op = "gap_backward"
    n, c, h, w = _input_shape(op, input_shape)
    _views.check_view(op, "dy", dy)
    check_array(op, "dy", dy, shape=(n, c), dtype=dy.dtype)
    if out is None:
        dx = device.array_module(dy).empty((n, c, h, w), dtype=dy.dtype)
    else:
        _views.check_view(op, "out", out, shape=(n, c, h, w), like=dy)
        dx = out
    if device.is_gpu_array(dy):
        gap_backward_gpu(dy, dx)
    else:
        gap_backward_cpu(dy, dx)
    return dx
