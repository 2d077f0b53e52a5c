"""A built wheel, installed into a fresh venv, carries the kernel sources and compiles them.

The wheel is built from a copy of the source tree (nothing is written into the checkout),
installed with ``pip install --no-deps`` into ``python -m venv --system-site-packages`` (its
numpy/cupy come from this environment) and used from a folder outside the checkout.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gpuconv import cuda

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "gpuconv", "kernels")
KERNEL_FILES = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh"))
EMU_HEADERS = sorted(p.name for p in (ROOT / "gpuconv" / "emu").iterdir() if p.suffix in (".h", ".cuh"))


def _can_build_wheels() -> bool:
    import setuptools

    major, minor = (int(v) for v in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None  # bdist_wheel's home


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GPUCONV_KERNEL_DIR", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(wheel, the venv's python, a working folder outside the checkout)."""
    if not _can_build_wheels():
        pytest.skip("building a wheel needs setuptools >= 70.1 or the `wheel` package (pip install wheel)")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    env = _clean_env()
    run = dict(env=env, capture_output=True, text=True, timeout=600)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(src)], cwd=tmp, **run)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp / "dist").glob("gpuconv-*.whl")
    r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp / "venv")], **run)
    assert r.returncode == 0, r.stdout + r.stderr
    py = tmp / "venv" / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp, **run)
    assert r.returncode == 0, r.stdout + r.stderr
    work = tmp / "elsewhere"
    work.mkdir()
    return wheel, py, work


def _run_in_venv(py: Path, cwd: Path, code: str, env: dict[str, str] | None = None) -> dict:
    r = subprocess.run([str(py), "-c", code], cwd=cwd, env=env or _clean_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_wheel_carries_kernels_and_emulator_headers(installed: tuple[Path, Path, Path]) -> None:
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert KERNEL_FILES and all(f"gpuconv/_kernels/{f}" in names for f in KERNEL_FILES), sorted(names)
    assert all(f"gpuconv/emu/{f}" in names for f in EMU_HEADERS)
    assert not [n for n in names if n.startswith("kernels/")]  # not a stray top-level package


def test_installed_copy_finds_its_kernels(installed: tuple[Path, Path, Path]) -> None:
    _, py, work = installed
    got = _run_in_venv(py, work, (
        "import json, gpuconv, gpuconv.cuda as c\n"
        "print(json.dumps({'file': gpuconv.__file__, 'dir': str(c.KERNEL_DIR), 'names': c.kernel_names(),\n"
        "                  'sources': {n: c.kernel_source(n) for n in c.kernel_names()}}))"))
    venv = py.parent.parent
    assert Path(got["file"]).is_relative_to(venv), got["file"]  # the installed copy, not the checkout
    assert Path(got["dir"]) == Path(got["file"]).parent / "_kernels"
    assert got["names"] == cuda.kernel_names()
    # every source, its headers expanded, is the checkout's text
    for name, text in got["sources"].items():
        assert text == cuda.kernel_source(name), name


def test_kernel_dir_environment_variable_still_wins(installed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, py, work = installed
    (tmp_path / "probe.cu").write_text('extern "C" __global__ void probe() {}\n')
    env = {**_clean_env(), "GPUCONV_KERNEL_DIR": str(tmp_path)}
    got = _run_in_venv(py, work, "import json, gpuconv.cuda as c; print(json.dumps(c.kernel_names()))", env)
    assert got == ["probe"]


def test_checkout_prefers_its_own_kernels() -> None:
    r = subprocess.run([sys.executable, "-c", "import gpuconv.cuda as c; print(c.KERNEL_DIR)"], cwd=ROOT,
                       env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == ROOT / "kernels"


@pytest.mark.nvrtc
def test_installed_kernels_compile_with_nvrtc(installed: tuple[Path, Path, Path]) -> None:
    """NVRTC compiles the installed sources (conv, the slowest, is left to test_kernels_compile)."""
    pytest.importorskip("cupy")
    try:
        cuda.compile_ptx("add" if "add" in cuda.kernel_names() else cuda.kernel_names()[0], "compute_80")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"NVRTC unavailable here: {exc}")
    _, py, work = installed
    got = _run_in_venv(py, work, (
        "import json, gpuconv.cuda as c\n"
        "done = {n: len(c.compile_ptx(n, 'compute_90')) for n in c.kernel_names() if n != 'conv'}\n"
        "print(json.dumps(done))"))
    assert sorted(got) == [n for n in cuda.kernel_names() if n != "conv"]
    assert all(size > 0 for size in got.values())
