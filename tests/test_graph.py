"""Branching nets: the functional builder, float64 gradient checks of whole blocks, a residual
block against explicit loop code, gradient accumulation where a tensor has several readers,
declaration-time errors that name both branches, and chains built either way being the same."""
import numpy as np
import pytest

from gpuconv import emu
from gpuconv.geometry import GeometryError
from gpuconv.graph import Graph
from gpuconv.layers import FC, Add, Conv, MaxPool, ReLU
from gpuconv.net import Net
from tests.helpers import net_grad_check, rel_error


def _stem(g, K=4):
    x = g.input()
    return g.relu(g.bn(g.conv(x, 3, K, bias=False)))


def test_basic_block_gradient_check_float64(rng):
    for stride, K in ((1, 4), (2, 6)):  # identity shortcut, then projection (1x1/2 CONV + BN)
        g = Graph((3, 6, 6))
        g.basic_block(_stem(g), K, stride)
        net = g.build(classes=3, dtype=np.float64).bind("cpu", seed=int(rng.integers(1000)))
        if stride == 2:
            assert any(layer.name.endswith("proj") for layer in net.layers)
        net_grad_check(net, rng, rng.standard_normal((2, 3, 6, 6)))


def test_bottleneck_block_gradient_check_float64(rng):
    g = Graph((3, 6, 6))
    g.bottleneck(_stem(g), 2, 2)  # 1x1-2 -> 3x3-2/2 -> 1x1-8, projection shortcut
    net = g.build(classes=3, dtype=np.float64).bind("cpu", seed=int(rng.integers(1000)))
    assert net.layers[-3].out_shape == (8, 3, 3)
    net_grad_check(net, rng, rng.standard_normal((2, 3, 6, 6)))


def test_inception_module_gradient_check_float64(rng):
    g = Graph((3, 5, 5))
    g.inception(_stem(g), 2, 2, 3, 1, 2, 2)
    net = g.build(classes=3, dtype=np.float64).bind("cpu", seed=int(rng.integers(1000)))
    concat = next(layer for layer in net.layers if layer.kind == "CONCAT")
    assert concat.out_shape == (2 + 3 + 2 + 2, 5, 5)
    net_grad_check(net, rng, rng.standard_normal((2, 3, 5, 5)))


def _conv_loops(x, w, b, pad):
    """Stride-1 convolution, one output at a time (the notes' definition)."""
    n, c, h, wd = x.shape
    k, _, f, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - f + 1, wd + 2 * pad - f + 1
    y = np.zeros((n, k, ho, wo))
    for i in range(n):
        for o in range(k):
            for r in range(ho):
                for s in range(wo):
                    y[i, o, r, s] = np.sum(xp[i, :, r:r + f, s:s + f] * w[o]) + b[o]
    return y


def _conv_loops_backward(x, w, dy, pad):
    n, c, h, wd = x.shape
    k, _, f, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(n):
        for o in range(k):
            for r in range(dy.shape[2]):
                for s in range(dy.shape[3]):
                    dxp[i, :, r:r + f, s:s + f] += w[o] * dy[i, o, r, s]
                    dw[o] += xp[i, :, r:r + f, s:s + f] * dy[i, o, r, s]
    return dxp[:, :, pad:pad + h, pad:pad + wd], dw, dy.sum(axis=(0, 2, 3))


def test_residual_block_against_loop_code(rng):
    # x -> CONV3-C -> RELU -> CONV3-C -> ADD(x, .) -> RELU -> GAP -> FC-3: a block without BN,
    # every step written out below with loops and NumPy.
    g = Graph((2, 4, 4))
    x = g.input()
    y = g.relu(g.conv(x, 3, 2))
    y = g.conv(y, 3, 2)
    g.add(x, y, relu=True)
    net = g.build(classes=3, dtype=np.float64).bind("cpu", seed=5)
    c1, r1, c2, add, gap, fc = net.layers
    assert c1.fused_relu and r1.fused and add.relu
    x0 = rng.standard_normal((2, 2, 4, 4))
    labels = np.array([0, 2], np.int32)
    w1, b1, w2, b2 = c1.params["w"], c1.params["b"] + 0.1, c2.params["w"], c2.params["b"] - 0.1
    c1.params["b"][...], c2.params["b"][...] = b1, b2
    wf, bf = fc.params["w"], fc.params["b"]

    h1 = np.maximum(_conv_loops(x0, w1, b1, 1), 0)
    h2 = _conv_loops(h1, w2, b2, 1)
    z = np.maximum(x0 + h2, 0)
    pooled = z.mean(axis=(2, 3))
    scores = pooled @ wf.T + bf
    scores_net = net.forward(x0, train=True)
    assert rel_error(scores_net, scores) < 1e-12

    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dscores = p.copy()
    dscores[np.arange(2), labels] -= 1
    dscores /= 2
    _, ds = net.loss_and_grad(scores_net, labels)
    assert rel_error(ds, dscores) < 1e-12
    dx_net = net.backward(ds, input_grad=True)

    dwf, dbf = dscores.T @ pooled, dscores.sum(axis=0)
    dz = np.repeat(np.repeat((dscores @ wf)[:, :, None, None], 4, axis=2), 4, axis=3) / 16
    dsum = dz * (z > 0)
    dh1, dw2, db2 = _conv_loops_backward(h1, w2, dsum, 1)
    dh1 = dh1 * (h1 > 0)
    dx_branch, dw1, db1 = _conv_loops_backward(x0, w1, dh1, 1)
    dx = dsum + dx_branch  # x is read by the first conv and by the add: the gradients sum
    for got, want in ((fc.grads["w"], dwf), (fc.grads["b"], dbf), (c2.grads["w"], dw2), (c2.grads["b"], db2),
                      (c1.grads["w"], dw1), (c1.grads["b"], db1), (dx_net, dx)):
        assert rel_error(got, want) < 1e-12


def test_shared_gradient_is_not_overwritten_by_a_fused_relu(rng):
    # a = RELU(CONV(x)) (fused: its backward masks its dy in place) and b = CONV(x) are summed: the
    # ADD hands both the same gradient, so the fused ReLU must not mask b's copy; and x sums three.
    g = Graph((2, 4, 4))
    x = g.input()
    b = g.conv(x, 1, 3)  # declared first, so its backward runs after the fused ReLU's
    a = g.relu(g.conv(x, 3, 3))
    s = g.add(a, b)
    g.add(s, g.conv(x, 3, 3))
    net = g.build(classes=3, dtype=np.float64).bind("cpu", seed=int(rng.integers(1000)))
    assert net.layers[1].fused_relu
    net_grad_check(net, rng, rng.standard_normal((2, 2, 4, 4)))


def test_add_of_a_tensor_with_itself(rng):
    g = Graph((3, 4, 4))
    x = g.input()
    y = g.conv(x, 3, 3)
    g.add(y, y)
    net = g.build(classes=2, dtype=np.float64).bind("cpu", seed=1)
    net_grad_check(net, rng, rng.standard_normal((2, 3, 4, 4)))


def test_relu_not_fused_into_a_conv_with_other_readers():
    g = Graph((3, 4, 4))
    y = g.conv(g.input(), 3, 3)
    r = g.relu(y)
    g.add(y, r)
    net = g.build(classes=2)
    conv, relu = net.layers[0], net.layers[1]
    assert not conv.fused_relu and not relu.fused  # the ADD must see the unrectified conv output


def test_shape_mismatch_names_both_branches_before_allocation():
    g = Graph((3, 8, 8))
    x = g.input()
    a = g.conv(x, 3, 16, name="left")
    b = g.conv(x, 3, 8, stride=2, pad=1, rounding="floor", name="right")
    with pytest.raises(GeometryError) as e:
        g.add(a, b)
    msg = str(e.value)
    assert "left" in msg and "right" in msg and "(16, 8, 8)" in msg and "(8, 4, 4)" in msg
    with pytest.raises(GeometryError) as e:
        g.concat(a, b)
    assert "left" in str(e.value) and "right" in str(e.value)
    # The same check when a Net is declared directly from layers and input names.
    with pytest.raises(GeometryError, match="left.*right|right.*left"):
        Net([Conv(16, 3, P=1, name="left"), Conv(8, 1, name="right"), Add(name="sum"), FC(2)], (3, 8, 8),
            inputs=[["input"], ["input"], ["left", "right"], ["sum"]])


def test_declaration_errors():
    with pytest.raises(GeometryError, match="after it"):
        Net([Add(name="sum"), Conv(3, 3, P=1, name="c"), FC(2)], (3, 4, 4),
            inputs=[["input", "c"], ["input"], ["sum"]])
    with pytest.raises(GeometryError, match="never read"):
        Net([Conv(3, 3, P=1, name="dead"), FC(2, name="fc")], (3, 4, 4), inputs=[["input"], ["input"]])
    with pytest.raises(GeometryError, match="no node"):
        Net([FC(2, name="fc")], (3, 4, 4), inputs=[["nowhere"]])
    with pytest.raises(GeometryError, match="two or more inputs"):
        Net([Add(name="a"), FC(2)], (3, 4, 4), inputs=[["input"], ["a"]])
    g = Graph((3, 4, 4))
    g.conv(g.input(), 3, 3)   # a node nothing reads ...
    g.conv(g.input(), 3, 3)
    with pytest.raises(GeometryError, match="never read"):
        g.build(classes=2, out=None)


def test_chain_built_by_the_graph_is_the_chain(rng):
    chain = Net([Conv(4, 3, P=1), ReLU(), MaxPool(2), FC(5)], (2, 6, 6), dtype=np.float64).bind("cpu", seed=7)
    g = Graph((2, 6, 6))
    y = g.relu(g.conv(g.input(), 3, 4))
    y = g.pool(y, 2)
    g.fc(y, 5)
    net = g.build(dtype=np.float64).bind("cpu", seed=7)
    assert chain.is_chain and net.is_chain
    assert [layer.name for layer in net.layers] == [layer.name for layer in chain.layers]
    x = rng.standard_normal((3, 2, 6, 6))
    labels = np.array([0, 1, 4], np.int32)
    for n in (chain, net):
        s = n.forward(x, train=True)
        _, ds = n.loss_and_grad(s, labels)
        n.backward(ds)
    assert rel_error(net.forward(x), chain.forward(x)) == 0.0
    assert rel_error(net.grad_buffer, chain.grad_buffer) == 0.0


def test_graph_net_trains_on_the_cpu(rng):
    g = Graph((1, 8, 8), name="tiny-resnet")
    y = g.basic_block(_stem(g, 4), 4)
    g.basic_block(y, 8, 2)
    net = g.build(classes=2).bind("cpu", seed=0)
    from gpuconv.optim import Optimizer
    opt = Optimizer("adam", 1e-2).bind(net)
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    labels = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int32)
    losses = []
    for _ in range(30):
        s = net.forward(x, train=True)
        loss, ds = net.loss_and_grad(s, labels)
        net.backward(ds)
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_summary_shows_branches():
    g = Graph((3, 8, 8), name="two-branch")
    x = g.relu(g.conv(g.input(), 3, 4), name="stem")
    g.inception(x, 2, 2, 3, 1, 2, 2)
    text = g.build(classes=5).summary()
    lines = text.splitlines()
    assert "reads" in lines[0]
    row = next(line for line in lines if line.startswith("inception1.concat"))
    assert "<- b1.relu1, b2.relu2, b3.relu2, b4.relu1" in row and "[8x8x9]" in row and "8*8*9 = 576" in row
    row = next(line for line in lines if line.startswith("inception1.b2.conv1"))
    assert "<- stem" in row and "[8x8x2]" in row and "8*8*2 = 128" in row
    assert row.split()[-1] == f"{4 * 2 + 2:,}"  # params of the 1x1 conv: 4*2 weights + 2 biases
    assert "1 CONCAT merge nodes" in text
    # a chain's table has no such column
    chain = Net([Conv(4, 3, P=1), ReLU(), FC(5)], (2, 6, 6))
    assert "reads" not in chain.summary().splitlines()[0]


# ---- the memory plan of a graph -----------------------------------------------------------------

def _tensor_view(plan):
    return sorted((t.name, t.kind, t.shape, t.intervals, t.aliases, t.offset) for t in plan.tensors)


@pytest.mark.parametrize("model", ["small", "lenet5", "fmnist", "alexnet", "cifar-vgg"])
def test_graph_liveness_of_a_chain_is_the_chain_planners(model):
    from gpuconv.memory import make_plan
    from gpuconv.zoo import get_model
    for inference in (False, True):
        chain = make_plan(get_model(model), 8, optimizer="adam", inference=inference)
        net = get_model(model)
        net.is_chain = False  # plan it as a graph that happens to be a chain
        graph = make_plan(net, 8, optimizer="adam", inference=inference)
        assert _tensor_view(graph) == _tensor_view(chain)
        assert graph.arena_bytes == chain.arena_bytes and graph.layer_tensors == chain.layer_tensors


def _skip_net():
    g = Graph((3, 8, 8), name="skip")
    x = g.bn(g.conv(g.input(), 3, 4, bias=False), name="stem")
    y = g.bn(g.conv(g.relu(g.bn(g.conv(x, 3, 4, bias=False))), 3, 4, bias=False))
    g.add(x, y, relu=True, name="sum")
    return g.build(classes=3)


def test_skip_tensor_lives_until_its_readers_backward_is_done():
    from gpuconv.memory import make_plan
    net = _skip_net()
    plan = make_plan(net, 4, optimizer="sgd")
    L = len(net.layers)
    index = {layer.name: i for i, layer in enumerate(net.layers)}
    bwd = lambda i: 2 * L - 1 - i  # noqa: E731
    stem = plan.tensor("stem.out")
    # read by the branch's first CONV (which keeps its input for dW) and by the ADD's forward
    assert stem.intervals == ((index["stem"], bwd(index["conv2"])),)
    # the ADD's gradient goes to both its inputs: one tensor (GAP's dx), read until the later of their
    # backwards; the branch's share (conv2's dx) is accumulated into it in place and ends there
    dsum = plan.tensor("gap.dx")
    assert dsum.intervals == ((bwd(index["gap"]), bwd(index["stem"])),)
    assert plan.tensor("conv2.dx").intervals == ((bwd(index["conv2"]), bwd(index["conv2"])),)
    # placement never lets two tensors alive at once share bytes
    ts = [t for t in plan.tensors if t.region == "arena"]
    for a in ts:
        for b in ts:
            if a is not b and a.overlaps_in_time(b):
                assert not a.overlaps_in_memory(b), (a.name, b.name)


@pytest.mark.parametrize("model,limit", [("resnet50", 0.05), ("googlenet", 0.05)])
def test_graph_placement_near_the_liveness_lower_bound(model, limit):
    from gpuconv.memory import make_plan
    from gpuconv.zoo import get_model
    plan = make_plan(get_model(model), 64, optimizer="momentum")
    assert plan.arena_bytes <= (1 + limit) * plan.peak_live_bytes
    assert plan.arena_bytes < 0.5 * plan.no_reuse_bytes


def _inception_residual_net():
    g = Graph((3, 8, 8), name="incep-res")
    x = g.relu(g.bn(g.conv(g.input(), 3, 8, bias=False)))
    x = g.inception(x, 4, 4, 6, 2, 4, 4)
    g.basic_block(x, 18, 2)
    return g.build(classes=5)


@pytest.mark.parametrize("make", ["resnet20", "inception"])
def test_planned_step_is_bit_identical_to_unplanned(rng, make):
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep
    from gpuconv.zoo import get_model

    def build():
        if make == "resnet20":
            return get_model("resnet20", input_shape=(1, 12, 12), classes=10)
        return _inception_residual_net()

    a, b = build(), build()
    x = rng.standard_normal((8, *a.input_shape)).astype(np.float32)
    y = rng.integers(0, a.output_shape[0], 8).astype(np.int32)
    a.bind("cpu", seed=1)
    unplanned = TrainStep(a, Optimizer("momentum", 0.05).bind(a))
    ex = PlannedExecutor(b, make_plan(b, 8, optimizer="momentum"), "cpu", seed=1)
    opt = Optimizer("momentum", 0.05)
    opt.bind(b, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    planned = TrainStep(b, opt, ex)
    for _ in range(3):
        unplanned.run(x, y)
        planned.run(x, y)
    assert np.array_equal(a.param_buffer, b.param_buffer)
    assert float(np.abs(a.grad_buffer).max()) > 0


BRANCHY = ("INPUT[8x8x3] -> CONV3-8 -> BN -> RELU -> INCEPTION(4,4-6,2-4,4) -> RES3-12/2 "
           "-> { CONV1-12 -> BN | }+ -> RELU -> GAP -> FC-5")


@pytest.mark.emu
@pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")
def test_emulated_graph_steps_planned_unplanned_and_cpu(rng):
    """The merge layers' kernels (add, concat, gap) through the ops' dispatch: the planned and the
    unplanned step on the emulator give the same bits, and agree with the NumPy path."""
    from gpuconv import device
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.optim import Optimizer
    from gpuconv.spec import net_from_spec
    from gpuconv.step import TrainStep

    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 4).astype(np.int32)
    params = {}
    with emu.emulated() as xp:
        dev = device.Device("cuda", xp)
        for mode in ("planned", "unplanned"):
            net = net_from_spec(BRANCHY)
            if mode == "unplanned":
                net.bind(dev, seed=3)
                step = TrainStep(net, Optimizer("momentum", 0.05).bind(net))
                for _ in range(2):
                    step.run(xp.asarray(x), xp.asarray(y))
            else:
                ex = PlannedExecutor(net, make_plan(net, 4, optimizer="momentum"), dev, seed=3)
                opt = Optimizer("momentum", 0.05).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
                step = TrainStep(net, opt, ex)
                for _ in range(2):
                    step.run(x, y)
            params[mode] = device.to_host(net.param_buffer)
    np.testing.assert_array_equal(params["planned"], params["unplanned"])
    cpu = net_from_spec(BRANCHY).bind("cpu", seed=3)
    step = TrainStep(cpu, Optimizer("momentum", 0.05).bind(cpu))
    for _ in range(2):
        step.run(x, y)
    init = net_from_spec(BRANCHY).bind("cpu", seed=3).param_buffer
    update = np.linalg.norm(cpu.param_buffer.astype(np.float64) - init)
    assert np.linalg.norm(params["planned"].astype(np.float64) - cpu.param_buffer) < 1e-4 * update


def test_planned_concat_backward_writes_into_planned_memory(monkeypatch):
    from gpuconv.layers import merge
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep
    outs = []
    real = merge.concat_ops.concat_backward

    def spy(dy, channels, *, out=None, copy=True):
        outs.append(out)
        return real(dy, channels, out=out, copy=copy)

    monkeypatch.setattr(merge.concat_ops, "concat_backward", spy)
    net = _inception_residual_net()
    net.set_concat_grad_views(False)  # every branch gets a planned copy of its slice of dy
    ex = PlannedExecutor(net, make_plan(net, 4, optimizer="sgd"), "cpu")
    opt = Optimizer("sgd", 0.1).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    TrainStep(net, opt, ex).run(np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.int32))
    assert len(outs) == 1 and outs[0] is not None and len(outs[0]) == 4
    assert all(np.shares_memory(o, ex.arena) for o in outs[0])


def test_planned_concat_backward_hands_conv_branches_their_slices(monkeypatch):
    """Zero-copy concat backward (the default): every Inception branch ends in a CONV (+ fused RELU),
    so the concat's backward copies nothing and the plan holds no per-branch gradient (they are
    slices of the concat's dy)."""
    from gpuconv.layers import merge
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep
    calls = []
    real = merge.concat_ops.concat_backward

    def spy(dy, channels, *, out=None, copy=True):
        calls.append((out, copy))
        return real(dy, channels, out=out, copy=copy)

    monkeypatch.setattr(merge.concat_ops, "concat_backward", spy)
    net = _inception_residual_net()
    plan = make_plan(net, 4, optimizer="sgd")
    concat = next(i for i, layer in enumerate(net.layers) if layer.kind == "CONCAT")
    assert plan.layer_tensors[concat]["dxs"] == []
    ex = PlannedExecutor(net, plan, "cpu")
    opt = Optimizer("sgd", 0.1).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    TrainStep(net, opt, ex).run(np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.int32))
    assert calls == [(None, False)]


def test_planned_concat_forward_lays_conv_branches_into_their_slices(monkeypatch):
    """Zero-copy concat forward (the default): each Inception branch's last CONV (its fused RELU
    behind it) writes straight into its channel slice of the concat's buffer, so the plan holds no
    tensor of its own for it, the concat's tensor lives from the first branch output on, and the
    concat's forward copies nothing."""
    from gpuconv.layers import merge
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.ops import _views
    from gpuconv.ops.concat import channel_slices
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep
    net = _inception_residual_net()
    k = next(i for i, layer in enumerate(net.layers) if layer.kind == "CONCAT")
    views = net.concat_output_views()
    assert sorted(c0 for _, c0, _ in views.values()) == [0, 4, 10, 14] and all(v[0] == k for v in views.values())
    assert all(net.layers[q].kind == "CONV" and net.layers[q].fused_relu for q in views)
    L = len(net.layers)
    for inference in (False, True):
        plan = make_plan(net, 4, optimizer="sgd", inference=inference)
        t = plan.tensor(plan.layer_tensors[k]["out"])
        assert t.layer == k and t.start == min(views)
        for q, (_, c0, c1) in views.items():
            assert plan.layer_tensors[q]["out"] == t.name and plan.layer_tensors[q]["out_slice"] == (c0, c1)
            assert plan.tensor(f"{net.layers[q].name}.out") is t
            if not inference:  # a fused ReLU's backward reads the conv's output: the buffer outlives it
                assert t.end >= 2 * L - 1 - q
        ts = [u for u in plan.tensors if u.region == "arena"]
        assert not any(a is not b and a.overlaps_in_time(b) and a.overlaps_in_memory(b) for a in ts for b in ts)
    # with the views off, every branch output is a tensor of its own (and copied)
    off = _inception_residual_net()
    off.set_concat_views(False)
    assert off.concat_output_views() == {}
    plan_off, plan_on = make_plan(off, 4, optimizer="sgd"), make_plan(net, 4, optimizer="sgd")
    assert all(plan_off.layer_tensors[q]["out"] == f"{off.layers[q].name}.out" for q in views)
    assert plan_on.peak_live_bytes < plan_off.peak_live_bytes

    calls = []
    real = merge.concat_ops.concat_forward

    def spy(xs, *, out=None):
        calls.append((list(xs), out))
        return real(xs, out=out)

    monkeypatch.setattr(merge.concat_ops, "concat_forward", spy)
    ex = PlannedExecutor(net, plan_on, "cpu")
    opt = Optimizer("sgd", 0.1).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    TrainStep(net, opt, ex).run(np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.int32))
    (xs, out), = [c for c in calls if len(c[0]) == 4]
    assert out is ex.view(plan_on.layer_tensors[k]["out"])
    assert all(_views.same_view(x, s) for x, s in zip(xs, channel_slices(out, net.layers[k].channels)))


def test_concat_views_only_for_convs_read_by_the_concat_alone():
    g = Graph((3, 6, 6), name="shared-branch")
    x = g.relu(g.conv(g.input(), 3, 4))
    a = g.conv(x, 1, 2)                # read by the concat only: its slice
    b = g.relu(g.conv(x, 1, 3))        # also read by the ADD below: a planned copy
    c = g.pool(x, 3, 1, pad=1)         # not a conv: a planned copy
    y = g.concat(a, b, c)
    g.add(g.conv(y, 1, 3), b)
    net = g.build(classes=3)
    views = net.concat_output_views()
    (q, (k, c0, c1)), = views.items()
    assert net.layers[q].kind == "CONV" and net.layers[q].out_shape[0] == 2 and (c0, c1) == (0, 2)
    from gpuconv.memory import make_plan
    plan = make_plan(net, 2, optimizer="sgd")
    assert [i for i, lt in enumerate(plan.layer_tensors) if lt.get("out_slice")] == [q]


def _concat_of_mixed_branches():
    g = Graph((3, 6, 6), name="mixed")
    x = g.relu(g.conv(g.input(), 3, 4))
    a = g.bn(g.conv(x, 3, 3))          # ends in BN: needs a contiguous gradient (a copy)
    b = g.pool(x, 3, 1, pad=1)         # POOL: a copy
    c = g.conv(x, 1, 2)                # CONV: its slice of dy as is
    g.concat(a, b, c)
    return g.build(classes=3)


def test_planned_concat_backward_copies_for_the_other_branches(rng, monkeypatch):
    from gpuconv.layers import merge
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep
    copies = []
    real = merge.concat_ops.concat_forward

    def spy(xs, *, out=None):
        copies.append(out)
        return real(xs, out=out)

    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 4).astype(np.int32)
    a, b = _concat_of_mixed_branches(), _concat_of_mixed_branches()
    a.set_concat_grad_views(True)
    b.set_concat_grad_views(True)
    a.bind("cpu", seed=2)
    TrainStep(a, Optimizer("sgd", 0.1).bind(a)).run(x, y)
    monkeypatch.setattr(merge.concat_ops, "concat_forward", spy)
    plan = make_plan(b, 4, optimizer="sgd")
    concat = next(i for i, layer in enumerate(b.layers) if layer.kind == "CONCAT")
    assert len(plan.layer_tensors[concat]["dxs"]) == 2
    ex = PlannedExecutor(b, plan, "cpu", seed=2)
    opt = Optimizer("sgd", 0.1).bind(b, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    TrainStep(b, opt, ex).run(x, y)
    backward_copies = [o for o in copies if o is not None and o.ndim == 4 and o.shape[1] in (3, 4)]
    assert len(backward_copies) == 2 and all(np.shares_memory(o, ex.arena) for o in backward_copies)
    assert np.array_equal(a.param_buffer, b.param_buffer)  # planned == unplanned, bit for bit


def _shared_gradient_net():
    g = Graph((2, 6, 6), name="shared")
    x = g.input()
    b = g.conv(x, 1, 3)
    a = g.relu(g.conv(x, 3, 3))       # fused: its backward masks a dy that the ADD shares with b
    s = g.add(a, b)
    c = g.conv(s, 3, 3)
    g.add(c, c)                       # both inputs one tensor: the sum needs memory of its own
    return g.build(classes=3)


def test_planned_copies_and_sums_of_shared_gradients(rng, monkeypatch):
    from gpuconv import net as netmod
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep
    a, b = _shared_gradient_net(), _shared_gradient_net()
    plan = make_plan(b, 4, optimizer="sgd")
    ws = {k for lt in plan.layer_tensors for k in lt["workspace"]}
    assert "dy_copy" in ws and "gradsum1" in ws
    outs = []
    real_add, real_concat = netmod.add_forward, netmod.concat_forward
    monkeypatch.setattr(netmod, "add_forward", lambda x, y, out=None: outs.append(out) or real_add(x, y, out=out))
    monkeypatch.setattr(netmod, "concat_forward", lambda xs, out=None: outs.append(out) or real_concat(xs, out=out))
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 4).astype(np.int32)
    a.bind("cpu", seed=2)
    unplanned = TrainStep(a, Optimizer("sgd", 0.1).bind(a))
    unplanned.run(x, y)
    assert outs == [None, None]  # unplanned: both allocate
    ex = PlannedExecutor(b, plan, "cpu", seed=2)
    opt = Optimizer("sgd", 0.1).bind(b, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    TrainStep(b, opt, ex).run(x, y)
    assert len(outs) == 4 and all(np.shares_memory(o, ex.arena) for o in outs[2:])
    assert np.array_equal(a.param_buffer, b.param_buffer)


CAPTURABLE = ("INPUT[8x8x3] -> CONV3-8 -> BN -> RELU -> INCEPTION(4,4-6,2-4,4) -> RES3-18 "
              "-> { CONV1-18 -> BN | }+ -> RELU -> { CONV3-18 -> RELU | }+ -> GAP -> FC-5")


def _assert_capture_replays_as_eager(build, x, y, optimizer, lr):
    """On the emulator: 3 planned steps of ``build()``, eager and with the step captured as a
    graph (the first step eager, then replays), give the same bits."""
    from gpuconv import device
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep

    out = {}
    with emu.emulated() as xp:
        dev = device.Device("cuda", xp)
        for graph in (False, True):
            net = build()
            ex = PlannedExecutor(net, make_plan(net, x.shape[0], optimizer=optimizer), dev, seed=3)
            opt = Optimizer(optimizer, lr).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
            step = TrainStep(net, opt, ex, cuda_graph=graph)
            for _ in range(3):
                step.run(x, y)
            out[graph] = (device.to_host(net.param_buffer), step.graph, step.eager_steps)
    assert out[True][1] is not None and out[True][2] == 1 and out[False][1] is None
    np.testing.assert_array_equal(out[True][0], out[False][0])


@pytest.mark.emu
@pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")
def test_emulated_capture_of_a_branching_step_replays_as_eager(rng):
    """Concat, add (with a shared dy copied for a fused ReLU), GAP and accumulation all run in
    planned memory as kernel launches, so the step captures; replays give the eager bits."""
    from gpuconv.spec import net_from_spec

    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 4).astype(np.int32)
    _assert_capture_replays_as_eager(lambda: net_from_spec(CAPTURABLE), x, y, "adam", 0.01)


def _ceil_pool_inception_net():
    """GoogLeNet's pattern at toy size: a stem, a 3x3/2 max pool rounding up (12 -> 6, where floor
    gives 5), an Inception module, a floor-rounded strided conv, GAP, FC."""
    g = Graph((3, 12, 12), name="inception_ceil")
    x = g.relu(g.conv(g.input(), 3, 8))
    x = g.pool(x, 3, 2, rounding="ceil")
    assert x.shape == (8, 6, 6)
    x = g.inception(x, 4, 4, 6, 2, 4, 4)
    x = g.relu(g.conv(x, 3, 8, stride=2, pad=1, rounding="floor"))   # 6 -> 3
    g.gap(x)
    return g.build(classes=5)


@pytest.mark.emu
@pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")
@pytest.mark.parametrize("make", ["resnet20", "inception_ceil"])
def test_emulated_capture_of_rounded_nets_replays_as_eager(rng, make):
    """Rounded CONV and max POOL (floor: ResNet's strided 3x3 and 1x1 projections; ceil: GoogLeNet's
    pools) are single kernel launches on the rounded output size, with no padded copy, so the
    planned step captures; the replays give the eager bits."""
    from gpuconv.zoo import get_model

    def build():
        if make == "resnet20":
            return get_model("resnet20", input_shape=(3, 8, 8), classes=5)
        return _ceil_pool_inception_net()

    probe = build()
    rounded = [layer for layer in probe.layers if getattr(layer, "rounding", "exact") != "exact"]
    assert rounded and not all(layer.exact for layer in rounded)
    x = rng.standard_normal((2, *probe.input_shape)).astype(np.float32)
    y = rng.integers(0, 5, 2).astype(np.int32)
    _assert_capture_replays_as_eager(build, x, y, "momentum", 0.05)


@pytest.mark.parametrize("views", [False, True])
def test_zero_copy_concat_backward_planned_is_unplanned_and_the_copies(rng, views):
    """With the branches writing into their slices of the concat's buffer and the concat's
    gradient slices handed to them, the planned step is still bit-identical to the unplanned one,
    and both to the step that copies the slices."""
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep
    nets = [_inception_residual_net() for _ in range(3)]
    for n in nets[:2]:
        n.set_concat_grad_views(views)
        n.set_concat_views(views)
    nets[2].set_concat_grad_views(False)
    nets[2].set_concat_views(False)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 4).astype(np.int32)
    unplanned, planned, copies = nets
    unplanned.bind("cpu", seed=1)
    copies.bind("cpu", seed=1)
    steps = [TrainStep(unplanned, Optimizer("momentum", 0.05).bind(unplanned)),
             TrainStep(copies, Optimizer("momentum", 0.05).bind(copies))]
    ex = PlannedExecutor(planned, make_plan(planned, 4, optimizer="momentum"), "cpu", seed=1)
    opt = Optimizer("momentum", 0.05).bind(planned, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    steps.append(TrainStep(planned, opt, ex))
    for _ in range(3):
        for s in steps:
            s.run(x, y)
    assert np.array_equal(unplanned.param_buffer, planned.param_buffer)
    assert np.array_equal(unplanned.param_buffer, copies.param_buffer)


def _emulated_steps(make_net, setup, modes, x, y, monkeypatch, *, seed, steps=1):
    """On the emulator, per mode: ``steps`` momentum steps of ``make_net()`` (``setup(net, mode)``
    sets its switches), planned where the mode is "planned", else unplanned.  Returns the
    parameters and the kernels launched, per mode."""
    from gpuconv import cuda, device
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep

    params, launched = {}, {}
    with emu.emulated() as xp:
        dev = device.Device("cuda", xp)
        real = cuda.launch
        for mode in modes:
            names: list[str] = []
            monkeypatch.setattr(cuda, "launch", lambda m, f, *a, **k: (names.append(f), real(m, f, *a, **k))[1])
            net = make_net()
            setup(net, mode)
            if mode == "planned":
                ex = PlannedExecutor(net, make_plan(net, x.shape[0], optimizer="momentum"), dev, seed=seed)
                opt = Optimizer("momentum", 0.05).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
                step, xb, yb = TrainStep(net, opt, ex), x, y
            else:
                net.bind(dev, seed=seed)
                step, xb, yb = TrainStep(net, Optimizer("momentum", 0.05).bind(net)), xp.asarray(x), xp.asarray(y)
            for _ in range(steps):
                step.run(xb, yb)
            params[mode], launched[mode] = device.to_host(net.param_buffer), names
    return params, launched


@pytest.mark.emu
@pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")
def test_emulated_zero_copy_concat_backward(rng, monkeypatch):
    """The conv kernels writing their outputs into and reading their gradient slices of the
    concat's buffers in place (emulator): planned == unplanned, and both == the step that copies
    the slices, bit for bit.  The planned concat launches no copy in either direction; the
    unplanned forward still copies each branch."""
    from gpuconv.spec import net_from_spec

    def views(net, mode):
        net.set_concat_grad_views(mode != "copies")
        net.set_concat_views(mode != "copies")

    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 4).astype(np.int32)
    params, launched = _emulated_steps(lambda: net_from_spec(BRANCHY), views, ("planned", "unplanned", "copies"),
                                       x, y, monkeypatch, seed=3, steps=2)
    np.testing.assert_array_equal(params["planned"], params["unplanned"])
    np.testing.assert_array_equal(params["planned"], params["copies"])
    copies = {mode: names.count("concat_copy_f32") for mode, names in launched.items()}
    branches, steps = 4, 2  # every branch of BRANCHY's Inception module ends in a CONV (+ RELU)
    assert copies["planned"] == 0
    assert copies["unplanned"] == branches * steps                # forward only
    assert copies["copies"] == 2 * branches * steps               # forward and backward


def _residual_net_without_bn():
    """Residual blocks whose second CONV feeds the ADD directly (no BN between): the ADD can run
    that conv with the skip tensor as its epilogue's residual.  The second block's ADD has a
    projection CONV on the shortcut and the main-path CONV as inputs."""
    g = Graph((3, 8, 8), name="res-nobn")
    x = g.relu(g.conv(g.input(), 3, 4))
    y = g.conv(g.relu(g.conv(x, 3, 4)), 3, 4)
    x = g.add(y, x, relu=True)
    y = g.conv(g.relu(g.conv(x, 3, 6, stride=2, rounding="floor")), 3, 6)
    x = g.add(y, g.conv(x, 1, 6, stride=2, rounding="floor"), relu=True)
    g.add(g.conv(x, 1, 6), x)           # no ReLU after the sum
    return g.build(classes=4)


def test_residual_fusions_are_found():
    net = _residual_net_without_bn()
    assert net.residual_fusions() == {}
    net.set_fuse_residual(True)
    fused = net.residual_fusions()
    adds = [i for i, layer in enumerate(net.layers) if layer.kind == "ADD"]
    assert sorted(fused.values()) == adds and all(net.layers[p].kind == "CONV" for p in fused)
    from gpuconv.memory import make_plan
    plan = make_plan(net, 4, optimizer="sgd")  # a fused conv writes into its ADD's output
    assert all(plan.layer_tensors[p]["out"] is None for p in fused)
    assert all(plan.layer_tensors[i]["out"] is not None for i in adds)


@pytest.mark.parametrize("train", [True, False])
def test_fused_residual_step_planned_is_unplanned_and_unfused(rng, train):
    """The ADDs running their conv with the residual in the epilogue: planned == unplanned, and
    both == the unfused net, bit for bit (training steps, or inference scores)."""
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 4).astype(np.int32)
    unplanned, planned, unfused = (_residual_net_without_bn() for _ in range(3))
    for n in (unplanned, planned):
        n.set_fuse_residual(True)
    unplanned.bind("cpu", seed=4)
    unfused.bind("cpu", seed=4)
    if not train:
        ex = PlannedExecutor(planned, make_plan(planned, 4, inference=True), "cpu", seed=4)
        want = unfused.forward(x)
        assert np.array_equal(unplanned.forward(x), want)
        ex.input_view()[...] = x
        assert np.array_equal(planned.forward(ex.input_view(), train=False, buffers=ex.inference_buffers()), want)
        return
    steps = [TrainStep(n, Optimizer("momentum", 0.05).bind(n)) for n in (unplanned, unfused)]
    ex = PlannedExecutor(planned, make_plan(planned, 4, optimizer="momentum"), "cpu", seed=4)
    opt = Optimizer("momentum", 0.05).bind(planned, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    steps.append(TrainStep(planned, opt, ex))
    for _ in range(3):
        for s in steps:
            s.run(x, y)
    assert np.array_equal(unplanned.param_buffer, unfused.param_buffer)
    assert np.array_equal(planned.param_buffer, unfused.param_buffer)
    assert float(np.abs(planned.grad_buffer).max()) > 0


@pytest.mark.emu
@pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")
def test_emulated_fused_residual_steps(rng, monkeypatch):
    """On the emulator: the fused nets' ADDs launch no add kernel in forward (the backward's
    gradient sums still do), and the planned and unplanned fused steps give the bits of the
    unfused one."""
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 2).astype(np.int32)
    params, launched = _emulated_steps(_residual_net_without_bn,
                                       lambda net, mode: net.set_fuse_residual(mode != "unfused"),
                                       ("planned", "unplanned", "unfused"), x, y, monkeypatch, seed=5)
    np.testing.assert_array_equal(params["planned"], params["unplanned"])
    np.testing.assert_array_equal(params["planned"], params["unfused"])
    adds = sum(layer.kind == "ADD" for layer in _residual_net_without_bn().layers)  # one add launch each
    count = {mode: names.count("add_fwd_f32") for mode, names in launched.items()}  # (+ gradient sums)
    assert count["planned"] == count["unplanned"] == count["unfused"] - adds
