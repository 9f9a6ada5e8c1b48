// quant — the tiled GEMM over frozen weights: C (M,N) (+)= A (M,K) · B (K,N), where A is an
// fp32 activation matrix packed once per call and B is a frozen weight W read tile by tile
// through its format's dequantization callback (NF4, GGUF blocks, fp32, bf16) and packed on
// the fly: no dequantized copy of the whole W is ever held. One driver, several kernel
// variants (quant_internal.h's GemmKernel): fp32 FMA (AVX-512, AVX2, NEON, portable C) and
// bf16 products with fp32 accumulation (AVX-512 BF16 vdpbf16ps, portable C).
//
//   xwt: B[k][n] = W[n][k]   (y = x Wᵀ:  K = W cols, N = W rows)
//   dyw: B[k][n] = W[k][n]   (dx = dy W: K = W rows, N = W cols)
//
// Layout (GotoBLAS-style, sized for a 32 KiB L1 / 1 MiB L2 per core): A in micro-panels of
// mr rows; B per thread, QG_KC k by up to QG_NC columns at a time, in panels of nr columns.
// Threads split the N columns (whole panels) into contiguous ranges: every output element is
// computed by one thread, summing k in the same order (blocks of QG_KC, fp32 adds between
// blocks) whatever the thread count: results do not depend on it (they do depend on the
// kernel variant: FMA or not, bf16 or fp32).
#include "quant/quant.h"
#include "quant/quant_internal.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t words_for(const GemmKernel *g, int64_t K) { return (K + g->kw - 1) / g->kw; }

static int64_t a_panel_words(const GemmKernel *g, int64_t M, int64_t KPT) {
    return (M + g->mr - 1) / g->mr * g->mr * KPT;
}

static size_t scratch_for(const GemmKernel *g, int64_t M, int64_t K) {
    size_t per_thread = (size_t)QG_KC * QG_NC * sizeof(float) + (size_t)QG_KC * QG_NC * sizeof(uint32_t) / g->kw;
    return (size_t)a_panel_words(g, M, words_for(g, K) + 1) * sizeof(uint32_t) +
           (size_t)omp_get_max_threads() * per_thread + 256;
}

size_t gemm_scratch_bytes(const GemmKernel *g, int64_t M, int64_t K) {
    if (g) return scratch_for(g, M, K);
    size_t mx = 0;  // NULL: enough for any variant
    for (int i = 0; qg_kernels[i]; i++) {
        size_t s = scratch_for(qg_kernels[i], M, K);
        if (s > mx) mx = s;
    }
    return mx;
}

// ---- portable C: packers shared by every variant, and the two portable kernels ----------

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

// k values [k, k+kw) of one row (stride 1, n valid) -> one word
static inline uint32_t word_of(int kw, const float *src, int64_t n) {
    if (kw == 1) return n > 0 ? f32_bits(src[0]) : 0;
    uint32_t lo = n > 0 ? f32_to_bf16(src[0]) : 0, hi = n > 1 ? f32_to_bf16(src[1]) : 0;
    return lo | hi << 16;
}

void qg_pack_a_words(const GemmKernel *g, uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M,
                     int64_t K, int64_t lda) {
    const int mr = g->mr, kw = g->kw;
    const int64_t KP = words_for(g, K), nb = (M + mr - 1) / mr;
#pragma omp parallel for schedule(static)
    for (int64_t ib = 0; ib < nb; ib++) {
        uint32_t *blk = ap + ib * KPT * mr + kpo * mr;
        for (int m = 0; m < mr; m++) {
            const int64_t r = ib * mr + m;
            if (r >= M) {
                for (int64_t kp = 0; kp < KP; kp++) blk[kp * mr + m] = 0;
                continue;
            }
            const float *src = a + r * lda;
            for (int64_t kp = 0; kp < KP; kp++) blk[kp * mr + m] = word_of(kw, src + kw * kp, K - kw * kp);
        }
    }
}

void qg_pack_b_words(const GemmKernel *g, int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc,
                     int64_t kc) {
    const int nr = g->nr, kw = g->kw;
    const int64_t kpn = words_for(g, kc), np = (nc + nr - 1) / nr;
    for (int64_t p = 0; p < np; p++) {
        uint32_t *dst = P + p * kpn * nr;
        for (int j = 0; j < nr; j++) {
            const int64_t col = p * nr + j;
            if (col >= nc) {
                for (int64_t kp = 0; kp < kpn; kp++) dst[kp * nr + j] = 0;
                continue;
            }
            if (xwt) {  // T (nc,kc): the column's k run along row `col`
                const float *src = T + col * ldt;
                for (int64_t kp = 0; kp < kpn; kp++) dst[kp * nr + j] = word_of(kw, src + kw * kp, kc - kw * kp);
            } else {    // T (kc,nc): k runs down column `col`
                for (int64_t kp = 0; kp < kpn; kp++) {
                    float v[2] = {T[kw * kp * ldt + col], kw == 2 && 2 * kp + 1 < kc ? T[(2 * kp + 1) * ldt + col] : 0.0f};
                    dst[kp * nr + j] = word_of(kw, v, kw);
                }
            }
        }
    }
}

#define C_MR 4
#define C_NR 16

static void pack_a_c_f32(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda);
static void pack_a_c_bf16(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda);
static void pack_b_c_f32(int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc);
static void pack_b_c_bf16(int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc);

// ap (kpn, 4) fp32 words, bp (kpn, 16) -> c (rows, ncols): plain loops the compiler
// vectorizes for the build's baseline (SSE2 on x86-64, NEON on aarch64)
static void kernel_c_f32(int rows, const uint32_t *ap, const uint32_t *bp, int64_t kpn, float *c, int64_t ldc,
                         int add, int ncols) {
    float acc[C_MR][C_NR] = {{0}};
    const float *a = (const float *)ap, *b = (const float *)bp;
    for (int64_t kp = 0; kp < kpn; kp++)
        for (int m = 0; m < C_MR; m++) {
            const float av = a[kp * C_MR + m];
            for (int j = 0; j < C_NR; j++) acc[m][j] += av * b[kp * C_NR + j];
        }
    for (int m = 0; m < rows; m++)
        for (int j = 0; j < ncols; j++) c[m * ldc + j] = add ? c[m * ldc + j] + acc[m][j] : acc[m][j];
}

// ap (kpn, 4) bf16-pair words, bp (kpn, 16) -> c: each pair's two products summed, then added
static void kernel_c_bf16(int rows, const uint32_t *ap, const uint32_t *bp, int64_t kpn, float *c, int64_t ldc,
                          int add, int ncols) {
    float acc[C_MR][C_NR] = {{0}};
    for (int64_t kp = 0; kp < kpn; kp++)
        for (int m = 0; m < C_MR; m++) {
            const uint32_t a = ap[kp * C_MR + m];
            const float a0 = bf16_to_f32((uint16_t)a), a1 = bf16_to_f32((uint16_t)(a >> 16));
            for (int j = 0; j < C_NR; j++) {
                const uint32_t b = bp[kp * C_NR + j];
                acc[m][j] += a0 * bf16_to_f32((uint16_t)b) + a1 * bf16_to_f32((uint16_t)(b >> 16));
            }
        }
    for (int m = 0; m < rows; m++)
        for (int j = 0; j < ncols; j++) c[m * ldc + j] = add ? c[m * ldc + j] + acc[m][j] : acc[m][j];
}

static const GemmKernel qg_f32_c = {"f32-c", "c", 0, 1, C_MR, C_NR, pack_a_c_f32, pack_b_c_f32, kernel_c_f32};
static const GemmKernel qg_bf16_c = {"bf16-c", "c", 1, 2, C_MR, C_NR, pack_a_c_bf16, pack_b_c_bf16,
                                     kernel_c_bf16};

static void pack_a_c_f32(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda) {
    qg_pack_a_words(&qg_f32_c, ap, KPT, kpo, a, M, K, lda);
}
static void pack_a_c_bf16(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda) {
    qg_pack_a_words(&qg_bf16_c, ap, KPT, kpo, a, M, K, lda);
}
static void pack_b_c_f32(int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc) {
    qg_pack_b_words(&qg_f32_c, xwt, P, T, ldt, nc, kc);
}
static void pack_b_c_bf16(int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc) {
    qg_pack_b_words(&qg_bf16_c, xwt, P, T, ldt, nc, kc);
}

const GemmKernel *const qg_kernels[] = {
    &qg_f32_c, &qg_bf16_c,
#if defined(__x86_64__)
    &qg_f32_avx2, &qg_f32_avx512, &qg_bf16_avx512,
#endif
#if defined(__aarch64__)
    &qg_f32_neon,
#endif
    NULL};

// ---- the driver -----------------------------------------------------------------------

// c (M,N) (+)= a (M,K) · B (K,N) [+ a2 (M,K2) · B2 (K2,N)], B from w and B2 from w2 as
// described at the top (xwt selects the case). The second product (a2 = NULL: none) is the
// same GEMM over K2 more k: its words follow a's in the packed A, its k-blocks follow a's.
static void gemm(const GemmKernel *g, const float *a, int64_t M, int64_t lda, const TiledWeight *w, const float *a2,
                 int64_t lda2, const TiledWeight *w2, int xwt, float *c, int64_t ldc, int accumulate, void *scratch) {
    const int64_t K = xwt ? w->cols : w->rows, N = xwt ? w->rows : w->cols;
    const int64_t K2 = a2 ? (xwt ? w2->cols : w2->rows) : 0;
    if (a2 && (xwt ? w2->rows : w2->cols) != N)
        die_internal("gemm: the second product has %lld columns, the first %lld",
                     (long long)(xwt ? w2->rows : w2->cols), (long long)N);
    const int mr = g->mr, nr = g->nr, kw = g->kw;
    const int64_t KP = words_for(g, K), KPT = KP + words_for(g, K2);
    const int nth = omp_get_max_threads();
    char *s = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    uint32_t *ap = (uint32_t *)s;
    s += a_panel_words(g, M, KPT + 1) * sizeof(uint32_t);
    float *tiles = (float *)s;
    s += (size_t)nth * QG_KC * QG_NC * sizeof(float);
    uint32_t *packs = (uint32_t *)s;  // per thread: QG_KC / kw · QG_NC words
    g->pack_a(ap, KPT, 0, a, M, K, lda);
    if (a2) g->pack_a(ap, KPT, KP, a2, M, K2, lda2);
    const int64_t npan = (N + nr - 1) / nr;
#pragma omp parallel num_threads(nth)
    {
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        float *T = tiles + (int64_t)tid * QG_KC * QG_NC;
        uint32_t *P = packs + (int64_t)tid * (QG_KC / kw) * QG_NC;
        const int64_t p0 = npan * tid / nt, p1 = npan * (tid + 1) / nt;
        for (int64_t pc = p0; pc < p1; pc += QG_NC / nr) {
            const int64_t n0 = pc * nr, np = min64(QG_NC / nr, p1 - pc), nc = min64(np * nr, N - n0);
            for (int part = 0; part < (a2 ? 2 : 1); part++) {
                const TiledWeight *wp = part ? w2 : w;
                const int64_t Kp = part ? K2 : K, kpo = part ? KP : 0;
                for (int64_t k0 = 0; k0 < Kp; k0 += QG_KC) {
                    const int64_t kc = min64(QG_KC, Kp - k0), kpn = (kc + kw - 1) / kw;
                    if (xwt) {
                        wp->tile(wp, n0, nc, k0, kc, T, QG_KC);  // T (nc,kc) = W[n0.., k0..]
                        g->pack_b(1, P, T, QG_KC, nc, kc);
                    } else {
                        wp->tile(wp, k0, kc, n0, nc, T, QG_NC);  // T (kc,nc) = W[k0.., n0..]
                        g->pack_b(0, P, T, QG_NC, nc, kc);
                    }
                    const int add = accumulate || part || k0 > 0;
                    for (int64_t p = 0; p < np; p++) {
                        const int ncols = (int)min64(nr, nc - p * nr);
                        const uint32_t *bp = P + p * kpn * nr;
                        for (int64_t m0 = 0; m0 < M; m0 += mr)
                            g->kernel((int)min64(mr, M - m0), ap + (m0 / mr) * KPT * mr + (kpo + k0 / kw) * mr, bp,
                                      kpn, c + m0 * ldc + n0 + p * nr, ldc, add, ncols);
                    }
                }
            }
        }
    }
}

void gemm_xwt(const GemmKernel *g, const float *x, int64_t N, int64_t ldx, const TiledWeight *w, float *y,
              int64_t ldy, int accumulate, void *scratch) {
    if (N <= 0) return;
    gemm(g, x, N, ldx, w, NULL, 0, NULL, 1, y, ldy, accumulate, scratch);
}

void gemm_dyw(const GemmKernel *g, const float *dy, int64_t N, int64_t lddy, const TiledWeight *w, float *dx,
              int64_t lddx, int accumulate, void *scratch) {
    if (N <= 0) return;
    gemm(g, dy, N, lddy, w, NULL, 0, NULL, 0, dx, lddx, accumulate, scratch);
}

void gemm_xwt2(const GemmKernel *g, const float *x, int64_t N, int64_t ldx, const TiledWeight *w, const float *x2,
               int64_t ldx2, const TiledWeight *w2, float *y, int64_t ldy, int accumulate, void *scratch) {
    if (N <= 0) return;
    gemm(g, x, N, ldx, w, x2, ldx2, w2, 1, y, ldy, accumulate, scratch);
}

void gemm_dyw2(const GemmKernel *g, const float *dy, int64_t N, int64_t lddy, const TiledWeight *w, const float *dy2,
               int64_t lddy2, const TiledWeight *w2, float *dx, int64_t lddx, int accumulate, void *scratch) {
    if (N <= 0) return;
    gemm(g, dy, N, lddy, w, dy2, lddy2, w2, 0, dx, lddx, accumulate, scratch);
}

const char *gemm_kernel_name(const GemmKernel *g) { return g ? g->name : "openblas"; }
int gemm_kernel_bf16(const GemmKernel *g) { return g && g->bf16; }
const char *gemm_kernel_isa(const GemmKernel *g) { return g ? g->isa : "openblas"; }

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
        for (int64_t c = 0; c < nc; c++) {  // bf16 -> fp32 is a 16-bit shift (vectorized by the compiler)
            uint32_t u = (uint32_t)s[c] << 16;
            memcpy(o + c, &u, sizeof u);
        }
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

int gemm_kernel_count(void) {
    int n = 0;
    while (qg_kernels[n]) n++;
    return n;
}

const GemmKernel *gemm_kernel_at(int i) { return i >= 0 && i < gemm_kernel_count() ? qg_kernels[i] : NULL; }

const GemmKernel *gemm_kernel_find(const char *name) {
    for (int i = 0; qg_kernels[i]; i++)
        if (!strcmp(qg_kernels[i]->name, name)) return qg_kernels[i];
    return NULL;
}
