"""RELU (and leaky ReLU).  A RELU right after CONV/FC is fused into that layer by the Net."""
from __future__ import annotations

from typing import Any

from ..ops import activation as act_ops
from .base import NO_BUFFERS, Buffers, Layer


class ReLU(Layer):
    """max(0, x), or max(slope*x, x) for leaky ReLU (0 < slope < 1)."""

    kind = "RELU"
    keeps_output = True  # the mask is y > 0, so x need not be kept

    def __init__(self, slope: float = 0.0, *, name: str | None = None) -> None:
        super().__init__(name)
        if not 0.0 <= float(slope) < 1.0:
            raise ValueError(f"{self.name}: leaky slope {slope} must be in [0, 1)")
        self.slope = float(slope)
        self.fused = False  # set by the Net: the previous layer applies it, this one is the identity

    @property
    def inplace(self) -> bool:  # type: ignore[override]
        return self.fused

    @property
    def keeps_output(self) -> bool:  # type: ignore[override]
        return not self.fused

    def describe(self) -> str:
        return ("LEAKYRELU" if self.slope else "RELU") + (" (fused)" if self.fused else "")

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        if self.fused:
            return x
        y = act_ops.relu_forward(x, self.slope, out=buf.out)
        if train:
            self._cache["y"] = y
        return y

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        if self.fused:
            return dy
        return act_ops.relu_backward(dy, self._cache["y"], self.slope, out=buf.dx)


