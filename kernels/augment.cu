// augment.cu -- gather a batch from a data set with a padded random crop and a horizontal flip,
// float32 (_f32) and float64 (_f64): the batch augmentation of gpuconv/augment.py, fused with the
// batch gather so a planned training run writes the augmented batch straight into its input batch.
//
// Layout: src [S, C, H, W] and out [N, C, H, W], C-contiguous NCHW; idx [N] int64 (which image of
// src), draws [N, 3] int32 row-major (crop row offset, crop column offset, flipped 0/1), drawn on
// the host.  With the image zero-padded by `pad` on every side and cropped back to H x W at
// (row, col) offset (oy, ox), then mirrored when flipped:
//   out[i, c, h, w] = src[idx[i], c, r, s]  if 0 <= r < H and 0 <= s < W, else 0
//   r = h + oy - pad,   s = (flipped ? W - 1 - w : w) + ox - pad
// Only copies and zeros: the result is exact (bit-identical to the NumPy path).
// Launch geometry: 1-D grid of 256-thread blocks, grid-stride loop over the N*C*H*W outputs
// (64-bit flat index; consecutive threads write consecutive w: coalesced stores).  No shared memory.

template <typename T>
__device__ __forceinline__ void augment_gather_body(const T* src, const long long* idx, const int* draws, T* out,
                                                    long long total, int C, int H, int W, int pad) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const int w = (int)(e % W);
        long long t = e / W;
        const int h = (int)(t % H);
        t /= H;
        const int c = (int)(t % C);
        const long long i = t / C;
        const int* d = draws + 3 * i;
        const int r = h + d[0] - pad;
        const int s = (d[2] ? W - 1 - w : w) + d[1] - pad;
        T v = T(0);
        if (r >= 0 && r < H && s >= 0 && s < W) v = src[((idx[i] * C + c) * H + r) * (long long)W + s];
        out[e] = v;
    }
}

extern "C" __global__ void augment_gather_f32(const float* src, const long long* idx, const int* draws, float* out,
                                              long long total, int C, int H, int W, int pad) {
    augment_gather_body<float>(src, idx, draws, out, total, C, H, W, pad);
}

extern "C" __global__ void augment_gather_f64(const double* src, const long long* idx, const int* draws, double* out,
                                              long long total, int C, int H, int W, int pad) {
    augment_gather_body<double>(src, idx, draws, out, total, C, H, W, pad);
}
