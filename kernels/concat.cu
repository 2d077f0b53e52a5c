// concat.cu -- the planned copy of a channel concatenation, float32 (_f32) and float64 (_f64).
//
//   concat_copy: dst block n [0, inner) = src block n [0, inner), for n < nb
//
// Used where a producer or consumer cannot work on a channel slice of the concat buffer in
// place: forward, a branch output copied into its slice out[:, c0:c1]; backward, the slice
// dy[:, c0:c1] copied out for its branch.  (Kernels that take strided views -- add, gap, relu --
// need neither copy.)
// Layout: src and dst are each `nb` blocks of `inner` contiguous elements (an NCHW sample's
// channels c0..c1-1: (c1-c0)*H*W elements), block n at n * src_bs / n * dst_bs elements (the
// batch strides: Ctot*H*W inside an (N, Ctot, H, W) buffer, inner for a contiguous array).
// Launch geometry: grid (gx, gy), 256-thread blocks; blockIdx.y strides over the nb blocks
// (gy <= 65535), blockIdx.x over a block's elements with a grid-stride loop, 64-bit indices,
// UNROLL elements blockDim.x apart per thread and step (coalesced; loads before stores).
// No shared memory.  src and dst must not overlap.

#define UNROLL 4

template <typename T>
__device__ __forceinline__ void copy_body(const T* __restrict__ src, long long src_bs, T* __restrict__ dst,
                                          long long dst_bs, long long inner, long long nb) {
    const long long bs = blockDim.x;
    const long long stride = (long long)gridDim.x * bs * UNROLL;
    for (long long n = blockIdx.y; n < nb; n += gridDim.y) {
        const T* __restrict__ sp = src + n * src_bs;
        T* __restrict__ dp = dst + n * dst_bs;
        for (long long base = (long long)blockIdx.x * bs * UNROLL + threadIdx.x; base < inner; base += stride) {
            T v[UNROLL];
#pragma unroll
            for (int k = 0; k < UNROLL; ++k) {
                const long long i = base + k * bs;
                if (i < inner) v[k] = sp[i];
            }
#pragma unroll
            for (int k = 0; k < UNROLL; ++k) {
                const long long i = base + k * bs;
                if (i < inner) dp[i] = v[k];
            }
        }
    }
}

extern "C" __global__ void concat_copy_f32(const float* src, long long src_bs, float* dst, long long dst_bs,
                                           long long inner, long long nb) {
    copy_body<float>(src, src_bs, dst, dst_bs, inner, nb);
}
extern "C" __global__ void concat_copy_f64(const double* src, long long src_bs, double* dst, long long dst_bs,
                                           long long inner, long long nb) {
    copy_body<double>(src, src_bs, dst, dst_bs, inner, nb);
}
