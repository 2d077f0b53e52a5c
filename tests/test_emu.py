"""The kernel emulator (gpuconv.emu): CUDA semantics on the CPU, and the misuse it catches.

The op kernels themselves run on the emulator through the ``emu`` variants of the
tests marked ``gpu`` (see conftest.py); this file checks the emulator with small
probe kernels whose answers are known.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gpuconv import cuda, device, emu
from tests.helpers import tf32_rne, tf32_truncate

pytestmark = pytest.mark.skipif(not emu.available(), reason="no C++ compiler: the kernel emulator is unavailable")

PROBES = r'''
#include "ptx.cuh"

extern "C" __global__ void reverse_block(const float* x, float* y) {
    __shared__ float s[256];
    const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
    __syncthreads();
    y[base + t] = s[blockDim.x - 1 - t];
}

extern "C" __global__ void early_exit_then_barrier(float* y, int live) {
    __shared__ float s[256];
    if ((int)threadIdx.x >= live) return;  // exited threads do not hold the barrier up
    s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    y[threadIdx.x] = s[live - 1 - threadIdx.x];
}

extern "C" __global__ void divergent_barrier(float* y) {
    if (threadIdx.x < 16) {
        __syncthreads();
        y[threadIdx.x] = 1.f;
    } else {
        __syncthreads();
        y[threadIdx.x] = 2.f;
    }
}

extern "C" __global__ void index_probe(int* out) {
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int i = b * blockDim.x * blockDim.y * blockDim.z + t;
    out[4 * i + 0] = threadIdx.x + 100 * threadIdx.y + 10000 * threadIdx.z;
    out[4 * i + 1] = blockIdx.x + 100 * blockIdx.y + 10000 * blockIdx.z;
    out[4 * i + 2] = blockDim.x + 100 * blockDim.y + 10000 * blockDim.z;
    out[4 * i + 3] = gridDim.x + 100 * gridDim.y + 10000 * gridDim.z;
}

extern "C" __global__ void shuffles(const float* x, float* out, int width) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = x[t];
    out[4 * t + 0] = __shfl_xor_sync(0xffffffffu, v, 5, width);
    out[4 * t + 1] = __shfl_down_sync(0xffffffffu, v, 3, width);
    out[4 * t + 2] = __shfl_up_sync(0xffffffffu, v, 2, width);
    out[4 * t + 3] = __shfl_sync(0xffffffffu, v, 7, width);
}

extern "C" __global__ void warp_sum(const double* x, double* out) {
    double v = x[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) out[threadIdx.x / 32] = v;
}

// One warp: A (16x8, row-major) and B (8x8, k-major) into the documented fragments.
extern "C" __global__ void mma_probe(const float* A, const float* B, float* C) {
    const int lane = threadIdx.x, gq = lane >> 2, tq = lane & 3;
    unsigned a[4] = {__float_as_uint(A[gq * 8 + tq]), __float_as_uint(A[(gq + 8) * 8 + tq]),
                     __float_as_uint(A[gq * 8 + tq + 4]), __float_as_uint(A[(gq + 8) * 8 + tq + 4])};
    unsigned b[2] = {__float_as_uint(B[tq * 8 + gq]), __float_as_uint(B[(tq + 4) * 8 + gq])};
    float c[4] = {C[gq * 8 + 2 * tq], C[gq * 8 + 2 * tq + 1], C[(gq + 8) * 8 + 2 * tq], C[(gq + 8) * 8 + 2 * tq + 1]};
    mma_tf32(c, a, b);
    C[gq * 8 + 2 * tq] = c[0];
    C[gq * 8 + 2 * tq + 1] = c[1];
    C[(gq + 8) * 8 + 2 * tq] = c[2];
    C[(gq + 8) * 8 + 2 * tq + 1] = c[3];
}

extern "C" __global__ void tf32_round(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = to_tf32(x[i]);
}

// out[0..3]: before any wait, after wait<1> (group 1 landed, group 2 pending), after wait<0>,
// and a zero-filled (!valid) copy.
extern "C" __global__ void async_copies(const float* g, float* out) {
    __shared__ __align__(16) float s[8];
    for (int i = 0; i < 8; ++i) s[i] = -1.f;
    cp_async4(&s[0], &g[0], true);
    cp_async_commit();
    cp_async16(&s[4], &g[4], true);
    cp_async_commit();
    out[0] = s[0];
    cp_async_wait<1>();
    out[1] = s[0];
    out[2] = s[4];
    cp_async_wait<0>();
    out[3] = s[4];
    out[4] = s[7];
    cp_async4(&s[1], &g[1], false);
    cp_async_commit();
    cp_async_wait<0>();
    out[5] = s[1];
}

extern "C" __global__ void misaligned_async(const float* g) {
    __shared__ __align__(16) float s[8];
    cp_async16(&s[1], g, true);
    cp_async_commit();
    cp_async_wait<0>();
}

extern "C" __global__ void dynamic_shared(const float* x, float* y, int n) {
    extern __shared__ __align__(16) float buf[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = x[i] * 2.f;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = buf[n - 1 - i];
}

extern "C" __global__ void write_n(float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 1.f;  // off by one on purpose
}

extern "C" __global__ void read_n(const float* x, float* y, int n) {
    const int i = threadIdx.x;
    if (i < n) y[i] = x[i + 1];  // reads one past the end
}

extern "C" __global__ void scale_inplace(float* p, const float* q, long long n, float a) {
    for (long long i = threadIdx.x; i < n; i += blockDim.x) p[i] = a * p[i] + q[i];
}

extern "C" __global__ void takes_double(double* y, double v) { y[0] = v; }

// Missing __syncthreads between a shared write and another thread's read (shift +1 or -1).
extern "C" __global__ void neighbour_no_barrier(const float* x, float* y, int shift) {
    __shared__ float s[64];
    const int t = threadIdx.x, n = blockDim.x, base = blockIdx.x * n;
    s[t] = x[base + t];
    const int j = t + shift;
    y[base + t] = (j >= 0 && j < n) ? s[j] : s[t];  // no wrap-around: only the neighbour's write races
}
'''


@pytest.fixture(scope="module")
def probes() -> str:
    emu.build_source("probes", PROBES)
    return "probes"


def test_block_barrier_and_shared_memory(probes, rng):
    x = rng.standard_normal(3 * 256).astype(np.float32)
    y = np.full_like(x, np.nan)
    emu.launch(probes, "reverse_block", (3,), (256,), [x, y])
    np.testing.assert_array_equal(y, x.reshape(3, 256)[:, ::-1].reshape(-1))


@pytest.mark.parametrize("shift", [1, -1])
def test_missing_barrier_shows_whichever_thread_writes_first(probes, rng, shift):
    """Threads run forward in one block and backward in the next: a read of a neighbour's
    shared write without a barrier sees stale data in one of the two, for either neighbour."""
    x = rng.standard_normal(2 * 64).astype(np.float32)
    y = np.full_like(x, np.nan)
    emu.launch(probes, "neighbour_no_barrier", (2,), (64,), [x, y, shift])
    idx = np.arange(64) + shift
    idx = np.where((idx >= 0) & (idx < 64), idx, np.arange(64))
    with_barrier = x.reshape(2, 64)[:, idx].reshape(-1)
    wrong = (y != with_barrier).reshape(2, 64).any(axis=1)
    assert wrong.any(), "the race went unseen in both blocks"


def test_exited_threads_do_not_hold_the_barrier(probes):
    y = np.full(256, np.nan, dtype=np.float32)
    emu.launch(probes, "early_exit_then_barrier", (1,), (256,), [y, 100])
    np.testing.assert_array_equal(y[:100], np.arange(100)[::-1])
    assert np.isnan(y[100:]).all()


def test_divergent_syncthreads_is_an_error(probes):
    y = np.zeros(32, dtype=np.float32)
    with pytest.raises(emu.EmulatorError, match="divergent __syncthreads"):
        emu.launch(probes, "divergent_barrier", (1,), (32,), [y])


def test_thread_and_block_indices(probes):
    grid, block = (3, 2, 2), (4, 3, 2)
    nthreads = int(np.prod(grid) * np.prod(block))
    out = np.full(4 * nthreads, -1, dtype=np.int32)
    emu.launch(probes, "index_probe", grid, block, [out])
    got = out.reshape(-1, 4)
    expect = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for tz in range(block[2]):
                    for ty in range(block[1]):
                        for tx in range(block[0]):
                            expect.append((tx + 100 * ty + 10000 * tz, bx + 100 * by + 10000 * bz,
                                           4 + 300 + 20000, 3 + 200 + 20000))
    np.testing.assert_array_equal(got, np.array(expect))


@pytest.mark.parametrize("width", [32, 16, 8])
def test_warp_shuffles_match_cuda_semantics(probes, rng, width):
    x = rng.standard_normal(64).astype(np.float32)
    out = np.full(4 * 64, np.nan, dtype=np.float32)
    emu.launch(probes, "shuffles", (1,), (64,), [x, out, width])
    got = out.reshape(64, 4)
    for t in range(64):
        lane, seg = t % 32, (t % 32) // width * width
        warp = t - lane
        xor = lane ^ 5
        down = lane + 3 if lane % width + 3 < width else lane
        up = lane - 2 if lane % width >= 2 else lane
        expect = [x[warp + (xor if xor // width == lane // width else lane)], x[warp + down], x[warp + up],
                  x[warp + seg + 7 % width]]
        np.testing.assert_array_equal(got[t], expect, err_msg=f"thread {t}")


def test_warp_reduction_in_double(probes, rng):
    x = rng.standard_normal(96)
    out = np.zeros(3)
    emu.launch(probes, "warp_sum", (1,), (96,), [x, out])
    # The butterfly adds in its own order; replay that order so the comparison can be exact
    # (a plain sum differs in the last bits, and by far more relative to a sum near zero).
    v = x.reshape(3, 32).copy()
    lanes = np.arange(32)
    for offset in (16, 8, 4, 2, 1):
        v = v + v[:, lanes ^ offset]
    np.testing.assert_array_equal(out, v[:, 0])


def test_mma_fragment_layout(probes, rng):
    """One m16n8k8 TF32 MMA against NumPy (operands cut to TF32, as the tensor cores read them)."""
    a = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((8, 8)).astype(np.float32)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    out = c.copy()
    emu.launch(probes, "mma_probe", (1,), (32,), [a, b, out])
    expect = tf32_truncate(a).astype(np.float64) @ tf32_truncate(b).astype(np.float64) + c
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


def test_tf32_rounding(probes):
    one = np.float32(1.0).view(np.uint32)
    specials = np.array([one + 0x1000, one + 0x0FFF, one + 0x3000, (one + 0x1000) | 0x80000000, one | 0x1FFF],
                        dtype=np.uint32).view(np.float32)  # ties, just below a tie, odd tie, negative tie
    x = np.concatenate([specials, np.array([np.inf, -np.inf, 0.0, -0.0, 3.4e38], dtype=np.float32),
                        np.random.default_rng(1).standard_normal(300).astype(np.float32)])
    y = np.full_like(x, np.nan)
    emu.launch(probes, "tf32_round", (cuda.cdiv(x.size, 128),), (128,), [x, y, x.size])
    np.testing.assert_array_equal(y.view(np.uint32), tf32_rne(x).view(np.uint32))
    assert y[0] == np.float32(1.0)                             # a tie goes to the even neighbour ...
    assert y[2] == np.float32(1.0) + np.float32(2.0 ** -9)     # ... up from an odd one
    assert y[3] == -np.float32(1.0) and y[1] == np.float32(1.0)
    # The NumPy model itself, against an independent one: frexp's mantissa in [0.5, 1) has 11
    # significant bits in TF32, and np.round rounds half to even.
    finite = x[np.isfinite(x) & (np.abs(x) < 3e38)].astype(np.float64)
    m, e = np.frexp(finite)
    np.testing.assert_array_equal(tf32_rne(finite.astype(np.float32)), np.ldexp(np.round(np.ldexp(m, 11)), e - 11))
    nan = np.full(1, np.nan, dtype=np.float32)
    emu.launch(probes, "tf32_round", (1,), (32,), [nan, y, 1])
    assert np.isnan(y[0])


def test_cp_async_lands_only_at_its_wait(probes):
    g = np.arange(1, 9, dtype=np.float32)
    out = np.full(6, np.nan, dtype=np.float32)
    emu.launch(probes, "async_copies", (1,), (1,), [g, out])
    # before any wait: stale; wait<1>: the older group landed, the newer not yet; zero-fill when !valid
    np.testing.assert_array_equal(out, [-1, 1, -1, 5, 8, 0])


def test_misaligned_16_byte_cp_async_is_an_error(probes):
    with pytest.raises(emu.EmulatorError, match="misaligned 16-byte cp.async"):
        emu.launch(probes, "misaligned_async", (1,), (1,), [np.zeros(8, dtype=np.float32)])


def test_dynamic_shared_memory(probes, rng):
    x = rng.standard_normal(300).astype(np.float32)
    y = np.full_like(x, np.nan)
    emu.launch(probes, "dynamic_shared", (1,), (64,), [x, y, 300], shared_mem=300 * 4)
    np.testing.assert_array_equal(y, (2 * x)[::-1])


def test_out_of_bounds_write_is_an_error(probes):
    y = np.zeros(100, dtype=np.float32)
    with pytest.raises(emu.EmulatorError, match="out-of-bounds write to argument 0 .*4 bytes past its end"):
        emu.launch(probes, "write_n", (1,), (128,), [y, 100])
    emu.launch(probes, "write_n", (1,), (128,), [y, 99])  # in bounds
    assert (y == 1).all()


def test_out_of_bounds_read_reads_nan(probes):
    x = np.arange(8, dtype=np.float32)
    y = np.zeros(8, dtype=np.float32)
    emu.launch(probes, "read_n", (1,), (8,), [x, y, 8])
    np.testing.assert_array_equal(y[:7], x[1:])
    assert np.isnan(y[7])  # the guard band past x


def test_read_only_inputs(probes):
    x = np.arange(8, dtype=np.float32)
    x.flags.writeable = False
    y = np.zeros(8, dtype=np.float32)
    emu.launch(probes, "read_n", (1,), (8,), [x, y, 7])  # reading a read-only array is fine
    np.testing.assert_array_equal(y[:7], x[1:])
    with pytest.raises(emu.EmulatorError, match="wrote to argument 0, a read-only array"):
        emu.launch(probes, "write_n", (1,), (8,), [x, 7])


def test_aliased_arguments_stay_aliased(probes):
    p = np.arange(10, dtype=np.float32)
    emu.launch(probes, "scale_inplace", (1,), (4,), [p, p, np.int64(10), 2.0])  # p = 2p + p
    np.testing.assert_array_equal(p, 3 * np.arange(10))


@pytest.mark.parametrize("args, match", [
    ([np.zeros(4, np.float32), np.int64(4), np.float64(1.0)], "argument 3 must be a 32-bit float"),
    ([np.zeros(4, np.float32), 4, 1.0], "argument 2 must be a 64-bit integer"),
    ([3, np.int64(4), 1.0], "argument 0 must be an array"),
    ([np.zeros(4, np.float32), np.int64(4)], "4 parameters, 2 arguments"),
    ([np.zeros((4, 4), np.float32)[:, 0], np.int64(4), 1.0], "not C-contiguous"),
])
def test_argument_kinds_and_sizes_are_checked(probes, args, match):
    q = np.zeros(4, np.float32)
    full = [args[0], q, *args[1:]] if len(args) != 2 else [args[0], args[1]]
    with pytest.raises(emu.EmulatorError, match=match):
        emu.launch(probes, "scale_inplace", (1,), (4,), full)


def test_double_scalar_argument(probes):
    y = np.zeros(1)
    emu.launch(probes, "takes_double", (1,), (1,), [y, np.float64(0.1)])
    assert y[0] == 0.1
    with pytest.raises(emu.EmulatorError, match="64-bit float"):
        emu.launch(probes, "takes_double", (1,), (1,), [y, 0.1])  # a Python float is passed as float32


WGMMA_PROBE = r'''
#include "ptx.cuh"
#include "wgmma.cuh"

// Byte offset of operand element (r, k < 8) in the layout a descriptor names.  layout 1: the
// 128-byte swizzle (rows 128 B apart, chunk c of row r at c ^ r%8); layout 0: no swizzle,
// 8-row x 16-byte core matrices, k halves 128 B apart (LBO), 8-row groups 256 B apart (SBO).
__device__ int probe_offset(int layout, int r, int k) {
    if (layout == 1) return r * 128 + ((((k >> 2) ^ r) & 7) << 4) + (k & 3) * 4;
    return (r & 7) * 16 + (r >> 3) * 256 + (k >> 2) * 128 + (k & 3) * 4;
}

__device__ unsigned long long probe_desc(int layout, unsigned addr) {
    const unsigned long long a = (addr & 0x3FFFFu) >> 4;
    return layout == 1 ? a | (1ull << 16) | (64ull << 32) | (1ull << 62) : a | (8ull << 16) | (16ull << 32);
}

// One warpgroup: A[64][8] and B[128][8] (row-major in global memory) go to shared memory by
// cp.async in `layout`, then d = A B^T (+ 1 where scale_d), d[64][128].  The flags drop a
// fence or read the accumulators before the wait, for the checks.
extern "C" __global__ void wgmma_probe(const float* a, const float* b, float* d, int layout, int scale_d,
                                       int fence_proxy, int fence_wg, int read_early) {
    extern __shared__ __align__(16) float smem[];
    const unsigned raw = smem_addr(smem);
    char* base = reinterpret_cast<char*>(smem) + (((raw + 1023u) & ~1023u) - raw);
    char* as = base;
    char* bs = base + 8192;
    const int t = threadIdx.x;
    for (int i = t; i < 64 * 8; i += 128) cp_async4((float*)(as + probe_offset(layout, i / 8, i % 8)), a + i, true);
    for (int i = t; i < 128 * 8; i += 128) cp_async4((float*)(bs + probe_offset(layout, i / 8, i % 8)), b + i, true);
    cp_async_commit();
    cp_async_wait<0>();
    if (fence_proxy) fence_proxy_async();
    __syncthreads();
    float acc[64];
    for (int i = 0; i < 64; ++i) acc[i] = 1.f;
    if (fence_wg) wgmma_fence();
    wgmma_m64n128k8_tf32(acc, probe_desc(layout, smem_addr(as)), probe_desc(layout, smem_addr(bs)), scale_d);
    wgmma_commit();
    if (!read_early) wgmma_wait<0>();
    const int w = t >> 5, g = (t & 31) >> 2, q = t & 3;
    for (int j = 0; j < 16; ++j)
        for (int e = 0; e < 4; ++e) d[(16 * w + g + 8 * (e >> 1)) * 128 + 8 * j + 2 * q + (e & 1)] = acc[4 * j + e];
    if (read_early) wgmma_wait<0>();
}
'''


@pytest.fixture(scope="module")
def wgmma_probe() -> str:
    emu.build_source("wgmma_probe", WGMMA_PROBE)
    return "wgmma_probe"


def _wgmma(module, a, b, layout=1, scale_d=1, fence_proxy=1, fence_wg=1, read_early=0):
    d = np.full((64, 128), np.nan, dtype=np.float32)
    emu.launch(module, "wgmma_probe", (1,), (128,), [a, b, d, layout, scale_d, fence_proxy, fence_wg, read_early],
               shared_mem=8192 + 16384 + 1024)
    return d


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("scale_d", [0, 1])
def test_wgmma_descriptor_layouts_and_fragments(wgmma_probe, rng, layout, scale_d):
    """m64n128k8 TF32 against NumPy for both modelled layouts: the descriptor decoding (PTX ISA
    matrix descriptor; CUTLASS's canonical GMMA layouts) and the accumulator fragment."""
    a = rng.standard_normal((64, 8)).astype(np.float32)
    b = rng.standard_normal((128, 8)).astype(np.float32)
    d = _wgmma(wgmma_probe, a, b, layout, scale_d)
    expect = tf32_truncate(a).astype(np.float64) @ tf32_truncate(b).astype(np.float64).T + scale_d
    np.testing.assert_allclose(d, expect, rtol=1e-5, atol=1e-5)


def test_wgmma_lands_only_at_its_wait(wgmma_probe, rng):
    a = rng.standard_normal((64, 8)).astype(np.float32)
    b = rng.standard_normal((128, 8)).astype(np.float32)
    np.testing.assert_array_equal(_wgmma(wgmma_probe, a, b, read_early=1), 1.0)  # the accumulators as before


def test_wgmma_needs_the_proxy_fence_after_cp_async(wgmma_probe, rng):
    a, b = np.ones((64, 8), np.float32), np.ones((128, 8), np.float32)
    with pytest.raises(emu.EmulatorError, match="fence.proxy.async"):
        _wgmma(wgmma_probe, a, b, fence_proxy=0)


def test_wgmma_needs_wgmma_fence(wgmma_probe):
    a, b = np.ones((64, 8), np.float32), np.ones((128, 8), np.float32)
    with pytest.raises(emu.EmulatorError, match="wgmma.fence"):
        _wgmma(wgmma_probe, a, b, fence_wg=0)


def test_every_kernel_file_builds_and_exports_its_kernels():
    for name in cuda.kernel_names():
        mod = emu.build(name)
        assert mod.kernels, name
        # entry points written out in the source (those made by macros are not matched here)
        declared = set(re.findall(r'extern "C" __global__ void\s+(?:__launch_bounds__\([^)]*\)\s*)?(?!__)(\w+)\s*\(',
                                  emu.emulator_source(name)))
        assert declared <= set(mod.kernels), (name, declared - set(mod.kernels))
    assert {"conv_fwd_f32_128x128_tf32", "gemm_tf32_nt", "adam_f32", "bn_apply_f64"} <= {
        k for n in cuda.kernel_names() for k in emu.build(n).kernels}
    # module variants: the async GEMM entries exist only with their define
    for name, variants in cuda.MODULE_VARIANTS.items():
        for defines in variants:
            extra = set(emu.build(name, defines).kernels) - set(emu.build(name).kernels)
            assert extra and all("async" in k for k in extra), (name, defines, extra)
    # the sm_90a variant holds the wgmma GEMM entries and nothing else
    assert set(emu.build("fc", ("GEMM_WGMMA",)).kernels) == {f"gemm_tf32_wgmma_{t}" for t in ("nn", "nt", "tn", "tt")}


def test_emulated_arrays_look_like_device_arrays(rng):
    from gpuconv import device

    x = rng.standard_normal((3, 4)).astype(np.float32)
    with emu.emulated() as xp:
        gx = xp.asarray(x)
        assert device.is_gpu_array(gx) and not device.is_gpu_array(x)
        assert gx.data.ptr % 16 == 0 and gx.device.id == 0
        np.testing.assert_array_equal(device.to_host(gx), x)
        out = xp.empty((5,), dtype=np.float32)
        assert np.isnan(out).all()  # fresh device memory is poison, never zeros
    assert not device.is_gpu_array(gx)  # outside the context, plain NumPy again


def test_cache_dir_falls_back_when_unwritable(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    from gpuconv.kernel_config import using
    with using(cache_dir=blocker):  # a file: no folder can be made below it
        path = emu.cache_dir()
    assert path.is_dir() and not str(path).startswith(str(blocker))
    with using(cache_dir=tmp_path / "c"):
        assert emu.cache_dir() == tmp_path / "c" / "emu"


def test_the_emulator_is_a_device_backend(monkeypatch):
    """emulated() puts the emulator's backend in front (no module attribute is patched): the
    ops' launches, zeroing, capture, SM count and wgmma capability go to it, and it is gone after."""
    from gpuconv import cuda
    launch_before = cuda.launch
    assert device.backend() is not emu.BACKEND
    with emu.emulated() as xp:
        assert device.backend() is emu.BACKEND and isinstance(emu.BACKEND, device.Backend)
        assert cuda.launch is launch_before
        assert cuda.sm_count() == device.SM_COUNT_HINT and cuda.wgmma_capable()
        a = xp.ones(5, dtype=np.float32)
        assert device.is_gpu_array(a) and device.array_module(a) is xp and device.device_of(a).is_gpu
        cuda.zero(a)
        assert (a.get() == 0).all()
        graph = cuda.capture(lambda: cuda.zero(a))
        assert isinstance(graph, emu.Graph) and graph.num_nodes == 1
        device.device_of(a).synchronize()   # a device's synchronize goes to the backend too
    assert device.backend() is not emu.BACKEND and not device.is_gpu_array(a)

