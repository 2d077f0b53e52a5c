"""The arena: a valid placement for random nets, and a step in its views computing exactly what the plain net does."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import device, zoo
from gpuconv.layers import FC, LRN, AvgPool, BatchNorm, Conv, Dropout, Flatten, MaxPool, ReLU
from gpuconv.memory import make_plan
from gpuconv.memory.arena import PlanDoesNotFit, PlannedExecutor
from gpuconv.memory.plan import ALIGN
from gpuconv.net import Net
from gpuconv.optim import Optimizer
from gpuconv.step import TrainStep


def random_net(rng: np.random.Generator) -> Net:
    """A random but valid stack: volume layers while the map is large enough, then FCs."""
    c, h = int(rng.integers(1, 4)), int(rng.integers(4, 10))
    shape = (c, h, h)
    layers: list = []
    for _ in range(int(rng.integers(1, 7))):
        k = rng.choice(["conv", "relu", "maxpool", "avgpool", "lrn", "bn", "dropout"])
        if k == "conv":
            layers.append(Conv(int(rng.integers(1, 5)), 3, P=1))
        elif k == "relu":
            layers.append(ReLU(float(rng.choice([0.0, 0.1]))))
        elif k in ("maxpool", "avgpool") and h >= 2 and h % 2 == 0:
            layers.append(MaxPool(2) if k == "maxpool" else AvgPool(2))
            h //= 2
        elif k == "lrn":
            layers.append(LRN(3))
        elif k == "bn":
            layers.append(BatchNorm())
        elif k == "dropout":
            layers.append(Dropout(float(rng.choice([0.0, 0.3]))))
    if rng.random() < 0.5:
        layers.append(Flatten())
    for _ in range(int(rng.integers(0, 3))):
        layers += [FC(int(rng.integers(2, 7)))] + ([ReLU()] if rng.random() < 0.7 else [])
        if rng.random() < 0.3:
            layers.append(Dropout(0.5))
    layers.append(FC(int(rng.integers(2, 5))))
    return Net(layers, shape, name="random")


def check_placement(plan) -> None:
    arena = [t for t in plan.tensors if t.region == "arena" and t.nbytes]
    for t in plan.tensors:
        assert t.offset % ALIGN == 0, t
        limit = plan.arena_bytes if t.region == "arena" else plan.misc_bytes
        assert 0 <= t.offset and t.offset + t.nbytes <= limit, t
    for i, a in enumerate(arena):
        for b in arena[i + 1:]:
            if a.overlaps_in_time(b):
                assert not a.overlaps_in_memory(b), (a, b)
    assert plan.peak_live_bytes <= plan.arena_bytes <= plan.no_reuse_bytes


@pytest.mark.parametrize("seed", range(40))
def test_random_nets_valid_placement(seed: int) -> None:
    rng = np.random.default_rng(seed)
    net = random_net(rng)
    for inference in (False, True):
        check_placement(make_plan(net, int(rng.integers(1, 6)), optimizer="adam", inference=inference))


def test_zoo_placements_valid() -> None:
    for name in ("small", "fmnist", "lenet5", "alexnet", "zfnet", "vgg11", "vgg16", "cifar-vgg"):
        for inference in (False, True):
            check_placement(make_plan(zoo.get_model(name), 3, inference=inference))


def test_dx_and_dy_never_share_memory() -> None:
    # Ops may not support out aliasing their inputs: the gradient a layer writes and the one it reads differ.
    net = zoo.alexnet()
    p = make_plan(net, 2)
    for i, names in enumerate(p.layer_tensors):
        if names["dx"] is None:
            continue
        dx = p.tensor(names["dx"])
        dy = p.tensor("dscores") if i == len(net.layers) - 1 else p.tensor(f"{net.layers[i + 1].name}.dx")
        assert dx is not dy and not dx.overlaps_in_memory(dy), net.layers[i].name


def _reference(name_or_net, seed: int, x: np.ndarray, y: np.ndarray):
    net = name_or_net() if callable(name_or_net) else name_or_net
    net.bind("cpu", seed=seed)
    scores = net.forward(x, train=True)
    loss, d = net.loss_and_grad(scores, y)
    net.backward(d)
    return float(loss), net.grad_buffer.copy()


def _forward_backward(ex: PlannedExecutor, x, y) -> float:
    """One planned training step on (x, y) (the update does not touch the gradients); its loss."""
    opt = Optimizer(ex.plan.optimizer, 0.01).bind(ex.net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    TrainStep(ex.net, opt, ex).run(x, y)
    return float(device.to_host(ex.loss_views()[1]))


def _batch(net: Net, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((b, *net.input_shape)).astype(np.float32)
    y = rng.integers(0, net.output_shape[0], b).astype(np.int32)
    return x, y


@pytest.mark.parametrize("model", ["small", "fmnist", "lenet5"])
@pytest.mark.parametrize("debug", [False, True])
def test_executor_matches_plain_net(model: str, debug: bool, rng: np.random.Generator) -> None:
    net = zoo.get_model(model)
    x, y = _batch(net, 3, rng)
    plan = make_plan(net, 3, optimizer="momentum")
    ex = PlannedExecutor(net, plan, "cpu", seed=7, debug=debug)
    ex.arena is not None and ex.arena.fill(0xFF)  # garbage (NaN bytes) where nothing was written yet
    loss = _forward_backward(ex, x, y)
    ref_loss, ref_grads = _reference(lambda: zoo.get_model(model), 7, x, y)
    assert loss == ref_loss
    np.testing.assert_array_equal(ex.grad_view(), ref_grads)
    assert len(ex.allocations) == (3 if not debug else len(plan.tensors) + len(plan.param_segments))
    assert ex.allocated_bytes == (plan.total_bytes if not debug else ex.allocated_bytes)
    assert [s.shape for s in ex.state_views()] == [(net.num_params,)]
    # params and grads are the planned views, not copies
    assert np.shares_memory(net.param_buffer, ex.param_view()) and np.shares_memory(net.grad_buffer, ex.grad_view())


@pytest.mark.parametrize("seed", range(12))
def test_executor_matches_plain_net_random(seed: int) -> None:
    # Lifetimes are right iff no tensor is overwritten while still needed: the arena run must be bit-identical.
    rng = np.random.default_rng(100 + seed)
    net = random_net(rng)
    b = int(rng.integers(2, 5))
    x, y = _batch(net, b, rng)
    ex = PlannedExecutor(net, make_plan(net, b, optimizer="adam"), "cpu", seed=seed)
    ex.arena.fill(0xFF)
    loss = _forward_backward(ex, x, y)
    ref = Net(random_net(np.random.default_rng(100 + seed)).layers, net.input_shape)
    ref_loss, ref_grads = _reference(ref, seed, x, y)
    assert loss == ref_loss
    np.testing.assert_array_equal(ex.grad_view(), ref_grads)
    # and inference inside the same arena gives the plain net's scores
    ex.net.forward(ex.input_view(), train=False)
    s_ref = ex.net.forward(x, train=False).copy()
    np.testing.assert_array_equal(TrainStep(ex.net, None, ex).infer(x), s_ref)


def test_inference_executor_and_views(rng: np.random.Generator) -> None:
    net = zoo.small()
    plan = make_plan(net, 4, inference=True)
    ex = PlannedExecutor(net, plan, "cpu", seed=3)
    x, _ = _batch(net, 4, rng)
    scores = TrainStep(net, None, ex).infer(x)
    ref = zoo.small().bind("cpu", seed=3)
    np.testing.assert_array_equal(scores, ref.forward(x, train=False))
    with pytest.raises(RuntimeError, match="inference"):
        ex.train_step_buffers()
    assert ex.allocated_bytes == plan.total_bytes
    # every view sits at its planned offset inside the one arena
    base = ex.arena.__array_interface__["data"][0]
    for t in plan.tensors:
        if t.region == "arena" and t.nbytes:
            assert ex.view(t.name).__array_interface__["data"][0] == base + t.offset


def test_plan_does_not_fit_message() -> None:
    net = zoo.lenet5()
    plan = make_plan(net, 64)

    def alloc(xp, n):
        if n == plan.arena_bytes:
            raise MemoryError("out of memory (simulated)")
        return xp.empty(n, dtype=np.uint8)

    ex_cls = PlannedExecutor
    orig = ex_cls._available_bytes
    ex_cls._available_bytes = lambda self: plan.param_store_bytes + plan.arena_bytes // 2
    try:
        with pytest.raises(PlanDoesNotFit) as info:
            PlannedExecutor(net, plan, "cpu", allocator=alloc)
    finally:
        ex_cls._available_bytes = orig
    msg = str(info.value)
    assert "activation arena" in msg and "Largest batch that would fit" in msg and "TOTAL" in msg
    assert info.value.max_batch is not None and 0 < info.value.max_batch < 64
    assert net.param_buffer is None  # nothing bound, nothing lost


def test_plan_for_another_net_is_refused() -> None:
    with pytest.raises(ValueError, match="another net"):
        PlannedExecutor(zoo.small(), make_plan(zoo.lenet5(), 2), "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["small", "lenet5", "alexnet"])
def test_gpu_executor_matches_cpu(model: str, rng: np.random.Generator) -> None:
    net_cpu, net_gpu = zoo.get_model(model), zoo.get_model(model)
    x, y = _batch(net_cpu, 2, rng)
    c = PlannedExecutor(net_cpu, make_plan(net_cpu, 2), "cpu", seed=5)
    g = PlannedExecutor(net_gpu, make_plan(net_gpu, 2), "cuda", seed=5, debug=False)
    lc, lg = _forward_backward(c, x, y), _forward_backward(g, x, y)
    assert abs(lc - lg) <= 1e-4 * max(1.0, abs(lc))
    gc, gg = c.grad_view(), device.to_host(g.grad_view())
    assert np.abs(gc - gg).max() <= 1e-3 * max(np.abs(gc).max(), 1e-6)
    assert len(g.allocations) == 3
