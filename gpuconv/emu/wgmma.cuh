// wgmma.cuh (emulator) -- the functions of kernels/wgmma.cuh on the CPU (see runtime.h's
// wgmma section: queued per thread, performed at the wait, fences checked).
#pragma once

__device__ __forceinline__ void wgmma_fence() { emu::wgmma_fence(); }

__device__ __forceinline__ void wgmma_commit() { emu::wgmma_commit(); }

template <int N>
__device__ __forceinline__ void wgmma_wait() {
    emu::wgmma_wait(N);
}

__device__ __forceinline__ void fence_proxy_async() { emu::fence_proxy_async(); }

template <int R>
__device__ __forceinline__ void wg_fence_acc(float (&)[R]) {}  // a compiler barrier on the GPU

__device__ __forceinline__ void wgmma_m64n128k8_tf32(float (&d)[64], unsigned long long da, unsigned long long db,
                                                     int scale_d) {
    emu::wgmma_tf32(d, 128, da, db, scale_d);
}

__device__ __forceinline__ void wgmma_m64n64k8_tf32(float (&d)[32], unsigned long long da, unsigned long long db,
                                                    int scale_d) {
    emu::wgmma_tf32(d, 64, da, db, scale_d);
}

__device__ __forceinline__ void wgmma_m64n32k8_tf32(float (&d)[16], unsigned long long da, unsigned long long db,
                                                    int scale_d) {
    emu::wgmma_tf32(d, 32, da, db, scale_d);
}
