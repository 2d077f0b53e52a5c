"""Model zoo: the notes' case studies and the nets we train and benchmark.

Each entry builds a fresh, unbound Net; ``input_shape`` and ``classes`` let the
same architecture serve other data (e.g. LeNet on 1x28x28 Fashion-MNIST).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .graph import Graph, Node
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


# ---- branching nets: ResNet and GoogLeNet ----------------------------------------------------------

def _resnet(block: str, depths: list[int], name: str, classes: int, input_shape: tuple[int, ...],
            dtype: Any) -> Net:
    """torchvision's ImageNet ResNets: 7x7/2 stem, 3x3/2 max pool, four stages of blocks (64, 128,
    256, 512 filters; each stage after the first halves the size in its first block), GAP, FC."""
    g = Graph(input_shape, name=name)
    x = g.conv(g.input(), 7, 64, stride=2, pad=3, bias=False, rounding="floor", name="conv1")
    x = g.relu(g.bn(x, name="bn1"), name="relu")
    x = g.pool(x, 3, 2, pad=1, rounding="floor", name="maxpool")
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths), start=1):
        for i in range(depth):
            stride = 2 if stage > 1 and i == 0 else 1
            if block == "basic":
                x = g.basic_block(x, width, stride, name=f"layer{stage}.{i}")
            else:
                x = g.bottleneck(x, width, stride, name=f"layer{stage}.{i}")
    return g.build(classes, dtype=dtype)


def resnet18(classes: int = 1000, input_shape: tuple[int, ...] = (3, 224, 224), dtype: Any = np.float32) -> Net:
    """ResNet-18 (He et al. 2015), torchvision's layout: basic blocks [2, 2, 2, 2], projection
    shortcuts (1x1/2 CONV + BN) where a stage starts; 11,689,512 parameters at 1000 classes.
    Strided layers round their output size down as PyTorch does (224 -> 112 -> 56 -> 28 -> 14 -> 7)."""
    return _resnet("basic", [2, 2, 2, 2], "resnet18", classes, input_shape, dtype)


def resnet34(classes: int = 1000, input_shape: tuple[int, ...] = (3, 224, 224), dtype: Any = np.float32) -> Net:
    """ResNet-34, torchvision's layout: basic blocks [3, 4, 6, 3]; 21,797,672 parameters."""
    return _resnet("basic", [3, 4, 6, 3], "resnet34", classes, input_shape, dtype)


def resnet50(classes: int = 1000, input_shape: tuple[int, ...] = (3, 224, 224), dtype: Any = np.float32) -> Net:
    """ResNet-50, torchvision's layout: bottleneck blocks [3, 4, 6, 3] (expansion 4) with the stride
    on the 3x3 convolution ("ResNet v1.5"); 25,557,032 parameters."""
    return _resnet("bottleneck", [3, 4, 6, 3], "resnet50", classes, input_shape, dtype)


def _cifar_resnet(n: int, name: str, classes: int, input_shape: tuple[int, ...], dtype: Any) -> Net:
    g = Graph(input_shape, name=name)
    x = g.conv_bn(g.input(), 3, 16, name="conv1")
    for stage, width in enumerate((16, 32, 64), start=1):
        for i in range(n):
            x = g.basic_block(x, width, 2 if stage > 1 and i == 0 else 1, name=f"layer{stage}.{i}")
    return g.build(classes, dtype=dtype)


def resnet20(classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32), dtype: Any = np.float32) -> Net:
    """He et al.'s CIFAR-10 ResNet with 6n+2 = 20 layers (n = 3): CONV3-16, three stages of n basic
    blocks with 16, 32 and 64 filters (32x32 -> 16x16 -> 8x8), GAP, FC.  Shortcuts are the paper's
    option B: identity within a stage, a projection (1x1/2 CONV + BN) where the width doubles, so
    272,474 parameters (option A's zero-padded identity shortcuts have no parameters: 269,722).
    On 28x28 Fashion-MNIST: 28 -> 14 -> 7."""
    return _cifar_resnet(3, "resnet20", classes, input_shape, dtype)


def resnet56(classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32), dtype: Any = np.float32) -> Net:
    """He et al.'s CIFAR-10 ResNet-56 (n = 9), option B shortcuts as resnet20: 855,770 parameters
    (853,018 with option A)."""
    return _cifar_resnet(9, "resnet56", classes, input_shape, dtype)


# GoogLeNet's Table 1: (name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), "M" a 3x3/2 max pool.
GOOGLENET_TABLE1: list[Any] = [
    ("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64), "M",
    ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64), ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64), ("4e", 256, 160, 320, 32, 128, 128), "M",
    ("5a", 256, 160, 320, 32, 128, 128), ("5b", 384, 192, 384, 48, 128, 128),
]


def googlenet(classes: int = 1000, input_shape: tuple[int, ...] = (3, 224, 224), dtype: Any = np.float32) -> Net:
    """GoogLeNet (Szegedy et al. 2014), Inception v1 as in the paper's Table 1 and Figure 3, without the
    two auxiliary classifiers (they only serve training): 7x7/2 CONV-64, 3x3/2 max pool, LRN, 1x1-64 and
    3x3-192 CONVs, LRN, 3x3/2 max pool, Inception 3a-3b, max pool, 4a-4e, max pool, 5a-5b, average
    pooling, 40% dropout, FC; every convolution has a bias and a ReLU, as in the paper: no BN.
    6,998,552 parameters at 1000 classes.  Where it differs from the paper: the max pools round their
    output size up as Caffe's did (112 -> 56 -> 28 -> 14 -> 7 at 224x224), the stem conv down as
    PyTorch's (the paper's sizes; the notes' integer rule has no answer for them), and the final 7x7
    average pool is a global average pool (the same at 224x224; other input sizes keep working)."""
    g = Graph(input_shape, name="googlenet")
    x = g.conv(g.input(), 7, 64, stride=2, pad=3, rounding="floor", name="conv1")
    x = g.relu(x, name="relu1")
    x = g.pool(x, 3, 2, rounding="ceil", name="pool1")
    x = g.lrn(x, 5, name="lrn1")
    x = g.relu(g.conv(x, 1, 64, name="conv2_reduce"), name="relu2_reduce")
    x = g.relu(g.conv(x, 3, 192, name="conv2"), name="relu2")
    x = g.lrn(x, 5, name="lrn2")
    x = g.pool(x, 3, 2, rounding="ceil", name="pool2")
    pools = 2
    for row in GOOGLENET_TABLE1:
        if row == "M":
            pools += 1
            x = g.pool(x, 3, 2, rounding="ceil", name=f"pool{pools}")
        else:
            x = g.inception(x, *row[1:], name=f"inception{row[0]}")
    x = g.dropout(g.gap(x, name="gap"), 0.4, name="dropout")
    g.fc(x, classes, name="fc")
    return g.build(dtype=dtype)


MODELS: dict[str, Callable[..., Net]] = {
    "small": small, "fmnist": fmnist, "lenet5": lenet5, "alexnet": alexnet, "zfnet": zfnet,
    "vgg11": vgg11, "vgg16": vgg16, "cifar-vgg": cifar_vgg,
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet20": resnet20, "resnet56": resnet56,
    "googlenet": googlenet,
}


def get_model(name: str, **kwargs: Any) -> Net:
    """A fresh Net by zoo name, or from a pattern string (anything starting with INPUT)."""
    if name.strip().upper().startswith("INPUT"):
        return net_from_spec(name, name="custom", **{k: v for k, v in kwargs.items() if k == "dtype"})
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}: choose one of {', '.join(MODELS)} or give a pattern "
                       f"like 'INPUT[28x28x1] -> CONV3-8 -> RELU -> POOL2 -> FC-10'")
    return MODELS[name](**kwargs)
