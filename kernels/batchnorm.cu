// batchnorm.cu -- batch normalization over the batch (and spatial) axes, per channel.
//
// Layout: x is NCHW row-major, viewed as [N, C, HW] (HW = H*W; HW = 1 for [N, D] inputs,
// where D plays the role of C).  Channel c owns the M = N*HW elements
//   x[(n*C + c)*HW + s],  n < N, s < HW.
//
// Forward (train):
//   bn_stats_partial_*   grid (C, S), block BN_THREADS (256), static shared memory.
//                        Block (c, j) runs Welford over chunk j of channel c (elements
//                        m in [j*chunk, min(M, (j+1)*chunk)), m = n*HW + s), merges the
//                        per-thread (count, mean, M2) with Chan's formula, and writes one
//                        partial (mean, M2) to pmean/pm2[c*S + j].
//   bn_stats_finalize_*  1-D grid over channels, block 256.  Merges the S partials of a
//                        channel in double (counts recomputed from chunk and M), writes
//                        save_mean, save_invstd = 1/sqrt(var_biased + eps) and, if asked,
//                        updates running_mean / running_var (unbiased variance) in place.
//   bn_apply_*           y = (x - mean) * invstd * gamma + beta.  rows_mode = 1: blocks
//                        stride over the N*C rows, threads over the HW row (for HW >= 32);
//                        rows_mode = 0: flat grid-stride loop (small HW, e.g. [N, D]).
// Forward (eval):
//   bn_eval_stats_*      save_mean = running_mean, save_invstd = 1/sqrt(running_var + eps);
//                        then bn_apply_*.
// Backward (train-mode statistics):
//   bn_bwd_partial_*     grid (C, S), block 256: partial sums of dy and dy*(x - mean).
//   bn_bwd_finalize_*    per channel, in double: dbeta = sum dy, dgamma = invstd * sum dy*(x-mean).
//   bn_bwd_dx_*          dx = gamma*invstd * (dy - (dbeta + xhat*dgamma)/M), same geometry
//                        as bn_apply_*.
//
// Floating-point scalars (eps, momentum) arrive as the bit pattern of a double in a
// long long, because the Python launcher narrows every Python float to float32.
// All element offsets are 64-bit; all loops are bounds-checked grid/block-stride loops.

#define BN_THREADS 256

template <typename T> __device__ __forceinline__ T bn_sqrt(T v);
template <> __device__ __forceinline__ float bn_sqrt<float>(float v) { return sqrtf(v); }
template <> __device__ __forceinline__ double bn_sqrt<double>(double v) { return sqrt(v); }

__device__ __forceinline__ double bits_to_double(long long b) { return __longlong_as_double(b); }

// Chan et al.: merge (nb, mb, m2b) into (na, ma, m2a).
template <typename T>
__device__ __forceinline__ void chan_merge(T& na, T& ma, T& m2a, T nb, T mb, T m2b) {
    if (nb <= T(0)) return;
    T n = na + nb;
    T delta = mb - ma;
    T fb = nb / n;
    ma += delta * fb;
    m2a += m2b + delta * delta * na * fb;
    na = n;
}

// Block-wide Chan reduction; every thread passes its (n, mean, m2); thread 0 gets the total.
template <typename T>
__device__ __forceinline__ void block_welford(T& n, T& mean, T& m2) {
    __shared__ T sn[BN_THREADS / 32], sm[BN_THREADS / 32], s2[BN_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int off = 16; off > 0; off >>= 1) {
        T nb = __shfl_down_sync(0xffffffffu, n, off);
        T mb = __shfl_down_sync(0xffffffffu, mean, off);
        T m2b = __shfl_down_sync(0xffffffffu, m2, off);
        chan_merge(n, mean, m2, nb, mb, m2b);
    }
    if (lane == 0) { sn[warp] = n; sm[warp] = mean; s2[warp] = m2; }
    __syncthreads();
    if (warp == 0) {
        const int nwarps = blockDim.x >> 5;
        n = lane < nwarps ? sn[lane] : T(0);
        mean = lane < nwarps ? sm[lane] : T(0);
        m2 = lane < nwarps ? s2[lane] : T(0);
        for (int off = 16; off > 0; off >>= 1) {
            T nb = __shfl_down_sync(0xffffffffu, n, off);
            T mb = __shfl_down_sync(0xffffffffu, mean, off);
            T m2b = __shfl_down_sync(0xffffffffu, m2, off);
            chan_merge(n, mean, m2, nb, mb, m2b);
        }
    }
}

template <typename T>
__device__ __forceinline__ T block_sum(T v) {
    __shared__ T s[BN_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) s[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? s[lane] : T(0);
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    }
    return v;
}

// Walks the chunk [start, end) of one channel; m = n*HW + s is advanced by blockDim.x
// without a division per element.
struct ChunkWalker {
    long long n, s, dn, ds, HW;
    __device__ ChunkWalker(long long m, long long HW_) : HW(HW_) {
        n = m / HW;
        s = m - n * HW;
        dn = (long long)blockDim.x / HW;
        ds = (long long)blockDim.x - dn * HW;
    }
    __device__ __forceinline__ long long offset(long long C, long long c) const { return (n * C + c) * HW + s; }
    __device__ __forceinline__ void advance() {
        s += ds;
        n += dn;
        if (s >= HW) { s -= HW; ++n; }
    }
};

template <typename T>
__device__ void bn_stats_partial(const T* __restrict__ x, T* __restrict__ pmean, T* __restrict__ pm2,
                                 int N, int C, long long HW, long long chunk, int S) {
    const long long c = blockIdx.x;
    const int j = blockIdx.y;
    const long long M = (long long)N * HW;
    const long long start = (long long)j * chunk;
    const long long end = min(M, start + chunk);
    T cnt = 0, mean = 0, m2 = 0;
    long long m = start + threadIdx.x;
    if (m < end) {
        ChunkWalker it(m, HW);
        for (; m < end; m += blockDim.x) {
            const T v = x[it.offset(C, c)];
            cnt += T(1);
            const T d = v - mean;
            mean += d / cnt;
            m2 += d * (v - mean);
            it.advance();
        }
    }
    block_welford(cnt, mean, m2);
    if (threadIdx.x == 0) {
        pmean[c * S + j] = mean;
        pm2[c * S + j] = m2;
    }
}

template <typename T>
__device__ void bn_stats_finalize(const T* __restrict__ pmean, const T* __restrict__ pm2,
                                  T* __restrict__ save_mean, T* __restrict__ save_invstd,
                                  T* __restrict__ running_mean, T* __restrict__ running_var,
                                  int C, int S, long long M, long long chunk,
                                  long long eps_bits, long long momentum_bits, int update_running) {
    const double eps = bits_to_double(eps_bits);
    const double mom = bits_to_double(momentum_bits);
    for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < C;
         c += (long long)gridDim.x * blockDim.x) {
        double n = 0, mean = 0, m2 = 0;
        for (int j = 0; j < S; ++j) {
            const long long lo = (long long)j * chunk;
            const long long nb = min(M, lo + chunk) - lo;  // exact count of chunk j
            chan_merge<double>(n, mean, m2, (double)(nb > 0 ? nb : 0), (double)pmean[c * S + j],
                               (double)pm2[c * S + j]);
        }
        const double var = n > 0 ? m2 / n : 0.0;
        save_mean[c] = (T)mean;
        save_invstd[c] = (T)(1.0 / sqrt(var + eps));
        if (update_running) {
            const double unbiased = n > 1 ? m2 / (n - 1) : 0.0;
            running_mean[c] = (T)((1.0 - mom) * (double)running_mean[c] + mom * mean);
            running_var[c] = (T)((1.0 - mom) * (double)running_var[c] + mom * unbiased);
        }
    }
}

template <typename T>
__device__ void bn_eval_stats(const T* __restrict__ running_mean, const T* __restrict__ running_var,
                              T* __restrict__ save_mean, T* __restrict__ save_invstd, int C, long long eps_bits) {
    const T eps = (T)bits_to_double(eps_bits);
    for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < C;
         c += (long long)gridDim.x * blockDim.x) {
        save_mean[c] = running_mean[c];
        save_invstd[c] = T(1) / bn_sqrt<T>(running_var[c] + eps);
    }
}

template <typename T>
__device__ void bn_apply(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ gamma,
                         const T* __restrict__ beta, const T* __restrict__ mean, const T* __restrict__ invstd,
                         int N, int C, long long HW, int rows_mode) {
    const long long rows = (long long)N * C;
    if (rows_mode) {
        for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
            const long long c = r % C;
            const T mu = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
            const T* xr = x + r * HW;
            T* yr = y + r * HW;
            for (long long s = threadIdx.x; s < HW; s += blockDim.x) yr[s] = (xr[s] - mu) * is * g + b;
        }
    } else {
        const long long total = rows * HW;
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
             i += (long long)gridDim.x * blockDim.x) {
            const long long c = (i / HW) % C;
            y[i] = (x[i] - mean[c]) * invstd[c] * gamma[c] + beta[c];
        }
    }
}

template <typename T>
__device__ void bn_bwd_partial(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ mean,
                               T* __restrict__ psum_dy, T* __restrict__ psum_dyxc,
                               int N, int C, long long HW, long long chunk, int S) {
    const long long c = blockIdx.x;
    const int j = blockIdx.y;
    const long long M = (long long)N * HW;
    const long long start = (long long)j * chunk;
    const long long end = min(M, start + chunk);
    const T mu = mean[c];
    T a = 0, b = 0;
    long long m = start + threadIdx.x;
    if (m < end) {
        ChunkWalker it(m, HW);
        for (; m < end; m += blockDim.x) {
            const long long o = it.offset(C, c);
            const T g = dy[o];
            a += g;
            b += g * (x[o] - mu);
            it.advance();
        }
    }
    a = block_sum(a);
    __syncthreads();  // block_sum's shared buffer is reused by the second call
    b = block_sum(b);
    if (threadIdx.x == 0) {
        psum_dy[c * S + j] = a;
        psum_dyxc[c * S + j] = b;
    }
}

template <typename T>
__device__ void bn_bwd_finalize(const T* __restrict__ psum_dy, const T* __restrict__ psum_dyxc,
                                const T* __restrict__ invstd, T* __restrict__ dgamma, T* __restrict__ dbeta,
                                int C, int S) {
    for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < C;
         c += (long long)gridDim.x * blockDim.x) {
        double a = 0, b = 0;
        for (int j = 0; j < S; ++j) {
            a += (double)psum_dy[c * S + j];
            b += (double)psum_dyxc[c * S + j];
        }
        dbeta[c] = (T)a;
        dgamma[c] = (T)(b * (double)invstd[c]);
    }
}

template <typename T>
__device__ void bn_bwd_dx(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ gamma,
                          const T* __restrict__ mean, const T* __restrict__ invstd, const T* __restrict__ dgamma,
                          const T* __restrict__ dbeta, T* __restrict__ dx, int N, int C, long long HW, int rows_mode) {
    const long long rows = (long long)N * C;
    const T invM = T(1) / (T)((long long)N * HW);
    if (rows_mode) {
        for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
            const long long c = r % C;
            const T mu = mean[c], is = invstd[c], k = gamma[c] * invstd[c], dg = dgamma[c], db = dbeta[c];
            const long long base = r * HW;
            for (long long s = threadIdx.x; s < HW; s += blockDim.x) {
                const T xhat = (x[base + s] - mu) * is;
                dx[base + s] = k * (dy[base + s] - (db + xhat * dg) * invM);
            }
        }
    } else {
        const long long total = rows * HW;
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
             i += (long long)gridDim.x * blockDim.x) {
            const long long c = (i / HW) % C;
            const T xhat = (x[i] - mean[c]) * invstd[c];
            dx[i] = gamma[c] * invstd[c] * (dy[i] - (dbeta[c] + xhat * dgamma[c]) * invM);
        }
    }
}

#define BN_ENTRIES(SUF, T)                                                                                    \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                  \
        bn_stats_partial_##SUF(const T* x, T* pmean, T* pm2, int N, int C, long long HW, long long chunk,     \
                               int S) {                                                                       \
        bn_stats_partial<T>(x, pmean, pm2, N, C, HW, chunk, S);                                               \
    }                                                                                                         \
    extern "C" __global__ void bn_stats_finalize_##SUF(const T* pmean, const T* pm2, T* save_mean,            \
                                                       T* save_invstd, T* running_mean, T* running_var,       \
                                                       int C, int S, long long M, long long chunk,            \
                                                       long long eps_bits, long long momentum_bits,           \
                                                       int update_running) {                                  \
        bn_stats_finalize<T>(pmean, pm2, save_mean, save_invstd, running_mean, running_var, C, S, M, chunk,   \
                             eps_bits, momentum_bits, update_running);                                        \
    }                                                                                                         \
    extern "C" __global__ void bn_eval_stats_##SUF(const T* running_mean, const T* running_var, T* save_mean, \
                                                   T* save_invstd, int C, long long eps_bits) {               \
        bn_eval_stats<T>(running_mean, running_var, save_mean, save_invstd, C, eps_bits);                     \
    }                                                                                                         \
    extern "C" __global__ void bn_apply_##SUF(const T* x, T* y, const T* gamma, const T* beta, const T* mean, \
                                              const T* invstd, int N, int C, long long HW, int rows_mode) {   \
        bn_apply<T>(x, y, gamma, beta, mean, invstd, N, C, HW, rows_mode);                                    \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                  \
        bn_bwd_partial_##SUF(const T* dy, const T* x, const T* mean, T* psum_dy, T* psum_dyxc, int N, int C,  \
                             long long HW, long long chunk, int S) {                                          \
        bn_bwd_partial<T>(dy, x, mean, psum_dy, psum_dyxc, N, C, HW, chunk, S);                               \
    }                                                                                                         \
    extern "C" __global__ void bn_bwd_finalize_##SUF(const T* psum_dy, const T* psum_dyxc, const T* invstd,   \
                                                     T* dgamma, T* dbeta, int C, int S) {                     \
        bn_bwd_finalize<T>(psum_dy, psum_dyxc, invstd, dgamma, dbeta, C, S);                                  \
    }                                                                                                         \
    extern "C" __global__ void bn_bwd_dx_##SUF(const T* dy, const T* x, const T* gamma, const T* mean,        \
                                               const T* invstd, const T* dgamma, const T* dbeta, T* dx,       \
                                               int N, int C, long long HW, int rows_mode) {                   \
        bn_bwd_dx<T>(dy, x, gamma, mean, invstd, dgamma, dbeta, dx, N, C, HW, rows_mode);                     \
    }

BN_ENTRIES(f32, float)
BN_ENTRIES(f64, double)
