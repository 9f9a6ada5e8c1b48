// infer/: sampler properties, the generation loop (KV cache = full recompute, seeds, stop
// strings, streaming), prompts in every template equal to training's and replies ending at
// the template's end-of-turn marker, the adapter registry (A -> B -> A identical to fresh loads, scale 0 =
// base, unload while in use), and the evaluation metrics on hand-made cases.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "export/export.h"
#include "infer/infer.h"
#include "tests/testutil.h"
#include "train/train.h"

// ---- sampler ------------------------------------------------------------------------------
static int count_nonzero(const float *p, int n) {
    int k = 0;
    for (int i = 0; i < n; i++) k += p[i] > 0;
    return k;
}

// logits giving softmax probabilities p (n) at temperature 1
static void logits_of(const double *p, int n, float *out) {
    for (int i = 0; i < n; i++) out[i] = (float)log(p[i]);
}

static void test_sampler(void) {
    Err e = {{0}};
    enum { V = 50 };
    Rng r;
    rng_seed(&r, 5);
    float logits[V], work[V], probs[V];
    for (int i = 0; i < V; i++) logits[i] = 3 * rng_normal(&r);
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;

    SamplerConfig c;
    sampler_config_default(&c);
    c.temperature = 0;
    Sampler s;
    int ok = sampler_init(&s, &c, V, &e) == 0, all = 1;
    for (int k = 0; k < 20 && ok; k++) {
        memcpy(work, logits, sizeof work);
        all &= sampler_next(&s, work, NULL, 0) == best;
    }
    sampler_free(&s);
    CHECK("sampler_temperature0_is_argmax", ok && all, "argmax %d", best);

    // top-k: exactly the k best tokens, in proportion to exp(logit / T)
    c = (SamplerConfig){0.7f, 5, 1.0f, 0.0f, 1.0f, 1};
    sampler_init(&s, &c, V, &e);
    memcpy(work, logits, sizeof work);
    sampler_probs(&s, work, NULL, 0, probs);
    int sorted[V];
    for (int i = 0; i < V; i++) sorted[i] = i;
    for (int i = 0; i < V; i++)  // selection sort, descending
        for (int j = i + 1; j < V; j++)
            if (logits[sorted[j]] > logits[sorted[i]]) {
                int t = sorted[i];
                sorted[i] = sorted[j];
                sorted[j] = t;
            }
    double z = 0;
    for (int i = 0; i < 5; i++) z += exp(logits[sorted[i]] / 0.7);
    double err = 0;
    for (int i = 0; i < 5; i++) err = tu_worse(err, fabs(probs[sorted[i]] - exp(logits[sorted[i]] / 0.7) / z));
    CHECK("sampler_top_k_support", count_nonzero(probs, V) == 5 && err < 1e-6, "%d kept, max err %g",
          count_nonzero(probs, V), err);
    // draws stay in the support and follow the probabilities
    int counts[V] = {0}, outside = 0;
    const int draws = 20000;
    for (int k = 0; k < draws; k++) {
        memcpy(work, logits, sizeof work);
        int t = sampler_next(&s, work, NULL, 0);
        counts[t]++;
        outside += probs[t] <= 0;
    }
    double maxdev = 0;
    for (int i = 0; i < V; i++) maxdev = tu_worse(maxdev, fabs((double)counts[i] / draws - probs[i]));
    CHECK("sampler_draws_follow_probs", outside == 0 && maxdev < 0.015, "outside %d, max deviation %g", outside,
          maxdev);
    sampler_free(&s);

    // top-p as HF: probabilities 0.5, 0.3, 0.15, 0.05
    double p4[4] = {0.15, 0.5, 0.05, 0.3};
    float l4[4], w4[4], q4[4];
    logits_of(p4, 4, l4);
    struct {
        float top_p;
        int kept;
    } tp[] = {{0.3f, 1}, {0.75f, 2}, {0.9f, 3}, {1.0f, 4}};
    int tp_ok = 1;
    for (int k = 0; k < 4; k++) {
        c = (SamplerConfig){1.0f, 0, tp[k].top_p, 0.0f, 1.0f, 1};
        sampler_init(&s, &c, 4, &e);
        memcpy(w4, l4, sizeof w4);
        sampler_probs(&s, w4, NULL, 0, q4);
        tp_ok &= count_nonzero(q4, 4) == tp[k].kept && q4[1] > 0;
        if (tp[k].kept == 2) tp_ok &= fabs(q4[1] - 0.625) < 1e-5 && fabs(q4[3] - 0.375) < 1e-5;
        sampler_free(&s);
    }
    CHECK("sampler_top_p_support", tp_ok, "top-p kept the wrong tokens");
    // min-p: drop tokens below min_p x the top probability (0.5)
    struct {
        float min_p;
        int kept;
    } mp[] = {{0.2f, 3}, {0.5f, 2}, {0.8f, 1}, {0.05f, 4}};
    int mp_ok = 1;
    for (int k = 0; k < 4; k++) {
        c = (SamplerConfig){1.0f, 0, 1.0f, mp[k].min_p, 1.0f, 1};
        sampler_init(&s, &c, 4, &e);
        memcpy(w4, l4, sizeof w4);
        sampler_probs(&s, w4, NULL, 0, q4);
        mp_ok &= count_nonzero(q4, 4) == mp[k].kept;
        sampler_free(&s);
    }
    CHECK("sampler_min_p_support", mp_ok, "min-p kept the wrong tokens");

    // repetition penalty as HF: positive logits divided, negative multiplied, each id once
    float rp[5] = {2.0f, -2.0f, 1.0f, 0.5f, -1.0f};
    int hist[4] = {0, 1, 1, 3};
    apply_repetition_penalty(rp, 5, hist, 4, 2.0f);
    CHECK("repetition_penalty_hf", rp[0] == 1.0f && rp[1] == -4.0f && rp[2] == 1.0f && rp[3] == 0.25f && rp[4] == -1.0f,
          "got %g %g %g %g %g", rp[0], rp[1], rp[2], rp[3], rp[4]);
    float g2[2] = {2.0f, 1.5f};
    int h0 = 0;
    c = (SamplerConfig){0.0f, 0, 1.0f, 0.0f, 2.0f, 1};
    sampler_init(&s, &c, 2, &e);
    CHECK("repetition_penalty_greedy", sampler_next(&s, g2, &h0, 1) == 1, "the penalised token still won");
    sampler_free(&s);

    // seeded: same seed, same stream; another seed, another stream
    int seq[3][64];
    uint64_t seeds[3] = {7, 7, 8};
    for (int k = 0; k < 3; k++) {
        c = (SamplerConfig){1.0f, 0, 1.0f, 0.0f, 1.0f, seeds[k]};
        sampler_init(&s, &c, V, &e);
        for (int i = 0; i < 64; i++) {
            memcpy(work, logits, sizeof work);
            seq[k][i] = sampler_next(&s, work, NULL, 0);
        }
        sampler_free(&s);
    }
    CHECK("sampler_seeded_reproducible", !memcmp(seq[0], seq[1], sizeof seq[0]) && memcmp(seq[0], seq[2], sizeof seq[0]),
          "seed 7 twice equal: %d, seed 8 differs: %d", !memcmp(seq[0], seq[1], sizeof seq[0]),
          memcmp(seq[0], seq[2], sizeof seq[0]) != 0);
    c = (SamplerConfig){1.0f, 0, 1.5f, 0.0f, 1.0f, 1};
    CHECK("sampler_config_check", sampler_config_check(&c, &e) < 0 && strstr(e.msg, "top_p"), "%s", e.msg);
}

// ---- text metrics -------------------------------------------------------------------------
static void test_metrics(void) {
    char *n = text_normalize("  The Capital, of France!  is   PARIS. ");
    CHECK("normalize_squad", n && !strcmp(n, "capital of france is paris"), "got [%s]", n ? n : "(null)");
    free(n);
    CHECK("exact_match", text_exact_match("The capital is Paris.", "the capital is paris") &&
                             !text_exact_match("capital is Paris", "capital is Rome"),
          "exact match wrong");
    CHECK("starts_with", text_starts_with("Paris. And more text", "paris") && !text_starts_with("Parisian", "Paris") &&
                             !text_starts_with("It is Paris", "Paris"),
          "starts-with wrong");
    CHECK("contains", text_contains("It is Paris, I think", "paris") && !text_contains("Parisian food", "Paris"),
          "contains wrong");
    double f1 = text_f1("the cat sat", "a cat sat down");  // 2 common, P 1, R 2/3
    double f1b = text_f1("cat cat cat", "cat dog");        // 1 common, P 1/3, R 1/2 -> 0.4
    CHECK("f1_squad", fabs(f1 - 0.8) < 1e-12 && fabs(f1b - 0.4) < 1e-12 && text_f1("x", "y") == 0 &&
                          text_f1("the", "a") == 1,
          "f1 %g, %g", f1, f1b);
}

// ---- a random model, a tokenizer and two adapters -----------------------------------------
typedef struct {
    char dir[512], model[600], tok[600], ad[2][600];
} Fixture;

static int make_fixture(Fixture *f) {
    tu_tmpdir("infer", f->dir, sizeof f->dir);
    char corpus[600], cmd[2400];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", f->dir);
    FILE *fp = fopen(corpus, "w");
    if (!fp) return -1;
    for (int i = 0; i < 40; i++)
        fprintf(fp, "The capital of country %d is city %d. Paris, Rome and Berlin are cities; stop here.\n", i, 3 * i);
    fclose(fp);
    snprintf(f->tok, sizeof f->tok, "%s/tok.model", f->dir);
    snprintf(cmd, sizeof cmd,
             "spm_train --input=%s --model_prefix=%s/tok --vocab_size=300 --model_type=bpe --byte_fallback=true "
             "--hard_vocab_limit=false --bos_id=1 --eos_id=2 --unk_id=0 --minloglevel=2 > /dev/null 2>&1",
             corpus, f->dir);
    if (system(cmd) != 0) return -1;
    Err e = {{0}};
    ModelConfig cfg;
    model_config_default(&cfg, 64, 128, 2, 4, 2, 320, 128);
    snprintf(f->model, sizeof f->model, "%s/model", f->dir);
    if (model_write_random(&cfg, 11, 0.08f, f->model, &e)) return -1;
    Model *m = model_load(f->model, &e);
    if (!m) return -1;
    for (int k = 0; k < 2; k++) {
        LoraAdapter *a = lora_new(m, 4, 8.0f, (1u << LT_COUNT) - 1, 0.0f, 0, 100 + k, &e);
        if (!a) return -1;
        Rng r;
        rng_seed(&r, 200 + k);
        for (int i = 0; i < a->n_layers * LT_COUNT; i++)
            if (a->B[i])
                for (int64_t j = 0; j < a->B[i]->n; j++) a->B[i]->data[j] = 0.1f * rng_normal(&r);
        snprintf(f->ad[k], sizeof f->ad[k], "%s/adapter_%c", f->dir, 'a' + k);
        int rc = adapter_save_peft(a, m, f->ad[k], &e);
        lora_free(a);
        if (rc) return -1;
    }
    model_free(m);
    return 0;
}

// full-sequence logits (T,V) of ids through m + lora, copied out
static float *logits_of_seq(const Model *m, const LoraAdapter *lora, const int *ids, int T) {
    Err e;
    Tape *t = tape_new(&e);
    tape_set_recording(t, 0);
    Tensor *l = model_forward(t, m, lora, ids, 1, T, NULL, 0);
    float *out = malloc(sizeof(float) * (size_t)l->n);
    memcpy(out, l->data, sizeof(float) * (size_t)l->n);
    tape_free(t);
    return out;
}

typedef struct {
    char text[4096];
    size_t len;
} Collect;

static int collect(void *user, const char *text, size_t len) {
    Collect *c = user;
    if (c->len + len < sizeof c->text) {
        memcpy(c->text + c->len, text, len);
        c->len += len;
        c->text[c->len] = 0;
    }
    return 0;
}

static void test_generation(const Fixture *f) {
    Err e = {{0}};
    Model *m = model_load(f->model, &e);
    Tokenizer *tok = tok_load(f->tok, &e);
    if (!m || !tok) {
        CHECK("generation_setup", 0, "%s", e.msg);
        return;
    }
    int *prompt = NULL;
    int np = prompt_ids_text(tok, TPL_RAW, "The capital of", 1, &prompt, &e);
    GenConfig g;
    gen_config_default(&g);
    g.max_tokens = 24;
    g.ignore_eos = 1;
    g.sampler.temperature = 0;
    GenResult base;
    int rc = generate(m, NULL, tok, prompt, np, &g, NULL, NULL, &base, &e);
    CHECK("generate_runs", rc == 0 && base.n == 24 && base.finish == FINISH_LENGTH, "rc %d n %d: %s", rc, base.n, e.msg);
    if (rc) return;
    // the KV-cache loop gives what a full recompute at every step gives
    int ids[128], n = np, same = 1;
    memcpy(ids, prompt, sizeof(int) * (size_t)np);
    for (int i = 0; i < 24; i++) {
        float *l = logits_of_seq(m, NULL, ids, n);
        const float *last = l + (size_t)(n - 1) * m->cfg.vocab_size;
        int best = 0;
        for (int v = 1; v < m->cfg.vocab_size; v++)
            if (last[v] > last[best]) best = v;
        free(l);
        same &= best == base.ids[i];
        ids[n++] = best;
    }
    CHECK("generate_kv_cache_equals_recompute", same, "greedy tokens differ from full recomputation");
    // seeded sampling is reproducible
    GenResult s1, s2, s3;
    g.sampler.temperature = 1.0f;
    g.sampler.seed = 3;
    generate(m, NULL, tok, prompt, np, &g, NULL, NULL, &s1, &e);
    generate(m, NULL, tok, prompt, np, &g, NULL, NULL, &s2, &e);
    g.sampler.seed = 4;
    generate(m, NULL, tok, prompt, np, &g, NULL, NULL, &s3, &e);
    CHECK("generate_seeded_reproducible",
          s1.n == s2.n && !memcmp(s1.ids, s2.ids, sizeof(int) * (size_t)s1.n) &&
              (s1.n != s3.n || memcmp(s1.ids, s3.ids, sizeof(int) * (size_t)s1.n)),
          "same seed gave different tokens, or another seed the same");
    gen_result_free(&s1);
    gen_result_free(&s2);
    gen_result_free(&s3);
    // stop strings cut the text before their first occurrence, also when streaming
    g.sampler.temperature = 0;
    size_t L = base.len;
    int stop_ok = L >= 6;
    for (size_t at = L / 3; at + 3 <= L && stop_ok; at += L / 3 > 0 ? L / 3 : 1) {
        char stop[4] = {base.text[at], base.text[at + 1], base.text[at + 2], 0};
        if (strlen(stop) < 3) continue;
        size_t first = (size_t)(strstr(base.text, stop) - base.text);
        g.stop[0] = stop;
        g.n_stop = 1;
        Collect c = {{0}, 0};
        GenResult r;
        if (generate(m, NULL, tok, prompt, np, &g, collect, &c, &r, &e)) {
            stop_ok = 0;
            break;
        }
        stop_ok &= r.finish == FINISH_STOP && r.len == first && !memcmp(r.text, base.text, first) &&
                   c.len == r.len && !memcmp(c.text, r.text, r.len);
        if (!stop_ok)
            printf("stop [%s]: got [%s] (finish %d), streamed [%s], want [%.*s]\n", stop, r.text, r.finish, c.text,
                   (int)first, base.text);
        gen_result_free(&r);
    }
    CHECK("generate_stop_strings", stop_ok, "text [%s]", base.text);
    // an absent stop string changes nothing, and the streamed text is the whole text
    g.stop[0] = "\x01never";
    Collect c = {{0}, 0};
    GenResult r;
    generate(m, NULL, tok, prompt, np, &g, collect, &c, &r, &e);
    CHECK("generate_stream_equals_text", r.len == base.len && !strcmp(r.text, base.text) && !strcmp(c.text, base.text),
          "[%s] vs [%s]", c.text, base.text);
    gen_result_free(&r);
    // context limit
    int *longp = calloc(200, sizeof(int));
    Generator *gg = gen_new(m, NULL, tok, longp, 200, &g, &e);
    CHECK("generate_prompt_too_long", !gg && strstr(e.msg, "context"), "%s", e.msg);
    gen_free(gg);
    free(longp);
    gen_result_free(&base);
    free(prompt);
    tok_free(tok);
    model_free(m);
}

// ---- templates: prompts as training lays them out, replies ending at the end of turn -------
// The ids `lora generate --template T --prompt MSG` feeds the model (prompt_ids_text with BOS)
// equal the ids before the first response token of a training example with that user
// message (an alpaca row for alpaca, a completion row for raw, a messages row for the chat
// templates): the model is asked exactly as it was taught.
static void check_prompts_as_training(const char *dir, const char *tok_name, const Tokenizer *tok) {
    static const Template T[] = {TPL_ALPACA, TPL_RAW,    TPL_CHATML, TPL_QWEN2,  TPL_QWEN25, TPL_SMOLLM2,
                                 TPL_LLAMA2, TPL_LLAMA3, TPL_LLAMA32, TPL_ZEPHYR, TPL_PHI3,   TPL_GEMMA};
    const char *msg = "Name the capital city of France.", *reply = "Paris.";
    char path[700], why[900] = "";
    int ok = 1;
    for (size_t i = 0; i < sizeof T / sizeof T[0] && ok; i++) {
        Template t = T[i];
        Err e = {{0}};
        snprintf(path, sizeof path, "%s/one_%s_%s.jsonl", dir, tok_name, template_name(t));
        FILE *fp = fopen(path, "w");
        if (!fp) { ok = 0; snprintf(why, sizeof why, "cannot write %s", path); break; }
        if (t == TPL_ALPACA) fprintf(fp, "{\"instruction\": \"%s\", \"output\": \"%s\"}\n", msg, reply);
        else if (t == TPL_RAW) fprintf(fp, "{\"prompt\": \"%s\", \"completion\": \"%s\"}\n", msg, reply);
        else
            fprintf(fp, "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}, {\"role\": \"assistant\", "
                        "\"content\": \"%s\"}]}\n", msg, reply);
        fclose(fp);
        DataOptions o;
        data_options_default(&o);
        o.tpl = t;
        Dataset *ds = dataset_load(path, tok, &o, &e);
        int *ids = NULL;
        int n = ds ? prompt_ids_text(tok, t, msg, 1, &ids, &e) : -1;
        if (n < 0) {
            ok = 0;
            snprintf(why, sizeof why, "%s: %s", template_name(t), e.msg);
        } else {
            const Example *ex = &ds->ex[0];
            int k = 0;
            while (k < ex->n && !ex->mask[k]) k++;
            if (k != n || memcmp(ids, ex->ids, sizeof(int) * (size_t)n)) {
                ok = 0;
                int d = 0;
                while (d < n && d < k && ids[d] == ex->ids[d]) d++;
                snprintf(why, sizeof why, "%s: generate feeds %d ids, training's prompt has %d; first difference at %d",
                         template_name(t), n, k, d);
            }
            // zephyr's "</s>" after the user turn is the EOS id, not the text "</s>"
            int has_eos = 0;
            for (int j = 0; j < n; j++) has_eos |= ids[j] == tok_eos(tok);
            if (ok && t == TPL_ZEPHYR && tok_eos(tok) >= 0 && !has_eos) {
                ok = 0;
                snprintf(why, sizeof why, "zephyr: no EOS id %d in the prompt", tok_eos(tok));
            }
            // a marker the tokenizer has as a special token is that one id
            const char *marker = template_stop(t);
            int mid = marker ? tok_piece_id(tok, marker) : -1, has_mid = 0;
            for (int j = 0; j < n; j++) has_mid |= ids[j] == mid;
            if (ok && mid >= 0 && !has_mid) {
                ok = 0;
                snprintf(why, sizeof why, "%s: the marker %s (id %d) is not in the prompt", template_name(t), marker, mid);
            }
        }
        free(ids);
        dataset_free(ds);
    }
    char name[96];
    snprintf(name, sizeof name, "generate_prompt_ids_equal_training_%s", tok_name);
    CHECK(name, ok, "%s", why);
}

static void test_templates(const Fixture *f) {
    Err e = {{0}};
    // every chat template's reply ends at its end-of-turn marker (EOS ends the others)
    int stops_ok = 1;
    for (int t = TPL_AUTO; t <= TPL_GEMMA; t++) {
        GenConfig g;
        gen_config_default(&g);
        gen_add_template_stops(&g, (Template)t);
        const char *want = template_stop((Template)t);
        int ends_with_eos = t == TPL_AUTO || t == TPL_ALPACA || t == TPL_RAW || t == TPL_LLAMA2 || t == TPL_ZEPHYR;
        stops_ok &= ends_with_eos ? g.n_stop == 0 && !want : g.n_stop == 1 && want && !strcmp(g.stop[0], want);
    }
    GenConfig g;
    gen_config_default(&g);
    gen_add_template_stops(&g, TPL_LLAMA3);
    gen_add_template_stops(&g, TPL_PHI3);
    gen_add_template_stops(&g, TPL_GEMMA);
    stops_ok &= g.n_stop == 3 && !strcmp(g.stop[0], "<|eot_id|>") && !strcmp(g.stop[1], "<|end|>") &&
                !strcmp(g.stop[2], "<end_of_turn>");
    CHECK("template_stops", stops_ok, "a template's end-of-turn marker is not added as a stop");

    Tokenizer *tok = tok_load(f->tok, &e);
    if (!tok) {
        CHECK("templates_setup", 0, "%s", e.msg);
        return;
    }
    check_prompts_as_training(f->dir, "spm", tok);
    // a stop that is one token whose piece never appears in the decoded text (as "<|eot_id|>"
    // of Llama-3 when it is not the EOS) ends the reply at that token
    Model *m = model_load(f->model, &e);
    SpmVocab *v = spm_vocab_load(f->tok, &e);
    int *prompt = NULL;
    int np = m && v ? prompt_ids_text(tok, TPL_RAW, "The capital of", 1, &prompt, &e) : -1;
    GenResult base = {0}, r = {0};
    gen_config_default(&g);
    g.max_tokens = 24;
    g.ignore_eos = 1;
    g.sampler.temperature = 0;
    int rc = np < 0 || generate(m, NULL, tok, prompt, np, &g, NULL, NULL, &base, &e);
    // the marker: a token generated (first) after the first one, whose piece is not its text
    // (a byte piece "<0xC7>", or "\xe2\x96\x81word")
    int at = -1;
    for (int i = 1; !rc && i < base.n && at < 0; i++) {
        const char *pc = v->pieces[base.ids[i]];
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= base.ids[j] == base.ids[i];
        if (!seen && (!strncmp(pc, "<0x", 3) || !strncmp(pc, "\xe2\x96\x81", 3))) at = i;
    }
    int first = at;
    if (at >= 0) {
        g.stop[0] = v->pieces[base.ids[at]];
        g.n_stop = 1;
        rc = generate(m, NULL, tok, prompt, np, &g, NULL, NULL, &r, &e);
    }
    CHECK("generate_stops_at_marker_token", !rc && at >= 0 && r.finish == FINISH_STOP && r.n == first &&
                                                !memcmp(r.ids, base.ids, sizeof(int) * (size_t)first),
          "rc %d, marker at %d, stopped after %d tokens (finish %d), want %d: %s", rc, at, r.n, r.finish, first, e.msg);
    gen_result_free(&r);
    gen_result_free(&base);
    free(prompt);
    spm_vocab_free(v);
    model_free(m);
    tok_free(tok);

    // real tokenizers: Llama-2's SentencePiece (</s> = EOS) and Llama-3's tokenizer.json, whose
    // chat markers are special tokens
    const char *md = tu_models_dir();
    if (!md) {
        SKIP("generate_prompt_ids_equal_training_real_tokenizers", "no ../shared/models");
        return;
    }
    static const char *const REAL[][2] = {{"llama2", "tokenizers/llama2/tokenizer.model"},
                                          {"llama3", "tokenizers/llama3/tokenizer.json"},
                                          {"qwen3", "tokenizers/qwen3/tokenizer.json"}};
    for (int i = 0; i < 3; i++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/%s", md, REAL[i][1]);
        Tokenizer *rt = tok_load(path, &e);
        if (!rt) {
            CHECK("real_tokenizer_loads", 0, "%s", e.msg);
            continue;
        }
        check_prompts_as_training(f->dir, REAL[i][0], rt);
        tok_free(rt);
    }
}

// ---- registry -----------------------------------------------------------------------------
static void test_registry(const Fixture *f) {
    Err e = {{0}};
    char name[ADAPTER_NAME_MAX], path[1024];
    float scale;
    int p1 = adapter_spec_parse("math=out/run 1:0.5", name, sizeof name, path, sizeof path, &scale, &e) == 0 &&
             !strcmp(name, "math") && !strcmp(path, "out/run 1") && scale == 0.5f;
    int p2 = adapter_spec_parse("out/run1/", name, sizeof name, path, sizeof path, &scale, &e) == 0 &&
             !strcmp(name, "run1") && !strcmp(path, "out/run1/") && scale == 1.0f;
    int p3 = adapter_spec_parse("x=a:b", name, sizeof name, path, sizeof path, &scale, &e) == 0 && !strcmp(path, "a:b");
    int p4 = adapter_spec_parse("bad name=dir", name, sizeof name, path, sizeof path, &scale, &e) < 0;
    int p5 = adapter_spec_parse("x=dir:0", name, sizeof name, path, sizeof path, &scale, &e) == 0 && scale == 0.0f;
    CHECK("adapter_spec_parse", p1 && p2 && p3 && p4 && p5, "%d %d %d %d %d", p1, p2, p3, p4, p5);

    // fresh loads: a new model and a new adapter for each
    const int ids[12] = {1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50};
    float *fresh[2];
    size_t nl = 12 * 320;
    for (int k = 0; k < 2; k++) {
        Model *m = model_load(f->model, &e);
        LoraAdapter *a = m ? adapter_load_peft(f->ad[k], m, &e) : NULL;
        if (!a) {
            CHECK("registry_setup", 0, "%s", e.msg);
            return;
        }
        fresh[k] = logits_of_seq(m, a, ids, 12);
        lora_free(a);
        model_free(m);
    }
    Model *m = model_load(f->model, &e);
    float *base = logits_of_seq(m, NULL, ids, 12);
    AdapterRegistry *r = registry_new(m, "tiny", &e);
    int ok = registry_load(r, "a", f->ad[0], 1.0f, &e) == 0 && registry_load(r, "b", f->ad[1], 1.0f, &e) == 0 &&
             registry_load(r, "a0", f->ad[0], 0.0f, &e) == 0;
    CHECK("registry_load", ok, "%s", e.msg);
    const char *order[4] = {"a", "b", "a", "b"};
    int swap_ok = 1;
    for (int i = 0; i < 4; i++) {
        const LoraAdapter *lora;
        AdapterEntry *ref;
        if (registry_acquire(r, order[i], &lora, &ref, &e)) {
            swap_ok = 0;
            break;
        }
        float *l = logits_of_seq(m, lora, ids, 12);
        swap_ok &= !memcmp(l, fresh[order[i][0] - 'a'], sizeof(float) * nl);
        free(l);
        registry_release(r, ref);
    }
    CHECK("registry_swap_equals_fresh_loads", swap_ok && memcmp(fresh[0], fresh[1], sizeof(float) * nl),
          "A->B->A->B logits differ from fresh loads (or A == B)");
    const LoraAdapter *lora;
    AdapterEntry *ref;
    registry_acquire(r, "a0", &lora, &ref, &e);
    float *l0 = logits_of_seq(m, lora, ids, 12);
    registry_release(r, ref);
    CHECK("registry_scale0_equals_base", !lora && !memcmp(l0, base, sizeof(float) * nl) &&
                                             memcmp(base, fresh[0], sizeof(float) * nl),
          "scale 0 is not the base");
    free(l0);
    // greedy generation per adapter from the same base equals generation on a fresh load
    int gen_ok = 1;
    Tokenizer *tok = tok_load(f->tok, &e);
    GenConfig g;
    gen_config_default(&g);
    g.sampler.temperature = 0;
    g.max_tokens = 12;
    g.ignore_eos = 1;
    for (int k = 0; k < 2 && tok; k++) {
        Model *fm = model_load(f->model, &e);
        LoraAdapter *fa = adapter_load_peft(f->ad[k], fm, &e);
        GenResult want, got;
        generate(fm, fa, tok, ids, 4, &g, NULL, NULL, &want, &e);
        registry_acquire(r, k ? "b" : "a", &lora, &ref, &e);
        generate(m, lora, tok, ids, 4, &g, NULL, NULL, &got, &e);
        registry_release(r, ref);
        gen_ok &= want.n == got.n && !memcmp(want.ids, got.ids, sizeof(int) * (size_t)want.n);
        gen_result_free(&want);
        gen_result_free(&got);
        lora_free(fa);
        model_free(fm);
    }
    CHECK("registry_generate_equals_fresh", tok && gen_ok, "generated tokens differ");
    tok_free(tok);
    // errors, and unloading an adapter that is in use
    int e1 = registry_load(r, "a", f->ad[1], 1.0f, &e) < 0 && strstr(e.msg, "already loaded");
    int e2 = registry_load(r, "tiny", f->ad[1], 1.0f, &e) < 0 && strstr(e.msg, "base");
    int e3 = registry_acquire(r, "nope", &lora, &ref, &e) < 0 && strstr(e.msg, "unknown model \"nope\"");
    int e4 = registry_load(r, "c", "/nonexistent/adapter", 1.0f, &e) < 0;
    int e5 = registry_acquire(r, "tiny", &lora, &ref, &e) == 0 && !lora && !ref;
    CHECK("registry_errors", e1 && e2 && e3 && e4 && e5, "%d %d %d %d %d (%s)", e1, e2, e3, e4, e5, e.msg);
    registry_acquire(r, "b", &lora, &ref, &e);
    int un = registry_unload(r, "b", &e) == 0;
    float *lb = logits_of_seq(m, lora, ids, 12);  // still usable by its user
    int still = !memcmp(lb, fresh[1], sizeof(float) * nl);
    free(lb);
    AdapterInfo info[8];
    int n_listed = registry_list(r, info, 8);
    registry_release(r, ref);
    int gone = registry_acquire(r, "b", &lora, &ref, &e) < 0;
    CHECK("registry_unload_in_use", un && still && n_listed == 2 && gone, "unload %d, usable %d, listed %d, gone %d",
          un, still, n_listed, gone);
    registry_free(r);
    free(base);
    free(fresh[0]);
    free(fresh[1]);
    model_free(m);
}

// ---- evaluation ---------------------------------------------------------------------------
static void test_eval(const Fixture *f) {
    Err e = {{0}};
    Model *m = model_load(f->model, &e);
    Tokenizer *tok = tok_load(f->tok, &e);
    if (!m || !tok) return;
    // example 0: a prompt and, as the response, the base's own greedy continuation (8 tokens);
    // example 1: another prompt with a made-up response. Exact match 1/2, and token accuracy 1
    // on example 0 alone (greedy tokens are the argmax at every position).
    const char *prompts[2] = {"The capital of", "Rome and"};
    Example ex[2];
    for (int i = 0; i < 2; i++) {
        int *ids;
        int np = prompt_ids_text(tok, TPL_RAW, prompts[i], 1, &ids, &e);
        GenConfig g;
        gen_config_default(&g);
        g.sampler.temperature = 0;
        g.max_tokens = 8;
        g.ignore_eos = 1;
        GenResult r;
        generate(m, NULL, tok, ids, np, &g, NULL, NULL, &r, &e);
        ex[i].n = np + 8;
        ex[i].ids = malloc(sizeof(int) * (size_t)ex[i].n);
        ex[i].mask = calloc((size_t)ex[i].n, 1);
        ex[i].line = i + 1;
        memcpy(ex[i].ids, ids, sizeof(int) * (size_t)np);
        for (int k = 0; k < 8; k++) {
            ex[i].ids[np + k] = i == 0 ? r.ids[k] : 100 + 7 * k;
            ex[i].mask[np + k] = 1;
        }
        gen_result_free(&r);
        free(ids);
    }
    Dataset ds = {ex, 2, 0, 0, "hand-made"};
    Dataset one = {ex, 1, 0, 0, "hand-made"};
    EvalOptions eo;
    eval_options_default(&eo);
    EvalResult res, res1;
    int rc = eval_model(m, NULL, tok, &ds, &eo, "base", &res, &e) || eval_model(m, NULL, tok, &one, &eo, "base", &res1, &e);
    CHECK("eval_runs", rc == 0, "%s", e.msg);
    if (rc) return;
    CHECK("eval_exact_match_half", res.n_generated == 2 && res.exact_match == 0.5 && res.starts_with == 0.5 &&
                                       res.contains == 0.5 && res.f1 >= 0.5 && res.f1 < 1,
          "n %d, em %g sw %g ct %g f1 %g", res.n_generated, res.exact_match, res.starts_with, res.contains, res.f1);
    CHECK("eval_token_accuracy", res1.token_accuracy == 1.0 && res1.exact_match == 1.0 && res.token_accuracy < 1 &&
                                     res.token_accuracy >= 0.5 && res1.n_tokens == 8 && res.n_tokens == 16,
          "alone %g (%ld tokens), both %g (%ld tokens)", res1.token_accuracy, res1.n_tokens, res.token_accuracy,
          res.n_tokens);
    // the loss is the trainer's held-out loss
    Tape *t = tape_new(&e);
    long ntok;
    double want = evaluate_loss(t, m, NULL, &ds, 4, 0, &ntok, &e);
    CHECK("eval_loss_matches_evaluate_loss", fabs(res.loss - want) <= 1e-5 * want && ntok == res.n_tokens &&
                                                 fabs(res.perplexity - exp(res.loss)) < 1e-9 * res.perplexity,
          "eval %g vs %g (%ld vs %ld tokens)", res.loss, want, res.n_tokens, ntok);
    // table and JSON
    char path[700];
    snprintf(path, sizeof path, "%s/eval.json", f->dir);
    EvalResult rows[2] = {res, res1};
    snprintf(rows[1].name, sizeof rows[1].name, "one");
    int wrote = eval_write_json(path, rows, 2, &e) == 0;
    char *json = wrote ? read_file(path, NULL, &e) : NULL;
    CHECK("eval_json", json && strstr(json, "\"results\"") && strstr(json, "\"name\": \"one\"") &&
                           strstr(json, "\"exact_match\": 0.5") && strstr(json, "\"token_accuracy\""),
          "%s", json ? json : e.msg);
    free(json);
    tape_free(t);
    for (int i = 0; i < 2; i++) {
        free(ex[i].ids);
        free(ex[i].mask);
    }
    tok_free(tok);
    model_free(m);
}

// ---- the batched engine: a row's logits do not depend on the rows it shares a step with ---
#define EB_ROWS 7
#define EB_STEPS 5
// Runs row r alone (engine of one row): its prompt, then EB_STEPS greedy steps; logits of
// each decode step -> want[r] (EB_STEPS, V), its tokens -> tok[r].
static int engine_alone(const Model *m, const LoraAdapter *lora, const int *prompt, int np, float *want, int *tok,
                        Err *e) {
    const int V = m->cfg.vocab_size;
    Engine *en = engine_new(m, 1, e);
    KVCache *kv = en ? kv_new(&m->cfg, np + EB_STEPS + 1, e) : NULL;
    float *logits = malloc(sizeof(float) * (size_t)V);
    int rc = !kv || !logits || engine_prefill(en, lora, kv, prompt, np, logits, e);
    for (int s = 0; !rc && s < EB_STEPS; s++) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best]) best = v;
        tok[s] = best;
        rc = engine_decode(en, &lora, &kv, &best, 1, &logits, e);
        if (!rc) memcpy(want + (size_t)s * V, logits, sizeof(float) * (size_t)V);
    }
    free(logits);
    kv_free(kv);
    engine_free(en);
    return rc ? -1 : 0;
}

// EB_ROWS sequences (the base, and adapters: two rows share one) of different prompt lengths:
// alone, then batched with rows joining and leaving between steps. Every decode step's
// logits must be bit-identical.
static void check_engine_batch(const char *what, const Model *m, LoraAdapter **ad, int n_ad) {
    Err e = {{0}};
    const int V = m->cfg.vocab_size;
    const LoraAdapter *lora[EB_ROWS];
    int prompt[EB_ROWS][16], np[EB_ROWS], tok[EB_ROWS][EB_STEPS], k[EB_ROWS] = {0};
    float *want = malloc(sizeof(float) * (size_t)EB_ROWS * EB_STEPS * V);
    Rng r;
    rng_seed(&r, 77);
    int rc = 0;
    for (int i = 0; i < EB_ROWS && !rc; i++) {
        lora[i] = i == 0 ? NULL : ad[(i - 1) % n_ad];  // rows 1 and 1+n_ad share an adapter
        np[i] = 1 + i * 2;
        for (int j = 0; j < np[i]; j++) prompt[i][j] = (int)(rng_next(&r) % (uint64_t)V);
        rc = engine_alone(m, lora[i], prompt[i], np[i], want + (size_t)i * EB_STEPS * V, tok[i], &e);
    }
    Engine *en = rc ? NULL : engine_new(m, EB_ROWS, &e);
    KVCache *kv[EB_ROWS] = {0};
    float *lg[EB_ROWS];
    float *scratch = malloc(sizeof(float) * (size_t)V);
    for (int i = 0; i < EB_ROWS; i++) lg[i] = malloc(sizeof(float) * (size_t)V);
    for (int i = 0; en && i < EB_ROWS && !rc; i++)
        rc = !(kv[i] = kv_new(&m->cfg, np[i] + EB_STEPS + 1, &e)) ||
             engine_prefill(en, lora[i], kv[i], prompt[i], np[i], scratch, &e);
    int same = 1, steps = 0;
    for (int s = 0; en && !rc && steps < 64; s++, steps++) {
        // this step's rows: each unfinished row, skipped on some steps (it joins later)
        const LoraAdapter *sl[EB_ROWS];
        KVCache *sk[EB_ROWS];
        int st[EB_ROWS], idx[EB_ROWS], n = 0;
        for (int i = 0; i < EB_ROWS; i++)
            if (k[i] < EB_STEPS && (s + i) % 3 != 0) {
                idx[n] = i;
                sl[n] = lora[i];
                sk[n] = kv[i];
                st[n] = tok[i][k[i]];
                n++;
            }
        int left = 0;
        for (int i = 0; i < EB_ROWS; i++) left += k[i] < EB_STEPS;
        if (!left) break;
        if (!n) continue;
        rc = engine_decode(en, sl, sk, st, n, lg, &e);
        for (int j = 0; j < n && !rc; j++) {
            int i = idx[j];
            same &= !memcmp(lg[j], want + ((size_t)i * EB_STEPS + k[i]) * V, sizeof(float) * (size_t)V);
            k[i]++;
        }
    }
    // the engine against the tape's full recompute (model_forward over prompt + tokens, the
    // trainer's path): the same greedy token wherever the recompute's top two are not a near
    // tie (within 2% of its logit range: the 8-bit activations of the block formats move
    // logits by about that much), a sanity check of the wiring (every format, LoRA, RoPE, GQA)
    int agree = 1, checked = 0;
    for (int i = 0; i < EB_ROWS && !rc; i++) {
        int ids[32], T = np[i];
        memcpy(ids, prompt[i], sizeof(int) * (size_t)T);
        for (int st = 0; st < EB_STEPS; st++) ids[T + st] = tok[i][st];
        float *l = logits_of_seq(m, lora[i], ids, T + EB_STEPS);
        for (int st = 0; st < EB_STEPS; st++) {
            const float *ref = l + (size_t)(T + st) * V, *got = want + ((size_t)i * EB_STEPS + st) * V;
            int b1 = 0, b2 = -1, g = 0;
            float lo = ref[0], hi = ref[0];
            for (int v = 1; v < V; v++) {
                if (ref[v] > ref[b1]) {
                    b2 = b1;
                    b1 = v;
                } else if (b2 < 0 || ref[v] > ref[b2]) {
                    b2 = v;
                }
                if (got[v] > got[g]) g = v;
                lo = ref[v] < lo ? ref[v] : lo;
                hi = ref[v] > hi ? ref[v] : hi;
            }
            if (ref[b1] - ref[b2] < 0.02f * (hi - lo)) continue;
            checked++;
            agree &= g == b1;
        }
        free(l);
    }
    char name[96];
    snprintf(name, sizeof name, "engine_greedy_equals_recompute_%s", what);
    CHECK(name, !rc && agree && checked > EB_ROWS, "%d steps checked; a greedy token differs from the tape's", checked);
    snprintf(name, sizeof name, "engine_batch_equals_alone_%s", what);
    CHECK(name, !rc && same, "%s", rc ? e.msg : "a row's logits changed with the rows sharing its step");
    for (int i = 0; i < EB_ROWS; i++) {
        kv_free(kv[i]);
        free(lg[i]);
    }
    free(scratch);
    free(want);
    engine_free(en);
}

// Several prompts in one engine_prefill_many (GGUF models run them as rows of shared steps,
// across the 32-row chunks: lengths 1 .. 45, in two calls) against engine_prefill of each alone:
// the same logits and the same KV cache, bitwise.
static void check_prefill_many(const char *what, const Model *m, LoraAdapter **ad) {
    enum { NS = 5 };
    static const int len[NS] = {1, 7, 33, 2, 45};
    Err e = {{0}};
    const int V = m->cfg.vocab_size;
    int ctx = m->cfg.max_seq_len > 0 && m->cfg.max_seq_len < 64 ? m->cfg.max_seq_len : 64, *ids[NS];
    const LoraAdapter *lora[NS] = {NULL, ad[0], ad[1], ad[0], ad[3]};
    KVCache *ka[NS] = {0}, *kb[NS] = {0};
    float *la[NS], *lb[NS];
    Rng r;
    rng_seed(&r, 91);
    Engine *en = engine_new(m, 2, &e);
    int rc = !en, same = 1, n[NS];
    for (int i = 0; i < NS; i++) {
        n[i] = len[i] < ctx ? len[i] : ctx - 1;
        ids[i] = malloc(sizeof(int) * (size_t)n[i]);
        for (int j = 0; j < n[i]; j++) ids[i][j] = (int)(rng_next(&r) % (uint64_t)V);
        la[i] = malloc(sizeof(float) * (size_t)V), lb[i] = malloc(sizeof(float) * (size_t)V);
        if (!rc) rc = !(ka[i] = kv_new(&m->cfg, ctx, &e)) || !(kb[i] = kv_new(&m->cfg, ctx, &e));
        if (!rc) rc = engine_prefill(en, lora[i], ka[i], ids[i], n[i], la[i], &e);
    }
    // the first two in one call, the other three in another (the second starts mid-way: kb's
    // lengths are 0; a third call then adds one more token to sequence 0)
    if (!rc) rc = engine_prefill_many(en, lora, kb, (const int *const *)ids, n, 2, lb, &e);
    if (!rc) rc = engine_prefill_many(en, lora + 2, kb + 2, (const int *const *)ids + 2, n + 2, 3, lb + 2, &e);
    for (int i = 0; !rc && i < NS; i++) {
        same &= !memcmp(la[i], lb[i], sizeof(float) * (size_t)V) && ka[i]->len == kb[i]->len;
        for (int l = 0; l < m->cfg.n_layers; l++) {
            size_t at = (size_t)l * ka[i]->max_seq * ka[i]->kv_dim, bytes = (size_t)n[i] * ka[i]->kv_dim * sizeof(float);
            same &= !memcmp(ka[i]->k + at, kb[i]->k + at, bytes) && !memcmp(ka[i]->v + at, kb[i]->v + at, bytes);
        }
    }
    int one = 9;
    if (!rc) rc = engine_prefill(en, lora[0], ka[0], &one, 1, la[0], &e);
    const int *pone = &one, none = 1;
    if (!rc) rc = engine_prefill_many(en, lora, kb, &pone, &none, 1, lb, &e);
    if (!rc) same &= !memcmp(la[0], lb[0], sizeof(float) * (size_t)V);
    char name[96];
    snprintf(name, sizeof name, "engine_prefill_many_equals_alone_%s", what);
    CHECK(name, !rc && same, "%s", rc ? e.msg : "a prompt's logits or KV cache differ from its prefill alone");
    for (int i = 0; i < NS; i++) kv_free(ka[i]), kv_free(kb[i]), free(la[i]), free(lb[i]), free(ids[i]);
    engine_free(en);
}

static void test_engine(const Fixture *f) {
    Err e = {{0}};
    const char *quant[2] = {"none", "nf4"};
    char qdir[700], qfile[800], cmd[1700];
    snprintf(qdir, sizeof qdir, "%s/ggq", f->dir);
    snprintf(qfile, sizeof qfile, "%s/q.gguf", qdir);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && /usr/bin/python3 tests/ref_ggq_model.py %s > /dev/null 2>&1", qdir, qdir);
    int have_ggq = system(cmd) == 0;
    for (int q = 0; q < 3; q++) {
        if (q == 2 && !have_ggq) {
            SKIP("engine_batch_equals_alone_ggq", "tests/ref_ggq_model.py failed (numpy missing?)");
            continue;
        }
        Model *m = q < 2 ? model_load_quant(f->model, quant[q], &e) : model_load(qfile, &e);
        if (!m) {
            CHECK("engine_setup", 0, "%s", e.msg);
            continue;
        }
        LoraAdapter *ad[4] = {0};
        int ok = 1;
        for (int a = 0; a < 4 && ok; a++) {
            ad[a] = lora_new(m, 2 + 2 * a, 8.0f, a == 3 ? (1u << LT_Q) | (1u << LT_DOWN) : (1u << LT_COUNT) - 1, 0.0f,
                             0, 300 + a, &e);
            ok = ad[a] != NULL;
            Rng r;
            rng_seed(&r, 400 + a);
            for (int i = 0; ok && i < ad[a]->n_layers * LT_COUNT; i++)
                if (ad[a]->B[i])
                    for (int64_t j = 0; j < ad[a]->B[i]->n; j++) ad[a]->B[i]->data[j] = 0.1f * rng_normal(&r);
        }
        if (ok) check_engine_batch(q == 0 ? "f32" : q == 1 ? "nf4" : "ggq", m, ad, 4);
        if (ok) check_prefill_many(q == 0 ? "f32" : q == 1 ? "nf4" : "ggq", m, ad);
        else CHECK("engine_setup", 0, "%s", e.msg);
        for (int a = 0; a < 4; a++) lora_free(ad[a]);
        model_free(m);
    }
}

int main(void) {
    test_sampler();
    test_metrics();
    Fixture f;
    if (make_fixture(&f)) {
        SKIP("infer_model_tests", "could not make the fixture (spm_train missing?)");
        return tu_exit();
    }
    test_generation(&f);
    test_engine(&f);
    test_templates(&f);
    test_registry(&f);
    test_eval(&f);
    return tu_exit();
}
