"""``gpuconv check`` on chains and branching nets: every node gets its real inputs (an ADD both
branches, a CONCAT all of them), the float64 gradient checks pass node by node and through the
whole graph, GPU (here: the kernel emulator) vs NumPy agrees per node, and a wrong kernel result,
a wrong merge gradient or a lost branch gradient makes the check fail at the node that has it."""
import argparse

import numpy as np
import pytest

from gpuconv import check, device, zoo
from gpuconv.graph import Graph
from gpuconv.layers import Add, Concat
from gpuconv.ops import add as add_ops
from gpuconv.ops import concat as concat_ops
from gpuconv.spec import net_from_spec

INCEPTION = ("INPUT[6x6x3] -> CONV3-4 -> BN -> RELU -> INCEPTION(2,2-3,1-2,2) -> RES3-6/2 -> GAP -> FC-3")


def tiny_resnet():
    """resnet20's layout (stem, three stages of basic blocks, projection where the width doubles,
    GAP, FC) at a size the emulator runs in seconds."""
    g = Graph((3, 8, 8), name="tiny-resnet")
    x = g.relu(g.bn(g.conv(g.input(), 3, 4, bias=False)))
    for stage, width in enumerate((4, 6, 8)):
        x = g.basic_block(x, width, 2 if stage else 1)
    return g.build(classes=3)


def by_name(results):
    return {r.name: r for r in results}


@pytest.mark.parametrize("make", [lambda: zoo.resnet20(input_shape=(3, 8, 8)), lambda: net_from_spec(INCEPTION),
                                  lambda: zoo.small()])
def test_cpu_gradient_checks_pass_per_node_and_through_the_graph(make):
    net = make()
    results = check.check_model(net, batch=2, seed=1, device="cpu")
    assert [r.name for r in results] == [layer.name for layer in net.layers] + [check.NET_ROW]
    bad = [(r.name, r.grad_err) for r in results if not r.ok]
    assert not bad, bad
    assert all(r.fwd_err is None and r.bwd_err is None for r in results)  # no GPU: no comparison
    for r, layer, src in zip(results, net.layers, net.sources):
        assert r.reads == tuple(net.node_name(p) for p in src)
    if not net.is_chain:
        merges = [r for r in results if len(r.reads) > 1]
        assert merges and all(r.kind.startswith(("ADD", "CONCAT")) for r in merges)


def test_nodes_get_their_real_inputs(rng):
    """The graph run that feeds the nodes is the net's own forward: same scores as Net.forward."""
    net = net_from_spec(INCEPTION)
    params = check._node_params(net, rng)
    x = rng.standard_normal((2, *net.input_shape)).astype(np.float32)
    values = check._forward_values(net, params, x)
    bound = check._bound(net, device.CPU, np.float32, params)
    np.testing.assert_allclose(values[len(net.layers) - 1], bound.forward(x, train=True), rtol=1e-5, atol=1e-6)
    add = next(i for i, layer in enumerate(net.layers) if layer.kind == "ADD")
    a, b = net.sources[add]
    expected = np.maximum(values[a] + values[b], 0) if net.layers[add].relu else values[a] + values[b]
    np.testing.assert_allclose(values[add], expected, rtol=1e-6)


def test_a_wrong_merge_gradient_fails_at_its_node(monkeypatch):
    backward = Add.backward

    def half_of_one_branch(self, dy, buf=None):
        da, db = backward(self, dy)
        return [da, 0.5 * db]

    monkeypatch.setattr(Add, "backward", half_of_one_branch)
    results = by_name(check.check_model(tiny_resnet(), batch=2, device="cpu", whole_net=False))
    failed = [name for name, r in results.items() if not r.ok]
    assert failed and all(name.endswith(".add") for name in failed), failed


def test_a_wrong_concat_slice_fails_at_its_node(monkeypatch):
    backward = Concat.backward

    def swapped(self, dy, buf=None):
        dxs = backward(self, dy)
        dxs[0] = dxs[0][::-1].copy()  # the first branch gets the other example's slice
        return dxs

    monkeypatch.setattr(Concat, "backward", swapped)
    results = check.check_model(net_from_spec(INCEPTION), batch=2, device="cpu", whole_net=False)
    assert [r.name for r in results if not r.ok] == ["inception1.concat"]


def test_a_lost_branch_gradient_fails_the_whole_net_row(monkeypatch):
    """Each node is right on its own; the net drops the second gradient that reaches a tensor
    read by two nodes (the skip connection's): only the whole-graph check can see that."""
    from gpuconv import net as netmod

    deposit = netmod._deposit

    def keep_first(grads, p, dx, t, out=None):
        if p in grads:
            return
        deposit(grads, p, dx, t, out)

    monkeypatch.setattr(netmod, "_deposit", keep_first)
    results = check.check_model(tiny_resnet(), batch=2, device="cpu")
    assert [r.name for r in results if not r.ok] == [check.NET_ROW]
    assert results[-1].grad_err > 1e-2


def test_check_command_prints_the_branches(capsys):
    args = argparse.Namespace(model=INCEPTION, batch=2, seed=0, device="cpu")
    assert check.check_command(args) == 0
    out = capsys.readouterr().out
    assert "reads" in out and "<- b1.relu1, b2.relu2" in out and check.NET_ROW in out
    assert "all layers agree" in out
    args = argparse.Namespace(model="small", batch=1, seed=0, device="cpu")
    assert check.check_command(args) == 0
    assert "<-" not in capsys.readouterr().out  # a chain: no reads column


def test_bad_batch_is_refused():
    with pytest.raises(ValueError, match="--batch"):
        check.check_model("small", batch=0, device="cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("make", [tiny_resnet, lambda: net_from_spec(INCEPTION)])
def test_device_agrees_with_numpy_per_node(cp, make):
    dev = device.Device("cuda", cp)
    net = make()
    results = check.check_model(net, batch=2, seed=2, device=dev, samples=2)
    bad = [(r.name, r.fwd_err, r.bwd_err, r.grad_err) for r in results if not r.ok]
    assert not bad, bad
    assert all(r.fwd_err is not None and r.bwd_err is not None for r in results)


def _off_add_forward(launch):
    def off(a, b, relu, y):
        launch(a, b, relu, y)
        y += 1e-2
    return off


def _off_concat_backward(launch):
    def off(dy, outs):
        launch(dy, outs)
        outs[-1] += 1e-2   # the last branch's gradient slice
    return off


@pytest.mark.gpu
@pytest.mark.parametrize("op,launcher,wrong,node,column", [
    (add_ops, "add_forward_gpu", _off_add_forward, "res1.add", "fwd_err"),
    (concat_ops, "concat_backward_gpu", _off_concat_backward, "inception1.concat", "bwd_err")])
def test_a_wrong_kernel_result_is_caught(cp, monkeypatch, op, launcher, wrong, node, column):
    """A kernel's result off by 1e-2 on the device: every node is fed the NumPy inputs, so the
    error shows at that node, and at no node after it."""
    monkeypatch.setattr(op, launcher, wrong(getattr(op, launcher)))
    dev = device.Device("cuda", cp)
    results = check.check_model(net_from_spec(INCEPTION), batch=2, seed=2, device=dev, samples=1, whole_net=False)
    failed = [r for r in results if not r.ok]
    assert [r.name for r in failed] == [node] and getattr(failed[0], column) > 1e-4
