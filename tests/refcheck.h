// Helpers shared by the tests that compare against a PyTorch reference written as an
// "expected.safetensors" (tests/test_reference.c, tests/test_arch.c). Include after
// tests/testutil.h and model/model.h.
#pragma once

#define REF_TOL 1e-4
#define REF_FLOOR 0.05

// Expected tensor `name` as fp32 (malloc'd), checking it has n elements; NULL + FAIL line.
static inline float *exp_f32(const SafeTensors *st, const char *name, int64_t n) {
    const StTensor *s = st_find(st, name);
    if (!s || s->n != n) {
        CHECK(name, 0, "expected tensor %s %s (want %lld elements)", name,
              s ? "has the wrong size" : "is missing", (long long)n);
        return NULL;
    }
    Err e = {{0}};
    float *out = malloc((size_t)n * sizeof(float));
    if (!out || st_read_f32(st, name, out, s->ndim, s->shape, &e) != 0) {
        CHECK(name, 0, "%s", e.msg);
        free(out);
        return NULL;
    }
    return out;
}

// Expected int32 tensor `name` (malloc'd); *n (when not NULL) receives its element count.
static inline int *exp_i32(const SafeTensors *st, const char *name, int64_t *n) {
    const StTensor *s = st_find(st, name);
    if (!s || s->dtype != ST_I32) {
        CHECK(name, 0, "expected int32 tensor %s is missing", name);
        return NULL;
    }
    int *out = malloc((size_t)s->n * sizeof(int));
    if (!out) return NULL;
    memcpy(out, s->data, (size_t)s->n * sizeof(int));
    if (n) *n = s->n;
    return out;
}

// Max relative error of got against want (n elements) with a floor of REF_FLOOR × max|want|;
// +inf when either is NULL or either holds a NaN or an infinity (a NaN never passes: it is
// +inf here, and the checks compare err < tol). The sums inside a whole model are not one sum:
// the fixed relative REF_TOL on the tensor's own scale stands for them (observed: < 3e-5);
// single sums compare with tu_sum_tol (tests/testutil.h), derived from their length.
static inline double rel_err(const float *got, const float *want, int64_t n) {
    if (!got || !want) return INFINITY;
    double amax = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(want[i])) return INFINITY;
        amax = fmax(amax, fabs((double)want[i]));
    }
    return tu_max_rel_err(got, want, (long)n, fmax(REF_FLOOR * amax, 1e-30));
}

// rel_err of got against the whole expected tensor `name` (n elements).
static inline double compare(const SafeTensors *st, const char *name, const float *got, int64_t n) {
    float *want = exp_f32(st, name, n);
    double err = rel_err(got, want, n);
    free(want);
    return err;
}
