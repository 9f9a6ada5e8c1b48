// Evaluation: loss, perplexity and token accuracy over response tokens; greedy generation
// against the reference response (exact match, starts-with, contains, SQuAD token F1); the
// table and JSON of `lora eval`.
#include <ctype.h>
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "infer/infer.h"
#include "quant/quant.h"

// ---- text metrics -------------------------------------------------------------------------
char *text_normalize(const char *s) {
    size_t n = strlen(s);
    char *lower = malloc(n + 1), *out = malloc(n + 1);
    if (!lower || !out) {
        free(lower);
        free(out);
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 128 && ispunct(c)) continue;  // Python's string.punctuation
        lower[k++] = (char)(c < 128 ? tolower(c) : c);
    }
    lower[k] = 0;
    // words separated by whitespace, without the articles, joined by one space
    size_t o = 0;
    char *save = NULL;
    for (char *w = strtok_r(lower, " \t\n\r\f\v", &save); w; w = strtok_r(NULL, " \t\n\r\f\v", &save)) {
        if (!strcmp(w, "a") || !strcmp(w, "an") || !strcmp(w, "the")) continue;
        if (o) out[o++] = ' ';
        size_t wl = strlen(w);
        memcpy(out + o, w, wl);
        o += wl;
    }
    out[o] = 0;
    free(lower);
    return out;
}

// Normalised pred and ref; returns 0 when both are made, -1 on OOM (*p, *r freed).
static int norm2(const char *pred, const char *ref, char **p, char **r) {
    *p = text_normalize(pred);
    *r = text_normalize(ref);
    if (*p && *r) return 0;
    free(*p);
    free(*r);
    return -1;
}

enum { MATCH_EXACT, MATCH_STARTS, MATCH_CONTAINS };

// Normalised pred vs ref: equal, begins with it, or holds it, in whole words (an empty ref
// matches only an empty pred).
static int text_match(const char *pred, const char *ref, int kind) {
    char *p, *r;
    if (norm2(pred, ref, &p, &r)) return 0;
    size_t rl = strlen(r);
    int ok = 0;
    if (kind == MATCH_EXACT || rl == 0)
        ok = !strcmp(p, r);
    else if (kind == MATCH_STARTS)
        ok = !strncmp(p, r, rl) && (p[rl] == 0 || p[rl] == ' ');
    else
        for (const char *q = p; !ok && (q = strstr(q, r)) != NULL; q++)
            ok = (q == p || q[-1] == ' ') && (q[rl] == 0 || q[rl] == ' ');
    free(p);
    free(r);
    return ok;
}

int text_exact_match(const char *pred, const char *ref) { return text_match(pred, ref, MATCH_EXACT); }
int text_starts_with(const char *pred, const char *ref) { return text_match(pred, ref, MATCH_STARTS); }
int text_contains(const char *pred, const char *ref) { return text_match(pred, ref, MATCH_CONTAINS); }

// Splits normalised text (single spaces) into word pointers in place; returns the count.
static int split_words(char *s, char **w, int max) {
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(s, " ", &save); t && n < max; t = strtok_r(NULL, " ", &save)) w[n++] = t;
    return n;
}

double text_f1(const char *pred, const char *ref) {
    char *p, *r;
    if (norm2(pred, ref, &p, &r)) return 0;
    int cap = (int)(strlen(p) + strlen(r)) / 2 + 2;
    char **pw = malloc(sizeof(char *) * (size_t)cap), **rw = malloc(sizeof(char *) * (size_t)cap);
    double f1 = 0;
    if (pw && rw) {
        int np = split_words(p, pw, cap), nr = split_words(r, rw, cap);
        if (np == 0 || nr == 0) {
            f1 = np == nr;  // SQuAD: both empty = 1, one empty = 0
        } else {
            // multiset intersection: each reference word matches at most one prediction word
            int common = 0;
            for (int i = 0; i < nr; i++)
                for (int j = 0; j < np; j++)
                    if (pw[j] && !strcmp(rw[i], pw[j])) {
                        pw[j] = NULL;
                        common++;
                        break;
                    }
            if (common > 0) {
                double prec = (double)common / np, rec = (double)common / nr;
                f1 = 2 * prec * rec / (prec + rec);
            }
        }
    }
    free(pw);
    free(rw);
    free(p);
    free(r);
    return f1;
}

// ---- evaluation ---------------------------------------------------------------------------
void eval_options_default(EvalOptions *o) {
    o->batch_size = 4;
    o->max_examples = 0;
    o->max_tokens = 0;
    o->generate = 1;
    o->progress = 0;
}

// logits (N,V), targets (N) -> per row: nll (N) and hit (N) (argmax == target); rows with
// target < 0 get nll 0 and hit 0.
static void score_rows(const float *logits, const int *targets, int64_t N, int V, double *nll, int *hit) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++) {
        nll[i] = 0;
        hit[i] = 0;
        if (targets[i] < 0) continue;
        const float *x = logits + i * V;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (x[v] > x[best]) best = v;
        double sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)x[v] - x[best]);
        nll[i] = log(sum) + x[best] - x[targets[i]];
        hit[i] = best == targets[i];
    }
}

static int eval_loss(const Model *m, const LoraAdapter *lora, const Dataset *ds, int n, int bs, EvalResult *out,
                     Err *e) {
    Tape *t = tape_new(e);
    if (!t) return -1;
    tape_set_recording(t, 0);
    tape_set_training(t, 0);
    tape_set_gemm(t, kernel_choice()->fp32);  // fp32, the fastest measured path
    Batch b = {0};
    double *nll = NULL;
    int *hit = NULL;
    int64_t rows_cap = 0;
    double sum = 0;
    long count = 0, hits = 0;
    int rc = 0;
    for (int first = 0; first < n && !rc; first += bs) {
        int cnt = n - first < bs ? n - first : bs;
        if (batch_from_range(ds, first, cnt, 0, &b, e)) {
            rc = -1;
            break;
        }
        int64_t N = (int64_t)b.B * b.T;
        if (N > rows_cap) {
            free(nll);
            free(hit);
            nll = xmalloc(sizeof(double) * (size_t)N, "eval scores", e);
            hit = xmalloc(sizeof(int) * (size_t)N, "eval scores", e);
            rows_cap = N;
            if (!nll || !hit) {
                rc = -1;
                break;
            }
        }
        tape_reset(t);
        Tensor *logits = model_forward(t, m, lora, b.ids, b.B, b.T, NULL, 0);
        score_rows(logits->data, b.targets, N, m->cfg.vocab_size, nll, hit);
        for (int64_t i = 0; i < N; i++) {
            if (b.targets[i] < 0) continue;
            sum += nll[i];
            hits += hit[i];
            count++;
        }
    }
    batch_free(&b);
    free(nll);
    free(hit);
    tape_free(t);
    if (rc) return -1;
    if (!count) return err_set(e, "%s: no response tokens to evaluate", ds->path);
    out->n_tokens = count;
    out->loss = sum / count;
    out->perplexity = exp(out->loss);
    out->token_accuracy = (double)hits / count;
    return 0;
}

// The end-of-turn markers of every template ("<|im_end|>", "<|eot_id|>", ...): a response
// ends at the first one. Returns the count (at most max).
static int turn_markers(const char **out, int max) {
    int n = 0;
    for (int t = 0; t < 64 && n < max; t++) {
        const char *s = template_stop((Template)t);
        int seen = !s;
        for (int k = 0; k < n && !seen; k++) seen = !strcmp(out[k], s);
        if (!seen) out[n++] = s;
    }
    return n;
}

// Text of ids (n) as the stream continues after token prev, cut at a turn marker.
static char *response_text(const Tokenizer *tok, int prev, const int *ids, int n, const char **stops,
                           int n_stops) {
    size_t cap = 64, len = 0;
    char *s = malloc(cap), piece[1100];
    if (!s) return NULL;
    s[0] = 0;
    TokStream st;
    tok_stream_init(&st);
    st.prev = prev;
    for (int i = 0; i <= n; i++) {
        const char *p = i < n ? tok_stream_next(tok, &st, ids[i], piece, sizeof piece)
                              : tok_stream_flush(&st, piece, sizeof piece);
        size_t pl = strlen(p);
        if (len + pl + 1 > cap) {
            cap = (len + pl + 1) * 2;
            char *q = realloc(s, cap);
            if (!q) {
                free(s);
                return NULL;
            }
            s = q;
        }
        memcpy(s + len, p, pl + 1);
        len += pl;
    }
    for (int k = 0; k < n_stops; k++) {
        char *cut = strstr(s, stops[k]);
        if (cut) *cut = 0;
    }
    return s;
}

static int eval_generate(const Model *m, const LoraAdapter *lora, const Tokenizer *tok, const Dataset *ds,
                         int n, const EvalOptions *o, EvalResult *out, Err *e) {
    double em = 0, sw = 0, ct = 0, f1 = 0;
    int count = 0, eos = tok_eos(tok);
    const char *stops[GEN_MAX_STOP];
    int n_stops = turn_markers(stops, GEN_MAX_STOP);
    for (int i = 0; i < n; i++) {
        const Example *ex = &ds->ex[i];
        int r0 = 0;
        while (r0 < ex->n && !ex->mask[r0]) r0++;
        if (r0 == 0 || r0 == ex->n) continue;  // no prompt or no response
        int r1 = r0;
        while (r1 < ex->n && ex->mask[r1]) r1++;
        int ref_end = r1;
        if (ref_end > r0 && ex->ids[ref_end - 1] == eos) ref_end--;
        char *ref = response_text(tok, ex->ids[r0 - 1], ex->ids + r0, ref_end - r0, stops, n_stops);
        if (!ref) return err_set(e, "out of memory");
        GenConfig g;
        gen_config_default(&g);
        g.sampler.temperature = 0;
        g.max_tokens = o->max_tokens > 0 ? o->max_tokens : (ref_end - r0 > 0 ? ref_end - r0 : 1);
        for (int k = 0; k < n_stops; k++) g.stop[g.n_stop++] = stops[k];
        GenResult res;
        if (generate(m, lora, tok, ex->ids, r0, &g, NULL, NULL, &res, e)) {
            free(ref);
            return -1;
        }
        em += text_exact_match(res.text, ref);
        sw += text_starts_with(res.text, ref);
        ct += text_contains(res.text, ref);
        f1 += text_f1(res.text, ref);
        count++;
        gen_result_free(&res);
        free(ref);
    }
    out->n_generated = count;
    if (count) {
        out->exact_match = em / count;
        out->starts_with = sw / count;
        out->contains = ct / count;
        out->f1 = f1 / count;
    }
    return 0;
}

int eval_model(const Model *m, const LoraAdapter *lora, const Tokenizer *tok, const Dataset *ds,
               const EvalOptions *o, const char *name, EvalResult *out, Err *e) {
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", name ? name : (lora ? "adapter" : "base"));
    int n = ds->n;
    if (o->max_examples > 0 && o->max_examples < n) n = o->max_examples;
    out->n_examples = n;
    double t0 = now_seconds();
    if (eval_loss(m, lora, ds, n, o->batch_size > 0 ? o->batch_size : 1, out, e)) return -1;
    if (o->generate && eval_generate(m, lora, tok, ds, n, o, out, e)) return -1;
    if (o->progress)
        fprintf(stderr, "evaluated %s on %d examples (%ld response tokens) in %.1fs\n", out->name, n,
                out->n_tokens, now_seconds() - t0);
    return 0;
}

// ---- table and JSON -----------------------------------------------------------------------
void eval_print_table(FILE *f, const EvalResult *rows, int n) {
    if (n <= 0) return;
    int w = 10;
    for (int i = 0; i < n; i++)
        if ((int)strlen(rows[i].name) > w) w = (int)strlen(rows[i].name);
    int gen = 0;
    for (int i = 0; i < n; i++) gen |= rows[i].n_generated > 0;
    fprintf(f, "%-*s %9s %10s %8s", w, "model", "loss", "perplexity", "tok acc");
    if (gen) fprintf(f, " %8s %8s %8s %8s", "exact", "starts", "contains", "F1");
    fprintf(f, "\n");
    for (int i = 0; i < n; i++) {
        const EvalResult *r = &rows[i];
        fprintf(f, "%-*s %9.4f %10.3f %7.1f%%", w, r->name, r->loss, r->perplexity, 100 * r->token_accuracy);
        if (gen && r->n_generated)
            fprintf(f, " %7.1f%% %7.1f%% %7.1f%% %7.1f%%", 100 * r->exact_match, 100 * r->starts_with,
                    100 * r->contains, 100 * r->f1);
        fprintf(f, "\n");
        if (i == 0) continue;
        const EvalResult *b = &rows[0];
        char label[ADAPTER_NAME_MAX + 8];
        snprintf(label, sizeof label, "  vs %s", b->name);
        fprintf(f, "%-*s %+9.4f %+10.3f %+6.1fpp", w, label, r->loss - b->loss, r->perplexity - b->perplexity,
                100 * (r->token_accuracy - b->token_accuracy));
        if (gen && r->n_generated && b->n_generated)
            fprintf(f, " %+6.1fpp %+6.1fpp %+6.1fpp %+6.1fpp", 100 * (r->exact_match - b->exact_match),
                    100 * (r->starts_with - b->starts_with), 100 * (r->contains - b->contains),
                    100 * (r->f1 - b->f1));
        fprintf(f, "\n");
    }
    fprintf(f, "(%d examples, %ld response tokens%s)\n", rows[0].n_examples, rows[0].n_tokens,
            gen ? "; generation: greedy, compared after SQuAD normalisation" : "");
}

int eval_write_json(const char *path, const EvalResult *rows, int n, Err *e) {
    json_object *root = json_object_new_object(), *arr = json_object_new_array();
    json_object_object_add(root, "results", arr);
    for (int i = 0; i < n; i++) {
        const EvalResult *r = &rows[i];
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(r->name));
        json_object_object_add(o, "loss", json_object_new_double(r->loss));
        json_object_object_add(o, "perplexity", json_object_new_double(r->perplexity));
        json_object_object_add(o, "token_accuracy", json_object_new_double(r->token_accuracy));
        const char *gk[4] = {"exact_match", "starts_with", "contains", "f1"};
        double gv[4] = {r->exact_match, r->starts_with, r->contains, r->f1};
        for (int k = 0; k < 4; k++)
            json_object_object_add(o, gk[k], r->n_generated ? json_object_new_double(gv[k]) : NULL);
        json_object_object_add(o, "n_examples", json_object_new_int(r->n_examples));
        json_object_object_add(o, "n_tokens", json_object_new_int64(r->n_tokens));
        json_object_object_add(o, "n_generated", json_object_new_int(r->n_generated));
        json_object_array_add(arr, o);
    }
    int rc = json_write_file(path, root, e);
    json_object_put(root);
    return rc;
}
