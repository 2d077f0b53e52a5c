"""bench/torch_nets.py: the PyTorch twin of a net computes our scores and parameter gradients.

The benchmarks time ours beside the twin and validate our results against it, so the twin
must be the same function with the same parameters: checked here in float64 (agreement to
~1e-10) and float32, in train mode (batch statistics, our dropout masks) and eval mode, on
chains, ResNets, an Inception net and the rounded (floor / ceil) geometries.  Skipped where
torch is not installed (CI's test run has no torch).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bench.torch_nets import copy_params, torch_optimizer, torch_twin, twin_grads, twin_loss, twin_params  # noqa: E402
from gpuconv.graph import Graph  # noqa: E402
from gpuconv.net import Net  # noqa: E402
from gpuconv.optim import Optimizer  # noqa: E402
from gpuconv.zoo import get_model  # noqa: E402

TOL = {np.float64: 1e-9, np.float32: 2e-4}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def small_inception(dtype: Any) -> Net:
    """An Inception module and a residual ADD with projection, LRN, avg pool, a leaky ReLU and
    dropout: every node kind the zoo's graphs use, at a toy size."""
    g = Graph((3, 12, 12), name="tiny-inception")
    x = g.relu(g.conv(g.input(), 3, 8, name="stem"), name="stem_relu")
    x = g.lrn(x, 5, name="lrn")
    y = g.inception(x, 4, 4, 6, 2, 3, 3, name="inc")                     # 16 channels
    z = g.add(g.bn(g.conv(x, 1, 16, bias=False, name="proj"), name="proj_bn"), y, relu=True, name="add")
    z = g.avgpool(z, 3, 1, pad=1, name="avg")
    z = g.relu(g.pool(z, 3, 2, rounding="ceil", name="pool"), 0.1, name="leaky")   # 12 -> 6 (ceil)
    z = g.dropout(g.gap(z, name="gap"), 0.3, name="drop")
    g.fc(z, 5, name="fc")
    return g.build(dtype=dtype)


def rounded_geometry(dtype: Any) -> Net:
    """Strided CONVs and POOLs over even and odd sizes: floor (PyTorch's) and ceil (Caffe's; a CONV
    that rounds up has no PyTorch flag: the twin pads explicitly)."""
    g = Graph((2, 10, 10), name="rounding")
    x = g.conv(g.input(), 3, 4, stride=2, pad=1, rounding="floor", name="c_floor")     # 10 -> 5
    x = g.conv(x, 2, 4, stride=2, pad=0, rounding="ceil", name="c_ceil")               # 5 -> 3
    x = g.relu(x, name="r")
    x = g.pool(x, 1, 2, rounding="ceil", name="p_ceil1")                               # 3 -> 2 (exact)
    x = g.conv(x, 3, 6, pad=2, name="c_pad")                                           # 2 -> 4
    x = g.pool(x, 3, 2, pad=1, rounding="ceil", name="p_ceil2")                        # 4 -> 3
    x = g.pool(x, 2, 2, rounding="floor", name="p_floor")                              # 3 -> 1
    x = g.flatten(x, name="flat")
    g.fc(x, 3, name="fc")
    return g.build(dtype=dtype)


NETS = {
    "resnet20": lambda dt: get_model("resnet20", input_shape=(1, 28, 28), dtype=dt),
    "tiny-inception": small_inception,
    "fmnist": lambda dt: get_model("fmnist", dtype=dt),
    "rounding": rounded_geometry,
}


def compare(net: Net, batch: int = 4, seed: int = 0) -> dict[str, float]:
    """Relative distances of the twin from ours: train-mode scores, loss, parameter gradients and
    BN running statistics after the step, then eval-mode scores."""
    net.bind("cpu", seed=seed)
    net.step = 3   # dropout masks of a later step
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *net.input_shape)).astype(net.dtype)
    y = rng.integers(0, net.output_shape[0], batch).astype(np.int32)
    twin = torch_twin(net, dropout="ours")

    scores = net.forward(x, train=True).copy()
    loss, dscores = net.loss_and_grad(scores, y)
    net.backward(dscores)
    tscores = twin(torch.as_tensor(x))
    tloss = twin_loss(net)(tscores, torch.as_tensor(y, dtype=torch.long))
    tloss.backward()
    out = {"scores": rel(scores, tscores.detach().numpy()),
           "loss": abs(float(loss) - tloss.item()) / abs(tloss.item()),
           "grads": rel(net.grad_buffer, twin_grads(net, twin))}
    bns = [(layer, twin.nodes[layer.name.replace(".", "_")]) for layer in net.layers if layer.kind == "BATCHNORM"]
    if bns:
        out["running"] = max(max(rel(layer.running_mean, bn.running_mean.numpy()),
                                 rel(layer.running_var, bn.running_var.numpy())) for layer, bn in bns)
    twin.eval()
    with torch.no_grad():
        out["eval scores"] = rel(net.forward(x, train=False), twin(torch.as_tensor(x)).numpy())
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(NETS))
def test_twin_scores_and_gradients_agree(name: str, dtype: Any) -> None:
    net = NETS[name](dtype)
    errs = compare(net)
    assert all(v <= TOL[dtype] for v in errs.values()), (name, errs)


def test_twin_keeps_every_parameter_and_the_geometry() -> None:
    net = get_model("resnet20", input_shape=(1, 28, 28)).bind("cpu", seed=1)
    twin = torch_twin(net)
    assert sum(p.numel() for p in twin.parameters()) == net.num_params
    geo = rounded_geometry(np.float32).bind("cpu")
    out = torch_twin(geo)(torch.zeros((2, *geo.input_shape)))
    assert tuple(out.shape) == (2, 3)


def test_a_wrong_parameter_shows() -> None:
    """The comparison can fail: one weight changed on the twin moves its scores and gradients."""
    net = small_inception(np.float64).bind("cpu")
    twin = torch_twin(net, dropout="ours")
    with torch.no_grad():
        twin.nodes["inc_b2_conv2"].inner.weight[:] += 0.5   # one conv of a branch
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape))
    assert rel(net.forward(x, train=True), twin(torch.as_tensor(x)).detach().numpy()) > 1e-3
    copy_params(net, twin)   # copying again restores the twin
    assert rel(net.forward(x, train=True), twin(torch.as_tensor(x)).detach().numpy()) < 1e-12


@pytest.mark.parametrize("kind", ["sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad"])
def test_optimizer_twin_takes_our_steps(kind: str) -> None:
    """Three steps of ours and of the torch optimizer the benchmarks pair it with (weight decay on
    the weights only) leave the same parameters (float64)."""
    net = get_model("INPUT[6x6x2] -> CONV3-4 -> BN -> RELU -> POOL2 -> FC-3", dtype=np.float64).bind("cpu")
    opt = Optimizer(kind, 0.05, weight_decay=0.01).bind(net)
    twin = torch_twin(net)
    topt = torch_optimizer(net, twin, kind, 0.05, weight_decay=0.01)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((4, 2, 6, 6))
        y = rng.integers(0, 3, 4).astype(np.int32)
        scores = net.forward(x, train=True)
        _, d = net.loss_and_grad(scores, y)
        net.backward(d)
        opt.step()
        topt.zero_grad()
        twin_loss(net)(twin(torch.as_tensor(x)), torch.as_tensor(y, dtype=torch.long)).backward()
        topt.step()
    # adaptive steps divide by sqrt(v) + 1e-8: gradients near zero carry rounding differences up
    assert rel(twin_params(net, twin), net.param_buffer) < 1e-7
