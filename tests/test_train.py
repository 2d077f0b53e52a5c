"""Training end to end on the CPU: real Fashion-MNIST, exact resume, NaN stop, CLI."""
import json
import os

import numpy as np
import pytest

from gpuconv import cli, data
from gpuconv.checkpoint import load_checkpoint
from gpuconv.train import TrainConfig, TrainingDiverged, train


def _have_fashion_mnist() -> bool:
    try:
        data.find_data_dir("fashion-mnist")
        return True
    except data.DataError:
        if os.environ.get("GPUCONV_REQUIRE_DATA"):
            raise
        return False


needs_data = pytest.mark.skipif(not _have_fashion_mnist(), reason="Fashion-MNIST not installed")


@needs_data
def test_tiny_net_learns_real_fashion_mnist_subset(tmp_path):
    cfg = TrainConfig(model="INPUT[28x28x1] -> CONV3-8 -> RELU -> POOL2 -> FC-10", epochs=2, batch_size=64,
                      limit_train=3000, limit_test=1000, out_dir=str(tmp_path), device="cpu", log_every=10)
    result = train(cfg)
    assert result.test_accuracy > 0.70, result.history   # chance is 0.10
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]


def _synthetic_cfg(tmp_path, **kw):
    base = dict(model="INPUT[32x32x3] -> CONV4-4/2p1 -> RELU -> POOL2 -> FC-16 -> RELU -> DROPOUT0.3 -> FC-10",
                dataset="synthetic", epochs=2, batch_size=32, limit_train=256, limit_test=64, device="cpu",
                out_dir=str(tmp_path), optimizer="adam", log_every=3)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    full = train(_synthetic_cfg(tmp_path / "full"))
    first = train(_synthetic_cfg(tmp_path / "split", epochs=1))
    assert first.epochs_done == 1
    resumed = train(_synthetic_cfg(tmp_path / "split", epochs=2, resume=True))
    a, _ = load_checkpoint(tmp_path / "full" / "checkpoint.npz")
    b, meta = load_checkpoint(tmp_path / "split" / "checkpoint.npz")
    np.testing.assert_array_equal(a["params"], b["params"])
    np.testing.assert_array_equal(a["opt.state1"], b["opt.state1"])
    assert meta["epoch"] == 2 and resumed.test_accuracy == full.test_accuracy


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, recwarn):
    from gpuconv.checkpoint import save_checkpoint
    train(_synthetic_cfg(tmp_path, epochs=1, optimizer="sgd", lr=0.01))
    # Make the saved parameters blow up the next epoch's loss (the run's own settings, resumed).
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    arrays["params"] = arrays["params"] * np.float32(1e30)
    save_checkpoint(tmp_path / "checkpoint.npz", arrays, meta)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(TrainingDiverged, match=r"The last good checkpoint, .*checkpoint.npz \(end of epoch 1\), is kept"):
        train(_synthetic_cfg(tmp_path, epochs=3, optimizer="sgd", lr=0.01, resume=True))
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in recwarn]


def test_nan_loss_without_a_checkpoint_says_there_is_none(tmp_path, recwarn):
    with pytest.raises(TrainingDiverged, match="No checkpoint was saved") as e:
        train(_synthetic_cfg(tmp_path, epochs=1, optimizer="sgd", lr=1e30))
    assert "last good checkpoint" not in str(e.value)
    assert not (tmp_path / "checkpoint.npz").exists()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in recwarn]


def test_resume_refuses_another_model(tmp_path):
    train(_synthetic_cfg(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="--model: the run has"):
        train(_synthetic_cfg(tmp_path, model="INPUT[32x32x3] -> FC-10", resume=True))


def test_cli_summary_and_errors(capsys):
    assert cli.main(["summary", "INPUT[10x10x3] -> CONV3-4/2p0 -> FC-10"]) == 2
    assert "W=10" in capsys.readouterr().err
    assert cli.main(["summary", "lenet5"]) == 0
    assert "61,706" in capsys.readouterr().out


def test_cli_train_synthetic(tmp_path, capsys):
    rc = cli.main(["train", "--dataset", "synthetic", "--model", "INPUT[32x32x3] -> POOL4 -> FC-10",
                   "--epochs", "1", "--limit-train", "128", "--limit-test", "64", "--out", str(tmp_path),
                   "--device", "cpu"])
    assert rc == 0
    assert "test accuracy" in capsys.readouterr().out


def test_cli_train_missing_data_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--device", "cpu"])
    assert rc == 2
    assert "nowhere" in capsys.readouterr().err


def test_planned_arena_run_equals_unplanned_run(tmp_path):
    # 256 images / batch 32: no partial batch, so both runs see identical batches.
    a = train(_synthetic_cfg(tmp_path / "planned", epochs=1))
    b = train(_synthetic_cfg(tmp_path / "unplanned", epochs=1, planned=False))
    np.testing.assert_array_equal(a.net.param_buffer, b.net.param_buffer)
    assert a.test_accuracy == b.test_accuracy


@pytest.mark.gpu
def test_gpu_training_syncs_only_at_log_points(tmp_path):
    from gpuconv import device

    cfg = _synthetic_cfg(tmp_path, epochs=1, device="cuda", limit_train=32 * 20, log_every=5)
    before = device.SYNCS.count
    train(cfg)
    syncs = device.SYNCS.count - before
    # 20 steps / log_every 5 = 4 progress syncs x 2 scalars, + evaluation's 2 scalars,
    # + the checkpoint's host copies (params, 2 Adam states, BN-free net).
    assert syncs <= 4 * 2 + 2 + 3, syncs


@pytest.mark.gpu
def test_gpu_training_matches_cpu_training(tmp_path):
    a = train(_synthetic_cfg(tmp_path / "cpu", epochs=1, optimizer="sgd", lr=0.05))
    b = train(_synthetic_cfg(tmp_path / "gpu", epochs=1, optimizer="sgd", lr=0.05, device="cuda"))
    from tests.helpers import rel_error
    assert rel_error(a.net.param_buffer, b.net.param_buffer) < 1e-3


def test_progress_accuracy_is_counted_before_backward_reuses_scores(tmp_path):
    import io
    stream = io.StringIO()
    train(_synthetic_cfg(tmp_path, epochs=2, limit_train=512), stream=stream)
    # Synthetic classes are easy: the epoch-2 progress line must show a high train accuracy.
    last = [line for line in stream.getvalue().replace("\r", "\n").splitlines() if line.startswith("epoch 2/2 ")]
    acc = float(last[-1].split(" acc ")[1].split("%")[0])
    assert acc > 20.0, last[-1]  # chance is 10%; the bug this guards against read ~10%


def test_augmented_planned_run_equals_unplanned_run(tmp_path):
    # Planned, the augmented batch is gathered straight into the plan's input batch (augment_into);
    # unplanned, augment() makes a new one: the same draws give the same batches, hence the same run.
    a = train(_synthetic_cfg(tmp_path / "planned", epochs=1, augment=True))
    b = train(_synthetic_cfg(tmp_path / "unplanned", epochs=1, augment=True, planned=False))
    c = train(_synthetic_cfg(tmp_path / "plain", epochs=1))
    np.testing.assert_array_equal(a.net.param_buffer, b.net.param_buffer)
    assert a.test_accuracy == b.test_accuracy
    assert not np.array_equal(a.net.param_buffer, c.net.param_buffer)   # augmentation did change the batches


@pytest.mark.emu
def test_planned_augmented_batches_are_made_in_the_input_batch(monkeypatch):
    """On the (emulated) device: each augmented batch is gathered into the plan's input view by one
    kernel, with no device allocation after the epoch's permutation and draws buffer, and equals
    augment() of the gathered batch with the same draws."""
    from gpuconv import augment, device, emu
    from gpuconv.data import BatchIterator
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.spec import net_from_spec
    from gpuconv.step import TrainStep
    from gpuconv.train import _batches

    if not emu.available():
        pytest.skip("no C++ compiler: the kernel emulator is unavailable")
    rng = np.random.default_rng(0)
    xh = rng.standard_normal((20, 3, 6, 6)).astype(np.float32)
    yh = rng.integers(0, 4, 20).astype(np.int32)
    allocs: list[str] = []
    with emu.emulated() as xp:
        for name in ("empty", "zeros", "ones", "asarray"):
            real = getattr(type(xp), name)
            monkeypatch.setattr(type(xp), name, lambda self, *a, _r=real, _n=name, **k: (allocs.append(_n), _r(self, *a, **k))[1])
        net = net_from_spec("INPUT[6x6x3] -> FC-4")
        ex = PlannedExecutor(net, make_plan(net, 4), device.Device("cuda", xp), seed=1)
        step = TrainStep(net, None, ex)
        it = BatchIterator(emu.asarray(xh), emu.asarray(yh), 4, shuffle=True, seed=5, drop_last=True).for_epoch(2)
        perm = it.permutation()
        got = []
        for b, (xb, yb) in enumerate(_batches(it, step, True, epoch=2, seed=7)):
            assert xb is ex.input_view() and yb is ex.labels_view()
            if b == 0:
                allocs.clear()   # the epoch's permutation and draws buffer are made once
            got.append((np.asarray(xb).copy(), np.asarray(yb).copy()))
    assert allocs == [] and len(got) == 5
    for b, (xb, yb) in enumerate(got):
        idx = perm[4 * b:4 * b + 4]
        np.testing.assert_array_equal(xb, augment.augment(xh[idx], np.random.default_rng([7, 2, b]), pad=2))
        np.testing.assert_array_equal(yb, yh[idx])
