"""The planner's numbers against hand-computed values, and VGG16 against the notes' table."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gpuconv import zoo
from gpuconv.layers import FC, LRN, BatchNorm, Conv, Dropout, Flatten, MaxPool, ReLU
from gpuconv.memory import STATE_SLOTS, make_plan
from gpuconv.memory.plan import align_up
from gpuconv.net import Net


def tiny() -> Net:
    """INPUT[6x6x1] -> CONV3-4 p1 -> RELU (fused) -> POOL2 -> FC-5."""
    return Net([Conv(4, 3, P=1), ReLU(), MaxPool(2), FC(5)], (1, 6, 6), name="tiny")


# Hand count at batch 2, float32 (4 bytes), every tensor 256-aligned:
#   input 2*1*6*6 = 72 values = 288 B;  conv out 2*4*6*6 = 288 values = 1152 B (relu aliases it)
#   pool out 2*4*3*3 = 72 values = 288 B, switches 72 uint8 = 72 B;  fc out 2*5 = 10 values = 40 B
#   params: conv 4*1*3*3 + 4 = 40, fc 5*36 + 5 = 185 -> 225 values = 900 B -> 1024 B per param-store segment
#   gradients: dscores 40 B, fc.dx 288 B, pool.dx 1152 B; no conv.dx: the first layer skips the
#   data's gradient (nobody needs it), so the plan places none
#   the step's own state (training, misc): loss rows 2*4 = 8 B, loss mean 4 B, running loss sum
#   (float64) 8 B, correct count (int64) 8 B, optimizer scalars 3*4 = 12 B: 5 aligned blocks of 256
PARAMS = 225
SEGMENT = align_up(PARAMS * 4)  # 1024


def test_tiny_net_tensors_and_bytes() -> None:
    p = make_plan(tiny(), 2, optimizer="sgd")
    sizes = {t.name: t.nbytes for t in p.tensors}
    assert sizes == {"conv1.out": 1152, "pool1.out": 288, "fc1.out": 40, "pool1.switches": 72, "dscores": 40,
                     "fc1.dx": 288, "pool1.dx": 1152, "input": 288, "labels": 8, "loss.rows": 8, "loss.mean": 4,
                     "step.loss_sum": 8, "step.correct": 8, "step.hyper": 12}
    assert p.tensor("pool1.switches").dtype == "uint8"
    assert p.tensor("labels").dtype == "int32"
    assert "relu1.out" in p.tensor("conv1.out").aliases   # fused ReLU: no memory of its own
    assert "relu1.dx" in p.tensor("pool1.dx").aliases
    assert p.num_params == PARAMS
    rows = {r.name: r for r in p.rows}
    assert rows["conv1"].activation_bytes == 1152 and rows["conv1"].gradient_bytes == 1152
    assert rows["relu1"].activation_bytes == 0 and rows["relu1"].inplace
    assert rows["pool1"].saved_bytes == 72
    assert rows["fc1"].params == 185 and rows["fc1"].weights == 180


def test_tiny_net_lifetimes() -> None:
    # L = 4 layers: forward steps 0..3, loss at 4, backward of layer i at 7 - i.
    p = make_plan(tiny(), 2)
    life = {t.name: (t.start, t.end) for t in p.tensors}
    assert life["conv1.out"] == (0, 7)      # conv keeps its output (fused ReLU mask) until its backward
    assert life["pool1.out"] == (2, 4)      # FC reads its input in backward (step 4)
    assert life["fc1.out"] == (3, 4)        # the scores: read by the loss at step 4
    assert life["pool1.switches"] == (2, 5)
    assert life["dscores"] == (4, 4)
    assert life["fc1.dx"] == (4, 5)         # written by FC backward, read by pool backward
    assert life["pool1.dx"] == (5, 7)       # passes through the fused ReLU to conv's backward
    assert "conv1.dx" not in life           # the first layer computes no input gradient


@pytest.mark.parametrize("optimizer", list(STATE_SLOTS))
def test_tiny_net_totals_per_optimizer(optimizer: str) -> None:
    p = make_plan(tiny(), 2, optimizer=optimizer)
    slots = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1, "adam": 2}[optimizer]
    assert p.state_slots == slots
    assert p.param_store_bytes == SEGMENT * (2 + slots)         # params + grads + state
    assert p.misc_bytes == 512 + 256 + 5 * 256                  # input 288 B, labels 8 B, the step's state
    # Live bytes peak at step 5: conv1.out 1280 + switches 256 + fc1.dx 512 + pool1.dx 1280 (aligned) = 3328,
    # and the placement reaches that lower bound.
    assert p.peak_live_bytes == 3328
    assert p.arena_bytes == 3328
    assert p.no_reuse_bytes == 1280 + 512 + 256 + 256 + 256 + 512 + 1280
    assert p.total_bytes == SEGMENT * (2 + slots) + 3328 + 768 + 5 * 256
    assert sum(r.optimizer_state_bytes for r in p.rows) == PARAMS * 4 * slots


def test_tiny_net_inference() -> None:
    p = make_plan(tiny(), 2, inference=True)
    life = {t.name: (t.start, t.end) for t in p.tensors}
    # Only current activations: conv1.out dies after pool (step 2), switches are scratch of step 2.
    assert life["conv1.out"] == (0, 2) and life["pool1.out"] == (2, 3) and life["pool1.switches"] == (2, 2)
    assert "dscores" not in life and "labels" not in life
    assert p.param_store_bytes == SEGMENT
    assert p.arena_bytes == 1280 + 512 + 256                    # step 2: conv out + pool out + switches
    assert p.total_bytes == SEGMENT + 2048 + 512
    assert p.training_total_bytes == make_plan(tiny(), 2).total_bytes


def second() -> Net:
    """Unfused ReLU after BN, LRN, pool, flatten, FC, dropout, FC: every kind of saved tensor."""
    return Net([Conv(2, 3, P=1), BatchNorm(), ReLU(), LRN(3), MaxPool(2), Flatten(), FC(3), Dropout(0.5), FC(2)],
               (1, 4, 4), name="second")


def test_second_net_saved_tensors_and_lifetimes() -> None:
    net = second()
    assert not net.layers[0].fused_relu  # BN sits between conv and ReLU
    p = make_plan(net, 3, optimizer="adam")
    L = 9
    bwd = {i: 2 * L - 1 - i for i in range(L)}
    t = {x.name: x for x in p.tensors}
    assert t["batchnorm1.mean"].nbytes == 2 * 4 and t["batchnorm1.invstd"].nbytes == 2 * 4
    assert t["lrn1.scale"].nbytes == 3 * 2 * 4 * 4 * 4
    sw = next(x for x in p.tensors if x.name.endswith(".switches"))
    assert sw.nbytes == 3 * 2 * 2 * 2 and sw.dtype == "uint8"
    mask = t["dropout1.mask"]
    assert mask.nbytes == 3 * 3 and (mask.start, mask.end) == (7, bwd[7])
    assert (t["conv1.out"].start, t["conv1.out"].end) == (0, bwd[1])       # BN keeps its input
    assert (t["relu1.out"].start, t["relu1.out"].end) == (2, bwd[2])       # unfused ReLU keeps its output
    assert (t["lrn1.out"].start, t["lrn1.out"].end) == (3, bwd[3])         # LRN keeps its output (max pool: not x)
    # Flatten aliases the pool output, so FC keeping its input keeps the pool output alive to bwd(6)
    pool_out = p.tensor("flatten1.out")
    assert pool_out.name.endswith(".out") and pool_out.end == bwd[6]
    assert p.param_store_bytes == 4 * align_up(net.num_params * 4)
    inf = make_plan(net, 3, inference=True)
    assert "dropout1.mask" not in {x.name for x in inf.tensors}
    assert inf.tensor("dropout1.out").name == "fc1.out"  # identity at test time: an alias


def test_float64_doubles_float_bytes_not_switches() -> None:
    a, b = make_plan(tiny(), 2), make_plan(tiny(), 2, dtype=np.float64)
    assert b.tensor("conv1.out").nbytes == 2 * a.tensor("conv1.out").nbytes
    assert b.tensor("pool1.switches").nbytes == a.tensor("pool1.switches").nbytes
    assert b.tensor("labels").nbytes == a.tensor("labels").nbytes


# ---------------------------------------------------------------------------------- VGG16 vs the notes

NOTES_VGG16 = [  # (memory per image, weights) of the notes' rows after INPUT
    (224 * 224 * 64, 1728), (224 * 224 * 64, 36864), (112 * 112 * 64, 0),
    (112 * 112 * 128, 73728), (112 * 112 * 128, 147456), (56 * 56 * 128, 0),
    (56 * 56 * 256, 294912), (56 * 56 * 256, 589824), (56 * 56 * 256, 589824), (28 * 28 * 256, 0),
    (28 * 28 * 512, 1179648), (28 * 28 * 512, 2359296), (28 * 28 * 512, 2359296), (14 * 14 * 512, 0),
    (14 * 14 * 512, 2359296), (14 * 14 * 512, 2359296), (14 * 14 * 512, 2359296), (7 * 7 * 512, 0),
    (4096, 102760448), (4096, 16777216), (1000, 4096000)]


def test_vgg16_rows_match_the_notes() -> None:
    p = make_plan(zoo.vgg16(), 1, inference=True)
    rows = [(r.activations_per_example, r.weights) for r in p.rows if r.activations_per_example]
    assert rows == NOTES_VGG16
    assert p.num_params == 138_357_544
    # The notes' rows (input 150,528 included) sum to 15,237,608 values, not the printed "24M".
    assert 224 * 224 * 3 + sum(m for m, _ in NOTES_VGG16) == 15_237_608
    assert p.forward_values_per_example == 15_237_608
    assert p.activation_values_per_example() == 15_237_608
    assert "24M" in p.table() and "15,237,608" in p.table()
    tr = make_plan(zoo.vgg16(), 1)
    assert tr.activation_values_per_example() == 15_237_608 + 2 * 4096  # training keeps the dropout outputs


@pytest.mark.parametrize("model", ["vgg16", "alexnet", "lenet5", "small"])
def test_inference_peak_below_training(model: str) -> None:
    net = zoo.get_model(model)
    tr, inf = make_plan(net, 8, optimizer="momentum"), make_plan(net, 8, inference=True)
    assert inf.arena_bytes < tr.arena_bytes and inf.total_bytes < tr.total_bytes
    assert tr.inference_total_bytes == inf.total_bytes
    assert tr.peak_live_bytes <= tr.arena_bytes <= tr.no_reuse_bytes


def test_vgg16_batch64_numbers() -> None:
    p = make_plan(zoo.vgg16(), 64, optimizer="momentum")
    assert p.param_store_bytes == 3 * align_up(138_357_544 * 4)
    # The two largest activations (224x224x64, 784 MiB at batch 64) plus their gradients set the peak.
    assert p.arena_bytes >= 4 * 64 * 224 * 224 * 64 * 4
    assert p.arena_bytes < 0.6 * p.no_reuse_bytes  # reuse pays off
    d = json.loads(p.to_json())
    assert d["total_bytes"] == p.total_bytes and len(d["rows"]) == len(p.rows)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        make_plan(tiny(), 2, optimizer="lbfgs")
    with pytest.raises(ValueError, match="batch"):
        make_plan(tiny(), 0)


def test_state_slots_match_optimizer() -> None:
    try:
        from gpuconv.optim import STATE_SLOTS as OPT_SLOTS
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"gpuconv.optim not importable yet: {e}")
    assert STATE_SLOTS == OPT_SLOTS


# ---------------------------------------------------------------- the kernels the plan records
@pytest.mark.gpu
@pytest.mark.parametrize("algo", ["gemm", "winograd"])
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_plan_records_the_kernels_that_run(cp, rng, monkeypatch, precision, algo):
    """The plan's KernelChoice per layer and pass is what a training step launches: every
    recorded kernel runs, and every conv/GEMM kernel that runs was recorded (spied launches)."""
    from gpuconv import cuda, device
    from gpuconv.spec import net_from_spec

    # conv2 has C = 32: a GEMM backward-data (fewer channels take the direct kernel); FC-10 after
    net = net_from_spec("INPUT[6x6x3] -> CONV3-32p1 -> RELU -> CONV3-8p1 -> RELU -> FC-10")
    net.set_precision(precision)
    net.set_conv_algo(algo)
    plan = make_plan(net, 2)
    assert [(k.layer, k.pass_) for k in plan.kernels] == [
        ("conv1", "fwd"), ("conv2", "fwd"), ("fc1", "fwd"), ("fc1", "bwdw"), ("fc1", "bwdd"),
        ("conv2", "bwdf"), ("conv2", "bwdd"), ("conv1", "bwdf")]
    assert {k.precision for k in plan.kernels} == {precision}
    conv_variants = {k.variant for k in plan.kernels if k.layer.startswith("conv")}
    assert conv_variants == ({"winograd"} if algo == "winograd" else {"gemm"})
    ws = {t.name: t.nbytes for t in plan.tensors if t.kind == "workspace"}
    for layer in ("conv1", "conv2"):
        recorded = max(k.workspace_bytes for k in plan.kernels if k.layer == layer)
        assert recorded == ws.get(f"{layer}.winograd", 0) and (recorded > 0) == (algo == "winograd")
    assert "Kernels" in plan.kernel_table() and "conv2" in plan.kernel_table()

    launched: list[str] = []
    real = cuda.launch
    monkeypatch.setattr(cuda, "launch", lambda m, f, *a, **k: (launched.append(f), real(m, f, *a, **k))[1])
    net.bind(device.Device("cuda", cp), seed=0)
    x = cp.asarray(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    y = cp.asarray(rng.integers(0, 10, 2).astype(np.int32))
    from gpuconv.ops import conv
    with conv.CONV.recording() as chosen:
        scores = net.forward(x, train=True)
        _, dscores = net.loss_and_grad(scores, y)
        net.backward(dscores)
    recorded = {name for k in plan.kernels for name in k.kernel.split(" + ")}
    ran = {f for f in launched if f.startswith(("conv_", "gemm_", "wino_", "splitk_", "colsum_"))}
    assert recorded == ran
    # the conv selector's choices at run time, in order, are the plan's conv records
    planned = [(k.pass_, k.variant, k.kernel, k.workspace_bytes) for k in plan.kernels if k.layer.startswith("conv")]
    assert [(c.pass_, c.variant, c.kernel, 4 * c.workspace_elems) for c in chosen] == planned
