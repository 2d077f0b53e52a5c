"""The functional builder of branching nets, and the common blocks (residual, bottleneck, Inception).

    g = Graph((3, 32, 32), name="tiny-res")
    x = g.input()
    y = g.relu(g.bn(g.conv(x, 3, 16)))          # CONV3-16 -> BN -> RELU
    z = g.relu(g.bn(g.conv(y, 3, 16)))
    out = g.add(y, g.bn(g.conv(z, 3, 16)), relu=True)
    net = g.build(classes=10)                    # GAP -> FC-10 appended, then Net(...)

Every call declares one node and returns a :class:`Node` (its name and per-example shape):
the layer is built right away, so a bad geometry or two branches that do not fit are
reported at the line that declares them, naming both branches and their shapes, before
anything is allocated.  Node names are numbered per kind as in a chain (conv1, bn1, ...);
``with g.scope("res2a"):`` prefixes them ("res2a.conv1") so summaries read by block.

Conventions follow the pattern language: ``conv(x, F, K)`` is CONV<F>-<K> with 'same'
padding unless ``pad`` is given.  ``rounding="floor"`` (used by the blocks for their strided
layers) rounds the output size down as PyTorch does, where the notes' integer rule has
no answer (a stride-2 window over an even width); "ceil" rounds up as Caffe's pooling:
see :func:`gpuconv.geometry.window_output_size`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .geometry import GeometryError
from .layers import FC, LRN, Add, AvgPool, BatchNorm, Concat, Conv, Dropout, Flatten, GlobalAvgPool, Layer, \
    MaxPool, ReLU
from .layers.merge import _Merge
from .net import INPUT, Net

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Node:
    """A tensor of the graph: the node that produces it and its per-example shape."""

    name: str
    shape: Shape


class Graph:
    """Declares a net node by node; :meth:`build` turns it into a :class:`~gpuconv.net.Net`."""

    def __init__(self, input_shape: Sequence[int], *, name: str = "net") -> None:
        self.input_shape = tuple(int(d) for d in input_shape)
        if any(d < 1 for d in self.input_shape) or len(self.input_shape) not in (1, 3):
            raise GeometryError(f"{name}: input shape must be (C, H, W) or (D,) of positive sizes, "
                                f"got {self.input_shape}")
        self.name = name
        self.layers: list[Layer] = []
        self.inputs: list[tuple[str, ...]] = []
        self._shapes: dict[str, Shape] = {INPUT: self.input_shape}
        self._counts: dict[str, int] = {}
        self._prefix: list[str] = []

    # ---- plumbing -----------------------------------------------------------------
    def input(self) -> Node:
        """The data batch (per-example shape ``input_shape``)."""
        return Node(INPUT, self.input_shape)

    @property
    def last(self) -> Node:
        if not self.layers:
            return self.input()
        name = self.layers[-1].name
        return Node(name, self._shapes[name])

    @contextlib.contextmanager
    def scope(self, prefix: str) -> Iterator[None]:
        """Names declared inside are '<prefix>.<name>' (numbered within the scope)."""
        saved = self._counts
        self._prefix.append(prefix)
        self._counts = {}
        try:
            yield
        finally:
            self._prefix.pop()
            self._counts = saved

    def _name(self, layer: Layer, name: str | None) -> str:
        if name is None:
            kind = layer.kind.lower()
            self._counts[kind] = self._counts.get(kind, 0) + 1
            name = f"{kind}{self._counts[kind]}"
        full = ".".join([*self._prefix, name])
        if full in self._shapes:
            raise ValueError(f"{self.name}: two nodes are named {full!r}")
        return full

    def layer(self, layer: Layer, *xs: Node, name: str | None = None) -> Node:
        """Add any layer as a node reading ``xs`` (one input, or several for ADD/CONCAT)."""
        if not xs:
            raise ValueError(f"{self.name}: {layer.kind} needs an input node")
        for x in xs:
            if not isinstance(x, Node) or self._shapes.get(x.name) != x.shape:
                raise ValueError(f"{self.name}: {x!r} is not a node of this graph")
        layer.name = self._name(layer, name)
        if isinstance(layer, _Merge):
            shape = layer.build_inputs([x.shape for x in xs], [x.name for x in xs])
        elif len(xs) != 1:
            raise GeometryError(f"{self.name}: {layer.name} ({layer.kind}) takes one input, got "
                                f"{', '.join(x.name for x in xs)}")
        else:
            shape = layer.build(xs[0].shape)
        self.layers.append(layer)
        self.inputs.append(tuple(x.name for x in xs))
        self._shapes[layer.name] = shape
        return Node(layer.name, shape)

    # ---- layers -------------------------------------------------------------------
    def conv(self, x: Node, F: int, K: int, *, stride: int = 1, pad: int | None = None, dilation: int = 1,
             bias: bool = True, rounding: str | None = None, name: str | None = None) -> Node:
        """CONV<F>-<K>[/stride]; ``pad`` defaults to 'same' ((F-1)/2, dilated: D*(F-1)/2).
        ``rounding`` 'floor'/'ceil': the output size where (W - F + 2P)/S is not an integer."""
        P = (dilation * (F - 1)) // 2 if pad is None else pad
        return self.layer(Conv(K, F, stride, P, dilation, bias=bias, rounding=rounding or "exact"), x, name=name)

    def bn(self, x: Node, *, name: str | None = None) -> Node:
        return self.layer(BatchNorm(), x, name=name)

    def relu(self, x: Node, slope: float = 0.0, *, name: str | None = None) -> Node:
        return self.layer(ReLU(slope), x, name=name)

    def pool(self, x: Node, F: int = 2, stride: int | None = None, *, pad: int = 0, rounding: str | None = None,
             name: str | None = None) -> Node:
        """Max POOL<F>[/stride]; ``rounding`` as for :meth:`conv`."""
        return self.layer(MaxPool(F, stride, pad, rounding=rounding or "exact"), x, name=name)

    def avgpool(self, x: Node, F: int = 2, stride: int | None = None, *, pad: int = 0,
                name: str | None = None) -> Node:
        return self.layer(AvgPool(F, stride, pad), x, name=name)

    def gap(self, x: Node, *, name: str | None = None) -> Node:
        """Global average pooling: (C, H, W) -> (C,)."""
        return self.layer(GlobalAvgPool(), x, name=name)

    def fc(self, x: Node, M: int, *, name: str | None = None) -> Node:
        return self.layer(FC(M), x, name=name)

    def dropout(self, x: Node, p: float = 0.5, *, name: str | None = None) -> Node:
        return self.layer(Dropout(p), x, name=name)

    def lrn(self, x: Node, n: int = 5, *, name: str | None = None) -> Node:
        return self.layer(LRN(n), x, name=name)

    def flatten(self, x: Node, *, name: str | None = None) -> Node:
        return self.layer(Flatten(), x, name=name)

    def add(self, a: Node, b: Node, *, relu: bool = False, name: str | None = None) -> Node:
        """The residual sum a + b (shapes must match), with the ReLU after it fused when ``relu``."""
        return self.layer(Add(relu), a, b, name=name)

    def concat(self, *xs: Node, name: str | None = None) -> Node:
        """The branches stacked along channels (spatial sizes must match)."""
        return self.layer(Concat(), *xs, name=name)

    # ---- blocks -------------------------------------------------------------------
    def conv_bn(self, x: Node, F: int, K: int, *, stride: int = 1, relu: bool = True, name: str = "conv") -> Node:
        """CONV (no bias: BN's beta is the bias) -> BN [-> RELU]; strided layers round down."""
        idx = name[len("conv"):] if name.startswith("conv") else ""
        y = self.conv(x, F, K, stride=stride, bias=False, rounding=_strided(stride), name=name)
        y = self.bn(y, name=f"bn{idx}" if idx else None)
        return self.relu(y, name=f"relu{idx}" if idx else None) if relu else y

    def shortcut(self, x: Node, K: int, stride: int, *, projection: bool | None = None) -> Node:
        """Identity where the shape is kept, else (or when ``projection``) 1x1 CONV/stride -> BN."""
        if projection is None:
            projection = stride != 1 or x.shape[0] != K
        if not projection:
            return x
        y = self.conv(x, 1, K, stride=stride, pad=0, bias=False, rounding=_strided(stride), name="proj")
        return self.bn(y, name="proj_bn")

    def _block_scope(self, kind: str, name: str | None) -> Any:
        if name is None:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            name = f"{kind}{self._counts[kind]}"
        return self.scope(name)

    def basic_block(self, x: Node, K: int, stride: int = 1, *, F: int = 3, projection: bool | None = None,
                    name: str | None = None) -> Node:
        """ResNet's basic block: [CONV<F>-K/stride -> BN -> RELU -> CONV<F>-K -> BN] + shortcut -> RELU
        (F = 3 in the paper).  Its nodes are named '<name>.conv1', ... (default name: res1, res2, ...)."""
        _require_volume(self, x, "a residual block")
        with self._block_scope("res", name):
            y = self.conv_bn(x, F, K, stride=stride, name="conv1")
            y = self.conv_bn(y, F, K, relu=False, name="conv2")
            return self.add(self.shortcut(x, K, stride, projection=projection), y, relu=True, name="add")

    def bottleneck(self, x: Node, K: int, stride: int = 1, *, expansion: int = 4,
                   projection: bool | None = None, name: str | None = None) -> Node:
        """ResNet's bottleneck: 1x1-K -> 3x3-K/stride -> 1x1-(expansion*K), each with BN, + shortcut -> RELU.

        The stride is on the 3x3 convolution (torchvision's "ResNet v1.5")."""
        _require_volume(self, x, "a bottleneck block")
        with self._block_scope("bottleneck", name):
            y = self.conv_bn(x, 1, K, name="conv1")
            y = self.conv_bn(y, 3, K, stride=stride, name="conv2")
            y = self.conv_bn(y, 1, expansion * K, relu=False, name="conv3")
            return self.add(self.shortcut(x, expansion * K, stride, projection=projection), y, relu=True,
                            name="add")

    def inception(self, x: Node, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int, *,
                  name: str | None = None) -> Node:
        """GoogLeNet's Inception module (Table 1's columns): four branches concatenated along channels:
        1x1-c1 | 1x1-c3r -> 3x3-c3 | 1x1-c5r -> 5x5-c5 | 3x3/1 max pool -> 1x1-pool_proj; a RELU after each conv."""
        _require_volume(self, x, "an Inception module")
        with self._block_scope("inception", name):
            return self._inception(x, c1, c3r, c3, c5r, c5, pool_proj)

    def _inception(self, x: Node, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int) -> Node:
        branches = []
        with self.scope("b1"):
            branches.append(self.relu(self.conv(x, 1, c1)))
        with self.scope("b2"):
            branches.append(self.relu(self.conv(self.relu(self.conv(x, 1, c3r)), 3, c3)))
        with self.scope("b3"):
            branches.append(self.relu(self.conv(self.relu(self.conv(x, 1, c5r)), 5, c5)))
        with self.scope("b4"):
            branches.append(self.relu(self.conv(self.pool(x, 3, 1, pad=1), 1, pool_proj)))
        return self.concat(*branches, name="concat")

    # ---- the net ------------------------------------------------------------------
    def build(self, classes: int | None = None, *, out: Node | None = None, loss: str = "softmax",
              dtype: Any = np.float32, fuse: bool = True) -> Net:
        """The Net whose scores are ``out`` (default: the last node).  With ``classes``, an FC-<classes>
        is appended first (after a GAP when ``out`` is still a volume: no FC over a whole feature map)."""
        head = out or self.last
        if out is not None and out.name != head.name:
            raise ValueError(f"{self.name}: {out!r} is not a node of this graph")
        if classes is not None:
            if len(head.shape) == 3:
                head = self.gap(head, name="gap")
            head = self.fc(head, classes, name="fc")
        if not self.layers:
            raise GeometryError(f"{self.name}: a net needs at least one layer")
        # The scores must be the last node: nodes declared after ``out`` would be dead branches.
        if head.name != self.layers[-1].name:
            raise GeometryError(f"{self.name}: the output {head.name} is not the last node declared; "
                                f"nodes after it would be computed for nothing")
        return Net(self.layers, self.input_shape, inputs=self.inputs, loss=loss, dtype=dtype, name=self.name,
                   fuse=fuse)


def _strided(stride: int) -> str | None:
    """The blocks' strided layers round down (PyTorch's geometry), the others keep the notes' rule."""
    return "floor" if stride > 1 else None


def _require_volume(g: Graph, x: Node, what: str) -> None:
    if len(x.shape) != 3:
        raise GeometryError(f"{g.name}: {what} needs a (C, H, W) volume, but {x.name} gives {x.shape}")
