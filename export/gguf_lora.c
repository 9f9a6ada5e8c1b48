// llama.cpp GGUF LoRA adapters (the format of convert_lora_to_gguf.py and `llama-cli --lora`),
// the adapter_load dispatch, and the RoPE row permutation shared with the merged GGUF writer.
//
// llama.cpp pairs "<name>.lora_a" with "<name>.lora_b" for a base tensor <name>, checks
// base ne[0] == a ne[0] (in), base ne[1] == b ne[1] (out), a ne[1] == b ne[0] (r), and adds
// scale · B (A x) with scale = alpha / r (b ne[0]), or 1 when alpha is 0. So lora_a is PEFT's
// A (r, in) as it is and lora_b PEFT's B (out, r) as it is, in row-major order.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "export/export.h"

static const char *const GGUF_TARGET[LT_COUNT] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                  "ffn_gate", "ffn_up", "ffn_down"};

const char *gguf_weight_name(char *buf, size_t n, int layer, LoraTarget t) {
    snprintf(buf, n, "blk.%d.%s.weight", layer, (t >= 0 && t < LT_COUNT) ? GGUF_TARGET[t] : "?");
    return buf;
}

// w (heads*D, cols) -> w, rows of each head reordered; shapes as in export.h.
int rope_permute_rows(float *w, int heads, int D, int64_t cols, RopeStyle to, Err *e) {
    size_t row = (size_t)cols * sizeof(float);
    float *tmp = xmalloc((size_t)D * row, "RoPE permutation buffer", e);
    if (!tmp) return -1;
    for (int h = 0; h < heads; h++) {
        float *head = w + (size_t)h * D * cols;
        for (int i = 0; i < D / 2; i++)
            for (int j = 0; j < 2; j++) {
                size_t half = (size_t)j * D / 2 + i, adj = (size_t)2 * i + j;
                if (to == ROPE_ADJACENT) memcpy(tmp + adj * cols, head + half * cols, row);
                else memcpy(tmp + half * cols, head + adj * cols, row);
            }
        memcpy(head, tmp, (size_t)D * row);
    }
    free(tmp);
    return 0;
}

// Heads whose rows target t's output holds when it is q or k (0 otherwise: no permutation).
static int rope_heads(const ModelConfig *c, LoraTarget t) {
    return t == LT_Q ? c->n_heads : t == LT_K ? c->n_kv_heads : 0;
}

// The scale llama.cpp will apply to an adapter with this alpha and rank.
static float llama_cpp_scale(float alpha, int rank) { return alpha != 0.0f ? alpha / (float)rank : 1.0f; }

// ---- writing ------------------------------------------------------------------------------

int adapter_save_gguf(const LoraAdapter *a, const Model *m, const char *path, Err *e) {
    const ModelConfig *c = &m->cfg;
    if (strcmp(c->arch, "llama"))  // tensor names and the q/k row order below are llama's
        return err_set(e, "GGUF adapter export supports llama models only (this one is \"%s\"); "
                          "use the PEFT adapter", c->arch);
    if (a->n_layers != c->n_layers)
        return err_set(e, "adapter has %d layers but the model %d", a->n_layers, c->n_layers);
    // what B must be multiplied by so that llama.cpp's alpha/r gives our scale
    float fold = 1.0f;
    if (a->use_rslora || a->alpha == 0.0f) fold = a->scale / llama_cpp_scale(a->alpha, a->rank);
    GgufWriter *w = ggw_new(e);
    if (!w) return -1;
    int rc = ggw_set_str(w, "general.architecture", c->arch, e);
    if (!rc) rc = ggw_set_str(w, "general.type", "adapter", e);
    if (!rc) rc = ggw_set_str(w, "general.name", "lora.c adapter", e);
    if (!rc) rc = ggw_set_str(w, "adapter.type", "lora", e);
    if (!rc) rc = ggw_set_f32(w, "adapter.lora.alpha", a->alpha, e);
    float *buf = NULL;
    for (int l = 0; l < a->n_layers && !rc; l++)
        for (int t = 0; t < LT_COUNT && !rc; t++) {
            const Tensor *A = a->A[l * LT_COUNT + t], *B = a->B[l * LT_COUNT + t];
            if (!A) continue;
            int64_t r = A->shape[0], in = A->shape[1], out = B->shape[0];
            char base[96], name[128];
            gguf_weight_name(base, sizeof base, l, (LoraTarget)t);
            int64_t ne_a[2] = {in, r}, ne_b[2] = {r, out};
            snprintf(name, sizeof name, "%s.lora_a", base);
            rc = ggw_add_f32(w, name, GGML_F32, 2, ne_a, A->data, e);
            free(buf);
            if (!rc && !(buf = xmalloc((size_t)B->n * sizeof(float), "LoRA B copy", e))) rc = -1;
            if (rc) break;
            for (int64_t i = 0; i < B->n; i++) buf[i] = fold == 1.0f ? B->data[i] : B->data[i] * fold;
            int heads = rope_heads(c, (LoraTarget)t);
            if (heads && rope_permute_rows(buf, heads, c->head_dim, r, ROPE_ADJACENT, e)) rc = -1;
            snprintf(name, sizeof name, "%s.lora_b", base);
            if (!rc) rc = ggw_add_f32(w, name, GGML_F32, 2, ne_b, buf, e);
        }
    free(buf);
    if (!rc) rc = ggw_save(w, path, e);
    ggw_free(w);
    return rc;
}

// ---- reading ------------------------------------------------------------------------------

// "blk.N.<target>.weight.lora_a" -> layer, target, which (0 a, 1 b); -1 when not such a name.
static int parse_lora_name(const char *name, int n_layers, int *layer, LoraTarget *t, int *which) {
    int l, pos = 0;
    if (sscanf(name, "blk.%d.%n", &l, &pos) != 1 || pos == 0 || l < 0 || l >= n_layers) return -1;
    for (int k = 0; k < LT_COUNT; k++) {
        char want[64];
        for (int ab = 0; ab < 2; ab++) {
            snprintf(want, sizeof want, "%s.weight.lora_%c", GGUF_TARGET[k], ab ? 'b' : 'a');
            if (!strcmp(name + pos, want)) {
                *layer = l;
                *t = (LoraTarget)k;
                *which = ab;
                return 0;
            }
        }
    }
    return -1;
}

static void shape_str(char *buf, size_t n, const GgufTensor *g) {
    if (g->n_dims == 2) snprintf(buf, n, "[%lld, %lld]", (long long)g->ne[0], (long long)g->ne[1]);
    else snprintf(buf, n, "(%d dims)", g->n_dims);
}

// Checks the metadata; sets *alpha.
static int check_adapter_meta(const Gguf *g, const Model *m, const char *path, float *alpha, Err *e) {
    const char *type = gguf_get_str(g, "general.type"), *at = gguf_get_str(g, "adapter.type");
    const char *arch = gguf_get_str(g, "general.architecture");
    if (!type || strcmp(type, "adapter"))
        return err_set(e, "%s: not a LoRA adapter (general.type is \"%s\", expected \"adapter\")", path,
                       type ? type : "(missing)");
    if (!at || strcmp(at, "lora"))
        return err_set(e, "%s: adapter.type is \"%s\", expected \"lora\"", path, at ? at : "(missing)");
    if (strcmp(m->cfg.arch, "llama"))
        return err_set(e, "%s: GGUF adapters are supported for llama models only (this one is \"%s\")", path,
                       m->cfg.arch);
    if (!arch || strcmp(arch, m->cfg.arch))
        return err_set(e, "%s: adapter for architecture \"%s\", but the model is \"%s\"", path,
                       arch ? arch : "(missing)", m->cfg.arch);
    *alpha = 0.0f;
    gguf_get_f32(g, "adapter.lora.alpha", alpha);
    if (!isfinite(*alpha)) return err_set(e, "%s: adapter.lora.alpha is not a finite number", path);
    return 0;
}

// One tensor pair (a, b) of layer l, target t into the adapter, checked against the model.
static int load_gguf_pair(LoraAdapter *a, const Gguf *g, const Model *m, const GgufTensor *ta,
                          const GgufTensor *tb, int l, LoraTarget t, const char *path, Err *e) {
    const Weight *w = &m->layers[l].w[t];
    char sa[64], sb[64];
    shape_str(sa, sizeof sa, ta);
    shape_str(sb, sizeof sb, tb);
    if (ta->n_dims != 2 || tb->n_dims != 2 || ta->ne[0] != w->cols || tb->ne[1] != w->rows ||
        ta->ne[1] != tb->ne[0])
        return err_set(e, "%s: %s has ne %s and %s ne %s; the model's %s of layer %d needs ne [%lld, r] "
                          "and [r, %lld]",
                       path, ta->name, sa, tb->name, sb, lora_target_name(t), l, (long long)w->cols,
                       (long long)w->rows);
    int r = (int)ta->ne[1];
    if (a->rank && r != a->rank)
        return err_set(e, "%s: %s has rank %d but other tensors rank %d (one rank per adapter is supported)",
                       path, ta->name, r, a->rank);
    a->rank = r;
    int64_t shA[2] = {r, w->cols}, shB[2] = {w->rows, r};
    Tensor *A = tensor_new_param(2, shA, 1, lora_target_name(t), e);
    Tensor *B = tensor_new_param(2, shB, 1, lora_target_name(t), e);
    a->A[l * LT_COUNT + t] = A;
    a->B[l * LT_COUNT + t] = B;
    if (!A || !B || gguf_read_f32(g, ta->name, A->data, A->n, e) || gguf_read_f32(g, tb->name, B->data, B->n, e))
        return -1;
    int heads = rope_heads(&m->cfg, t);
    if (heads && rope_permute_rows(B->data, heads, m->cfg.head_dim, r, ROPE_HALF, e)) return -1;
    a->targets |= 1u << t;
    return 0;
}

LoraAdapter *adapter_load_gguf(const char *path, const Model *m, Err *e) {
    Gguf *g = gguf_open(path, e);
    if (!g) return NULL;
    const int L = m->cfg.n_layers;
    LoraAdapter *a = xcalloc(1, sizeof *a, "LoRA adapter", e);
    // per slot: the index of its lora_a / lora_b tensor, -1 when absent
    int *idx = xmalloc((size_t)L * LT_COUNT * 2 * sizeof(int), "tensor index", e);
    float alpha = 0;
    int rc = (!a || !idx) ? -1 : check_adapter_meta(g, m, path, &alpha, e);
    if (!rc) {
        a->n_layers = L;
        a->A = xcalloc((size_t)L * LT_COUNT, sizeof(Tensor *), "LoRA A list", e);
        a->B = xcalloc((size_t)L * LT_COUNT, sizeof(Tensor *), "LoRA B list", e);
        if (!a->A || !a->B) rc = -1;
        for (int i = 0; i < L * LT_COUNT * 2 && !rc; i++) idx[i] = -1;
    }
    for (int i = 0; i < gguf_tensor_count(g) && !rc; i++) {
        const GgufTensor *gt = gguf_tensor_at(g, i);
        int l, which;
        LoraTarget t;
        if (parse_lora_name(gt->name, L, &l, &t, &which))
            rc = err_set(e, "%s: tensor %s is not a LoRA A/B of a q/k/v/o/gate/up/down projection of this "
                            "%d-layer model",
                         path, gt->name, L);
        else if (idx[(l * LT_COUNT + t) * 2 + which] >= 0)
            rc = err_set(e, "%s: tensor %s appears twice", path, gt->name);
        else
            idx[(l * LT_COUNT + t) * 2 + which] = i;
    }
    for (int l = 0; l < L && !rc; l++)
        for (int t = 0; t < LT_COUNT && !rc; t++) {
            int ia = idx[(l * LT_COUNT + t) * 2], ib = idx[(l * LT_COUNT + t) * 2 + 1];
            if (ia < 0 && ib < 0) continue;
            if (ia < 0 || ib < 0)
                rc = err_set(e, "%s: %s has no matching lora_%c", path,
                             gguf_tensor_at(g, ia >= 0 ? ia : ib)->name, ia >= 0 ? 'b' : 'a');
            else
                rc = load_gguf_pair(a, g, m, gguf_tensor_at(g, ia), gguf_tensor_at(g, ib), l, (LoraTarget)t,
                                    path, e);
        }
    if (!rc && !a->targets) rc = err_set(e, "%s: no LoRA tensors found", path);
    if (!rc) {
        a->alpha = alpha != 0.0f ? alpha : (float)a->rank;  // llama.cpp: alpha 0 means scale 1
        a->scale = llama_cpp_scale(alpha, a->rank);
        a->use_rslora = 0;
        a->dropout = 0;
        snprintf(a->base_model, sizeof a->base_model, "%s", m->source);
    }
    free(idx);
    gguf_close(g);
    if (rc) {
        lora_free(a);
        return NULL;
    }
    return a;
}

// ---- any adapter ------------------------------------------------------------------------

LoraAdapter *adapter_load(const char *path, const Model *m, Err *e) {
    if (is_directory(path)) return adapter_load_peft(path, m, e);
    if (!file_exists(path)) {
        err_set(e, "%s: no such adapter (expected a PEFT directory or a GGUF LoRA file)", path);
        return NULL;
    }
    char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(magic, 1, sizeof magic, f) : 0;
    if (f) fclose(f);
    if (got != sizeof magic || memcmp(magic, "GGUF", 4) != 0) {
        size_t n = strlen(path);
        if (n > 26 && !strcmp(path + n - 25, "adapter_model.safetensors"))
            err_set(e, "%s: pass the adapter's directory, not the file inside it", path);
        else
            err_set(e, "%s: not an adapter (expected a PEFT directory or a GGUF LoRA file)", path);
        return NULL;
    }
    return adapter_load_gguf(path, m, e);
}
