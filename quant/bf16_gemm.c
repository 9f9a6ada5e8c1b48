// quant — bf16 compute: C (M,N) (+)= A (M,K) · B (K,N) with AVX-512 BF16 dot products
// (vdpbf16ps: two bf16 products summed into each fp32 lane), where A is an fp32 activation
// matrix rounded to bf16 once per call and B is a frozen weight W read tile by tile through
// its format's dequantization callback (NF4, GGUF blocks, fp32, bf16), rounded to bf16 and
// packed on the fly. No bf16 copy of the whole W is ever held.
//
//   xwt: B[k][n] = W[n][k]   (y = x Wᵀ:  K = W cols, N = W rows)
//   dyw: B[k][n] = W[k][n]   (dx = dy W: K = W rows, N = W cols)
//
// Layout (GotoBLAS-style, sized for a 32 KiB L1 / 1 MiB L2 per core):
//   A is packed into micro-panels of MR rows: for row block i, word [kp][m] holds the bf16
//     pair (A[i·MR+m][2kp], A[i·MR+m][2kp+1]) in one 32-bit lane (low half = even k), rows
//     past M and k past K zero.
//   B is packed per thread, KC rows of k by up to NC columns at a time, into panels of NR = 32
//     columns: word [kp][j] = (B[2kp][j], B[2kp+1][j]).
//   The micro-kernel keeps an MR × 32 block of C in 2·MR zmm accumulators; per k pair it
//     loads 2 vectors of B and broadcasts one 32-bit word of A per row.
// Threads split the N columns (whole 32-column panels) into contiguous ranges: every output
// element is computed by one thread, summing k in the same order (blocks of KC, fp32 adds
// between blocks) whatever the thread count: results do not depend on it.
#include "quant/quant.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#define BG_AVX512BF16 1
#endif

#define BG_MR 12   // rows of A per micro-kernel
#define BG_NR 32   // columns of B per panel (two zmm)
#define BG_KC 256  // k per packed block (even)
#define BG_NC 256  // columns per packed block of B (a multiple of BG_NR)

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

int bf16_gemm_supported(void) {
#ifdef BG_AVX512BF16
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

// f (n) -> bf16 (n), round to nearest even (as f32_to_bf16; vcvtneps2bf16 also flushes
// denormals to zero, which the scalar tail does not: both are below bf16's precision here)
static void to_bf16(uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
#ifdef BG_AVX512BF16
    for (; i + 16 <= n; i += 16) {
        __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)h);
    }
#endif
    for (; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

static inline uint32_t pair(uint16_t lo, uint16_t hi) { return (uint32_t)lo | (uint32_t)hi << 16; }

static int64_t a_panel_words(int64_t M, int64_t K) {
    return (M + BG_MR - 1) / BG_MR * BG_MR * ((K + 1) / 2);
}

// bf16 per-thread row buffer: a row of A (2·KP), a row of a B tile (BG_KC) or two (2·BG_NC)
static int64_t row_buf_len(int64_t K) {
    int64_t n = 2 * ((K + 1) / 2);
    if (n < 2 * BG_NC) n = 2 * BG_NC;
    if (n < BG_KC) n = BG_KC;
    return (n + 31) & ~(int64_t)31;
}

size_t bf16_gemm_scratch_bytes(int64_t M, int64_t K) {
    size_t per_thread = (size_t)BG_KC * BG_NC * sizeof(float) + (size_t)(BG_KC / 2) * BG_NC * sizeof(uint32_t) +
                        (size_t)row_buf_len(K) * sizeof(uint16_t);
    return (size_t)a_panel_words(M, K) * sizeof(uint32_t) + (size_t)omp_get_max_threads() * per_thread + 256;
}

#ifdef BG_AVX512BF16
// r[16] (16 rows of 16 words) -> r transposed in place: r[j] lane i = old r[i] lane j
static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // now r[4q + j], 128-bit lane L = rows 4q..4q+3 of column 4L + j
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0x88);          // lanes 0,2 of r[i], r[4+i]
        t[4 + i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0xDD);      // lanes 1,3
        t[8 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0x88);
        t[12 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0xDD);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);        // column i
        r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xDD);    // column 8 + i
        r[4 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0x88);   // column 4 + i
        r[12 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0xDD);  // column 12 + i
    }
}
#endif

// a (M,K) fp32, row stride lda -> ap: ceil(M/MR) micro-panels of (KPT, MR) bf16 pairs, a's
// pairs at pair columns [kpo, kpo + ceil(K/2)) of each panel
static void pack_a(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda,
                   uint16_t *rowbufs, int64_t rbl) {
    const int64_t KP = (K + 1) / 2, nb = (M + BG_MR - 1) / BG_MR;
#pragma omp parallel for schedule(static)
    for (int64_t ib = 0; ib < nb; ib++) {
        uint16_t *row = rowbufs + (int64_t)omp_get_thread_num() * rbl;
        uint32_t *blk = ap + ib * KPT * BG_MR + kpo * BG_MR;
        int64_t kp0 = 0;
#ifdef BG_AVX512BF16
        // 16 pairs (32 values) of each of the 12 rows, transposed: 16 words of 12 rows each
        for (; 2 * (kp0 + 16) <= K; kp0 += 16) {
            __m512i r[16];
            for (int m = 0; m < 16; m++) {
                int64_t rr = ib * BG_MR + m;
                if (m < BG_MR && rr < M) {
                    const float *src = a + rr * lda + 2 * kp0;
                    r[m] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
                } else {
                    r[m] = _mm512_setzero_si512();
                }
            }
            transpose16(r);
            for (int j = 0; j < 16; j++) _mm512_mask_storeu_epi32(blk + (kp0 + j) * BG_MR, 0x0FFF, r[j]);
        }
#endif
        for (int m = 0; m < BG_MR; m++) {  // the remaining pairs (all of them without AVX-512 BF16)
            int64_t r = ib * BG_MR + m;
            if (kp0 >= KP) break;
            if (r < M) {
                to_bf16(row, a + r * lda + 2 * kp0, K - 2 * kp0);
                if (K & 1) row[K - 2 * kp0] = 0;
                for (int64_t kp = kp0; kp < KP; kp++) {  // the pair (2kp, 2kp+1) is one 32-bit word
                    uint32_t w;
                    memcpy(&w, row + 2 * (kp - kp0), sizeof w);
                    blk[kp * BG_MR + m] = w;
                }
            } else {
                for (int64_t kp = kp0; kp < KP; kp++) blk[kp * BG_MR + m] = 0;
            }
        }
    }
}

// xwt: T (nc,kc) fp32 = W rows n0.., k0.. (row stride ldt) -> P: np panels of (kpn, NR) words,
// word [kp][j] = (T[32p+j][2kp], T[32p+j][2kp+1]); columns past nc and k past kc zero.
static void pack_b_xwt(uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc, uint16_t *row) {
    const int64_t kpn = (kc + 1) / 2, np = (nc + BG_NR - 1) / BG_NR;
    int64_t kv = 0;  // pairs [0, kv) packed by the vector path
#ifdef BG_AVX512BF16
    // 16 rows x 16 pairs at a time: convert, transpose (rows <-> pairs), store half-panel rows
    kv = kc / 32 * 16;
    for (int64_t j0 = 0; j0 < np * BG_NR; j0 += 16) {
        uint32_t *dst = P + (j0 / BG_NR) * kpn * BG_NR + (j0 % BG_NR);
        for (int64_t kp0 = 0; kp0 < kv; kp0 += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                const float *src = T + (j0 + i) * ldt + 2 * kp0;
                r[i] = j0 + i < nc ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src))
                                   : _mm512_setzero_si512();
            }
            transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_storeu_si512(dst + (kp0 + i) * BG_NR, r[i]);
        }
    }
#endif
    if (kv == kpn) return;
    for (int64_t j = 0; j < np * BG_NR; j++) {  // the remaining pairs, word by word
        uint32_t *dst = P + (j / BG_NR) * kpn * BG_NR + (j % BG_NR);
        if (j >= nc) {
            for (int64_t kp = kv; kp < kpn; kp++) dst[kp * BG_NR] = 0;
            continue;
        }
        to_bf16(row, T + j * ldt + 2 * kv, kc - 2 * kv);
        if (kc & 1) row[kc - 2 * kv] = 0;
        for (int64_t kp = kv; kp < kpn; kp++) dst[kp * BG_NR] = pair(row[2 * (kp - kv)], row[2 * (kp - kv) + 1]);
    }
}

// dyw: T (kc,nc) fp32 = W rows k0.., cols n0.. (row stride ldt) -> P as pack_b_xwt,
// word [kp][j] = (T[2kp][32p+j], T[2kp+1][32p+j]).
static void pack_b_dyw(uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc, uint16_t *rows2) {
    const int64_t kpn = (kc + 1) / 2, np = (nc + BG_NR - 1) / BG_NR, ncp = np * BG_NR;
    uint16_t *r0 = rows2, *r1 = rows2 + BG_NC;
    for (int64_t kp = 0; kp < kpn; kp++) {
        to_bf16(r0, T + 2 * kp * ldt, nc);
        if (2 * kp + 1 < kc)
            to_bf16(r1, T + (2 * kp + 1) * ldt, nc);
        else
            memset(r1, 0, (size_t)nc * sizeof(uint16_t));
        for (int64_t j = nc; j < ncp; j++) r0[j] = r1[j] = 0;
        for (int64_t p = 0; p < np; p++) {
            uint32_t *dst = P + (p * kpn + kp) * BG_NR;
            const uint16_t *s0 = r0 + p * BG_NR, *s1 = r1 + p * BG_NR;
#ifdef BG_AVX512BF16
            for (int h = 0; h < 2; h++) {
                __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s0 + 16 * h)));
                __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s1 + 16 * h)));
                _mm512_storeu_si512(dst + 16 * h, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
#else
            for (int j = 0; j < BG_NR; j++) dst[j] = pair(s0[j], s1[j]);
#endif
        }
    }
}

// ap (kpn, MR) words, bp (kpn, NR) words -> c (mr, ncols) with row stride ldc:
// c = (add ? c : 0) + Σ_k a b, only the first mr rows and ncols columns stored.
#ifdef BG_AVX512BF16
static inline __attribute__((always_inline)) void kernel(const int mr, const uint32_t *ap, const uint32_t *bp,
                                                         int64_t kpn, float *c, int64_t ldc, int add,
                                                         __mmask16 m0, __mmask16 m1) {
    __m512 acc0[BG_MR], acc1[BG_MR];
#pragma GCC unroll 12
    for (int m = 0; m < mr; m++) acc0[m] = acc1[m] = _mm512_setzero_ps();
    for (int64_t kp = 0; kp < kpn; kp++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + kp * BG_NR);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + kp * BG_NR + 16);
        const uint32_t *a = ap + kp * BG_MR;
#pragma GCC unroll 12
        for (int m = 0; m < mr; m++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[m]);
            acc0[m] = _mm512_dpbf16_ps(acc0[m], av, b0);
            acc1[m] = _mm512_dpbf16_ps(acc1[m], av, b1);
        }
    }
#pragma GCC unroll 12
    for (int m = 0; m < mr; m++) {
        float *cr = c + m * ldc;
        if (add) {
            acc0[m] = _mm512_add_ps(acc0[m], _mm512_maskz_loadu_ps(m0, cr));
            acc1[m] = _mm512_add_ps(acc1[m], _mm512_maskz_loadu_ps(m1, cr + 16));
        }
        _mm512_mask_storeu_ps(cr, m0, acc0[m]);
        _mm512_mask_storeu_ps(cr + 16, m1, acc1[m]);
    }
}

static void kernel_any(int mr, const uint32_t *ap, const uint32_t *bp, int64_t kpn, float *c, int64_t ldc, int add,
                       int ncols) {
    __mmask16 m0 = ncols >= 16 ? 0xFFFF : (__mmask16)((1u << ncols) - 1);
    __mmask16 m1 = ncols >= 32 ? 0xFFFF : ncols <= 16 ? 0 : (__mmask16)((1u << (ncols - 16)) - 1);
    switch (mr) {
    case 12: kernel(12, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 11: kernel(11, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 10: kernel(10, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 9: kernel(9, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 8: kernel(8, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 7: kernel(7, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 6: kernel(6, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 5: kernel(5, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 4: kernel(4, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 3: kernel(3, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 2: kernel(2, ap, bp, kpn, c, ldc, add, m0, m1); break;
    default: kernel(1, ap, bp, kpn, c, ldc, add, m0, m1); break;
    }
}
#else
// The same arithmetic in plain C (bf16 products summed pairwise into fp32), for builds
// without AVX-512 BF16; bf16_gemm_supported() is 0 there, so it only serves direct calls.
static void kernel_any(int mr, const uint32_t *ap, const uint32_t *bp, int64_t kpn, float *c, int64_t ldc, int add,
                       int ncols) {
    for (int m = 0; m < mr; m++)
        for (int j = 0; j < ncols; j++) {
            float acc = 0.0f;
            for (int64_t kp = 0; kp < kpn; kp++) {
                uint32_t a = ap[kp * BG_MR + m], b = bp[kp * BG_NR + j];
                acc += bf16_to_f32((uint16_t)a) * bf16_to_f32((uint16_t)b) +
                       bf16_to_f32((uint16_t)(a >> 16)) * bf16_to_f32((uint16_t)(b >> 16));
            }
            c[m * ldc + j] = add ? c[m * ldc + j] + acc : acc;
        }
}
#endif

// c (M,N) (+)= a (M,K) · B (K,N) [+ a2 (M,K2) · B2 (K2,N)], B from w and B2 from w2 as
// described at the top (xwt selects the case). The second product (a2 = NULL: none) is the
// same GEMM over K2 more k: its pairs follow a's in the packed A, its k-blocks follow a's.
static void gemm(const float *a, int64_t M, int64_t lda, const TiledWeight *w, const float *a2, int64_t lda2,
                 const TiledWeight *w2, int xwt, float *c, int64_t ldc, int accumulate, void *scratch) {
    const int64_t K = xwt ? w->cols : w->rows, N = xwt ? w->rows : w->cols;
    const int64_t K2 = a2 ? (xwt ? w2->cols : w2->rows) : 0;
    if (a2 && (xwt ? w2->rows : w2->cols) != N)
        die_internal("bf16 gemm: the second product has %lld columns, the first %lld",
                     (long long)(xwt ? w2->rows : w2->cols), (long long)N);
    const int64_t KP = (K + 1) / 2, KPT = KP + (K2 + 1) / 2;
    const int nth = omp_get_max_threads();
    char *s = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    uint32_t *ap = (uint32_t *)s;
    s += a_panel_words(M, 2 * KPT) * sizeof(uint32_t);
    float *tiles = (float *)s;
    s += (size_t)nth * BG_KC * BG_NC * sizeof(float);
    uint32_t *packs = (uint32_t *)s;
    s += (size_t)nth * (BG_KC / 2) * BG_NC * sizeof(uint32_t);
    uint16_t *rowbufs = (uint16_t *)s;  // per thread: row_buf_len(2·KPT) bf16
    const int64_t rbl = row_buf_len(2 * KPT);
    pack_a(ap, KPT, 0, a, M, K, lda, rowbufs, rbl);
    if (a2) pack_a(ap, KPT, KP, a2, M, K2, lda2, rowbufs, rbl);
    const int64_t npan = (N + BG_NR - 1) / BG_NR;
#pragma omp parallel num_threads(nth)
    {
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        float *T = tiles + (int64_t)tid * BG_KC * BG_NC;
        uint32_t *P = packs + (int64_t)tid * (BG_KC / 2) * BG_NC;
        uint16_t *rb = rowbufs + (int64_t)tid * rbl;
        const int64_t p0 = npan * tid / nt, p1 = npan * (tid + 1) / nt;
        for (int64_t pc = p0; pc < p1; pc += BG_NC / BG_NR) {
            const int64_t n0 = pc * BG_NR, np = min64(BG_NC / BG_NR, p1 - pc), nc = min64(np * BG_NR, N - n0);
            for (int part = 0; part < (a2 ? 2 : 1); part++) {
                const TiledWeight *wp = part ? w2 : w;
                const int64_t Kp = part ? K2 : K, kpo = part ? KP : 0;
                for (int64_t k0 = 0; k0 < Kp; k0 += BG_KC) {
                    const int64_t kc = min64(BG_KC, Kp - k0), kpn = (kc + 1) / 2;
                    if (xwt) {
                        wp->tile(wp, n0, nc, k0, kc, T, BG_KC);  // T (nc,kc) = W[n0.., k0..]
                        pack_b_xwt(P, T, BG_KC, nc, kc, rb);
                    } else {
                        wp->tile(wp, k0, kc, n0, nc, T, BG_NC);  // T (kc,nc) = W[k0.., n0..]
                        pack_b_dyw(P, T, BG_NC, nc, kc, rb);
                    }
                    const int add = accumulate || part || k0 > 0;
                    for (int64_t p = 0; p < np; p++) {
                        const int ncols = (int)min64(BG_NR, nc - p * BG_NR);
                        const uint32_t *bp = P + p * kpn * BG_NR;
                        for (int64_t m0 = 0; m0 < M; m0 += BG_MR)
                            kernel_any((int)min64(BG_MR, M - m0),
                                       ap + (m0 / BG_MR) * KPT * BG_MR + (kpo + k0 / 2) * BG_MR, bp, kpn,
                                       c + m0 * ldc + n0 + p * BG_NR, ldc, add, ncols);
                    }
                }
            }
        }
    }
}

void bf16_matmul_xwt(const float *x, int64_t N, int64_t ldx, const TiledWeight *w, float *y, int64_t ldy,
                     int accumulate, void *scratch) {
    if (N <= 0) return;
    gemm(x, N, ldx, w, NULL, 0, NULL, 1, y, ldy, accumulate, scratch);
}

void bf16_matmul_dyw(const float *dy, int64_t N, int64_t lddy, const TiledWeight *w, float *dx, int64_t lddx,
                     int accumulate, void *scratch) {
    if (N <= 0) return;
    gemm(dy, N, lddy, w, NULL, 0, NULL, 0, dx, lddx, accumulate, scratch);
}

void bf16_matmul_xwt2(const float *x, int64_t N, int64_t ldx, const TiledWeight *w, const float *x2, int64_t ldx2,
                      const TiledWeight *w2, float *y, int64_t ldy, int accumulate, void *scratch) {
    if (N <= 0) return;
    gemm(x, N, ldx, w, x2, ldx2, w2, 1, y, ldy, accumulate, scratch);
}

void bf16_matmul_dyw2(const float *dy, int64_t N, int64_t lddy, const TiledWeight *w, const float *dy2,
                      int64_t lddy2, const TiledWeight *w2, float *dx, int64_t lddx, int accumulate, void *scratch) {
    if (N <= 0) return;
    gemm(dy, N, lddy, w, dy2, lddy2, w2, 0, dx, lddx, accumulate, scratch);
}

// ---- tiled views of the weight formats --------------------------------------------------

static void tile_f32(const TiledWeight *w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, float *out, int64_t ldo) {
    const float *src = (const float *)w->w + (w->r0 + r0) * w->ld + c0;
    for (int64_t r = 0; r < nr; r++) memcpy(out + r * ldo, src + r * w->ld, (size_t)nc * sizeof(float));
}

static void tile_bf16(const TiledWeight *w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, float *out, int64_t ldo) {
    const uint16_t *src = (const uint16_t *)w->w + (w->r0 + r0) * w->ld + c0;
    for (int64_t r = 0; r < nr; r++) {
        const uint16_t *s = src + r * w->ld;
        float *o = out + r * ldo;
        int64_t c = 0;
#ifdef BG_AVX512BF16
        for (; c + 16 <= nc; c += 16) {  // bf16 -> fp32 is a 16-bit shift
            __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + c)));
            _mm512_storeu_ps(o + c, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
        }
#endif
        for (; c < nc; c++) o[c] = bf16_to_f32(s[c]);
    }
}

static void tile_nf4(const TiledWeight *w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, float *out, int64_t ldo) {
    nf4_dequant_tile(w->w, w->r0 + r0, nr, c0, nc, out, ldo);
}

static void tile_ggq(const TiledWeight *w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, float *out, int64_t ldo) {
    ggq_dequant_tile(w->w, w->r0 + r0, nr, c0, nc, out, ldo);
}

TiledWeight tiled_f32(const float *w, int64_t rows, int64_t cols) {
    return (TiledWeight){w, tile_f32, 0, rows, cols, cols};
}
TiledWeight tiled_bf16(const uint16_t *w, int64_t rows, int64_t cols) {
    return (TiledWeight){w, tile_bf16, 0, rows, cols, cols};
}
TiledWeight tiled_nf4(const Nf4Matrix *m) { return (TiledWeight){m, tile_nf4, 0, m->rows, m->cols, m->cols}; }
TiledWeight tiled_ggq(const GgqMatrix *m) { return (TiledWeight){m, tile_ggq, 0, m->rows, m->cols, m->cols}; }

TiledWeight tiled_rows(const TiledWeight *w, int64_t r0, int64_t nrows) {
    TiledWeight v = *w;
    v.r0 += r0;
    v.rows = nrows;
    return v;
}
