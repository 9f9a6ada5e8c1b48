// Test helpers shared by the C tests: every check prints one line
//   PASS name | FAIL name: why | SKIP name: why
// and tests/run.sh counts them. A test binary exits non-zero if any check failed.
#pragma once
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/util.h"

static int tu_failed = 0;

#define CHECK(name, cond, ...)                                   \
    do {                                                         \
        if (cond) {                                              \
            printf("PASS %s\n", name);                           \
        } else {                                                 \
            printf("FAIL %s: ", name);                           \
            printf(__VA_ARGS__);                                 \
            printf("\n");                                        \
            tu_failed++;                                         \
        }                                                        \
        fflush(stdout);                                          \
    } while (0)

#define SKIP(name, ...)                                          \
    do {                                                         \
        printf("SKIP %s: ", name);                               \
        printf(__VA_ARGS__);                                     \
        printf("\n");                                            \
        fflush(stdout);                                          \
    } while (0)

// Directory of the shared real-model files: $LORA_TEST_MODELS or ../shared/models.
// Returns NULL when absent (tests then SKIP).
static inline const char *tu_models_dir(void) {
    const char *d = getenv("LORA_TEST_MODELS");
    if (!d || !*d) d = "../shared/models";
    return is_directory(d) ? d : NULL;
}

// A fresh scratch directory under build/tmp for this test.
static inline const char *tu_tmpdir(const char *name, char *buf, size_t n) {
    snprintf(buf, n, "build/tmp/%s", name);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", buf, buf);
    if (system(cmd) != 0) { fprintf(stderr, "cannot make %s\n", buf); exit(2); }
    return buf;
}

// ---- comparing two computations of the same values ------------------------------------------
// The rule every comparison follows: a NaN or an infinity on either side fails it. The error
// helpers below return +inf then (never NaN), and a check written `err <= tol` or `err < tol`
// fails on +inf and on NaN alike. (fmax(err, NaN) is err: a maximum kept with fmax silently
// drops a NaN; use tu_worse.)

// The larger of two errors, with a NaN counting as +inf (fmax would ignore it).
static inline double tu_worse(double m, double e) {
    if (isnan(m) || isnan(e)) return INFINITY;
    return e > m ? e : m;
}

// Max relative error |a - b| / max(|a|, |b|, floor_); +inf when either side holds a NaN or an
// infinity anywhere.
static inline double tu_max_rel_err(const float *a, const float *b, long n, double floor_) {
    if (!a || !b) return INFINITY;
    double m = 0;
    for (long i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        double d = fabs((double)a[i] - (double)b[i]);
        double s = fmax(fmax(fabs((double)a[i]), fabs((double)b[i])), floor_);
        m = tu_worse(m, s > 0 ? d / s : (d > 0 ? INFINITY : 0));
    }
    return m;
}

// Tolerances derived from the length of the sums and the magnitudes of their terms.
// Two fp32 computations of one sum of K terms (products) t_k — ours and OpenBLAS's, or ours
// against a double reference — add in different orders (blocking, SIMD width, FMA), and each
// rounding step errs by at most u = 2^-24 times a partial sum, itself at most Σ|t_k|. The
// rounding errors are independent, so they grow like sqrt(K), not K (Higham & Mary, "A new
// approach to probabilistic rounding error analysis", 2019):
//     |got - want| <= TU_SUM_C · sqrt(K) · u · Σ_k |t_k|
// TU_SUM_C = 4 covers both computations and the tail (a sequential sum of same-sign terms
// errs by about sqrt(K/3) · u · Σ|t_k|; sums of mixed signs much less). The bound does not
// depend on the CPU, and it still catches a real fault: one term missing (or counted twice, or
// wrong) moves the sum by about Σ|t_k| / K, above the tolerance as long as
// K^1.5 < 1 / (TU_SUM_C · u) = 4.2e6, i.e. K below ~26000 (the tests' sums are below 6000).
#define TU_U32 5.9604644775390625e-8  // 2^-24, the unit roundoff of fp32
#define TU_SUM_C 4.0

static inline double tu_sum_tol(double K, double abs_sum) { return TU_SUM_C * sqrt(K) * TU_U32 * abs_sum; }

// |got - want| / tol (pass: <= 1); +inf when either value is not finite, or when they differ
// and tol is 0.
static inline double tu_err_ratio(double got, double want, double tol) {
    if (!isfinite(got) || !isfinite(want) || isnan(tol)) return INFINITY;
    double d = fabs(got - want);
    if (d == 0) return 0;
    return tol > 0 ? d / tol : INFINITY;
}

// max_i |got[i] - want[i]| / tu_sum_tol(K, abs_sum[i]): got and want two computations of n sums
// of K terms whose absolute values add up to abs_sum[i]. Pass: <= 1. +inf on a NaN or an
// infinity on either side, or on a NULL array.
static inline double tu_sum_err(const float *got, const float *want, const double *abs_sum, long n, double K) {
    if (!got || !want || !abs_sum) return INFINITY;
    double m = 0;
    for (long i = 0; i < n; i++) m = tu_worse(m, tu_err_ratio(got[i], want[i], tu_sum_tol(K, abs_sum[i])));
    return m;
}

// The absolute sums of the product C (M, N) = A (M, K) B (K, N), in double (malloc'd, NULL when
// out of memory): S[i*N + j] = Σ_k |A(i,k)| |B(k,j)| (+ |c0[i*N + j]| when c0, the values the
// product is added to, is given), where A(i,k) = a[i*ai + k*ak] and B(k,j) = b[k*bk + j*bj] —
// strides, so that transposed operands need no copy by the caller.
static inline double *tu_abs_matmul(const float *a, long ai, long ak, const float *b, long bk, long bj, long M,
                                    long K, long N, const float *c0) {
    float *at = malloc((size_t)(M * K) * sizeof(float)), *bt = malloc((size_t)(N * K) * sizeof(float));
    double *s = malloc((size_t)(M * N) * sizeof(double));
    if (!at || !bt || !s) {
        free(at), free(bt), free(s);
        return NULL;
    }
    for (long i = 0; i < M; i++)
        for (long k = 0; k < K; k++) at[i * K + k] = fabsf(a[i * ai + k * ak]);
    for (long j = 0; j < N; j++)
        for (long k = 0; k < K; k++) bt[j * K + k] = fabsf(b[k * bk + j * bj]);
#pragma omp parallel for collapse(2) schedule(static)
    for (long i = 0; i < M; i++)
        for (long j = 0; j < N; j++) {
            const float *x = at + i * K, *y = bt + j * K;
            double acc = c0 ? fabs((double)c0[i * N + j]) : 0.0;
            for (long k = 0; k < K; k++) acc += (double)x[k] * y[k];
            s[i * N + j] = acc;
        }
    free(at);
    free(bt);
    return s;
}

// llama.cpp's tokenizer test vectors: X.gguf.inp holds the strings, each followed by
// "\n__ggml_vocab_test__\n" (that newline is not part of the string); X.gguf.out holds one
// line of space-separated expected ids per string (no BOS).
typedef struct {
    int n;              // strings
    char **text;        // (n) NUL-terminated, pointing into inp
    int **ids;          // (n) expected ids
    int *n_ids;         // (n)
    char *inp, *out;    // the files' contents
} TuVectors;

static inline void tu_vectors_free(TuVectors *v) {
    for (int i = 0; v->ids && i < v->n; i++) free(v->ids[i]);
    free(v->text); free(v->ids); free(v->n_ids); free(v->inp); free(v->out);
    memset(v, 0, sizeof *v);
}

// Reads DIR/NAME.gguf.inp and .out; 0 on success, -1 when a file is missing.
static inline int tu_vectors_read(const char *dir, const char *name, TuVectors *v) {
    char p[2400];
    size_t len;
    Err e;
    memset(v, 0, sizeof *v);
    snprintf(p, sizeof p, "%s/%s.gguf.inp", dir, name);
    v->inp = read_file(p, &len, &e);
    snprintf(p, sizeof p, "%s/%s.gguf.out", dir, name);
    v->out = read_file(p, &len, &e);
    if (!v->inp || !v->out) { tu_vectors_free(v); return -1; }
    const char *sep = "\n__ggml_vocab_test__\n";
    int cap = 0;
    for (char *p2 = strstr(v->inp, sep); p2; p2 = strstr(p2 + 1, sep)) cap++;
    v->text = calloc((size_t)cap + 1, sizeof(char *));
    v->ids = calloc((size_t)cap + 1, sizeof(int *));
    v->n_ids = calloc((size_t)cap + 1, sizeof(int));
    char *p3 = v->inp, *q = v->out;
    while (v->n < cap) {
        char *hit = strstr(p3, sep), *nl = strchr(q, '\n');
        if (!hit || !nl) break;
        *hit = 0;
        *nl = 0;
        int k = 0;
        v->ids[v->n] = malloc(sizeof(int) * (strlen(q) / 2 + 2));
        for (char *s = q, *end;; s = end) {
            long x = strtol(s, &end, 10);
            if (end == s) break;
            v->ids[v->n][k++] = (int)x;
        }
        v->text[v->n] = p3;
        v->n_ids[v->n++] = k;
        p3 = hit + strlen(sep);
        q = nl + 1;
    }
    return 0;
}

// 1 when /usr/bin/python3 can import torch (the PyTorch reference oracle).
static inline int tu_have_torch(void) {
    return system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
}

static inline int tu_exit(void) { return tu_failed ? 1 : 0; }
