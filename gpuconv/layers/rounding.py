"""CONV and max POOL whose output size rounds down (PyTorch) or up (Caffe's pooling).

The notes' rule, which every other layer enforces, is that ``(W - F + 2P)/S + 1`` must
be an integer.  The nets of the ResNet and GoogLeNet papers break it everywhere: a 3x3
stride-2 convolution (or a 1x1 stride-2 projection, or a 7x7/2 stem) over an even width
has no integer answer.  Those nets round.  PyTorch rounds down (``rounding="floor"``: the
windows start at -P, -P+S, ... and the last one that fits within the padded input is the
last output); Caffe's pooling, which GoogLeNet used, rounds up (``"ceil"``: one more window,
reaching past the input).  Either is the same as padding P before and another amount after
(``P - r`` for floor, with ``r = (W - F + 2P) mod S``, a negative pad cropping; ``P + S - r``
for ceil), then sliding with no padding, which is what these layers do: where the division
is not exact they copy the input once into that asymmetrically padded volume (zeros for
CONV, -inf for max POOL), run the ordinary op on it with P=0, and crop the gradient back.
Where it is exact they are the ordinary layers.  Output sizes and values are PyTorch's
(floor, and ceil_mode=True).  The padded volume is the layer's workspace in the memory plan
(it also takes the padded input's gradient in backward).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import device as devmod
from ..geometry import GeometryError, effective_filter
from .base import NO_BUFFERS, Buffers, Shape, TensorSpec
from .conv import Conv
from .pool import MaxPool


ROUNDINGS = ("floor", "ceil")


def _rounded_size(layer: Any, n: int, f: int, s: int, p: int, d: int, axis: str, rounding: str) -> tuple[int, int]:
    """(outputs, pad after) along one axis."""
    fe = effective_filter(f, d)
    num = n - fe + 2 * p
    if num < 0:
        raise GeometryError(f"{layer.name}: filter does not fit the input {axis}: W={n}, F={fe}, P={p}, S={s} "
                            f"gives (W - F + 2P) = {num} < 0")
    r = num % s
    # Ceil adds one window reaching past the input, as PyTorch's ceil_mode does, but only where it
    # starts inside the input or its left padding: a window wholly in the right padding would
    # hold only padding (-inf for max POOL).
    if rounding == "ceil" and r and (num // s + 1) * s < n + p:
        return num // s + 2, p + s - r
    return num // s + 1, p - r


class _Rounding:
    """The padding logic shared by the CONV and POOL variants (a mixin ahead of the layer class)."""

    pad_value = 0.0
    rounding = "floor"
    _pads: tuple[int, int] = (0, 0)  # pad after, height and width (before is P)

    def _set_rounding(self, rounding: str) -> None:
        if rounding not in ROUNDINGS:
            raise ValueError(f"{self.name}: rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")  # type: ignore[attr-defined]
        self.rounding = rounding

    def _rounded_shape(self, in_shape: Shape, dilation: int = 1) -> Shape:
        if len(in_shape) != 3:
            raise GeometryError(f"{self.name}: {self.kind} needs a 3-D input volume (C, H, W), got {in_shape}")  # type: ignore[attr-defined]
        c, h, w = in_shape
        ho, after_h = _rounded_size(self, h, self.F, self.S, self.P, dilation, "height", self.rounding)  # type: ignore[attr-defined]
        wo, after_w = _rounded_size(self, w, self.F, self.S, self.P, dilation, "width", self.rounding)  # type: ignore[attr-defined]
        self._pads = (after_h, after_w)
        return (c, ho, wo)

    @property
    def exact(self) -> bool:
        """True where (W - F + 2P)/S + 1 is an integer: the ordinary layer, no padded copy."""
        return self._pads == (self.P, self.P)  # type: ignore[attr-defined]

    def describe(self) -> str:
        return super().describe() + ("" if self.rounding == "floor" else " ceil")  # type: ignore[misc]

    def _region(self, h: int, w: int) -> tuple[int, int]:
        """Rows and columns of the input that the padded volume holds (a negative pad crops)."""
        return h + min(self._pads[0], 0), w + min(self._pads[1], 0)

    def _pad_specs(self, batch: int) -> list[TensorSpec]:
        """The padded volume, in the memory plan: written in forward, and again in backward (the
        plan lets others use it in between), where it then takes the padded input's gradient."""
        if self.exact:
            return []
        return [TensorSpec(f"{self.name}.pad", (batch, *self._padded_shape()), self.dtype, "workspace")]  # type: ignore[attr-defined]

    def _pad(self, x: Any, out: Any = None) -> Any:
        """x in the padded volume (``out``: the planned one; None allocates)."""
        n, c, h, w = x.shape
        p = self.P  # type: ignore[attr-defined]
        hh, ww = self._region(h, w)
        if out is None:
            out = devmod.array_module(x).empty((n, *self._padded_shape()), dtype=x.dtype)
        out[...] = self.pad_value
        out[:, :, p:p + hh, p:p + ww] = x[:, :, :hh, :ww]
        return out

    def _crop_grad(self, dxp: Any, x_shape: tuple[int, ...], out: Any) -> Any:
        n, c, h, w = x_shape
        p = self.P  # type: ignore[attr-defined]
        hh, ww = self._region(h, w)
        xp = devmod.array_module(dxp)
        dx = out if out is not None else xp.empty(x_shape, dtype=dxp.dtype)
        if (hh, ww) != (h, w):
            dx[...] = 0
        dx[:, :, :hh, :ww] = dxp[:, :, p:p + hh, p:p + ww]
        return dx

    def _padded_shape(self) -> Shape:
        """The per-example shape of the padded volume the op runs on."""
        c, h, w = self.in_shape  # type: ignore[attr-defined]
        hh, ww = self._region(h, w)
        p = self.P  # type: ignore[attr-defined]
        return (c, p + hh + max(self._pads[0], 0), p + ww + max(self._pads[1], 0))

    def _on_padded(self, fn: Any, *args: Any) -> Any:
        """A method that reads the layer's geometry (kernel choices), as the op sees it: padded, P=0."""
        if self.exact:
            return fn(*args)
        saved = self.in_shape  # type: ignore[attr-defined]
        self.in_shape = self._padded_shape()
        try:
            return self._unpadded(fn, *args)
        finally:
            self.in_shape = saved

    def _unpadded(self, fn: Any, *args: Any) -> Any:
        """Run the ordinary layer's method on the padded volume: P=0 for the call."""
        p = self.P  # type: ignore[attr-defined]
        self.P = 0  # type: ignore[attr-defined]
        try:
            return fn(*args)
        finally:
            self.P = p  # type: ignore[attr-defined]


class ConvRounded(_Rounding, Conv):
    """CONV whose output size is floor((W - F + 2P)/S) + 1 (PyTorch's), or ceil with rounding="ceil"."""

    def __init__(self, *args: Any, rounding: str = "floor", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._set_rounding(rounding)

    def infer_shape(self, in_shape: Shape) -> Shape:
        _, ho, wo = self._rounded_shape(in_shape, self.dilation)
        return (self.K, ho, wo)

    def kernel_choices(self, batch: int, train: bool = True, dtype: Any = None) -> list[Any]:
        return self._on_padded(super().kernel_choices, batch, train, dtype)

    def workspace_specs(self, batch: int, train: bool = True) -> list[Any]:
        return self._on_padded(super().workspace_specs, batch, train) + self._pad_specs(batch)

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        if self.exact:
            return super().forward(x, train, buf)
        if train:
            self._cache["x_in"] = x  # the planner keeps a CONV's input until its backward
        return self._unpadded(super().forward, self._pad(x, buf.workspace.get("pad")), train, buf)

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        if self.exact:
            return super().backward(dy, buf)
        x = self._cache["x_in"]
        ws = buf.workspace.get("pad")
        if ws is not None:  # planned: the padded volume was someone else's memory meanwhile: pad again
            self._cache["x"] = self._pad(x, ws)
        # dW reads the padded input first, then the padded dx overwrites it (the same planned memory)
        dxp = self._unpadded(super().backward, dy, Buffers(dx=ws, workspace=buf.workspace))
        return None if dxp is None else self._crop_grad(dxp, tuple(x.shape), buf.dx)


class MaxPoolRounded(_Rounding, MaxPool):
    """Max POOL whose output size is floor((W - F + 2P)/S) + 1, or ceil (Caffe's, PyTorch's ceil_mode)
    with rounding="ceil"; padding counts as -inf."""

    pad_value = -np.inf

    def __init__(self, *args: Any, rounding: str = "floor", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._set_rounding(rounding)

    def infer_shape(self, in_shape: Shape) -> Shape:
        return self._rounded_shape(in_shape)

    def workspace_specs(self, batch: int, train: bool = True) -> list[Any]:
        return super().workspace_specs(batch, train) + self._pad_specs(batch)

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        if self.exact:
            return super().forward(x, train, buf)
        if train:
            self._cache["x_shape_in"] = tuple(x.shape)
        return self._unpadded(super().forward, self._pad(x, buf.workspace.get("pad")), train, buf)

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        if self.exact:
            return super().backward(dy, buf)
        x_shape = self._cache["x_shape_in"]
        # the switches say where each max was: the padded input itself is not needed again
        dxp = self._unpadded(super().backward, dy, Buffers(dx=buf.workspace.get("pad"), saved=buf.saved))
        return self._crop_grad(dxp, x_shape, buf.dx)
