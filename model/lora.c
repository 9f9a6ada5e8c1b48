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
        if (!strcmp(tok, "qkv_proj")) {  // Phi-3's fused modules
            mask |= (1u << LT_Q) | (1u << LT_K) | (1u << LT_V);
            continue;
        }
        if (!strcmp(tok, "gate_up_proj")) {
            mask |= (1u << LT_GATE) | (1u << LT_UP);
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

// ---- fused projections (Phi-3) ----------------------------------------------------------------
// Group 0: qkv_proj = q;k;v rows; group 1: gate_up_proj = gate;up rows. -1 for other targets.
static int fused_group(LoraTarget t) {
    return (t == LT_Q || t == LT_K || t == LT_V) ? 0 : (t == LT_GATE || t == LT_UP) ? 1 : -1;
}
static const unsigned GROUP_MASK[2] = {(1u << LT_Q) | (1u << LT_K) | (1u << LT_V),
                                       (1u << LT_GATE) | (1u << LT_UP)};

int lora_check_fused(const Model *m, unsigned targets, Err *e) {
    if (!m->cfg.fused_proj) return 0;
    for (int g = 0; g < 2; g++)
        if ((targets & GROUP_MASK[g]) && (targets & GROUP_MASK[g]) != GROUP_MASK[g])
            return err_set(e, "%s fuses %s into one module %s: target all of them (%s) or none",
                           m->cfg.arch, g ? "gate_proj,up_proj" : "q_proj,k_proj,v_proj",
                           g ? "gate_up_proj" : "qkv_proj", g ? "gate_up_proj" : "qkv_proj");
    return 0;
}

// A zero-filled row view (rows, r) of fused B at row r0, sharing its data and gradient.
static Tensor *row_view(Tensor *fused, int64_t r0, int64_t rows, Err *e) {
    Tensor *v = xcalloc(1, sizeof *v, "LoRA B view", e);
    if (!v) return NULL;
    *v = *fused;
    v->shape[0] = rows;
    v->n = rows * fused->shape[1];
    v->data = fused->data + r0 * fused->shape[1];
    v->grad = fused->grad ? fused->grad + r0 * fused->shape[1] : NULL;
    return v;
}

// (in, out) features of target t in model m.
static void target_dims(const Model *m, int layer, LoraTarget t, int64_t *in, int64_t *out) {
    const Weight *w = &m->layers[layer].w[t];
    *in = w->cols;
    *out = w->rows;
}

// Slots of an adapter for m with no targets yet (rank, scale etc. for the caller to fill).
LoraAdapter *lora_alloc(const Model *m, int rank, Err *e) {
    LoraAdapter *a = xcalloc(1, sizeof *a, "LoRA adapter", e);
    if (!a) return NULL;
    a->rank = rank;
    a->n_layers = m->cfg.n_layers;
    snprintf(a->base_model, sizeof a->base_model, "%s", m->source);
    size_t slots = (size_t)m->cfg.n_layers * LT_COUNT;
    a->A = xcalloc(slots, sizeof(Tensor *), "LoRA A list", e);
    a->B = xcalloc(slots, sizeof(Tensor *), "LoRA B list", e);
    if (m->cfg.fused_proj) a->fused_B = xcalloc((size_t)m->cfg.n_layers * 2, sizeof(Tensor *), "LoRA B list", e);
    if (!a->A || !a->B || (m->cfg.fused_proj && !a->fused_B)) {
        lora_free(a);
        return NULL;
    }
    return a;
}

int lora_alloc_target(LoraAdapter *a, const Model *m, int l, LoraTarget t, Err *e) {
    const int r = a->rank, g = m->cfg.fused_proj ? fused_group(t) : -1;
    if (a->A[l * LT_COUNT + t]) return 0;
    int64_t in, out;
    target_dims(m, l, t, &in, &out);
    if (g < 0) {
        int64_t sa[2] = {r, in}, sb[2] = {out, r};
        a->A[l * LT_COUNT + t] = tensor_new_param(2, sa, 1, TARGET_NAMES[t], e);
        a->B[l * LT_COUNT + t] = tensor_new_param(2, sb, 1, TARGET_NAMES[t], e);
        a->targets |= 1u << t;
        return a->A[l * LT_COUNT + t] && a->B[l * LT_COUNT + t] ? 0 : -1;
    }
    // a fused group: one A, one B over the rows of all its members, members as views
    int64_t rows = 0;
    for (int u = 0; u < LT_COUNT; u++)
        if (GROUP_MASK[g] & (1u << u)) {
            int64_t i2, o2;
            target_dims(m, l, (LoraTarget)u, &i2, &o2);
            rows += o2;
        }
    const char *name = g ? "gate_up_proj" : "qkv_proj";
    int64_t sa[2] = {r, in}, sb[2] = {rows, r};
    Tensor *A = tensor_new_param(2, sa, 1, name, e);
    Tensor *B = tensor_new_param(2, sb, 1, name, e);
    a->fused_B[l * 2 + g] = B;
    if (!A || !B) {
        tensor_free(A);
        return -1;
    }
    int64_t r0 = 0;
    for (int u = 0; u < LT_COUNT; u++)
        if (GROUP_MASK[g] & (1u << u)) {
            int64_t i2, o2;
            target_dims(m, l, (LoraTarget)u, &i2, &o2);
            a->A[l * LT_COUNT + u] = A;
            if (!(a->B[l * LT_COUNT + u] = row_view(B, r0, o2, e))) return -1;
            r0 += o2;
        }
    a->targets |= GROUP_MASK[g];
    return 0;
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
    if (lora_check_fused(m, targets, e)) return NULL;
    LoraAdapter *a = lora_alloc(m, rank, e);
    if (!a) return NULL;
    a->alpha = alpha;
    a->dropout = dropout;
    a->use_rslora = use_rslora;
    a->scale = use_rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
    Rng rng;
    rng_seed(&rng, seed);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        for (int t = 0; t < LT_COUNT; t++) {
            if (!(targets & (1u << t))) continue;
            int fresh = !a->A[l * LT_COUNT + t];
            if (lora_alloc_target(a, m, l, (LoraTarget)t, e)) {
                lora_free(a);
                return NULL;
            }
            if (!fresh) continue;  // the shared A of a fused group is drawn once
            // kaiming_uniform_(a=sqrt(5)) on a (r, in) matrix: bound = 1/sqrt(in)
            Tensor *A = a->A[l * LT_COUNT + t];
            float bound = 1.0f / sqrtf((float)A->shape[1]);
            for (int64_t i = 0; i < A->n; i++) A->data[i] = (2.0f * rng_uniform(&rng) - 1.0f) * bound;
            // B stays zero: the adapter starts as the identity change.
        }
    }
    return a;
}

void lora_free(LoraAdapter *a) {
    if (!a) return;
    for (int l = 0; l < a->n_layers; l++)
        for (int t = 0; t < LT_COUNT; t++) {
            int i = l * LT_COUNT + t, g = a->fused_B ? fused_group((LoraTarget)t) : -1;
            if (g >= 0) {  // views of fused_B, and one A shared by the group
                if (a->B) free(a->B[i]);
                if (a->A && a->A[i] && (t == LT_Q || t == LT_GATE)) tensor_free(a->A[i]);
                continue;
            }
            if (a->A) tensor_free(a->A[i]);
            if (a->B) tensor_free(a->B[i]);
        }
    if (a->fused_B)
        for (int i = 0; i < a->n_layers * 2; i++) tensor_free(a->fused_B[i]);
    free(a->fused_B);
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
            int g = a->fused_B ? fused_group((LoraTarget)t) : -1;
            if (g >= 0) {  // the group's A and fused B, once, at its first member
                if (t != LT_Q && t != LT_GATE) continue;
                B = a->fused_B[l * 2 + g];
            }
            if (n + 2 > max) return n;
            out[n++] = A;
            out[n++] = B;
        }
    return n;
}

Tensor *lora_module_tensor(const LoraAdapter *a, int layer, const char *module, char ab) {
    if (layer < 0 || layer >= a->n_layers) return NULL;
    int g = !strcmp(module, "qkv_proj") ? 0 : !strcmp(module, "gate_up_proj") ? 1 : -1;
    if (g >= 0) {
        if (!a->fused_B) return NULL;
        return ab == 'A' ? a->A[layer * LT_COUNT + (g ? LT_GATE : LT_Q)] : a->fused_B[layer * 2 + g];
    }
    for (int t = 0; t < LT_COUNT; t++)
        if (!strcmp(module, TARGET_NAMES[t])) {
            if (a->fused_B && fused_group((LoraTarget)t) >= 0) return NULL;
            return ab == 'A' ? a->A[layer * LT_COUNT + t] : a->B[layer * LT_COUNT + t];
        }
    return NULL;
}
