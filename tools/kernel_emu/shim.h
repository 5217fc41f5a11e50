// Host shim for cuda/w1a4_conv.cu: enough of CUDA to run its kernels on the CPU, bit for bit.
//
// g++ compiles the .cu as C++ with -DW1A4_HOST_EMU and this header included first (emu_main.cpp).
// A block's threads are std::threads; __syncthreads is a barrier of the block, and exited threads
// drop out of it, as on the GPU. __shared__ variables are function statics: blocks run one at a
// time, so one copy per kernel is one copy per block. Warp-collective mma.sync is emulated from the
// PTX ISA fragment layouts (the section "Matrix Fragments for mma.m16n8k32" of the PTX ISA, written
// out below independently of the kernel's own comments): each lane posts its registers to its warp's
// slot, the warp meets at a barrier, each lane computes its own four accumulators from everybody's
// registers, and the warp meets again before the slot is reused. The float intrinsics are IEEE
// single-precision operations in round-to-nearest-even (build with -ffp-contract=off), and fp16
// conversions are done in integer arithmetic.
//
// W1A4_EMU_MUTATE=1 swaps the roles of A registers 1 and 2 (row + 8 and k + 16), a plausible
// misreading of the layout: tests/test_kernel_emu.py checks that the kernels then disagree with the
// reference, i.e. that the emulation really tests the fragment mapping.
#pragma once

#ifndef W1A4_EMU_MUTATE_WAIT
#define W1A4_EMU_MUTATE_WAIT 0  // 1: every wait_group waits for one group fewer (tests/test_kernel_emu.py)
#endif

#include <math.h>

#include <barrier>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

namespace w1a4_emu {
inline thread_local dim3 thread_idx, block_idx;
inline thread_local int lane = 0, warp = 0;
inline dim3 block_dim, grid_dim;
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;

struct WarpSlot {
    unsigned a[32][4];
    unsigned b[32][2];
    int c[32][4];
    const void* row[32];  // ldmatrix: each lane's row address
};
inline std::vector<WarpSlot> slots;

struct AsyncCopy {
    void* dst;
    const void* src;
    bool valid;
};
inline thread_local std::vector<AsyncCopy> open_group;
inline thread_local std::vector<std::vector<AsyncCopy>> committed;
inline bool copies_land_early() {
    static const bool early = [] {
        const char* mode = std::getenv("W1A4_EMU_CP_ASYNC");
        return mode != nullptr && std::strcmp(mode, "early") == 0;
    }();
    return early;
}
inline void land(const AsyncCopy& c) {
    if (c.valid) {
        std::memcpy(c.dst, c.src, 16);
    } else {
        std::memset(c.dst, 0, 16);
    }
}

inline bool wgmma_idle();  // below, with the wgmma emulation
inline void reset_named_barriers();  // below, with bar.sync

// Runs kernel() as grid x block threads, one block after another.
template <class Kernel>
void launch(dim3 grid, dim3 block, Kernel kernel) {
    block_dim = block;
    grid_dim = grid;
    const int threads = (int)(block.x * block.y * block.z);
    const int warps = (threads + 31) / 32;
    slots.assign(warps, WarpSlot{});
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                block_barrier = std::make_unique<std::barrier<>>(threads);
                reset_named_barriers();
                warp_barriers.clear();
                for (int w = 0; w < warps; ++w)
                    warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * w)));
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (int t = 0; t < threads; ++t) {
                    pool.emplace_back([=] {
                        thread_idx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        block_idx = dim3{bx, by, bz};
                        lane = t % 32;
                        warp = t / 32;
                        kernel();
                        if (!W1A4_EMU_MUTATE_WAIT && (!open_group.empty() || !committed.empty() ||
                                                      !wgmma_idle())) {
                            std::fprintf(stderr, "thread %d of block (%u, %u) returned with cp.async copies or wgmma products pending\n",
                                         t, bx, by);
                            std::abort();
                        }
                        // An exited thread no longer takes part in the block's or the warp's barriers.
                        block_barrier->arrive_and_drop();
                        warp_barriers[warp]->arrive_and_drop();
                    });
                }
                for (auto& th : pool) th.join();
            }
}
}  // namespace w1a4_emu

#define threadIdx w1a4_emu::thread_idx
#define blockIdx w1a4_emu::block_idx
#define blockDim w1a4_emu::block_dim
#define gridDim w1a4_emu::grid_dim

inline void __syncthreads() { w1a4_emu::block_barrier->arrive_and_wait(); }
inline void __syncwarp() { w1a4_emu::warp_barriers[w1a4_emu::warp]->arrive_and_wait(); }
[[noreturn]] inline void __trap() { std::abort(); }
inline float __int2float_rn(int v) { return (float)v; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }  // one rounding, as the GPU's FFMA
inline float __frcp_rn(float a) { return 1.0f / a; }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return sqrt(a); }
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}

// cvt.rn.f16.f32: round to nearest even; overflow to infinity; NaN to the canonical 0x7FFF.
inline std::uint16_t w1a4_emu_f32_to_f16_bits(float value) {
    unsigned u;
    std::memcpy(&u, &value, 4);
    const unsigned sign = (u >> 16) & 0x8000u, mag = u & 0x7FFFFFFFu;
    if (mag > 0x7F800000u) return 0x7FFF;
    if (mag >= 0x47800000u) return (std::uint16_t)(sign | 0x7C00u);  // >= 65536: infinity
    if (mag < 0x38800000u) {  // below 2^-14: an fp16 subnormal (or zero), in units of 2^-24
        const unsigned m = (mag & 0x7FFFFFu) | 0x800000u;
        const int shift = 126 - (int)(mag >> 23);  // mag = m * 2^(e - 150); units of 2^-24: m >> (126 - e)
        if (shift > 24) return (std::uint16_t)sign;
        const unsigned q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        return (std::uint16_t)(sign | (q + (rem > half || (rem == half && (q & 1)))));
    }
    const unsigned q = (mag >> 13) - (112u << 10), rem = mag & 0x1FFFu;  // rebias 127 -> 15
    return (std::uint16_t)(sign | (q + (rem > 0x1000u || (rem == 0x1000u && (q & 1)))));  // a carry may reach inf
}

// cvt.f32.f16: exact.
inline float w1a4_emu_f16_bits_to_f32(std::uint16_t h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    unsigned u;
    if (e == 0) {
        const float f = ldexpf((float)m, -24);
        return sign ? -f : f;
    }
    u = sign | (e == 31 ? 0x7F800000u | (m << 13) : ((e + 112u) << 23) | (m << 13));
    return __uint_as_float(u);
}

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32, lane l: g = l / 4, t = l % 4. Byte j of a register
// is element j, a signed byte. PTX ISA fragment layouts:
//   A (16 x 32, s8), register i: row g + 8 (i % 2), column 4 t + j + 16 (i / 2)
//   B (32 x 8, s8),  register i: row (k) 4 t + j + 16 i, column g
//   C, D (16 x 8, s32), element i: row g + 8 (i / 2), column 2 t + i % 2
inline void w1a4_emu_mma_m16n8k32_s8s8(int (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    using namespace w1a4_emu;
    WarpSlot& s = slots[warp];
    for (int i = 0; i < 4; ++i) s.a[lane][i] = a[i], s.c[lane][i] = c[i];
    for (int i = 0; i < 2; ++i) s.b[lane][i] = b[i];
    warp_barriers[warp]->arrive_and_wait();
    auto A = [&](int row, int k) -> int {  // the lane and register holding A[row][k]
#if W1A4_EMU_MUTATE
        const int reg = 2 * (row / 8) + k / 16;  // wrong: register 1 taken as k + 16, 2 as row + 8
#else
        const int reg = row / 8 + 2 * (k / 16);
#endif
        return (int)(std::int8_t)((s.a[4 * (row % 8) + (k % 16) / 4][reg] >> (8 * (k % 4))) & 0xFFu);
    };
    auto B = [&](int k, int col) -> int {
        return (int)(std::int8_t)((s.b[4 * col + (k % 16) / 4][k / 16] >> (8 * (k % 4))) & 0xFFu);
    };
    int d[4];
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        long long acc = s.c[lane][i];
        for (int k = 0; k < 32; ++k) acc += A(row, k) * B(k, col);
        d[i] = (int)acc;  // |acc| stays far inside int32 for these kernels (docs/kernels.md)
    }
    warp_barriers[warp]->arrive_and_wait();  // everybody has read the slot before it is written again
    for (int i = 0; i < 4; ++i) c[i] = d[i];
}

// cp.async.cg.shared.global 16 bytes with src-size 16 or 0 (zero fill), commit_group and wait_group N.
// Each thread keeps its copies in groups, as the hardware does; when they land depends on
// W1A4_EMU_CP_ASYNC (read at run time):
//   "late" (default)  at the last moment the program allows: a wait_group that leaves at most N newer
//                     groups pending. A kernel that reads a stage before waiting for it reads stale data.
//   "early"           at once, at the cp.async: a kernel that overwrites a stage another warp still
//                     reads (a copy issued before the barrier that ends those reads) corrupts it.
// A kernel must wait for all its copies before it returns (a copy landing after the block is gone).

inline void w1a4_emu_cp_async16(void* smem, const void* gmem, bool valid) {
    using namespace w1a4_emu;
    if (copies_land_early()) {
        land(AsyncCopy{smem, gmem, valid});
    } else {
        open_group.push_back(AsyncCopy{smem, gmem, valid});
    }
}

inline void w1a4_emu_cp_async_commit() {
    w1a4_emu::committed.push_back(std::move(w1a4_emu::open_group));
    w1a4_emu::open_group.clear();
}

inline void w1a4_emu_cp_async_wait(int n) {
    using namespace w1a4_emu;
    n += W1A4_EMU_MUTATE_WAIT;
    const int done = (int)committed.size() - n;
    if (done <= 0) return;
    for (int i = 0; i < done; ++i)
        for (const AsyncCopy& c : committed[i]) land(c);
    committed.erase(committed.begin(), committed.begin() + done);
}

// mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc, lane l: g = l / 4, t = l % 4. Bit i of a
// register is element i of its 32. PTX ISA fragment layouts ("Matrix Fragments for mma.m16n8k256"):
//   A (16 x 256, b1), register i: row g + 8 (i % 2), columns 32 t + 128 (i / 2) .. + 31
//   B (256 x 8, b1),  register i: rows (k) 32 t + 128 i .. + 31, column g
//   C, D (16 x 8, s32), element i: row g + 8 (i / 2), column 2 t + i % 2
// D = C + sum_k popc(A[row][k] AND B[k][col]), word by word. W1A4_EMU_MUTATE swaps the roles of A
// registers 1 and 2, as for the u8 mma above.
inline void w1a4_emu_bmma_m16n8k256_and_popc(int (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                             unsigned b0, unsigned b1) {
    using namespace w1a4_emu;
    WarpSlot& s = slots[warp];
    s.a[lane][0] = a0, s.a[lane][1] = a1, s.a[lane][2] = a2, s.a[lane][3] = a3;
    s.b[lane][0] = b0, s.b[lane][1] = b1;
    warp_barriers[warp]->arrive_and_wait();
    auto A = [&](int row, int word) -> unsigned {  // word w = k / 32 of row `row`, w in 0..7
#if W1A4_EMU_MUTATE
        const int reg = 2 * (row / 8) + word / 4;  // wrong: register 1 taken as k + 128, 2 as row + 8
#else
        const int reg = row / 8 + 2 * (word / 4);
#endif
        return s.a[4 * (row % 8) + word % 4][reg];
    };
    auto B = [&](int word, int col) -> unsigned { return s.b[4 * col + word % 4][word / 4]; };
    int d[4];
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        long long acc = c[i];
        for (int w = 0; w < 8; ++w) acc += __builtin_popcount(A(row, w) & B(w, col));
        d[i] = (int)acc;
    }
    warp_barriers[warp]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) c[i] = d[i];
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane l posts the address of row l % 8 of matrix l / 8 (16
// bytes); each lane receives, from each matrix j, 32-bit word l % 4 of that matrix's row l / 4.
inline void w1a4_emu_ldmatrix_x4(unsigned (&r)[4], const void* row) {
    using namespace w1a4_emu;
    WarpSlot& s = slots[warp];
    s.row[lane] = row;
    warp_barriers[warp]->arrive_and_wait();
    for (int j = 0; j < 4; ++j) std::memcpy(&r[j], static_cast<const char*>(s.row[8 * j + lane / 4]) + 4 * (lane % 4), 4);
    warp_barriers[warp]->arrive_and_wait();
}

// ---- wgmma (sm_90a), emulated from the PTX ISA independently of the kernel's comments ----------------
// Shared-memory descriptors ("Matrix Descriptor Format"): bits 0-13 start address >> 4, 16-29 leading
// dimension byte offset >> 4, 32-45 stride dimension byte offset >> 4, 49-51 base offset, 62-63 swizzle
// mode. The host has no shared window: addresses are taken from the block's dynamic shared array, which
// sref_of records (w1a4_emu_set_window), so the 14-bit fields are encoded and decoded as on the GPU.
// Canonical K-major layout without swizzle ("Shared Memory Matrix Layout"): a core matrix is 8 rows of 16
// bytes, 128 contiguous bytes; LBO is the distance between core matrices adjacent in K, SBO between core
// matrices adjacent in M (A) or N (B). W1A4_EMU_MUTATE swaps the two (a plausible misreading of which
// offset is which).
// wgmma is asynchronous: an operation reads its shared memory at any time until wgmma.wait_group retires
// its group. The emulation reads it at the latest moment, in the wait, so that a kernel that overwrites a
// stage before waiting for the products that read it computes something else.
namespace w1a4_emu {
inline thread_local const char* window = nullptr;
struct Bgmma {
    int* d;
    int n;
    unsigned long long da, db;
};
inline thread_local std::vector<Bgmma> wg_open;
inline thread_local std::vector<std::vector<Bgmma>> wg_committed;
inline bool wgmma_idle() { return wg_open.empty() && wg_committed.empty(); }

inline const unsigned* wg_row(unsigned long long desc, int row, int kc) {
    if ((desc >> 62) != 0 || ((desc >> 49) & 7) != 0) {
        std::fprintf(stderr, "wgmma descriptor with a swizzle or base offset: not emulated\n");
        std::abort();
    }
    const unsigned start = (unsigned)(desc & 0x3FFF) << 4;
    unsigned lbo = (unsigned)((desc >> 16) & 0x3FFF) << 4, sbo = (unsigned)((desc >> 32) & 0x3FFF) << 4;
#if W1A4_EMU_MUTATE
    std::swap(lbo, sbo);
#endif
    return reinterpret_cast<const unsigned*>(window + start + (row / 8) * sbo + kc * lbo + (row % 8) * 16);
}

// d (this thread's n / 2 registers) += popc(A[row] AND B[col]) over 256 bits, for the rows and columns of
// the m64nNk256 accumulator fragment ("Register Fragments", matrix D): thread l of the warpgroup, w = l / 32,
// g = (l % 32) / 4, t = l % 4: register 4 i + r is row 16 w + g + 8 (r / 2), column 8 i + 2 t + r % 2.
inline void apply(const Bgmma& op) {
    const int l = (int)(thread_idx.x % 128), w = l / 32, g = (l % 32) / 4, t = l % 4;
    for (int i = 0; i < op.n / 2; ++i) {
        const int r = i % 4, row = 16 * w + g + 8 * (r / 2), col = 8 * (i / 4) + 2 * t + r % 2;
        long long acc = op.d[i];
        for (int kc = 0; kc < 2; ++kc) {
            const unsigned *a = wg_row(op.da, row, kc), *b = wg_row(op.db, col, kc);
            for (int word = 0; word < 4; ++word) acc += __builtin_popcount(a[word] & b[word]);
        }
        op.d[i] = (int)acc;
    }
}
}  // namespace w1a4_emu

inline void w1a4_emu_set_window(const void* p) { w1a4_emu::window = static_cast<const char*>(p); }

inline unsigned long long w1a4_emu_wgmma_desc(const void* start, unsigned lbo, unsigned sbo) {
    const long long offset = static_cast<const char*>(start) - w1a4_emu::window;
    if (w1a4_emu::window == nullptr || offset < 0 || offset >= (1 << 18) || offset % 16 || lbo % 16 || sbo % 16) {
        std::fprintf(stderr, "wgmma descriptor of an address outside the shared window, or unaligned\n");
        std::abort();
    }
    return (unsigned long long)(offset >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32);
}

inline void w1a4_emu_bgmma_m64nk256(int* d, int n, unsigned long long da, unsigned long long db) {
    w1a4_emu::wg_open.push_back({d, n, da, db});
}

inline void w1a4_emu_wgmma_commit() {
    using namespace w1a4_emu;
    wg_committed.push_back(std::move(wg_open));
    wg_open.clear();
}

inline void w1a4_emu_wgmma_wait(int n) {
    using namespace w1a4_emu;
    n += W1A4_EMU_MUTATE_WAIT;
    const int done = (int)wg_committed.size() - n;
    if (done <= 0) return;
    for (int i = 0; i < done; ++i)
        for (const Bgmma& op : wg_committed[i]) apply(op);
    wg_committed.erase(wg_committed.begin(), wg_committed.begin() + done);
}

// ---- mbarrier and named barriers (the warp-specialised kernel) -------------------------------------
// An mbarrier's state lives in its own 8 bytes, under one lock: pending arrivals (bits 0-19), the count it
// was initialised with (20-39) and the phase bit (40), which flips when a phase completes. try_wait.parity
// P returns once the phase of parity P has completed: while the phase bit equals P it waits.
#include <mutex>
namespace w1a4_emu {
inline std::mutex mbar_lock;
inline std::mutex named_lock;
inline std::unique_ptr<std::barrier<>> named[16];
}  // namespace w1a4_emu

inline void w1a4_emu_mbar_init(unsigned long long* bar, int count) {
    std::lock_guard<std::mutex> guard(w1a4_emu::mbar_lock);
    *bar = (unsigned long long)count | ((unsigned long long)count << 20);
}

inline void w1a4_emu_mbar_arrive(unsigned long long* bar) {
    std::lock_guard<std::mutex> guard(w1a4_emu::mbar_lock);
    unsigned long long v = *bar;
    const unsigned long long expected = (v >> 20) & 0xFFFFF, phase = (v >> 40) & 1;
    unsigned long long pending = v & 0xFFFFF;
    if (pending == 0) {
        std::fprintf(stderr, "mbarrier arrival on a barrier with no pending count (not initialised?)\n");
        std::abort();
    }
    if (--pending == 0) v = expected | (expected << 20) | ((phase ^ 1) << 40);
    else v = pending | (expected << 20) | (phase << 40);
    *bar = v;
}

inline void w1a4_emu_mbar_wait(unsigned long long* bar, unsigned parity) {
    for (;;) {
        {
            std::lock_guard<std::mutex> guard(w1a4_emu::mbar_lock);
            if (((*bar >> 40) & 1) != (parity & 1)) return;
        }
        std::this_thread::yield();
    }
}

// cp.async.mbarrier.arrive.noinc: the arrival once this thread's copies so far have landed. The emulator
// lands them here (every open and committed copy of the thread), then arrives.
inline void w1a4_emu_cp_async_mbar_arrive(unsigned long long* bar) {
    using namespace w1a4_emu;
    for (const auto& group : committed)
        for (const AsyncCopy& c : group) land(c);
    committed.clear();
    for (const AsyncCopy& c : open_group) land(c);
    open_group.clear();
    w1a4_emu_mbar_arrive(bar);
}

// bar.sync id, count: a barrier of `count` threads, made on first use in each block (launch resets them).
inline void w1a4_emu_named_sync(int id, int count) {
    using namespace w1a4_emu;
    std::barrier<>* b;
    {
        std::lock_guard<std::mutex> guard(named_lock);
        if (!named[id]) named[id] = std::make_unique<std::barrier<>>(count);
        b = named[id].get();
    }
    b->arrive_and_wait();
}

inline void w1a4_emu::reset_named_barriers() {
    for (auto& b : named) b.reset();
}
