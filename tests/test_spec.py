"""The notes' layer-pattern language."""
import pytest

from gpuconv.layers import FC, Conv, Dropout, MaxPool, ReLU
from gpuconv.spec import SpecError, net_from_spec, parse


def test_issue_example_expands_repetitions():
    shape, layers = parse("INPUT[32x32x3] -> [[CONV3-64 -> RELU]*2 -> POOL2]*3 -> [FC-512 -> RELU]*1 -> FC-10")
    assert shape == (3, 32, 32)
    kinds = [type(layer) for layer in layers]
    block = [Conv, ReLU, Conv, ReLU, MaxPool]
    assert kinds == block * 3 + [FC, ReLU, FC]
    assert len({id(layer) for layer in layers}) == len(layers), "repetitions must be fresh layers"


def test_shapes_inferred():
    net = net_from_spec("INPUT[32x32x3] -> [[CONV3-64 -> RELU]*2 -> POOL2]*3 -> [FC-512 -> RELU]*1 -> FC-10")
    pools = [layer.out_shape for layer in net.layers if isinstance(layer, MaxPool)]
    assert pools == [(64, 16, 16), (64, 8, 8), (64, 4, 4)]
    assert net.output_shape == (10,)


def test_layer_words():
    _, layers = parse("INPUT[28x28x1] -> CONV5-32/1p2 -> POOL3/2 -> CONV3-8d2 -> DROPOUT0.4 -> FC-10")
    conv, pool, dil, drop, fc = layers
    assert (conv.K, conv.F, conv.S, conv.P) == (32, 5, 1, 2)
    assert (pool.F, pool.S) == (3, 2)
    assert (dil.dilation, dil.P) == (2, 2)  # 'same' padding for a dilated 3x3
    assert isinstance(drop, Dropout) and drop.p == pytest.approx(0.4)
    assert isinstance(fc, FC) and fc.M == 10


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"),
    ("CONV3-8 -> FC-10", "starts with INPUT"),
    ("INPUT[28x28] -> FC-10", "HxWxC"),
    ("INPUT[28x28x1] -> CONV3-8 ->", "expected a layer"),
    ("INPUT[28x28x1] -> [CONV3-8 -> RELU*2 -> FC-10", "found '*' at column 35"),
    ("INPUT[28x28x1] -> [CONV3-8 -> RELU -> FC-10", "expected ']'"),
    ("INPUT[28x28x1] -> [CONV3-8]*0 -> FC-10", ">= 1"),
    ("INPUT[28x28x1] -> BLOB3 -> FC-10", "unknown layer 'BLOB3'"),
    ("INPUT[28x28x1] -> FC-10 ; rm -rf", "unexpected character"),
])
def test_errors_point_at_column(text, fragment):
    with pytest.raises(SpecError) as e:
        parse(text)
    assert fragment in str(e.value)


def test_invalid_geometry_rejected_at_build():
    from gpuconv.geometry import GeometryError
    with pytest.raises(GeometryError, match="W=10"):
        net_from_spec("INPUT[10x10x3] -> CONV3-4/2p0 -> FC-10")
