// The tiled GEMMs (quant/gemm.c, gemm_x86.c, gemm_neon.c), every kernel variant this CPU runs
// (fp32 FMA: AVX-512, AVX2, NEON, portable C; bf16 products: AVX-512 BF16, portable C): each
// against a float64 reference of the same operands (bf16-rounded for the bf16 variants), over
// shapes that hit every edge (M not a multiple of any micro-kernel's rows, N not a multiple
// of its columns, odd K, K over several 256-blocks), for every weight source (fp32, bf16, NF4,
// Q4_K / Q8_0), both directions, accumulate, row strides and row views; bitwise independence
// of the thread count; the bf16 rounding against fp32 operands; the calibration's choice.
// Tolerance, per output element, derived from the sum it is: any order of fp32 summation of K
// terms (products exact or rounded once) is within (K + 2)·2^-24·Σ|a||b| (+ |c| when
// accumulating) of the exact value; a NaN or Inf fails.
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

// max over elements of |got - ref| / tol, tol = (K + 2)·2^-24·bound (bound = Σ|a||b| + |c|);
// a non-finite got gives INFINITY. <= 1 passes.
static double err_ratio(const float *got, const double *ref, const double *bound, int64_t n, int64_t K) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        double tol = (double)(K + 2) * 5.9604644775390625e-8 * bound[i] + 1e-30;
        double r = fabs(got[i] - ref[i]) / tol;
        if (!(r <= worst)) worst = r;
    }
    return worst;
}

// Reference: y (M,OC) (+)= r(x) r(W)ᵀ or dx (M,C) (+)= r(dy) r(W), W = dense fp32 (OC,C),
// r = bf16 rounding (round_bf16) or none; bound = Σ|r(a)||r(w)| + |init|
static void reference(double *out, double *bound, const float *a, int64_t M, int64_t lda, const float *W, int64_t OC,
                      int64_t C, int xwt, const float *init, int round_bf16) {
    int64_t K = xwt ? C : OC, N = xwt ? OC : C;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = init ? init[m * N + n] : 0.0, b = init ? fabs(init[m * N + n]) : 0.0;
            for (int64_t k = 0; k < K; k++) {
                float w = xwt ? W[n * C + k] : W[k * C + n], av = a[m * lda + k];
                double p = round_bf16 ? (double)bf(av) * (double)bf(w) : (double)av * (double)w;
                s += p;
                b += fabs(p);
            }
            out[m * N + n] = s;
            if (bound) bound[m * N + n] = b;
        }
}

typedef enum { SRC_F32, SRC_BF16, SRC_NF4, SRC_Q8_0, SRC_Q4_K } Src;
static const char *SRC_NAME[] = {"f32", "bf16", "nf4", "q8_0", "q4_k"};

// One case: returns the relative error, -1 on setup failure. W (OC,C) random; for quantized
// sources the reference uses the dequantized W.
static double run_case(const GemmKernel *g, Src src, int64_t M, int64_t OC, int64_t C, int xwt, int accumulate,
                       int64_t pad, int threads_check, int *thread_ok) {
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
    double *ref = malloc(sizeof(double) * M * N), *bound = malloc(sizeof(double) * M * N);
    for (int64_t i = 0; i < M * lda; i++) a[i] = rnd(&seed);
    for (int64_t i = 0; i < M * N; i++) init[i] = rnd(&seed);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < ldc; n++) c[m * ldc + n] = n < N ? init[m * N + n] : 12345.0f;
    void *scr = malloc(gemm_scratch_bytes(g, M, K));
    if (xwt) gemm_xwt(g, a, M, lda, &tw, c, ldc, accumulate, scr);
    else gemm_dyw(g, a, M, lda, &tw, c, ldc, accumulate, scr);
    int pad_ok = 1;
    for (int64_t m = 0; m < M; m++) {
        memcpy(got + m * N, c + m * ldc, sizeof(float) * N);
        for (int64_t n = N; n < ldc; n++) pad_ok &= c[m * ldc + n] == 12345.0f;
    }
    reference(ref, bound, a, M, lda, W, OC, C, xwt, accumulate ? init : NULL, gemm_kernel_bf16(g));
    double err = pad_ok ? err_ratio(got, ref, bound, M * N, K) : INFINITY;
    if (threads_check) {  // 1 thread vs the default: bitwise equal
        int nt = omp_get_max_threads();
        omp_set_num_threads(1);
        for (int64_t m = 0; m < M; m++) memcpy(c + m * ldc, init + m * N, sizeof(float) * N);
        free(scr);
        scr = malloc(gemm_scratch_bytes(g, M, K));
        if (xwt) gemm_xwt(g, a, M, lda, &tw, c, ldc, accumulate, scr);
        else gemm_dyw(g, a, M, lda, &tw, c, ldc, accumulate, scr);
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
    free(bound);
    free(W);
    free(Wb);
    free(gq);
    nf4_free(&nf);
    return err;
}

// The cases of main for one variant g.
static void test_kernel(const GemmKernel *g) {
    const char *kn = gemm_kernel_name(g);
    const int b16 = gemm_kernel_bf16(g);
    // shapes: M, OC, C  (NF4 / Q4_K need C % 64 / 256 == 0)
    const int64_t shapes[][3] = {{1, 32, 64},   {5, 33, 128},   {12, 64, 576},  {13, 300, 256},
                                 {37, 576, 192}, {100, 96, 1536}, {150, 1000, 512}};
    int worst_ok = 1, thr_ok = 1;
    double worst = 0;
    char where[200] = "";
    for (int s = 0; s < SRC_Q4_K + 1; s++)
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            for (int xwt = 0; xwt < 2; xwt++) {
                int64_t M = shapes[i][0], OC = shapes[i][1], C = shapes[i][2];
                if (s == SRC_Q4_K) C = (C + 255) / 256 * 256;
                int acc = (int)(i % 2), thread_ok = 1, tcheck = i == 4 || i == 6;
                double err = run_case(g, (Src)s, M, OC, C, xwt, acc, i % 3 == 1 ? 7 : 0, tcheck, &thread_ok);
                if (!(err <= worst) || !(err <= 1.0)) {
                    if (!(err <= 1.0) && worst_ok)
                        snprintf(where, sizeof where, "%s %s M=%lld OC=%lld C=%lld acc=%d", SRC_NAME[s],
                                 xwt ? "xwt" : "dyw", (long long)M, (long long)OC, (long long)C, acc);
                    worst_ok &= err <= 1.0;
                    worst = err;
                }
                thr_ok &= thread_ok;
            }
    char name[300];
    snprintf(name, sizeof name, "%s: 70 cases (5 weight formats, 7 shapes, xwt and dyw) within the derived "
             "summation bound of the %s-operand reference (worst %.3f of it)", kn, b16 ? "bf16" : "fp32", worst);
    CHECK(name, worst_ok, "over the bound at %s", where);
    snprintf(name, sizeof name, "%s: bitwise independent of the thread count", kn);
    CHECK(name, thr_ok, "1 thread and %d threads differ", omp_get_max_threads());
    // odd K and odd N for the dense sources (any shape is allowed there)
    const int64_t odd[][3] = {{3, 7, 5}, {14, 45, 257}, {25, 513, 33}};
    double wo = 0;
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 3; i++)
            for (int xwt = 0; xwt < 2; xwt++) {
                int t;
                double err = run_case(g, (Src)s, odd[i][0], odd[i][1], odd[i][2], xwt, 1, 3, 0, &t);
                if (!(err <= wo)) wo = err;
            }
    snprintf(name, sizeof name, "%s: odd sizes within the bound (worst %.3f)", kn, wo);
    CHECK(name, wo <= 1.0, "over the bound");
    // a row view (as the lm_head's vocabulary tiles): rows [r0, r0+n) of W
    {
        uint64_t seed = 99;
        int64_t OC = 200, C = 96, M = 20, r0 = 37, nr = 70;
        float *W = malloc(sizeof(float) * OC * C), *x = malloc(sizeof(float) * M * C), *y = malloc(sizeof(float) * M * nr);
        float *dx = malloc(sizeof(float) * M * C);
        for (int64_t i = 0; i < OC * C; i++) W[i] = rnd(&seed);
        for (int64_t i = 0; i < M * C; i++) x[i] = rnd(&seed);
        TiledWeight tw = tiled_f32(W, OC, C), v = tiled_rows(&tw, r0, nr);
        void *scr = malloc(gemm_scratch_bytes(g, M, C > nr ? C : nr));
        gemm_xwt(g, x, M, C, &v, y, nr, 0, scr);
        gemm_dyw(g, y, M, nr, &v, dx, C, 0, scr);
        double *ref = malloc(sizeof(double) * M * (nr > C ? nr : C)), *bd = malloc(sizeof(double) * M * (nr > C ? nr : C));
        reference(ref, bd, x, M, C, W + r0 * C, nr, C, 1, NULL, b16);
        double e1 = err_ratio(y, ref, bd, M * nr, C);
        reference(ref, bd, y, M, nr, W + r0 * C, nr, C, 0, NULL, b16);
        double e2 = err_ratio(dx, ref, bd, M * C, nr);
        snprintf(name, sizeof name, "%s: on a row view", kn);
        CHECK(name, e1 <= 1.0 && e2 <= 1.0, "xwt %.3f dyw %.3f of the bound", e1, e2);
        free(W), free(x), free(y), free(dx), free(scr), free(ref), free(bd);
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
        void *scr = malloc(gemm_scratch_bytes(g, M, (C > OC ? C : OC) + K2 + 1));
        for (int64_t i = 0; i < M * OC; i++) y[i] = 0.5f;
        gemm_xwt2(g, x, M, C, &tw, x2, K2, &tb, y, OC, 1, scr);
        for (int64_t i = 0; i < M * C; i++) dx[i] = 0.0f;
        gemm_dyw2(g, dy, M, OC, &tw, x2, K2, &ta, dx, C, 0, scr);
        const int64_t mx = M * (OC > C ? OC : C);
        double *r1 = malloc(sizeof(double) * mx), *r2 = malloc(sizeof(double) * mx);
        double *b1 = malloc(sizeof(double) * mx), *b2 = malloc(sizeof(double) * mx);
        float *half = malloc(sizeof(float) * M * OC);
        for (int64_t i = 0; i < M * OC; i++) half[i] = 0.5f;
        reference(r1, b1, x, M, C, W, OC, C, 1, half, b16);
        reference(r2, b2, x2, M, K2, Bm, OC, K2, 1, NULL, b16);
        for (int64_t i = 0; i < M * OC; i++) r1[i] += r2[i], b1[i] += b2[i];
        double e1 = err_ratio(y, r1, b1, M * OC, C + K2);
        reference(r1, b1, dy, M, OC, W, OC, C, 0, NULL, b16);
        reference(r2, b2, x2, M, K2, Am, K2, C, 0, NULL, b16);
        for (int64_t i = 0; i < M * C; i++) r1[i] += r2[i], b1[i] += b2[i];
        double e2 = err_ratio(dx, r1, b1, M * C, OC + K2);
        snprintf(name, sizeof name, "%s: with a fused second product (LoRA path)", kn);
        CHECK(name, e1 <= 1.0 && e2 <= 1.0, "xwt2 %.3f dyw2 %.3f of the bound", e1, e2);
        nf4_free(&q);
        free(W), free(x), free(x2), free(Bm), free(Am), free(dy), free(y), free(dx), free(scr), free(r1), free(r2);
        free(b1), free(b2), free(half);
    }
    // against fp32 operands: the fp32 variants within the bound; the bf16 ones ~2^-8 relative
    // per operand, for Gaussian-like data with K = 1024 a relative RMS error around 1e-3..1e-2
    // of the output's scale (small, and not zero: the rounding really happens)
    {
        uint64_t seed = 5;
        int64_t M = 64, OC = 128, C = 1024;
        float *W = malloc(sizeof(float) * OC * C), *x = malloc(sizeof(float) * M * C), *y = malloc(sizeof(float) * M * OC);
        for (int64_t i = 0; i < OC * C; i++) W[i] = rnd(&seed);
        for (int64_t i = 0; i < M * C; i++) x[i] = rnd(&seed);
        TiledWeight tw = tiled_f32(W, OC, C);
        void *scr = malloc(gemm_scratch_bytes(g, M, C));
        gemm_xwt(g, x, M, C, &tw, y, OC, 0, scr);
        double num = 0, den = 0;
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < OC; n++) {
                double s = 0;
                for (int64_t k = 0; k < C; k++) s += (double)x[m * C + k] * W[n * C + k];
                num += (y[m * OC + n] - s) * (y[m * OC + n] - s);
                den += s * s;
            }
        double rms = sqrt(num / den);
        snprintf(name, sizeof name, "%s: error against fp32 operands: relative RMS %.2e", kn, rms);
        if (b16)
            CHECK(name, rms > 1e-4 && rms < 1e-2, "bf16 rounding should leave 1e-4 .. 1e-2");
        else
            CHECK(name, rms < 32.0 * 5.9604644775390625e-8 * sqrt((double)C), "over 32·sqrt(K)·2^-24");
        free(W), free(x), free(y), free(scr);
    }
}

int main(void) {
    int ran = 0;
    for (int i = 0; i < gemm_kernel_count(); i++) {
        const GemmKernel *g = gemm_kernel_at(i);
        char name[200];
        if (!gemm_kernel_usable(g)) {
            snprintf(name, sizeof name, "%s", gemm_kernel_name(g));
            SKIP(name, "this CPU lacks %s (or LORA_ISA caps it)", gemm_kernel_isa(g));
            continue;
        }
        test_kernel(g);
        ran++;
    }
    CHECK("the portable fp32 variant always runs", gemm_kernel_usable(gemm_kernel_find("f32-c")) && ran >= 1,
          "%d variants ran", ran);
    // the calibration's choice: usable variants, the fp32 one fp32, bf16 one bf16 (or none),
    // auto one of them; every candidate measured a positive figure
    {
        const KernelChoice *kc = kernel_choice();
        int ok = kc->n_cand >= 1 || kc->forced;
        for (int i = 0; i < kc->n_cand; i++) ok &= kc->cand[i].gflops > 0 && gemm_kernel_usable(kc->cand[i].k);
        ok &= !gemm_kernel_bf16(kc->fp32) && (!kc->bf16 || gemm_kernel_bf16(kc->bf16));
        ok &= kc->best == kc->fp32 || kc->best == kc->bf16;
        CHECK("kernel choice: usable variants, one per precision, auto one of them", ok, "fp32 %s bf16 %s auto %s",
              gemm_kernel_name(kc->fp32), kc->bf16 ? gemm_kernel_name(kc->bf16) : "-", gemm_kernel_name(kc->best));
    }
    // the bound can fail: the reference itself with one element's largest product left out is
    // over it (K = 1536), and so is a NaN or an Inf
    {
        uint64_t seed = 77;
        const int64_t M = 2, OC = 3, C = 1536;
        float W[3 * 1536], x[2 * 1536], got[6];
        double ref[6], bd[6];
        for (int64_t i = 0; i < OC * C; i++) W[i] = rnd(&seed);
        for (int64_t i = 0; i < M * C; i++) x[i] = rnd(&seed);
        reference(ref, bd, x, M, C, W, OC, C, 1, NULL, 0);
        for (int i = 0; i < 6; i++) got[i] = (float)ref[i];
        double exact = err_ratio(got, ref, bd, 6, C);
        int64_t kmax = 0;
        for (int64_t k = 1; k < C; k++)
            if (fabs(x[k] * W[k]) > fabs(x[kmax] * W[kmax])) kmax = k;
        got[0] = (float)(ref[0] - (double)x[kmax] * W[kmax]);
        double missing = err_ratio(got, ref, bd, 6, C);
        got[0] = NAN;
        double nan = err_ratio(got, ref, bd, 6, C);
        got[0] = INFINITY;
        double inf = err_ratio(got, ref, bd, 6, C);
        CHECK("the derived bound passes the rounded reference and fails a missing term, a NaN, an Inf",
              exact <= 1.0 && !(missing <= 1.0) && !(nan <= 1.0) && !(inf <= 1.0),
              "exact %.3f missing %.3f nan %g inf %g", exact, missing, nan, inf);
    }
    // OPENBLAS_CORETYPE from the instruction sets when OpenBLAS fell back to a generic core
    {
        CpuInfo z = {0}, h = {0}, old = {0}, arm = {0};
        snprintf(z.arch, sizeof z.arch, "x86_64");
        z.avx512 = z.avx2 = z.fma = 1;
        h = z;
        h.avx512 = 0;
        old = h;
        old.avx2 = 0;
        snprintf(arm.arch, sizeof arm.arch, "aarch64");
        const char *a = openblas_coretype_for("Prescott", &z), *b = openblas_coretype_for("Prescott", &h);
        const char *c = openblas_coretype_for("SkylakeX", &z), *d = openblas_coretype_for("Prescott", &old);
        const char *f = openblas_coretype_for("armv8", &arm);
        CHECK("OpenBLAS core: a generic fallback gets SkylakeX (AVX-512) or Haswell (AVX2); a known core or an "
              "older CPU gets none",
              a && !strcmp(a, "SkylakeX") && b && !strcmp(b, "Haswell") && !c && !d && !f, "%s %s %s %s %s",
              a ? a : "-", b ? b : "-", c ? c : "-", d ? d : "-", f ? f : "-");
    }
    return tu_exit();
}
