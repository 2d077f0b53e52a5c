"""POOL ops: max pooling (with compact switches), average pooling and L2-norm pooling.

Layout is NCHW.  A window of F x F inputs slides with stride S over the input padded by
``pad`` on each side of both spatial axes; the output size is the notes' (W - F + 2P)/S + 1
(``geometry.window_output_size``), which must be an integer unless ``rounding`` is 'floor'
(PyTorch's) or 'ceil' (Caffe's, PyTorch's ceil_mode; max pooling only): the windows still
start at -pad + i*S, and every position outside the input is padding.  ``pad < F`` is
required, and ceil's last window starts inside the input or its left padding, so every window
covers at least one real input element.

* Max: padding never wins; ties go to the first maximum in raster order inside the window;
  a NaN in the window wins (propagates).  ``switches`` (uint8, shaped like y) holds the
  winner's position fh*F + fw, so F*F <= 255 is required.
* Average: the divisor is always F*F: padding counts as zeros (PyTorch's
  ``count_include_pad=True``).
* L2: y = sqrt(sum of squares in the window), padding counts as zeros; dx = dy*x/y, 0 where y == 0.

``*_cpu`` functions are the NumPy spec (vectorized over N, C and the output grid: one pass per
window offset, F*F passes in all); ``*_gpu`` launch ``kernels/pool.cu``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import cuda, device
from ..geometry import GeometryError, window_output_size
from . import cpu_threads
from ._checks import OpArgumentError, check_array, check_out
from .activation import where_or_zero

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_BLOCK = 256
_MAX_GRID = 2**31 - 1
# Tests set this to exercise the kernels' 64-bit index path on small shapes.
_FORCE_INDEX64 = False

Shape4 = tuple[int, int, int, int]


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------

def _int_param(op: str, name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise OpArgumentError(f"{op}: {name}={v!r} must be an integer >= {low}")
    return int(v)


def _geometry(op: str, x_shape: Sequence[int], F: Any, S: Any, pad: Any,
              rounding: str = "exact") -> tuple[Shape4, int, int, int]:
    """Checked (N, C, Ho, Wo) and the window parameters as ints."""
    F = _int_param(op, "F", F, 1)
    S = _int_param(op, "S", S, 1)
    pad = _int_param(op, "pad", pad, 0)
    try:
        dims = tuple(x_shape)
    except TypeError:
        raise OpArgumentError(f"{op}: x_shape must be a 4-tuple (N, C, H, W), got {x_shape!r}") from None
    if len(dims) != 4 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0 for d in dims):
        raise OpArgumentError(f"{op}: x_shape must be 4 non-negative integers (N, C, H, W), got {x_shape!r}")
    n, c, h, w = (int(d) for d in dims)
    if pad >= F:
        raise GeometryError(f"{op}: padding pad={pad} must be smaller than the window F={F} "
                            f"(otherwise some windows hold only padding)")
    if rounding == "ceil" and not op.startswith(("maxpool", "pool")):
        # average and L2 pooling divide by (or sum over) F*F: a window past the padding would
        # need PyTorch's clipped divisor, which these kernels do not compute
        raise OpArgumentError(f"{op}: rounding='ceil' is for max pooling only (use 'exact' or 'floor')")
    ho = window_output_size(h, F, S, pad, layer=op, axis="height", rounding=rounding)
    wo = window_output_size(w, F, S, pad, layer=op, axis="width", rounding=rounding)
    return (n, c, ho, wo), F, S, pad


def pool_output_shape(x_shape: Sequence[int], F: int, S: int, pad: int = 0, rounding: str = "exact") -> tuple:
    """(N, C, Ho, Wo) for pooling an (N, C, H, W) volume; GeometryError when it does not fit."""
    return _geometry("pool", x_shape, F, S, pad, rounding)[0]


def _check_float(op: str, name: str, a: Any, *, like: Any = None, shape: Sequence[int] | None = None,
                 dtype: Any = None) -> None:
    """4-D C-contiguous float32/float64 array (of ``dtype`` and ``shape`` when given)."""
    check_array(op, name, a, ndim=4, shape=shape, dtype=dtype, like=like)
    if a.dtype not in _FLOATS:
        raise OpArgumentError(f"{op}: {name} must be float32 or float64, got {a.dtype}")


def _check_max_window(op: str, F: int) -> None:
    if F * F > 255:
        raise OpArgumentError(f"{op}: window F={F} has F*F={F * F} positions, more than the 255 "
                              f"a uint8 switch can name (use F <= 15)")


def _suffix(dtype: np.dtype) -> str:
    return "f32" if dtype == np.float32 else "f64"


def _grid(total: int) -> tuple[int, int, int]:
    return (min(cuda.cdiv(total, _BLOCK), _MAX_GRID), 1, 1)


# ------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------

def _span(n: int, F: int, S: int, pad: int, out: int) -> int:
    """Size of the padded axis the windows cover: n + 2*pad, or more where a ceil window
    reaches past the padding (floor's windows never do; the positions they skip are unread)."""
    return max(n + 2 * pad, (out - 1) * S + F)


def _padded(x: np.ndarray, F: int, S: int, pad: int, ho: int, wo: int) -> np.ndarray:
    """x zero-padded by ``pad`` before and up to the windows' span after."""
    _, _, h, w = x.shape
    after_h, after_w = _span(h, F, S, pad, ho) - h - pad, _span(w, F, S, pad, wo) - w - pad
    return np.pad(x, ((0, 0), (0, 0), (pad, after_h), (pad, after_w))) if pad or after_h or after_w else x


def _acc(dx: np.ndarray, F: int, S: int, pad: int, ho: int, wo: int) -> np.ndarray:
    """A zeroed gradient of the padded input (as ``_padded`` lays it out)."""
    n, c, h, w = dx.shape
    return np.zeros((n, c, _span(h, F, S, pad, ho), _span(w, F, S, pad, wo)), dx.dtype)


def _window_view(a: np.ndarray, fh: int, fw: int, S: int, ho: int, wo: int) -> np.ndarray:
    """a[:, :, oh*S + fh, ow*S + fw] for all (oh, ow): a strided view, no copy."""
    return a[:, :, fh:fh + S * (ho - 1) + 1:S, fw:fw + S * (wo - 1) + 1:S]


def _valid_offsets(n_out: int, S: int, f: int, pad: int, n_in: int) -> np.ndarray:
    """Which outputs' window offset f lands on a real (non-padding) input."""
    pos = np.arange(n_out) * S - pad + f
    return (pos >= 0) & (pos < n_in)


def _tiles(x: np.ndarray, F: int, S: int, pad: int, ho: int, wo: int) -> bool:
    """True when the windows tile the input exactly (F == S, no padding, no leftover rows)."""
    return F == S and pad == 0 and x.shape[2] == ho * F and x.shape[3] == wo * F


def maxpool_forward_cpu(x: np.ndarray, F: int, S: int, pad: int, y: np.ndarray, switches: np.ndarray) -> None:
    """Fill y and switches; the update rule matches the kernel exactly (same ties, same NaNs).

    The kernel's rule: scan the window's taps in raster order, keep the first maximum, and
    let a NaN replace a non-NaN best (so the first NaN wins).
    """
    _, _, h, w = x.shape
    ho, wo = y.shape[2:]
    if pad == 0 and (ho - 1) * S + F <= h and (wo - 1) * S + F <= w:  # no window reaches past x
        # Whole-array passes, one per tap: y = max over the taps (np.maximum propagates
        # NaN), then the switch is the first tap equal to it (or the first NaN).
        views = [_window_view(x, k // F, k % F, S, ho, wo) for k in range(F * F)]
        np.copyto(y, views[0])
        for v in views[1:]:
            np.maximum(y, v, out=y)
        any_nan = bool(np.isnan(y).any())
        switches.fill(0)
        found = np.zeros(y.shape, bool)
        hit = np.empty(y.shape, bool)
        for k, v in enumerate(views):
            np.equal(v, y, out=hit)
            if any_nan:
                hit |= np.isnan(v)
            np.greater(hit, found, out=hit)   # hit and not yet found
            found |= hit
            if k:
                switches += hit.view(np.uint8) * np.uint8(k)
        return
    xp = _padded(x, F, S, pad, ho, wo)
    y.fill(0)
    switches.fill(255)  # 255 = no real element seen yet; pad < F guarantees one per window
    for fh in range(F):
        rows = _valid_offsets(ho, S, fh, pad, h)
        for fw in range(F):
            v = _window_view(xp, fh, fw, S, ho, wo)
            # strict '>' keeps the first maximum; a NaN replaces a non-NaN best
            upd = (switches == 255) | (v > y) | (np.isnan(v) & ~np.isnan(y))
            upd &= rows[:, None] & _valid_offsets(wo, S, fw, pad, w)[None, :]
            np.copyto(y, v, where=upd)
            np.copyto(switches, np.uint8(fh * F + fw), where=upd)


def maxpool_backward_cpu(dy: np.ndarray, switches: np.ndarray, F: int, S: int, pad: int,
                         dx: np.ndarray) -> None:
    """dx = each dy routed to the input its switch names; overlapping windows add up."""
    n, c, h, w = dx.shape
    ho, wo = dy.shape[2:]
    tiles = _tiles(dx, F, S, pad, ho, wo)
    inside = pad == 0 and (ho - 1) * S + F <= h and (wo - 1) * S + F <= w  # no window reaches past x
    acc = dx if inside else _acc(dx, F, S, pad, ho, wo)
    if inside and not tiles:
        acc.fill(0)
    hit = np.empty(dy.shape, bool)
    routed = np.empty_like(dy)
    for k in range(F * F):
        where_or_zero(dy, np.equal(switches, k, out=hit), routed)
        view = _window_view(acc, k // F, k % F, S, ho, wo)
        if tiles:
            view[...] = routed   # the taps of tiling windows cover every input exactly once
        else:
            view += routed
    if not inside:
        dx[...] = acc[:, :, pad:pad + h, pad:pad + w]


def avgpool_forward_cpu(x: np.ndarray, F: int, S: int, pad: int, y: np.ndarray) -> None:
    ho, wo = y.shape[2:]
    xp = _padded(x, F, S, pad, ho, wo)
    y.fill(0)
    for k in range(F * F):
        y += _window_view(xp, k // F, k % F, S, ho, wo)
    y /= F * F  # padding counted as zeros: always divide by F*F


def avgpool_backward_cpu(dy: np.ndarray, F: int, S: int, pad: int, dx: np.ndarray) -> None:
    n, c, h, w = dx.shape
    ho, wo = dy.shape[2:]
    acc = _acc(dx, F, S, pad, ho, wo)
    g = dy / (F * F)
    for k in range(F * F):
        _window_view(acc, k // F, k % F, S, ho, wo)[...] += g
    dx[...] = acc[:, :, pad:pad + h, pad:pad + w]


def l2pool_forward_cpu(x: np.ndarray, F: int, S: int, pad: int, y: np.ndarray) -> None:
    ho, wo = y.shape[2:]
    xp = _padded(x, F, S, pad, ho, wo)
    y.fill(0)
    for k in range(F * F):
        v = _window_view(xp, k // F, k % F, S, ho, wo)
        y += v * v
    np.sqrt(y, out=y)


def l2pool_backward_cpu(dy: np.ndarray, x: np.ndarray, y: np.ndarray, F: int, S: int, pad: int,
                        dx: np.ndarray) -> None:
    """dx[i] = x[i] * sum over windows o containing i of dy[o]/y[o] (terms with y[o] == 0 are 0)."""
    n, c, h, w = dx.shape
    ho, wo = dy.shape[2:]
    g = np.zeros_like(dy)
    np.divide(dy, y, out=g, where=y > 0)
    acc = _acc(dx, F, S, pad, ho, wo)
    for k in range(F * F):
        _window_view(acc, k // F, k % F, S, ho, wo)[...] += g
    np.multiply(x, acc[:, :, pad:pad + h, pad:pad + w], out=dx)


def _over_batch(cpu_op: Any, *args: Any) -> None:
    """Run a NumPy pooling op on batch slices (every 4-D array argument is cut along N);
    windows never cross examples, so the slices are independent (threads inside
    ``cpu_threads.engine()``, one inline call outside)."""
    batched = [isinstance(a, np.ndarray) and a.ndim == 4 for a in args]
    first = next(a for a, b in zip(args, batched) if b)
    total = sum(a.size for a, b in zip(args, batched) if b)
    cpu_threads.over_batch(
        lambda lo, hi: cpu_op(*(a[lo:hi] if b else a for a, b in zip(args, batched))), first.shape[0], total)


# ------------------------------------------------------------------------------------------
# CUDA launchers
# ------------------------------------------------------------------------------------------

def _dims(x_shape: Sequence[int], y_shape: Sequence[int]) -> tuple[int, int, int, int, int]:
    n, c, h, w = x_shape
    return n * c, h, w, y_shape[2], y_shape[3]


def maxpool_forward_gpu(x: Any, F: int, S: int, pad: int, y: Any, switches: Any) -> None:
    nc, h, w, ho, wo = _dims(x.shape, y.shape)
    suf = _suffix(x.dtype)
    force64 = int(_FORCE_INDEX64)
    vec = (F == 2 and S == 2 and pad == 0 and w % 4 == 0 and (h, w) == (2 * ho, 2 * wo)
           and x.data.ptr % 16 == 0 and y.data.ptr % (2 * y.itemsize) == 0 and switches.data.ptr % 2 == 0)
    if vec:  # two outputs per thread from 16-byte loads of both input rows
        cuda.launch("pool", f"maxpool_fwd_k2s2v_{suf}", _grid(nc * ho * (wo // 2)), (_BLOCK, 1, 1),
                    (x, y, switches, nc, h, w, ho, wo, force64))
    else:
        cuda.launch("pool", f"maxpool_fwd_{suf}", _grid(nc * ho * wo), (_BLOCK, 1, 1),
                    (x, y, switches, nc, h, w, ho, wo, F, S, pad, force64))


def maxpool_backward_gpu(dy: Any, switches: Any, F: int, S: int, pad: int, dx: Any) -> None:
    nc, h, w, ho, wo = _dims(dx.shape, dy.shape)
    cuda.launch("pool", f"maxpool_bwd_{_suffix(dy.dtype)}", _grid(nc * h * w), (_BLOCK, 1, 1),
                (dy, switches, dx, nc, h, w, ho, wo, F, S, pad, int(_FORCE_INDEX64)))


def avgpool_forward_gpu(x: Any, F: int, S: int, pad: int, y: Any) -> None:
    nc, h, w, ho, wo = _dims(x.shape, y.shape)
    cuda.launch("pool", f"avgpool_fwd_{_suffix(x.dtype)}", _grid(nc * ho * wo), (_BLOCK, 1, 1),
                (x, y, nc, h, w, ho, wo, F, S, pad, int(_FORCE_INDEX64)))


def avgpool_backward_gpu(dy: Any, F: int, S: int, pad: int, dx: Any) -> None:
    nc, h, w, ho, wo = _dims(dx.shape, dy.shape)
    cuda.launch("pool", f"avgpool_bwd_{_suffix(dy.dtype)}", _grid(nc * h * w), (_BLOCK, 1, 1),
                (dy, dx, nc, h, w, ho, wo, F, S, pad, int(_FORCE_INDEX64)))


def l2pool_forward_gpu(x: Any, F: int, S: int, pad: int, y: Any) -> None:
    nc, h, w, ho, wo = _dims(x.shape, y.shape)
    cuda.launch("pool", f"l2pool_fwd_{_suffix(x.dtype)}", _grid(nc * ho * wo), (_BLOCK, 1, 1),
                (x, y, nc, h, w, ho, wo, F, S, pad, int(_FORCE_INDEX64)))


def l2pool_backward_gpu(dy: Any, x: Any, y: Any, F: int, S: int, pad: int, dx: Any) -> None:
    nc, h, w, ho, wo = _dims(dx.shape, dy.shape)
    cuda.launch("pool", f"l2pool_bwd_{_suffix(dy.dtype)}", _grid(nc * h * w), (_BLOCK, 1, 1),
                (dy, x, y, dx, nc, h, w, ho, wo, F, S, pad, int(_FORCE_INDEX64)))


# ------------------------------------------------------------------------------------------
# public ops
# ------------------------------------------------------------------------------------------

def maxpool_forward(x: Any, F: int, S: int, pad: int = 0, out: Any = None,
                    switches_out: Any = None, rounding: str = "exact") -> tuple[Any, Any]:
    """Max pooling: (y, switches), switches uint8 = argmax position fh*F+fw inside each window.
    ``rounding``: the output size's ('exact', 'floor' or 'ceil')."""
    op = "maxpool_forward"
    _check_float(op, "x", x)
    y_shape, F, S, pad = _geometry(op, x.shape, F, S, pad, rounding)
    _check_max_window(op, F)
    y = check_out(op, out, y_shape, x, dtype=x.dtype)
    if switches_out is None:
        sw = device.array_module(x).empty(y_shape, dtype=np.uint8)
    else:
        check_array(op, "switches_out", switches_out, shape=y_shape, dtype=np.uint8, like=x)
        sw = switches_out
    if device.is_gpu_array(x):
        maxpool_forward_gpu(x, F, S, pad, y, sw)
    else:
        _over_batch(maxpool_forward_cpu, x, F, S, pad, y, sw)
    return y, sw


def maxpool_backward(dy: Any, switches: Any, x_shape: Sequence[int], F: int, S: int, pad: int = 0,
                     out: Any = None, rounding: str = "exact") -> Any:
    """dx (shaped x_shape): each dy[o] added to the input its switch names."""
    op = "maxpool_backward"
    y_shape, F, S, pad = _geometry(op, x_shape, F, S, pad, rounding)
    _check_max_window(op, F)
    x_shape = tuple(int(d) for d in x_shape)
    _check_float(op, "dy", dy, shape=y_shape)
    check_array(op, "switches", switches, shape=y_shape, dtype=np.uint8, like=dy)
    dx = check_out(op, out, x_shape, dy, dtype=dy.dtype)
    if device.is_gpu_array(dy):
        maxpool_backward_gpu(dy, switches, F, S, pad, dx)
    else:
        _over_batch(maxpool_backward_cpu, dy, switches, F, S, pad, dx)
    return dx


def avgpool_forward(x: Any, F: int, S: int, pad: int = 0, out: Any = None, rounding: str = "exact") -> Any:
    """Average pooling; the divisor is F*F everywhere (padding counts as zeros)."""
    op = "avgpool_forward"
    _check_float(op, "x", x)
    y_shape, F, S, pad = _geometry(op, x.shape, F, S, pad, rounding)
    y = check_out(op, out, y_shape, x, dtype=x.dtype)
    if device.is_gpu_array(x):
        avgpool_forward_gpu(x, F, S, pad, y)
    else:
        _over_batch(avgpool_forward_cpu, x, F, S, pad, y)
    return y


def avgpool_backward(dy: Any, x_shape: Sequence[int], F: int, S: int, pad: int = 0, out: Any = None,
                     rounding: str = "exact") -> Any:
    """dx: every input gets dy/(F*F) from each window that covers it."""
    op = "avgpool_backward"
    y_shape, F, S, pad = _geometry(op, x_shape, F, S, pad, rounding)
    x_shape = tuple(int(d) for d in x_shape)
    _check_float(op, "dy", dy, shape=y_shape)
    dx = check_out(op, out, x_shape, dy, dtype=dy.dtype)
    if device.is_gpu_array(dy):
        avgpool_backward_gpu(dy, F, S, pad, dx)
    else:
        _over_batch(avgpool_backward_cpu, dy, F, S, pad, dx)
    return dx


def l2pool_forward(x: Any, F: int, S: int, pad: int = 0, out: Any = None, rounding: str = "exact") -> Any:
    """L2-norm pooling: y = sqrt(sum of squares in the window), padding counts as zeros."""
    op = "l2pool_forward"
    _check_float(op, "x", x)
    y_shape, F, S, pad = _geometry(op, x.shape, F, S, pad, rounding)
    y = check_out(op, out, y_shape, x, dtype=x.dtype)
    if device.is_gpu_array(x):
        l2pool_forward_gpu(x, F, S, pad, y)
    else:
        _over_batch(l2pool_forward_cpu, x, F, S, pad, y)
    return y


def l2pool_backward(dy: Any, x: Any, y: Any, F: int, S: int, pad: int = 0, out: Any = None,
                    rounding: str = "exact") -> Any:
    """dx = x * sum over covering windows of dy/y (0 for windows with y == 0)."""
    op = "l2pool_backward"
    _check_float(op, "x", x)
    y_shape, F, S, pad = _geometry(op, x.shape, F, S, pad, rounding)
    _check_float(op, "y", y, shape=y_shape, dtype=x.dtype, like=x)
    _check_float(op, "dy", dy, shape=y_shape, dtype=x.dtype, like=x)
    dx = check_out(op, out, x.shape, x, dtype=x.dtype)
    if device.is_gpu_array(x):
        l2pool_backward_gpu(dy, x, y, F, S, pad, dx)
    else:
        _over_batch(l2pool_backward_cpu, dy, x, y, F, S, pad, dx)
    return dx
