// winograd.cu -- the transforms of a 3x3, stride-1 convolution by Winograd's minimal
// filtering algorithm F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2016).  A 2x2 output tile of y = conv(x, g) is
//     Y = A^T [ (G g G^T) (.) (B^T d B) ] A          d: the 4x4 input patch under the tile
// so per (k, c) pair a tile costs 16 multiplies instead of 36.  Summed over c, the 16
// products become 16 independent GEMMs (gemm_f32_batched_nn, fc.cu):
//     M[b][k][p] = sum_c U[b][k][c] * V[b][c][p]      b = 4*xi + nu, one of the 16 components
// The same transforms give the two backward passes:
//   backward-data   = the forward pass of dy with the filters flipped and transposed
//                     (w'[c][k][u][v] = w[k][c][2-u][2-v]) and padding 2 - p;
//   backward-filter dW[k][c] = G^T [ sum_p (A dy_p A^T) (.) (B^T d_p B) ] G, the sum over
//                     tiles p being the batched GEMM D[b] = Y[b] V[b]^T (gemm_f32_batched_nt).
// The NumPy spec of every kernel here is gpuconv/ops/winograd.py (same names, same layouts).
//
// Layout: x[N,C,H,W], w[K,C,3,3], y[N,K,Ho,Wo] (NCHW).  Tiles cover the output in 2x2 steps,
// TH = cdiv(Ho,2) by TW = cdiv(Wo,2) per image; a chunk of nb images starting at image n0
// has P = nb*TH*TW tiles, tile p = (n - n0)*TH*TW + ti*TW + tj.  Transformed tensors are
// [16][rows][P] (inputs, products) or [16][K][C] (filters), float32.
//
// Launch geometry (all kernels): block 256, 1-D grid-stride loop over the items named at
// each kernel (one thread per item: a filter pair, or a (channel, tile) pair), any grid.
// Consecutive threads take consecutive tiles p, so the transformed tensors are read and
// written coalesced; the image reads of neighbouring tiles overlap by half (L1/L2 serve it).

typedef long long i64;

// Item idx of a [rows][P] loop -> its row and tile p, and tile p -> its image n and the
// output position (h0, w0) of its top-left element (2ti, 2tj).
struct TileItem { int row, n, h0, w0; i64 p; };
__device__ __forceinline__ TileItem tile_item(i64 idx, i64 P, int n0, int TH, int TW) {
    TileItem t;
    t.row = (int)(idx / P);
    t.p = idx - (i64)t.row * P;
    t.n = n0 + (int)(t.p / (TH * TW));
    const int q = (int)(t.p % (TH * TW));
    t.h0 = (q / TW) * 2;
    t.w0 = (q % TW) * 2;
    return t;
}

// B^T d B for a 4x4 patch d (B^T rows: [1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]).
__device__ __forceinline__ void input_tile(const float d[4][4], float v[16]) {
    float t[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        t[0][j] = d[0][j] - d[2][j];
        t[1][j] = d[1][j] + d[2][j];
        t[2][j] = d[2][j] - d[1][j];
        t[3][j] = d[1][j] - d[3][j];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        v[i * 4 + 0] = t[i][0] - t[i][2];
        v[i * 4 + 1] = t[i][1] + t[i][2];
        v[i * 4 + 2] = t[i][2] - t[i][1];
        v[i * 4 + 3] = t[i][1] - t[i][3];
    }
}

// x patch -> V.  Items: (c, p) for c < C, p < P = nb*TH*TW.  xs: x's batch stride (C*H*W when
// contiguous; more for a channel slice, e.g. backward-data's dy slice of a concat gradient).
extern "C" __global__ void wino_input_f32(const float* __restrict__ x, float* __restrict__ V, int n0, int nb,
                                          int C, int H, int W, int pad, int TH, int TW, int xs) {
    const i64 P = (i64)nb * TH * TW, total = (i64)C * P;
    for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        const TileItem it = tile_item(idx, P, n0, TH, TW);  // row: channel c
        const int c = it.row, h0 = it.h0 - pad, w0 = it.w0 - pad;
        const i64 p = it.p;
        const float* img = x + (i64)it.n * xs + (i64)c * H * W;
        float d[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int h = h0 + i, ww = w0 + j;
                d[i][j] = ((unsigned)h < (unsigned)H && (unsigned)ww < (unsigned)W) ? img[(i64)h * W + ww] : 0.f;
            }
        float v[16];
        input_tile(d, v);
#pragma unroll
        for (int b = 0; b < 16; ++b) V[((i64)b * C + c) * P + p] = v[b];
    }
}

// G g G^T for the 3x3 filters (G rows: [1,0,0], [1/2,1/2,1/2], [1/2,-1/2,1/2], [0,0,1]).
// Items: (k, c).  flip = 0: U[b][k][c] from w[k][c]; flip = 1 (backward-data): U[b][c][k]
// from w[k][c] rotated by 180 degrees.
extern "C" __global__ void wino_filter_f32(const float* __restrict__ w, float* __restrict__ U, int K, int C,
                                           int flip) {
    const i64 total = (i64)K * C;
    for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        const int k = (int)(idx / C), c = (int)(idx % C);
        const float* src = w + idx * 9;
        float g[3][3];
#pragma unroll
        for (int u = 0; u < 3; ++u)
#pragma unroll
            for (int v = 0; v < 3; ++v) g[u][v] = flip ? src[(2 - u) * 3 + (2 - v)] : src[u * 3 + v];
        float t[4][3];
#pragma unroll
        for (int j = 0; j < 3; ++j) {
            t[0][j] = g[0][j];
            t[1][j] = 0.5f * (g[0][j] + g[1][j] + g[2][j]);
            t[2][j] = 0.5f * (g[0][j] - g[1][j] + g[2][j]);
            t[3][j] = g[2][j];
        }
        const i64 dst = flip ? (i64)c * K + k : idx;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float r[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]), 0.5f * (t[i][0] - t[i][1] + t[i][2]),
                                t[i][2]};
#pragma unroll
            for (int j = 0; j < 4; ++j) U[(i64)(i * 4 + j) * total + dst] = r[j];
        }
    }
}

// A^T m A for a 4x4 product tile (A^T rows: [1,1,1,0], [0,1,-1,-1]) -> y, plus bias, plus the
// residual r[N,K,Ho,Wo] (has_res; r may be y itself, in place), then ReLU: the order of the
// unfused conv + add + ReLU.  Items: (k, p); outputs past Ho/Wo (odd sizes) are dropped.  ys:
// y's batch stride (K*Ho*Wo when contiguous; more for a channel slice), which r shares.
extern "C" __global__ void wino_output_f32(const float* __restrict__ M, float* y,
                                           const float* __restrict__ bias, const float* r, int n0, int nb,
                                           int K, int Ho, int Wo, int TH, int TW, int has_bias, int has_res,
                                           int relu, int ys) {
    const i64 P = (i64)nb * TH * TW, total = (i64)K * P;
    for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        const TileItem it = tile_item(idx, P, n0, TH, TW);  // row: channel k
        const int k = it.row, n = it.n, h0 = it.h0, w0 = it.w0;
        const i64 p = it.p;
        float m[16];
#pragma unroll
        for (int b = 0; b < 16; ++b) m[b] = M[((i64)b * K + k) * P + p];
        float s[2][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            s[0][j] = m[j] + m[4 + j] + m[8 + j];
            s[1][j] = m[4 + j] - m[8 + j] - m[12 + j];
        }
        const float add = has_bias ? bias[k] : 0.f;
        const i64 base = (i64)n * ys + (i64)k * Ho * Wo;
        float* out = y + base;
        const float* res = r + base;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float o[2] = {s[i][0] + s[i][1] + s[i][2], s[i][1] - s[i][2] - s[i][3]};
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                if (h0 + i < Ho && w0 + j < Wo) {
                    const i64 at = (i64)(h0 + i) * Wo + w0 + j;
                    float v = o[j] + add;
                    if (has_res) v += res[at];
                    if (relu) v = v > 0.f ? v : 0.f;
                    out[at] = v;
                }
            }
        }
    }
}

// A e A^T for a 2x2 gradient tile e = dy[n][k][2ti.., 2tj..] (zero past Ho/Wo), the
// backward-filter's "filter-side" transform.  Items: (k, p).  Y[b][k][p].  ys: dy's batch stride.
extern "C" __global__ void wino_grad_output_f32(const float* __restrict__ dy, float* __restrict__ Y, int n0,
                                                int nb, int K, int Ho, int Wo, int TH, int TW, int ys) {
    const i64 P = (i64)nb * TH * TW, total = (i64)K * P;
    for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        const TileItem it = tile_item(idx, P, n0, TH, TW);  // row: channel k
        const int k = it.row, n = it.n, h0 = it.h0, w0 = it.w0;
        const i64 p = it.p;
        const float* g = dy + (i64)n * ys + (i64)k * Ho * Wo;
        float e[2][2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j)
                e[i][j] = (h0 + i < Ho && w0 + j < Wo) ? g[(i64)(h0 + i) * Wo + w0 + j] : 0.f;
        // A = (A^T)^T, rows [1,0], [1,1], [1,-1], [0,-1]
        float r[4][2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            r[0][j] = e[0][j];
            r[1][j] = e[0][j] + e[1][j];
            r[2][j] = e[0][j] - e[1][j];
            r[3][j] = -e[1][j];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float q[4] = {r[i][0], r[i][0] + r[i][1], r[i][0] - r[i][1], -r[i][1]};
#pragma unroll
            for (int j = 0; j < 4; ++j) Y[((i64)(i * 4 + j) * K + k) * P + p] = q[j];
        }
    }
}

// dW[k][c] = G^T (sum_s D[b][s][k][c]) G: the backward-filter's last step, summing the
// batched GEMM's split-K partial products.  Items: (k, c).  D[16][splits][K][C].
extern "C" __global__ void wino_filter_grad_f32(const float* __restrict__ D, float* __restrict__ dw, int K, int C,
                                                int splits) {
    const i64 total = (i64)K * C;
    for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        float s[4][4];
#pragma unroll
        for (int b = 0; b < 16; ++b) {
            float acc = 0.f;
            for (int z = 0; z < splits; ++z) acc += D[((i64)b * splits + z) * total + idx];
            s[b / 4][b % 4] = acc;
        }
        // G^T rows: [1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]
        float t[3][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            t[0][j] = s[0][j] + 0.5f * (s[1][j] + s[2][j]);
            t[1][j] = 0.5f * (s[1][j] - s[2][j]);
            t[2][j] = 0.5f * (s[1][j] + s[2][j]) + s[3][j];
        }
        float* out = dw + idx * 9;
#pragma unroll
        for (int i = 0; i < 3; ++i) {
            out[i * 3 + 0] = t[i][0] + 0.5f * (t[i][1] + t[i][2]);
            out[i * 3 + 1] = 0.5f * (t[i][1] - t[i][2]);
            out[i * 3 + 2] = 0.5f * (t[i][1] + t[i][2]) + t[i][3];
        }
    }
}
