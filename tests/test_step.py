"""The planned training step (gpuconv.step.TrainStep), eager and as a replayed CUDA graph.

On the emulator ``cuda.capture`` records the step's launches and memsets and the
replay runs exactly those, with the arguments they had at capture (a real graph's
semantics); any other device operation during capture is an error.  So "replaying
the graph gives the same parameters as running every step eagerly" checks that
nothing a step needs is frozen into the graph: the learning rate (cosine schedule:
it changes every step), Adam's bias corrections, the dropout masks, the batch, the
running loss and accuracy totals.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import cuda, device, emu
from gpuconv.layers import Buffers, Layer
from gpuconv.memory import PlannedExecutor, make_plan
from gpuconv.optim import Optimizer, Schedule
from gpuconv.spec import net_from_spec as parse_spec
from gpuconv.step import TrainStep
from gpuconv.zoo import get_model
from tests.helpers import rel_error

# Every kind of layer with device state or per-step scalars: BN (running stats, planned partial
# sums), LRN, max/avg/L2 pooling, a locally connected layer, dropout (new keys every step), FC.
MIXED = ("INPUT[10x10x3] -> CONV3-6p1 -> BN -> LEAKYRELU0.1 -> LRN3 -> POOL2 -> LOCAL3-4p1 -> RELU "
         "-> AVGPOOL2/1 -> L2POOL2/1 -> FC-16 -> RELU -> DROPOUT0.5 -> FC-5")
# D = 1200 >= 1024 inputs into 8 outputs at batch 4: the forward GEMM splits K (planned scratch).
SPLIT_K = "INPUT[20x20x3] -> FC-8 -> RELU -> DROPOUT0.3 -> FC-5"
# GoogLeNet's pattern at toy size: stacked Inception modules (every branch ends in a CONV+RELU that
# the plan lays into its slice of the concat's buffer), a pool between them, GAP, dropout, FC.
INCEPTIONS = ("INPUT[8x8x3] -> CONV3-8 -> RELU -> LRN3 -> INCEPTION(4,4-6,2-4,4) -> INCEPTION(6,4-8,2-4,4) "
              "-> POOL2 -> INCEPTION(4,4-6,2-4,4) -> GAP -> DROPOUT0.4 -> FC-5")

BATCH = 4
STEPS = 4


def _setup(spec: str, xp, optimizer: str, seed: int = 3, precision: str = "fp32", algo: str | None = None) -> tuple:
    """Net, optimizer and executor on the device whose array module is ``xp`` (numpy: the CPU)."""
    net = parse_spec(spec) if spec.startswith("INPUT") else get_model(spec)
    net.set_precision(precision)
    net.set_conv_algo(algo)
    plan = make_plan(net, BATCH, optimizer=optimizer)
    ex = PlannedExecutor(net, plan, device.CPU if xp is np else device.Device("cuda", xp), seed=seed)
    opt = Optimizer(optimizer, 0.01, weight_decay=1e-3,
                    schedule=Schedule("cosine", total_epochs=1)).bind(net, state_buffers=ex.state_views(),
                                                                    hyper=ex.hyper_view())
    opt.steps_per_epoch = STEPS  # the learning rate changes every step
    return net, opt, ex


def _batches(net, classes: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(rng.standard_normal((BATCH, *net.input_shape)).astype(np.float32),
             rng.integers(0, classes, BATCH).astype(np.int32)) for _ in range(STEPS)]


def _train(spec: str, xp, optimizer: str, batches, graph: bool) -> dict:
    net, opt, ex = _setup(spec, xp, optimizer)
    step = TrainStep(net, opt, ex, cuda_graph=graph)
    for x, y in batches:
        step.run(x, y)
    return {"params": device.to_host(net.param_buffer), "loss_sum": float(device.to_host(step.loss_sum)),
            "correct": int(device.to_host(step.correct)), "t": opt.t, "step": net.step,
            "state": [device.to_host(s) for s in opt.state], "eager_steps": step.eager_steps,
            "graph": step.graph}


@pytest.mark.emu
@pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")
@pytest.mark.parametrize("spec,optimizer", [(MIXED, "adam"), (SPLIT_K, "nesterov"), ("small", "rmsprop")])
def test_graph_replay_equals_eager_steps(spec: str, optimizer: str, rng: np.random.Generator) -> None:
    with emu.emulated() as xp:
        net = parse_spec(spec) if spec.startswith("INPUT") else get_model(spec)
        batches = _batches(net, net.output_shape[0], rng)
        eager = _train(spec, xp, optimizer, batches, graph=False)
        replay = _train(spec, xp, optimizer, batches, graph=True)
    assert eager["graph"] is None and eager["eager_steps"] == STEPS
    # Captured on the second step, replayed from then on.
    assert replay["graph"] is not None and replay["eager_steps"] == 1 and replay["graph"].num_nodes > 5
    np.testing.assert_array_equal(replay["params"], eager["params"])
    for a, b in zip(replay["state"], eager["state"]):
        np.testing.assert_array_equal(a, b)
    assert replay["loss_sum"] == eager["loss_sum"] and np.isfinite(eager["loss_sum"])
    assert replay["correct"] == eager["correct"]
    assert (replay["t"], replay["step"]) == (eager["t"], eager["step"]) == (STEPS, STEPS)
    # ... and both are the steps the CPU runs unplanned, with the scalars as arguments.  The
    # kernels round differently from NumPy, and Adam/RMSProp turn a near-zero gradient's
    # rounding into a whole +-lr step (MIXED with Adam: 1.8% of the update's norm), so compare
    # the updates as a whole.  A stale learning rate (the cosine schedule drops it from 0.01 to
    # 0.0015 over the 4 steps), bias correction or dropout mask moves them by far more than 5%.
    params, loss_sum, correct, init = _unplanned_reference(spec, optimizer, batches)
    update = np.linalg.norm(params.astype(np.float64) - init)
    assert np.linalg.norm(eager["params"].astype(np.float64) - params) < 0.05 * update
    assert eager["loss_sum"] == pytest.approx(loss_sum, rel=1e-4)


@pytest.mark.emu
@pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")
def test_a_frozen_step_scalar_would_be_caught(rng: np.random.Generator) -> None:
    """The comparison above can fail: replaying with the learning rate of the captured step
    (what a graph would do if the optimizer passed lr as a kernel argument) differs."""
    with emu.emulated() as xp:
        net = parse_spec(SPLIT_K)
        batches = _batches(net, 5, rng)
        eager = _train(SPLIT_K, xp, "sgd", batches, graph=False)
        net, opt, ex = _setup(SPLIT_K, xp, "sgd")
        step = TrainStep(net, opt, ex, cuda_graph=True)
        for i, (x, y) in enumerate(batches):
            if i >= 2:   # from the first replay on, keep the hyperparameters of the captured step
                opt.t = 1
            step.run(x, y)
        frozen = device.to_host(net.param_buffer)
    assert not np.array_equal(frozen, eager["params"])


@pytest.mark.emu
@pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")
@pytest.mark.parametrize("model,precision,algo", [("small", "fp32", None), ("fmnist", "fp32", None),
                                                  ("lenet5", "fp32", None), ("cifar-vgg", "fp32", None),
                                                  ("cifar-vgg", "tf32", "winograd")])
def test_zoo_training_steps_allocate_nothing(model: str, precision: str, algo: str | None,
                                             rng: np.random.Generator) -> None:
    """The capture fails on any allocation or host-side device operation, so a captured step
    of each model is one that runs entirely in its memory plan (Winograd: its planned workspace)."""
    with emu.emulated() as xp:
        net, opt, ex = _setup(model, xp, "momentum", precision=precision, algo=algo)
        x = rng.standard_normal((BATCH, *net.input_shape)).astype(np.float32)
        step = TrainStep(net, opt, ex, cuda_graph=True)
        step.load(x, rng.integers(0, net.output_shape[0], BATCH).astype(np.int32))
        step.run()
        step.run()
        assert step.graph is not None
        if algo == "winograd":
            assert any("winograd" in name for name in ex.plan.layer_tensors[0]["workspace"].values())


class _Scratchy(Layer):
    """A layer that allocates a temporary in forward: not capturable."""

    kind = "SCRATCHY"

    def forward(self, x, train: bool, buf: Buffers = Buffers()):
        tmp = device.array_module(x).empty(x.shape, dtype=x.dtype)
        return tmp if buf.out is None else buf.out

    def backward(self, dy, buf: Buffers = Buffers()):
        return dy


@pytest.mark.emu
@pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")
def test_capture_refuses_an_allocation_with_a_clear_error() -> None:
    from gpuconv.layers import FC
    from gpuconv.net import Net

    with emu.emulated() as xp:
        a = xp.zeros((4,), dtype=np.float32)
        with pytest.raises(emu.EmulatorError, match="allocating a device array .*CUDA graph"):
            cuda.capture(lambda: xp.empty((4,), dtype=np.float32))
        with pytest.raises(emu.EmulatorError, match="NumPy add"):
            cuda.capture(lambda: a.__iadd__(1))
        with pytest.raises(emu.EmulatorError, match="fill"):
            cuda.capture(lambda: a.fill(0))
        a += 1  # outside a capture: allowed
        net = Net([_Scratchy(), FC(3)], (4,))
        plan = make_plan(net, 2)
        ex = PlannedExecutor(net, plan, device.Device("cuda", xp))
        opt = Optimizer("sgd").bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
        step = TrainStep(net, opt, ex, cuda_graph=True)
        step.load(np.ones((2, 4), np.float32), np.zeros(2, np.int32))
        step.run()                     # eager: fine
        with pytest.raises(emu.EmulatorError, match="allocating a device array"):
            step.run()                 # captured: the temporary is refused


def test_train_step_needs_the_planned_hyper_buffer() -> None:
    net = get_model("small")
    ex = PlannedExecutor(net, make_plan(net, 2, optimizer="sgd"), "cpu")
    opt = Optimizer("sgd").bind(net, state_buffers=ex.state_views())
    with pytest.raises(ValueError, match="hyper=executor.hyper_view"):
        TrainStep(net, opt, ex)


def _unplanned_reference(spec: str, optimizer: str, batches) -> tuple[np.ndarray, float, int, np.ndarray]:
    """The same steps on the CPU with the layers run by hand (no plan, scalars as arguments):
    (params, loss sum, correct count, initial params)."""
    from gpuconv.ops import loss as loss_ops

    ref = (parse_spec(spec) if spec.startswith("INPUT") else get_model(spec)).bind("cpu", seed=3)
    init = ref.param_buffer.copy()
    ropt = Optimizer(optimizer, 0.01, weight_decay=1e-3, schedule=Schedule("cosine", total_epochs=1)).bind(ref)
    ropt.steps_per_epoch = STEPS
    loss_sum, correct = 0.0, 0
    for x, y in batches:
        scores = ref.forward(x, train=True)
        loss, ds = ref.loss_and_grad(scores, y)
        correct += int(loss_ops.accuracy_count(scores, y))
        ref.backward(ds)
        ropt.step()
        ref.step += 1
        loss_sum += float(loss * BATCH)
    return ref.param_buffer, loss_sum, correct, init


def test_cpu_step_equals_the_unplanned_loop(rng: np.random.Generator) -> None:
    """On the CPU a TrainStep runs eagerly (no graph) and matches the layers run by hand."""
    batches = _batches(parse_spec(MIXED), 5, rng)
    net, opt, ex = _setup(MIXED, np, "adam")
    step = TrainStep(net, opt, ex, cuda_graph=True)   # no GPU: eager
    for x, y in batches:
        step.run(x, y)
    assert step.graph is None
    params, loss_sum, correct, _ = _unplanned_reference(MIXED, "adam", batches)
    np.testing.assert_array_equal(net.param_buffer, params)
    assert float(step.loss_sum) == pytest.approx(loss_sum, rel=1e-6)
    assert int(step.correct) == correct


@pytest.mark.gpu
@pytest.mark.parametrize("spec,optimizer", [(MIXED, "adam"), (SPLIT_K, "nesterov")])
def test_gpu_graph_replay_matches_eager_steps(spec: str, optimizer: str, rng: np.random.Generator) -> None:
    """On the device: the captured, replayed step against the eager one (not bit for bit:
    split-K weight gradients accumulate with float atomics, whose order varies)."""
    xp = device.get_device("cuda").xp
    batches = _batches(parse_spec(spec), 5, rng)
    with cuda.capture_stream():
        eager = _train(spec, xp, optimizer, batches, graph=False)
        replay = _train(spec, xp, optimizer, batches, graph=True)
    assert replay["graph"] is not None and replay["eager_steps"] == 1
    assert rel_error(replay["params"], eager["params"]) < 1e-5
    assert replay["loss_sum"] == pytest.approx(eager["loss_sum"], rel=1e-5)
    assert replay["correct"] == eager["correct"]


@pytest.mark.gpu
def test_gpu_training_with_cuda_graph_matches_without(tmp_path) -> None:
    from gpuconv.train import train
    from tests.test_train import _synthetic_cfg

    a = train(_synthetic_cfg(tmp_path / "eager", epochs=1, device="cuda", limit_train=32 * 12))
    b = train(_synthetic_cfg(tmp_path / "graph", epochs=1, device="cuda", limit_train=32 * 12, cuda_graph=True))
    assert rel_error(a.net.param_buffer, b.net.param_buffer) < 1e-4
    assert b.test_accuracy == pytest.approx(a.test_accuracy, abs=0.02)


# ---- one step, three modes: unplanned (ops allocate, scalars as arguments) and planned give the same step

def _unplanned_setup(spec: str, xp, optimizer: str, seed: int = 3) -> tuple:
    net = parse_spec(spec) if spec.startswith("INPUT") else get_model(spec)
    net.bind(device.CPU if xp is np else device.Device("cuda", xp), seed=seed)
    opt = Optimizer(optimizer, 0.01, weight_decay=1e-3, schedule=Schedule("cosine", total_epochs=1)).bind(net)
    opt.steps_per_epoch = STEPS
    return net, opt


def _modes(spec: str, xp, optimizer: str, batches) -> tuple[dict, dict]:
    """(planned, unplanned): params, optimizer state and totals after the same steps."""
    out = []
    for planned in (True, False):
        if planned:
            net, opt, ex = _setup(spec, xp, optimizer)
            step = TrainStep(net, opt, ex)
        else:
            net, opt = _unplanned_setup(spec, xp, optimizer)
            step = TrainStep(net, opt)
        assert step.planned is planned
        for x, y in batches:
            step.run(*((x, y) if planned or xp is np else (xp.asarray(x), xp.asarray(y))))
        out.append({"params": device.to_host(net.param_buffer).copy(), "t": opt.t, "step": net.step,
                    "state": [device.to_host(s).copy() for s in opt.state],
                    "loss_sum": float(device.to_host(step.loss_sum)), "correct": int(device.to_host(step.correct))})
    return out[0], out[1]


@pytest.mark.parametrize("spec,optimizer", [(MIXED, "adam"), (SPLIT_K, "nesterov"), ("lenet5", "rmsprop"),
                                            (INCEPTIONS, "momentum")])
def test_cpu_planned_and_unplanned_steps_are_identical(spec: str, optimizer: str, rng: np.random.Generator) -> None:
    net = parse_spec(spec) if spec.startswith("INPUT") else get_model(spec)
    planned, unplanned = _modes(spec, np, optimizer, _batches(net, net.output_shape[0], rng))
    np.testing.assert_array_equal(planned["params"], unplanned["params"])
    for a, b in zip(planned["state"], unplanned["state"]):
        np.testing.assert_array_equal(a, b)
    assert planned["loss_sum"] == unplanned["loss_sum"] and planned["correct"] == unplanned["correct"]
    assert (planned["t"], planned["step"]) == (unplanned["t"], unplanned["step"]) == (STEPS, STEPS)
    # and the steps did something
    ref = parse_spec(spec) if spec.startswith("INPUT") else get_model(spec)
    assert not np.array_equal(planned["params"], ref.bind("cpu", seed=3).param_buffer)


@pytest.mark.emu
@pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")
@pytest.mark.parametrize("spec,optimizer", [(MIXED, "adam"), (SPLIT_K, "momentum"), (INCEPTIONS, "momentum")])
def test_emulated_planned_and_unplanned_steps_are_identical(spec: str, optimizer: str,
                                                            rng: np.random.Generator) -> None:
    """The same kernels whether the scalars are arguments or read from planned memory, and
    whether the scratch is planned or allocated: the same bits."""
    net = parse_spec(spec)
    batches = _batches(net, net.output_shape[0], rng)
    with emu.emulated() as xp:
        planned, unplanned = _modes(spec, xp, optimizer, batches)
    np.testing.assert_array_equal(planned["params"], unplanned["params"])
    for a, b in zip(planned["state"], unplanned["state"]):
        np.testing.assert_array_equal(a, b)
    assert planned["correct"] == unplanned["correct"]
    assert planned["loss_sum"] == pytest.approx(unplanned["loss_sum"], rel=1e-6)


def _reference_eval(spec: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean softmax cross-entropy of the freshly bound net, in float64 NumPy."""
    ref = (parse_spec(spec) if spec.startswith("INPUT") else get_model(spec)).bind("cpu", seed=3)
    scores = np.concatenate([ref.forward(x[i:i + 3], train=False) for i in range(0, len(x), 3)]).astype(np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(np.mean(scores.argmax(axis=1) == y)), float(-logp[np.arange(len(y)), y].mean())


@pytest.mark.parametrize("spec", [MIXED, "small"])
def test_evaluate_through_the_step_equals_the_reference(spec: str, rng: np.random.Generator) -> None:
    net = parse_spec(spec) if spec.startswith("INPUT") else get_model(spec)
    n = 3 * BATCH + 2   # full planned batches and an unplanned remainder
    x = rng.standard_normal((n, *net.input_shape)).astype(np.float32)
    y = rng.integers(0, net.output_shape[0], n).astype(np.int32)
    want_acc, want_loss = _reference_eval(spec, x, y)
    net, opt, ex = _setup(spec, np, "adam")
    step = TrainStep(net, opt, ex)
    step.loss_sum[...], step.correct[...] = 5.0, 7   # the training totals are not evaluate's
    got_planned = step.evaluate(x, y, batch=1000)     # planned: batches of the plan's size
    assert (float(step.loss_sum), int(step.correct)) == (5.0, 7)
    unet, uopt = _unplanned_setup(spec, np, "adam")
    got_unplanned = TrainStep(unet, uopt).evaluate(x, y, batch=BATCH)
    for acc, loss in (got_planned, got_unplanned):
        assert acc == want_acc
        assert loss == pytest.approx(want_loss, rel=1e-5)
    assert got_planned == got_unplanned   # the same ops on the same batches


def test_an_inference_step_on_an_inference_plan(rng: np.random.Generator) -> None:
    net = get_model("small")
    ex = PlannedExecutor(net, make_plan(net, BATCH, inference=True), "cpu", seed=3)
    step = TrainStep(net, None, ex)
    x = rng.standard_normal((BATCH, *net.input_shape)).astype(np.float32)
    np.testing.assert_array_equal(step.infer(x), get_model("small").bind("cpu", seed=3).forward(x, train=False))
    with pytest.raises(RuntimeError, match="optimizer"):
        step.run()
    with pytest.raises(ValueError, match="PlannedExecutor"):
        TrainStep(get_model("small").bind("cpu"), None, cuda_graph=True)
    with pytest.raises(RuntimeError, match="no planned views"):
        TrainStep(get_model("small").bind("cpu"), None).load(x)
    with pytest.raises(ValueError, match="another net"):
        TrainStep(get_model("small").bind("cpu"), None, ex)
