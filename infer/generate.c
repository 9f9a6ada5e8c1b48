// Generation: the prompt in one forward pass into a KV cache, then one token at a time
// (last_only), with EOS, stop strings and a token budget; text is released as soon as it can
// no longer turn into a stop string (and, through TokStream, only in whole characters).
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "infer/infer.h"
#include "quant/quant.h"

const char *finish_reason_name(FinishReason r) { return r == FINISH_LENGTH ? "length" : "stop"; }

void gen_config_default(GenConfig *g) {
    memset(g, 0, sizeof *g);
    g->max_tokens = 128;
    sampler_config_default(&g->sampler);
}

void gen_add_template_stops(GenConfig *g, Template t) {
    const char *stop = template_stop(t);
    if (stop && g->n_stop < GEN_MAX_STOP) g->stop[g->n_stop++] = stop;
}

struct Generator {
    const Model *m;
    const LoraAdapter *lora;
    const Tokenizer *tok;
    char *stop[GEN_MAX_STOP];  // owned copies
    int stop_id[GEN_MAX_STOP]; // the token spelled exactly as each stop string ("<|im_end|>"), or -1
    int n_stop;
    int ignore_eos, eos;
    Engine *en;                // the engine gen_next runs (owned), NULL for gen_create's
    KVCache *kv;
    Sampler sampler;
    int *hist;                 // (n_prompt + max_new) prompt then generated ids
    int n_hist, n_prompt, max_new;
    float *logits;             // (V) of the last position: the next forward writes here
    char *text;                // generated text
    size_t len, cap, sent;     // sent: bytes already released
    TokStream stream;          // ids -> text, whole characters
    int done, prefilled;
    FinishReason finish;
    GenTiming timing;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void gen_free(Generator *g) {
    if (!g) return;
    for (int i = 0; i < g->n_stop; i++) free(g->stop[i]);
    engine_free(g->en);
    free(g->logits);
    kv_free(g->kv);
    sampler_free(&g->sampler);
    free(g->hist);
    free(g->text);
    free(g);
}

Generator *gen_create(const Model *m, const LoraAdapter *lora, const Tokenizer *tok, const int *prompt,
                      int n_prompt, const GenConfig *cfg, Err *e) {
    if (n_prompt < 1) {
        err_set(e, "empty prompt and no BOS token: nothing to condition on");
        return NULL;
    }
    int ctx = m->cfg.max_seq_len > 0 ? m->cfg.max_seq_len : 2048;
    if (n_prompt >= ctx) {
        err_set(e, "prompt has %d tokens; the model's context is %d", n_prompt, ctx);
        return NULL;
    }
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= m->cfg.vocab_size) {
            err_set(e, "prompt token %d is outside the model's vocabulary (%d)", prompt[i], m->cfg.vocab_size);
            return NULL;
        }
    if (cfg->n_stop < 0 || cfg->n_stop > GEN_MAX_STOP) {
        err_set(e, "at most %d stop strings", GEN_MAX_STOP);
        return NULL;
    }
    Generator *g = xcalloc(1, sizeof *g, "generator", e);
    if (!g) return NULL;
    g->m = m;
    g->lora = lora;
    g->tok = tok;
    g->ignore_eos = cfg->ignore_eos;
    g->eos = tok_eos(tok);
    g->max_new = cfg->max_tokens < 0 ? 0 : cfg->max_tokens;
    if (g->max_new > ctx - n_prompt) g->max_new = ctx - n_prompt;
    for (int i = 0; i < cfg->n_stop; i++) {
        if (!cfg->stop[i] || !*cfg->stop[i]) continue;
        if (!(g->stop[g->n_stop] = strdup(cfg->stop[i]))) goto oom;
        g->stop_id[g->n_stop] = tok_piece_id(tok, cfg->stop[i]);
        g->n_stop++;
    }
    g->n_prompt = g->n_hist = n_prompt;
    if (!(g->hist = xmalloc(sizeof(int) * (size_t)(n_prompt + g->max_new + 1), "token ids", e))) goto fail;
    memcpy(g->hist, prompt, sizeof(int) * (size_t)n_prompt);
    g->cap = 256;
    if (!(g->text = xmalloc(g->cap, "generated text", e))) goto fail;
    g->text[0] = 0;
    tok_stream_init(&g->stream);
    g->stream.prev = prompt[n_prompt - 1];  // the text continues the prompt's
    if (sampler_init(&g->sampler, &cfg->sampler, m->cfg.vocab_size, e)) goto fail;
    if (!(g->kv = kv_new(&m->cfg, n_prompt + g->max_new, e)) ||
        !(g->logits = xmalloc((size_t)m->cfg.vocab_size * sizeof(float), "logits", e)))
        goto fail;
    g->timing.prompt_tokens = n_prompt;
    if (g->max_new == 0) {
        g->done = 1;
        g->finish = FINISH_LENGTH;
    }
    return g;
oom:
    err_set(e, "out of memory");
fail:
    gen_free(g);
    return NULL;
}

int gen_prefill_step(Generator *g, Engine *en, int max_tokens, Err *e) {
    if (g->done || g->prefilled) return 0;
    int left = g->n_prompt - g->kv->len, n = max_tokens > 0 && max_tokens < left ? max_tokens : left;
    double t0 = now_s();
    if (engine_prefill(en, g->lora, g->kv, g->hist + g->kv->len, n, g->logits, e)) return -1;
    g->timing.prefill_s += now_s() - t0;
    g->prefilled = g->kv->len == g->n_prompt;
    return !g->prefilled;
}

int gen_prompt_left(const Generator *g) { return g->done || g->prefilled ? 0 : g->n_prompt - g->kv->len; }

int gen_prefill_batch(Generator *const *gs, int count, Engine *en, const int *take, int *more, Err *e) {
    if (count < 1) return 0;
    const LoraAdapter **lora = malloc(sizeof *lora * (size_t)count);
    KVCache **kv = malloc(sizeof *kv * (size_t)count);
    const int **ids = malloc(sizeof *ids * (size_t)count);
    float **logits = malloc(sizeof *logits * (size_t)count);
    int rc = -1;
    if (!lora || !kv || !ids || !logits) {
        err_set(e, "out of memory (prompt batch of %d)", count);
        goto out;
    }
    for (int i = 0; i < count; i++) {
        Generator *g = gs[i];
        if (take[i] < 1 || take[i] > gen_prompt_left(g)) {
            err_set(e, "prompt batch: %d tokens asked of a prompt with %d left", take[i], gen_prompt_left(g));
            goto out;
        }
        lora[i] = g->lora, kv[i] = g->kv, ids[i] = g->hist + g->kv->len, logits[i] = g->logits;
    }
    double t0 = now_s();
    if (engine_prefill_many(en, lora, kv, ids, take, count, logits, e)) goto out;
    double dt = now_s() - t0;
    for (int i = 0; i < count; i++) {
        gs[i]->timing.prefill_s += dt;
        gs[i]->prefilled = gs[i]->kv->len == gs[i]->n_prompt;
        more[i] = !gs[i]->prefilled;
    }
    rc = 0;
out:
    free(lora), free(kv), free(ids), free(logits);
    return rc;
}

int gen_prefill(Generator *g, Engine *en, Err *e) {
    int rc;
    while ((rc = gen_prefill_step(g, en, 0, e)) == 1) {
    }
    return rc;
}

Generator *gen_new(const Model *m, const LoraAdapter *lora, const Tokenizer *tok, const int *prompt,
                   int n_prompt, const GenConfig *cfg, Err *e) {
    Generator *g = gen_create(m, lora, tok, prompt, n_prompt, cfg, e);
    if (!g) return NULL;
    if (!(g->en = engine_new(m, 1, e)) || gen_prefill(g, g->en, e)) {
        gen_free(g);
        return NULL;
    }
    return g;
}

KVCache *gen_kv(Generator *g) { return g->kv; }
const LoraAdapter *gen_lora(const Generator *g) { return g->lora; }
float *gen_logits(Generator *g) { return g->logits; }
void gen_timing(const Generator *g, GenTiming *t) { *t = g->timing; }

// Bytes at the end of text[0..len) to hold back: a proper prefix of a stop string (the
// stream gives whole characters only).
static size_t holdback(const Generator *g) {
    size_t h = 0;
    for (int i = 0; i < g->n_stop; i++) {
        size_t sl = strlen(g->stop[i]);
        for (size_t k = sl - 1; k > h; k--)
            if (k <= g->len && !memcmp(g->text + g->len - k, g->stop[i], k)) {
                h = k;
                break;
            }
    }
    return h;
}

static int text_append(Generator *g, const char *s, Err *e) {
    size_t n = strlen(s);
    if (g->len + n + 1 > g->cap) {
        size_t cap = (g->len + n + 1) * 2;
        char *p = realloc(g->text, cap);
        if (!p) return err_set(e, "out of memory (generated text)");
        g->text = p;
        g->cap = cap;
    }
    memcpy(g->text + g->len, s, n + 1);
    g->len += n;
    return 0;
}

// Ends the generation: releases everything not yet released (with the end of an unfinished
// character when the generation stopped at EOS or the length limit).
static int finish(Generator *g, FinishReason why, const char **text, size_t *len, Err *e) {
    char tail[16];
    if (why != FINISH_STOP && text_append(g, tok_stream_flush(&g->stream, tail, sizeof tail), e)) return -1;
    g->done = 1;
    g->finish = why;
    *text = g->text + g->sent;
    *len = g->len - g->sent;
    g->sent = g->len;
    return 0;
}

int gen_advance(Generator *g, const char **text, size_t *len, int *token, Err *e) {
    *text = g->text + g->len;
    *len = 0;
    if (g->done) return 0;
    if (!g->prefilled) return err_set(e, "generator: the prompt was not run (gen_prefill)");
    int next = sampler_next(&g->sampler, g->logits, g->hist, g->n_hist);
    if (next == g->eos && !g->ignore_eos) return finish(g, FINISH_EOS, text, len, e);
    for (int i = 0; i < g->n_stop; i++)  // a special token that decodes to no text, say
        if (next == g->stop_id[i]) return finish(g, FINISH_STOP, text, len, e);
    g->hist[g->n_hist++] = next;
    char piece[1100];
    size_t before = g->len;
    if (text_append(g, tok_stream_next(g->tok, &g->stream, next, piece, sizeof piece), e)) return -1;
    // a stop string completed by this piece (it may have started in earlier text)
    size_t best = (size_t)-1;
    for (int i = 0; i < g->n_stop; i++) {
        size_t sl = strlen(g->stop[i]);
        size_t from = before + 1 > sl ? before + 1 - sl : 0;
        char *hit = strstr(g->text + from, g->stop[i]);
        if (hit && (size_t)(hit - g->text) < best) best = (size_t)(hit - g->text);
    }
    if (best != (size_t)-1) {
        if (best < g->sent) best = g->sent;  // never take back released text
        g->len = best;
        g->text[best] = 0;
        return finish(g, FINISH_STOP, text, len, e);
    }
    if (g->n_hist - g->n_prompt >= g->max_new) return finish(g, FINISH_LENGTH, text, len, e);
    size_t keep = holdback(g);
    size_t upto = g->len - keep > g->sent ? g->len - keep : g->sent;
    *text = g->text + g->sent;
    *len = upto - g->sent;
    g->sent = upto;
    *token = next;
    return 1;
}

int gen_next(Generator *g, const char **text, size_t *len, Err *e) {
    int token, rc = gen_advance(g, text, len, &token, e);
    if (rc != 1) return rc;
    if (!g->en && !(g->en = engine_new(g->m, 1, e))) return -1;
    double t0 = now_s();
    if (engine_decode(g->en, &g->lora, &g->kv, &token, 1, &g->logits, e)) return -1;
    g->timing.decode_s += now_s() - t0;
    g->timing.decode_tokens++;
    return 1;
}

const int *gen_ids(const Generator *g, int *n) {
    *n = g->n_hist - g->n_prompt;
    return g->hist + g->n_prompt;
}

const char *gen_text(const Generator *g, size_t *len) {
    if (len) *len = g->len;
    return g->text;
}

FinishReason gen_finish(const Generator *g) { return g->finish; }

void gen_result_free(GenResult *r) {
    free(r->ids);
    free(r->text);
    memset(r, 0, sizeof *r);
}

int generate(const Model *m, const LoraAdapter *lora, const Tokenizer *tok, const int *prompt,
             int n_prompt, const GenConfig *cfg, GenEmit emit, void *user, GenResult *out, Err *e) {
    memset(out, 0, sizeof *out);
    Generator *g = gen_new(m, lora, tok, prompt, n_prompt, cfg, e);
    if (!g) return -1;
    int rc;
    for (;;) {
        const char *piece;
        size_t n;
        rc = gen_next(g, &piece, &n, e);
        if (rc < 0) break;
        if (emit && n && emit(user, piece, n)) rc = 0;  // the caller stops here
        if (rc == 0) break;
    }
    if (rc == 0) {
        int nid;
        const int *ids = gen_ids(g, &nid);
        size_t len;
        const char *text = gen_text(g, &len);
        out->ids = malloc(sizeof(int) * (size_t)(nid + 1));
        out->text = malloc(len + 1);
        if (!out->ids || !out->text) {
            gen_result_free(out);
            rc = err_set(e, "out of memory");
        } else {
            memcpy(out->ids, ids, sizeof(int) * (size_t)nid);
            out->n = nid;
            memcpy(out->text, text, len + 1);
            out->len = len;
            out->finish = gen_finish(g);
            gen_timing(g, &out->timing);
        }
    }
    gen_free(g);
    return rc;
}

// body (nb) ids (taken) -> *ids: BOS (when add_bos and the tokenizer has one) then body.
static int with_bos(const Tokenizer *tok, int *body, int nb, int add_bos, int **ids, Err *e) {
    int bos = add_bos ? tok_bos(tok) : -1;
    int total = nb + (bos >= 0);
    int *out = xmalloc(sizeof(int) * (size_t)(total + 1), "prompt ids", e);
    if (out) {
        if (bos >= 0) out[0] = bos;
        memcpy(out + (bos >= 0), body, sizeof(int) * (size_t)nb);
    }
    free(body);
    if (!out) return -1;
    *ids = out;
    return total;
}

int prompt_ids_chat(const Tokenizer *tok, Template t, const ChatMsg *msgs, int n, int add_bos, int **ids,
                    Err *e) {
    int *body = NULL;
    uint8_t *mask = NULL;
    *ids = NULL;
    int nb = template_encode(t, tok, msgs, n, NULL, &body, &mask, e);
    free(mask);
    if (nb < 0) return -1;
    return with_bos(tok, body, nb, add_bos, ids, e);
}

int prompt_ids_text(const Tokenizer *tok, Template t, const char *text, int add_bos, int **ids, Err *e) {
    *ids = NULL;
    if (t != TPL_RAW) {  // one user message, laid out as training lays it out
        ChatMsg m = {"user", text ? text : ""};
        return prompt_ids_chat(tok, t == TPL_AUTO ? TPL_ALPACA : t, &m, 1, add_bos, ids, e);
    }
    int *body = NULL;
    int nb = tok_encode(tok, text ? text : "", &body, e);
    if (nb < 0) return -1;
    return with_bos(tok, body, nb, add_bos, ids, e);
}
