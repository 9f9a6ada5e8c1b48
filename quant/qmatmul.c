// quant — the matmul driver shared by every quantized weight format (see quant_internal.h):
// tiles of W dequantized into a scratch buffer and multiplied with cblas_sgemm, or, for at
// most QT_FUSED_MAX_N rows of x, fused dequantize-and-dot kernels that stream W once
// through a small per-thread buffer (the decoding / N = 1 case).
#include "quant/quant_internal.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

// Fused kernels: W is dequantized one row segment of FUSED_SEG columns at a time into a
// 4 KiB stack buffer (a multiple of every block size: 32, 64, 256). One row at a time keeps
// the reads of W sequential: interleaving 8 rows made Q6_K 4x slower. FUSED_RB rows of W
// form one parallel work item of xwt.
#define FUSED_RB 8
#define FUSED_SEG 1024

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Rows of W per tile of xwt, columns of W per tile of dyw.
static int64_t tile_rows(const QtMatrix *q) {
    int64_t t = QT_TILE_FLOATS / q->cols;
    if (t < 64) t = 64;
    return min64(t, q->rows);
}

static int64_t tile_cols(const QtMatrix *q) {
    int64_t a = q->col_align;
    int64_t t = (QT_TILE_FLOATS / q->rows) / a * a;
    if (t < a) t = a;
    return min64(t, q->cols);
}

size_t qt_scratch_floats(const QtMatrix *q) {
    int64_t a = tile_rows(q) * q->cols, b = q->rows * tile_cols(q);
    return (size_t)(a > b ? a : b);
}

static float *get_scratch(const QtMatrix *q, float *scratch, Err *e) {
    if (scratch) return scratch;
    char what[300];
    snprintf(what, sizeof what, "%s dequantization tile of %s (%zu floats)", q->label,
             q->name ? q->name : "weight", qt_scratch_floats(q));
    return xmalloc_aligned(qt_scratch_floats(q) * sizeof(float), what, e);
}

// a (n) · b (n), 32 partial sums
static float dot_f32(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float s = 0.0f;
#ifdef __AVX512F__
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
#elif defined(__aarch64__)
    float32x4_t v[8];
    for (int k = 0; k < 8; k++) v[k] = vdupq_n_f32(0.0f);
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 8; k++) v[k] = vfmaq_f32(v[k], vld1q_f32(a + i + 4 * k), vld1q_f32(b + i + 4 * k));
    s = vaddvq_f32(vaddq_f32(vaddq_f32(vaddq_f32(v[0], v[1]), vaddq_f32(v[2], v[3])),
                             vaddq_f32(vaddq_f32(v[4], v[5]), vaddq_f32(v[6], v[7]))));
#else
    float p[32] = {0};
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 32; k++) p[k] += a[i + k] * b[i + k];
    for (int k = 0; k < 32; k++) s += p[k];
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

// x (N,C), W (OC,C) -> y (N,OC), N <= QT_FUSED_MAX_N. Each thread takes blocks of
// FUSED_RB rows of W; every output is summed in a fixed order whatever the thread count.
static void fused_xwt(const QtMatrix *q, const float *x, int64_t N, float *y, int accumulate) {
    const int64_t OC = q->rows, C = q->cols, nrb = (OC + FUSED_RB - 1) / FUSED_RB;
    int par = !omp_in_parallel() && OC * C >= QT_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t b = 0; b < nrb; b++) {
        float buf[FUSED_SEG];
        for (int64_t r = b * FUSED_RB; r < OC && r < (b + 1) * FUSED_RB; r++) {
            float acc[QT_FUSED_MAX_N] = {0};
            for (int64_t c0 = 0; c0 < C; c0 += FUSED_SEG) {
                int64_t nc = min64(FUSED_SEG, C - c0);
                q->tile(q->w, r, 1, c0, nc, buf, nc);  // buf (nc) = W[r, c0:c0+nc]
                for (int64_t n = 0; n < N; n++) acc[n] += dot_f32(x + n * C + c0, buf, nc);
            }
            for (int64_t n = 0; n < N; n++) y[n * OC + r] = accumulate ? y[n * OC + r] + acc[n] : acc[n];
        }
    }
}

// dy (N,OC), W (OC,C) -> dx (N,C), N <= QT_FUSED_MAX_N. Each thread takes segments of
// columns and runs down all rows of W: dx[n, c] = Σ_r dy[n, r] W[r, c] in row order, so
// the result does not depend on the segment width or the thread count.
static void fused_dyw(const QtMatrix *q, const float *dy, int64_t N, float *dx, int accumulate) {
    const int64_t OC = q->rows, C = q->cols, a = q->col_align;
    int par = !omp_in_parallel() && OC * C >= QT_PAR_MIN;
    int64_t seg = FUSED_SEG, nth = par ? omp_get_max_threads() : 1;
    if ((C + seg - 1) / seg < nth) {  // too few segments to feed every thread: narrower ones
        seg = ((C + nth - 1) / nth + a - 1) / a * a;
        if (seg > FUSED_SEG) seg = FUSED_SEG;
        if (seg < 1) seg = 1;
    }
    const int64_t nseg = (C + seg - 1) / seg;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t s = 0; s < nseg; s++) {
        float buf[FUSED_SEG];
        float acc[QT_FUSED_MAX_N][FUSED_SEG];
        int64_t c0 = s * seg, nc = min64(seg, C - c0);
        for (int64_t n = 0; n < N; n++) memset(acc[n], 0, (size_t)nc * sizeof(float));
        for (int64_t r = 0; r < OC; r++) {
            q->tile(q->w, r, 1, c0, nc, buf, nc);  // buf (nc) = W[r, c0:c0+nc]
            for (int64_t n = 0; n < N; n++) {
                const float g = dy[n * OC + r];
                float *o = acc[n];
                for (int64_t c = 0; c < nc; c++) o[c] += g * buf[c];
            }
        }
        for (int64_t n = 0; n < N; n++) {
            float *o = dx + n * C + c0;
            for (int64_t c = 0; c < nc; c++) o[c] = accumulate ? o[c] + acc[n][c] : acc[n][c];
        }
    }
}

// x (N,C), W (OC,C) -> y (N,OC)
int qt_matmul_xwt(const QtMatrix *q, const float *x, int64_t N, float *y, int accumulate,
                  float *scratch, Err *e) {
    if (N <= 0) return 0;
    if (N <= QT_FUSED_MAX_N) {
        fused_xwt(q, x, N, y, accumulate);
        return 0;
    }
    float *tile = get_scratch(q, scratch, e);
    if (!tile) return -1;
    const int64_t OC = q->rows, C = q->cols, T = tile_rows(q);
    for (int64_t r0 = 0; r0 < OC; r0 += T) {
        int64_t t = min64(T, OC - r0);
        q->tile(q->w, r0, t, 0, C, tile, C);  // tile (t, C) = W[r0:r0+t, :]
        // y[:, r0:r0+t] (N,t) = x (N,C) · tileᵀ (C,t)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)t, (int)C, 1.0f, x, (int)C,
                    tile, (int)C, accumulate ? 1.0f : 0.0f, y + r0, (int)OC);
    }
    if (tile != scratch) free(tile);
    return 0;
}

// dy (N,OC), W (OC,C) -> dx (N,C)
int qt_matmul_dyw(const QtMatrix *q, const float *dy, int64_t N, float *dx, int accumulate,
                  float *scratch, Err *e) {
    if (N <= 0) return 0;
    if (N <= QT_FUSED_MAX_N) {
        fused_dyw(q, dy, N, dx, accumulate);
        return 0;
    }
    float *tile = get_scratch(q, scratch, e);
    if (!tile) return -1;
    const int64_t OC = q->rows, C = q->cols, T = tile_cols(q);
    for (int64_t c0 = 0; c0 < C; c0 += T) {
        int64_t t = min64(T, C - c0);
        q->tile(q->w, 0, OC, c0, t, tile, t);  // tile (OC, t) = W[:, c0:c0+t]
        // dx[:, c0:c0+t] (N,t) = dy (N,OC) · tile (OC,t)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)t, (int)OC, 1.0f, dy, (int)OC,
                    tile, (int)t, accumulate ? 1.0f : 0.0f, dx + c0, (int)C);
    }
    if (tile != scratch) free(tile);
    return 0;
}
