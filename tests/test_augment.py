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


# ---- augment_into: the planned run's gather + augment, one op (kernels/augment.cu)

def _into(src, idx, draws, pad, xp=np):
    out = xp.asarray(np.full((len(idx), *src.shape[1:]), np.nan, dtype=src.dtype))  # garbage: all must be written
    return augment.augment_into(out, src, xp.asarray(idx), xp.asarray(draws), pad)


def test_draw_is_augments_draws_in_its_order():
    d = augment.draw(np.random.default_rng(7), 6, pad=3)
    _, offs = ref_crop(batch(), 3, 7)
    rng = np.random.default_rng(7)
    rng.integers(0, 7, size=(2, 6))
    assert d.dtype == np.int32 and d.shape == (6, 3)
    np.testing.assert_array_equal(d[:, :2].T, offs)
    np.testing.assert_array_equal(d[:, 2], rng.random(6) < 0.5)
    assert (augment.draw(np.random.default_rng(0), 4, pad=0, flip=False) == 0).all()


@pytest.mark.parametrize("pad,flip", [(0, True), (1, False), (2, True), (4, True), (9, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_augment_into_equals_augment_of_the_gathered_batch(pad, flip, dtype):
    src = batch(n=9, seed=3).astype(dtype)
    idx = np.array([4, 0, 8, 4, 2, 7], dtype=np.int64)
    draws = augment.draw(np.random.default_rng(11), len(idx), pad=pad, flip=flip)
    want = augment.augment(src[idx], np.random.default_rng(11), pad=pad, flip=flip)
    got = _into(src, idx, draws, pad)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_augment_into_refuses_bad_arguments():
    from gpuconv.ops._checks import OpArgumentError

    src, out = batch(n=4), np.empty((2, 2, 5, 7), np.float32)
    idx, draws = np.array([0, 3]), augment.draw(np.random.default_rng(0), 2, pad=1)
    with pytest.raises(OpArgumentError, match="idx must be int64"):
        augment.augment_into(out, src, idx.astype(np.int32), draws, 1)
    with pytest.raises(OpArgumentError, match=r"idx must be in \[0, 4\)"):
        augment.augment_into(out, src, np.array([0, 4]), draws, 1)
    with pytest.raises(OpArgumentError, match=r"offsets must be in \[0, 0\]"):
        augment.augment_into(out, src, idx, draws, 0)
    with pytest.raises(OpArgumentError, match="differ from src"):
        augment.augment_into(np.empty((2, 2, 5, 6), np.float32), src, idx, draws, 1)
    with pytest.raises(OpArgumentError, match="draws must have shape"):
        augment.augment_into(out, src, idx, draws[:1], 1)


@pytest.mark.emu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_augment_kernel_matches_numpy_and_allocates_nothing(dtype):
    from gpuconv import cuda, emu

    if not emu.available():
        pytest.skip("no C++ compiler: the kernel emulator is unavailable")
    src = batch(n=9, c=3, h=6, w=5, seed=4).astype(dtype)
    idx = np.array([8, 1, 1, 5, 0, 3, 7], dtype=np.int64)
    draws = augment.draw(np.random.default_rng(2), len(idx), pad=2)
    want = augment.augment(src[idx], np.random.default_rng(2), pad=2)
    with emu.emulated() as xp:
        d_src, d_idx, d_draws = xp.asarray(src), xp.asarray(idx), xp.asarray(draws)
        out = xp.asarray(np.full((len(idx), 3, 6, 5), np.nan, dtype=dtype))
        # A capture refuses any allocation or host-side device operation: the op is one launch.
        graph = cuda.capture(lambda: augment.augment_into(out, d_src, d_idx, d_draws, 2))
        assert graph.num_nodes == 1
        graph.launch()
        got = np.asarray(out).copy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.gpu
def test_augment_into_gpu_matches_cpu(cp):
    src = batch(n=10, c=3, h=9, w=8, seed=6)
    idx = np.array([9, 0, 3, 3, 7, 1, 2, 5], dtype=np.int64)
    draws = augment.draw(np.random.default_rng(4), len(idx), pad=3)
    want = _into(src, idx, draws, 3)
    got = _into(cp.asarray(src), idx, draws, 3, xp=cp)
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(got.get(), want)
