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
//                                      on Hopper the 8-bit path is the dense integer one, there is no
//                                      4-bit mma throughput published for sm_90)
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

#define MMA_BM 128   // output pixels per block
#define MMA_BN 64    // GEMM columns per block
#define MMA_THREADS 256
#define SMEM_ROW 12  // u32 words per shared row: 8 data (32 bytes) + 4 pad, so the fragment reads
                     // (row g, word t) of a warp hit 32 distinct banks: (12 g + t) mod 32.

// ---- small integer helpers ----------------------------------------------------------------------

// Four nibbles (bits 0..15 of x, channel order) -> four bytes, one code per byte.
W1A4_HD u32 nibbles_to_bytes(u32 x) {
    x &= 0xFFFFu;
    x = (x | (x << 8)) & 0x00FF00FFu;
    x = (x | (x << 4)) & 0x0F0F0F0Fu;
    return x;
}

// Four weight bits (bit k = channel k) -> four signed bytes, +1 for bit 1 and -1 (0xFF) for bit 0.
W1A4_HD u32 bits_to_pm1_bytes(u32 b) {
    b &= 0xFu;
    b = (b | (b << 14)) & 0x00030003u;
    b = (b | (b << 7)) & 0x01010101u;
    // Each byte is 0 or 1; times 0xFE it is 0 or 0xFE with no carry between bytes.
    return 0xFFFFFFFFu ^ (b * 0xFEu);
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
// Block tile 128 pixels x 64 columns, K step = one tap x 32 channels (one weight word per column, four
// activation words per pixel). 8 warps as 4 (M) x 2 (N), warp tile 32 x 32 = 2 x 4 mma m16n8k32.
// Two shared stages; the next step's global words are loaded into registers before the mma of the
// current step, expanded (nibbles -> u8 codes, bits -> s8 +-1) and stored after it: one barrier a step.
//
// Fragments of mma.m16n8k32.row.col.s32.u8.s8.s32 (PTX ISA, "Matrix Fragments for mma.m16n8k32"),
// g = lane / 4, t = lane % 4:
//   A 16x32 row-major: a0 row g, k 4t..4t+3 | a1 row g+8 | a2 row g, k 16+4t.. | a3 row g+8, k 16+4t..
//   B 32x8 column-major: b0 col g, k 4t..4t+3 | b1 col g, k 16+4t..
//   C 16x8: c0, c1 row g, cols 2t, 2t+1 | c2, c3 row g+8, cols 2t, 2t+1
// Shared rows hold one pixel (A) or one column (B) with k contiguous, so every fragment register is one
// aligned 32-bit shared load: word t (k 4t..) or word t+4 (k 16+4t..) of the row.

__device__ __forceinline__ void mma_u8s8(int (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(W1A4_HOST_EMU)
    w1a4_emu_mma_m16n8k32_u8s8(c, a, b);  // a warp-collective emulation from the PTX fragment layouts
#else
    // Never launched below sm_80 (the loader picks the CUDA-core kernel there); keeps the file building.
    (void)a; (void)b; __trap();
#endif
}

template <int NB, bool F16>
__device__ void conv_mma(const u32* __restrict__ act, const u32* __restrict__ wbits, const int* __restrict__ rsum,
                         const float* __restrict__ scale, const float* __restrict__ bias, void* __restrict__ out,
                         ConvShape s) {
    __shared__ __align__(16) u32 As[2][MMA_BM][SMEM_ROW];
    __shared__ __align__(16) u32 Bs[2][MMA_BN][SMEM_ROW];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int warp_m = warp & 3, warp_n = warp >> 2;
    const long long M = (long long)s.N * s.OH * s.OW;
    const int Ncols = NB * s.C_out;
    const long long m0 = (long long)blockIdx.x * MMA_BM;
    const int j0 = blockIdx.y * MMA_BN;
    const int T = s.KH * s.KW;
    const int Ksteps = T * s.Cw;
    const int words_per_pixel = 4 * s.Cw;

    // A loader: thread -> (pixel row tid / 2, half tid % 2 = 16 channels = 2 packed words).
    const int a_row = tid >> 1, a_half = tid & 1;
    const long long a_m = m0 + a_row;
    int a_n = 0, a_ih0 = 0, a_iw0 = 0;
    const bool a_in = a_m < M;
    if (a_in) {
        const int ow = (int)(a_m % s.OW);
        const int oh = (int)((a_m / s.OW) % s.OH);
        a_n = (int)(a_m / ((long long)s.OW * s.OH));
        a_ih0 = oh * s.SH - s.PH;
        a_iw0 = ow * s.SW - s.PW;
    }
    // B loader: threads 0..63 -> one GEMM column each.
    const bool b_loader = tid < MMA_BN;
    const int b_col = j0 + tid;
    const bool b_in = b_loader && b_col < Ncols;
    const u32* b_ptr = wbits;
    if (b_in) {
        const int b = b_col % NB, o = b_col / NB;
        b_ptr = wbits + ((long long)b * s.C_out + o) * T * s.Cw;
    }

    uint2 a_reg = make_uint2(0u, 0u);
    u32 b_reg = 0u;
    // The (tap, channel word) of the next load advance by one step per call, so the loop divides nothing:
    // k = (ky * KW + kx) * Cw + cw, and the activation offset of the step is tap_off + 4 cw past the pixel.
    const long long a_pix = (((long long)a_n * s.H + a_ih0) * s.W + a_iw0) * words_per_pixel + 2 * a_half;
    int ld_cw = 0, ld_kx = 0, ld_ky = 0, ld_tap_off = 0;
    auto load_global = [&](int k) {
        const int ih = a_ih0 + ld_ky, iw = a_iw0 + ld_kx;
        // Outside the image the code is 0: the epilogue's border correction accounts for it.
        if (a_in && ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) {
            a_reg = *reinterpret_cast<const uint2*>(act + a_pix + ld_tap_off + 4 * ld_cw);
        } else {
            a_reg = make_uint2(0u, 0u);
        }
        if (b_loader) b_reg = b_in ? b_ptr[k] : 0u;  // a column's words are contiguous in k
        if (++ld_cw == s.Cw) {
            ld_cw = 0;
            ld_tap_off += words_per_pixel;
            if (++ld_kx == s.KW) {
                ld_kx = 0;
                ++ld_ky;
                ld_tap_off += (s.W - s.KW) * words_per_pixel;
            }
        }
    };
    auto store_shared = [&](int buf) {
        uint4 lo, hi;
        lo.x = nibbles_to_bytes(a_reg.x);
        lo.y = nibbles_to_bytes(a_reg.x >> 16);
        lo.z = nibbles_to_bytes(a_reg.y);
        lo.w = nibbles_to_bytes(a_reg.y >> 16);
        *reinterpret_cast<uint4*>(&As[buf][a_row][4 * a_half]) = lo;
        if (b_loader) {
            lo.x = bits_to_pm1_bytes(b_reg);
            lo.y = bits_to_pm1_bytes(b_reg >> 4);
            lo.z = bits_to_pm1_bytes(b_reg >> 8);
            lo.w = bits_to_pm1_bytes(b_reg >> 12);
            hi.x = bits_to_pm1_bytes(b_reg >> 16);
            hi.y = bits_to_pm1_bytes(b_reg >> 20);
            hi.z = bits_to_pm1_bytes(b_reg >> 24);
            hi.w = bits_to_pm1_bytes(b_reg >> 28);
            *reinterpret_cast<uint4*>(&Bs[buf][tid][0]) = lo;
            *reinterpret_cast<uint4*>(&Bs[buf][tid][4]) = hi;
        }
    };

    int acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

    load_global(0);
    store_shared(0);
    __syncthreads();
    for (int k = 0; k < Ksteps; ++k) {
        const int buf = k & 1;
        if (k + 1 < Ksteps) load_global(k + 1);
        u32 a[2][4], b[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = warp_m * 32 + i * 16 + g;
            a[i][0] = As[buf][r][t4];
            a[i][1] = As[buf][r + 8][t4];
            a[i][2] = As[buf][r][t4 + 4];
            a[i][3] = As[buf][r + 8][t4 + 4];
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = warp_n * 32 + j * 8 + g;
            b[j][0] = Bs[buf][c][t4];
            b[j][1] = Bs[buf][c][t4 + 4];
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) mma_u8s8(acc[i][j], a[i], b[j]);
        // The other stage was last read in step k - 1, before the barrier that ended it.
        if (k + 1 < Ksteps) store_shared(buf ^ 1);
        __syncthreads();
    }

    // Epilogue: border correction, scales, bias, store NHWC. A pixel whose taps all lie inside the image
    // takes the full sum of R over the taps, made once per column here; only border pixels sum the valid
    // taps. The thread's column pair (col, col + 1) is both bases of channel col / 2 (two bases), or
    // channels col and col + 1 (one base).
    int r_full[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = j0 + warp_n * 32 + j * 8 + 2 * t4;  // even
#pragma unroll
        for (int e = 0; e < 2; ++e) {
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
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const long long m = m0 + warp_m * 32 + i * 16 + g + 8 * h;
            if (m >= M) continue;
            const int ow = (int)(m % s.OW);
            const int oh = (int)((m / s.OW) % s.OH);
            const int ih0 = oh * s.SH - s.PH, iw0 = ow * s.SW - s.PW;
            const bool inside = ih0 >= 0 && iw0 >= 0 && ih0 + s.KH <= s.H && iw0 + s.KW <= s.W;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int col = j0 + warp_n * 32 + j * 8 + 2 * t4;  // even
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
    NAME(const u32* act, const u32* wbits, const int* rsum, const float* scale, const float* bias,      \
         void* out, CONV_SHAPE_PARAMS) {                                                                 \
        conv_mma<NB, F16>(act, wbits, rsum, scale, bias, out, CONV_SHAPE_ARGS);                          \
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
