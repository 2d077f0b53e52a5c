// activation.cu -- ReLU / leaky ReLU, forward and backward, float32 (_f32) and float64 (_f64).
//
//   forward : y  = x > 0 ? x  : slope * x      (NaN x stays NaN)
//   backward: dx = y > 0 ? dy : slope * dy     (uses the OUTPUT y: y > 0 iff x > 0 for slope >= 0)
// With slope == 0 the other branch is an exact +0 (a select, so -inf x or inf/NaN dy give 0).
//
// Elementwise.  Layout: every operand is `nb` blocks of `inner` contiguous elements, block n at
// n * <operand>_bs elements (its batch stride): a C-contiguous array of any shape (NCHW, N x D)
// is one block (nb = 1, inner = size); an NCHW channel slice buf[:, c0:c1] of an (N, Ctot, H, W)
// buffer (a branch's part of a concat buffer, read or written in place) is N blocks of
// (c1-c0)*H*W elements, Ctot*H*W apart.
// In-place is allowed (y == x, dx == dy): each element is read and then written by one thread.
// Launch geometry: grid (gx, gy) of 256-thread blocks; blockIdx.y strides over the nb blocks
// (gy <= 65535), blockIdx.x over a block's elements with a grid-stride loop, 64-bit indices; each
// thread handles UNROLL elements blockDim.x apart per iteration (coalesced, loads issued before
// stores for memory-level parallelism).  No shared memory.

#define UNROLL 4

template <typename T, bool BWD>
__device__ __forceinline__ void relu_body(const T* v, long long v_bs, const T* g, long long g_bs, T* o,
                                          long long o_bs, long long inner, long long nb, T slope) {
    const long long bs = blockDim.x;
    const long long stride = (long long)gridDim.x * bs * UNROLL;
    for (long long n = blockIdx.y; n < nb; n += gridDim.y) {
        const T* vp = v + n * v_bs;
        const T* gp = g + n * g_bs;
        T* op = o + n * o_bs;
        for (long long base = (long long)blockIdx.x * bs * UNROLL + threadIdx.x; base < inner; base += stride) {
            T a[UNROLL], b[UNROLL];
#pragma unroll
            for (int k = 0; k < UNROLL; ++k) {
                const long long i = base + k * bs;
                if (i < inner) {
                    a[k] = vp[i];               // x (forward) or y (backward): decides the branch
                    b[k] = BWD ? gp[i] : a[k];  // value scaled: x (forward) or dy (backward)
                }
            }
#pragma unroll
            for (int k = 0; k < UNROLL; ++k) {
                const long long i = base + k * bs;
                if (i < inner) {
                    T r;
                    if (a[k] > T(0)) r = b[k];
                    else if (!BWD && a[k] != a[k]) r = a[k];  // forward: NaN propagates
                    else r = slope == T(0) ? T(0) : slope * b[k];  // exact 0, even for -inf / NaN dy
                    op[i] = r;
                }
            }
        }
    }
}

extern "C" __global__ void relu_fwd_f32(const float* x, long long x_bs, float* y, long long y_bs,
                                        long long inner, long long nb, float slope) {
    relu_body<float, false>(x, x_bs, x, x_bs, y, y_bs, inner, nb, slope);
}
extern "C" __global__ void relu_fwd_f64(const double* x, long long x_bs, double* y, long long y_bs,
                                        long long inner, long long nb, double slope) {
    relu_body<double, false>(x, x_bs, x, x_bs, y, y_bs, inner, nb, slope);
}
extern "C" __global__ void relu_bwd_f32(const float* dy, long long dy_bs, const float* y, long long y_bs,
                                        float* dx, long long dx_bs, long long inner, long long nb, float slope) {
    relu_body<float, true>(y, y_bs, dy, dy_bs, dx, dx_bs, inner, nb, slope);
}
extern "C" __global__ void relu_bwd_f64(const double* dy, long long dy_bs, const double* y, long long y_bs,
                                        double* dx, long long dx_bs, long long inner, long long nb, double slope) {
    relu_body<double, true>(y, y_bs, dy, dy_bs, dx, dx_bs, inner, nb, slope);
}
