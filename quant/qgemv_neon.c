// quant — the decode GEMV's NEON variants (aarch64; see qgemv.c and the last section of quant.h).
// NEON is part of armv8-a, so these need no run-time check beyond LORA_ISA (isa "neon").
//   f32-neon, bf16-neon  fp32 FMA against the fp32 activation
//   q*-neon              the GGUF formats: exact integer dot products with vmull_s8 (8 × 8 -> 16 bit
//                        products, |p| <= 128·127) and vpadalq_s16 (pairwise into 32-bit lanes).
// The armv8.2 sdot instruction would do 4 products per lane in one step, but GCC 12 cannot
// inline vdotq_s32 into a function with target("+dotprod") in an armv8-a build (it rejects the
// intrinsic: "target specific option mismatch"), so a dotprod variant waits for a newer compiler.
// The K formats reduce each super-block to exact integers and then use scalar fp32 operations
// in q*_k-c's order (not the x86 variants' vector order: results differ by fp32 rounding only).
#include "quant/quant.h"
#include "quant/quant_internal.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#define INL static inline __attribute__((always_inline))


// Σ w·x over 16 signed bytes -> 4 lanes (exact), added to acc
INL int32x4_t dot16(int32x4_t acc, int8x16_t w, int8x16_t x) {
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w), vget_low_s8(x)));
    return vpadalq_s16(acc, vmull_high_s8(w, x));
}

// byte j (0..15) = 16 where bit j of b16 is set
INL int8x16_t bits16(uint32_t b16) {
    static const uint8_t mask[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t v = vcombine_u8(vdup_n_u8((uint8_t)(b16 & 255)), vdup_n_u8((uint8_t)(b16 >> 8)));
    return vreinterpretq_s8_u8(vandq_u8(vtstq_u8(v, vld1q_u8(mask)), vdupq_n_u8(16)));
}

// One row of 32-blocks against gn activations -> out[gn]: per block the codes decoded once
// (signed: Q4_0 / Q5_0 offsets subtracted), each activation's exact dot in 4 lanes, converted
// and multiplied by dw·dx into a per-activation fp32 accumulator; Q4_1 / Q5_1's m·s in a scalar.
INL void row32(const int type, const uint8_t *row, int64_t nb, const QvAct *a, const int gn, float *out) {
    const int bb = type == GGQ_Q4_0 ? 18 : type == GGQ_Q4_1 ? 20 : type == GGQ_Q5_0 ? 22 : type == GGQ_Q5_1 ? 24 : 34;
    const int has_min = type == GGQ_Q4_1 || type == GGQ_Q5_1, five = type == GGQ_Q5_0 || type == GGQ_Q5_1;
    float32x4_t acc[QV_GMAX];
    float accm[QV_GMAX];
    for (int g = 0; g < gn; g++) acc[g] = vdupq_n_f32(0.0f), accm[g] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = row + b * bb;
        const float dw = qv_half(p), mw = has_min ? qv_half(p + 2) : 0.0f;
        int8x16_t w0, w1;
        if (type == GGQ_Q8_0) {
            w0 = vld1q_s8((const int8_t *)(p + 2));
            w1 = vld1q_s8((const int8_t *)(p + 18));
        } else {
            const uint8x16_t c = vld1q_u8(p + 2 + 2 * has_min + 4 * five);
            w0 = vreinterpretq_s8_u8(vandq_u8(c, vdupq_n_u8(15)));
            w1 = vreinterpretq_s8_u8(vshrq_n_u8(c, 4));
            if (five) {
                uint32_t qh;
                memcpy(&qh, p + 2 + 2 * has_min, 4);
                w0 = vorrq_s8(w0, bits16(qh & 0xFFFF));
                w1 = vorrq_s8(w1, bits16(qh >> 16));
            }
            if (!has_min) {
                const int8x16_t off = vdupq_n_s8(five ? 16 : 8);
                w0 = vsubq_s8(w0, off);
                w1 = vsubq_s8(w1, off);
            }
        }
        for (int g = 0; g < gn; g++) {
            const int8_t *xq = a[g].q + 32 * b;
            int32x4_t d = dot16(vdupq_n_s32(0), w0, vld1q_s8(xq));
            d = dot16(d, w1, vld1q_s8(xq + 16));
            acc[g] = vfmaq_f32(acc[g], vcvtq_f32_s32(d), vdupq_n_f32(dw * a[g].d[b]));
            if (has_min) accm[g] += mw * a[g].s[b];
        }
    }
    for (int g = 0; g < gn; g++) out[g] = vaddvq_f32(acc[g]) + accm[g];
}

// Q4_K / Q5_K super-block: exact Σ_s sc_s·Σ q·qx
INL int32_t sb_k45(const uint8_t *qs, const uint8_t *qh, int five, const int *sc, const int8_t *xq) {
    int32x4_t acc = vdupq_n_s32(0);
    const uint8x16_t m4 = vdupq_n_u8(15), one = vdupq_n_u8(1);
    const uint8x16_t h0 = five ? vld1q_u8(qh) : vdupq_n_u8(0), h1 = five ? vld1q_u8(qh + 16) : vdupq_n_u8(0);
    for (int gi = 0; gi < 4; gi++) {
        const uint8x16_t q0 = vld1q_u8(qs + 32 * gi), q1 = vld1q_u8(qs + 32 * gi + 16);
        uint8x16_t c[4] = {vandq_u8(q0, m4), vandq_u8(q1, m4), vshrq_n_u8(q0, 4), vshrq_n_u8(q1, 4)};
        if (five) {
            const int8x16_t s0 = vdupq_n_s8((int8_t)(-2 * gi)), s1 = vdupq_n_s8((int8_t)(-2 * gi - 1));
            c[0] = vorrq_u8(c[0], vshlq_n_u8(vandq_u8(vshlq_u8(h0, s0), one), 4));
            c[1] = vorrq_u8(c[1], vshlq_n_u8(vandq_u8(vshlq_u8(h1, s0), one), 4));
            c[2] = vorrq_u8(c[2], vshlq_n_u8(vandq_u8(vshlq_u8(h0, s1), one), 4));
            c[3] = vorrq_u8(c[3], vshlq_n_u8(vandq_u8(vshlq_u8(h1, s1), one), 4));
        }
        for (int k = 0; k < 2; k++) {
            const int8_t *x = xq + 64 * gi + 32 * k;
            int32x4_t d = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(c[2 * k]), vld1q_s8(x));
            d = dot16(d, vreinterpretq_s8_u8(c[2 * k + 1]), vld1q_s8(x + 16));
            acc = vmlaq_n_s32(acc, d, sc[2 * gi + k]);
        }
    }
    return vaddvq_s32(acc);
}

// Q6_K super-block: exact Σ_j sc_j·Σ q·qx (q 0..63; the -32 is taken off by the caller)
INL int32_t sb_q6(const uint8_t *p, const int8_t *xq) {
    const int8_t *sc = (const int8_t *)(p + 192);
    const uint8x16_t m4 = vdupq_n_u8(15), m3 = vdupq_n_u8(3);
    int32x4_t acc = vdupq_n_s32(0);
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = p + 64 * h, *qh = p + 128 + 32 * h;
        const uint8x16_t l[4] = {vld1q_u8(ql), vld1q_u8(ql + 16), vld1q_u8(ql + 32), vld1q_u8(ql + 48)};
        const uint8x16_t H[2] = {vld1q_u8(qh), vld1q_u8(qh + 16)};
        for (int k = 0; k < 4; k++)      // elements 32k .. 32k+31 of the half
            for (int e = 0; e < 2; e++) {  // groups of 16
                const uint8x16_t lo = k < 2 ? vandq_u8(l[2 * k + e], m4) : vshrq_n_u8(l[2 * (k - 2) + e], 4);
                const uint8x16_t top = vshlq_n_u8(vandq_u8(vshlq_u8(H[e], vdupq_n_s8((int8_t)(-2 * k))), m3), 4);
                const int32x4_t d = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(vorrq_u8(lo, top)),
                                          vld1q_s8(xq + 128 * h + 32 * k + 16 * e));
                acc = vmlaq_n_s32(acc, d, sc[8 * h + 2 * k + e]);
            }
    }
    return vaddvq_s32(acc);
}

// One row of K super-blocks: exact integer sums per super-block, then q*_k-c's scalar fp32 steps.
INL void rowk(const int type, const uint8_t *row, int64_t nb, const QvAct *a, const int gn, float *out) {
    const int bb = type == GGQ_Q4_K ? 144 : type == GGQ_Q5_K ? 176 : 210;
    float acc[QV_GMAX], accm[QV_GMAX];
    for (int g = 0; g < gn; g++) acc[g] = accm[g] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = row + b * bb;
        if (type == GGQ_Q6_K) {
            const float d = qv_half(p + 208);
            const int8_t *sc = (const int8_t *)(p + 192);
            for (int g = 0; g < gn; g++) {
                const int16_t *bs = a[g].bs + 16 * b;
                int corr = 0;
                for (int j = 0; j < 16; j++) corr += sc[j] * bs[j];
                const int32_t sumi = sb_q6(p, a[g].q + 256 * b) - 32 * corr;
                acc[g] += (d * a[g].d[b]) * (float)sumi;
            }
        } else {
            const int five = type == GGQ_Q5_K;
            const float d = qv_half(p), dmin = qv_half(p + 2);
            const uint8_t *s = p + 4;
            int sc[8], mn[8];
            for (int k = 0; k < 4; k++) {
                sc[k] = s[k] & 63, mn[k] = s[k + 4] & 63;
                sc[k + 4] = (s[k + 8] & 15) | (s[k] >> 6) << 4;
                mn[k + 4] = (s[k + 8] >> 4) | (s[k + 4] >> 6) << 4;
            }
            for (int g = 0; g < gn; g++) {
                const int16_t *bs = a[g].bs + 16 * b;
                int summ = 0;
                for (int k = 0; k < 8; k++) summ += mn[k] * (bs[2 * k] + bs[2 * k + 1]);
                const int32_t sumi = sb_k45(p + (five ? 48 : 16), p + 16, five, sc, a[g].q + 256 * b);
                acc[g] += (d * a[g].d[b]) * (float)sumi;
                accm[g] += (dmin * a[g].d[b]) * (float)summ;
            }
        }
    }
    for (int g = 0; g < gn; g++) out[g] = acc[g] - accm[g];
}


// x (C) q8 blocks, W (OC,C) GGUF -> y (OC)
#define ROW_Q4_0(r_, n_, a_, g_, o_) row32(GGQ_Q4_0, r_, n_, a_, g_, o_)
QV_INT_DRIVER(q4_0_neon, , 32, ROW_Q4_0)
#define ROW_Q4_1(r_, n_, a_, g_, o_) row32(GGQ_Q4_1, r_, n_, a_, g_, o_)
QV_INT_DRIVER(q4_1_neon, , 32, ROW_Q4_1)
#define ROW_Q5_0(r_, n_, a_, g_, o_) row32(GGQ_Q5_0, r_, n_, a_, g_, o_)
QV_INT_DRIVER(q5_0_neon, , 32, ROW_Q5_0)
#define ROW_Q5_1(r_, n_, a_, g_, o_) row32(GGQ_Q5_1, r_, n_, a_, g_, o_)
QV_INT_DRIVER(q5_1_neon, , 32, ROW_Q5_1)
#define ROW_Q8_0(r_, n_, a_, g_, o_) row32(GGQ_Q8_0, r_, n_, a_, g_, o_)
QV_INT_DRIVER(q8_0_neon, , 32, ROW_Q8_0)
#define ROW_Q4_K(r_, n_, a_, g_, o_) rowk(GGQ_Q4_K, r_, n_, a_, g_, o_)
QV_INT_DRIVER(q4_k_neon, , 256, ROW_Q4_K)
#define ROW_Q5_K(r_, n_, a_, g_, o_) rowk(GGQ_Q5_K, r_, n_, a_, g_, o_)
QV_INT_DRIVER(q5_k_neon, , 256, ROW_Q5_K)
#define ROW_Q6_K(r_, n_, a_, g_, o_) rowk(GGQ_Q6_K, r_, n_, a_, g_, o_)
QV_INT_DRIVER(q6_k_neon, , 256, ROW_Q6_K)

// ---- fp32 / bf16 weights ---------------------------------------------------------------------

INL float32x4_t w4(const void *wr, int bf, int64_t k) {
    if (!bf) return vld1q_f32((const float *)wr + k);
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)wr + k), 16));
}

// Row wr (C) against gn activations: 4 accumulators per activation over 16-column steps, then
// 4-steps into the first, the tail (< 4) from zero-padded copies into the second.
INL void fp_row(const void *wr, int bf, int64_t C, const float *const *x, const int gn, float *out) {
    float32x4_t acc[QV_GMAX][4];
    for (int g = 0; g < gn; g++)
        for (int j = 0; j < 4; j++) acc[g][j] = vdupq_n_f32(0.0f);
    int64_t k = 0;
    for (; k + 16 <= C; k += 16) {
        float32x4_t v[4];
        for (int j = 0; j < 4; j++) v[j] = w4(wr, bf, k + 4 * j);
        for (int g = 0; g < gn; g++)
            for (int j = 0; j < 4; j++) acc[g][j] = vfmaq_f32(acc[g][j], v[j], vld1q_f32(x[g] + k + 4 * j));
    }
    for (; k + 4 <= C; k += 4) {
        const float32x4_t v = w4(wr, bf, k);
        for (int g = 0; g < gn; g++) acc[g][0] = vfmaq_f32(acc[g][0], v, vld1q_f32(x[g] + k));
    }
    if (k < C) {
        float wt[4] = {0}, xt[4] = {0};
        for (int64_t j = k; j < C; j++) wt[j - k] = qv_weight_f32(wr, bf, j);
        for (int g = 0; g < gn; g++) {
            for (int64_t j = k; j < C; j++) xt[j - k] = x[g][j];
            acc[g][1] = vfmaq_f32(acc[g][1], vld1q_f32(wt), vld1q_f32(xt));
        }
    }
    for (int g = 0; g < gn; g++)
        out[g] = vaddvq_f32(vaddq_f32(vaddq_f32(acc[g][0], acc[g][1]), vaddq_f32(acc[g][2], acc[g][3])));
}

// x (C), W (OC,C) fp32 / bf16 -> y (OC)
QV_FP_DRIVER(f32_neon, , fp_row, 0, QV_GMAX)
QV_FP_DRIVER(bf16_neon, , fp_row, 1, QV_GMAX)

static const QvKernel K_NEON[] = {
    {"f32-neon", "neon", QV_F32, 0, f32_neon},
    {"bf16-neon", "neon", QV_BF16, 0, bf16_neon},
    {"q4_0-neon", "neon", QV_GGQ, GGQ_Q4_0, q4_0_neon},
    {"q4_1-neon", "neon", QV_GGQ, GGQ_Q4_1, q4_1_neon},
    {"q5_0-neon", "neon", QV_GGQ, GGQ_Q5_0, q5_0_neon},
    {"q5_1-neon", "neon", QV_GGQ, GGQ_Q5_1, q5_1_neon},
    {"q8_0-neon", "neon", QV_GGQ, GGQ_Q8_0, q8_0_neon},
    {"q4_k-neon", "neon", QV_GGQ, GGQ_Q4_K, q4_k_neon},
    {"q5_k-neon", "neon", QV_GGQ, GGQ_Q5_K, q5_k_neon},
    {"q6_k-neon", "neon", QV_GGQ, GGQ_Q6_K, q6_k_neon},
};
const QvKernel *const qv_kernels_neon[] = {&K_NEON[0], &K_NEON[1], &K_NEON[2], &K_NEON[3], &K_NEON[4], &K_NEON[5],
                                           &K_NEON[6], &K_NEON[7], &K_NEON[8], &K_NEON[9], NULL};
#else
const QvKernel *const qv_kernels_neon[] = {NULL};
#endif
