// quant — the decode GEMV's x86-64 variants (see qgemv.c and the last section of quant.h), each
// compiled for its instruction set with GCC's target attribute whatever the build's -march, and
// chosen at run time (qv_kernel_for):
//   *-avx2        ymm; integer dots vpmaddubsw + vpmaddwd                      (AVX2 + FMA)
//   *-avxvnni     the same code with vpdpbusd (VEX)                            (AVX-VNNI)
//   *-avx512      zmm; vpmaddubsw + vpmaddwd                                   (AVX-512 F/BW/DQ/VL)
//   *-avx512vnni  the same code with vpdpbusd                                  (AVX-512 VNNI)
//   f32 / bf16:   fp32 FMA, avx2 and avx512 only (no integer products).
// The four integer passes share one body: this file includes itself once per pass with
// QV_PASS set (1 avx2, 2 avxvnni, 3 avx512, 4 avx512vnni); the body's DOT primitives are the
// only code that differs between a pass and its VNNI twin.
//
// Exactness: every block's integer dot product is exact (vpmaddubsw pairs stay below 2^15:
// weights are 0..63 or |w| <= 128 against |q| <= 127; vpdpbusd sums of 4 below 2^15 where they
// are multiplied by a 16-bit scale through vpmaddwd); the fp32 scaling and sums are the only
// roundings.
// Speed (decode streams the weights once: each kernel must outrun memory with 2 threads; a
// server's step multiplies the same weights by up to 8 activations):
//   - 32-blocks: several rows at once, one 128-bit lane per row (4 rows per zmm, 2 per ymm),
//     the activation's 16 bytes broadcast to every lane: a block's codes are decoded once for
//     up to 8 (zmm) or 4 (ymm) activations, and each row's partial sums stay in its lane (so
//     its result does not depend on its neighbours); Q4_0 / Q5_0 take their codes unsigned,
//     the offset term -off·dw·(dx·Σqx) from x's block sums; one sequential software-prefetch
//     stream ahead of the rows.
//   - K formats (llama.cpp's ggml_vec_dot_q4_K_q8_K / q6_K scheme): the scales and mins
//     decoded once per super-block, the products multiplied by their 16-bit scale (vpmaddwd)
//     and kept exactly in int32 lanes over the super-block, the mins (and Q6_K's -32) from x's
//     sums of 16, one conversion per super-block, one horizontal sum per row.
#include "quant/quant.h"
#include "quant/quant_internal.h"

#if defined(__x86_64__)
#if !defined(QV_PASS)
#include <immintrin.h>
#include <math.h>
#include <string.h>


// The driver of the multi-row kernels of the 32-blocks: rows [r0, r0+nr) in groups of NR (a
// short last group repeats its last row; only real rows are stored), the activations in passes
// of up to GM (4 or 8) through KERNEL(TYPE, p[NR], nb, a[], gn, out) (out[k·GM + g]: row k,
// activation g; gn a compile-time constant <= GM). TGT / SFX: the pass's.
#define QV_ROWS_DRIVER(NAME, TYPE, NR, GM, KERNEL)                                                           \
    TGT static void NAME(const QvMatrix *w, int64_t r0, int64_t nr, const uint8_t *qx, size_t act, int G,   \
                         float *y, int64_t ldy, int accumulate) {                                           \
        const GgqMatrix *m = w->data;                                                                       \
        const int64_t nb = m->cols / 32;                                                                    \
        const size_t rb = (size_t)nb * QV_BB32(TYPE);                                                       \
        for (int64_t r = r0; r < r0 + nr; r += NR) {                                                        \
            const int nv = r0 + nr - r < NR ? (int)(r0 + nr - r) : NR;                                      \
            const uint8_t *p[NR];                                                                           \
            for (int k = 0; k < NR; k++) p[k] = (const uint8_t *)m->data + (size_t)(r + (k < nv ? k : nv - 1)) * rb; \
            for (int g0 = 0; g0 < G; g0 += GM) {                                                            \
                const int gn = G - g0 < GM ? G - g0 : GM;                                                   \
                QvAct a[GM];                                                                                \
                float out[NR * GM];                                                                         \
                for (int g = 0; g < gn; g++) a[g] = qv_act_view(qx + (g0 + g) * act, m->cols, 32);          \
                switch (gn) {                                                                               \
                case 1: KERNEL(TYPE, p, nb, a, 1, out); break;                                              \
                case 2: KERNEL(TYPE, p, nb, a, 2, out); break;                                              \
                case 3: KERNEL(TYPE, p, nb, a, 3, out); break;                                              \
                case 4: KERNEL(TYPE, p, nb, a, QV_GN(4, GM), out); break;                                   \
                case 5: KERNEL(TYPE, p, nb, a, QV_GN(5, GM), out); break;                                   \
                case 6: KERNEL(TYPE, p, nb, a, QV_GN(6, GM), out); break;                                   \
                case 7: KERNEL(TYPE, p, nb, a, QV_GN(7, GM), out); break;                                   \
                default: KERNEL(TYPE, p, nb, a, GM, out); break;                                            \
                }                                                                                           \
                for (int k = 0; k < nv; k++)                                                                \
                    for (int g = 0; g < gn; g++) qv_store1(y + (g0 + g) * ldy + r + k, accumulate, out[k * GM + g]); \
            }                                                                                               \
        }                                                                                                   \
    }

#define QV_PASS 1
#include "quant/qgemv_x86.c"
#undef QV_PASS
#define QV_PASS 2
#include "quant/qgemv_x86.c"
#undef QV_PASS
#define QV_PASS 3
#include "quant/qgemv_x86.c"
#undef QV_PASS
#define QV_PASS 4
#include "quant/qgemv_x86.c"
#undef QV_PASS

// ---- fp32 and bf16 weights: FMA against the fp32 activation ------------------------------------

#define T256F __attribute__((target("avx2,fma")))
#define T512F __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))
#define INLF static inline __attribute__((always_inline))

// 8 weights at k of row wr (fp32 or bf16 widened) -> ymm
T256F INLF __m256 w8(const void *wr, int bf, int64_t k) {
    if (!bf) return _mm256_loadu_ps((const float *)wr + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)wr + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Row wr (C) against gn activations: per activation 2 accumulators over 16-column steps, one
// 8-step, then the tail (< 8) from zero-padded copies; fixed reduction order.
T256F INLF void fp_row256(const void *wr, int bf, int64_t C, const float *const *x, const int gn, float *out) {
    __m256 acc[QV_GMAX][2];
    for (int g = 0; g < gn; g++) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= C; k += 16) {
        const __m256 a = w8(wr, bf, k), b = w8(wr, bf, k + 8);
        for (int g = 0; g < gn; g++) {
            acc[g][0] = _mm256_fmadd_ps(a, _mm256_loadu_ps(x[g] + k), acc[g][0]);
            acc[g][1] = _mm256_fmadd_ps(b, _mm256_loadu_ps(x[g] + k + 8), acc[g][1]);
        }
    }
    if (k + 8 <= C) {
        const __m256 a = w8(wr, bf, k);
        for (int g = 0; g < gn; g++) acc[g][0] = _mm256_fmadd_ps(a, _mm256_loadu_ps(x[g] + k), acc[g][0]);
        k += 8;
    }
    if (k < C) {
        float wt[8] = {0}, xt[8] = {0};
        for (int64_t j = k; j < C; j++) wt[j - k] = qv_weight_f32(wr, bf, j);
        const __m256 a = _mm256_loadu_ps(wt);
        for (int g = 0; g < gn; g++) {
            for (int64_t j = k; j < C; j++) xt[j - k] = x[g][j];
            acc[g][1] = _mm256_fmadd_ps(a, _mm256_loadu_ps(xt), acc[g][1]);
        }
    }
    for (int g = 0; g < gn; g++) {
        __m256 s = _mm256_add_ps(acc[g][0], acc[g][1]);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        out[g] = _mm_cvtss_f32(h);
    }
}

// 16 weights at k -> zmm (lanes past n zero)
T512F INLF __m512 w16(const void *wr, int bf, int64_t k, __mmask16 m) {
    if (!bf) return _mm512_maskz_loadu_ps(m, (const float *)wr + k);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)wr + k);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// The same with zmm for up to 8 activations in one pass (each weight loaded once for all):
// 2 accumulators per activation over 32-column steps, then one 16-step into the first, the
// masked tail into the second; per activation the same order whatever gn.
T512F INLF void fp_row512(const void *wr, int bf, int64_t C, const float *const *x, const int gn, float *out) {
    __m512 acc[8][2];
    for (int g = 0; g < gn; g++) acc[g][0] = acc[g][1] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= C; k += 32) {
        const __m512 v0 = w16(wr, bf, k, 0xFFFF), v1 = w16(wr, bf, k + 16, 0xFFFF);
        for (int g = 0; g < gn; g++) {
            acc[g][0] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x[g] + k), acc[g][0]);
            acc[g][1] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x[g] + k + 16), acc[g][1]);
        }
    }
    if (k + 16 <= C) {
        const __m512 v = w16(wr, bf, k, 0xFFFF);
        for (int g = 0; g < gn; g++) acc[g][0] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x[g] + k), acc[g][0]);
        k += 16;
    }
    if (k < C) {
        const __mmask16 m = (__mmask16)((1u << (C - k)) - 1);
        const __m512 v = w16(wr, bf, k, m);
        for (int g = 0; g < gn; g++) acc[g][1] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, x[g] + k), acc[g][1]);
    }
    for (int g = 0; g < gn; g++) out[g] = _mm512_reduce_add_ps(_mm512_add_ps(acc[g][0], acc[g][1]));
}

// x (C), W (OC,C) fp32 / bf16 -> y (OC)
QV_FP_DRIVER(f32_avx2, T256F, fp_row256, 0, QV_GMAX)
QV_FP_DRIVER(bf16_avx2, T256F, fp_row256, 1, QV_GMAX)
QV_FP_DRIVER(f32_avx512, T512F, fp_row512, 0, 8)
QV_FP_DRIVER(bf16_avx512, T512F, fp_row512, 1, 8)

// ---- the table ---------------------------------------------------------------------------------

#define QV_INT_KERNELS(SFX, ISA)                                                 \
    static const QvKernel k_q4_0_##SFX = {"q4_0-" #SFX, ISA, QV_GGQ, GGQ_Q4_0, q4_0_##SFX}; \
    static const QvKernel k_q4_1_##SFX = {"q4_1-" #SFX, ISA, QV_GGQ, GGQ_Q4_1, q4_1_##SFX}; \
    static const QvKernel k_q5_0_##SFX = {"q5_0-" #SFX, ISA, QV_GGQ, GGQ_Q5_0, q5_0_##SFX}; \
    static const QvKernel k_q5_1_##SFX = {"q5_1-" #SFX, ISA, QV_GGQ, GGQ_Q5_1, q5_1_##SFX}; \
    static const QvKernel k_q8_0_##SFX = {"q8_0-" #SFX, ISA, QV_GGQ, GGQ_Q8_0, q8_0_##SFX}; \
    static const QvKernel k_q4_k_##SFX = {"q4_k-" #SFX, ISA, QV_GGQ, GGQ_Q4_K, q4_k_##SFX}; \
    static const QvKernel k_q5_k_##SFX = {"q5_k-" #SFX, ISA, QV_GGQ, GGQ_Q5_K, q5_k_##SFX}; \
    static const QvKernel k_q6_k_##SFX = {"q6_k-" #SFX, ISA, QV_GGQ, GGQ_Q6_K, q6_k_##SFX};
QV_INT_KERNELS(avx2, "avx2")
QV_INT_KERNELS(avxvnni, "avxvnni")
QV_INT_KERNELS(avx512, "avx512f")
QV_INT_KERNELS(avx512vnni, "avx512vnni")
#define QV_INT_LIST(SFX) \
    &k_q4_0_##SFX, &k_q4_1_##SFX, &k_q5_0_##SFX, &k_q5_1_##SFX, &k_q8_0_##SFX, &k_q4_k_##SFX, &k_q5_k_##SFX, &k_q6_k_##SFX

static const QvKernel k_f32_avx2 = {"f32-avx2", "avx2", QV_F32, 0, f32_avx2};
static const QvKernel k_bf16_avx2 = {"bf16-avx2", "avx2", QV_BF16, 0, bf16_avx2};
static const QvKernel k_f32_avx512 = {"f32-avx512", "avx512f", QV_F32, 0, f32_avx512};
static const QvKernel k_bf16_avx512 = {"bf16-avx512", "avx512f", QV_BF16, 0, bf16_avx512};

const QvKernel *const qv_kernels_x86[] = {
    &k_f32_avx2, &k_bf16_avx2, &k_f32_avx512, &k_bf16_avx512,
    QV_INT_LIST(avx2), QV_INT_LIST(avxvnni), QV_INT_LIST(avx512), QV_INT_LIST(avx512vnni),
    NULL,
};

#else  // ---- the body of one integer pass (QV_PASS) ------------------------------------------

#if QV_PASS == 1
#define TGT __attribute__((target("avx2,fma,f16c")))
#define SFX(n) n##_avx2
#define VNNI 0
#define W512 0
#elif QV_PASS == 2
#define TGT __attribute__((target("avx2,fma,f16c,avxvnni")))
#define SFX(n) n##_avxvnni
#define VNNI 1
#define W512 0
#elif QV_PASS == 3
#define TGT __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma,f16c")))
#define SFX(n) n##_avx512
#define VNNI 0
#define W512 1
#else
#define TGT __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma,f16c")))
#define SFX(n) n##_avx512vnni
#define VNNI 1
#define W512 1
#endif
#define INL TGT static inline __attribute__((always_inline))

INL float SFX(h2f)(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

// the sum of 8 fp32 lanes
INL float SFX(hsum_f)(__m256 s) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

// Software prefetch of the weights QV_PF_BYTES or more ahead, as one sequential stream, in the
// multi-row kernels (the hardware prefetchers follow one stream better than the interleaved row
// streams a group of rows reads; measured on AMD Zen 5: without it, 40-60% of the bandwidth of
// one-row code).
#ifndef QV_PF_BYTES
#define QV_PF_BYTES 16384
#endif

// bytes per block of a 32-blocks type
#define QV_BB32(type) \
    ((type) == GGQ_Q4_0 ? 18 : (type) == GGQ_Q4_1 ? 20 : (type) == GGQ_Q5_0 ? 22 : (type) == GGQ_Q5_1 ? 24 : 34)

// The 12 scale bytes of a Q4_K / Q5_K super-block -> 16 bytes: the 8 6-bit scales, then the 8
// mins (quant.h's packing read as 32-bit words: sub-blocks 4..7 take their top 2 bits from the
// top 2 bits of bytes 0..7).
INL __m128i SFX(k4_scales)(const uint8_t *s) {
    uint32_t w0, w1, w2;
    memcpy(&w0, s, 4), memcpy(&w1, s + 4, 4), memcpy(&w2, s + 8, 4);
    const uint32_t m6 = 0x3f3f3f3fu, m4 = 0x0f0f0f0fu, t2 = 0x30303030u;
    return _mm_set_epi32((int)((w2 >> 4 & m4) | (w1 >> 2 & t2)), (int)(w1 & m6), (int)((w2 & m4) | (w0 >> 2 & t2)),
                         (int)(w0 & m6));
}
// vpshufb control dwords that make a scale the DOT4S multiplier of every dword of a lane.
// vpmaddubsw's pair sums need the scale in both 16-bit halves; VNNI's dword sums (|s| < 2^15,
// possibly negative) are multiplied through vpmaddwd's low half, so the high half must be 0.
// pick_u8: byte i of the lane zero-extended (the unsigned 6-bit K4 scales);
// pick_i16: 16-bit element i of the lane (Q6_K's signed scales, already widened).
static inline int SFX(pick_u8)(int i) {
    return (int)(VNNI ? 0x80808000u | (unsigned)i : 0x80008000u | (unsigned)i << 16 | (unsigned)i);
}
static inline int SFX(pick_i16)(int i) {
    const unsigned w = (unsigned)(2 * i) | (unsigned)(2 * i + 1) << 8;
    return (int)(VNNI ? 0x80800000u | w : w | w << 16);
}
// Σ_s m_s·Σ qx of a K4 super-block from k4_scales' bytes (broadcast to both lanes) and the
// activation's 16 sums of 16 (bs): 8 dwords, dword s = m_s·(bs[2s] + bs[2s+1]), exact.
INL __m256i SFX(k4_mins)(__m256i sm, const int16_t *bs) {
    const __m256i dup = _mm256_setr_epi8(8, -128, 8, -128, 9, -128, 9, -128, 10, -128, 10, -128, 11, -128, 11, -128,
                                         12, -128, 12, -128, 13, -128, 13, -128, 14, -128, 14, -128, 15, -128, 15, -128);
    return _mm256_madd_epi16(_mm256_shuffle_epi8(sm, dup), _mm256_loadu_si256((const __m256i *)bs));
}

#if !W512
// ---- 256-bit: one 32-block per vector -----------------------------------------------------------
// the fp32 accumulators: a vector, zero, the sum of two of them
#define VACC __m256
#define VACC_ZERO _mm256_setzero_ps()
#define VACC_SUM2(u, v) SFX(hsum_f)(_mm256_add_ps(u, v))
#define VACC_SUM(v) SFX(hsum_f)(v)
#define VACCI __m256i
#define VACCI_ZERO _mm256_setzero_si256()
// Σ_4 (u - off)·s per dword, exact (u, off unsigned bytes, s signed)
INL __m256i SFX(dot_off)(__m256i u, __m256i s, __m256i off) {
#if VNNI
    const __m256i z = _mm256_setzero_si256();
    return _mm256_sub_epi32(_mm256_dpbusd_avx_epi32(z, u, s), _mm256_dpbusd_avx_epi32(z, off, s));
#else
    return _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(u, s), _mm256_maddubs_epi16(off, s)),
                             _mm256_set1_epi16(1));
#endif
}
// Σ_4 u·s per dword
INL __m256i SFX(dot4)(__m256i u, __m256i s) {
#if VNNI
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
// Σ_4 w·s per dword for signed weights w (-128..127)
INL __m256i SFX(dot_s8)(__m256i w, __m256i s) {
#if VNNI
    const __m256i b = _mm256_set1_epi8((char)0x80);
    return SFX(dot_off)(_mm256_xor_si256(w, b), s, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(s, w)), _mm256_set1_epi16(1));
#endif
}
// acc + sc·Σ_4 u·s per dword (scv: SFX(scv)(sc) in every lane)
INL __m256i SFX(dot4s)(__m256i acc, __m256i u, __m256i s, __m256i scv) {
#if VNNI
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s), scv));
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scv));
#endif
}
// byte j = 0xFF where bit j of qh is set
INL __m256i SFX(bits32)(uint32_t qh) {
    const __m256i t = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh),
                                          _mm256_set_epi64x(0x0303030303030303ll, 0x0202020202020202ll,
                                                            0x0101010101010101ll, 0));
    const __m256i bm = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    return _mm256_cmpeq_epi8(_mm256_and_si256(t, bm), bm);
}

// ---- 32-blocks, two rows at a time: one 128-bit lane per row (the 256-bit form of the
// AVX-512 passes' four-row kernel, see there): `lo` the codes of elements 0..15 of a block,
// `hi` those of 16..31, the activation's 16 matching bytes broadcast to both lanes; per block
// and activation two dots, one conversion, one FMA by dw·dx, one FMA of the offset / min term.
// Each row's sums in its own lane, the same whatever else runs.
#define QV_G2 4

// the fp16 at p[r] + off of 2 rows -> ymm, lane r = 4 copies of row r's value
INL __m256 SFX(half2)(const uint8_t *const *p, const int off) {
    uint16_t h0, h1;
    memcpy(&h0, p[0] + off, 2), memcpy(&h1, p[1] + off, 2);
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)h0 | (uint32_t)h1 << 16)));
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(f), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}
// Σ over the 4 floats of each lane, the same order in both -> element 0 of each lane
INL void SFX(lanesum2)(__m256 v, float *r0, float *r1) {
    v = _mm256_add_ps(v, _mm256_permute_ps(v, 0xB1));
    v = _mm256_add_ps(v, _mm256_permute_ps(v, 0x4E));
    *r0 = _mm_cvtss_f32(_mm256_castps256_ps128(v)), *r1 = _mm_cvtss_f32(_mm256_extractf128_ps(v, 1));
}

// Rows p[0], p[1] of nb 32-blocks against gn activations -> out[r * QV_G2 + g]
INL void SFX(rows2_32)(const int type, const uint8_t *const *p, int64_t nb, const QvAct *a, const int gn, float *out) {
    const int bb = QV_BB32(type), has_min = type == GGQ_Q4_1 || type == GGQ_Q5_1;
    const int five = type == GGQ_Q5_0 || type == GGQ_Q5_1, o = 2 + 2 * has_min + 4 * five;
    const int q8 = type == GGQ_Q8_0;
    const float coef = has_min ? 1.0f : type == GGQ_Q4_0 ? -8.0f : type == GGQ_Q5_0 ? -16.0f : VNNI ? -128.0f : 0.0f;
    const __m256i m4 = _mm256_set1_epi8(15), m16 = _mm256_set1_epi8(16);
    __m256 acc[QV_G2], accm[QV_G2];
    for (int g = 0; g < gn; g++) acc[g] = accm[g] = _mm256_setzero_ps();
    const uint8_t *q[2] = {p[0], p[1]};
    // the weights QV_PF_BYTES or more ahead as one sequential stream (see the 512-bit passes)
    const size_t grp = 2 * (size_t)nb * bb, pfb = 2 * (size_t)bb;
    const char *pf = (const char *)p[0] + (QV_PF_BYTES + grp - 1) / grp * grp;
    for (int64_t b = 0; b < nb; b++, q[0] += bb, q[1] += bb, pf += pfb) {
        for (size_t k = 0; k < pfb; k += 64) _mm_prefetch(pf + k, _MM_HINT_T0);
        __m256i lo, hi;
        if (q8) {
            const __m256i r0 = _mm256_loadu_si256((const __m256i *)(q[0] + 2)), r1 = _mm256_loadu_si256((const __m256i *)(q[1] + 2));
            lo = _mm256_permute2x128_si256(r0, r1, 0x20), hi = _mm256_permute2x128_si256(r0, r1, 0x31);
        } else {
            const __m256i raw = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(q[1] + o)), _mm_loadu_si128((const __m128i *)(q[0] + o)));
            lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if (five) {  // bit j of a row's qh: element j's fifth bit
                uint32_t h0, h1;
                memcpy(&h0, q[0] + 2 + 2 * has_min, 4), memcpy(&h1, q[1] + 2 + 2 * has_min, 4);
                lo = _mm256_or_si256(lo, _mm256_and_si256(SFX(bits32)((h0 & 0xFFFF) | h1 << 16), m16));
                hi = _mm256_or_si256(hi, _mm256_and_si256(SFX(bits32)(h0 >> 16 | (h1 & 0xFFFF0000u)), m16));
            }
        }
#if VNNI
        if (q8) {  // w + 128 unsigned
            const __m256i s80 = _mm256_set1_epi8((char)0x80);
            lo = _mm256_xor_si256(lo, s80), hi = _mm256_xor_si256(hi, s80);
        }
#else
        __m256i slo = lo, shi = hi;  // Q8_0: |w| against x with w's sign
        if (q8) lo = _mm256_abs_epi8(lo), hi = _mm256_abs_epi8(hi);
#endif
        const __m256 dw = SFX(half2)(q, 0);
        const __m256 cw = has_min ? SFX(half2)(q, 2) : dw;
        for (int g = 0; g < gn; g++) {
            const int8_t *xq = a[g].q + 32 * b;
            const __m256i xl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)xq));
            const __m256i xh = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xq + 16)));
            __m256i d;
#if VNNI
            d = _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lo, xl), hi, xh);
#else
            const __m256i one = _mm256_set1_epi16(1);
            if (q8)
                d = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_sign_epi8(xl, slo)), one),
                                     _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_sign_epi8(xh, shi)), one));
            else  // pair sums of both halves stay below 2^15 (codes <= 31)
                d = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh)), one);
#endif
            acc[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(dw, _mm256_set1_ps(a[g].d[b])), acc[g]);
            if (coef != 0.0f) accm[g] = _mm256_fmadd_ps(cw, _mm256_set1_ps(a[g].s[b]), accm[g]);
        }
    }
    for (int g = 0; g < gn; g++) {
        float r0, r1;
        SFX(lanesum2)(acc[g], &r0, &r1);
        if (coef != 0.0f) {
            const float m0 = _mm_cvtss_f32(_mm256_castps256_ps128(accm[g])), m1 = _mm_cvtss_f32(_mm256_extractf128_ps(accm[g], 1));
            r0 = fmaf(coef, m0, r0), r1 = fmaf(coef, m1, r1);
        }
        out[g] = r0, out[QV_G2 + g] = r1;
    }
}

// bit k of each byte of hb -> 16 or 0 (Q5_K's fifth bit of sub-block k)
INL __m256i SFX(bit4)(__m256i hb, const int k) {
    const __m256i t = _mm256_and_si256(hb, _mm256_set1_epi8((char)(1 << k)));
    return k <= 4 ? _mm256_slli_epi16(t, 4 - k) : _mm256_srli_epi16(t, k - 4);
}

// One row of Q4_K / Q5_K super-blocks against gn activations -> out[gn] (the scheme of
// llama.cpp's ggml_vec_dot_q4_K_q8_K). Per super-block: the scales and mins decoded once (scalar
// words -> bytes broadcast to both lanes), the codes once per 64 (sub-blocks 2j, 2j+1 in the
// low / high nibbles of 32 bytes); per activation the pair sums are multiplied by their 16-bit
// scale (vpmaddwd) and kept exactly in 8 int32 lanes across the 8 sub-blocks, the mins term
// comes from the activation's sums of 16 (one vpmaddwd); each is converted once and multiplied
// into a per-activation fp32 vector (d·dx, -dmin·dx); one horizontal sum per row.
INL void SFX(row_k45)(const int five, const uint8_t *row, int64_t nb, const QvAct *a, const int gn, float *out) {
    const int bb = five ? 176 : 144;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[QV_GMAX];
    for (int g = 0; g < gn; g++) acc[g] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = row + b * bb, *qs = p + (five ? 48 : 16);
        const __m256i sm = _mm256_broadcastsi128_si256(SFX(k4_scales)(p + 4));
        const __m256i hb = five ? _mm256_loadu_si256((const __m256i *)(p + 16)) : _mm256_setzero_si256();
        __m256i sumi[QV_GMAX];
        for (int g = 0; g < gn; g++) sumi[g] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (five) {
                lo = _mm256_or_si256(lo, SFX(bit4)(hb, 2 * j));
                hi = _mm256_or_si256(hi, SFX(bit4)(hb, 2 * j + 1));
            }
            const __m256i s0 = _mm256_shuffle_epi8(sm, _mm256_set1_epi32(SFX(pick_u8)(2 * j)));
            const __m256i s1 = _mm256_shuffle_epi8(sm, _mm256_set1_epi32(SFX(pick_u8)(2 * j + 1)));
            for (int g = 0; g < gn; g++) {
                const int8_t *xq = a[g].q + 256 * b + 64 * j;
                sumi[g] = SFX(dot4s)(sumi[g], lo, _mm256_loadu_si256((const __m256i *)xq), s0);
                sumi[g] = SFX(dot4s)(sumi[g], hi, _mm256_loadu_si256((const __m256i *)(xq + 32)), s1);
            }
        }
        const float d = SFX(h2f)(p), dmin = SFX(h2f)(p + 2);
        for (int g = 0; g < gn; g++) {
            const __m256i summ = SFX(k4_mins)(sm, a[g].bs + 16 * b);
            const float dx = a[g].d[b];
            acc[g] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(sumi[g]), acc[g]);
            acc[g] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * dx), _mm256_cvtepi32_ps(summ), acc[g]);
        }
    }
    for (int g = 0; g < gn; g++) out[g] = SFX(hsum_f)(acc[g]);
}

// Half h (128 elements) of a Q6_K super-block p against gn activations (x at a[g].q + o):
// the codes of its 4 groups of 32 (low nibbles of ql | 2 bits of qh), each group's two scales
// (16 elements each: the two 128-bit lanes) picked from the widened scales s16; per activation
// Σ sc_j·Σ q·qx added exactly to the 8 int32 lanes of sumi[g].
INL void SFX(q6_half)(const uint8_t *p, const int h, __m256i s16, const QvAct *a, int64_t o, const int gn,
                      __m256i *sumi) {
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    const __m256i S = _mm256_permute2x128_si256(s16, s16, h ? 0x11 : 0x00);  // scales 8h..8h+7
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)(p + 64 * h));
    const __m256i l1 = _mm256_loadu_si256((const __m256i *)(p + 64 * h + 32));
    const __m256i H = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
    for (int k = 0; k < 4; k++) {
        const __m256i src = k & 1 ? l1 : l0;
        const __m256i low = _mm256_and_si256(k < 2 ? src : _mm256_srli_epi16(src, 4), m4);
        const __m256i top = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(H, 2 * k), m3), 4);
        const __m256i c = _mm256_or_si256(low, top);
        const __m256i scv = _mm256_shuffle_epi8(
            S, _mm256_set_m128i(_mm_set1_epi32(SFX(pick_i16)(2 * k + 1)), _mm_set1_epi32(SFX(pick_i16)(2 * k))));
        for (int g = 0; g < gn; g++)
            sumi[g] = SFX(dot4s)(sumi[g], c, _mm256_loadu_si256((const __m256i *)(a[g].q + o + 128 * h + 32 * k)), scv);
    }
}
// acc + s·(sumi - 32·corr), corr: 8 dwords
INL __m256 SFX(q6_fin)(__m256 acc, __m256i sumi, __m256i corr, float s) {
    return _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi, _mm256_slli_epi32(corr, 5))), acc);
}

#else
// ---- 512-bit: two 32-blocks per vector ----------------------------------------------------------
#define VACC __m512
#define VACC_ZERO _mm512_setzero_ps()
#define VACC_SUM2(u, v) _mm512_reduce_add_ps(_mm512_add_ps(u, v))
#define VACC_SUM(v) _mm512_reduce_add_ps(v)
#define VACCI __m512i
#define VACCI_ZERO _mm512_setzero_si512()
INL __m512i SFX(dot_off)(__m512i u, __m512i s, __m512i off) {
#if VNNI
    const __m512i z = _mm512_setzero_si512();
    return _mm512_sub_epi32(_mm512_dpbusd_epi32(z, u, s), _mm512_dpbusd_epi32(z, off, s));
#else
    return _mm512_madd_epi16(_mm512_sub_epi16(_mm512_maddubs_epi16(u, s), _mm512_maddubs_epi16(off, s)),
                             _mm512_set1_epi16(1));
#endif
}
INL __m512i SFX(dot4)(__m512i u, __m512i s) {
#if VNNI
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s);
#else
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
#endif
}
INL __m512i SFX(dot_s8)(__m512i w, __m512i s) {
#if VNNI
    const __m512i b = _mm512_set1_epi8((char)0x80);
    return SFX(dot_off)(_mm512_xor_si512(w, b), s, b);
#else
    const __m512i sn = _mm512_mask_sub_epi8(s, _mm512_movepi8_mask(w), _mm512_setzero_si512(), s);
    return _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(w), sn), _mm512_set1_epi16(1));
#endif
}
INL __m512i SFX(dot4s)(__m512i acc, __m512i u, __m512i s, __m512i scv) {
#if VNNI
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s), scv));
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), scv));
#endif
}
// [a | b]: two ymm -> one zmm
INL __m512i SFX(cat)(__m256i a, __m256i b) { return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1); }

// ---- 32-blocks, four rows at a time: one 128-bit lane per row ----------------------------------
// A zmm holds 16 code bytes of each of 4 rows (lane r: row r): `lo` the codes of elements 0..15
// of a block, `hi` those of 16..31; the activation's 16 matching bytes are broadcast to the 4
// lanes, so one vpdpbusd gives each row 4 dword partial sums, exact. Per block and activation:
// the two dots, one conversion, one FMA by dw·dx (lane r: its row's dw), one FMA of the
// offset / min term by x's block value s = dx·Σq (Q4_0 / Q5_0: -8 / -16 · dw·s, the codes
// taken unsigned; Q4_1 / Q5_1: m·s; Q8_0 with VNNI: -128 · dw·s, the codes taken as w + 128).
// Each row's sums run in its own lane in the same order whatever the other rows and
// activations: the same result for a row alone or in a batch. Weight bytes are decoded once
// per block for up to QV_G4 activations (against QV_GMAX for the one-row kernels).
#define QV_G4 8

// The fp16 at p[r] + off of 4 rows -> zmm, lane r = 4 copies of row r's value
INL __m512 SFX(half4)(const uint8_t *const *p, const int off) {
    uint16_t h[4];
    for (int r = 0; r < 4; r++) memcpy(&h[r], p[r] + off, 2);
    uint64_t w = (uint64_t)h[0] | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 32 | (uint64_t)h[3] << 48;
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)w));
    return _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0), _mm512_castps128_ps512(f));
}
// The 32 bytes at p[r] + off of 4 rows -> lo (lane r: row r's bytes 0..15), hi (16..31)
INL void SFX(lanes32)(const uint8_t *const *p, const int off, __m512i *lo, __m512i *hi) {
    const __m512i a = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p[0] + off))),
                                         _mm256_loadu_si256((const __m256i *)(p[1] + off)), 1);
    const __m512i b = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p[2] + off))),
                                         _mm256_loadu_si256((const __m256i *)(p[3] + off)), 1);
    *lo = _mm512_permutex2var_epi64(a, _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0), b);
    *hi = _mm512_permutex2var_epi64(a, _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2), b);
}
// 16 bytes at p[r] + off of 4 rows -> zmm, lane r = row r's
INL __m512i SFX(lanes16)(const uint8_t *const *p, const int off) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p[0] + off)));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p[1] + off)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p[2] + off)), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p[3] + off)), 3);
}
// Q5's fifth bits of 4 rows (qh at p[r] + off, bit j for element j) -> the byte masks of the
// elements 0..15 (lo) and 16..31 (hi) in the lanes' order
INL void SFX(fifth4)(const uint8_t *const *p, const int off, __mmask64 *lo, __mmask64 *hi) {
    uint64_t l = 0, h = 0;
    for (int r = 0; r < 4; r++) {
        uint32_t q;
        memcpy(&q, p[r] + off, 4);
        l |= (uint64_t)(q & 0xFFFF) << 16 * r;
        h |= (uint64_t)(q >> 16) << 16 * r;
    }
    *lo = (__mmask64)l, *hi = (__mmask64)h;
}
// Σ over the 4 floats of each lane, in the same order in every lane -> 4 floats (row r at r)
INL __m128 SFX(lanesum4)(__m512 v) {
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));  // (0+1, 1+0, 2+3, 3+2)
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));  // ((0+1)+(2+3), ...)
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), v));
}

// Rows p[0..3] of nb 32-blocks against gn activations -> out[r * QV_G4 + g]
INL void SFX(rows4_32)(const int type, const uint8_t *const *p, int64_t nb, const QvAct *a, const int gn, float *out) {
    const int bb = QV_BB32(type), has_min = type == GGQ_Q4_1 || type == GGQ_Q5_1;
    const int five = type == GGQ_Q5_0 || type == GGQ_Q5_1, o = 2 + 2 * has_min + 4 * five;
    const int q8 = type == GGQ_Q8_0;
    // the coefficient of the offset / min sum (0: none)
    const float coef = has_min ? 1.0f : type == GGQ_Q4_0 ? -8.0f : type == GGQ_Q5_0 ? -16.0f : VNNI ? -128.0f : 0.0f;
    const __m512i m4 = _mm512_set1_epi8(15), m16 = _mm512_set1_epi8(16);
    __m512 acc[QV_G4], accm[QV_G4];
    for (int g = 0; g < gn; g++) acc[g] = accm[g] = _mm512_setzero_ps();
    const uint8_t *q[4] = {p[0], p[1], p[2], p[3]};
    // the group QV_PF_BYTES or more ahead (rows are contiguous: 4 rows = one run of bytes),
    // fetched as ONE sequential stream, 4 blocks' worth of it per block of this group
    const size_t grp = 4 * (size_t)nb * bb, pfb = 4 * (size_t)bb;
    const char *pf = (const char *)p[0] + (QV_PF_BYTES + grp - 1) / grp * grp;
    for (int64_t b = 0; b < nb; b++, q[0] += bb, q[1] += bb, q[2] += bb, q[3] += bb, pf += pfb) {
        for (size_t o = 0; o < pfb; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
        __m512i lo, hi;
        if (q8) {
            SFX(lanes32)(q, 2, &lo, &hi);
        } else {
            const __m512i raw = SFX(lanes16)(q, o);
            lo = _mm512_and_si512(raw, m4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
            if (five) {
                __mmask64 ml, mh;
                SFX(fifth4)(q, 2 + 2 * has_min, &ml, &mh);
                lo = _mm512_mask_add_epi8(lo, ml, lo, m16), hi = _mm512_mask_add_epi8(hi, mh, hi, m16);
            }
        }
#if VNNI
        if (q8) {  // w + 128 unsigned
            const __m512i s80 = _mm512_set1_epi8((char)0x80);
            lo = _mm512_xor_si512(lo, s80), hi = _mm512_xor_si512(hi, s80);
        }
#else
        __mmask64 nl = 0, nh = 0;
        if (q8) {  // |w| against x with w's sign
            nl = _mm512_movepi8_mask(lo), nh = _mm512_movepi8_mask(hi);
            lo = _mm512_abs_epi8(lo), hi = _mm512_abs_epi8(hi);
        }
#endif
        const __m512 dw = SFX(half4)(q, 0);
        const __m512 cw = has_min ? SFX(half4)(q, 2) : dw;
        for (int g = 0; g < gn; g++) {
            const int8_t *xq = a[g].q + 32 * b;
            const __m512i xl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)xq));
            const __m512i xh = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xq + 16)));
            __m512i d;
#if VNNI
            d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl), hi, xh);
#else
            if (q8) {
                const __m512i z = _mm512_setzero_si512();
                const __m512i sl = _mm512_mask_sub_epi8(xl, nl, z, xl), sh = _mm512_mask_sub_epi8(xh, nh, z, xh);
                const __m512i one = _mm512_set1_epi16(1);
                d = _mm512_add_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(lo, sl), one),
                                     _mm512_madd_epi16(_mm512_maddubs_epi16(hi, sh), one));
            } else {  // pair sums of both halves stay below 2^15 (codes <= 31)
                d = _mm512_madd_epi16(_mm512_add_epi16(_mm512_maddubs_epi16(lo, xl), _mm512_maddubs_epi16(hi, xh)),
                                      _mm512_set1_epi16(1));
            }
#endif
            acc[g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(dw, _mm512_set1_ps(a[g].d[b])), acc[g]);
            if (coef != 0.0f) accm[g] = _mm512_fmadd_ps(cw, _mm512_set1_ps(a[g].s[b]), accm[g]);
        }
    }
    for (int g = 0; g < gn; g++) {
        __m128 r = SFX(lanesum4)(acc[g]);
        if (coef != 0.0f) {
            const __m128 m = _mm512_castps512_ps128(_mm512_permutexvar_ps(
                _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), accm[g]));
            r = _mm_fmadd_ps(_mm_set1_ps(coef), m, r);
        }
        float t[4];
        _mm_storeu_ps(t, r);
        for (int k = 0; k < 4; k++) out[k * QV_G4 + g] = t[k];
    }
}


// The 4 dwords of each 128-bit lane i of a zmm set to c[i]
INL __m512i SFX(lanes4)(int c0, int c1, int c2, int c3) {
    return _mm512_set_epi32(c3, c3, c3, c3, c2, c2, c2, c2, c1, c1, c1, c1, c0, c0, c0, c0);
}

// Q4_K / Q5_K as the 256-bit row_k45, with sub-blocks 2j and 2j+1 in the two halves of a zmm
// (their 64 activation bytes contiguous) and Q5_K's fifth bit added under a byte mask.
INL void SFX(row_k45)(const int five, const uint8_t *row, int64_t nb, const QvAct *a, const int gn, float *out) {
    const int bb = five ? 176 : 144;
    const __m512i m4 = _mm512_set1_epi8(15), m16 = _mm512_set1_epi8(16);
    __m512 acc[QV_GMAX];
    for (int g = 0; g < gn; g++) acc[g] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = row + b * bb, *qs = p + (five ? 48 : 16);
        const __m128i s8 = SFX(k4_scales)(p + 4);
        const __m512i sm = _mm512_broadcast_i32x4(s8);
        const __m256i hb = five ? _mm256_loadu_si256((const __m256i *)(p + 16)) : _mm256_setzero_si256();
        const __m512i hb2 = SFX(cat)(hb, hb);
        __m512i sumi[QV_GMAX];
        for (int g = 0; g < gn; g++) sumi[g] = _mm512_setzero_si512();
        for (int j = 0; j < 4; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            __m512i v = _mm512_and_si512(SFX(cat)(q, _mm256_srli_epi16(q, 4)), m4);
            if (five) {
                const __m512i sel = SFX(cat)(_mm256_set1_epi8((char)(1 << 2 * j)), _mm256_set1_epi8((char)(2 << 2 * j)));
                v = _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(hb2, sel), v, m16);
            }
            const int c0 = SFX(pick_u8)(2 * j), c1 = SFX(pick_u8)(2 * j + 1);
            const __m512i scv = _mm512_shuffle_epi8(sm, SFX(lanes4)(c0, c0, c1, c1));
            for (int g = 0; g < gn; g++)
                sumi[g] = SFX(dot4s)(sumi[g], v, _mm512_loadu_si512(a[g].q + 256 * b + 64 * j), scv);
        }
        const float d = SFX(h2f)(p), dmin = SFX(h2f)(p + 2);
        for (int g = 0; g < gn; g++) {
            const __m256i summ = SFX(k4_mins)(_mm512_castsi512_si256(sm), a[g].bs + 16 * b);
            const float dx = a[g].d[b];
            acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(d * dx), _mm512_cvtepi32_ps(sumi[g]), acc[g]);
            acc[g] = _mm512_fnmadd_ps(_mm512_set1_ps(dmin * dx), _mm512_zextps256_ps512(_mm256_cvtepi32_ps(summ)), acc[g]);
        }
    }
    for (int g = 0; g < gn; g++) out[g] = _mm512_reduce_add_ps(acc[g]);
}

// Q6_K's half as the 256-bit q6_half, 64 elements per zmm: the low nibbles of ql[0..63] (groups
// 0 and 1 of the half), then the high nibbles (groups 2 and 3); 128-bit lane i of a part takes
// scale 8h + 4·part + i.
INL void SFX(q6_half)(const uint8_t *p, const int h, __m256i s16, const QvAct *a, int64_t o, const int gn,
                      __m512i *sumi) {
    const __m512i m4 = _mm512_set1_epi8(15), m3 = _mm512_set1_epi8(3);
    const __m512i S = _mm512_broadcast_i32x4(h ? _mm256_extracti128_si256(s16, 1) : _mm256_castsi256_si128(s16));
    const __m512i A = _mm512_loadu_si512(p + 64 * h);
    const __m256i H = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
    const __m512i H2 = SFX(cat)(H, _mm256_srli_epi16(H, 2));
    for (int part = 0; part < 2; part++) {
        const __m512i low = _mm512_and_si512(part ? _mm512_srli_epi16(A, 4) : A, m4);
        const __m512i top = _mm512_slli_epi16(_mm512_and_si512(part ? _mm512_srli_epi16(H2, 4) : H2, m3), 4);
        const __m512i c = _mm512_or_si512(low, top);
        const __m512i scv = _mm512_shuffle_epi8(S, SFX(lanes4)(SFX(pick_i16)(4 * part), SFX(pick_i16)(4 * part + 1),
                                                               SFX(pick_i16)(4 * part + 2), SFX(pick_i16)(4 * part + 3)));
        for (int g = 0; g < gn; g++)
            sumi[g] = SFX(dot4s)(sumi[g], c, _mm512_loadu_si512(a[g].q + o + 128 * h + 64 * part), scv);
    }
}
INL __m512 SFX(q6_fin)(__m512 acc, __m512i sumi, __m256i corr, float s) {
    const __m512i si = _mm512_sub_epi32(sumi, _mm512_zextsi256_si512(_mm256_slli_epi32(corr, 5)));
    return _mm512_fmadd_ps(_mm512_set1_ps(s), _mm512_cvtepi32_ps(si), acc);
}
#endif

// ---- width-independent: the drivers -------------------------------------------------------------

// One row of Q6_K super-blocks against gn activations -> out[gn] (llama.cpp's
// ggml_vec_dot_q6_K_q8_K scheme, with the -32 taken from the sums of 16): per super-block the
// scales widened once, each activation's Σ sc_j·Σ q·qx exact in int32 lanes (q6_half), minus
// 32·Σ sc_j·bs_j (one vpmaddwd), converted once (q6_fin); one horizontal sum per row.
INL void SFX(row_q6)(const uint8_t *row, int64_t nb, const QvAct *a, const int gn, float *out) {
    VACC acc[QV_GMAX];
    for (int g = 0; g < gn; g++) acc[g] = VACC_ZERO;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = row + b * 210;
        const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 192)));
        VACCI sumi[QV_GMAX];
        for (int g = 0; g < gn; g++) sumi[g] = VACCI_ZERO;
        for (int h = 0; h < 2; h++) SFX(q6_half)(p, h, s16, a, 256 * b, gn, sumi);
        const float d = SFX(h2f)(p + 208);
        for (int g = 0; g < gn; g++) {
            const __m256i corr = _mm256_madd_epi16(s16, _mm256_loadu_si256((const __m256i *)(a[g].bs + 16 * b)));
            acc[g] = SFX(q6_fin)(acc[g], sumi[g], corr, d * a[g].d[b]);
        }
    }
    for (int g = 0; g < gn; g++) out[g] = VACC_SUM(acc[g]);
}


#define ROW_Q4_K(row, nb, a, gn, out) SFX(row_k45)(0, row, nb, a, gn, out)
#define ROW_Q5_K(row, nb, a, gn, out) SFX(row_k45)(1, row, nb, a, gn, out)
#define ROW_Q6_K(row, nb, a, gn, out) SFX(row_q6)(row, nb, a, gn, out)
// x (C) q8 blocks, W (OC,C) GGUF -> y (OC)
#if W512
#define ROWS_32(NAME, TYPE) QV_ROWS_DRIVER(NAME, TYPE, 4, QV_G4, SFX(rows4_32))
#else
#define ROWS_32(NAME, TYPE) QV_ROWS_DRIVER(NAME, TYPE, 2, QV_G2, SFX(rows2_32))
#endif
ROWS_32(SFX(q4_0), GGQ_Q4_0)
ROWS_32(SFX(q4_1), GGQ_Q4_1)
ROWS_32(SFX(q5_0), GGQ_Q5_0)
ROWS_32(SFX(q5_1), GGQ_Q5_1)
ROWS_32(SFX(q8_0), GGQ_Q8_0)
#undef ROWS_32
QV_INT_DRIVER(SFX(q4_k), TGT, 256, ROW_Q4_K)
QV_INT_DRIVER(SFX(q5_k), TGT, 256, ROW_Q5_K)
QV_INT_DRIVER(SFX(q6_k), TGT, 256, ROW_Q6_K)

#undef ROW_Q4_K
#undef ROW_Q5_K
#undef ROW_Q6_K
#undef INL
#undef TGT
#undef SFX
#undef VNNI
#undef W512
#undef QV_BB32
#undef VACC
#undef VACC_ZERO
#undef VACC_SUM2
#undef VACC_SUM
#undef VACCI
#undef VACCI_ZERO
#undef QV_G4
#undef QV_G2
#endif  // QV_PASS

#else  // not x86-64
const QvKernel *const qv_kernels_x86[] = {NULL};
#endif
