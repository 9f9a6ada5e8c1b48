// The GGUF quantizers (quant/ggml_quantize.c: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and the GGUF
// model writer around them: hand-computed blocks; our dequantization (ggq_dequant_rows) within
// the bound quant.h derives, element by element, on varied rows (zero, tiny, huge, one-signed,
// outliers, ties); the same bytes on every run and thread count; byte for byte the quantizers
// of tests/ref_ggml_quants.py (an independent numpy port of llama.cpp's quantize_row_*_ref);
// ggw_add_f32 / model_save_gguf: the types chosen per tensor, the file read back.
#include <float.h>
#include <omp.h>

#include "export/export.h"
#include "quant/quant.h"
#include "tests/testutil.h"

static const int QTYPES[] = {GGQ_Q8_0, GGQ_Q4_0, GGQ_Q4_1, GGQ_Q5_0, GGQ_Q5_1};
#define NQ 5

// ${BUILD:-build}/tmp/NAME, fresh (as tests/lib.sh's tmpdir)
static const char *scratch_dir(const char *name, char *buf, size_t n) {
    const char *b = getenv("BUILD");
    snprintf(buf, n, "%s/tmp/%s", b && *b ? b : "build", name);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", buf, buf);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot make %s\n", buf);
        exit(2);
    }
    return buf;
}

static float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return f16_to_f32(h);
}

// Varied test rows of cols values (cols a multiple of 32).
static void make_rows(float *x, int rows, int64_t cols, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < rows; i++) {
        float *row = x + (int64_t)i * cols;
        for (int64_t j = 0; j < cols; j++) row[j] = 0.02f * rng_normal(&r);
        switch (i % 9) {
            case 1: memset(row, 0, (size_t)cols * sizeof(float)); break;               // d = 0
            case 2: for (int64_t j = 0; j < cols; j++) row[j] *= 1e-4f; break;           // subnormal fp16 d
            case 3: for (int64_t j = 0; j < cols; j++) row[j] *= 3000.0f; break;         // large
            case 4: for (int64_t j = 0; j < cols; j++) row[j] = fabsf(row[j]) + 0.01f; break;  // one sign
            case 5: row[7] = 0.9f, row[40] = -0.9f; break;                               // outliers
            case 6:  // ties: +s and -s in one block (Q4_0/Q5_0 keep the first), repeated values
                for (int64_t j = 0; j < cols; j++) row[j] = (float)((j * 7) % 5 - 2) * 0.25f;
                break;
            case 7: for (int64_t j = 0; j < cols; j++) row[j] = -fabsf(row[j]); break;
            default: break;
        }
    }
}

// The largest code magnitude Q of quant.h's bound, and whether the type has a min.
static void type_q(int type, float *Q, int *has_min, int *half) {
    *has_min = type == GGQ_Q4_1 || type == GGQ_Q5_1;
    *half = type == GGQ_Q4_0 ? 8 : type == GGQ_Q5_0 ? 16 : 0;
    *Q = type == GGQ_Q8_0 ? 127.0f : type == GGQ_Q4_0 ? 8.0f : type == GGQ_Q5_0 ? 16.0f : type == GGQ_Q4_1 ? 15.0f : 31.0f;
}

// |x - x'| per element against quant.h's bound; returns the worst ratio error / bound (<= 1).
static double bound_ratio(int type, const float *x, const float *y, const uint8_t *blocks, int64_t n) {
    float Q;
    int has_min, half;
    type_q(type, &Q, &has_min, &half);
    const size_t bb = ggq_block_bytes(type);
    double worst = 0;
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + b * 32;
        const uint8_t *blk = blocks + b * bb;
        float amax = 0, s = 0, mn = FLT_MAX, mx = -FLT_MAX;
        for (int j = 0; j < 32; j++) {
            if (fabsf(xb[j]) > amax) amax = fabsf(xb[j]), s = xb[j];
            mn = fminf(mn, xb[j]);
            mx = fmaxf(mx, xb[j]);
        }
        // d as the quantizer computes it in fp32, d' and m' as stored
        double d = type == GGQ_Q8_0 ? amax / 127.0f : half ? s / (float)-half : (mx - mn) / Q;
        double d16 = half_at(blk), m16 = has_min ? half_at(blk + 2) : 0;
        for (int j = 0; j < 32; j++) {
            double v = d != 0 ? xb[j] / d : 0;  // the code value before rounding
            double step = fabs(d) * (half && v > half - 0.5 ? v - (half - 1) : 0.5);  // Q4_0/Q5_0 clamp
            double bound = step + Q * fabs(d - d16) + (has_min ? fabs(mn - m16) : 0) + 2e-6 * (amax + fabs(mn));
            double err = fabs((double)xb[j] - (double)y[b * 32 + j]);
            double r = err == 0 ? 0 : err / bound;  // (an all-zero block: bound 0)
            if (!(r <= worst)) worst = isnan(r) ? INFINITY : r;
        }
    }
    return worst;
}

static void test_hand_blocks(void) {
    uint8_t b[34];
    float x[32];
    // Q4_0: s = -2 (first of the largest magnitudes) -> d = 0.25, codes j; x = (j - 8) / 4
    for (int j = 0; j < 32; j++) x[j] = (float)((j % 16) - 8) * 0.25f;
    ggq_quantize_rows(GGQ_Q4_0, x, 1, 32, b);
    int ok = half_at(b) == 0.25f;
    for (int j = 0; j < 16; j++) ok &= b[2 + j] == (uint8_t)(j | j << 4);
    CHECK("hand block Q4_0: d = s/-8, codes x/d + 8", ok, "d %g, qs[1] 0x%02x", half_at(b), b[3]);
    // rounding: x/d + 8.5 truncated rounds halves up; +2 (the opposite of s = -2) clamps to 15
    x[0] = -2.0f, x[1] = 2.0f, x[2] = 0.125f, x[3] = -0.125f, x[4] = 0.1f;
    for (int j = 5; j < 32; j++) x[j] = 0;
    ggq_quantize_rows(GGQ_Q4_0, x, 1, 32, b);
    ok = half_at(b) == 0.25f && (b[2] & 15) == 0 && (b[3] & 15) == 15 && (b[4] & 15) == 9 && (b[5] & 15) == 8 &&
         (b[6] & 15) == 8;
    CHECK("hand block Q4_0: halves round up, the value at -s clamps to code 15", ok,
          "codes %d %d %d %d %d", b[2] & 15, b[3] & 15, b[4] & 15, b[5] & 15, b[6] & 15);
    // Q8_0: amax 127 -> d = 1, q = roundf(x) (halves away from zero)
    for (int j = 0; j < 32; j++) x[j] = (float)(j * 4 - 62) + (j % 2 ? 0.5f : 0.0f);
    x[31] = 127.0f;
    ggq_quantize_rows(GGQ_Q8_0, x, 1, 32, b);
    ok = half_at(b) == 1.0f;
    for (int j = 0; j < 32; j++) ok &= (int8_t)b[2 + j] == (int8_t)roundf(x[j]);
    CHECK("hand block Q8_0: d = amax/127, roundf", ok, "d %g", half_at(b));
    // Q5_1: min -1, max 30 -> d = 1, m = -1, codes x + 1; the 5th bit in qh
    for (int j = 0; j < 32; j++) x[j] = (float)(j - 1);
    ggq_quantize_rows(GGQ_Q5_1, x, 1, 32, b);
    uint32_t qh;
    memcpy(&qh, b + 4, 4);
    ok = half_at(b) == 1.0f && half_at(b + 2) == -1.0f && qh == 0xffff0000u;
    for (int j = 0; j < 16; j++) ok &= b[8 + j] == (uint8_t)(j | j << 4);
    CHECK("hand block Q5_1: d = (max-min)/31, m = min, qh bit j = code bit 4", ok, "d %g m %g qh %08x",
          half_at(b), half_at(b + 2), qh);
    CHECK("ggq_quantize_rows rejects cols % 32 and other types",
          ggq_quantize_rows(GGQ_Q4_0, x, 1, 48, b) == -1 && ggq_quantize_rows(GGQ_Q4_K, x, 1, 256, b) == -1 &&
              ggq_quantize_rows(GGQ_Q8_0, x, 1, 0, b) == -1 && !ggq_quantizable(GGQ_Q6_K) && ggq_quantizable(GGQ_Q5_0),
          "accepted");
}

static void test_bounds_and_determinism(void) {
    const int rows = 27;
    const int64_t cols = 320;
    float *x = malloc(sizeof(float) * rows * cols), *y = malloc(sizeof(float) * rows * cols);
    make_rows(x, rows, cols, 7);
    for (int k = 0; k < NQ; k++) {
        int t = QTYPES[k];
        size_t nb = ggq_bytes_for(t, rows, cols);
        uint8_t *q1 = malloc(nb), *q2 = malloc(nb), *q3 = malloc(nb);
        memset(q1, 0xAA, nb), memset(q2, 0x55, nb), memset(q3, 0x11, nb);
        int rc = ggq_quantize_rows(t, x, rows, cols, q1);
        ggq_quantize_rows(t, x, rows, cols, q2);
        int nt = get_num_threads();
        set_num_threads(1);
        ggq_quantize_rows(t, x, rows, cols, q3);
        set_num_threads(nt);
        char name[160];
        snprintf(name, sizeof name, "%s: every byte written, the same on a rerun and with 1 thread", ggq_type_name(t));
        CHECK(name, rc == 0 && !memcmp(q1, q2, nb) && !memcmp(q1, q3, nb), "rc %d, bytes differ", rc);
        Err e = {{0}};
        GgqMatrix m;
        rc = ggq_init(&m, t, rows, cols, q1, nb, "q", &e) || ggq_check_scales(&m, &e);
        if (!rc) ggq_dequant_rows(&m, 0, rows, y);
        double r = rc ? INFINITY : bound_ratio(t, x, y, q1, rows * cols);
        snprintf(name, sizeof name, "%s: |x - dequant| <= |d|/2 + Q|d - d'| (+|m - m'|) per element (clamp: |d|)",
                 ggq_type_name(t));
        CHECK(name, r <= 1.0, "worst error / bound %.4f %s", r, e.msg);
        // the all-zero row comes back zero, and Q8_0 / Q4_0 / Q5_0 exact on values d·integer
        int zero = 1;
        for (int64_t j = 0; j < cols && !rc; j++) zero &= y[cols + j] == 0.0f;
        snprintf(name, sizeof name, "%s: an all-zero row dequantizes to zeros", ggq_type_name(t));
        CHECK(name, !rc && zero, "nonzero");
        free(q1), free(q2), free(q3);
    }
    free(x), free(y);
}

// Our bytes against tests/ref_ggml_quants.py's quantizers on the same input.
static void test_python_reference(void) {
    if (system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0) {
        SKIP("quantizers vs tests/ref_ggml_quants.py", "/usr/bin/python3 cannot import numpy");
        return;
    }
    char dir[300], path[600], cmd[2000];
    scratch_dir("test_quantize", dir, sizeof dir);
    const int rows = 45;
    const int64_t cols = 256;
    float *x = malloc(sizeof(float) * rows * cols);
    make_rows(x, rows, cols, 99);
    Err e = {{0}};
    path_join(path, sizeof path, dir, "x.f32");
    if (write_file_atomic(path, x, sizeof(float) * rows * cols, &e)) {
        CHECK("write the input rows", 0, "%s", e.msg);
        free(x);
        return;
    }
    snprintf(cmd, sizeof cmd,
             "PYTHONPATH=tests /usr/bin/python3 -c 'import sys, numpy as np, ref_ggml_quants as r\n"
             "x = np.fromfile(sys.argv[1], dtype=\"<f4\")\n"
             "for t, name in r.NAMES.items():\n"
             "    if r.QK[t] == 32: r.QUANT[t](x).tofile(sys.argv[2] + \"/\" + name + \".py\")\n' '%s' '%s'",
             path, dir);
    fflush(stdout);
    int rc = system(cmd);
    CHECK("tests/ref_ggml_quants.py quantized the rows", rc == 0, "exit status %d", rc);
    for (int k = 0; k < NQ && rc == 0; k++) {
        int t = QTYPES[k];
        size_t nb = ggq_bytes_for(t, rows, cols), len = 0;
        uint8_t *ours = malloc(nb);
        ggq_quantize_rows(t, x, rows, cols, ours);
        char f[700];
        snprintf(f, sizeof f, "%s/%s.py", dir, ggq_type_name(t));
        char *theirs = read_file(f, &len, &e);
        int64_t first = -1;
        for (size_t i = 0; theirs && len == nb && i < nb && first < 0; i++)
            if ((uint8_t)theirs[i] != ours[i]) first = (int64_t)i;
        char name[160];
        snprintf(name, sizeof name, "%s: the bytes of tests/ref_ggml_quants.py (llama.cpp's quantize_row_%s_ref)",
                 ggq_type_name(t), t == GGQ_Q8_0 ? "q8_0" : t == GGQ_Q4_0 ? "q4_0" : t == GGQ_Q4_1 ? "q4_1" : t == GGQ_Q5_0 ? "q5_0" : "q5_1");
        CHECK(name, theirs && len == nb && first < 0, "%s; %zu vs %zu bytes, first difference at byte %lld (block %lld)",
              e.msg, len, nb, (long long)first, (long long)(first / (int64_t)ggq_block_bytes(t)));
        free(theirs);
        free(ours);
    }
    free(x);
}

// ---- the GGUF writer -------------------------------------------------------------------------

static int ramp_tensor(void *user, int layer, int which, int64_t rows, int64_t cols, float *out, Err *e) {
    (void)user, (void)e;
    for (int64_t i = 0; i < rows * cols; i++)
        out[i] = which >= GS_ATTN_NORM ? 1.0f : 0.01f * (float)((i * 37 + which * 11 + layer * 5) % 23 - 11);
    return 0;
}

static void test_writer(void) {
    char dir[300], path[600];
    scratch_dir("test_quantize_writer", dir, sizeof dir);
    Err e = {{0}};
    // ggw_add_f32 with a quantized type: the bytes of ggq_quantize_rows, read back in place
    float x[3 * 64];
    make_rows(x, 3, 64, 5);
    GgufWriter *w = ggw_new(&e);
    int64_t ne[2] = {64, 3}, bad[2] = {48, 2};
    float inf_row[64] = {INFINITY};
    int rc = ggw_add_f32(w, "a", GGML_Q4_0, 2, ne, x, &e);
    int rc_bad = ggw_add_f32(w, "b", GGML_Q8_0, 2, bad, x, &e);
    int rc_inf = ggw_add_f32(w, "c", GGML_Q8_0, 1, ne, inf_row, &e);
    int rc_k = ggw_add_f32(w, "d", GGML_Q4_K, 1, (int64_t[]){256}, x, &e);
    if (!rc) rc = ggw_add_f32(w, "e", GGML_Q5_1, 2, ne, x, &e);
    if (!rc) rc = ggw_save(w, path_join(path, sizeof path, dir, "q.gguf"), &e);
    ggw_free(w);
    CHECK("ggw_add_f32: rows not whole blocks, a non-finite scale and Q4_K are refused", rc_bad && rc_inf && rc_k,
          "%d %d %d", rc_bad, rc_inf, rc_k);
    Gguf *g = rc ? NULL : gguf_open(path, &e);
    const GgufTensor *a = g ? gguf_find_tensor(g, "a") : NULL, *b5 = g ? gguf_find_tensor(g, "e") : NULL;
    uint8_t want[3 * 64];
    ggq_quantize_rows(GGQ_Q4_0, x, 3, 64, want);
    int ok = a && b5 && gguf_tensor_count(g) == 2 && a->type == GGML_Q4_0 && a->nbytes == ggq_bytes_for(GGQ_Q4_0, 3, 64) &&
             !memcmp(a->data, want, a->nbytes) && b5->type == GGML_Q5_1 && a->ne[0] == 64 && a->ne[1] == 3;
    CHECK("ggw_add_f32 Q4_0 / Q5_1: written as quantized, read back as the same bytes", ok, "%s", e.msg);
    gguf_close(g);

    // model_save_gguf: per-tensor types (llama.cpp's choices with Q8_0 for Q6_K), file_type
    ModelConfig c;
    model_config_default(&c, 64, 96, 2, 4, 2, 256, 64);  // ffn 96: rows of ffn_down are 3 blocks
    ModelConfig c2 = c;
    c2.hidden_dim = 80;  // ffn_down rows of 80: not whole blocks -> F16
    c2.tied_embeddings = 1;
    struct { const ModelConfig *c; GgmlType t; const char *file; } cases[] = {
        {&c, GGML_Q4_0, "q4_0.gguf"}, {&c2, GGML_Q5_0, "q5_0_tied.gguf"}, {&c, GGML_Q8_0, "q8_0.gguf"}};
    for (int k = 0; k < 3; k++) {
        GgufModelWriter o = {.type = cases[k].t, .tensor = ramp_tensor};
        rc = model_save_gguf(cases[k].c, &o, path_join(path, sizeof path, dir, cases[k].file), &e);
        g = rc ? NULL : gguf_open(path, &e);
        uint32_t ft = 99, qv = 0;
        if (g) gguf_get_u32(g, "general.file_type", &ft), gguf_get_u32(g, "general.quantization_version", &qv);
        const GgufTensor *emb = g ? gguf_find_tensor(g, "token_embd.weight") : NULL;
        const GgufTensor *out = g ? gguf_find_tensor(g, "output.weight") : NULL;
        const GgufTensor *down = g ? gguf_find_tensor(g, "blk.1.ffn_down.weight") : NULL;
        const GgufTensor *q = g ? gguf_find_tensor(g, "blk.0.attn_q.weight") : NULL;
        const GgufTensor *norm = g ? gguf_find_tensor(g, "blk.0.attn_norm.weight") : NULL;
        int tied = cases[k].c->tied_embeddings;
        GgmlType quant = cases[k].t, head = GGML_Q8_0;
        ok = g && emb && q && down && norm && (tied ? !out : out && out->type == head) &&
             emb->type == (tied ? head : quant) && q->type == quant && norm->type == GGML_F32 &&
             down->type == (tied ? GGML_F16 : quant) && o.n_f16 == (tied ? 2 : 0) && qv == 2 &&
             ft == (quant == GGML_Q4_0 ? 2u : quant == GGML_Q5_0 ? 8u : 7u);
        char name[200];
        snprintf(name, sizeof name, "model_save_gguf %s%s: matrices %s, output in Q8_0, norms F32%s, file_type",
                 ggq_type_name((int)quant), tied ? " tied" : "", ggq_type_name((int)quant),
                 tied ? ", ffn_down (rows of 80) F16" : "");
        CHECK(name, ok, "%s; types emb %d out %d q %d down %d norm %d; n_f16 %d; file_type %u", e.msg,
              emb ? (int)emb->type : -1, out ? (int)out->type : -1, q ? (int)q->type : -1,
              down ? (int)down->type : -1, norm ? (int)norm->type : -1, o.n_f16, ft);
        gguf_close(g);
    }
    CHECK("gguf_matrix_type: Q8_0 kept for the output; F32/F16/BF16 as asked",
          gguf_matrix_type(GGML_Q8_0, GS_HEAD, 0, 64) == GGML_Q8_0 && gguf_matrix_type(GGML_F16, GS_HEAD, 0, 70) == GGML_F16 &&
              gguf_matrix_type(GGML_Q4_1, GS_EMB, 0, 64) == GGML_Q4_1 && gguf_matrix_type(GGML_Q4_1, GS_EMB, 1, 64) == GGML_Q8_0 &&
              gguf_matrix_type(GGML_Q8_0, LT_DOWN, 0, 80) == GGML_F16,
          "policy differs");

    // a quantized model loads and its weights are the dequantized quantization of the source
    GgufModelWriter o = {.type = GGML_Q4_1, .tensor = ramp_tensor};
    rc = model_save_gguf(&c, &o, path_join(path, sizeof path, dir, "load.gguf"), &e);
    Model *m = rc ? NULL : model_load(path, &e);
    ok = m != NULL;
    if (m) {
        const Weight *wq = &m->layers[1].w[LT_GATE];
        int64_t R = wq->rows, C = wq->cols;
        float *src = malloc(sizeof(float) * R * C), *got = malloc(sizeof(float) * C), *deq = malloc(sizeof(float) * R * C);
        uint8_t *qb = malloc(ggq_bytes_for(GGQ_Q4_1, R, C));
        ramp_tensor(NULL, 1, LT_GATE, R, C, src, &e);
        ggq_quantize_rows(GGQ_Q4_1, src, R, C, qb);
        GgqMatrix gm;
        ok = !ggq_init(&gm, GGQ_Q4_1, R, C, qb, ggq_bytes_for(GGQ_Q4_1, R, C), "g", &e);
        if (ok) ggq_dequant_rows(&gm, 0, R, deq);
        for (int64_t r = 0; r < R && ok; r++) {
            weight_row_f32(wq, r, got);
            ok = !memcmp(got, deq + r * C, sizeof(float) * C);
        }
        free(src), free(got), free(deq), free(qb);
        model_free(m);
    }
    CHECK("a Q4_1 GGUF from model_save_gguf loads: ffn_gate rows == dequant(quantize(source))", ok, "%s", e.msg);
}

int main(void) {
    test_hand_blocks();
    test_bounds_and_determinism();
    test_python_reference();
    test_writer();
    return tu_failed ? 1 : 0;
}
