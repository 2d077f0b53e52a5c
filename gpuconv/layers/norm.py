"""DROPOUT, BATCHNORM and LRN (local response normalization, as AlexNet uses it)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ops import batchnorm as bn_ops
from ..ops import dropout as dropout_ops
from ..ops import lrn as lrn_ops
from .base import NO_BUFFERS, Buffers, Layer, Shape, TensorSpec


class Dropout(Layer):
    """Inverted dropout: drop with probability p at train time, identity at test time.

    The mask is a hash of (seed, step, element), identical on CPU and GPU, so a
    resumed run draws the same masks.  The Net sets ``seed`` and ``step``.
    """

    kind = "DROPOUT"

    def __init__(self, p: float = 0.5, *, name: str | None = None) -> None:
        super().__init__(name)
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"{self.name}: dropout probability p={p} must be in [0, 1)")
        self.p = float(p)
        self.seed = 0
        self.step = 0

    def describe(self) -> str:
        return f"DROPOUT{self.p:g}"

    def saved_specs(self, batch: int) -> list[TensorSpec]:
        return [TensorSpec(f"{self.name}.mask", (batch, *self.out_shape), np.dtype(np.uint8), "saved")]  # type: ignore[misc]

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        if not train or self.p == 0.0:
            return x
        y, mask = dropout_ops.dropout_forward(x, self.p, self.seed, self.step, out=buf.out,
                                              mask_out=buf.saved.get("mask"), keys=buf.step.get("keys"))
        self._cache["mask"] = mask
        return y

    @property
    def inplace(self) -> bool:  # type: ignore[override]
        return self.p == 0.0

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        if self.p == 0.0:
            return dy
        return dropout_ops.dropout_backward(dy, self._cache["mask"], self.p, out=buf.dx)


class BatchNorm(Layer):
    """Per-channel (volumes) or per-feature (vectors) normalization with learned gamma, beta."""

    kind = "BATCHNORM"
    keeps_input = True

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, *, name: str | None = None) -> None:
        super().__init__(name)
        self.momentum, self.eps = float(momentum), float(eps)
        self.running_mean: Any = None  # state, not trained: bound by the Net
        self.running_var: Any = None

    @property
    def channels(self) -> int:
        return int(self.in_shape[0])  # type: ignore[index]

    def param_shapes(self) -> dict[str, Shape]:
        return {"gamma": (self.channels,), "beta": (self.channels,)}

    def state_shapes(self) -> dict[str, Shape]:
        return {"running_mean": (self.channels,), "running_var": (self.channels,)}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"gamma": np.ones(self.channels), "beta": np.zeros(self.channels)}

    def init_state(self) -> dict[str, np.ndarray]:
        return {"running_mean": np.zeros(self.channels), "running_var": np.ones(self.channels)}

    def saved_specs(self, batch: int) -> list[TensorSpec]:
        return [TensorSpec(f"{self.name}.mean", (self.channels,), self.dtype, "saved"),
                TensorSpec(f"{self.name}.invstd", (self.channels,), self.dtype, "saved")]

    def workspace_specs(self, batch: int, train: bool = True) -> list[TensorSpec]:
        """The GPU kernels' per-block partial sums (train mode; inference uses running stats)."""
        if not train:
            return []
        hw = int(math.prod(self.in_shape[1:]))  # type: ignore[index]
        return [TensorSpec(f"{self.name}.partial", (bn_ops.workspace_elems(batch, self.channels, hw),),
                           self.dtype, "workspace")]

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        y, mean, invstd = bn_ops.batchnorm_forward(
            x, self.params["gamma"], self.params["beta"], self.running_mean, self.running_var,
            train=train, momentum=self.momentum, eps=self.eps, out=buf.out,
            save_mean=buf.saved.get("mean"), save_invstd=buf.saved.get("invstd"),
            workspace=buf.workspace.get("partial"))
        if train:
            self._cache.update(x=x, mean=mean, invstd=invstd)
        return y

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        c = self._cache
        dx, _, _ = bn_ops.batchnorm_backward(dy, c["x"], self.params["gamma"], c["mean"], c["invstd"],
                                             out=buf.dx, dgamma_out=self.grads["gamma"],
                                             dbeta_out=self.grads["beta"], workspace=buf.workspace.get("partial"))
        return dx


class LRN(Layer):
    """Cross-channel local response normalization: n, alpha, beta, k as in AlexNet."""

    kind = "LRN"
    keeps_input = True
    keeps_output = True

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, *,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def describe(self) -> str:
        return f"LRN{self.size}"

    def saved_specs(self, batch: int) -> list[TensorSpec]:
        return [TensorSpec(f"{self.name}.scale", (batch, *self.out_shape), self.dtype, "saved")]  # type: ignore[misc]

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        y, scale = lrn_ops.lrn_forward(x, self.size, self.alpha, self.beta, self.k, out=buf.out,
                                       scale_out=buf.saved.get("scale"))
        if train:
            self._cache.update(x=x, y=y, scale=scale)
        return y

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        c = self._cache
        return lrn_ops.lrn_backward(dy, c["x"], c["y"], c["scale"], self.size, self.alpha, self.beta,
                                    self.k, out=buf.dx)
