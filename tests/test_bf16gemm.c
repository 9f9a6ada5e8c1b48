// bf16 compute GEMMs (quant/bf16_gemm.c): against a float64 reference of the same
// bf16-rounded operands, over shapes that hit every edge (M not a multiple of the 12-row
// micro-kernel, N not a multiple of 32, odd K, K over several 256-blocks), for every weight
// source (fp32, bf16, NF4, Q4_K / Q8_0), both directions, accumulate, row strides and row
// views; bitwise independence of the thread count; and the error against fp32 operands.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "tests/testutil.h"
#include "util/util.h"

static float rnd(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float bf(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// max |got - ref| / max |ref|: fp32 summation of exact bf16 products in another order than
// the float64 reference leaves ~sqrt(K)·2^-24 of the output scale
static double rel_err(const float *got, const double *ref, int64_t n) {
    double mx = 0, e = 0;
    for (int64_t i = 0; i < n; i++) {
        mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;
        e = fabs(got[i] - ref[i]) > e ? fabs(got[i] - ref[i]) : e;
    }
    return e / (mx + 1e-30);
}

// Reference: y (M,OC) (+)= bf(x) bf(W)ᵀ or dx (M,C) (+)= bf(dy) bf(W), W = dense fp32 (OC,C)
static void reference(double *out, const float *a, int64_t M, int64_t lda, const float *W, int64_t OC, int64_t C,
                      int xwt, const float *init) {
    int64_t K = xwt ? C : OC, N = xwt ? OC : C;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = init ? init[m * N + n] : 0.0;
            for (int64_t k = 0; k < K; k++) {
                float w = xwt ? W[n * C + k] : W[k * C + n];
                s += (double)bf(a[m * lda + k]) * (double)bf(w);
            }
            out[m * N + n] = s;
        }
}

typedef enum { SRC_F32, SRC_BF16, SRC_NF4, SRC_Q8_0, SRC_Q4_K } Src;
static const char *SRC_NAME[] = {"f32", "bf16", "nf4", "q8_0", "q4_k"};

// One case: returns the relative error, -1 on setup failure. W (OC,C) random; for quantized
// sources the reference uses the dequantized W.
static double run_case(Src src, int64_t M, int64_t OC, int64_t C, int xwt, int accumulate, int64_t pad,
                       int threads_check, int *thread_ok) {
    uint64_t seed = (uint64_t)(M * 131 + OC * 7 + C * 3 + xwt + 17 * src);
    float *W = malloc(sizeof(float) * OC * C);
    for (int64_t i = 0; i < OC * C; i++) W[i] = rnd(&seed) * 0.05f;
    uint16_t *Wb = NULL;
    Nf4Matrix nf = {0};
    uint8_t *gq = NULL;
    GgqMatrix gm = {0};
    TiledWeight tw;
    Err e = {{0}};
    switch (src) {
    case SRC_F32: tw = tiled_f32(W, OC, C); break;
    case SRC_BF16:
        Wb = malloc(sizeof(uint16_t) * OC * C);
        for (int64_t i = 0; i < OC * C; i++) {
            Wb[i] = f32_to_bf16(W[i]);
            W[i] = bf16_to_f32(Wb[i]);
        }
        tw = tiled_bf16(Wb, OC, C);
        break;
    case SRC_NF4:
        if (nf4_quantize(W, OC, C, "w", &nf, &e)) return -1;
        nf4_dequant_rows(&nf, 0, OC, W);
        tw = tiled_nf4(&nf);
        break;
    default: {  // Q8_0 / Q4_K: random blocks with sane fp16 scales
        int type = src == SRC_Q8_0 ? GGQ_Q8_0 : GGQ_Q4_K;
        size_t nb = ggq_bytes_for(type, OC, C);
        gq = malloc(nb);
        for (size_t i = 0; i < nb; i++) gq[i] = (uint8_t)(rnd(&seed) * 127 + 128);
        size_t bb = ggq_block_bytes(type);
        for (size_t b = 0; b < nb / bb; b++) {  // d (and dmin) = small positive halves
            uint16_t h = f32_to_f16(0.001f + 0.001f * (float)(b % 7));
            if (type == GGQ_Q8_0) memcpy(gq + b * bb, &h, 2);
            else { memcpy(gq + b * bb, &h, 2); memcpy(gq + b * bb + 2, &h, 2); }
        }
        if (ggq_init(&gm, type, OC, C, gq, nb, "w", &e)) return -1;
        ggq_dequant_rows(&gm, 0, OC, W);
        tw = tiled_ggq(&gm);
    }
    }
    int64_t K = xwt ? C : OC, N = xwt ? OC : C, lda = K + pad, ldc = N + pad;
    float *a = malloc(sizeof(float) * M * lda), *c = malloc(sizeof(float) * M * ldc);
    float *init = malloc(sizeof(float) * M * N), *got = malloc(sizeof(float) * M * N);
    double *ref = malloc(sizeof(double) * M * N);
    for (int64_t i = 0; i < M * lda; i++) a[i] = rnd(&seed);
    for (int64_t i = 0; i < M * N; i++) init[i] = rnd(&seed);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < ldc; n++) c[m * ldc + n] = n < N ? init[m * N + n] : 12345.0f;
    void *scr = malloc(bf16_gemm_scratch_bytes(M, K));
    if (xwt) bf16_matmul_xwt(a, M, lda, &tw, c, ldc, accumulate, scr);
    else bf16_matmul_dyw(a, M, lda, &tw, c, ldc, accumulate, scr);
    int pad_ok = 1;
    for (int64_t m = 0; m < M; m++) {
        memcpy(got + m * N, c + m * ldc, sizeof(float) * N);
        for (int64_t n = N; n < ldc; n++) pad_ok &= c[m * ldc + n] == 12345.0f;
    }
    reference(ref, a, M, lda, W, OC, C, xwt, accumulate ? init : NULL);
    double err = pad_ok ? rel_err(got, ref, M * N) : 1e9;
    if (threads_check) {  // 1 thread vs the default: bitwise equal
        int nt = omp_get_max_threads();
        omp_set_num_threads(1);
        for (int64_t m = 0; m < M; m++) memcpy(c + m * ldc, init + m * N, sizeof(float) * N);
        free(scr);
        scr = malloc(bf16_gemm_scratch_bytes(M, K));
        if (xwt) bf16_matmul_xwt(a, M, lda, &tw, c, ldc, accumulate, scr);
        else bf16_matmul_dyw(a, M, lda, &tw, c, ldc, accumulate, scr);
        omp_set_num_threads(nt);
        int same = 1;
        for (int64_t m = 0; m < M; m++) same &= !memcmp(got + m * N, c + m * ldc, sizeof(float) * N);
        *thread_ok = same;
    }
    free(scr);
    free(a);
    free(c);
    free(init);
    free(got);
    free(ref);
    free(W);
    free(Wb);
    free(gq);
    nf4_free(&nf);
    return err;
}

int main(void) {
    if (!bf16_gemm_supported()) {
        SKIP("bf16 gemm", "this CPU has no AVX-512 BF16 (the fp32 path is used)");
        return tu_exit();
    }
    // shapes: M, OC, C  (NF4 / Q4_K need C % 64 / 256 == 0)
    const int64_t shapes[][3] = {{1, 32, 64},   {5, 33, 128},   {12, 64, 576},  {13, 300, 256},
                                 {37, 576, 192}, {100, 96, 1536}, {256, 1000, 512}};
    for (int s = 0; s < SRC_Q4_K + 1; s++)
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            for (int xwt = 0; xwt < 2; xwt++) {
                int64_t M = shapes[i][0], OC = shapes[i][1], C = shapes[i][2];
                if (s == SRC_Q4_K) C = (C + 255) / 256 * 256;
                int acc = (int)(i % 2), thread_ok = 1;
                double err = run_case((Src)s, M, OC, C, xwt, acc, i % 3 == 1 ? 7 : 0, i == 4 || i == 6, &thread_ok);
                // fp32 sums of exact bf16 products: only summation-order rounding remains
                CHECK("bf16 gemm matches bf16-operand reference", err >= 0 && err < 2e-6,
                      "%s %s M=%lld OC=%lld C=%lld acc=%d: rel err %.2e", SRC_NAME[s], xwt ? "xwt" : "dyw",
                      (long long)M, (long long)OC, (long long)C, acc, err);
                if (i == 4 || i == 6)
                    CHECK("bf16 gemm bitwise independent of thread count", thread_ok, "%s %s M=%lld", SRC_NAME[s],
                          xwt ? "xwt" : "dyw", (long long)M);
            }
    // odd K and odd N for the dense sources (any shape is allowed there)
    const int64_t odd[][3] = {{3, 7, 5}, {14, 45, 257}, {25, 513, 33}};
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 3; i++)
            for (int xwt = 0; xwt < 2; xwt++) {
                int t;
                double err = run_case((Src)s, odd[i][0], odd[i][1], odd[i][2], xwt, 1, 3, 0, &t);
                CHECK("bf16 gemm odd sizes", err >= 0 && err < 2e-6, "%s %s %lldx%lldx%lld: %.2e", SRC_NAME[s],
                      xwt ? "xwt" : "dyw", (long long)odd[i][0], (long long)odd[i][1], (long long)odd[i][2], err);
            }
    // a row view (as the lm_head's vocabulary tiles): rows [r0, r0+n) of W
    {
        uint64_t seed = 99;
        int64_t OC = 200, C = 96, M = 20, r0 = 37, nr = 70;
        float *W = malloc(sizeof(float) * OC * C), *x = malloc(sizeof(float) * M * C), *y = malloc(sizeof(float) * M * nr);
        float *dx = malloc(sizeof(float) * M * C);
        for (int64_t i = 0; i < OC * C; i++) W[i] = rnd(&seed);
        for (int64_t i = 0; i < M * C; i++) x[i] = rnd(&seed);
        TiledWeight tw = tiled_f32(W, OC, C), v = tiled_rows(&tw, r0, nr);
        void *scr = malloc(bf16_gemm_scratch_bytes(M, C > nr ? C : nr));
        bf16_matmul_xwt(x, M, C, &v, y, nr, 0, scr);
        bf16_matmul_dyw(y, M, nr, &v, dx, C, 0, scr);
        double *ref = malloc(sizeof(double) * M * (nr > C ? nr : C));
        reference(ref, x, M, C, W + r0 * C, nr, C, 1, NULL);
        double e1 = rel_err(y, ref, M * nr);
        reference(ref, y, M, nr, W + r0 * C, nr, C, 0, NULL);
        double e2 = rel_err(dx, ref, M * C);
        CHECK("bf16 gemm on a row view", e1 < 2e-6 && e2 < 2e-6, "xwt %.2e dyw %.2e", e1, e2);
        free(W), free(x), free(y), free(dx), free(scr), free(ref);
    }
    // two products in one pass (LoRA fused with the frozen matmul): y = x Wᵀ + x2 W2ᵀ and
    // dx = dy W + dy2 W2, with an odd K2 and an NF4 W; the reference sums the two references
    {
        uint64_t seed = 123;
        const int64_t M = 30, OC = 96, C = 128, K2 = 7;
        Err e = {{0}};
        float *W = malloc(sizeof(float) * OC * C), *x = malloc(sizeof(float) * M * C), *x2 = malloc(sizeof(float) * M * K2);
        float *Bm = malloc(sizeof(float) * OC * K2), *Am = malloc(sizeof(float) * K2 * C), *dy = malloc(sizeof(float) * M * OC);
        float *y = malloc(sizeof(float) * M * OC), *dx = malloc(sizeof(float) * M * C);
        for (int64_t i = 0; i < OC * C; i++) W[i] = rnd(&seed) * 0.1f;
        for (int64_t i = 0; i < M * C; i++) x[i] = rnd(&seed);
        for (int64_t i = 0; i < M * K2; i++) x2[i] = rnd(&seed);
        for (int64_t i = 0; i < OC * K2; i++) Bm[i] = rnd(&seed);
        for (int64_t i = 0; i < K2 * C; i++) Am[i] = rnd(&seed);
        for (int64_t i = 0; i < M * OC; i++) dy[i] = rnd(&seed);
        Nf4Matrix q;
        nf4_quantize(W, OC, C, "w", &q, &e);
        nf4_dequant_rows(&q, 0, OC, W);
        TiledWeight tw = tiled_nf4(&q), tb = tiled_f32(Bm, OC, K2), ta = tiled_f32(Am, K2, C);
        void *scr = malloc(bf16_gemm_scratch_bytes(M, (C > OC ? C : OC) + K2 + 1));
        for (int64_t i = 0; i < M * OC; i++) y[i] = 0.5f;
        bf16_matmul_xwt2(x, M, C, &tw, x2, K2, &tb, y, OC, 1, scr);
        for (int64_t i = 0; i < M * C; i++) dx[i] = 0.0f;
        bf16_matmul_dyw2(dy, M, OC, &tw, x2, K2, &ta, dx, C, 0, scr);
        double *r1 = malloc(sizeof(double) * M * (OC > C ? OC : C)), *r2 = malloc(sizeof(double) * M * (OC > C ? OC : C));
        float *half = malloc(sizeof(float) * M * OC);
        for (int64_t i = 0; i < M * OC; i++) half[i] = 0.5f;
        reference(r1, x, M, C, W, OC, C, 1, half);
        reference(r2, x2, M, K2, Bm, OC, K2, 1, NULL);
        for (int64_t i = 0; i < M * OC; i++) r1[i] += r2[i];
        double e1 = rel_err(y, r1, M * OC);
        reference(r1, dy, M, OC, W, OC, C, 0, NULL);
        reference(r2, x2, M, K2, Am, K2, C, 0, NULL);
        for (int64_t i = 0; i < M * C; i++) r1[i] += r2[i];
        double e2 = rel_err(dx, r1, M * C);
        CHECK("bf16 gemm with a fused second product (LoRA path)", e1 < 2e-6 && e2 < 2e-6, "xwt2 %.2e dyw2 %.2e", e1, e2);
        nf4_free(&q);
        free(W), free(x), free(x2), free(Bm), free(Am), free(dy), free(y), free(dx), free(scr), free(r1), free(r2), free(half);
    }
    // the bf16 rounding itself: against fp32 operands the error is ~2^-8 relative per
    // operand; for Gaussian-like data with K = 1024 the output error stays around 1e-2 of
    // the output's scale (checked loosely: the point is that it is small, and not zero)
    {
        uint64_t seed = 5;
        int64_t M = 64, OC = 128, C = 1024;
        float *W = malloc(sizeof(float) * OC * C), *x = malloc(sizeof(float) * M * C), *y = malloc(sizeof(float) * M * OC);
        for (int64_t i = 0; i < OC * C; i++) W[i] = rnd(&seed);
        for (int64_t i = 0; i < M * C; i++) x[i] = rnd(&seed);
        TiledWeight tw = tiled_f32(W, OC, C);
        void *scr = malloc(bf16_gemm_scratch_bytes(M, C));
        bf16_matmul_xwt(x, M, C, &tw, y, OC, 0, scr);
        double num = 0, den = 0;
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < OC; n++) {
                double s = 0;
                for (int64_t k = 0; k < C; k++) s += (double)x[m * C + k] * W[n * C + k];
                num += (y[m * OC + n] - s) * (y[m * OC + n] - s);
                den += s * s;
            }
        double rms = sqrt(num / den);
        CHECK("bf16 rounding error vs fp32 operands is small but present", rms > 1e-4 && rms < 1e-2,
              "relative RMS error %.2e", rms);
        free(W), free(x), free(y), free(scr);
    }
    return tu_exit();
}
