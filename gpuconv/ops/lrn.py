"""Cross-channel local response normalization (AlexNet), PyTorch's convention.

    scale[n,c,h,w] = k + alpha/size * sum_{c'=c-size//2}^{c+(size-1)//2} x[n,c',h,w]^2
    y = x * scale^-beta

The window is clipped at the channel edges but the sum is always divided by ``size``
(PyTorch pads with zeros and averages).  AlexNet: size=5, alpha=1e-4, beta=0.75, k=2.
``scale`` is returned so the backward does not recompute it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import cuda, device
from ._checks import OpArgumentError, check_array, check_out
from ._checks import float_dtype as _float_dtype

_THREADS = 256




def _f64_bits(v: float) -> np.int64:
    # cuda.launch narrows floats to float32; kernels read doubles from their bit pattern.
    return np.array(float(v), dtype=np.float64).view(np.int64)[()]


def _check_params(op: str, size: int, alpha: float, beta: float, k: float) -> None:
    if int(size) != size or size < 1:
        raise OpArgumentError(f"{op}: size must be an integer >= 1, got {size}")
    if not k > 0 and not (k == 0 and beta == 0):
        # scale must stay positive for scale^-beta to be defined
        raise OpArgumentError(f"{op}: k must be > 0, got {k}")
    if alpha < 0:
        raise OpArgumentError(f"{op}: alpha must be >= 0, got {alpha}")


def _window_sum(a: np.ndarray, before: int, after: int) -> np.ndarray:
    """out[:, c] = sum_{c' = c - before}^{c + after} a[:, c'] (clipped), vectorized over N, H, W."""
    n, c = a.shape[:2]
    padded = np.zeros((n, c + before + after) + a.shape[2:], dtype=a.dtype)
    padded[:, before:before + c] = a
    acc = np.zeros_like(a)
    for o in range(before + after + 1):  # ascending channel order, like the kernel
        acc += padded[:, o:o + c]
    return acc


# ----------------------------------------------------------------------------- NumPy spec

def lrn_forward_cpu(x: np.ndarray, size: int, alpha: float, beta: float, k: float, out: np.ndarray,
                    scale_out: np.ndarray) -> None:
    acc = _window_sum(x * x, size // 2, (size - 1) // 2)
    np.multiply(alpha / size, acc, out=scale_out)
    scale_out += k
    np.multiply(x, scale_out ** (-beta), out=out)


def lrn_backward_cpu(dy: np.ndarray, x: np.ndarray, y: np.ndarray, scale: np.ndarray, size: int, alpha: float,
                     beta: float, k: float, out: np.ndarray) -> None:
    # d y_c' / d x_c = [c == c'] scale^-beta - 2 alpha beta / size * x_c * y_c' / scale_c'
    # for every c' whose window contains c, i.e. c - (size-1)//2 <= c' <= c + size//2.
    t = dy * y / scale
    acc = _window_sum(t, (size - 1) // 2, size // 2)
    np.subtract(dy * scale ** (-beta), (2.0 * alpha * beta / size) * x * acc, out=out)


# ----------------------------------------------------------------------------- CUDA path

def _grid(n: int, hw: int) -> int:
    return min(max(cuda.cdiv(n * hw, _THREADS), 1), 1 << 20)


def lrn_forward_gpu(x: Any, size: int, alpha: float, beta: float, k: float, out: Any, scale_out: Any) -> None:
    n, c, h, w = (int(s) for s in x.shape)
    suf = "f32" if x.dtype == np.float32 else "f64"
    cuda.launch("lrn", f"lrn_fwd_{suf}", (_grid(n, h * w),), (_THREADS,),
                (x, out, scale_out, n, c, np.int64(h * w), int(size), _f64_bits(alpha / size),
                 _f64_bits(beta), _f64_bits(k)))


def lrn_backward_gpu(dy: Any, x: Any, y: Any, scale: Any, size: int, alpha: float, beta: float, k: float,
                     out: Any) -> None:
    n, c, h, w = (int(s) for s in x.shape)
    suf = "f32" if x.dtype == np.float32 else "f64"
    cuda.launch("lrn", f"lrn_bwd_{suf}", (_grid(n, h * w),), (_THREADS,),
                (dy, x, y, scale, out, n, c, np.int64(h * w), int(size),
                 _f64_bits(2.0 * alpha * beta / size), _f64_bits(beta)))


# ----------------------------------------------------------------------------- public API

def lrn_forward(x: Any, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                out: Any = None, scale_out: Any = None) -> tuple[Any, Any]:
    """LRN of an [N, C, H, W] array; returns ``(y, scale)``."""
    op = "lrn_forward"
    dt = _float_dtype(op, "x", x)
    check_array(op, "x", x, ndim=4, dtype=dt)
    _check_params(op, size, alpha, beta, k)
    out = check_out(op, out, x.shape, x, dt)
    scale_out = _check_buf(op, "scale_out", scale_out, x, dt)
    impl = lrn_forward_gpu if device.is_gpu_array(x) else lrn_forward_cpu
    impl(x, int(size), float(alpha), float(beta), float(k), out, scale_out)
    return out, scale_out


def lrn_backward(dy: Any, x: Any, y: Any, scale: Any, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                 k: float = 2.0, out: Any = None) -> Any:
    """Gradient of LRN with respect to x, given the forward's y and scale."""
    op = "lrn_backward"
    dt = _float_dtype(op, "x", x)
    check_array(op, "x", x, ndim=4, dtype=dt)
    for name, a in (("dy", dy), ("y", y), ("scale", scale)):
        check_array(op, name, a, shape=x.shape, dtype=dt, like=x)
    _check_params(op, size, alpha, beta, k)
    out = check_out(op, out, x.shape, x, dt)
    impl = lrn_backward_gpu if device.is_gpu_array(x) else lrn_backward_cpu
    impl(dy, x, y, scale, int(size), float(alpha), float(beta), float(k), out)
    return out


def _check_buf(op: str, name: str, a: Any, like: Any, dt: np.dtype) -> Any:
    if a is None:
        return device.array_module(like).empty(like.shape, dtype=dt)
    check_array(op, name, a, shape=like.shape, dtype=dt, like=like)
    return a
