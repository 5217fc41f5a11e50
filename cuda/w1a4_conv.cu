// W1A4 convolution: 1-bit weights (one or two bases, per-output-channel scales) x 4-bit activation
// codes with a zero point, implicit GEMM over NHWC, exact integer accumulation, scale and bias in the
// epilogue. Arithmetic and layouts: docs/kernels.md and binarydm/kernels/packing.py; the PyTorch
// reference binarydm/kernels/reference.py computes the same numbers bit for bit.
//
//   acc_b[o,p] = sum_{t in valid(p), c} (2 S_b[o,c,t] - 1) * q[p+t, c]      (codes 0 outside the image)
//   v_b        = acc_b - z * sum_{t in valid(p)} R_b[o,t]                     (border correction)
//   y[p,o]     = fl(fl(fl(v_0 * s_0[o]) + fl(v_1 * s_1[o])) + bias[o])        (s_b = fl(alpha_b * d))
//
// Kernels (extern "C"; the one include, w1a4_common.cuh, holds the code shared with w1a4_bmma.cu):
//   w1a4_conv_mma_nb{1,2}_{f16,f32}   integer tensor cores, mma.sync m16n8k32 u8 x s8 -> s32 (sm_80+;
//                                      on Hopper the 8-bit path is the dense integer one: 4-bit mma is
//                                      emulated there). Its weight operand is the s8 +-1 fragments of
//                                      binarydm.kernels.packing.mma_weight_fragments, made at pack time.
//   w1a4_conv_simt_{f16,f32}           CUDA cores, one thread per output; the first correctness target
//   w1a4_quantize_pack_{f32,f16,bf16}  x (any strides) -> packed 4-bit NHWC codes (LSQ rounding)
//
// GEMM view: M = N*OH*OW output pixels, Ncols = n_bases*C_out columns, K = KH*KW*C_pad. Column j holds
// base j % NB of output channel j / NB, so with two bases a thread's accumulator pair (c0, c1) -- two
// adjacent columns in the mma C fragment -- is both bases of one output channel.

#include "w1a4_common.cuh"

// The integer helpers are host functions too, so that a host program can check them exhaustively
// (tests/test_kernels.py) without a GPU.
#define W1A4_HD __host__ __device__ __forceinline__

#define MMA_BM 128       // output pixels per block
#define MMA_BN 128       // GEMM columns per block
#define MMA_THREADS 128  // 4 warps: 2 (M) x 2 (N), warp tile 64 x 64 = 4 x 8 mma m16n8k32
#define MMA_A_UNITS (MMA_BM * 2)  // 16-byte units of A per stage: 128 pixels x 32 one-byte codes
#define MMA_B_UNITS 256           // 16-byte units of B per stage: 128 columns x 32 s8 weights, fragment order
#define MMA_STAGE_UNITS (MMA_A_UNITS + MMA_B_UNITS)
#define MMA_MAX_STEPS 1023        // K steps (KH KW C_pad / 32) a block tables; the launcher checks
#define MMA_MAX_TAPS 31           // KH KW: one bit per tap in a 32-bit mask, bit 31 kept for "past the end"

// ---- small integer helpers ----------------------------------------------------------------------

// PRMT: byte i of the result is byte (s >> 4 i) & 7 of the pair (x: bytes 0..3, y: bytes 4..7).
W1A4_HD u32 byte_perm(u32 x, u32 y, u32 sel) {
#ifdef __CUDA_ARCH__
    return __byte_perm(x, y, sel);
#else
    const unsigned long long xy = ((unsigned long long)y << 32) | x;
    u32 r = 0u;
    for (int i = 0; i < 4; ++i) r |= (u32)((xy >> (8 * ((sel >> (4 * i)) & 7u))) & 0xFFu) << (8 * i);
    return r;
#endif
}

// Eight nibbles (channel j in bits 4j..4j+3) -> eight bytes, one code per byte: lo holds channels 0..3,
// hi channels 4..7. Five instructions for eight codes: the even and the odd nibbles masked into bytes,
// then interleaved by two byte permutes.
W1A4_HD void nibbles_to_byte_pair(u32 x, u32& lo, u32& hi) {
    const u32 even = x & 0x0F0F0F0Fu, odd = (x >> 4) & 0x0F0F0F0Fu;  // byte i: channel 2i, channel 2i + 1
    lo = byte_perm(even, odd, 0x5140u);
    hi = byte_perm(even, odd, 0x7362u);
}

// Eight weight bits (bit j = channel j) -> a nibble mask, 0xF in nibble j where bit j is set.
W1A4_HD u32 bits_to_nibble_mask(u32 b) {
    b &= 0xFFu;
    b = (b | (b << 12)) & 0x000F000Fu;
    b = (b | (b << 6)) & 0x03030303u;
    b = (b | (b << 3)) & 0x11111111u;
    return b * 0xFu;
}

// Sum of R_b[o, t] over the taps of pixel (ih0, iw0) (top-left input coordinate) inside the image.
__device__ __forceinline__ int valid_row_sum(const int* __restrict__ rs, int ih0, int iw0, int H, int W,
                                             int KH, int KW) {
    int s = 0;
    // Not unrolled: the epilogue calls this 16 times per thread, and unrolled copies only grow the code.
#pragma unroll 1
    for (int ky = 0; ky < KH; ++ky) {
        const int ih = ih0 + ky;
        if (ih < 0 || ih >= H) continue;
#pragma unroll 1
        for (int kx = 0; kx < KW; ++kx) {
            const int iw = iw0 + kx;
            if (iw >= 0 && iw < W) s += rs[ky * KW + kx];
        }
    }
    return s;
}

// Kernel entry points take the shape as 14 plain ints (CONV_SHAPE_PARAMS), the simplest thing for
// every launcher to pass; the body reads them through this struct.
#define CONV_SHAPE_PARAMS int N, int H, int W, int Cw, int C_out, int OH, int OW, int KH, int KW, int SH, \
                          int SW, int PH, int PW, int z
#define CONV_SHAPE_ARGS ConvShape{N, H, W, Cw, C_out, OH, OW, KH, KW, SH, SW, PH, PW, z}

struct ConvShape {
    int N, H, W, Cw;      // Cw = C_pad / 32 (weight words per tap; 4 * Cw activation words per pixel)
    int C_out, OH, OW;
    int KH, KW, SH, SW, PH, PW;
    int z;                // zero point of the codes
};

// ---- CUDA-core kernel ---------------------------------------------------------------------------
// One thread per output (pixel, channel), channel fastest so that the stores coalesce. Per 32 input
// channels: sum_c w q = 2 * sum_{c: S=1} q - sum_c q, with the nibbles masked by the weight bits.
template <bool F16>
__device__ void conv_simt(const u32* __restrict__ act, const u32* __restrict__ wbits, const int* __restrict__ rsum,
                          const float* __restrict__ scale, const float* __restrict__ bias, void* __restrict__ out,
                          ConvShape s, int NB) {
    const long long total = (long long)s.N * s.OH * s.OW * s.C_out;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int o = (int)(idx % s.C_out);
    const long long m = idx / s.C_out;
    const int ow = (int)(m % s.OW);
    const int oh = (int)((m / s.OW) % s.OH);
    const int n = (int)(m / ((long long)s.OW * s.OH));
    const int ih0 = oh * s.SH - s.PH, iw0 = ow * s.SW - s.PW;
    const int T = s.KH * s.KW;
    int acc[2] = {0, 0};  // fixed-size loops below (b < 2, b < NB) keep it in registers
    for (int ky = 0; ky < s.KH; ++ky) {
        const int ih = ih0 + ky;
        if (ih < 0 || ih >= s.H) continue;
        for (int kx = 0; kx < s.KW; ++kx) {
            const int iw = iw0 + kx;
            if (iw < 0 || iw >= s.W) continue;
            const int t = ky * s.KW + kx;
            const u32* a = act + (((long long)n * s.H + ih) * s.W + iw) * (4LL * s.Cw);
            for (int cw = 0; cw < s.Cw; ++cw) {
                const uint4 q = *reinterpret_cast<const uint4*>(a + 4 * cw);
                const int total_q = nibble_sum(q.x) + nibble_sum(q.y) + nibble_sum(q.z) + nibble_sum(q.w);
#pragma unroll
                for (int b = 0; b < 2; ++b) {
                    if (b >= NB) break;
                    const u32 bits = wbits[(((long long)b * s.C_out + o) * T + t) * s.Cw + cw];
                    const int pos = nibble_sum(q.x & bits_to_nibble_mask(bits)) +
                                    nibble_sum(q.y & bits_to_nibble_mask(bits >> 8)) +
                                    nibble_sum(q.z & bits_to_nibble_mask(bits >> 16)) +
                                    nibble_sum(q.w & bits_to_nibble_mask(bits >> 24));
                    acc[b] += 2 * pos - total_q;
                }
            }
        }
    }
    int v[2] = {0, 0};
#pragma unroll
    for (int b = 0; b < 2; ++b) {
        if (b >= NB) break;
        const int corr = valid_row_sum(rsum + ((long long)b * s.C_out + o) * T, ih0, iw0, s.H, s.W, s.KH, s.KW);
        v[b] = acc[b] - s.z * corr;
    }
    const float y = NB == 2 ? epilogue<2>(v[0], v[1], o, s.C_out, scale, bias)
                            : epilogue<1>(v[0], 0, o, s.C_out, scale, bias);
    store_out<F16>(out, m * s.C_out + o, y);
}

extern "C" __global__ void w1a4_conv_simt_f16(const u32* act, const u32* wbits, const int* rsum, const float* scale,
                                              const float* bias, void* out, CONV_SHAPE_PARAMS, int NB) {
    conv_simt<true>(act, wbits, rsum, scale, bias, out, CONV_SHAPE_ARGS, NB);
}
extern "C" __global__ void w1a4_conv_simt_f32(const u32* act, const u32* wbits, const int* rsum, const float* scale,
                                              const float* bias, void* out, CONV_SHAPE_PARAMS, int NB) {
    conv_simt<false>(act, wbits, rsum, scale, bias, out, CONV_SHAPE_ARGS, NB);
}

// ---- tensor-core kernel -------------------------------------------------------------------------
// Block tile 128 pixels x 128 GEMM columns, K step = one tap x 32 channels. 4 warps as 2 (M) x 2 (N),
// warp tile 64 x 64 = 4 x 8 mma m16n8k32: per step a warp issues 32 mma against 4 ldmatrix.x4 (A) and
// 4 16-byte shared loads (B), so the main loop spends few instructions per mma (tools/kernel_sass.py
// counts them). Two shared stages, one barrier a step:
//   A  each thread loads its pixel's 32 codes of the next step (one 16-byte global load of packed
//      nibbles) before the mma of the current step, and stores them as bytes after it;
//   B  the weights as s8 +-1 in fragment order, expanded once at pack time
//      (binarydm.kernels.packing.mma_weight_fragments), copied with cp.async: nothing to expand here.
//
// Fragments of mma.m16n8k32.row.col.s32.u8.s8.s32 (PTX ISA, "Matrix Fragments for mma.m16n8k32"),
// g = lane / 4, t = lane % 4:
//   A 16x32 row-major: a0 row g, k 4t..4t+3 | a1 row g+8 | a2 row g, k 16+4t.. | a3 row g+8, k 16+4t..
//   B 32x8 column-major: b0 col g, k 4t..4t+3 | b1 col g, k 16+4t..
//   C 16x8: c0, c1 row g, cols 2t, 2t+1 | c2, c3 row g+8, cols 2t, 2t+1
// Shared A: pixel row r is 32 bytes, half h (k 16h .. 16h + 15) at unit 2r + (h ^ ((r >> 2) & 1)), so the
// 8 rows one ldmatrix matrix reads fall in 8 distinct 16-byte bank groups. ldmatrix.x4 of m tile i:
// lane l gives row 16i + (l % 8) + 8 ((l / 8) % 2), half l / 16, and receives a0, a1, a2, a3 above.
// Shared B: unit u = (warp_n * 4 + p) * 32 + lane holds {b0, b1} of n tiles 2p and 2p + 1 of that lane.

__device__ __forceinline__ void mma_u8s8(int (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(W1A4_HOST_EMU)
    const u32 b[2] = {b0, b1};
    w1a4_emu_mma_m16n8k32_u8s8(c, a, b);  // a warp-collective emulation from the PTX fragment layouts
#else
    // Never launched below sm_80 (the loader picks the CUDA-core kernel there); keeps the file building.
    (void)a; (void)b0; (void)b1; __trap();
#endif
}

template <int NB, bool F16>
__device__ void conv_mma(const u32* __restrict__ act, const uint4* __restrict__ wfrag, const int* __restrict__ rsum,
                         const float* __restrict__ scale, const float* __restrict__ bias, void* __restrict__ out,
                         ConvShape s) {
    __shared__ __align__(16) uint4 sm[2 * MMA_STAGE_UNITS];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int warp_m = warp & 1, warp_n = warp >> 1;
    const long long M = (long long)s.N * s.OH * s.OW;
    const long long m0 = (long long)blockIdx.x * MMA_BM;
    const int cb = blockIdx.y;
    const int T = s.KH * s.KW;
    const int Ksteps = T * s.Cw;
    const int words_per_pixel = 4 * s.Cw;

    // The K steps' (tap, word offset from a pixel's top-left tap), tabled once per block so that the
    // loop neither divides nor keeps counters: offset = (ky W + kx) words_per_pixel + 4 cw for step
    // k = tap Cw + cw. Entry Ksteps is the pipeline's prefetch past the last step: tap 31, never valid.
    __shared__ int2 tab[MMA_MAX_STEPS + 1];
    for (int k = tid; k <= Ksteps; k += MMA_THREADS) {
        const int tap = k / s.Cw, cw = k - tap * s.Cw;
        const int ky = tap / s.KW, kx = tap - ky * s.KW;
        tab[k] = k < Ksteps ? make_int2(tap, (ky * s.W + kx) * words_per_pixel + 4 * cw) : make_int2(31, 0);
    }
    // A loader: thread tid -> pixel row tid, its 32 codes of a step (4 packed words, 16 bytes). a_row
    // points at the row's top-left tap (which may lie outside the image: it is only dereferenced at
    // valid taps); bit t of tap_ok says whether tap t of the pixel lies inside the image (T <= 31).
    u32 tap_ok = 0u;
    const u32* a_row = act;
    {
        const long long m = m0 + tid;
        if (m < M) {
            const int ow = (int)(m % s.OW);
            const int oh = (int)((m / s.OW) % s.OH);
            const int n = (int)(m / ((long long)s.OW * s.OH));
            const int ih0 = oh * s.SH - s.PH, iw0 = ow * s.SW - s.PW;
            a_row = act + (((long long)n * s.H + ih0) * s.W + iw0) * words_per_pixel;
            for (int ky = 0; ky < s.KH; ++ky)
                for (int kx = 0; kx < s.KW; ++kx)
                    if ((unsigned)(ih0 + ky) < (unsigned)s.H && (unsigned)(iw0 + kx) < (unsigned)s.W)
                        tap_ok |= 1u << (ky * s.KW + kx);
        }
    }
    uint4 a_reg = make_uint4(0u, 0u, 0u, 0u);
    auto load_a = [&](int k) {
        const int2 e = tab[k];
        // Outside the image the code is 0: the epilogue's border correction accounts for it.
        a_reg = (tap_ok >> e.x) & 1u ? *reinterpret_cast<const uint4*>(a_row + e.y) : make_uint4(0u, 0u, 0u, 0u);
    };
    const int a_swz = (tid >> 2) & 1;
    const sref smem0 = sref_of(sm);
    const sref a_dst0 = sref_pin(sref_add(smem0, 2 * tid + a_swz));  // stage 0, k 0..15; k 16..31 below
    const sref a_dst1 = sref_pin(sref_add(smem0, 2 * tid + (a_swz ^ 1)));
    auto store_a = [&](int buf) {
        uint4 lo, hi;
        nibbles_to_byte_pair(a_reg.x, lo.x, lo.y);
        nibbles_to_byte_pair(a_reg.y, lo.z, lo.w);
        nibbles_to_byte_pair(a_reg.z, hi.x, hi.y);
        nibbles_to_byte_pair(a_reg.w, hi.z, hi.w);
        sts128(sref_add(a_dst0, buf * MMA_STAGE_UNITS), lo);
        sts128(sref_add(a_dst1, buf * MMA_STAGE_UNITS), hi);
    };
    // B loader: units tid and tid + 128 of the step's 256 (contiguous in wfrag: coalesced). The prefetch
    // past a block's last step reads the next block's first (or, for the last block, the zero step
    // mma_weight_fragments appends): never used.
    const uint4* b_src = wfrag + (long long)cb * Ksteps * MMA_B_UNITS + tid;
    const sref b_dst = sref_pin(sref_add(smem0, MMA_A_UNITS + tid));
    auto load_b = [&](int buf) {
        cp_async16(sref_add(b_dst, buf * MMA_STAGE_UNITS), b_src, true);
        cp_async16(sref_add(b_dst, buf * MMA_STAGE_UNITS + MMA_THREADS), b_src + MMA_THREADS, true);
        b_src += MMA_B_UNITS;
    };

    int acc[4][8][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

    // ldmatrix addresses: this lane's row of m tile 0 and its half (m tile i is 32 units further); the
    // B units of this lane (n tile pair p is 32 units further).
    const int lr = lane & 7;
    const sref a_frag = sref_pin(sref_add(smem0, 2 * (warp_m * 64 + lr + 8 * ((lane >> 3) & 1)) +
                                                      ((lane >> 4) ^ ((lr >> 2) & 1))));
    const sref b_frag = sref_pin(sref_add(smem0, MMA_A_UNITS + warp_n * 128 + lane));

    // Step k on stage buf (a constant after inlining, so every shared address is a register plus an
    // immediate); step k + 1's operands go to the other stage, which was last read in the step before,
    // ahead of the barrier that ended it. After the last step this prefetch loads data nobody reads,
    // which costs less than a branch around it in every step.
    auto step = [&](int buf, int k) {
        load_a(k + 1);
        load_b(buf ^ 1);
        cp_async_commit();
        u32 a[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) ldsm_x4(a[i], sref_add(a_frag, buf * MMA_STAGE_UNITS + 32 * i));
        u32 b[8][2];
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const uint4 q = lds128(sref_add(b_frag, buf * MMA_STAGE_UNITS + 32 * p));
            b[2 * p][0] = q.x, b[2 * p][1] = q.y, b[2 * p + 1][0] = q.z, b[2 * p + 1][1] = q.w;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) mma_u8s8(acc[i][j], a[i], b[j][0], b[j][1]);
        store_a(buf ^ 1);
        cp_async_wait<0>();
        __syncthreads();
    };

    __syncthreads();  // the step table
    load_a(0);
    load_b(0);
    cp_async_commit();
    store_a(0);
    cp_async_wait<0>();
    __syncthreads();
    // Two steps per iteration, one per stage.
#pragma unroll 1
    for (int k = 0; k < Ksteps; k += 2) {
        step(0, k);
        if (k + 1 < Ksteps) step(1, k + 1);
    }

    // Epilogue: border correction, scales, bias, store NHWC. A pixel whose taps all lie inside the image
    // takes the full sum of R over the taps, made once per column here; only border pixels sum the valid
    // taps. The thread's column pair (col, col + 1) is both bases of channel col / 2 (two bases), or
    // channels col and col + 1 (one base).
    const int col0 = cb * MMA_BN + warp_n * 64 + 2 * t4;  // even; n tile j adds 8 j
    int r_full[8][2];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int col = col0 + 8 * j;
            const int o = NB == 2 ? col >> 1 : col + e;
            r_full[j][e] = 0;
            if (o < s.C_out) {
                const int* r = rsum + ((long long)(NB == 2 ? e * s.C_out : 0) + o) * T;
#pragma unroll 1
                for (int t = 0; t < T; ++t) r_full[j][e] += r[t];
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const long long m = m0 + warp_m * 64 + i * 16 + g + 8 * h;
            if (m >= M) continue;
            const int ow = (int)(m % s.OW);
            const int oh = (int)((m / s.OW) % s.OH);
            const int ih0 = oh * s.SH - s.PH, iw0 = ow * s.SW - s.PW;
            const bool inside = ih0 >= 0 && iw0 >= 0 && ih0 + s.KH <= s.H && iw0 + s.KW <= s.W;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int col = col0 + 8 * j;
                const int c0 = acc[i][j][2 * h], c1 = acc[i][j][2 * h + 1];
                if (NB == 2) {
                    const int o = col >> 1;
                    if (o >= s.C_out) continue;
                    const int r0 = inside ? r_full[j][0]
                                          : valid_row_sum(rsum + (long long)o * T, ih0, iw0, s.H, s.W, s.KH, s.KW);
                    const int r1 = inside ? r_full[j][1]
                                          : valid_row_sum(rsum + ((long long)s.C_out + o) * T, ih0, iw0, s.H, s.W,
                                                          s.KH, s.KW);
                    store_out<F16>(out, m * s.C_out + o,
                                   epilogue<2>(c0 - s.z * r0, c1 - s.z * r1, o, s.C_out, scale, bias));
                } else {
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int o = col + e;
                        if (o >= s.C_out) continue;
                        const int r = inside ? r_full[j][e]
                                             : valid_row_sum(rsum + (long long)o * T, ih0, iw0, s.H, s.W, s.KH, s.KW);
                        store_out<F16>(out, m * s.C_out + o,
                                       epilogue<1>((e ? c1 : c0) - s.z * r, 0, o, s.C_out, scale, bias));
                    }
                }
            }
        }
    }
}

#define W1A4_MMA_ENTRY(NAME, NB, F16)                                                                   \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS)                                           \
    NAME(const u32* act, const uint4* wfrag, const int* rsum, const float* scale, const float* bias,    \
         void* out, CONV_SHAPE_PARAMS) {                                                                 \
        conv_mma<NB, F16>(act, wfrag, rsum, scale, bias, out, CONV_SHAPE_ARGS);                          \
    }
W1A4_MMA_ENTRY(w1a4_conv_mma_nb1_f16, 1, true)
W1A4_MMA_ENTRY(w1a4_conv_mma_nb1_f32, 1, false)
W1A4_MMA_ENTRY(w1a4_conv_mma_nb2_f16, 2, true)
W1A4_MMA_ENTRY(w1a4_conv_mma_nb2_f32, 2, false)

// ---- activation quantization and packing --------------------------------------------------------
// One thread per packed word (8 channels of one pixel), each code lsq_code (w1a4_common.cuh). The
// input is read in its own dtype, so the launcher makes no float32 copy of it; the step is read from
// device memory, so the launcher never syncs to fetch it.
template <int IN>
__device__ void quantize_pack(const void* __restrict__ x, u32* __restrict__ out, int N, int C, int H, int W,
                              long long sN, long long sC, long long sH, long long sW, int words_per_pixel,
                              const float* __restrict__ step_ptr, int qn, int qp) {
    const long long total = (long long)N * H * W * words_per_pixel;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const float step = *step_ptr;
    const int word = (int)(idx % words_per_pixel);
    const long long pix = idx / words_per_pixel;
    const int w = (int)(pix % W);
    const int h = (int)((pix / W) % H);
    const int n = (int)(pix / ((long long)W * H));
    u32 packed = 0u;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int c = word * 8 + j;
        if (c < C) packed |= lsq_code<IN>(x, n * sN + c * sC + h * sH + w * sW, step, qn, qp) << (4 * j);
    }
    out[idx] = packed;
}

#define W1A4_PACK_ENTRY(NAME, IN)                                                                       \
    extern "C" __global__ void NAME(const void* x, u32* out, int N, int C, int H, int W, long long sN,  \
                                    long long sC, long long sH, long long sW, int words_per_pixel,       \
                                    const float* step, int qn, int qp) {                                 \
        quantize_pack<IN>(x, out, N, C, H, W, sN, sC, sH, sW, words_per_pixel, step, qn, qp);            \
    }
W1A4_PACK_ENTRY(w1a4_quantize_pack_f32, IN_F32)
W1A4_PACK_ENTRY(w1a4_quantize_pack_f16, IN_F16)
W1A4_PACK_ENTRY(w1a4_quantize_pack_bf16, IN_BF16)
