// quant: the GGUF block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) read in
// place. Dequantized values bit for bit against tests/ref_ggml_quants.py (an independent
// numpy implementation of llama.cpp's layouts, through a GGUF file it writes by hand and
// model/'s gguf_open), and against hand-built blocks; row/tile views; determinism across
// thread counts; the fused matmuls (tiled sgemm and the N <= 4 fused path) against sgemm
// on the dequantized matrix; validation errors. Prints dequantization speed (no timing is
// asserted).
#include <cblas.h>

#include "model/model.h"
#include "quant/quant.h"
#include "tests/testutil.h"

static const int TYPES[] = {GGQ_Q4_0, GGQ_Q4_1, GGQ_Q5_0, GGQ_Q5_1, GGQ_Q8_0, GGQ_Q4_K, GGQ_Q5_K, GGQ_Q6_K};
#define NTYPES 8

static int same_bits(const void *a, const void *b, size_t bytes) { return memcmp(a, b, bytes) == 0; }

static int64_t count_diff(const float *a, const float *b, int64_t n, int64_t *first) {
    int64_t d = 0;
    *first = -1;
    for (int64_t i = 0; i < n; i++)
        if (!same_bits(&a[i], &b[i], 4)) {
            if (*first < 0) *first = i;
            d++;
        }
    return d;
}

static float *dequant_all(const GgqMatrix *m) {
    float *out = malloc((size_t)(m->rows * m->cols) * sizeof(float));
    ggq_dequant_rows(m, 0, m->rows, out);
    return out;
}

// Random blocks: random code bytes, fp16 scales set to finite values of about `scale`.
static uint8_t *random_matrix(int type, int64_t rows, int64_t cols, uint64_t seed, GgqMatrix *m) {
    size_t nbytes = ggq_bytes_for(type, rows, cols), bb = ggq_block_bytes(type);
    uint8_t *p = malloc(nbytes);
    Rng r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < nbytes; i++) p[i] = (uint8_t)rng_next(&r);
    // scale fields: d at 0 (Q6_K: 208), min / dmin at 2 for Q4_1, Q5_1, Q4_K, Q5_K
    int off0 = type == GGQ_Q6_K ? 208 : 0;
    int has2 = type == GGQ_Q4_1 || type == GGQ_Q5_1 || type == GGQ_Q4_K || type == GGQ_Q5_K;
    float s0 = type == GGQ_Q8_0 ? 2e-4f : type == GGQ_Q6_K ? 3e-5f : type == GGQ_Q4_K || type == GGQ_Q5_K ? 1e-4f : 3e-3f;
    for (size_t b = 0; b < nbytes / bb; b++) {
        uint16_t h = f32_to_f16(s0 * (0.5f + rng_uniform(&r)));
        memcpy(p + b * bb + off0, &h, 2);
        if (has2) {
            h = f32_to_f16(s0 * 4 * rng_uniform(&r));
            memcpy(p + b * bb + 2, &h, 2);
        }
    }
    Err e;
    if (ggq_init(m, type, rows, cols, p, nbytes, "random", &e)) {
        printf("random_matrix: %s\n", e.msg);
        exit(2);
    }
    return p;
}

// ---- hand-built blocks: the layouts of quant.h, independently of the Python script -----

static void put_half(uint8_t *p, float v) {
    uint16_t h = f32_to_f16(v);
    memcpy(p, &h, 2);
}

static void check_block(const char *name, int type, const uint8_t *blk, const float *expect) {
    GgqMatrix m;
    Err e;
    int qk = ggq_block_elems(type);
    float out[256];
    int rc = ggq_init(&m, type, 1, qk, blk, ggq_block_bytes(type), name, &e);
    if (rc == 0) ggq_dequant_rows(&m, 0, 1, out);
    int bad = -1;
    for (int i = 0; rc == 0 && i < qk && bad < 0; i++)
        if (out[i] != expect[i]) bad = i;
    CHECK(name, rc == 0 && bad < 0, "rc %d; element %d is %g, expected %g", rc, bad, bad >= 0 ? out[bad] : 0.0,
          bad >= 0 ? expect[bad] : 0.0);
}

static void test_hand_blocks(void) {
    uint8_t b[256];
    float x[256];
    // Q8_0: d = 0.5, qs[j] = j - 16
    memset(b, 0, sizeof b);
    put_half(b, 0.5f);
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)(j - 16), x[j] = 0.5f * (float)(j - 16);
    check_block("hand block Q8_0: qs * d", GGQ_Q8_0, b, x);
    // Q4_0: d = 2, qs[j] = j | (15 - j) << 4: element j = (j - 8) * 2, element 16 + j = (7 - j) * 2
    memset(b, 0, sizeof b);
    put_half(b, 2.0f);
    for (int j = 0; j < 16; j++) {
        b[2 + j] = (uint8_t)(j | (15 - j) << 4);
        x[j] = 2.0f * (float)(j - 8);
        x[16 + j] = 2.0f * (float)(7 - j);
    }
    check_block("hand block Q4_0: low nibbles first, minus 8", GGQ_Q4_0, b, x);
    // Q4_1: d = 0.25, m = -1: q * d + m
    put_half(b, 0.25f);
    put_half(b + 2, -1.0f);
    for (int j = 0; j < 16; j++) {
        b[4 + j] = (uint8_t)(j | (15 - j) << 4);
        x[j] = 0.25f * (float)j - 1.0f;
        x[16 + j] = 0.25f * (float)(15 - j) - 1.0f;
    }
    check_block("hand block Q4_1: q * d + m", GGQ_Q4_1, b, x);
    // Q5_0: d = 1, qh = 0x80000001 (bits 0 and 31), qs[j] = 3 | 5 << 4
    memset(b, 0, sizeof b);
    put_half(b, 1.0f);
    b[2] = 0x01, b[5] = 0x80;
    for (int j = 0; j < 16; j++) b[6 + j] = 3 | 5 << 4;
    for (int j = 0; j < 32; j++) x[j] = (float)((j < 16 ? 3 : 5) + (j == 0 || j == 31 ? 16 : 0) - 16);
    check_block("hand block Q5_0: bit j of qh is bit 4 of element j", GGQ_Q5_0, b, x);
    // Q5_1: d = 0.5, m = 0.25, qh = 0x00010000 (bit 16: element 16)
    memset(b, 0, sizeof b);
    put_half(b, 0.5f);
    put_half(b + 2, 0.25f);
    b[4 + 2] = 0x01;
    for (int j = 0; j < 16; j++) b[8 + j] = (uint8_t)(j | j << 4);
    for (int j = 0; j < 32; j++) x[j] = 0.5f * (float)((j & 15) + (j == 16 ? 16 : 0)) + 0.25f;
    check_block("hand block Q5_1: q * d + m with the 5th bit", GGQ_Q5_1, b, x);

    // Q4_K: d = 1, dmin = 0.5; sub-block s has scale 10 + s and min s (s >= 4 use the split
    // 6-bit packing: scales 14..17 > 15 need the high bits); codes: element l of sub-block s
    // is (l + s) & 15.
    memset(b, 0, sizeof b);
    put_half(b, 1.0f);
    put_half(b + 2, 0.5f);
    int sc[8], mn[8];
    for (int s = 0; s < 8; s++) sc[s] = 10 + 6 * s, mn[s] = 63 - 5 * s;  // up to 52 and 63: all 6 bits
    for (int j = 0; j < 4; j++) {
        b[4 + j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        b[4 + j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
        b[4 + j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
    }
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) b[16 + 32 * g + l] = (uint8_t)(((l + 2 * g) & 15) | ((l + 2 * g + 1) & 15) << 4);
    for (int s = 0; s < 8; s++)
        for (int l = 0; l < 32; l++) x[32 * s + l] = (float)sc[s] * (float)((l + s) & 15) - 0.5f * (float)mn[s];
    check_block("hand block Q4_K: 6-bit scales/mins, sub-blocks 2g/2g+1 in low/high nibbles", GGQ_Q4_K, b, x);
    // Q5_K: the same scales; qh[l] = l (bit s of qh[l] adds 16 to element l of sub-block s)
    uint8_t b5[256];
    memcpy(b5, b, 16);
    for (int l = 0; l < 32; l++) b5[16 + l] = (uint8_t)(l * 7);
    memcpy(b5 + 48, b + 16, 128);
    for (int s = 0; s < 8; s++)
        for (int l = 0; l < 32; l++)
            x[32 * s + l] = (float)sc[s] * (float)(((l + s) & 15) + ((l * 7) >> s & 1) * 16) - 0.5f * (float)mn[s];
    check_block("hand block Q5_K: bit s of qh[l] is bit 4 of element l of sub-block s", GGQ_Q5_K, b5, x);
    // Q6_K: d = 0.5, scales[i] = i - 8; element i of the block has 6-bit code (i * 5) & 63
    memset(b, 0, sizeof b);
    int code[256];
    for (int i = 0; i < 256; i++) code[i] = (i * 5) & 63;
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const int *c = code + 128 * h;
            b[64 * h + l] = (uint8_t)((c[l] & 15) | (c[l + 64] & 15) << 4);
            b[64 * h + 32 + l] = (uint8_t)((c[l + 32] & 15) | (c[l + 96] & 15) << 4);
            b[128 + 32 * h + l] = (uint8_t)(c[l] >> 4 | (c[l + 32] >> 4) << 2 | (c[l + 64] >> 4) << 4 | (c[l + 96] >> 4) << 6);
        }
    for (int i = 0; i < 16; i++) b[192 + i] = (uint8_t)(int8_t)(i - 8);
    put_half(b + 208, 0.5f);
    for (int i = 0; i < 256; i++) x[i] = (0.5f * (float)(i / 16 - 8)) * (float)(code[i] - 32);
    check_block("hand block Q6_K: ql/qh split, int8 scale per 16", GGQ_Q6_K, b, x);
}

// ---- against tests/ref_ggml_quants.py ------------------------------------------------------

static void test_views(const GgqMatrix *m, const float *full, const char *label) {
    int64_t R = m->rows, C = m->cols;
    float *buf = malloc((size_t)(R * C + 64) * sizeof(float));
    int ok = 1;
    int64_t ranges[][2] = {{0, 1}, {R - 1, 1}, {1, R - 1}, {R / 2, R - R / 2}};
    for (int k = 0; k < 4; k++) {
        int64_t r0 = ranges[k][0], nr = ranges[k][1];
        if (r0 < 0 || nr < 1 || r0 + nr > R) continue;
        ggq_dequant_rows(m, r0, nr, buf);
        ok &= same_bits(buf, full + r0 * C, (size_t)(nr * C) * 4);
    }
    // tiles: block-aligned, unaligned start and end inside one block, spanning several blocks
    int64_t qk = ggq_block_elems(m->type);
    int64_t tiles[][4] = {{0, R, 0, C}, {0, R, qk, C - qk}, {1, R - 1, 3, 5}, {0, R, 7, C - 9},
                          {0, 1, C - 1, 1}, {R - 1, 1, qk - 1, qk + 2}};
    for (int k = 0; k < 6; k++) {
        int64_t r0 = tiles[k][0], nr = tiles[k][1], c0 = tiles[k][2], nc = tiles[k][3], ld = nc + 3;
        if (nr < 1 || nc < 1 || r0 + nr > R || c0 + nc > C) continue;
        for (int64_t i = 0; i < nr * ld; i++) buf[i] = -12345.0f;
        ggq_dequant_tile(m, r0, nr, c0, nc, buf, ld);
        for (int64_t r = 0; r < nr; r++) {
            ok &= same_bits(buf + r * ld, full + (r0 + r) * C + c0, (size_t)nc * 4);
            for (int64_t p = nc; p < ld; p++) ok &= buf[r * ld + p] == -12345.0f;  // padding untouched
        }
    }
    char name[200];
    snprintf(name, sizeof name, "%s: row ranges and tiles (unaligned, padded ld) == slices", label);
    CHECK(name, ok, "a view differs");
    free(buf);
}

static void test_reference(void) {
    if (system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0) {
        SKIP("ggml block formats vs tests/ref_ggml_quants.py", "/usr/bin/python3 cannot import numpy");
        return;
    }
    char dir[256], cmd[600], path[600];
    tu_tmpdir("test_ggml_quants", dir, sizeof dir);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_ggml_quants.py '%s'", dir);
    fflush(stdout);
    int rc = system(cmd);
    CHECK("tests/ref_ggml_quants.py ran (quantize/dequantize round trips close)", rc == 0, "exit status %d", rc);
    if (rc != 0) return;

    Err e = {{0}};
    Gguf *g = gguf_open(path_join(path, sizeof path, dir, "quants.gguf"), &e);
    CHECK("hand-written GGUF with quantized tensors opens", g != NULL, "%s", e.msg);
    if (!g) return;
    int64_t values[NTYPES] = {0}, tensors[NTYPES] = {0}, total = 0, fails = 0;
    for (int i = 0; i < gguf_tensor_count(g); i++) {
        const GgufTensor *t = gguf_tensor_at(g, i);
        size_t len = strlen(t->name);
        if (len < 3 || strcmp(t->name + len - 2, ".q") != 0) continue;
        char refname[300], label[300];
        snprintf(refname, sizeof refname, "%.*s.ref", (int)(len - 2), t->name);
        snprintf(label, sizeof label, "%s", t->name);
        int ti = -1;
        for (int k = 0; k < NTYPES; k++)
            if ((int)t->type == TYPES[k]) ti = k;
        int64_t rows = t->ne[1], cols = t->ne[0];
        GgqMatrix m;
        rc = ggq_init(&m, (int)t->type, rows, cols, t->data, t->nbytes, t->name, &e);
        float *ref = malloc((size_t)(rows * cols) * sizeof(float));
        int rrc = gguf_read_f32(g, refname, ref, rows * cols, &e);
        if (rc || rrc || ti < 0 || t->n_dims != 2) {
            CHECK(label, 0, "setup: %s (type %d, dims %d)", e.msg, (int)t->type, t->n_dims);
            fails++;
            free(ref);
            continue;
        }
        float *out = dequant_all(&m);
        int64_t first, diff = count_diff(out, ref, rows * cols, &first);
        char name[400];
        snprintf(name, sizeof name, "%s (%lld x %lld %s) dequantized == reference bit for bit", t->name,
                 (long long)rows, (long long)cols, ggq_type_name(m.type));
        CHECK(name, diff == 0, "%lld of %lld values differ; first at row %lld col %lld: %.9g vs %.9g",
              (long long)diff, (long long)(rows * cols), (long long)(first / cols), (long long)(first % cols),
              first >= 0 ? out[first] : 0.0, first >= 0 ? ref[first] : 0.0);
        fails += diff != 0;
        values[ti] += rows * cols;
        tensors[ti]++;
        total += rows * cols;
        ggq_check_scales(&m, &e) == 0 ? (void)0 : (void)(fails++, printf("  unexpected: %s\n", e.msg));
        if (strstr(t->name, ".gauss.")) test_views(&m, out, t->name);
        free(out);
        free(ref);
    }
    printf("  compared against the reference:");
    for (int k = 0; k < NTYPES; k++)
        printf(" %s %lld values (%lld tensors);", ggq_type_name(TYPES[k]), (long long)values[k], (long long)tensors[k]);
    printf(" total %lld\n", (long long)total);
    int all = 1;
    for (int k = 0; k < NTYPES; k++) all &= tensors[k] == 4;
    CHECK("reference covers all 8 types, 4 tensors each, no failures", all && fails == 0 && total > 100000,
          "total %lld, fails %lld", (long long)total, (long long)fails);
    gguf_close(g);

    // the loader's own check: a Q4_K row length that is not a multiple of 256
    e.msg[0] = 0;
    g = gguf_open(path_join(path, sizeof path, dir, "bad_cols.gguf"), &e);
    CHECK("GGUF with a Q4_K row of 100 values is rejected, naming the tensor",
          g == NULL && strstr(e.msg, "blk.0.attn_q.weight") && strstr(e.msg, "256"), "msg '%s'", e.msg);
    if (g) gguf_close(g);
}

// ---- thread-count independence -----------------------------------------------------------

static void test_determinism(void) {
    int saved = get_num_threads(), ok = 1;
    for (int k = 0; k < NTYPES; k++) {
        GgqMatrix m;
        uint8_t *p = random_matrix(TYPES[k], 96, 1024, 50 + k, &m);
        float *x = malloc(3 * 1024 * sizeof(float)), *dy = malloc(3 * 96 * sizeof(float));
        for (int i = 0; i < 3 * 1024; i++) x[i] = sinf(0.37f * (float)i);
        for (int i = 0; i < 3 * 96; i++) dy[i] = cosf(0.11f * (float)i);
        float *d[2], *y[2], *dx[2];
        for (int t = 0; t < 2; t++) {
            set_num_threads(t + 1);
            d[t] = dequant_all(&m);
            y[t] = malloc(3 * 96 * sizeof(float));
            dx[t] = malloc(3 * 1024 * sizeof(float));
            Err e;
            ggq_matmul_xwt(x, 3, &m, y[t], 0, NULL, &e);
            ggq_matmul_dyw(dy, 3, &m, dx[t], 0, NULL, &e);
        }
        ok &= same_bits(d[0], d[1], 96 * 1024 * 4) && same_bits(y[0], y[1], 3 * 96 * 4) &&
              same_bits(dx[0], dx[1], 3 * 1024 * 4);
        for (int t = 0; t < 2; t++) free(d[t]), free(y[t]), free(dx[t]);
        free(x), free(dy), free(p);
    }
    set_num_threads(saved);
    CHECK("dequantization and fused N=3 matmuls bit-identical with 1 and 2 threads (all types)", ok, "differ");
}

// ---- fused matmuls -----------------------------------------------------------------------

static float *gaussian(int64_t n, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    float *w = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) w[i] = rng_normal(&r);
    return w;
}

// largest error seen in the matmul checks, as a fraction of the tolerance
static double worst_mm = 0;

static double rms(const float *a, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * a[i];
    return sqrt(s / (double)n);
}

// The fused kernel and sgemm on the dequantized matrix add the same K products in different
// orders: each element of out within tu_sum_tol(K, abs_sum[i]) (tests/testutil.h) of ref,
// abs_sum[i] = Σ_k |x_k w_k| (+ |y0| when accumulating, K + 1 terms).
static void check_mm(const char *name, int rc, const float *out, const float *ref, const double *abs_sum, int64_t n,
                     int64_t K) {
    double r = tu_sum_err(out, ref, abs_sum, (long)n, (double)K);
    worst_mm = tu_worse(worst_mm, r);
    CHECK(name, rc == 0 && r <= 1.0, "rc %d max error %.3g of the tolerance %g·sqrt(%lld)·u·Σ|terms|", rc, r,
          TU_SUM_C, (long long)K);
}

static void test_matmul(int type, int64_t N, int64_t OC, int64_t C, int tiled, uint64_t seed) {
    GgqMatrix m;
    uint8_t *p = random_matrix(type, OC, C, seed, &m);
    float *wd = dequant_all(&m);
    float *x = gaussian(N * C, seed + 1), *dy = gaussian(N * OC, seed + 2);
    float *y0 = gaussian(N * OC, seed + 3), *dx0 = gaussian(N * C, seed + 4);
    float *y = malloc((size_t)(N * OC) * 4), *yr = malloc((size_t)(N * OC) * 4);
    float *dx = malloc((size_t)(N * C) * 4), *dxr = malloc((size_t)(N * C) * 4);
    Err e = {{0}};
    char name[300];
    const char *tn = ggq_type_name(type);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)C, 1.0f, x, (int)C, wd, (int)C, 0.0f,
                yr, (int)OC);
    double ys = rms(yr, N * OC);
    double *sy = tu_abs_matmul(x, C, 1, wd, 1, C, N, C, OC, NULL);  // Σ_k |x_k| |Wd_jk|
    int rc = ggq_matmul_xwt(x, N, &m, y, 0, NULL, &e);
    snprintf(name, sizeof name, "%s xwt (%lld,%lld)x(%lld,%lld)^T == sgemm on dequantized W", tn, (long long)N,
             (long long)C, (long long)OC, (long long)C);
    check_mm(name, rc, y, yr, sy, N * OC, C);
    size_t sf = ggq_scratch_floats(&m);
    if (tiled)
        CHECK("scratch tile is smaller than W", sf < (size_t)(OC * C) / 2, "%zu floats for a (%lld, %lld) W", sf,
              (long long)OC, (long long)C);
    float *scratch = malloc(sf * sizeof(float));
    for (int64_t i = 0; i < N * OC; i++) y0[i] *= (float)ys, y[i] = y0[i], yr[i] += y0[i];
    for (int64_t i = 0; i < N * OC; i++) sy[i] += fabs((double)y0[i]);
    rc = ggq_matmul_xwt(x, N, &m, y, 1, scratch, &e);
    snprintf(name, sizeof name, "%s xwt N=%lld accumulate with caller scratch", tn, (long long)N);
    check_mm(name, rc, y, yr, sy, N * OC, C + 1);

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)OC, 1.0f, dy, (int)OC, wd, (int)C,
                0.0f, dxr, (int)C);
    double dxs = rms(dxr, N * C);
    double *sx = tu_abs_matmul(dy, OC, 1, wd, C, 1, N, OC, C, NULL);  // Σ_o |dy_o| |Wd_oc|
    rc = ggq_matmul_dyw(dy, N, &m, dx, 0, NULL, &e);
    snprintf(name, sizeof name, "%s dyw (%lld,%lld)x(%lld,%lld) == sgemm on dequantized W", tn, (long long)N,
             (long long)OC, (long long)OC, (long long)C);
    check_mm(name, rc, dx, dxr, sx, N * C, OC);
    for (int64_t i = 0; i < N * C; i++) dx0[i] *= (float)dxs, dx[i] = dx0[i], dxr[i] += dx0[i];
    for (int64_t i = 0; i < N * C; i++) sx[i] += fabs((double)dx0[i]);
    rc = ggq_matmul_dyw(dy, N, &m, dx, 1, scratch, &e);
    snprintf(name, sizeof name, "%s dyw N=%lld accumulate with caller scratch", tn, (long long)N);
    check_mm(name, rc, dx, dxr, sx, N * C, OC + 1);

    free(sy), free(sx);
    free(scratch), free(p), free(wd), free(x), free(dy), free(y0), free(dx0), free(y), free(yr), free(dx), free(dxr);
}

// ---- validation ----------------------------------------------------------------------------

static void test_errors(void) {
    Err e = {{0}};
    int rc = ggq_check(GGQ_Q4_K, 4, 100, 4 * 144, "blk.3.ffn_up.weight", &e);
    CHECK("ggq_check: columns not a multiple of the block", rc == -1 && strstr(e.msg, "blk.3.ffn_up.weight") &&
          strstr(e.msg, "100") && strstr(e.msg, "Q4_K block size 256"), "rc %d msg '%s'", rc, e.msg);
    e.msg[0] = 0;
    rc = ggq_check(GGQ_Q8_0, 4, 64, 4 * 2 * 34 - 1, "blk.0.attn_k.weight", &e);
    CHECK("ggq_check: byte size mismatch names the expected size", rc == -1 && strstr(e.msg, "blk.0.attn_k.weight") &&
          strstr(e.msg, "271") && strstr(e.msg, "68"), "rc %d msg '%s'", rc, e.msg);
    e.msg[0] = 0;
    rc = ggq_check(10 /* Q2_K */, 4, 256, 4 * 84, "output.weight", &e);
    CHECK("ggq_check: unsupported type (Q2_K)", rc == -1 && strstr(e.msg, "output.weight") && strstr(e.msg, "type 10"),
          "rc %d msg '%s'", rc, e.msg);
    e.msg[0] = 0;
    rc = ggq_check(GGQ_Q6_K, 0, 256, 0, "x", &e);
    CHECK("ggq_check: zero rows", rc == -1 && strstr(e.msg, "(0, 256)"), "rc %d msg '%s'", rc, e.msg);
    GgqMatrix m = {.type = 99};
    rc = ggq_init(&m, GGQ_Q4_0, 2, 64, NULL, 4 * 18, "w", &e);
    CHECK("ggq_init: NULL data rejected, struct cleared", rc == -1 && m.type == 0, "rc %d", rc);
    rc = ggq_check(GGQ_Q5_K, 3, 512, 3 * 2 * 176, "w", &e);
    CHECK("ggq_check accepts a consistent Q5_K matrix", rc == 0, "%s", e.msg);

    // bytes per row for memory plans
    int ok = ggq_row_bytes(GGQ_Q4_K, 4096) == 16 * 144 && ggq_row_bytes(GGQ_Q8_0, 4096) == 128 * 34 &&
             ggq_row_bytes(GGQ_Q6_K, 4096) == 16 * 210 && ggq_row_bytes(GGQ_Q4_0, 64) == 36 &&
             ggq_bytes_for(GGQ_Q5_0, 3, 96) == 3 * 3 * 22 && ggq_row_bytes(2 + 1000, 64) == 0 &&
             ggq_block_elems(GGQ_Q5_K) == 256 && ggq_block_bytes(GGQ_Q5_1) == 24;
    CHECK("bytes per row / block sizes", ok, "Q4_K row %zu", ggq_row_bytes(GGQ_Q4_K, 4096));
    printf("  bits per weight:");
    for (int k = 0; k < NTYPES; k++)
        printf(" %s %.4f", ggq_type_name(TYPES[k]), 8.0 * (double)ggq_row_bytes(TYPES[k], 4096) / 4096.0);
    printf("\n");

    // a non-finite fp16 scale is reported with its row and block
    GgqMatrix q;
    uint8_t *p = random_matrix(GGQ_Q4_K, 3, 512, 7, &q);
    rc = ggq_check_scales(&q, &e);
    CHECK("ggq_check_scales accepts finite scales", rc == 0, "%s", e.msg);
    p[(2 * 2 + 1) * 144 + 2] = 0x00, p[(2 * 2 + 1) * 144 + 3] = 0x7C;  // row 2, block 1: dmin = +Inf
    q.name = "blk.1.ffn_down.weight";
    rc = ggq_check_scales(&q, &e);
    CHECK("ggq_check_scales names an Inf dmin (row 2, block 1)", rc == -1 && strstr(e.msg, "blk.1.ffn_down.weight") &&
          strstr(e.msg, "block 1 of row 2") && strstr(e.msg, "dmin"), "rc %d msg '%s'", rc, e.msg);
    free(p);
    p = random_matrix(GGQ_Q6_K, 2, 256, 8, &q);
    p[210 + 209] = 0x7E;  // row 1: d = NaN
    rc = ggq_check_scales(&q, &e);
    CHECK("ggq_check_scales names a NaN Q6_K d", rc == -1 && strstr(e.msg, "row 1") && strstr(e.msg, "scale d"),
          "rc %d msg '%s'", rc, e.msg);
    free(p);
}

// Information only (no timing is asserted): best of 5 runs on a 4096 x 4096 matrix.
static void report_speed(void) {
    const int64_t R = 4096, C = 4096;
    float *out = malloc((size_t)(R * C) * sizeof(float)), *rows16 = malloc((size_t)(16 * C) * sizeof(float));
    float *x = gaussian(C, 3), *y = malloc((size_t)R * sizeof(float));
    int nth = get_num_threads();
    printf("  speed, 4096 x 4096 (GB/s of quantized data read): A = %d threads into a 64 MiB fp32 matrix "
           "(bound by memory writes), B = 1 thread, 16 rows at a time into a cached buffer (kernel speed); "
           "x(1,4096)·Wᵀ fused vs dequantize + sgemv (%d threads)\n", nth, nth);
    for (int k = 0; k < NTYPES; k++) {
        GgqMatrix m;
        uint8_t *p = random_matrix(TYPES[k], R, C, 90 + k, &m);
        Err e;
        ggq_dequant_rows(&m, 0, R, out);  // page faults of out
        double ta = 1e9, tb = 1e9, tg = 1e9, ts = 1e9;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = now_seconds();
            ggq_dequant_rows(&m, 0, R, out);
            double t1 = now_seconds();
            ggq_matmul_xwt(x, 1, &m, y, 0, NULL, &e);
            double t2 = now_seconds();
            ggq_dequant_rows(&m, 0, R, out);
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)R, (int)C, 1.0f, out, (int)C, x, 1, 0.0f, y, 1);
            double t3 = now_seconds();
            set_num_threads(1);
            for (int64_t r = 0; r < R; r += 16) ggq_dequant_rows(&m, r, 16, rows16);
            double t4 = now_seconds();
            set_num_threads(nth);
            ta = fmin(ta, t1 - t0), tg = fmin(tg, t2 - t1), ts = fmin(ts, t3 - t2), tb = fmin(tb, t4 - t3);
        }
        double gb = (double)ggq_bytes(&m) / 1e9;
        printf("    %s: A %.1f ms = %.2f GB/s; B %.1f ms = %.2f GB/s (%.1f Gweights/s); gemv fused %.1f ms vs %.1f ms\n",
               ggq_type_name(m.type), 1e3 * ta, gb / ta, 1e3 * tb, gb / tb, (double)(R * C) / tb / 1e9, 1e3 * tg,
               1e3 * ts);
        free(p);
    }
    free(out), free(rows16), free(x), free(y);
}

int main(void) {
    test_hand_blocks();
    test_reference();
    test_errors();
    test_determinism();
    // every type: small shapes on the tiled sgemm path (N = 5) and the fused path (N = 1, 4)
    for (int k = 0; k < NTYPES; k++) {
        int64_t qk = ggq_block_elems(TYPES[k]);
        test_matmul(TYPES[k], 5, 70, 3 * qk, 0, 100 + k);
        test_matmul(TYPES[k], 1, 37, 5 * qk, 0, 200 + k);
        test_matmul(TYPES[k], 4, 300, 2 * qk, 0, 300 + k);
    }
    // several row tiles (xwt) and column tiles (dyw), and a wide fused case
    test_matmul(GGQ_Q4_K, 37, 4100, 2048, 1, 400);
    test_matmul(GGQ_Q8_0, 9, 2100, 4096, 1, 401);
    test_matmul(GGQ_Q6_K, 1, 1500, 5120, 0, 402);
    printf("  fused matmuls: largest error %.3g of the tolerance %g·sqrt(K)·u·Σ|terms|\n", worst_mm, TU_SUM_C);
    report_speed();
    return tu_exit();
}
