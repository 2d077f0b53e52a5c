"""CONCAT ops: concatenation along channels (axis 1), and the channel-slice views that make it free.

An Inception module concatenates its branches along channels.  The concatenation costs nothing
when each branch writes its output straight into its slice of the concat buffer and the
consumers read the buffer where it lies: ``channel_slice(buf, c0, c1)`` is that slice, an NCHW
view whose samples are contiguous blocks ``Ctot*H*W`` elements apart (see ``_views``).  The ops
whose kernels take such views, as inputs and outputs, are listed in ``VIEW_OPS``:

* ``add`` (add_forward / add_backward / accumulate_), ``gap`` (gap_forward's x, gap_backward's
  out) and ``relu`` (activation.relu_forward / relu_backward, every operand).

``OUTPUT_VIEW_OPS`` take views on their output side only: conv, in every variant (the implicit
GEMMs in both schedules and both precisions, the wgmma GEMMs, the direct float32 backward-data,
the float64 direct kernels, Winograd), writes its output ``y`` (conv_forward's ``out``, and the
fused residual, which has out's layout) into a channel slice and reads its gradient ``dy`` from
one (conv_backward_data, conv_backward_filter and the bias gradient).  Its input ``x`` and
backward-data's ``dx`` stay C-contiguous, so conv is also in ``COPY_OPS`` (for a branch that
*reads* a slice).  A branch ending in a conv needs no copy in either direction.

The others need C-contiguous operands today (``COPY_OPS``): pool, batchnorm, lrn, local,
dropout, fc and loss, and conv's input side.  For a branch ending in one of those (conv aside),
the plan copies: ``concat_forward`` copies each branch's output into its slice (and skips an
input that already *is* its slice, so a fully planned concat launches nothing), and
``concat_backward`` copies the gradient's slices out for the branches that need them
contiguous (``copy=False`` hands back the slices themselves, for the rest).

``*_cpu`` is the NumPy spec, ``*_gpu`` launches kernels/concat.cu's copy.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import cuda, device
from . import _views
from ._checks import OpArgumentError

VIEW_OPS = frozenset({"add", "gap", "relu"})
OUTPUT_VIEW_OPS = frozenset({"conv", "winograd"})  # y and dy may be slices; x and dx may not
COPY_OPS = frozenset({"conv", "winograd", "pool", "batchnorm", "lrn", "local", "dropout", "fc", "loss"})


def _suffix(dtype: np.dtype) -> str:
    return "f32" if dtype == np.float32 else "f64"


def _int(op: str, name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise OpArgumentError(f"{op}: {name} must be an integer, got {v!r}")
    return int(v)


def channel_slice(buf: Any, c0: int, c1: int) -> Any:
    """buf[:, c0:c1]: channels c0..c1-1 of an (N, C, ...) buffer, a view (no copy) that the
    ``VIEW_OPS`` read and write in place."""
    op = "channel_slice"
    if not hasattr(buf, "shape") or getattr(buf, "ndim", 0) < 2:
        raise OpArgumentError(f"{op}: buf must be an array of at least 2 dimensions (N, C, ...), "
                              f"got {getattr(buf, 'shape', type(buf).__name__)}")
    c0, c1 = _int(op, "c0", c0), _int(op, "c1", c1)
    if not 0 <= c0 < c1 <= buf.shape[1]:
        raise OpArgumentError(f"{op}: channels [{c0}:{c1}] must satisfy 0 <= c0 < c1 <= {buf.shape[1]} "
                              f"(buf has shape {tuple(buf.shape)})")
    _views.layout(op, "buf", buf)
    return buf[:, c0:c1]


def channel_slices(buf: Any, channels: Sequence[int]) -> list[Any]:
    """The consecutive slices of ``buf`` holding ``channels[i]`` channels each (they must add up
    to buf's channel count)."""
    op = "channel_slices"
    counts = [_int(op, f"channels[{i}]", c) for i, c in enumerate(channels)]
    if not counts or any(c <= 0 for c in counts) or sum(counts) != buf.shape[1]:
        raise OpArgumentError(f"{op}: channels {counts} must be positive and add up to buf's "
                              f"{buf.shape[1]} channels (buf has shape {tuple(buf.shape)})")
    bounds = np.cumsum([0, *counts]).tolist()
    return [channel_slice(buf, c0, c1) for c0, c1 in zip(bounds[:-1], bounds[1:])]


def concat_output_shape(shapes: Sequence[Sequence[int]], names: Sequence[str] | None = None) -> tuple[int, ...]:
    """(N, sum of C, ...) for inputs that agree on every axis but the channels; otherwise an
    error naming the first input and the one that differs, with their shapes."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    names = list(names) if names is not None else [f"input {i}" for i in range(len(shapes))]
    if not shapes:
        raise OpArgumentError("concat: nothing to concatenate")
    first = shapes[0]
    if len(first) < 2:
        raise OpArgumentError(f"concat: {names[0]} has shape {first}; inputs need a channel axis (N, C, ...)")
    for name, s in zip(names[1:], shapes[1:]):
        if len(s) != len(first) or s[0] != first[0] or s[2:] != first[2:]:
            raise OpArgumentError(f"concat: {names[0]} has shape {first} but {name} has shape {s}; "
                                  f"all but the channel axis (1) must match")
    return (first[0], sum(s[1] for s in shapes), *first[2:])


# ---------------------------------------------------------------------------- NumPy reference

def concat_forward_cpu(xs: Sequence[np.ndarray], out: np.ndarray) -> None:
    for x, dst in zip(xs, channel_slices(out, [x.shape[1] for x in xs])):
        if not _views.same_view(x, dst):
            np.copyto(dst, x)


def concat_backward_cpu(dy: np.ndarray, outs: Sequence[np.ndarray]) -> None:
    for src, dst in zip(channel_slices(dy, [o.shape[1] for o in outs]), outs):
        if not _views.same_view(src, dst):
            np.copyto(dst, src)


# ---------------------------------------------------------------------------- CUDA launchers

def copy_gpu(src: Any, dst: Any) -> None:
    """dst[...] = src with kernels/concat.cu: both of one shape, either may be a batch-strided view."""
    if _views.same_view(src, dst):
        return
    sl, dl = _views.layout("concat", "src", src), _views.layout("concat", "dst", dst)
    batches, inner, (s_bs, d_bs) = _views.collapse([sl, dl])
    if batches * inner == 0:
        return
    cuda.launch("concat", f"concat_copy_{_suffix(src.dtype)}", _views.elementwise_grid(batches, inner),
                (_views.BLOCK, 1, 1),
                (_views.span(src, sl), np.int64(s_bs), _views.span(dst, dl), np.int64(d_bs),
                 np.int64(inner), np.int64(batches)))


def concat_forward_gpu(xs: Sequence[Any], out: Any) -> None:
    for x, dst in zip(xs, channel_slices(out, [x.shape[1] for x in xs])):
        copy_gpu(x, dst)


def concat_backward_gpu(dy: Any, outs: Sequence[Any]) -> None:
    for src, dst in zip(channel_slices(dy, [o.shape[1] for o in outs]), outs):
        copy_gpu(src, dst)


# ---------------------------------------------------------------------------- public ops

def concat_forward(xs: Sequence[Any], *, out: Any = None) -> Any:
    """Concatenate ``xs`` along channels into ``out`` (new when None).  An input that already is
    its slice of ``out`` (a branch that wrote into the concat buffer) is not copied."""
    op = "concat_forward"
    xs = list(xs)
    if not xs:
        raise OpArgumentError(f"{op}: nothing to concatenate")
    for i, x in enumerate(xs):
        _views.check_view(op, f"xs[{i}]", x, like=None if i == 0 else xs[0])
    shape = concat_output_shape([x.shape for x in xs], [f"xs[{i}]" for i in range(len(xs))])
    if out is None:
        out = device.array_module(xs[0]).empty(shape, dtype=xs[0].dtype)
    else:
        _views.check_view(op, "out", out, shape=shape, like=xs[0])
    if device.is_gpu_array(xs[0]):
        concat_forward_gpu(xs, out)
    else:
        concat_forward_cpu(xs, out)
    return out


def concat_backward(dy: Any, channels: Sequence[int], *, out: Sequence[Any] | None = None,
                    copy: bool = True) -> list[Any]:
    """The gradients of the concatenated inputs: dy's consecutive channel slices of ``channels[i]``
    channels each, copied into C-contiguous arrays (into ``out[i]`` when given), or the slices
    themselves with ``copy=False`` (no copy, for consumers in ``VIEW_OPS``)."""
    op = "concat_backward"
    _views.check_view(op, "dy", dy)
    slices = channel_slices(dy, channels)
    if not copy:
        if out is not None:
            raise OpArgumentError(f"{op}: out is for copies; with copy=False the slices of dy are returned")
        return slices
    if out is None:
        xp = device.array_module(dy)
        outs = [xp.empty(tuple(s.shape), dtype=dy.dtype) for s in slices]
    else:
        outs = list(out)
        if len(outs) != len(slices):
            raise OpArgumentError(f"{op}: {len(outs)} outputs for {len(slices)} channel slices")
        for i, (o, s) in enumerate(zip(outs, slices)):
            _views.check_view(op, f"out[{i}]", o, shape=s.shape, like=dy)
    if device.is_gpu_array(dy):
        concat_backward_gpu(dy, outs)
    else:
        concat_backward_cpu(dy, outs)
    return outs
