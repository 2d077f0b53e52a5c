// runtime.h -- CUDA C built-ins on the CPU, so kernels/*.cu run (slowly) without a GPU.
//
// gpuconv.emu compiles a kernel file with g++ and this header force-included.  Each
// launch runs the grid's blocks one after another; the threads of a block are fibers
// on the calling OS thread, switched only at barriers, so a block runs deterministically
// (threads in forward order in one barrier phase, in reverse in the next):
//   __syncthreads()      every live (not yet exited) thread of the block must reach the
//                        *same* barrier call; threads waiting at different barriers are
//                        reported as a divergent barrier, all threads stuck as a deadlock.
//   __shfl_*_sync, mma   warp-collective: the 32 lanes write a per-warp exchange buffer,
//                        meet at a warp barrier, read (two buffers used alternately).
//   cp.async             queued per thread and performed only at cp.async.wait_group,
//                        the latest moment the hardware may perform it, so a read before
//                        the wait sees stale shared memory (and the test fails).
//   wgmma (sm_90a)       queued per thread and performed at wgmma.wait_group, each thread
//                        computing its own accumulator fragment from shared memory as it is
//                        then; see the wgmma section for what is checked.
// __shared__ variables become function statics (one block at a time shares them);
// dynamic shared memory is a per-block buffer.  Signed overflow wraps (-fwrapv) and
// denormals flush to zero during a launch, as with NVRTC's -ftz=true.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#include <sys/mman.h>
#include <ucontext.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define EMU_HAVE_MXCSR 1
#endif

struct dim3 {
    unsigned x, y, z;
};
typedef dim3 uint3;

struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

namespace emu {

// ---------------------------------------------------------------- fiber contexts
// x86-64: a six-register stack switch (swapcontext also saves the signal mask with a
// system call on every switch, ~10x slower); elsewhere ucontext.
#if defined(__x86_64__) && !defined(EMU_USE_UCONTEXT)
extern "C" void emu_switch_stack(void** save_sp, void* next_sp);
__asm__(".text\n.p2align 4\n.hidden emu_switch_stack\n.globl emu_switch_stack\n"
        ".type emu_switch_stack,@function\nemu_switch_stack:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n  ret\n"
        ".size emu_switch_stack, .-emu_switch_stack\n");
struct Context {
    void* sp;
};
inline void ctx_switch(Context* from, Context* to) { emu_switch_stack(&from->sp, to->sp); }
inline void ctx_make(Context* c, unsigned char* stack, size_t size, void (*entry)()) {
    void** sp = (void**)(((uintptr_t)(stack + size)) & ~(uintptr_t)15);
    *--sp = nullptr;         // return address of entry (it never returns)
    *--sp = (void*)entry;    // where emu_switch_stack's ret goes first
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12-r15
    c->sp = sp;
}
#else
struct Context {
    ucontext_t uc;
};
inline void ctx_switch(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
inline void ctx_make(Context* c, unsigned char* stack, size_t size, void (*entry)()) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, entry, 0);
}
#endif

enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

struct AsyncCopy {
    void* dst;
    const void* src;
    int bytes;      // copy size
    int src_bytes;  // bytes read from src; the rest is zero-filled
};

struct WgmmaOp {
    float* d;       // the thread's accumulators
    int n;          // N of m64nNk8
    uint64_t da, db;  // shared-memory matrix descriptors of A (64 x 8) and B (N x 8), K-major
    int scale_d;    // 0: D = A B, else D += A B
};

struct Fiber {
    Context ctx;
    unsigned phase;  // warp collectives done, mod 2: which exchange buffer is next
    dim3 tid;
    int linear;
    State state;
    const void* site;                              // the barrier call it waits at
    std::vector<std::vector<AsyncCopy>> cp_groups;  // committed cp.async groups, oldest first
    std::vector<AsyncCopy> cp_open;                 // issued, not committed yet
    std::vector<std::vector<WgmmaOp>> wg_groups;  // committed wgmma groups, oldest first
    std::vector<WgmmaOp> wg_open;                 // issued, not committed yet
    bool wg_fenced;    // a wgmma.fence since the last wgmma.wait_group
    bool proxy_dirty;  // performed cp.async writes not yet followed by fence.proxy.async
};

constexpr int kWords = 8;              // 32-bit words per lane in the warp exchange buffer
constexpr size_t kStack = 256 * 1024;  // per-fiber stack (plus one guard page)

struct Launch {
    dim3 grid, block, bid;
    std::vector<Fiber> fibers;
    Fiber* cur = nullptr;
    Context sched;
    std::vector<unsigned char> dyn_smem;
    std::vector<uint32_t> xchg;  // [phase][warp][lane][kWords], double-buffered
    void (*body)(void**) = nullptr;
    void** args = nullptr;
    const char* error = nullptr;
    char message[256];
};

inline thread_local Launch* L = nullptr;
inline thread_local std::vector<unsigned char*> stacks;  // reused across launches

inline int lane() { return L->cur->linear & 31; }
inline int warp() { return L->cur->linear >> 5; }

// Leave the running fiber for the scheduler, marked as waiting at `site`.
inline void wait_at(State s, const void* site) {
    Fiber* f = L->cur;
    f->state = s;
    f->site = site;
    ctx_switch(&f->ctx, &L->sched);
}

inline void* dyn_smem() { return L->dyn_smem.data(); }

// ---------------------------------------------------------------- warp collectives
// Two exchange buffers used alternately: a lane can only write this buffer again two
// collectives later, after every lane has passed the next collective's barrier (and so
// has finished reading this one), so one barrier per collective suffices.
inline uint32_t* slot(unsigned phase, int ln) {
    return &L->xchg[((size_t)phase * (L->xchg.size() / 2 / kWords) + (size_t)warp() * 32 + ln) * kWords];
}
inline uint32_t* begin_collective() { return slot(L->cur->phase, lane()); }
inline const uint32_t* slot_of(int ln) { return slot(L->cur->phase, ln); }
inline void end_collective() { L->cur->phase ^= 1u; }

template <class T>
T warp_exchange(T v, int src_lane) {
    static_assert(sizeof(T) <= kWords * 4, "exchange value too large");
    std::memcpy(begin_collective(), &v, sizeof(T));
    wait_at(AT_WARP_BARRIER, nullptr);
    T out;
    std::memcpy(&out, slot_of(src_lane), sizeof(T));
    end_collective();
    return out;
}

// One m16n8k8 TF32 MMA for the whole warp (fragment layout of the PTX ISA:
// gq = lane/4, tq = lane%4; a0 (gq,tq) a1 (gq+8,tq) a2 (gq,tq+4) a3 (gq+8,tq+4);
// b0 (k=tq, n=gq) b1 (k=tq+4, n=gq); c0,c1 (gq, 2tq..2tq+1) c2,c3 (gq+8, 2tq..2tq+1)).
// Tensor cores read only the 19 TF32 bits of each operand: the low 13 are dropped.
inline void mma_m16n8k8_tf32(float* c, const unsigned* a, const unsigned* b) {
    uint32_t* mine = begin_collective();
    for (int i = 0; i < 4; ++i) mine[i] = a[i] & 0xffffe000u;
    for (int i = 0; i < 2; ++i) mine[4 + i] = b[i] & 0xffffe000u;
    wait_at(AT_WARP_BARRIER, nullptr);
    const int ln = lane(), gq = ln >> 2, tq = ln & 3;
    const uint32_t* w = slot_of(0);  // lane l's words at w + l * kWords
    for (int q = 0; q < 4; ++q) {
        const int row = gq + 8 * (q >> 1), col = 2 * tq + (q & 1);
        float s = c[q];
        for (int k = 0; k < 8; ++k) {
            float av, bv;
            uint32_t au = w[((row & 7) * 4 + (k & 3)) * kWords + (row >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0)];
            uint32_t bu = w[(col * 4 + (k & 3)) * kWords + 4 + (k >= 4 ? 1 : 0)];
            std::memcpy(&av, &au, 4);
            std::memcpy(&bv, &bu, 4);
            s += av * bv;  // a TF32 product is exact in fp32
        }
        c[q] = s;
    }
    end_collective();
}

// ---------------------------------------------------------------- cp.async
inline void perform(const AsyncCopy& c) {
    std::memcpy(c.dst, c.src, (size_t)c.src_bytes);
    std::memset((char*)c.dst + c.src_bytes, 0, (size_t)(c.bytes - c.src_bytes));
}
inline void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
    L->cur->cp_open.push_back({dst, src, bytes, src_bytes});
}
inline void cp_async_commit() {
    Fiber* f = L->cur;
    f->cp_groups.push_back(std::move(f->cp_open));
    f->cp_open.clear();
}
inline void cp_async_wait(int pending) {  // cp.async.wait_group pending
    Fiber* f = L->cur;
    size_t keep = (size_t)(pending < 0 ? 0 : pending);
    size_t done = 0;
    while (f->cp_groups.size() - done > keep) {
        for (const AsyncCopy& c : f->cp_groups[done]) perform(c);
        f->proxy_dirty = f->proxy_dirty || !f->cp_groups[done].empty();
        ++done;
    }
    f->cp_groups.erase(f->cp_groups.begin(), f->cp_groups.begin() + (long)done);
}
inline void cp_async_flush(Fiber& f) {  // a thread's copies still land after it exits
    for (auto& g : f.cp_groups)
        for (const AsyncCopy& c : g) perform(c);
    for (const AsyncCopy& c : f.cp_open) perform(c);
    f.cp_groups.clear();
    f.cp_open.clear();
}

// ---------------------------------------------------------------- the scheduler
[[noreturn]] inline void fiber_main() {
    L->body(L->args);
    cp_async_flush(*L->cur);
    L->cur->state = DONE;
    ctx_switch(&L->cur->ctx, &L->sched);  // never resumed
    __builtin_unreachable();
}

inline bool fail(const char* what) {
    std::snprintf(L->message, sizeof L->message, "%s (block %u,%u,%u)", what, L->bid.x, L->bid.y, L->bid.z);
    L->error = L->message;
    return false;
}

// ---------------------------------------------------------------- wgmma (sm_90a)
// Shared-window addresses (what cvta.to.shared gives on the GPU) are offsets from the
// dynamic shared memory rounded down to 1024 bytes, so an address has the alignment of the
// host pointer: the 128-byte swizzle depends on address bits 4-9, as on the GPU.
inline uintptr_t smem_window() { return (uintptr_t)L->dyn_smem.data() & ~(uintptr_t)1023; }
inline uint32_t smem_offset(const void* p) {
    const uintptr_t a = (uintptr_t)p, lo = (uintptr_t)L->dyn_smem.data();
    if (a < lo || a > lo + L->dyn_smem.size()) {
        fail("shared-window address of memory outside the dynamic shared memory (the emulator models only that)");
        return 0;
    }
    return (uint32_t)(a - smem_window());
}
// The inverse: the bytes [a, a + n) of the shared window, which must lie in the dynamic
// shared memory.
inline void* smem_ptr(uint32_t a, uint32_t n) {
    const uintptr_t p = smem_window() + a, lo = (uintptr_t)L->dyn_smem.data();
    if (p < lo || p + n > lo + L->dyn_smem.size()) {
        fail("shared-window address outside the dynamic shared memory");
        return L->dyn_smem.data();
    }
    return (void*)p;
}

// Element (r, k), k < 8, of a K-major TF32 operand named by a wgmma matrix descriptor (PTX
// ISA "matrix descriptor"): start address, leading / stride byte offsets (each /16), layout.
//   layout 0 (no swizzle): 8x16-byte core matrices; rows 16 B apart, 8-row groups SBO
//                          apart, the two 16-byte k halves LBO apart.
//   layout 1 (128-byte swizzle): rows 128 B apart, 8-row groups SBO apart, k contiguous;
//                          then address bits 4-6 ^= bits 7-9.
// Returned as the tensor cores read it: the low 13 mantissa bits dropped.
inline float wg_operand(uint64_t desc, int r, int k) {
    const uint32_t start = (uint32_t)(desc & 0x3fff) << 4, lbo = (uint32_t)((desc >> 16) & 0x3fff) << 4;
    const uint32_t sbo = (uint32_t)((desc >> 32) & 0x3fff) << 4;
    const int layout = (int)(desc >> 62), base_offset = (int)((desc >> 49) & 7);
    if (base_offset != 0) { fail("wgmma descriptor: a matrix base offset is not modelled"); return 0.f; }
    uint32_t a;
    if (layout == 0) {
        a = start + (uint32_t)(r & 7) * 16 + (uint32_t)(r >> 3) * sbo + (uint32_t)(k >> 2) * lbo + (uint32_t)(k & 3) * 4;
    } else if (layout == 1) {
        a = start + (uint32_t)(r & 7) * 128 + (uint32_t)(r >> 3) * sbo + (uint32_t)k * 4;
        a ^= ((a >> 7) & 7u) << 4;
    } else {
        fail("wgmma descriptor: the 64- and 32-byte swizzles are not modelled");
        return 0.f;
    }
    const uintptr_t p = smem_window() + a, lo = (uintptr_t)L->dyn_smem.data();
    if (p < lo || p + 4 > lo + L->dyn_smem.size()) { fail("wgmma operand outside the dynamic shared memory"); return 0.f; }
    uint32_t u;
    std::memcpy(&u, (const void*)p, 4);
    u &= 0xffffe000u;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
}

// wgmma.mma_async m64nNk8 .f32.tf32.tf32: recorded, performed at wgmma.wait_group.  Checked
// at issue: a wgmma.fence since this thread's last wait (the PTX rule for accumulators
// touched by other instructions), and that no thread of the block holds cp.async data it
// has not published to the async proxy with fence.proxy.async (wgmma would read stale bytes).
inline void wgmma_tf32(float* d, int n, uint64_t da, uint64_t db, int scale_d) {
    Fiber* f = L->cur;
    if (!f->wg_fenced) { fail("wgmma.mma_async with no wgmma.fence since the last wgmma.wait_group"); return; }
    for (const Fiber& o : L->fibers)
        if (o.proxy_dirty) {
            fail("wgmma.mma_async while a thread's cp.async writes lack fence.proxy.async (async proxy would miss them)");
            return;
        }
    f->wg_open.push_back({d, n, da, db, scale_d});
}
inline void wgmma_commit() {
    Fiber* f = L->cur;
    f->wg_groups.push_back(std::move(f->wg_open));
    f->wg_open.clear();
}
// This thread's fragment (warp w of the warpgroup, lane 4g + t): d[4j + q] is
// D[16w + g + 8(q/2)][8j + 2t + q%2].
inline void wgmma_perform(const WgmmaOp& op) {
    const int ln = lane(), w = warp() & 3, g = ln >> 2, t = ln & 3;
    for (int j = 0; j < op.n / 8; ++j)
        for (int q = 0; q < 4; ++q) {
            const int row = 16 * w + g + 8 * (q >> 1), col = 8 * j + 2 * t + (q & 1);
            float s = op.scale_d ? op.d[4 * j + q] : 0.f;
            for (int k = 0; k < 8; ++k) s += wg_operand(op.da, row, k) * wg_operand(op.db, col, k);
            op.d[4 * j + q] = s;
        }
}
inline void wgmma_wait(int pending) {
    Fiber* f = L->cur;
    const size_t keep = (size_t)(pending < 0 ? 0 : pending);
    size_t done = 0;
    while (f->wg_groups.size() - done > keep) {
        for (const WgmmaOp& op : f->wg_groups[done]) wgmma_perform(op);
        ++done;
    }
    f->wg_groups.erase(f->wg_groups.begin(), f->wg_groups.begin() + (long)done);
    f->wg_fenced = false;
}
inline void wgmma_fence() { L->cur->wg_fenced = true; }
inline void fence_proxy_async() { L->cur->proxy_dirty = false; }

inline bool release_barriers() {
    const int n = (int)L->fibers.size();
    bool released = false;
    for (int w0 = 0; w0 < n; w0 += 32) {  // warp barriers first (sm_70+: any call sites)
        int live = 0, waiting = 0;
        for (int i = w0; i < w0 + 32 && i < n; ++i) {
            Fiber& f = L->fibers[i];
            if (f.state == DONE) continue;
            ++live;
            waiting += f.state == AT_WARP_BARRIER;
        }
        if (live > 0 && waiting == live) {
            for (int i = w0; i < w0 + 32 && i < n; ++i)
                if (L->fibers[i].state == AT_WARP_BARRIER) L->fibers[i].state = RUNNABLE;
            released = true;
        }
    }
    if (released) return true;
    int live = 0, waiting = 0;
    const void* site = nullptr;
    for (Fiber& f : L->fibers) {
        if (f.state == DONE) continue;
        ++live;
        if (f.state == AT_BLOCK_BARRIER) {
            if (waiting++ == 0) site = f.site;
            else if (f.site != site) return fail("divergent __syncthreads: threads wait at different barriers");
        }
    }
    if (live == 0) return true;
    if (waiting != live) return fail("deadlock: some threads wait at __syncthreads, others at a warp collective");
    for (Fiber& f : L->fibers)
        if (f.state == AT_BLOCK_BARRIER) f.state = RUNNABLE;
    return true;
}

inline bool run_block() {
    const int n = (int)L->fibers.size();
    for (int i = 0; i < n; ++i) {
        Fiber& f = L->fibers[i];
        f.linear = i;
        f.tid = {(unsigned)i % L->block.x, (unsigned)(i / L->block.x) % L->block.y,
                 (unsigned)(i / (L->block.x * L->block.y))};
        f.state = RUNNABLE;
        f.site = nullptr;
        f.phase = 0;
        f.cp_groups.clear();
        f.cp_open.clear();
        f.wg_groups.clear();
        f.wg_open.clear();
        f.wg_fenced = false;
        f.proxy_dirty = false;
        ctx_make(&f.ctx, stacks[i] + 4096, kStack, fiber_main);  // above the guard page
    }
    // Threads run in forward order in one barrier phase and in reverse in the next (and
    // blocks alternate which comes first), so a missing barrier between a write and another
    // thread's read shows up whichever of the two threads has the lower index.
    const unsigned block_linear = L->bid.x + L->grid.x * (L->bid.y + L->grid.y * L->bid.z);
    for (unsigned phase = block_linear & 1u;; ++phase) {
        const bool reverse = phase & 1u;
        for (int j = 0; j < n; ++j) {
            const int i = reverse ? n - 1 - j : j;
            if (L->fibers[i].state != RUNNABLE) continue;
            L->cur = &L->fibers[i];
            ctx_switch(&L->sched, &L->fibers[i].ctx);
            if (L->error) return false;
        }
        bool all_done = true;
        for (Fiber& f : L->fibers) all_done = all_done && f.state == DONE;
        if (all_done) return true;
        if (!release_barriers()) return false;  // every live thread waits: open a barrier
    }
}

inline const char* launch(dim3 grid, dim3 block, size_t smem, void (*body)(void**), void** args) {
    static thread_local Launch launch_state;
    Launch& st = launch_state;
    const long nthreads = (long)block.x * block.y * block.z;
    if (nthreads <= 0 || nthreads > 1024) return "block has more than 1024 threads";
    if (block.z > 64) return "blockDim.z > 64";
    if (grid.y > 65535 || grid.z > 65535) return "gridDim.y or gridDim.z > 65535";
    while ((long)stacks.size() < nthreads) {
        void* p = mmap(nullptr, kStack + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return "out of memory for fiber stacks";
        mprotect(p, 4096, PROT_NONE);  // a stack overflow faults instead of corrupting memory
        stacks.push_back((unsigned char*)p);
    }
    st.grid = grid;
    st.block = block;
    st.fibers.resize((size_t)nthreads);
    st.dyn_smem.assign(smem + 16, 0);
    st.xchg.assign(2 * (size_t)(nthreads + 31) / 32 * 32 * kWords, 0);
    st.body = body;
    st.args = args;
    st.error = nullptr;
    Launch* outer = L;
    L = &st;
#ifdef EMU_HAVE_MXCSR
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);  // FTZ | DAZ, like -ftz=true
#endif
    for (unsigned z = 0; z < grid.z && !st.error; ++z)
        for (unsigned y = 0; y < grid.y && !st.error; ++y)
            for (unsigned x = 0; x < grid.x && !st.error; ++x) {
                st.bid = {x, y, z};
                std::memset(st.dyn_smem.data(), 0xff, st.dyn_smem.size());  // NaN-ish, never zeros
                run_block();
            }
#ifdef EMU_HAVE_MXCSR
    _mm_setcsr(csr);
#endif
    L = outer;
    return st.error;
}

// ---------------------------------------------------------------- kernel entry glue
template <class... P, size_t... I>
void invoke(void (*f)(P...), void** a, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<P>>*>(a[I])...);
}
template <class... P>
void invoke(void (*f)(P...), void** a) {
    invoke(f, a, std::index_sequence_for<P...>{});
}
// Each parameter as size | kind << 8 (kind: 1 pointer, 2 floating, 3 integral or bool).
template <class T>
constexpr int param_code() {
    using U = std::remove_cv_t<T>;
    return (int)sizeof(U) | (std::is_pointer_v<U> ? 1 : std::is_floating_point_v<U> ? 2 : 3) << 8;
}
template <class... P>
int signature(void (*)(P...), int* codes) {
    int i = 0;
    ((codes[i++] = param_code<P>()), ...);
    return (int)sizeof...(P);
}

}  // namespace emu

#define threadIdx (emu::L->cur->tid)
#define blockIdx (emu::L->bid)
#define blockDim (emu::L->block)
#define gridDim (emu::L->grid)
#define warpSize 32

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

// Barrier sites are numbered by __COUNTER__ (one per __syncthreads() in the source): the
// compiler may duplicate a call, so a return address would not identify the barrier.
#define __syncthreads() emu::wait_at(emu::AT_BLOCK_BARRIER, (const void*)(uintptr_t)(__COUNTER__ + 1))
inline void __syncwarp(unsigned = 0xffffffffu) { emu::wait_at(emu::AT_WARP_BARRIER, nullptr); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    const int ln = emu::lane();
    return emu::warp_exchange(v, (ln & ~(width - 1)) + (src & (width - 1)));
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    const int ln = emu::lane();
    return emu::warp_exchange(v, (ln & (width - 1)) + (int)delta < width ? ln + (int)delta : ln);
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    const int ln = emu::lane();
    return emu::warp_exchange(v, (ln & (width - 1)) >= (int)delta ? ln - (int)delta : ln);
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    const int ln = emu::lane(), src = ln ^ mask;
    return emu::warp_exchange(v, (src & ~(width - 1)) == (ln & ~(width - 1)) ? src : ln);
}

template <class T> inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <class T> inline T atomicMax(T* p, T v) { T old = *p; *p = old < v ? v : old; return old; }
template <class T> inline T atomicMin(T* p, T v) { T old = *p; *p = v < old ? v : old; return old; }
template <class T> inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <class T> inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
template <class T> inline T __ldg(const T* p) { return *p; }

template <class To, class From>
inline To emu_bits(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit cast of different sizes");
    To t;
    std::memcpy(&t, &v, sizeof t);
    return t;
}
inline unsigned __float_as_uint(float v) { return emu_bits<unsigned>(v); }
inline int __float_as_int(float v) { return emu_bits<int>(v); }
inline float __uint_as_float(unsigned v) { return emu_bits<float>(v); }
inline float __int_as_float(int v) { return emu_bits<float>(v); }
inline double __longlong_as_double(long long v) { return emu_bits<double>(v); }
inline long long __double_as_longlong(double v) { return emu_bits<long long>(v); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline double rsqrt(double v) { return 1.0 / std::sqrt(v); }
inline float __expf(float v) { return std::exp(v); }
inline float __logf(float v) { return std::log(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float v) { return v < 0.f ? 0.f : v > 1.f ? 1.f : v; }

inline float min(float a, float b) { return std::fmin(a, b); }  // CUDA's fminf: a NaN loses
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
// CUDA's integer min/max overloads: the usual arithmetic conversions, like the device functions.
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? (std::common_type_t<A, B>)b : (std::common_type_t<A, B>)a; }
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? (std::common_type_t<A, B>)b : (std::common_type_t<A, B>)a; }
