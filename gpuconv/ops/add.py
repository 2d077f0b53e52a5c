"""ADD ops: the residual sum of two branches, optionally fused with the ReLU that follows it.

* ``add_forward(a, b, relu=True)`` is the fused "add -> relu" of a residual block (one pass over
  memory instead of two); ``relu=False`` is the plain sum, the unfused reference.  The ReLU is
  activation.py's (slope 0): a NaN sum stays NaN, everything <= 0 becomes an exact +0.
* ``add_backward`` gives the gradient that flows to BOTH inputs: ``dy`` itself (returned as it is
  unless an ``out`` is given: the sum's gradient needs no copy), or ``dy * (y > 0)`` with the
  fused ReLU, ``y`` being the forward output (a select: an exact 0 where y <= 0).
* ``accumulate_(dst, src)``: ``dst += src`` in place, for summing the gradients of a tensor that
  several nodes read, without a temporary.

Every operand may be a batch-strided view (``_views``: e.g. a channel slice ``buf[:, c0:c1]`` of a
concat buffer) as well as a C-contiguous array; the NumPy path takes the same views.  In-place use
is allowed (``out=a``, ``out=dy``).  ``*_cpu`` is the NumPy spec, ``*_gpu`` launches kernels/add.cu.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import cuda, device
from . import _views
from ._checks import OpArgumentError
from .activation import relu_backward_cpu, relu_forward_cpu


def _suffix(dtype: np.dtype) -> str:
    return "f32" if dtype == np.float32 else "f64"


def _out(op: str, out: Any, like: Any) -> Any:
    """``out`` checked (a view is fine), or a new C-contiguous array shaped like ``like``."""
    if out is None:
        return device.array_module(like).empty(tuple(like.shape), dtype=like.dtype)
    _views.check_view(op, "out", out, shape=like.shape, like=like)
    return out


def _same_shape(op: str, names: tuple[str, str], a: Any, b: Any) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise OpArgumentError(f"{op}: {names[0]} has shape {tuple(a.shape)} but {names[1]} has shape "
                              f"{tuple(b.shape)}; they must match")


# ---------------------------------------------------------------------------- NumPy reference

def add_forward_cpu(a: np.ndarray, b: np.ndarray, relu: bool, y: np.ndarray) -> None:
    with np.errstate(invalid="ignore", over="ignore"):   # inf + -inf is NaN, as on the GPU: no warning
        np.add(a, b, out=y)  # y may be a or b (elementwise, in place is safe)
    if relu:
        relu_forward_cpu(y, 0.0, y)


def add_backward_cpu(dy: np.ndarray, y: np.ndarray | None, relu: bool, dx: np.ndarray) -> None:
    if relu:
        relu_backward_cpu(dy, y, 0.0, dx)
    elif not _views.same_view(dx, dy):
        np.copyto(dx, dy)


# ---------------------------------------------------------------------------- CUDA launchers

def _launch(function: str, operands: list[tuple[Any, _views.Layout]], relu: bool) -> None:
    batches, inner, strides = _views.collapse([lay for _, lay in operands])
    if batches * inner == 0:
        return
    args: list[Any] = []
    for (arr, lay), bs in zip(operands, strides):
        args += [_views.span(arr, lay), np.int64(bs)]
    args += [np.int64(inner), np.int64(batches), int(bool(relu))]
    cuda.launch("add", function, _views.elementwise_grid(batches, inner), (_views.BLOCK, 1, 1), tuple(args))


def add_forward_gpu(a: Any, b: Any, relu: bool, y: Any) -> None:
    lays = [_views.layout("add_forward", n, t) for n, t in (("a", a), ("b", b), ("out", y))]
    _launch(f"add_fwd_{_suffix(a.dtype)}", list(zip((a, b, y), lays)), relu)


def add_backward_gpu(dy: Any, y: Any | None, relu: bool, dx: Any) -> None:
    if not relu and _views.same_view(dx, dy):
        return
    lays = [_views.layout("add_backward", n, t) for n, t in (("dy", dy), ("dx", dx))]
    y_op = (y, _views.layout("add_backward", "y", y)) if relu else (dy, lays[0])  # y unread without relu
    _launch(f"add_bwd_{_suffix(dy.dtype)}", [(dy, lays[0]), y_op, (dx, lays[1])], relu)


# ---------------------------------------------------------------------------- public ops

def add_forward(a: Any, b: Any, *, relu: bool = False, out: Any = None) -> Any:
    """y = a + b, then ReLU when ``relu`` (the fused add+ReLU).  ``out`` may be a or b."""
    op = "add_forward"
    _views.check_view(op, "a", a)
    _views.check_view(op, "b", b, like=a)
    _same_shape(op, ("a", "b"), a, b)
    y = _out(op, out, a)
    if device.is_gpu_array(a):
        add_forward_gpu(a, b, relu, y)
    else:
        add_forward_cpu(a, b, relu, y)
    return y


def add_backward(dy: Any, *, y: Any = None, relu: bool = False, out: Any = None) -> Any:
    """The gradient of both inputs of the sum: ``dy`` (itself, without ``out``), or ``dy`` where
    the forward output ``y`` > 0 and an exact 0 elsewhere when the ReLU was fused.  ``out`` may be dy."""
    op = "add_backward"
    _views.check_view(op, "dy", dy)
    if relu:
        if y is None:
            raise OpArgumentError(f"{op}: relu=True needs y, the forward output (its sign gates the gradient)")
        _views.check_view(op, "y", y, like=dy)
        _same_shape(op, ("dy", "y"), dy, y)
    elif out is None:
        return dy
    dx = _out(op, out, dy)
    if device.is_gpu_array(dy):
        add_backward_gpu(dy, y, relu, dx)
    else:
        add_backward_cpu(dy, y, relu, dx)
    return dx


def accumulate_(dst: Any, src: Any) -> Any:
    """dst += src in place (the gradient of a tensor read by several nodes); returns dst."""
    op = "accumulate_"
    _views.check_view(op, "dst", dst)
    _views.check_view(op, "src", src, like=dst)
    _same_shape(op, ("dst", "src"), dst, src)
    if device.is_gpu_array(dst):
        add_forward_gpu(dst, src, False, dst)
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            np.add(dst, src, out=dst)
    return dst
