"""Fused, in-place optimizer updates (the cs231n notes' formulas).

Each function updates one flat 1-D parameter buffer ``p`` (a layer's or the whole
net's parameters stored contiguously) from its gradient ``g`` and state buffers of
the same length, in place, in ONE kernel launch on the GPU.  Hyperparameters and the
Adam step ``t`` are host Python scalars, so nothing synchronizes.  With ``hyper`` (a
3-element array on p's device, see :func:`hyper_values`) the learning rate and Adam's
bias corrections are read from it when the kernel runs instead: a captured CUDA graph
replays the update with whatever the host wrote there for that step.  Weight decay is L2:
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


HYPER = 3  # hyper = [lr, bc1, bc2]


def hyper_values(lr: float, t: int | None = None, beta1: float = 0.9, beta2: float = 0.999) -> tuple[float, float, float]:
    """The host values of ``hyper`` for one step: [lr, 1 - beta1^t, 1 - beta2^t] (Adam step t,
    in double precision like the scalar path), or [lr, 1, 1] when ``t`` is None."""
    if t is None:
        return (float(lr), 1.0, 1.0)
    return (float(lr), 1.0 - beta1**t, 1.0 - beta2**t)


def _check_hyper(op: str, p: Any, hyper: Any) -> None:
    if hyper is not None:
        check_array(op, "hyper", hyper, shape=(HYPER,), dtype=p.dtype, like=p)


def _launch(kernel: str, p: Any, arrays: tuple[Any, ...], scalars: tuple[float, ...], ints: tuple[int, ...] = (),
            hyper: Any = None) -> None:
    """One update launch; with ``hyper`` the *_dev entry, which reads lr (and bc1, bc2) from it
    (``scalars`` then omit those)."""
    n = p.shape[0]
    sfx = "f64" if p.dtype == np.float64 else "f32"
    grid = (min(cuda.cdiv(n, _BLOCK), _MAX_GRID), 1, 1)
    name, head = (f"{kernel}_{sfx}", ()) if hyper is None else (f"{kernel}_dev_{sfx}", (hyper,))
    cuda.launch("optim", name, grid, (_BLOCK, 1, 1),
                (p, *arrays, np.int64(n), *head, *(_scalar(p, s) for s in scalars), *(np.int32(i) for i in ints)))


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
    _, bc1, bc2 = hyper_values(lr, t_step, beta1, beta2)  # double precision, like the GPU launcher
    _adam_bc_cpu(p, g, m, v, lr, beta1, beta2, eps, bc1, bc2, weight_decay)


def _adam_bc_cpu(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, lr: float, beta1: float,
                 beta2: float, eps: float, bc1: float, bc2: float, weight_decay: float) -> None:
    t = p.dtype.type
    dx = _decayed(p, g, weight_decay)
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
def _host_lr(lr: float, hyper: Any) -> float:
    """The CPU path's learning rate: hyper[0] when given (a host array there: no sync)."""
    return float(hyper[0]) if hyper is not None else lr


def sgd_update(p: Any, g: Any, *, lr: float, weight_decay: float = 0.0, hyper: Any = None) -> None:
    """p -= lr * (g + wd p)."""
    _check("sgd_update", p, g=g)
    _check_hyper("sgd_update", p, hyper)
    if device.is_gpu_array(p):
        _launch("sgd", p, (g,), (weight_decay,) if hyper is not None else (lr, weight_decay), hyper=hyper)
    else:
        _in_chunks(sgd_update_cpu, (p, g), _host_lr(lr, hyper), weight_decay)


def momentum_update(p: Any, g: Any, v: Any, *, lr: float, mu: float = 0.9, weight_decay: float = 0.0,
                    nesterov: bool = False, hyper: Any = None) -> None:
    """v = mu v - lr dx; p += v (Nesterov: p += -mu v_prev + (1 + mu) v)."""
    _check("momentum_update", p, g=g, v=v)
    _check_hyper("momentum_update", p, hyper)
    if device.is_gpu_array(p):
        scalars = (mu, weight_decay) if hyper is not None else (lr, mu, weight_decay)
        _launch("momentum", p, (g, v), scalars, (int(bool(nesterov)),), hyper=hyper)
    else:
        _in_chunks(momentum_update_cpu, (p, g, v), _host_lr(lr, hyper), mu, weight_decay, nesterov)


def adagrad_update(p: Any, g: Any, cache: Any, *, lr: float, eps: float = 1e-8, weight_decay: float = 0.0,
                   hyper: Any = None) -> None:
    """cache += dx^2; p -= lr dx / (sqrt(cache) + eps)."""
    _check("adagrad_update", p, g=g, cache=cache)
    _check_hyper("adagrad_update", p, hyper)
    if device.is_gpu_array(p):
        scalars = (eps, weight_decay) if hyper is not None else (lr, eps, weight_decay)
        _launch("adagrad", p, (g, cache), scalars, hyper=hyper)
    else:
        _in_chunks(adagrad_update_cpu, (p, g, cache), _host_lr(lr, hyper), eps, weight_decay)


def rmsprop_update(p: Any, g: Any, cache: Any, *, lr: float, decay: float = 0.99, eps: float = 1e-8,
                   weight_decay: float = 0.0, hyper: Any = None) -> None:
    """cache = decay cache + (1 - decay) dx^2; p -= lr dx / (sqrt(cache) + eps)."""
    _check("rmsprop_update", p, g=g, cache=cache)
    _check_hyper("rmsprop_update", p, hyper)
    if device.is_gpu_array(p):
        scalars = (decay, eps, weight_decay) if hyper is not None else (lr, decay, eps, weight_decay)
        _launch("rmsprop", p, (g, cache), scalars, hyper=hyper)
    else:
        _in_chunks(rmsprop_update_cpu, (p, g, cache), _host_lr(lr, hyper), decay, eps, weight_decay)


def adam_update(p: Any, g: Any, m: Any, v: Any, *, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                eps: float = 1e-8, t: int, weight_decay: float = 0.0, hyper: Any = None) -> None:
    """Bias-corrected Adam step number t (t >= 1; with ``hyper``, lr and t come from it)."""
    op = "adam_update"
    _check(op, p, g=g, m=m, v=v)
    _check_hyper(op, p, hyper)
    if hyper is None and (isinstance(t, bool) or int(t) != t or t < 1):
        raise OpArgumentError(f"{op}: t must be an integer step >= 1 (bias correction), got {t!r}")
    if device.is_gpu_array(p):
        if hyper is not None:
            _launch("adam", p, (g, m, v), (beta1, beta2, eps, weight_decay), hyper=hyper)
        else:
            _, bc1, bc2 = hyper_values(lr, int(t), beta1, beta2)
            _launch("adam", p, (g, m, v), (lr, beta1, beta2, eps, bc1, bc2, weight_decay))
        return
    lr_, bc1, bc2 = (float(hyper[0]), float(hyper[1]), float(hyper[2])) if hyper is not None \
        else hyper_values(lr, int(t), beta1, beta2)
    _in_chunks(_adam_bc_cpu, (p, g, m, v), lr_, beta1, beta2, eps, bc1, bc2, weight_decay)
