"""Model zoo: the notes' case studies and the nets we train and benchmark.

Each entry builds a fresh, unbound Net; ``input_shape`` and ``classes`` let the
same architecture serve other data (e.g. LeNet on 1x28x28 Fashion-MNIST).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .layers import FC, LRN, Conv, Dropout, Layer, MaxPool, ReLU
from .net import Net
from .spec import net_from_spec, parse


def _from_pattern(pattern: str, name: str, classes: int, input_shape: tuple[int, ...] | None,
                  dtype: Any) -> Net:
    shape, layers = parse(pattern)
    if classes != 10 and isinstance(layers[-1], FC):
        layers[-1] = FC(classes)
    return Net(layers, input_shape or shape, dtype=dtype, name=name)


def small(classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28), dtype: Any = np.float32) -> Net:
    """The default: quick on 2 CPU cores, ~89% on Fashion-MNIST in 2-3 epochs."""
    return _from_pattern("INPUT[28x28x1] -> [CONV5-16 -> RELU -> POOL2] -> [CONV5-32 -> RELU -> POOL2] "
                         "-> FC-128 -> RELU -> FC-10", "small", classes, input_shape, dtype)


def fmnist(classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28), dtype: Any = np.float32) -> Net:
    """The Fashion-MNIST benchmark net: conv5-32, pool2, conv5-64, pool2, fc1024, dropout 0.4, fc10."""
    return _from_pattern("INPUT[28x28x1] -> [CONV5-32 -> RELU -> POOL2] -> [CONV5-64 -> RELU -> POOL2] "
                         "-> FC-1024 -> RELU -> DROPOUT0.4 -> FC-10", "fmnist", classes, input_shape, dtype)


def lenet5(classes: int = 10, input_shape: tuple[int, ...] = (1, 32, 32), dtype: Any = np.float32) -> Net:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: 32x32 -> 6@28 -> 16@10 -> 120 -> 84."""
    pad = (32 - input_shape[1]) // 2  # a 28x28 input is padded to LeNet's 32x32 by the first conv
    layers: list[Layer] = [Conv(6, 5, P=pad), ReLU(), MaxPool(2), Conv(16, 5), ReLU(), MaxPool(2),
                           FC(120), ReLU(), FC(84), ReLU(), FC(classes)]
    return Net(layers, input_shape, dtype=dtype, name="lenet5")


def alexnet(classes: int = 1000, input_shape: tuple[int, ...] = (3, 227, 227), dtype: Any = np.float32) -> Net:
    """AlexNet as in the notes: 227x227x3 in, 55x55x96 after CONV11-96/4 (single-tower)."""
    layers: list[Layer] = [
        Conv(96, 11, S=4), ReLU(), MaxPool(3, 2), LRN(5),
        Conv(256, 5, P=2), ReLU(), MaxPool(3, 2), LRN(5),
        Conv(384, 3, P=1), ReLU(), Conv(384, 3, P=1), ReLU(), Conv(256, 3, P=1), ReLU(), MaxPool(3, 2),
        FC(4096), ReLU(), Dropout(0.5), FC(4096), ReLU(), Dropout(0.5), FC(classes)]
    return Net(layers, input_shape, dtype=dtype, name="alexnet")


def zfnet(classes: int = 1000, input_shape: tuple[int, ...] = (3, 225, 225), dtype: Any = np.float32) -> Net:
    """ZFNet: AlexNet with a 7x7/2 first layer and wider middle layers.

    225x225 input (the paper's 224 relies on ceil-mode pooling; 225 makes every
    layer's (W-F+2P)/S+1 an integer): 111 -> 55 -> 27 -> 13 -> 6.
    """
    layers: list[Layer] = [
        Conv(96, 7, S=2, P=1), ReLU(), MaxPool(3, 2), LRN(5),
        Conv(256, 5, S=2, P=1), ReLU(), MaxPool(3, 2), LRN(5),
        Conv(384, 3, P=1), ReLU(), Conv(384, 3, P=1), ReLU(), Conv(256, 3, P=1), ReLU(), MaxPool(3, 2),
        FC(4096), ReLU(), Dropout(0.5), FC(4096), ReLU(), Dropout(0.5), FC(classes)]
    return Net(layers, input_shape, dtype=dtype, name="zfnet")


def _vgg(cfg: list[int | str], name: str, classes: int, input_shape: tuple[int, ...], dtype: Any,
         fc: int = 4096, dropout: float = 0.5) -> Net:
    layers: list[Layer] = []
    for v in cfg:
        layers += [MaxPool(2)] if v == "M" else [Conv(int(v), 3, P=1), ReLU()]
    layers += [FC(fc), ReLU(), Dropout(dropout), FC(fc), ReLU(), Dropout(dropout), FC(classes)]
    return Net(layers, input_shape, dtype=dtype, name=name)


def vgg11(classes: int = 1000, input_shape: tuple[int, ...] = (3, 224, 224), dtype: Any = np.float32) -> Net:
    return _vgg([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"], "vgg11", classes,
                input_shape, dtype)


def vgg16(classes: int = 1000, input_shape: tuple[int, ...] = (3, 224, 224), dtype: Any = np.float32) -> Net:
    """VGG16 (configuration D): the notes' table, 138,357,544 parameters."""
    return _vgg([64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
                "vgg16", classes, input_shape, dtype)


def cifar_vgg(classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32), dtype: Any = np.float32) -> Net:
    """A small CIFAR-size VGG: the notes' pattern with N=2, M=3, K=1."""
    return _from_pattern("INPUT[32x32x3] -> [[CONV3-64 -> RELU]*2 -> POOL2]*3 -> [FC-512 -> RELU]*1 -> FC-10",
                         "cifar-vgg", classes, input_shape, dtype)


MODELS: dict[str, Callable[..., Net]] = {
    "small": small, "fmnist": fmnist, "lenet5": lenet5, "alexnet": alexnet, "zfnet": zfnet,
    "vgg11": vgg11, "vgg16": vgg16, "cifar-vgg": cifar_vgg,
}


def get_model(name: str, **kwargs: Any) -> Net:
    """A fresh Net by zoo name, or from a pattern string (anything starting with INPUT)."""
    if name.strip().upper().startswith("INPUT"):
        return net_from_spec(name, name="custom", **{k: v for k, v in kwargs.items() if k == "dtype"})
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}: choose one of {', '.join(MODELS)} or give a pattern "
                       f"like 'INPUT[28x28x1] -> CONV3-8 -> RELU -> POOL2 -> FC-10'")
    return MODELS[name](**kwargs)
