// fc.cu: general matrix multiply for the fully-connected layer (and anyone else).
//
// Computes C[M,N] = alpha * op(A) @ op(B) + beta * C (+ bias[n]) (then ReLU),
// all arrays dense row-major:  op(A) is A[M,K] (nn/nt) or A stored as [K,M] (tn/tt),
// op(B) is B[K,N] (nn/tn) or B stored as [N,K] (nt/tt).  The name suffix _XY gives
// X = trans_a, Y = trans_b.  The fc layer maps onto it as
//   forward      y[N,M]  = x[N,D] @ w[M,D]^T (+b, ReLU)   -> gemm_*_nt
//   backward dx  dx[N,D] = dy[N,M] @ w[M,D]             -> gemm_*_nn
//   backward dw  dw[M,D] = dy[N,M]^T @ x[N,D]           -> gemm_*_tn
//
// Entry points and launch geometry:
//   gemm_f32_{nn,nt,tn,tt}   FP32 FMA (SIMT) kernel: block tile 128x128, K slice 8,
//                            256 threads, 8x8 outputs per thread (two 4x4 quads 64 apart
//                            so shared reads are float4), register-prefetched double-
//                            buffered shared tiles (2*2*8*132 floats = 16.9 KB static).
//                            grid = (cdiv(M,128), cdiv(N,128), splits).
//   gemm_tf32_{nn,nt,tn,tt}  TF32 tensor cores via inline PTX mma.sync m16n8k8: block tile
//                            128x128, K slice 16, 256 threads = 8 warps in 2x4, warp tile
//                            64x32 (4x4 mma tiles); operands rounded to TF32 (to_tf32, ptx.cuh)
//                            when stored to shared (2*2*16*136 floats = 34.8 KB static).
//                            grid = (cdiv(M,128), cdiv(N,128), splits).
//   gemm_tf32_async_{nn,nt,tn,tt}  the same tiles and warps fed by a cp.async pipeline: K slice
//                            8, 4 stages, 3 in flight; operands kept in memory order in shared
//                            memory ([r][12] when k is contiguous, else [k][136]; at most 48 KB
//                            static), rounded to TF32 at the fragment read.  Same grid.
//                            Compiled only with -DGEMM_ASYNC (a module variant).
//   gemm_tf32_wgmma_{nn,nt,tn,tt}  Hopper warpgroup MMA (wgmma.mma_async m64n128k8, TF32): the
//                            only entries of the module variant compiled with -DGEMM_WGMMA for
//                            sm_90a (nothing else is in it).  Block tile 128x128, K slice 32,
//                            256 threads = 2 warpgroups, each 64 rows x 128 columns (64 fp32
//                            accumulators per thread).  Operands go global -> shared by cp.async
//                            (16 B along k when k is contiguous and aligned, else 4 B, which
//                            also transposes an M/N-contiguous operand: TF32 wgmma reads only
//                            K-major tiles) into a 128-byte-swizzled K-major layout, 3 stages
//                            of 32 KB in dynamic shared memory (WG_SMEM = 99,328 B with the
//                            1 KB alignment slack; two blocks per SM).  The tensor cores read
//                            the top 19 bits of each operand (truncation, not rounding).
//                            grid = (cdiv(M,128), cdiv(N,128), splits).
//   Split-K (all): blockIdx.z handles K range [z*kps, min(K,(z+1)*kps)) (kps a multiple
//   of the K slice) and writes C + z*M*N; with splits > 1 the host points C at a
//   workspace [splits,M,N] (alpha=1, beta=0, no epilogue) and splitk_reduce_f32 sums
//   the slices and applies alpha/beta/bias/ReLU.
//   gemm_{f32,tf32}_batched_{nn,nt}  the FP32 / TF32 kernel over a batch of equal-shaped
//                            GEMMs (the Winograd conv's 16 transform components): grid =
//                            (cdiv(M,128), cdiv(N,128), batch*splits); GEMM b's split s writes
//                            C + b*sC + s*M*N (no bias/ReLU epilogue).
//   flags bits: 1 = A rows float4-loadable (ld % 4 == 0, 16-B aligned), 2 = same for B,
//               4 = C float4-storable, 8 = C float2-storable.
//   gemm_f64_{nn,nt,tn,tt}   simple 16x16 shared-tile kernel, one output per thread,
//                            block (16,16), grid (cdiv(M,16), cdiv(N,16)); used by the
//                            float64 gradient checks, not for speed.
//   splitk_reduce_f32        grid-stride over M*N, block 256.
//   colsum_{f32,f64}         db[m] = sum_n dy[n,m] for dy[N,M]; block (32,8), grid cdiv(M,32).
//
// Every load is bounds-checked (zero-filled) and every store guarded, so any M,N,K works
// (K = 0 gives beta*C + bias).  Row offsets use 64-bit arithmetic.

#include "ptx.cuh"  // to_tf32, mma_tf32 (inline PTX)

#define GEMM_BM 128
#define GEMM_BN 128
#define GEMM_THREADS 256

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// Loads a 128 x BK tile of a logical operand X(r, k) (r = the M or N side) into registers.
// RMAJOR: X(r,k) lives at X[r*ld + k] (k contiguous); else at X[k*ld + r] (r contiguous).
// Each thread moves BK/8 groups of 4 consecutive elements along the contiguous axis.
template <int BK, bool RMAJOR>
struct TileLoader {
    static constexpr int NV = BK / 8;
    float v[NV][4];

    __device__ __forceinline__ static void coords(int id, int& rr, int& kk) {
        if (RMAJOR) { rr = id / (BK / 4); kk = (id % (BK / 4)) * 4; }
        else        { kk = id / 32;       rr = (id % 32) * 4; }
    }

    __device__ __forceinline__ void load(const float* __restrict__ X, long long ld, int R, int kend,
                                         int r0, int k0, bool vec, int tid) {
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            int rr, kk;
            coords(tid + j * GEMM_THREADS, rr, kk);
            const int gr = r0 + rr, gk = k0 + kk;
            if (RMAJOR) {
                // vec implies ld % 4 == 0 and kend % 4 == 0, so gk < kend covers gk+3.
                if (vec && gr < R && gk < kend) {
                    const float4 t = *reinterpret_cast<const float4*>(X + (long long)gr * ld + gk);
                    v[j][0] = t.x; v[j][1] = t.y; v[j][2] = t.z; v[j][3] = t.w;
                } else {
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        v[j][i] = (gr < R && gk + i < kend) ? X[(long long)gr * ld + gk + i] : 0.f;
                }
            } else {
                // vec implies R % 4 == 0, so gr < R covers gr+3.
                if (vec && gk < kend && gr < R) {
                    const float4 t = *reinterpret_cast<const float4*>(X + (long long)gk * ld + gr);
                    v[j][0] = t.x; v[j][1] = t.y; v[j][2] = t.z; v[j][3] = t.w;
                } else {
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        v[j][i] = (gk < kend && gr + i < R) ? X[(long long)gk * ld + gr + i] : 0.f;
                }
            }
        }
    }

    // Shared layout is k-major S[k*LDS + r] for both operand orders.
    template <int LDS, bool TF32>
    __device__ __forceinline__ void store(float* S, int tid) const {
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            int rr, kk;
            coords(tid + j * GEMM_THREADS, rr, kk);
            float a[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = TF32 ? to_tf32(v[j][i]) : v[j][i];
            if (RMAJOR) {
#pragma unroll
                for (int i = 0; i < 4; ++i) S[(kk + i) * LDS + rr] = a[i];
            } else {
                *reinterpret_cast<float4*>(S + kk * LDS + rr) = make_float4(a[0], a[1], a[2], a[3]);
            }
        }
    }
};

// ReLU that keeps NaN (like np.maximum), so a broken input is not silently hidden.
template <typename T>
__device__ __forceinline__ T relu_keep_nan(T r) { return r < T(0) ? T(0) : r; }

// Writes W consecutive outputs C[m, n..n+W) = epilogue(v[i]).
template <int W>
__device__ __forceinline__ void store_out(float* __restrict__ C, int M, int N, int m, int n, const float* v,
                                          float alpha, float beta, const float* __restrict__ bias,
                                          int has_bias, int relu, bool vec) {
    if (m >= M || n >= N) return;
    float* p = C + (long long)m * N + n;
    if (vec) {  // vec implies N % W == 0 and p aligned, so n < N covers n+W-1
        float old[W];
        if (beta != 0.f) {
            if constexpr (W == 4) {
                const float4 t = *reinterpret_cast<const float4*>(p);
                old[0] = t.x; old[1] = t.y; old[2] = t.z; old[3] = t.w;
            } else {
                const float2 t = *reinterpret_cast<const float2*>(p);
                old[0] = t.x; old[1] = t.y;
            }
        }
        float o[W];
#pragma unroll
        for (int i = 0; i < W; ++i) {
            float r = alpha * v[i];
            if (beta != 0.f) r += beta * old[i];  // never read C when beta == 0 (it may hold NaN)
            if (has_bias) r += bias[n + i];
            o[i] = relu ? relu_keep_nan(r) : r;
        }
        if constexpr (W == 4) *reinterpret_cast<float4*>(p) = make_float4(o[0], o[1], o[2], o[3]);
        else *reinterpret_cast<float2*>(p) = make_float2(o[0], o[1]);
    } else {
#pragma unroll
        for (int i = 0; i < W; ++i) {
            if (n + i < N) {
                float r = alpha * v[i];
                if (beta != 0.f) r += beta * p[i];
                if (has_bias) r += bias[n + i];
                p[i] = relu ? relu_keep_nan(r) : r;
            }
        }
    }
}

// The block's output tile and K range (split-K: split zs takes [zs*kps, min(K, (zs+1)*kps))
// and writes its own [M,N] slice of C; zs is blockIdx.z, or its remainder by the split
// count in the batched entries).
template <bool TA, bool TB>
struct BlockTile {
    int m0, n0, kbeg, kend;
    long long lda, ldb;
    __device__ BlockTile(int M, int N, int K, int kps, int zs)
        : m0(blockIdx.x * GEMM_BM), n0(blockIdx.y * GEMM_BN), kbeg(zs * kps),
          kend(imin(K, zs * kps + kps)), lda(TA ? M : K), ldb(TB ? K : N) {}
    __device__ int slices(int bk) const { return kend > kbeg ? (kend - kbeg + bk - 1) / bk : 0; }
};

// ---------------------------------------------------------------- FP32 SIMT kernel
template <bool TA, bool TB>
__device__ __forceinline__ void sgemm_body(const float* __restrict__ A, const float* __restrict__ B,
                                           float* __restrict__ C, const float* __restrict__ bias,
                                           int M, int N, int K, int kps, float alpha, float beta,
                                           int has_bias, int relu, int flags, int zs) {
    constexpr int BK = 8;
    constexpr int LDS = GEMM_BM + 4;  // +4: transposed scalar stores hit distinct banks
    __shared__ __align__(16) float As[2][BK * LDS];
    __shared__ __align__(16) float Bs[2][BK * LDS];

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const BlockTile<TA, TB> bt(M, N, K, kps, zs);
    const int m0 = bt.m0, n0 = bt.n0, kbeg = bt.kbeg, kend = bt.kend;
    const long long lda = bt.lda, ldb = bt.ldb;
    C += (long long)zs * M * N;
    const bool va = flags & 1, vb = flags & 2, vc = flags & 4;

    TileLoader<BK, !TA> la;  // A(m,k): k contiguous unless transposed
    TileLoader<BK, TB> lb;   // B(n,k): k contiguous only when transposed
    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

    const int nk = bt.slices(BK);
    la.load(A, lda, M, kend, m0, kbeg, va, tid);
    lb.load(B, ldb, N, kend, n0, kbeg, vb, tid);
    la.template store<LDS, false>(As[0], tid);
    lb.template store<LDS, false>(Bs[0], tid);
    __syncthreads();

    int cur = 0;
    for (int kt = 0; kt < nk; ++kt) {
        const bool more = kt + 1 < nk;
        if (more) {  // prefetch the next slice into registers while computing this one
            la.load(A, lda, M, kend, m0, kbeg + (kt + 1) * BK, va, tid);
            lb.load(B, ldb, N, kend, n0, kbeg + (kt + 1) * BK, vb, tid);
        }
        const float* as = As[cur];
        const float* bs = Bs[cur];
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[8], b[8];
            float4 t;
            t = *reinterpret_cast<const float4*>(as + k * LDS + ty * 4);
            a[0] = t.x; a[1] = t.y; a[2] = t.z; a[3] = t.w;
            t = *reinterpret_cast<const float4*>(as + k * LDS + 64 + ty * 4);
            a[4] = t.x; a[5] = t.y; a[6] = t.z; a[7] = t.w;
            t = *reinterpret_cast<const float4*>(bs + k * LDS + tx * 4);
            b[0] = t.x; b[1] = t.y; b[2] = t.z; b[3] = t.w;
            t = *reinterpret_cast<const float4*>(bs + k * LDS + 64 + tx * 4);
            b[4] = t.x; b[5] = t.y; b[6] = t.z; b[7] = t.w;
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) {  // the other buffer was last read before the previous barrier
            la.template store<LDS, false>(As[cur ^ 1], tid);
            lb.template store<LDS, false>(Bs[cur ^ 1], tid);
        }
        __syncthreads();
        cur ^= 1;
    }

#pragma unroll
    for (int ih = 0; ih < 2; ++ih)
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int jh = 0; jh < 2; ++jh)
                store_out<4>(C, M, N, m0 + ih * 64 + ty * 4 + i, n0 + jh * 64 + tx * 4, &acc[ih * 4 + i][jh * 4],
                             alpha, beta, bias, has_bias, relu, vc);
}

// ---------------------------------------------------------------- TF32 tensor-core kernel (mma_tf32: ptx.cuh)

// The TF32 kernels' warps: 8 warps in 2 (M) x 4 (N), warp tile 64 x 32 = 4 x 4 mma tiles.
// Fragments (g = lane/4, t = lane%4): A a0 (g,t) a1 (g+8,t) a2 (g,t+4) a3 (g+8,t+4);
// B b0 (k=t, n=g) b1 (k=t+4, n=g); C c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1).
struct TcWarpTile {
    int wm, wn, g, t;
    float acc[4][4][4];

    __device__ explicit TcWarpTile(int tid) : wm((tid >> 5) >> 2), wn((tid >> 5) & 3), g((tid & 31) >> 2), t(tid & 3) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;
    }

    // One k step of 8: a(k, r) / b(k, r) give the TF32 bits of A(m0 + r, k0 + k) / B(n0 + r, k0 + k).
    template <class AAt, class BAt>
    __device__ __forceinline__ void k8(AAt a, BAt b) {
        unsigned int af[4][4], bf[4][2];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
            const int mr = wm * 64 + mi * 16 + g;
            af[mi][0] = a(t, mr);
            af[mi][1] = a(t, mr + 8);
            af[mi][2] = a(t + 4, mr);
            af[mi][3] = a(t + 4, mr + 8);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            const int nc = wn * 32 + ni * 8 + g;
            bf[ni][0] = b(t, nc);
            bf[ni][1] = b(t + 4, nc);
        }
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) mma_tf32(acc[mi][ni], af[mi], bf[ni]);
    }

    __device__ __forceinline__ void store(float* __restrict__ C, int M, int N, int m0, int n0, float alpha,
                                          float beta, const float* __restrict__ bias, int has_bias, int relu,
                                          bool vc2) const {
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int r = m0 + wm * 64 + mi * 16 + g;
                const int c = n0 + wn * 32 + ni * 8 + 2 * t;
                store_out<2>(C, M, N, r, c, &acc[mi][ni][0], alpha, beta, bias, has_bias, relu, vc2);
                store_out<2>(C, M, N, r + 8, c, &acc[mi][ni][2], alpha, beta, bias, has_bias, relu, vc2);
            }
    }
};

template <bool TA, bool TB>
__device__ __forceinline__ void tf32_body(const float* __restrict__ A, const float* __restrict__ B,
                                          float* __restrict__ C, const float* __restrict__ bias,
                                          int M, int N, int K, int kps, float alpha, float beta,
                                          int has_bias, int relu, int flags, int zs) {
    constexpr int BK = 16;
    constexpr int LDS = GEMM_BM + 8;  // 136 = 8 mod 32: fragment reads (t*LDS + g) are conflict-free
    __shared__ __align__(16) float As[2][BK * LDS];
    __shared__ __align__(16) float Bs[2][BK * LDS];

    const int tid = threadIdx.x;
    const BlockTile<TA, TB> bt(M, N, K, kps, zs);
    const int m0 = bt.m0, n0 = bt.n0, kbeg = bt.kbeg, kend = bt.kend;
    const long long lda = bt.lda, ldb = bt.ldb;
    C += (long long)zs * M * N;
    const bool va = flags & 1, vb = flags & 2;

    TileLoader<BK, !TA> la;
    TileLoader<BK, TB> lb;
    TcWarpTile wt(tid);
    const int nk = bt.slices(BK);
    la.load(A, lda, M, kend, m0, kbeg, va, tid);
    lb.load(B, ldb, N, kend, n0, kbeg, vb, tid);
    la.template store<LDS, true>(As[0], tid);
    lb.template store<LDS, true>(Bs[0], tid);
    __syncthreads();

    int cur = 0;
    for (int kt = 0; kt < nk; ++kt) {
        const bool more = kt + 1 < nk;
        if (more) {
            la.load(A, lda, M, kend, m0, kbeg + (kt + 1) * BK, va, tid);
            lb.load(B, ldb, N, kend, n0, kbeg + (kt + 1) * BK, vb, tid);
        }
        const float* as = As[cur];
        const float* bs = Bs[cur];
#pragma unroll
        for (int kk = 0; kk < BK; kk += 8)  // operands were rounded to TF32 when stored
            wt.k8([&](int k, int r) { return __float_as_uint(as[(kk + k) * LDS + r]); },
                  [&](int k, int r) { return __float_as_uint(bs[(kk + k) * LDS + r]); });
        if (more) {
            la.template store<LDS, true>(As[cur ^ 1], tid);
            lb.template store<LDS, true>(Bs[cur ^ 1], tid);
        }
        __syncthreads();
        cur ^= 1;
    }

    wt.store(C, M, N, m0, n0, alpha, beta, bias, has_bias, relu, flags & 8);
}

// ---------------------------------------------------------------- TF32 cp.async kernel
// gemm_tf32_async_*: the tensor-core kernel with a cp.async pipeline: K slices of 8,
// ASYNC_ST stages in shared memory, ASYNC_ST-1 of them in flight while one is multiplied.
// cp.async cannot transpose, so an operand keeps its memory order in shared memory:
//   k contiguous in memory (RMAJOR):  S[r * 12 + k]   (8 k per row, padded to 12)
//   r contiguous in memory:           S[k * 136 + r]
// (both pads make the fragment reads conflict-free and keep 16-byte copies aligned).
// Operands are rounded to TF32 (to_tf32) when the fragments are read.
#define ASYNC_BK 8
#define ASYNC_ST 4

template <bool RMAJOR>
struct AsyncTile {
    static constexpr int LD = RMAJOR ? ASYNC_BK + 4 : GEMM_BM + 8;
    static constexpr int SIZE = RMAJOR ? GEMM_BM * LD : ASYNC_BK * LD;  // floats per stage

    __device__ __forceinline__ static float at(const float* S, int k, int r) {
        return RMAJOR ? S[r * LD + k] : S[k * LD + r];
    }

    // X(r, k) for r in [r0, r0+128), k in [k0, k0+8) into S; absent elements are zero-filled.
    // vec: 16-byte copies (ld % 4 == 0 and 16-byte aligned rows; then kend (RMAJOR) or R
    // (otherwise) is a multiple of 4, so one bounds test covers a whole chunk).
    __device__ __forceinline__ static void issue(float* S, const float* __restrict__ X, long long ld, int R,
                                                 int kend, int r0, int k0, bool vec, int tid) {
        if (vec) {
            const int rr = RMAJOR ? tid >> 1 : (tid & 31) * 4;  // 128 rows x 2 chunks, or 8 k x 32 chunks
            const int kk = RMAJOR ? (tid & 1) * 4 : tid >> 5;
            const int gr = r0 + rr, gk = k0 + kk;
            const bool ok = gr < R && gk < kend;
            const float* src = ok ? X + (RMAJOR ? (long long)gr * ld + gk : (long long)gk * ld + gr) : X;
            cp_async16(RMAJOR ? S + rr * LD + kk : S + kk * LD + rr, src, ok);
        } else {
#pragma unroll
            for (int j = 0; j < GEMM_BM * ASYNC_BK / GEMM_THREADS; ++j) {
                const int e = tid + j * GEMM_THREADS;
                const int rr = RMAJOR ? e / ASYNC_BK : e % GEMM_BM;  // consecutive threads: contiguous memory
                const int kk = RMAJOR ? e % ASYNC_BK : e / GEMM_BM;
                const int gr = r0 + rr, gk = k0 + kk;
                const bool ok = gr < R && gk < kend;
                const float* src = ok ? X + (RMAJOR ? (long long)gr * ld + gk : (long long)gk * ld + gr) : X;
                cp_async4(RMAJOR ? S + rr * LD + kk : S + kk * LD + rr, src, ok);
            }
        }
    }
};

template <bool TA, bool TB>
__device__ __forceinline__ void tf32_async_body(const float* __restrict__ A, const float* __restrict__ B,
                                                float* __restrict__ C, const float* __restrict__ bias,
                                                int M, int N, int K, int kps, float alpha, float beta,
                                                int has_bias, int relu, int flags, int zs) {
    using TileA = AsyncTile<!TA>;  // A(m,k): k contiguous unless transposed
    using TileB = AsyncTile<TB>;   // B(n,k): k contiguous only when transposed
    __shared__ __align__(16) float As[ASYNC_ST][TileA::SIZE];
    __shared__ __align__(16) float Bs[ASYNC_ST][TileB::SIZE];

    const int tid = threadIdx.x;
    const BlockTile<TA, TB> bt(M, N, K, kps, zs);
    C += (long long)zs * M * N;
    const bool va = flags & 1, vb = flags & 2;
    TcWarpTile wt(tid);

    const int nk = bt.slices(ASYNC_BK);
    auto issue = [&](int kt) {
        const int st = kt % ASYNC_ST, k0 = bt.kbeg + kt * ASYNC_BK;
        TileA::issue(As[st], A, bt.lda, M, bt.kend, bt.m0, k0, va, tid);
        TileB::issue(Bs[st], B, bt.ldb, N, bt.kend, bt.n0, k0, vb, tid);
    };
#pragma unroll
    for (int kt = 0; kt < ASYNC_ST - 1; ++kt) {  // one commit group per slice, empty past the end
        if (kt < nk) issue(kt);
        cp_async_commit();
    }
    for (int kt = 0; kt < nk; ++kt) {
        cp_async_wait<ASYNC_ST - 2>();  // this thread's copies of slice kt have landed ...
        __syncthreads();                // ... and everyone's; the stage of slice kt-1 is free
        if (kt + ASYNC_ST - 1 < nk) issue(kt + ASYNC_ST - 1);
        cp_async_commit();
        const float* as = As[kt % ASYNC_ST];
        const float* bs = Bs[kt % ASYNC_ST];
        wt.k8([&](int k, int r) { return __float_as_uint(to_tf32(TileA::at(as, k, r))); },
              [&](int k, int r) { return __float_as_uint(to_tf32(TileB::at(bs, k, r))); });
    }
    cp_async_wait<0>();
    wt.store(C, M, N, bt.m0, bt.n0, alpha, beta, bias, has_bias, relu, flags & 8);
}


// ---------------------------------------------------------------- TF32 wgmma kernel (sm_90a)
#ifdef GEMM_WGMMA
#include "wgmma.cuh"         // wgmma_*, fence_proxy_async (inline PTX, sm_90a only)
#include "wgmma_layout.cuh"  // WG_BK, WG_STAGES, the 128-byte-swizzled K-major tiles, descriptors

#define WG_TILE_BYTES (GEMM_BM * WG_BK * 4)           // one operand's 128 x 32 fp32 tile: 16 KB
#define WG_STAGE_BYTES (2 * WG_TILE_BYTES)            // A tile, then B tile
#define WG_SMEM (WG_STAGES * WG_STAGE_BYTES + 1024)   // + slack to align the stages to 1024 B

// Issues the cp.async copies of one 128 x 32 tile of X(r, k), r in [r0, r0+128) (rows >= R
// and k >= kend zero-filled).  KMAJOR: X(r,k) = X[r*ld + k]; else X[k*ld + r].
template <bool KMAJOR>
__device__ __forceinline__ void wg_load_tile(char* tile, const float* __restrict__ X, long long ld, int R,
                                             int kend, int r0, int k0, bool vec, int tid) {
    if (KMAJOR) {
        // Thread tid copies chunk kc = tid % 8 (k = 4kc..4kc+3) of rows tid/8 + 32i, i < 4: eight
        // consecutive threads move one row's 128 contiguous bytes, and a row's chunks fill
        // one 128-byte line of the tile (no bank conflict).  r % 8 is the same for all four rows.
        const int kc = tid & 7, rr = tid >> 3, gk = k0 + kc * 4;
        char* dst = tile + rr * 128 + ((kc ^ (rr & 7)) << 4);
        const float* src = X + (long long)(r0 + rr) * ld + gk;
        const long long step = 32 * ld;
        if (vec) {  // vec: ld % 4 == 0 and kend % 4 == 0, so gk < kend covers gk+3
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const bool ok = r0 + rr + 32 * i < R && gk < kend;
                cp_async16(reinterpret_cast<float*>(dst + 4096 * i), ok ? src + i * step : X, ok);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const bool ok = r0 + rr + 32 * i < R && gk + e < kend;
                    cp_async4(reinterpret_cast<float*>(dst + 4096 * i) + e, ok ? src + i * step + e : X, ok);
                }
        }
    } else {
        // One element per copy, which transposes.  Lane (rl = lane % 8, kq = lane / 8) of warp w
        // copies X(r, 4m + kq) for r = 8w + rl (+ 64) and m < 8: a warp reads 32 contiguous bytes
        // of each of 4 k rows in global memory and writes 32 different banks of the tile.
        const int lane = tid & 31, rl = lane & 7, kq = lane >> 3, r = (tid >> 5) * 8 + rl;
#pragma unroll
        for (int m = 0; m < 8; ++m) {
            const int gk = k0 + 4 * m + kq;
            const float* src = X + (long long)gk * ld + r0 + r;
            char* dst = tile + r * 128 + ((m ^ rl) << 4) + kq * 4;  // sw128_offset(r, 4m + kq)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const bool ok = gk < kend && r0 + r + 64 * h < R;
                cp_async4(reinterpret_cast<float*>(dst + 8192 * h), ok ? src + 64 * h : X, ok);
            }
        }
    }
}

template <bool TA, bool TB>
__device__ __forceinline__ void tf32_wgmma_body(const float* __restrict__ A, const float* __restrict__ B,
                                                float* __restrict__ C, const float* __restrict__ bias,
                                                int M, int N, int K, int kps, float alpha, float beta,
                                                int has_bias, int relu, int flags, int zs) {
    extern __shared__ __align__(1024) float wg_smem[];
    unsigned sbase;
    char* smem = wg_align_smem(wg_smem, sbase);

    const int tid = threadIdx.x, wg = tid >> 7;  // warpgroup wg computes tile rows [64 wg, 64 wg + 64)
    const BlockTile<TA, TB> bt(M, N, K, kps, zs);
    C += (long long)zs * M * N;
    const bool va = flags & 1, vb = flags & 2;
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;

    const int nk = bt.slices(WG_BK);
    auto issue = [&](int kt) {
        char* st = smem + (kt % WG_STAGES) * WG_STAGE_BYTES;
        const int k0 = bt.kbeg + kt * WG_BK;
        wg_load_tile<!TA>(st, A, bt.lda, M, bt.kend, bt.m0, k0, va, tid);  // A(m,k): k contiguous unless TA
        wg_load_tile<TB>(st + WG_TILE_BYTES, B, bt.ldb, N, bt.kend, bt.n0, k0, vb, tid);
    };
#pragma unroll
    for (int kt = 0; kt < WG_STAGES - 1; ++kt) {  // one commit group per slice, empty past the end
        if (kt < nk) issue(kt);
        cp_async_commit();
    }
    for (int kt = 0; kt < nk; ++kt) {
        cp_async_wait<WG_STAGES - 2>();  // this thread's copies of slice kt have landed,
        fence_proxy_async();             // are visible to wgmma's async proxy,
        __syncthreads();                 // and so are everyone's; slice kt-1's wgmmas are done
        if (kt + WG_STAGES - 1 < nk) issue(kt + WG_STAGES - 1);  // into slice kt-1's stage
        cp_async_commit();
        const unsigned a = sbase + (kt % WG_STAGES) * WG_STAGE_BYTES + wg * 64 * 128;
        const unsigned b = sbase + (kt % WG_STAGES) * WG_STAGE_BYTES + WG_TILE_BYTES;
        wg_fence_acc(acc);
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < WG_BK / 8; ++j) wgmma_m64n128k8_tf32(acc, wg_desc_sw128(a + 32 * j), wg_desc_sw128(b + 32 * j), 1);
        wgmma_commit();
        wgmma_wait<0>();  // the other warpgroup and the block beside keep the tensor cores busy
        wg_fence_acc(acc);
    }
    cp_async_wait<0>();

    // Accumulator fragment: warp w of the warpgroup, lane 4g + t holds rows 16w+g (+8),
    // columns 8j + 2t, +1 for j = 0..15.
    const int w = (tid >> 5) & 3, g = (tid & 31) >> 2, t = tid & 3;
    const int r = bt.m0 + wg * 64 + w * 16 + g;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const int c = bt.n0 + 8 * j + 2 * t;
        store_out<2>(C, M, N, r, c, &acc[4 * j], alpha, beta, bias, has_bias, relu, flags & 8);
        store_out<2>(C, M, N, r + 8, c, &acc[4 * j + 2], alpha, beta, bias, has_bias, relu, flags & 8);
    }
}

#define GEMM_WGMMA_ENTRY(TAG, TA, TB)                                                                     \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2) gemm_tf32_wgmma_##TAG(                  \
        const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int kps,       \
        float alpha, float beta, int has_bias, int relu, int flags) {                                     \
        tf32_wgmma_body<TA, TB>(A, B, C, bias, M, N, K, kps, alpha, beta, has_bias, relu, flags,         \
                                blockIdx.z);                                                              \
    }
GEMM_WGMMA_ENTRY(nn, false, false)
GEMM_WGMMA_ENTRY(nt, false, true)
GEMM_WGMMA_ENTRY(tn, true, false)
GEMM_WGMMA_ENTRY(tt, true, true)
#endif  // GEMM_WGMMA


// ---------------------------------------------------------------- simple kernel (float64)
template <typename T, bool TA, bool TB>
__device__ __forceinline__ void gemm_simple(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
                                            const T* __restrict__ bias, int M, int N, int K, T alpha, T beta,
                                            int has_bias, int relu) {
    __shared__ T As[16][17];
    __shared__ T Bs[16][17];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int mb = blockIdx.x * 16, nb = blockIdx.y * 16;
    T acc = T(0);
    for (int k0 = 0; k0 < K; k0 += 16) {
        const int am = mb + ty, ak = k0 + tx;  // As[ty][tx] = A(mb+ty, k0+tx)
        As[ty][tx] = (am < M && ak < K) ? (TA ? A[(long long)ak * M + am] : A[(long long)am * K + ak]) : T(0);
        const int bk = k0 + ty, bn = nb + tx;  // Bs[ty][tx] = B(k0+ty, nb+tx)
        Bs[ty][tx] = (bk < K && bn < N) ? (TB ? B[(long long)bn * K + bk] : B[(long long)bk * N + bn]) : T(0);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < 16; ++kk) acc += As[ty][kk] * Bs[kk][tx];
        __syncthreads();
    }
    const int m = mb + ty, n = nb + tx;
    if (m < M && n < N) {
        T* p = C + (long long)m * N + n;
        T r = alpha * acc;
        if (beta != T(0)) r += beta * *p;
        if (has_bias) r += bias[n];
        *p = relu ? relu_keep_nan(r) : r;
    }
}

// gemm_tf32_async_*: only in the module variant compiled with -DGEMM_ASYNC (it adds half
// again to the compile time; gpuconv loads it when GPUCONV_GEMM_SCHEDULE=async).
#ifdef GEMM_ASYNC
#define GEMM_ASYNC_ENTRY(TAG, TA, TB)                                                                     \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS) gemm_tf32_async_##TAG(                     \
        const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int kps,       \
        float alpha, float beta, int has_bias, int relu, int flags) {                                     \
        tf32_async_body<TA, TB>(A, B, C, bias, M, N, K, kps, alpha, beta, has_bias, relu, flags,         \
                                blockIdx.z);                                                              \
    }
#else
#define GEMM_ASYNC_ENTRY(TAG, TA, TB)
#endif

// gemm_{f32,tf32}_batched_*: blockIdx.z = b * splits + s runs split s of GEMM b, whose
// operands start at A + b*sA, B + b*sB and whose output (with its `splits` [M,N] partial
// slices) starts at C + b*sC.  Strides are in elements; 16-B alignment of every batch's
// operands is the caller's to check before setting the float4 flags.  Two blocks per SM, as
// the plain gemm_f32_* get (128 registers): without the bound ptxas takes 139-151 for the
// FP32 body and fits one; with it the FP32 main loop keeps 7 (nn) / 3 (nt) L1-resident local
// accesses per 640-instruction trip (bench/sass_stats.py, sm_90): the per-batch base pointers
// live in registers where the plain entries re-read their parameters from the constant bank.
#define GEMM_BATCHED_ENTRY(PREC, BODY, TAG, TA, TB)                                                       \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2) gemm_##PREC##_batched_##TAG(            \
        const float* A, const float* B, float* C, int M, int N, int K, int kps, float alpha, float beta, \
        int flags, int splits, long long sA, long long sB, long long sC) {                                \
        const int b = blockIdx.z / splits;                                                                \
        BODY<TA, TB>(A + b * sA, B + b * sB, C + b * sC, nullptr, M, N, K, kps, alpha, beta, 0, 0, flags, \
                     blockIdx.z - b * splits);                                                            \
    }

#define GEMM_ENTRIES(TAG, TA, TB)                                                                          \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS) gemm_f32_##TAG(                            \
        const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int kps,       \
        float alpha, float beta, int has_bias, int relu, int flags) {                                     \
        sgemm_body<TA, TB>(A, B, C, bias, M, N, K, kps, alpha, beta, has_bias, relu, flags, blockIdx.z); \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS) gemm_tf32_##TAG(                           \
        const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int kps,       \
        float alpha, float beta, int has_bias, int relu, int flags) {                                     \
        tf32_body<TA, TB>(A, B, C, bias, M, N, K, kps, alpha, beta, has_bias, relu, flags, blockIdx.z);  \
    }                                                                                                     \
    GEMM_ASYNC_ENTRY(TAG, TA, TB)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) gemm_f64_##TAG(                                     \
        const double* A, const double* B, double* C, const double* bias, int M, int N, int K,            \
        double alpha, double beta, int has_bias, int relu) {                                              \
        gemm_simple<double, TA, TB>(A, B, C, bias, M, N, K, alpha, beta, has_bias, relu);                \
    }

// The sm_90a variant holds only the wgmma entries above.
#ifndef GEMM_WGMMA
GEMM_ENTRIES(nn, false, false)
GEMM_ENTRIES(nt, false, true)
GEMM_ENTRIES(tn, true, false)
GEMM_ENTRIES(tt, true, true)
GEMM_BATCHED_ENTRY(f32, sgemm_body, nn, false, false)    // Winograd conv: transformed filters x inputs
GEMM_BATCHED_ENTRY(f32, sgemm_body, nt, false, true)     // Winograd backward-filter: reduction over tiles
GEMM_BATCHED_ENTRY(tf32, tf32_body, nn, false, false)    // the same at TF32 precision
GEMM_BATCHED_ENTRY(tf32, tf32_body, nt, false, true)

// C[i] = epilogue(sum_z ws[z*MN + i]); ws holds the split-K partial products.
extern "C" __global__ void splitk_reduce_f32(const float* __restrict__ ws, float* __restrict__ C,
                                             const float* __restrict__ bias, long long MN, int N, int splits,
                                             float alpha, float beta, int has_bias, int relu) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < MN;
         i += (long long)gridDim.x * blockDim.x) {
        float s = 0.f;
        for (int z = 0; z < splits; ++z) s += ws[(long long)z * MN + i];
        float r = alpha * s;
        if (beta != 0.f) r += beta * C[i];
        if (has_bias) r += bias[i % N];
        C[i] = relu ? relu_keep_nan(r) : r;
    }
}

// db[m] = sum over rows n of dy[n, m]; 32 columns per block, 8 row-strided partial sums each.
template <typename T>
__device__ __forceinline__ void colsum_body(const T* __restrict__ dy, T* __restrict__ db, int N, int M) {
    __shared__ T part[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * 32 + tx;
    T s = T(0);
    if (c < M)
        for (int r = ty; r < N; r += 8) s += dy[(long long)r * M + c];
    part[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && c < M) {
        T tot = T(0);
#pragma unroll
        for (int j = 0; j < 8; ++j) tot += part[j][tx];
        db[c] = tot;
    }
}

extern "C" __global__ void colsum_f32(const float* dy, float* db, int N, int M) { colsum_body<float>(dy, db, N, M); }
extern "C" __global__ void colsum_f64(const double* dy, double* db, int N, int M) { colsum_body<double>(dy, db, N, M); }
#endif  // !GEMM_WGMMA
