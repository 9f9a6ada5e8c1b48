// Export and import: a merged model (in memory, as a HF directory in f32/bf16/f16, as a GGUF)
// gives the logits of base + adapter; PEFT and GGUF adapter files round-trip exactly (GGUF:
// q/k rows of B in the adjacent RoPE order as an explicit formula says, rsLoRA folded into B,
// the same effective delta after import); a GGUF adapter on the GGUF copy of a model gives
// the logits of the PEFT adapter on the HF copy; tokenizer metadata of a merged GGUF; clear
// errors for files that are not adapters; checkpoint lookup.
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#include "tests/testutil.h"
#include "model/model.h"
#include "data/data.h"
#include "export/export.h"
#include "train/train.h"

static char tmp[512];

// tmp/name, in one of 8 rotating buffers (more than are ever in use at once)
static const char *tpath(const char *name) {
    static char ring[8][1024];
    static unsigned next;
    char *buf = ring[next++ % 8];
    snprintf(buf, sizeof ring[0], "%s/%s", tmp, name);
    return buf;
}

static Model *load_or_die(const char *path) {
    Err e;
    Model *m = model_load(path, &e);
    if (!m) {
        fprintf(stderr, "model_load %s: %s\n", path, e.msg);
        exit(2);
    }
    return m;
}

// A random adapter with a non-zero B on every target (B starts at zero after lora_new).
static LoraAdapter *random_adapter(const Model *m, int rank, float alpha, int rslora, uint64_t seed) {
    Err e;
    LoraAdapter *a = lora_new(m, rank, alpha, (1u << LT_COUNT) - 1, 0.0f, rslora, seed, &e);
    if (!a) {
        fprintf(stderr, "lora_new: %s\n", e.msg);
        exit(2);
    }
    Rng r;
    rng_seed(&r, seed * 7 + 1);
    for (int i = 0; i < a->n_layers * LT_COUNT; i++)
        if (a->B[i])
            for (int64_t k = 0; k < a->B[i]->n; k++) a->B[i]->data[k] = 0.05f * rng_normal(&r);
    return a;
}

// logits (T, V) of ids (T) for m + lora (lora may be NULL), malloc'd.
static float *logits_of(const Model *m, const LoraAdapter *lora, const int *ids, int T) {
    Err e;
    Tape *t = tape_new(&e);
    tape_set_recording(t, 0);
    Tensor *lg = model_forward(t, m, lora, ids, 1, T, NULL, 0);
    float *out = malloc((size_t)lg->n * sizeof(float));
    memcpy(out, lg->data, (size_t)lg->n * sizeof(float));
    tape_free(t);
    return out;
}

// max |a-b| / max |b| over n values (a relative error on the scale of the logits); +inf when
// either side holds a NaN or an infinity
static double rel_err(const float *a, const float *b, long n) {
    double d = 0, s = 1e-30;
    for (long i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return d / s;
}

static int bits_equal(const Tensor *a, const Tensor *b) {
    return a && b && a->n == b->n && !memcmp(a->data, b->data, (size_t)a->n * sizeof(float));
}

// Every A and B of x and y bitwise equal, and the same targets, rank and alpha.
static int adapters_identical(const LoraAdapter *x, const LoraAdapter *y) {
    if (x->targets != y->targets || x->rank != y->rank || x->alpha != y->alpha || x->scale != y->scale ||
        x->use_rslora != y->use_rslora || x->n_layers != y->n_layers)
        return 0;
    for (int i = 0; i < x->n_layers * LT_COUNT; i++) {
        if (!x->A[i] != !y->A[i]) return 0;
        if (x->A[i] && (!bits_equal(x->A[i], y->A[i]) || !bits_equal(x->B[i], y->B[i]))) return 0;
    }
    return 1;
}

// max over targets of |scale_x B_x A_x - scale_y B_y A_y| / max |scale_x B_x A_x|
static double delta_err(const LoraAdapter *x, const LoraAdapter *y) {
    double worst = 0;
    for (int i = 0; i < x->n_layers * LT_COUNT; i++) {
        if (!x->A[i]) continue;
        if (!y->A[i]) return INFINITY;
        int64_t r = x->A[i]->shape[0], in = x->A[i]->shape[1], out = x->B[i]->shape[0];
        int64_t ry = y->A[i]->shape[0];
        double d = 0, s = 1e-30;
        for (int64_t o = 0; o < out; o++)
            for (int64_t c = 0; c < in; c++) {
                double vx = 0, vy = 0;
                for (int64_t k = 0; k < r; k++) vx += (double)x->B[i]->data[o * r + k] * x->A[i]->data[k * in + c];
                for (int64_t k = 0; k < ry; k++) vy += (double)y->B[i]->data[o * ry + k] * y->A[i]->data[k * in + c];
                vx *= x->scale;
                vy *= y->scale;
                d = tu_worse(d, fabs(vx - vy));  // a NaN counts as +inf
                s = fmax(s, fabs(vx));
            }
        worst = tu_worse(worst, d / s);
    }
    return worst;
}

static void test_merge(const char *base_dir, const int *ids, int T) {
    Err e;
    Model *base = load_or_die(base_dir);
    const long n = (long)T * base->cfg.vocab_size;
    LoraAdapter *a = random_adapter(base, 4, 8.0f, 0, 11);
    float *want = logits_of(base, a, ids, T);
    float *plain = logits_of(base, NULL, ids, T);
    CHECK("adapter_changes_logits", rel_err(plain, want, n) > 1e-3 && isfinite(rel_err(plain, want, n)),
          "adapter moved the logits by only %g",
          rel_err(plain, want, n));

    Model *merged = load_or_die(base_dir);
    CHECK("merge_in_memory", lora_merge(merged, a, &e) == 0, "%s", e.msg);
    float *got = logits_of(merged, NULL, ids, T);
    double err = rel_err(got, want, n);
    printf("merged (in memory) vs base+adapter: max rel err %.3g\n", err);
    CHECK("merged_logits_equal_base_plus_adapter", err < 1e-4, "rel err %g", err);

    // HF directory in f32 / bf16 / f16
    const char *names[3] = {"merged_f32", "merged_bf16", "merged_f16"};
    const StDtype dts[3] = {ST_F32, ST_BF16, ST_F16};
    const double tol[3] = {1e-4, 2e-2, 2e-3};  // bf16 keeps 8 significant bits, f16 11
    char src_cfg[1100];
    path_join(src_cfg, sizeof src_cfg, base_dir, "config.json");
    for (int k = 0; k < 3; k++) {
        char name[96];
        int ok = merged_save_hf(merged, dts[k], src_cfg, tpath(names[k]), &e) == 0;
        snprintf(name, sizeof name, "%s_saved", names[k]);
        CHECK(name, ok, "%s", e.msg);
        if (!ok) continue;
        Model *back = load_or_die(tpath(names[k]));
        float *lg = logits_of(back, NULL, ids, T);
        double eb = rel_err(lg, want, n);
        printf("%s reloaded vs base+adapter: max rel err %.3g (tolerance %g)\n", names[k], eb, tol[k]);
        snprintf(name, sizeof name, "%s_logits", names[k]);
        CHECK(name, eb < tol[k], "rel err %g >= %g", eb, tol[k]);
        if (k == 0) CHECK("merged_f32_reload_bit_exact", !memcmp(lg, got, (size_t)n * sizeof(float)), "differs");
        free(lg);
        model_free(back);
        // the dtype is the file's and config.json says so
        SafeTensors *st = st_open(path_join(name, sizeof name, tpath(names[k]), "model.safetensors"), &e);
        CHECK(k == 0 ? "merged_f32_dtype" : k == 1 ? "merged_bf16_dtype" : "merged_f16_dtype",
              st && st_find(st, "model.layers.0.self_attn.q_proj.weight")->dtype == dts[k], "wrong dtype");
        st_close(st);
        char *cfg = read_file(path_join(name, sizeof name, tpath(names[k]), "config.json"), NULL, &e);
        const char *want_dt = k == 0 ? "float32" : k == 1 ? "bfloat16" : "float16";
        CHECK(k == 0 ? "merged_f32_config" : k == 1 ? "merged_bf16_config" : "merged_f16_config",
              cfg && strstr(cfg, want_dt) && strstr(cfg, "\"test_extra_key\""),
              "config.json lacks torch_dtype %s or the source's extra key", want_dt);
        free(cfg);
    }

    // GGUF (no vocabulary): our loader reads it back to the same weights
    int ok = merged_save_gguf(merged, GGML_F32, NULL, tpath("merged.gguf"), &e) == 0;
    CHECK("merged_gguf_saved", ok, "%s", e.msg);
    if (ok) {
        Model *back = load_or_die(tpath("merged.gguf"));
        float *lg = logits_of(back, NULL, ids, T);
        CHECK("merged_gguf_reload_bit_exact", !memcmp(lg, got, (size_t)n * sizeof(float)), "rel err %g",
              rel_err(lg, got, n));
        Gguf *g = gguf_open(tpath("merged.gguf"), &e);
        const GgufTensor *q = g ? gguf_find_tensor(g, "blk.0.attn_q.weight") : NULL;
        const char *vm = g ? gguf_get_str(g, "tokenizer.ggml.model") : NULL;
        CHECK("merged_gguf_layout", q && q->ne[0] == base->cfg.dim && vm && !strcmp(vm, "no_vocab") &&
                                        (gguf_find_tensor(g, "output.weight") == NULL) == (base->cfg.tied_embeddings != 0),
              "unexpected tensors or metadata");
        // the q rows are in the adjacent order: file row 2i+j of head h = our row h*D + j*D/2 + i
        int D = base->cfg.head_dim, C = base->cfg.dim, good = q != NULL;
        float *fq = malloc((size_t)q->n * sizeof(float));
        if (good && gguf_read_f32(g, "blk.0.attn_q.weight", fq, q->n, &e)) good = 0;
        const Weight *wq = &merged->layers[0].w[LT_Q];
        for (int h = 0; good && h < base->cfg.n_heads; h++)
            for (int i = 0; i < D / 2; i++)
                for (int j = 0; j < 2; j++)
                    if (memcmp(fq + ((size_t)h * D + 2 * i + j) * C,
                               (const float *)wq->data + ((size_t)h * D + j * D / 2 + i) * C, (size_t)C * 4))
                        good = 0;
        CHECK("merged_gguf_q_rows_adjacent_order", good, "q rows not permuted as expected");
        free(fq);
        gguf_close(g);
        free(lg);
        model_free(back);
    }
    free(got);
    free(plain);
    free(want);
    lora_free(a);
    model_free(merged);
    model_free(base);
}

static void test_adapter_files(const char *base_dir, const int *ids, int T) {
    Err e;
    Model *m = load_or_die(base_dir);
    const long n = (long)T * m->cfg.vocab_size;
    for (int rs = 0; rs < 2; rs++) {
        LoraAdapter *a = random_adapter(m, rs ? 3 : 4, 16.0f, rs, 21 + rs);  // rsLoRA: sqrt(3) is inexact
        char name[96];
        // PEFT round trip, through adapter_load's dispatch
        const char *dir = tpath(rs ? "peft_rs" : "peft");
        LoraAdapter *b = adapter_save_peft(a, m, dir, &e) ? NULL : adapter_load(dir, m, &e);
        snprintf(name, sizeof name, "peft_roundtrip_exact%s", rs ? "_rslora" : "");
        CHECK(name, b && adapters_identical(a, b), "%s", b ? "A/B/alpha/rank differ" : e.msg);
        lora_free(b);
        // GGUF round trip
        const char *file = tpath(rs ? "adapter_rs.gguf" : "adapter.gguf");
        int saved = adapter_save_gguf(a, m, file, &e) == 0;
        snprintf(name, sizeof name, "gguf_adapter_saved%s", rs ? "_rslora" : "");
        CHECK(name, saved, "%s", e.msg);
        if (!saved) {
            lora_free(a);
            continue;
        }
        LoraAdapter *g = adapter_load(file, m, &e);
        snprintf(name, sizeof name, "gguf_adapter_loaded%s", rs ? "_rslora" : "");
        CHECK(name, g != NULL, "%s", e.msg);
        if (!g) {
            lora_free(a);
            continue;
        }
        if (!rs) {
            CHECK("gguf_roundtrip_exact", adapters_identical(a, g), "A/B/alpha/rank differ after the round trip");
        } else {
            double d = delta_err(a, g);
            printf("rsLoRA GGUF round trip: effective delta max rel err %.3g (scale %g -> %g)\n", d, a->scale, g->scale);
            CHECK("gguf_roundtrip_rslora_delta", d < 1e-6 && g->use_rslora == 0 && g->rank == a->rank,
                  "delta err %g", d);
            // in the file: alpha as given, B scaled by sqrt(r) (llama.cpp applies alpha/r)
            Gguf *gf = gguf_open(file, &e);
            float alpha = 0, b0[1];
            const GgufTensor *tb = gf ? gguf_find_tensor(gf, "blk.0.attn_v.weight.lora_b") : NULL;
            int ok = tb && !gguf_get_f32(gf, "adapter.lora.alpha", &alpha) && alpha == a->alpha;
            float *bv = ok ? malloc((size_t)tb->n * sizeof(float)) : NULL;
            if (ok && gguf_read_f32(gf, tb->name, bv, tb->n, &e)) ok = 0;
            b0[0] = a->B[LT_V]->data[5] * (a->scale / (a->alpha / (float)a->rank));
            CHECK("gguf_rslora_folded_into_b", ok && fabsf(bv[5] - b0[0]) <= 1e-6f * fabsf(b0[0]),
                  "file B %g, expected %g", ok ? bv[5] : 0, b0[0]);
            free(bv);
            gguf_close(gf);
        }
        float *la = logits_of(m, a, ids, T), *lg = logits_of(m, g, ids, T);
        snprintf(name, sizeof name, "gguf_adapter_same_logits%s", rs ? "_rslora" : "");
        CHECK(name, rel_err(lg, la, n) < 1e-5, "rel err %g", rel_err(lg, la, n));
        free(la);
        free(lg);
        lora_free(g);
        lora_free(a);
    }

    // the file's lora_a / lora_b: ne [in, r] / [r, out], B's q rows in the adjacent order
    LoraAdapter *a = random_adapter(m, 4, 16.0f, 0, 31);
    int ok = adapter_save_gguf(a, m, tpath("check.gguf"), &e) == 0;
    Gguf *g = ok ? gguf_open(tpath("check.gguf"), &e) : NULL;
    const GgufTensor *ta = g ? gguf_find_tensor(g, "blk.1.attn_q.weight.lora_a") : NULL;
    const GgufTensor *tb = g ? gguf_find_tensor(g, "blk.1.attn_q.weight.lora_b") : NULL;
    const char *gt = g ? gguf_get_str(g, "general.type") : NULL, *at = g ? gguf_get_str(g, "adapter.type") : NULL;
    const char *arch = g ? gguf_get_str(g, "general.architecture") : NULL;
    int C = m->cfg.dim, D = m->cfg.head_dim, QD = m->cfg.n_heads * D;
    CHECK("gguf_adapter_metadata", gt && !strcmp(gt, "adapter") && at && !strcmp(at, "lora") && arch &&
                                       !strcmp(arch, "llama"),
          "general.type %s adapter.type %s arch %s", gt ? gt : "-", at ? at : "-", arch ? arch : "-");
    CHECK("gguf_adapter_shapes", ta && tb && ta->ne[0] == C && ta->ne[1] == 4 && tb->ne[0] == 4 && tb->ne[1] == QD &&
                                     ta->type == GGML_F32,
          "lora_a/lora_b dims wrong");
    if (ta && tb) {
        float *fa = malloc((size_t)ta->n * 4), *fb = malloc((size_t)tb->n * 4);
        int good = !gguf_read_f32(g, ta->name, fa, ta->n, &e) && !gguf_read_f32(g, tb->name, fb, tb->n, &e);
        const Tensor *A = a->A[1 * LT_COUNT + LT_Q], *B = a->B[1 * LT_COUNT + LT_Q];
        good = good && !memcmp(fa, A->data, (size_t)A->n * 4);
        for (int h = 0; good && h < m->cfg.n_heads; h++)
            for (int i = 0; i < D / 2; i++)
                for (int j = 0; j < 2; j++)
                    if (memcmp(fb + ((size_t)h * D + 2 * i + j) * 4, B->data + ((size_t)h * D + j * D / 2 + i) * 4, 16))
                        good = 0;
        CHECK("gguf_adapter_b_rows_adjacent_order", good, "lora_a or permuted lora_b differ");
        // v is not rotated: B as it is
        const GgufTensor *vb = gguf_find_tensor(g, "blk.1.attn_v.weight.lora_b");
        float *fv = vb ? malloc((size_t)vb->n * 4) : NULL;
        CHECK("gguf_adapter_v_unpermuted", fv && !gguf_read_f32(g, vb->name, fv, vb->n, &e) &&
                                               !memcmp(fv, a->B[1 * LT_COUNT + LT_V]->data, (size_t)vb->n * 4),
              "v's lora_b changed");
        free(fv);
        free(fa);
        free(fb);
    }
    gguf_close(g);

    // the GGUF copy of the model + the GGUF adapter == the HF model + the PEFT adapter
    ok = merged_save_gguf(m, GGML_F32, NULL, tpath("base.gguf"), &e) == 0;
    Model *mg = ok ? load_or_die(tpath("base.gguf")) : NULL;
    LoraAdapter *ag = mg ? adapter_load(tpath("check.gguf"), mg, &e) : NULL;
    if (ag) {
        float *want = logits_of(m, a, ids, T), *got = logits_of(mg, ag, ids, T);
        CHECK("gguf_adapter_on_gguf_base_same_logits", !memcmp(want, got, (size_t)n * 4), "rel err %g",
              rel_err(got, want, n));
        free(want);
        free(got);
    } else {
        CHECK("gguf_adapter_on_gguf_base_same_logits", 0, "%s", e.msg);
    }
    lora_free(ag);
    model_free(mg);

    // files that are not adapters
    Err e2 = {{0}};
    LoraAdapter *bad = adapter_load(tpath("base.gguf"), m, &e2);
    CHECK("model_gguf_is_not_an_adapter", !bad && strstr(e2.msg, "not a LoRA adapter"), "%s", e2.msg);
    lora_free(bad);
    char cfgp[1100];
    path_join(cfgp, sizeof cfgp, base_dir, "config.json");
    bad = adapter_load(cfgp, m, &e2);
    CHECK("json_is_not_an_adapter", !bad && strstr(e2.msg, "not an adapter"), "%s", e2.msg);
    lora_free(bad);
    bad = adapter_load(tpath("nothing_here"), m, &e2);
    CHECK("missing_adapter_error", !bad && strstr(e2.msg, "no such adapter"), "%s", e2.msg);
    lora_free(bad);
    // an adapter for another shape of model
    ModelConfig c2;
    model_config_default(&c2, 32, 48, 2, 4, 2, m->cfg.vocab_size, 64);
    if (!model_write_random(&c2, 9, 0.05f, tpath("small"), &e)) {
        Model *small = load_or_die(tpath("small"));
        bad = adapter_load(tpath("check.gguf"), small, &e2);
        CHECK("gguf_adapter_wrong_model_error", !bad && strstr(e2.msg, "needs ne"), "%s", e2.msg);
        lora_free(bad);
        model_free(small);
    }
    lora_free(a);
    model_free(m);
}

// A merged GGUF built from a SentencePiece model carries its vocabulary (stories260K's).
static void test_gguf_vocab(const char *base_dir) {
    const char *md = tu_models_dir();
    if (!md) {
        SKIP("merged_gguf_spm_vocab", "no ../shared/models");
        return;
    }
    Err e;
    char tok[1100], src[1100];
    snprintf(tok, sizeof tok, "%s/stories260K/tok512.model", md);
    snprintf(src, sizeof src, "%s/stories260K/stories260K.gguf", md);
    Model *m = load_or_die(base_dir);
    int ok = merged_save_gguf(m, GGML_F16, tok, tpath("spm.gguf"), &e) == 0;
    CHECK("merged_gguf_spm_vocab_saved", ok, "%s", e.msg);
    Gguf *mine = ok ? gguf_open(tpath("spm.gguf"), &e) : NULL, *ref = gguf_open(src, &e);
    GgufValueType et;
    uint64_t cnt = 0;
    int good = mine && ref && !gguf_get_arr(mine, "tokenizer.ggml.tokens", &et, &cnt) && cnt == 512;
    // the same pieces, scores and types as the converter wrote into stories260K.gguf
    for (uint64_t i = 0; good && i < cnt; i++) {
        const char *a = gguf_arr_str(mine, "tokenizer.ggml.tokens", i), *b = gguf_arr_str(ref, "tokenizer.ggml.tokens", i);
        if (!a || !b || strcmp(a, b) ||
            gguf_arr_num(mine, "tokenizer.ggml.scores", i) != gguf_arr_num(ref, "tokenizer.ggml.scores", i) ||
            gguf_arr_num(mine, "tokenizer.ggml.token_type", i) != gguf_arr_num(ref, "tokenizer.ggml.token_type", i)) {
            printf("token %llu: ours %s %g %g, stories260K.gguf %s %g %g\n", (unsigned long long)i, a ? a : "-",
                   gguf_arr_num(mine, "tokenizer.ggml.scores", i), gguf_arr_num(mine, "tokenizer.ggml.token_type", i),
                   b ? b : "-", gguf_arr_num(ref, "tokenizer.ggml.scores", i),
                   gguf_arr_num(ref, "tokenizer.ggml.token_type", i));
            good = 0;
        }
    }
    uint32_t bos = 0, eos = 0;
    const char *vm = mine ? gguf_get_str(mine, "tokenizer.ggml.model") : NULL;
    good = good && vm && !strcmp(vm, "llama") && !gguf_get_u32(mine, "tokenizer.ggml.bos_token_id", &bos) &&
           bos == 1 && !gguf_get_u32(mine, "tokenizer.ggml.eos_token_id", &eos) && eos == 2;
    CHECK("merged_gguf_spm_vocab_matches_converter", good, "vocabulary differs from stories260K.gguf's");
    const GgufTensor *emb = mine ? gguf_find_tensor(mine, "token_embd.weight") : NULL;
    const GgufTensor *nrm = mine ? gguf_find_tensor(mine, "blk.0.attn_norm.weight") : NULL;
    CHECK("merged_gguf_f16_types", emb && emb->type == GGML_F16 && nrm && nrm->type == GGML_F32,
          "matrices should be F16 and norms F32");
    gguf_close(mine);
    // copying the vocabulary from a GGUF gives the same keys
    ok = merged_save_gguf(m, GGML_F32, src, tpath("copied.gguf"), &e) == 0;
    mine = ok ? gguf_open(tpath("copied.gguf"), &e) : NULL;
    good = mine && !gguf_get_arr(mine, "tokenizer.ggml.token_type", &et, &cnt) && cnt == 512 && et == GGUF_I32 &&
           !strcmp(gguf_arr_str(mine, "tokenizer.ggml.tokens", 300), gguf_arr_str(ref, "tokenizer.ggml.tokens", 300)) &&
           gguf_arr_num(mine, "tokenizer.ggml.scores", 300) == gguf_arr_num(ref, "tokenizer.ggml.scores", 300);
    CHECK("merged_gguf_vocab_copied_from_gguf", good, "%s", ok ? "keys differ" : e.msg);
    gguf_close(mine);
    gguf_close(ref);
    model_free(m);
}

static void test_checkpoint_find(void) {
    Err e;
    char dir[1100];
    const char *out = tpath("ckpt_out");
    char p[1200];
    make_dirs(out, &e);
    const char *names[] = {"checkpoint-4", "checkpoint-12", "checkpoint-30.tmp", "checkpoint-x", "checkpoint-8"};
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", out, names[i]);
        make_dirs(p, &e);
        if (i != 4) {  // checkpoint-8 is incomplete: no trainer_state.json
            snprintf(p, sizeof p, "%s/%s/trainer_state.json", out, names[i]);
            write_file_atomic(p, "{}", 2, &e);
        }
    }
    int rc = checkpoint_find(out, dir, sizeof dir, &e);
    CHECK("checkpoint_find_latest_whole", rc == 0 && strstr(dir, "checkpoint-12") && !strstr(dir, ".tmp"),
          "got %s", rc ? e.msg : dir);
    snprintf(p, sizeof p, "%s/checkpoint-4", out);
    rc = checkpoint_find(p, dir, sizeof dir, &e);
    CHECK("checkpoint_find_explicit", rc == 0 && !strcmp(dir, p), "got %s", rc ? e.msg : dir);
    Err e2 = {{0}};
    rc = checkpoint_find(tmp, dir, sizeof dir, &e2);
    CHECK("checkpoint_find_none_error", rc != 0 && strstr(e2.msg, "no checkpoint found"), "%s", e2.msg);
    TrainState st;
    Model *m = NULL;
    snprintf(p, sizeof p, "%s/checkpoint-12", out);
    rc = checkpoint_load(p, m, &st, NULL, NULL, &e2);
    CHECK("checkpoint_bad_state_error", rc != 0 && strstr(e2.msg, "trainer_state.json"), "%s", e2.msg);
}

int main(void) {
    tu_tmpdir("test_export", tmp, sizeof tmp);
    Err e;
    // a random llama with GQA, untied classifier and a config with a key of its own
    ModelConfig c;
    model_config_default(&c, 64, 96, 2, 4, 2, 512, 64);
    char base[1100];
    snprintf(base, sizeof base, "%s", tpath("base"));
    if (model_write_random(&c, 5, 0.08f, base, &e)) {
        CHECK("write_random_model", 0, "%s", e.msg);
        return tu_exit();
    }
    char cfgp[1100];
    char *cfg = read_file(path_join(cfgp, sizeof cfgp, base, "config.json"), NULL, &e);
    char *brace = cfg ? strchr(cfg, '{') : NULL;
    if (brace) {
        size_t len = strlen(cfg);
        char *nc = malloc(len + 64);
        snprintf(nc, len + 64, "{\"test_extra_key\": 7,%s", brace + 1);
        write_file_atomic(cfgp, nc, strlen(nc), &e);
        free(nc);
    }
    free(cfg);
    int ids[24];
    Rng r;
    rng_seed(&r, 3);
    for (int i = 0; i < 24; i++) ids[i] = (int)rng_below(&r, 512);
    test_merge(base, ids, 24);
    test_adapter_files(base, ids, 24);
    test_gguf_vocab(base);
    test_checkpoint_find();
    return tu_exit();
}
