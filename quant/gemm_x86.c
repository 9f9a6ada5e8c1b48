// quant — the tiled GEMM's x86-64 kernel variants (see gemm.c and quant_internal.h), each
// compiled for its own instruction set with GCC's target attribute, whatever the build's
// -march: one binary carries them all and cpu.c picks one at run time by measurement.
//   f32-avx512   12 × 32 fp32 micro-tile, 24 zmm accumulators, FMA          (AVX-512F)
//   f32-avx2      6 × 16 fp32 micro-tile, 12 ymm accumulators, FMA          (AVX2 + FMA)
//   bf16-avx512  12 × 32 bf16-pair micro-tile, vdpbf16ps into fp32          (AVX-512 BF16)
#include "quant/quant.h"
#include "quant/quant_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <omp.h>
#include <string.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))
#define T512BF __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")))
#define T256 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

#define Z_MR 12
#define Z_NR 32
#define Y_MR 6
#define Y_NR 16

// r[16] (16 rows of 16 words) -> r transposed in place: r[j] lane i = old r[i] lane j
T512 INLINE void transpose16(__m512i r[16]) {
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
        t[i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0x88);      // lanes 0,2 of r[i], r[4+i]
        t[4 + i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0xDD);  // lanes 1,3
        t[8 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0x88);
        t[12 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0xDD);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);           // column i
        r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xDD);       // column 8 + i
        r[4 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0x88);  // column 4 + i
        r[12 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0xDD); // column 12 + i
    }
}

// r[8] (8 rows of 8 words) -> transposed in place
T256 INLINE void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
        r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
    }
}

// acc0/acc1 (mr rows of 2 × 16 lanes) -> c (mr, 32) row stride ldc, lanes masked by m0/m1:
// c = (add ? c : 0) + acc. Inlined with a constant mr, so acc stays in registers.
T512 INLINE void z_store(const int mr, __m512 *acc0, __m512 *acc1, float *c, int64_t ldc, int add, __mmask16 m0,
                         __mmask16 m1) {
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

// ---- f32-avx512 ---------------------------------------------------------------------------

// ap (kpn, 12) fp32, bp (kpn, 32) fp32 -> c (rows, ncols): c = (add ? c : 0) + Σ a b
T512 INLINE void z_f32_tile(const int mr, const float *ap, const float *bp, int64_t kpn, float *c, int64_t ldc,
                            int add, __mmask16 m0, __mmask16 m1) {
    __m512 acc0[Z_MR], acc1[Z_MR];
#pragma GCC unroll 12
    for (int m = 0; m < mr; m++) acc0[m] = acc1[m] = _mm512_setzero_ps();
    for (int64_t kp = 0; kp < kpn; kp++) {
        const __m512 b0 = _mm512_loadu_ps(bp + kp * Z_NR), b1 = _mm512_loadu_ps(bp + kp * Z_NR + 16);
        const float *a = ap + kp * Z_MR;
#pragma GCC unroll 12
        for (int m = 0; m < mr; m++) {
            const __m512 av = _mm512_set1_ps(a[m]);
            acc0[m] = _mm512_fmadd_ps(av, b0, acc0[m]);
            acc1[m] = _mm512_fmadd_ps(av, b1, acc1[m]);
        }
    }
    z_store(mr, acc0, acc1, c, ldc, add, m0, m1);
}

static __mmask16 mask_lo(int ncols) { return ncols >= 16 ? 0xFFFF : (__mmask16)((1u << ncols) - 1); }
static __mmask16 mask_hi(int ncols) {
    return ncols >= 32 ? 0xFFFF : ncols <= 16 ? 0 : (__mmask16)((1u << (ncols - 16)) - 1);
}

T512 static void z_f32_kernel(int rows, const uint32_t *ap, const uint32_t *bp, int64_t kpn, float *c, int64_t ldc,
                              int add, int ncols) {
    const float *a = (const float *)ap, *b = (const float *)bp;
    const __mmask16 m0 = mask_lo(ncols), m1 = mask_hi(ncols);
    switch (rows) {
    case 12: z_f32_tile(12, a, b, kpn, c, ldc, add, m0, m1); break;
    case 11: z_f32_tile(11, a, b, kpn, c, ldc, add, m0, m1); break;
    case 10: z_f32_tile(10, a, b, kpn, c, ldc, add, m0, m1); break;
    case 9: z_f32_tile(9, a, b, kpn, c, ldc, add, m0, m1); break;
    case 8: z_f32_tile(8, a, b, kpn, c, ldc, add, m0, m1); break;
    case 7: z_f32_tile(7, a, b, kpn, c, ldc, add, m0, m1); break;
    case 6: z_f32_tile(6, a, b, kpn, c, ldc, add, m0, m1); break;
    case 5: z_f32_tile(5, a, b, kpn, c, ldc, add, m0, m1); break;
    case 4: z_f32_tile(4, a, b, kpn, c, ldc, add, m0, m1); break;
    case 3: z_f32_tile(3, a, b, kpn, c, ldc, add, m0, m1); break;
    case 2: z_f32_tile(2, a, b, kpn, c, ldc, add, m0, m1); break;
    default: z_f32_tile(1, a, b, kpn, c, ldc, add, m0, m1); break;
    }
}

// fp32 B panels of 32 columns: xwt transposes 16 × 16 blocks, dyw copies rows
T512 static void z_f32_pack_b(int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc) {
    const int64_t np = (nc + Z_NR - 1) / Z_NR;
    if (!xwt) {
        for (int64_t p = 0; p < np; p++) {
            const int ncols = (int)(nc - p * Z_NR < Z_NR ? nc - p * Z_NR : Z_NR);
            const __mmask16 m0 = mask_lo(ncols), m1 = mask_hi(ncols);
            float *dst = (float *)P + p * kc * Z_NR;
            for (int64_t k = 0; k < kc; k++) {
                const float *src = T + k * ldt + p * Z_NR;
                _mm512_storeu_ps(dst + k * Z_NR, _mm512_maskz_loadu_ps(m0, src));
                _mm512_storeu_ps(dst + k * Z_NR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
            }
        }
        return;
    }
    const int64_t kv = kc / 16 * 16;  // k [0, kv) by 16 × 16 transposes, the rest word by word
    for (int64_t j0 = 0; j0 < np * Z_NR; j0 += 16) {
        uint32_t *dst = P + (j0 / Z_NR) * kc * Z_NR + (j0 % Z_NR);
        for (int64_t k0 = 0; k0 < kv; k0 += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = j0 + i < nc ? _mm512_loadu_si512(T + (j0 + i) * ldt + k0) : _mm512_setzero_si512();
            transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_storeu_si512(dst + (k0 + i) * Z_NR, r[i]);
        }
        for (int64_t k = kv; k < kc; k++)
            for (int i = 0; i < 16; i++) {
                uint32_t u = 0;
                if (j0 + i < nc) memcpy(&u, T + (j0 + i) * ldt + k, sizeof u);
                dst[k * Z_NR + i] = u;
            }
    }
}

static void z_f32_pack_a(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda);

const GemmKernel qg_f32_avx512 = {"f32-avx512", "avx512f", 0, 1, Z_MR, Z_NR, z_f32_pack_a, z_f32_pack_b,
                                  z_f32_kernel};

static void z_f32_pack_a(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda) {
    qg_pack_a_words(&qg_f32_avx512, ap, KPT, kpo, a, M, K, lda);
}

// ---- f32-avx2 -----------------------------------------------------------------------------

T256 INLINE void y_f32_tile(const int mr, const float *ap, const float *bp, int64_t kpn, float *c, int64_t ldc,
                            int add, int ncols) {
    __m256 acc0[Y_MR], acc1[Y_MR];
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++) acc0[m] = acc1[m] = _mm256_setzero_ps();
    for (int64_t kp = 0; kp < kpn; kp++) {
        const __m256 b0 = _mm256_loadu_ps(bp + kp * Y_NR), b1 = _mm256_loadu_ps(bp + kp * Y_NR + 8);
        const float *a = ap + kp * Y_MR;
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++) {
            const __m256 av = _mm256_broadcast_ss(a + m);
            acc0[m] = _mm256_fmadd_ps(av, b0, acc0[m]);
            acc1[m] = _mm256_fmadd_ps(av, b1, acc1[m]);
        }
    }
    if (ncols == Y_NR) {
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++) {
            float *cr = c + m * ldc;
            if (add) {
                acc0[m] = _mm256_add_ps(acc0[m], _mm256_loadu_ps(cr));
                acc1[m] = _mm256_add_ps(acc1[m], _mm256_loadu_ps(cr + 8));
            }
            _mm256_storeu_ps(cr, acc0[m]);
            _mm256_storeu_ps(cr + 8, acc1[m]);
        }
        return;
    }
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++) {  // a partial panel: through a buffer (unrolled: acc stays in registers)
        float buf[Y_NR];
        _mm256_storeu_ps(buf, acc0[m]);
        _mm256_storeu_ps(buf + 8, acc1[m]);
        float *cr = c + m * ldc;
        for (int j = 0; j < ncols; j++) cr[j] = add ? cr[j] + buf[j] : buf[j];
    }
}

T256 static void y_f32_kernel(int rows, const uint32_t *ap, const uint32_t *bp, int64_t kpn, float *c, int64_t ldc,
                              int add, int ncols) {
    const float *a = (const float *)ap, *b = (const float *)bp;
    switch (rows) {
    case 6: y_f32_tile(6, a, b, kpn, c, ldc, add, ncols); break;
    case 5: y_f32_tile(5, a, b, kpn, c, ldc, add, ncols); break;
    case 4: y_f32_tile(4, a, b, kpn, c, ldc, add, ncols); break;
    case 3: y_f32_tile(3, a, b, kpn, c, ldc, add, ncols); break;
    case 2: y_f32_tile(2, a, b, kpn, c, ldc, add, ncols); break;
    default: y_f32_tile(1, a, b, kpn, c, ldc, add, ncols); break;
    }
}

// fp32 B panels of 16 columns: xwt transposes 8 × 8 blocks, dyw copies rows
T256 static void y_f32_pack_b(int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc) {
    const int64_t np = (nc + Y_NR - 1) / Y_NR;
    float *Pf = (float *)P;
    if (!xwt) {
        for (int64_t p = 0; p < np; p++) {
            const int64_t ncols = nc - p * Y_NR < Y_NR ? nc - p * Y_NR : Y_NR;
            float *dst = Pf + p * kc * Y_NR;
            for (int64_t k = 0; k < kc; k++) {
                const float *src = T + k * ldt + p * Y_NR;
                if (ncols == Y_NR) {
                    _mm256_storeu_ps(dst + k * Y_NR, _mm256_loadu_ps(src));
                    _mm256_storeu_ps(dst + k * Y_NR + 8, _mm256_loadu_ps(src + 8));
                } else {
                    for (int j = 0; j < Y_NR; j++) dst[k * Y_NR + j] = j < ncols ? src[j] : 0.0f;
                }
            }
        }
        return;
    }
    const int64_t kv = kc / 8 * 8;
    for (int64_t j0 = 0; j0 < np * Y_NR; j0 += 8) {
        float *dst = Pf + (j0 / Y_NR) * kc * Y_NR + (j0 % Y_NR);
        for (int64_t k0 = 0; k0 < kv; k0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) r[i] = j0 + i < nc ? _mm256_loadu_ps(T + (j0 + i) * ldt + k0) : _mm256_setzero_ps();
            transpose8(r);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (k0 + i) * Y_NR, r[i]);
        }
        for (int64_t k = kv; k < kc; k++)
            for (int i = 0; i < 8; i++) dst[k * Y_NR + i] = j0 + i < nc ? T[(j0 + i) * ldt + k] : 0.0f;
    }
}

static void y_f32_pack_a(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda);

const GemmKernel qg_f32_avx2 = {"f32-avx2", "avx2+fma", 0, 1, Y_MR, Y_NR, y_f32_pack_a, y_f32_pack_b,
                                y_f32_kernel};

static void y_f32_pack_a(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda) {
    qg_pack_a_words(&qg_f32_avx2, ap, KPT, kpo, a, M, K, lda);
}

// ---- bf16-avx512 --------------------------------------------------------------------------

// f (n) -> bf16 (n), round to nearest even (vcvtneps2bf16 also flushes denormals to zero,
// which the scalar tail does not: both are below bf16's precision here)
T512BF INLINE void to_bf16(uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)h);
    }
    for (; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

// a (M,K) -> panels of (KPT, 12) bf16 pairs, a's pairs at columns [kpo, kpo + ceil(K/2))
T512BF static void zb_pack_a(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K,
                             int64_t lda) {
    const int64_t KP = (K + 1) / 2, nb = (M + Z_MR - 1) / Z_MR;
#pragma omp parallel for schedule(static)
    for (int64_t ib = 0; ib < nb; ib++) {
        uint16_t row[2 * 16 + 2];
        uint32_t *blk = ap + ib * KPT * Z_MR + kpo * Z_MR;
        int64_t kp0 = 0;
        // 16 pairs (32 values) of each of the 12 rows, transposed: 16 words of 12 rows each
        for (; 2 * (kp0 + 16) <= K; kp0 += 16) {
            __m512i r[16];
            for (int m = 0; m < 16; m++) {
                int64_t rr = ib * Z_MR + m;
                if (m < Z_MR && rr < M) {
                    const float *src = a + rr * lda + 2 * kp0;
                    r[m] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
                } else {
                    r[m] = _mm512_setzero_si512();
                }
            }
            transpose16(r);
            for (int j = 0; j < 16; j++) _mm512_mask_storeu_epi32(blk + (kp0 + j) * Z_MR, 0x0FFF, r[j]);
        }
        for (int m = 0; m < Z_MR; m++) {  // the remaining (< 16) pairs
            int64_t r = ib * Z_MR + m;
            if (kp0 >= KP) break;
            if (r < M) {
                to_bf16(row, a + r * lda + 2 * kp0, K - 2 * kp0);
                if (K & 1) row[K - 2 * kp0] = 0;
                for (int64_t kp = kp0; kp < KP; kp++) {
                    uint32_t w;
                    memcpy(&w, row + 2 * (kp - kp0), sizeof w);
                    blk[kp * Z_MR + m] = w;
                }
            } else {
                for (int64_t kp = kp0; kp < KP; kp++) blk[kp * Z_MR + m] = 0;
            }
        }
    }
}

// xwt: T (nc,kc) -> 32-column panels of bf16 pairs, 16 rows × 16 pairs at a time (convert,
// transpose rows <-> pairs); dyw: T (kc,nc), rows 2kp and 2kp+1 interleaved into pairs
T512BF static void zb_pack_b(int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc) {
    const int64_t kpn = (kc + 1) / 2, np = (nc + Z_NR - 1) / Z_NR, ncp = np * Z_NR;
    if (xwt) {
        const int64_t kv = kc / 32 * 16;  // pairs [0, kv) by the vector path
        for (int64_t j0 = 0; j0 < ncp; j0 += 16) {
            uint32_t *dst = P + (j0 / Z_NR) * kpn * Z_NR + (j0 % Z_NR);
            for (int64_t kp0 = 0; kp0 < kv; kp0 += 16) {
                __m512i r[16];
                for (int i = 0; i < 16; i++) {
                    const float *src = T + (j0 + i) * ldt + 2 * kp0;
                    r[i] = j0 + i < nc ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src))
                                       : _mm512_setzero_si512();
                }
                transpose16(r);
                for (int i = 0; i < 16; i++) _mm512_storeu_si512(dst + (kp0 + i) * Z_NR, r[i]);
            }
        }
        if (kv == kpn) return;
        uint16_t row[QG_KC + 2];
        for (int64_t j = 0; j < ncp; j++) {  // the remaining pairs, word by word
            uint32_t *dst = P + (j / Z_NR) * kpn * Z_NR + (j % Z_NR);
            if (j >= nc) {
                for (int64_t kp = kv; kp < kpn; kp++) dst[kp * Z_NR] = 0;
                continue;
            }
            to_bf16(row, T + j * ldt + 2 * kv, kc - 2 * kv);
            if (kc & 1) row[kc - 2 * kv] = 0;
            for (int64_t kp = kv; kp < kpn; kp++)
                dst[kp * Z_NR] = (uint32_t)row[2 * (kp - kv)] | (uint32_t)row[2 * (kp - kv) + 1] << 16;
        }
        return;
    }
    uint16_t r0[QG_NC], r1[QG_NC];
    for (int64_t kp = 0; kp < kpn; kp++) {
        to_bf16(r0, T + 2 * kp * ldt, nc);
        if (2 * kp + 1 < kc)
            to_bf16(r1, T + (2 * kp + 1) * ldt, nc);
        else
            memset(r1, 0, (size_t)nc * sizeof(uint16_t));
        for (int64_t j = nc; j < ncp; j++) r0[j] = r1[j] = 0;
        for (int64_t p = 0; p < np; p++) {
            uint32_t *dst = P + (p * kpn + kp) * Z_NR;
            const uint16_t *s0 = r0 + p * Z_NR, *s1 = r1 + p * Z_NR;
            for (int h = 0; h < 2; h++) {
                __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s0 + 16 * h)));
                __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s1 + 16 * h)));
                _mm512_storeu_si512(dst + 16 * h, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
    }
}

// ap (kpn, 12) pair words, bp (kpn, 32) pair words -> c: per pair, 2 vectors of B and one
// broadcast word of A per row into 24 fp32 accumulators
T512BF INLINE void zb_tile(const int mr, const uint32_t *ap, const uint32_t *bp, int64_t kpn, float *c, int64_t ldc,
                           int add, __mmask16 m0, __mmask16 m1) {
    __m512 acc0[Z_MR], acc1[Z_MR];
#pragma GCC unroll 12
    for (int m = 0; m < mr; m++) acc0[m] = acc1[m] = _mm512_setzero_ps();
    for (int64_t kp = 0; kp < kpn; kp++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + kp * Z_NR);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + kp * Z_NR + 16);
        const uint32_t *a = ap + kp * Z_MR;
#pragma GCC unroll 12
        for (int m = 0; m < mr; m++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[m]);
            acc0[m] = _mm512_dpbf16_ps(acc0[m], av, b0);
            acc1[m] = _mm512_dpbf16_ps(acc1[m], av, b1);
        }
    }
    z_store(mr, acc0, acc1, c, ldc, add, m0, m1);
}

T512BF static void zb_kernel(int rows, const uint32_t *ap, const uint32_t *bp, int64_t kpn, float *c, int64_t ldc,
                             int add, int ncols) {
    const __mmask16 m0 = mask_lo(ncols), m1 = mask_hi(ncols);
    switch (rows) {
    case 12: zb_tile(12, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 11: zb_tile(11, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 10: zb_tile(10, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 9: zb_tile(9, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 8: zb_tile(8, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 7: zb_tile(7, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 6: zb_tile(6, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 5: zb_tile(5, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 4: zb_tile(4, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 3: zb_tile(3, ap, bp, kpn, c, ldc, add, m0, m1); break;
    case 2: zb_tile(2, ap, bp, kpn, c, ldc, add, m0, m1); break;
    default: zb_tile(1, ap, bp, kpn, c, ldc, add, m0, m1); break;
    }
}

const GemmKernel qg_bf16_avx512 = {"bf16-avx512", "avx512bf16", 1, 2, Z_MR, Z_NR, zb_pack_a,
                                   zb_pack_b, zb_kernel};
#endif
