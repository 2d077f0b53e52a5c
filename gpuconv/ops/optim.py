"""Fused, in-place optimizer updates (the cs231n notes' formulas).

Each function updates one flat 1-D parameter buffer ``p`` (a layer's or the whole
net's parameters stored contiguously) from its gradient ``g`` and state buffers of
the same length, in place, in ONE kernel launch on the GPU.  Hyperparameters and the
Adam step ``t`` are host Python scalars, so nothing synchronizes.  Weight decay is L2:
the gradient used is ``g + weight_decay * p`` (``g`` itself is left unchanged).
All functions return None.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import cuda, device
from . import cpu_threads
from ._checks import OpArgumentError, check_array

_BLOCK = 256
_MAX_GRID = 65536


def _check(op: str, p: Any, **state: Any) -> None:
    """p, g and every state buffer: 1-D, same length and float dtype, contiguous, one device."""
    if not hasattr(p, "dtype"):
        raise OpArgumentError(f"{op}: p must be an array, got {type(p).__name__}")
    if p.dtype not in (np.float32, np.float64):
        raise OpArgumentError(f"{op}: p must be float32 or float64, got {p.dtype}")
    check_array(op, "p", p, ndim=1, dtype=p.dtype)
    for name, a in state.items():
        check_array(op, name, a, shape=p.shape, dtype=p.dtype, like=p)


def _scalar(p: Any, v: float) -> Any:
    # Kernel scalars must match the kernel's element type exactly (4 vs 8 bytes).
    return np.float64(v) if p.dtype == np.float64 else np.float32(v)


def _launch(kernel: str, p: Any, arrays: tuple[Any, ...], scalars: tuple[float, ...], ints: tuple[int, ...] = ()) -> None:
    n = p.shape[0]
    sfx = "f64" if p.dtype == np.float64 else "f32"
    grid = (min(cuda.cdiv(n, _BLOCK), _MAX_GRID), 1, 1)
    cuda.launch("optim", f"{kernel}_{sfx}", grid, (_BLOCK, 1, 1),
                (p, *arrays, np.int64(n), *(_scalar(p, s) for s in scalars), *(np.int32(i) for i in ints)))


# ---------------------------------------------------------------- NumPy reference
def _decayed(p: np.ndarray, g: np.ndarray, weight_decay: float) -> np.ndarray:
    return g + p.dtype.type(weight_decay) * p if weight_decay else g


def sgd_update_cpu(p: np.ndarray, g: np.ndarray, lr: float, weight_decay: float) -> None:
    dx = _decayed(p, g, weight_decay)
    p -= p.dtype.type(lr) * dx


def momentum_update_cpu(p: np.ndarray, g: np.ndarray, v: np.ndarray, lr: float, mu: float, weight_decay: float,
                        nesterov: bool) -> None:
    t = p.dtype.type
    dx = _decayed(p, g, weight_decay)
    v_prev = v.copy() if nesterov else None
    v *= t(mu)
    v -= t(lr) * dx
    if nesterov:
        p += -t(mu) * v_prev + (t(1) + t(mu)) * v
    else:
        p += v


def adagrad_update_cpu(p: np.ndarray, g: np.ndarray, cache: np.ndarray, lr: float, eps: float,
                       weight_decay: float) -> None:
    t = p.dtype.type
    dx = _decayed(p, g, weight_decay)
    cache += dx * dx
    p -= t(lr) * dx / (np.sqrt(cache) + t(eps))


def rmsprop_update_cpu(p: np.ndarray, g: np.ndarray, cache: np.ndarray, lr: float, decay: float, eps: float,
                       weight_decay: float) -> None:
    t = p.dtype.type
    dx = _decayed(p, g, weight_decay)
    cache *= t(decay)
    cache += (t(1) - t(decay)) * dx * dx
    p -= t(lr) * dx / (np.sqrt(cache) + t(eps))


def adam_update_cpu(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, lr: float, beta1: float,
                    beta2: float, eps: float, t_step: int, weight_decay: float) -> None:
    t = p.dtype.type
    dx = _decayed(p, g, weight_decay)
    bc1, bc2 = 1.0 - beta1**t_step, 1.0 - beta2**t_step  # double precision, like the GPU launcher
    m *= t(beta1)
    m += (t(1) - t(beta1)) * dx
    v *= t(beta2)
    v += (t(1) - t(beta2)) * dx * dx
    p -= t(lr) * (m / t(bc1)) / (np.sqrt(v / t(bc2)) + t(eps))


def _in_chunks(update: Any, arrays: tuple[np.ndarray, ...], *scalars: Any) -> None:
    """Run an elementwise update over slices of the flattened arrays (in parallel inside
    ``cpu_threads.engine()``; every element's update is independent of the others)."""
    flat = [a.reshape(-1) for a in arrays]   # views: the arrays were checked contiguous
    n = flat[0].size
    cpu_threads.over_batch(lambda lo, hi: update(*(a[lo:hi] for a in flat), *scalars), n, n * len(flat))


# ---------------------------------------------------------------- public API
def sgd_update(p: Any, g: Any, *, lr: float, weight_decay: float = 0.0) -> None:
    """p -= lr * (g + wd p)."""
    _check("sgd_update", p, g=g)
    if device.is_gpu_array(p):
        _launch("sgd", p, (g,), (lr, weight_decay))
    else:
        _in_chunks(sgd_update_cpu, (p, g), lr, weight_decay)


def momentum_update(p: Any, g: Any, v: Any, *, lr: float, mu: float = 0.9, weight_decay: float = 0.0,
                    nesterov: bool = False) -> None:
    """v = mu v - lr dx; p += v (Nesterov: p += -mu v_prev + (1 + mu) v)."""
    _check("momentum_update", p, g=g, v=v)
    if device.is_gpu_array(p):
        _launch("momentum", p, (g, v), (lr, mu, weight_decay), (int(bool(nesterov)),))
    else:
        _in_chunks(momentum_update_cpu, (p, g, v), lr, mu, weight_decay, nesterov)


def adagrad_update(p: Any, g: Any, cache: Any, *, lr: float, eps: float = 1e-8, weight_decay: float = 0.0) -> None:
    """cache += dx^2; p -= lr dx / (sqrt(cache) + eps)."""
    _check("adagrad_update", p, g=g, cache=cache)
    if device.is_gpu_array(p):
        _launch("adagrad", p, (g, cache), (lr, eps, weight_decay))
    else:
        _in_chunks(adagrad_update_cpu, (p, g, cache), lr, eps, weight_decay)


def rmsprop_update(p: Any, g: Any, cache: Any, *, lr: float, decay: float = 0.99, eps: float = 1e-8,
                   weight_decay: float = 0.0) -> None:
    """cache = decay cache + (1 - decay) dx^2; p -= lr dx / (sqrt(cache) + eps)."""
    _check("rmsprop_update", p, g=g, cache=cache)
    if device.is_gpu_array(p):
        _launch("rmsprop", p, (g, cache), (lr, decay, eps, weight_decay))
    else:
        _in_chunks(rmsprop_update_cpu, (p, g, cache), lr, decay, eps, weight_decay)


def adam_update(p: Any, g: Any, m: Any, v: Any, *, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                eps: float = 1e-8, t: int, weight_decay: float = 0.0) -> None:
    """Bias-corrected Adam step number t (t >= 1)."""
    op = "adam_update"
    _check(op, p, g=g, m=m, v=v)
    if isinstance(t, bool) or int(t) != t or t < 1:
        raise OpArgumentError(f"{op}: t must be an integer step >= 1 (bias correction), got {t!r}")
    t = int(t)
    if device.is_gpu_array(p):
        bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t
        _launch("adam", p, (g, m, v), (lr, beta1, beta2, eps, bc1, bc2, weight_decay))
    else:
        _in_chunks(adam_update_cpu, (p, g, m, v), lr, beta1, beta2, eps, t, weight_decay)
