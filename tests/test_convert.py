"""FC -> CONV conversion: the converted net on a larger image equals the original on its crops, for a
chain and for a branching net with a GAP head; what cannot slide is refused, naming the node."""
import numpy as np
import pytest

from gpuconv.convert import fc_to_conv, sliding_crops
from gpuconv.geometry import GeometryError
from gpuconv.graph import Graph
from gpuconv.layers import FC, LocallyConnected
from gpuconv.net import Net
from gpuconv.spec import net_from_spec
from tests.helpers import rel_error


def test_converted_net_equals_original_on_crops(rng):
    # Unpadded convs: a crop then sees exactly the pixels its window sees in the big image.
    net = net_from_spec("INPUT[18x18x3] -> CONV3-8p0 -> RELU -> POOL2 -> CONV3-8p0 -> RELU -> POOL2 "
                        "-> FC-12 -> RELU -> DROPOUT0.5 -> FC-5", dtype=np.float64)
    net.bind("cpu", seed=int(rng.integers(100)))
    big = rng.standard_normal((2, 3, 34, 26))
    conv_net = fc_to_conv(net, (3, 34, 26))
    scores = conv_net.forward(big, train=False)          # (2, 5, 5, 3): one score vector per crop
    assert scores.shape == (2, 5, 5, 3)
    stride = 4                                           # two POOL2 layers before the first FC
    crops = sliding_crops(big, (18, 18), stride)
    assert len(crops) == 15
    for i, j, crop in crops:
        assert rel_error(scores[:, :, i, j], net.forward(crop, train=False)) < 1e-12


def test_conversion_keeps_weights_not_retrained(rng):
    net = net_from_spec("INPUT[8x8x2] -> POOL2 -> FC-4 -> FC-3", dtype=np.float64).bind("cpu", seed=2)
    conv_net = fc_to_conv(net, (2, 8, 8))
    fc1, conv1 = net.layers[1], conv_net.layers[1]
    assert conv1.params["w"].shape == (4, 2, 4, 4)
    np.testing.assert_array_equal(conv1.params["w"].reshape(4, -1), fc1.params["w"])
    x = rng.standard_normal((3, 2, 8, 8))
    assert rel_error(conv_net.forward(x).reshape(3, 3), net.forward(x)) < 1e-12


def _branching_net():
    """Two unpadded 3x3 branches added, a max pool, an Inception-like concat of two 1x1 branches,
    then the usual head: GAP -> FC -> RELU -> FC."""
    g = Graph((3, 12, 12), name="branchy")
    x = g.input()
    a = g.conv(x, 3, 4, pad=0)
    b = g.relu(g.conv(x, 3, 4, pad=0))
    s = g.bn(g.add(a, b, relu=True))
    p = g.pool(s, 2)
    cat = g.concat(g.relu(g.conv(p, 1, 3, pad=0)), g.conv(p, 1, 2, pad=0))
    h = g.relu(g.fc(g.gap(cat), 6))
    g.fc(h, 3)
    return g.build(dtype=np.float64)


def test_branching_net_with_a_gap_head_equals_original_on_crops(rng):
    net = _branching_net().bind("cpu", seed=int(rng.integers(100)))
    for layer in net.layers:      # running statistics off their initial 0/1: the copy must carry them
        if layer.kind == "BATCHNORM":
            layer.running_mean[...] = rng.standard_normal(layer.running_mean.shape)
            layer.running_var[...] = 0.5 + rng.random(layer.running_var.shape)
    big = rng.standard_normal((2, 3, 18, 16))
    conv_net = fc_to_conv(net, (3, 18, 16))
    kinds = [layer.kind for layer in conv_net.layers]
    assert "FC" not in kinds and "GAP" not in kinds and kinds.count("AVGPOOL") == 1
    assert not conv_net.is_chain and conv_net.sources != [(i - 1,) for i in range(len(conv_net.layers))]
    scores = conv_net.forward(big, train=False)
    assert scores.shape == (2, 3, 4, 3)
    crops = sliding_crops(big, (12, 12), 2)      # one POOL2 before the head
    assert len(crops) == 12
    for i, j, crop in crops:
        assert rel_error(scores[:, :, i, j], net.forward(crop, train=False)) < 1e-12


def test_flatten_in_a_graph_disappears(rng):
    g = Graph((2, 6, 6))
    x = g.input()
    g.fc(g.flatten(g.concat(g.conv(x, 3, 4, pad=0), g.conv(x, 3, 2, pad=0))), 3)
    net = g.build(dtype=np.float64).bind("cpu", seed=4)
    conv_net = fc_to_conv(net, (2, 8, 8))
    assert [layer.kind for layer in conv_net.layers][-1] == "CONV" and "FLATTEN" not in \
        [layer.kind for layer in conv_net.layers]
    assert conv_net.layers[-1].params["w"].shape == (3, 6, 4, 4)
    big = rng.standard_normal((1, 2, 8, 8))
    scores = conv_net.forward(big)
    for i, j, crop in sliding_crops(big, (6, 6), 1):
        assert rel_error(scores[:, :, i, j], net.forward(crop)) < 1e-12


def test_what_cannot_slide_is_refused_naming_the_node():
    g = Graph((3, 8, 6))
    g.gap(g.conv(g.input(), 3, 4), name="head_gap")
    net = g.build(classes=3).bind("cpu")
    with pytest.raises(GeometryError, match="head_gap: GAP over a 8x6 volume needs a square window"):
        fc_to_conv(net, (3, 16, 12))
    local = Net([LocallyConnected(3, 1), FC(2)], (2, 4, 4), name="loc").bind("cpu")
    with pytest.raises(GeometryError, match="local1: LOCAL .* cannot slide over a larger image"):
        fc_to_conv(local, (2, 8, 8))
    vec = Net([FC(4), FC(2)], (10,)).bind("cpu")
    with pytest.raises(GeometryError, match="fc1: FC reads a vector"):
        fc_to_conv(vec, (20,))
