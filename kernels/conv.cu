// conv.cu -- 2-D convolution (cross-correlation, as in the notes) as implicit GEMM.
//
// Layout: x[N,C,H,W], w[K,C,FH,FW], b[K], y[N,K,Ho,Wo], all NCHW row-major,
// stride s, zero padding p, dilation d (d=1: contiguous filter) on both axes.
//
// Three GEMMs, none of which materialises an im2col buffer: the GEMM operands are
// gathered from x / dy / w on the fly while filling shared-memory tiles.
//   forward      y   [K   x N*Ho*Wo] = W      [K x C*FH*FW]   * im2col(x)[C*FH*FW x N*Ho*Wo]
//   backward-data dx [C   x N*H*W  ] = W^T    [C x K*FH*FW]   * col(dy)  [K*FH*FW x N*H*W]
//                 (an entry of col(dy) is dy[n,k,ho,wo] when h+p-fh*d = ho*s and
//                  w+p-fw*d = wo*s land on the output grid, else 0)
//   backward-filter dW[K   x C*FH*FW] = dY[K x N*Ho*Wo] * im2col(x)^T, the N*Ho*Wo
//                 reduction split over gridDim.z and finished with atomicAdd into a
//                 zeroed dW.
//
// Launch geometry of the conv_{fwd,bwdd,bwdf}_f32_<BM>x<BN>_{fp32,tf32} kernels:
//   block = 256 threads, grid = (cdiv(GEMM cols, BN), cdiv(GEMM rows, BM), splits),
//   static shared memory 2 * 8 * (BM+8 + BN+8) floats (double-buffered 8-deep K
//   slices, padded by 8 to keep the tf32 fragment reads bank-conflict free).
//   fp32: 16x16 threads, each (BM/16)x(BN/16) outputs with exact fp32 FMA.
//   tf32: 8 warps as 2(M)x4(N), each warp (BM/2)x(BN/4) with
//         mma.sync.m16n8k8 tf32 (operands rounded with cvt.rna.tf32.f32 when
//         they are written to shared memory), fp32 accumulation.
// Index arithmetic: GEMM indices are 32-bit (the launcher checks they fit);
// memory offsets are 64-bit.  Divisions by runtime sizes use multiply-shift
// (FastDiv) set up once per thread.
//
// float64 entry points (conv_*_direct_f64) are simple direct kernels, one thread
// per output element in a grid-stride loop (block 256, any grid): they serve the
// GPU gradient checks, not speed.  conv_bias_grad_{f32,f64}: grid (K, G),
// block 256, partial sums per block, atomicAdd into a zeroed db.

#define NT 256
#define BK 8
#define SPAD 8

typedef long long i64;

// Division by a runtime constant (Granlund-Montgomery, as in PyTorch's IntDivider):
// exact for 0 <= n < 2^31 and 1 <= d < 2^31.
struct FastDiv {
    unsigned d, m, s;
    __device__ __forceinline__ void init(unsigned dd) {
        d = dd;
        s = 0;
        while (s < 31u && (1u << s) < dd) ++s;
        unsigned long long one = 1ull;
        m = (unsigned)(((one << 32) * ((one << s) - dd)) / dd + 1ull);
    }
    __device__ __forceinline__ unsigned div(unsigned n) const {
        unsigned t = __umulhi(n, m);
        return (t + n) >> s;
    }
};

struct Geo {
    int N, C, H, W, K, FH, FW, Ho, Wo, s, p, d;
};

__device__ __forceinline__ Geo make_geo(int N, int C, int H, int W, int K, int FH, int FW,
                                        int Ho, int Wo, int s, int p, int d) {
    Geo g;
    g.N = N; g.C = C; g.H = H; g.W = W; g.K = K; g.FH = FH; g.FW = FW;
    g.Ho = Ho; g.Wo = Wo; g.s = s; g.p = p; g.d = d;
    return g;
}

// ---------------------------------------------------------------------------------
// GEMM problem descriptions.  Each provides, for the block's fixed rows (A) and the
// thread's fixed column (B), a small state set up once, and loaders indexed by the
// reduction index r.  Out-of-range rows/columns/r load 0.
// ---------------------------------------------------------------------------------

// forward: rows m = filter k, cols = (n, ho, wo), reduction r = (c, fh, fw)
struct FwdProb {
    const float* x; const float* w; const float* b; float* y;
    Geo g; unsigned M, NC, R, FF; i64 HW, HoWo;
    int has_bias, relu;
    FastDiv dFF, dFW, dHoWo, dWo;

    __device__ void init() {
        M = g.K; FF = g.FH * g.FW; R = g.C * FF; HW = (i64)g.H * g.W; HoWo = (i64)g.Ho * g.Wo;
        NC = (unsigned)(g.N * HoWo);
        dFF.init(FF); dFW.init(g.FW); dHoWo.init((unsigned)HoWo); dWo.init(g.Wo);
    }
    struct AState { const float* row; bool ok; };
    __device__ void a_init(AState& st, unsigned m) const {
        st.ok = m < M;
        st.row = w + (i64)(st.ok ? m : 0) * R;
    }
    __device__ float a_load(const AState& st, unsigned r) const {
        return (st.ok && r < R) ? st.row[r] : 0.f;
    }
    struct BState { const float* xn; int hb, wb; bool ok; };
    __device__ void b_init(BState& st, unsigned col) const {
        st.ok = col < NC;
        unsigned c0 = st.ok ? col : 0u;
        unsigned n = dHoWo.div(c0);
        unsigned hw = c0 - n * (unsigned)HoWo;
        unsigned ho = dWo.div(hw);
        unsigned wo = hw - ho * (unsigned)g.Wo;
        st.xn = x + (i64)n * g.C * HW;
        st.hb = (int)ho * g.s - g.p;
        st.wb = (int)wo * g.s - g.p;
    }
    __device__ float b_load(const BState& st, unsigned r) const {
        if (!st.ok || r >= R) return 0.f;
        unsigned c = dFF.div(r);
        unsigned f = r - c * FF;
        unsigned fh = dFW.div(f);
        unsigned fw = f - fh * (unsigned)g.FW;
        int h = st.hb + (int)fh * g.d;
        int ww = st.wb + (int)fw * g.d;
        if ((unsigned)h >= (unsigned)g.H || (unsigned)ww >= (unsigned)g.W) return 0.f;
        return st.xn[(i64)c * HW + (i64)h * g.W + ww];
    }
    __device__ void store(unsigned m, unsigned col, float v) const {
        unsigned n = dHoWo.div(col);
        unsigned hw = col - n * (unsigned)HoWo;
        if (has_bias) v += b[m];
        if (relu) v = v > 0.f ? v : 0.f;
        y[((i64)n * g.K + m) * HoWo + hw] = v;
    }
};

// backward-data: rows m = input channel c, cols = (n, h, w), reduction r = (k, fh, fw)
struct BwdDataProb {
    const float* dy; const float* w; float* dx;
    Geo g; unsigned M, NC, R, FF; i64 HW, HoWo;
    FastDiv dFF, dFW, dHW, dW, dS;

    __device__ void init() {
        M = g.C; FF = g.FH * g.FW; R = g.K * FF; HW = (i64)g.H * g.W; HoWo = (i64)g.Ho * g.Wo;
        NC = (unsigned)(g.N * HW);
        dFF.init(FF); dFW.init(g.FW); dHW.init((unsigned)HW); dW.init(g.W); dS.init(g.s);
    }
    struct AState { const float* base; bool ok; };
    __device__ void a_init(AState& st, unsigned m) const {
        st.ok = m < M;
        st.base = w + (i64)(st.ok ? m : 0) * FF;
    }
    __device__ float a_load(const AState& st, unsigned r) const {
        if (!st.ok || r >= R) return 0.f;
        unsigned k = dFF.div(r);
        unsigned f = r - k * FF;
        return st.base[(i64)k * g.C * FF + f];  // w[k, c, f]
    }
    struct BState { const float* dyn; int hp, wp; bool ok; };
    __device__ void b_init(BState& st, unsigned col) const {
        st.ok = col < NC;
        unsigned c0 = st.ok ? col : 0u;
        unsigned n = dHW.div(c0);
        unsigned hw = c0 - n * (unsigned)HW;
        unsigned h = dW.div(hw);
        unsigned ww = hw - h * (unsigned)g.W;
        st.dyn = dy + (i64)n * g.K * HoWo;
        st.hp = (int)h + g.p;
        st.wp = (int)ww + g.p;
    }
    __device__ float b_load(const BState& st, unsigned r) const {
        if (!st.ok || r >= R) return 0.f;
        unsigned k = dFF.div(r);
        unsigned f = r - k * FF;
        unsigned fh = dFW.div(f);
        unsigned fw = f - fh * (unsigned)g.FW;
        int th = st.hp - (int)fh * g.d;
        int tw = st.wp - (int)fw * g.d;
        if (th < 0 || tw < 0) return 0.f;
        unsigned ho = dS.div((unsigned)th);
        unsigned wo = dS.div((unsigned)tw);
        // only taps that land exactly on the strided output grid contribute
        if ((int)(ho * g.s) != th || (int)(wo * g.s) != tw) return 0.f;
        if (ho >= (unsigned)g.Ho || wo >= (unsigned)g.Wo) return 0.f;
        return st.dyn[(i64)k * HoWo + (i64)ho * g.Wo + wo];
    }
    __device__ void store(unsigned m, unsigned col, float v) const {
        unsigned n = dHW.div(col);
        unsigned hw = col - n * (unsigned)HW;
        dx[((i64)n * g.C + m) * HW + hw] = v;
    }
};

// backward-filter: rows m = filter k, cols = (c, fh, fw), reduction r = (n, ho, wo)
struct BwdFilterProb {
    const float* x; const float* dy; float* dw;
    Geo g; unsigned M, NC, R, FF; i64 HW, HoWo;
    int atomic;
    FastDiv dFF, dFW, dHoWo, dWo;

    __device__ void init() {
        M = g.K; FF = g.FH * g.FW; NC = g.C * FF; HW = (i64)g.H * g.W; HoWo = (i64)g.Ho * g.Wo;
        R = (unsigned)(g.N * HoWo);
        dFF.init(FF); dFW.init(g.FW); dHoWo.init((unsigned)HoWo); dWo.init(g.Wo);
    }
    struct AState { unsigned k; bool ok; };
    __device__ void a_init(AState& st, unsigned m) const {
        st.ok = m < M;
        st.k = st.ok ? m : 0u;
    }
    __device__ float a_load(const AState& st, unsigned r) const {
        if (!st.ok || r >= R) return 0.f;
        unsigned n = dHoWo.div(r);
        unsigned hw = r - n * (unsigned)HoWo;
        return dy[((i64)n * g.K + st.k) * HoWo + hw];
    }
    struct BState { const float* xc; int fhd, fwd; bool ok; };
    __device__ void b_init(BState& st, unsigned col) const {
        st.ok = col < NC;
        unsigned c0 = st.ok ? col : 0u;
        unsigned c = dFF.div(c0);
        unsigned f = c0 - c * FF;
        unsigned fh = dFW.div(f);
        unsigned fw = f - fh * (unsigned)g.FW;
        st.xc = x + (i64)c * HW;
        st.fhd = (int)fh * g.d - g.p;
        st.fwd = (int)fw * g.d - g.p;
    }
    __device__ float b_load(const BState& st, unsigned r) const {
        if (!st.ok || r >= R) return 0.f;
        unsigned n = dHoWo.div(r);
        unsigned hw = r - n * (unsigned)HoWo;
        unsigned ho = dWo.div(hw);
        unsigned wo = hw - ho * (unsigned)g.Wo;
        int h = (int)ho * g.s + st.fhd;
        int ww = (int)wo * g.s + st.fwd;
        if ((unsigned)h >= (unsigned)g.H || (unsigned)ww >= (unsigned)g.W) return 0.f;
        return st.xc[(i64)n * g.C * HW + (i64)h * g.W + ww];
    }
    __device__ void store(unsigned m, unsigned col, float v) const {
        float* p = dw + (i64)m * NC + col;
        if (atomic) atomicAdd(p, v); else *p = v;
    }
};

// ---------------------------------------------------------------------------------
// The shared GEMM main loop.
// ---------------------------------------------------------------------------------

__device__ __forceinline__ float to_tf32(float v) {
    unsigned u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(v));
    return __uint_as_float(u);
}

__device__ __forceinline__ void mma_tf32(float* c, const unsigned* a, const unsigned* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <class Prob, int BM, int BN, bool TF32>
__device__ __forceinline__ void igemm(const Prob& P) {
    static_assert(BM == 64 || BM == 128, "BM");
    static_assert(BN == 64 || BN == 128, "BN");
    constexpr int A_PER = BM * BK / NT;  // A elements each thread loads per slice
    constexpr int B_PER = BN * BK / NT;
    constexpr int A_MSTEP = NT / BK;     // row step between a thread's A elements
    constexpr int B_KSTEP = NT / BN;     // k step between a thread's B elements
    __shared__ __align__(16) float As[2][BK][BM + SPAD];
    __shared__ __align__(16) float Bs[2][BK][BN + SPAD];

    const int tid = threadIdx.x;
    const unsigned m0 = blockIdx.y * BM;
    const unsigned n0 = blockIdx.x * BN;

    // split-K range of the reduction for this block (whole range when gridDim.z == 1)
    const unsigned chunk = ((P.R + gridDim.z - 1) / gridDim.z + BK - 1) / BK * BK;
    const unsigned kbeg = blockIdx.z * chunk;
    const unsigned kend = min(P.R, kbeg + chunk);
    const unsigned ntiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0u;

    const int a_kk = tid % BK;
    const int a_m = tid / BK;
    typename Prob::AState ast[A_PER];
#pragma unroll
    for (int i = 0; i < A_PER; ++i) P.a_init(ast[i], m0 + a_m + i * A_MSTEP);
    const int b_col = tid % BN;
    const int b_k = tid / BN;
    typename Prob::BState bst;
    P.b_init(bst, n0 + b_col);

    float ra[A_PER], rb[B_PER];
    auto gload = [&](unsigned k0) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            unsigned r = k0 + a_kk;
            ra[i] = r < kend ? P.a_load(ast[i], r) : 0.f;
        }
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            unsigned r = k0 + b_k + i * B_KSTEP;
            rb[i] = r < kend ? P.b_load(bst, r) : 0.f;
        }
    };
    auto sstore = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) As[buf][a_kk][a_m + i * A_MSTEP] = TF32 ? to_tf32(ra[i]) : ra[i];
#pragma unroll
        for (int i = 0; i < B_PER; ++i) Bs[buf][b_k + i * B_KSTEP][b_col] = TF32 ? to_tf32(rb[i]) : rb[i];
    };

    if constexpr (!TF32) {
        constexpr int TM = BM / 16, TN = BN / 16, HM = TM / 2, HN = TN / 2;
        const int tx = tid % 16, ty = tid / 16;
        float acc[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

        if (ntiles > 0) {
            gload(kbeg);
            sstore(0);
            __syncthreads();
        }
        int buf = 0;
        for (unsigned t = 0; t < ntiles; ++t) {
            if (t + 1 < ntiles) gload(kbeg + (t + 1) * BK);  // in flight during the FMAs
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                float a[TM], bb[TN];
#pragma unroll
                for (int i = 0; i < HM; ++i) {
                    a[i] = As[buf][kk][ty * HM + i];
                    a[HM + i] = As[buf][kk][BM / 2 + ty * HM + i];
                }
#pragma unroll
                for (int j = 0; j < HN; ++j) {
                    bb[j] = Bs[buf][kk][tx * HN + j];
                    bb[HN + j] = Bs[buf][kk][BN / 2 + tx * HN + j];
                }
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], bb[j], acc[i][j]);
            }
            if (t + 1 < ntiles) sstore(buf ^ 1);
            __syncthreads();
            buf ^= 1;
        }
        if (ntiles == 0 && gridDim.z > 1) return;  // an empty split adds nothing
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            unsigned m = m0 + (i < HM ? ty * HM + i : BM / 2 + ty * HM + (i - HM));
            if (m >= P.M) continue;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                unsigned col = n0 + (j < HN ? tx * HN + j : BN / 2 + tx * HN + (j - HN));
                if (col < P.NC) P.store(m, col, acc[i][j]);
            }
        }
    } else {
        constexpr int WM = BM / 2, WN = BN / 4, MI = WM / 16, NJ = WN / 8;
        const int warp = tid / 32, lane = tid % 32;
        const int wm = (warp / 4) * WM, wn = (warp % 4) * WN;
        const int gq = lane >> 2, tq = lane & 3;
        float acc[MI][NJ][4];
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;

        if (ntiles > 0) {
            gload(kbeg);
            sstore(0);
            __syncthreads();
        }
        int buf = 0;
        for (unsigned t = 0; t < ntiles; ++t) {
            if (t + 1 < ntiles) gload(kbeg + (t + 1) * BK);
            unsigned af[MI][4], bf[NJ][2];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                const int mr = wm + i * 16 + gq;
                af[i][0] = __float_as_uint(As[buf][tq][mr]);
                af[i][1] = __float_as_uint(As[buf][tq][mr + 8]);
                af[i][2] = __float_as_uint(As[buf][tq + 4][mr]);
                af[i][3] = __float_as_uint(As[buf][tq + 4][mr + 8]);
            }
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const int nc = wn + j * 8 + gq;
                bf[j][0] = __float_as_uint(Bs[buf][tq][nc]);
                bf[j][1] = __float_as_uint(Bs[buf][tq + 4][nc]);
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NJ; ++j) mma_tf32(acc[i][j], af[i], bf[j]);
            if (t + 1 < ntiles) sstore(buf ^ 1);
            __syncthreads();
            buf ^= 1;
        }
        if (ntiles == 0 && gridDim.z > 1) return;
#pragma unroll
        for (int i = 0; i < MI; ++i) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                unsigned m = m0 + wm + i * 16 + gq + half * 8;
                if (m >= P.M) continue;
#pragma unroll
                for (int j = 0; j < NJ; ++j) {
                    unsigned col = n0 + wn + j * 8 + tq * 2;
                    if (col < P.NC) P.store(m, col, acc[i][j][half * 2]);
                    if (col + 1 < P.NC) P.store(m, col + 1, acc[i][j][half * 2 + 1]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Entry points: conv_{fwd,bwdd,bwdf}_f32_<BM>x<BN>_{fp32,tf32}
// ---------------------------------------------------------------------------------

#define GEO_PARAMS int N, int C, int H, int W, int K, int FH, int FW, int Ho, int Wo, int s, int p, int d
#define GEO_ARGS N, C, H, W, K, FH, FW, Ho, Wo, s, p, d

#define CONV_ENTRIES(BM, BN, PREC, TF)                                                              \
extern "C" __global__ void __launch_bounds__(NT)                                                  \
conv_fwd_f32_##BM##x##BN##_##PREC(const float* __restrict__ x, const float* __restrict__ w,      \
                                  const float* __restrict__ b, float* __restrict__ y,            \
                                  GEO_PARAMS, int has_bias, int relu) {                          \
    FwdProb P;                                                                                    \
    P.x = x; P.w = w; P.b = b; P.y = y; P.g = make_geo(GEO_ARGS);                                 \
    P.has_bias = has_bias; P.relu = relu;                                                         \
    P.init();                                                                                     \
    igemm<FwdProb, BM, BN, TF>(P);                                                                \
}                                                                                                 \
extern "C" __global__ void __launch_bounds__(NT)                                                  \
conv_bwdd_f32_##BM##x##BN##_##PREC(const float* __restrict__ dy, const float* __restrict__ w,    \
                                   float* __restrict__ dx, GEO_PARAMS) {                         \
    BwdDataProb P;                                                                                \
    P.dy = dy; P.w = w; P.dx = dx; P.g = make_geo(GEO_ARGS);                                      \
    P.init();                                                                                     \
    igemm<BwdDataProb, BM, BN, TF>(P);                                                            \
}                                                                                                 \
extern "C" __global__ void __launch_bounds__(NT)                                                  \
conv_bwdf_f32_##BM##x##BN##_##PREC(const float* __restrict__ x, const float* __restrict__ dy,    \
                                   float* __restrict__ dw, GEO_PARAMS, int atomic) {             \
    BwdFilterProb P;                                                                              \
    P.x = x; P.dy = dy; P.dw = dw; P.g = make_geo(GEO_ARGS); P.atomic = atomic;                   \
    P.init();                                                                                     \
    igemm<BwdFilterProb, BM, BN, TF>(P);                                                          \
}

CONV_ENTRIES(128, 128, fp32, false)
CONV_ENTRIES(128, 64, fp32, false)
CONV_ENTRIES(64, 128, fp32, false)
CONV_ENTRIES(64, 64, fp32, false)
CONV_ENTRIES(128, 128, tf32, true)
CONV_ENTRIES(128, 64, tf32, true)
CONV_ENTRIES(64, 128, tf32, true)
CONV_ENTRIES(64, 64, tf32, true)

// ---------------------------------------------------------------------------------
// Direct float64 kernels (gradient checks) and the bias gradient.
// ---------------------------------------------------------------------------------

extern "C" __global__ void conv_fwd_direct_f64(const double* __restrict__ x, const double* __restrict__ w,
                                               const double* __restrict__ b, double* __restrict__ y,
                                               GEO_PARAMS, int has_bias, int relu) {
    const i64 total = (i64)N * K * Ho * Wo;
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        int wo = (int)(idx % Wo);
        i64 t = idx / Wo;
        int ho = (int)(t % Ho); t /= Ho;
        int k = (int)(t % K);
        i64 n = t / K;
        double acc = has_bias ? b[k] : 0.0;
        for (int c = 0; c < C; ++c) {
            const double* xc = x + (n * C + c) * (i64)H * W;
            const double* wc = w + ((i64)k * C + c) * FH * FW;
            for (int fh = 0; fh < FH; ++fh) {
                int h = ho * s - p + fh * d;
                if (h < 0 || h >= H) continue;
                for (int fw = 0; fw < FW; ++fw) {
                    int ww = wo * s - p + fw * d;
                    if (ww < 0 || ww >= W) continue;
                    acc += xc[(i64)h * W + ww] * wc[fh * FW + fw];
                }
            }
        }
        if (relu && acc < 0.0) acc = 0.0;
        y[idx] = acc;
    }
}

extern "C" __global__ void conv_bwdd_direct_f64(const double* __restrict__ dy, const double* __restrict__ w,
                                                double* __restrict__ dx, GEO_PARAMS) {
    const i64 total = (i64)N * C * H * W;
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        int ww = (int)(idx % W);
        i64 t = idx / W;
        int h = (int)(t % H); t /= H;
        int c = (int)(t % C);
        i64 n = t / C;
        double acc = 0.0;
        for (int fh = 0; fh < FH; ++fh) {
            int th = h + p - fh * d;
            if (th < 0 || th % s != 0 || th / s >= Ho) continue;
            int ho = th / s;
            for (int fw = 0; fw < FW; ++fw) {
                int tw = ww + p - fw * d;
                if (tw < 0 || tw % s != 0 || tw / s >= Wo) continue;
                int wo = tw / s;
                for (int k = 0; k < K; ++k)
                    acc += dy[((n * K + k) * Ho + ho) * (i64)Wo + wo] * w[(((i64)k * C + c) * FH + fh) * FW + fw];
            }
        }
        dx[idx] = acc;
    }
}

extern "C" __global__ void conv_bwdf_direct_f64(const double* __restrict__ x, const double* __restrict__ dy,
                                                double* __restrict__ dw, GEO_PARAMS) {
    const i64 total = (i64)K * C * FH * FW;
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        int fw = (int)(idx % FW);
        i64 t = idx / FW;
        int fh = (int)(t % FH); t /= FH;
        int c = (int)(t % C);
        int k = (int)(t / C);
        double acc = 0.0;
        for (int n = 0; n < N; ++n) {
            const double* xc = x + ((i64)n * C + c) * (i64)H * W;
            const double* dyk = dy + ((i64)n * K + k) * (i64)Ho * Wo;
            for (int ho = 0; ho < Ho; ++ho) {
                int h = ho * s - p + fh * d;
                if (h < 0 || h >= H) continue;
                for (int wo = 0; wo < Wo; ++wo) {
                    int ww = wo * s - p + fw * d;
                    if (ww < 0 || ww >= W) continue;
                    acc += dyk[(i64)ho * Wo + wo] * xc[(i64)h * W + ww];
                }
            }
        }
        dw[idx] = acc;
    }
}

// db[k] += sum over this block's share of (n, hw) of dy[n, k, hw]; db must be zeroed.
template <typename T>
__device__ __forceinline__ void bias_grad(const T* __restrict__ dy, T* __restrict__ db, int N, int K, i64 HoWo) {
    __shared__ T red[NT];
    const int k = blockIdx.x;
    const i64 total = (i64)N * HoWo;
    T acc = 0;
    for (i64 i = (i64)blockIdx.y * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.y * blockDim.x) {
        i64 n = i / HoWo;
        i64 hw = i - n * HoWo;
        acc += dy[(n * K + k) * HoWo + hw];
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int o = NT / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(db + k, red[0]);
}

extern "C" __global__ void __launch_bounds__(NT)
conv_bias_grad_f32(const float* __restrict__ dy, float* __restrict__ db, int N, int K, int Ho, int Wo) {
    bias_grad<float>(dy, db, N, K, (i64)Ho * Wo);
}

extern "C" __global__ void __launch_bounds__(NT)
conv_bias_grad_f64(const double* __restrict__ dy, double* __restrict__ db, int N, int K, int Ho, int Wo) {
    bias_grad<double>(dy, db, N, K, (i64)Ho * Wo);
}
