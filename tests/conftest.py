"""Shared test set-up: the `gpu` marker skips where no CUDA device is usable."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import device


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if device.gpu_available():
        return
    skip = pytest.mark.skip(reason="no usable CUDA device (cupy missing or no GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random inputs each run; the seed is printed on failure via the test id's output."""
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def cp():
    """The cupy module, for tests marked gpu."""
    return device.get_device("cuda").xp
