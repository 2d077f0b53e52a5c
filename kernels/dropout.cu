// dropout.cu -- inverted dropout, forward and backward, float32 (_f32) and float64 (_f64).
//
// Element i (flat index into the C-contiguous array, any shape) is KEPT iff
//     h(i) >= thr,   h(i) = fmix32(fmix32(lo(i) ^ k0) ^ k1 ^ (hi(i) * 0x9E3779B1))
// where fmix32 is MurmurHash3's finalizer, lo/hi are the low/high 32 bits of i, and
// (k0, k1, thr) come from gpuconv/ops/dropout.py (keys: a hash of (seed, counter); thr =
// floor(p * 2^32)).  All arithmetic is uint32 with wrap-around, exactly as the NumPy path
// computes it, so CPU and GPU masks are bit-identical.
//   forward : mask[i] = keep ? 1 : 0;  y[i] = keep ? x[i] * scale : 0   (scale = 1/(1-p))
//   backward: dx[i]  = mask[i] ? dy[i] * scale : 0
// dropout_fwd_dev_*: the same, with (k0, k1) = keys[0], keys[1] read from device memory (a
// captured CUDA graph replays the launch with the keys the host wrote there for the step).
// In place is allowed (y == x, dx == dy): each element is read then written by one thread.
// Launch geometry: 1-D grid of 256-thread blocks, grid-stride loop with 64-bit indices, UNROLL
// elements blockDim.x apart per thread per step (coalesced).  No shared memory.

#define UNROLL 4

typedef unsigned int u32;
typedef unsigned char u8;

__device__ __forceinline__ u32 fmix32(u32 h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

__device__ __forceinline__ bool keep(long long i, u32 k0, u32 k1, u32 thr) {
    const u32 lo = (u32)((unsigned long long)i & 0xFFFFFFFFull);
    const u32 hi = (u32)((unsigned long long)i >> 32);
    const u32 h = fmix32(fmix32(lo ^ k0) ^ k1 ^ (hi * 0x9E3779B1u));
    return h >= thr;
}

template <typename T>
__device__ __forceinline__ void dropout_fwd_body(const T* x, T* y, u8* mask, long long n,
                                                 u32 k0, u32 k1, u32 thr, T scale) {
    const long long bs = blockDim.x;
    const long long stride = (long long)gridDim.x * bs * UNROLL;
    for (long long base = (long long)blockIdx.x * bs * UNROLL + threadIdx.x; base < n; base += stride) {
        T v[UNROLL];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            const long long i = base + k * bs;
            if (i < n) v[k] = x[i];
        }
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            const long long i = base + k * bs;
            if (i < n) {
                const bool kp = keep(i, k0, k1, thr);
                y[i] = kp ? v[k] * scale : T(0);  // a select: dropped NaN/inf inputs give 0
                mask[i] = kp ? 1 : 0;
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void dropout_bwd_body(const T* dy, const u8* mask, T* dx, long long n,
                                                 T scale) {
    const long long bs = blockDim.x;
    const long long stride = (long long)gridDim.x * bs * UNROLL;
    for (long long base = (long long)blockIdx.x * bs * UNROLL + threadIdx.x; base < n; base += stride) {
        T v[UNROLL];
        u8 m[UNROLL];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            const long long i = base + k * bs;
            if (i < n) {
                v[k] = dy[i];
                m[k] = mask[i];
            }
        }
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            const long long i = base + k * bs;
            if (i < n) dx[i] = m[k] ? v[k] * scale : T(0);
        }
    }
}

extern "C" __global__ void dropout_fwd_f32(const float* x, float* y, u8* mask, long long n,
                                           u32 k0, u32 k1, u32 thr, float scale) {
    dropout_fwd_body<float>(x, y, mask, n, k0, k1, thr, scale);
}
extern "C" __global__ void dropout_fwd_f64(const double* x, double* y, u8* mask, long long n,
                                           u32 k0, u32 k1, u32 thr, double scale) {
    dropout_fwd_body<double>(x, y, mask, n, k0, k1, thr, scale);
}
extern "C" __global__ void dropout_fwd_dev_f32(const float* x, float* y, u8* mask, long long n,
                                               const u32* keys, u32 thr, float scale) {
    dropout_fwd_body<float>(x, y, mask, n, keys[0], keys[1], thr, scale);
}
extern "C" __global__ void dropout_fwd_dev_f64(const double* x, double* y, u8* mask, long long n,
                                               const u32* keys, u32 thr, double scale) {
    dropout_fwd_body<double>(x, y, mask, n, keys[0], keys[1], thr, scale);
}
extern "C" __global__ void dropout_bwd_f32(const float* dy, const u8* mask, float* dx, long long n,
                                           float scale) {
    dropout_bwd_body<float>(dy, mask, dx, n, scale);
}
extern "C" __global__ void dropout_bwd_f64(const double* dy, const u8* mask, double* dx, long long n,
                                           double scale) {
    dropout_bwd_body<double>(dy, mask, dx, n, scale);
}
