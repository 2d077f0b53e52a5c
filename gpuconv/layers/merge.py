"""Merge nodes of a branching net (ADD, CONCAT) and global average pooling (GAP).

A merge node reads several tensors.  The Net builds it from all their shapes with
``build_inputs(shapes, names)`` (``names``: the nodes that produce them), calls
``forward(xs, ...)`` with the list of its inputs and expects from ``backward`` one
gradient per input.  Shapes are checked when the net is declared: a mismatch names
both branches and their shapes.

- ADD: the residual sum of two branches of one shape, optionally followed by a fused
  ReLU (one pass over memory, as cuDNN/CUTLASS fuse bias+residual+activation).  Its
  backward hands the same gradient to both inputs (no copy; the Net accounts for the
  sharing when it accumulates).
- CONCAT: the branches stacked along channels (spatial sizes must match).  In a memory plan
  a branch that ends in a CONV read only by the concat has already written its output into
  its slice of ``buf.out`` (``Net.concat_output_views``), and forward copies only the other
  inputs.  Backward hands a branch that ends in a CONV its slice of dy itself (the conv
  kernels read channel-strided gradients; ``Net.set_concat_grad_views``, on by default)
  when that dy is not shared with another node (the Net decides: ``view_inputs``,
  ``grad_views``), and copies only for the other branches.
- GAP: (C, H, W) -> (C,), the mean of each channel (GoogLeNet's and ResNet's head).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..geometry import GeometryError
from ..ops import add as add_ops
from ..ops import concat as concat_ops
from ..ops import conv as conv_ops
from ..ops import gap as gap_ops
from .base import NO_BUFFERS, Buffers, Layer, Shape


def _vol(shape: Shape) -> str:
    """(C, H, W) -> 'HxWxC', as the notes write volumes."""
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}x{w}x{c}"
    return "x".join(str(d) for d in shape)


class _Merge(Layer):
    """Base of the nodes with several inputs."""

    min_inputs = 2
    max_inputs: int | None = None

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.in_shapes: list[Shape] = []
        self.in_names: list[str] = []

    def build_inputs(self, in_shapes: Sequence[Shape], names: Sequence[str]) -> Shape:
        """Check the inputs against each other and infer the output shape."""
        shapes = [tuple(int(d) for d in s) for s in in_shapes]
        n = len(shapes)
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            want = self.min_inputs if self.max_inputs == self.min_inputs else f"at least {self.min_inputs}"
            raise GeometryError(f"{self.name}: {self.kind} takes {want} inputs, got {n} ({', '.join(names)})")
        self.in_shapes, self.in_names = shapes, list(names)
        self.in_shape = shapes[0]
        self.out_shape = tuple(int(d) for d in self.infer_shapes(shapes, list(names)))
        return self.out_shape

    def build(self, in_shape: Shape) -> Shape:
        raise GeometryError(f"{self.name}: {self.kind} merges several branches; declare its inputs "
                            f"(Graph.{self.kind.lower()}(a, b, ...))")

    def infer_shapes(self, shapes: list[Shape], names: list[str]) -> Shape:
        raise NotImplementedError


class Add(_Merge):
    """y = a + b (shapes must match), then ReLU when ``relu`` (fused: no extra tensor)."""

    kind = "ADD"
    min_inputs = max_inputs = 2
    grad_aliases_dy = True  # both inputs' gradient is dy (masked in place with the ReLU)

    def __init__(self, relu: bool = False, *, name: str | None = None) -> None:
        super().__init__(name)
        self.relu = bool(relu)

    @property
    def keeps_output(self) -> bool:  # type: ignore[override]
        return self.relu  # the ReLU mask comes from y > 0

    @property
    def overwrites_dy(self) -> bool:
        return self.relu

    def infer_shapes(self, shapes: list[Shape], names: list[str]) -> Shape:
        (a, b), (na, nb) = shapes, names
        if a != b:
            raise GeometryError(f"{self.name}: ADD needs branches of one shape, but {na} gives [{_vol(a)}] "
                                f"{a} and {nb} gives [{_vol(b)}] {b} (C, H, W); a projection shortcut "
                                f"(1x1 CONV with stride, and BN) makes them match")
        return a

    def describe(self) -> str:
        return "ADD" + ("+RELU" if self.relu else "")

    def flops(self, batch: int) -> int:
        return batch * int(math.prod(self.out_shape))  # type: ignore[arg-type]

    def forward(self, xs: Sequence[Any], train: bool, buf: Buffers = NO_BUFFERS) -> Any:  # type: ignore[override]
        a, b = xs
        y = add_ops.add_forward(a, b, relu=self.relu, out=buf.out)
        if train and self.relu:
            self._cache["y"] = y
        return y

    def forward_conv_residual(self, conv: Any, x: Any, residual: Any, train: bool, buf: Buffers = NO_BUFFERS,
                              conv_buf: Buffers = NO_BUFFERS) -> Any:
        """This ADD with its input ``conv`` (a Conv layer, reading ``x``) fused: the conv runs here,
        the other input ``residual`` added in its epilogue before the ReLU, into this node's
        output: act(conv(x) + b + residual), bit-identical to the conv followed by this ADD.  The
        conv's own forward does not run; what its backward needs is kept for it."""
        y = conv_ops.conv_forward(x, conv.params["w"], conv.params.get("b"), conv.S, conv.P, conv.dilation,
                                  relu=self.relu, out=buf.out, precision=conv.precision, algo=conv.algo,
                                  workspace=conv_buf.workspace.get("winograd"), rounding=conv.rounding,
                                  residual=residual)
        if train:
            conv._cache["x"] = x  # what Conv.backward reads
            if self.relu:
                self._cache["y"] = y
        return y

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> list[Any]:  # type: ignore[override]
        if self.relu:  # the gradient is ours to overwrite (the Net copies it when it is shared)
            dy = add_ops.add_backward(dy, y=self._cache["y"], relu=True, out=buf.dx if buf.dx is not None else dy)
        return [dy, dy]


class Concat(_Merge):
    """The inputs stacked along channels, in order (every other axis must match)."""

    kind = "CONCAT"
    view_inputs: list[bool] = []  # set by the Net: input j's producer takes its slice of dy as is
    grad_views = False            # set by Net.backward: this backward's dy is not shared

    def infer_shapes(self, shapes: list[Shape], names: list[str]) -> Shape:
        first = shapes[0]
        for name, s in zip(names[1:], shapes[1:]):
            if len(s) != 3 or len(first) != 3 or s[1:] != first[1:]:
                raise GeometryError(f"{self.name}: CONCAT stacks channels of one spatial size, but {names[0]} "
                                    f"gives [{_vol(first)}] {first} and {name} gives [{_vol(s)}] {s} (C, H, W)")
        return (sum(s[0] for s in shapes), *first[1:])

    @property
    def channels(self) -> list[int]:
        return [s[0] for s in self.in_shapes]

    def describe(self) -> str:
        return "CONCAT(" + "+".join(str(c) for c in self.channels) + ")"

    def forward(self, xs: Sequence[Any], train: bool, buf: Buffers = NO_BUFFERS) -> Any:  # type: ignore[override]
        # an input that already is its slice of buf.out (planned: a conv wrote there) is not copied
        return concat_ops.concat_forward(list(xs), out=buf.out)

    def view_grads(self) -> list[bool]:
        """Which inputs this backward hands their slice of dy (no copy)."""
        views = list(self.view_inputs) if self.grad_views else []
        return views if len(views) == len(self.in_shapes) else [False] * len(self.in_shapes)

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> list[Any]:  # type: ignore[override]
        # The memory plan's per-branch gradients come as ``buf.dxs`` (see memory.liveness): one
        # per copied input, in order.
        outs = list(buf.dxs)
        views = self.view_grads()
        if not any(views):
            return concat_ops.concat_backward(dy, self.channels, out=outs if len(outs) == len(self.in_shapes) else None)
        planned = len(outs) == views.count(False)
        dst = iter(outs)
        return [s if v else concat_ops.concat_forward([s], out=next(dst) if planned else None)
                for s, v in zip(concat_ops.concat_backward(dy, self.channels, copy=False), views)]


class GlobalAvgPool(Layer):
    """(C, H, W) -> (C,): each channel's mean over the plane (GoogLeNet's and ResNet's head)."""

    kind = "GAP"

    def infer_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3:
            raise GeometryError(f"{self.name}: GAP needs a 3-D input volume (C, H, W), got {in_shape}")
        return (in_shape[0],)

    def flops(self, batch: int) -> int:
        return batch * int(math.prod(self.in_shape))  # type: ignore[arg-type]

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        if train:
            self._cache["x_shape"] = tuple(x.shape)
        return gap_ops.gap_forward(x, out=buf.out)

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        return gap_ops.gap_backward(dy, self._cache["x_shape"], out=buf.dx)
