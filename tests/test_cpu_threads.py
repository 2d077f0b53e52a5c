"""The CPU path's batch-parallel engine: chunked, threaded ops give the inline results."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.ops import conv, cpu_threads, fc, optim, pool


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads and tiny chunks, so test-sized arrays split into several uneven chunks."""
    monkeypatch.setenv("GPUCONV_CPU_THREADS", "2")
    monkeypatch.setattr(cpu_threads, "_MIN_ELEMENTS_PER_CHUNK", 64)
    monkeypatch.setattr(cpu_threads, "_MAX_ELEMENTS_PER_CHUNK", 4096)


def test_chunk_bounds_cover_the_batch_in_a_multiple_of_threads() -> None:
    for batch, elements, threads in [(128, 20_000_000, 2), (7, 10_000_000, 2), (128, 20_000_000, 3), (3, 10**9, 4)]:
        b = cpu_threads.chunk_bounds(batch, elements, threads)
        assert b[0] == 0 and b[-1] == batch and all(lo < hi for lo, hi in zip(b[:-1], b[1:]))
        chunks = len(b) - 1
        assert chunks == batch or chunks % threads == 0
    assert cpu_threads.chunk_bounds(128, 1000, 2) == [0, 128]          # too small to be worth it
    assert cpu_threads.chunk_bounds(128, 10**8, 1) == [0, 128]         # one thread: inline


def test_engine_sets_and_restores_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUCONV_CPU_THREADS", "2")
    assert cpu_threads.active() == 1
    with pytest.raises(RuntimeError, match="boom"):
        with cpu_threads.engine():
            assert cpu_threads.active() == 2
            with cpu_threads.engine():          # nested: still two, and the outer one restores
                assert cpu_threads.active() == 2
            assert cpu_threads.active() == 2
            raise RuntimeError("boom")
    assert cpu_threads.active() == 1


def test_engine_without_threadpoolctl_runs_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUCONV_CPU_THREADS", "2")
    monkeypatch.setattr(cpu_threads, "_controller", False)   # as if the import had failed
    with cpu_threads.engine():
        assert cpu_threads.active() == 1


def test_bad_thread_count_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUCONV_CPU_THREADS", "zero")
    with pytest.raises(ValueError, match="GPUCONV_CPU_THREADS"):
        cpu_threads.cpu_threads()


def test_an_error_in_one_chunk_reaches_the_caller(small_chunks: None) -> None:
    seen: list[tuple[int, int]] = []

    def job(lo: int, hi: int) -> None:
        seen.append((lo, hi))
        if lo > 0:
            raise ValueError(f"chunk {lo}")

    with cpu_threads.engine(), pytest.raises(ValueError, match="chunk"):
        cpu_threads.over_batch(job, 10, 10_000)
    assert len(seen) > 1


def _both(fn):  # noqa: ANN001, ANN202
    """fn() inline, then inside the engine with small chunks."""
    inline = fn()
    with cpu_threads.engine():
        threaded = fn()
    return inline, threaded


@pytest.mark.parametrize("stride,pad,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_conv_chunked_equals_inline(small_chunks: None, stride: int, pad: int, dilation: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 11, 11))
    w = rng.standard_normal((5, 3, 3, 3))
    b = rng.standard_normal(5)
    y_shape = conv.conv_output_shape(x.shape, w.shape, stride, pad, dilation)
    dy = rng.standard_normal(y_shape)
    y0, y1 = _both(lambda: conv.conv_forward(x, w, b, stride, pad, dilation, relu=True))
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)
    dx0, dx1 = _both(lambda: conv.conv_backward_data(dy, w, x.shape, stride, pad, dilation))
    np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-12)
    (dw0, db0), (dw1, db1) = _both(lambda: conv.conv_backward_filter(x, dy, w.shape, stride, pad, dilation))
    np.testing.assert_allclose(dw1, dw0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db1, db0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("F,S,pad", [(2, 2, 0), (3, 2, 0), (3, 2, 1)])
def test_pool_chunked_is_bitwise_inline(small_chunks: None, F: int, S: int, pad: int) -> None:
    rng = np.random.default_rng(1)
    size = 12 if F == S else 13
    x = rng.standard_normal((9, 4, size, size)).astype(np.float32)
    (y0, s0), (y1, s1) = _both(lambda: pool.maxpool_forward(x, F, S, pad))
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(s1, s0)
    dy = rng.standard_normal(y0.shape).astype(np.float32)
    dx0, dx1 = _both(lambda: pool.maxpool_backward(dy, s0, x.shape, F, S, pad))
    np.testing.assert_array_equal(dx1, dx0)
    a0, a1 = _both(lambda: pool.avgpool_backward(dy, x.shape, F, S, pad))
    np.testing.assert_array_equal(a1, a0)


def test_gemm_rows_chunked_equals_inline(small_chunks: None) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((37, 50))
    w = rng.standard_normal((23, 50))
    b = rng.standard_normal(23)
    y0, y1 = _both(lambda: fc.fc_forward(x, w, b, relu=True))
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal((37, 23))
    (dw0, db0), (dw1, db1) = _both(lambda: fc.fc_backward_weight(x, dy))
    np.testing.assert_allclose(dw1, dw0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db1, db0, rtol=1e-12, atol=1e-12)


def test_adam_chunked_is_bitwise_inline(small_chunks: None) -> None:
    rng = np.random.default_rng(3)
    p, g = rng.standard_normal((2, 30_001)).astype(np.float32)
    states = [[p.copy(), np.zeros_like(p), np.zeros_like(p)] for _ in range(2)]
    for t in (1, 2, 3):
        optim.adam_update(states[0][0], g, states[0][1], states[0][2], lr=1e-2, t=t, weight_decay=1e-3)
        with cpu_threads.engine():
            optim.adam_update(states[1][0], g, states[1][1], states[1][2], lr=1e-2, t=t, weight_decay=1e-3)
    for a, b in zip(*states):
        np.testing.assert_array_equal(b, a)
