// quant — the fused NF4 dequantize-and-dot kernel for a few rows of x (decoding, N = 1):
// codes are unpacked in registers and looked up in the 16-value codebook with one AVX-512
// permute per 16 weights (AVX2: two 8-entry permutes and a blend per 8; NEON: tbl; portable
// C), so the 4-bit matrix is streamed once and never written out as floats. See nf4_gemv in
// quant.h.
//
// Measured on this machine (2 cores): the loop is bound by the vector shuffle unit (per block
// of 64 weights: 2 zero-extends, 2 shifts, 4 permutes), about 2.4 ns per block and core. The
// absmax values of a row are therefore computed by scalar code inside the loop of the previous
// row (where they overlap with the shuffles) and broadcast from memory (a broadcast from a
// register would be one more shuffle), and the codes are prefetched (without it the stream
// from DRAM ran at half the speed of the same loop on cached data).
#include "quant/quant.h"
#include "quant/quant_internal.h"

#include <omp.h>
#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#define GEMV_PAR_MIN 32768  // weights: smaller matrices run on the calling thread
#define GEMV_ROWS 32        // rows of W per parallel chunk
#define GEMV_G 4            // rows of x per pass over a row of W
#define GEMV_PREFETCH 2048  // bytes of codes fetched ahead of the loop
#define GEMV_MAX_BLOCKS 1024  // blocks per row (cols <= 65536)

// NAME: a row kernel ROW with G (1..GEMV_G) a compile-time constant in each call, so that its
// accumulators stay in registers (expanded inside each kernel's target region)
#define GEMV_ROW_N(NAME, ROW)                                                                             \
    static void NAME(const Nf4Matrix *w, int64_t r, const float *xr, int64_t xs, int G, const float *am, \
                     float *am_next, float *out) {                                                        \
        switch (G) {                                                                                      \
        case 1: ROW(w, r, xr, xs, 1, am, am_next, out); break;                                            \
        case 2: ROW(w, r, xr, xs, 2, am, am_next, out); break;                                            \
        case 3: ROW(w, r, xr, xs, 3, am, am_next, out); break;                                            \
        default: ROW(w, r, xr, xs, GEMV_G, am, am_next, out); break;                                      \
        }                                                                                                 \
    }

int nf4_gemv_ok(const Nf4Matrix *w) {
    return w->cols % NF4_BLOCK == 0 && w->cols / NF4_BLOCK <= GEMV_MAX_BLOCKS;
}

// absmax of block b, rounded as nf4_dequant_rows rounds it: the product and the sum are two
// fp32 operations (-std=c11 implies -ffp-contract=off: they are not fused into an FMA).
static inline float gemv_absmax(const Nf4Matrix *m, int64_t b) {
    float a = m->code2[m->absmax_q[b]] * m->scale2[b / NF4_BLOCK2];
    return a + m->offset;
}

// x (C) -> xr (C), C % 64 == 0: each block of 64 in the order of the kernel's lanes. Half h
// of a block is codes bytes 16h..16h+15; byte j holds element 2(16h+j) in its high nibble
// and 2(16h+j)+1 in its low one, so xr[32h + j] = x[2(16h+j)], xr[32h+16+j] = x[2(16h+j)+1].
void nf4_gemv_reorder(const float *x, int64_t C, float *xr) {
    for (int64_t b = 0; b < C; b += NF4_BLOCK)
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < 16; j++) {
                xr[b + 32 * h + j] = x[b + 2 * (16 * h + j)];
                xr[b + 32 * h + 16 + j] = x[b + 2 * (16 * h + j) + 1];
            }
}

// Row r of W against G rows of the reordered x (xr (G,C)) -> out (G): out[i] = W[r,:]·x_i.
// am: the row's absmax values; am_next (or NULL): receives those of row r+1 on the way.
// Each weight is nf4[code]·absmax rounded as nf4_dequant_rows rounds it; only the order of
// the sums differs from dequantize + dot.
// xs: the stride between the rows of xr.
#if defined(__aarch64__)
static inline __attribute__((always_inline)) void gemv_row_neon(const Nf4Matrix *w, int64_t r, const float *xr,
                                                                int64_t xs, int G, const float *am, float *am_next,
                                                                float *out) {
    const int64_t C = w->cols, nbr = C / NF4_BLOCK, bn = (r + 1) * nbr;
    const uint8_t *p = w->packed + r * (C / 2);
    // NEON: the codebook scaled by the block's absmax is a 64-byte table; each code c becomes
    // the byte indices 4c .. 4c+3 of its float (tbl): 16 lookups of 4 weights per block
    const float *cb = nf4_codebook();
    const float32x4_t cb0 = vld1q_f32(cb), cb1 = vld1q_f32(cb + 4), cb2 = vld1q_f32(cb + 8), cb3 = vld1q_f32(cb + 12);
    const uint8x16_t off = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
    float32x4_t acc[GEMV_G][4];
    for (int i = 0; i < G; i++)
        for (int q = 0; q < 4; q++) acc[i][q] = vdupq_n_f32(0.0f);
    for (int64_t k = 0; k < nbr; k++) {
        if (am_next) am_next[k] = gemv_absmax(w, bn + k);
        const float32x4_t va = vdupq_n_f32(am[k]);
        const uint8x16x4_t tb = {{vreinterpretq_u8_f32(vmulq_f32(cb0, va)), vreinterpretq_u8_f32(vmulq_f32(cb1, va)),
                                  vreinterpretq_u8_f32(vmulq_f32(cb2, va)), vreinterpretq_u8_f32(vmulq_f32(cb3, va))}};
        for (int h = 0; h < 2; h++) {
            const uint8x16_t b = vld1q_u8(p + 32 * k + 16 * h);
            // xr order: the 16 high nibbles against xr[32h ..], the 16 low ones against xr[32h + 16 ..]
            const uint8x16_t codes[2] = {vshrq_n_u8(b, 4), vandq_u8(b, vdupq_n_u8(15))};
            for (int e = 0; e < 2; e++) {
                uint8x16x2_t d = vzipq_u8(codes[e], codes[e]);
                for (int f = 0; f < 2; f++) {
                    uint8x16x2_t qd = vzipq_u8(d.val[f], d.val[f]);
                    for (int g = 0; g < 2; g++) {
                        const float32x4_t v =
                            vreinterpretq_f32_u8(vqtbl4q_u8(tb, vaddq_u8(vshlq_n_u8(qd.val[g], 2), off)));
                        const int o = 32 * h + 16 * e + 8 * f + 4 * g;
                        for (int i = 0; i < G; i++)
                            acc[i][2 * f + g] = vfmaq_f32(acc[i][2 * f + g], v, vld1q_f32(xr + i * xs + k * NF4_BLOCK + o));
                    }
                }
            }
        }
    }
    for (int i = 0; i < G; i++)
        out[i] = vaddvq_f32(vaddq_f32(vaddq_f32(acc[i][0], acc[i][1]), vaddq_f32(acc[i][2], acc[i][3])));
}

GEMV_ROW_N(gemv_row_n_neon, gemv_row_neon)
#endif

// The portable C row kernel (every architecture).
static inline __attribute__((always_inline)) void gemv_row(const Nf4Matrix *w, int64_t r, const float *xr, int64_t xs,
                                                           int G, const float *am, float *am_next, float *out) {
    const int64_t C = w->cols, nbr = C / NF4_BLOCK, bn = (r + 1) * nbr;
    const uint8_t *p = w->packed + r * (C / 2);
    const float *cb = nf4_codebook();
    for (int i = 0; i < G; i++) out[i] = 0.0f;
    for (int64_t k = 0; k < nbr; k++) {
        if (am_next) am_next[k] = gemv_absmax(w, bn + k);
        const uint8_t *pk = p + 32 * k;
        for (int i = 0; i < G; i++) {
            const float *xi = xr + i * xs + k * NF4_BLOCK;
            float s = 0.0f;
            for (int h = 0; h < 2; h++)
                for (int j = 0; j < 16; j++) {
                    uint8_t byte = pk[16 * h + j];
                    s += cb[byte >> 4] * am[k] * xi[32 * h + j] + cb[byte & 15] * am[k] * xi[32 * h + 16 + j];
                }
            out[i] += s;
        }
    }
}

// The same with G a compile-time constant.
GEMV_ROW_N(gemv_row_n, gemv_row)

// The AVX-512 kernel, compiled for AVX-512 whatever the build's -march (a target region) and
// taken when the CPU has it (nf4_gemv): a portable binary decodes at the same speed.
#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
static inline __attribute__((always_inline)) void gemv_row_z(const Nf4Matrix *w, int64_t r, const float *xr,
                                                             int64_t xs, int G, const float *am, float *am_next,
                                                             float *out) {
    const int64_t C = w->cols, nbr = C / NF4_BLOCK, bn = (r + 1) * nbr;
    const uint8_t *p = w->packed + r * (C / 2);
    const __m512 cb = _mm512_loadu_ps(nf4_codebook());
    // 4 accumulators per row of x (one per 16-lane quarter of a block): short dependency
    // chains, so consecutive blocks overlap
    __m512 acc[GEMV_G][4];
    for (int i = 0; i < G; i++)
        for (int q = 0; q < 4; q++) acc[i][q] = _mm512_setzero_ps();
    for (int64_t k = 0; k < nbr; k++) {
        if (am_next) am_next[k] = gemv_absmax(w, bn + k);
        // the codebook scaled by this block's absmax, then looked up: v = nf4[code] · absmax
        const __m512 cbs = _mm512_mul_ps(cb, _mm512_set1_ps(am[k]));
        _mm_prefetch((const char *)(p + 32 * k + GEMV_PREFETCH), _MM_HINT_T0);
        __m512i c0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 32 * k)));
        __m512i c1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 32 * k + 16)));
        // the permute reads only the low 4 bits of each index: c is its own low nibble
        __m512 v0 = _mm512_permutexvar_ps(_mm512_srli_epi32(c0, 4), cbs);
        __m512 v1 = _mm512_permutexvar_ps(c0, cbs);
        __m512 v2 = _mm512_permutexvar_ps(_mm512_srli_epi32(c1, 4), cbs);
        __m512 v3 = _mm512_permutexvar_ps(c1, cbs);
        for (int i = 0; i < G; i++) {
            const float *xi = xr + i * xs + k * NF4_BLOCK;
            acc[i][0] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(xi), acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(xi + 16), acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(v2, _mm512_loadu_ps(xi + 32), acc[i][2]);
            acc[i][3] = _mm512_fmadd_ps(v3, _mm512_loadu_ps(xi + 48), acc[i][3]);
        }
    }
    for (int i = 0; i < G; i++)
        out[i] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]),
                                                    _mm512_add_ps(acc[i][2], acc[i][3])));
}

GEMV_ROW_N(gemv_row_n_z, gemv_row_z)
#pragma GCC pop_options

// The AVX2 kernel (a target region, taken when the CPU has AVX2 + FMA): AVX2 has no 16-float
// permute, so each code is looked up in both 8-entry halves of the scaled codebook (two vpermps,
// which read the index's low 3 bits) and code > 7 picks the upper one (vblendvps by a compare:
// compares run on more ports than the shifts and shuffles this loop is bound by). The weights
// are the same products nf4[code]·absmax.
// Row r of W against G rows of the reordered x (xr (G,C), stride xs) -> out (G), as gemv_row.
// Per block of 64: 4 × 8 code bytes zero-extended to dwords; byte j of quarter q holds the codes
// of xr[32(q/2) + 8(q%2) + j] (high nibble) and xr[32(q/2) + 16 + 8(q%2) + j] (low nibble).
#pragma GCC push_options
#pragma GCC target("avx2,fma")
static inline __attribute__((always_inline)) __m256 nf4_look8(__m256 lo, __m256 hi, __m256i idx, __m256i sel) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), _mm256_castsi256_ps(sel));
}
static inline __attribute__((always_inline)) void gemv_row_y(const Nf4Matrix *w, int64_t r, const float *xr,
                                                             int64_t xs, int G, const float *am, float *am_next,
                                                             float *out) {
    const int64_t C = w->cols, nbr = C / NF4_BLOCK, bn = (r + 1) * nbr;
    const uint8_t *p = w->packed + r * (C / 2);
    const __m256 cbl = _mm256_loadu_ps(nf4_codebook()), cbh = _mm256_loadu_ps(nf4_codebook() + 8);
    const __m256i m15 = _mm256_set1_epi32(15), m7 = _mm256_set1_epi32(7);
    __m256 acc[GEMV_G][8];  // one per 8 lanes of a block: each gets one FMA per block
    for (int i = 0; i < G; i++)
        for (int q = 0; q < 8; q++) acc[i][q] = _mm256_setzero_ps();
    for (int64_t k = 0; k < nbr; k++) {
        if (am_next) am_next[k] = gemv_absmax(w, bn + k);
        const __m256 va = _mm256_broadcast_ss(&am[k]);
        const __m256 lo = _mm256_mul_ps(cbl, va), hi = _mm256_mul_ps(cbh, va);
        _mm_prefetch((const char *)(p + 32 * k + GEMV_PREFETCH), _MM_HINT_T0);
        for (int q = 0; q < 4; q++) {
            const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 32 * k + 8 * q)));
            const __m256i ch = _mm256_srli_epi32(c, 4), cl = _mm256_and_si256(c, m15);
            const __m256 vh = nf4_look8(lo, hi, ch, _mm256_cmpgt_epi32(ch, m7));
            const __m256 vl = nf4_look8(lo, hi, cl, _mm256_cmpgt_epi32(cl, m7));
            const int o = 32 * (q / 2) + 8 * (q % 2);
            for (int i = 0; i < G; i++) {
                const float *xi = xr + i * xs + k * NF4_BLOCK + o;
                acc[i][q] = _mm256_fmadd_ps(vh, _mm256_loadu_ps(xi), acc[i][q]);
                acc[i][q + 4] = _mm256_fmadd_ps(vl, _mm256_loadu_ps(xi + 16), acc[i][q + 4]);
            }
        }
    }
    for (int i = 0; i < G; i++) {
        const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(acc[i][0], acc[i][4]), _mm256_add_ps(acc[i][1], acc[i][5])),
                                       _mm256_add_ps(_mm256_add_ps(acc[i][2], acc[i][6]), _mm256_add_ps(acc[i][3], acc[i][7])));
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        out[i] = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
    }
}

GEMV_ROW_N(gemv_row_n_y, gemv_row_y)
#pragma GCC pop_options
#endif

// Rows [r0, r1) against N reordered activations -> y[i*ldy + r] (see quant_internal.h). Each
// output is computed the same way whatever N, r0 and r1 (rows are independent).
void nf4_gemv_rows(const Nf4Matrix *w, int64_t r0, int64_t r1, const float *xr, int64_t xstride, int64_t N, float *y,
                   int64_t ldy, int accumulate, int kind) {
    const int64_t nbr = w->cols / NF4_BLOCK;
    if (r1 <= r0 || N <= 0) return;
    float am[2][GEMV_MAX_BLOCKS];  // absmax of the current row and of the next one
    for (int64_t k = 0; k < nbr; k++) am[0][k] = gemv_absmax(w, r0 * nbr + k);
    for (int64_t r = r0; r < r1; r++) {
        const float *cur = am[(r - r0) & 1];
        float *next = r + 1 < r1 ? am[(r - r0 + 1) & 1] : NULL;
        for (int64_t n0 = 0; n0 < N; n0 += GEMV_G) {
            int G = N - n0 < GEMV_G ? (int)(N - n0) : GEMV_G;
            float s[GEMV_G];
            const float *xg = xr + n0 * xstride;
            float *nx = n0 == 0 ? next : NULL;
#if defined(__x86_64__)
            if (kind == 2)
                gemv_row_n_z(w, r, xg, xstride, G, cur, nx, s);
            else if (kind == 3)
                gemv_row_n_y(w, r, xg, xstride, G, cur, nx, s);
            else
#elif defined(__aarch64__)
            if (kind == 1)
                gemv_row_n_neon(w, r, xg, xstride, G, cur, nx, s);
            else
#endif
                gemv_row_n(w, r, xg, xstride, G, cur, nx, s);
            for (int i = 0; i < G; i++) {
                float *yi = y + (n0 + i) * ldy + r;
                *yi = accumulate ? *yi + s[i] : s[i];
            }
        }
    }
}

// x (N,C), W (OC,C) -> y (N,OC)
void nf4_gemv(const float *x, int64_t N, const Nf4Matrix *w, float *y, int accumulate, float *scratch) {
    const int64_t OC = w->rows, C = w->cols;
    if (N <= 0) return;
    if (!nf4_gemv_ok(w))
        die_internal("nf4_gemv: %s has %lld columns (need a multiple of 64, at most %d blocks)",
                     w->name ? w->name : "weight", (long long)C, GEMV_MAX_BLOCKS);
    for (int64_t i = 0; i < N; i++) nf4_gemv_reorder(x + i * C, C, scratch + i * C);
#if defined(__x86_64__)
    const int kind = cpu_isa_usable("avx512f") ? 2 : 0;
#elif defined(__aarch64__)
    const int kind = cpu_isa_usable("neon") ? 1 : 0;
#else
    const int kind = 0;
#endif
    int par = !omp_in_parallel() && OC * C >= GEMV_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r0 = 0; r0 < OC; r0 += GEMV_ROWS) {
        int64_t r1 = r0 + GEMV_ROWS < OC ? r0 + GEMV_ROWS : OC;
        nf4_gemv_rows(w, r0, r1, scratch, C, N, y, OC, accumulate, kind);
    }
}
