// ptx.cuh -- inline-PTX wrappers shared by the GEMM kernels (conv.cu, fc.cu).
//
// Included textually by gpuconv.cuda.kernel_source (so CuPy's cache key covers it);
// the CPU emulator (gpuconv/emu/ptx.cuh) supplies the same functions.  No launch
// geometry of its own; data are NCHW tensors' GEMM tiles in shared memory.
//   to_tf32      round an fp32 value to TF32 (10-bit mantissa): cvt.rn (ties to even) on
//                sm_90+, cvt.rna (ties away) on sm_80.
//   mma_tf32     mma.sync.m16n8k8 row.col, TF32 inputs, fp32 accumulate, one warp.
//   cp_async4/16 cp.async global -> shared, 4 or 16 bytes, zero-filled when !valid.
//   cp_async4_s/16_s the same with the destination given as a shared-window address
//                (smem_addr): 32-bit, so a constant offset folds into the instruction.
//   cp_async_commit / cp_async_wait<N>: close a group / wait until <= N groups pend.
#pragma once

// sm_90 and later: cvt.rn (nearest, ties to even; what cuBLAS applies) is one instruction
// (F2FP.TF32.F32), where cvt.rna (ties away, the only form before sm_90) expands to three or
// four integer/compare instructions per operand: a fifth of the TF32 main loops' issue slots.
__device__ __forceinline__ float to_tf32(float v) {
    unsigned u;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm("cvt.rn.tf32.f32 %0, %1;" : "=r"(u) : "f"(v));
#else
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(v));
#endif
    return __uint_as_float(u);
}

// Fragments (lane = 4*gq + tq): a0 A[gq][tq] a1 A[gq+8][tq] a2 A[gq][tq+4] a3 A[gq+8][tq+4];
// b0 B[tq][gq] b1 B[tq+4][gq]; c0,c1 C[gq][2tq..2tq+1], c2,c3 C[gq+8][2tq..2tq+1].
__device__ __forceinline__ void mma_tf32(float* c, const unsigned* a, const unsigned* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// 4-byte copy through L1 (.ca): the gathered implicit-GEMM operands reuse lines.
__device__ __forceinline__ void cp_async4(float* smem, const float* g, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(smem)), "l"(g),
                 "r"(valid ? 4 : 0));
}

// 16-byte copy bypassing L1 (.cg); both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async16(float* smem, const float* g, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(g),
                 "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async4_s(unsigned saddr, const float* g, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(saddr), "l"(g), "r"(valid ? 4 : 0));
}

__device__ __forceinline__ void cp_async16_s(unsigned saddr, const float* g, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(g), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
