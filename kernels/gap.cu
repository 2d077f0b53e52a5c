// gap.cu -- global average pooling, forward and backward, float32 (_f32) and float64 (_f64).
//
//   gap_fwd : y[n, c]          = (sum over h, w of x[n, c, h, w]) / (H*W)
//   gap_bwd : dx[n, c, h, w]   = dy[n, c] / (H*W)
//
// Layout: x / dx are NCHW with each sample's C*H*W elements contiguous, sample n starting at
// n * x_bs (its batch stride in elements: C*H*W for a C-contiguous array, Ctot*H*W for a channel
// slice buf[:, c0:c1] of an (N, Ctot, H, W) buffer).  y / dy are (N, C) row-major, contiguous.
// Plane p = n*C + c is HW = H*W contiguous elements at n*x_bs + c*HW.
// Launch geometry: 1-D grid of 256-thread blocks, one warp per plane (8 planes per block),
// warps grid-striding over the N*C planes.  Forward: each lane sums elements lane, lane+32, ...
// into two independent accumulators (coalesced 128-byte rows, two loads in flight), then the
// warp reduces with __shfl_xor_sync; lane 0 writes the mean.  No atomics, no shared memory, and
// a fixed summation order, so results are deterministic.  Backward: the warp writes its plane,
// every lane the same dy / HW (coalesced stores).  64-bit offsets throughout.

#define GAP_WARPS 8

template <typename T>
__device__ __forceinline__ T gap_warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T>
__device__ __forceinline__ void gap_fwd_body(const T* __restrict__ x, long long x_bs, T* __restrict__ y,
                                             int C, long long HW, long long planes) {
    const int lane = threadIdx.x & 31;
    const long long step = (long long)gridDim.x * GAP_WARPS;
    // the warp's loop bound is warp-uniform, so all 32 lanes reach the shuffles together
    for (long long p = (long long)blockIdx.x * GAP_WARPS + (threadIdx.x >> 5); p < planes; p += step) {
        const long long n = p / C;
        const T* __restrict__ xp = x + n * x_bs + (p - n * C) * HW;
        T s0 = T(0), s1 = T(0);
        long long i = lane;
        for (; i + 32 < HW; i += 64) {
            s0 += xp[i];
            s1 += xp[i + 32];
        }
        if (i < HW) s0 += xp[i];
        const T s = gap_warp_sum(s0 + s1);
        if (lane == 0) y[p] = s / T(HW);
    }
}

template <typename T>
__device__ __forceinline__ void gap_bwd_body(const T* __restrict__ dy, T* __restrict__ dx, long long dx_bs,
                                             int C, long long HW, long long planes) {
    const int lane = threadIdx.x & 31;
    const long long step = (long long)gridDim.x * GAP_WARPS;
    for (long long p = (long long)blockIdx.x * GAP_WARPS + (threadIdx.x >> 5); p < planes; p += step) {
        const long long n = p / C;
        T* __restrict__ dp = dx + n * dx_bs + (p - n * C) * HW;
        const T g = dy[p] / T(HW);
        for (long long i = lane; i < HW; i += 32) dp[i] = g;
    }
}

extern "C" __global__ void gap_fwd_f32(const float* x, long long x_bs, float* y, int C, long long HW,
                                       long long planes) {
    gap_fwd_body<float>(x, x_bs, y, C, HW, planes);
}
extern "C" __global__ void gap_fwd_f64(const double* x, long long x_bs, double* y, int C, long long HW,
                                       long long planes) {
    gap_fwd_body<double>(x, x_bs, y, C, HW, planes);
}
extern "C" __global__ void gap_bwd_f32(const float* dy, float* dx, long long dx_bs, int C, long long HW,
                                       long long planes) {
    gap_bwd_body<float>(dy, dx, dx_bs, C, HW, planes);
}
extern "C" __global__ void gap_bwd_f64(const double* dy, double* dx, long long dx_bs, int C, long long HW,
                                       long long planes) {
    gap_bwd_body<double>(dy, dx, dx_bs, C, HW, planes);
}
