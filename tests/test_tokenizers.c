// Tests for the BPE tokenizers (data/bpe*.c): llama.cpp's vectors with the real Llama-3 and
// Qwen tokenizer.json files and with GGUF vocabularies written here from them and from the
// Llama-2 SentencePiece model; a Python reference (tests/ref_bpe.py) on random Unicode-heavy
// text; SmolLM2 round trips; added-token flags, SentencePiece-style BPE, BOS/EOS from the
// config files, NFC, streaming, malformed files; and the encoding speed on a 10 MB JSONL.
#include <json-c/json.h>

#include "data/data.h"
#include "data/unicode_internal.h"
#include "model/model.h"
#include "tests/testutil.h"

static char g_tmp[512];
static const char *g_models;

static const char *tmp_path(char *buf, size_t n, const char *name) {
    if (snprintf(buf, n, "%s/%s", g_tmp, name) >= (int)n) fprintf(stderr, "path too long: %s\n", name);
    return buf;
}

static const char *write_tmp(const char *name, const char *s) {
    static char buf[8][1100];
    static int k = 0;
    char *p = buf[k++ % 8];
    tmp_path(p, 1100, name);
    FILE *f = fopen(p, "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", p); exit(2); }
    fwrite(s, 1, strlen(s), f);
    fclose(f);
    return p;
}

static const char *model_file(const char *rel, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", g_models ? g_models : "", rel);
    return g_models && file_exists(buf) ? buf : NULL;
}

static int same_ids(const int *a, int na, const int *b, int nb) {
    return na == nb && (na == 0 || memcmp(a, b, sizeof(int) * (size_t)na) == 0);
}

static void print_ids(const char *what, const int *ids, int n) {
    printf("    %s:", what);
    for (int i = 0; i < n && i < 40; i++) printf(" %d", ids[i]);
    printf("\n");
}

// Concatenated tok_stream output of ids; *chunks_ok = 0 if some chunk was not valid UTF-8.
static char *stream_all(const Tokenizer *t, const int *ids, int n, int *chunks_ok) {
    TokStream st;
    tok_stream_init(&st);
    size_t cap = 256, len = 0;
    char *s = malloc(cap), buf[1100];
    s[0] = 0;
    *chunks_ok = 1;
    for (int i = 0; i <= n; i++) {
        const char *p = i < n ? tok_stream_next(t, &st, ids[i], buf, sizeof buf) : tok_stream_flush(&st, buf, sizeof buf);
        size_t pl = strlen(p);
        int incomplete;
        if (utf8_valid_prefix((const uint8_t *)p, pl, &incomplete) != pl) *chunks_ok = 0;
        while (len + pl + 1 > cap) { cap *= 2; s = realloc(s, cap); }
        memcpy(s + len, p, pl + 1);
        len += pl;
    }
    return s;
}

// ---- vectors --------------------------------------------------------------------------------
typedef struct {
    int n, match, roundtrip, stream;
} VecResult;

// Encodes every vector string with t; counts exact matches, decode(encode(s)) == s and
// streaming == decode.
static VecResult run_vectors(const Tokenizer *t, const TuVectors *v, const char *label, int check_ids) {
    VecResult r = {0, 0, 0, 0};
    int shown = 0;
    for (int i = 0; i < v->n; i++) {
        Err e = {{0}};
        int *ids = NULL;
        int k = tok_encode(t, v->text[i], &ids, &e);
        r.n++;
        if (check_ids && same_ids(ids, k, v->ids[i], v->n_ids[i])) r.match++;
        else if (check_ids && shown++ < 3) {
            printf("  %s: string %d \"%.50s\" differs\n", label, i, v->text[i]);
            print_ids("got ", ids, k);
            print_ids("want", v->ids[i], v->n_ids[i]);
        }
        char *dec = k >= 0 ? tok_decode(t, ids, k, &e) : NULL;
        if (dec && !strcmp(dec, v->text[i])) r.roundtrip++;
        int chunks_ok = 0;
        char *st = k >= 0 ? stream_all(t, ids, k, &chunks_ok) : NULL;
        if (st && dec && !strcmp(st, dec) && chunks_ok) r.stream++;
        else if (shown++ < 3) printf("  %s: string %d streams as [%s] (whole characters: %d), decodes as [%s]\n", label, i, st ? st : "", chunks_ok, dec ? dec : "");
        free(st);
        free(dec);
        free(ids);
    }
    return r;
}

static Tokenizer *load_or_skip(const char *name, const char *rel) {
    char p[1024];
    if (!model_file(rel, p, sizeof p)) {
        SKIP(name, "%s absent", rel);
        return NULL;
    }
    Err e = {{0}};
    Tokenizer *t = tok_load(p, &e);
    char cn[160];
    snprintf(cn, sizeof cn, "%s load", name);
    CHECK(cn, t != NULL, "%s", e.msg);
    return t;
}

static void check_vectors(const char *name, const Tokenizer *t, const char *vec, int check_ids) {
    char vdir[1100], cn[200];
    snprintf(vdir, sizeof vdir, "%s/tokenizers/vectors", g_models);
    TuVectors v;
    snprintf(cn, sizeof cn, "%s %s vectors", name, vec);
    if (tu_vectors_read(vdir, vec, &v)) { SKIP(cn, "no %s vectors", vec); return; }
    VecResult r = run_vectors(t, &v, name, check_ids);
    printf("  %s with %s: %d strings, %d ids match, %d round trips, %d streams\n", name, vec, r.n, r.match,
           r.roundtrip, r.stream);
    if (check_ids) CHECK(cn, r.n >= 40 && r.match == r.n, "%d of %d strings match", r.match, r.n);
    snprintf(cn, sizeof cn, "%s decode(encode(s)) == s on %s", name, vec);
    CHECK(cn, r.n >= 40 && r.roundtrip == r.n, "%d of %d", r.roundtrip, r.n);
    snprintf(cn, sizeof cn, "%s streaming == decode on %s", name, vec);
    CHECK(cn, r.n >= 40 && r.stream == r.n, "%d of %d", r.stream, r.n);
    tu_vectors_free(&v);
}

// ---- a Python reference on random text ---------------------------------------------------------
static void test_reference(void) {
    const char *names[3] = {"llama3", "qwen3", "smollm2"};
    char cmd[4096] = "/usr/bin/python3 tests/ref_bpe.py 300 7";
    int have = 0;
    for (int i = 0; i < 3; i++) {
        char rel[128], p[1024], pre[600];
        snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer.json", names[i]);
        if (!model_file(rel, p, sizeof p)) continue;
        size_t k = strlen(cmd);
        snprintf(cmd + k, sizeof cmd - k, " %s %s", p, tmp_path(pre, sizeof pre, names[i]));
        have++;
    }
    if (!have) { SKIP("python reference", "no tokenizer.json files"); return; }
    if (system(cmd) != 0) { CHECK("python reference ran", 0, "%s failed", cmd); return; }
    for (int i = 0; i < 3; i++) {
        char rel[128], p[1024], cn[200];
        snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer.json", names[i]);
        if (!model_file(rel, p, sizeof p)) continue;
        Err e = {{0}};
        Tokenizer *t = tok_load(p, &e);
        TuVectors v;
        snprintf(cn, sizeof cn, "%s json == python reference on random text", names[i]);
        if (!t || tu_vectors_read(g_tmp, names[i], &v)) { CHECK(cn, 0, "cannot load: %s", e.msg); tok_free(t); continue; }
        VecResult r = run_vectors(t, &v, names[i], 1);
        printf("  %s vs reference: %d random strings, %d ids match, %d round trips, %d streams\n", names[i], r.n, r.match,
               r.roundtrip, r.stream);
        CHECK(cn, r.n >= 250 && r.match == r.n, "%d of %d strings match", r.match, r.n);
        snprintf(cn, sizeof cn, "%s streaming == decode on random text", names[i]);
        CHECK(cn, r.n >= 250 && r.stream == r.n, "%d of %d", r.stream, r.n);
        tu_vectors_free(&v);
        tok_free(t);
    }
}

// ---- GGUF vocabularies written here ----------------------------------------------------------------
// A GGUF holding only the tokenizer.ggml.* metadata of a tokenizer.json: tokens by id,
// token_type (special added tokens CONTROL, other added USER_DEFINED), merges "a b".
static int gguf_from_json(const char *json_path, const char *pre, int bos, int eos, const char *out, Err *e) {
    json_object *root = json_read_file(json_path, e);
    if (!root) return -1;
    json_object *model = json_object_object_get(root, "model"), *vocab = json_object_object_get(model, "vocab");
    json_object *merges = json_object_object_get(model, "merges"), *added = json_object_object_get(root, "added_tokens");
    int n = 0;
    json_object_object_foreach(vocab, k1, v1) { (void)k1; if (json_object_get_int(v1) + 1 > n) n = json_object_get_int(v1) + 1; }
    for (size_t i = 0; i < json_object_array_length(added); i++) {
        int id = json_object_get_int(json_object_object_get(json_object_array_get_idx(added, i), "id"));
        if (id + 1 > n) n = id + 1;
    }
    const char **tokens = calloc((size_t)n, sizeof(char *));
    int32_t *types = calloc((size_t)n, sizeof(int32_t));
    json_object_object_foreach(vocab, k2, v2) { tokens[json_object_get_int(v2)] = k2; types[json_object_get_int(v2)] = 1; }
    for (size_t i = 0; i < json_object_array_length(added); i++) {
        json_object *a = json_object_array_get_idx(added, i);
        int id = json_object_get_int(json_object_object_get(a, "id"));
        tokens[id] = json_object_get_string(json_object_object_get(a, "content"));
        types[id] = json_object_get_boolean(json_object_object_get(a, "special")) ? 3 : 4;
    }
    int nm = (int)json_object_array_length(merges);
    char **ms = calloc((size_t)nm, sizeof(char *));
    for (int i = 0; i < nm; i++) {
        json_object *m = json_object_array_get_idx(merges, (size_t)i);
        if (json_object_is_type(m, json_type_string)) {
            ms[i] = strdup(json_object_get_string(m));
        } else {
            const char *a = json_object_get_string(json_object_array_get_idx(m, 0));
            const char *b = json_object_get_string(json_object_array_get_idx(m, 1));
            ms[i] = malloc(strlen(a) + strlen(b) + 2);
            sprintf(ms[i], "%s %s", a, b);
        }
    }
    int rc = -1;
    GgufWriter *w = ggw_new(e);
    if (w && !ggw_set_str(w, "general.architecture", "llama", e) && !ggw_set_str(w, "tokenizer.ggml.model", "gpt2", e) &&
        !ggw_set_str(w, "tokenizer.ggml.pre", pre, e) && !ggw_set_arr_str(w, "tokenizer.ggml.tokens", tokens, (uint64_t)n, e) &&
        !ggw_set_arr_i32(w, "tokenizer.ggml.token_type", types, (uint64_t)n, e) &&
        !ggw_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)ms, (uint64_t)nm, e) &&
        !ggw_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos, e) &&
        !ggw_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos, e) && !ggw_save(w, out, e))
        rc = 0;
    ggw_free(w);
    for (int i = 0; i < nm; i++) free(ms[i]);
    free(ms);
    free(tokens);
    free(types);
    json_object_put(root);
    return rc;
}

// A GGUF holding a SentencePiece model's pieces, scores and types (tokenizer.ggml.model llama).
static int gguf_from_spm(const char *model_path, const char *out, Err *e) {
    SpmVocab *v = spm_vocab_load(model_path, e);
    if (!v) return -1;
    int rc = -1;
    GgufWriter *w = ggw_new(e);
    if (w && !ggw_set_str(w, "tokenizer.ggml.model", "llama", e) &&
        !ggw_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->pieces, (uint64_t)v->n, e) &&
        !ggw_set_arr_f32(w, "tokenizer.ggml.scores", v->scores, (uint64_t)v->n, e) &&
        !ggw_set_arr_i32(w, "tokenizer.ggml.token_type", v->types, (uint64_t)v->n, e) &&
        !ggw_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos, e) &&
        !ggw_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos, e) &&
        !ggw_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk, e) && !ggw_save(w, out, e))
        rc = 0;
    ggw_free(w);
    spm_vocab_free(v);
    return rc;
}

// Same ids from two tokenizers over the texts of a vectors file.
static int same_encodings(const Tokenizer *a, const Tokenizer *b, const TuVectors *v) {
    int ok = 0;
    for (int i = 0; i < v->n; i++) {
        Err e;
        int *x = NULL, *y = NULL;
        int nx = tok_encode(a, v->text[i], &x, &e), ny = tok_encode(b, v->text[i], &y, &e);
        ok += nx >= 0 && same_ids(x, nx, y, ny);
        free(x);
        free(y);
    }
    return ok;
}

static void test_gguf_vocabs(void) {
    struct {
        const char *name, *rel, *pre, *vec, *ref;
        int bos, eos, want_bos;
    } bpe[2] = {
        {"llama3 gguf", "tokenizers/llama3/tokenizer.json", "llama-bpe", "ggml-vocab-llama-bpe", "llama3", 128000, 128001, 128000},
        {"qwen3 gguf", "tokenizers/qwen3/tokenizer.json", "qwen2", "ggml-vocab-qwen2", "qwen3", 151643, 151645, -1},
    };
    for (int i = 0; i < 2; i++) {
        char p[1024], out[600], cn[200];
        if (!model_file(bpe[i].rel, p, sizeof p)) { SKIP(bpe[i].name, "%s absent", bpe[i].rel); continue; }
        Err e = {{0}};
        snprintf(cn, sizeof cn, "%s.gguf", bpe[i].ref);
        tmp_path(out, sizeof out, cn);
        snprintf(cn, sizeof cn, "%s written", bpe[i].name);
        CHECK(cn, gguf_from_json(p, bpe[i].pre, bpe[i].bos, bpe[i].eos, out, &e) == 0, "%s", e.msg);
        Tokenizer *t = tok_load(out, &e);
        snprintf(cn, sizeof cn, "%s load", bpe[i].name);
        CHECK(cn, t != NULL, "%s", e.msg);
        if (!t) continue;
        snprintf(cn, sizeof cn, "%s BOS/EOS", bpe[i].name);
        CHECK(cn, tok_bos(t) == bpe[i].want_bos && tok_eos(t) == bpe[i].eos, "bos %d eos %d", tok_bos(t), tok_eos(t));
        check_vectors(bpe[i].name, t, bpe[i].vec, 1);
        TuVectors v;
        if (!tu_vectors_read(g_tmp, bpe[i].ref, &v)) {  // the random strings of test_reference
            Tokenizer *j = tok_load(p, &e);
            int same = j ? same_encodings(t, j, &v) : 0;
            snprintf(cn, sizeof cn, "%s == tokenizer.json on random text", bpe[i].name);
            CHECK(cn, v.n >= 250 && same == v.n, "%d of %d", same, v.n);
            tok_free(j);
            tu_vectors_free(&v);
        }
        tok_free(t);
    }
    // Llama-2's SentencePiece model as a GGUF vocabulary (llama.cpp's SPM tokenizer)
    char p[1024], out[600];
    if (!model_file("tokenizers/llama2/tokenizer.model", p, sizeof p)) {
        SKIP("llama2 gguf", "tokenizers/llama2/tokenizer.model absent");
    } else {
        Err e = {{0}};
        CHECK("llama2 gguf written", gguf_from_spm(p, tmp_path(out, sizeof out, "llama2.gguf"), &e) == 0, "%s", e.msg);
        Tokenizer *t = tok_load(out, &e), *ref = tok_load(p, &e);
        CHECK("llama2 gguf load", t && ref, "%s", e.msg);
        if (t && ref) {
            CHECK("llama2 gguf BOS/EOS", tok_bos(t) == 1 && tok_eos(t) == 2 && tok_vocab_size(t) == 32000, "bos %d eos %d n %d",
                  tok_bos(t), tok_eos(t), tok_vocab_size(t));
            check_vectors("llama2 gguf", t, "ggml-vocab-llama-spm", 1);
            int *a = NULL, *b = NULL;
            int na = tok_encode_cont(t, "Hello world", &a, &e), nb = tok_encode_cont(ref, "Hello world", &b, &e);
            CHECK("llama2 gguf encode_cont == sentencepiece", na > 0 && same_ids(a, na, b, nb), "%d vs %d ids", na, nb);
            free(a);
            free(b);
            char buf[64];
            CHECK("llama2 gguf piece text",
                  !strcmp(tok_piece_text(t, 1, 15043, buf, sizeof buf), "Hello") &&
                      !strcmp(tok_piece_text(t, 15043, 3186, buf, sizeof buf), " world") &&
                      !strcmp(tok_piece_text(t, 3186, 13, buf, sizeof buf), "\n") &&
                      !strcmp(tok_piece_text(t, 13, 2, buf, sizeof buf), ""),
                  "pieces of Hello / world / <0x0A> / </s> wrong");
        }
        tok_free(t);
        tok_free(ref);
    }
    // stories260K: the vocabulary inside a real GGUF model file equals its tok512.model
    char g[1024], m[1024];
    if (!model_file("stories260K/stories260K.gguf", g, sizeof g) || !model_file("stories260K/tok512.model", m, sizeof m)) {
        SKIP("stories260K gguf vocab", "stories260K files absent");
        return;
    }
    Err e = {{0}};
    Tokenizer *t = tok_load(g, &e), *ref = tok_load(m, &e);
    CHECK("stories260K gguf vocab load", t && ref && tok_vocab_size(t) == 512 && tok_bos(t) == 1 && tok_eos(t) == 2,
          "%s", e.msg);
    if (t && ref) {
        // (no leading or repeated spaces: tok512.model removes them, llama.cpp's GGUF tokenizer not)
        const char *texts[4] = {"Once upon a time, there was a little girl named Lily.", "She liked to play outside.\n",
                                "Tom said, \"Wow!\"", "\xc3\xa9t\xc3\xa9 \xe2\x9c\x85 1234"};
        int ok = 0;
        for (int i = 0; i < 4; i++) {
            int *a = NULL, *b = NULL;
            int na = tok_encode(t, texts[i], &a, &e), nb = tok_encode(ref, texts[i], &b, &e);
            char *da = tok_decode(t, a, na, &e), *db = tok_decode(ref, b, nb, &e);
            ok += same_ids(a, na, b, nb) && da && db && !strcmp(da, db);
            free(a); free(b); free(da); free(db);
        }
        CHECK("stories260K gguf vocab == tok512.model", ok == 4, "%d of 4 texts agree", ok);
    }
    tok_free(t);
    tok_free(ref);
}

// ---- SentencePiece-style BPE in tokenizer.json (Llama-2 / TinyLlama) ------------------------------
// A tokenizer.json as HF's LlamaConverter writes it from a SentencePiece model: the pieces as
// vocabulary, merges from every split of a piece into two pieces (HF's SentencePieceExtractor:
// by piece score, then by the ids of the two parts), byte fallback; `metaspace` 0: the legacy
// Prepend + Replace normalizer, 1: a Metaspace pre-tokenizer (prepend_scheme "first").
typedef struct {
    const char *l, *r;
    float score;
    int il, ir, order;
} SpmMerge;

static int cmp_local(const void *x, const void *y) {
    const SpmMerge *a = x, *b = y;
    return a->il != b->il ? a->il - b->il : a->ir - b->ir;
}

static int cmp_score(const void *x, const void *y) {  // score descending, stable
    const SpmMerge *a = x, *b = y;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return a->order - b->order;
}

static json_object *jstr(const char *s) { return json_object_new_string(s); }

static int spm_json(const char *model_path, int metaspace, const char *out, Err *e) {
    SpmVocab *v = spm_vocab_load(model_path, e);
    if (!v) return -1;
    json_object *vocab = json_object_new_object();
    for (int i = 0; i < v->n; i++) json_object_object_add(vocab, v->pieces[i], json_object_new_int(i));
    size_t cap = 1 << 16, nm = 0;
    SpmMerge *m = malloc(sizeof(SpmMerge) * cap);
    char l[256], r[256];
    for (int i = 0; i < v->n; i++) {
        const char *p = v->pieces[i];
        size_t len = strlen(p), first = nm;
        for (size_t k = 1; k < len && len < sizeof l; k++) {
            if ((p[k] & 0xC0) == 0x80) continue;  // split between characters
            memcpy(l, p, k); l[k] = 0;
            strcpy(r, p + k);
            json_object *a, *b;
            if (!json_object_object_get_ex(vocab, l, &a) || !json_object_object_get_ex(vocab, r, &b)) continue;
            if (nm == cap) m = realloc(m, sizeof(SpmMerge) * (cap *= 2));
            m[nm++] = (SpmMerge){strdup(l), strdup(r), v->scores[i], json_object_get_int(a), json_object_get_int(b), 0};
        }
        qsort(m + first, nm - first, sizeof(SpmMerge), cmp_local);
    }
    for (size_t i = 0; i < nm; i++) m[i].order = (int)i;
    qsort(m, nm, sizeof(SpmMerge), cmp_score);
    json_object *merges = json_object_new_array();
    for (size_t i = 0; i < nm; i++) {
        char *s2 = malloc(strlen(m[i].l) + strlen(m[i].r) + 2);
        sprintf(s2, "%s %s", m[i].l, m[i].r);
        json_object_array_add(merges, jstr(s2));
        free(s2);
        free((void *)m[i].l);
        free((void *)m[i].r);
    }
    free(m);
    json_object *root = json_object_new_object(), *model = json_object_new_object(), *added = json_object_new_array();
    const char *specials[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) {
        json_object *a = json_object_new_object();
        json_object_object_add(a, "id", json_object_new_int(i));
        json_object_object_add(a, "content", jstr(specials[i]));
        json_object_object_add(a, "special", json_object_new_boolean(1));
        json_object_object_add(a, "normalized", json_object_new_boolean(0));
        json_object_array_add(added, a);
    }
    json_object_object_add(root, "added_tokens", added);
    const char *norm = "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\xE2\x96\x81\"},"
                       "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xE2\x96\x81\"}]}";
    const char *meta = "{\"type\":\"Metaspace\",\"replacement\":\"\xE2\x96\x81\",\"prepend_scheme\":\"first\",\"split\":false}";
    json_object_object_add(root, "normalizer", metaspace ? NULL : json_tokener_parse(norm));
    json_object_object_add(root, "pre_tokenizer", metaspace ? json_tokener_parse(meta) : NULL);
    json_object_object_add(root, "post_processor", json_tokener_parse(
        "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
        "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}]}"));
    json_object_object_add(root, "decoder", json_tokener_parse(
        "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\xE2\x96\x81\"},\"content\":\" \"},"
        "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]}"));
    json_object_object_add(model, "type", jstr("BPE"));
    json_object_object_add(model, "unk_token", jstr("<unk>"));
    json_object_object_add(model, "fuse_unk", json_object_new_boolean(1));
    json_object_object_add(model, "byte_fallback", json_object_new_boolean(1));
    json_object_object_add(model, "vocab", vocab);
    json_object_object_add(model, "merges", merges);
    json_object_object_add(root, "model", model);
    int rc = json_write_file(out, root, e);
    printf("  %s: %d pieces, %zu merges\n", out, v->n, nm);
    json_object_put(root);
    spm_vocab_free(v);
    return rc;
}

static void test_spm_json(void) {
    char p[1024];
    if (!model_file("tokenizers/llama2/tokenizer.model", p, sizeof p)) {
        SKIP("llama2 tokenizer.json", "tokenizers/llama2/tokenizer.model absent");
        return;
    }
    for (int meta = 0; meta < 2; meta++) {
        char dir[700], out[800], name[64], cn[160];
        snprintf(name, sizeof name, "llama2-json-%d", meta);
        tmp_path(dir, sizeof dir, name);
        make_dirs(dir, NULL);
        snprintf(out, sizeof out, "%s/tokenizer.json", dir);
        Err e = {{0}};
        snprintf(name, sizeof name, "llama2 json (%s)", meta ? "Metaspace" : "Prepend+Replace");
        snprintf(cn, sizeof cn, "%s written", name);
        CHECK(cn, spm_json(p, meta, out, &e) == 0, "%s", e.msg);
        Tokenizer *t = tok_load(dir, &e);  // a directory holding tokenizer.json
        snprintf(cn, sizeof cn, "%s load", name);
        CHECK(cn, t != NULL, "%s", e.msg);
        if (!t) continue;
        snprintf(cn, sizeof cn, "%s BOS/EOS", name);
        CHECK(cn, tok_bos(t) == 1 && tok_eos(t) == -1, "bos %d eos %d", tok_bos(t), tok_eos(t));
        if (!meta) {
            check_vectors(name, t, "ggml-vocab-llama-spm", 1);
        } else {  // HF's Metaspace prepends no "▁" to a text starting with a space: the others
            char vdir[1100];
            snprintf(vdir, sizeof vdir, "%s/tokenizers/vectors", g_models);
            TuVectors v;
            int n = 0, ok = 0;
            if (!tu_vectors_read(vdir, "ggml-vocab-llama-spm", &v)) {
                for (int i = 0; i < v.n; i++) {
                    if (v.text[i][0] == ' ') continue;
                    int *ids = NULL, k = tok_encode(t, v.text[i], &ids, &e);
                    n++;
                    ok += same_ids(ids, k, v.ids[i], v.n_ids[i]);
                    free(ids);
                }
                tu_vectors_free(&v);
            }
            printf("  %s: %d of %d vector strings not starting with a space match\n", name, ok, n);
            snprintf(cn, sizeof cn, "%s vectors not starting with a space", name);
            CHECK(cn, n >= 30 && ok == n, "%d of %d", ok, n);
            int *ids = NULL, k = tok_encode(t, " Hello", &ids, &e);
            snprintf(cn, sizeof cn, "%s leading space", name);
            CHECK(cn, k == 1 && ids[0] == 15043, "%d ids", k);  // "▁Hello": no second "▁"
            free(ids);
        }
        int *a = NULL, *b = NULL;
        int na = tok_encode(t, "Hello", &a, &e), nb = tok_encode_cont(t, "Hello", &b, &e);
        snprintf(cn, sizeof cn, "%s encode vs encode_cont", name);
        CHECK(cn, na == 1 && a[0] == 15043 && nb == 1 && b[0] == 10994, "encode %d ids (%d), cont %d ids (%d)", na,
              na > 0 ? a[0] : -1, nb, nb > 0 ? b[0] : -1);
        free(a);
        free(b);
        // the added <s> in text is the BOS token; legacy Prepend puts a "▁" after it, Metaspace
        // "first" only at the start of the text
        na = tok_encode(t, "<s>Hello", &a, &e);
        snprintf(cn, sizeof cn, "%s special token in text", name);
        CHECK(cn, na == 2 && a[0] == 1 && a[1] == (meta ? 10994 : 15043), "%d ids: %d %d", na, na > 0 ? a[0] : -1,
              na > 1 ? a[1] : -1);
        free(a);
        tok_free(t);
    }
}

// ---- added tokens: lstrip / rstrip / single_word / longest first --------------------------------
static int contains(const int *ids, int n, int id) {
    for (int i = 0; i < n; i++)
        if (ids[i] == id) return 1;
    return 0;
}

// ids of a ++ [id] ++ ids of b, compared with what t gives for text
static int parts_match(const Tokenizer *t, const char *text, const char *a, int id, const char *b) {
    Err e;
    int *x = NULL, *y = NULL, *z = NULL;
    int nx = tok_encode(t, text, &x, &e), ny = tok_encode(t, a, &y, &e), nz = tok_encode_cont(t, b, &z, &e);
    int ok = nx == ny + 1 + nz && !memcmp(x, y, sizeof(int) * (size_t)ny) && x[ny] == id &&
             !memcmp(x + ny + 1, z, sizeof(int) * (size_t)nz);
    if (!ok) { print_ids(text, x, nx); }
    free(x); free(y); free(z);
    return ok;
}

static void test_added_flags(void) {
    char p[1024];
    if (!model_file("tokenizers/smollm2/tokenizer.json", p, sizeof p)) {
        SKIP("added token flags", "smollm2 tokenizer.json absent");
        return;
    }
    Err e = {{0}};
    json_object *root = json_read_file(p, &e);
    json_object *added = json_object_object_get(root, "added_tokens");
    struct { const char *c; int l, r, w; } toks[5] = {{"<L>", 1, 0, 0}, {"<R>", 0, 1, 0}, {"<W>", 0, 0, 1}, {"<LL>", 0, 0, 0}, {"<N>", 0, 0, 0}};
    for (int i = 0; i < 5; i++) {
        json_object *a = json_object_new_object();
        json_object_object_add(a, "id", json_object_new_int(49152 + i));
        json_object_object_add(a, "content", jstr(toks[i].c));
        json_object_object_add(a, "lstrip", json_object_new_boolean(toks[i].l));
        json_object_object_add(a, "rstrip", json_object_new_boolean(toks[i].r));
        json_object_object_add(a, "single_word", json_object_new_boolean(toks[i].w));
        json_object_object_add(a, "normalized", json_object_new_boolean(i == 4));
        json_object_object_add(a, "special", json_object_new_boolean(i != 4));
        json_object_array_add(added, a);
    }
    char out[700];
    json_write_file(tmp_path(out, sizeof out, "flags.json"), root, &e);
    json_object_put(root);
    Tokenizer *t = tok_load(out, &e);
    CHECK("added token flags load", t != NULL, "%s", e.msg);
    if (!t) return;
    CHECK("added token lstrip", parts_match(t, "x  <L> y", "x", 49152, " y"), "spaces before <L> not absorbed");
    CHECK("added token rstrip", parts_match(t, "x <R>  y", "x ", 49153, "y"), "spaces after <R> not absorbed");
    CHECK("added token longest first", parts_match(t, "x<LL>y", "x", 49155, "y"), "<LL> not matched whole");
    CHECK("added token normalized", parts_match(t, "x<N>y", "x", 49156, "y"), "<N> not matched");
    CHECK("added token single_word", parts_match(t, "x <W> y", "x ", 49154, " y"), "<W> between spaces not matched");
    int *ids = NULL;
    int n = tok_encode(t, "x<W>y", &ids, &e);
    CHECK("added token single_word inside a word", n > 0 && !contains(ids, n, 49154), "<W> matched inside x<W>y");
    char *d = tok_decode(t, ids, n, &e);
    CHECK("added token single_word text kept", d && !strcmp(d, "x<W>y"), "%s", d ? d : e.msg);
    free(d);
    free(ids);
    CHECK("tok_piece_id", tok_piece_id(t, "<LL>") == 49155 && tok_piece_id(t, "<|im_end|>") == 2 &&
                              tok_piece_id(t, "<nope>") == -1, "%d %d", tok_piece_id(t, "<LL>"), tok_piece_id(t, "<|im_end|>"));
    tok_free(t);
}

// ---- BOS / EOS from the files beside tokenizer.json ------------------------------------------------
static Tokenizer *load_with_configs(const char *json_src, const char *name, const char *tok_cfg, const char *cfg, Err *e) {
    char dir[700], p[800], cmd[4000];
    tmp_path(dir, sizeof dir, name);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && ln -s \"$(realpath '%s')\" '%s/tokenizer.json'", dir, dir, json_src, dir);
    if (system(cmd) != 0) { err_set(e, "cannot make %s", dir); return NULL; }
    if (tok_cfg) { snprintf(p, sizeof p, "%s/tokenizer_config.json", dir); write_file_atomic(p, tok_cfg, strlen(tok_cfg), e); }
    if (cfg) { snprintf(p, sizeof p, "%s/config.json", dir); write_file_atomic(p, cfg, strlen(cfg), e); }
    return tok_load(dir, e);
}

static void test_specials(void) {
    char p[1024];
    struct { const char *name, *rel; int bos, eos, vocab; } real[3] = {
        {"llama3", "tokenizers/llama3/tokenizer.json", 128000, 128001, 128256},
        {"qwen3", "tokenizers/qwen3/tokenizer.json", -1, 151645, 151669},
        {"smollm2", "tokenizers/smollm2/tokenizer.json", -1, 2, 49152},
    };
    for (int i = 0; i < 3; i++) {
        char cn[160];
        snprintf(cn, sizeof cn, "%s BOS/EOS/vocab", real[i].name);
        if (!model_file(real[i].rel, p, sizeof p)) { SKIP(cn, "absent"); continue; }
        Err e = {{0}};
        Tokenizer *t = tok_load(p, &e);
        CHECK(cn, t && tok_bos(t) == real[i].bos && tok_eos(t) == real[i].eos && tok_vocab_size(t) == real[i].vocab,
              "bos %d eos %d vocab %d %s", t ? tok_bos(t) : 0, t ? tok_eos(t) : 0, t ? tok_vocab_size(t) : 0, e.msg);
        if (t && i == 1) {  // a chatml turn: the special tokens in the text are those ids
            int *a = NULL, *b = NULL;
            int na = tok_encode(t, "<|im_start|>user\nHi there<|im_end|>\n", &a, &e), nb = tok_encode(t, "user\nHi there", &b, &e);
            CHECK("qwen3 chatml special tokens", na == nb + 3 && a[0] == 151644 && a[na - 2] == 151645 &&
                                                     !memcmp(a + 1, b, sizeof(int) * (size_t)nb),
                  "%d vs %d ids", na, nb);
            char *d = tok_decode(t, a, na, &e);
            // (<|im_end|> is Qwen's EOS, which decoding skips)
            CHECK("qwen3 chatml decode keeps markers", d && !strcmp(d, "<|im_start|>user\nHi there\n"), "%s", d ? d : "");
            free(d); free(a); free(b);
            // a llama emoji and Khmer letters: byte-level tokens that end inside a character
            const char *txt = "\xF0\x9F\xA6\x99 \xE1\x9E\x80\xE1\x9E\xB6\xE1\x9E\x93\xE1\x9F\x8B";
            na = tok_encode(t, txt, &a, &e);
            int partial = 0, chunks_ok = 0, prev = -1;
            char buf[256];
            for (int k = 0; k < na; k++) {
                const char *pt = tok_piece_text(t, prev, a[k], buf, sizeof buf);
                int inc;
                partial += utf8_valid_prefix((const uint8_t *)pt, strlen(pt), &inc) != strlen(pt);
                prev = a[k];
            }
            char *st = stream_all(t, a, na, &chunks_ok);
            printf("  qwen3 streaming: %d ids, %d of them end inside a character\n", na, partial);
            CHECK("qwen3 streaming keeps split characters whole", partial > 0 && chunks_ok && !strcmp(st, txt),
                  "partial %d whole %d [%s]", partial, chunks_ok, st);
            free(st);
            free(a);
        }
        if (t && i == 0) {  // byte-level: a continuation encodes as the same text would
            int *a = NULL, *b = NULL, *c = NULL;
            int na = tok_encode(t, "Hello", &a, &e), nb = tok_encode_cont(t, " world!", &b, &e),
                nc = tok_encode(t, "Hello world!", &c, &e);
            CHECK("llama3 encode ++ encode_cont == encode", na + nb == nc && !memcmp(c, a, sizeof(int) * (size_t)na) &&
                                                               !memcmp(c + na, b, sizeof(int) * (size_t)nb),
                  "%d + %d vs %d ids", na, nb, nc);
            free(a); free(b); free(c);
        }
        tok_free(t);
    }
    if (!model_file("tokenizers/smollm2/tokenizer.json", p, sizeof p)) return;
    Err e = {{0}};
    Tokenizer *t = load_with_configs(p, "cfg1", "{\"add_bos_token\": true, \"bos_token\": \"<|im_start|>\", \"eos_token\": {\"content\": \"<|im_end|>\"}}", NULL, &e);
    CHECK("tokenizer_config bos/eos strings and objects", t && tok_bos(t) == 1 && tok_eos(t) == 2, "%s bos %d eos %d", e.msg,
          t ? tok_bos(t) : 0, t ? tok_eos(t) : 0);
    tok_free(t);
    t = load_with_configs(p, "cfg2", "{\"add_bos_token\": true}", "{\"bos_token_id\": 0, \"eos_token_id\": [2, 0]}", &e);
    CHECK("config.json bos/eos ids (list)", t && tok_bos(t) == 0 && tok_eos(t) == 2, "%s", e.msg);
    tok_free(t);
    t = load_with_configs(p, "cfg3", "{\"bos_token\": \"<|im_start|>\"}", NULL, &e);
    CHECK("no add_bos_token: no BOS added (GPT-2 style)", t && tok_bos(t) == -1, "%s", e.msg);
    tok_free(t);
    t = load_with_configs(p, "cfg4", "{\"bos_token\": \"<nope>\"}", NULL, &e);
    CHECK("tokenizer_config unknown bos_token", !t && strstr(e.msg, "bos_token") && strstr(e.msg, "<nope>"), "%s", e.msg);
    tok_free(t);
    t = load_with_configs(p, "cfg5", "{\"add_bos_token\": 1", NULL, &e);
    CHECK("tokenizer_config invalid JSON", !t && strstr(e.msg, "tokenizer_config.json"), "%s", e.msg);
    tok_free(t);
}

// ---- NFC against Python's unicodedata --------------------------------------------------------------
static void test_nfc(void) {
    char prefix[700], cmd[1000];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_bpe.py nfc 400 3 %s", tmp_path(prefix, sizeof prefix, "nfc"));
    TuVectors v;
    if (system(cmd) != 0 || tu_vectors_read(g_tmp, "nfc", &v)) { CHECK("nfc reference ran", 0, "%s failed", cmd); return; }
    int ok = 0, changed = 0;
    for (int i = 0; i < v.n; i++) {
        size_t len = strlen(v.text[i]), m;
        char *r = uni_nfc(v.text[i], len, &m);
        const char *s = r ? r : v.text[i];
        if (!r) m = len;
        int k = 0, good = 1;
        for (size_t j = 0; j < m && good;) {
            int l;
            uint32_t cp = utf8_decode((const uint8_t *)s + j, m - j, &l);
            good = k < v.n_ids[i] && (int)cp == v.ids[i][k++];
            j += (size_t)l;
        }
        ok += good && k == v.n_ids[i];
        changed += r != NULL;
        free(r);
    }
    printf("  nfc: %d of %d strings as Python's unicodedata %s (%d needed changes)\n", ok, v.n, uni_version, changed);
    CHECK("nfc == unicodedata.normalize", v.n >= 400 && ok == v.n && changed > 100, "%d of %d", ok, v.n);
    tu_vectors_free(&v);
}

// ---- malformed files --------------------------------------------------------------------------------
static void expect_error(const char *name, const char *path, const char *want) {
    Err e = {{0}};
    Tokenizer *t = tok_load(path, &e);
    CHECK(name, !t && strstr(e.msg, want), "got \"%s\", want \"%s\"", t ? "(loaded)" : e.msg, want);
    tok_free(t);
}

static const char *write_gguf(const char *name, const char *model, const char *const *tokens, int n, const int32_t *types,
                              int nt, const char *pre, const char *const *merges, int nm, int bos) {
    static char p[8][800];
    static int k = 0;
    char *path = p[k++ % 8];
    tmp_path(path, 800, name);
    Err e = {{0}};
    GgufWriter *w = ggw_new(&e);
    ggw_set_str(w, "general.architecture", "llama", &e);
    if (model) ggw_set_str(w, "tokenizer.ggml.model", model, &e);
    if (pre) ggw_set_str(w, "tokenizer.ggml.pre", pre, &e);
    if (tokens) ggw_set_arr_str(w, "tokenizer.ggml.tokens", tokens, (uint64_t)n, &e);
    if (types) ggw_set_arr_i32(w, "tokenizer.ggml.token_type", types, (uint64_t)nt, &e);
    if (merges) ggw_set_arr_str(w, "tokenizer.ggml.merges", merges, (uint64_t)nm, &e);
    if (bos >= 0) ggw_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos, &e);
    if (ggw_save(w, path, &e)) printf("  cannot write %s: %s\n", path, e.msg);
    ggw_free(w);
    return path;
}

static void test_malformed(void) {
    // a tiny valid tokenizer.json first
    const char *ok = write_tmp("tiny.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"c\": 3},"
                                           " \"merges\": [\"a b\"]}}");
    Err e = {{0}};
    Tokenizer *t = tok_load(ok, &e);
    int *ids = NULL, n = t ? tok_encode(t, "abxc", &ids, &e) : -1;
    CHECK("tiny tokenizer.json", t && n == 2 && ids[0] == 2 && ids[1] == 3 && tok_bos(t) == -1 && tok_eos(t) == -1,
          "%s %d ids", e.msg, n);
    free(ids);
    tok_free(t);
    expect_error("tokenizer.json invalid JSON", write_tmp("bad1.json", "{\"model\": {\"type\": \"BPE\",\n\"vocab\": {\"a\" 0}}}"),
                 "bad1.json:2: invalid JSON");
    expect_error("tokenizer.json Unigram", write_tmp("bad2.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}"),
                 "model type \"Unigram\" is not supported");
    expect_error("tokenizer.json unknown regex",
                 write_tmp("bad3.json", "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\w+\"}, \"behavior\": "
                                        "\"Isolated\", \"invert\": false}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}"),
                 "unknown regex");
    expect_error("tokenizer.json merge of unknown tokens",
                 write_tmp("bad4.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}"),
                 "merge 0 (\"a\" + \"b\"): the merged token is not in the vocabulary");
    expect_error("tokenizer.json bad merge", write_tmp("bad5.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"ab\"]}}"),
                 "model.merges[0] \"ab\" is not two tokens");
    expect_error("tokenizer.json bad vocab id", write_tmp("bad6.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"0\"}}}"),
                 "\"a\" has no valid id");
    expect_error("tokenizer.json NFKC", write_tmp("bad7.json", "{\"normalizer\": {\"type\": \"NFKC\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}"),
                 "normalizer \"NFKC\" is not supported");
    expect_error("tokenizer.json added token without content",
                 write_tmp("bad8.json", "{\"added_tokens\": [{\"id\": 5}], \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}"),
                 "added_tokens[0]");
    expect_error("tokenizer.json unknown decoder",
                 write_tmp("bad9.json", "{\"decoder\": {\"type\": \"WordPiece\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}"),
                 "decoder \"WordPiece\" is not supported");
    expect_error("tokenizer.json no model", write_tmp("bad10.json", "{\"version\": \"1.0\"}"), "no \"model\" object");
    char dir[700];
    tmp_path(dir, sizeof dir, "emptydir");
    make_dirs(dir, NULL);
    expect_error("tokenizer directory without files", dir, "no tokenizer.json or tokenizer.model");

    const char *toks[4] = {"a", "b", "ab", "<s>"};
    int32_t types[4] = {1, 1, 1, 3};
    const char *merges[1] = {"a b"}, *bad_merges[1] = {"a c"};
    const char *g = write_gguf("ok.gguf", "gpt2", toks, 4, types, 4, "gpt-2", merges, 1, 3);
    t = tok_load(g, &e);
    n = t ? tok_encode(t, "ab<s>", &ids, &e) : -1;
    CHECK("tiny gguf gpt2 vocab", t && n == 2 && ids[0] == 2 && ids[1] == 3, "%s %d ids", e.msg, n);
    free(ids);
    tok_free(t);
    expect_error("gguf without vocabulary", write_gguf("g1.gguf", NULL, NULL, 0, NULL, 0, NULL, NULL, 0, -1), "no tokenizer.ggml.model");
    expect_error("gguf unknown tokenizer model", write_gguf("g2.gguf", "bert", toks, 4, types, 4, NULL, NULL, 0, -1),
                 "tokenizer.ggml.model \"bert\" is not supported");
    expect_error("gguf token_type count", write_gguf("g3.gguf", "gpt2", toks, 4, types, 3, "gpt-2", merges, 1, -1),
                 "tokenizer.ggml.token_type has 3 entries but tokenizer.ggml.tokens has 4");
    expect_error("gguf llama without scores", write_gguf("g4.gguf", "llama", toks, 4, types, 4, NULL, NULL, 0, -1),
                 "tokenizer.ggml.scores is missing");
    expect_error("gguf unknown pre-tokenizer", write_gguf("g5.gguf", "gpt2", toks, 4, types, 4, "mystery", merges, 1, -1),
                 "tokenizer.ggml.pre \"mystery\" is not supported");
    expect_error("gguf without merges", write_gguf("g6.gguf", "gpt2", toks, 4, types, 4, "gpt-2", NULL, 0, -1),
                 "tokenizer.ggml.merges is missing");
    expect_error("gguf merge of unknown tokens", write_gguf("g7.gguf", "gpt2", toks, 4, types, 4, "gpt-2", bad_merges, 1, -1),
                 "merge 0 (\"a\" + \"c\")");
    expect_error("gguf bos out of range", write_gguf("g8.gguf", "gpt2", toks, 4, types, 4, "gpt-2", merges, 1, 9),
                 "tokenizer.ggml.bos_token_id = 9 is outside the vocabulary");
    int32_t bad_types[4] = {1, 1, 9, 3};
    expect_error("gguf bad token type", write_gguf("g9.gguf", "gpt2", toks, 4, bad_types, 4, "gpt-2", merges, 1, -1),
                 "tokenizer.ggml.token_type[2] = 9");
    // a truncated GGUF file
    size_t len;
    char *data = read_file(g, &len, &e), tp[700];
    write_file_atomic(tmp_path(tp, sizeof tp, "trunc.gguf"), data, len / 2, &e);
    free(data);
    expect_error("gguf truncated", tp, "trunc.gguf");
}

// ---- encoding speed -------------------------------------------------------------------------------
// A generated 10 MB JSONL ({"text": ...} lines of Zipf-distributed made-up words, numbers,
// punctuation and some non-ASCII words), encoded line by line and through dataset_load.
static char *make_corpus(const char *path, size_t target, int *n_lines, char ***lines) {
    static const char *syl[] = {"ka", "to", "ri", "an", "the", "ing", "er", "on", "mo", "lu", "st", "pre", "ex", "qu",
                                "ble", "tion", "sh", "ou", "ai", "ze", "ly", "com", "ver", "ness", "ab", "ul", "im", "gr"};
    static const char *uni[] = {"caf\xC3\xA9", "na\xC3\xAFve", "\xD0\xBC\xD0\xB8\xD1\x80", "\xE6\x97\xA5\xE6\x9C\xAC",
                                "\xF0\x9F\x98\x80", "\xC3\x84pfel", "stra\xC3\x9F" "e", "\xCE\xB3\xCE\xB5\xCE\xB9\xCE\xB1"};
    static const char *punct[] = {".", ",", "!", "?", ":", ";", " -", " (", ")", "\\\"", "'s", "\\n"};
    enum { NW = 40000 };
    char **words = malloc(sizeof(char *) * NW);
    Rng r;
    rng_seed(&r, 1234);
    for (int i = 0; i < NW; i++) {
        char w[64] = "";
        int ns = 1 + (int)rng_below(&r, 4);
        for (int k = 0; k < ns; k++) strcat(w, syl[rng_below(&r, sizeof syl / sizeof syl[0])]);
        if (rng_below(&r, 10) == 0) w[0] = (char)(w[0] - 32);
        words[i] = strdup(w);
    }
    FILE *f = fopen(path, "wb");
    size_t total = 0, cap = 1 << 16;
    *lines = malloc(sizeof(char *) * cap);
    *n_lines = 0;
    char text[4096];
    while (total < target) {
        size_t k = 0;
        int nw = 20 + (int)rng_below(&r, 200);
        for (int i = 0; i < nw && k < sizeof text - 64; i++) {
            float u = rng_uniform(&r);
            const char *w = rng_below(&r, 50) == 0 ? uni[rng_below(&r, 8)] : words[(int)(u * u * u * NW)];
            char num[16];
            if (rng_below(&r, 30) == 0) { snprintf(num, sizeof num, "%u", rng_below(&r, 100000)); w = num; }
            k += (size_t)snprintf(text + k, sizeof text - k, "%s%s", i ? " " : "", w);
            if (rng_below(&r, 8) == 0) k += (size_t)snprintf(text + k, sizeof text - k, "%s", punct[rng_below(&r, 12)]);
        }
        text[k] = 0;
        // the JSON line holds the text as it is (no characters needing escapes but "\n")
        total += (size_t)fprintf(f, "{\"text\": \"%s\"}\n", text);
        if ((size_t)*n_lines == cap) *lines = realloc(*lines, sizeof(char *) * (cap *= 2));
        char *plain = malloc(k + 1), *q = plain;
        for (const char *p = text; *p; p++) {
            if (p[0] == '\\' && (p[1] == 'n' || p[1] == '"')) { *q++ = p[1] == 'n' ? '\n' : '"'; p++; }
            else *q++ = *p;
        }
        *q = 0;
        (*lines)[(*n_lines)++] = plain;
    }
    fclose(f);
    for (int i = 0; i < NW; i++) free(words[i]);
    free(words);
    return (char *)path;
}

static void bench_one(const char *name, const Tokenizer *t, const char *jsonl, char **lines, int n_lines) {
    size_t bytes = 0;
    long tokens = 0;
    double t0 = now_seconds();
    for (int i = 0; i < n_lines; i++) {
        Err e;
        int *ids = NULL;
        int n = tok_encode(t, lines[i], &ids, &e);
        tokens += n;
        bytes += strlen(lines[i]);
        free(ids);
    }
    double dt = now_seconds() - t0;
    DataOptions o;
    data_options_default(&o);
    o.format = FMT_TEXT;
    o.seq_len = 1 << 20;
    Err e = {{0}};
    t0 = now_seconds();
    Dataset *d = dataset_load(jsonl, t, &o, &e);
    double dd = now_seconds() - t0;
    printf("  speed %s: tok_encode %.1f MB in %.2f s = %.1f MB/s (%ld tokens, %.2f bytes/token); dataset_load of "
           "the %.1f MB JSONL %.2f s = %.1f MB/s\n",
           name, bytes / 1e6, dt, bytes / 1e6 / dt, tokens, (double)bytes / (double)tokens, bytes / 1e6, dd, bytes / 1e6 / dd);
    char cn[160];
    snprintf(cn, sizeof cn, "%s encodes the 10 MB JSONL", name);
    CHECK(cn, d && d->n == n_lines && tokens > (long)(bytes / 8), "%s", e.msg);
    dataset_free(d);
}

static void test_speed(void) {
    const char *rels[2] = {"tokenizers/qwen3/tokenizer.json", "tokenizers/llama3/tokenizer.json"};
    const char *names[2] = {"qwen3", "llama3"};
    char p[1024], jsonl[700];
    char **lines = NULL;
    int n_lines = 0;
    make_corpus(tmp_path(jsonl, sizeof jsonl, "bench.jsonl"), 10 * 1000 * 1000, &n_lines, &lines);
    for (int i = 0; i < 2; i++) {
        if (!model_file(rels[i], p, sizeof p)) { SKIP("speed", "%s absent", rels[i]); continue; }
        Err e = {{0}};
        Tokenizer *t = tok_load(p, &e);
        if (t) bench_one(names[i], t, jsonl, lines, n_lines);
        tok_free(t);
    }
    char g[700];  // llama.cpp's SentencePiece algorithm (no pre-tokenizer, no cache): 1 MB
    if (file_exists(tmp_path(g, sizeof g, "llama2.gguf"))) {
        Err e = {{0}};
        Tokenizer *t = tok_load(g, &e);
        size_t bytes = 0;
        double t0 = now_seconds();
        for (int i = 0; t && i < n_lines && bytes < 1000000; i++) {
            int *ids = NULL;
            tok_encode(t, lines[i], &ids, &e);
            bytes += strlen(lines[i]);
            free(ids);
        }
        double dt = now_seconds() - t0;
        printf("  speed llama2 gguf (SentencePiece merging): %.1f MB in %.2f s = %.1f MB/s\n", bytes / 1e6, dt, bytes / 1e6 / dt);
        tok_free(t);
    }
    for (int i = 0; i < n_lines; i++) free(lines[i]);
    free(lines);
}

int main(void) {
    tu_tmpdir("test_tokenizers", g_tmp, sizeof g_tmp);
    g_models = tu_models_dir();
    if (!g_models) {
        SKIP("tokenizer vectors", "no models dir");
    } else {
        Tokenizer *t = load_or_skip("llama3 json", "tokenizers/llama3/tokenizer.json");
        if (t) check_vectors("llama3 json", t, "ggml-vocab-llama-bpe", 1);
        tok_free(t);
        t = load_or_skip("qwen3 json", "tokenizers/qwen3/tokenizer.json");
        if (t) check_vectors("qwen3 json", t, "ggml-vocab-qwen2", 1);
        tok_free(t);
        t = load_or_skip("smollm2 json", "tokenizers/smollm2/tokenizer.json");
        if (t) check_vectors("smollm2 json", t, "ggml-vocab-llama-bpe", 0);
        tok_free(t);
        test_reference();
        test_gguf_vocabs();
        test_spm_json();
        test_added_flags();
        test_specials();
        test_speed();
    }
    test_nfc();
    test_malformed();
    return tu_exit();
}
