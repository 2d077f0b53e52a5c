// loss.cu: classifier losses on class scores, their gradients, softmax and accuracy.
//
// Layout: scores[N, C] row-major (one row per example), labels[N] int32.
// Row kernels (*_rows_*): one warp per row, 8 warps per block: block 256, grid cdiv(N, 8);
// lanes stride over the C classes, warp shuffles reduce.  No shared memory.
//   softmax_xent_rows: row_loss[i] = log(sum_j exp(s_j - max)) - (s_y - max),
//                      dscores = (softmax - onehot) / N     (the mean over the batch)
//   svm_rows:          row_loss[i] = sum_{j != y} max(0, s_j - s_y + delta),
//                      dscores_j = [margin_j > 0] / N, dscores_y = -count / N
//   softmax_rows:      p = exp(s - max) / sum
//   accuracy_rows:     count += (argmax_j s_j == y) (first max; NaN counts as the max,
//                      like np.argmax), one 64-bit integer atomicAdd per matching row
//                      (integer, so deterministic).
// A label outside [0, C) is never used as an index: that row's loss and its dscores row
// become NaN (so the mean loss is NaN), and it never counts as correct.
// mean_reduce: one block of 256 threads, out[0] = sum(v[0:N]) / N (fixed order: deterministic).
// mean_accumulate: mean_reduce, then sum[0] += (double)(out[0] * N): a training loop's running
//                  loss total, kept on the device (one block, so no atomics).

#define ROWS_PER_BLOCK 8

__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float lg(float x) { return logf(x); }
__device__ __forceinline__ double lg(double x) { return log(x); }
template <typename T> __device__ __forceinline__ T qnan();
template <> __device__ __forceinline__ float qnan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double qnan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = (w > v || w != w) ? w : v;  // NaN wins, so a NaN row gives a NaN loss
    }
    return v;
}

// Row index for this warp, or -1 when past the batch (whole warp idles together).
__device__ __forceinline__ long long warp_row(int N) {
    const long long r = (long long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    return r < N ? r : -1;
}

template <typename T>
__device__ __forceinline__ void softmax_xent_body(const T* __restrict__ s, const int* __restrict__ labels,
                                                  T* __restrict__ ds, T* __restrict__ row_loss, int N, int C) {
    const long long r = warp_row(N);
    if (r < 0) return;
    const int lane = threadIdx.x & 31;
    const T* row = s + r * C;
    T* drow = ds + r * C;
    const int y = labels[r];
    if (y < 0 || y >= C) {  // bad label: never index with it
        for (int j = lane; j < C; j += 32) drow[j] = qnan<T>();
        if (lane == 0) row_loss[r] = qnan<T>();
        return;
    }
    T mx = row[0];  // C >= 1 is checked on the host
    for (int j = lane; j < C; j += 32) { const T v = row[j]; mx = (v > mx || v != v) ? v : mx; }
    mx = warp_max(mx);
    T sum = T(0);
    for (int j = lane; j < C; j += 32) sum += ex(row[j] - mx);
    sum = warp_sum(sum);
    const T inv_sum = T(1) / sum, inv_n = T(1) / T(N);
    for (int j = lane; j < C; j += 32) {
        const T p = ex(row[j] - mx) * inv_sum;
        drow[j] = (p - (j == y ? T(1) : T(0))) * inv_n;
    }
    if (lane == 0) row_loss[r] = lg(sum) - (row[y] - mx);
}

template <typename T>
__device__ __forceinline__ void svm_body(const T* __restrict__ s, const int* __restrict__ labels, T* __restrict__ ds,
                                         T* __restrict__ row_loss, int N, int C, T delta) {
    const long long r = warp_row(N);
    if (r < 0) return;
    const int lane = threadIdx.x & 31;
    const T* row = s + r * C;
    T* drow = ds + r * C;
    const int y = labels[r];
    if (y < 0 || y >= C) {
        for (int j = lane; j < C; j += 32) drow[j] = qnan<T>();
        if (lane == 0) row_loss[r] = qnan<T>();
        return;
    }
    const T sy = row[y];
    const T inv_n = T(1) / T(N);
    T loss = T(0), count = T(0);
    for (int j = lane; j < C; j += 32) {
        if (j == y) continue;  // written by lane 0 below, after the count is known
        const T margin = row[j] - sy + delta;
        const bool pos = margin > T(0);
        loss += pos ? margin : T(0);
        count += pos ? T(1) : T(0);
        drow[j] = pos ? inv_n : T(0);
    }
    loss = warp_sum(loss);
    count = warp_sum(count);
    if (lane == 0) {
        drow[y] = -count * inv_n;
        row_loss[r] = loss;
    }
}

template <typename T>
__device__ __forceinline__ void softmax_body(const T* __restrict__ s, T* __restrict__ p, int N, int C) {
    const long long r = warp_row(N);
    if (r < 0) return;
    const int lane = threadIdx.x & 31;
    const T* row = s + r * C;
    T* prow = p + r * C;
    T mx = row[0];
    for (int j = lane; j < C; j += 32) { const T v = row[j]; mx = (v > mx || v != v) ? v : mx; }
    mx = warp_max(mx);
    T sum = T(0);
    for (int j = lane; j < C; j += 32) sum += ex(row[j] - mx);
    sum = warp_sum(sum);
    const T inv_sum = T(1) / sum;
    for (int j = lane; j < C; j += 32) prow[j] = ex(row[j] - mx) * inv_sum;
}

// (v1, i1) beats (v2, i2) under np.argmax order: first NaN, else larger value, ties to lower index.
template <typename T>
__device__ __forceinline__ bool beats(T v1, int i1, T v2, int i2) {
    const bool n1 = v1 != v1, n2 = v2 != v2;
    if (n1 || n2) return n1 && (!n2 || i1 < i2);
    return v1 > v2 || (v1 == v2 && i1 < i2);
}

template <typename T>
__device__ __forceinline__ void accuracy_body(const T* __restrict__ s, const int* __restrict__ labels,
                                              unsigned long long* __restrict__ count, int N, int C) {
    const long long r = warp_row(N);
    if (r < 0) return;
    const int lane = threadIdx.x & 31;
    const T* row = s + r * C;
    T best = T(0);
    int bi = 0x7fffffff;  // "no element yet": loses to everything
    for (int j = lane; j < C; j += 32) {
        const T v = row[j];
        if (bi == 0x7fffffff || beats(v, j, best, bi)) { best = v; bi = j; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const T ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (oi != 0x7fffffff && (bi == 0x7fffffff || beats(ov, oi, best, bi))) { best = ov; bi = oi; }
    }
    if (lane == 0 && bi == labels[r]) atomicAdd(count, 1ULL);
}

template <typename T>
__device__ __forceinline__ void mean_reduce_body(const T* __restrict__ v, T* __restrict__ out, int N) {
    __shared__ T part[256];
    T s = T(0);
    for (int i = threadIdx.x; i < N; i += 256) s += v[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = 128; w > 0; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = part[0] / T(N);
}

#define LOSS_ENTRIES(SUF, T)                                                                                 \
    extern "C" __global__ void softmax_xent_rows_##SUF(const T* s, const int* labels, T* ds, T* row_loss,   \
                                                        int N, int C) {                                      \
        softmax_xent_body<T>(s, labels, ds, row_loss, N, C);                                                 \
    }                                                                                                        \
    extern "C" __global__ void svm_rows_##SUF(const T* s, const int* labels, T* ds, T* row_loss, int N,      \
                                               int C, T delta) {                                             \
        svm_body<T>(s, labels, ds, row_loss, N, C, delta);                                                   \
    }                                                                                                        \
    extern "C" __global__ void softmax_rows_##SUF(const T* s, T* p, int N, int C) {                          \
        softmax_body<T>(s, p, N, C);                                                                         \
    }                                                                                                        \
    extern "C" __global__ void accuracy_rows_##SUF(const T* s, const int* labels, unsigned long long* count, \
                                                    int N, int C) {                                          \
        accuracy_body<T>(s, labels, count, N, C);                                                            \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) mean_reduce_##SUF(const T* v, T* out, int N) {        \
        mean_reduce_body<T>(v, out, N);                                                                      \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) mean_accumulate_##SUF(const T* v, T* out, double* sum, \
                                                                           int N) {                          \
        mean_reduce_body<T>(v, out, N);                                                                      \
        if (threadIdx.x == 0) sum[0] += (double)(out[0] * T(N));                                             \
    }

LOSS_ENTRIES(f32, float)
LOSS_ENTRIES(f64, double)
