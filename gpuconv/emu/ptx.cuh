// ptx.cuh (emulator) -- the functions of kernels/ptx.cuh on the CPU (see runtime.h).
#pragma once

// The emulator stands for sm_90 (the H100 we deploy on): cvt.rn.tf32.f32, round to nearest,
// ties to even, on the top 19 bits; the low 13 bits come out zero.
__device__ __forceinline__ float to_tf32(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7f800000u) != 0x7f800000u) u += 0x0fffu + ((u >> 13) & 1u);  // Inf/NaN pass through
    return __uint_as_float(u & 0xffffe000u);
}

__device__ __forceinline__ void mma_tf32(float* c, const unsigned* a, const unsigned* b) {
    emu::mma_m16n8k8_tf32(c, a, b);
}

__device__ __forceinline__ void cp_async4(float* smem, const float* g, bool valid) {
    emu::cp_async(smem, g, 4, valid ? 4 : 0);
}

__device__ __forceinline__ void cp_async16(float* smem, const float* g, bool valid) {
    if (((uintptr_t)smem | (uintptr_t)g) & 15u) emu::fail("misaligned 16-byte cp.async");
    emu::cp_async(smem, g, 16, valid ? 16 : 0);
}

__device__ __forceinline__ void cp_async4_s(unsigned saddr, const float* g, bool valid) {
    emu::cp_async(emu::smem_ptr(saddr, 4), g, 4, valid ? 4 : 0);
}

__device__ __forceinline__ void cp_async16_s(unsigned saddr, const float* g, bool valid) {
    if ((saddr | (unsigned)(uintptr_t)g) & 15u) emu::fail("misaligned 16-byte cp.async");
    emu::cp_async(emu::smem_ptr(saddr, 16), g, 16, valid ? 16 : 0);
}

__device__ __forceinline__ void cp_async_commit() { emu::cp_async_commit(); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    emu::cp_async_wait(N);
}

// The shared-window address of a pointer into the dynamic shared memory (runtime.h).
__device__ __forceinline__ unsigned smem_addr(const void* p) { return emu::smem_offset(p); }
