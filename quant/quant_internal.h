// quant — internal to the module (not part of its interface): the matmul driver shared by
// NF4 (quant.c) and the GGUF block formats (ggml_quants.c). Each format supplies a callback
// that dequantizes a tile of W; the driver multiplies tiles with cblas_sgemm, or for a few
// rows of x fuses dequantization and dot products without a scratch tile.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>
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

// =========================================================================================
// ---- the tiled GEMM's kernel variants (gemm.c drives them, gemm_x86.c / gemm_neon.c and
// gemm.c's portable C define them; cpu.c chooses one by measurement) ----------------------
// =========================================================================================
// Operands are packed into 32-bit words holding kw values of k each:
//   kw = 2 (bf16): the pair (k = 2p, 2p+1) rounded to bf16, the even k in the low half;
//   kw = 1 (fp32): one fp32 value (its bits).
// Packed A: ceil(M/mr) micro-panels; panel i, word [kp][m] = row i·mr+m, word column kp
//   (rows past M and k past K zero). Packed B: panels of nr columns, word [kp][j].
typedef struct GemmKernel GemmKernel;
struct GemmKernel {
    const char *name;   // "f32-avx512": precision-isa
    const char *isa;    // what the CPU needs (cpu_isa_usable): "avx512bf16", "avx512f", "avx2+fma", "neon", "c"
    int bf16;           // products of bf16-rounded operands (fp32 accumulation)
    int kw, mr, nr;     // k per word, micro-tile rows of A, columns of B (nr divides QG_NC)
    // a (M,K) row stride lda -> ap: panels of (KPT, mr) words, a's words at columns
    // [kpo, kpo + ceil(K/kw)) of each panel. OpenMP-parallel over panels.
    void (*pack_a)(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda);
    // xwt: T (nc,kc) row stride ldt -> P: ceil(nc/nr) panels of (ceil(kc/kw), nr) words,
    //      word [kp][j] = T[p·nr+j][kw·kp ..]
    // dyw: T (kc,nc) row stride ldt -> P, word [kp][j] = T[kw·kp ..][p·nr+j]
    // columns past nc and k past kc zero. Runs on the calling thread.
    void (*pack_b)(int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc);
    // ap (kpn, mr) words, bp (kpn, nr) words -> c (rows, ncols), row stride ldc:
    // c = (add ? c : 0) + Σ_kp a·b, only the first `rows` rows and ncols columns stored.
    void (*kernel)(int rows, const uint32_t *ap, const uint32_t *bp, int64_t kpn, float *c, int64_t ldc,
                   int add, int ncols);
};
#define QG_KC 256   // k per packed block of B (a multiple of every kw)
#define QG_NC 256   // columns per packed block of B (a multiple of every nr)
#define QG_MAX_MR 16

// The variants compiled into this binary, portable C first; NULL-terminated.
extern const GemmKernel *const qg_kernels[];
// Per-ISA variants (NULL where not compiled for this architecture).
extern const GemmKernel qg_f32_avx512, qg_f32_avx2, qg_bf16_avx512, qg_f32_neon;
// Shared pieces for the variants: the portable packers.
void qg_pack_a_words(const GemmKernel *g, uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M,
                     int64_t K, int64_t lda);
void qg_pack_b_words(const GemmKernel *g, int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc,
                     int64_t kc);

// =========================================================================================
// ---- decode GEMV variants (qgemv.c drives and chooses; qgemv.c's portable C, qgemv_x86.c
// and qgemv_neon.c define them; nf4_gemv.c supplies NF4's row kernels) --------------------
// =========================================================================================
// Rows [r0, r0+nr) of w against G activations prepared by the format's qv_prepare (qx: G
// consecutive activations of act bytes each) -> y[g*ldy + r] (=, or += when accumulate).
typedef void (*QvGemvFn)(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                         int64_t ldy, int accumulate);
struct QvKernel {
    const char *name;  // "q4_0-avx512vnni": format-isa
    const char *isa;   // what the CPU needs (cpu_isa_usable)
    QvFormat fmt;
    int type;          // QV_GGQ: the GGQ_* type; 0 otherwise
    QvGemvFn gemv;
};
// Activations per pass over a row of W inside a kernel (more are taken in passes of this many;
// each activation's sums are the same whatever pass it is in).
#define QV_GMAX 4

// The qv_gemv driver of the GGUF block variants: rows [r0, r0+nr) of the GgqMatrix (blocks of
// QK), the G prepared activations in groups of up to QV_GMAX through ROW(row, nb, a[], gn,
// out[]) (one row of nb blocks against gn activation views -> out (gn)), gn a compile-time
// constant inside ROW so that its accumulators stay in registers; TGT: the variant's target
// attribute (or nothing).
#define QV_INT_DRIVER(NAME, TGT, QK, ROW)                                                                    \
    TGT static void NAME(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, \
                         float *y, int64_t ldy, int accumulate) {                                         \
        const GgqMatrix *m = w->data;                                                                     \
        const int64_t nb = m->cols / QK;                                                                  \
        const size_t rb = (size_t)nb * ggq_block_bytes(m->type);                                          \
        for (int64_t r = r0; r < r0 + nr; r++) {                                                          \
            const uint8_t *row = (const uint8_t *)m->data + (size_t)r * rb;                               \
            for (int g0 = 0; g0 < G; g0 += QV_GMAX) {                                                     \
                const int gn = G - g0 < QV_GMAX ? G - g0 : QV_GMAX;                                       \
                QvAct a[QV_GMAX];                                                                         \
                float out[QV_GMAX];                                                                       \
                for (int g = 0; g < gn; g++) a[g] = qv_act_view(qx + (g0 + g) * act, m->cols, QK);        \
                switch (gn) {                                                                             \
                case 1: ROW(row, nb, a, 1, out); break;                                                   \
                case 2: ROW(row, nb, a, 2, out); break;                                                   \
                case 3: ROW(row, nb, a, 3, out); break;                                                   \
                default: ROW(row, nb, a, QV_GMAX, out); break;                                            \
                }                                                                                         \
                for (int g = 0; g < gn; g++) qv_store1(y + (g0 + g) * ldy + r, accumulate, out[g]);          \
            }                                                                                             \
        }                                                                                                 \
    }

// Weight k of a row wr of an fp32 (bf 0) or bf16 (bf 1) matrix, as fp32 (bf16 widened exactly).
static inline float qv_weight_f32(const void *wr, int bf, int64_t k) {
    if (!bf) return ((const float *)wr)[k];
    uint32_t b = (uint32_t)((const uint16_t *)wr)[k] << 16;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

// y[r] (+)= v: one output of qv_gemv (accumulate: add to what is there).
static inline void qv_store1(float *y, int accumulate, float v) { *y = accumulate ? *y + v : v; }

// The qv_gemv driver of the fp32 / bf16 variants (BF: 1 for bf16): rows [r0, r0+nr) of W, the
// G activations in passes of up to GM (4 or 8) through ROWFN(row, BF, C, x[], gn, out[]) (x
// (gn,C) fp32, one row of W -> out (gn); gn a compile-time constant <= GM); TGT: the variant's
// target attribute (or nothing).
#define QV_GN(k, GM) ((GM) >= (k) ? (k) : (GM))  // (a case past GM is never taken)
#define QV_FP_DRIVER(NAME, TGT, ROWFN, BF, GM)                                                             \
    TGT static void NAME(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G,   \
                         float *y, int64_t ldy, int accumulate) {                                           \
        const int64_t C = w->cols;                                                                          \
        for (int64_t r = r0; r < r0 + nr; r++) {                                                            \
            const void *wr = (const uint8_t *)w->data + (size_t)(r * C) * (BF ? 2 : 4);                     \
            for (int g0 = 0; g0 < G; g0 += GM) {                                                            \
                const int gn = G - g0 < GM ? G - g0 : GM;                                                   \
                const float *x[GM];                                                                         \
                float out[GM];                                                                              \
                for (int g = 0; g < gn; g++) x[g] = (const float *)(qx + (g0 + g) * act);                   \
                switch (gn) {                                                                               \
                case 1: ROWFN(wr, BF, C, x, 1, out); break;                                                 \
                case 2: ROWFN(wr, BF, C, x, 2, out); break;                                                 \
                case 3: ROWFN(wr, BF, C, x, 3, out); break;                                                 \
                case 4: ROWFN(wr, BF, C, x, QV_GN(4, GM), out); break;                                   \
                case 5: ROWFN(wr, BF, C, x, QV_GN(5, GM), out); break;                                   \
                case 6: ROWFN(wr, BF, C, x, QV_GN(6, GM), out); break;                                   \
                case 7: ROWFN(wr, BF, C, x, QV_GN(7, GM), out); break;                                   \
                default: ROWFN(wr, BF, C, x, GM, out); break;                                               \
                }                                                                                           \
                for (int g = 0; g < gn; g++) qv_store1(y + (g0 + g) * ldy + r, accumulate, out[g]);         \
            }                                                                                               \
        }                                                                                                   \
    }

// A prepared activation for the GGUF formats (x of cols values, nb = cols / QK blocks), one
// byte array: q int8 [nb*QK] (x / d rounded to nearest even, |q| <= 127), then d fp32 [nb]
// (the block's amax / 127), then s fp32 [nb] (d * Σq: llama.cpp's Q8_1 s; QK 32 only), then
// bs int16 [nb * QK/16] (QK 256: Σq of each 16; QK 32: Σq of the block). Whole size rounded
// up to 64 bytes. The layout does not depend on the variant (one preparation for all).
typedef struct {
    const int8_t *q;
    const float *d, *s;
    const int16_t *bs;
} QvAct;
static inline QvAct qv_act_view(const uint8_t *p, int64_t cols, int qk) {
    const int64_t nb = cols / qk;
    QvAct a;
    a.q = (const int8_t *)p;
    a.d = (const float *)(p + cols);
    a.s = a.d + nb;
    a.bs = (const int16_t *)(a.s + (qk == 32 ? nb : 0));
    return a;
}
static inline size_t qv_act_size_q8(int64_t cols, int qk) {
    const int64_t nb = cols / qk;
    size_t n = (size_t)cols + (size_t)nb * 4 * (qk == 32 ? 2 : 1) + (size_t)nb * 2 * (qk == 32 ? 1 : 16);
    return (n + 63) & ~(size_t)63;
}

// IEEE half -> float, exact, portable (unaligned source allowed).
static inline float qv_half(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | p[1] << 8);
    uint32_t o = (uint32_t)(h & 0x7fff) << 13, e = o & (0x7c00u << 13), bits;
    float f;
    if (e == 0x7c00u << 13) {          // Inf / NaN
        bits = o + ((uint32_t)(128 - 16) << 23) + ((uint32_t)(127 - 15) << 23);
        memcpy(&f, &bits, 4);
    } else if (e == 0) {               // zero / subnormal: the mantissa times 2^-24
        f = (float)(h & 0x3ff) * 5.9604644775390625e-8f;
    } else {
        bits = o + ((uint32_t)(127 - 15) << 23);
        memcpy(&f, &bits, 4);
    }
    if (h & 0x8000) f = -f;
    return f;
}

// NF4's fused decode rows (nf4_gemv.c), shared with the qv variants:
// x (C) -> xr (C) in the kernel's lane order (C % 64 == 0)
void nf4_gemv_reorder(const float *x, int64_t C, float *xr);
// rows [r0, r1) of W against N reordered activations (xr + i*xstride) -> y[i*ldy + r].
// kind: 0 portable C, 1 NEON (aarch64), 2 AVX-512, 3 AVX2 + FMA (x86-64); the caller checks the CPU.
void nf4_gemv_rows(const Nf4Matrix *w, int64_t r0, int64_t r1, const float *xr, int64_t xstride, int64_t N, float *y,
                   int64_t ldy, int accumulate, int kind);

// The ISA variants (NULL-terminated; just NULL when not compiled for this architecture).
extern const QvKernel *const qv_kernels_x86[];
extern const QvKernel *const qv_kernels_neon[];
