"""RELU ops: max(0, x), or leaky max(slope*x, x), forward and backward, any shape.

The backward takes the layer's OUTPUT y rather than its input: for slope >= 0, y > 0 exactly
when x > 0, so the layer need not keep x (and may run in place: ``out=x`` forward,
``out=dy`` backward).  NaN inputs propagate forward; with slope == 0 the x <= 0 branch is an
exact +0 (so relu(-inf) = 0 and the backward is a select, never 0 * inf).  Both paths agree.

Every operand may be a batch-strided view as well as a C-contiguous array (``_views``): e.g. a
channel slice ``buf[:, c0:c1]`` of a concat buffer, read and written in place.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import cuda, device
from . import _views
from ._checks import OpArgumentError


def _check_float(op: str, name: str, a: Any, *, like: Any = None) -> _views.Layout:
    """A float32/float64 array, C-contiguous or batch-strided (like ``like``: shape, dtype, device)."""
    return _views.check_view(op, name, a, shape=None if like is None else like.shape, like=like)


def _out(op: str, out: Any, like: Any) -> Any:
    """``out`` checked (a view is fine), or a new C-contiguous array shaped like ``like``."""
    if out is None:
        return device.array_module(like).empty(tuple(like.shape), dtype=like.dtype)
    _views.check_view(op, "out", out, shape=like.shape, like=like, dtype=like.dtype)
    return out


def _check_slope(op: str, slope: Any) -> float:
    try:
        s = float(slope)
    except (TypeError, ValueError):
        raise OpArgumentError(f"{op}: slope must be a number, got {slope!r}") from None
    if not (math.isfinite(s) and s >= 0.0):
        raise OpArgumentError(f"{op}: slope={slope!r} must be a finite number >= 0 "
                              f"(the backward pass reads the sign of the output)")
    return s


def _launch(function: str, operands: tuple[Any, ...], slope: Any) -> None:
    """One launch over operands of one shape, each passed as (span, batch stride)."""
    lays = [_views.layout(function, f"operand {i}", a) for i, a in enumerate(operands)]
    batches, inner, strides = _views.collapse(lays)
    if batches * inner == 0:
        return
    args: list[Any] = []
    for a, lay, bs in zip(operands, lays, strides):
        args += [_views.span(a, lay), np.int64(bs)]
    cuda.launch("activation", function, _views.elementwise_grid(batches, inner), (_views.BLOCK, 1, 1),
                (*args, np.int64(inner), np.int64(batches), slope))


def _suffix(dtype: np.dtype) -> str:
    return "f32" if dtype == np.float32 else "f64"


# ---------------------------------------------------------------------------- NumPy reference

def where_or_zero(a: np.ndarray, keep: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = a where keep else an exact +0, branch-free (a bit mask, not a multiply:
    inf * 0 would be NaN; and much faster than a masked copy on a random mask)."""
    ibits = {4: np.int32, 8: np.int64}[a.dtype.itemsize]
    np.bitwise_and(a.view(ibits), np.negative(keep, dtype=ibits), out=out.view(ibits))
    return out


def _scale_unkept(src: np.ndarray, keep: np.ndarray, slope: float, out: np.ndarray) -> None:
    """out = src where keep, else slope * src (an exact +0 for slope 0, even where src is inf)."""
    if slope == 0.0:
        where_or_zero(src, keep, out)
        return
    if out is not src:
        np.copyto(out, src)
    np.multiply(out, out.dtype.type(slope), out=out, where=~keep)


def relu_forward_cpu(x: np.ndarray, slope: float, y: np.ndarray) -> None:
    # the mask is computed before writing (y may be x); NaN propagates
    _scale_unkept(x, (x > 0) | np.isnan(x), slope, y)


def relu_backward_cpu(dy: np.ndarray, y: np.ndarray, slope: float, dx: np.ndarray) -> None:
    _scale_unkept(dy, y > 0, slope, dx)


# ---------------------------------------------------------------------------- CUDA launchers

def relu_forward_gpu(x: Any, slope: float, y: Any) -> None:
    s = x.dtype.type(slope)  # the kernel takes a T-typed slope (float or double)
    _launch(f"relu_fwd_{_suffix(x.dtype)}", (x, y), s)


def relu_backward_gpu(dy: Any, y: Any, slope: float, dx: Any) -> None:
    s = dy.dtype.type(slope)
    _launch(f"relu_bwd_{_suffix(dy.dtype)}", (dy, y, dx), s)


# ---------------------------------------------------------------------------- public ops

def relu_forward(x: Any, slope: float = 0.0, out: Any = None) -> Any:
    """y = x where x > 0, else slope*x.  ``out`` may be x itself (in place)."""
    op = "relu_forward"
    _check_float(op, "x", x)
    slope = _check_slope(op, slope)
    y = _out(op, out, x)
    if device.is_gpu_array(x):
        relu_forward_gpu(x, slope, y)
    else:
        relu_forward_cpu(x, slope, y)
    return y


def relu_backward(dy: Any, y: Any, slope: float = 0.0, out: Any = None) -> Any:
    """dx = dy where y > 0, else slope*dy (y is the forward OUTPUT).  ``out`` may be dy."""
    op = "relu_backward"
    _check_float(op, "dy", dy)
    _check_float(op, "y", y, like=dy)
    slope = _check_slope(op, slope)
    dx = _out(op, out, dy)
    if device.is_gpu_array(dy):
        relu_backward_gpu(dy, y, slope, dx)
    else:
        relu_backward_cpu(dy, y, slope, dx)
    return dx
