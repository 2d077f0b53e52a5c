"""Optimizers over the Net's flat parameter buffer, and learning-rate schedules.

Parameters live in one flat buffer with weights first, so a step is two fused
kernel launches at most: one over the weights (with weight decay) and one over
biases/BN parameters (without).  Hyperparameters and the step count stay on the
host: a step never synchronizes with the device.  Bound with a ``hyper`` array
(the memory plan's ``step.hyper``), the kernels read the learning rate and Adam's
bias corrections from it, and ``step()`` writes them there first (stream-ordered):
the update launches are then the same every step, so a CUDA graph can replay them.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from . import device as devmod
from .ops import cpu_threads
from .ops import optim as optim_ops

# Per-parameter state tensors each optimizer keeps (the notes' "step cache").
STATE_SLOTS = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1, "adam": 2}
DEFAULT_LR = {"sgd": 0.05, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.01, "rmsprop": 1e-3, "adam": 1e-3}

class Schedule:
    """Learning rate as a function of (step, steps_per_epoch)."""

    def __init__(self, kind: str = "constant", *, step_epochs: int = 10, gamma: float = 0.1,
                 total_epochs: int = 1, min_lr: float = 0.0) -> None:
        if kind not in ("constant", "step", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}: choose constant, step or cosine")
        if step_epochs < 1 or total_epochs < 1:
            raise ValueError("schedule epochs must be >= 1")
        self.kind, self.step_epochs, self.gamma = kind, step_epochs, gamma
        self.total_epochs, self.min_lr = total_epochs, min_lr

    def __call__(self, base_lr: float, step: int, steps_per_epoch: int) -> float:
        epoch = step / max(steps_per_epoch, 1)
        if self.kind == "step":
            return base_lr * self.gamma ** int(epoch // self.step_epochs)
        if self.kind == "cosine":
            frac = min(epoch / self.total_epochs, 1.0)
            return self.min_lr + 0.5 * (base_lr - self.min_lr) * (1 + math.cos(math.pi * frac))
        return base_lr

class Optimizer:
    """One of sgd, momentum, nesterov, adagrad, rmsprop, adam, with L2 weight decay."""

    def __init__(self, kind: str = "sgd", lr: float | None = None, *, weight_decay: float = 0.0,
                 momentum: float = 0.9, decay: float = 0.99, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, schedule: Schedule | None = None) -> None:
        if kind not in STATE_SLOTS:
            raise ValueError(f"unknown optimizer {kind!r}: choose one of {', '.join(STATE_SLOTS)}")
        lr = DEFAULT_LR[kind] if lr is None else float(lr)
        if not lr > 0 or not math.isfinite(lr):
            raise ValueError(f"learning rate must be a positive number, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        self.kind, self.base_lr, self.weight_decay = kind, lr, float(weight_decay)
        self.momentum, self.decay, self.beta1, self.beta2, self.eps = momentum, decay, beta1, beta2, eps
        self.schedule = schedule or Schedule()
        self.t = 0                      # completed steps (Adam's bias correction uses t+1)
        self.steps_per_epoch = 1
        self.state: list[Any] = []
        self.hyper: Any = None          # device [lr, bc1, bc2] the kernels read (None: scalar arguments)
        self._net: Any = None

    @property
    def slots(self) -> int:
        return STATE_SLOTS[self.kind]

    def bind(self, net: Any, state_buffers: list[Any] | None = None, hyper: Any = None) -> "Optimizer":
        """Attach to a bound net; state is zeroed flat arrays (or views the planner hands over).

        ``hyper``: a 3-element array on the net's device (the plan's ``step.hyper``) for the
        per-step scalars; see the module docstring."""
        xp = devmod.array_module(net.param_buffer)
        if state_buffers is None:
            state_buffers = [xp.zeros(net.num_params, dtype=net.dtype) for _ in range(self.slots)]
        if len(state_buffers) != self.slots:
            raise ValueError(f"{self.kind} keeps {self.slots} state tensors, got {len(state_buffers)}")
        for s in state_buffers:
            s[...] = 0
        if hyper is not None and (tuple(hyper.shape) != (optim_ops.HYPER,) or hyper.dtype != net.dtype):
            raise ValueError(f"hyper must be {net.dtype} of shape ({optim_ops.HYPER},), got {hyper.dtype} "
                             f"{tuple(hyper.shape)}")
        self.state, self._net, self.hyper = list(state_buffers), net, hyper
        return self

    def lr(self) -> float:
        return self.schedule(self.base_lr, self.t, self.steps_per_epoch)

    def hyper_values(self) -> tuple[float, float, float]:
        """[lr, bc1, bc2] of the step about to run (step t + 1), as ``hyper`` holds them."""
        return optim_ops.hyper_values(self.lr(), self.t + 1 if self.kind == "adam" else None,
                                      self.beta1, self.beta2)

    def step(self) -> None:
        """Apply one update from the net's gradient buffer (two launches: decayed, not decayed)."""
        if self._net is None:
            raise RuntimeError("optimizer.bind(net) first")
        if self.hyper is not None:
            devmod.copy_into(self.hyper, np.asarray(self.hyper_values(), dtype=self.hyper.dtype))
        self.launch_update()
        self.t += 1

    def launch_update(self) -> None:
        """The update launches alone: no host->device write, no step count (a captured step
        calls this; with ``hyper`` bound they read this step's scalars when they run)."""
        net = self._net
        if net is None:
            raise RuntimeError("optimizer.bind(net) first")
        lr = self.lr()
        nd = net.num_decayed
        on_cpu = net.device is not None and not net.device.is_gpu
        with cpu_threads.engine() if on_cpu else contextlib.nullcontext():
            for lo, hi, wd in ((0, nd, self.weight_decay), (nd, net.num_params, 0.0)):
                if hi > lo:
                    self._update(net.param_buffer[lo:hi], net.grad_buffer[lo:hi],
                                 [s[lo:hi] for s in self.state], lr, wd)

    def _update(self, p: Any, g: Any, st: list[Any], lr: float, wd: float) -> None:
        k, hyper = self.kind, self.hyper
        if k == "sgd":
            optim_ops.sgd_update(p, g, lr=lr, weight_decay=wd, hyper=hyper)
        elif k in ("momentum", "nesterov"):
            optim_ops.momentum_update(p, g, st[0], lr=lr, mu=self.momentum, weight_decay=wd,
                                      nesterov=(k == "nesterov"), hyper=hyper)
        elif k == "adagrad":
            optim_ops.adagrad_update(p, g, st[0], lr=lr, eps=self.eps, weight_decay=wd, hyper=hyper)
        elif k == "rmsprop":
            optim_ops.rmsprop_update(p, g, st[0], lr=lr, decay=self.decay, eps=self.eps, weight_decay=wd,
                                     hyper=hyper)
        else:
            optim_ops.adam_update(p, g, st[0], st[1], lr=lr, beta1=self.beta1, beta2=self.beta2,
                                  eps=self.eps, t=self.t + 1, weight_decay=wd, hyper=hyper)

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {f"opt.state{i}": devmod.to_host(s) for i, s in enumerate(self.state)}
        out["opt.t"] = np.array(self.t, dtype=np.int64)
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for i, s in enumerate(self.state):
            key = f"opt.state{i}"
            if key not in arrays:
                raise ValueError(f"checkpoint has no {key}: was it written by another optimizer than {self.kind}?")
            devmod.copy_into(s, arrays[key])
        self.t = int(arrays["opt.t"])

