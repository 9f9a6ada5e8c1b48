// quant — internal to the module (not part of its interface): the matmul driver shared by
// NF4 (quant.c) and the GGUF block formats (ggml_quants.c). Each format supplies a callback
// that dequantizes a tile of W; the driver multiplies tiles with cblas_sgemm, or for a few
// rows of x fuses dequantization and dot products without a scratch tile.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "quant/quant.h"

// Elements per OpenMP chunk of a dequantization and the smallest job worth a parallel region.
#define QT_DQ_CHUNK 16384
#define QT_PAR_MIN 32768
// Target size of a dequantized scratch tile (floats): 16 MiB. Measured on 2 cores with
// N = 512: 1 MiB tiles reach ~75% of one big sgemm, 16 MiB tiles ~95% (bigger sgemm calls).
#define QT_TILE_FLOATS (1 << 22)
// x with at most this many rows takes the fused path (no scratch tile, no sgemm).
#define QT_FUSED_MAX_N 4

// W[r0:r0+nrows, c0:c0+ncols] dequantized -> out (nrows, ncols), leading dimension ldo.
// Called outside a parallel region it may use OpenMP; inside one it runs on the calling thread.
typedef void (*QtTileFn)(const void *w, int64_t r0, int64_t nrows, int64_t c0, int64_t ncols,
                         float *out, int64_t ldo);

typedef struct {
    const void *w;       // the format's matrix (Nf4Matrix, GgqMatrix)
    QtTileFn tile;
    int64_t rows, cols;  // W (rows, cols) = (OC, C)
    int64_t col_align;   // column tiles start at multiples of this (the format's block size)
    const char *label;   // "NF4", "Q4_K": names the format in messages
    const char *name;    // tensor name for messages, may be NULL
} QtMatrix;

size_t qt_scratch_floats(const QtMatrix *q);
// x (N,C), W (OC,C) -> y (N,OC)      y = x Wᵀ  (accumulate: y += x Wᵀ)
int qt_matmul_xwt(const QtMatrix *q, const float *x, int64_t N, float *y, int accumulate,
                  float *scratch, Err *e);
// dy (N,OC), W (OC,C) -> dx (N,C)    dx = dy W  (accumulate: dx += dy W)
int qt_matmul_dyw(const QtMatrix *q, const float *dy, int64_t N, float *dx, int accumulate,
                  float *scratch, Err *e);
