// The decode GEMVs (quant/qgemv*.c): every variant compiled in, for every format (f32, bf16, NF4,
// the eight GGUF block types), against float64 references:
//   - W dequantized exactly (ggq_dequant_rows / nf4_dequant_rows / bf16 widened) times the
//     ORIGINAL fp32 x. For the GGUF formats x is rounded to 8 bits per block: each element errs
//     by at most d/2 (d = the block's amax/127), so |got - ref| <= Σ_blocks (d/2)·Σ|w| plus the
//     fp32 rounding term below;
//   - the same W times the activation exactly as prepared (q·d read back from the prepared
//     buffer): only fp32 rounding remains, any summation order of K terms whose magnitudes add up
//     to T errs by at most (K+2)·u·T (u = 2^-24); T counts each weight as |w| + 2|min term| (the
//     kernels add the scale and the min parts of Q4_1 / Q5_1 / K weights separately), times 2
//     for the per-block products (dw·dx, one more rounding each).
//   fp32-activation formats: the second bound against the original x.
// A NaN or Inf fails any comparison. Also, bitwise: activation g's result is the same for G in
// {1, 2, 3, 5, 8} and for a sub-range of rows; accumulate = 1 adds to y; a NaN in x gives NaN.
// One PASS/FAIL line per (format, variant); SKIP for variants this CPU (or LORA_ISA) excludes.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "quant/quant_internal.h"
#include "tests/testutil.h"
#include "util/util.h"

#define U32 5.9604644775390625e-8
#define NG 10  // activations (more than one pass of the 8 the four-row kernels take at once)

static uint64_t rs = 88172645463325252ull;
static uint64_t rnd_u(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return rs;
}
static float rnd_f(void) { return (float)((double)(rnd_u() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

static uint16_t to_half(float f) {  // |f| < 65504 (the test's scales); below 2^-14 -> 0
    uint32_t b;
    memcpy(&b, &f, 4);
    uint32_t sign = (b >> 16) & 0x8000, e = (b >> 23) & 255, man = (b >> 13) & 0x3ff;
    if (e < 113) return (uint16_t)sign;
    return (uint16_t)(sign | (e - 112) << 10 | man);
}
static void put_half(uint8_t *p, float f) {
    uint16_t h = to_half(f);
    memcpy(p, &h, 2);
}

// Random blocks of a GGUF type with sane scales: random code bytes, d in ±[0.002, 0.02].
static uint8_t *make_ggq(int type, int64_t rows, int64_t cols) {
    const size_t bb = ggq_block_bytes(type), nb = (size_t)(rows * cols / ggq_block_elems(type));
    uint8_t *p = malloc(bb * nb);
    for (size_t i = 0; i < bb * nb; i++) p[i] = (uint8_t)rnd_u();
    for (size_t b = 0; b < nb; b++) {
        uint8_t *q = p + b * bb;
        float d = (0.002f + 0.018f * (float)(rnd_u() % 1000) / 1000.0f) * (rnd_u() & 1 ? -1.0f : 1.0f);
        float m = 0.01f * rnd_f();
        switch (type) {
        case GGQ_Q6_K: put_half(q + 208, d); break;
        case GGQ_Q4_1:
        case GGQ_Q5_1:
        case GGQ_Q4_K:
        case GGQ_Q5_K:
            put_half(q, type >= GGQ_Q4_K ? fabsf(d) * 0.1f : d);
            put_half(q + 2, type >= GGQ_Q4_K ? fabsf(m) * 0.1f : m);
            break;
        default: put_half(q, d); break;
        }
    }
    return p;
}

// |min term| of element i of a block (0 for the symmetric types)
static double min_term(int type, const uint8_t *p, int i) {
    if (type == GGQ_Q4_1 || type == GGQ_Q5_1) return fabs((double)f16_to_f32((uint16_t)(p[2] | p[3] << 8)));
    if (type != GGQ_Q4_K && type != GGQ_Q5_K) return 0;
    const uint8_t *sc = p + 4;
    int s = i / 32, mn = s < 4 ? sc[s + 4] & 63 : (sc[s + 4] >> 4) | (sc[s] >> 6) << 4;
    return fabs((double)f16_to_f32((uint16_t)(p[2] | p[3] << 8)) * mn);
}

typedef struct {
    const char *label;
    QvMatrix w;
    float *wd;     // (rows, cols) exact fp32 weights
    double *wmin;  // (rows, cols) |min term| per weight
    int qk;        // 0: fp32 activation
    void *own[3];
    GgqMatrix gm;
    Nf4Matrix nm;
} Fmt;

static void fmt_free(Fmt *f) {
    for (int i = 0; i < 3; i++) free(f->own[i]);
    free(f->wd), free(f->wmin);
    if (f->nm.packed) nf4_free(&f->nm);
}

static void make_fmt(Fmt *f, QvFormat fmt, int type, int64_t rows, int64_t cols) {
    memset(f, 0, sizeof *f);
    f->w = (QvMatrix){fmt, rows, cols, NULL};
    f->wd = malloc(sizeof(float) * (size_t)(rows * cols));
    f->wmin = calloc((size_t)(rows * cols), sizeof(double));
    if (fmt == QV_F32) {
        float *w = malloc(sizeof(float) * (size_t)(rows * cols));
        for (int64_t i = 0; i < rows * cols; i++) w[i] = f->wd[i] = 0.05f * rnd_f();
        f->w.data = f->own[0] = w;
        f->label = "f32";
    } else if (fmt == QV_BF16) {
        uint16_t *w = malloc(2 * (size_t)(rows * cols));
        for (int64_t i = 0; i < rows * cols; i++) {
            w[i] = f32_to_bf16(0.05f * rnd_f());
            f->wd[i] = bf16_to_f32(w[i]);
        }
        f->w.data = f->own[0] = w;
        f->label = "bf16";
    } else if (fmt == QV_NF4) {
        float *w = malloc(sizeof(float) * (size_t)(rows * cols));
        for (int64_t i = 0; i < rows * cols; i++) w[i] = 0.05f * rnd_f();
        if (nf4_quantize(w, rows, cols, "test", &f->nm, NULL)) exit(2);
        free(w);
        nf4_dequant_rows(&f->nm, 0, rows, f->wd);
        f->w.data = &f->nm;
        f->label = "nf4";
    } else {
        uint8_t *p = make_ggq(type, rows, cols);
        f->own[0] = p;
        f->gm = (GgqMatrix){type, rows, cols, p, "test"};
        f->w.data = &f->gm;
        ggq_dequant_rows(&f->gm, 0, rows, f->wd);
        f->qk = ggq_block_elems(type);
        const size_t bb = ggq_block_bytes(type);
        for (int64_t i = 0; i < rows * cols; i++)
            f->wmin[i] = min_term(type, p + (size_t)(i / f->qk) * bb, (int)(i % f->qk));
        f->label = ggq_type_name(type);
    }
}

// x: NG activations of cols values, uniform in [-1, 1] with every 37th element an outlier x 30
static float *make_x(int64_t cols) {
    float *x = malloc(sizeof(float) * NG * (size_t)cols);
    for (int64_t i = 0; i < NG * cols; i++) x[i] = rnd_f() * (i % 37 == 5 ? 30.0f : 1.0f);
    return x;
}

// the prepared activation as fp32 values (GGUF: q·d; others: x itself)
static void act_values(const Fmt *f, const uint8_t *qx, const float *x, double *xv) {
    const int64_t C = f->w.cols;
    if (!f->qk) {
        for (int64_t i = 0; i < C; i++) xv[i] = x[i];
        return;
    }
    QvAct a = qv_act_view(qx, C, f->qk);
    for (int64_t i = 0; i < C; i++) xv[i] = (double)a.q[i] * (double)a.d[i / f->qk];
}

// One variant: 1 on pass; msg gets what failed
static int run_variant(const QvKernel *k, Fmt *f, const float *x, char *msg, size_t mn) {
    const int64_t R = f->w.rows, C = f->w.cols;
    const size_t ab = qv_act_bytes(k, &f->w);
    uint8_t *qx = malloc(ab * NG);
    for (int g = 0; g < NG; g++) qv_prepare(k, &f->w, x + g * C, qx + g * ab);
    const int64_t ldy = R + 3;
    float *y = malloc(sizeof(float) * NG * (size_t)ldy), *y2 = malloc(sizeof(float) * NG * (size_t)ldy);
    double *xv = malloc(sizeof(double) * (size_t)C);
    int ok = 1;
    msg[0] = 0;
    // all NG activations at once, full range
    for (int64_t i = 0; i < NG * ldy; i++) y[i] = -7.0f;
    qv_gemv(k, &f->w, 0, R, qx, NG, y, ldy, 0);
    double worst_x = 0, worst_q = 0;
    for (int g = 0; g < NG; g++) {
        act_values(f, qx + g * ab, x + g * C, xv);
        for (int64_t r = 0; r < R; r++) {
            const float *wr = f->wd + r * C;
            const double *mr = f->wmin + r * C;
            double ref_x = 0, ref_q = 0, quant = 0, T = 0, Tq = 0;
            for (int64_t i = 0; i < C; i++) {
                const double a = fabs((double)wr[i]) + 2 * mr[i];
                ref_x += (double)wr[i] * x[g * C + i];
                ref_q += (double)wr[i] * xv[i];
                T += a * fabs((double)x[g * C + i]);
                Tq += a * fabs(xv[i]);
            }
            if (f->qk)
                for (int64_t b = 0; b < C / f->qk; b++) {
                    double amax = 0, sw = 0;
                    for (int j = 0; j < f->qk; j++) {
                        amax = fmax(amax, fabs((double)x[g * C + b * f->qk + j]));
                        sw += fabs((double)wr[b * f->qk + j]);
                    }
                    quant += amax / 127.0 / 2.0 * (1 + 1e-5) * sw;
                }
            const double tol_q = 2.0 * (C + 2) * U32 * Tq + 1e-30;
            const double tol_x = quant + 2.0 * (C + 2) * U32 * (T + Tq) + 1e-30;
            worst_q = tu_worse(worst_q, tu_err_ratio(y[g * ldy + r], ref_q, tol_q));
            worst_x = tu_worse(worst_x, tu_err_ratio(y[g * ldy + r], ref_x, tol_x));
        }
        if (y[g * ldy + R] != -7.0f) ok = 0, snprintf(msg, mn, "wrote past row range; ");
    }
    if (!(worst_q <= 1) || !(worst_x <= 1)) {
        ok = 0;
        size_t l = strlen(msg);
        snprintf(msg + l, mn - l, "error/tol %.3g (vs prepared x), %.3g (vs fp32 x); ", worst_q, worst_x);
    }
    // G in {1, 2, 3, 5, 8, 10}: activation g's rows bitwise as in the run above
    static const int GS[] = {1, 2, 3, 5, 8, 10};
    int same = 1;
    for (int gi = 0; gi < 6; gi++) {
        const int G = GS[gi];
        for (int g0 = 0; g0 + G <= NG; g0 += G) {
            qv_gemv(k, &f->w, 0, R, qx + g0 * ab, G, y2, ldy, 0);
            for (int g = 0; g < G; g++)
                if (memcmp(y2 + g * ldy, y + (g0 + g) * ldy, sizeof(float) * (size_t)R)) same = 0;
        }
    }
    // each row alone (kernels that take rows in groups: the group it falls in must not matter)
    for (int64_t r = 0; r < R; r++) {
        qv_gemv(k, &f->w, r, 1, qx, 1, y2, ldy, 0);
        if (memcmp(&y2[r], &y[r], 4)) same = 0;
    }
    // a sub-range of rows (y2 pre-filled: the rows outside must stay untouched)
    const int64_t r0 = R / 3, nr = R / 2;
    for (int64_t i = 0; i < NG * ldy; i++) y2[i] = 123.0f;
    qv_gemv(k, &f->w, r0, nr, qx, NG, y2, ldy, 0);
    for (int g = 0; g < NG; g++)
        for (int64_t r = 0; r < ldy; r++) {
            const float want = r >= r0 && r < r0 + nr ? y[g * ldy + r] : 123.0f;
            if (memcmp(&y2[g * ldy + r], &want, 4)) same = 0;
        }
    if (!same) ok = 0, strncat(msg, "not bitwise independent of G / row range; ", mn - strlen(msg) - 1);
    // accumulate
    for (int g = 0; g < NG; g++)
        for (int64_t r = 0; r < R; r++) y2[g * ldy + r] = 0.5f + (float)r;
    qv_gemv(k, &f->w, 0, R, qx, NG, y2, ldy, 1);
    int acc_ok = 1;
    for (int g = 0; g < NG; g++)
        for (int64_t r = 0; r < R; r++) {
            const float want = (0.5f + (float)r) + y[g * ldy + r];
            if (memcmp(&y2[g * ldy + r], &want, 4)) acc_ok = 0;
        }
    if (!acc_ok) ok = 0, strncat(msg, "accumulate does not add; ", mn - strlen(msg) - 1);
    // a NaN in x comes out
    float *xn = malloc(sizeof(float) * (size_t)C);
    memcpy(xn, x, sizeof(float) * (size_t)C);
    xn[C / 2] = NAN;
    qv_prepare(k, &f->w, xn, qx);
    qv_gemv(k, &f->w, 0, R, qx, 1, y2, ldy, 0);
    int nan_ok = 1;
    for (int64_t r = 0; r < R; r++) nan_ok &= isnan(y2[r]);
    if (!nan_ok) ok = 0, strncat(msg, "a NaN in x did not give NaN; ", mn - strlen(msg) - 1);
    free(xn), free(qx), free(y), free(y2), free(xv);
    return ok;
}

int main(void) {
    struct {
        QvFormat fmt;
        int type;
        int64_t rows, cols;
    } cases[] = {
        {QV_F32, 0, 37, 1003},          {QV_BF16, 0, 37, 1003},         {QV_NF4, 0, 37, 1024},
        {QV_GGQ, GGQ_Q4_0, 37, 32 * 45}, {QV_GGQ, GGQ_Q8_0, 37, 32 * 45}, {QV_GGQ, GGQ_Q4_1, 37, 32 * 45},
        {QV_GGQ, GGQ_Q5_0, 37, 32 * 45}, {QV_GGQ, GGQ_Q5_1, 37, 32 * 45}, {QV_GGQ, GGQ_Q4_K, 37, 256 * 5},
        {QV_GGQ, GGQ_Q5_K, 37, 256 * 5}, {QV_GGQ, GGQ_Q6_K, 37, 256 * 5},
        // rows of fewer than 8 blocks (the x86 variants' chunks of 8: only a partial one, an odd
        // last block without a pair)
        {QV_GGQ, GGQ_Q4_0, 5, 32 * 3},  {QV_GGQ, GGQ_Q5_1, 5, 32 * 3},  {QV_GGQ, GGQ_Q8_0, 5, 32 * 7},
    };
    int tested = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        Fmt f;
        make_fmt(&f, cases[c].fmt, cases[c].type, cases[c].rows, cases[c].cols);
        float *x = make_x(f.w.cols);
        for (int i = 0; i < qv_kernel_count(); i++) {
            const QvKernel *k = qv_kernel_at(i);
            if (!qv_kernel_fits(k, &f.w)) continue;
            char name[96], msg[512];
            snprintf(name, sizeof name, "qgemv %s %s (%lld x %lld)", f.label, qv_kernel_name(k),
                     (long long)f.w.rows, (long long)f.w.cols);
            if (!qv_kernel_usable(k)) {
                SKIP(name, "this CPU (or LORA_ISA) does not run it");
                continue;
            }
            int ok = run_variant(k, &f, x, msg, sizeof msg);
            CHECK(name, ok, "%s", msg);
            tested++;
        }
        // the choice: a usable variant that fits; LORA_QV_KERNEL forces
        const QvKernel *k = qv_kernel_for(&f.w);
        char name[96], cname[32];
        snprintf(name, sizeof name, "qgemv %s chosen (%s)", f.label, qv_kernel_name(k));
        CHECK(name, k && qv_kernel_usable(k) && qv_kernel_fits(k, &f.w), "not a usable fitting variant");
        snprintf(cname, sizeof cname, "nothing,%s-c", f.qk ? ggq_type_name(cases[c].type) : f.label);
        for (char *s = cname; *s; s++) *s = (char)(*s >= 'A' && *s <= 'Z' ? *s + 32 : *s);
        setenv("LORA_QV_KERNEL", cname, 1);
        const QvKernel *kf = qv_kernel_for(&f.w);
        unsetenv("LORA_QV_KERNEL");
        snprintf(name, sizeof name, "qgemv %s LORA_QV_KERNEL=%s", f.label, cname);
        CHECK(name, kf && !strcmp(qv_kernel_name(kf), cname + 8), "got %s", qv_kernel_name(kf));
        free(x);
        fmt_free(&f);
    }
    // a matrix no variant takes: NF4 with cols not a multiple of 64
    {
        Fmt f;
        make_fmt(&f, QV_NF4, 0, 3, 96);
        CHECK("qgemv nf4 96 columns: no variant", qv_kernel_for(&f.w) == NULL, "got %s", qv_kernel_name(qv_kernel_for(&f.w)));
        fmt_free(&f);
    }
    printf("tested %d variants\n", tested);
    return tu_exit();
}
