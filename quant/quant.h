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
// Integration with autograd's Weight is meant to be a new WeightType whose data points at
// an Nf4Matrix: weight_row_f32 -> nf4_dequant_rows(m, r, 1, out); op_linear forward ->
// nf4_matmul_xwt; its input gradient -> nf4_matmul_dyw (accumulate = 1).
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
size_t nf4_scratch_floats(const Nf4Matrix *w);

// x (N,C), W (OC,C) -> y (N,OC)      y = x Wᵀ  (accumulate: y += x Wᵀ)
// Tiles of whole rows of W: y[:, r0:r0+T] = x · W[r0:r0+T, :]ᵀ.
int nf4_matmul_xwt(const float *x, int64_t N, const Nf4Matrix *w, float *y, int accumulate,
                   float *scratch, Err *e);
// dy (N,OC), W (OC,C) -> dx (N,C)    dx = dy W  (accumulate: dx += dy W)
// Tiles of columns of W: dx[:, c0:c0+T] = dy · W[:, c0:c0+T].
int nf4_matmul_dyw(const float *dy, int64_t N, const Nf4Matrix *w, float *dx, int accumulate,
                   float *scratch, Err *e);
