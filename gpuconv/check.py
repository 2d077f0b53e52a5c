"""``gpuconv check``: trust the kernels on your own GPU, layer by layer.

For every layer of a model: the relative error of the GPU forward and backward
against the NumPy reference (fp32), and a float64 finite-difference gradient
check at sampled coordinates (on the GPU when there is one, else on the CPU).
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import device as devmod
from .layers import BatchNorm, Dropout, Layer
from .zoo import get_model


def rel_error(a: Any, b: Any) -> float:
    a = devmod.to_host(a).astype(np.float64)
    b = devmod.to_host(b).astype(np.float64)
    scale = max(float(np.abs(a).max(initial=0)), float(np.abs(b).max(initial=0)), 1e-30)
    return float(np.abs(a - b).max(initial=0) / scale)


@dataclass
class LayerCheck:
    name: str
    kind: str
    fwd_err: float | None
    bwd_err: float | None
    grad_err: float


def _instance(layer: Layer, dev: devmod.Device, dtype: Any, params: dict[str, np.ndarray]) -> Layer:
    """A standalone copy of a built layer with its own params on ``dev``."""
    new = copy.copy(layer)
    new._cache = {}
    new.input_grad = True  # check every layer's dx, the first layer's too
    new.dtype = np.dtype(dtype)
    new.params = {k: dev.xp.asarray(v, dtype=dtype) for k, v in params.items()}
    new.grads = {k: dev.xp.zeros(v.shape, dtype=dtype) for k, v in params.items()}
    if isinstance(layer, BatchNorm):
        new.running_mean = dev.xp.zeros(layer.channels, dtype=dtype)
        new.running_var = dev.xp.ones(layer.channels, dtype=dtype)
    if isinstance(layer, Dropout):
        new.seed, new.step = 1234, 0
    return new


def _run(layer: Layer, x: Any, dy: Any) -> tuple[Any, Any, dict[str, Any]]:
    y = layer.forward(x, train=True)
    y = y.copy()
    dx = layer.backward(dy.copy())
    return y, dx, {k: g.copy() for k, g in layer.grads.items()}


def gradient_check(layer: Layer, params: dict[str, np.ndarray], x: np.ndarray, dev: devmod.Device,
                   rng: np.random.Generator, samples: int = 6, eps: float = 1e-6) -> float:
    """Max relative error of analytic vs central-difference gradients at sampled coordinates (float64)."""
    x64 = x.astype(np.float64)
    inst = _instance(layer, dev, np.float64, params)
    xd = dev.xp.asarray(x64)
    y = inst.forward(xd, train=True)
    dy = dev.xp.asarray(rng.standard_normal(y.shape))
    dx = devmod.to_host(inst.backward(dy.copy()))
    grads = {k: devmod.to_host(g) for k, g in inst.grads.items()}
    dy_h = devmod.to_host(dy)

    def objective(xh: np.ndarray, ph: dict[str, np.ndarray]) -> float:
        probe = _instance(layer, dev, np.float64, ph)
        out = probe.forward(dev.xp.asarray(xh), train=True)
        return float(np.sum(devmod.to_host(out) * dy_h))

    worst = 0.0
    targets: list[tuple[str, np.ndarray, np.ndarray]] = [("x", x64, dx)]
    targets += [(k, params[k].astype(np.float64), grads[k]) for k in params]
    for name, arr, analytic in targets:
        for _ in range(samples):
            idx = tuple(int(rng.integers(0, s)) for s in arr.shape)
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            if name == "x":
                fp, fm = objective(plus, params), objective(minus, params)
            else:
                fp = objective(x64, {**params, name: plus})
                fm = objective(x64, {**params, name: minus})
            num = (fp - fm) / (2 * eps)
            ana = float(analytic[idx])
            denom = max(abs(num), abs(ana), 1e-6)
            worst = max(worst, abs(num - ana) / denom)
    return worst


def check_model(model: str, batch: int = 2, seed: int = 0, device: str | None = None) -> list[LayerCheck]:
    """Per layer: GPU vs NumPy (when ``device`` resolves to the GPU) and the float64 gradient check.

    ``device``: 'auto', 'cpu', 'cuda' or None ($GPUCONV_DEVICE, else auto); on the CPU only the
    gradient checks run.
    """
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    dev = devmod.get_device(device)   # first: `--device cuda` without a GPU fails before any work
    net = get_model(model)
    rng = np.random.default_rng(seed)
    gpu = dev if dev.is_gpu else None
    results = []
    for layer in net.layers:
        params = {k: v.astype(np.float32) for k, v in layer.init_params(rng).items()}
        x = rng.standard_normal((batch, *layer.in_shape)).astype(np.float32)  # type: ignore[misc]
        fwd_err = bwd_err = None
        if gpu is not None:
            cpu_l = _instance(layer, devmod.CPU, np.float32, params)
            gpu_l = _instance(layer, gpu, np.float32, params)
            dy = rng.standard_normal((batch, *layer.out_shape)).astype(np.float32)  # type: ignore[misc]
            yc, dxc, gc = _run(cpu_l, x, dy)
            yg, dxg, gg = _run(gpu_l, gpu.xp.asarray(x), gpu.xp.asarray(dy))
            fwd_err = rel_error(yc, yg)
            bwd_err = max([rel_error(dxc, dxg)] + [rel_error(gc[k], gg[k]) for k in gc])
        grad_err = gradient_check(layer, params, x, gpu or devmod.CPU, rng)
        results.append(LayerCheck(layer.name, layer.describe(), fwd_err, bwd_err, grad_err))
    return results


def check_command(args: argparse.Namespace) -> int:
    device = getattr(args, "device", None)
    results = check_model(args.model, args.batch, args.seed, device)
    where = "GPU" if devmod.get_device(device).is_gpu else "CPU (no GPU: forward/backward comparison skipped)"
    print(f"gpuconv check {args.model}: batch {args.batch}, float64 gradient check on {where}")
    print(f"{'layer':<14} {'kind':<22} {'fwd rel err':>12} {'bwd rel err':>12} {'grad check':>12}")
    bad = 0
    for r in results:
        f = "—" if r.fwd_err is None else f"{r.fwd_err:.2e}"
        b = "—" if r.bwd_err is None else f"{r.bwd_err:.2e}"
        ok = (r.fwd_err is None or r.fwd_err < 1e-4) and (r.bwd_err is None or r.bwd_err < 1e-4) \
            and r.grad_err < 1e-4
        bad += not ok
        print(f"{r.name:<14} {r.kind:<22} {f:>12} {b:>12} {r.grad_err:>12.2e}{'' if ok else '  FAIL'}")
    print("all layers agree" if not bad else f"{bad} layer(s) out of tolerance")
    return 1 if bad else 0
