// Device code shared by cuda/w1a4_conv.cu (s8 x s8 and CUDA-core kernels) and cuda/w1a4_bmma.cu
// (the bit-plane kernel): the fp16 conversions, the float32 epilogue, the nibble sum, and the LSQ
// quantization of an input element to its 4-bit code. One copy, so that both kernels round exactly as
// binarydm/kernels/reference.py and binarydm/kernels/packing.py do.
//
// It also holds the PTX helpers of both tensor-core kernels (32-bit shared addresses, cp.async,
// ldmatrix, 16-byte shared loads and stores), each with its host-emulation branch.
//
// Included by both .cu files with #include "w1a4_common.cuh": nvcc finds it beside them; the CuPy
// loader (binarydm/kernels/cuda.py) hands NVRTC the .cu text with this file spliced in; the host
// emulation (tools/kernel_emu/) compiles both .cu files in one translation unit, hence the guard.
//
// The places that use PTX directly (these two conversions and the mma instructions of each kernel)
// have a host branch: tools/kernel_emu/ compiles the kernels with g++ and -DW1A4_HOST_EMU, its shim
// emulating them, to run the kernels bit for bit on the CPU (tests/test_kernel_emu.py).
#ifndef W1A4_COMMON_CUH
#define W1A4_COMMON_CUH

typedef unsigned int u32;
typedef unsigned short u16;

// Sum of the eight nibbles of x (at most 120). A host function too, so that a host program can check
// it exhaustively (tests/test_kernels.py) without a GPU.
__host__ __device__ __forceinline__ int nibble_sum(u32 x) {
    const u32 bytes = (x & 0x0F0F0F0Fu) + ((x >> 4) & 0x0F0F0F0Fu);
    return (int)((bytes * 0x01010101u) >> 24);
}

// cvt.rn.f16.f32: round to nearest even.
__device__ __forceinline__ u16 f32_to_f16_bits(float f) {
#ifdef W1A4_HOST_EMU
    return w1a4_emu_f32_to_f16_bits(f);
#else
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

// y as the output element: its fp16 bits, or the float itself.
template <bool F16>
__device__ __forceinline__ auto to_out(float y) {
    if constexpr (F16) {
        return f32_to_f16_bits(y);
    } else {
        return y;
    }
}

template <bool F16>
__device__ __forceinline__ void store_out(void* out, long long idx, float y) {
    if (F16) {
        reinterpret_cast<u16*>(out)[idx] = f32_to_f16_bits(y);
    } else {
        reinterpret_cast<float*>(out)[idx] = y;
    }
}

// Two adjacent outputs (idx even) in one store: 4 bytes (fp16) or 8 (float32).
template <bool F16>
__device__ __forceinline__ void store_out2(void* out, long long idx, float y0, float y1) {
    if (F16) {
        reinterpret_cast<u32*>(out)[idx >> 1] = (u32)f32_to_f16_bits(y0) | ((u32)f32_to_f16_bits(y1) << 16);
    } else {
        reinterpret_cast<float2*>(out)[idx >> 1] = make_float2(y0, y1);
    }
}

// The epilogue of every conv kernel: one correctly rounded float32 operation at a time (explicit _rn
// intrinsics, so that no fused multiply-add changes the rounding against the PyTorch reference).
//   y = fl(fl(fl(v_0 * s_0[o]) + fl(v_1 * s_1[o])) + bias[o])
template <int NB>
__device__ __forceinline__ float epilogue(int v0, int v1, int o, int C_out, const float* __restrict__ scale,
                                          const float* __restrict__ bias) {
    float y = __fmul_rn(__int2float_rn(v0), scale[o]);
    if (NB == 2) y = __fadd_rn(y, __fmul_rn(__int2float_rn(v1), scale[C_out + o]));
    if (bias != nullptr) y = __fadd_rn(y, bias[o]);
    return y;
}

// What a pack kernel reads: a float tensor in its own dtype (converting fp16/bf16 to float32 is
// exact, so the launcher makes no float32 copy), or packed nibble codes (the bit-plane pack kernel).
enum { IN_F32 = 0, IN_F16 = 1, IN_BF16 = 2, IN_CODES = 3 };

// 2^x and 1/x by the MUFU unit (ex2.approx.ftz, rcp.approx.ftz: about 2 ulp, denormals flushed to
// zero); the host emulation computes them exactly.
__device__ __forceinline__ float exp2_approx(float x) {
#ifdef W1A4_HOST_EMU
    return exp2f(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

__device__ __forceinline__ float rcp_approx(float x) {
#ifdef W1A4_HOST_EMU
    return 1.0f / x;
#else
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// The signed LSQ code q in [qn, qp] of SiLU(y), y = a v + b (t = (a, b): a GroupNorm's affine of the
// channel): SiLU as y / (1 + 2^(-y log2 e)) with the MUFU exponential and reciprocal, the division by the
// step as a multiplication by its reciprocal. Within a few ulp of the float32 ops: a value that close to a
// step boundary may land one code away from PyTorch's.
__device__ __forceinline__ int silu_lsq_code(float v, float2 t, float inv_step, float lo, float hi) {
    const float y = __fmaf_rn(v, t.x, t.y);
    const float s = __fmul_rn(y, rcp_approx(__fadd_rn(1.0f, exp2_approx(__fmul_rn(y, -1.4426950408889634f)))));
    return (int)rintf(fminf(fmaxf(__fmul_rn(s, inv_step), lo), hi));
}

// The bits of an fp16 (IN_F16) or bf16 (IN_BF16) value as float32.
template <int IN>
__device__ __forceinline__ float f32_of_bits(u16 h) {
    if (IN == IN_BF16) return __uint_as_float((u32)h << 16);
#ifdef W1A4_HOST_EMU
    return w1a4_emu_f16_bits_to_f32(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

template <int IN>
__device__ __forceinline__ float load_as_f32(const void* __restrict__ x, long long i) {
    if (IN == IN_F32) return reinterpret_cast<const float*>(x)[i];
    return f32_of_bits<IN>(reinterpret_cast<const u16*>(x)[i]);
}

// LSQ code of element i of x: rint(clamp(x / d, qn, qp)) - qn in 0 .. qp - qn, the rounding of
// torch.round (half to even) and the same float32 division as the PyTorch packer.
__device__ __forceinline__ u32 lsq_code_of(float value, float step, int qn, int qp) {
    const float v = __fdiv_rn(value, step);
    const float q = rintf(fminf(fmaxf(v, (float)qn), (float)qp));
    return (u32)((int)q - qn);
}

template <int IN>
__device__ __forceinline__ u32 lsq_code(const void* __restrict__ x, long long i, float step, int qn, int qp) {
    return lsq_code_of(load_as_f32<IN>(x, i), step, qn, qp);
}

// ---- PTX of both conv kernels, each with the host branch that tools/kernel_emu/shim.h provides ----
// A shared-memory location: its 32-bit shared-window address on the GPU (so that address arithmetic
// stays 32-bit), a pointer on the host.
#ifdef W1A4_HOST_EMU
typedef uint4* sref;
// The emulated wgmma descriptors take addresses relative to the shared array a kernel starts from.
__device__ __forceinline__ sref sref_of(uint4* p) {
    w1a4_emu_set_window(p);
    return p;
}
__device__ __forceinline__ sref sref_add(sref r, int units) { return r + units; }
#else
typedef u32 sref;
__device__ __forceinline__ sref sref_of(uint4* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ sref sref_add(sref r, int units) { return r + 16u * (u32)units; }
#endif

__device__ __forceinline__ void cp_async16(sref smem, const void* gmem, bool valid) {
#ifdef W1A4_HOST_EMU
    w1a4_emu_cp_async16(smem, gmem, valid);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // src-size 0 reads nothing and fills the 16 bytes with zeros (taps outside the image, K padding).
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(valid ? 16 : 0));
#else
    (void)smem; (void)gmem; (void)valid; __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef W1A4_HOST_EMU
    w1a4_emu_cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef W1A4_HOST_EMU
    w1a4_emu_cp_async_wait(N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// The same reference, opaque to the compiler: it is kept in a register instead of being recomputed
// from threadIdx inside the main loop (ptxas rematerializes such addresses when registers run high).
__device__ __forceinline__ sref sref_pin(sref r) {
#ifndef W1A4_HOST_EMU
    asm volatile("mov.b32 %0, %0;" : "+r"(r));
#endif
    return r;
}

// 16-byte shared-memory store and load through a 32-bit shared address (one register, immediate
// offsets), so that the compiler need not rebuild a generic pointer inside the main loop.
__device__ __forceinline__ void sts128(sref a, const uint4& v) {
#ifdef W1A4_HOST_EMU
    *a = v;
#else
    asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};\n" ::"r"(a), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
#endif
}

__device__ __forceinline__ uint4 lds128(sref a) {
#ifdef W1A4_HOST_EMU
    return *a;
#else
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(a)
                 : "memory");
    return v;
#endif
}

// ldmatrix.m8n8.x4.b16: lane l gives the address of row l % 8 of matrix l / 8 (16 bytes each) and
// receives word l % 4 of row l / 4 of each of the four matrices.
__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], sref row) {
#ifdef W1A4_HOST_EMU
    w1a4_emu_ldmatrix_x4(r, row);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(row));
#else
    (void)row; r[0] = r[1] = r[2] = r[3] = 0u; __trap();
#endif
}

#endif  // W1A4_COMMON_CUH
