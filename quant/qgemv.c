// quant — decode matrix-vector products in the weights' stored format (see the last section of
// quant.h): the activation preparation (one per format, shared by its variants), the portable C
// variant of every format, the table of all variants (qgemv_x86.c and qgemv_neon.c add theirs)
// and the choice of one per format by measurement.
//
// The GGUF formats (llama.cpp's ggml_vec_dot_*_q8_* maths, not its code): x is quantized per
// block of 32 (Q4_0 .. Q8_0) or 256 (K formats) to int8 q = x / d rounded, d = amax / 127; each
// block's product is an exact integer dot product of the codes, scaled once in fp32:
//   Q4_0  Σ_b (dw·dx) · Σ (q-8)·qx        Q5_0  the same with (q-16)       Q8_0  Σ (dw·dx)·Σ q·qx
//   Q4_1  Σ_b (dw·dx) · Σ q·qx + m·s      (s = dx·Σqx, llama.cpp's Q8_1 s; Q5_1 the same)
//   Q4_K  Σ_B (dw·dx)·Σ_s sc_s·Σ q·qx  -  (dmin·dx)·Σ_s m_s·Σ qx      (Q5_K the same, 5-bit q)
//   Q6_K  Σ_B (d·dx)·Σ_j sc_j·(Σ q·qx - 32·Σ qx)                     (j: the 16 groups of 16)
// Against the exact W·x the error is at most Σ_blocks (dx/2)·Σ|w| (x's rounding) plus fp32
// rounding of the block sums (tests/test_qgemv.c checks both).
#include "quant/quant.h"
#include "quant/quant_internal.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- activation preparation --------------------------------------------------------------

// x (C) -> the q8 activation of quant_internal.h (QvAct), blocks of qk (32 or 256).
static void prepare_q8(const float *x, int64_t C, int qk, uint8_t *out) {
    const int64_t nb = C / qk;
    int8_t *q = (int8_t *)out;
    float *d = (float *)(out + C), *s = d + nb;
    int16_t *bs = (int16_t *)(s + (qk == 32 ? nb : 0));
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * qk;
        float amax = 0.0f;
        for (int j = 0; j < qk; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        float db = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        if (id > 3.0e38f) id = 3.0e38f;  // amax subnormal: no Inf (0 · Inf would be NaN)
        int sum = 0, finite = 1;
        for (int j = 0; j < qk; j++) {
            float v = nearbyintf(xb[j] * id);  // round to nearest even (the default mode)
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            if (!isfinite(xb[j])) finite = 0, v = 0.0f;
            q[b * qk + j] = (int8_t)v;
            sum += (int)v;
            if (qk == 256 && j % 16 == 15) {
                bs[b * 16 + j / 16] = (int16_t)sum;
                sum = 0;
            }
        }
        if (!finite) db = NAN;  // a NaN or Inf in x comes out as NaN, not as a number
        d[b] = db;
        if (qk == 32) {
            s[b] = db * (float)sum;
            bs[b] = (int16_t)sum;
        }
    }
}

static int fmt_qk(const QvMatrix *w) {
    return w->fmt == QV_GGQ ? ggq_block_elems(((const GgqMatrix *)w->data)->type) : 0;
}

size_t qv_act_bytes(const QvKernel *k, const QvMatrix *w) {
    (void)k;
    const int qk = fmt_qk(w);
    if (qk) return qv_act_size_q8(w->cols, qk);
    return ((size_t)w->cols * sizeof(float) + 63) & ~(size_t)63;
}

// x (cols) -> qx
void qv_prepare(const QvKernel *k, const QvMatrix *w, const float *x, void *qx) {
    (void)k;
    const int qk = fmt_qk(w);
    if (qk)
        prepare_q8(x, w->cols, qk, qx);
    else if (w->fmt == QV_NF4)
        nf4_gemv_reorder(x, w->cols, qx);
    else
        memcpy(qx, x, (size_t)w->cols * sizeof(float));
}

// ---- portable C variants -------------------------------------------------------------------
// Each kernel: one row against up to QV_GMAX activations; the drivers below loop rows and
// passes of activations. Every activation's sum runs in the same order whatever G.

static inline void store(float *y, int accumulate, float v) { *y = accumulate ? *y + v : v; }

// x (C), W (OC,C) fp32 (bf 0) or bf16 (bf 1) -> y (OC): 8 partial sums per row (lane j takes
// k ≡ j mod 8), added in a fixed tree at the end
static void c_fp(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                 int64_t ldy, int accumulate, int bf) {
    const int64_t C = w->cols, C8 = C / 8 * 8;
    for (int64_t r = r0; r < r0 + nr; r++) {
        const void *wr = (const uint8_t *)w->data + (size_t)(r * C) * (bf ? 2 : 4);
        for (int g = 0; g < G; g++) {
            const float *x = (const float *)(qx + g * act);
            float s[8] = {0};
            for (int64_t k = 0; k < C8; k += 8)
                for (int j = 0; j < 8; j++) s[j] += qv_weight_f32(wr, bf, k + j) * x[k + j];
            for (int64_t k = C8; k < C; k++) s[k - C8] += qv_weight_f32(wr, bf, k) * x[k];
            store(y + g * ldy + r, accumulate, ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7])));
        }
    }
}
static void c_f32(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                  int64_t ldy, int accumulate) {
    c_fp(w, r0, nr, qx, act, G, y, ldy, accumulate, 0);
}
static void c_bf16(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                   int64_t ldy, int accumulate) {
    c_fp(w, r0, nr, qx, act, G, y, ldy, accumulate, 1);
}

// x (C) reordered, W (OC,C) NF4 -> y (OC): nf4_gemv's own row kernels
static void nf4_rows(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                     int64_t ldy, int accumulate, int kind) {
    nf4_gemv_rows((const Nf4Matrix *)w->data, r0, r0 + nr, (const float *)qx, (int64_t)(act / sizeof(float)), G, y,
                  ldy, accumulate, kind);
}
static void c_nf4(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                  int64_t ldy, int accumulate) {
    nf4_rows(w, r0, nr, qx, act, G, y, ldy, accumulate, 0);
}
#if defined(__x86_64__)
static void z_nf4(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                  int64_t ldy, int accumulate) {
    nf4_rows(w, r0, nr, qx, act, G, y, ldy, accumulate, 2);
}
static void y_nf4(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                  int64_t ldy, int accumulate) {
    nf4_rows(w, r0, nr, qx, act, G, y, ldy, accumulate, 3);
}
#elif defined(__aarch64__)
static void neon_nf4(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                     int64_t ldy, int accumulate) {
    nf4_rows(w, r0, nr, qx, act, G, y, ldy, accumulate, 1);
}
#endif

// The 32-blocks formats, written for GCC's auto-vectoriser (no intrinsics): a block's product
// with one activation block is one loop over its 16 code bytes (element j in the low nibble of
// byte j, element j + 16 in the high one, Q5's fifth bits from the 32-bit qh) of int8 × int8 ->
// int32 products that -O3 turns into SIMD whatever the -march (SSE2 pmaddwd up to AVX-512); the
// codes are not stored between the unpacking and the products (a 32-byte load of 16-byte stores
// stalls store forwarding). Q4_0 / Q5_0's offsets -8 / -16 are subtracted from the codes (x =
// q·d), Q4_1 / Q5_1's min m is the caller's (x = q·d + m). Shapes: p one block, x[32].
static inline int32_t c_dot32(const int8_t *w, const int8_t *x) {
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += (int32_t)w[j] * (int32_t)x[j];
    return s;
}
static inline __attribute__((always_inline)) int32_t c_dot_block32(const int type, const uint8_t *p, const int8_t *x) {
    if (type == GGQ_Q8_0) return c_dot32((const int8_t *)(p + 2), x);
    const int has_min = type == GGQ_Q4_1 || type == GGQ_Q5_1, five = type == GGQ_Q5_0 || type == GGQ_Q5_1;
    const uint8_t *h = p + 2 + 2 * has_min, *qs = h + 4 * five;
    const int32_t off = has_min ? 0 : five ? 16 : 8;
    const uint32_t qh = five ? (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24 : 0;
    int32_t s = 0;
#pragma GCC unroll 1  // a loop for the loop vectoriser, not 16 copies for the basic-block one
    for (int j = 0; j < 16; j++)
        s += ((int32_t)((qs[j] & 15) | (qh >> j & 1) << 4) - off) * x[j] +
             ((int32_t)((qs[j] >> 4) | (qh >> (j + 16) & 1) << 4) - off) * x[j + 16];
    return s;
}

// One row of 32-blocks (type a constant) against gn activations -> out[gn]
static inline __attribute__((always_inline)) void c_row32(const int type, const uint8_t *row, int64_t nb,
                                                          const QvAct *a, int gn, float *out) {
    const int has_min = type == GGQ_Q4_1 || type == GGQ_Q5_1;
    const size_t bb = type == GGQ_Q4_0 ? 18 : type == GGQ_Q4_1 ? 20 : type == GGQ_Q5_0 ? 22 : type == GGQ_Q5_1 ? 24 : 34;
    float acc[QV_GMAX] = {0}, accm[QV_GMAX] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = row + b * bb;
        const float d = qv_half(p), mn = has_min ? qv_half(p + 2) : 0.0f;
        for (int g = 0; g < gn; g++) {
            acc[g] += (d * a[g].d[b]) * (float)c_dot_block32(type, p, a[g].q + b * 32);
            if (has_min) accm[g] += mn * a[g].s[b];
        }
    }
    for (int g = 0; g < gn; g++) out[g] = acc[g] + accm[g];
}

// x (C) q8 blocks of 32, W (OC,C) Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 -> y (OC)
static void c_q32(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                  int64_t ldy, int accumulate) {
    const GgqMatrix *m = w->data;
    const int64_t nb = m->cols / 32;
    const size_t rb = (size_t)nb * ggq_block_bytes(m->type);
    QvAct a[QV_GMAX];
    float out[QV_GMAX];
    for (int64_t r = r0; r < r0 + nr; r++) {
        const uint8_t *row = (const uint8_t *)m->data + (size_t)r * rb;
        for (int g0 = 0; g0 < G; g0 += QV_GMAX) {
            const int gn = G - g0 < QV_GMAX ? G - g0 : QV_GMAX;
            for (int g = 0; g < gn; g++) a[g] = qv_act_view(qx + (g0 + g) * act, m->cols, 32);
            switch (m->type) {
            case GGQ_Q4_0: c_row32(GGQ_Q4_0, row, nb, a, gn, out); break;
            case GGQ_Q4_1: c_row32(GGQ_Q4_1, row, nb, a, gn, out); break;
            case GGQ_Q5_0: c_row32(GGQ_Q5_0, row, nb, a, gn, out); break;
            case GGQ_Q5_1: c_row32(GGQ_Q5_1, row, nb, a, gn, out); break;
            default: c_row32(GGQ_Q8_0, row, nb, a, gn, out); break;
            }
            for (int g = 0; g < gn; g++) store(y + (g0 + g) * ldy + r, accumulate, out[g]);
        }
    }
}

// 6-bit scale and min of sub-block s (0..7) of a Q4_K / Q5_K block (quant.h)
static inline void k4_scale_min(int s, const uint8_t *sc, int *scale, int *min) {
    if (s < 4) {
        *scale = sc[s] & 63;
        *min = sc[s + 4] & 63;
    } else {
        *scale = (sc[s + 4] & 15) | (sc[s - 4] >> 6) << 4;
        *min = (sc[s + 4] >> 4) | (sc[s] >> 6) << 4;
    }
}

// The K formats, for the auto-vectoriser as the 32-blocks: the codes unpacked inside int8 dot
// loops (Q4_K / Q5_K: per 32 code bytes the low and the high nibbles, sub-blocks 2g and 2g+1,
// in one loop; Q6_K: unpacked to int8 first, then a loop per group of 16), then times the
// sub-blocks' scales.
// Shapes: p one super-block, xq[256], bs[16].
// One super-block against one q8 activation block: the integer sums. Q4_K / Q5_K:
// *sumi = Σ_s sc_s·Σ q·qx, *summ = Σ_s m_s·Σ qx; Q6_K: *sumi = Σ_j sc_j·Σ (q-32)·qx, *summ = 0.
static inline __attribute__((always_inline)) void c_superblock(const int type, const uint8_t *p, const int8_t *xq,
                                                               const int16_t *bs, int *sumi, int *summ) {
    int si = 0, sm = 0;
    if (type == GGQ_Q6_K) {
        const int8_t *sc = (const int8_t *)(p + 192);
        // the codes unpacked first (q - 32, element order), then a dot loop per group of 16 (as
        // one loop of four sums over the shared code bytes, GCC 12's loop vectoriser gave wrong
        // results for AVX-512; unpacking inside per-group loops was 7x slower)
        int8_t q[256];
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = p + 64 * h, *qh = p + 128 + 32 * h;
            int8_t *o = q + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)(((ql[l] & 15) | (qh[l] & 3) << 4) - 32);
                o[l + 32] = (int8_t)(((ql[l + 32] & 15) | (qh[l] >> 2 & 3) << 4) - 32);
                o[l + 64] = (int8_t)(((ql[l] >> 4) | (qh[l] >> 4 & 3) << 4) - 32);
                o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (qh[l] >> 6) << 4) - 32);
            }
        }
        for (int j = 0; j < 16; j++) {
            int32_t d = 0;
            for (int i = 0; i < 16; i++) d += (int32_t)q[16 * j + i] * xq[16 * j + i];
            si += sc[j] * d;
        }
    } else {
        const int five = type == GGQ_Q5_K;
        const uint8_t *qh = p + 16, *qs = p + (five ? 48 : 16);
        for (int g = 0; g < 4; g++) {
            int32_t d0 = 0, d1 = 0;
            for (int l = 0; l < 32; l++) {
                const int q0 = (qs[32 * g + l] & 15) | (five ? (qh[l] >> 2 * g & 1) << 4 : 0);
                const int q1 = (qs[32 * g + l] >> 4) | (five ? (qh[l] >> (2 * g + 1) & 1) << 4 : 0);
                d0 += q0 * xq[64 * g + l];
                d1 += q1 * xq[64 * g + 32 + l];
            }
            int sc0, m0, sc1, m1;
            k4_scale_min(2 * g, p + 4, &sc0, &m0);
            k4_scale_min(2 * g + 1, p + 4, &sc1, &m1);
            si += sc0 * d0 + sc1 * d1;
            sm += m0 * (bs[4 * g] + bs[4 * g + 1]) + m1 * (bs[4 * g + 2] + bs[4 * g + 3]);
        }
    }
    *sumi = si;
    *summ = sm;
}

// x (C) q8 blocks of 256, W (OC,C) Q4_K / Q5_K / Q6_K -> y (OC)
static void c_qk(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G, float *y,
                 int64_t ldy, int accumulate) {
    const GgqMatrix *m = w->data;
    const int64_t nb = m->cols / 256;
    const size_t bb = ggq_block_bytes(m->type), rb = (size_t)nb * bb;
    const int q6 = m->type == GGQ_Q6_K;
    QvAct a[QV_GMAX];
    for (int64_t r = r0; r < r0 + nr; r++) {
        const uint8_t *row = (const uint8_t *)m->data + (size_t)r * rb;
        for (int g0 = 0; g0 < G; g0 += QV_GMAX) {
            const int gn = G - g0 < QV_GMAX ? G - g0 : QV_GMAX;
            float acc[QV_GMAX] = {0}, accm[QV_GMAX] = {0};
            for (int g = 0; g < gn; g++) a[g] = qv_act_view(qx + (g0 + g) * act, m->cols, 256);
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *p = row + b * bb;
                const float d = qv_half(q6 ? p + 208 : p), dmin = q6 ? 0.0f : qv_half(p + 2);
                for (int g = 0; g < gn; g++) {
                    int sumi, summ;
                    switch (m->type) {  // the type a constant in each copy
                    case GGQ_Q4_K: c_superblock(GGQ_Q4_K, p, a[g].q + b * 256, a[g].bs + b * 16, &sumi, &summ); break;
                    case GGQ_Q5_K: c_superblock(GGQ_Q5_K, p, a[g].q + b * 256, a[g].bs + b * 16, &sumi, &summ); break;
                    default: c_superblock(GGQ_Q6_K, p, a[g].q + b * 256, a[g].bs + b * 16, &sumi, &summ); break;
                    }
                    acc[g] += (d * a[g].d[b]) * (float)sumi;
                    if (!q6) accm[g] += (dmin * a[g].d[b]) * (float)summ;
                }
            }
            for (int g = 0; g < gn; g++) store(y + (g0 + g) * ldy + r, accumulate, acc[g] - accm[g]);
        }
    }
}

// ---- the table -------------------------------------------------------------------------------

static const QvKernel C_KERNELS[] = {
    {"f32-c", "c", QV_F32, 0, c_f32},
    {"bf16-c", "c", QV_BF16, 0, c_bf16},
    {"nf4-c", "c", QV_NF4, 0, c_nf4},
#if defined(__x86_64__)
    {"nf4-avx2", "avx2+fma", QV_NF4, 0, y_nf4},
    {"nf4-avx512", "avx512f", QV_NF4, 0, z_nf4},
#elif defined(__aarch64__)
    {"nf4-neon", "neon", QV_NF4, 0, neon_nf4},
#endif
    {"q4_0-c", "c", QV_GGQ, GGQ_Q4_0, c_q32},
    {"q4_1-c", "c", QV_GGQ, GGQ_Q4_1, c_q32},
    {"q5_0-c", "c", QV_GGQ, GGQ_Q5_0, c_q32},
    {"q5_1-c", "c", QV_GGQ, GGQ_Q5_1, c_q32},
    {"q8_0-c", "c", QV_GGQ, GGQ_Q8_0, c_q32},
    {"q4_k-c", "c", QV_GGQ, GGQ_Q4_K, c_qk},
    {"q5_k-c", "c", QV_GGQ, GGQ_Q5_K, c_qk},
    {"q6_k-c", "c", QV_GGQ, GGQ_Q6_K, c_qk},
};
#define N_C_KERNELS ((int)(sizeof C_KERNELS / sizeof C_KERNELS[0]))

static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static const QvKernel *table[128];
static int n_table;

static void table_init(void) {
    for (int i = 0; i < N_C_KERNELS; i++) table[n_table++] = &C_KERNELS[i];
    for (int i = 0; qv_kernels_x86[i] && n_table < 128; i++) table[n_table++] = qv_kernels_x86[i];
    for (int i = 0; qv_kernels_neon[i] && n_table < 128; i++) table[n_table++] = qv_kernels_neon[i];
}

int qv_kernel_count(void) {
    pthread_once(&table_once, table_init);
    return n_table;
}

const QvKernel *qv_kernel_at(int i) { return i >= 0 && i < qv_kernel_count() ? table[i] : NULL; }
const char *qv_kernel_name(const QvKernel *k) { return k ? k->name : "none"; }
int qv_kernel_usable(const QvKernel *k) { return k && cpu_isa_usable(k->isa); }

// Shapes every variant takes: GGUF whole blocks (ggq_check's rule); NF4 what nf4_gemv takes.
int qv_kernel_fits(const QvKernel *k, const QvMatrix *w) {
    if (!k || !w || k->fmt != w->fmt || w->rows < 1 || w->cols < 1 || !w->data) return 0;
    if (w->fmt == QV_GGQ) {
        const GgqMatrix *m = w->data;
        return m->type == k->type && m->rows == w->rows && m->cols == w->cols && ggq_supported(m->type) &&
               m->cols % ggq_block_elems(m->type) == 0;
    }
    if (w->fmt == QV_NF4) {
        const Nf4Matrix *m = w->data;
        return m->rows == w->rows && m->cols == w->cols && nf4_gemv_ok(m);
    }
    return 1;
}

void qv_gemv(const QvKernel *k, const QvMatrix *w, int64_t r0, int64_t nr, const void *qx, int G, float *y,
             int64_t ldy, int accumulate) {
    if (nr <= 0 || G <= 0) return;
    k->gemv(w, r0, nr, qx, qv_act_bytes(k, w), G, y, ldy, accumulate);
}

// ---- the choice ------------------------------------------------------------------------------
// Rule: for each format (each GGUF type separately) the first call times every variant that
// this CPU runs (qv_kernel_usable) on a synthetic matrix of that format (4096 columns, rows
// for about 2 MiB of weights: the sizes of a decode step's matrices per thread, cache-resident
// so that the kernels' own speed shows, not the memory's), one activation, best of 3 passes
// after a warm-up; the fastest wins, the portable C one is always among them. The choice is kept
// for the process (per format, not per shape). LORA_QV_KERNEL=NAME[,NAME...] forces: the first
// listed name that is usable and fits the matrix; formats it names nothing for are measured.

#define CAL_COLS 4096
#define CAL_BYTES (2 << 20)
#define N_KEYS 16
static pthread_mutex_t choice_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    QvFormat fmt;
    int type;
    const QvKernel *k;
} chosen[N_KEYS];
static int n_chosen;

static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 16;
}

static uint16_t half_of(float f) {  // |f| < 65504, normal range: good enough for scales
    uint32_t b;
    memcpy(&b, &f, 4);
    uint32_t sign = (b >> 16) & 0x8000, e = (b >> 23) & 255, man = (b >> 13) & 0x3ff;
    if (e < 113) return (uint16_t)sign;
    return (uint16_t)(sign | (e - 112) << 10 | man);
}

// A synthetic (rows, CAL_COLS) matrix of w's format: *store holds what w->data points at.
static int cal_matrix(const QvMatrix *like, QvMatrix *w, void **buf, GgqMatrix *gm, Nf4Matrix *nm) {
    uint64_t s = 12345;
    const int64_t C = CAL_COLS;
    memset(w, 0, sizeof *w);
    w->fmt = like->fmt;
    w->cols = C;
    *buf = NULL;
    if (like->fmt == QV_GGQ) {
        const int type = ((const GgqMatrix *)like->data)->type;
        const size_t rb = ggq_row_bytes(type, C);
        w->rows = CAL_BYTES / (int64_t)rb;
        uint8_t *p = malloc(rb * (size_t)w->rows);
        if (!p) return -1;
        for (size_t i = 0; i < rb * (size_t)w->rows; i++) p[i] = (uint8_t)lcg(&s);
        const size_t bb = ggq_block_bytes(type);
        const int so = type == GGQ_Q6_K ? 208 : 0, has2 = type == GGQ_Q4_1 || type == GGQ_Q5_1 ||
                                                          type == GGQ_Q4_K || type == GGQ_Q5_K;
        for (size_t b = 0; b < rb * (size_t)w->rows / bb; b++) {  // sane scales
            uint16_t h = half_of(0.001f + 0.001f * (float)(lcg(&s) % 100));
            memcpy(p + b * bb + so, &h, 2);
            if (has2) memcpy(p + b * bb + 2, &h, 2);
        }
        *gm = (GgqMatrix){type, w->rows, C, p, "calibration"};
        w->data = gm;
        *buf = p;
        return 0;
    }
    if (like->fmt == QV_NF4) {
        w->rows = CAL_BYTES / 2 / C;  // 0.5 MiB: quantizing it is part of the cost
        float *f = malloc(sizeof(float) * (size_t)(w->rows * C));
        if (!f) return -1;
        for (int64_t i = 0; i < w->rows * C; i++) f[i] = (float)(lcg(&s) % 2001) * 1e-5f - 0.01f;
        int rc = nf4_quantize(f, w->rows, C, "calibration", nm, NULL);
        free(f);
        w->data = nm;
        return rc;
    }
    const size_t es = like->fmt == QV_F32 ? 4 : 2;
    w->rows = CAL_BYTES / (int64_t)(es * C);
    uint8_t *p = malloc(es * (size_t)(w->rows * C));
    if (!p) return -1;
    for (int64_t i = 0; i < w->rows * C; i++) {
        float v = (float)(lcg(&s) % 2001) * 1e-5f - 0.01f;
        if (es == 4)
            memcpy(p + 4 * i, &v, 4);
        else {
            uint32_t b;
            memcpy(&b, &v, 4);
            uint16_t h = (uint16_t)(b >> 16);
            memcpy(p + 2 * i, &h, 2);
        }
    }
    w->data = p;
    *buf = p;
    return 0;
}

// A variant's cost: one product with 1 activation plus one with CAL_G (decode alone and a
// server's batch of rows both count), each the best of CAL_ROUNDS rounds after a warm-up; the
// variants take turns within each round, so a burst of load from elsewhere on the machine
// slows them all alike rather than one.
#define CAL_G 8
#define CAL_ROUNDS 5
#define CAL_MAX_VARIANTS 16
static double time_once(const QvKernel *k, const QvMatrix *w, const void *qx, int G, float *y) {
    double t0 = now_seconds();
    qv_gemv(k, w, 0, w->rows, qx, G, y, w->rows, 0);
    return now_seconds() - t0;
}

static const QvKernel *measure(const QvMatrix *like, const QvKernel *c_kernel) {
    QvMatrix w;
    void *buf;
    GgqMatrix gm;
    Nf4Matrix nm = {0};
    if (cal_matrix(like, &w, &buf, &gm, &nm)) {
        free(buf);
        if (nm.packed) nf4_free(&nm);
        return c_kernel;
    }
    const QvKernel *best = c_kernel;
    float *x = malloc(sizeof(float) * CAL_COLS), *y = malloc(sizeof(float) * (size_t)w.rows * CAL_G);
    if (x && y) {
        uint64_t s = 99;
        for (int i = 0; i < CAL_COLS; i++) x[i] = (float)(lcg(&s) % 2001) * 1e-3f - 1.0f;
        const QvKernel *ks[CAL_MAX_VARIANTS];
        uint8_t *qxs[CAL_MAX_VARIANTS];
        double b1[CAL_MAX_VARIANTS], b8[CAL_MAX_VARIANTS];
        int nk = 0;
        for (int i = 0; i < qv_kernel_count() && nk < CAL_MAX_VARIANTS; i++) {
            const QvKernel *k = qv_kernel_at(i);
            if (!qv_kernel_usable(k) || !qv_kernel_fits(k, &w)) continue;
            const size_t ab = qv_act_bytes(k, &w);
            if (!(qxs[nk] = malloc(ab * CAL_G))) break;
            for (int g = 0; g < CAL_G; g++) qv_prepare(k, &w, x, qxs[nk] + g * ab);
            ks[nk] = k, b1[nk] = b8[nk] = 1e30;
            nk++;
        }
        for (int round = 0; round <= CAL_ROUNDS; round++)  // round 0: the warm-up
            for (int i = 0; i < nk; i++) {
                double t1 = time_once(ks[i], &w, qxs[i], 1, y), t8 = time_once(ks[i], &w, qxs[i], CAL_G, y);
                if (round > 0 && t1 < b1[i]) b1[i] = t1;
                if (round > 0 && t8 < b8[i]) b8[i] = t8;
            }
        double tbest = 1e30;
        for (int i = 0; i < nk; i++) {
            if (b1[i] + b8[i] < tbest) tbest = b1[i] + b8[i], best = ks[i];
            free(qxs[i]);
        }
    }
    free(x), free(y), free(buf);
    if (nm.packed) nf4_free(&nm);
    return best;
}

// LORA_QV_KERNEL: the first listed name that is usable and fits w (NULL: none)
static const QvKernel *forced(const QvMatrix *w) {
    const char *v = getenv("LORA_QV_KERNEL");
    if (!v || !*v) return NULL;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", v);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        for (int i = 0; i < qv_kernel_count(); i++) {
            const QvKernel *k = qv_kernel_at(i);
            if (!strcmp(k->name, t) && qv_kernel_usable(k) && qv_kernel_fits(k, w)) return k;
        }
    return NULL;
}

const QvKernel *qv_kernel_for(const QvMatrix *w) {
    const QvKernel *c_kernel = NULL;
    for (int i = 0; i < qv_kernel_count() && !c_kernel; i++)
        if (!strcmp(qv_kernel_at(i)->isa, "c") && qv_kernel_fits(qv_kernel_at(i), w)) c_kernel = qv_kernel_at(i);
    if (!c_kernel) return NULL;  // not a supported matrix
    const QvKernel *f = forced(w);
    if (f) return f;
    const int type = w->fmt == QV_GGQ ? ((const GgqMatrix *)w->data)->type : 0;
    pthread_mutex_lock(&choice_lock);
    const QvKernel *k = NULL;
    for (int i = 0; i < n_chosen && !k; i++)
        if (chosen[i].fmt == w->fmt && chosen[i].type == type) k = chosen[i].k;
    if (!k) {
        k = measure(w, c_kernel);
        if (n_chosen < N_KEYS) {
            chosen[n_chosen].fmt = w->fmt;
            chosen[n_chosen].type = type;
            chosen[n_chosen++].k = k;
        }
    }
    pthread_mutex_unlock(&choice_lock);
    // the measured variant fits every matrix of the format but NF4's column rule: check
    return qv_kernel_fits(k, w) ? k : c_kernel;
}
