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

static inline double tu_max_rel_err(const float *a, const float *b, long n, double floor_) {
    double m = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double s = fmax(fmax(fabs((double)a[i]), fabs((double)b[i])), floor_);
        if (d / s > m) m = d / s;
    }
    return m;
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
