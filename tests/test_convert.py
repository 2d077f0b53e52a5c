"""FC -> CONV conversion: the converted net on a larger image equals the original on its crops."""
import numpy as np

from gpuconv.convert import fc_to_conv, sliding_crops
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
