// Model file I/O: safetensors and GGUF readers/writers (round trips, malformed files, an
// independent Python reader of what we write), model loading from HF dirs / GGUF / llama2.c
// (files written by tests/ref_write_hf.py and the real stories260K), the RoPE permutation
// against op_rope, model_save_hf / model_write_random, and PEFT adapter save/load.
#include <json-c/json.h>
#include <stdint.h>
#include <unistd.h>

#include "tests/testutil.h"
#include "model/model.h"
#include "export/export.h"

static char tmp[512];

static const char *tpath(const char *name) {
    static char buf[4][1024];
    static int k = 0;
    k = (k + 1) % 4;
    return path_join(buf[k], sizeof buf[k], tmp, name);
}

static void put_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n)) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fclose(f);
}

static void fill(float *x, int64_t n, uint64_t seed, float scale) {
    Rng r;
    rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) x[i] = scale * rng_normal(&r);
}

// Runs the independent Python reader on a file we wrote; NULL when it fails.
static json_object *py_read(const char *path) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_write_hf.py read '%s' > '%s.json'", path, path);
    if (system(cmd) != 0) return NULL;
    snprintf(cmd, sizeof cmd, "%s.json", path);
    return json_object_from_file(cmd);
}

// Python's values of tensor name equal want exactly (n values)?
static int py_values_equal(json_object *doc, const char *name, const float *want, int64_t n) {
    json_object *ts, *t, *vals;
    if (!json_object_object_get_ex(doc, "tensors", &ts) || !json_object_object_get_ex(ts, name, &t) ||
        !json_object_object_get_ex(t, "values", &vals) || (int64_t)json_object_array_length(vals) != n)
        return 0;
    for (int64_t i = 0; i < n; i++)
        if ((float)json_object_get_double(json_object_array_get_idx(vals, (size_t)i)) != want[i]) return 0;
    return 1;
}

// Opens path with a reader: -1 when it fails cleanly, else the largest tensor's byte count.
typedef long long (*OpenProbe)(const char *path);

static long long probe_st(const char *path) {
    Err e;
    SafeTensors *s = st_open(path, &e);
    if (!s) return -1;
    long long mx = 0;
    for (int i = 0; i < st_count(s); i++) mx = fmax(mx, (double)st_at(s, i)->nbytes);
    st_close(s);
    return mx;
}

static long long probe_gguf(const char *path) {
    Err e;
    Gguf *g = gguf_open(path, &e);
    if (!g) return -1;
    long long mx = 0;
    for (int i = 0; i < gguf_tensor_count(g); i++) mx = fmax(mx, (double)gguf_tensor_at(g, i)->nbytes);
    gguf_close(g);
    return mx;
}

// A valid file raw (len bytes): every shorter prefix must be rejected, and random changes to
// its first span bytes (the header) may be rejected or accepted but must never crash or
// yield a tensor larger than the file.
static void abuse_file(const char *tag, const uint8_t *raw, size_t len, size_t span, int iters,
                       uint64_t seed, OpenProbe probe) {
    char name[64], path[64];
    snprintf(path, sizeof path, "bad.%s", tag);
    const char *p = tpath(path);
    long long bad_at = -1;
    for (size_t n = 0; n < len && bad_at < 0; n++) {
        put_file(p, raw, n);
        if (probe(p) >= 0) bad_at = (long long)n;
    }
    snprintf(name, sizeof name, "%s_every_truncation_rejected", tag);
    CHECK(name, bad_at < 0, "prefix of %lld bytes opened", bad_at);
    Rng r;
    rng_seed(&r, seed);
    int opened = 0, inside = 1;
    uint8_t *mut = malloc(len);
    for (int it = 0; it < iters; it++) {
        memcpy(mut, raw, len);
        int flips = 1 + (int)rng_below(&r, 3);
        for (int k = 0; k < flips; k++) mut[rng_below(&r, (uint32_t)span)] = (uint8_t)rng_below(&r, 256);
        put_file(p, mut, len);
        long long mx = probe(p);
        opened += mx >= 0;
        inside &= mx <= (long long)len;
    }
    free(mut);
    snprintf(name, sizeof name, "%s_corruption_fuzz", tag);
    CHECK(name, inside, "a tensor larger than the file was accepted (%d of %d opened)", opened, iters);
}

// A writer holding every tensor of the safetensors file src as dtype; with insert != NULL,
// names get insert placed before their ".weight" (PEFT's ".default" adapter name).
static StWriter *copy_tensors(const char *src, StDtype dtype, const char *insert) {
    Err e = {{0}};
    SafeTensors *st = st_open(src, &e);
    StWriter *w = stw_new(&e);
    for (int i = 0; st && i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        char name[300];
        snprintf(name, sizeof name, "%s", t->name);
        char *dot = insert ? strstr(name, ".weight") : NULL;
        if (dot) snprintf(dot, sizeof name - (size_t)(dot - name), "%s.weight", insert);
        float *buf = malloc((size_t)t->n * 4);
        st_read_f32(st, t->name, buf, 0, NULL, &e);
        stw_add_f32(w, name, dtype, t->ndim, t->shape, buf, &e);
        free(buf);
    }
    st_close(st);
    return w;
}

// ---- safetensors --------------------------------------------------------------------------

static void test_safetensors_roundtrip(void) {
    float a[6], b[24], c[5];
    fill(a, 6, 1, 1.0f);
    fill(b, 24, 2, 3.0f);
    fill(c, 5, 3, 100.0f);
    c[4] = 1e-6f;  // f16 subnormal range
    int64_t sa[2] = {2, 3}, sb[3] = {2, 3, 4}, sc[1] = {5};
    Err e = {{0}};
    StWriter *w = stw_new(&e);
    int rc = stw_add_f32(w, "a.f32", ST_F32, 2, sa, a, &e) || stw_add_f32(w, "b/f16", ST_F16, 3, sb, b, &e) ||
             stw_add_f32(w, "c_bf16", ST_BF16, 1, sc, c, &e) ||
             stw_add_metadata(w, "format", "pt", &e) || stw_add_metadata(w, "note", "a \"quoted\" / value", &e);
    CHECK("st_write_add", rc == 0, "%s", e.msg);
    CHECK("st_write_duplicate_rejected", stw_add_f32(w, "a.f32", ST_F32, 2, sa, a, &e) != 0, "accepted");
    CHECK("st_write_bad_dtype_rejected", stw_add_f32(w, "x", ST_I32, 1, sc, c, &e) != 0, "accepted");
    const char *path = tpath("rt.safetensors");
    CHECK("st_write_save", stw_save(w, path, &e) == 0, "%s", e.msg);
    stw_free(w);

    // header length is a multiple of 8 and the temporary file is gone
    size_t len;
    char *raw = read_file(path, &len, &e);
    uint64_t hl = 0;
    if (raw) memcpy(&hl, raw, 8);
    CHECK("st_header_padded", raw && hl % 8 == 0 && raw[8] == '{' && raw[8 + hl - 1] != 0,
          "header length %llu", (unsigned long long)hl);
    free(raw);
    char tmpname[1200];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%d", path, (int)getpid());
    CHECK("st_atomic_no_tmp_left", !file_exists(tmpname), "%s exists", tmpname);

    SafeTensors *st = st_open(path, &e);
    CHECK("st_open_roundtrip", st != NULL, "%s", e.msg);
    if (!st) return;
    CHECK("st_count", st_count(st) == 3, "%d", st_count(st));
    const StTensor *tb = st_find(st, "b/f16");
    CHECK("st_find_shape_dtype",
          tb && tb->dtype == ST_F16 && tb->ndim == 3 && tb->shape[0] == 2 && tb->shape[2] == 4 &&
              tb->n == 24 && tb->nbytes == 48,
          "bad tensor info");
    CHECK("st_find_absent", st_find(st, "nope") == NULL, "found");
    const char *m1 = st_metadata(st, "format"), *m2 = st_metadata(st, "note");
    CHECK("st_metadata", m1 && !strcmp(m1, "pt") && m2 && !strcmp(m2, "a \"quoted\" / value") &&
                             !st_metadata(st, "zzz"),
          "metadata %s / %s", m1 ? m1 : "NULL", m2 ? m2 : "NULL");
    float ra[6], rb[24], rc5[5];
    int ok = st_read_f32(st, "a.f32", ra, 2, sa, &e) == 0 && st_read_f32(st, "b/f16", rb, 3, sb, &e) == 0 &&
             st_read_f32(st, "c_bf16", rc5, 1, sc, &e) == 0;
    CHECK("st_read_f32", ok, "%s", e.msg);
    int same = 1;
    for (int i = 0; i < 6; i++) same &= ra[i] == a[i];
    CHECK("st_roundtrip_f32_exact", same, "values differ");
    same = 1;
    double maxrel = 0;
    for (int i = 0; i < 24; i++) {
        same &= rb[i] == f16_to_f32(f32_to_f16(b[i]));
        maxrel = tu_worse(maxrel, fabs(rb[i] - b[i]) / fabs(b[i]));
    }
    CHECK("st_roundtrip_f16", same && maxrel < 1e-3, "max rel %.3g", maxrel);
    same = 1;
    maxrel = 0;
    for (int i = 0; i < 5; i++) {
        same &= rc5[i] == bf16_to_f32(f32_to_bf16(c[i]));
        maxrel = tu_worse(maxrel, fabs(rc5[i] - c[i]) / fabs(c[i]));
    }
    CHECK("st_roundtrip_bf16", same && maxrel < 8e-3, "max rel %.3g", maxrel);
    int64_t wrong[2] = {3, 2};
    e.msg[0] = 0;
    rc = st_read_f32(st, "a.f32", ra, 2, wrong, &e);
    CHECK("st_read_wrong_shape", rc != 0 && strstr(e.msg, "a.f32") && strstr(e.msg, "[2, 3]") &&
                                     strstr(e.msg, "[3, 2]") && strstr(e.msg, path),
          "%s", e.msg);
    rc = st_read_f32(st, "missing.weight", ra, 0, NULL, &e);
    CHECK("st_read_missing", rc != 0 && strstr(e.msg, "missing.weight"), "%s", e.msg);
    st_close(st);

    // the independent reader sees the same values
    json_object *doc = py_read(path);
    float eb[24], ec[5];
    for (int i = 0; i < 24; i++) eb[i] = f16_to_f32(f32_to_f16(b[i]));
    for (int i = 0; i < 5; i++) ec[i] = bf16_to_f32(f32_to_bf16(c[i]));
    json_object *meta = NULL, *fmt = NULL;
    if (doc) json_object_object_get_ex(doc, "meta", &meta);
    if (meta) json_object_object_get_ex(meta, "format", &fmt);
    CHECK("st_python_reads_ours",
          doc && py_values_equal(doc, "a.f32", a, 6) && py_values_equal(doc, "b/f16", eb, 24) &&
              py_values_equal(doc, "c_bf16", ec, 5) && fmt && !strcmp(json_object_get_string(fmt), "pt"),
          "python reader disagrees (or failed)");
    json_object_put(doc);
}

// A hand-made safetensors file: header text (length field = hlen_field unless 0) + data.
static void st_bytes(const char *path, const char *header, uint64_t hlen_field, size_t data_bytes) {
    size_t hl = strlen(header);
    uint64_t field = hlen_field ? hlen_field : hl;
    size_t n = 8 + hl + data_bytes;
    uint8_t *buf = calloc(1, n);
    memcpy(buf, &field, 8);
    memcpy(buf + 8, header, hl);
    put_file(path, buf, n);
    free(buf);
}

static void expect_st_error(const char *name, const char *must) {
    Err e = {{0}};
    const char *path = tpath("bad.safetensors");
    SafeTensors *st = st_open(path, &e);
    CHECK(name, st == NULL && strstr(e.msg, path) && (!must || strstr(e.msg, must)), "%s",
          st ? "opened a bad file" : e.msg);
    st_close(st);
}

static void test_safetensors_malformed(void) {
    const char *p = tpath("bad.safetensors");
    put_file(p, "", 0);
    expect_st_error("st_bad_empty", "empty");
    put_file(p, "\x10\0\0", 3);
    expect_st_error("st_bad_short", NULL);
    static const struct {
        const char *name, *header;
        uint64_t hlen_field;  // 0: the header's real length
        size_t data_bytes;
        const char *must;     // text the error must contain (besides the path)
    } cases[] = {
        {"st_bad_header_len_huge", "{}", (uint64_t)1 << 40, 0, "header length"},
        {"st_bad_header_len_past_end", "{}", 1000, 16, "header length"},
        {"st_bad_json_unterminated", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]", 0, 16, "JSON"},
        {"st_bad_not_object", "[1, 2, 3]", 0, 0, NULL},
        {"st_bad_offsets_past_end", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}}", 0, 8, "w"},
        {"st_bad_offsets_vs_shape", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 12]}}", 0, 16, "w"},
        {"st_bad_offsets_reversed", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", 0, 16, "w"},
        {"st_bad_negative_dim", "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 0, 16, "w"},
        {"st_bad_dtype", "{\"w\": {\"dtype\": \"Q9\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 0, 16, "Q9"},
        {"st_bad_missing_field", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 0, 16, "w"},
        {"st_bad_shape_overflow", "{\"big\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 4]}}", 0, 4, "big"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_bytes(p, cases[i].header, cases[i].hlen_field, cases[i].data_bytes);
        expect_st_error(cases[i].name, cases[i].must);
    }
    // a well-formed tiny file opens, proving the cases above fail for the reason named
    st_bytes(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}}  ", 0, 16);
    Err e = {{0}};
    SafeTensors *st = st_open(p, &e);
    CHECK("st_hand_made_good_opens", st && st_count(st) == 1, "%s", e.msg);
    st_close(st);
    // integer tensors (I32, I64, U8) read as fp32, data at unaligned offsets
    const char *hi = "{\"i\": {\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [1, 9]}, "
                     "\"l\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [9, 17]}, "
                     "\"u\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}";
    uint8_t data[17] = {250};
    int32_t iv[2] = {-7, 123456};
    int64_t lv = -((int64_t)1 << 33);
    memcpy(data + 1, iv, 8);
    memcpy(data + 9, &lv, 8);
    size_t hl = strlen(hi);
    uint8_t *buf = malloc(8 + hl + 17);
    uint64_t hl64 = hl;
    memcpy(buf, &hl64, 8);
    memcpy(buf + 8, hi, hl);
    memcpy(buf + 8 + hl, data, 17);
    put_file(p, buf, 8 + hl + 17);
    free(buf);
    st = st_open(p, &e);
    float fi[2] = {0}, fl = 0, fu = 0;
    int ok = st && st_read_f32(st, "i", fi, 0, NULL, &e) == 0 && st_read_f32(st, "l", &fl, 0, NULL, &e) == 0 &&
             st_read_f32(st, "u", &fu, 0, NULL, &e) == 0;
    CHECK("st_int_dtypes", ok && fi[0] == -7.0f && fi[1] == 123456.0f && fl == -8589934592.0f && fu == 250.0f &&
                               st_find(st, "i")->dtype == ST_I32,
          "%s %g %g %g %g", e.msg, fi[0], fi[1], fl, fu);
    st_close(st);

    const char *good = tpath("rt.safetensors");
    size_t len;
    char *raw = read_file(good, &len, &e);
    uint64_t hdr = 0;
    if (raw) memcpy(&hdr, raw, 8);
    if (raw) abuse_file("st", (const uint8_t *)raw, len, (size_t)(8 + hdr), 1500, 7, probe_st);
    free(raw);
}

// ---- GGUF ---------------------------------------------------------------------------------

typedef struct {
    uint8_t *p;
    size_t n, cap;
} Bytes;

static void bput(Bytes *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void bu32(Bytes *b, uint32_t v) { bput(b, &v, 4); }
static void bu64(Bytes *b, uint64_t v) { bput(b, &v, 8); }
static void bstr(Bytes *b, const char *s) {
    bu64(b, strlen(s));
    bput(b, s, strlen(s));
}
static void bkey(Bytes *b, const char *k, uint32_t type) {
    bstr(b, k);
    bu32(b, type);
}
static void bpad(Bytes *b, size_t a) {
    static const uint8_t z[64];
    bput(b, z, (a - b->n % a) % a);
}

// A GGUF v3 file by hand with metadata of every type (nested arrays too), alignment 64 and
// tensors F32 (4,2), F16 (8), Q4_0 (64,2) and BF16 (3).
static Bytes handmade_gguf(float *w8, uint16_t *h8, uint16_t *b3) {
    Bytes b = {0};
    bput(&b, "GGUF", 4);
    bu32(&b, 3);
    bu64(&b, 4);   // tensors
    bu64(&b, 17);  // kv
    uint8_t u8 = 200; int8_t i8 = -5; uint16_t u16 = 60000; int16_t i16 = -300; int32_t i32 = -7;
    float f = 1.5f; uint8_t yes = 1; int64_t i64 = -((int64_t)1 << 40); double f64 = 2.25;
    bkey(&b, "t.u8", GGUF_U8); bput(&b, &u8, 1);
    bkey(&b, "t.i8", GGUF_I8); bput(&b, &i8, 1);
    bkey(&b, "t.u16", GGUF_U16); bput(&b, &u16, 2);
    bkey(&b, "t.i16", GGUF_I16); bput(&b, &i16, 2);
    bkey(&b, "t.u32", GGUF_U32); bu32(&b, 4000000000u);
    bkey(&b, "t.i32", GGUF_I32); bput(&b, &i32, 4);
    bkey(&b, "t.f32", GGUF_F32); bput(&b, &f, 4);
    bkey(&b, "t.bool", GGUF_BOOL); bput(&b, &yes, 1);
    bkey(&b, "t.str", GGUF_STRING); bstr(&b, "h\xc3\xa9llo");
    bkey(&b, "t.nested", GGUF_ARRAY); bu32(&b, GGUF_ARRAY); bu64(&b, 2);
    for (int k = 0; k < 2; k++) { bu32(&b, GGUF_STRING); bu64(&b, 2); bstr(&b, "x"); bstr(&b, "yy"); }
    bkey(&b, "t.u64", GGUF_U64); bu64(&b, (uint64_t)1 << 40);
    bkey(&b, "t.i64", GGUF_I64); bput(&b, &i64, 8);
    bkey(&b, "t.f64", GGUF_F64); bput(&b, &f64, 8);
    bkey(&b, "t.arr_u8", GGUF_ARRAY); bu32(&b, GGUF_U8); bu64(&b, 3); bput(&b, "\x01\x02\xff", 3);
    bkey(&b, "t.arr_str", GGUF_ARRAY); bu32(&b, GGUF_STRING); bu64(&b, 3);
    bstr(&b, "a"); bstr(&b, ""); bstr(&b, "ccc");
    bkey(&b, "t.arr_i16", GGUF_ARRAY); bu32(&b, GGUF_I16); bu64(&b, 2);
    int16_t ai[2] = {-2, 7}; bput(&b, ai, 4);
    bkey(&b, "general.alignment", GGUF_U32); bu32(&b, 64);
    const char *names[4] = {"w", "h", "q", "b"};
    int nd[4] = {2, 1, 2, 1};
    uint64_t ne[4][2] = {{4, 2}, {8, 0}, {64, 2}, {3, 0}};
    uint32_t types[4] = {GGML_F32, GGML_F16, GGML_Q4_0, GGML_BF16};
    uint64_t offs[4] = {0, 64, 128, 256};  // sizes 32, 16, 72, 6 -> aligned to 64
    for (int i = 0; i < 4; i++) {
        bstr(&b, names[i]);
        bu32(&b, (uint32_t)nd[i]);
        for (int d = 0; d < nd[i]; d++) bu64(&b, ne[i][d]);
        bu32(&b, types[i]);
        bu64(&b, offs[i]);
    }
    bpad(&b, 64);
    size_t start = b.n;
    uint8_t zeros[512] = {0};
    bput(&b, zeros, 262);  // through the end of the last tensor (256 + 6)
    for (int i = 0; i < 8; i++) w8[i] = (float)i * 0.5f - 1.0f;
    for (int i = 0; i < 8; i++) h8[i] = f32_to_f16((float)i - 3.25f);
    for (int i = 0; i < 3; i++) b3[i] = f32_to_bf16((float)i * 1.75f + 0.125f);
    memcpy(b.p + start + 0, w8, 32);
    memcpy(b.p + start + 64, h8, 16);
    for (int i = 0; i < 72; i++) b.p[start + 128 + i] = (uint8_t)i;
    memcpy(b.p + start + 256, b3, 6);
    return b;
}

static void test_gguf_handmade(void) {
    float w8[8];
    uint16_t h8[8], b3[3];
    Bytes b = handmade_gguf(w8, h8, b3);
    const char *path = tpath("hand.gguf");
    put_file(path, b.p, b.n);
    Err e = {{0}};
    Gguf *g = gguf_open(path, &e);
    CHECK("gguf_hand_open", g != NULL, "%s", e.msg);
    if (!g) {
        free(b.p);
        return;
    }
    uint32_t u = 0;
    float f = 0;
    CHECK("gguf_u8", gguf_get_u32(g, "t.u8", &u) == 0 && u == 200, "%u", u);
    CHECK("gguf_u16", gguf_get_u32(g, "t.u16", &u) == 0 && u == 60000, "%u", u);
    CHECK("gguf_u32", gguf_get_u32(g, "t.u32", &u) == 0 && u == 4000000000u, "%u", u);
    CHECK("gguf_negative_not_u32", gguf_get_u32(g, "t.i8", &u) != 0 && gguf_get_u32(g, "t.i16", &u) != 0 &&
                                       gguf_get_u32(g, "t.i32", &u) != 0 && gguf_get_u32(g, "t.i64", &u) != 0,
          "negative accepted");
    CHECK("gguf_u64_too_big_for_u32", gguf_get_u32(g, "t.u64", &u) != 0, "accepted");
    CHECK("gguf_alignment_key", gguf_get_u32(g, "general.alignment", &u) == 0 && u == 64, "%u", u);
    CHECK("gguf_f32", gguf_get_f32(g, "t.f32", &f) == 0 && f == 1.5f, "%g", f);
    CHECK("gguf_f64", gguf_get_f32(g, "t.f64", &f) == 0 && f == 2.25f, "%g", f);
    CHECK("gguf_wrong_type", gguf_get_f32(g, "t.u32", &f) != 0 && gguf_get_str(g, "t.u32") == NULL &&
                                 gguf_get_u32(g, "t.str", &u) != 0 && gguf_get_u32(g, "nope", &u) != 0,
          "type confusion");
    int bv = -1;
    CHECK("gguf_bool", gguf_get_bool(g, "t.bool", &bv) == 0 && bv == 1 && gguf_get_bool(g, "t.u8", &bv) != 0,
          "%d", bv);
    int seen_bool = 0;
    for (uint64_t i = 0; i < gguf_kv_count(g); i++) {
        GgufValueType kt;
        const char *k = gguf_kv_key(g, i, &kt);
        if (k && !strcmp(k, "t.bool") && kt == GGUF_BOOL) seen_bool = 1;
    }
    CHECK("gguf_kv_iterate", seen_bool && gguf_kv_key(g, gguf_kv_count(g), NULL) == NULL, "t.bool not listed");
    const char *s = gguf_get_str(g, "t.str");
    CHECK("gguf_str", s && !strcmp(s, "h\xc3\xa9llo"), "%s", s ? s : "NULL");
    GgufValueType et;
    uint64_t cnt = 0;
    CHECK("gguf_arr_str", gguf_get_arr(g, "t.arr_str", &et, &cnt) == 0 && et == GGUF_STRING && cnt == 3 &&
                              !strcmp(gguf_arr_str(g, "t.arr_str", 0), "a") &&
                              !strcmp(gguf_arr_str(g, "t.arr_str", 1), "") &&
                              !strcmp(gguf_arr_str(g, "t.arr_str", 2), "ccc") &&
                              gguf_arr_str(g, "t.arr_str", 3) == NULL,
          "bad string array");
    CHECK("gguf_arr_u8", gguf_get_arr(g, "t.arr_u8", &et, &cnt) == 0 && et == GGUF_U8 && cnt == 3 &&
                             gguf_arr_num(g, "t.arr_u8", 2) == 255.0 && isnan(gguf_arr_num(g, "t.arr_u8", 3)),
          "bad u8 array");
    CHECK("gguf_arr_i16", gguf_arr_num(g, "t.arr_i16", 0) == -2.0 && gguf_arr_num(g, "t.arr_i16", 1) == 7.0,
          "bad i16 array");
    CHECK("gguf_arr_nested", gguf_get_arr(g, "t.nested", &et, &cnt) == 0 && et == GGUF_ARRAY && cnt == 2 &&
                                 isnan(gguf_arr_num(g, "t.nested", 0)),
          "bad nested array");
    CHECK("gguf_tensor_count", gguf_tensor_count(g) == 4, "%d", gguf_tensor_count(g));
    const GgufTensor *tw = gguf_find_tensor(g, "w"), *tq = gguf_find_tensor(g, "q"),
                     *tb = gguf_find_tensor(g, "b");
    CHECK("gguf_tensor_info", tw && tw->n_dims == 2 && tw->ne[0] == 4 && tw->ne[1] == 2 && tw->n == 8 &&
                                  tq && tq->type == GGML_Q4_0 && tq->n == 128 && tq->nbytes == 72 &&
                                  tb && tb->type == GGML_BF16 && tb->nbytes == 6,
          "bad infos");
    CHECK("gguf_tensor_alignment_64",
          tw && tq && ((const uint8_t *)tq->data - (const uint8_t *)tw->data) == 128 &&
              ((const uint8_t *)tq->data)[5] == 5,
          "data offsets wrong");
    float out[8];
    int ok = gguf_read_f32(g, "w", out, 8, &e) == 0;
    for (int i = 0; ok && i < 8; i++) ok = out[i] == w8[i];
    CHECK("gguf_read_f32", ok, "%s", e.msg);
    ok = gguf_read_f32(g, "h", out, 8, &e) == 0;
    for (int i = 0; ok && i < 8; i++) ok = out[i] == (float)i - 3.25f;
    CHECK("gguf_read_f16", ok, "%s", e.msg);
    ok = gguf_read_f32(g, "b", out, 3, &e) == 0;
    for (int i = 0; ok && i < 3; i++) ok = out[i] == bf16_to_f32(b3[i]);
    CHECK("gguf_read_bf16", ok, "%s", e.msg);
    float big[128];
    int rc = gguf_read_f32(g, "q", big, 128, &e);
    CHECK("gguf_read_quant_unsupported", rc != 0 && strstr(e.msg, "unsupported tensor type Q4_0") &&
                                             strstr(e.msg, " q"),
          "%s", e.msg);
    rc = gguf_read_f32(g, "w", out, 7, &e);
    CHECK("gguf_read_wrong_count", rc != 0 && strstr(e.msg, "w") && strstr(e.msg, "8"), "%s", e.msg);
    gguf_close(g);

    abuse_file("gguf", b.p, b.n, b.n - 262, 3000, 11, probe_gguf);
    const char *p = tpath("bad.gguf");
    // specific errors
    memcpy(b.p, "GGUX", 4);
    put_file(p, b.p, b.n);
    CHECK("gguf_bad_magic", gguf_open(p, &e) == NULL && strstr(e.msg, "magic") && strstr(e.msg, p), "%s", e.msg);
    memcpy(b.p, "GGUF", 4);
    uint32_t v1 = 1;
    memcpy(b.p + 4, &v1, 4);
    put_file(p, b.p, b.n);
    CHECK("gguf_bad_version", gguf_open(p, &e) == NULL && strstr(e.msg, "version"), "%s", e.msg);
    free(b.p);
}

static void test_gguf_writer(void) {
    Err e = {{0}};
    GgufWriter *w = ggw_new(&e);
    const char *strs[3] = {"<unk>", "", "\xe2\x96\x81the"};
    float fa[4] = {0.5f, -1.25f, 3e-8f, 1e30f};
    int32_t ia[3] = {-1, 0, 2147483647};
    float t1[6], t2[5], t3[8];
    fill(t1, 6, 21, 1.0f);
    fill(t2, 5, 22, 10.0f);
    fill(t3, 8, 23, 0.01f);
    int64_t ne1[2] = {3, 2}, ne2[1] = {5}, ne3[3] = {2, 2, 2};
    int rc = ggw_set_str(w, "general.architecture", "llama", &e) || ggw_set_u32(w, "x.u32", 7, &e) ||
             ggw_set_u32(w, "x.u32", 4294967295u, &e) ||  // replaces
             ggw_set_f32(w, "x.f32", 1e-5f, &e) || ggw_set_bool(w, "x.b", 1, &e) || ggw_set_arr_str(w, "x.strs", strs, 3, &e) ||
             ggw_set_arr_f32(w, "x.fa", fa, 4, &e) || ggw_set_arr_i32(w, "x.ia", ia, 3, &e) ||
             ggw_add_f32(w, "t.f32", GGML_F32, 2, ne1, t1, &e) || ggw_add_f32(w, "t.f16", GGML_F16, 1, ne2, t2, &e) ||
             ggw_add_f32(w, "t.bf16", GGML_BF16, 3, ne3, t3, &e);
    CHECK("ggw_build", rc == 0, "%s", e.msg);
    CHECK("ggw_rejects_quant", ggw_add_f32(w, "t.q", GGML_Q8_0, 1, ne2, t2, &e) != 0, "accepted");
    const char *path = tpath("w.gguf");
    CHECK("ggw_save", ggw_save(w, path, &e) == 0, "%s", e.msg);
    ggw_free(w);
    Gguf *g = gguf_open(path, &e);
    CHECK("ggw_reopen", g != NULL, "%s", e.msg);
    if (!g) return;
    uint32_t u = 0;
    float f = 0;
    GgufValueType et;
    uint64_t n;
    const char *arch = gguf_get_str(g, "general.architecture");
    CHECK("ggw_str", arch && !strcmp(arch, "llama"), "bad");
    CHECK("ggw_u32_replaced", gguf_get_u32(g, "x.u32", &u) == 0 && u == 4294967295u, "%u", u);
    CHECK("ggw_f32", gguf_get_f32(g, "x.f32", &f) == 0 && f == 1e-5f, "%g", f);
    int bv = 0;
    CHECK("ggw_bool", gguf_get_bool(g, "x.b", &bv) == 0 && bv == 1, "%d", bv);
    CHECK("ggw_arr_str", gguf_get_arr(g, "x.strs", &et, &n) == 0 && et == GGUF_STRING && n == 3 &&
                             !strcmp(gguf_arr_str(g, "x.strs", 2), strs[2]) && !strcmp(gguf_arr_str(g, "x.strs", 1), ""),
          "bad");
    int ok = gguf_get_arr(g, "x.fa", &et, &n) == 0 && et == GGUF_F32 && n == 4;
    for (int i = 0; ok && i < 4; i++) ok = (float)gguf_arr_num(g, "x.fa", (uint64_t)i) == fa[i];
    CHECK("ggw_arr_f32", ok, "bad");
    ok = gguf_get_arr(g, "x.ia", &et, &n) == 0 && et == GGUF_I32 && n == 3;
    for (int i = 0; ok && i < 3; i++) ok = gguf_arr_num(g, "x.ia", (uint64_t)i) == (double)ia[i];
    CHECK("ggw_arr_i32", ok, "bad");
    const GgufTensor *a = gguf_find_tensor(g, "t.f32"), *b = gguf_find_tensor(g, "t.f16"),
                     *c = gguf_find_tensor(g, "t.bf16");
    CHECK("ggw_tensor_infos", a && b && c && a->n_dims == 2 && a->ne[0] == 3 && a->ne[1] == 2 &&
                                  b->type == GGML_F16 && c->type == GGML_BF16 && c->n_dims == 3 && c->n == 8,
          "bad infos");
    CHECK("ggw_data_aligned_32", a && b && c && ((const uint8_t *)b->data - (const uint8_t *)a->data) % 32 == 0 &&
                                     ((const uint8_t *)c->data - (const uint8_t *)a->data) % 32 == 0,
          "misaligned");
    float r1[6], r2[5], r3[8], e2[5], e3[8];
    ok = gguf_read_f32(g, "t.f32", r1, 6, &e) == 0 && gguf_read_f32(g, "t.f16", r2, 5, &e) == 0 &&
         gguf_read_f32(g, "t.bf16", r3, 8, &e) == 0;
    for (int i = 0; i < 5; i++) e2[i] = f16_to_f32(f32_to_f16(t2[i]));
    for (int i = 0; i < 8; i++) e3[i] = bf16_to_f32(f32_to_bf16(t3[i]));
    ok = ok && !memcmp(r1, t1, sizeof r1) && !memcmp(r2, e2, sizeof r2) && !memcmp(r3, e3, sizeof r3);
    CHECK("ggw_tensor_roundtrip", ok, "%s", e.msg);
    gguf_close(g);
    json_object *doc = py_read(path), *meta = NULL, *arch_j = NULL, *u32j = NULL;
    if (doc) json_object_object_get_ex(doc, "meta", &meta);
    if (meta) {
        json_object_object_get_ex(meta, "general.architecture", &arch_j);
        json_object_object_get_ex(meta, "x.u32", &u32j);
    }
    CHECK("ggw_python_reads_ours",
          doc && arch_j && !strcmp(json_object_get_string(arch_j), "llama") && u32j &&
              json_object_get_int64(u32j) == 4294967295LL && py_values_equal(doc, "t.f32", t1, 6) &&
              py_values_equal(doc, "t.f16", e2, 5) && py_values_equal(doc, "t.bf16", e3, 8),
          "python reader disagrees (or failed)");
    json_object_put(doc);
}

// ---- models -------------------------------------------------------------------------------

// All weights of m, fp32, in the order of ref_write_hf.py's expected.f32.
static float *model_flat(const Model *m, size_t *n) {
    const ModelConfig *c = &m->cfg;
    size_t total = (size_t)m->tok_emb->n + c->dim;
    for (int l = 0; l < c->n_layers; l++) {
        total += 2 * (size_t)c->dim;
        for (int t = 0; t < LT_COUNT; t++) total += (size_t)(m->layers[l].w[t].rows * m->layers[l].w[t].cols);
    }
    if (!c->tied_embeddings) total += (size_t)(m->lm_head.rows * m->lm_head.cols);
    float *out = malloc(total * sizeof(float)), *p = out;
    memcpy(p, m->tok_emb->data, (size_t)m->tok_emb->n * sizeof(float));
    p += m->tok_emb->n;
    for (int l = 0; l < c->n_layers; l++) {
        const Layer *L = &m->layers[l];
        memcpy(p, L->attn_norm->data, (size_t)c->dim * sizeof(float));
        p += c->dim;
        for (int t = 0; t < LT_COUNT; t++)
            for (int64_t r = 0; r < L->w[t].rows; r++, p += L->w[t].cols) weight_row_f32(&L->w[t], r, p);
        memcpy(p, L->ffn_norm->data, (size_t)c->dim * sizeof(float));
        p += c->dim;
    }
    memcpy(p, m->final_norm->data, (size_t)c->dim * sizeof(float));
    p += c->dim;
    for (int64_t r = 0; !c->tied_embeddings && r < m->lm_head.rows; r++, p += m->lm_head.cols)
        weight_row_f32(&m->lm_head, r, p);
    *n = total;
    return out;
}

static int same_shape_cfg(const ModelConfig *a, const ModelConfig *b) {
    return a->dim == b->dim && a->hidden_dim == b->hidden_dim && a->n_layers == b->n_layers &&
           a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim &&
           a->vocab_size == b->vocab_size && a->norm_eps == b->norm_eps && a->rope_theta == b->rope_theta;
}

// Bit-identical weights (and the same tying)?
static int same_weights(const Model *a, const Model *b, size_t *where) {
    size_t na, nb;
    float *fa = model_flat(a, &na), *fb = model_flat(b, &nb);
    int same = na == nb && a->cfg.tied_embeddings == b->cfg.tied_embeddings;
    *where = (size_t)-1;
    for (size_t i = 0; same && i < na; i++)
        if (memcmp(&fa[i], &fb[i], 4)) {
            same = 0;
            *where = i;
        }
    free(fa);
    free(fb);
    return same;
}

static void test_ref_files(void) {
    char out[600], cmd[800];
    snprintf(out, sizeof out, "%s/refhf", tmp);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_write_hf.py '%s'", out);
    if (system(cmd) != 0) {
        CHECK("ref_write_hf_runs", 0, "tests/ref_write_hf.py failed");
        return;
    }
    const char *variants[6] = {"f16_untied", "bf16_tied", "f16_headonly", "bf16_nohead", "gguf", "bin"};
    const char *files[6] = {"", "", "", "", "/model.gguf", "/model.bin"};
    const int tied[6] = {0, 1, 1, 1, 0, 0};
    Model *first = NULL;
    for (int v = 0; v < 6; v++) {
        char dir[700], path[800], exp_path[800], name[64];
        snprintf(dir, sizeof dir, "%s/%s", out, variants[v]);
        snprintf(path, sizeof path, "%s%s", dir, files[v]);
        snprintf(exp_path, sizeof exp_path, "%s/expected.f32", dir);
        Err e = {{0}};
        Model *m = model_load(path, &e);
        snprintf(name, sizeof name, "load_%s", variants[v]);
        CHECK(name, m != NULL, "%s", e.msg);
        if (!m) continue;
        const ModelConfig *c = &m->cfg;
        snprintf(name, sizeof name, "config_%s", variants[v]);
        CHECK(name, c->dim == 32 && c->hidden_dim == 40 && c->n_layers == 2 && c->n_heads == 4 &&
                        c->n_kv_heads == 2 && c->head_dim == 8 && c->vocab_size == 32 && c->max_seq_len == 64 &&
                        c->norm_eps == 1e-5f && c->rope_theta == 10000.0f && c->bos_id == 1 && c->eos_id == 2 &&
                        c->tied_embeddings == tied[v] &&
                        c->file_rope == (v >= 4 ? ROPE_ADJACENT : ROPE_HALF) && !strcmp(c->arch, "llama"),
              "dim %d hidden %d layers %d heads %d/%d hd %d vocab %d seq %d eps %g theta %g bos %d eos %d "
              "tied %d rope %d",
              c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size,
              c->max_seq_len, c->norm_eps, c->rope_theta, c->bos_id, c->eos_id, c->tied_embeddings,
              (int)c->file_rope);
        size_t elen, n;
        char *want = read_file(exp_path, &elen, &e);
        float *got = model_flat(m, &n);
        size_t bad = (size_t)-1;
        for (size_t i = 0; want && i < n && i < elen / 4; i++)
            if (memcmp(&got[i], want + 4 * i, 4)) {
                bad = i;
                break;
            }
        snprintf(name, sizeof name, "weights_%s", variants[v]);
        CHECK(name, want && elen == 4 * n && bad == (size_t)-1, "%zu values vs %zu expected, first mismatch %zd",
              n, want ? elen / 4 : 0, (ssize_t)bad);
        snprintf(name, sizeof name, "lm_head_%s_%s", tied[v] ? "shares_table" : "own_data", variants[v]);
        CHECK(name,
              c->tied_embeddings ? m->lm_head.data == m->tok_emb->data && !m->lm_head.owns_data
                                 : m->lm_head.data != m->tok_emb->data && m->lm_head.owns_data,
              "tying wrong");
        float fr = m->inv_freq[1];
        snprintf(name, sizeof name, "inv_freq_%s", variants[v]);
        CHECK(name, fabsf(m->inv_freq[0] - 1.0f) == 0 && fabsf(fr - 0.1f) < 1e-8f, "%g %g", m->inv_freq[0], fr);
        free(want);
        free(got);
        if (v == 4) {
            first = m;
            continue;
        }
        if (v == 5 && first) {
            size_t where;
            CHECK("gguf_and_bin_identical", same_shape_cfg(&first->cfg, c) && same_weights(first, m, &where),
                  "differ at %zd", (ssize_t)where);
        }
        model_free(m);
    }
    model_free(first);
}

// A HF dir split into two shards with model.safetensors.index.json loads the same values.
static void test_sharded(void) {
    char src[800], d[700], p[800], cmd[2400];
    snprintf(src, sizeof src, "%s/refhf/f16_untied/model.safetensors", tmp);
    snprintf(d, sizeof d, "%s/sharded", tmp);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp %s/refhf/f16_untied/config.json %s/", d, tmp, d);
    if (system(cmd) != 0) return;
    Err e = {{0}};
    SafeTensors *st = st_open(src, &e);
    if (!st) {
        CHECK("sharded_source", 0, "%s", e.msg);
        return;
    }
    StWriter *w[2] = {stw_new(&e), stw_new(&e)};
    json_object *map = json_object_new_object();
    const char *shard[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        float *buf = malloc((size_t)t->n * 4);
        st_read_f32(st, t->name, buf, 0, NULL, &e);
        stw_add_f32(w[i % 2], t->name, ST_F32, t->ndim, t->shape, buf, &e);
        json_object_object_add(map, t->name, json_object_new_string(shard[i % 2]));
        free(buf);
    }
    st_close(st);
    for (int k = 0; k < 2; k++) {
        stw_save(w[k], path_join(p, sizeof p, d, shard[k]), &e);
        stw_free(w[k]);
    }
    json_object *idx = json_object_new_object();
    json_object_object_add(idx, "weight_map", map);
    json_write_file(path_join(p, sizeof p, d, "model.safetensors.index.json"), idx, &e);
    json_object_put(idx);
    Model *m = model_load(d, &e);
    snprintf(p, sizeof p, "%s/refhf/f16_untied/expected.f32", tmp);
    size_t elen = 0, n = 0;
    char *want = read_file(p, &elen, &e);
    float *got = m ? model_flat(m, &n) : NULL;
    CHECK("sharded_index_load", m && want && elen == 4 * n && !memcmp(got, want, elen), "%s", e.msg);
    free(got);
    free(want);
    model_free(m);
}

static void test_bad_models(void) {
    char d[700], p[800], src_st[800];
    snprintf(d, sizeof d, "%s/refhf/bad", tmp);
    Err e = {{0}};
    make_dirs(d, &e);
    char cmd[4096];
    // an unsupported architecture (Gemma-2): rejected by name
    snprintf(cmd, sizeof cmd,
             "cp %s/refhf/f16_untied/model.safetensors %s/ && sed 's/\"llama\"/\"gemma2\"/; "
             "s/LlamaForCausalLM/Gemma2ForCausalLM/' %s/refhf/f16_untied/config.json > %s/config.json",
             tmp, d, tmp, d);
    if (system(cmd) != 0) return;
    Model *m = model_load(d, &e);
    CHECK("hf_rejects_gemma2", !m && strstr(e.msg, "gemma2") && strstr(e.msg, "config.json"), "%s", e.msg);
    model_free(m);
    // a Qwen2 config over a file without q/k/v biases: the missing bias is named
    snprintf(cmd, sizeof cmd,
             "sed 's/\"llama\"/\"qwen2\"/; s/LlamaForCausalLM/Qwen2ForCausalLM/' "
             "%s/refhf/f16_untied/config.json > %s/config.json", tmp, d);
    if (system(cmd) != 0) return;
    m = model_load(d, &e);
    CHECK("hf_qwen2_missing_bias", !m && strstr(e.msg, "model.layers.0.self_attn.q_proj.bias"), "%s", e.msg);
    model_free(m);
    // wrong hidden size in config: a tensor shape error naming the tensor and both shapes
    snprintf(cmd, sizeof cmd, "sed 's/\"intermediate_size\": 40/\"intermediate_size\": 48/' %s/refhf/f16_untied/config.json > %s/config.json", tmp, d);
    if (system(cmd) != 0) return;
    m = model_load(d, &e);
    CHECK("hf_shape_mismatch_named", !m && strstr(e.msg, "model.layers.0.mlp.gate_proj.weight") &&
                                         strstr(e.msg, "[40, 32]") && strstr(e.msg, "[48, 32]"),
          "%s", e.msg);
    model_free(m);
    // broken JSON: file and line
    put_file(path_join(p, sizeof p, d, "config.json"), "{\n  \"hidden_size\": 16,\n  oops\n}\n", 30);
    m = model_load(d, &e);
    CHECK("hf_bad_json_line", !m && strstr(e.msg, "config.json:3"), "%s", e.msg);
    model_free(m);
    // missing required key
    put_file(p, "{\"model_type\": \"llama\", \"hidden_size\": 16}", 42);
    m = model_load(d, &e);
    CHECK("hf_missing_key", !m && strstr(e.msg, "intermediate_size"), "%s", e.msg);
    model_free(m);
    // an extra bias tensor (a Qwen2-style file under a llama config) is named, not dropped
    snprintf(cmd, sizeof cmd, "cp %s/refhf/f16_untied/config.json %s/config.json", tmp, d);
    if (system(cmd) != 0) return;
    snprintf(src_st, sizeof src_st, "%s/refhf/f16_untied/model.safetensors", tmp);
    StWriter *w = copy_tensors(src_st, ST_F16, NULL);
    float zb[32] = {0};
    int64_t zs[1] = {32};
    stw_add_f32(w, "model.layers.1.self_attn.q_proj.bias", ST_F32, 1, zs, zb, &e);
    stw_save(w, path_join(p, sizeof p, d, "model.safetensors"), &e);
    stw_free(w);
    m = model_load(d, &e);
    CHECK("hf_unexpected_bias_named", !m && strstr(e.msg, "model.layers.1.self_attn.q_proj.bias"), "%s", e.msg);
    model_free(m);
    // truncated GGUF and .bin
    size_t len;
    snprintf(src_st, sizeof src_st, "%s/refhf/gguf/model.gguf", tmp);
    char *raw = read_file(src_st, &len, &e);
    snprintf(p, sizeof p, "%s/cut.gguf", d);
    if (raw) put_file(p, raw, len - 100);
    m = model_load(p, &e);
    CHECK("gguf_truncated_model", !m && strstr(e.msg, "cut.gguf") && strstr(e.msg, "blk.1"), "%s", e.msg);
    model_free(m);
    free(raw);
    snprintf(src_st, sizeof src_st, "%s/refhf/bin/model.bin", tmp);
    raw = read_file(src_st, &len, &e);
    snprintf(p, sizeof p, "%s/cut.bin", d);
    if (raw) put_file(p, raw, len - 4);
    m = model_load(p, &e);
    CHECK("bin_truncated_model", !m && strstr(e.msg, "cut.bin") && strstr(e.msg, "bytes"), "%s", e.msg);
    model_free(m);
    free(raw);
    m = model_load("/nonexistent/model.gguf", &e);
    CHECK("load_missing_path", !m && strstr(e.msg, "/nonexistent/model.gguf"), "%s", e.msg);
}

// q/k permutation agrees with op_rope: rope_adjacent(W_file x) equals rope_half(W_int x)
// after mapping row 2i+j of each head to row j*D/2+i.
static int rope_convention_ok(const float *wfile, const Weight *wint, int heads, int D, const float *inv_freq,
                              double *err) {
    Err e = {{0}};
    Tape *t = tape_new(&e);
    if (!t) return 0;
    tape_set_recording(t, 0);
    int64_t rows = wint->rows, cols = wint->cols, T = 3;
    int64_t sh[3] = {1, T, rows};
    Tensor *qa = tape_tensor(t, 3, sh), *qh = tape_tensor(t, 3, sh);
    float *x = malloc((size_t)(T * cols) * sizeof(float)), *row = malloc((size_t)cols * sizeof(float));
    fill(x, T * cols, 99, 1.0f);
    for (int64_t p = 0; p < T; p++)
        for (int64_t r = 0; r < rows; r++) {
            double sa = 0, shh = 0;
            weight_row_f32(wint, r, row);
            for (int64_t c = 0; c < cols; c++) {
                sa += (double)wfile[r * cols + c] * x[p * cols + c];
                shh += (double)row[c] * x[p * cols + c];
            }
            qa->data[p * rows + r] = (float)sa;
            qh->data[p * rows + r] = (float)shh;
        }
    Tensor *ra = op_rope(t, qa, 1, T, heads, D, 5, inv_freq, ROPE_ADJACENT);
    Tensor *rh = op_rope(t, qh, 1, T, heads, D, 5, inv_freq, ROPE_HALF);
    double m = 0;
    for (int64_t p = 0; p < T; p++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < D / 2; i++)
                for (int j = 0; j < 2; j++) {
                    float a = ra->data[p * rows + h * D + 2 * i + j], b = rh->data[p * rows + h * D + j * D / 2 + i];
                    m = tu_worse(m, fabs(a - b) / fmax(1e-3, fabs(a)));  // a NaN counts as +inf
                }
    free(x);
    free(row);
    tape_free(t);
    *err = m;
    return m < 1e-5;
}

static void test_stories(void) {
    const char *md = tu_models_dir();
    if (!md) {
        SKIP("stories260K", "no models dir (set LORA_TEST_MODELS)");
        return;
    }
    char pg[1024], pb[1024];
    snprintf(pg, sizeof pg, "%s/stories260K/stories260K.gguf", md);
    snprintf(pb, sizeof pb, "%s/stories260K/stories260K.bin", md);
    if (!file_exists(pg) || !file_exists(pb)) {
        SKIP("stories260K", "files absent");
        return;
    }
    Err e = {{0}};
    Model *g = model_load(pg, &e);
    CHECK("stories_gguf_load", g != NULL, "%s", e.msg);
    Model *b = model_load(pb, &e);
    CHECK("stories_bin_load", b != NULL, "%s", e.msg);
    if (!g || !b) {
        model_free(g);
        model_free(b);
        return;
    }
    const ModelConfig *c = &g->cfg;
    CHECK("stories_config", c->dim == 64 && c->hidden_dim == 172 && c->n_layers == 5 && c->n_heads == 8 &&
                                c->n_kv_heads == 4 && c->vocab_size == 512 && c->head_dim == 8 &&
                                c->bos_id == 1 && c->eos_id == 2 && c->file_rope == ROPE_ADJACENT,
          "dim %d hidden %d layers %d heads %d kv %d vocab %d", c->dim, c->hidden_dim, c->n_layers, c->n_heads,
          c->n_kv_heads, c->vocab_size);
    CHECK("stories_configs_identical", same_shape_cfg(&g->cfg, &b->cfg) && g->cfg.bos_id == b->cfg.bos_id &&
                                           g->cfg.eos_id == b->cfg.eos_id && b->cfg.tied_embeddings &&
                                           g->cfg.tied_embeddings,
          "gguf vs bin: eps %g/%g theta %g/%g tied %d/%d", g->cfg.norm_eps, b->cfg.norm_eps, g->cfg.rope_theta,
          b->cfg.rope_theta, g->cfg.tied_embeddings, b->cfg.tied_embeddings);
    printf("  stories260K: max_seq_len gguf %d, bin %d\n", g->cfg.max_seq_len, b->cfg.max_seq_len);
    size_t where;
    CHECK("stories_weights_bit_identical", same_weights(g, b, &where), "first difference at %zd", (ssize_t)where);

    // q/k really were permuted: internal row j*D/2+i == file row 2i+j, and op_rope agrees
    Gguf *gf = gguf_open(pg, &e);
    if (gf) {
        int D = c->head_dim;
        int64_t qn = (int64_t)c->n_heads * D * c->dim, kn = (int64_t)c->n_kv_heads * D * c->dim;
        float *qf = malloc((size_t)qn * sizeof(float)), *kf = malloc((size_t)kn * sizeof(float));
        int ok = gguf_read_f32(gf, "blk.2.attn_q.weight", qf, qn, &e) == 0 &&
                 gguf_read_f32(gf, "blk.2.attn_k.weight", kf, kn, &e) == 0;
        const float *qi = g->layers[2].w[LT_Q].data, *ki = g->layers[2].w[LT_K].data;
        int perm_ok = ok, moved = 0;
        for (int h = 0; h < c->n_heads && perm_ok; h++)
            for (int i = 0; i < D / 2; i++)
                for (int j = 0; j < 2; j++) {
                    perm_ok &= !memcmp(qi + ((int64_t)h * D + j * D / 2 + i) * c->dim,
                                       qf + ((int64_t)h * D + 2 * i + j) * c->dim, (size_t)c->dim * 4);
                    moved += (j * D / 2 + i) != (2 * i + j);
                }
        for (int h = 0; h < c->n_kv_heads && perm_ok; h++)
            for (int i = 0; i < D / 2; i++)
                for (int j = 0; j < 2; j++)
                    perm_ok &= !memcmp(ki + ((int64_t)h * D + j * D / 2 + i) * c->dim,
                                       kf + ((int64_t)h * D + 2 * i + j) * c->dim, (size_t)c->dim * 4);
        CHECK("stories_qk_permuted", perm_ok && moved > 0, "%s", e.msg);
        double err_q = 1, err_k = 1;
        int rq = ok && rope_convention_ok(qf, &g->layers[2].w[LT_Q], c->n_heads, D, g->inv_freq, &err_q);
        int rk = ok && rope_convention_ok(kf, &g->layers[2].w[LT_K], c->n_kv_heads, D, g->inv_freq, &err_k);
        CHECK("stories_rope_conventions_agree", rq && rk, "max rel diff q %.3g k %.3g", err_q, err_k);
        free(qf);
        free(kf);
        gguf_close(gf);
    }

    // save as HF, load again: identical
    char dir[700];
    snprintf(dir, sizeof dir, "%s/stories_hf", tmp);
    int rc = model_save_hf(b, dir, &e);
    CHECK("stories_save_hf", rc == 0, "%s", e.msg);
    Model *h = rc == 0 ? model_load(dir, &e) : NULL;
    CHECK("stories_hf_reload", h != NULL, "%s", e.msg);
    if (h) {
        CHECK("stories_hf_config", same_shape_cfg(&h->cfg, &b->cfg) && h->cfg.max_seq_len == b->cfg.max_seq_len &&
                                       h->cfg.bos_id == 1 && h->cfg.eos_id == 2 && h->cfg.file_rope == ROPE_HALF,
              "config changed");
        CHECK("stories_hf_weights_identical", same_weights(h, b, &where), "first difference at %zd", (ssize_t)where);
        char cp[800];
        json_object *j = json_read_file(path_join(cp, sizeof cp, dir, "config.json"), &e), *v;
        CHECK("stories_hf_config_json",
              j && json_object_object_get_ex(j, "model_type", &v) && !strcmp(json_object_get_string(v), "llama") &&
                  json_object_object_get_ex(j, "torch_dtype", &v) && !strcmp(json_object_get_string(v), "float32") &&
                  json_object_object_get_ex(j, "tie_word_embeddings", &v) && json_object_get_boolean(v) &&
                  json_object_object_get_ex(j, "num_key_value_heads", &v) && json_object_get_int(v) == 4 &&
                  json_object_object_get_ex(j, "rms_norm_eps", &v) && (float)json_object_get_double(v) == 1e-5f &&
                  json_object_object_get_ex(j, "architectures", &v) &&
                  !strcmp(json_object_get_string(json_object_array_get_idx(v, 0)), "LlamaForCausalLM"),
              "config.json fields wrong");
        json_object_put(j);
        SafeTensors *st = st_open(path_join(cp, sizeof cp, dir, "model.safetensors"), &e);
        CHECK("stories_hf_names", st && st_count(st) == 1 + 5 * 9 + 1 && !st_find(st, "lm_head.weight") &&
                                      st_find(st, "model.layers.4.mlp.down_proj.weight") &&
                                      st_find(st, "model.layers.4.mlp.down_proj.weight")->shape[1] == 172,
              "tensor names/count wrong");
        st_close(st);
    }
    model_free(h);
    model_free(g);
    model_free(b);
}

static void test_random_model(void) {
    ModelConfig cfg;
    model_config_default(&cfg, 32, 64, 2, 4, 2, 50, 128);
    Err e = {{0}};
    char d1[700], d2[700], d3[700];
    snprintf(d1, sizeof d1, "%s/rand1", tmp);
    snprintf(d2, sizeof d2, "%s/rand2", tmp);
    snprintf(d3, sizeof d3, "%s/rand3", tmp);
    int rc = model_write_random(&cfg, 42, 0.02f, d1, &e) || model_write_random(&cfg, 42, 0.02f, d2, &e) ||
             model_write_random(&cfg, 43, 0.02f, d3, &e);
    CHECK("random_write", rc == 0, "%s", e.msg);
    if (rc) return;
    Model *a = model_load(d1, &e), *b = model_load(d2, &e), *c = model_load(d3, &e);
    CHECK("random_load", a && b && c, "%s", e.msg);
    if (a && b && c) {
        size_t where;
        CHECK("random_config", same_shape_cfg(&a->cfg, &cfg) && a->cfg.max_seq_len == 128 &&
                                   a->cfg.tied_embeddings == cfg.tied_embeddings && a->cfg.bos_id == 1,
              "config changed");
        CHECK("random_same_seed_same_model", same_weights(a, b, &where), "differ at %zd", (ssize_t)where);
        CHECK("random_other_seed_differs", !same_weights(a, c, &where), "identical");
        int ones = 1;
        for (int l = 0; l < 2; l++)
            for (int i = 0; i < 32; i++) ones &= a->layers[l].attn_norm->data[i] == 1.0f && a->layers[l].ffn_norm->data[i] == 1.0f;
        const Weight *w = &a->layers[1].w[LT_UP];
        double s = 0, s2 = 0;
        int64_t n = w->rows * w->cols;
        for (int64_t i = 0; i < n; i++) {
            s += ((float *)w->data)[i];
            s2 += (double)((float *)w->data)[i] * ((float *)w->data)[i];
        }
        double sd = sqrt(s2 / n - (s / n) * (s / n));
        CHECK("random_norms_one_weights_std", ones && fabs(sd - 0.02) < 0.002 && fabs(s / n) < 0.002,
              "std %.4f mean %.4f", sd, s / n);
    }
    model_free(a);
    model_free(b);
    model_free(c);
}

// ---- PEFT ---------------------------------------------------------------------------------

static int adapters_equal(const LoraAdapter *a, const LoraAdapter *b) {
    if (a->rank != b->rank || a->alpha != b->alpha || a->dropout != b->dropout || a->use_rslora != b->use_rslora ||
        a->scale != b->scale || a->targets != b->targets || a->n_layers != b->n_layers)
        return 0;
    for (int i = 0; i < a->n_layers * LT_COUNT; i++) {
        if (!a->A[i] != !b->A[i] || !a->B[i] != !b->B[i]) return 0;
        if (!a->A[i]) continue;
        if (a->A[i]->n != b->A[i]->n || memcmp(a->A[i]->data, b->A[i]->data, (size_t)a->A[i]->n * 4) ||
            a->B[i]->n != b->B[i]->n || memcmp(a->B[i]->data, b->B[i]->data, (size_t)a->B[i]->n * 4) ||
            a->A[i]->ndim != 2 || a->A[i]->shape[0] != b->A[i]->shape[0] || a->A[i]->shape[1] != b->A[i]->shape[1] ||
            !b->A[i]->requires_grad || !b->B[i]->requires_grad || !b->A[i]->grad)
            return 0;
    }
    return 1;
}

static void test_peft(void) {
    ModelConfig cfg;
    model_config_default(&cfg, 32, 48, 2, 4, 2, 40, 64);
    Err e = {{0}};
    char md[700], md2[700], ad[700], p[800];
    snprintf(md, sizeof md, "%s/peft_model", tmp);
    snprintf(md2, sizeof md2, "%s/peft_model_other", tmp);
    snprintf(ad, sizeof ad, "%s/adapter", tmp);
    ModelConfig other;
    model_config_default(&other, 32, 56, 2, 4, 2, 40, 64);
    if (model_write_random(&cfg, 5, 0.02f, md, &e) || model_write_random(&other, 5, 0.02f, md2, &e)) {
        CHECK("peft_models", 0, "%s", e.msg);
        return;
    }
    Model *m = model_load(md, &e), *m2 = model_load(md2, &e);
    LoraAdapter *a = m ? lora_new(m, 4, 8.0f, (1u << LT_COUNT) - 1, 0.05f, 0, 77, &e) : NULL;
    CHECK("peft_setup", m && m2 && a, "%s", e.msg);
    if (!m || !m2 || !a) {
        model_free(m);
        model_free(m2);
        lora_free(a);
        return;
    }
    for (int i = 0; i < m->cfg.n_layers * LT_COUNT; i++) fill(a->B[i]->data, a->B[i]->n, 1000 + i, 0.1f);
    int rc = adapter_save_peft(a, m, ad, &e);
    CHECK("peft_save", rc == 0, "%s", e.msg);
    LoraAdapter *b = rc ? NULL : adapter_load_peft(ad, m, &e);
    CHECK("peft_load", b != NULL, "%s", e.msg);
    CHECK("peft_roundtrip_exact", b && adapters_equal(a, b) && b->scale == 2.0f && !strcmp(b->base_model, a->base_model),
          "adapter changed");
    lora_free(b);

    // file contents: key names and shapes as PEFT writes them
    SafeTensors *st = st_open(path_join(p, sizeof p, ad, "adapter_model.safetensors"), &e);
    const StTensor *qa = st ? st_find(st, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") : NULL;
    const StTensor *db = st ? st_find(st, "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight") : NULL;
    const StTensor *ka = st ? st_find(st, "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight") : NULL;
    CHECK("peft_keys_shapes", st && st_count(st) == 2 * 2 * 7 && qa && qa->shape[0] == 4 && qa->shape[1] == 32 &&
                                  db && db->shape[0] == 32 && db->shape[1] == 4 && ka && ka->dtype == ST_F32,
          "keys/shapes wrong");
    st_close(st);
    json_object *j = json_read_file(path_join(p, sizeof p, ad, "adapter_config.json"), &e), *v;
    int cfg_ok = j != NULL;
    const char *want_str[][2] = {{"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"bias", "none"}};
    for (int i = 0; cfg_ok && i < 3; i++)
        cfg_ok = json_object_object_get_ex(j, want_str[i][0], &v) && json_object_is_type(v, json_type_string) &&
                 !strcmp(json_object_get_string(v), want_str[i][1]);
    cfg_ok = cfg_ok && json_object_object_get_ex(j, "r", &v) && json_object_is_type(v, json_type_int) &&
             json_object_get_int(v) == 4;
    cfg_ok = cfg_ok && json_object_object_get_ex(j, "lora_alpha", &v) && json_object_get_double(v) == 8.0;
    cfg_ok = cfg_ok && json_object_object_get_ex(j, "lora_dropout", &v) && (float)json_object_get_double(v) == 0.05f;
    cfg_ok = cfg_ok && json_object_object_get_ex(j, "use_rslora", &v) && json_object_is_type(v, json_type_boolean) &&
             !json_object_get_boolean(v);
    cfg_ok = cfg_ok && json_object_object_get_ex(j, "fan_in_fan_out", &v) && !json_object_get_boolean(v);
    cfg_ok = cfg_ok && json_object_object_get_ex(j, "inference_mode", &v) && json_object_get_boolean(v);
    cfg_ok = cfg_ok && json_object_object_get_ex(j, "base_model_name_or_path", &v) &&
             !strcmp(json_object_get_string(v), md);
    cfg_ok = cfg_ok && json_object_object_get_ex(j, "target_modules", &v) && json_object_is_type(v, json_type_array) &&
             json_object_array_length(v) == 7 &&
             !strcmp(json_object_get_string(json_object_array_get_idx(v, 6)), "down_proj");
    CHECK("peft_adapter_config_fields", cfg_ok, "%s", j ? json_object_to_json_string(j) : e.msg);
    json_object_put(j);

    // shapes checked against the model: a model with another intermediate size
    b = adapter_load_peft(ad, m2, &e);
    CHECK("peft_wrong_model_rejected", !b && strstr(e.msg, "mlp.gate_proj.lora_B.weight") && strstr(e.msg, "[48, 4]") &&
                                           strstr(e.msg, "[56, 4]"),
          "%s", e.msg);
    lora_free(b);

    // rsLoRA and a subset of targets; then keys with PEFT's ".default" adapter name
    LoraAdapter *r = lora_new(m, 8, 16.0f, (1u << LT_Q) | (1u << LT_V), 0.0f, 1, 78, &e);
    char ad2[700];
    snprintf(ad2, sizeof ad2, "%s/adapter_rs", tmp);
    rc = r ? adapter_save_peft(r, m, ad2, &e) : -1;
    b = rc ? NULL : adapter_load_peft(ad2, m, &e);
    CHECK("peft_rslora_subset", b && adapters_equal(r, b) && fabsf(b->scale - 16.0f / sqrtf(8.0f)) < 1e-6f &&
                                    b->targets == ((1u << LT_Q) | (1u << LT_V)) && !b->A[LT_K] && b->use_rslora,
          "%s", e.msg);
    lora_free(b);
    StWriter *w = copy_tensors(path_join(p, sizeof p, ad2, "adapter_model.safetensors"), ST_BF16, ".default");
    rc = stw_save(w, p, &e);
    stw_free(w);
    b = rc ? NULL : adapter_load_peft(ad2, m, &e);
    int close_ok = b != NULL;
    for (int i = 0; close_ok && i < m->cfg.n_layers * LT_COUNT; i++)
        if (r->A[i])
            close_ok = b->A[i] && b->A[i]->data[3] == bf16_to_f32(f32_to_bf16(r->A[i]->data[3])) &&
                       b->B[i]->data[5] == bf16_to_f32(f32_to_bf16(r->B[i]->data[5]));
    CHECK("peft_default_suffix_bf16_keys", close_ok, "%s", e.msg);
    lora_free(b);

    // an unexpected tensor is named
    w = copy_tensors(p, ST_F32, NULL);
    float z[4] = {0};
    int64_t zs[2] = {2, 2};
    stw_add_f32(w, "base_model.model.lm_head.lora_A.weight", ST_F32, 2, zs, z, &e);
    stw_save(w, p, &e);
    stw_free(w);
    b = adapter_load_peft(ad2, m, &e);
    CHECK("peft_unexpected_key_named", !b && strstr(e.msg, "base_model.model.lm_head.lora_A.weight"), "%s", e.msg);
    lora_free(b);
    // missing config / unsupported option
    put_file(path_join(p, sizeof p, ad2, "adapter_config.json"),
             "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, \"use_dora\": true}", 65);
    b = adapter_load_peft(ad2, m, &e);
    CHECK("peft_dora_rejected", !b && strstr(e.msg, "use_dora"), "%s", e.msg);
    lora_free(b);
    lora_free(r);
    lora_free(a);
    model_free(m);
    model_free(m2);
}

int main(void) {
    tu_tmpdir("test_formats", tmp, sizeof tmp);
    test_safetensors_roundtrip();
    test_safetensors_malformed();
    test_gguf_handmade();
    test_gguf_writer();
    test_ref_files();
    test_sharded();
    test_bad_models();
    test_stories();
    test_random_model();
    test_peft();
    return tu_exit();
}
