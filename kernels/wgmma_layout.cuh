// wgmma_layout.cuh -- the shared-memory operand layout that the sm_90a GEMMs (fc.cu's
// gemm_tf32_wgmma_*, conv.cu's conv_*_tf32_wgmma) hand to wgmma, and its descriptors.
//
// Plain C (no PTX), so the CPU emulator compiles it as is.  No launch geometry of its own.
// An operand tile X(r, k) of R rows and a K slice of WG_BK = 32 fp32 values is stored
// K-major with the 128-byte swizzle: row r at byte r*128, its 16-byte chunk c (k = 4c..4c+3)
// at chunk position c ^ (r % 8).  Eight rows make a 1024-byte atom; the swizzle is a
// function of the address bits, so every tile starts 1024-byte aligned (wg_align_smem).
// Rows of a chunk column land in 8 different bank groups, which is what lets the tensor
// cores (and copies that give a warp 8 rows x 4 consecutive k, or 1 row x 32 k) touch
// shared memory without bank conflicts.
#pragma once

#define WG_BK 32      // K slice: one 128-byte row per operand row
#define WG_STAGES 3   // cp.async stages in flight

__device__ __forceinline__ int sw128_offset(int r, int k) {
    return r * 128 + ((((k >> 2) ^ r) & 7) << 4) + (k & 3) * 4;
}

// wgmma shared-memory matrix descriptor of a K-major operand in that layout, starting at
// shared address `addr`: bits 0-13 addr/16, 16-29 leading byte offset/16 (unused with a
// swizzle; 1 by convention), 32-45 stride byte offset/16 (1024 B between 8-row groups),
// 62-63 layout 1 = 128-byte swizzle.  Stepping k by 8 (32 B) inside the atom adds 32 to addr.
__device__ __forceinline__ unsigned long long wg_desc_sw128(unsigned addr) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

// The dynamic shared memory rounded up to 1024 bytes (the launcher adds 1 KB of slack);
// sbase: its shared-window address, what descriptors name.
__device__ __forceinline__ char* wg_align_smem(float* dyn, unsigned& sbase) {
    const unsigned raw = smem_addr(dyn);
    char* p = reinterpret_cast<char*>(dyn) + (((raw + 1023u) & ~1023u) - raw);
    sbase = smem_addr(p);
    return p;
}
