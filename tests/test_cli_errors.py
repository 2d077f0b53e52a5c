"""Bad invocations of every command: one short message on stderr, the right exit status, no traceback.

Exit status 2: the invocation cannot work as given (bad flag, missing file, conflicting settings);
1: it ran and failed (diverged, does not fit, corrupt checkpoint); 130: interrupted.
Most rows run in-process through ``gpuconv.cli.main``; a few run ``python3 -m gpuconv.cli`` in a
subprocess, to see real exit statuses and everything the process writes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpuconv import cli
from gpuconv import device as devmod

TINY = "INPUT[32x32x3] -> POOL4 -> FC-10"
SYN = ["--dataset", "synthetic", "--model", TINY, "--limit-train", "64", "--limit-test", "32", "--batch-size", "32",
       "--device", "cpu"]
NO_GPU = not devmod.gpu_available()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in a scratch folder (default run folders land in runs/ there), with no device override."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(devmod.DEVICE_ENV, raising=False)
    monkeypatch.setenv("GPUCONV_DATA", str(tmp_path / "no-data-here"))


@pytest.fixture
def run_dir(tmp_path):
    """A finished one-epoch run of the tiny net (Adam, seed 0)."""
    out = tmp_path / "run"
    assert cli.main(["train", *SYN, "--epochs", "1", "--out", str(out)]) == 0
    return out


def _call(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _assert_error(rc, err, status, *fragments):
    assert rc == status, (rc, err)
    assert "Traceback" not in err, err
    assert err.startswith("gpuconv"), err
    for f in fragments:
        assert f in err, (f, err)


# (argv, exit status, fragments of the message). `{run}` is replaced by a finished run's folder.
BAD = [
    # train: flags
    (["train", "--epochs", "0", *SYN], 2, ["--epochs must be >= 1"]),
    (["train", "--epochs", "two"], 2, ["--epochs", "invalid int value"]),
    (["train", *SYN, "--batch-size", "0"], 2, ["--batch-size must be >= 1"]),
    (["train", "--lr", "-1", *SYN], 2, ["--lr must be a positive number"]),
    (["train", "--lr", "nan", *SYN], 2, ["--lr must be a positive number"]),
    (["train", "--weight-decay", "-0.1", *SYN], 2, ["--weight-decay must be >= 0"]),
    (["train", "--limit-train", "0", "--dataset", "synthetic", "--device", "cpu"], 2, ["--limit-train must be >= 1"]),
    (["train", "--optimizer", "adamw"], 2, ["--optimizer", "invalid choice: 'adamw'"]),
    (["train", "--schedule", "linear"], 2, ["--schedule", "invalid choice"]),
    (["train", "--precision", "fp16"], 2, ["--precision", "invalid choice"]),
    (["train", "--no-such-flag"], 2, ["unrecognized arguments: --no-such-flag"]),
    (["train", "--cuda-graph", "--unplanned", *SYN], 2, ["--cuda-graph", "--unplanned"]),
    # train: model and data
    (["train", "--model", "nosuch", "--dataset", "synthetic", "--device", "cpu"], 2,
     ["unknown model 'nosuch'", "small"]),
    (["train", "--model", "INPUT[32x32x3] -> CONVX", "--dataset", "synthetic", "--device", "cpu"], 2, ["CONVX"]),
    (["train", "--model", "INPUT[28x28x1] -> FC-10", "--dataset", "synthetic", "--device", "cpu"], 2,
     ["28x28x1", "32x32x3"]),
    (["train", "--dataset", "imagenet", "--device", "cpu"], 2, ["unknown dataset 'imagenet'"]),
    (["train", "--data-dir", "nowhere", "--device", "cpu"], 2, ["dataset 'fashion-mnist' not found", "nowhere"]),
    (["train", "--data", "no/such/folder", "--device", "cpu"], 2, ["no/such/folder"]),
    (["train", *SYN, "--batch-size", "128"], 2, ["--batch-size 128 is larger than the training set"]),
    # train: device
    (["train", "--device", "tpu"], 2, ["--device", "invalid choice: 'tpu'"]),
    # train: budgets
    (["train", *SYN, "--budget", "1.5"], 2, ["--budget 1.5", "fraction", "(0, 1]", "1.5GiB"]),
    (["train", *SYN, "--budget", "123456"], 2, ["unit"]),
    (["train", *SYN, "--budget", "twelve"], 2, ["not a memory budget"]),
    (["train", *SYN, "--budget=-1GiB"], 2, ["must be positive"]),
    (["train", *SYN, "--budget", "12 parsecs"], 2, ["unknown unit"]),
    (["train", *SYN, "--budget", "1KiB"], 1, ["does not fit the budget 1KiB", "Not even batch 1 fits",
                                              "gpuconv plan 'INPUT[32x32x3] -> POOL4 -> FC-10'"]),
    # train: run folders
    (["train", "--resume"], 2, ["--resume needs the run's folder"]),
    (["train", "--resume", "nowhere"], 2, ["no run to resume", "nowhere"]),
    (["train", "--resume", "a", "--out", "b"], 2, ["name different folders"]),
    (["train", "--resume", "{run}", "--overwrite"], 2, ["--overwrite", "give one"]),
    (["train", "--overwrite", *SYN], 2, ["--overwrite needs the folder"]),
    (["train", "--data", "{run}", "--dataset", "mnist"], 2, ["--data", "--dataset", "give one"]),
    (["train", *SYN, "--model", "INPUT[32x32x3] -> POOL4 -> FC-7"], 2, ["ends in 7 class scores", "10 classes",
                                                                       "FC-10"]),
    (["train", *SYN, "--out", "{run}"], 2, ["already holds a run", "gpuconv train --resume", "--overwrite"]),
    (["train", "--resume", "{run}", "--optimizer", "sgd", "--seed", "3"], 2,
     ["cannot resume", "2 differ", "--optimizer: the run has 'adam', given 'sgd'", "--seed: the run has 0, given 3"]),
    # summary
    (["summary", "nosuch"], 2, ["gpuconv summary: unknown model 'nosuch'"]),
    (["summary", "INPUT[10x10x3] -> CONV3-4/2p0 -> FC-10"], 2, ["W=10"]),
    (["summary", "INPUT[28x28x1] -> [CONV3-8 -> RELU"], 2, ["gpuconv summary:"]),
    (["summary"], 2, ["the following arguments are required: model"]),
    # plan
    (["plan", "nosuch"], 2, ["gpuconv plan: unknown model 'nosuch'"]),
    (["plan", "small", "--batch", "0"], 2, ["--batch", "must be >= 1"]),
    (["plan", "small", "--budget", "1.5"], 2, ["--budget 1.5", "unit"]),
    (["plan", "small", "--budget", "0.5", "--safety", "5"], 2, ["--safety", "[0, 1)"]),
    (["plan", "small", "--budget", "1GiB", "--safety", "x"], 2, ["--safety"]),
    (["plan", "small", "--input", "28x28"], 2, ["--input", "HxWxC"]),
    (["plan", "small", "--classes", "0"], 2, ["--classes", "must be >= 1"]),
    (["plan", "INPUT[28x28x1] -> FC-10", "--classes", "5"], 2, ["zoo models"]),
    (["plan", "small", "--optimizer", "adamw"], 2, ["invalid choice"]),
    # profile
    (["profile", "nosuch", "--device", "cpu"], 2, ["gpuconv profile: unknown model 'nosuch'"]),
    (["profile", "small", "--steps", "0"], 2, ["--steps", "must be >= 1"]),
    (["profile", "small", "--device", "tpu"], 2, ["invalid choice"]),
    # check
    (["check", "nosuch", "--device", "cpu"], 2, ["gpuconv check: unknown model 'nosuch'"]),
    (["check", "small", "--batch", "0", "--device", "cpu"], 2, ["--batch must be >= 1"]),
    (["check", "small", "--device", "tpu"], 2, ["invalid choice"]),
    # kernels (nothing here compiles: the arguments are refused first)
    (["kernels", "--resources", "--arch", "compute_90"], 2, ["--resources needs a real target"]),
    (["kernels", "--resources", "--filter", "("], 2, ["--filter '('"]),
    (["kernels", "--arch", "volta"], 2, ["--arch 'volta'"]),
    # the command itself
    (["frobnicate"], 2, ["invalid choice: 'frobnicate'"]),
]


@pytest.mark.parametrize("argv,status,fragments", BAD, ids=[" ".join(a)[:60] for a, _, _ in BAD])
def test_bad_invocation(argv, status, fragments, capsys, request):
    if any("{run}" in a for a in argv):
        run = request.getfixturevalue("run_dir")
        argv = [a.replace("{run}", str(run)) for a in argv]
    capsys.readouterr()
    try:
        rc, _, err = _call(argv, capsys)
    except SystemExit as e:   # argparse's own errors exit from inside parse_args
        rc, err = e.code, capsys.readouterr().err
    _assert_error(rc, err, status, *fragments)
    assert len(err.strip().splitlines()) <= 6, err   # a message, not a report


GPU_ONLY = [
    (["train", "--device", "cuda", *SYN[:-2]], ["gpuconv train: device 'cuda' was requested"]),
    (["check", "small", "--device", "cuda"], ["gpuconv check: device 'cuda' was requested"]),
    (["profile", "small", "--device", "cuda"], ["gpuconv profile: device 'cuda' was requested"]),
    (["plan", "small", "--budget", "0.5", "--device", "cuda"], ["gpuconv plan: device 'cuda' was requested"]),
    (["kernels", "--load", "--device", "cuda"], ["gpuconv kernels: device 'cuda' was requested"]),
]


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a usable GPU")
@pytest.mark.parametrize("argv,fragments", GPU_ONLY, ids=[a[0] for a, _ in GPU_ONLY])
def test_cuda_without_a_gpu_is_one_line_in_every_command(argv, fragments, capsys):
    rc, _, err = _call(argv, capsys)
    _assert_error(rc, err, 2, *fragments)
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a usable GPU")
def test_device_env_is_read_by_every_command(monkeypatch, capsys):
    monkeypatch.setenv(devmod.DEVICE_ENV, "cuda")
    for argv in (["train", *SYN[:-2]], ["check", "small"], ["profile", "small"], ["kernels", "--load"]):
        rc, _, err = _call(argv, capsys)
        _assert_error(rc, err, 2, "device 'cuda' was requested")
    monkeypatch.setenv(devmod.DEVICE_ENV, "tpu")
    rc, _, err = _call(["train", *SYN[:-2]], capsys)
    _assert_error(rc, err, 2, "unknown device 'tpu'", devmod.DEVICE_ENV)
    # the flag wins over the environment
    rc, _, err = _call(["train", *SYN, "--epochs", "1", "--out", "envrun"], capsys)
    assert rc == 0, err


def test_device_is_checked_before_the_data_is_read(monkeypatch, capsys):
    from gpuconv import train as trainmod

    monkeypatch.setattr(trainmod, "load_dataset", lambda cfg: pytest.fail("data read before the checks"))
    for argv, frag in [(["train", *SYN, "--budget", "1KiB"], "does not fit"),
                       (["train", *SYN, "--budget", "1.5"], "unit"),
                       (["train", "--model", "nosuch", "--dataset", "synthetic"], "unknown model")]:
        rc, _, err = _call(argv, capsys)
        assert rc in (1, 2) and frag in err, err


def test_corrupt_checkpoint_is_a_runtime_failure(run_dir, capsys):
    (run_dir / "checkpoint.npz").write_bytes(b"not a zip file")
    rc, _, err = _call(["train", "--resume", run_dir, "--epochs", "2"], capsys)
    _assert_error(rc, err, 1, "corrupt or unreadable checkpoint")
    # without --resume the folder still counts as a run: refused, nothing overwritten
    rc, _, err = _call(["train", *SYN, "--out", run_dir], capsys)
    _assert_error(rc, err, 2, "already holds a run")
    assert (run_dir / "checkpoint.npz").read_bytes() == b"not a zip file"


def test_diverged_run_is_a_runtime_failure_without_warnings(capsys, recwarn):
    rc, _, err = _call(["train", *SYN, "--model", "INPUT[32x32x3] -> CONV3-4 -> RELU -> POOL4 -> FC-16 -> RELU -> FC-10",
                        "--optimizer", "sgd", "--lr", "1e30", "--epochs", "1", "--out", "nan"], capsys)
    _assert_error(rc, err, 1, "loss became", "No checkpoint was saved", "try a lower --lr")
    assert "last good checkpoint" not in err
    assert "RuntimeWarning" not in err and not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_plan_max_batch_answers_with_status_zero(capsys):
    rc, out, err = _call(["plan", "vgg16", "--max-batch", "--budget", "1GiB", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "Largest batch that fits the budget 1GiB" in out and "none (not even batch 1)" in out
    rc, out, err = _call(["plan", "lenet5", "--batch", "100000", "--max-batch", "--budget", "64MiB"], capsys)
    assert rc == 0 and "DOES NOT FIT" in out, err


def test_plan_note_asks_for_a_budget_only_when_none_was_given(capsys, monkeypatch):
    from gpuconv.memory import budget as bmod

    def no_nvml():
        raise bmod.BudgetError("the GPU's memory is unknown: NVML is not usable here (test)")
    monkeypatch.setattr(bmod, "_nvml", no_nvml)
    rc, out, err = _call(["plan", "small", "--budget", "1GiB", "--device", "auto"], capsys)
    assert rc == 0 and "give an explicit budget" not in out + err
    monkeypatch.setattr(devmod, "resolve_device_name", lambda name=None: "cuda")   # as if a GPU were there
    rc, out, err = _call(["plan", "small", "--budget", "1GiB"], capsys)
    assert rc == 0 and "give an explicit budget" not in out + err, out
    rc, out, err = _call(["plan", "small", "--max-batch"], capsys)
    _assert_error(rc, err, 2, "no --budget was given", "--budget 12GiB")


def test_cpu_budget_is_host_memory_not_ignored(capsys):
    # vgg16 at batch 64 needs far more than 1 GiB: refused on the CPU too, with a real batch to try.
    rc, out, err = _call(["plan", "vgg16", "--batch", "64", "--budget", "0.000001", "--device", "cpu"], capsys)
    assert rc == 1 and "DOES NOT FIT" in out and "machine's memory" in out
    rc, _, err = _call(["train", "--model", "lenet5", "--dataset", "synthetic", "--limit-train", "64",
                        "--limit-test", "32", "--batch-size", "64", "--budget", "2MiB", "--device", "cpu"], capsys)
    _assert_error(rc, err, 1, "does not fit the budget 2MiB")
    import re
    m = re.search(r"run with --batch-size (\d+)", err)
    assert m and int(m.group(1)) >= 1, err
    assert "--input 32x32x3 --classes 10" in err and "--device cpu --budget 2MiB" in err


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(KeyError):
        cli.main(["--debug", "summary", "nosuch"])
    with pytest.raises(KeyError):
        cli.main(["summary", "nosuch", "--debug"])


def test_ctrl_c_saves_prints_the_resume_command_and_exits_130(monkeypatch, capsys, tmp_path):
    from gpuconv import train as trainmod

    real = trainmod.Progress

    class Interrupting(real):  # Ctrl-C after the second progress update of the first epoch
        def update(self, *a, **kw):
            super().update(*a, **kw)
            if self.done >= 2:
                raise KeyboardInterrupt
    monkeypatch.setattr(trainmod, "Progress", Interrupting)
    out = tmp_path / "my run"
    rc, _, err = _call(["train", *SYN, "--limit-train", "128", "--log-every", "1", "--epochs", "2", "--out", out],
                       capsys)
    assert rc == 130, err
    assert "Traceback" not in err
    assert f"continue with: gpuconv train --resume '{out}'" in err
    assert (out / "checkpoint.npz").is_file()
    from gpuconv.checkpoint import load_checkpoint
    _, meta = load_checkpoint(out / "checkpoint.npz")
    assert (meta["epoch"], meta["next_batch"]) == (0, 2)
    monkeypatch.setattr(trainmod, "Progress", real)
    rc, stdout, err = _call(["train", "--resume", out], capsys)
    assert rc == 0 and "after 2 epochs" in stdout, err


def _subprocess(args, cwd, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "GPUCONV_DATA": str(Path(cwd) / "none"), **(env_extra or {})}
    env.pop(devmod.DEVICE_ENV, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "gpuconv.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args,status,fragment", [
    (["summary", "nosuch"], 2, "unknown model 'nosuch'"),
    (["plan", "small", "--budget", "1.5"], 2, "unit"),
    (["train", "--optimizer", "adamw"], 2, "invalid choice"),
    (["train", "--data-dir", "nowhere", "--device", "cpu"], 2, "not found"),
    (["train", *SYN, "--budget", "1KiB"], 1, "does not fit"),
])
def test_real_exit_status_and_no_traceback(args, status, fragment, tmp_path):
    p = _subprocess(args, tmp_path)
    assert p.returncode == status, p.stderr
    assert "Traceback" not in p.stderr and fragment in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) <= 6, p.stderr


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a usable GPU")
def test_real_cuda_request_without_gpu_is_one_line(tmp_path):
    p = _subprocess(["train", "--device", "cuda"], tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()], p.stderr
    p = _subprocess(["profile", "small"], tmp_path, {devmod.DEVICE_ENV: "cuda"})
    assert p.returncode == 2 and "Traceback" not in p.stderr and "cuda" in p.stderr, p.stderr


def test_real_sigint_exits_130_without_a_traceback(tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop(devmod.DEVICE_ENV, None)
    args = ["train", "--dataset", "synthetic", "--model", TINY, "--limit-train", "4096", "--limit-test", "32",
            "--batch-size", "32", "--epochs", "1000", "--device", "cpu", "--out", "r"]
    p = subprocess.Popen([sys.executable, "-m", "gpuconv.cli", *args], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "r" / "checkpoint.npz").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)   # wait for a saved epoch, so the interrupt lands inside training
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err, err
    assert "continue with: gpuconv train --resume r" in err, err
