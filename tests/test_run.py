"""Run folders: the saved configuration, resume, extension, refusal of conflicting or clobbering runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gpuconv import cli
from gpuconv import device as devmod
from gpuconv import run as runmod
from gpuconv.checkpoint import load_checkpoint
from gpuconv.progress import read_metrics
from gpuconv.train import TrainConfig, train

TINY = "INPUT[32x32x3] -> CONV4-4/2p1 -> RELU -> POOL2 -> FC-10"
# Not the defaults, so a resume that forgot them would show.
FLAGS = ["--dataset", "synthetic", "--model", TINY, "--limit-train", "96", "--limit-test", "32",
         "--batch-size", "32", "--optimizer", "momentum", "--lr", "0.02", "--weight-decay", "0.001",
         "--schedule", "step", "--seed", "7", "--augment", "--device", "cpu", "--log-every", "2"]


@pytest.fixture(autouse=True)
def _scratch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(devmod.DEVICE_ENV, raising=False)


def _main(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_the_whole_configuration_is_saved_beside_the_checkpoint(tmp_path, capsys):
    rc, _, err = _main(["train", *FLAGS, "--epochs", "1", "--out", "r"], capsys)
    assert rc == 0, err
    saved = json.loads((tmp_path / "r" / runmod.RUN_CONFIG).read_text())
    expected = dict(model=TINY, dataset="synthetic", limit_train=96, limit_test=32, batch_size=32, optimizer="momentum",
                    lr=0.02, weight_decay=0.001, schedule="step", seed=7, augment=True, device="cpu", epochs=1,
                    precision="fp32", planned=True, cuda_graph=False, conv_algo="gemm")
    assert {k: saved[k] for k in expected} == expected
    assert "out_dir" not in saved and "resume" not in saved


def test_resume_restores_the_saved_settings_and_epochs_extend(tmp_path, capsys):
    # Reference: two epochs in one go.
    assert _main(["train", *FLAGS, "--epochs", "2", "--out", "full"], capsys)[0] == 0
    # The same run in two invocations; the second gives only the folder and the new target.
    assert _main(["train", *FLAGS, "--epochs", "1", "--out", "split"], capsys)[0] == 0
    rc, out, err = _main(["train", "--resume", "split", "--epochs", "2"], capsys)
    assert rc == 0, err
    assert "after 2 epochs" in out and "resuming" in err
    a, _ = load_checkpoint(tmp_path / "full" / "checkpoint.npz")
    b, meta = load_checkpoint(tmp_path / "split" / "checkpoint.npz")
    # the extended run took the same path as the reference (a step schedule: the same steps for 1 or 2 epochs)
    np.testing.assert_array_equal(a["params"], b["params"])
    assert meta["epoch"] == 2 and meta["config"]["optimizer"] == "momentum"
    assert json.loads((tmp_path / "split" / runmod.RUN_CONFIG).read_text())["epochs"] == 2
    # the README's spelling: --out DIR --resume
    rc, out, _ = _main(["train", "--out", "split", "--resume", "--epochs", "3"], capsys)
    assert rc == 0 and "after 3 epochs" in out


def test_resume_refuses_every_differing_flag_at_once(tmp_path, capsys):
    assert _main(["train", *FLAGS, "--epochs", "1", "--out", "r"], capsys)[0] == 0
    before = (tmp_path / "r" / "checkpoint.npz").read_bytes()
    rc, _, err = _main(["train", "--resume", "r", "--optimizer", "adam", "--lr", "0.001", "--batch-size", "16",
                        "--model", "small", "--unplanned"], capsys)
    assert rc == 2 and "Traceback" not in err
    for line in ("--optimizer: the run has 'momentum', given 'adam'", "--lr: the run has 0.02, given 0.001",
                 "--batch-size: the run has 32, given 16", f"--model: the run has '{TINY}', given 'small'",
                 "--unplanned: the run has on, given off"):
        assert line in err, err
    assert "5 differ" in err
    assert (tmp_path / "r" / "checkpoint.npz").read_bytes() == before   # nothing touched
    # the same values as saved are not differences; --log-every and --device may change
    rc, _, err = _main(["train", "--resume", "r", "--optimizer", "momentum", "--lr", "0.02", "--seed", "7",
                        "--log-every", "5", "--device", "auto", "--epochs", "2"], capsys)
    assert rc == 0, err


def test_a_finished_run_says_so(tmp_path, capsys):
    assert _main(["train", *FLAGS, "--epochs", "1", "--out", "r"], capsys)[0] == 0
    before = (tmp_path / "r" / "checkpoint.npz").read_bytes()
    rc, out, err = _main(["train", "--resume", "r"], capsys)
    assert rc == 0, err
    assert "this run is finished (1 of 1 epochs" in out and "--epochs 2" in out
    assert "nan" not in out
    assert (tmp_path / "r" / "checkpoint.npz").read_bytes() == before


def test_metrics_are_appended_and_time_continues(tmp_path, capsys):
    assert _main(["train", *FLAGS, "--epochs", "1", "--out", "r"], capsys)[0] == 0
    first = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert _main(["train", "--resume", "r", "--epochs", "3"], capsys)[0] == 0
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[0] == first[0]
    seconds = [r["seconds"] for r in rows]
    assert seconds == sorted(seconds) and seconds[1] > seconds[0]
    _, meta = load_checkpoint(tmp_path / "r" / "checkpoint.npz")
    assert meta["seconds"] >= seconds[-1]


def test_a_run_folder_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    assert _main(["train", *FLAGS, "--epochs", "1", "--out", "r"], capsys)[0] == 0
    ckpt = (tmp_path / "r" / "checkpoint.npz").read_bytes()
    metrics = (tmp_path / "r" / "metrics.jsonl").read_text()
    rc, _, err = _main(["train", *FLAGS, "--epochs", "1", "--out", "r"], capsys)
    assert rc == 2 and "already holds a run" in err and "gpuconv train --resume r" in err
    assert (tmp_path / "r" / "checkpoint.npz").read_bytes() == ckpt
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == metrics
    # --overwrite starts over: one epoch of metrics again, the new settings saved
    rc, _, err = _main(["train", *FLAGS, "--seed", "8", "--epochs", "1", "--out", "r", "--overwrite"], capsys)
    assert rc == 0, err
    assert [r["epoch"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [1]
    assert json.loads((tmp_path / "r" / runmod.RUN_CONFIG).read_text())["seed"] == 8


def test_an_empty_or_foreign_folder_is_not_a_run(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    rc, _, err = _main(["train", *FLAGS, "--epochs", "1", "--out", "mine"], capsys)
    assert rc == 0, err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_runs_without_out_get_numbered_folders(tmp_path, capsys):
    outs = []
    for _ in range(2):
        rc, out, err = _main(["train", *FLAGS, "--epochs", "1"], capsys)
        assert rc == 0, err
        outs.append(out.split("run folder ")[-1].strip())
    assert outs == ["runs/custom-1", "runs/custom-2"]
    (tmp_path / "runs" / "custom-7").mkdir()
    assert runmod.new_run_dir(TINY).resolve() == (tmp_path / "runs" / "custom-8").resolve()
    assert runmod.new_run_dir("fmnist").name == "fmnist-1"


def test_python_api_follows_the_same_rules(tmp_path):
    cfg = dict(model=TINY, dataset="synthetic", limit_train=64, limit_test=32, batch_size=32, device="cpu", epochs=1,
               out_dir=str(tmp_path / "r"))
    res = train(TrainConfig(**cfg))
    assert res.out_dir == str(tmp_path / "r")
    with pytest.raises(runmod.RunError, match="already holds a run"):
        train(TrainConfig(**cfg))
    with pytest.raises(runmod.RunError, match="--seed: the run has 0, given 1"):
        train(TrainConfig(**{**cfg, "seed": 1}, resume=True))
    done = train(TrainConfig(**cfg, resume=True))
    assert done.finished_before and done.epochs_done == 1 and done.test_accuracy == res.test_accuracy
    more = train(TrainConfig(**{**cfg, "epochs": 2}, resume=True))
    assert more.epochs_done == 2 and not more.finished_before


def test_differences_compare_numbers_by_value():
    saved = {"lr": 0.001, "seed": 0, "model": "small", "augment": False, "epochs": 3, "log_every": 50}
    assert runmod.differences(saved, {"lr": 1e-3, "seed": 0, "epochs": 9, "log_every": 1}) == []
    assert runmod.differences(saved, {"augment": True}) == ["--augment: the run has off, given on"]


def test_kernel_settings_from_the_environment_are_recorded_and_restored(tmp_path, monkeypatch):
    """GPUCONV_PRECISION / GPUCONV_CONV_ALGO apply to a run without flags, and its run.json keeps them,
    so a resume in another environment trains as the run began."""
    monkeypatch.setenv("GPUCONV_PRECISION", "tf32")
    monkeypatch.setenv("GPUCONV_CONV_ALGO", "winograd")
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32",
                     "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--out", str(out)]) == 0
    saved = json.loads((out / "run.json").read_text())
    assert (saved["precision"], saved["conv_algo"]) == ("tf32", "winograd")
    monkeypatch.delenv("GPUCONV_PRECISION")
    monkeypatch.delenv("GPUCONV_CONV_ALGO")
    args = cli.build_parser().parse_args(["train", "--resume", str(out), "--epochs", "2"])
    cfg = cli.train_config(args)
    assert (cfg.precision, cfg.conv_algo) == ("tf32", "winograd")
