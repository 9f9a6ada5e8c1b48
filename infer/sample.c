// Sampling: HF transformers' logit processors (repetition penalty, temperature, top-k, top-p,
// min-p) and a seeded draw.
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "infer/infer.h"

void sampler_config_default(SamplerConfig *c) {
    c->temperature = 1.0f;
    c->top_k = 0;
    c->top_p = 1.0f;
    c->min_p = 0.0f;
    c->repetition_penalty = 1.0f;
    c->seed = 42;
}

int sampler_config_check(const SamplerConfig *c, Err *e) {
    if (!(c->temperature >= 0 && isfinite(c->temperature)))
        return err_set(e, "temperature must be >= 0 (got %g)", c->temperature);
    if (c->top_k < 0) return err_set(e, "top_k must be >= 0 (got %d)", c->top_k);
    if (!(c->top_p > 0 && c->top_p <= 1)) return err_set(e, "top_p must be in (0, 1] (got %g)", c->top_p);
    if (!(c->min_p >= 0 && c->min_p < 1)) return err_set(e, "min_p must be in [0, 1) (got %g)", c->min_p);
    if (!(c->repetition_penalty > 0 && isfinite(c->repetition_penalty)))
        return err_set(e, "repetition_penalty must be > 0 (got %g)", c->repetition_penalty);
    return 0;
}

int sampler_init(Sampler *s, const SamplerConfig *c, int vocab, Err *e) {
    memset(s, 0, sizeof *s);
    if (sampler_config_check(c, e)) return -1;
    s->cfg = *c;
    s->vocab = vocab;
    rng_seed(&s->rng, c->seed);
    s->probs = xmalloc(sizeof(float) * (size_t)vocab, "sampler probabilities", e);
    s->order = xmalloc(sizeof(int) * (size_t)vocab, "sampler order", e);
    if (!s->probs || !s->order) {
        sampler_free(s);
        return -1;
    }
    return 0;
}

void sampler_free(Sampler *s) {
    free(s->probs);
    free(s->order);
    s->probs = NULL;
    s->order = NULL;
}

// logits (V), history (n) -> logits (V): every distinct seen id once, as HF's
// RepetitionPenaltyLogitsProcessor (gather, then scatter: a repeated id is not penalised twice).
void apply_repetition_penalty(float *logits, int V, const int *history, int n, float penalty) {
    if (penalty == 1.0f || n <= 0) return;
    for (int i = 0; i < n; i++) {
        int id = history[i];
        if (id < 0 || id >= V) continue;
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = history[j] == id;
        if (seen) continue;
        logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
    }
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

// Descending by value, ties by index (a stable order).
static int cmp_desc(const void *a, const void *b, void *ctx) {
    const float *v = ctx;
    int i = *(const int *)a, j = *(const int *)b;
    if (v[i] > v[j]) return -1;
    if (v[i] < v[j]) return 1;
    return (i > j) - (i < j);
}

// x (n) with -INF for removed entries -> p (n): softmax over the kept ones.
static void softmax_kept(const float *x, int n, float *p) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += x[i] == -INFINITY ? 0.0 : exp((double)x[i] - mx);
    for (int i = 0; i < n; i++) p[i] = x[i] == -INFINITY ? 0.0f : (float)(exp((double)x[i] - mx) / sum);
}

void sampler_probs(Sampler *s, float *logits, const int *history, int n_history, float *probs) {
    const SamplerConfig *c = &s->cfg;
    const int V = s->vocab;
    apply_repetition_penalty(logits, V, history, n_history, c->repetition_penalty);
    float T = c->temperature > 0 ? c->temperature : 1.0f;
    for (int i = 0; i < V; i++) logits[i] /= T;
    int sorted = 0;
    if (c->top_k > 0 && c->top_k < V) {
        // keep tokens whose score is >= the k-th largest (ties at the threshold kept, as torch.topk's)
        for (int i = 0; i < V; i++) s->order[i] = i;
        qsort_r(s->order, (size_t)V, sizeof(int), cmp_desc, logits);
        sorted = 1;
        float kth = logits[s->order[c->top_k - 1]];
        for (int i = 0; i < V; i++)
            if (logits[i] < kth) logits[i] = -INFINITY;
    }
    if (c->top_p < 1.0f) {
        // HF: sort ascending, drop while the cumulative probability is <= 1 - top_p; the most
        // likely token always stays. Walking from the most likely end: keep a token while the
        // mass of the tokens below it (inclusive) exceeds 1 - top_p.
        if (!sorted) {
            for (int i = 0; i < V; i++) s->order[i] = i;
            qsort_r(s->order, (size_t)V, sizeof(int), cmp_desc, logits);
        }
        softmax_kept(logits, V, probs);
        double below = 1.0;  // mass of tokens at or below position k in descending order
        for (int k = 0; k < V; k++) {
            int id = s->order[k];
            if (k > 0 && below <= 1.0 - c->top_p) logits[id] = -INFINITY;
            below -= probs[id];
        }
    }
    if (c->min_p > 0) {
        softmax_kept(logits, V, probs);
        float top = probs[argmax(probs, V)];
        for (int i = 0; i < V; i++)
            if (probs[i] < c->min_p * top) logits[i] = -INFINITY;
    }
    softmax_kept(logits, V, probs);
}

int sampler_next(Sampler *s, float *logits, const int *history, int n_history) {
    if (s->cfg.temperature <= 0) {
        apply_repetition_penalty(logits, s->vocab, history, n_history, s->cfg.repetition_penalty);
        return argmax(logits, s->vocab);
    }
    sampler_probs(s, logits, history, n_history, s->probs);
    double r = rng_uniform(&s->rng), acc = 0;
    int last = 0;
    for (int i = 0; i < s->vocab; i++) {
        if (s->probs[i] <= 0) continue;
        acc += s->probs[i];
        last = i;
        if (acc > r) return i;
    }
    return last;  // rounding left r just above the total
}
