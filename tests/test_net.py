"""The Net: whole-net float64 gradient check, ReLU fusion, flat parameter layout, errors."""
import numpy as np
import pytest

from gpuconv.geometry import GeometryError
from gpuconv.layers import FC, AvgPool, BatchNorm, Conv, Dropout, Flatten, L2Pool, LocallyConnected, LRN, \
    MaxPool, ReLU
from gpuconv.net import Net
from tests.helpers import net_grad_check, rel_error


def _all_layers_net(dtype=np.float64, fuse=True):
    layers = [Conv(4, 3, P=1), ReLU(), BatchNorm(), MaxPool(2), LRN(3), Conv(6, 3, S=1, P=1, dilation=1),
              ReLU(0.1), AvgPool(3, 2), LocallyConnected(3, 1), L2Pool(1, 1), Flatten(), FC(7), ReLU(),
              Dropout(0.3), FC(5)]
    return Net(layers, (2, 10, 10), dtype=dtype, fuse=fuse)


def test_whole_net_gradient_check_float64(rng):
    net = _all_layers_net().bind("cpu", seed=int(rng.integers(1000)))
    net_grad_check(net, rng, rng.standard_normal((3, 2, 10, 10)))


def test_fused_relu_equals_separate_relu(rng):
    a = _all_layers_net(np.float64, fuse=True).bind("cpu", seed=3)
    b = _all_layers_net(np.float64, fuse=False).bind("cpu", seed=3)
    assert a.layers[0].fused_relu and not b.layers[0].fused_relu
    x = rng.standard_normal((2, 2, 10, 10))
    y = np.array([1, 4], dtype=np.int32)
    outs = []
    for net in (a, b):
        s = net.forward(x, train=True)
        _, ds = net.loss_and_grad(s, y)
        outs.append((s, net.backward(ds, input_grad=True), net.grad_buffer.copy()))
    for u, v in zip(*outs):
        assert rel_error(u, v) < 1e-12


def test_flat_layout_weights_first_and_views():
    net = _all_layers_net(np.float32).bind("cpu", seed=0)
    assert net.param_buffer.shape == (net.num_params,)
    decayed = [s for s in net.slots if s.name == "w"]
    assert all(s.offset < net.num_decayed for s in decayed)
    assert all(s.offset >= net.num_decayed for s in net.slots if s.name != "w")
    conv = net.layers[0]
    conv.params["w"][...] = 7.0   # a view: writes land in the flat buffer
    assert np.all(net.param_buffer[:conv.params["w"].size] == 7.0)


def test_geometry_error_names_layer_before_allocation():
    with pytest.raises(GeometryError, match="conv2"):
        Net([Conv(4, 3, P=1), Conv(4, 3, S=2), FC(10)], (3, 10, 10))


def test_net_must_end_in_vector():
    with pytest.raises(GeometryError, match="FC"):
        Net([Conv(4, 3)], (3, 8, 8))


def test_input_checks():
    net = Net([FC(3)], (4,)).bind("cpu")
    with pytest.raises(ValueError, match="per-example shape"):
        net.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        net.forward(np.zeros((2, 4), np.float64))
    with pytest.raises(RuntimeError, match="bind"):
        Net([FC(3)], (4,)).forward(np.zeros((2, 4), np.float32))


def test_bad_hyperparameters():
    with pytest.raises(GeometryError, match="K=0"):
        Conv(0, 3)
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="loss"):
        Net([FC(3)], (4,), loss="hinge2")


def test_state_roundtrip_restores_outputs(rng):
    net = _all_layers_net(np.float32).bind("cpu", seed=1)
    x = rng.standard_normal((2, 2, 10, 10)).astype(np.float32)
    net.forward(x, train=True)  # moves BN running stats
    net.clear = None
    state = net.state_arrays()
    ref = net.forward(x, train=False)
    other = _all_layers_net(np.float32).bind("cpu", seed=99)
    other.load_state_arrays(state)
    assert rel_error(other.forward(x, train=False), ref) == 0.0


def test_svm_loss_net_trains_a_step(rng):
    net = Net([FC(3)], (4,), loss="svm", dtype=np.float64).bind("cpu")
    x = rng.standard_normal((5, 4))
    y = rng.integers(0, 3, 5).astype(np.int32)
    s = net.forward(x, train=True)
    loss, ds = net.loss_and_grad(s, y)
    net.backward(ds)
    assert float(loss) > 0 and np.abs(net.grad_buffer).sum() > 0


def test_copy_into_host_to_same_device_array(rng):
    from gpuconv import device
    dst = np.zeros((3, 4), np.float32)
    src = rng.standard_normal((3, 4))
    device.copy_into(dst, src)
    np.testing.assert_array_equal(dst, src.astype(np.float32))


@pytest.mark.gpu
@pytest.mark.gpu_only  # reads cupy's memory pool
def test_bind_uploads_weights_without_a_temporary_device_copy(cp):
    # cupy_array[...] = numpy_array would upload into a hidden temporary that the pool keeps:
    # memory the plan cannot see.  bind must cost exactly params + grads.
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.total_bytes()
    net = Net([FC(1000)], (4000,)).bind("cuda", seed=0)
    grown = pool.total_bytes() - before
    assert grown <= 2 * net.num_params * 4 + 2 * 1024 * 1024, grown
