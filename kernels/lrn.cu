// lrn.cu -- cross-channel local response normalization (AlexNet), PyTorch's convention.
//
//   scale[n,c,s] = k + alpha/size * sum_{c' = c - size/2}^{c + (size-1)/2} x[n,c',s]^2
//                  (window clipped at the channel edges; always divided by size)
//   y = x * scale^-beta
//   dx[c] = dy[c] * scale[c]^-beta
//           - 2*alpha*beta/size * x[c] * sum_{c': c in window(c')} dy[c'] * y[c'] / scale[c']
//   where c in window(c')  <=>  c - (size-1)/2 <= c' <= c + size/2.
//
// Layout: NCHW row-major, viewed as [N, C, HW].  One thread per column (n, s), i.e.
// p = n*HW + s over a 1-D grid-stride loop (block 256, no shared memory); the thread
// walks the C channels of its column, recomputing each window sum (size is small and
// the column's values stay in L1).  Adjacent threads touch adjacent s: coalesced.
//
// Floating-point scalars arrive as the bit pattern of a double in a long long (the
// Python launcher narrows floats to float32).  Offsets are 64-bit.

template <typename T> __device__ __forceinline__ T lrn_pow(T b, T e);
template <> __device__ __forceinline__ float lrn_pow<float>(float b, float e) { return powf(b, e); }
template <> __device__ __forceinline__ double lrn_pow<double>(double b, double e) { return pow(b, e); }

template <typename T>
__device__ void lrn_fwd(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ scale, int N, int C,
                        long long HW, int size, long long coef_bits, long long beta_bits, long long k_bits) {
    const T coef = (T)__longlong_as_double(coef_bits);  // alpha / size
    const T beta = (T)__longlong_as_double(beta_bits);
    const T k = (T)__longlong_as_double(k_bits);
    const int lo = size / 2, hi = (size - 1) / 2;
    const long long cols = (long long)N * HW;
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < cols;
         p += (long long)gridDim.x * blockDim.x) {
        const long long n = p / HW, s = p - n * HW;
        const long long base = n * C * HW + s;
        for (int c = 0; c < C; ++c) {
            const int c0 = max(0, c - lo), c1 = min(C - 1, c + hi);
            T acc = 0;
            for (int q = c0; q <= c1; ++q) {
                const T v = x[base + q * HW];
                acc += v * v;
            }
            const T sc = k + coef * acc;
            const long long o = base + c * HW;
            scale[o] = sc;
            y[o] = x[o] * lrn_pow<T>(sc, -beta);
        }
    }
}

template <typename T>
__device__ void lrn_bwd(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                        const T* __restrict__ scale, T* __restrict__ dx, int N, int C, long long HW, int size,
                        long long coef2_bits, long long beta_bits) {
    const T coef2 = (T)__longlong_as_double(coef2_bits);  // 2 * alpha * beta / size
    const T beta = (T)__longlong_as_double(beta_bits);
    const int lo = size / 2, hi = (size - 1) / 2;
    const long long cols = (long long)N * HW;
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < cols;
         p += (long long)gridDim.x * blockDim.x) {
        const long long n = p / HW, s = p - n * HW;
        const long long base = n * C * HW + s;
        for (int c = 0; c < C; ++c) {
            // channels c' whose window contains c
            const int c0 = max(0, c - hi), c1 = min(C - 1, c + lo);
            T acc = 0;
            for (int q = c0; q <= c1; ++q) {
                const long long o = base + q * HW;
                acc += dy[o] * y[o] / scale[o];
            }
            const long long o = base + c * HW;
            dx[o] = dy[o] * lrn_pow<T>(scale[o], -beta) - coef2 * x[o] * acc;
        }
    }
}

#define LRN_ENTRIES(SUF, T)                                                                                   \
    extern "C" __global__ void lrn_fwd_##SUF(const T* x, T* y, T* scale, int N, int C, long long HW,          \
                                             int size, long long coef_bits, long long beta_bits,              \
                                             long long k_bits) {                                              \
        lrn_fwd<T>(x, y, scale, N, C, HW, size, coef_bits, beta_bits, k_bits);                                \
    }                                                                                                         \
    extern "C" __global__ void lrn_bwd_##SUF(const T* dy, const T* x, const T* y, const T* scale, T* dx,      \
                                             int N, int C, long long HW, int size, long long coef2_bits,      \
                                             long long beta_bits) {                                           \
        lrn_bwd<T>(dy, x, y, scale, dx, N, C, HW, size, coef2_bits, beta_bits);                               \
    }

LRN_ENTRIES(f32, float)
LRN_ENTRIES(f64, double)
