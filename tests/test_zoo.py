"""Model zoo shapes and counts, checked against the notes and the papers."""
import math

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
