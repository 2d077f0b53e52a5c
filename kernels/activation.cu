// activation.cu -- ReLU / leaky ReLU, forward and backward, float32 (_f32) and float64 (_f64).
//
//   forward : y  = x > 0 ? x  : slope * x      (NaN x stays NaN)
//   backward: dx = y > 0 ? dy : slope * dy     (uses the OUTPUT y: y > 0 iff x > 0 for slope >= 0)
// With slope == 0 the other branch is an exact +0 (a select, so -inf x or inf/NaN dy give 0).
//
// Elementwise over a flat C-contiguous array of n elements (any shape, e.g. NCHW or N x D).
// In-place is allowed (y == x, dx == dy): each element is read and then written by one thread.
// Launch geometry: 1-D grid of 256-thread blocks, grid-stride loop with 64-bit indices; each
// thread handles UNROLL elements blockDim.x apart per iteration (coalesced, loads issued before
// stores for memory-level parallelism).  No shared memory.

#define UNROLL 4

template <typename T, bool BWD>
__device__ __forceinline__ void relu_body(const T* v, const T* g, T* o, long long n, T slope) {
    const long long bs = blockDim.x;
    const long long stride = (long long)gridDim.x * bs * UNROLL;
    for (long long base = (long long)blockIdx.x * bs * UNROLL + threadIdx.x; base < n; base += stride) {
        T a[UNROLL], b[UNROLL];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            const long long i = base + k * bs;
            if (i < n) {
                a[k] = v[i];               // x (forward) or y (backward): decides the branch
                b[k] = BWD ? g[i] : a[k];  // value scaled: x (forward) or dy (backward)
            }
        }
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            const long long i = base + k * bs;
            if (i < n) {
                T r;
                if (a[k] > T(0)) r = b[k];
                else if (!BWD && a[k] != a[k]) r = a[k];  // forward: NaN propagates
                else r = slope == T(0) ? T(0) : slope * b[k];  // exact 0, even for -inf / NaN dy
                o[i] = r;
            }
        }
    }
}

extern "C" __global__ void relu_fwd_f32(const float* x, float* y, long long n, float slope) {
    relu_body<float, false>(x, x, y, n, slope);
}
extern "C" __global__ void relu_fwd_f64(const double* x, double* y, long long n, double slope) {
    relu_body<double, false>(x, x, y, n, slope);
}
extern "C" __global__ void relu_bwd_f32(const float* dy, const float* y, float* dx, long long n, float slope) {
    relu_body<float, true>(y, dy, dx, n, slope);
}
extern "C" __global__ void relu_bwd_f64(const double* dy, const double* y, double* dx, long long n, double slope) {
    relu_body<double, true>(y, dy, dx, n, slope);
}
