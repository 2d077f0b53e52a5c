// pool.cu -- max / average / L2-norm pooling of NCHW volumes (row-major, C-contiguous),
// float32 (_f32) and float64 (_f64).
//
// Window F x F, stride S, padding `pad` on both sides of both spatial axes:
//   y[nc, oh, ow] = reduce over x[nc, oh*S - pad + fh, ow*S - pad + fw], 0 <= fh, fw < F.
// Max pooling: padding never wins; the first maximum in raster order (fh*F + fw) wins ties;
//   a NaN in the window wins (NaN propagates like torch.max_pool2d); `sw` holds fh*F+fw (uint8).
// Average pooling: divisor is always F*F (padding counts as zeros, count_include_pad).
// L2 pooling: y = sqrt(sum of squares), padding counts as zeros.
//
// Launch geometry (all kernels): 1-D grid of 256-thread blocks, grid-stride loops, so any grid
// size is correct.  Forward kernels: one thread per output element.  Backward kernels: one thread
// per INPUT element, gathering from the (at most ceil(F/S)^2) windows that contain it, so
// overlapping windows (F > S) accumulate without atomics and every dx element is written once.
// maxpool_fwd_k2s2v_*: the common F=2, S=2, pad=0 case with W % 4 == 0 and 16-byte aligned x:
// one thread per PAIR of adjacent outputs, two 16-byte loads (one per input row), a vec2 store of
// y and a 2-byte store of the switches.  No shared memory anywhere.
//
// Indexing: flat indices use 32-bit arithmetic when every flat index (plus the grid stride) fits
// in int, else 64-bit (`force64` != 0 forces 64-bit, for tests).  (F, S) = (2, 2) and (3, 2) are
// compile-time specialisations (unrolled windows, divisions by constants); others run generic.

typedef unsigned char u8;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

// True when 32-bit flat indices cannot overflow (largest index + one grid stride < 2^31).
__device__ __forceinline__ bool fits_int32(long long largest, int force64) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    return !force64 && largest + stride < 2147483647LL;
}

// Max-pool update rule shared by every max kernel: strict '>' keeps the first maximum,
// a NaN replaces a non-NaN best (and is then never replaced).
template <typename T>
__device__ __forceinline__ void max_update(T v, int k, T& best, int& arg) {
    if (arg == 255 || v > best || (v != v && best == best)) {
        best = v;
        arg = k;
    }
}

template <typename T> __device__ __forceinline__ T sqrt_t(T v);
template <> __device__ __forceinline__ float sqrt_t<float>(float v) { return sqrtf(v); }
template <> __device__ __forceinline__ double sqrt_t<double>(double v) { return sqrt(v); }

// 4 consecutive elements from a 16-byte aligned address.
__device__ __forceinline__ void load4(const float* __restrict__ p, float v[4]) {
    const float4 t = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
__device__ __forceinline__ void load4(const double* __restrict__ p, double v[4]) {
    const double2 a = __ldg(reinterpret_cast<const double2*>(p));
    const double2 b = __ldg(reinterpret_cast<const double2*>(p) + 1);
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}
__device__ __forceinline__ void store2(float* p, float a, float b) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store2(double* p, double a, double b) {
    *reinterpret_cast<double2*>(p) = make_double2(a, b);
}

// Dispatch on index width and on the (F, S) specialisations.  BODY<T, KF, KS, I>(args...).
#define POOL_DISPATCH(BODY, T, SMALL, ...)                                    \
    do {                                                                      \
        if (SMALL) {                                                          \
            if (F == 2 && S == 2) BODY<T, 2, 2, int>(__VA_ARGS__);            \
            else if (F == 3 && S == 2) BODY<T, 3, 2, int>(__VA_ARGS__);       \
            else BODY<T, 0, 0, int>(__VA_ARGS__);                             \
        } else {                                                              \
            if (F == 2 && S == 2) BODY<T, 2, 2, long long>(__VA_ARGS__);      \
            else if (F == 3 && S == 2) BODY<T, 3, 2, long long>(__VA_ARGS__); \
            else BODY<T, 0, 0, long long>(__VA_ARGS__);                       \
        }                                                                     \
    } while (0)

// ---------------------------------------------------------------------------------------------
// forward: one thread per output (mode 0 = max, 1 = average, 2 = L2)
// ---------------------------------------------------------------------------------------------

template <typename T, int KF, int KS, typename I, int MODE>
__device__ __forceinline__ void pool_fwd_body(const T* __restrict__ x, T* __restrict__ y,
                                              u8* __restrict__ sw, int NC, int H, int W,
                                              int Ho, int Wo, int Fr, int Sr, int pad) {
    const int F = KF ? KF : Fr;
    const int S = KS ? KS : Sr;
    const I total = (I)NC * Ho * Wo;
    const I step = (I)gridDim.x * blockDim.x;
    for (I o = (I)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += step) {
        const I q = o / Wo;
        const int ow = (int)(o - q * Wo);
        const int oh = (int)(q % Ho);
        const I nc = q / Ho;
        const T* __restrict__ xp = x + nc * H * W;  // I arithmetic: fits by fits_int32 on the input
        const int h0 = oh * S - pad;
        const int w0 = ow * S - pad;
        T acc = T(0);
        int arg = 255;
#pragma unroll
        for (int fh = 0; fh < F; ++fh) {
            const int ih = h0 + fh;
            if (ih < 0 || ih >= H) continue;  // padding: never a max, adds zero to sums
#pragma unroll
            for (int fw = 0; fw < F; ++fw) {
                const int iw = w0 + fw;
                if (iw < 0 || iw >= W) continue;
                const T v = __ldg(xp + (I)ih * W + iw);
                if (MODE == 0) max_update(v, fh * F + fw, acc, arg);
                else if (MODE == 1) acc += v;
                else acc += v * v;
            }
        }
        if (MODE == 0) {
            y[o] = acc;  // pad < F (checked by the launcher) so every window has a real element
            sw[o] = (u8)arg;
        } else if (MODE == 1) {
            y[o] = acc / T(F * F);
        } else {
            y[o] = sqrt_t(acc);
        }
    }
}

template <typename T, int KF, int KS, typename I>
__device__ void maxpool_fwd_body(const T* x, T* y, u8* sw, int NC, int H, int W, int Ho, int Wo,
                                 int F, int S, int pad) {
    pool_fwd_body<T, KF, KS, I, 0>(x, y, sw, NC, H, W, Ho, Wo, F, S, pad);
}
template <typename T, int KF, int KS, typename I>
__device__ void avgpool_fwd_body(const T* x, T* y, int NC, int H, int W, int Ho, int Wo,
                                 int F, int S, int pad) {
    pool_fwd_body<T, KF, KS, I, 1>(x, y, nullptr, NC, H, W, Ho, Wo, F, S, pad);
}
template <typename T, int KF, int KS, typename I>
__device__ void l2pool_fwd_body(const T* x, T* y, int NC, int H, int W, int Ho, int Wo,
                                int F, int S, int pad) {
    pool_fwd_body<T, KF, KS, I, 2>(x, y, nullptr, NC, H, W, Ho, Wo, F, S, pad);
}

// F = S = 2, pad = 0, W % 4 == 0 (so Wo is even), x 16-byte aligned, y 2*sizeof(T) aligned,
// sw 2-byte aligned: each thread reduces two adjacent 2x2 windows from one 16-byte-wide
// strip of each of the two input rows.
template <typename T, typename I>
__device__ __forceinline__ void maxpool_k2s2v_body(const T* __restrict__ x, T* __restrict__ y,
                                                   u8* __restrict__ sw, int NC, int H, int W,
                                                   int Ho, int Wo) {
    const int Wp = Wo >> 1;  // output pairs per row
    const I total = (I)NC * Ho * Wp;
    const I step = (I)gridDim.x * blockDim.x;
    for (I u = (I)blockIdx.x * blockDim.x + threadIdx.x; u < total; u += step) {
        const I q = u / Wp;
        const int op = (int)(u - q * Wp);
        const int oh = (int)(q % Ho);
        const I nc = q / Ho;
        const T* r0 = x + (nc * H + 2 * oh) * W + 4 * op;
        T a[4], b[4];
        load4(r0, a);
        load4(r0 + W, b);
        T m0 = a[0], m1 = a[2];
        int k0 = 0, k1 = 0;
        max_update(a[1], 1, m0, k0);
        max_update(b[0], 2, m0, k0);
        max_update(b[1], 3, m0, k0);
        max_update(a[3], 1, m1, k1);
        max_update(b[2], 2, m1, k1);
        max_update(b[3], 3, m1, k1);
        const I o = (nc * Ho + oh) * Wo + 2 * op;
        store2(y + o, m0, m1);
        *reinterpret_cast<unsigned short*>(sw + o) =
            (unsigned short)((unsigned)k0 | ((unsigned)k1 << 8));  // little-endian: sw[o] = k0
    }
}

// ---------------------------------------------------------------------------------------------
// backward: one thread per input element, gathering over the windows that contain it
// ---------------------------------------------------------------------------------------------

// MODE 0 = max (dy routed where the switch points here), 1 = average (dy / F^2),
// 2 = L2 (dx = x * sum of dy / y over windows, 0 where y == 0).
template <typename T, int KF, int KS, typename I, int MODE>
__device__ __forceinline__ void pool_bwd_body(const T* __restrict__ dy, const u8* __restrict__ sw,
                                              const T* __restrict__ x, const T* __restrict__ y,
                                              T* __restrict__ dx, int NC, int H, int W, int Ho,
                                              int Wo, int Fr, int Sr, int pad) {
    const int F = KF ? KF : Fr;
    const int S = KS ? KS : Sr;
    const I total = (I)NC * H * W;
    const I step = (I)gridDim.x * blockDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const I q = i / W;
        const int iw = (int)(i - q * W);
        const int ih = (int)(q % H);
        const I nc = q / H;
        const int ph = ih + pad;  // position in the padded input
        const int pw = iw + pad;
        // windows oh with oh*S <= ph <= oh*S + F - 1
        const int oh_lo = ph < F ? 0 : (ph - F) / S + 1;
        const int oh_hi = min(ph / S, Ho - 1);
        const int ow_lo = pw < F ? 0 : (pw - F) / S + 1;
        const int ow_hi = min(pw / S, Wo - 1);
        const I base = nc * Ho * Wo;
        T acc = T(0);
        for (int oh = oh_lo; oh <= oh_hi; ++oh) {
            const int fh = ph - oh * S;
            for (int ow = ow_lo; ow <= ow_hi; ++ow) {
                const int fw = pw - ow * S;
                const I o = base + (I)oh * Wo + ow;
                if (MODE == 0) {
                    if (__ldg(sw + o) == fh * F + fw) acc += __ldg(dy + o);
                } else if (MODE == 1) {
                    acc += __ldg(dy + o);
                } else {
                    const T yo = __ldg(y + o);
                    if (yo > T(0)) acc += __ldg(dy + o) / yo;
                }
            }
        }
        if (MODE == 0) dx[i] = acc;
        else if (MODE == 1) dx[i] = acc / T(F * F);
        else dx[i] = x[i] * acc;
    }
}

template <typename T, int KF, int KS, typename I>
__device__ void maxpool_bwd_body(const T* dy, const u8* sw, T* dx, int NC, int H, int W, int Ho,
                                 int Wo, int F, int S, int pad) {
    pool_bwd_body<T, KF, KS, I, 0>(dy, sw, nullptr, nullptr, dx, NC, H, W, Ho, Wo, F, S, pad);
}
template <typename T, int KF, int KS, typename I>
__device__ void avgpool_bwd_body(const T* dy, T* dx, int NC, int H, int W, int Ho, int Wo,
                                 int F, int S, int pad) {
    pool_bwd_body<T, KF, KS, I, 1>(dy, nullptr, nullptr, nullptr, dx, NC, H, W, Ho, Wo, F, S, pad);
}
template <typename T, int KF, int KS, typename I>
__device__ void l2pool_bwd_body(const T* dy, const T* x, const T* y, T* dx, int NC, int H, int W,
                                int Ho, int Wo, int F, int S, int pad) {
    pool_bwd_body<T, KF, KS, I, 2>(dy, nullptr, x, y, dx, NC, H, W, Ho, Wo, F, S, pad);
}

// ---------------------------------------------------------------------------------------------
// entry points
// ---------------------------------------------------------------------------------------------

// Largest flat index any kernel of this geometry touches: the input is at least as large as the
// output unless S > F, so take the max of both.
__device__ __forceinline__ long long pool_largest(int NC, int H, int W, int Ho, int Wo) {
    const long long in = (long long)NC * H * W;
    const long long out = (long long)NC * Ho * Wo;
    return in > out ? in : out;
}

#define DEFINE_POOL_KERNELS(SUF, T)                                                              \
    extern "C" __global__ void maxpool_fwd_##SUF(const T* __restrict__ x, T* __restrict__ y,     \
                                                 u8* __restrict__ sw, int NC, int H, int W,      \
                                                 int Ho, int Wo, int F, int S, int pad,          \
                                                 int force64) {                                  \
        const bool small = fits_int32(pool_largest(NC, H, W, Ho, Wo), force64);                 \
        POOL_DISPATCH(maxpool_fwd_body, T, small, x, y, sw, NC, H, W, Ho, Wo, F, S, pad);       \
    }                                                                                            \
    extern "C" __global__ void maxpool_fwd_k2s2v_##SUF(const T* __restrict__ x,                 \
                                                       T* __restrict__ y, u8* __restrict__ sw,  \
                                                       int NC, int H, int W, int Ho, int Wo,    \
                                                       int force64) {                            \
        if (fits_int32(pool_largest(NC, H, W, Ho, Wo), force64))                                \
            maxpool_k2s2v_body<T, int>(x, y, sw, NC, H, W, Ho, Wo);                              \
        else                                                                                     \
            maxpool_k2s2v_body<T, long long>(x, y, sw, NC, H, W, Ho, Wo);                        \
    }                                                                                            \
    extern "C" __global__ void maxpool_bwd_##SUF(const T* __restrict__ dy,                      \
                                                 const u8* __restrict__ sw, T* __restrict__ dx,  \
                                                 int NC, int H, int W, int Ho, int Wo, int F,    \
                                                 int S, int pad, int force64) {                  \
        const bool small = fits_int32(pool_largest(NC, H, W, Ho, Wo), force64);                 \
        POOL_DISPATCH(maxpool_bwd_body, T, small, dy, sw, dx, NC, H, W, Ho, Wo, F, S, pad);     \
    }                                                                                            \
    extern "C" __global__ void avgpool_fwd_##SUF(const T* __restrict__ x, T* __restrict__ y,     \
                                                 int NC, int H, int W, int Ho, int Wo, int F,    \
                                                 int S, int pad, int force64) {                  \
        const bool small = fits_int32(pool_largest(NC, H, W, Ho, Wo), force64);                 \
        POOL_DISPATCH(avgpool_fwd_body, T, small, x, y, NC, H, W, Ho, Wo, F, S, pad);           \
    }                                                                                            \
    extern "C" __global__ void avgpool_bwd_##SUF(const T* __restrict__ dy, T* __restrict__ dx,   \
                                                 int NC, int H, int W, int Ho, int Wo, int F,    \
                                                 int S, int pad, int force64) {                  \
        const bool small = fits_int32(pool_largest(NC, H, W, Ho, Wo), force64);                 \
        POOL_DISPATCH(avgpool_bwd_body, T, small, dy, dx, NC, H, W, Ho, Wo, F, S, pad);         \
    }                                                                                            \
    extern "C" __global__ void l2pool_fwd_##SUF(const T* __restrict__ x, T* __restrict__ y,      \
                                                int NC, int H, int W, int Ho, int Wo, int F,     \
                                                int S, int pad, int force64) {                   \
        const bool small = fits_int32(pool_largest(NC, H, W, Ho, Wo), force64);                 \
        POOL_DISPATCH(l2pool_fwd_body, T, small, x, y, NC, H, W, Ho, Wo, F, S, pad);            \
    }                                                                                            \
    extern "C" __global__ void l2pool_bwd_##SUF(const T* __restrict__ dy,                       \
                                                const T* __restrict__ x,                         \
                                                const T* __restrict__ y, T* __restrict__ dx,     \
                                                int NC, int H, int W, int Ho, int Wo, int F,     \
                                                int S, int pad, int force64) {                   \
        const bool small = fits_int32(pool_largest(NC, H, W, Ho, Wo), force64);                 \
        POOL_DISPATCH(l2pool_bwd_body, T, small, dy, x, y, dx, NC, H, W, Ho, Wo, F, S, pad);    \
    }

DEFINE_POOL_KERNELS(f32, float)
DEFINE_POOL_KERNELS(f64, double)
