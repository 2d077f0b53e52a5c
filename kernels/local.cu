// local.cu -- locally-connected layer (unshared convolution): every output position has its
// own filters.
//
//   x  [N, C, H, W]            (NCHW, row-major)
//   w  [Ho, Wo, K, C, FH, FW]  -> per position p = i*Wo + j a [K, R] matrix, R = C*FH*FW
//   b  [K, Ho, Wo]
//   y  [N, K, Ho, Wo]
//   y[n,k,i,j] = b[k,i,j] + sum_{c,fh,fw} w[i,j,k,c,fh,fw] * x[n, c, i*S - P + fh*D, j*S - P + fw*D]
//   (taps outside the image read zero)
//
// So each position is a small GEMM with an on-the-fly im2col of X_p [N, R]:
//   local_fwd_*    Y_p[N, K]  = X_p[N, R] . W_p[K, R]^T (+ bias)
//                  grid (P, tiles of N, tiles of K), block (16, 16), static shared memory
//                  2 x 16x17 tiles; threadIdx.y -> n, threadIdx.x -> k; reduction over R in
//                  steps of 16.
//   local_bwd_filter_*  dW_p[K, R] = dY_p[N, K]^T . X_p[N, R] (reduction over the batch)
//                  grid (P, tiles of K, tiles of R), block (16, 16), threadIdx.y -> k,
//                  threadIdx.x -> r (coalesced dw writes).
//   local_bwd_bias_*    db[k, p] = sum_n dy[n, k, p]; 1-D grid-stride, block 256.
//   local_bwd_data_*    gather, one thread per dx element (1-D grid-stride, block 256):
//                  dx[n,c,h,w] = sum over taps (fh, fw) whose output (i, j) exists of
//                  sum_k dy[n,k,i,j] * w[i,j,k,c,fh,fw].  No atomics.
// All grid dimensions are capped by the launcher and covered by grid-stride loops; every
// load is bounds-checked; offsets are 64-bit.

#define LC_TILE 16

struct LocalGeom {
    int N, C, H, W, K, Ho, Wo, FH, FW, stride, pad, dil;
};

// X_p[n, r] of the on-the-fly im2col (zero outside the image).
template <typename T>
__device__ __forceinline__ T lc_gather(const T* __restrict__ x, const LocalGeom& g, int n, int r, int i, int j) {
    const int ff = g.FH * g.FW;
    const int c = r / ff;
    const int rem = r - c * ff;
    const int fh = rem / g.FW;
    const int fw = rem - fh * g.FW;
    const int h = i * g.stride - g.pad + fh * g.dil;
    const int w = j * g.stride - g.pad + fw * g.dil;
    if (h < 0 || h >= g.H || w < 0 || w >= g.W) return T(0);
    return x[(((long long)n * g.C + c) * g.H + h) * g.W + w];
}

template <typename T>
__device__ void local_fwd(const T* __restrict__ x, const T* __restrict__ wt, const T* __restrict__ b,
                          T* __restrict__ y, const LocalGeom g, int has_bias) {
    __shared__ T xs[LC_TILE][LC_TILE + 1];  // [n][r]
    __shared__ T ws[LC_TILE][LC_TILE + 1];  // [k][r]
    const int R = g.C * g.FH * g.FW;
    const long long P = (long long)g.Ho * g.Wo;
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tilesN = (g.N + LC_TILE - 1) / LC_TILE, tilesK = (g.K + LC_TILE - 1) / LC_TILE;
    for (long long p = blockIdx.x; p < P; p += gridDim.x) {
        const int i = (int)(p / g.Wo), j = (int)(p - (long long)(p / g.Wo) * g.Wo);
        const T* wp = wt + p * g.K * (long long)R;
        for (int tn = blockIdx.y; tn < tilesN; tn += gridDim.y) {
            for (int tk = blockIdx.z; tk < tilesK; tk += gridDim.z) {
                const int n0 = tn * LC_TILE, k0 = tk * LC_TILE;
                T acc = 0;
                for (int r0 = 0; r0 < R; r0 += LC_TILE) {
                    const int r = r0 + tx;
                    const int nl = n0 + ty, kl = k0 + ty;
                    xs[ty][tx] = (nl < g.N && r < R) ? lc_gather(x, g, nl, r, i, j) : T(0);
                    ws[ty][tx] = (kl < g.K && r < R) ? wp[(long long)kl * R + r] : T(0);
                    __syncthreads();
#pragma unroll
                    for (int q = 0; q < LC_TILE; ++q) acc += xs[ty][q] * ws[tx][q];
                    __syncthreads();
                }
                const int n = n0 + ty, k = k0 + tx;
                if (n < g.N && k < g.K) {
                    if (has_bias) acc += b[(long long)k * P + p];
                    y[((long long)n * g.K + k) * P + p] = acc;
                }
            }
        }
    }
}

template <typename T>
__device__ void local_bwd_filter(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dw,
                                 const LocalGeom g) {
    __shared__ T ds[LC_TILE][LC_TILE + 1];  // [n][k]
    __shared__ T xs[LC_TILE][LC_TILE + 1];  // [n][r]
    const int R = g.C * g.FH * g.FW;
    const long long P = (long long)g.Ho * g.Wo;
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tilesK = (g.K + LC_TILE - 1) / LC_TILE, tilesR = (R + LC_TILE - 1) / LC_TILE;
    for (long long p = blockIdx.x; p < P; p += gridDim.x) {
        const int i = (int)(p / g.Wo), j = (int)(p - (long long)(p / g.Wo) * g.Wo);
        for (int tk = blockIdx.y; tk < tilesK; tk += gridDim.y) {
            for (int tr = blockIdx.z; tr < tilesR; tr += gridDim.z) {
                const int k0 = tk * LC_TILE, r0 = tr * LC_TILE;
                T acc = 0;
                for (int n0 = 0; n0 < g.N; n0 += LC_TILE) {
                    const int nl = n0 + ty;
                    const int kl = k0 + tx, rl = r0 + tx;
                    ds[ty][tx] = (nl < g.N && kl < g.K) ? dy[((long long)nl * g.K + kl) * P + p] : T(0);
                    xs[ty][tx] = (nl < g.N && rl < R) ? lc_gather(x, g, nl, rl, i, j) : T(0);
                    __syncthreads();
#pragma unroll
                    for (int q = 0; q < LC_TILE; ++q) acc += ds[q][ty] * xs[q][tx];
                    __syncthreads();
                }
                const int k = k0 + ty, r = r0 + tx;
                if (k < g.K && r < R) dw[(p * g.K + k) * (long long)R + r] = acc;
            }
        }
    }
}

template <typename T>
__device__ void local_bwd_bias(const T* __restrict__ dy, T* __restrict__ db, int N, long long KP) {
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < KP;
         t += (long long)gridDim.x * blockDim.x) {
        T acc = 0;
        for (int n = 0; n < N; ++n) acc += dy[(long long)n * KP + t];
        db[t] = acc;
    }
}

template <typename T>
__device__ void local_bwd_data(const T* __restrict__ dy, const T* __restrict__ wt, T* __restrict__ dx,
                               const LocalGeom g) {
    const long long total = (long long)g.N * g.C * g.H * g.W;
    const long long P = (long long)g.Ho * g.Wo;
    const int ff = g.FH * g.FW;
    const long long wk = (long long)g.C * ff;  // stride of k in w
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        long long t = idx;
        const int w = (int)(t % g.W); t /= g.W;
        const int h = (int)(t % g.H); t /= g.H;
        const int c = (int)(t % g.C);
        const long long n = t / g.C;
        T acc = 0;
        for (int fh = 0; fh < g.FH; ++fh) {
            const int hi = h + g.pad - fh * g.dil;  // = i * stride
            if (hi < 0) break;                      // decreases with fh
            if (hi % g.stride) continue;
            const int i = hi / g.stride;
            if (i >= g.Ho) continue;
            for (int fw = 0; fw < g.FW; ++fw) {
                const int wi = w + g.pad - fw * g.dil;
                if (wi < 0) break;
                if (wi % g.stride) continue;
                const int j = wi / g.stride;
                if (j >= g.Wo) continue;
                const long long p = (long long)i * g.Wo + j;
                const T* wp = wt + (p * g.K * g.C + c) * ff + fh * g.FW + fw;
                const T* dp = dy + n * g.K * P + p;
                for (int k = 0; k < g.K; ++k) acc += dp[k * P] * wp[k * wk];
            }
        }
        dx[idx] = acc;
    }
}

#define LC_GEOM_PARAMS \
    int N, int C, int H, int W, int K, int Ho, int Wo, int FH, int FW, int stride, int pad, int dil
#define LC_GEOM LocalGeom{N, C, H, W, K, Ho, Wo, FH, FW, stride, pad, dil}

#define LC_ENTRIES(SUF, T)                                                                                    \
    extern "C" __global__ void __launch_bounds__(LC_TILE * LC_TILE)                                           \
        local_fwd_##SUF(const T* x, const T* w, const T* b, T* y, LC_GEOM_PARAMS, int has_bias) {             \
        local_fwd<T>(x, w, b, y, LC_GEOM, has_bias);                                                          \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(LC_TILE * LC_TILE)                                           \
        local_bwd_filter_##SUF(const T* x, const T* dy, T* dw, LC_GEOM_PARAMS) {                              \
        local_bwd_filter<T>(x, dy, dw, LC_GEOM);                                                              \
    }                                                                                                         \
    extern "C" __global__ void local_bwd_bias_##SUF(const T* dy, T* db, int N, long long KP) {                \
        local_bwd_bias<T>(dy, db, N, KP);                                                                     \
    }                                                                                                         \
    extern "C" __global__ void local_bwd_data_##SUF(const T* dy, const T* w, T* dx, LC_GEOM_PARAMS) {         \
        local_bwd_data<T>(dy, w, dx, LC_GEOM);                                                                \
    }

LC_ENTRIES(f32, float)
LC_ENTRIES(f64, double)
