"""FC -> CONV conversion, as the notes describe it.

An FC layer looking at a CxHxW volume is a CONV layer with K=M filters of size
F=H (=W), stride 1, no padding; later FC layers are 1x1 CONVs.  The weights are
reshaped, not retrained, so the converted net slides the original over a larger
image in one forward pass: each output position equals the original net on the
corresponding crop (offset by the product of the strides before the first FC).
The equality is exact when the convolutions are unpadded; zero padding makes a
crop's border pixels see zeros where the big image has neighbours.
"""
from __future__ import annotations

from typing import Sequence

from . import device as devmod
from .geometry import GeometryError
from .layers import FC, Conv, Flatten, Layer
from .net import Net


def _clone(layer: Layer) -> Layer:
    """A fresh, unbuilt copy of a layer's hyperparameters (params are copied separately)."""
    new = object.__new__(type(layer))
    new.__dict__.update({k: v for k, v in layer.__dict__.items()
                         if k not in ("params", "grads", "_cache", "in_shape", "out_shape")})
    new.params, new.grads, new._cache = {}, {}, {}
    new.in_shape = new.out_shape = None
    return new


def fc_to_conv(net: Net, input_shape: Sequence[int]) -> Net:
    """A bound copy of ``net`` with every FC replaced by the equivalent CONV, for a larger input."""
    if net.device is None:
        raise RuntimeError(f"{net.name}: bind (and train) the net before converting it")
    layers: list[Layer] = []
    mapping: list[tuple[int, int, str]] = []  # (old layer index, new layer index, kind of copy)
    shape = net.input_shape
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Flatten):
            continue  # CONV layers keep the volume; no flattening needed
        if isinstance(layer, FC):
            in_shape = layer.in_shape
            if len(in_shape) == 3:  # type: ignore[arg-type]
                c, h, w = in_shape  # type: ignore[misc]
                if h != w:
                    raise GeometryError(f"{layer.name}: FC over a {h}x{w} volume needs a square window to "
                                        f"become a CONV layer")
                f = h
            else:
                f = 1
            conv = Conv(layer.M, f, 1, 0, bias=layer.bias, name=f"{layer.name}_conv")
            mapping.append((i, len(layers), "fc"))
            layers.append(conv)
        else:
            mapping.append((i, len(layers), "same"))
            layers.append(_clone(layer))
        shape = layer.out_shape  # type: ignore[assignment]
    for layer in layers:  # fusion is redone by the new Net
        if hasattr(layer, "fused_relu"):
            layer.fused_relu = False  # type: ignore[attr-defined]
        if hasattr(layer, "fused"):
            layer.fused = False  # type: ignore[attr-defined]
    new = Net(layers, input_shape, loss=net.loss, dtype=net.dtype, name=f"{net.name}-conv", vector_output=False)
    new.bind(net.device, seed=net.seed)
    for old_i, new_i, how in mapping:
        old, dst = net.layers[old_i], new.layers[new_i]
        for pname, value in old.params.items():
            dst.params[pname][...] = value.reshape(dst.params[pname].shape)
        for attr in ("running_mean", "running_var"):
            if getattr(old, attr, None) is not None:
                getattr(dst, attr)[...] = getattr(old, attr)
    return new


def sliding_crops(x, size: Sequence[int], stride: int):  # type: ignore[no-untyped-def]
    """The crops a converted net evaluates: [(i, j, x[:, :, i*s:i*s+h, j*s:j*s+w]), ...]."""
    h, w = size
    xp = devmod.array_module(x)
    out = []
    for i in range((x.shape[2] - h) // stride + 1):
        for j in range((x.shape[3] - w) // stride + 1):
            out.append((i, j, xp.ascontiguousarray(x[:, :, i * stride:i * stride + h, j * stride:j * stride + w])))
    return out
