"""POOL layers: max (switches kept for backward), average, and L2-norm pooling."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry import GeometryError, check_rounding, window_output_size
from ..ops import pool as pool_ops
from .base import NO_BUFFERS, Buffers, Layer, Shape, TensorSpec, check_positive_int


class _Pool(Layer):
    """Spatial extent F, stride S (the notes' F=2,S=2 and overlapping F=3,S=2), padding P.

    ``rounding``: 'exact' (the notes' rule), 'floor' (PyTorch's output size) or 'ceil' (Caffe's,
    PyTorch's ceil_mode; max pooling only), see ``geometry.window_output_size``."""

    def __init__(self, F: int = 2, S: int | None = None, P: int = 0, *, rounding: str = "exact",
                 name: str | None = None) -> None:
        super().__init__(name)
        S = F if S is None else S
        check_positive_int(self.name, F=F, S=S)
        if not isinstance(P, (int, np.integer)) or P < 0:
            raise GeometryError(f"{self.name}: P={P!r} must be an integer >= 0")
        if P * 2 >= F and P > 0:
            raise GeometryError(f"{self.name}: padding P={P} must be smaller than half the window F={F}")
        self.F, self.S, self.P = int(F), int(S), int(P)
        self.rounding = check_rounding(rounding, self.name)
        if rounding == "ceil" and not isinstance(self, MaxPool):
            raise ValueError(f"{self.name}: rounding='ceil' is for max pooling only (use 'exact' or 'floor')")

    def infer_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3:
            raise GeometryError(f"{self.name}: {self.kind} needs a 3-D input volume (C, H, W), got {in_shape}")
        c, h, w = in_shape
        return (c,
                window_output_size(h, self.F, self.S, self.P, layer=self.name, axis="height", rounding=self.rounding),
                window_output_size(w, self.F, self.S, self.P, layer=self.name, axis="width", rounding=self.rounding))

    @property
    def exact(self) -> bool:
        """True where (W - F + 2P)/S + 1 is an integer (rounding changes nothing)."""
        _, h, w = self.in_shape  # type: ignore[misc]
        _, ho, wo = self.out_shape  # type: ignore[misc]
        return (ho - 1) * self.S + self.F == h + 2 * self.P and (wo - 1) * self.S + self.F == w + 2 * self.P

    def describe(self) -> str:
        return (f"{self.kind}{self.F}" + (f"/{self.S}" if self.S != self.F else "") + (f" p{self.P}" if self.P else "")
                + (" ceil" if self.rounding == "ceil" else ""))


class MaxPool(_Pool):
    kind = "POOL"

    def saved_specs(self, batch: int) -> list[TensorSpec]:
        return [TensorSpec(f"{self.name}.switches", (batch, *self.out_shape), np.dtype(np.uint8), "saved")]  # type: ignore[misc]

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        y, switches = pool_ops.maxpool_forward(x, self.F, self.S, self.P, out=buf.out,
                                               switches_out=buf.saved.get("switches"), rounding=self.rounding)
        if train:
            self._cache["switches"] = switches
            self._cache["x_shape"] = x.shape
        return y

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        return pool_ops.maxpool_backward(dy, self._cache["switches"], self._cache["x_shape"],
                                         self.F, self.S, self.P, out=buf.dx, rounding=self.rounding)


class AvgPool(_Pool):
    kind = "AVGPOOL"

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        if train:
            self._cache["x_shape"] = x.shape
        return pool_ops.avgpool_forward(x, self.F, self.S, self.P, out=buf.out, rounding=self.rounding)

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        return pool_ops.avgpool_backward(dy, self._cache["x_shape"], self.F, self.S, self.P, out=buf.dx,
                                         rounding=self.rounding)


class L2Pool(_Pool):
    kind = "L2POOL"
    keeps_input = True
    keeps_output = True

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        y = pool_ops.l2pool_forward(x, self.F, self.S, self.P, out=buf.out, rounding=self.rounding)
        if train:
            self._cache.update(x=x, y=y)
        return y

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        return pool_ops.l2pool_backward(dy, self._cache["x"], self._cache["y"], self.F, self.S, self.P, out=buf.dx,
                                        rounding=self.rounding)
