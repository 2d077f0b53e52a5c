"""FC -> CONV conversion, as the notes describe it.

An FC layer looking at a CxHxW volume is a CONV layer with K=M filters of size
F=H (=W), stride 1, no padding; later FC layers are 1x1 CONVs.  The weights are
reshaped, not retrained, so the converted net slides the original over a larger
image in one forward pass: each output position equals the original net on the
corresponding crop (offset by the product of the strides before the first FC).
The equality is exact when the convolutions are unpadded; zero padding makes a
crop's border pixels see zeros where the big image has neighbours.

Branching nets (residual and Inception blocks) convert the same way: the body, whatever
its graph, is kept node for node (each node reads the same inputs), FLATTEN disappears,
and the head's global average pooling, which on the trained size averages the whole
HxW feature map, becomes an HxW average POOL with stride 1, so that on a larger image
it averages each crop's feature map and the FC after it becomes a 1x1 CONV.  A node
that cannot slide (a LOCAL layer: weights per position) or a window that is not
square is refused with an error naming the node.
"""
from __future__ import annotations

import math
from typing import Sequence

from . import device as devmod
from .geometry import GeometryError
from .layers import FC, AvgPool, Conv, Flatten, GlobalAvgPool, Layer
from .net import INPUT, Net, is_merge


def _clone(layer: Layer) -> Layer:
    """A fresh, unbuilt copy of a layer's hyperparameters (params are copied separately)."""
    new = object.__new__(type(layer))
    new.__dict__.update({k: v for k, v in layer.__dict__.items()
                         if k not in ("params", "grads", "_cache", "in_shape", "out_shape")})
    new.params, new.grads, new._cache = {}, {}, {}
    new.in_shape = new.out_shape = None
    return new


def _window(node: str, what: str, shape: tuple[int, ...]) -> int:
    """The sliding window that covers a whole (C, H, W) volume of the trained size."""
    if len(shape) != 3:
        raise GeometryError(f"{node}: {what} reads a vector {shape}, not a volume: there is no image to slide "
                            f"over (the net's input or a node before it is not spatial)")
    _, h, w = shape
    if h != w:
        raise GeometryError(f"{node}: {what} over a {h}x{w} volume needs a square window to slide")
    return h


def fc_to_conv(net: Net, input_shape: Sequence[int]) -> Net:
    """A bound copy of ``net`` with every FC replaced by the equivalent CONV (and a global average
    pooling by the average POOL over the trained feature map), for a larger input."""
    if net.device is None:
        raise RuntimeError(f"{net.name}: bind (and train) the net before converting it")
    layers: list[Layer] = []
    inputs: list[list[str]] = []
    mapping: list[tuple[int, int]] = []  # (old layer index, new layer index)
    # The new node that stands for an old node's output, and that output's shape on the trained size.
    stands_for: dict[str, str] = {INPUT: INPUT}
    shape: dict[str, tuple[int, ...]] = {INPUT: tuple(net.input_shape)}
    for i, layer in enumerate(net.layers):
        src = [stands_for[net.node_name(p)] for p in net.sources[i]]
        if isinstance(layer, Flatten):
            stands_for[layer.name] = src[0]  # CONV layers keep the volume; no flattening needed
            continue
        if isinstance(layer, FC):
            f = _window(layer.name, "FC", shape[src[0]])
            new: Layer = Conv(layer.M, f, 1, 0, bias=layer.bias, name=f"{layer.name}_conv")
            new.fused_relu = layer.fused_relu  # type: ignore[attr-defined]  (the RELU after it stays fused)
        elif isinstance(layer, GlobalAvgPool):
            new = AvgPool(_window(layer.name, "GAP", shape[src[0]]), 1, 0, name=f"{layer.name}_pool")
        else:
            new = _clone(layer)
        mapping.append((i, len(layers)))
        layers.append(new)
        inputs.append(src)
        stands_for[layer.name] = new.name
        # its shape on the trained size (an FC's (M,) is a 1x1 CONV's (M, 1, 1) now); the Net builds it again
        shape[new.name] = (new.build_inputs([shape[n] for n in src], src) if is_merge(new)  # type: ignore[attr-defined]
                           else new.build(shape[src[0]]))
    # The fusion decisions are kept as they are (fuse=False): an ADD's own ReLU and a fused one look alike.
    new_net = Net(layers, input_shape, loss=net.loss, dtype=net.dtype, name=f"{net.name}-conv", fuse=False,
                  vector_output=False, inputs=inputs)
    for old_i, new_i in mapping:
        old, dst = net.layers[old_i], new_net.layers[new_i]
        for pname, shp in dst.param_shapes().items():
            size = int(old.params[pname].size)
            if math.prod(shp) != size:
                raise GeometryError(f"{old.name}: {old.kind} has {size:,} values in {pname!r} on the trained size "
                                    f"but needs {shp} on {tuple(input_shape)}: its weights depend on the input "
                                    f"size, so it cannot slide over a larger image")
    new_net.bind(net.device, seed=net.seed)
    for old_i, new_i in mapping:
        old, dst = net.layers[old_i], new_net.layers[new_i]
        for pname, value in old.params.items():
            dst.params[pname][...] = value.reshape(dst.params[pname].shape)
        for attr in ("running_mean", "running_var"):
            if getattr(old, attr, None) is not None:
                getattr(dst, attr)[...] = getattr(old, attr)
    return new_net


def sliding_crops(x, size: Sequence[int], stride: int):  # type: ignore[no-untyped-def]
    """The crops a converted net evaluates: [(i, j, x[:, :, i*s:i*s+h, j*s:j*s+w]), ...]."""
    h, w = size
    xp = devmod.array_module(x)
    out = []
    for i in range((x.shape[2] - h) // stride + 1):
        for j in range((x.shape[3] - w) // stride + 1):
            out.append((i, j, xp.ascontiguousarray(x[:, :, i * stride:i * stride + h, j * stride:j * stride + w])))
    return out
