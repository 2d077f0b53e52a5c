"""DROPOUT ops: the hash against a plain-int reference, mask statistics, gradients, errors;
GPU masks bit-identical to the NumPy path."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.ops import dropout as do
from gpuconv.ops._checks import OpArgumentError
from helpers import numeric_grad, poison, rel_error


def ref_keep(i: int, seed: int, counter: int, p: float) -> bool:
    """The mask rule written out with Python ints, one element at a time."""
    M = 0xFFFFFFFF

    def fmix(h: int) -> int:
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & M
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & M
        return h ^ (h >> 16)

    a = fmix(fmix((seed & M) ^ 0x9E3779B9) ^ (seed >> 32))
    k0 = fmix(a ^ (counter & M))
    k1 = fmix(k0 ^ (counter >> 32) ^ 0x85EBCA6B)
    h = fmix(fmix((i & M) ^ k0) ^ k1 ^ (((i >> 32) * 0x9E3779B1) & M))
    return h >= int(p * 2**32)


def test_fmix32_known_values() -> None:
    # MurmurHash3 fmix32 reference values (fmix32(0) = 0 is a property of the finalizer)
    assert do.fmix32_int(0) == 0
    assert do.fmix32_int(1) == 0x514E28B7
    h = np.array([0, 1, 0xFFFFFFFF, 12345], np.uint32)
    assert [int(v) for v in do._fmix32(h.copy())] == [do.fmix32_int(int(v)) for v in h]


@pytest.mark.parametrize("seed,counter", [(0, 0), (1, 0), (0, 1), (2**40 + 7, 2**33 + 5), (2**64 - 1, 123)])
def test_mask_matches_plain_int_reference(seed: int, counter: int) -> None:
    p = 0.37
    x = np.ones((3, 5, 7))
    _, mask = do.dropout_forward(x, p, seed, counter)
    ref = [ref_keep(i, seed, counter, p) for i in range(x.size)]
    np.testing.assert_array_equal(mask.reshape(-1), np.array(ref, np.uint8))


def test_hash_high_index_bits_match_reference() -> None:
    """Indices >= 2^32 (arrays of 4G+ elements) are hashed with their high word too."""
    k0, k1 = do.dropout_keys(99, 7)
    idx = np.array([0, 5, 2**32, 2**32 + 5, 2**40 + 3, 2**63 + 1], np.uint64)
    h = do.keep_hash(idx, k0, k1)
    for i, hv in zip(idx.tolist(), h.tolist()):
        assert (hv >= 2**31) == ref_keep(i, 99, 7, 0.5)
    assert h[1] != h[3]  # the high word matters


def test_chunked_cpu_path_matches_single_chunk(monkeypatch) -> None:
    x = np.arange(1000, dtype=np.float32)
    y1, m1 = do.dropout_forward(x, 0.5, 3, 4)
    monkeypatch.setattr(do, "_CHUNK", 37)
    y2, m2 = do.dropout_forward(x, 0.5, 3, 4)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_scaling(p: float, rng: np.random.Generator) -> None:
    n = 200_000
    x = rng.standard_normal(n).astype(np.float32) + 3.0  # never exactly 0
    seed, counter = int(rng.integers(2**63)), int(rng.integers(2**32))
    y, mask = do.dropout_forward(x, p, seed, counter)
    keep = mask.mean()
    assert abs(keep - (1 - p)) < 6 * np.sqrt(p * (1 - p) / n)
    assert set(np.unique(mask).tolist()) <= {0, 1}
    np.testing.assert_array_equal(y[mask == 0], 0)
    np.testing.assert_array_equal(y[mask == 1], x[mask == 1] * np.float32(1 / (1 - p)))
    # the inverted scaling keeps the expectation
    assert abs(y.mean() - x.mean()) < 0.05 * x.mean()


def test_deterministic_and_counter_dependent(rng: np.random.Generator) -> None:
    x = rng.standard_normal((64, 128))
    _, a = do.dropout_forward(x, 0.5, 11, 5)
    _, b = do.dropout_forward(x, 0.5, 11, 5)
    np.testing.assert_array_equal(a, b)
    for seed, counter in [(11, 6), (12, 5), (11, 5 + 2**32), (11 + 2**32, 5)]:
        _, c = do.dropout_forward(x, 0.5, seed, counter)
        agree = (a == c).mean()
        assert 0.45 < agree < 0.55  # independent masks agree on about half the elements
    # neighbouring elements are not correlated
    assert 0.2 < (a[:, 1:] & a[:, :-1]).mean() < 0.3


def test_p_zero_is_identity(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 4))
    y, mask = do.dropout_forward(x, 0.0, 1, 2)
    assert y is not x
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.uint8 and (mask == 1).all()
    np.testing.assert_array_equal(do.dropout_backward(x, mask, 0.0), x)


def test_gradient_check(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 4, 5))
    dy = rng.standard_normal(x.shape)
    p, seed, counter = 0.3, 5, 9
    num = numeric_grad(lambda: float(np.sum(do.dropout_forward(x, p, seed, counter)[0] * dy)), x)
    _, mask = do.dropout_forward(x, p, seed, counter)
    assert rel_error(do.dropout_backward(dy, mask, p), num) < 1e-8


def test_out_buffers_and_in_place(rng: np.random.Generator) -> None:
    x = rng.standard_normal((4, 5)).astype(np.float32)
    y_ref, m_ref = do.dropout_forward(x, 0.4, 1, 1)
    out = np.full(x.shape, np.nan, np.float32)
    m_out = np.full(x.shape, 9, np.uint8)
    y, m = do.dropout_forward(x, 0.4, 1, 1, out=out, mask_out=m_out)
    assert y is out and m is m_out
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(m, m_ref)
    x2 = x.copy()
    assert do.dropout_forward(x2, 0.4, 1, 1, out=x2)[0] is x2
    np.testing.assert_array_equal(x2, y_ref)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx_ref = do.dropout_backward(dy, m, 0.4)
    assert dx_ref.dtype == np.float32
    assert do.dropout_backward(dy, m, 0.4, out=dy) is dy
    np.testing.assert_array_equal(dy, dx_ref)


def test_dropped_nan_gives_zero() -> None:
    x = np.full(64, np.nan)
    y, m = do.dropout_forward(x, 0.5, 0, 0)
    assert (y[m == 0] == 0).all() and np.isnan(y[m == 1]).all()


def test_bad_inputs() -> None:
    x = np.zeros((2, 3), np.float32)
    for p in (1.0, -0.1, float("nan"), "a", None):
        with pytest.raises(OpArgumentError, match="dropout_forward: .*p"):
            do.dropout_forward(x, p, 0, 0)
    with pytest.raises(OpArgumentError, match="dropout_backward: dropout probability"):
        do.dropout_backward(x, np.ones((2, 3), np.uint8), 1.0)
    for bad in (-1, 2**64, 1.5, True):
        with pytest.raises(OpArgumentError, match="seed"):
            do.dropout_forward(x, 0.5, bad, 0)
        with pytest.raises(OpArgumentError, match="counter"):
            do.dropout_forward(x, 0.5, 0, bad)
    with pytest.raises(OpArgumentError, match="x must be float32 or float64"):
        do.dropout_forward(x.astype(np.int32), 0.5, 0, 0)
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        do.dropout_forward(np.zeros((4, 6), np.float32)[:, ::2], 0.5, 0, 0)
    with pytest.raises(OpArgumentError, match="mask_out must be uint8"):
        do.dropout_forward(x, 0.5, 0, 0, mask_out=np.zeros((2, 3), bool))
    with pytest.raises(OpArgumentError, match="out must have shape"):
        do.dropout_forward(x, 0.5, 0, 0, out=np.zeros((3, 2), np.float32))
    with pytest.raises(OpArgumentError, match="dropout_backward: mask must have shape"):
        do.dropout_backward(x, np.ones((3, 2), np.uint8), 0.5)
    with pytest.raises(OpArgumentError, match="dropout_backward: mask must be uint8"):
        do.dropout_backward(x, np.ones((2, 3), np.float32), 0.5)


# ------------------------------------------------------------------------------------------ GPU

GPU_SHAPES = [(1,), (7,), (1023,), (4097,), (3, 1000), (1, 1, 1, 1), (2, 3, 5, 7), (8, 64, 17, 19)]


@pytest.mark.gpu
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_mask_bit_identical_fp32(shape, p: float, cp, rng: np.random.Generator) -> None:
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    seed, counter = int(rng.integers(2**64, dtype=np.uint64)), int(rng.integers(2**63))
    y_ref, m_ref = do.dropout_forward(x, p, seed, counter)
    xg = cp.asarray(x)
    m_out = cp.full(shape, 7, cp.uint8)
    y, m = do.dropout_forward(xg, p, seed, counter, out=poison(cp, shape), mask_out=m_out)
    assert m is m_out
    np.testing.assert_array_equal(cp.asnumpy(m), m_ref)
    assert rel_error(y, y_ref) < 1e-6 and not cp.isnan(y).any()
    dx = do.dropout_backward(cp.asarray(dy), m, p, out=poison(cp, shape))
    assert rel_error(dx, do.dropout_backward(dy, m_ref, p)) < 1e-6 and not cp.isnan(dx).any()
    # in place on the GPU
    assert do.dropout_forward(xg, p, seed, counter, out=xg)[0] is xg
    assert rel_error(xg, y_ref) < 1e-6


@pytest.mark.gpu
def test_gpu_float64_matches_cpu(cp, rng: np.random.Generator) -> None:
    x = rng.standard_normal((4, 9, 11, 13))
    dy = rng.standard_normal(x.shape)
    y_ref, m_ref = do.dropout_forward(x, 0.35, 42, 1000)
    y, m = do.dropout_forward(cp.asarray(x), 0.35, 42, 1000, out=poison(cp, x.shape, np.float64))
    np.testing.assert_array_equal(cp.asnumpy(m), m_ref)
    assert y.dtype == np.float64 and rel_error(y, y_ref) < 1e-14
    dx = do.dropout_backward(cp.asarray(dy), m, 0.35, out=poison(cp, x.shape, np.float64))
    assert rel_error(dx, do.dropout_backward(dy, m_ref, 0.35)) < 1e-14


@pytest.mark.gpu
def test_gpu_large_grid_stride(cp) -> None:
    """More elements than one grid covers (65536 blocks x 256 threads x 4): the loop must wrap."""
    n = 65536 * 256 * 4 + 12345
    x = cp.ones(n, cp.float32)
    _, m = do.dropout_forward(x, 0.5, 1, 2)
    tail = np.arange(n - 5000, n, dtype=np.uint64)
    k0, k1 = do.dropout_keys(1, 2)
    expect = do.keep_hash(tail, k0, k1) >= np.uint32(do.dropout_threshold(0.5))
    np.testing.assert_array_equal(cp.asnumpy(m[-5000:]), expect.astype(np.uint8))
    assert abs(float(m.mean()) - 0.5) < 0.001


@pytest.mark.gpu
def test_gpu_bad_inputs(cp) -> None:
    xg = cp.zeros((2, 3), cp.float32)
    with pytest.raises(OpArgumentError, match="x must be float32 or float64"):
        do.dropout_forward(xg.astype(cp.int32), 0.5, 0, 0)
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        do.dropout_forward(cp.zeros((4, 6), cp.float32)[:, ::2], 0.5, 0, 0)
    with pytest.raises(OpArgumentError, match="mask_out is on cpu"):
        do.dropout_forward(xg, 0.5, 0, 0, mask_out=np.zeros((2, 3), np.uint8))
    with pytest.raises(OpArgumentError, match="out is on cpu"):
        do.dropout_forward(xg, 0.5, 0, 0, out=np.zeros((2, 3), np.float32))
    with pytest.raises(OpArgumentError, match="mask is on cpu"):
        do.dropout_backward(xg, np.ones((2, 3), np.uint8), 0.5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keys_from_device_memory_equal_scalar_keys(cp, rng: np.random.Generator, dtype) -> None:
    """dropout_fwd_dev reads (k0, k1) from memory: the same mask and output as the scalar
    kernel for those keys, on the device and on the CPU; seed and counter are then ignored."""
    x = rng.standard_normal((3, 5, 7)).astype(dtype)
    seed, counter = 2**40 + 3, 17
    keys = np.array(do.dropout_keys(seed, counter), dtype=np.uint32)
    y_ref, m_ref = do.dropout_forward(cp.asarray(x), 0.3, seed, counter)
    y, m = do.dropout_forward(cp.asarray(x), 0.3, 0, 0, out=poison(cp, x.shape, dtype), keys=cp.asarray(keys))
    np.testing.assert_array_equal(cp.asnumpy(m), cp.asnumpy(m_ref))
    np.testing.assert_array_equal(cp.asnumpy(y), cp.asnumpy(y_ref))
    y_cpu, m_cpu = do.dropout_forward(x, 0.3, 0, 0, keys=keys)
    np.testing.assert_array_equal(m_cpu, cp.asnumpy(m_ref))
    assert rel_error(y_cpu, y_ref) < 1e-6
    with pytest.raises(OpArgumentError, match="keys"):
        do.dropout_forward(cp.asarray(x), 0.3, 0, 0, keys=cp.asarray(keys[:1]))
