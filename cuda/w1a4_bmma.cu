// W1A4 convolution on the 1-bit tensor cores: mma.sync.m16n8k256.row.col.s32.b1.b1.s32.and.popc
// (SASS BMMA.168256.AND.POPC; sm_80 and newer, native on sm_90). Bit-planes of the 4-bit activation
// codes times the weight bits, implicit GEMM over NHWC, exact integer accumulation, the same float32
// epilogue as cuda/w1a4_conv.cu, so the result equals binarydm/kernels/reference.py bit for bit.
//
// Arithmetic (docs/kernels.md, "The bit-plane kernel"). Codes q in 0..15 with zero point z
// (x = d (q - z)) are stored as b = q XOR z, split into 4 bit-planes B_k; with the plane coefficients
// c_k = -2^k where bit k of z is set and +2^k where it is not, sum_k c_k b_k = q - z for every q.
// So the code of real zero (q = z) is b = 0: zero padding (taps outside the image) and padded channels
// are all-zero planes and contribute exactly nothing: no border correction. With S the weight bits
// (w = 2 S - 1):
//
//   v_b[o,p] = sum_{t,c} (2 S_b - 1) (q - z) = 2 sum_k c_k popc(B_k & S_b) - Q[p]
//   Q[p]     = sum_{t,c} (q - z) = sum_k c_k popc(B_k)       (per pixel: the pack kernel's sums, boxed)
//   y[p,o]   = fl(fl(fl(v_0 s_0[o]) + fl(v_1 s_1[o])) + bias[o])
//
// popc(B_k & S_b) is the tensor core's and.popc product (one MMA per plane); the per-input-pixel sums
// of (q - z) are written by the pack kernel and added over the pixel's taps once per block.
//
// W1A1 (docs/kernels.md, "W1A1"): x_b = sign(x + beta) in {-1, +1} is the code q = x_b + 1 in {0, 2} with
// z = 1, so b = q XOR 1 has only two non-zero planes: B_0 = 1 on every real channel of a pixel inside the
// image (0 on padding: what keeps zero padding exact) and B_1 = [x_b = +1]. The W1A1 kernels keep those
// two planes (PL = 2): half the activation bytes and half the MMAs of the 4-plane kernel.
//
// Kernels (extern "C"; the one include, w1a4_common.cuh, holds the code shared with w1a4_conv.cu):
//   w1a4_conv_bmma_nb{1,2}_{f16,f32}   the conv (block 128 pixels x 64 columns, 8 warps of 32 x 32,
//                                       4-stage cp.async pipeline, 256-bit K chunks), 4 planes
//   w1a1_conv_bmma_{f16,f32}            the same conv on 2 planes, one basis (XNOR-type weights)
//   w1a4_bmma_splitk_epilogue_nb{1,2}_{f16,f32}  scales and bias after a split-K launch of either conv
//   w1a4_planes_codes                   packed nibble codes (binarydm.kernels.packing) -> planes + sums
//   w1a4_planes_{f32,f16,bf16}          float input (any strides) -> LSQ codes -> planes + sums
//   w1a1_planes_{f32,f16,bf16}          float input (any strides) and beta -> sign codes -> 2 planes + sums
//   w1a4_gn_planes_{f32,f16,bf16}       SiLU(GroupNorm(x)) -> LSQ codes -> planes + sums (the statistics:
//                                       w1a4_gn_partial + w1a4_gn_finish of cuda/w1a4_conv.cu)
//
// Layouts (binarydm/kernels/packing.py builds the weight one once, at pack time):
//   planes  u32 [N, H, W, G/4, PL, 4]  G = 4 ceil(C_in / 128) (a multiple of 4); word [pix][grp / 4][k]
//                                 [grp % 4] = plane k (bit k of q XOR z) of channels 32 grp .. 32 grp + 31,
//                                 bit j = channel 32 grp + j; padded channels 0. 16 bytes = one plane of
//                                 4 groups (128 channels) of one pixel, 16 PL bytes = the PL planes of them.
//                                 PL = 4 (W1A4), or 2 (W1A1: planes 2 and 3 of codes < 4 are zero).
//   sums    i32 [N, H, W]         sum over the real channels of (q - z)
//   wfrag   u32 [NCB, NCH, 128, 4]  the weight bits in the order of the B fragments (below): column
//                                 block (64 GEMM columns), K chunk (8 words = 256 bits), 16-byte unit
//                                 u = (warp_n * 2 + p) * 32 + lane holding {b0, b1} of n-tiles 2p and
//                                 2p + 1 of that lane. K word kk = tap * G + grp; columns, channels and
//                                 K words past the end are 0.
//   GEMM column j = base j % NB of output channel j / NB (as in w1a4_conv.cu).

#include "w1a4_common.cuh"

#define BM_BM 128       // output pixels per block
#define BM_BN 64        // GEMM columns per block
#define BM_THREADS 256  // 8 warps: 4 (M) x 2 (N), warp tile 32 x 32
#define BM_WS_THREADS 384  // the warp-specialised kernel: a loading warpgroup, two multiplying ones
#define BM_WS_SMEM_UNITS (BM_STAGES * BM_STAGE_UNITS + BM_BM * BM_YS_STRIDE / 4)  // + its own output tile
#define BM_WS_SMEM_BYTES (BM_WS_SMEM_UNITS * 16)  // 107,008 B
#define BM_STAGES 4     // cp.async pipeline depth
#define BM_A_UNITS (BM_BM * 8)                    // 16-byte units of A per stage: 128 rows x 8 K words
#define BM_B_UNITS 128                            // 16-byte units of B per stage: 64 columns x 8 K words
#define BM_STAGE_UNITS (BM_A_UNITS + BM_B_UNITS)
#define BM_SMEM_BYTES (BM_STAGES * BM_STAGE_UNITS * 16)  // 73,728 B: dynamic shared memory
#define BM_YS_STRIDE 65                           // floats per row of the output staging tile
#define BM_PACK_THREADS 256

namespace w1a4_bmma {

// The PTX helpers (shared-memory references, cp.async, ldmatrix) are in w1a4_common.cuh.

// Fragments of mma.m16n8k256.row.col.s32.b1.b1.s32 (PTX ISA, "Matrix Fragments for mma.m16n8k256"),
// g = lane / 4, t = lane % 4, 32 one-bit elements per register:
//   A 16x256 row-major: a0 row g, k 32t..32t+31 | a1 row g+8 | a2 row g, k 128+32t.. | a3 row g+8, k 128+32t..
//   B 256x8 column-major: b0 col g, k 32t..32t+31 | b1 col g, k 128+32t..
//   C 16x8: c0, c1 row g, cols 2t, 2t+1 | c2, c3 row g+8, cols 2t, 2t+1
// So with a 256-bit K chunk as 8 words per row / column, a lane reads words t and t + 4.
__device__ __forceinline__ void bmma(int (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(W1A4_HOST_EMU)
    w1a4_emu_bmma_m16n8k256_and_popc(c, a[0], a[1], a[2], a[3], b0, b1);
#else
    (void)a; (void)b0; (void)b1; __trap();
#endif
}

// ---- the warpgroup path (sm_90a: wgmma.mma_async ... .b1.b1.and.popc, SASS BGMMA) ----------------
// Operands in shared memory in the canonical K-major layout without swizzle (PTX ISA, "Shared Memory
// Matrix Layout"): a core matrix is 8 rows of 16 bytes (128 contiguous bytes); the core matrix beside it
// along K starts LBO bytes further, the next 8 rows SBO bytes further. The 64-bit descriptor (PTX ISA,
// "Matrix Descriptor Format"): bits 0-13 start address >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4, 49-51 base
// offset (0), 62-63 swizzle mode (0: none).
// Accumulator of m64nNk256 (PTX ISA, "Register Fragments" of wgmma, matrix D): thread l of the warpgroup,
// warp w = l / 32, g = (l % 32) / 4, t = l % 4: register 4 i + r holds row 16 w + g + 8 (r / 2), column
// 8 i + 2 t + r % 2.
__device__ __forceinline__ unsigned long long wg_desc(sref start, u32 lbo, u32 sbo) {
#ifdef W1A4_HOST_EMU
    return w1a4_emu_wgmma_desc(start, lbo, sbo);
#else
    return (unsigned long long)((start & 0x3FFFFu) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32);
#endif
}

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define W1A4_WGMMA 1
#endif

__device__ __forceinline__ void wg_fence() {
#ifdef W1A4_WGMMA
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#ifdef W1A4_HOST_EMU
    w1a4_emu_wgmma_commit();
#elif defined(W1A4_WGMMA)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait() {
#ifdef W1A4_HOST_EMU
    w1a4_emu_wgmma_wait(N);
#elif defined(W1A4_WGMMA)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Shared memory written by cp.async (the generic proxy) made visible to wgmma (the async proxy).
__device__ __forceinline__ void fence_proxy_async() {
#ifdef W1A4_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

#define WG_R8(i) "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), "+r"(d[i + 5]), \
                 "+r"(d[i + 6]), "+r"(d[i + 7])
// d += popc(A & B) over 256 bits: A 64 x 256 (descriptor da), B 64 x 256 (db), both K-major.
__device__ __forceinline__ void bgmma_m64n64(int (&d)[32], unsigned long long da, unsigned long long db) {
#ifdef W1A4_WGMMA
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k256.s32.b1.b1.and.popc "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p;\n}\n"
        : WG_R8(0), WG_R8(8), WG_R8(16), WG_R8(24)
        : "l"(da), "l"(db));
#elif defined(W1A4_HOST_EMU)
    w1a4_emu_bgmma_m64nk256(d, 64, da, db);
#else
    (void)d; (void)da; (void)db; __trap();
#endif
}
#undef WG_R8

// mbarriers (PTX ISA, "Parallel Synchronization and Communication Instructions: mbarrier") for the
// warp-specialised loop: a barrier completes a phase when its pending count reaches zero; try_wait.parity P
// returns once the phase of parity P has completed. mref: its 32-bit shared address (a pointer on the host).
#ifdef W1A4_HOST_EMU
typedef unsigned long long* mref;
__device__ __forceinline__ mref mref_of(unsigned long long* p) { return p; }
__device__ __forceinline__ mref mref_add(mref r, int i) { return r + i; }
#else
typedef u32 mref;
__device__ __forceinline__ mref mref_of(unsigned long long* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ mref mref_add(mref r, int i) { return r + 8u * (u32)i; }
#endif
__device__ __forceinline__ void mbar_init(mref bar, int count) {
#ifdef W1A4_HOST_EMU
    w1a4_emu_mbar_init(bar, count);
#elif defined(W1A4_WGMMA)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(mref bar) {
#ifdef W1A4_HOST_EMU
    w1a4_emu_mbar_arrive(bar);
#elif defined(W1A4_WGMMA)
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(mref bar, u32 parity) {
#ifdef W1A4_HOST_EMU
    w1a4_emu_mbar_wait(bar, parity);
#elif defined(W1A4_WGMMA)
    asm volatile(
        "{\n.reg .pred done;\nwait_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra wait_%=;\n}\n" ::"r"(bar), "r"(parity) : "memory");
#endif
}
// Arrive on `bar` once every cp.async this thread has issued so far has landed (the arrival is not counted
// in advance: .noinc, so the barrier's count holds it).
__device__ __forceinline__ void cp_async_mbar_arrive(mref bar) {
#ifdef W1A4_HOST_EMU
    w1a4_emu_cp_async_mbar_arrive(bar);
#elif defined(W1A4_WGMMA)
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
#endif
}
// A barrier of `count` threads on hardware barrier `id` (1..15; __syncthreads is 0).
__device__ __forceinline__ void named_sync(int id, int count) {
#ifdef W1A4_HOST_EMU
    w1a4_emu_named_sync(id, count);
#else
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}

// Bit k of each of the 8 nibbles of x -> bits 0..7.
__host__ __device__ __forceinline__ u32 nibble_bit_plane(u32 x, int k) {
    u32 y = (x >> k) & 0x11111111u;
    y = (y | (y >> 3)) & 0x03030303u;
    y = (y | (y >> 6)) & 0x000F000Fu;
    return (y | (y >> 12)) & 0xFFu;
}

// 32 codes of one (pixel, channel group) as four nibble words -> four plane words of q XOR z (padded
// channels, from channel C on, give 0) and the sum of (q - z) over the real channels.
__host__ __device__ __forceinline__ void planes_from_nibbles(const u32 (&wd)[4], int first_channel, int C, int z,
                                                             u32 (&pl)[4], int& sum) {
    const u32 zrep = (u32)z * 0x11111111u;
    sum = 0;
    pl[0] = pl[1] = pl[2] = pl[3] = 0u;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        int nreal = C - (first_channel + 8 * w);
        nreal = nreal < 0 ? 0 : (nreal > 8 ? 8 : nreal);
        const u32 mask = nreal >= 8 ? 0xFFFFFFFFu : ((1u << (4 * nreal)) - 1u);
        const u32 x = (wd[w] ^ zrep) & mask;
        sum += nibble_sum(wd[w] & mask) - z * nreal;
#pragma unroll
        for (int k = 0; k < 4; ++k) pl[k] |= nibble_bit_plane(x, k) << (8 * w);
    }
}

struct Shape {
    int N, H, W, G;  // G = 4 ceil(C_in / 128): words per pixel and plane
    int C_out, OH, OW;
    int KH, KW, SH, SW, PH, PW;
    int z, nchunks;  // nchunks = ceil(KH * KW * G / 8): 256-bit K chunks
    int splits;      // split-K: gridDim.z blocks share a tile's K chunks (1: no split)
};

// Where output pixel m's receptive field starts: its top-left input tap (ih0, iw0), possibly outside the image,
// and that tap's offset in 16-byte units of the planes tensor (pix_units per pixel). Past M the row is never
// inside the image.
struct RowOrigin {
    int base = 0, ih0 = -(1 << 29), iw0 = 0;
};
__device__ __forceinline__ RowOrigin row_origin(const Shape& s, int m, int M, int pix_units) {
    RowOrigin r;
    if (m < M) {
        const int OHW = s.OH * s.OW;
        const int n = m / OHW, rem = m - n * OHW;
        const int oh = rem / s.OW, ow = rem - oh * s.OW;
        r.ih0 = oh * s.SH - s.PH;
        r.iw0 = ow * s.SW - s.PW;
        r.base = ((n * s.H + r.ih0) * s.W + r.iw0) * pix_units;
    }
    return r;
}

// A loader thread's K position: (ky, kx, unit gu of the pixel's groups) of its 4 K words, and their offset
// ((ky W + kx) U + gu) PL in 16-byte units from the row's origin. Starts at K unit `first` (2 chunk + half) and
// moves one 256-bit chunk (2 units) at a time, without a division.
struct KCursor {
    int ky = 0, kx = 0, gu, tap_off;
    int U, KW, row_step, pl;
    __device__ __forceinline__ KCursor(int first, int pl_, int U_, const Shape& s, int pix_units)
        : gu(first), tap_off(pl_ * first), U(U_), KW(s.KW), row_step((s.W - s.KW) * pix_units), pl(pl_) {
        normalize();
    }
    __device__ __forceinline__ void normalize() {
        while (gu >= U) {
            gu -= U;
            if (++kx == KW) {
                kx = 0;
                ++ky;
                tap_off += row_step;
            }
        }
    }
    __device__ __forceinline__ void next_chunk() {
        gu += 2;
        tap_off += 2 * pl;
        normalize();
    }
};

// Q[p] of output pixel m: the pack kernel's per-pixel sums of (q - z) over the taps inside the image (0 past M).
__device__ __forceinline__ int pixel_q(const int* __restrict__ sums, const Shape& s, int m, int M) {
    if (m >= M) return 0;
    const int OHW = s.OH * s.OW;
    const int n = m / OHW, rem = m - n * OHW;
    const int oh = rem / s.OW, ow = rem - oh * s.OW;
    const int ih0 = oh * s.SH - s.PH, iw0 = ow * s.SW - s.PW;
    int q = 0;
#pragma unroll 1
    for (int y = 0; y < s.KH; ++y) {
        const int ih = ih0 + y;
        if ((unsigned)ih >= (unsigned)s.H) continue;
#pragma unroll 1
        for (int x = 0; x < s.KW; ++x) {
            const int iw = iw0 + x;
            if ((unsigned)iw < (unsigned)s.W) q += sums[(n * s.H + ih) * s.W + iw];
        }
    }
    return q;
}

// ---- the epilogue of a block's 128 x 64 tile -----------------------------------------------------
// Planes combined with their coefficients, Q subtracted, scales and bias, staged as float32 [128 pixels]
// [64 / NB channels] in shared memory Ys (the pipeline's, free by now), then stored row by row (coalesced) by
// the block's `nthreads` computing threads (thread index `lt`); `sync` is their barrier. Split-K (work):
// the integer sums are added to the workspace instead. Register 4 tile + r of plane k's accumulators is row
// row0(tile) + g + 8 (r / 2), column col0(tile) + 2 t + r % 2: mma.sync, warp (warp_m, warp_n) holds 2 x 4
// tiles of 16 x 8; wgmma, warp w of warpgroup wg holds rows 64 wg + 16 (w % 4) .. + 15 of all 64 columns.
template <int NB, bool F16, int PL, bool WG, class Sync>
__device__ __forceinline__ void tile_epilogue(const int (&acc)[PL][32], const int* qs, float* Ys, int lt, int nthreads,
                                              int warp, int lane, const Shape& s, int m0, int cb, int ncb, int M,
                                              const float* __restrict__ scale, const float* __restrict__ bias,
                                              void* __restrict__ out, int* __restrict__ work, Sync sync) {
    const int g = lane >> 2, t4 = lane & 3;
    int ck[PL];  // c_k: -2^k where bit k of z is set, else 2^k (with PL = 2, z < 4: the launcher checks)
#pragma unroll
    for (int k = 0; k < PL; ++k) ck[k] = ((s.z >> k) & 1) ? -(1 << k) : (1 << k);
    const int nch = BM_BN / NB;  // output channels per block
#pragma unroll
    for (int tile = 0; tile < 8; ++tile) {
        const int row0 = WG ? 64 * (warp >> 2) + 16 * (warp & 3) : (warp & 3) * 32 + (tile >> 2) * 16;
        const int col0 = WG ? 8 * tile : (warp >> 2) * 32 + (tile & 3) * 8;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int rl = row0 + g + 8 * h;
            const int q = qs[rl];
            int v[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int r = 4 * tile + 2 * h + e;
                int p = 0;
#pragma unroll
                for (int k = 0; k < PL; ++k) p += ck[k] * acc[k][r];
                v[e] = 2 * p - q;
            }
            const int col = col0 + 2 * t4;  // even, inside the block
            if (work != nullptr) {  // split-K: the tile's integer sum, scaled once all splits have added
                const int m = m0 + rl;
                if (m < M) {
                    int* dst = work + (long long)m * ncb * BM_BN + cb * BM_BN + col;
                    atomicAdd(dst, v[0]);
                    atomicAdd(dst + 1, v[1]);
                }
                continue;
            }
            if (NB == 2) {
                const int o = cb * nch + (col >> 1);
                if (o < s.C_out) Ys[rl * BM_YS_STRIDE + (col >> 1)] = epilogue<2>(v[0], v[1], o, s.C_out, scale, bias);
            } else {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int o = cb * nch + col + e;
                    if (o < s.C_out) Ys[rl * BM_YS_STRIDE + col + e] = epilogue<1>(v[e], 0, o, s.C_out, scale, bias);
                }
            }
        }
    }
    if (work != nullptr) return;
    sync();
    const int shift = NB == 2 ? 5 : 6;  // log2(nch)
#pragma unroll 1
    for (int idx = lt; idx < BM_BM * nch; idx += nthreads) {
        const int rl = idx >> shift, ch = idx & (nch - 1);
        const int m = m0 + rl, o = cb * nch + ch;
        if (m < M && o < s.C_out) store_out<F16>(out, (long long)m * s.C_out + o, Ys[rl * BM_YS_STRIDE + ch]);
    }
}

// ---- the conv ----------------------------------------------------------------------------------
// Shared memory per stage: A as 128 rows (pixels) x 8 units of 16 bytes, unit (plane p, half h) = K
// words 4h .. 4h + 3 of the chunk in plane p, stored at slot (2p + h) ^ (row % 8) (a swizzle: the 8 rows
// of one ldmatrix matrix fall in 8 distinct 16-byte bank groups); one ldmatrix.x4 gives a lane the four
// A registers of one plane and one m tile. B as the 128 units of wfrag's chunk, in fragment order: lane
// l of warp_n reads units (warp_n * 2 + p) * 32 + l, {b0, b1} of two n tiles in one 16-byte load.
//
// Loads: thread tid copies half h = tid % 2 of row tid / 2, the PL planes' units (16 PL contiguous
// bytes of the planes tensor; with PL = 2 four of a row's eight slots stay unused), so the (tap, group)
// of its 4 K words is one state per thread, advanced by 8 words per chunk without a division; a tap
// outside the image or past the last tap is a zero-filled copy. Threads 0..127 copy one B unit each.
//
// Split-K (s.splits > 1, for grids smaller than the card: batch 1): block z of the tile multiplies K chunks
// [nchunks z / splits, nchunks (z + 1) / splits) and adds its combined integer 2 p - q (q from split 0
// only) to work[pixel][column] with integer atomics (exact in any order: the same result every run);
// w1a4_bmma_splitk_epilogue_* then applies the scales and the bias.
template <int NB, bool F16, int PL, bool WG>
__device__ void conv_bmma(const uint4* __restrict__ planes, const int* __restrict__ sums,
                          const uint4* __restrict__ wfrag, const float* __restrict__ scale,
                          const float* __restrict__ bias, void* __restrict__ out, Shape s, int* __restrict__ work) {
#ifdef W1A4_HOST_EMU
    __shared__ uint4 sm[BM_STAGES * BM_STAGE_UNITS];
#else
    extern __shared__ uint4 sm[];
#endif
    __shared__ int qs[BM_BM];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp & 3, warp_n = warp >> 2;
    const int M = s.N * s.OH * s.OW;  // < 2^31 (the launcher checks)
    const int m0 = blockIdx.x * BM_BM;
    const int cb = blockIdx.y;
    static_assert(PL == 2 || PL == 4, "4 planes (W1A4) or 2 (W1A1)");
    const int U = s.G >> 2;        // groups of 4 words (128 channels) per pixel
    const int pix_units = PL * U;  // 16-byte units per pixel: [U][PL planes]
    const int split = blockIdx.z;
    const int c_begin = (int)((long long)s.nchunks * split / s.splits);
    const int nloc = (int)((long long)s.nchunks * (split + 1) / s.splits) - c_begin;  // this block's chunks

    // A loader: half h = tid % 2 (K words 4h .. 4h + 3 of the chunk) of row lrow = tid / 2, all PL planes:
    // one 16 PL-byte run of the planes tensor, PL copies, one bounds check.
    const int h = tid & 1, lrow = tid >> 1;
    int slot[PL];
#pragma unroll
    for (int pl = 0; pl < PL; ++pl)
        slot[pl] = WG ? pl * 256 + ((lrow >> 3) * 2 + h) * 8 + (lrow & 7) : lrow * 8 + ((2 * pl + h) ^ (lrow & 7));
    const RowOrigin row = row_origin(s, m0 + lrow, M, pix_units);
    KCursor k(h + 2 * c_begin, PL, U, s, pix_units);  // K words 8 c_begin + 4h ..
    const uint4* wsrc = wfrag + ((long long)cb * s.nchunks + c_begin) * BM_B_UNITS + tid;

    const sref smem0 = sref_of(sm);
    auto load_stage = [&](int st) {
        const sref As = sref_add(smem0, st * BM_STAGE_UNITS);
        const int ih = row.ih0 + k.ky, iw = row.iw0 + k.kx;
        const bool valid = k.ky < s.KH && (unsigned)ih < (unsigned)s.H && (unsigned)iw < (unsigned)s.W;
        const uint4* src = planes + (valid ? (unsigned)(row.base + k.tap_off) : 0u);
#pragma unroll
        for (int pl = 0; pl < PL; ++pl) cp_async16(sref_add(As, slot[pl]), src + pl, valid);
        if (tid < BM_B_UNITS) cp_async16(sref_add(As, BM_A_UNITS + tid), wsrc, true);
        wsrc += BM_B_UNITS;
        k.next_chunk();
    };

    // Per plane, 8 tiles of 4 accumulators: register 4 tile + r is row row0(tile) + g + 8 (r / 2), column
    // col0(tile) + 2 t4 + r % 2 (both paths; see the epilogue). mma.sync: tile = 4 m tile + n tile.
    int acc[PL][32];
#pragma unroll
    for (int k = 0; k < PL; ++k)
#pragma unroll
        for (int r = 0; r < 32; ++r) acc[k][r] = 0;

    // wgmma reads a stage until its group is waited for, one chunk after it was issued: the loads run one
    // stage less ahead, so that the stage they overwrite was read two chunks ago.
    constexpr int AHEAD = WG ? BM_STAGES - 2 : BM_STAGES - 1;
#pragma unroll
    for (int st = 0; st < AHEAD; ++st) {
        if (st < nloc) load_stage(st);
        cp_async_commit();
    }

    // Q[p] for the block's pixels, while the first chunks are in flight: the sums of the valid taps.
    if (tid < BM_BM) qs[tid] = split == 0 ? pixel_q(sums, s, m0 + tid, M) : 0;  // split-K: the other splits add no q

    // ldmatrix addresses inside a stage (units): lane l gives row (l % 8) + 8 ((l / 8) % 2) of the m tile,
    // half (l / 16) of plane p: slot (2p + half) ^ (l % 8).
    const int lr = lane & 7, lhalf = lane >> 4;
    int a_off[PL];
#pragma unroll
    for (int pl = 0; pl < PL; ++pl)
        a_off[pl] = (warp_m * 32 + lr + 8 * ((lane >> 3) & 1)) * 8 + ((2 * pl + lhalf) ^ lr);
    const int b_off = BM_A_UNITS + warp_n * 64 + lane;

    int rd = 0, wr = AHEAD;
    // wgmma descriptors of stage 0: this warpgroup's 64 rows of plane 0 (A), the 64 columns (B); LBO 128 bytes
    // (the other 16 bytes of the row's 256-bit chunk), SBO 256 bytes (the next 8 rows).
    const int wg = warp >> 2;
    const unsigned long long da0 = wg_desc(sref_add(smem0, wg * 128), 128, 256);
    const unsigned long long db0 = wg_desc(sref_add(smem0, BM_A_UNITS), 128, 256);
#pragma unroll 1
    for (int c = 0; c < nloc; ++c) {
        cp_async_wait<AHEAD - 1>();  // chunk c has landed (this thread's copies)
        if (WG) fence_proxy_async();
        __syncthreads();  // everybody's copies; stage wr was last read in step c - 1 (wgmma: c - 2, waited for)
        if (c + AHEAD < nloc) load_stage(wr);
        cp_async_commit();
        if (++wr == BM_STAGES) wr = 0;

        if constexpr (WG) {
            // Descriptor addresses are in 16-byte units from bit 0: a stage is BM_STAGE_UNITS of them.
            const unsigned long long st = (unsigned long long)(rd * BM_STAGE_UNITS);
            wg_fence();
#pragma unroll
            for (int pl = 0; pl < PL; ++pl) bgmma_m64n64(acc[pl], da0 + st + pl * 256, db0 + st);
            wg_commit();
            wg_wait<1>();  // chunk c - 1's products are done: its stage may be overwritten in step c + 1
            if (++rd == BM_STAGES) rd = 0;
            continue;
        }
        const uint4* S = sm + rd * BM_STAGE_UNITS;
        const sref Sr = sref_add(smem0, rd * BM_STAGE_UNITS);
        const uint4 bq0 = S[b_off], bq1 = S[b_off + 32];
        const u32 b[4][2] = {{bq0.x, bq0.y}, {bq0.z, bq0.w}, {bq1.x, bq1.y}, {bq1.z, bq1.w}};
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
            for (int pl = 0; pl < PL; ++pl) {
                u32 a[4];
                ldsm_x4(a, sref_add(Sr, a_off[pl] + i * 128));  // rows + 16 i
#pragma unroll
                for (int jn = 0; jn < 4; ++jn)
                    bmma(*reinterpret_cast<int(*)[4]>(&acc[pl][4 * (4 * i + jn)]), a, b[jn][0], b[jn][1]);
            }
        }
        if (++rd == BM_STAGES) rd = 0;
    }
    cp_async_wait<0>();
    if (WG) wg_wait<0>();
    __syncthreads();  // the pipeline's shared memory is free: it becomes the output tile

    tile_epilogue<NB, F16, PL, WG>(acc, qs, reinterpret_cast<float*>(sm), tid, BM_THREADS, warp, lane, s, m0, cb,
                                   (int)gridDim.y, M, scale, bias, out, work, [] { __syncthreads(); });
}

// ---- the warp-specialised, persistent warpgroup conv (sm_90a) -----------------------------------
// 384 threads: warpgroup 0 loads, warpgroups 1 and 2 multiply (rows 0..63 and 64..127 of a tile), so the
// multiplying warps issue no address arithmetic. Persistent: gridDim.x blocks (about one per SM) walk the
// tiles t = blockIdx.x, + gridDim.x, ... of the (pixel block, column block, split) grid, pixel blocks fastest
// (neighbouring tiles share their weights in L2); the loader runs on into the next tile's chunks while the
// multiplying warps finish a tile's epilogue, which stages the output outside the pipeline's stages.
// The stages and their layout are the warpgroup loop's; per stage two mbarriers: full (128 loader arrivals,
// each when the thread's copies of the stage have landed: cp.async.mbarrier.arrive.noinc) and empty (256
// arrivals, each when a multiplying thread's products of the stage are retired). Chunks are counted over all
// of a block's tiles (j): the loader refills stage j % STAGES once empty has completed round j / STAGES - 1,
// the multiplying threads wait for full's round j / STAGES. Loader thread p copies half p % 2 of rows p / 2
// and p / 2 + 64 (both at the same K words: one K state) and B unit p.
template <int NB, bool F16, int PL>
__device__ void conv_bgmma_ws(const uint4* __restrict__ planes, const int* __restrict__ sums,
                              const uint4* __restrict__ wfrag, const float* __restrict__ scale,
                              const float* __restrict__ bias, void* __restrict__ out, Shape s, int* __restrict__ work,
                              int mblocks, int ncb) {
#ifdef W1A4_HOST_EMU
    __shared__ uint4 sm[BM_WS_SMEM_UNITS];
#else
    extern __shared__ uint4 sm[];
#endif
    __shared__ int qs[2][BM_BM];  // per tile parity: a tile's sums are written while the last tile's are read
    __shared__ unsigned long long bars[2 * BM_STAGES];  // full[0..S), empty[S..2S)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int M = s.N * s.OH * s.OW;
    const int tiles = mblocks * ncb * s.splits;
    const sref smem0 = sref_of(sm);
    const mref full0 = mref_of(bars), empty0 = mref_of(bars + BM_STAGES);
    if (tid == 0) {
        for (int st = 0; st < BM_STAGES; ++st) {
            mbar_init(mref_add(full0, st), 128);
            mbar_init(mref_add(empty0, st), 256);
        }
#ifdef W1A4_WGMMA
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
    }
    __syncthreads();  // the barriers are initialised
    // tile t -> (pixel block, column block, split), and the split's chunks [c_begin, c_begin + nloc)
    auto tile_of = [&](int t, int& m0, int& cb, int& split, int& c_begin, int& nloc) {
        m0 = (t % mblocks) * BM_BM;
        cb = (t / mblocks) % ncb;
        split = t / (mblocks * ncb);
        c_begin = (int)((long long)s.nchunks * split / s.splits);
        nloc = (int)((long long)s.nchunks * (split + 1) / s.splits) - c_begin;
    };

    if (warp < 4) {  // ---- loader ----
        const int U = s.G >> 2, pix_units = PL * U;
        const int h = tid & 1, lrow = tid >> 1;  // rows lrow and lrow + 64
        int slot[PL];
#pragma unroll
        for (int pl = 0; pl < PL; ++pl) slot[pl] = pl * 256 + ((lrow >> 3) * 2 + h) * 8 + (lrow & 7);
        int j = 0;  // chunks loaded by this block so far
#pragma unroll 1
        for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
            int m0, cb, split, c_begin, nloc;
            tile_of(t, m0, cb, split, c_begin, nloc);
            const RowOrigin row[2] = {row_origin(s, m0 + lrow, M, pix_units), row_origin(s, m0 + lrow + 64, M, pix_units)};
            KCursor k(h + 2 * c_begin, PL, U, s, pix_units);
            const uint4* wsrc = wfrag + ((long long)cb * s.nchunks + c_begin) * BM_B_UNITS + tid;
#pragma unroll 1
            for (int c = 0; c < nloc; ++c, ++j) {
                const int st = j % BM_STAGES, round = j / BM_STAGES;
                if (round > 0) mbar_wait(mref_add(empty0, st), (round - 1) & 1);
                const sref As = sref_add(smem0, st * BM_STAGE_UNITS);
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int ih = row[r].ih0 + k.ky, iw = row[r].iw0 + k.kx;
                    const bool valid = k.ky < s.KH && (unsigned)ih < (unsigned)s.H && (unsigned)iw < (unsigned)s.W;
                    const uint4* src = planes + (valid ? (unsigned)(row[r].base + k.tap_off) : 0u);
#pragma unroll
                    for (int pl = 0; pl < PL; ++pl)
                        cp_async16(sref_add(As, slot[pl] + 128 * r), src + pl, valid);  // row + 64: 8 row groups on
                }
                cp_async16(sref_add(As, BM_A_UNITS + tid), wsrc, true);
                cp_async_mbar_arrive(mref_add(full0, st));
                wsrc += BM_B_UNITS;
                k.next_chunk();
            }
        }
        return;
    }

    // ---- multiplying warpgroups ----
    const int wg = (warp >> 2) - 1;  // 0: rows 0..63, 1: rows 64..127
    const int ct = tid - 128;        // thread index among the 256 multiplying threads
    const unsigned long long da0 = wg_desc(sref_add(smem0, wg * 128), 128, 256);
    const unsigned long long db0 = wg_desc(sref_add(smem0, BM_A_UNITS), 128, 256);
    float* Ys = reinterpret_cast<float*>(sm + BM_STAGES * BM_STAGE_UNITS);  // the output tile, beside the stages
    int j = 0, parity = 0;
#pragma unroll 1
    for (int t = blockIdx.x; t < tiles; t += gridDim.x, parity ^= 1) {
        int m0, cb, split, c_begin, nloc;
        tile_of(t, m0, cb, split, c_begin, nloc);
        // this tile's Q sums (split-K: split 0 only), into the buffer the last tile did not use
        if (ct < BM_BM) qs[parity][ct] = split == 0 ? pixel_q(sums, s, m0 + ct, M) : 0;
        int acc[PL][32];
#pragma unroll
        for (int k = 0; k < PL; ++k)
#pragma unroll
            for (int r = 0; r < 32; ++r) acc[k][r] = 0;
#pragma unroll 1
        for (int c = 0; c < nloc; ++c, ++j) {
            const int st = j % BM_STAGES;
            mbar_wait(mref_add(full0, st), (j / BM_STAGES) & 1);
            fence_proxy_async();  // the loader's cp.async data, seen by this thread, made visible to wgmma
            const unsigned long long off = (unsigned long long)(st * BM_STAGE_UNITS);
            wg_fence();
#pragma unroll
            for (int pl = 0; pl < PL; ++pl) bgmma_m64n64(acc[pl], da0 + off + pl * 256, db0 + off);
            wg_commit();
            wg_wait<1>();  // chunk j - 1's products are retired: its stage goes back to the loader
            if (c > 0) mbar_arrive(mref_add(empty0, (j - 1) % BM_STAGES));
        }
        wg_wait<0>();
        mbar_arrive(mref_add(empty0, (j - 1) % BM_STAGES));  // the tile's last stage
        named_sync(1, 256);  // qs written; every thread done with the last tile's output staging
        tile_epilogue<NB, F16, PL, true>(acc, qs[parity], Ys, ct, 256, warp - 4, lane, s, m0, cb, ncb, M, scale,
                                         bias, out, work, [] { named_sync(1, 256); });
    }
}

// Code of W1A1's x_b = sign(x + beta) (sign(0) = +1, -0.0 too): 2 for +1, 0 for -1. fl32(x + beta) and
// the sign of fl32(u + 0), as binarydm.kernels.packing.pack_sign_input computes them.
__device__ __forceinline__ u32 sign_code_of(float value, float beta) {
    const float u = __fadd_rn(__fadd_rn(value, beta), 0.0f);
    return (__float_as_uint(u) >> 31) ? 0u : 2u;
}

// ---- the pack kernels ---------------------------------------------------------------------------
// One thread per (pixel, 32-channel group); a block holds 256 / G whole pixels (G <= 256), so the sum
// over a pixel's groups is made in shared memory. From packed nibble codes (IN_CODES: Gc = C_pad / 32
// groups of 4 words per pixel, zero point z) or from a float tensor of any strides: LSQ (code =
// rint(clamp(x / d, qn, qp)) - qn, z = -qn, the rounding and float32 division of
// binarydm.kernels.packing.pack_activation: lsq_code; param = the step d) or, with SIGN, W1A1's sign
// codes (z = 1; param = beta per channel, or null for 0), or with GN the LSQ codes of SiLU(GroupNorm(x))
// (silu_lsq_code; ab: each (sample, channel)'s affine from w1a4_gn_finish, ab_stride per sample). Writes
// PL planes; groups past the channels (up to G) are written as 0.
enum { PACK_LSQ = 0, PACK_SIGN = 1, PACK_GN = 2 };

template <int IN, int PL, int MODE>
__device__ void pack_planes(const void* __restrict__ x, u32* __restrict__ planes, int* __restrict__ sums, int N,
                            int C, int H, int W, long long sN, long long sC, long long sH, long long sW, int G,
                            int Gc, const float* __restrict__ param, int qn, int qp, int z,
                            const float2* __restrict__ ab = nullptr, int ab_stride = 0) {
    __shared__ int part[BM_PACK_THREADS];
    const int ppb = BM_PACK_THREADS / G;  // pixels per block
    const int lp = threadIdx.x / G, grp = threadIdx.x - lp * G;
    const long long P = (long long)N * H * W;
    const long long pix = (long long)blockIdx.x * ppb + lp;
    const bool active = lp < ppb && pix < P;
    int sum = 0;
    if (active) {
        u32 wd[4] = {0u, 0u, 0u, 0u};
        if (IN == IN_CODES) {
            if (grp < Gc) {
                const uint4 v = reinterpret_cast<const uint4*>(x)[pix * Gc + grp];
                wd[0] = v.x, wd[1] = v.y, wd[2] = v.z, wd[3] = v.w;
            }
        } else if (grp * 32 < C) {
            const float step = MODE == PACK_SIGN ? 0.0f : *param;
            const float inv_step = MODE == PACK_GN ? __frcp_rn(step) : 0.0f;
            const int w = (int)(pix % W);
            const int h = (int)((pix / W) % H);
            const int n = (int)(pix / ((long long)W * H));
            const long long base = n * sN + h * sH + w * sW;
            const float2* abn = ab + (long long)n * ab_stride;
#pragma unroll
            for (int jj = 0; jj < 32; ++jj) {
                const int c = grp * 32 + jj;
                if (c >= C) continue;
                const float v = load_as_f32<IN>(x, base + c * sC);
                const u32 code = MODE == PACK_SIGN ? sign_code_of(v, param ? param[c] : 0.0f)
                                 : MODE == PACK_GN ? (u32)(silu_lsq_code(v, abn[c], inv_step, (float)qn, (float)qp) - qn)
                                                   : lsq_code_of(v, step, qn, qp);
                wd[jj >> 3] |= code << (4 * (jj & 7));
            }
        }
        u32 pl[4];
        planes_from_nibbles(wd, grp * 32, C, z, pl, sum);
        u32* dst = planes + (pix * G + (grp & ~3)) * PL + (grp & 3);  // [pixel][grp / 4][plane][grp % 4]
#pragma unroll
        for (int k = 0; k < PL; ++k) dst[4 * k] = pl[k];
    }
    part[threadIdx.x] = sum;
    __syncthreads();
    if (active && grp == 0) {
        int total = 0;
#pragma unroll 1
        for (int i = 0; i < G; ++i) total += part[threadIdx.x + i];
        sums[pix] = total;
    }
}

}  // namespace w1a4_bmma

// work: null, or (split-K, gridDim.z = splits) zeroed int32 [M, gridDim.y * BM_BN].
#define W1A4_BMMA_ENTRY(NAME, NB, F16, PL, WG)                                                           \
    extern "C" __global__ void __launch_bounds__(BM_THREADS, 1)                                          \
    NAME(const uint4* planes, const int* sums, const uint4* wfrag, const float* scale, const float* bias,  \
         void* out, int N, int H, int W, int G, int C_out, int OH, int OW, int KH, int KW, int SH, int SW, \
         int PH, int PW, int z, int nchunks, int* work) {                                                 \
        w1a4_bmma::conv_bmma<NB, F16, PL, WG>(planes, sums, wfrag, scale, bias, out,                     \
                                          w1a4_bmma::Shape{N, H, W, G, C_out, OH, OW, KH, KW, SH, SW, PH, \
                                                           PW, z, nchunks, (int)gridDim.z},               \
                                          work);                                                          \
    }
W1A4_BMMA_ENTRY(w1a4_conv_bmma_nb1_f16, 1, true, 4, false)
W1A4_BMMA_ENTRY(w1a4_conv_bmma_nb1_f32, 1, false, 4, false)
W1A4_BMMA_ENTRY(w1a4_conv_bmma_nb2_f16, 2, true, 4, false)
W1A4_BMMA_ENTRY(w1a4_conv_bmma_nb2_f32, 2, false, 4, false)
W1A4_BMMA_ENTRY(w1a1_conv_bmma_f16, 1, true, 2, false)
W1A4_BMMA_ENTRY(w1a1_conv_bmma_f32, 1, false, 2, false)
// The warpgroup kernels (sm_90a only; elsewhere they trap): the same operands, except the weight in the
// canonical layout (binarydm/kernels/packing.py, bmma_weight_fragments(wgmma=True)).
W1A4_BMMA_ENTRY(w1a4_conv_bgmma_nb1_f16, 1, true, 4, true)
W1A4_BMMA_ENTRY(w1a4_conv_bgmma_nb1_f32, 1, false, 4, true)
W1A4_BMMA_ENTRY(w1a4_conv_bgmma_nb2_f16, 2, true, 4, true)
W1A4_BMMA_ENTRY(w1a4_conv_bgmma_nb2_f32, 2, false, 4, true)
W1A4_BMMA_ENTRY(w1a1_conv_bgmma_f16, 1, true, 2, true)
W1A4_BMMA_ENTRY(w1a1_conv_bgmma_f32, 1, false, 2, true)

// The warp-specialised, persistent warpgroup kernels: 384 threads (a loading warpgroup and two multiplying
// ones), a 1-D grid of blocks walking the mblocks x ncb x splits tiles.
#define W1A4_BGMMA_WS_ENTRY(NAME, NB, F16, PL)                                                           \
    extern "C" __global__ void __launch_bounds__(BM_WS_THREADS, 1)                                       \
    NAME(const uint4* planes, const int* sums, const uint4* wfrag, const float* scale, const float* bias,  \
         void* out, int N, int H, int W, int G, int C_out, int OH, int OW, int KH, int KW, int SH, int SW, \
         int PH, int PW, int z, int nchunks, int* work, int mblocks, int ncb, int splits) {               \
        w1a4_bmma::conv_bgmma_ws<NB, F16, PL>(planes, sums, wfrag, scale, bias, out,                      \
                                              w1a4_bmma::Shape{N, H, W, G, C_out, OH, OW, KH, KW, SH, SW, \
                                                               PH, PW, z, nchunks, splits},               \
                                              work, mblocks, ncb);                                        \
    }
W1A4_BGMMA_WS_ENTRY(w1a4_conv_bgmma_ws_nb1_f16, 1, true, 4)
W1A4_BGMMA_WS_ENTRY(w1a4_conv_bgmma_ws_nb1_f32, 1, false, 4)
W1A4_BGMMA_WS_ENTRY(w1a4_conv_bgmma_ws_nb2_f16, 2, true, 4)
W1A4_BGMMA_WS_ENTRY(w1a4_conv_bgmma_ws_nb2_f32, 2, false, 4)
W1A4_BGMMA_WS_ENTRY(w1a1_conv_bgmma_ws_f16, 1, true, 2)
W1A4_BGMMA_WS_ENTRY(w1a1_conv_bgmma_ws_f32, 1, false, 2)

// After a split-K conv: one thread per (pixel m, output channel o), the scales and the bias applied to the
// integer sums of work (columns NB o + b, ncols per pixel), as the conv's own epilogue.
#define W1A4_SPLITK_EPILOGUE_ENTRY(NAME, NB, F16)                                                        \
    extern "C" __global__ void __launch_bounds__(BM_PACK_THREADS)                                        \
    NAME(const int* work, const float* scale, const float* bias, void* out, int M, int C_out, int ncols) { \
        const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                            \
        if (i >= (long long)M * C_out) return;                                                            \
        const int m = (int)(i / C_out), o = (int)(i - (long long)m * C_out);                              \
        const int* v = work + (long long)m * ncols + NB * o;                                              \
        store_out<F16>(out, i, epilogue<NB>(v[0], NB == 2 ? v[1] : 0, o, C_out, scale, bias));            \
    }
W1A4_SPLITK_EPILOGUE_ENTRY(w1a4_bmma_splitk_epilogue_nb1_f16, 1, true)
W1A4_SPLITK_EPILOGUE_ENTRY(w1a4_bmma_splitk_epilogue_nb1_f32, 1, false)
W1A4_SPLITK_EPILOGUE_ENTRY(w1a4_bmma_splitk_epilogue_nb2_f16, 2, true)
W1A4_SPLITK_EPILOGUE_ENTRY(w1a4_bmma_splitk_epilogue_nb2_f32, 2, false)

#define W1A4_PLANES_ENTRY(NAME, IN)                                                                      \
    extern "C" __global__ void __launch_bounds__(BM_PACK_THREADS)                                        \
    NAME(const void* x, u32* planes, int* sums, int N, int C, int H, int W, long long sN, long long sC,   \
         long long sH, long long sW, int G, int Gc, const float* step, int qn, int qp, int z) {           \
        w1a4_bmma::pack_planes<IN, 4, w1a4_bmma::PACK_LSQ>(x, planes, sums, N, C, H, W, sN, sC, sH, sW, G, Gc, \
                                                           step, qn, qp, z);                              \
    }
W1A4_PLANES_ENTRY(w1a4_planes_codes, IN_CODES)
W1A4_PLANES_ENTRY(w1a4_planes_f32, IN_F32)
W1A4_PLANES_ENTRY(w1a4_planes_f16, IN_F16)
W1A4_PLANES_ENTRY(w1a4_planes_bf16, IN_BF16)

// beta: f32 [C] or null (no shift).
#define W1A1_PLANES_ENTRY(NAME, IN)                                                                      \
    extern "C" __global__ void __launch_bounds__(BM_PACK_THREADS)                                        \
    NAME(const void* x, const float* beta, u32* planes, int* sums, int N, int C, int H, int W, long long sN, \
         long long sC, long long sH, long long sW, int G) {                                               \
        w1a4_bmma::pack_planes<IN, 2, w1a4_bmma::PACK_SIGN>(x, planes, sums, N, C, H, W, sN, sC, sH, sW, G, 0, \
                                                            beta, 0, 0, 1);                               \
    }
W1A1_PLANES_ENTRY(w1a1_planes_f32, IN_F32)
W1A1_PLANES_ENTRY(w1a1_planes_f16, IN_F16)
W1A1_PLANES_ENTRY(w1a1_planes_bf16, IN_BF16)

// SiLU(GroupNorm(x)) straight into the 4 planes: ab from w1a4_gn_finish (cuda/w1a4_conv.cu's statistics).
#define W1A4_GN_PLANES_ENTRY(NAME, IN)                                                                   \
    extern "C" __global__ void __launch_bounds__(BM_PACK_THREADS)                                        \
    NAME(const void* x, const float2* ab, int ab_stride, u32* planes, int* sums, int N, int C, int H, int W, \
         long long sN, long long sC, long long sH, long long sW, int G, const float* step, int qn, int qp) { \
        w1a4_bmma::pack_planes<IN, 4, w1a4_bmma::PACK_GN>(x, planes, sums, N, C, H, W, sN, sC, sH, sW, G, 0, \
                                                          step, qn, qp, -qn, ab, ab_stride);              \
    }
W1A4_GN_PLANES_ENTRY(w1a4_gn_planes_f32, IN_F32)
W1A4_GN_PLANES_ENTRY(w1a4_gn_planes_f16, IN_F16)
W1A4_GN_PLANES_ENTRY(w1a4_gn_planes_bf16, IN_BF16)
