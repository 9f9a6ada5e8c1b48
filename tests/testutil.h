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

static inline int tu_exit(void) { return tu_failed ? 1 : 0; }
