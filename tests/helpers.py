"""Test helpers: relative error, float64 finite differences, output poisoning."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from gpuconv import device


def rel_error(a: Any, b: Any) -> float:
    """max |a-b| / max(|a|,|b|, tiny): one number for 'how far apart'."""
    a = device.to_host(a).astype(np.float64)
    b = device.to_host(b).astype(np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-30)
    return float(np.abs(a - b).max(initial=0.0) / scale)


def numeric_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of scalar f() with respect to x (modified in place, restored)."""
    g = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
        it.iternext()
    return g


def poison(xp: Any, shape: tuple[int, ...], dtype: Any = np.float32) -> Any:
    """An output buffer full of NaN, so any element a kernel fails to write shows up."""
    return xp.full(shape, np.nan, dtype=dtype)


def tf32_truncate(x: np.ndarray) -> np.ndarray:
    """Cut float32 values to TF32 (10-bit mantissa): inputs the tensor cores use exactly."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFFE000)
    return bits.view(np.float32)


def _tf32_round(x: np.ndarray, ties_even: bool) -> np.ndarray:
    """Keep 10 mantissa bits, rounding to nearest; Inf/NaN unchanged."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    finite = (u & 0x7F800000) != 0x7F800000
    half = 0x0FFF + ((u >> 13) & 1) if ties_even else 0x1000
    u = np.where(finite, u + half, u) & 0xFFFFE000
    return u.astype(np.uint32).view(np.float32)


def tf32_rna(x: np.ndarray) -> np.ndarray:
    """cvt.rna.tf32.f32 in NumPy: ties away from zero (sm_80)."""
    return _tf32_round(x, ties_even=False)


def tf32_rne(x: np.ndarray) -> np.ndarray:
    """cvt.rn.tf32.f32 in NumPy: ties to even (sm_90 and later)."""
    return _tf32_round(x, ties_even=True)


def device_tf32(cp: Any, x: np.ndarray) -> np.ndarray:
    """x rounded to TF32 as the kernels on ``cp``'s device round it (kernels/ptx.cuh to_tf32):
    ties to even on sm_90 and later, and on the emulator (which stands for sm_90); ties away
    from zero on sm_80."""
    if getattr(cp, "__name__", "") == "cupy" and int(cp.cuda.Device().compute_capability) < 90:
        return tf32_rna(x)
    return tf32_rne(x)


def configure(**overrides: Any) -> Any:
    """Set the kernel configuration for the rest of a test: the current one with ``overrides``
    (the conftest fixture restores the environment's default after the test)."""
    from gpuconv import kernel_config  # noqa: PLC0415

    cfg = kernel_config.current().replace(**overrides)
    kernel_config.reset_default(cfg)
    return cfg


def net_grad_check(net: Any, rng: np.random.Generator, x: np.ndarray, samples: int = 40,
                   tol: float = 1e-5) -> np.ndarray:
    """A whole float64 net's analytic parameter and input gradients of the softmax loss against
    central differences (``samples`` parameters drawn at random, every input coordinate): the one
    gradient checker of chains and graphs alike.  Returns the analytic parameter gradient."""
    y = rng.integers(0, net.output_shape[0], size=x.shape[0]).astype(np.int32)
    # Biases and BN parameters off their initial 0/1: a zero bias over an all-zero (ReLU'd) pixel puts
    # a conv output exactly on the ReLU's kink, where finite differences are meaningless.
    net.param_buffer[net.num_decayed:] += 0.1 * rng.standard_normal(net.num_params - net.num_decayed)

    def loss() -> float:
        s = net.forward(x, train=True)
        v, _ = net.loss_and_grad(s, y)
        for layer in net.layers:
            layer.clear_cache()
        return float(v)

    scores = net.forward(x, train=True)
    _, ds = net.loss_and_grad(scores, y)
    dx = net.backward(ds, input_grad=True)
    analytic = net.grad_buffer.copy()
    p = net.param_buffer
    for i in rng.choice(p.size, size=min(samples, p.size), replace=False):
        old = p[i]
        p[i] = old + 1e-6
        fp = loss()
        p[i] = old - 1e-6
        fm = loss()
        p[i] = old
        num = (fp - fm) / 2e-6
        assert abs(num - analytic[i]) <= tol * max(1.0, abs(num)), (net.slots[:3], i, num, analytic[i])
    assert rel_error(numeric_grad(loss, x), dx) < tol
    return analytic
