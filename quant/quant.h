// quant — QLoRA's 4-bit NormalFloat (NF4) frozen base weights, exactly as bitsandbytes'
// quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True) stores them.
//
// A (rows, cols) row-major fp32 matrix is quantized as ONE flat array of n = rows*cols
// values (bitsandbytes flattens the weight too), so blocks may straddle rows when cols is
// not a multiple of 64; every Llama projection has cols % 64 == 0 and then each row is
// cols/64 whole blocks.
//
//   level 1: blocks of 64 weights; absmax_b = max |w| over the block; each weight gets the
//            4-bit index of the nearest NF4 codebook value of w * (1/absmax_b), chosen by
//            bitsandbytes' dQuantizeNF4 decision tree (strict x > threshold, thresholds
//            are the float32 midpoints written in its source). Two codes per byte: element
//            2k in the HIGH nibble of byte k, element 2k+1 in the low nibble (an odd n pads
//            the last low nibble with the code of 0.0).
//   level 2 (double quantization): offset = mean of all absmax_b (summed in float64 in a
//            fixed order, rounded once: independent of threads; the float32 torch mean
//            bitsandbytes calls can differ from it by an ulp); the centred values
//            absmax_b - offset are quantized with bitsandbytes' blockwise 8-bit scheme:
//            blocks of 256, scale2 = max |centred| per block (fp32), each value gets the
//            index into the signed dynamic map (create_dynamic_map(signed=True), 256 values)
//            chosen by bitsandbytes' dQuantize (binary search + midpoint rule) applied to
//            centred * (1/scale2).
//   dequantize: absmax_b = code2[absmax_q[b]] * scale2[b/256] + offset   (fp32, no FMA)
//               w_i      = nf4[code_i] * absmax_{i/64}
//
// Storage: 4 + 8/64 + 32/(64*256) = 4.127 bits per weight (plus 4 bytes of offset and the
// 1 KiB map per matrix). An all-zero block (absmax 0) gets code 7 (0.0) everywhere, so it
// dequantizes to exact zeros. That is the one place where the codes differ from bitsandbytes'
// CUDA kernel: there 0 * (1/0) = NaN falls through its decision tree to code 0 (-1.0), and
// after double quantization the block comes back as -absmax' (the 8-bit reconstruction of
// 0, a small nonzero value) instead of 0. Dequantizing bitsandbytes' own codes is unaffected.
//
// In autograd an NF4 frozen weight is a Weight of type WT_NF4 whose data points at an
// Nf4Matrix: weight_row_f32 -> nf4_dequant_rows(m, r, 1, out); op_linear forward ->
// nf4_gemv for a few rows of x (decoding), nf4_matmul_xwt otherwise; its input gradient ->
// nf4_matmul_dyw (accumulate = 1).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "util/util.h"

#define NF4_BLOCK 64    // weights per absmax
#define NF4_BLOCK2 256  // absmax values per fp32 scale2 (double quantization)

typedef struct {
    int64_t rows, cols;   // (rows, cols) row-major; for a linear layer (OC, C), y = x Wᵀ
    int64_t n;            // rows * cols
    int64_t nblocks;      // ceil(n / 64): one absmax per block
    int64_t nblocks2;     // ceil(nblocks / 256): one scale2 per block of absmax values
    uint8_t *packed;      // ((n + 1) / 2) NF4 codes, first element of a pair in the high nibble
    uint8_t *absmax_q;    // (nblocks) 8-bit codes of absmax - offset, indices into code2
    float *scale2;        // (nblocks2) max |absmax - offset| of each block of 256
    float offset;         // mean of the absmax values
    float code2[256];     // the signed dynamic map (bitsandbytes' state2.code)
    const char *name;     // optional, for messages (not owned)
} Nf4Matrix;

// The 16 NF4 values (bitsandbytes' nf4 LUT, ascending; index = 4-bit code).
const float *nf4_codebook(void);
// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256
// ascending float32 values from -0.99297 to 1.0 (0.0 at index 127), bit-identical to the
// torch construction (see tests/ref_nf4.py).
const float *dyn_map_signed(void);

// w (rows, cols) fp32 -> *out. OpenMP-parallel over blocks; the result does not depend on
// the thread count. Errors (Err filled, *out left empty, returns -1): rows or cols < 1, a
// non-finite weight (message names `name`, the row and the column), out of memory.
int nf4_quantize(const float *w, int64_t rows, int64_t cols, const char *name, Nf4Matrix *out, Err *e);
void nf4_free(Nf4Matrix *m);  // frees the arrays; the struct itself is the caller's

// Heap bytes of a quantized (rows, cols) matrix: packed codes + absmax codes + scale2.
size_t nf4_bytes_for(int64_t rows, int64_t cols);
size_t nf4_bytes(const Nf4Matrix *m);

// Rows r0 .. r0+nrows-1 of the dequantized matrix -> out (nrows, cols).
// Parallel over blocks when called outside a parallel region (inside one it runs on the
// calling thread, so callers may give each thread its own row range).
void nf4_dequant_rows(const Nf4Matrix *m, int64_t r0, int64_t nrows, float *out);
// The sub-matrix rows [r0, r0+nrows) x columns [c0, c0+ncols) -> out (nrows, ncols) with
// leading dimension ldo (>= ncols). Same threading as nf4_dequant_rows.
void nf4_dequant_tile(const Nf4Matrix *m, int64_t r0, int64_t nrows, int64_t c0, int64_t ncols,
                      float *out, int64_t ldo);

// ---- fused matmuls: dequantize tiles into a scratch buffer and multiply with cblas_sgemm,
// never holding an fp32 copy of the whole W (tiles of about 16 MiB; the whole fp32 W when it
// is smaller than that). scratch: nf4_scratch_floats(w) floats, or
// NULL to allocate (and free) one internally (returns -1 with Err only if that fails).
// With N <= 4 (decoding) no scratch is used: dequantization is fused with the dot products
// (W streamed once through a 32 KiB per-thread buffer); the result is the same to float
// rounding and does not depend on the thread count.
size_t nf4_scratch_floats(const Nf4Matrix *w);

// x (N,C), W (OC,C) -> y (N,OC)      y = x Wᵀ  (accumulate: y += x Wᵀ)
// Tiles of whole rows of W: y[:, r0:r0+T] = x · W[r0:r0+T, :]ᵀ.
int nf4_matmul_xwt(const float *x, int64_t N, const Nf4Matrix *w, float *y, int accumulate,
                   float *scratch, Err *e);
// dy (N,OC), W (OC,C) -> dx (N,C)    dx = dy W  (accumulate: dx += dy W)
// Tiles of columns of W: dx[:, c0:c0+T] = dy · W[:, c0:c0+T].
int nf4_matmul_dyw(const float *dy, int64_t N, const Nf4Matrix *w, float *dx, int accumulate,
                   float *scratch, Err *e);

// ---- fused dequantize-and-dot for a few rows of x (decoding) ----------------------------
// x (N,C), W (OC,C) -> y (N,OC)      y = x Wᵀ  (accumulate: y += x Wᵀ)
// For small N (one token at a time): every block of 64 codes is unpacked in registers,
// looked up in the codebook (AVX-512 permute), multiplied with x and scaled by its absmax:
// the 4-bit weights are streamed once and never written out as floats. Parallel over rows
// of W. Needs cols % 64 == 0 (nf4_gemv_ok; every Llama projection) — callers use
// nf4_matmul_xwt otherwise. Sums in another order than sgemm: equal to dequantize + sgemv
// up to fp32 rounding. scratch: N*cols floats (x reordered to match the nibble order).
#define NF4_GEMV_MAX_N 8   // up to this many rows of x the fused kernel beats dequant + sgemm
int nf4_gemv_ok(const Nf4Matrix *w);
void nf4_gemv(const float *x, int64_t N, const Nf4Matrix *w, float *y, int accumulate, float *scratch);

// =========================================================================================
// ---- GGUF block formats (ggml / llama.cpp): weights that arrive already quantized --------
// =========================================================================================
// A quantized GGUF tensor is used in place, straight from the mapped file (no copy, no
// requantization). The interface mirrors NF4's: a small struct, row/tile dequantization,
// the same fused matmuls. Values are exactly those of llama.cpp's dequantize_row_* (the
// same fp32 operations in the same order, no FMA: bit-identical).
//
// A (rows, cols) row-major matrix (GGUF ne = [cols, rows]) is stored as `rows` consecutive
// rows of cols / QK blocks each; cols must be a multiple of QK. fp16 = IEEE half, little
// endian. Block layouts (bytes in order) and the value of element j of a block:
//   Q4_0 (QK 32, 18 B): d fp16, qs[16]           x = ((qs[j] & 15) - 8) * d  for j < 16,
//                                                    ((qs[j-16] >> 4) - 8) * d for j >= 16
//   Q4_1 (QK 32, 20 B): d, m fp16, qs[16]        x = q * d + m  (q the nibble as in Q4_0)
//   Q5_0 (QK 32, 22 B): d, qh u32 LE, qs[16]     q = nibble | (bit j of qh) << 4; (q - 16) * d
//   Q5_1 (QK 32, 24 B): d, m, qh u32, qs[16]     q as Q5_0; x = q * d + m
//   Q8_0 (QK 32, 34 B): d, qs[32] int8           x = qs[j] * d
//   Q4_K (QK 256, 144 B): d, dmin fp16, scales[12], qs[128]. 8 sub-blocks of 32 with 6-bit
//        scale sc_s and min m_s packed in scales[] (s < 4: sc = scales[s] & 63,
//        m = scales[s+4] & 63; s >= 4: sc = (scales[s+4] & 15) | (scales[s-4] >> 6) << 4,
//        m = (scales[s+4] >> 4) | (scales[s] >> 6) << 4). Sub-blocks 2g and 2g+1 share the
//        32 bytes qs[32g..32g+31]: low nibbles are sub-block 2g, high nibbles 2g+1;
//        x = (d * sc_s) * q - (dmin * m_s).
//   Q5_K (QK 256, 176 B): d, dmin, scales[12], qh[32], qs[128]: as Q4_K with a 5th bit:
//        element l of sub-block s adds 16 when bit s of qh[l] is set.
//   Q6_K (QK 256, 210 B): ql[128], qh[64], scales[16] int8, d fp16. Halves h = 0, 1 of 128
//        values use ql[64h..], qh[32h..]; for l < 32 the four 6-bit codes
//        (ql[l] & 15, ql[l+32] & 15, ql[l] >> 4, ql[l+32] >> 4) | 2 bits of qh[l] (bits 0-1,
//        2-3, 4-5, 6-7) << 4 give elements l, l+32, l+64, l+96 of the half; minus 32; element
//        i of the block has scale scales[i / 16]: x = (d * scales[i/16]) * (q - 32).
//
// Integration with autograd's Weight (as NF4): a WeightType whose data points at a
// GgqMatrix: weight_row_f32 -> ggq_dequant_rows(m, r, 1, out); op_linear forward ->
// ggq_matmul_xwt; its input gradient -> ggq_matmul_dyw (accumulate = 1).

// ggml type ids (the GgmlType values of model/model.h) of the supported formats.
#define GGQ_Q4_0 2
#define GGQ_Q4_1 3
#define GGQ_Q5_0 6
#define GGQ_Q5_1 7
#define GGQ_Q8_0 8
#define GGQ_Q4_K 12
#define GGQ_Q5_K 13
#define GGQ_Q6_K 14

typedef struct {
    int type;             // ggml type id, one of GGQ_*
    int64_t rows, cols;   // (rows, cols) row-major; for a linear layer (OC, C), y = x Wᵀ
    const void *data;     // rows * ggq_row_bytes(type, cols) bytes, not owned (usually the
                          // mapped GGUF); no alignment required
    const char *name;     // optional, for messages (not owned)
} GgqMatrix;

int ggq_supported(int type);          // 1 for the eight types above, else 0
const char *ggq_type_name(int type);  // "Q4_K"; NULL when unsupported
int ggq_block_elems(int type);        // QK: 32 or 256 (0 when unsupported)
size_t ggq_block_bytes(int type);     // bytes per block (0 when unsupported)
// Bytes of one row of cols values (whole blocks: cols rounded up to QK), of a matrix, of m.
size_t ggq_row_bytes(int type, int64_t cols);
size_t ggq_bytes_for(int type, int64_t rows, int64_t cols);
size_t ggq_bytes(const GgqMatrix *m);

// Validates a (rows, cols) matrix of ggml type `type` held in nbytes bytes: supported type,
// rows and cols >= 1, cols a multiple of the block size, nbytes == ggq_bytes_for(...).
// Returns 0, or -1 with one message naming `name`.
int ggq_check(int type, int64_t rows, int64_t cols, size_t nbytes, const char *name, Err *e);
// ggq_check, then fills *m (data is referenced, not copied).
int ggq_init(GgqMatrix *m, int type, int64_t rows, int64_t cols, const void *data, size_t nbytes,
             const char *name, Err *e);
// Reads every fp16 scale (d, and m / dmin) of m: -1 with a message naming the tensor, row
// and block when one is Inf or NaN (the weights would silently come out non-finite).
// O(blocks), parallel; touches every page of the data.
int ggq_check_scales(const GgqMatrix *m, Err *e);

// Rows r0 .. r0+nrows-1 dequantized -> out (nrows, cols).
// Parallel over blocks when called outside a parallel region (inside one it runs on the
// calling thread, so callers may give each thread its own row range).
void ggq_dequant_rows(const GgqMatrix *m, int64_t r0, int64_t nrows, float *out);
// The sub-matrix rows [r0, r0+nrows) x columns [c0, c0+ncols) -> out (nrows, ncols) with
// leading dimension ldo (>= ncols); any c0 / ncols (partial blocks are dequantized whole
// into a local buffer). Same threading as ggq_dequant_rows.
void ggq_dequant_tile(const GgqMatrix *m, int64_t r0, int64_t nrows, int64_t c0, int64_t ncols,
                      float *out, int64_t ldo);

// Fused matmuls, exactly as nf4_matmul_* (same tiling, same scratch rule, fused path for
// N <= 4). scratch: ggq_scratch_floats(w) floats, or NULL to allocate one internally.
size_t ggq_scratch_floats(const GgqMatrix *w);
// x (N,C), W (OC,C) -> y (N,OC)      y = x Wᵀ  (accumulate: y += x Wᵀ)
int ggq_matmul_xwt(const float *x, int64_t N, const GgqMatrix *w, float *y, int accumulate,
                   float *scratch, Err *e);
// dy (N,OC), W (OC,C) -> dx (N,C)    dx = dy W  (accumulate: dx += dy W)
int ggq_matmul_dyw(const float *dy, int64_t N, const GgqMatrix *w, float *dx, int accumulate,
                   float *scratch, Err *e);

// ---- GGUF quantizers (ggml_quantize.c): fp32 rows -> Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 ----------
// The blocks llama.cpp's reference quantizers (quantize_row_*_ref: llama-quantize's without an
// importance matrix) write for the same input, byte for byte. Per block of 32 values x:
//   Q8_0:        d = amax / 127;                 q = roundf(x·(1/d))  (half away from zero)
//   Q4_0 (Q5_0): d = s / -8 (-16), s the value of largest magnitude (the first on ties);
//                q = min(15 (31), trunc(x·(1/d) + 8.5 (16.5))): round half up, s -> code 0
//   Q4_1 (Q5_1): d = (max - min) / 15 (31), m = min; q = min(15 (31), trunc((x - m)·(1/d) + 0.5))
// 1/d is taken of the fp32 d (0 when d = 0: an all-zero block), d and m are stored as fp16
// rounded to nearest even. So before the clamp |x/d - code value| <= 1/2, and with the fp16
// d' (and m') ggq_dequant_rows gives |x - x'| <= |d|/2 + Q·|d - d'| (+ |m - m'|) + fp32
// rounding, Q the largest code magnitude (127, 8, 16, 15, 31); the one exception, Q4_0/Q5_0's
// clamp, lets a value of the other sign at -s's magnitude land a whole |d| away.
// 1 for the five types above.
int ggq_quantizable(int type);
// x (rows, cols) row-major -> out: rows · ggq_row_bytes(type, cols) bytes. cols a multiple of
// 32. Deterministic; parallel over rows when called outside a parallel region. Non-finite
// input gives non-finite scales (check with ggq_init + ggq_check_scales). -1 when the type is
// not quantizable or cols is not a multiple of 32 (nothing written), else 0.
int ggq_quantize_rows(int type, const float *x, int64_t rows, int64_t cols, void *out);

// =========================================================================================
// ---- the tiled GEMM over frozen weights (gemm.c, gemm_x86.c, gemm_neon.c) ----------------
// =========================================================================================
// C (+)= A · B where A is an fp32 activation matrix packed once per call and B a frozen weight
// W read through its format's tile callback (fp32), packed tile by tile (never a whole copy).
// Kernel variants (GemmKernel, opaque here): fp32 FMA micro-kernels (AVX-512, AVX2+FMA, NEON,
// portable C) and bf16 products with fp32 accumulation (AVX-512 BF16 vdpbf16ps, portable C:
// operands rounded to nearest even bf16, as torch.autocast(bfloat16) but summed in fp32
// throughout; relative error about 2^-8 per operand, far below NF4's own quantization error).
// k is summed in blocks of 256 with fp32 adds between blocks; results do not depend on the
// thread count. Which variant runs is chosen at run time by measurement (kernel_choice below).

// A frozen (rows, cols) weight seen through a tile callback. A view of rows [r0, r0+rows) of
// the underlying matrix (tiled_rows); ld = the underlying row length (f32 / bf16 arrays).
typedef struct TiledWeight TiledWeight;
struct TiledWeight {
    const void *w;
    // rows [r0, r0+nr) x cols [c0, c0+nc) of this view -> out (nr, nc) fp32, row stride ldo.
    // Called from inside the GEMM's parallel region: runs on the calling thread.
    void (*tile)(const TiledWeight *w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, float *out, int64_t ldo);
    int64_t r0, rows, cols, ld;
};
TiledWeight tiled_f32(const float *w, int64_t rows, int64_t cols);
TiledWeight tiled_bf16(const uint16_t *w, int64_t rows, int64_t cols);
TiledWeight tiled_nf4(const Nf4Matrix *m);
TiledWeight tiled_ggq(const GgqMatrix *m);
TiledWeight tiled_rows(const TiledWeight *w, int64_t r0, int64_t nrows);  // rows [r0, r0+nrows)

typedef struct GemmKernel GemmKernel;
// The variants compiled into this binary: index 0 .. gemm_kernel_count()-1.
int gemm_kernel_count(void);
const GemmKernel *gemm_kernel_at(int i);
const GemmKernel *gemm_kernel_find(const char *name);  // "f32-avx2"; NULL if none
const char *gemm_kernel_name(const GemmKernel *g);     // NULL -> "openblas"
const char *gemm_kernel_isa(const GemmKernel *g);      // what the CPU needs ("avx512bf16", "c")
int gemm_kernel_bf16(const GemmKernel *g);             // bf16 operands (0 for NULL)
// 1 when this CPU runs g, and LORA_ISA (if set: c, avx2, avx512, avx512bf16, neon) allows it.
int gemm_kernel_usable(const GemmKernel *g);

// Scratch for one call with an (M, K) activation operand (M rows of x, K = its columns; for
// the two-product calls below K = K1 + K2 + 1). g = NULL: enough for any variant.
size_t gemm_scratch_bytes(const GemmKernel *g, int64_t M, int64_t K);
// x (N,C) row stride ldx, W (OC,C) -> y (N,OC) row stride ldy   y (+)= x Wᵀ
void gemm_xwt(const GemmKernel *g, const float *x, int64_t N, int64_t ldx, const TiledWeight *w, float *y,
              int64_t ldy, int accumulate, void *scratch);
// dy (N,OC) row stride lddy, W (OC,C) -> dx (N,C) row stride lddx   dx (+)= dy W
void gemm_dyw(const GemmKernel *g, const float *dy, int64_t N, int64_t lddy, const TiledWeight *w, float *dx,
              int64_t lddx, int accumulate, void *scratch);
// The same with a second (low-rank) product summed in the same pass over the output — LoRA's
// path fused with the frozen matmul: its k follow the first product's.
// x (N,C), W (OC,C), x2 (N,K2) row stride ldx2, W2 (OC,K2) -> y (N,OC)   y (+)= x Wᵀ + x2 W2ᵀ
void gemm_xwt2(const GemmKernel *g, const float *x, int64_t N, int64_t ldx, const TiledWeight *w, const float *x2,
               int64_t ldx2, const TiledWeight *w2, float *y, int64_t ldy, int accumulate, void *scratch);
// dy (N,OC), W (OC,C), dy2 (N,K2) row stride lddy2, W2 (K2,C) -> dx (N,C)   dx (+)= dy W + dy2 W2
void gemm_dyw2(const GemmKernel *g, const float *dy, int64_t N, int64_t lddy, const TiledWeight *w, const float *dy2,
               int64_t lddy2, const TiledWeight *w2, float *dx, int64_t lddx, int accumulate, void *scratch);

// =========================================================================================
// ---- the CPU and the kernels chosen by measurement (cpu.c) ------------------------------
// =========================================================================================
typedef struct {
    char arch[16];      // "x86_64", "aarch64"
    char model[128];    // "Intel(R) Xeon(R) Platinum 8581C CPU @ 2.30GHz" (CPUID brand / cpuinfo)
    char vendor[16];    // "GenuineIntel", "AuthenticAMD", "arm"
    int family, model_id;  // x86 CPUID display family / model (0 elsewhere)
    char flags[256];    // the instruction sets that matter here, present ones only
    int avx2, fma, avx512, avx512bf16, neon;
} CpuInfo;
void cpu_info(CpuInfo *ci);
// 1 when this CPU has the instruction set ("avx2", "avx512f", "avx512bf16", "neon", "c") and
// LORA_ISA allows it: the run-time choice of the kernels outside the GEMM family (NF4 decode,
// the bf16 lm_head GEMV, bf16 attention), compiled for their ISA whatever the build's -march.
int cpu_isa_usable(const char *isa);
// What this build's -march gave every function ("x86-64-v3", "avx512bf16", "armv8-a"): the
// level of the code outside the run-time dispatched kernels.
const char *build_isa_level(void);

#define KC_MAX_CAND 8
typedef struct {
    const GemmKernel *k;  // NULL: OpenBLAS sgemm over dequantized tiles
    double gflops;        // measured on the calibration shapes (NF4 weight, xwt + dyw)
} KernelCand;
typedef struct {
    int threads;              // the thread count it was measured with
    int n_cand;
    KernelCand cand[KC_MAX_CAND];
    const GemmKernel *fp32;   // the fastest fp32 path (NULL: OpenBLAS)
    const GemmKernel *bf16;   // the fastest bf16 variant this CPU has in hardware (NULL: none)
    const GemmKernel *best;   // the fastest of all: `--compute-dtype auto`
    double mem_gbs;           // measured read bandwidth of main memory, GB/s
    double seconds;           // calibration time (0 when read from the cache)
    int from_cache;           // 1: read from cache_path
    int forced;               // 1: LORA_KERNEL chose, nothing measured
    int cut;                  // candidates left unmeasured: the 1 s budget ran out (slow CPU, emulator)
    char cache_path[600];     // "" when no cache directory can be used
} KernelChoice;
// The kernels for the current thread count: measured once (within about 1 s) or read from
// the cache ($XDG_CACHE_HOME/lora/ or ~/.cache/lora/, keyed by the CPU model, its flags, the
// thread count and the kernels of this build); never needed for correctness — every variant
// computes the same product. LORA_KERNEL=NAME (a gemm_kernel_name or "openblas") forces the
// choice without measuring; LORA_ISA caps the variants considered. Thread-safe.
const KernelChoice *kernel_choice(void);
// The same, measured anew (cache ignored and rewritten); the entry kernel_choice returns for
// this thread count is replaced: call it before any other thread uses the choice (`lora info`).
const KernelChoice *kernel_recalibrate(void);
// OpenBLAS's kernels: the core it picked ("SkylakeX"), and the OPENBLAS_CORETYPE it should be
// given (read when the library loads) when it fell back to a generic core on a CPU it does not
// know although the CPU has AVX2 or AVX-512; NULL when it needs none or the user set one.
const char *openblas_core(void);
const char *openblas_coretype_fix(void);
// The rule itself: OpenBLAS's core name and a CPU -> the core to ask for, or NULL.
const char *openblas_coretype_for(const char *core, const CpuInfo *ci);
// A precision rule: bf16 is taken over fp32 only when it measured at least this much faster
// (fp32 keeps 16 more bits; a near tie is not worth them).
#define KC_BF16_MARGIN 1.10
// And OpenBLAS over our own fp32 variant only when it measured this much faster on the
// isolated shape: our GEMM also fuses the LoRA term and the whole lm_head into its pass,
// which the calibration shape does not show (a whole training step, AVX2 build: ours at 0.91×
// OpenBLAS on the shape ran the step 1.08× faster).
#define KC_OWN_MARGIN 1.15

// =========================================================================================
// ---- decode: matrix-vector products in the weights' stored format (qgemv*.c) ------------
// =========================================================================================
// Generation reads every frozen weight once per step, so it is bound by memory bandwidth: the
// weights stay in their stored format and are never expanded to fp32 in memory. For the GGUF
// block formats the activation is quantized ONCE per token to 8-bit blocks (as llama.cpp's
// Q8_0 / Q8_K: blocks of 32 with one scale for Q4_0..Q8_0, blocks of 256 with one scale and
// sums of 16 for the K formats) and the products are integer dot products (AVX-512 VNNI
// vpdpbusd, AVX2 vpmaddubsw, NEON sdot, or portable C), one fp32 scale per block. NF4, bf16
// and f32 weights take the fp32 activation as it is (NF4 through its fused decode kernel).
//
// Rows are independent: the result for activation g does not depend on how many activations
// are passed with it nor on the row range, bit for bit (a request's greedy output is the same
// alone or batched). No threading inside: the caller splits row ranges across its threads.
//
// Variants (qv_kernel_name "format-isa"): every format has a portable C one ("q4_0-c", written
// for the compiler's auto-vectoriser: the fallback on any CPU); x86-64 adds, compiled in
// whatever -march: f32 / bf16 avx2 and avx512 (FMA); NF4 avx2 (two 8-entry vpermps and a
// blend) and avx512 (nf4_gemv's kernels); each GGUF type avx2 (vpmaddubsw), avxvnni (ymm
// vpdpbusd), avx512 (zmm vpmaddubsw) and avx512vnni (zmm vpdpbusd); aarch64 adds nf4-neon and
// neon for f32, bf16 and each GGUF type (vmull_s8 / vpadalq_s16). LORA_ISA caps them as the
// GEMM's; avxvnni and avx512vnni are allowed by LORA_ISA=avxvnni / avx512vnni / avx512bf16 (or
// unset), not by avx2 / avx512.
// Accuracy: NF4, bf16, f32 as an fp32 dot product of the exact weights. GGUF: each element of
// x is rounded to its block's 8-bit grid (error <= d/2, d = block amax / 127); the integer
// block sums are exact, fp32 rounding only in the per-block scaling and the sum over blocks
// (a block's product may be two exact integer sums scaled separately: Q4_1 / Q5_1 / K mins,
// and Q4_0 / Q5_0's offset in the x86 variants, through x's exact block sums). Variants differ
// from each other by fp32 rounding only (order of the sums), each one deterministic. A NaN or
// Inf in x gives NaN in every output.
typedef enum { QV_F32 = 0, QV_BF16, QV_NF4, QV_GGQ } QvFormat;
typedef struct {
    QvFormat fmt;
    int64_t rows, cols;       // (rows, cols) row-major; y = W x
    const void *data;         // QV_F32: float[rows*cols]; QV_BF16: uint16_t[rows*cols];
                              // QV_NF4: const Nf4Matrix *; QV_GGQ: const GgqMatrix *
} QvMatrix;
typedef struct QvKernel QvKernel;
// Every product variant compiled in (each format: portable C, and the ISA variants).
int qv_kernel_count(void);
const QvKernel *qv_kernel_at(int i);
const char *qv_kernel_name(const QvKernel *k);   // "q4_0-avx512vnni", "nf4-c", ...
int qv_kernel_usable(const QvKernel *k);         // this CPU runs it and LORA_ISA allows it
// 1 when k computes products for matrices like w (format, GGUF type, shape constraints).
int qv_kernel_fits(const QvKernel *k, const QvMatrix *w);
// The variant used for w: chosen at run time, or forced by LORA_QV_KERNEL=NAME[,NAME...] (the
// first listed name that is usable and fits w). The rule: the first call for a format (each
// GGUF type on its own) times every usable variant of it once on a synthetic matrix of that
// format (4096 columns, ~2 MiB of weights; one product with 1 activation plus one with 8 — a
// decode alone and a server's batch both count — each the best of 5 rounds after a warm-up,
// the variants taking turns within a round: some ms)
// and keeps the cheapest for the process; the portable C variant is always a candidate. Thread-
// safe (a mutex; the measurement runs on the calling thread). NULL only when no variant fits
// (NF4 needs cols % 64 == 0; GGUF whole blocks).
const QvKernel *qv_kernel_for(const QvMatrix *w);
// Bytes of one activation prepared for k's products with a matrix of w's shape.
size_t qv_act_bytes(const QvKernel *k, const QvMatrix *w);
// x (cols) fp32 -> qx (qv_act_bytes): the activation as k's products take it (the same bytes
// for every variant of a format: 8-bit blocks for GGUF, x reordered for NF4, x for f32 / bf16).
// qx: 4-byte aligned (qv_act_bytes is a multiple of 64, so consecutive activations keep the
// alignment of the first). O(cols), on the calling thread.
void qv_prepare(const QvKernel *k, const QvMatrix *w, const float *x, void *qx);
// Rows [r0, r0+nr) of W against G prepared activations (qx: G × qv_act_bytes, consecutive)
// -> y (G, ldy): y[g*ldy + r] = W[r,:] · x_g for r in [r0, r0+nr) (y[g*ldy + r], NOT
// y[g*ldy + r - r0]), accumulate: += instead of =.
void qv_gemv(const QvKernel *k, const QvMatrix *w, int64_t r0, int64_t nr, const void *qx, int G, float *y,
             int64_t ldy, int accumulate);
