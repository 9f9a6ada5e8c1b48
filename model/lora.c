// LoRA adapters: creation (PEFT's init), target names, parameter lists.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

static const char *const TARGET_NAMES[LT_COUNT] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};
static const char *const TARGET_SHORT[LT_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};

const char *lora_target_name(LoraTarget t) { return (t >= 0 && t < LT_COUNT) ? TARGET_NAMES[t] : "?"; }

unsigned lora_parse_targets(const char *csv, Err *e) {
    unsigned mask = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", csv ? csv : "");
    char *save = NULL;
    for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        if (!strcmp(tok, "all") || !strcmp(tok, "all-linear")) {
            mask |= (1u << LT_COUNT) - 1;
            continue;
        }
        if (!strcmp(tok, "attn")) {
            mask |= (1u << LT_Q) | (1u << LT_K) | (1u << LT_V) | (1u << LT_O);
            continue;
        }
        if (!strcmp(tok, "mlp")) {
            mask |= (1u << LT_GATE) | (1u << LT_UP) | (1u << LT_DOWN);
            continue;
        }
        int found = -1;
        for (int t = 0; t < LT_COUNT; t++)
            if (!strcmp(tok, TARGET_NAMES[t]) || !strcmp(tok, TARGET_SHORT[t])) found = t;
        if (found < 0) {
            err_set(e,
                    "unknown LoRA target \"%s\" (use q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
                    "down_proj, their short names q,k,v,o,gate,up,down, or all/attn/mlp)",
                    tok);
            return 0;
        }
        mask |= 1u << found;
    }
    if (!mask) err_set(e, "no LoRA targets given");
    return mask;
}

const char *lora_targets_str(unsigned mask, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = 0;
    for (int t = 0; t < LT_COUNT; t++) {
        if (!(mask & (1u << t))) continue;
        int w = snprintf(buf + used, n - used, "%s%s", used ? "," : "", TARGET_NAMES[t]);
        if (w < 0 || (size_t)w >= n - used) break;
        used += (size_t)w;
    }
    return buf;
}

// (in, out) features of target t in model m.
static void target_dims(const Model *m, int layer, LoraTarget t, int64_t *in, int64_t *out) {
    const Weight *w = &m->layers[layer].w[t];
    *in = w->cols;
    *out = w->rows;
}

LoraAdapter *lora_new(const Model *m, int rank, float alpha, unsigned targets, float dropout,
                      int use_rslora, uint64_t seed, Err *e) {
    if (rank < 1) {
        err_set(e, "LoRA rank must be at least 1 (got %d)", rank);
        return NULL;
    }
    if (!(dropout >= 0.0f && dropout < 1.0f)) {
        err_set(e, "LoRA dropout must be in [0, 1) (got %g)", dropout);
        return NULL;
    }
    if (!targets) {
        err_set(e, "no LoRA targets given");
        return NULL;
    }
    LoraAdapter *a = xcalloc(1, sizeof *a, "LoRA adapter", e);
    if (!a) return NULL;
    a->rank = rank;
    a->alpha = alpha;
    a->dropout = dropout;
    a->use_rslora = use_rslora;
    a->scale = use_rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
    a->targets = targets;
    a->n_layers = m->cfg.n_layers;
    snprintf(a->base_model, sizeof a->base_model, "%s", m->source);
    size_t slots = (size_t)m->cfg.n_layers * LT_COUNT;
    a->A = xcalloc(slots, sizeof(Tensor *), "LoRA A list", e);
    a->B = xcalloc(slots, sizeof(Tensor *), "LoRA B list", e);
    if (!a->A || !a->B) {
        lora_free(a);
        return NULL;
    }
    Rng rng;
    rng_seed(&rng, seed);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        for (int t = 0; t < LT_COUNT; t++) {
            if (!(targets & (1u << t))) continue;
            int64_t in, out;
            target_dims(m, l, (LoraTarget)t, &in, &out);
            int64_t sa[2] = {rank, in}, sb[2] = {out, rank};
            Tensor *A = tensor_new_param(2, sa, 1, TARGET_NAMES[t], e);
            Tensor *B = tensor_new_param(2, sb, 1, TARGET_NAMES[t], e);
            a->A[l * LT_COUNT + t] = A;
            a->B[l * LT_COUNT + t] = B;
            if (!A || !B) {
                lora_free(a);
                return NULL;
            }
            // kaiming_uniform_(a=sqrt(5)) on a (r, in) matrix: bound = 1/sqrt(in)
            float bound = 1.0f / sqrtf((float)in);
            for (int64_t i = 0; i < A->n; i++) A->data[i] = (2.0f * rng_uniform(&rng) - 1.0f) * bound;
            // B stays zero: the adapter starts as the identity change.
        }
    }
    return a;
}

void lora_free(LoraAdapter *a) {
    if (!a) return;
    size_t slots = (size_t)a->n_layers * LT_COUNT;
    for (size_t i = 0; i < slots; i++) {
        if (a->A) tensor_free(a->A[i]);
        if (a->B) tensor_free(a->B[i]);
    }
    free(a->A);
    free(a->B);
    free(a);
}

int lora_params(const LoraAdapter *a, Tensor **out, int max) {
    int n = 0;
    for (int l = 0; l < a->n_layers; l++)
        for (int t = 0; t < LT_COUNT; t++) {
            Tensor *A = a->A[l * LT_COUNT + t], *B = a->B[l * LT_COUNT + t];
            if (!A) continue;
            if (n + 2 > max) return n;
            out[n++] = A;
            out[n++] = B;
        }
    return n;
}
