"""Model zoo shapes and counts, checked against the notes and the papers."""
import math

import numpy as np

import pytest

from gpuconv.layers import FC, Conv, MaxPool
from gpuconv.zoo import MODELS, get_model

# The notes' VGGNet table: (output volume as (C,H,W), activations, weights) per CONV/POOL/FC row.
VGG16_ROWS = [
    ((64, 224, 224), 3_211_264, 1_728), ((64, 224, 224), 3_211_264, 36_864), ((64, 112, 112), 802_816, 0),
    ((128, 112, 112), 1_605_632, 73_728), ((128, 112, 112), 1_605_632, 147_456), ((128, 56, 56), 401_408, 0),
    ((256, 56, 56), 802_816, 294_912), ((256, 56, 56), 802_816, 589_824), ((256, 56, 56), 802_816, 589_824),
    ((256, 28, 28), 200_704, 0),
    ((512, 28, 28), 401_408, 1_179_648), ((512, 28, 28), 401_408, 2_359_296), ((512, 28, 28), 401_408, 2_359_296),
    ((512, 14, 14), 100_352, 0),
    ((512, 14, 14), 100_352, 2_359_296), ((512, 14, 14), 100_352, 2_359_296), ((512, 14, 14), 100_352, 2_359_296),
    ((512, 7, 7), 25_088, 0),
    ((4096,), 4096, 102_760_448), ((4096,), 4096, 16_777_216), ((1000,), 1000, 4_096_000),
]


def test_vgg16_reproduces_the_notes_rows():
    net = get_model("vgg16")
    rows = [(layer.out_shape, math.prod(layer.out_shape), layer.num_weights)
            for layer in net.layers if isinstance(layer, (Conv, MaxPool, FC))]
    assert rows == VGG16_ROWS
    assert net.num_params == 138_357_544
    # The true sum of the notes' rows (input included), not the "24M" the notes print.
    assert 150_528 + sum(r[1] for r in VGG16_ROWS) == 15_237_608


def test_vgg16_summary_prints_rows_and_totals():
    text = get_model("vgg16").summary()
    assert "[224x224x64]" in text and "224*224*64 = 3,211,264" in text
    assert "102,760,448" in text and "138,357,544" in text
    assert "24M" in text  # the footnote about the notes' slip


def test_alexnet_first_volume_is_55x55x96():
    net = get_model("alexnet")
    assert net.input_shape == (3, 227, 227)
    assert net.layers[0].out_shape == (96, 55, 55)
    assert net.layers[-1].out_shape == (1000,)


def test_zfnet_volumes():
    net = get_model("zfnet")
    convs = [layer.out_shape for layer in net.layers if isinstance(layer, Conv)]
    assert convs[0] == (96, 111, 111) and convs[1] == (256, 27, 27) and convs[-1] == (256, 13, 13)


def test_lenet5_on_fashion_mnist_and_classic_input():
    classic = get_model("lenet5")
    assert [layer.out_shape for layer in classic.layers if isinstance(layer, Conv)] == [(6, 28, 28), (16, 10, 10)]
    fm = get_model("lenet5", input_shape=(1, 28, 28))
    assert fm.layers[0].out_shape == (6, 28, 28)
    assert classic.num_params == fm.num_params == 61_706  # LeNet-5 with 10 outputs


def test_fmnist_benchmark_net():
    net = get_model("fmnist")
    assert [type(layer).__name__ for layer in net.layers] == [
        "Conv", "ReLU", "MaxPool", "Conv", "ReLU", "MaxPool", "FC", "ReLU", "Dropout", "FC"]
    # conv5-32: 25*32+32, conv5-64: 25*32*64+64, fc1024: 3136*1024+1024, fc10: 10250
    assert net.num_params == 832 + 51_264 + 3_212_288 + 10_250


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_fuses_relu(name):
    net = get_model(name)
    assert net.output_shape[0] in (10, 1000)
    for prev, layer in zip(net.layers, net.layers[1:]):
        if type(layer).__name__ == "ReLU" and isinstance(prev, (Conv, FC)):
            assert layer.fused and prev.fused_relu


def test_unknown_model_lists_choices():
    with pytest.raises(KeyError, match="vgg16"):
        get_model("resnet9000")


def test_pattern_as_model():
    net = get_model("INPUT[28x28x1] -> CONV3-8 -> RELU -> POOL2 -> FC-10")
    assert net.output_shape == (10,)


# ---- branching nets -----------------------------------------------------------------------------

def _conv(c, k, f, bias=False):
    return c * k * f * f + (k if bias else 0)


def _torchvision_resnet(block, depths):
    """Parameters of torchvision's resnet18/34/50, counted from the architecture (no biases in the
    convs, BN gamma+beta, FC with bias)."""
    n, c = _conv(3, 64, 7) + 2 * 64, 64
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
        for i in range(depth):
            out = width * (4 if block == "bottleneck" else 1)
            if block == "basic":
                n += _conv(c, width, 3) + 2 * width + _conv(width, width, 3) + 2 * width
            else:
                n += _conv(c, width, 1) + _conv(width, width, 3) + _conv(width, out, 1) + 2 * (2 * width + out)
            if i == 0 and (stage > 0 or c != out):
                n += _conv(c, out, 1) + 2 * out
            c = out
    return n + c * 1000 + 1000


def test_resnet_parameter_counts_are_torchvisions():
    assert get_model("resnet18").num_params == 11_689_512 == _torchvision_resnet("basic", [2, 2, 2, 2])
    assert get_model("resnet34").num_params == 21_797_672 == _torchvision_resnet("basic", [3, 4, 6, 3])
    assert get_model("resnet50").num_params == 25_557_032 == _torchvision_resnet("bottleneck", [3, 4, 6, 3])


def test_cifar_resnets_option_b():
    # 6n+2 layers; option A (zero-padded identity) has 269,722 / 853,018; option B adds two projections.
    projections = (_conv(16, 32, 1) + 64) + (_conv(32, 64, 1) + 128)
    assert get_model("resnet20").num_params == 269_722 + projections == 272_474
    assert get_model("resnet56").num_params == 853_018 + projections == 855_770
    net = get_model("resnet20")
    assert sum(1 for layer in net.layers if isinstance(layer, (Conv, FC)) and not layer.name.endswith("proj")) == 20
    assert [layer.out_shape for layer in net.layers if layer.kind == "ADD"][2::3] == [
        (16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_googlenet_is_table_1():
    from gpuconv.zoo import GOOGLENET_TABLE1
    n, c = _conv(3, 64, 7, True) + _conv(64, 64, 1, True) + _conv(64, 192, 3, True), 192
    for row in GOOGLENET_TABLE1:
        if row != "M":
            _, c1, c3r, c3, c5r, c5, pp = row
            n += (_conv(c, c1, 1, True) + _conv(c, c3r, 1, True) + _conv(c3r, c3, 3, True)
                  + _conv(c, c5r, 1, True) + _conv(c5r, c5, 5, True) + _conv(c, pp, 1, True))
            c = c1 + c3 + c5 + pp
    net = get_model("googlenet")
    assert net.num_params == n + 1024 * 1000 + 1000 == 6_998_552
    concats = {layer.name: layer.out_shape for layer in net.layers if layer.kind == "CONCAT"}
    # Table 1's output sizes
    assert concats["inception3a.concat"] == (256, 28, 28) and concats["inception3b.concat"] == (480, 28, 28)
    assert concats["inception4e.concat"] == (832, 14, 14) and concats["inception5b.concat"] == (1024, 7, 7)
    assert not any(layer.kind == "BATCHNORM" for layer in net.layers)


def test_resnet_output_sizes_round_down_as_pytorch():
    net = get_model("resnet18")
    shapes = {layer.name: layer.out_shape for layer in net.layers}
    assert shapes["conv1"] == (64, 112, 112) and shapes["maxpool"] == (64, 56, 56)
    assert shapes["layer2.0.add"] == (128, 28, 28) and shapes["layer4.1.add"] == (512, 7, 7)


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "resnet56", "resnet50"])
def test_resnets_build_on_fashion_mnist(name):
    net = get_model(name, input_shape=(1, 28, 28), classes=10)
    assert net.output_shape == (10,) and not net.is_chain


def test_resnet20_trains_a_step_on_28x28(rng):
    from gpuconv.optim import Optimizer
    net = get_model("resnet20", input_shape=(1, 28, 28), classes=10).bind("cpu", seed=0)
    opt = Optimizer("sgd", 0.05).bind(net)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = np.array([0, 1, 2, 3], np.int32)
    first = None
    for _ in range(3):
        loss, ds = net.loss_and_grad(net.forward(x, train=True), y)
        net.backward(ds)
        opt.step()
        first = float(loss) if first is None else first
    assert np.isfinite(float(loss)) and float(loss) < first
