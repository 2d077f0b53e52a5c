"""Tests for gpuconv.augment: compared with per-image loop references using the same draws."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import augment


def batch(n=6, c=2, h=5, w=7, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32) + 1.0  # nonzero


def ref_flip(x, seed, p=0.5):
    flips = np.random.default_rng(seed).random(len(x)) < p
    return np.stack([img[:, :, ::-1] if f else img for img, f in zip(x, flips)]), flips


def ref_crop(x, pad, seed):
    offs = np.random.default_rng(seed).integers(0, 2 * pad + 1, size=(2, len(x)))
    h, w = x.shape[2:]
    out = []
    for i, img in enumerate(x):
        padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
        out.append(padded[:, offs[0, i]:offs[0, i] + h, offs[1, i]:offs[1, i] + w])
    return np.stack(out), offs


def test_flip_matches_reference():
    x = batch(n=32)
    got = augment.random_flip(x, np.random.default_rng(5))
    want, flips = ref_flip(x, 5)
    assert 0 < flips.sum() < len(x)  # the seed exercises both branches
    np.testing.assert_array_equal(got, want)
    assert got.shape == x.shape and got.dtype == x.dtype


def test_flip_probabilities():
    x = batch(n=4)
    np.testing.assert_array_equal(augment.random_flip(x, np.random.default_rng(0), p=0.0), x)
    np.testing.assert_array_equal(augment.random_flip(x, np.random.default_rng(0), p=1.0), x[..., ::-1])


def test_crop_matches_reference():
    x = batch(n=16)
    got = augment.random_crop(x, 2, np.random.default_rng(11))
    want, offs = ref_crop(x, 2, 11)
    assert len(np.unique(offs[0])) > 1 and len(np.unique(offs[1])) > 1
    np.testing.assert_array_equal(got, want)
    assert got.shape == x.shape and got.dtype == x.dtype


def test_crop_known_offset_values():
    # 1 image, 1 channel, 3x3, pad 1: check the zero border against hand-computed values.
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    seed = next(s for s in range(100)
                if tuple(np.random.default_rng(s).integers(0, 3, size=(2, 1))[:, 0]) == (0, 2))
    got = augment.random_crop(x, 1, np.random.default_rng(seed))
    # Offset (row 0, col 2) in the padded 5x5 image: shifted down by 1 and left by 1.
    np.testing.assert_array_equal(got[0, 0], [[0, 0, 0], [2, 3, 0], [5, 6, 0]])


def test_crop_pad_zero_is_identity_and_draws_nothing():
    x = batch()
    rng = np.random.default_rng(3)
    assert augment.random_crop(x, 0, rng) is x
    assert rng.random() == np.random.default_rng(3).random()
    with pytest.raises(ValueError):
        augment.random_crop(x, -1, rng)
    with pytest.raises(ValueError):
        augment.random_flip(x[0], rng)


def test_augment_deterministic_and_order():
    x = batch(n=10)
    a = augment.augment(x, np.random.default_rng(42), pad=3)
    b = augment.augment(x, np.random.default_rng(42), pad=3)
    np.testing.assert_array_equal(a, b)
    # Same as crop then flip drawing from one generator, in that order.
    rng = np.random.default_rng(42)
    want = augment.random_flip(augment.random_crop(x, 3, rng), rng)
    np.testing.assert_array_equal(a, want)
    c = augment.augment(x, np.random.default_rng(43), pad=3)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(augment.augment(x, np.random.default_rng(0), pad=0, flip=False), x)


@pytest.mark.gpu
def test_augment_gpu_matches_cpu(cp):
    x = batch(n=8)
    cpu = augment.augment(x, np.random.default_rng(1), pad=4)
    gpu = augment.augment(cp.asarray(x), np.random.default_rng(1), pad=4)
    assert isinstance(gpu, cp.ndarray)
    np.testing.assert_array_equal(cpu, gpu.get())
