"""Shared test set-up.

Tests marked ``gpu`` take the ``cp`` fixture (an array module) and run twice: on the
CUDA device (skipped where none is usable) and on the kernel emulator
(``gpuconv.emu``: the same kernels compiled for the CPU; skipped without g++), so
CI checks every kernel against NumPy without a GPU.  ``gpu_only`` keeps a test off
the emulator (it needs the real device: streams, memory pools, NVML, timing).
"""
from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

from gpuconv import device, emu, kernel_config


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


@pytest.fixture(autouse=True)
def _fresh_kernel_config():
    """Each test starts from the kernel configuration its environment gives (resolved on first
    use inside the test, so a monkeypatched GPUCONV_* variable applies) and leaks none."""
    kernel_config.reset_default()
    yield
    kernel_config.reset_default()


SEED_ENV = "GPUCONV_TEST_SEED"


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """Random inputs, reproducible by default: the seed is a hash of the test id, so a CI run
    never fails on a draw the previous run did not make.  ``GPUCONV_TEST_SEED=random`` draws
    fresh seeds (fuzzing); ``GPUCONV_TEST_SEED=<int>`` replays one.  The seed is printed and
    shows in a failing test's captured output."""
    chosen = os.environ.get(SEED_ENV, "")
    if chosen == "random":
        seed = int(np.random.SeedSequence().entropy % (2**32))
    elif chosen:
        if not chosen.isdigit():
            raise pytest.UsageError(f"{SEED_ENV} must be 'random' or a non-negative integer, got {chosen!r}")
        seed = int(chosen)
    else:
        seed = zlib.crc32(request.node.nodeid.encode())
    print(f"rng seed {seed} ({SEED_ENV}={seed} replays it)")
    return np.random.default_rng(seed)


@pytest.fixture
def cp(request: pytest.FixtureRequest):
    """The device array module for tests marked gpu: cupy, or the emulator's (its device backend,
    ``emu.BACKEND``, in force for the test: launches, zeroing and capture go to the emulator)."""
    if getattr(request, "param", "cuda") == "emu":
        with device.use_backend(emu.BACKEND) as backend:   # what emu.emulated() does
            yield backend.xp
    else:
        yield device.get_device("cuda").xp
