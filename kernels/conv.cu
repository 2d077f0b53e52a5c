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
// Launch geometry of the conv_{fwd,bwdd,bwdf}_f32_<BM>x<BN>_{fp32,tf32}[_async] kernels:
//   block = 256 threads, grid = (cdiv(GEMM cols, BN), cdiv(GEMM rows, BM), splits),
//   static shared memory S * 8 * (BM+8 + BN+8) floats: S 8-deep K slices, padded by 8
//   to keep the tf32 fragment reads bank-conflict free; S = 2 (register-staged double
//   buffer) or, for the _async entries, 4 (cp.async pipeline, at most 34 KiB; those
//   entries exist only when compiled with -DGEMM_ASYNC).
//   __launch_bounds__(256, MINB): 1-4 blocks per SM by tile (see MINB).
//   Gather: per 8-deep slice each thread loads BM/32 A rows and BN/32 B columns at one
//   reduction index r, so r is decoded once per slice (see the GEMM problem descriptions).
//   fp32: 16x16 threads, each (BM/16)x(BN/16) outputs with exact fp32 FMA.
//   tf32: 8 warps as 2(M)x4(N), each warp (BM/2)x(BN/4) with
//         mma.sync.m16n8k8 tf32 (operands rounded by to_tf32, ptx.cuh, when
//         they are written to shared memory, or read from it for _async), fp32
//         accumulation.
// Forward epilogue (every forward entry, FwdProb::store): y = act(acc + b + r), the bias,
// then the residual r[N,K,Ho,Wo] (has_res; r may be y itself, in place: each element is read
// before the same thread writes it), then ReLU, in the order of the unfused conv + add + ReLU,
// so the fused result is bit-identical to it (as cuDNN/CUTLASS fuse bias+residual+activation).
// Index arithmetic: GEMM indices are 32-bit (the launcher checks they fit);
// memory offsets are 64-bit.  Divisions by runtime sizes use multiply-shift
// (FastDiv) set up once per thread.
//
// conv_bwdd_direct_f32_c<CT>_<TI>x<TJ>: a direct ("gather") float32 backward-data that
// visits only the taps landing on the output grid (small C and/or stride > 1; its
// launch geometry is described at its definition below).
//
// float64 entry points (conv_*_direct_f64) are simple direct kernels, one thread
// per output element in a grid-stride loop (block 256, any grid): they serve the
// GPU gradient checks, not speed.  conv_bias_grad_{f32,f64}: grid (K, G),
// block 256, partial sums per block, atomicAdd into a zeroed db.
//
// Every entry takes, after the geometry, ys: the batch stride of y (forward; the residual has
// y's layout) or of dy (backward-data, backward-filter, the bias gradient), so a conv writes
// its output into, and reads its gradient from, its channel slice of a concat buffer.

#include "ptx.cuh"  // to_tf32, mma_tf32 (inline PTX)

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

// i = (a * B + b) * C + c, taken apart: outer divides by B*C, inner by C.
struct Split3 { unsigned a, b, c; };
__device__ __forceinline__ Split3 split3(unsigned i, const FastDiv& outer, const FastDiv& inner) {
    Split3 r;
    r.a = outer.div(i);
    const unsigned rem = i - r.a * outer.d;
    r.b = inner.div(rem);
    r.c = rem - r.b * inner.d;
    return r;
}

// ys: elements between consecutive samples of y (forward) or dy (backward), K*Ho*Wo when it
// is C-contiguous, more when it is a channel slice of a bigger buffer (a concat's): the
// channels, rows and columns of one sample stay contiguous either way.
struct Geo {
    int N, C, H, W, K, FH, FW, Ho, Wo, s, p, d, ys;
};

__device__ __forceinline__ Geo make_geo(int N, int C, int H, int W, int K, int FH, int FW,
                                        int Ho, int Wo, int s, int p, int d, int ys) {
    Geo g;
    g.N = N; g.C = C; g.H = H; g.W = W; g.K = K; g.FH = FH; g.FW = FW;
    g.Ho = Ho; g.Wo = Wo; g.s = s; g.p = p; g.d = d; g.ys = ys;
    return g;
}

// ---------------------------------------------------------------------------------
// GEMM problem descriptions.  An operand element is addressed by its row m (A) or column
// (B), fixed for a thread, and its reduction index r, which moves on by BK every slice.
// The two parts are decoded separately, so the divisions that take r apart run once per
// slice for all of a thread's elements (each thread's elements of one slice share r):
//   A is affine in m: element (m, r) is a_ptr()[m * a_stride() + off(r)] for rows m < M;
//   b_col(BCol&, col)                    once per thread (the column's part of B);
//   a_red(ARed&, r) / b_red(BRed&, r)    once per slice (r >= R: absent);
//   b_src                                per element: the address, and whether the element
//                                        exists (absent rows, columns, r and padding taps
//                                        count as 0; the address is then any valid pointer,
//                                        which the cp.async schedule passes with a zero
//                                        source size).
// An absent row/column or r is marked with OFF (far outside any image) so the bounds test
// that padding needs anyway rejects it: no separate flag to carry.
// ---------------------------------------------------------------------------------

#define OFF (-(1 << 29))

// forward: rows m = filter k, cols = (n, ho, wo), reduction r = (c, fh, fw)
struct FwdProb {
    const float* x; const float* w; const float* b;
    const float* r; float* y;  // r (residual) may be y itself: no __restrict__ on either
    Geo g; unsigned M, NC, R, FF; i64 HW, HoWo;
    int has_bias, has_res, relu;
    FastDiv dFF, dFW, dHoWo, dWo;

    __device__ void init() {
        M = g.K; FF = g.FH * g.FW; R = g.C * FF; HW = (i64)g.H * g.W; HoWo = (i64)g.Ho * g.Wo;
        NC = (unsigned)(g.N * HoWo);
        dFF.init(FF); dFW.init(g.FW); dHoWo.init((unsigned)HoWo); dWo.init(g.Wo);
    }
    // A = w[m, r]
    __device__ const float* a_ptr() const { return w; }
    __device__ i64 a_stride() const { return R; }
    // A(m, r..r+3) contiguous and 16-byte aligned for every r % 4 == 0 (and R % 4 == 0)
    __device__ bool a_vec4() const { return R % 4 == 0 && ((size_t)w & 15) == 0; }
    struct ARed { i64 off; bool ok; };
    __device__ void a_red(ARed& e, unsigned r) const { e.ok = r < R; e.off = r; }
    struct BCol { const float* p; int hb, wb; };             // &x[n, 0, hb, wb] (window corner)
    struct BRed { i64 off; int dh, dw; };                    // channel c, tap (fh, fw)
    __device__ void b_col(BCol& b, unsigned col) const {
        const Split3 o = split3(col < NC ? col : 0u, dHoWo, dWo);  // (n, ho, wo)
        b.hb = col < NC ? (int)o.b * g.s - g.p : OFF;
        b.wb = (int)o.c * g.s - g.p;
        b.p = x + ((i64)o.a * g.C * HW + (i64)((int)o.b * g.s - g.p) * g.W + b.wb);
    }
    __device__ void b_red(BRed& e, unsigned r) const {
        const Split3 t = split3(r < R ? r : 0u, dFF, dFW);  // (c, fh, fw)
        e.dh = r < R ? (int)t.b * g.d : OFF;
        e.dw = (int)t.c * g.d;
        e.off = (i64)t.a * HW + (i64)((int)t.b * g.d) * g.W + e.dw;
    }
    __device__ const float* b_src(const BCol& b, const BRed& e, bool& ok) const {
        const int h = b.hb + e.dh, ww = b.wb + e.dw;
        ok = (unsigned)h < (unsigned)g.H && (unsigned)ww < (unsigned)g.W;
        return ok ? b.p + e.off : x;
    }
    __device__ void store(unsigned m, unsigned col, float v) const {
        unsigned n = dHoWo.div(col);
        unsigned hw = col - n * (unsigned)HoWo;
        const i64 o = (i64)n * g.ys + (i64)m * HoWo + hw;  // r has y's layout
        // epilogue: (acc + b) + r, then ReLU -- the order of the unfused conv, add (+ ReLU)
        if (has_bias) v += b[m];
        if (has_res) v += r[o];  // read before the write of the same element (in place: r == y)
        if (relu) v = v > 0.f ? v : 0.f;
        y[o] = v;
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
    // A = w[k, m, f] for r = (k, f)
    __device__ const float* a_ptr() const { return w; }
    __device__ i64 a_stride() const { return FF; }
    __device__ bool a_vec4() const { return FF % 4 == 0 && ((size_t)w & 15) == 0; }
    struct ARed { i64 off; bool ok; };
    __device__ void a_red(ARed& e, unsigned r) const {
        e.ok = r < R;
        const unsigned rr = e.ok ? r : 0u;
        const unsigned k = dFF.div(rr);
        e.off = (i64)k * g.C * FF + (rr - k * FF);
    }
    // Addressing is the forward's at stride 1, where dy[n, k, h+p-fh*d, w+p-fw*d] is the
    // source: a per-column pointer plus a per-slice offset, so each element costs two
    // subtractions, the bounds test and one add (no multiply).  Strides > 1 (rare here: the
    // direct kernel takes them unless its tiles do not fit) divide and correct that address.
    struct BCol { const float* p; int hp, wp; };             // &dy[n, 0, h+p, w+p] (as if Ho x Wo), h+p, w+p
    struct BRed { i64 off; int fhd, fwd; };                  // k*Ho*Wo - (fh*d)*Wo - fw*d, fh*d, fw*d
    __device__ void b_col(BCol& b, unsigned col) const {
        const Split3 o = split3(col < NC ? col : 0u, dHW, dW);  // (n, h, w)
        b.p = dy + ((i64)o.a * g.ys + (i64)((int)o.b + g.p) * g.Wo + ((int)o.c + g.p));
        b.hp = col < NC ? (int)o.b + g.p : OFF;
        b.wp = (int)o.c + g.p;
    }
    __device__ void b_red(BRed& e, unsigned r) const {
        const Split3 t = split3(r < R ? r : 0u, dFF, dFW);  // (k, fh, fw)
        e.fwd = (int)t.c * g.d;
        e.off = (i64)t.a * HoWo - (i64)((int)t.b * g.d) * g.Wo - e.fwd;
        e.fhd = r < R ? (int)t.b * g.d : -OFF;
    }
    __device__ const float* b_src(const BCol& b, const BRed& e, bool& ok) const {
        const int th = b.hp - e.fhd, tw = b.wp - e.fwd;  // the output position at stride 1
        if (g.s == 1) {
            ok = (unsigned)th < (unsigned)g.Ho && (unsigned)tw < (unsigned)g.Wo;
            return ok ? b.p + e.off : dy;
        }
        ok = false;  // only taps that land exactly on the strided output grid contribute
        if ((th | tw) < 0) return dy;
        const unsigned ho = dS.div((unsigned)th), wo = dS.div((unsigned)tw);
        if ((int)(ho * g.s) != th || (int)(wo * g.s) != tw) return dy;
        if (ho >= (unsigned)g.Ho || wo >= (unsigned)g.Wo) return dy;
        ok = true;  // b.p + e.off addresses dy[n, k, th, tw]; the source is dy[n, k, ho, wo]
        return b.p + (e.off + (i64)((int)ho - th) * g.Wo + ((int)wo - tw));
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
    // A = dy[n, m, hw] for r = (n, hw)
    __device__ const float* a_ptr() const { return dy; }
    __device__ i64 a_stride() const { return HoWo; }
    __device__ bool a_vec4() const { return HoWo % 4 == 0 && ((size_t)dy & 15) == 0; }
    struct ARed { i64 off; bool ok; };
    __device__ void a_red(ARed& e, unsigned r) const {
        e.ok = r < R;
        const unsigned rr = e.ok ? r : 0u;
        const unsigned n = dHoWo.div(rr);
        e.off = (i64)n * g.ys + (rr - n * (unsigned)HoWo);
    }
    struct BCol { const float* p; int fhd, fwd; };           // &x[0, c], tap (fh, fw)*d - p
    struct BRed { i64 off; int hs, ws; };                    // image n, output (ho, wo) * s
    __device__ void b_col(BCol& b, unsigned col) const {
        const Split3 t = split3(col < NC ? col : 0u, dFF, dFW);  // (c, fh, fw)
        b.p = x + (i64)t.a * HW;
        b.fhd = col < NC ? (int)t.b * g.d - g.p : OFF;
        b.fwd = (int)t.c * g.d - g.p;
    }
    __device__ void b_red(BRed& e, unsigned r) const {
        const Split3 o = split3(r < R ? r : 0u, dHoWo, dWo);  // (n, ho, wo)
        e.off = (i64)o.a * g.C * HW;
        e.hs = r < R ? (int)o.b * g.s : OFF;
        e.ws = (int)o.c * g.s;
    }
    __device__ const float* b_src(const BCol& b, const BRed& e, bool& ok) const {
        const int h = e.hs + b.fhd, ww = e.ws + b.fwd;
        ok = (unsigned)h < (unsigned)g.H && (unsigned)ww < (unsigned)g.W;
        return ok ? b.p + (e.off + (i64)h * g.W + ww) : x;
    }
    __device__ void store(unsigned m, unsigned col, float v) const {
        float* p = dw + (i64)m * NC + col;
        if (atomic) atomicAdd(p, v); else *p = v;
    }
};

// ---------------------------------------------------------------------------------
// The GEMM main loops.  Shared-memory tiles As[k][m], Bs[k][n] (8-deep K slices, rows
// padded by SPAD); the arithmetic on one slice and the epilogue are common to both
// schedules:
//   igemm        ("reg")   two stages: slice t+1 is gathered into registers during the
//                          arithmetic on slice t, then stored (TF32: rounded) to shared.
//   igemm_async  ("async") four stages: cp.async copies gather slices t+1..t+3 straight
//                          into shared memory while slice t is multiplied, so three
//                          slices of global latency are in flight instead of one; TF32
//                          operands are rounded when fragments are read.
// ---------------------------------------------------------------------------------

template <int BM, int BN, bool TF32>
struct Tile {  // per-thread accumulators and where they sit in the block's BM x BN tile
    static constexpr int TM = BM / 16, TN = BN / 16, HM = TM / 2, HN = TN / 2;  // fp32 FMA
    static constexpr int WM = BM / 2, WN = BN / 4, MI = WM / 16, NJ = WN / 8;   // tf32 mma
    float acc[TF32 ? MI * NJ * 4 : TM * TN];

    __device__ void zero() {
#pragma unroll
        for (int i = 0; i < (int)(sizeof(acc) / sizeof(float)); ++i) acc[i] = 0.f;
    }

    // One 8-deep slice: acc += As^T Bs.  ROUND: round the operands to TF32 here (the
    // async schedule copies raw fp32 into shared memory; the reg schedule rounded them).
    template <bool ROUND>
    __device__ void slice(const float (*As)[BM + SPAD], const float (*Bs)[BN + SPAD], int tid) {
        if constexpr (!TF32) {
            const int tx = tid % 16, ty = tid / 16;
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                float a[TM], bb[TN];
#pragma unroll
                for (int i = 0; i < HM; ++i) {
                    a[i] = As[kk][ty * HM + i];
                    a[HM + i] = As[kk][BM / 2 + ty * HM + i];
                }
#pragma unroll
                for (int j = 0; j < HN; ++j) {
                    bb[j] = Bs[kk][tx * HN + j];
                    bb[HN + j] = Bs[kk][BN / 2 + tx * HN + j];
                }
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i * TN + j] = fmaf(a[i], bb[j], acc[i * TN + j]);
            }
        } else {
            const int warp = tid / 32, lane = tid % 32;
            const int wm = (warp / 4) * WM, wn = (warp % 4) * WN;
            const int gq = lane >> 2, tq = lane & 3;
            auto rd = [](float v) { return __float_as_uint(ROUND ? to_tf32(v) : v); };
            unsigned af[MI][4], bf[NJ][2];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                const int mr = wm + i * 16 + gq;
                af[i][0] = rd(As[tq][mr]);
                af[i][1] = rd(As[tq][mr + 8]);
                af[i][2] = rd(As[tq + 4][mr]);
                af[i][3] = rd(As[tq + 4][mr + 8]);
            }
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const int nc = wn + j * 8 + gq;
                bf[j][0] = rd(Bs[tq][nc]);
                bf[j][1] = rd(Bs[tq + 4][nc]);
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NJ; ++j) mma_tf32(&acc[(i * NJ + j) * 4], af[i], bf[j]);
        }
    }

    template <class Prob>
    __device__ void store(const Prob& P, unsigned m0, unsigned n0, int tid) const {
        if constexpr (!TF32) {
            const int tx = tid % 16, ty = tid / 16;
#pragma unroll
            for (int i = 0; i < TM; ++i) {
                unsigned m = m0 + (i < HM ? ty * HM + i : BM / 2 + ty * HM + (i - HM));
                if (m >= P.M) continue;
#pragma unroll
                for (int j = 0; j < TN; ++j) {
                    unsigned col = n0 + (j < HN ? tx * HN + j : BN / 2 + tx * HN + (j - HN));
                    if (col < P.NC) P.store(m, col, acc[i * TN + j]);
                }
            }
        } else {
            const int warp = tid / 32, lane = tid % 32;
            const int wm = (warp / 4) * WM, wn = (warp % 4) * WN;
            const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
            for (int i = 0; i < MI; ++i) {
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    unsigned m = m0 + wm + i * 16 + gq + half * 8;
                    if (m >= P.M) continue;
#pragma unroll
                    for (int j = 0; j < NJ; ++j) {
                        unsigned col = n0 + wn + j * 8 + tq * 2;
                        const float* c = &acc[(i * NJ + j) * 4 + half * 2];
                        if (col < P.NC) P.store(m, col, c[0]);
                        if (col + 1 < P.NC) P.store(m, col + 1, c[1]);
                    }
                }
            }
        }
    }
};

// Which slices this block reduces over, and which operand elements each thread moves.
// Each thread moves elements of one reduction index r per operand and slice: A rows
// a_m + i*A_MSTEP at r = k0 + a_kk; B columns lane + 32*j at r = k0 + warp (a warp reads
// 32 consecutive columns: coalesced, and conflict-free into shared memory).
// The reduction range [kbeg, kend) of this block's split (blockIdx.z of gridDim.z; the whole
// range when gridDim.z == 1), cut in chunks that are multiples of the slice depth S, and
// how many slices it holds.
struct SplitRange {
    unsigned kbeg, kend, ntiles;
    __device__ void split_range(unsigned R, unsigned S) {
        const unsigned chunk = ((R + gridDim.z - 1) / gridDim.z + S - 1) / S * S;
        kbeg = blockIdx.z * chunk;
        kend = min(R, kbeg + chunk);
        ntiles = kend > kbeg ? (kend - kbeg + S - 1) / S : 0u;
    }
};

template <class Prob, int BM, int BN>
struct Slices : SplitRange {
    static_assert(NT / 32 == BK, "one warp per B row of a slice");
    static constexpr int A_PER = BM * BK / NT;  // A elements each thread loads per slice
    static constexpr int B_PER = BN / 32;       // B elements each thread loads per slice
    static constexpr int A_MSTEP = NT / BK;     // row step between a thread's A elements
    int a_kk, b_k, b_col;
    unsigned a_m;          // the thread's first A row (m0 + tid / BK)
    const float* a_row;    // A's row a_m
    typename Prob::BCol bcol[B_PER];

    __device__ Slices(const Prob& P, unsigned m0, unsigned n0, int tid) {
        split_range(P.R, BK);
        a_kk = tid % BK;
        a_m = m0 + tid / BK;
        a_row = P.a_ptr() + (i64)a_m * P.a_stride();
        b_k = tid / 32;
        b_col = tid % 32;
#pragma unroll
        for (int j = 0; j < B_PER; ++j) P.b_col(bcol[j], n0 + b_col + 32 * j);
    }
    // Past this block's split (r >= kend) an element is absent: ask for r = R, which every
    // Prob decodes as absent.  f(i, address, exists) for each of the thread's elements.
    template <class F>
    __device__ __forceinline__ void each_a(const Prob& P, unsigned k0, F&& f) const {
        const unsigned r = k0 + a_kk;
        typename Prob::ARed e;
        P.a_red(e, r < kend ? r : P.R);
        const float* p = a_row + e.off;
        const i64 step = (i64)A_MSTEP * P.a_stride();
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const bool ok = e.ok && a_m + i * A_MSTEP < P.M;
            f(i, ok ? p + i * step : P.a_ptr(), ok);
        }
    }
    template <class F>
    __device__ __forceinline__ void each_b(const Prob& P, unsigned k0, F&& f) const {
        const unsigned r = k0 + b_k;
        typename Prob::BRed e;
        P.b_red(e, r < kend ? r : P.R);
#pragma unroll
        for (int j = 0; j < B_PER; ++j) {
            bool ok;
            const float* p = P.b_src(bcol[j], e, ok);
            f(j, p, ok);
        }
    }
    __device__ float* a_dst(float (*As)[BM + SPAD], int i) const {
        return &As[a_kk][a_m % BM + i * A_MSTEP];
    }
    __device__ float* b_dst(float (*Bs)[BN + SPAD], int j) const { return &Bs[b_k][b_col + 32 * j]; }
};

template <class Prob, int BM, int BN, bool TF32>
__device__ __forceinline__ void igemm(const Prob& P) {
    static_assert(BM == 64 || BM == 128, "BM");
    static_assert(BN == 64 || BN == 128, "BN");
    using S = Slices<Prob, BM, BN>;
    __shared__ __align__(16) float As[2][BK][BM + SPAD];
    __shared__ __align__(16) float Bs[2][BK][BN + SPAD];
    const int tid = threadIdx.x;
    const unsigned m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    S sl(P, m0, n0, tid);
    Tile<BM, BN, TF32> tile;
    tile.zero();

    float ra[S::A_PER], rb[S::B_PER];
    auto gload = [&](unsigned k0) {
        sl.each_a(P, k0, [&](int i, const float* p, bool ok) { ra[i] = ok ? *p : 0.f; });
        sl.each_b(P, k0, [&](int j, const float* p, bool ok) { rb[j] = ok ? *p : 0.f; });
    };
    auto sstore = [&](int buf) {
#pragma unroll
        for (int i = 0; i < S::A_PER; ++i) *sl.a_dst(As[buf], i) = TF32 ? to_tf32(ra[i]) : ra[i];
#pragma unroll
        for (int j = 0; j < S::B_PER; ++j) *sl.b_dst(Bs[buf], j) = TF32 ? to_tf32(rb[j]) : rb[j];
    };

    if (sl.ntiles > 0) {
        gload(sl.kbeg);
        sstore(0);
        __syncthreads();
    }
    int buf = 0;
    for (unsigned t = 0; t < sl.ntiles; ++t) {
        if (t + 1 < sl.ntiles) gload(sl.kbeg + (t + 1) * BK);  // in flight during the arithmetic
        tile.template slice<false>(As[buf], Bs[buf], tid);
        if (t + 1 < sl.ntiles) sstore(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }
    if (sl.ntiles == 0 && gridDim.z > 1) return;  // an empty split adds nothing
    tile.store(P, m0, n0, tid);
}

#define ASYNC_STAGES 4

template <class Prob, int BM, int BN, bool TF32>
__device__ __forceinline__ void igemm_async(const Prob& P) {
    static_assert(BM == 64 || BM == 128, "BM");
    static_assert(BN == 64 || BN == 128, "BN");
    constexpr int ST = ASYNC_STAGES;
    using S = Slices<Prob, BM, BN>;
    __shared__ __align__(16) float As[ST][BK][BM + SPAD];
    __shared__ __align__(16) float Bs[ST][BK][BN + SPAD];
    const int tid = threadIdx.x;
    const unsigned m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    S sl(P, m0, n0, tid);
    Tile<BM, BN, TF32> tile;
    tile.zero();

    auto issue = [&](unsigned t) {  // slice t -> stage t % ST (absent elements zero-filled)
        const int st = (int)(t % ST);
        const unsigned k0 = sl.kbeg + t * BK;
        sl.each_a(P, k0, [&](int i, const float* p, bool ok) { cp_async4(sl.a_dst(As[st], i), p, ok); });
        sl.each_b(P, k0, [&](int j, const float* p, bool ok) { cp_async4(sl.b_dst(Bs[st], j), p, ok); });
    };

    // Prologue: slices 0..ST-2 in flight, one commit group each (empty groups past the end
    // keep the group count, and so the wait below, uniform).
#pragma unroll
    for (int t = 0; t < ST - 1; ++t) {
        if ((unsigned)t < sl.ntiles) issue((unsigned)t);
        cp_async_commit();
    }
    for (unsigned t = 0; t < sl.ntiles; ++t) {
        cp_async_wait<ST - 2>();  // this thread's copies of slice t have landed ...
        __syncthreads();          // ... and everyone's; stage (t-1)%ST is free again
        if (t + ST - 1 < sl.ntiles) issue(t + ST - 1);
        cp_async_commit();
        tile.template slice<TF32>(As[t % ST], Bs[t % ST], tid);
    }
    cp_async_wait<0>();
    if (sl.ntiles == 0 && gridDim.z > 1) return;  // an empty split adds nothing
    tile.store(P, m0, n0, tid);
}

// ---------------------------------------------------------------------------------
// Entry points: conv_{fwd,bwdd,bwdf}_f32_<BM>x<BN>_{fp32,tf32}[_async]
// ---------------------------------------------------------------------------------

#define GEO_PARAMS int N, int C, int H, int W, int K, int FH, int FW, int Ho, int Wo, int s, int p, int d, int ys
#define GEO_ARGS N, C, H, W, K, FH, FW, Ho, Wo, s, p, d, ys

// Blocks per SM that ptxas must fit in registers (65536 / (256 * MINB) per thread).  The
// rule (bench/sass_stats.py, sm_90): the most blocks at which the main loops do not spill,
// but at least two, so one block's barrier wait is covered by the other's arithmetic.  The
// 128x128 tiles are the exception to "no spill": at two blocks (the occupancy they had when
// last timed on the H100) the fp32 forward/backward-filter loops keep a few values in L1-
// resident local memory (fp32 forward: 15 of 716 instructions per slice; tf32: 1 of 204).
// One block without spills (up to 163 registers) is the alternative; only a GPU can tell.
#define MINB(BM, BN, TF) ((BM) * (BN) == 64 * 64 ? ((TF) ? 4 : 3) : 2)

// SUF: "" for the reg schedule (igemm), _async for igemm_async.
#define CONV_ENTRIES(BM, BN, PREC, TF, SUF, LOOP)                                                  \
extern "C" __global__ void __launch_bounds__(NT, MINB(BM, BN, TF))                                            \
conv_fwd_f32_##BM##x##BN##_##PREC##SUF(const float* __restrict__ x, const float* __restrict__ w, \
                                  const float* __restrict__ b, const float* r, float* y,         \
                                  GEO_PARAMS, int has_bias, int has_res, int relu) {             \
    FwdProb P;                                                                                    \
    P.x = x; P.w = w; P.b = b; P.r = r; P.y = y; P.g = make_geo(GEO_ARGS);                        \
    P.has_bias = has_bias; P.has_res = has_res; P.relu = relu;                                    \
    P.init();                                                                                     \
    LOOP<FwdProb, BM, BN, TF>(P);                                                                 \
}                                                                                                 \
extern "C" __global__ void __launch_bounds__(NT, MINB(BM, BN, TF))                                            \
conv_bwdd_f32_##BM##x##BN##_##PREC##SUF(const float* __restrict__ dy, const float* __restrict__ w,\
                                   float* __restrict__ dx, GEO_PARAMS) {                         \
    BwdDataProb P;                                                                                \
    P.dy = dy; P.w = w; P.dx = dx; P.g = make_geo(GEO_ARGS);                                      \
    P.init();                                                                                     \
    LOOP<BwdDataProb, BM, BN, TF>(P);                                                             \
}                                                                                                 \
extern "C" __global__ void __launch_bounds__(NT, MINB(BM, BN, TF))                                            \
conv_bwdf_f32_##BM##x##BN##_##PREC##SUF(const float* __restrict__ x, const float* __restrict__ dy,\
                                   float* __restrict__ dw, GEO_PARAMS, int atomic) {             \
    BwdFilterProb P;                                                                              \
    P.x = x; P.dy = dy; P.dw = dw; P.g = make_geo(GEO_ARGS); P.atomic = atomic;                   \
    P.init();                                                                                     \
    LOOP<BwdFilterProb, BM, BN, TF>(P);                                                           \
}

// The _async entries double the compile time, so they are built only into the module
// variant compiled with -DGEMM_ASYNC (gpuconv loads it when GPUCONV_GEMM_SCHEDULE=async).
#ifdef GEMM_ASYNC
#define CONV_SCHEDULES(BM, BN, PREC, TF)      \
    CONV_ENTRIES(BM, BN, PREC, TF, , igemm)   \
    CONV_ENTRIES(BM, BN, PREC, TF, _async, igemm_async)
#else
#define CONV_SCHEDULES(BM, BN, PREC, TF) CONV_ENTRIES(BM, BN, PREC, TF, , igemm)
#endif

// The default module (and the GEMM_ASYNC variant) holds everything below; the sm_90a
// variant (-DGEMM_WGMMA) holds only the wgmma entries at the end of the file.
#ifndef GEMM_WGMMA
CONV_SCHEDULES(128, 128, fp32, false)
CONV_SCHEDULES(128, 64, fp32, false)
CONV_SCHEDULES(64, 128, fp32, false)
CONV_SCHEDULES(64, 64, fp32, false)
CONV_SCHEDULES(128, 128, tf32, true)
CONV_SCHEDULES(128, 64, tf32, true)
CONV_SCHEDULES(64, 128, tf32, true)
CONV_SCHEDULES(64, 64, tf32, true)

// ---------------------------------------------------------------------------------
// Direct ("gather") backward-data for float32: conv_bwdd_direct_f32_c<CT>_<TI>x<TJ>.
//
// Why: the implicit GEMM has only C rows (a 64-row tile is 95% padding for C=3) and,
// with stride s, multiplies s*s-1 of every s*s taps by structural zeros.  Here every
// thread only visits taps that land on the output grid.
//
// Residue decomposition: the valid fh of a pixel h are those with fh*d == h+p (mod s),
// which depends only on rh = h mod s.  With g = gcd(s, d) they are fh0, fh0 + s/g, ...
// (none when no fh in [0, s/g) solves it), and the output row of tap number a is
// ho = (rh + p - fh0*d)/s - a*(d/g) + i for the pixel h = rh + s*i.  So each residue
// class (rh, rw) is a stride-1 correlation of dy with a sub-filter over the sub-grid
// (i, j), and the dy rows/columns a tile needs are contiguous.
//
// Launch: block NT = 256 threads as TY x TX; a block owns one (n, channel group of CT
// channels, residue (rh, rw), TI x TJ tile of the sub-grid) with TI = TY, TJ = 4*TX;
// each thread owns sub-grid row ty and columns tx + v*TX (v < 4; interleaved so a
// warp's shared-memory reads are consecutive) for all CT channels.  grid = (N * G *
// s*s * cdiv(cdiv(H,s),TI) * cdiv(cdiv(W,s),TJ)), the residue varying fastest so the
// s*s blocks writing one region of dx run together (their strided writes merge in L2).
// Dynamic shared memory (floats) = KC * (RS*P + TS*CTP): per k of a KC-deep chunk a
// zero-padded dy tile [RS][P] and the valid taps of w [TS][CTP] (CTP = CT padded to a
// multiple of 4 when CT > 2, so a tap's channels are one vector load).  RS, P (row
// pitch, == TX mod 32 so the TY rows of a warp fall in distinct banks), TS and KC come
// from the launcher (gpuconv/ops/conv.py _bwdd_direct_plan) and bound every block's
// tile: RS >= TI + (nvh-1)*(d/g), P >= TJ + (nvw-1)*(d/g), TS >= nvh*nvw.
// ---------------------------------------------------------------------------------

struct AxisTaps {
    int f0, nv, step, dstep, o0;  // first valid tap, count, tap step, output step, output of f0 at i=0
};

__device__ __forceinline__ AxisTaps axis_taps(int r, int F, int s, int p, int d) {
    int a = s, b = d;
    while (b) { int t = a % b; a = b; b = t; }  // a = gcd(s, d)
    AxisTaps t;
    t.step = s / a; t.dstep = d / a; t.f0 = 0; t.nv = 0; t.o0 = 0;
    for (int f = 0; f < t.step && f < F; ++f) {
        int q = r + p - f * d;
        if (((q % s) + s) % s == 0) {
            t.f0 = f;
            t.nv = (F - 1 - f) / t.step + 1;
            t.o0 = q / s;  // exact (q is a multiple of s), also when q < 0
            break;
        }
    }
    return t;
}

template <int CT, int TY, int TX>
__device__ __forceinline__ void bwdd_direct(const float* __restrict__ dy, const float* __restrict__ w,
                                            float* __restrict__ dx, const Geo g, int KC, int RS, int P,
                                            int TS) {
    static_assert(TY * TX == NT, "block shape");
    constexpr int V = 4;
    constexpr int TI = TY, TJ = TX * V;
    constexpr int CTP = CT <= 2 ? CT : (CT + 3) / 4 * 4;
    extern __shared__ __align__(16) float smem[];
    float* dys = smem;                       // [KC][RS][P]
    float* ws = smem + (i64)KC * RS * P;     // [KC][TS][CTP]; P is a multiple of 8, so 16-byte aligned

    const int s = g.s;
    const int Hsm = (g.H + s - 1) / s, Wsm = (g.W + s - 1) / s;  // largest sub-grid
    const int TIn = (Hsm + TI - 1) / TI, TJn = (Wsm + TJ - 1) / TJ;
    const int G = (g.C + CT - 1) / CT;
    unsigned long long bid = blockIdx.x;
    const int res = (int)(bid % (unsigned)(s * s)); bid /= (unsigned)(s * s);
    const int tj = (int)(bid % (unsigned)TJn); bid /= (unsigned)TJn;
    const int ti = (int)(bid % (unsigned)TIn); bid /= (unsigned)TIn;
    const int cg = (int)(bid % (unsigned)G);
    const i64 n = (i64)(bid / (unsigned)G);
    const int rh = res / s, rw = res % s;
    const int Hs = rh < g.H ? (g.H - rh + s - 1) / s : 0;  // this residue's sub-grid
    const int Ws = rw < g.W ? (g.W - rw + s - 1) / s : 0;
    const int i0 = ti * TI, j0 = tj * TJ, c0 = cg * CT;
    if (i0 >= Hs || j0 >= Ws) return;  // block-uniform: nothing of this tile exists

    const int tid = threadIdx.x;
    const int tx = tid % TX, ty = tid / TX;
    float acc[CT][V];
#pragma unroll
    for (int c = 0; c < CT; ++c)
#pragma unroll
        for (int v = 0; v < V; ++v) acc[c][v] = 0.f;

    const AxisTaps th = axis_taps(rh, g.FH, s, g.p, g.d);
    const AxisTaps tw = axis_taps(rw, g.FW, s, g.p, g.d);
    if (th.nv > 0 && tw.nv > 0) {  // block-uniform; otherwise dx of this class is 0
        const int nvh = th.nv, nvw = tw.nv, ntap = nvh * nvw;
        const int rows = TI + (nvh - 1) * th.dstep;
        const int cols = TJ + (nvw - 1) * tw.dstep;
        const int oh_base = th.o0 - (nvh - 1) * th.dstep + i0;  // dy row of smem row 0
        const int ow_base = tw.o0 - (nvw - 1) * tw.dstep + j0;
        const i64 HoWo = (i64)g.Ho * g.Wo;
        const float* dyn = dy + n * g.ys;
        const int warp = tid / 32, lane = tid % 32;
        for (int k0 = 0; k0 < g.K; k0 += KC) {
            __syncthreads();  // the previous chunk has been consumed
            // dy tile, one warp per (k, row): coalesced along wo, zeros outside dy
            for (int rr = warp; rr < KC * rows; rr += NT / 32) {
                const int kk = rr / rows, r = rr - kk * rows;
                const int k = k0 + kk, oh = oh_base + r;
                const bool rok = k < g.K && oh >= 0 && oh < g.Ho;
                const float* src = dyn + (rok ? (i64)k * HoWo + (i64)oh * g.Wo : 0);
                float* dst = dys + ((i64)kk * RS + r) * P;
                for (int cc = lane; cc < cols; cc += 32) {
                    const int ow = ow_base + cc;
                    dst[cc] = (rok && ow >= 0 && ow < g.Wo) ? src[ow] : 0.f;
                }
            }
            // w[k, c0 + c, fh0 + a*step, fw0 + b*step] for the valid taps (a, b)
            const int wtot = KC * ntap * CTP;
            for (int e = tid; e < wtot; e += NT) {
                const int c = e % CTP, t2 = e / CTP;
                const int tp = t2 % ntap, kk = t2 / ntap;
                const int a = tp / nvw, b = tp - a * nvw;
                const int k = k0 + kk, ch = c0 + c;
                float val = 0.f;
                if (c < CT && k < g.K && ch < g.C)
                    val = w[(((i64)k * g.C + ch) * g.FH + (th.f0 + a * th.step)) * g.FW + tw.f0 + b * tw.step];
                ws[((i64)kk * TS + tp) * CTP + c] = val;
            }
            __syncthreads();
            const int kcn = min(KC, g.K - k0);
            for (int kk = 0; kk < kcn; ++kk) {
                const float* dk = dys + (i64)kk * RS * P + tx;
                const float* wk = ws + (i64)kk * TS * CTP;
                for (int a = 0; a < nvh; ++a) {
                    const float* drow = dk + ((nvh - 1 - a) * th.dstep + ty) * P + (nvw - 1) * tw.dstep;
                    const float* wa = wk + a * nvw * CTP;
#pragma unroll 2
                    for (int b = 0; b < nvw; ++b) {
                        const float* dp = drow - b * tw.dstep;
                        float dv[V];
#pragma unroll
                        for (int v = 0; v < V; ++v) dv[v] = dp[v * TX];
                        float wv[CTP];
                        const float* wb = wa + b * CTP;
                        if constexpr (CTP % 4 == 0) {
#pragma unroll
                            for (int q = 0; q < CTP / 4; ++q) {
                                const float4 t4 = reinterpret_cast<const float4*>(wb)[q];
                                wv[4 * q] = t4.x; wv[4 * q + 1] = t4.y; wv[4 * q + 2] = t4.z; wv[4 * q + 3] = t4.w;
                            }
                        } else if constexpr (CTP == 2) {
                            const float2 t2v = reinterpret_cast<const float2*>(wb)[0];
                            wv[0] = t2v.x; wv[1] = t2v.y;
                        } else {
                            wv[0] = wb[0];
                        }
#pragma unroll
                        for (int c = 0; c < CT; ++c)
#pragma unroll
                            for (int v = 0; v < V; ++v) acc[c][v] = fmaf(wv[c], dv[v], acc[c][v]);
                    }
                }
            }
        }
    }
    const int i = i0 + ty;
    if (i >= Hs) return;
    const i64 hrow = (i64)(rh + s * i) * g.W;
#pragma unroll
    for (int c = 0; c < CT; ++c) {
        if (c0 + c >= g.C) break;
        float* dxc = dx + (n * g.C + c0 + c) * (i64)g.H * g.W + hrow;
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const int j = j0 + tx + v * TX;
            if (j < Ws) dxc[rw + (i64)s * j] = acc[c][v];
        }
    }
}

#define BWDD_DIRECT_ENTRY(CT, TY, TX, TI, TJ)                                                       \
extern "C" __global__ void __launch_bounds__(NT)                                                  \
conv_bwdd_direct_f32_c##CT##_##TI##x##TJ(const float* __restrict__ dy, const float* __restrict__ w, \
                                          float* __restrict__ dx, GEO_PARAMS, int KC, int RS,      \
                                          int P, int TS) {                                         \
    bwdd_direct<CT, TY, TX>(dy, w, dx, make_geo(GEO_ARGS), KC, RS, P, TS);                        \
}

BWDD_DIRECT_ENTRY(1, 16, 16, 16, 64)
BWDD_DIRECT_ENTRY(2, 16, 16, 16, 64)
BWDD_DIRECT_ENTRY(3, 16, 16, 16, 64)
BWDD_DIRECT_ENTRY(4, 16, 16, 16, 64)
BWDD_DIRECT_ENTRY(8, 16, 16, 16, 64)
BWDD_DIRECT_ENTRY(1, 32, 8, 32, 32)
BWDD_DIRECT_ENTRY(2, 32, 8, 32, 32)
BWDD_DIRECT_ENTRY(3, 32, 8, 32, 32)
BWDD_DIRECT_ENTRY(4, 32, 8, 32, 32)
BWDD_DIRECT_ENTRY(8, 32, 8, 32, 32)

// ---------------------------------------------------------------------------------
// Direct float64 kernels (gradient checks) and the bias gradient.
// ---------------------------------------------------------------------------------

extern "C" __global__ void conv_fwd_direct_f64(const double* __restrict__ x, const double* __restrict__ w,
                                               const double* __restrict__ b, const double* r, double* y,
                                               GEO_PARAMS, int has_bias, int has_res, int relu) {
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
        const i64 o = n * ys + ((i64)k * Ho + ho) * Wo + wo;  // r has y's layout
        if (has_res) acc += r[o];  // r may be y (in place): read before the write
        if (relu && acc < 0.0) acc = 0.0;
        y[o] = acc;
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
                    acc += dy[n * ys + ((i64)k * Ho + ho) * Wo + wo] * w[(((i64)k * C + c) * FH + fh) * FW + fw];
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
            const double* dyk = dy + (i64)n * ys + (i64)k * Ho * Wo;
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
__device__ __forceinline__ void bias_grad(const T* __restrict__ dy, T* __restrict__ db, int N, int K, i64 HoWo,
                                          i64 ys) {
    __shared__ T red[NT];
    const int k = blockIdx.x;
    const i64 total = (i64)N * HoWo;
    T acc = 0;
    for (i64 i = (i64)blockIdx.y * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.y * blockDim.x) {
        i64 n = i / HoWo;
        i64 hw = i - n * HoWo;
        acc += dy[n * ys + k * HoWo + hw];
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
conv_bias_grad_f32(const float* __restrict__ dy, float* __restrict__ db, int N, int K, int Ho, int Wo, int ys) {
    bias_grad<float>(dy, db, N, K, (i64)Ho * Wo, ys);
}

extern "C" __global__ void __launch_bounds__(NT)
conv_bias_grad_f64(const double* __restrict__ dy, double* __restrict__ db, int N, int K, int Ho, int Wo, int ys) {
    bias_grad<double>(dy, db, N, K, (i64)Ho * Wo, ys);
}
#endif  // !GEMM_WGMMA

// ---------------------------------------------------------------------------------
// Hopper TF32 schedule (sm_90a variant only): conv_{fwd,bwdd,bwdf}_f32_<BM>x<BN>_tf32_wgmma
//
// The same three implicit GEMMs (the Prob structs above gather the operands), multiplied
// by wgmma.mma_async instead of mma.sync: a warpgroup's tensor-core instruction covers
// 64 x N x 8 and runs asynchronously from its shared-memory operands, so no thread loads
// fragments into registers.  K slice WG_BK = 32; WG_STAGES = 3 cp.async stages of
// (BM + BN) * 128 bytes in the 128-byte-swizzled K-major layout (wgmma_layout.cuh), in
// dynamic shared memory: 3 * (BM + BN) * 128 + 1024 bytes (conv.py WGMMA_SMEM).
// Block 256 threads = 2 warpgroups; grid as the other entries.  BM = 128: warpgroup g
// computes rows 64g..64g+63 x all BN columns (m64nBNk8); BM = 64: all 64 rows x columns
// g*BN/2.. (m64n(BN/2)k8).  Gathers (4-byte cp.async, zero-filled where absent), per slice:
//   A: lane l of warp w copies A(m0 + w + 8i, k0 + l), i < BM/8: one reduction index per
//      thread (decoded once), a warp reads 32 consecutive reduction indices of one row
//      and writes one 128-byte row of the tile.  Where A's rows are contiguous in runs of
//      4 (Prob::a_vec4: the forward's weights with C*FH*FW % 4 == 0, dy with Ho*Wo % 4 == 0
//      for backward-filter), 16-byte copies: thread tid copies A(m0 + tid/8 + 32i,
//      k0 + 4(tid%8) .. +3), i < BM/32.
//   B: lane (rl = l % 8, kq = l / 8) of warp w copies B(k0 + 4c + kq, n0 + 8q + rl) for the
//      4 chunks c = 4(w%2)..+3 and the BN/32 column groups q = w/2 + 4j: four reduction
//      indices per thread (a warp's 16 decoded once each by a lane and shuffled), BN/32
//      columns (decoded once per block); a warp writes 8 rows x 4 consecutive k, 32
//      different banks.
// The tensor cores read the top 19 bits of each operand (truncation; the mma.sync entries
// round to nearest).  TF32 only: there is no fp32 wgmma.
// ---------------------------------------------------------------------------------
#ifdef GEMM_WGMMA
#include "wgmma.cuh"         // wgmma_*, fence_proxy_async (inline PTX, sm_90a only)
#include "wgmma_layout.cuh"  // WG_BK, WG_STAGES, sw128 layout, descriptors

// v as lane src holds it: a struct of 32-bit words, shuffled word by word.
template <class T>
__device__ __forceinline__ T shfl_words(const T& v, int src) {
    static_assert(sizeof(T) % 4 == 0, "whole words");
    unsigned w[sizeof(T) / 4];
    memcpy(w, &v, sizeof(T));
#pragma unroll
    for (int i = 0; i < (int)(sizeof(T) / 4); ++i) w[i] = __shfl_sync(0xffffffffu, w[i], src);
    T out;
    memcpy(&out, w, sizeof(T));
    return out;
}

template <class Prob, int BM, int BN>
struct WgSlices : SplitRange {
    static_assert(NT == 256 && WG_BK == 32, "the copy roles assume 8 warps and 32-deep slices");
    static constexpr int A_PER = BM / 8;    // A rows per thread, 4-byte copies
    static constexpr int A_PER4 = BM / 32;  // A rows per thread, 16-byte copies
    static constexpr int B_CH = 4;          // reduction chunks (4 consecutive k) per thread
    static constexpr int B_PER = BN / 32;   // column groups per thread
    bool avec;             // A rows are copied 16 bytes at a time (Prob::a_vec4)
    unsigned a_m;          // the thread's first A row
    const float* a_row;    // A's row a_m
    int lane, a_k, a_dst, b_dst, c0, kq, rl;
    typename Prob::BCol bcol[B_PER];

    __device__ WgSlices(const Prob& P, unsigned m0, unsigned n0, int tid) {
        split_range(P.R, WG_BK);
        const int w = tid >> 5;
        lane = tid & 31;
        avec = P.a_vec4();
        // A, 4-byte: lane l of warp w copies A(m0 + w + 8i, k0 + l): row w + 8i of the tile.
        // A, 16-byte: thread tid copies A(m0 + tid/8 + 32i, k0 + 4(tid%8) .. +3): eight threads
        // move one row's 128 contiguous bytes into one 128-byte line of the tile.
        const int ar = avec ? tid >> 3 : w;
        a_k = avec ? 4 * (tid & 7) : lane;
        a_m = m0 + ar;
        a_row = P.a_ptr() + (i64)a_m * P.a_stride();
        a_dst = sw128_offset(ar, a_k);          // + 1024 i (4-byte) or 4096 i (16-byte): same row % 8
        rl = lane & 7;
        kq = lane >> 3;
        c0 = 4 * (w & 1);
        const int col = 8 * (w >> 1) + rl;      // + 32 j
        b_dst = BM * 128 + col * 128 + kq * 4;  // + 4096 j, chunk position (c ^ rl) << 4
#pragma unroll
        for (int j = 0; j < B_PER; ++j) P.b_col(bcol[j], n0 + col + 32 * j);
    }

    // The copies of slice t into the stage at shared-window address st (the caller commits).
    __device__ __forceinline__ void issue(const Prob& P, unsigned st, unsigned t) const {
        const unsigned k0 = kbeg + t * WG_BK;
        {
            const unsigned r = k0 + a_k;
            typename Prob::ARed e;
            P.a_red(e, r < kend ? r : P.R);  // past the split: r = R, which every Prob calls absent
            const float* p = a_row + e.off;
            if (avec) {  // kend % 4 == 0 here, so r < kend covers r + 3
                const i64 step = 32 * P.a_stride();
#pragma unroll
                for (int i = 0; i < A_PER4; ++i) {
                    const bool ok = e.ok && a_m + 32 * i < P.M;
                    cp_async16_s(st + a_dst + 4096 * i, ok ? p + i * step : P.a_ptr(), ok);
                }
            } else {
                const i64 step = 8 * P.a_stride();
#pragma unroll
                for (int i = 0; i < A_PER; ++i) {
                    const bool ok = e.ok && a_m + 8 * i < P.M;
                    cp_async4_s(st + a_dst + 1024 * i, ok ? p + i * step : P.a_ptr(), ok);
                }
            }
        }
        // B: a warp needs 16 reduction indices (its 4 chunks x 4 kq), each shared by the 8
        // lanes of one kq.  Lane l decodes index l % 16 once; the others take it by shuffle
        // (4 words each), which costs less than decoding 4 indices per thread.
        typename Prob::BRed mine;
        {
            const int i = lane & 15;
            const unsigned r = k0 + 4 * (c0 + (i >> 2)) + (i & 3);
            P.b_red(mine, r < kend ? r : P.R);
        }
#pragma unroll
        for (int c = 0; c < B_CH; ++c) {
            const typename Prob::BRed e = shfl_words(mine, (c << 2) | kq);
            const unsigned dst = st + b_dst + (((c0 + c) ^ rl) << 4);
#pragma unroll
            for (int j = 0; j < B_PER; ++j) {
                bool ok;
                const float* p = P.b_src(bcol[j], e, ok);
                cp_async4_s(dst + 4096 * j, p, ok);
            }
        }
    }
};

template <int R>
__device__ __forceinline__ void wgmma_k8(float (&d)[R], unsigned long long da, unsigned long long db) {
    if constexpr (R == 64) wgmma_m64n128k8_tf32(d, da, db, 1);
    else if constexpr (R == 32) wgmma_m64n64k8_tf32(d, da, db, 1);
    else wgmma_m64n32k8_tf32(d, da, db, 1);
}

template <class Prob, int BM, int BN, bool TF32>
__device__ __forceinline__ void igemm_wgmma(const Prob& P) {
    static_assert(TF32, "wgmma has no fp32 mode");
    static_assert((BM == 64 || BM == 128) && (BN == 64 || BN == 128), "tile");
    constexpr int STAGE = (BM + BN) * 128;             // A tile (BM rows), then B tile (BN rows)
    constexpr int WN = BM == 128 ? BN : BN / 2;        // a warpgroup's columns
    extern __shared__ __align__(1024) float wg_smem[];
    unsigned sbase;
    wg_align_smem(wg_smem, sbase);

    const int tid = threadIdx.x, wg = tid >> 7;
    const int wg_m = BM == 128 ? 64 * wg : 0, wg_n = BM == 128 ? 0 : WN * wg;
    const unsigned m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    WgSlices<Prob, BM, BN> sl(P, m0, n0, tid);
    float acc[WN / 2];
#pragma unroll
    for (int i = 0; i < WN / 2; ++i) acc[i] = 0.f;

#pragma unroll
    for (int t = 0; t < WG_STAGES - 1; ++t) {  // one commit group per slice, empty past the end
        if ((unsigned)t < sl.ntiles) sl.issue(P, sbase + t * STAGE, (unsigned)t);
        cp_async_commit();
    }
    for (unsigned t = 0; t < sl.ntiles; ++t) {
        cp_async_wait<WG_STAGES - 2>();  // this thread's copies of slice t have landed,
        fence_proxy_async();             // are visible to wgmma's async proxy,
        __syncthreads();                 // and so are everyone's; slice t-1's wgmmas are done
        const unsigned next = t + WG_STAGES - 1;  // into slice t-1's stage
        if (next < sl.ntiles) sl.issue(P, sbase + (next % WG_STAGES) * STAGE, next);
        cp_async_commit();
        const unsigned st = sbase + (t % WG_STAGES) * STAGE;
        const unsigned a = st + wg_m * 128, b = st + BM * 128 + wg_n * 128;
        wg_fence_acc(acc);
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < WG_BK / 8; ++j) wgmma_k8(acc, wg_desc_sw128(a + 32 * j), wg_desc_sw128(b + 32 * j));
        wgmma_commit();
        wgmma_wait<0>();  // the other warpgroup and the other resident blocks keep the tensor cores busy
        wg_fence_acc(acc);
    }
    cp_async_wait<0>();
    if (sl.ntiles == 0 && gridDim.z > 1) return;  // an empty split adds nothing

    // Accumulator fragment: warp w of the warpgroup, lane 4g + t holds rows 16w + g (+8),
    // columns 8j + 2t (+1).
    const int w = (tid >> 5) & 3, g = (tid & 31) >> 2, tq = tid & 3;
#pragma unroll
    for (int j = 0; j < WN / 8; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const unsigned m = m0 + wg_m + 16 * w + g + 8 * (q >> 1);
            const unsigned col = n0 + wg_n + 8 * j + 2 * tq + (q & 1);
            if (m < P.M && col < P.NC) P.store(m, col, acc[4 * j + q]);
        }
}

CONV_ENTRIES(128, 128, tf32, true, _wgmma, igemm_wgmma)
CONV_ENTRIES(128, 64, tf32, true, _wgmma, igemm_wgmma)
CONV_ENTRIES(64, 128, tf32, true, _wgmma, igemm_wgmma)
CONV_ENTRIES(64, 64, tf32, true, _wgmma, igemm_wgmma)
#endif  // GEMM_WGMMA
