"""CONV and max POOL whose output size rounds down (PyTorch) or up (Caffe's pooling).

The notes' rule, which every layer enforces by default, is that ``(W - F + 2P)/S + 1`` must
be an integer.  The nets of the ResNet and GoogLeNet papers break it everywhere: a 3x3
stride-2 convolution (or a 1x1 stride-2 projection, or a 7x7/2 stem) over an even width
has no integer answer.  Those nets round: PyTorch down (``rounding="floor"``), Caffe's
pooling, which GoogLeNet used, up (``"ceil"``, PyTorch's ceil_mode, with its rule that the
last window starts inside the input or its left padding).

``Conv`` and ``MaxPool`` take ``rounding=`` themselves (``geometry.window_output_size``):
the kernels are given the rounded output size and bounds-check every read, so a window
reaching past the input reads padding, with no padded copy of the input.  The classes here
are those layers with ``rounding="floor"`` as the default, kept for the code that names them.
"""
from __future__ import annotations

from typing import Any

from ..geometry import ROUNDINGS
from .conv import Conv
from .pool import MaxPool

__all__ = ["ROUNDINGS", "ConvRounded", "MaxPoolRounded"]


class ConvRounded(Conv):
    """CONV whose output size is floor((W - F + 2P)/S) + 1 (PyTorch's), or ceil with rounding="ceil"."""

    def __init__(self, *args: Any, rounding: str = "floor", **kwargs: Any) -> None:
        super().__init__(*args, rounding=rounding, **kwargs)


class MaxPoolRounded(MaxPool):
    """Max POOL whose output size is floor((W - F + 2P)/S) + 1, or ceil (Caffe's, PyTorch's ceil_mode)
    with rounding="ceil"; padding never wins."""

    def __init__(self, *args: Any, rounding: str = "floor", **kwargs: Any) -> None:
        super().__init__(*args, rounding=rounding, **kwargs)
