// quant: NF4 + double quantization against an independent numpy/torch re-implementation of
// bitsandbytes (tests/ref_nf4.py): codebook, dynamic map, codes, absmax codes, scales,
// offset and dequantized values bit for bit; determinism across thread counts; round-trip
// error on Gaussian weights; bits per weight; row/tile dequantization; the fused matmuls
// against sgemm on the dequantized matrix; edge cases and user errors.
#include <cblas.h>

#include "quant/quant.h"
#include "tests/testutil.h"

typedef struct {
    const char *name;
    int64_t rows, cols;
    float *w;
} Case;

static float *gaussian(int64_t n, float std, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    float *w = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) w[i] = std * rng_normal(&r);
    return w;
}

static int same_bits(const void *a, const void *b, size_t bytes) { return memcmp(a, b, bytes) == 0; }

// The dequantized matrix computed the plain way, element by element from the format.
static void dequant_plain(const Nf4Matrix *m, float *out) {
    const float *cb = nf4_codebook();
    for (int64_t i = 0; i < m->n; i++) {
        int64_t b = i / NF4_BLOCK;
        volatile float a = m->code2[m->absmax_q[b]] * m->scale2[b / NF4_BLOCK2];  // no FMA
        a = a + m->offset;
        uint8_t byte = m->packed[i / 2];
        out[i] = cb[i % 2 ? byte & 15 : byte >> 4] * a;
    }
}

static float *dequant_all(const Nf4Matrix *m) {
    float *out = malloc((size_t)m->n * sizeof(float));
    nf4_dequant_rows(m, 0, m->rows, out);
    return out;
}

// Largest distance in units in the last place between two float arrays.
static int64_t max_ulps(const float *a, const float *b, int64_t n) {
    int64_t worst = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t x, y;
        memcpy(&x, &a[i], 4);
        memcpy(&y, &b[i], 4);
        if (x < 0) x = (int32_t)(0x80000000u - (uint32_t)x);
        if (y < 0) y = (int32_t)(0x80000000u - (uint32_t)y);
        int64_t d = (int64_t)x - (int64_t)y;
        if (d < 0) d = -d;
        if (d > worst) worst = d;
    }
    return worst;
}

static void test_codebook(void) {
    // the 16 values of DESIGN.md / the QLoRA paper, as decimal strings
    static const char *dec[16] = {"-1.0", "-0.6961928009986877", "-0.5250730514526367",
        "-0.39491748809814453", "-0.28444138169288635", "-0.18477343022823334", "-0.09105003625154495",
        "0.0", "0.07958029955625534", "0.16093020141124725", "0.24611230194568634",
        "0.33791524171829224", "0.44070982933044434", "0.5626170039176941", "0.7229568362236023", "1.0"};
    const float *cb = nf4_codebook();
    int bad = -1;
    for (int i = 0; i < 16 && bad < 0; i++) {
        float v = strtof(dec[i], NULL);
        if (!same_bits(&v, &cb[i], 4)) bad = i;
    }
    CHECK("nf4 codebook bit-exact vs DESIGN.md", bad < 0, "value %d is %.9g, expected %s", bad,
          bad >= 0 ? cb[bad] : 0.0, bad >= 0 ? dec[bad] : "");
}

// Properties of the dynamic map that do not need torch: order, symmetry, endpoints, and
// closeness to a float64 evaluation of create_dynamic_map's formula.
static void test_dynmap_local(void) {
    const float *d = dyn_map_signed();
    int sorted = 1, sym = 1;
    for (int i = 1; i < 256; i++) sorted &= d[i] > d[i - 1];
    for (int k = 0; k < 127; k++) sym &= d[126 - k] == -d[128 + k];
    CHECK("dynamic map ascending, 0 at 127, 1 at 255, symmetric",
          sorted && sym && d[127] == 0.0f && d[255] == 1.0f && d[0] < -0.99f,
          "sorted %d sym %d d[0] %g d[127] %g d[255] %g", sorted, sym, d[0], d[127], d[255]);
    // positive values: for i = 0..6, j < 2^i: 10^(i-6) * (0.1 + 0.9 (2j+1) / 2^(i+1))
    double ideal[128];
    int k = 0;
    for (int i = 0; i < 7; i++)
        for (int j = 0; j < (1 << i); j++)
            ideal[k++] = pow(10.0, i - 6) * (0.1 + 0.9 * (2 * j + 1) / (double)(2 << i));
    ideal[k++] = 1.0;
    for (int a = 1; a < 128; a++)  // insertion sort
        for (int b = a; b > 0 && ideal[b] < ideal[b - 1]; b--) {
            double t = ideal[b];
            ideal[b] = ideal[b - 1];
            ideal[b - 1] = t;
        }
    double worst = 0;
    for (int i = 0; i < 128; i++) worst = tu_worse(worst, fabs(d[128 + i] - ideal[i]) / ideal[i]);
    CHECK("dynamic map within 2e-7 relative of its formula", worst < 2e-7, "worst %.3g", worst);
}

static void test_bits_per_weight(void) {
    int64_t r = 4096, c = 4096;
    double bpw = 8.0 * (double)nf4_bytes_for(r, c) / (double)(r * c);
    double expect = 4.0 + 8.0 / 64 + 32.0 / (64 * 256);
    printf("  bits per weight (4096 x 4096): %.6f  (4 + 8/64 + 32/(64*256) = %.6f)\n", bpw, expect);
    CHECK("bits per weight 4.127", fabs(bpw - expect) < 1e-12 && fabs(bpw - 4.127) < 5e-4, "%.6f", bpw);
    // 11008 x 4096 (an MLP projection): the same within rounding of the last scale block
    double bpw2 = 8.0 * (double)nf4_bytes_for(11008, 4096) / (11008.0 * 4096.0);
    CHECK("bits per weight 11008 x 4096", fabs(bpw2 - expect) < 1e-6, "%.6f", bpw2);
}

static int quant_ok(const Case *c, Nf4Matrix *m) {
    Err e = {{0}};
    if (nf4_quantize(c->w, c->rows, c->cols, c->name, m, &e)) {
        printf("quantize %s failed: %s\n", c->name, e.msg);
        return 0;
    }
    return 1;
}

static void test_edge_cases(const Case *odd, const Case *zeros, const Case *tiny) {
    Nf4Matrix m;
    // all-zero matrix: absmax 0, offset 0, scale2 0 -> every division is 1/0
    if (quant_ok(zeros, &m)) {
        float *d = dequant_all(&m);
        int ok = 1;
        for (int64_t i = 0; i < m.n; i++) ok &= d[i] == 0.0f;
        CHECK("all-zero matrix dequantizes to zeros (no NaN)", ok && m.offset == 0.0f && m.scale2[0] == 0.0f,
              "offset %g scale2 %g", m.offset, m.scale2[0]);
        free(d);
        nf4_free(&m);
    }
    // odd: 37 x 101 (n odd, blocks straddle rows, 59 absmax < one block of 256), block 2 zero
    if (quant_ok(odd, &m)) {
        float *d = dequant_all(&m);
        int zero_ok = 1, finite = 1;
        for (int64_t i = 128; i < 192; i++) zero_ok &= d[i] == 0.0f;
        for (int64_t i = 0; i < m.n; i++) finite &= isfinite(d[i]) != 0;
        CHECK("zero block inside a matrix dequantizes to exact zeros", zero_ok && finite, "zero %d finite %d",
              zero_ok, finite);
        CHECK("zero block gets code 7 (0.0)", m.packed[64] == 0x77 && m.packed[95] == 0x77, "bytes %02x %02x",
              m.packed[64], m.packed[95]);
        CHECK("37 x 101: 59 absmax, 1 scale, 1869 bytes", m.nblocks == 59 && m.nblocks2 == 1 &&
              nf4_bytes(&m) == 1869 + 59 + 4, "nblocks %lld nblocks2 %lld bytes %zu", (long long)m.nblocks,
              (long long)m.nblocks2, nf4_bytes(&m));
        // pad nibble of an odd n: the code of 0.0 (7) in the low nibble of the last byte
        CHECK("odd n pads the last low nibble with code 7", (m.packed[m.n / 2] & 15) == 7, "byte %02x",
              m.packed[m.n / 2]);
        // the outlier sets its block's absmax: 0.5 comes back (nearly) exactly
        double worst = 0;
        for (int64_t i = 0; i < m.n; i++) worst = tu_worse(worst, fabs(d[i] - odd->w[i]));
        CHECK("outlier 0.5 reconstructed within 0.5%", fabs(d[1000] - 0.5f) < 2.5e-3, "got %.6g (max err %.3g)",
              d[1000], worst);
        free(d);
        nf4_free(&m);
    }
    if (quant_ok(tiny, &m)) {
        float *d = dequant_all(&m);
        double worst = 0, amax = 0;
        for (int64_t i = 0; i < m.n; i++) {
            worst = tu_worse(worst, fabs(d[i] - tiny->w[i]));
            amax = fmax(amax, fabs(tiny->w[i]));
        }
        CHECK("3 x 5 matrix (one partial block) round-trips within its step", worst <= 0.21 * amax,
              "max err %.3g, absmax %.3g", worst, amax);
        free(d);
        nf4_free(&m);
    }
}

static void test_errors(void) {
    Nf4Matrix m;
    Err e = {{0}};
    float w[40];
    for (int i = 0; i < 40; i++) w[i] = 0.01f * (float)i;
    int rc = nf4_quantize(w, 0, 8, "blk.0.attn_q.weight", &m, &e);
    CHECK("quantize rejects 0 rows", rc == -1 && strstr(e.msg, "blk.0.attn_q.weight") && m.packed == NULL,
          "rc %d msg '%s'", rc, e.msg);
    w[2 * 8 + 7] = NAN;
    e.msg[0] = 0;
    rc = nf4_quantize(w, 5, 8, "blk.0.attn_q.weight", &m, &e);
    CHECK("quantize names a NaN weight", rc == -1 && strstr(e.msg, "blk.0.attn_q.weight") &&
          strstr(e.msg, "row 2, column 7") && m.packed == NULL, "rc %d msg '%s'", rc, e.msg);
    w[2 * 8 + 7] = 0.0f;
    w[39] = -INFINITY;
    e.msg[0] = 0;
    rc = nf4_quantize(w, 5, 8, NULL, &m, &e);
    CHECK("quantize names an infinite weight", rc == -1 && strstr(e.msg, "row 4, column 7"), "rc %d msg '%s'", rc,
          e.msg);
}

// Row and tile dequantization agree bit for bit with the whole-matrix and plain versions.
static void test_dequant_views(const Case *c) {
    Nf4Matrix m;
    if (!quant_ok(c, &m)) return;
    float *full = dequant_all(&m);
    float *plain = malloc((size_t)m.n * sizeof(float));
    dequant_plain(&m, plain);
    char name[160];
    snprintf(name, sizeof name, "%s: fast dequant == plain per-element dequant", c->name);
    CHECK(name, same_bits(full, plain, (size_t)m.n * 4), "max %lld ulps", (long long)max_ulps(full, plain, m.n));

    float *buf = malloc((size_t)m.n * sizeof(float));
    int64_t ranges[][2] = {{0, 1}, {1, 1}, {3, 5}, {c->rows - 1, 1}, {c->rows / 3, c->rows - c->rows / 3}};
    int ok = 1;
    for (size_t k = 0; k < sizeof ranges / sizeof ranges[0]; k++) {
        int64_t r0 = ranges[k][0], nr = ranges[k][1];
        if (r0 < 0 || r0 + nr > c->rows) continue;
        nf4_dequant_rows(&m, r0, nr, buf);
        ok &= same_bits(buf, full + r0 * c->cols, (size_t)(nr * c->cols) * 4);
    }
    snprintf(name, sizeof name, "%s: dequant_rows of row ranges == slices", c->name);
    CHECK(name, ok, "a row range differs");
    // tiles with unaligned columns and a padded leading dimension
    int64_t tiles[][4] = {{0, c->rows, 0, c->cols}, {1, 2, 3, 70}, {2, c->rows - 2, 64, c->cols - 64},
                          {0, c->rows, c->cols - 1, 1}};
    ok = 1;
    for (size_t k = 0; k < sizeof tiles / sizeof tiles[0]; k++) {
        int64_t r0 = tiles[k][0], nr = tiles[k][1], c0 = tiles[k][2], nc = tiles[k][3], ld = nc + 3;
        if (nr <= 0 || nc <= 0 || r0 + nr > c->rows || c0 + nc > c->cols) continue;
        float *t = malloc((size_t)(nr * ld) * sizeof(float));
        nf4_dequant_tile(&m, r0, nr, c0, nc, t, ld);
        for (int64_t r = 0; r < nr; r++) ok &= same_bits(t + r * ld, full + (r0 + r) * c->cols + c0, (size_t)nc * 4);
        free(t);
    }
    snprintf(name, sizeof name, "%s: dequant_tile == sub-matrix", c->name);
    CHECK(name, ok, "a tile differs");
    free(buf);
    free(plain);
    free(full);
    nf4_free(&m);
}

static int same_quant(const Nf4Matrix *a, const Nf4Matrix *b) {
    return a->n == b->n && a->offset == b->offset && same_bits(a->packed, b->packed, (size_t)(a->n + 1) / 2) &&
           same_bits(a->absmax_q, b->absmax_q, (size_t)a->nblocks) &&
           same_bits(a->scale2, b->scale2, (size_t)a->nblocks2 * 4);
}

static void test_determinism(const Case *c) {
    Nf4Matrix m1, m2, m3;
    int saved = get_num_threads();
    set_num_threads(1);
    int ok1 = quant_ok(c, &m1);
    float *d1 = ok1 ? dequant_all(&m1) : NULL;
    set_num_threads(2);
    int ok2 = quant_ok(c, &m2), ok3 = quant_ok(c, &m3);
    float *d2 = ok2 ? dequant_all(&m2) : NULL;
    set_num_threads(saved);
    if (!ok1 || !ok2 || !ok3) {
        CHECK("quantize deterministic", 0, "quantization failed");
        return;
    }
    CHECK("quantize bit-identical across runs and 1 vs 2 threads", same_quant(&m1, &m2) && same_quant(&m2, &m3),
          "quantized data differ");
    CHECK("dequantize bit-identical with 1 and 2 threads", same_bits(d1, d2, (size_t)c->rows * c->cols * 4),
          "max %lld ulps", (long long)max_ulps(d1, d2, c->rows * c->cols));

    // round-trip error of N(0, 0.02^2) weights
    double se = 0, sw = 0, ae = 0;
    for (int64_t i = 0; i < m1.n; i++) {
        double d = (double)d1[i] - c->w[i];
        se += d * d;
        sw += (double)c->w[i] * c->w[i];
        ae += fabs(d);
    }
    double rel_rms = sqrt(se / sw), mae = ae / (double)m1.n;
    printf("  round trip %lld x %lld N(0, 0.02^2): mean |err| %.6f (%.2f%% of mean |w|), relative RMS error %.4f\n",
           (long long)c->rows, (long long)c->cols, mae, 100 * mae / (0.02 * sqrt(2 / M_PI)), rel_rms);
    CHECK("NF4+DQ relative RMS error of Gaussian weights < 0.095", rel_rms < 0.095 && rel_rms > 0.05, "%.4f",
          rel_rms);
    free(d1);
    free(d2);
    nf4_free(&m1);
    nf4_free(&m2);
    nf4_free(&m3);
}

// ---- against tests/ref_nf4.py ------------------------------------------------------------

static int write_raw(const char *dir, const char *name, const void *p, size_t bytes) {
    char path[600];
    Err e;
    if (write_file_atomic(path_join(path, sizeof path, dir, name), p, bytes, &e)) {
        printf("%s\n", e.msg);
        return -1;
    }
    return 0;
}

// DIR/NAME, which must hold exactly `bytes` bytes; NULL (with a message) otherwise.
static void *load_ref(const char *dir, const char *name, size_t bytes) {
    char path[600];
    Err e;
    size_t len = 0;
    void *p = read_file(path_join(path, sizeof path, dir, name), &len, &e);
    if (p && len != bytes) {
        printf("%s holds %zu bytes, expected %zu\n", path, len, bytes);
        free(p);
        return NULL;
    }
    if (!p) printf("%s\n", e.msg);
    return p;
}

static void compare_case(const char *dir, const Case *c) {
    Nf4Matrix m;
    if (!quant_ok(c, &m)) {
        CHECK(c->name, 0, "quantization failed");
        return;
    }
    char f[200], name[200];
    snprintf(f, sizeof f, "%s.packed.u8", c->name);
    uint8_t *packed = load_ref(dir, f, (size_t)(m.n + 1) / 2);
    snprintf(f, sizeof f, "%s.absq.u8", c->name);
    uint8_t *absq = load_ref(dir, f, (size_t)m.nblocks);
    snprintf(f, sizeof f, "%s.scale2.f32", c->name);
    float *scale2 = load_ref(dir, f, (size_t)m.nblocks2 * 4);
    snprintf(f, sizeof f, "%s.offset.f32", c->name);
    float *offset = load_ref(dir, f, 4);
    snprintf(f, sizeof f, "%s.deq.f32", c->name);
    float *deq = load_ref(dir, f, (size_t)m.n * 4);
    if (!packed || !absq || !scale2 || !offset || !deq) {
        CHECK(c->name, 0, "reference files missing");
    } else {
        int64_t diff = 0;
        for (int64_t i = 0; i < m.n; i++) {
            uint8_t a = m.packed[i / 2], b = packed[i / 2];
            diff += (i % 2 ? (a & 15) != (b & 15) : (a >> 4) != (b >> 4));
        }
        snprintf(name, sizeof name, "%s (%lld x %lld): NF4 codes == reference", c->name, (long long)c->rows,
                 (long long)c->cols);
        CHECK(name, diff == 0 && same_bits(m.packed, packed, (size_t)(m.n + 1) / 2), "%lld of %lld codes differ",
              (long long)diff, (long long)m.n);
        diff = 0;
        for (int64_t b = 0; b < m.nblocks; b++) diff += m.absmax_q[b] != absq[b];
        snprintf(name, sizeof name, "%s: absmax codes == reference", c->name);
        CHECK(name, diff == 0, "%lld of %lld differ", (long long)diff, (long long)m.nblocks);
        snprintf(name, sizeof name, "%s: scale2 and offset == reference", c->name);
        CHECK(name, same_bits(m.scale2, scale2, (size_t)m.nblocks2 * 4) && same_bits(&m.offset, offset, 4),
              "offset %.9g vs %.9g", m.offset, *offset);
        float *d = dequant_all(&m);
        int64_t ulps = max_ulps(d, deq, m.n);
        snprintf(name, sizeof name, "%s: dequantized values == reference", c->name);
        CHECK(name, ulps == 0, "max %lld ulps", (long long)ulps);
        free(d);
    }
    free(packed), free(absq), free(scale2), free(offset), free(deq);
    nf4_free(&m);
}

static void test_reference(const Case *cases, int ncases) {
    if (!tu_have_torch()) {
        SKIP("bitsandbytes reference (tests/ref_nf4.py)", "/usr/bin/python3 cannot import torch");
        return;
    }
    char dir[256];
    tu_tmpdir("test_quant", dir, sizeof dir);
    char list[1024] = "";
    for (int i = 0; i < ncases; i++) {
        char f[200], line[200];
        snprintf(f, sizeof f, "%s.w.f32", cases[i].name);
        if (write_raw(dir, f, cases[i].w, (size_t)(cases[i].rows * cases[i].cols) * 4)) return;
        snprintf(line, sizeof line, "%s %lld %lld\n", cases[i].name, (long long)cases[i].rows,
                 (long long)cases[i].cols);
        strncat(list, line, sizeof list - strlen(list) - 1);
    }
    if (write_raw(dir, "cases.txt", list, strlen(list))) return;
    char cmd[800];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_nf4.py '%s'", dir);
    fflush(stdout);
    int rc = system(cmd);
    CHECK("tests/ref_nf4.py ran", rc == 0, "exit status %d", rc);
    if (rc != 0) return;

    float *cb = load_ref(dir, "codebook.f32", 64), *dm = load_ref(dir, "dynmap.f32", 1024);
    CHECK("nf4 codebook bit-exact vs reference", cb && same_bits(cb, nf4_codebook(), 64), "differs");
    int first = -1;
    for (int i = 0; dm && i < 256 && first < 0; i++)
        if (!same_bits(&dm[i], &dyn_map_signed()[i], 4)) first = i;
    CHECK("dynamic map bit-exact vs torch create_dynamic_map", dm && first < 0, "index %d: %.9g vs %.9g", first,
          first >= 0 ? dyn_map_signed()[first] : 0.0, first >= 0 ? dm[first] : 0.0);
    free(cb);
    free(dm);
    for (int i = 0; i < ncases; i++) compare_case(dir, &cases[i]);
}

// ---- fused matmuls ---------------------------------------------------------------------

// The fused kernel and sgemm on the dequantized matrix add the same K products in different
// orders: each element must agree within tu_sum_tol(K, Σ_k |x_k w_k|) (tests/testutil.h),
// K + 1 terms with |y0| added for the accumulating forms. Prints the worst error as a fraction
// of that tolerance.
static void check_sum(const char *name, int rc, const float *got, const float *want, const double *abs_sum,
                      int64_t n, int64_t K) {
    double r = tu_sum_err(got, want, abs_sum, (long)n, (double)K);
    CHECK(name, rc == 0 && r <= 1.0, "rc %d max error %.3g of the tolerance %g·sqrt(%lld)·u·Σ|terms|", rc, r,
          TU_SUM_C, (long long)K);
    printf("    %s: max error %.3g of the tolerance\n", name, r);
}

static void test_matmul(int64_t N, int64_t OC, int64_t C, int tiled, uint64_t seed) {
    float *w = gaussian(OC * C, 0.02f, seed);
    Nf4Matrix m;
    Err e = {{0}};
    if (nf4_quantize(w, OC, C, "mm", &m, &e)) {
        CHECK("matmul setup", 0, "%s", e.msg);
        free(w);
        return;
    }
    float *wd = dequant_all(&m);
    float *x = gaussian(N * C, 1.0f, seed + 1), *dy = gaussian(N * OC, 1.0f, seed + 2);
    float *y0 = gaussian(N * OC, 1.0f, seed + 3), *dx0 = gaussian(N * C, 1.0f, seed + 4);
    float *y = malloc((size_t)(N * OC) * 4), *yr = malloc((size_t)(N * OC) * 4);
    float *dx = malloc((size_t)(N * C) * 4), *dxr = malloc((size_t)(N * C) * 4);
    char name[200];
    // Σ|x||Wd|ᵀ (N, OC) over C, and Σ|dy||Wd| (N, C) over OC; with |y0|, |dx0| for accumulation
    double *sy = tu_abs_matmul(x, C, 1, wd, 1, C, N, C, OC, NULL);
    double *sya = tu_abs_matmul(x, C, 1, wd, 1, C, N, C, OC, y0);
    double *sx = tu_abs_matmul(dy, OC, 1, wd, C, 1, N, OC, C, NULL);
    double *sxa = tu_abs_matmul(dy, OC, 1, wd, C, 1, N, OC, C, dx0);

    // y = x Wdᵀ (plain sgemm on the dequantized matrix) vs fused, then the accumulate forms
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)C, 1.0f, x, (int)C, wd, (int)C, 0.0f,
                yr, (int)OC);
    int rc = nf4_matmul_xwt(x, N, &m, y, 0, NULL, &e);
    snprintf(name, sizeof name, "xwt (%lld,%lld)x(%lld,%lld)^T == sgemm on dequantized W", (long long)N,
             (long long)C, (long long)OC, (long long)C);
    check_sum(name, rc, y, yr, sy, N * OC, C);
    if (tiled) {
        // the tolerance is tight enough to see one product left out: drop the term of average
        // size or larger nearest the middle of row 0 · column 0's sum from the reference
        int64_t k0 = -1;
        for (int64_t k = C / 2; k < C && k0 < 0; k++)
            if (fabs((double)x[k] * wd[k]) >= sy[0] / (double)C) k0 = k;
        float *yb = malloc((size_t)(N * OC) * 4);
        memcpy(yb, yr, (size_t)(N * OC) * 4);
        if (k0 >= 0) yb[0] = (float)((double)yr[0] - (double)x[k0] * wd[k0]);
        double r = tu_sum_err(y, yb, sy, N * OC, (double)C);
        snprintf(name, sizeof name, "xwt tolerance catches one missing product of average size (K = %lld): "
                 "%.3g x the tolerance", (long long)C, r);
        CHECK(name, k0 >= 0 && r > 1.0, "a missing term passed the check");
        free(yb);
    }
    size_t sf = nf4_scratch_floats(&m);
    if (tiled)
        CHECK("scratch tile is smaller than W", sf < (size_t)(OC * C) / 2, "%zu floats for a (%lld, %lld) W", sf,
              (long long)OC, (long long)C);
    float *scratch = malloc(sf * sizeof(float));
    memcpy(y, y0, (size_t)(N * OC) * 4);
    rc = nf4_matmul_xwt(x, N, &m, y, 1, scratch, &e);
    for (int64_t i = 0; i < N * OC; i++) yr[i] += y0[i];
    snprintf(name, sizeof name, "xwt (%lld,%lld)x(%lld,%lld)^T accumulate with caller scratch", (long long)N,
             (long long)C, (long long)OC, (long long)C);
    check_sum(name, rc, y, yr, sya, N * OC, C + 1);

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)OC, 1.0f, dy, (int)OC, wd, (int)C,
                0.0f, dxr, (int)C);
    rc = nf4_matmul_dyw(dy, N, &m, dx, 0, NULL, &e);
    snprintf(name, sizeof name, "dyw (%lld,%lld)x(%lld,%lld) == sgemm on dequantized W", (long long)N,
             (long long)OC, (long long)OC, (long long)C);
    check_sum(name, rc, dx, dxr, sx, N * C, OC);
    memcpy(dx, dx0, (size_t)(N * C) * 4);
    rc = nf4_matmul_dyw(dy, N, &m, dx, 1, scratch, &e);
    for (int64_t i = 0; i < N * C; i++) dxr[i] += dx0[i];
    snprintf(name, sizeof name, "dyw (%lld,%lld)x(%lld,%lld) accumulate with caller scratch", (long long)N,
             (long long)OC, (long long)OC, (long long)C);
    check_sum(name, rc, dx, dxr, sxa, N * C, OC + 1);

    free(scratch);
    free(sy), free(sya), free(sx), free(sxa);
    free(w), free(wd), free(x), free(dy), free(y0), free(dx0), free(y), free(yr), free(dx), free(dxr);
    nf4_free(&m);
}

// Information only (no timing is asserted): speed on a 4096 x 4096 matrix.
static void report_speed(void) {
    const int64_t R = 4096, C = 4096, N = 256;
    float *w = gaussian(R * C, 0.02f, 99);
    Nf4Matrix m;
    Err e;
    double t0 = now_seconds();
    if (nf4_quantize(w, R, C, "speed", &m, &e)) {
        free(w);
        return;
    }
    double tq = now_seconds() - t0;
    t0 = now_seconds();
    nf4_dequant_rows(&m, 0, R, w);
    double td = now_seconds() - t0;
    float *x = gaussian(N * C, 1.0f, 5), *y = malloc((size_t)(N * R) * 4);
    t0 = now_seconds();
    nf4_matmul_xwt(x, N, &m, y, 0, NULL, &e);
    double tf = now_seconds() - t0;
    t0 = now_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)R, (int)C, 1.0f, x, (int)C, w, (int)C, 0.0f,
                y, (int)R);
    double ts = now_seconds() - t0;
    printf("  speed 4096 x 4096, %d threads: quantize %.1f ms, dequantize %.1f ms (%.2f Gweights/s), "
           "x(256,4096)·Wᵀ fused %.1f ms vs sgemm on fp32 W %.1f ms; memory %.2f MiB vs %.2f MiB fp32\n",
           get_num_threads(), 1e3 * tq, 1e3 * td, (double)(R * C) / td / 1e9, 1e3 * tf, 1e3 * ts,
           nf4_bytes(&m) / 1048576.0, R * C * 4 / 1048576.0);
    free(w), free(x), free(y);
    nf4_free(&m);
}

int main(void) {
    test_codebook();
    test_dynmap_local();
    test_bits_per_weight();
    test_errors();

    Case gauss = {"gauss", 256, 1000, gaussian(256 * 1000, 0.02f, 1)};
    Case odd = {"odd", 37, 101, gaussian(37 * 101, 0.02f, 2)};
    for (int i = 128; i < 192; i++) odd.w[i] = 0.0f;  // block 2 all zero
    odd.w[1000] = 0.5f;                               // an outlier
    Case zeros = {"zeros", 1, 64, calloc(64, sizeof(float))};
    Case tiny = {"tiny", 3, 5, gaussian(15, 1.0f, 3)};
    Case wide = {"wide", 4, 20000, gaussian(4 * 20000, 0.02f, 4)};  // 1250 absmax: 5 scale blocks
    Case cases[] = {gauss, odd, zeros, tiny, wide};

    test_edge_cases(&odd, &zeros, &tiny);
    test_dequant_views(&gauss);
    test_dequant_views(&odd);
    test_determinism(&gauss);
    test_reference(cases, 5);
    test_matmul(37, 256, 1000, 0, 10);
    test_matmul(37, 4100, 2200, 1, 20);  // 3 row tiles and 3 column tiles, unaligned columns
    test_matmul(1, 320, 512, 0, 30);
    report_speed();
    for (int i = 0; i < 5; i++) free(cases[i].w);
    return tu_exit();
}
