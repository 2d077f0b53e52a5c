"""Shared test set-up.

Tests marked ``gpu`` take the ``cp`` fixture (an array module) and run twice: on the
CUDA device (skipped where none is usable) and on the kernel emulator
(``gpuconv.emu``: the same kernels compiled for the CPU; skipped without g++), so
CI checks every kernel against NumPy without a GPU.  ``gpu_only`` keeps a test off
the emulator (it needs the real device: streams, memory pools, NVML, timing).
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import device, emu


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    node = metafunc.definition
    if "cp" in metafunc.fixturenames and node.get_closest_marker("gpu"):
        backends = ["cuda"]
        if not node.get_closest_marker("gpu_only"):
            backends.append(pytest.param("emu", marks=pytest.mark.emu))
        metafunc.parametrize("cp", backends, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="no usable CUDA device (cupy missing or no GPU)")
    no_cxx = pytest.mark.skip(reason="no C++ compiler: the kernel emulator is unavailable")
    gpu, cxx = device.gpu_available(), emu.available()
    for item in items:
        if "emu" in item.keywords:
            if not cxx:
                item.add_marker(no_cxx)
        elif "gpu" in item.keywords and not gpu:
            item.add_marker(no_gpu)


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random inputs each run; the seed is printed on failure via the test id's output."""
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def cp(request: pytest.FixtureRequest):
    """The device array module for tests marked gpu: cupy, or the emulator's within emu.emulated()."""
    if getattr(request, "param", "cuda") == "emu":
        with emu.emulated() as xp:
            yield xp
    else:
        yield device.get_device("cuda").xp
