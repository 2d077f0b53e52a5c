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


# ---- blocks and branches ------------------------------------------------------------------------

def test_residual_words_build_blocks_with_inferred_projection():
    from gpuconv.spec import Residual
    shape, items = parse("INPUT[32x32x3] -> CONV3-16 -> [RES3-16]*2 -> RES3-32/2 -> BOTTLENECK-8/2 -> GAP -> FC-10")
    assert [type(it).__name__ for it in items] == ["Conv", "Residual", "Residual", "Residual", "Residual",
                                                   "GlobalAvgPool", "FC"]
    assert (items[3].K, items[3].stride) == (32, 2) and items[4].bottleneck
    net = net_from_spec("INPUT[32x32x3] -> CONV3-16 -> [RES3-16]*2 -> RES3-32/2 -> BOTTLENECK-8/2 -> GAP -> FC-10")
    names = [layer.name for layer in net.layers]
    assert "res1.proj" not in names and "res2.proj" not in names  # identity: the shape is kept
    assert "res3.proj" in names and "bottleneck1.proj" in names    # projection: it changes
    adds = [layer for layer in net.layers if layer.kind == "ADD"]
    assert [a.out_shape for a in adds] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (32, 8, 8)]
    assert all(a.relu for a in adds)
    assert isinstance(items[1], Residual)


def test_inception_word_matches_the_builder():
    from gpuconv.graph import Graph
    net = net_from_spec("INPUT[28x28x192] -> INCEPTION(64,96-128,16-32,32) -> GAP -> FC-10")
    g = Graph((192, 28, 28))
    g.inception(g.input(), 64, 96, 128, 16, 32, 32)
    ref = g.build(classes=10)
    assert net.num_params == ref.num_params == (192 * 64 + 64) + (192 * 96 + 96) + (96 * 9 * 128 + 128) + (
        192 * 16 + 16) + (16 * 25 * 32 + 32) + (192 * 32 + 32) + 256 * 10 + 10
    concat = next(layer for layer in net.layers if layer.kind == "CONCAT")
    assert concat.out_shape == (256, 28, 28) and concat.channels == [64, 128, 32, 32]


def test_branch_groups_concat_and_add():
    net = net_from_spec("INPUT[8x8x2] -> CONV3-4 -> { CONV1-3 | POOL3/1p1 -> CONV1-2 | } -> "
                        "{ CONV3-9 -> BN | }+ -> RELU -> GAP -> FC-3")
    concat = next(layer for layer in net.layers if layer.kind == "CONCAT")
    assert concat.channels == [3, 2, 4]  # an empty branch is the identity: the input itself
    add = next(layer for layer in net.layers if layer.kind == "ADD")
    assert add.relu  # the RELU after '{ ... }+' is fused into the add
    assert [net.node_name(p) for p in net.sources[net.layers.index(add)]][1] == "branches1.concat"
    # repetition makes fresh layers in every copy of a group
    net2 = net_from_spec("INPUT[8x8x2] -> CONV3-4 -> [{ CONV3-4 | }+ -> RELU]*3 -> GAP -> FC-3")
    assert sum(1 for layer in net2.layers if layer.kind == "ADD") == 3
    assert len({id(layer) for layer in net2.layers}) == len(net2.layers)


def test_chain_patterns_stay_chains():
    net = net_from_spec("INPUT[28x28x1] -> CONV3-8 -> RELU -> POOL2 -> GAP -> FC-10")
    assert net.is_chain and net.layers[3].out_shape == (8,)


@pytest.mark.parametrize("text,fragment", [
    ("INPUT[28x28x1] -> { CONV3-8 | CONV3-4 | CONV1-2 }+ -> FC-10", "exactly two branches, found 3 at column 19"),
    ("INPUT[28x28x1] -> { CONV3-8 } -> FC-10", "two or more branches separated by '|' at column 19"),
    ("INPUT[28x28x1] -> { | } -> FC-10", "every branch is empty"),
    ("INPUT[28x28x1] -> { CONV3-8 | CONV1-4 -> FC-10", "expected '}' but found end of input at column 47"),
    ("INPUT[28x28x1] -> CONV3-8 -> INCEPTION(1,2-3,4) -> FC-10", "unknown block 'INCEPTION(1,2-3,4)' at column 30"),
    ("INPUT[28x28x1] -> RES3 -> FC-10", "unknown block 'RES3' at column 19"),
    ("INPUT[28x28x1] -> RES3-0 -> FC-10", "must be >= 1 at column 19"),
    ("INPUT[28x28x1] -> | -> FC-10", "found '|' at column 19"),
])
def test_block_errors_point_at_column(text, fragment):
    with pytest.raises(SpecError) as e:
        parse(text)
    assert fragment in str(e.value)


def test_branch_shape_mismatch_names_both_branches_and_the_column():
    from gpuconv.geometry import GeometryError
    with pytest.raises(GeometryError) as e:
        net_from_spec("INPUT[28x28x1] -> CONV3-16 -> { CONV3-8 | }+ -> GAP -> FC-10")
    msg = str(e.value)
    assert "branches1.b1.conv1" in msg and "conv1" in msg and "(8, 28, 28)" in msg and "(16, 28, 28)" in msg
    assert "at column 31" in msg
    with pytest.raises(GeometryError, match="(?s)branches1.b1.conv1.*branches1.b2.pool1.*column 43"):
        net_from_spec("INPUT[2x2x1] -> INCEPTION(1,1-1,1-1,1) -> { CONV1-1 | POOL2 } -> FC-2")
