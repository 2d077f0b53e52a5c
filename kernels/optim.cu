// optim.cu: fused, in-place optimizer updates over one flat 1-D parameter buffer.
//
// Every kernel updates p[0:n] (and its state buffers) from the gradient g[0:n] in one
// launch: elementwise, grid-stride loop, block 256, grid min(cdiv(n,256), 65536);
// 64-bit indices.  Weight decay is L2: the gradient used is g + wd * p (g itself is not
// modified).  Formulas (cs231n notes), with dx = g + wd * p:
//   sgd       p -= lr * dx
//   momentum  v = mu * v - lr * dx; p += v
//   nesterov  v_prev = v; v = mu * v - lr * dx; p += -mu * v_prev + (1 + mu) * v
//   adagrad   cache += dx^2; p -= lr * dx / (sqrt(cache) + eps)
//   rmsprop   cache = decay * cache + (1 - decay) * dx^2; p -= lr * dx / (sqrt(cache) + eps)
//   adam      m = b1 m + (1-b1) dx; v = b2 v + (1-b2) dx^2;
//             p -= lr * (m / bc1) / (sqrt(v / bc2) + eps), bc1 = 1 - b1^t, bc2 = 1 - b2^t
//             (bc1, bc2 computed on the host in double precision).
// *_dev entries: the same updates with the scalars that change every step read from device
// memory, hyper = {lr, bc1, bc2} (bc only for Adam), so a CUDA graph that captured the launch
// replays it with the values the host wrote there for this step.

__device__ __forceinline__ float root(float x) { return sqrtf(x); }
__device__ __forceinline__ double root(double x) { return sqrt(x); }

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

template <typename T>
__device__ __forceinline__ void sgd_body(T* __restrict__ p, const T* __restrict__ g, long long n, T lr, T wd) {
    GRID_STRIDE(i, n) {
        const T pi = p[i];
        p[i] = pi - lr * (g[i] + wd * pi);
    }
}

template <typename T>
__device__ __forceinline__ void momentum_body(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v,
                                              long long n, T lr, T mu, T wd, int nesterov) {
    GRID_STRIDE(i, n) {
        const T pi = p[i];
        const T dx = g[i] + wd * pi;
        const T vp = v[i];
        const T vn = mu * vp - lr * dx;
        v[i] = vn;
        p[i] = nesterov ? pi + (-mu * vp + (T(1) + mu) * vn) : pi + vn;
    }
}

template <typename T>
__device__ __forceinline__ void adagrad_body(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ cache,
                                             long long n, T lr, T eps, T wd) {
    GRID_STRIDE(i, n) {
        const T pi = p[i];
        const T dx = g[i] + wd * pi;
        const T c = cache[i] + dx * dx;
        cache[i] = c;
        p[i] = pi - lr * dx / (root(c) + eps);
    }
}

template <typename T>
__device__ __forceinline__ void rmsprop_body(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ cache,
                                             long long n, T lr, T decay, T eps, T wd) {
    GRID_STRIDE(i, n) {
        const T pi = p[i];
        const T dx = g[i] + wd * pi;
        const T c = decay * cache[i] + (T(1) - decay) * dx * dx;
        cache[i] = c;
        p[i] = pi - lr * dx / (root(c) + eps);
    }
}

template <typename T>
__device__ __forceinline__ void adam_body(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                          T* __restrict__ v, long long n, T lr, T b1, T b2, T eps, T bc1, T bc2,
                                          T wd) {
    GRID_STRIDE(i, n) {
        const T pi = p[i];
        const T dx = g[i] + wd * pi;
        const T mi = b1 * m[i] + (T(1) - b1) * dx;
        const T vi = b2 * v[i] + (T(1) - b2) * dx * dx;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - lr * (mi / bc1) / (root(vi / bc2) + eps);
    }
}

#define OPTIM_ENTRIES(SUF, T)                                                                               \
    extern "C" __global__ void sgd_##SUF(T* p, const T* g, long long n, T lr, T wd) {                       \
        sgd_body<T>(p, g, n, lr, wd);                                                                       \
    }                                                                                                       \
    extern "C" __global__ void momentum_##SUF(T* p, const T* g, T* v, long long n, T lr, T mu, T wd,        \
                                              int nesterov) {                                               \
        momentum_body<T>(p, g, v, n, lr, mu, wd, nesterov);                                                 \
    }                                                                                                       \
    extern "C" __global__ void adagrad_##SUF(T* p, const T* g, T* cache, long long n, T lr, T eps, T wd) { \
        adagrad_body<T>(p, g, cache, n, lr, eps, wd);                                                       \
    }                                                                                                       \
    extern "C" __global__ void rmsprop_##SUF(T* p, const T* g, T* cache, long long n, T lr, T decay, T eps, \
                                             T wd) {                                                        \
        rmsprop_body<T>(p, g, cache, n, lr, decay, eps, wd);                                                \
    }                                                                                                       \
    extern "C" __global__ void adam_##SUF(T* p, const T* g, T* m, T* v, long long n, T lr, T b1, T b2,      \
                                          T eps, T bc1, T bc2, T wd) {                                      \
        adam_body<T>(p, g, m, v, n, lr, b1, b2, eps, bc1, bc2, wd);                                         \
    }

OPTIM_ENTRIES(f32, float)
OPTIM_ENTRIES(f64, double)

#define OPTIM_DEV_ENTRIES(SUF, T)                                                                           \
    extern "C" __global__ void sgd_dev_##SUF(T* p, const T* g, long long n, const T* hyper, T wd) {         \
        sgd_body<T>(p, g, n, hyper[0], wd);                                                                 \
    }                                                                                                       \
    extern "C" __global__ void momentum_dev_##SUF(T* p, const T* g, T* v, long long n, const T* hyper, T mu, \
                                                  T wd, int nesterov) {                                     \
        momentum_body<T>(p, g, v, n, hyper[0], mu, wd, nesterov);                                           \
    }                                                                                                       \
    extern "C" __global__ void adagrad_dev_##SUF(T* p, const T* g, T* cache, long long n, const T* hyper,   \
                                                 T eps, T wd) {                                             \
        adagrad_body<T>(p, g, cache, n, hyper[0], eps, wd);                                                 \
    }                                                                                                       \
    extern "C" __global__ void rmsprop_dev_##SUF(T* p, const T* g, T* cache, long long n, const T* hyper,   \
                                                 T decay, T eps, T wd) {                                    \
        rmsprop_body<T>(p, g, cache, n, hyper[0], decay, eps, wd);                                          \
    }                                                                                                       \
    extern "C" __global__ void adam_dev_##SUF(T* p, const T* g, T* m, T* v, long long n, const T* hyper,    \
                                              T b1, T b2, T eps, T wd) {                                    \
        adam_body<T>(p, g, m, v, n, hyper[0], b1, b2, eps, hyper[1], hyper[2], wd);                         \
    }

OPTIM_DEV_ENTRIES(f32, float)
OPTIM_DEV_ENTRIES(f64, double)
