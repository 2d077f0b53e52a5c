"""The README tells the truth: its Python blocks run as written, and every ``gpuconv`` command
line in its shell blocks is exercised here.

Python: each ```python block runs, unchanged, in a fresh interpreter (blocks define their own
inputs).  Commands: every command in a ```sh block whose first word is ``gpuconv`` (after
splitting on ``&&``/``;``/``|`` and dropping ``#`` comments) must have an entry in ``COMMANDS``:
either it is run here, as written plus the listed additions (to keep CI fast), in a folder that
holds a tiny fake Fashion-MNIST (``$GPUCONV_DATA``) and the image folders the README names, or
it names the existing test that runs the same thing.  A README command without an entry, or an
entry whose command is no longer in the README, fails ``test_every_command_is_covered``.
Lines that need a GPU (``--device cuda``) are skipped without one.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@dataclass(frozen=True)
class Run:
    """Run the line: ``setup`` commands first (gpuconv argv without the program name), then the
    line with ``extra`` appended; it must exit 0 and print no traceback."""

    extra: tuple[str, ...] = ()
    setup: tuple[tuple[str, ...], ...] = ()
    expect: str = ""          # a regex the output must match


@dataclass(frozen=True)
class Covered:
    """The line is run by an existing test: ``path::function``."""

    test: str


_FM_RUN = ("train", "--model", "fmnist", "--epochs", "1", "--out", "runs/fm", "--device", "cpu")
_PHOTOS_RUN = ("train", "--data", "photos", "--model", "cifar-vgg", "--epochs", "1", "--batch-size", "8",
               "--out", "runs/photos", "--device", "cpu")

#: README command (as written, comment dropped) -> how it is exercised.
COMMANDS: dict[str, Run | Covered] = {
    "gpuconv": Run(expect=r"test accuracy"),
    "gpuconv train --model fmnist --epochs 10 --optimizer adam --device cuda --out runs/fm":
        Run(extra=("--epochs", "1")),
    "gpuconv train --out runs/fm --resume": Run(extra=("--epochs", "2"), setup=(_FM_RUN,), expect=r"resum"),
    "gpuconv train --resume runs/fm --epochs 20": Run(extra=("--epochs", "2"), setup=(_FM_RUN,), expect=r"resum"),
    "gpuconv train --model fmnist --device cuda --cuda-graph": Run(extra=("--epochs", "1")),
    "gpuconv summary vgg16": Run(expect=r"138,357,544"),
    'gpuconv summary "INPUT[32x32x3] -> [[CONV3-64 -> RELU]*2 -> POOL2]*3 -> [FC-512 -> RELU]*1 -> FC-10"':
        Run(expect=r"FC-10"),
    "gpuconv plan vgg16 --batch 64 --optimizer momentum --budget 0.9": Run(),
    "gpuconv plan alexnet --max-batch --budget 12GiB": Run(expect=r"[Ll]argest batch"),
    "gpuconv profile lenet5 --batch 64 --out runs/profile": Run(expect=r"profile"),
    "gpuconv check small": Run(),
    "gpuconv kernels": Covered("tests/test_kernels_compile.py::test_kernel_compiles_to_sass"),
    "gpuconv kernels --resources --filter 128x128":
        Covered("tests/test_kernels_compile.py::test_cli_prints_each_entrys_resources"),
    "gpuconv train --data photos --model cifar-vgg --epochs 10 --out runs/photos":
        Run(extra=("--epochs", "1", "--batch-size", "8", "--device", "cpu"), expect=r"test accuracy"),
    "gpuconv predict runs/photos photos/cat/1.jpg more-photos --top-k 2":
        Run(setup=(_PHOTOS_RUN,), expect=r"photos/cat/1\.jpg: \w+ [\d.]+%, \w+ [\d.]+%"),
    "gpuconv evaluate runs/photos": Run(setup=(_PHOTOS_RUN,), expect=r"accuracy [\d.]+%"),
    "gpuconv evaluate runs/photos --data more-photos": Run(setup=(_PHOTOS_RUN,), expect=r"confusion matrix"),
    "gpuconv train --model fmnist --ranks 2 --out runs/fm-2ranks":
        Run(extra=("--epochs", "1", "--device", "cpu"), expect=r"2 ranks \(0: pid \d+, 1: pid \d+\)"),
}


# --------------------------------------------------------------------------- reading the README


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def commands(text: str) -> list[str]:
    """Every ``gpuconv`` command in the shell blocks, normalized by shlex (comments dropped)."""
    out = []
    for m in re.finditer(r"^```(?:sh|bash|shell|console)\n(.*?)^```", text, re.S | re.M):
        for line in m.group(1).splitlines():
            line = re.sub(r"^\$\s*", "", line.strip())
            if not line:
                continue
            words = shlex.split(line, comments=True)
            cmd: list[str] = []
            for w in words + ["&&"]:
                if w in ("&&", ";", "||", "|"):
                    if cmd and cmd[0] == "gpuconv":
                        out.append(shlex.join(cmd))
                    cmd = []
                else:
                    cmd.append(w)
    return out


def _key(command: str) -> str:
    return shlex.join(shlex.split(command))


# --------------------------------------------------------------------------- fixtures


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _write_idx(path: Path, a: np.ndarray) -> None:
    path.write_bytes(bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes())


def _fake_fashion_mnist(folder: Path) -> None:
    """512 training and 128 test images in the IDX format: a learnable stand-in (class = brightness)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 512), ("t10k", 128)):
        y = rng.integers(0, 10, n)
        x = rng.random((n, 28, 28)) * 60 + y[:, None, None] * 19
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", y)


def _image_folder(folder: Path, per_class: int, seed: int) -> None:
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    for name, colour in (("cat", (200, 120, 40)), ("dog", (40, 90, 200))):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            a = np.clip(np.array(colour)[None, None] + rng.normal(0, 10, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(folder / name / f"{i}.{'jpg' if i % 2 else 'png'}")


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder with the data the README's commands name, and the environment to run them in."""
    _fake_fashion_mnist(tmp_path / "data" / "fashion-mnist")
    if _have("PIL"):
        _image_folder(tmp_path / "photos", per_class=10, seed=0)
        _image_folder(tmp_path / "more-photos", per_class=3, seed=1)
    env = {k: v for k, v in os.environ.items() if k not in ("GPUCONV_DEVICE", "GPUCONV_DATA")}
    env.update(GPUCONV_DATA=str(tmp_path / "data"), GPUCONV_CACHE_DIR=str(tmp_path / "cache"))
    return tmp_path, env


def _mpiexec() -> bool:
    from gpuconv.distributed import DistributedError, mpiexec_path  # noqa: PLC0415

    try:
        return bool(mpiexec_path())
    except DistributedError:
        return False


def _gpu() -> bool:
    from gpuconv import device  # noqa: PLC0415

    return device.gpu_available()


def _gpuconv(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuconv", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


# --------------------------------------------------------------------------- tests

TEXT = README.read_text()


def test_every_command_is_covered() -> None:
    found = {_key(c) for c in commands(TEXT)}
    table = {_key(c) for c in COMMANDS}
    assert found, "no gpuconv commands found in README.md"
    missing, stale = sorted(found - table), sorted(table - found)
    assert not missing, f"README commands with no test (add them to COMMANDS in {__file__}): {missing}"
    assert not stale, f"COMMANDS entries no longer in README.md (remove or update them): {stale}"


def test_covering_tests_exist() -> None:
    for how in COMMANDS.values():
        if isinstance(how, Covered):
            path, name = how.test.split("::")
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M), how.test


def test_command_parser_reads_shell_blocks() -> None:
    text = "x\n```sh\nbash .ci/install && gpuconv   # train\ngpuconv summary \"A -> B\"  # c\nls | gpuconv x\n```\n"
    assert commands(text) == ["gpuconv", "gpuconv summary 'A -> B'", "gpuconv x"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_runs(command: str, workdir: tuple[Path, dict[str, str]]) -> None:
    how = COMMANDS[command]
    if isinstance(how, Covered):
        pytest.skip(f"run by {how.test}")
    argv = shlex.split(command)[1:]
    if "cuda" in argv and not _gpu():
        pytest.skip("needs a CUDA GPU")
    if any(a.startswith("photos") or a.endswith("photos") for a in argv) and not _have("PIL"):
        pytest.skip("needs Pillow")
    if "--ranks" in argv and not (_have("mpi4py") and _mpiexec()):
        pytest.skip("needs MPI (pip install -e '.[mpi]')")
    cwd, env = workdir
    for setup in how.setup:
        r = _gpuconv(list(setup), cwd, env)
        assert r.returncode == 0, f"setup {setup}:\n{r.stdout}\n{r.stderr}"
    r = _gpuconv(argv + list(how.extra), cwd, env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{command} {' '.join(how.extra)} exited {r.returncode}:\n{out}"
    assert "Traceback" not in out
    if how.expect:
        assert re.search(how.expect, out), f"{command}: output does not match {how.expect!r}:\n{out}"


@pytest.mark.parametrize("line, code", python_blocks(TEXT), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_python_block_runs_as_written(line: int, code: str, tmp_path: Path) -> None:
    if "emu" in code:
        from gpuconv import emu  # noqa: PLC0415

        if not emu.available():
            pytest.skip("the kernel emulator needs a C++ compiler")
    env = {k: v for k, v in os.environ.items() if k != "GPUCONV_DEVICE"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"README.md line {line}:\n{code}\n--- output:\n{r.stdout}\n{r.stderr}"
