// add.cu -- residual add (merge of two branches), forward and backward, float32 (_f32) and
// float64 (_f64).
//
//   add_fwd : y  = a + b, then ReLU when relu != 0 (the fused "add -> relu" of a residual block:
//             y = s > 0 ? s : +0 for s = a + b; a NaN sum stays NaN, as in activation.cu)
//   add_bwd : dx = dy (relu == 0: the gradient of both inputs is dy itself; this is the copy
//             into a separate buffer), or dx = y > 0 ? dy : +0 (relu != 0; y is the forward
//             OUTPUT, a select, so inf / NaN dy where y <= 0 give an exact 0)
//   accumulating a gradient (dst += src) is add_fwd with a = y = dst, relu = 0.
//
// Layout: every operand is `nb` blocks of `inner` contiguous elements, block n starting at
// n * <operand>_bs (its batch stride, in elements): a C-contiguous array of any shape is one
// block (nb = 1, inner = size); an NCHW channel slice buf[:, c0:c1] of an (N, Ctot, H, W)
// buffer is N blocks of (c1-c0)*H*W elements, Ctot*H*W apart.  Operands may alias exactly
// (in place: y == a, dx == dy): each element is read and then written by one thread.
// Launch geometry: grid (gx, gy), 256-thread blocks; blockIdx.y strides over the nb blocks
// (gy <= 65535), blockIdx.x over a block's elements with a grid-stride loop, 64-bit indices;
// each thread handles UNROLL elements blockDim.x apart per step (coalesced, loads issued before
// stores).  No shared memory.

#define UNROLL 4

// OP 0: a + b (relu: then ReLU).  OP 1: a = dy, b = y -> relu ? (y > 0 ? dy : 0) : dy.
template <typename T, int OP>
__device__ __forceinline__ void add_body(const T* a, long long a_bs, const T* b, long long b_bs,
                                         T* o, long long o_bs, long long inner, long long nb, int relu) {
    const long long bs = blockDim.x;
    const long long stride = (long long)gridDim.x * bs * UNROLL;
    for (long long n = blockIdx.y; n < nb; n += gridDim.y) {
        const T* ap = a + n * a_bs;
        const T* bp = b + n * b_bs;
        T* op = o + n * o_bs;
        for (long long base = (long long)blockIdx.x * bs * UNROLL + threadIdx.x; base < inner; base += stride) {
            T va[UNROLL], vb[UNROLL];
#pragma unroll
            for (int k = 0; k < UNROLL; ++k) {
                const long long i = base + k * bs;
                if (i < inner) {
                    va[k] = ap[i];
                    vb[k] = (OP == 0 || relu) ? bp[i] : T(0);
                }
            }
#pragma unroll
            for (int k = 0; k < UNROLL; ++k) {
                const long long i = base + k * bs;
                if (i < inner) {
                    T r;
                    if (OP == 0) {
                        r = va[k] + vb[k];
                        if (relu && !(r > T(0)) && r == r) r = T(0);  // NaN propagates; -0 -> +0
                    } else {
                        r = (!relu || vb[k] > T(0)) ? va[k] : T(0);
                    }
                    op[i] = r;
                }
            }
        }
    }
}

extern "C" __global__ void add_fwd_f32(const float* a, long long a_bs, const float* b, long long b_bs,
                                       float* y, long long y_bs, long long inner, long long nb, int relu) {
    add_body<float, 0>(a, a_bs, b, b_bs, y, y_bs, inner, nb, relu);
}
extern "C" __global__ void add_fwd_f64(const double* a, long long a_bs, const double* b, long long b_bs,
                                       double* y, long long y_bs, long long inner, long long nb, int relu) {
    add_body<double, 0>(a, a_bs, b, b_bs, y, y_bs, inner, nb, relu);
}
extern "C" __global__ void add_bwd_f32(const float* dy, long long dy_bs, const float* y, long long y_bs,
                                       float* dx, long long dx_bs, long long inner, long long nb, int relu) {
    add_body<float, 1>(dy, dy_bs, y, y_bs, dx, dx_bs, inner, nb, relu);
}
extern "C" __global__ void add_bwd_f64(const double* dy, long long dy_bs, const double* y, long long y_bs,
                                       double* dx, long long dx_bs, long long inner, long long nb, int relu) {
    add_body<double, 1>(dy, dy_bs, y, y_bs, dx, dx_bs, inner, nb, relu);
}
