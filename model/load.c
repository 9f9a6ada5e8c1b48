// Model loading and saving: HF directories (config.json + safetensors), GGUF llama files and
// llama2.c .bin checkpoints, all into one in-memory layout (fp32, q/k rows in the HF
// rotate-half RoPE convention); HF directory writing; random models for demos and tests.
#include <dirent.h>
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/io_internal.h"
#include "quant/quant.h"

// ---- quantization options -----------------------------------------------------------------

int quant_parse(const char *s, QuantType *out, Err *e) {
    if (!strcmp(s, "none") || !strcmp(s, "f32") || !strcmp(s, "fp32")) *out = QUANT_NONE;
    else if (!strcmp(s, "nf4")) *out = QUANT_NF4;
    else return err_set(e, "quant: expected nf4 or none, got \"%s\"", s);
    return 0;
}

const char *quant_name(QuantType q) { return q == QUANT_NF4 ? "nf4" : "none"; }

void model_load_options_default(ModelLoadOptions *o) {
    memset(o, 0, sizeof *o);
    o->quant = QUANT_NONE;
}

// The whole pages inside [p, p+n) of a read-only file mapping are dropped from memory once
// a tensor has been copied out of them (they are re-read from the file if touched again),
// so that loading a big model does not leave the whole file resident.
static void release_mapped(const void *p, size_t n) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + n) & ~(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

// ---- config -------------------------------------------------------------------------------

void model_config_default(ModelConfig *cfg, int dim, int hidden_dim, int n_layers, int n_heads,
                          int n_kv_heads, int vocab_size, int max_seq_len) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->arch, sizeof cfg->arch, "llama");
    cfg->dim = dim;
    cfg->hidden_dim = hidden_dim;
    cfg->n_layers = n_layers;
    cfg->n_heads = n_heads;
    cfg->n_kv_heads = n_kv_heads;
    cfg->head_dim = n_heads > 0 ? dim / n_heads : 0;
    cfg->vocab_size = vocab_size;
    cfg->max_seq_len = max_seq_len;
    cfg->norm_eps = 1e-5f;
    cfg->rope_theta = 10000.0f;
    cfg->tied_embeddings = 0;
    cfg->bos_id = 1;
    cfg->eos_id = 2;
    cfg->file_rope = ROPE_HALF;
}

// Sizes that every later computation relies on (checked once, here).
static int config_check(const ModelConfig *c, const char *src, Err *e) {
    const int64_t lim = 1 << 24;
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->head_dim <= 0 || c->vocab_size <= 0 || c->dim > lim ||
        c->hidden_dim > lim || c->n_layers > 4096 || c->n_heads > 4096 || c->head_dim > 4096 ||
        c->vocab_size > lim)
        return err_set(e,
                       "%s: invalid model sizes (dim %d, hidden %d, layers %d, heads %d, kv heads "
                       "%d, head_dim %d, vocab %d)",
                       src, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                       c->head_dim, c->vocab_size);
    if (c->n_heads % c->n_kv_heads)
        return err_set(e, "%s: %d attention heads is not a multiple of %d KV heads", src,
                       c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2) return err_set(e, "%s: head_dim %d must be even for RoPE", src, c->head_dim);
    if (!(c->norm_eps > 0) || !(c->rope_theta > 0))
        return err_set(e, "%s: rms_norm_eps and rope_theta must be positive", src);
    if (c->max_seq_len <= 0) return err_set(e, "%s: invalid max_position_embeddings %d", src, c->max_seq_len);
    return 0;
}

// ---- model allocation ---------------------------------------------------------------------

static void free_wrapped(Tensor *t) {
    if (!t) return;
    free(t->data);
    tensor_free(t);
}

void model_free(Model *m) {
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            free_wrapped(m->layers[l].attn_norm);
            free_wrapped(m->layers[l].ffn_norm);
            for (int t = 0; t < LT_COUNT; t++) {
                weight_free(&m->layers[l].w[t]);
                free_wrapped(m->layers[l].bias[t]);
            }
        }
        free(m->layers);
    }
    weight_free(&m->lm_head);
    free_wrapped(m->tok_emb);
    weight_free(&m->emb);
    free_wrapped(m->final_norm);
    free(m->inv_freq);
    free(m);
}

// A model with config c and inv_freq, no weights yet.
Model *model_alloc(const ModelConfig *c, const char *source, Err *e) {
    if (config_check(c, source, e)) return NULL;
    Model *m = xcalloc(1, sizeof *m, "model", e);
    if (!m) return NULL;
    m->cfg = *c;
    snprintf(m->source, sizeof m->source, "%s", source);
    m->layers = xcalloc((size_t)c->n_layers, sizeof(Layer), "model layers", e);
    m->inv_freq = xmalloc((size_t)c->head_dim / 2 * sizeof(float), "rotary frequencies", e);
    if (!m->layers || !m->inv_freq) {
        model_free(m);
        return NULL;
    }
    arch_inv_freq(c, m->inv_freq);  // theta^(-2i/D), rope-scaled
    return m;
}

// (rows, cols) of base weight t: q (H*D,C) k,v (KVH*D,C) o (C,H*D) gate,up (F,C) down (C,F)
void model_weight_dims(const ModelConfig *c, LoraTarget t, int64_t *rows, int64_t *cols) {
    int64_t C = c->dim, F = c->hidden_dim, QD = (int64_t)c->n_heads * c->head_dim,
            KD = (int64_t)c->n_kv_heads * c->head_dim;
    switch (t) {
    case LT_Q: *rows = QD; *cols = C; break;
    case LT_K: case LT_V: *rows = KD; *cols = C; break;
    case LT_O: *rows = C; *cols = QD; break;
    case LT_GATE: case LT_UP: *rows = F; *cols = C; break;
    default: *rows = C; *cols = F; break;
    }
}

// ---- one loader over three formats ----------------------------------------------------------

// R_BIAS: the bias of target t; R_FUSED: the fused weight whose first member is t (Phi-3's
// qkv_proj for LT_Q, gate_up_proj for LT_GATE)
typedef enum { R_EMB, R_LM_HEAD, R_FINAL_NORM, R_ATTN_NORM, R_FFN_NORM, R_WEIGHT, R_BIAS, R_FUSED } Role;

// A format's way to fetch one tensor as fp32 in the file's row order, given the expected
// row-major shape (rows, cols) (cols == 0 for vectors). Returns 0, 1 when the file does
// not have it, -1 with Err on a bad tensor.
typedef int (*ReadFn)(void *ctx, Role r, int layer, LoraTarget t, float *out, int64_t rows,
                      int64_t cols, Err *e);

// w (H*D, cols), rows of each head in adjacent-pair order -> rotate-half order:
// file row 2i+j of a head becomes row j*D/2+i (HF's convert_llama_weights_to_hf permute).
static int permute_adjacent_to_half(float *w, int heads, int D, int64_t cols, Err *e) {
    float *tmp = xmalloc((size_t)D * cols * sizeof(float), "RoPE permutation buffer", e);
    if (!tmp) return -1;
    for (int h = 0; h < heads; h++) {
        float *head = w + (size_t)h * D * cols;
        for (int i = 0; i < D / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(tmp + ((size_t)j * D / 2 + i) * cols, head + ((size_t)2 * i + j) * cols,
                       (size_t)cols * sizeof(float));
        memcpy(head, tmp, (size_t)D * cols * sizeof(float));
    }
    free(tmp);
    return 0;
}

// Reads a role into a new buffer. *absent set when the file lacks it (then returns NULL
// without error).
static float *read_new(ReadFn rd, void *ctx, Role r, int layer, LoraTarget t, int64_t rows,
                       int64_t cols, int *absent, Err *e) {
    int64_t n = rows * (cols ? cols : 1);
    float *buf = xmalloc_aligned((size_t)n * sizeof(float), "model tensor", e);
    if (!buf) return NULL;
    int rc = rd(ctx, r, layer, t, buf, rows, cols, e);
    if (absent) *absent = rc == 1;
    if (rc != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static Tensor *wrap_vec(float *data, int64_t n, const char *name, Err *e) {
    int64_t shape[1] = {n};
    Tensor *t = data ? tensor_wrap(data, 1, shape, name, e) : NULL;
    if (!t) free(data);
    return t;
}

static int read_missing(int absent, const char *src, const char *what, Err *e) {
    return absent ? err_set(e, "%s: tensor %s is missing", src, what) : -1;
}

// w (rows, cols) fp32 (freed) -> *out as the storage of quant: NF4 (a new Nf4Matrix) or as it is.
static int store_weight(float *w, int64_t rows, int64_t cols, QuantType quant, const char *name, int layer,
                        const char *src, Weight *out, Err *e) {
    *out = (Weight){WT_F32, rows, cols, w, 1, name};
    if (quant != QUANT_NF4) return 0;
    Nf4Matrix *q = xmalloc(sizeof *q, "NF4 matrix", e);
    Err qe = {{0}};
    if (!q || nf4_quantize(w, rows, cols, name, q, &qe)) {
        free(w);
        free(q);
        out->data = NULL;
        return q ? err_set(e, "%s: layer %d: %s", src, layer, qe.msg) : -1;
    }
    free(w);
    *out = (Weight){WT_NF4, rows, cols, q, 1, name};
    return 0;
}

// head (V,C) fp32 (freed) -> a bf16 copy (NULL on OOM, Err filled).
static uint16_t *to_bf16(float *head, int64_t n, Err *e) {
    uint16_t *h = xmalloc_aligned((size_t)n * sizeof(uint16_t), "lm_head (bf16)", e);
    if (h)
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) h[i] = f32_to_bf16(head[i]);
    free(head);
    return h;
}

typedef struct NameScheme NameScheme;
typedef struct {
    const Gguf *g;
    const char *path;
    const NameScheme *scheme;
} GgufCtx;
static int ggq_weight(const GgufCtx *gc, Role r, int l, LoraTarget t, const ModelConfig *c, int64_t r0,
                      int64_t rows, int64_t cols, int64_t total_rows, Weight *out, Err *e);
static int gguf_is_quantized(const GgufCtx *gc, Role r, int l, LoraTarget t);
static const NameScheme *scheme_of(const ModelConfig *c, int gguf);
static void tensor_name(const NameScheme *s, char *buf, size_t n, Role r, int l, LoraTarget t);

// Fused members of Phi-3: qkv_proj = q;k;v, gate_up_proj = gate;up. Returns the group's first
// target for a member (else t itself) and the member's first row in the fused tensor.
static LoraTarget fused_first(const ModelConfig *c, LoraTarget t, int64_t *r0, int64_t *total) {
    int64_t QD = (int64_t)c->n_heads * c->head_dim, KD = (int64_t)c->n_kv_heads * c->head_dim,
            F = c->hidden_dim;
    *r0 = 0;
    *total = 0;
    if (!c->fused_proj) return t;
    switch (t) {
    case LT_Q: *total = QD + 2 * KD; return LT_Q;
    case LT_K: *r0 = QD; *total = QD + 2 * KD; return LT_Q;
    case LT_V: *r0 = QD + KD; *total = QD + 2 * KD; return LT_Q;
    case LT_GATE: *total = 2 * F; return LT_GATE;
    case LT_UP: *r0 = F; *total = 2 * F; return LT_GATE;
    default: return t;
    }
}

// Fills m's weights through rd (gq: the GGUF file, whose ggml-quantized linear weights are
// kept as they are; NULL for other formats). file_rope says whether q/k rows need
// permuting; norm_add is added to every norm weight (HF Gemma's 1 + w).
static int model_fill(Model *m, ReadFn rd, void *ctx, const GgufCtx *gq, float norm_add, QuantType quant, Err *e) {
    const ModelConfig *c = &m->cfg;
    const char *src = m->source;
    int64_t V = c->vocab_size, C = c->dim;
    int absent = 0;
    m->quant = quant;
    // GGUF embeddings / classifier in ggml blocks, loaded as they are (no --quant): kept in
    // their blocks (rows dequantized when read), not expanded to fp32
    if (gq && quant == QUANT_NONE && gguf_is_quantized(gq, R_EMB, 0, 0)) {
        if (ggq_weight(gq, R_EMB, 0, 0, c, 0, V, C, V, &m->emb, e)) return -1;
        m->emb.name = "tok_emb";
        m->lm_head = m->emb;
        m->lm_head.owns_data = 0;
        m->lm_head.name = "lm_head";
        if (!c->tied_embeddings) {
            if (gguf_is_quantized(gq, R_LM_HEAD, 0, 0)) {
                if (ggq_weight(gq, R_LM_HEAD, 0, 0, c, 0, V, C, V, &m->lm_head, e)) return -1;
            } else {
                float *head = read_new(rd, ctx, R_LM_HEAD, 0, 0, V, C, &absent, e);
                if (!head && !absent) return -1;
                if (head) m->lm_head = (Weight){WT_F32, V, C, head, 1, "lm_head"};
                else m->cfg.tied_embeddings = 1;
            }
            m->lm_head.name = "lm_head";
        }
        goto norms;
    }
    // embeddings; a file may store only the classifier (then the two are one table)
    float *emb = read_new(rd, ctx, R_EMB, 0, 0, V, C, &absent, e);
    float *head = NULL;
    if (!emb && !absent) return -1;
    if (!emb) {
        emb = read_new(rd, ctx, R_LM_HEAD, 0, 0, V, C, &absent, e);
        if (!emb) return read_missing(absent, src, "embedding table (embed_tokens / token_embd)", e);
        m->cfg.tied_embeddings = 1;
    } else if (!c->tied_embeddings) {
        head = read_new(rd, ctx, R_LM_HEAD, 0, 0, V, C, &absent, e);
        if (!head && !absent) {
            free(emb);
            return -1;
        }
        // no classifier, or an exact copy of the embeddings: share one table
        if (!head || !memcmp(head, emb, (size_t)V * C * sizeof(float))) {
            free(head);
            head = NULL;
            m->cfg.tied_embeddings = 1;
        }
    }
    if (quant == QUANT_NF4) {  // QLoRA keeps the embeddings and the classifier in 16 bits
        uint16_t *eb = to_bf16(emb, V * C, e);
        m->emb = (Weight){WT_BF16, V, C, eb, 1, "tok_emb"};
        if (!eb) {
            free(head);
            return -1;
        }
        m->lm_head = (Weight){WT_BF16, V, C, eb, 0, "lm_head"};
        if (head) {
            uint16_t *hb = to_bf16(head, V * C, e);
            m->lm_head = (Weight){WT_BF16, V, C, hb, 1, "lm_head"};
            if (!hb) return -1;
        }
    } else {
        int64_t es[2] = {V, C};
        m->tok_emb = tensor_wrap(emb, 2, es, "tok_emb", e);
        if (!m->tok_emb) {
            free(emb);
            free(head);
            return -1;
        }
        m->emb = (Weight){WT_F32, V, C, emb, 0, "tok_emb"};
        m->lm_head = (Weight){WT_F32, V, C, head ? head : emb, head != NULL, "lm_head"};
    }
norms:
    m->final_norm = wrap_vec(read_new(rd, ctx, R_FINAL_NORM, 0, 0, C, 0, &absent, e), C,
                             "final_norm", e);
    if (!m->final_norm) return read_missing(absent, src, "final norm (model.norm / output_norm)", e);
    for (int64_t i = 0; i < C && norm_add != 0; i++) m->final_norm->data[i] += norm_add;
    for (int l = 0; l < c->n_layers; l++) {
        Layer *L = &m->layers[l];
        L->attn_norm = wrap_vec(read_new(rd, ctx, R_ATTN_NORM, l, 0, C, 0, &absent, e), C,
                                "attn_norm", e);
        if (!L->attn_norm) return read_missing(absent, src, "attention norm", e);
        L->ffn_norm = wrap_vec(read_new(rd, ctx, R_FFN_NORM, l, 0, C, 0, &absent, e), C,
                               "ffn_norm", e);
        if (!L->ffn_norm) return read_missing(absent, src, "MLP norm", e);
        for (int64_t i = 0; i < C && norm_add != 0; i++) {
            L->attn_norm->data[i] += norm_add;
            L->ffn_norm->data[i] += norm_add;
        }
        for (int t = 0; t < LT_COUNT; t++) {
            int64_t rows, cols, r0, total;
            model_weight_dims(c, (LoraTarget)t, &rows, &cols);
            LoraTarget ft = fused_first(c, (LoraTarget)t, &r0, &total);
            Role role = total ? R_FUSED : R_WEIGHT;
            if (c->qkv_bias && t <= LT_V) {
                L->bias[t] = wrap_vec(read_new(rd, ctx, R_BIAS, l, (LoraTarget)t, rows, 0, &absent, e), rows,
                                      lora_target_name((LoraTarget)t), e);
                if (!L->bias[t]) {
                    char bn[160];
                    tensor_name(scheme_of(c, gq != NULL), bn, sizeof bn, R_BIAS, l, (LoraTarget)t);
                    return read_missing(absent, src, bn, e);
                }
            }
            if (gq && gguf_is_quantized(gq, role, l, ft)) {  // ggml blocks: kept, not requantized
                if (ggq_weight(gq, role, l, ft, c, r0, rows, cols, total ? total : rows, &L->w[t], e)) return -1;
                L->w[t].name = lora_target_name((LoraTarget)t);
                continue;
            }
            float *w;
            if (total) {  // a member's rows of the fused tensor (read whole, copied out)
                float *all = read_new(rd, ctx, R_FUSED, l, ft, total, cols, &absent, e);
                w = all ? xmalloc_aligned((size_t)(rows * cols) * sizeof(float), "model tensor", e) : NULL;
                if (w) memcpy(w, all + r0 * cols, (size_t)(rows * cols) * sizeof(float));
                free(all);
                if (all && !w) return -1;
            } else {
                w = read_new(rd, ctx, R_WEIGHT, l, (LoraTarget)t, rows, cols, &absent, e);
            }
            if (!w) {
                if (!absent) return -1;
                return err_set(e, "%s: layer %d: weight %s is missing", src, l,
                               total ? (ft == LT_Q ? "qkv_proj" : "gate_up_proj") : lora_target_name((LoraTarget)t));
            }
            if (c->file_rope == ROPE_ADJACENT && (t == LT_Q || t == LT_K) &&
                permute_adjacent_to_half(w, t == LT_Q ? c->n_heads : c->n_kv_heads, c->head_dim,
                                         cols, e)) {
                free(w);
                return -1;
            }
            if (store_weight(w, rows, cols, quant, lora_target_name((LoraTarget)t), l, src, &L->w[t], e))
                return -1;
        }
    }
    return 0;
}

static void shape_text(char *buf, size_t n, int nd, const int64_t *d) {
    size_t u = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < nd && u < n; i++) u += (size_t)snprintf(buf + u, n - u, i ? ", %lld" : "%lld", (long long)d[i]);
    if (u < n) snprintf(buf + u, n - u, "]");
}

// How a format names the tensors: fixed names, and per layer PREFIX N "." SUFFIX. Fused
// models (Phi-3) name the fused tensor at its first member (q: qkv, gate: gate_up) and NULL
// at the others.
struct NameScheme {
    const char *emb, *head, *final_norm, *layer_prefix, *attn_norm, *ffn_norm;
    const char *w[LT_COUNT];
    const char *bias[LT_COUNT];  // q/k/v biases (Qwen2)
};

static const NameScheme HF_NAMES = {
    "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.layers.",
    "input_layernorm.weight", "post_attention_layernorm.weight",
    {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
     "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
     "mlp.down_proj.weight"},
    {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}};

static const NameScheme HF_FUSED_NAMES = {
    "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.layers.",
    "input_layernorm.weight", "post_attention_layernorm.weight",
    {"self_attn.qkv_proj.weight", NULL, NULL, "self_attn.o_proj.weight", "mlp.gate_up_proj.weight",
     NULL, "mlp.down_proj.weight"},
    {NULL}};

static const NameScheme GGUF_FUSED_NAMES = {
    "token_embd.weight", "output.weight", "output_norm.weight", "blk.", "attn_norm.weight",
    "ffn_norm.weight",
    {"attn_qkv.weight", NULL, NULL, "attn_output.weight", "ffn_up.weight", NULL, "ffn_down.weight"},
    {NULL}};

static const NameScheme GGUF_NAMES = {
    "token_embd.weight", "output.weight", "output_norm.weight", "blk.", "attn_norm.weight",
    "ffn_norm.weight",
    {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight",
     "ffn_up.weight", "ffn_down.weight"},
    {"attn_q.bias", "attn_k.bias", "attn_v.bias"}};

static const NameScheme *scheme_of(const ModelConfig *c, int gguf) {
    if (c->fused_proj) return gguf ? &GGUF_FUSED_NAMES : &HF_FUSED_NAMES;
    return gguf ? &GGUF_NAMES : &HF_NAMES;
}

static void tensor_name(const NameScheme *s, char *buf, size_t n, Role r, int l, LoraTarget t) {
    switch (r) {
    case R_EMB: snprintf(buf, n, "%s", s->emb); break;
    case R_LM_HEAD: snprintf(buf, n, "%s", s->head); break;
    case R_FINAL_NORM: snprintf(buf, n, "%s", s->final_norm); break;
    case R_ATTN_NORM: snprintf(buf, n, "%s%d.%s", s->layer_prefix, l, s->attn_norm); break;
    case R_FFN_NORM: snprintf(buf, n, "%s%d.%s", s->layer_prefix, l, s->ffn_norm); break;
    case R_BIAS: snprintf(buf, n, "%s%d.%s", s->layer_prefix, l, s->bias[t] ? s->bias[t] : "?"); break;
    default: snprintf(buf, n, "%s%d.%s", s->layer_prefix, l, s->w[t] ? s->w[t] : "?"); break;
    }
}

static int cmp_name(const void *a, const void *b) { return strcmp(a, b); }

// Every tensor name in names (n) must be one the model reads, as named by scheme (anything
// else means another architecture, e.g. biases we would silently drop).
static int check_names(const char *const *names, int n, const NameScheme *scheme, const ModelConfig *c,
                       const char *src, Err *e) {
    enum { LEN = 96 };
    size_t count = 3 + (size_t)c->n_layers * (2 + 2 * LT_COUNT), k = 0;
    char(*known)[LEN] = xmalloc(count * LEN, "tensor name list", e);
    if (!known) return -1;
    tensor_name(scheme, known[k++], LEN, R_EMB, 0, 0);
    tensor_name(scheme, known[k++], LEN, R_LM_HEAD, 0, 0);
    tensor_name(scheme, known[k++], LEN, R_FINAL_NORM, 0, 0);
    for (int l = 0; l < c->n_layers; l++) {
        tensor_name(scheme, known[k++], LEN, R_ATTN_NORM, l, 0);
        tensor_name(scheme, known[k++], LEN, R_FFN_NORM, l, 0);
        for (int t = 0; t < LT_COUNT; t++) {
            if (scheme->w[t]) tensor_name(scheme, known[k++], LEN, R_WEIGHT, l, (LoraTarget)t);
            if (c->qkv_bias && scheme->bias[t]) tensor_name(scheme, known[k++], LEN, R_BIAS, l, (LoraTarget)t);
        }
    }
    count = k;
    qsort(known, count, LEN, cmp_name);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        size_t len = strlen(names[i]);
        const char *ignored = ".rotary_emb.inv_freq";  // old HF files keep this buffer
        if (len >= strlen(ignored) && !strcmp(names[i] + len - strlen(ignored), ignored)) continue;
        if (!strcmp(names[i], "rope_freqs.weight")) continue;  // GGUF Llama-3 rope factors (read apart)
        if (len >= LEN || !bsearch(names[i], known, count, LEN, cmp_name))
            rc = err_set(e, "%s: unexpected tensor %s (not part of a %s model with %d layers as "
                            "lora.c reads it)",
                         src, names[i], c->arch, c->n_layers);
    }
    free(known);
    return rc;
}

// ---- HF directories ---------------------------------------------------------------------

typedef struct {
    SafeTensors **files;
    int n;
    const NameScheme *scheme;
} HfFiles;

static const SafeTensors *hf_find(const HfFiles *h, const char *name) {
    for (int i = 0; i < h->n; i++)
        if (st_find(h->files[i], name)) return h->files[i];
    return NULL;
}

static int hf_read(void *ctx, Role r, int layer, LoraTarget t, float *out, int64_t rows,
                   int64_t cols, Err *e) {
    char name[160];
    tensor_name(((const HfFiles *)ctx)->scheme, name, sizeof name, r, layer, t);
    const SafeTensors *st = hf_find(ctx, name);
    if (!st) return 1;
    int64_t shape[2] = {rows, cols};
    if (st_read_f32(st, name, out, cols ? 2 : 1, shape, e)) return -1;
    const StTensor *ti = st_find(st, name);
    release_mapped(ti->data, ti->nbytes);
    return 0;
}

static void hf_close(HfFiles *h) {
    for (int i = 0; i < h->n; i++) st_close(h->files[i]);
    free(h->files);
    h->files = NULL;
    h->n = 0;
}

static int hf_add(HfFiles *h, const char *path, Err *e) {
    SafeTensors **f = realloc(h->files, (size_t)(h->n + 1) * sizeof *f);
    if (!f) return err_set(e, "out of memory opening %s", path);
    h->files = f;
    if (!(h->files[h->n] = st_open(path, e))) return -1;
    h->n++;
    return 0;
}

// model.safetensors, or the shards of model.safetensors.index.json, or the only *.safetensors.
static int hf_open(HfFiles *h, const char *dir, Err *e) {
    char p[1100];
    if (file_exists(path_join(p, sizeof p, dir, "model.safetensors"))) return hf_add(h, p, e);
    if (file_exists(path_join(p, sizeof p, dir, "model.safetensors.index.json"))) {
        json_object *idx = json_read_file(p, e), *map;
        if (!idx) return -1;
        if (!json_object_object_get_ex(idx, "weight_map", &map) ||
            !json_object_is_type(map, json_type_object)) {
            json_object_put(idx);
            return err_set(e, "%s: no \"weight_map\" object", p);
        }
        int rc = 0;
        json_object *seen = json_object_new_object();
        json_object_object_foreach(map, name, file) {
            if (rc) break;
            if (!json_object_is_type(file, json_type_string) || strchr(json_object_get_string(file), '/')) {
                rc = err_set(e, "%s: weight_map entry %s is not a file name", p, name);
                break;
            }
            const char *fn = json_object_get_string(file);
            if (json_object_object_get_ex(seen, fn, NULL)) continue;
            json_object_object_add(seen, fn, NULL);
            char sp[1100];
            rc = hf_add(h, path_join(sp, sizeof sp, dir, fn), e);
        }
        json_object_put(seen);
        json_object_put(idx);
        return rc;
    }
    DIR *d = opendir(dir);
    if (!d) return err_set(e, "%s: cannot open directory", dir);
    int found = 0;
    char only[256] = "";
    for (struct dirent *de; (de = readdir(d));) {
        size_t n = strlen(de->d_name);
        if (n > 12 && !strcmp(de->d_name + n - 12, ".safetensors") &&
            strncmp(de->d_name, "adapter_", 8) != 0) {
            found++;
            snprintf(only, sizeof only, "%s", de->d_name);
        }
    }
    closedir(d);
    if (found == 1) return hf_add(h, path_join(p, sizeof p, dir, only), e);
    if (found > 1)
        return err_set(e, "%s: several .safetensors files and no model.safetensors.index.json", dir);
    if (file_exists(path_join(p, sizeof p, dir, "pytorch_model.bin")))
        return err_set(e, "%s: only pytorch_model.bin found; convert the weights to safetensors",
                       dir);
    return err_set(e, "%s: no model.safetensors found", dir);
}

// int member: required (error when absent) or defaulted.
static int cfg_int(json_object *j, const char *key, const char *file, int required, int def,
                   int *out, Err *e) {
    int64_t v;
    int rc = json_opt_int(j, key, file, &v, e);
    if (rc < 0) return -1;
    if (rc == 0) {
        if (required) return err_set(e, "%s: missing \"%s\"", file, key);
        *out = def;
        return 0;
    }
    if (v < INT32_MIN || v > INT32_MAX) return err_set(e, "%s: \"%s\" out of range", file, key);
    *out = (int)v;
    return 0;
}

// bos/eos: an integer, a list of integers (first one used) or null/absent (-1).
static int cfg_token(json_object *j, const char *key, const char *file, int *out, Err *e) {
    json_object *v;
    *out = -1;
    if (!json_object_object_get_ex(j, key, &v) || json_object_is_type(v, json_type_null)) return 0;
    if (json_object_is_type(v, json_type_array) && json_object_array_length(v) > 0)
        v = json_object_array_get_idx(v, 0);
    if (!json_object_is_type(v, json_type_int))
        return err_set(e, "%s: \"%s\" must be an integer or a list of integers", file, key);
    *out = (int)json_object_get_int64(v);
    return 0;
}

static int hf_config(const char *dir, ModelConfig *c, Err *e) {
    char file[1100];
    path_join(file, sizeof file, dir, "config.json");
    if (!file_exists(file))
        return err_set(e, "%s: no config.json (a HF model directory holds config.json and "
                          "model.safetensors)",
                       dir);
    json_object *j = json_read_file(file, e);
    if (!j) return -1;
    memset(c, 0, sizeof *c);
    snprintf(c->arch, sizeof c->arch, "llama");
    int rc = json_object_is_type(j, json_type_object) ? 0 : err_set(e, "%s: not a JSON object", file);
    if (!rc) rc = arch_config_hf(j, file, c, e);
    if (!rc) rc = cfg_int(j, "hidden_size", file, 1, 0, &c->dim, e);
    if (!rc) rc = cfg_int(j, "intermediate_size", file, 1, 0, &c->hidden_dim, e);
    if (!rc) rc = cfg_int(j, "num_hidden_layers", file, 1, 0, &c->n_layers, e);
    if (!rc) rc = cfg_int(j, "num_attention_heads", file, 1, 0, &c->n_heads, e);
    if (!rc) rc = cfg_int(j, "num_key_value_heads", file, 0, c->n_heads, &c->n_kv_heads, e);
    if (!rc) rc = cfg_int(j, "vocab_size", file, 1, 0, &c->vocab_size, e);
    if (!rc) rc = cfg_int(j, "max_position_embeddings", file, 0, 2048, &c->max_seq_len, e);
    if (!rc) rc = cfg_int(j, "head_dim", file, 0, c->n_heads > 0 ? c->dim / c->n_heads : 0, &c->head_dim, e);
    double eps = 1e-6, theta = 10000.0;  // LlamaConfig defaults
    if (!rc && json_opt_num(j, "rms_norm_eps", file, &eps, e) < 0) rc = -1;
    if (!rc && json_opt_num(j, "rope_theta", file, &theta, e) < 0) rc = -1;
    c->norm_eps = (float)eps;
    c->rope_theta = (float)theta;
    if (!rc && json_opt_bool(j, "tie_word_embeddings", file, &c->tied_embeddings, e) < 0) rc = -1;
    if (!rc) rc = cfg_token(j, "bos_token_id", file, &c->bos_id, e);
    if (!rc) rc = cfg_token(j, "eos_token_id", file, &c->eos_id, e);
    c->file_rope = ROPE_HALF;
    arch_finish(c);
    json_object_put(j);
    return rc;
}

static Model *load_hf(const char *dir, QuantType quant, Err *e) {
    ModelConfig c;
    if (hf_config(dir, &c, e)) return NULL;
    HfFiles h = {0};
    h.scheme = scheme_of(&c, 0);
    Model *m = NULL;
    const char **names = NULL;
    int n = 0, rc = hf_open(&h, dir, e);
    for (int f = 0; f < h.n; f++) n += st_count(h.files[f]);
    if (!rc && !(names = xmalloc((size_t)n * sizeof *names, "tensor names", e))) rc = -1;
    for (int f = 0, k = 0; !rc && f < h.n; f++)
        for (int i = 0; i < st_count(h.files[f]); i++) names[k++] = st_at(h.files[f], i)->name;
    if (rc || check_names(names, n, h.scheme, &c, dir, e) || !(m = model_alloc(&c, dir, e)) ||
        model_fill(m, hf_read, &h, NULL, c.norm_offset, quant, e)) {
        model_free(m);
        m = NULL;
    }
    free(names);
    hf_close(&h);
    return m;
}

// ---- GGUF -----------------------------------------------------------------------------------

static int gguf_read(void *ctx, Role r, int layer, LoraTarget t, float *out, int64_t rows,
                     int64_t cols, Err *e) {
    const GgufCtx *gc = ctx;
    char name[160];
    tensor_name(gc->scheme, name, sizeof name, r, layer, t);
    const GgufTensor *gt = gguf_find_tensor(gc->g, name);
    if (!gt) return 1;
    // ne is fastest-first: a row-major (rows, cols) matrix has ne = [cols, rows]
    int64_t want[2] = {cols ? cols : rows, rows};
    int nd = cols ? 2 : 1;
    if (gt->n_dims != nd || gt->ne[0] != want[0] || (nd == 2 && gt->ne[1] != want[1])) {
        char a[96], b[96];
        shape_text(a, sizeof a, gt->n_dims, gt->ne);
        shape_text(b, sizeof b, nd, want);
        return err_set(e, "%s: tensor %s has ne %s, expected ne %s from the model's metadata",
                       gc->path, name, a, b);
    }
    if (ggq_supported((int)gt->type)) {  // e.g. a Q8_0 token_embd / Q6_K output: to fp32
        GgqMatrix q;
        if (ggq_init(&q, (int)gt->type, nd == 2 ? rows : 1, nd == 2 ? cols : rows, gt->data, gt->nbytes, name, e) ||
            ggq_check_scales(&q, e))
            return err_set(e, "%s: %s", gc->path, e->msg);
        ggq_dequant_rows(&q, 0, q.rows, out);
    } else if (gguf_read_f32(gc->g, name, out, gt->n, e)) {
        return -1;
    }
    release_mapped(gt->data, gt->nbytes);
    return 0;
}

static int gguf_is_quantized(const GgufCtx *gc, Role r, int l, LoraTarget t) {
    char name[160];
    tensor_name(gc->scheme, name, sizeof name, r, l, t);
    const GgufTensor *gt = gguf_find_tensor(gc->g, name);
    return gt && ggq_supported((int)gt->type);
}

// Rows [r0, r0 + rows) of the ggml-quantized linear weight (total_rows, cols) named by (r, l, t)
// -> *out as WT_GGQ, owning a copy of its blocks (one allocation: the GgqMatrix, then the
// blocks). q/k rows of an adjacent-pairs file are permuted to rotate-half order, whole rows
// of blocks at a time.
static int ggq_weight(const GgufCtx *gc, Role r, int l, LoraTarget t, const ModelConfig *c, int64_t r0,
                      int64_t rows, int64_t cols, int64_t total_rows, Weight *out, Err *e) {
    char name[160];
    tensor_name(gc->scheme, name, sizeof name, r, l, t);
    const GgufTensor *gt = gguf_find_tensor(gc->g, name);
    if (gt->n_dims != 2 || gt->ne[0] != cols || gt->ne[1] != total_rows) {
        char a[96], b[96];
        int64_t want[2] = {cols, total_rows};
        shape_text(a, sizeof a, gt->n_dims, gt->ne);
        shape_text(b, sizeof b, 2, want);
        return err_set(e, "%s: tensor %s has ne %s, expected ne %s from the model's metadata", gc->path,
                       name, a, b);
    }
    if (ggq_check((int)gt->type, total_rows, cols, gt->nbytes, name, e)) return err_set(e, "%s: %s", gc->path, e->msg);
    const size_t rb = ggq_row_bytes((int)gt->type, cols), head = (sizeof(GgqMatrix) + 63) & ~(size_t)63;
    uint8_t *mem = xmalloc(head + rb * (size_t)rows, "quantized weight", e);
    if (!mem) return -1;
    const uint8_t *src = (const uint8_t *)gt->data + (size_t)r0 * rb;
    uint8_t *dst = mem + head;
    int heads = c->file_rope == ROPE_ADJACENT && (t == LT_Q || t == LT_K) && r == R_WEIGHT
                    ? (t == LT_Q ? c->n_heads : c->n_kv_heads) : 0;
    const int D = c->head_dim;
    if (!heads) memcpy(dst, src, rb * (size_t)rows);
    for (int h = 0; h < heads; h++)  // file row 2i+j of a head -> row j*D/2+i
        for (int i = 0; i < D / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(dst + ((size_t)h * D + (size_t)j * D / 2 + i) * rb, src + ((size_t)h * D + 2 * i + j) * rb, rb);
    GgqMatrix *q = (GgqMatrix *)mem;
    const char *label = r == R_EMB ? "tok_emb" : r == R_LM_HEAD ? "lm_head" : lora_target_name(t);
    if (ggq_init(q, (int)gt->type, rows, cols, dst, rb * (size_t)rows, label, e) || ggq_check_scales(q, e)) {
        free(mem);
        return err_set(e, "%s: layer %d: %s", gc->path, l, e->msg);
    }
    *out = (Weight){WT_GGQ, rows, cols, q, 1, label};
    release_mapped(gt->data, gt->nbytes);
    return 0;
}

static int gguf_u32_req(const Gguf *g, const char *key, const char *path, int *out, Err *e) {
    uint32_t v;
    if (gguf_get_u32(g, key, &v) || v > INT32_MAX)
        return err_set(e, "%s: missing or invalid metadata %s", path, key);
    *out = (int)v;
    return 0;
}

// "<arch>.<key>" into buf (GGUF metadata keys are prefixed by general.architecture).
static const char *akey(char *buf, size_t n, const char *arch, const char *key) {
    snprintf(buf, n, "%s.%s", arch, key);
    return buf;
}

static int gguf_config(const Gguf *g, const char *path, ModelConfig *c, Err *e) {
    memset(c, 0, sizeof *c);
    const char *ft = gguf_get_str(g, "general.type");
    if (ft && strcmp(ft, "model"))
        return err_set(e, "%s: general.type is \"%s\", not a model", path, ft);
    if (arch_config_gguf(g, path, c, e)) return -1;
    const char *a = gguf_get_str(g, "general.architecture");
    char k[128];
    uint32_t u;
    if (gguf_u32_req(g, akey(k, sizeof k, a, "embedding_length"), path, &c->dim, e) ||
        gguf_u32_req(g, akey(k, sizeof k, a, "feed_forward_length"), path, &c->hidden_dim, e) ||
        gguf_u32_req(g, akey(k, sizeof k, a, "block_count"), path, &c->n_layers, e) ||
        gguf_u32_req(g, akey(k, sizeof k, a, "attention.head_count"), path, &c->n_heads, e))
        return -1;
    c->n_kv_heads = gguf_get_u32(g, akey(k, sizeof k, a, "attention.head_count_kv"), &u) ? c->n_heads : (int)u;
    c->head_dim = gguf_get_u32(g, akey(k, sizeof k, a, "attention.key_length"), &u)
                      ? (c->n_heads ? c->dim / c->n_heads : 0) : (int)u;
    if (!gguf_get_u32(g, akey(k, sizeof k, a, "rope.dimension_count"), &u) && (int)u != c->head_dim)
        return err_set(e, "%s: %s.rope.dimension_count %u differs from the head size %d "
                          "(partial rotary embeddings are not supported)",
                       path, a, u, c->head_dim);
    if (!gguf_get_u32(g, akey(k, sizeof k, a, "expert_count"), &u) && u > 0)
        return err_set(e, "%s: mixture-of-experts models are not supported", path);
    const char *scaling = gguf_get_str(g, akey(k, sizeof k, a, "rope.scaling.type"));
    if (scaling && strcmp(scaling, "none"))
        return err_set(e, "%s: %s.rope.scaling.type \"%s\" is not supported yet", path, a, scaling);
    c->max_seq_len = gguf_get_u32(g, akey(k, sizeof k, a, "context_length"), &u) ? 2048 : (int)u;
    if (gguf_get_f32(g, akey(k, sizeof k, a, "attention.layer_norm_rms_epsilon"), &c->norm_eps)) c->norm_eps = 1e-5f;
    if (gguf_get_f32(g, akey(k, sizeof k, a, "rope.freq_base"), &c->rope_theta)) c->rope_theta = 10000.0f;
    c->qkv_bias = c->qkv_bias && gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    arch_finish(c);
    const GgufTensor *emb = gguf_find_tensor(g, "token_embd.weight");
    if (!gguf_get_u32(g, akey(k, sizeof k, a, "vocab_size"), &u))
        c->vocab_size = (int)u;
    else if (emb && emb->n_dims == 2)
        c->vocab_size = (int)emb->ne[1];
    else
        return err_set(e, "%s: cannot tell the vocabulary size (no llama.vocab_size, no "
                          "token_embd.weight)",
                       path);
    c->bos_id = gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u) || u > INT32_MAX ? -1 : (int)u;
    c->eos_id = gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u) || u > INT32_MAX ? -1 : (int)u;
    c->tied_embeddings = gguf_find_tensor(g, "output.weight") == NULL;
    return 0;
}

// GGUF Llama-3 files carry the rope scaling as rope_freqs.weight (head_dim/2 factors):
// frequency i is divided by factor i.
static int gguf_rope_freqs(const Gguf *g, const char *path, Model *m, Err *e) {
    const GgufTensor *rf = gguf_find_tensor(g, "rope_freqs.weight");
    if (!rf) return 0;
    const int n = m->cfg.head_dim / 2;
    float *f = xmalloc((size_t)n * sizeof(float), "rope_freqs", e);
    if (!f) return -1;
    if (rf->n != n || gguf_read_f32(g, "rope_freqs.weight", f, n, e)) {
        free(f);
        return err_set(e, "%s: rope_freqs.weight must hold %d F32 values", path, n);
    }
    for (int i = 0; i < n; i++) m->inv_freq[i] /= f[i];
    free(f);
    return 0;
}

static Model *load_gguf(const char *path, QuantType quant, Err *e) {
    Gguf *g = gguf_open(path, e);
    if (!g) return NULL;
    ModelConfig c;
    Model *m = NULL;
    GgufCtx ctx = {g, path, &GGUF_NAMES};
    int n = gguf_tensor_count(g);
    const char **names = xmalloc((size_t)n * sizeof *names, "tensor names", e);
    for (int i = 0; names && i < n; i++) names[i] = gguf_tensor_at(g, i)->name;
    int rc = !names || gguf_config(g, path, &c, e);
    if (!rc) ctx.scheme = scheme_of(&c, 1);
    if (rc || check_names(names, n, ctx.scheme, &c, path, e) || !(m = model_alloc(&c, path, e)) ||
        gguf_rope_freqs(g, path, m, e) || model_fill(m, gguf_read, &ctx, &ctx, 0.0f, quant, e)) {
        model_free(m);
        m = NULL;
    }
    free(names);
    gguf_close(g);
    return m;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

// ---- llama2.c .bin ------------------------------------------------------------------------

typedef struct {
    const float *base;      // first float after the header (unaligned access via memcpy)
    const ModelConfig *c;
    int shared;             // classifier shares the embedding table
    int64_t seq_len;
} BinCtx;

// Offsets (in floats) of llama2.c's arrays: token_embedding_table, rms_att_weight, wq, wk,
// wv, wo, rms_ffn_weight, w1, w2, w3, rms_final_weight, freq_cis_real, freq_cis_imag, wcls.
static int64_t bin_offset(const BinCtx *b, Role r, int l, LoraTarget t, int64_t *total) {
    const ModelConfig *c = b->c;
    int64_t V = c->vocab_size, C = c->dim, L = c->n_layers, F = c->hidden_dim, D = c->head_dim;
    int64_t QD = (int64_t)c->n_heads * D, KD = (int64_t)c->n_kv_heads * D;
    int64_t o_emb = 0, o_att = o_emb + V * C, o_wq = o_att + L * C, o_wk = o_wq + L * QD * C,
            o_wv = o_wk + L * KD * C, o_wo = o_wv + L * KD * C, o_ffn = o_wo + L * C * QD,
            o_w1 = o_ffn + L * C, o_w2 = o_w1 + L * F * C, o_w3 = o_w2 + L * C * F,
            o_fin = o_w3 + L * F * C, o_cls = o_fin + C + b->seq_len * D;  // 2 × seq_len·D/2 freqs
    if (total) *total = o_cls + (b->shared ? 0 : V * C);
    switch (r) {
    case R_EMB: return o_emb;
    case R_LM_HEAD: return b->shared ? -1 : o_cls;
    case R_FINAL_NORM: return o_fin;
    case R_ATTN_NORM: return o_att + l * C;
    case R_FFN_NORM: return o_ffn + l * C;
    default: break;
    }
    switch (t) {
    case LT_Q: return o_wq + l * QD * C;
    case LT_K: return o_wk + l * KD * C;
    case LT_V: return o_wv + l * KD * C;
    case LT_O: return o_wo + l * C * QD;
    case LT_GATE: return o_w1 + l * F * C;
    case LT_UP: return o_w3 + l * F * C;
    default: return o_w2 + l * C * F;
    }
}

static int bin_read(void *ctx, Role r, int layer, LoraTarget t, float *out, int64_t rows,
                    int64_t cols, Err *e) {
    (void)e;
    const BinCtx *b = ctx;
    int64_t off = bin_offset(b, r, layer, t, NULL);
    if (off < 0) return 1;
    size_t bytes = (size_t)(rows * (cols ? cols : 1)) * sizeof(float);
    memcpy(out, b->base + off, bytes);
    release_mapped(b->base + off, bytes);
    return 0;
}

static Model *load_bin(const char *path, QuantType quant, Err *e) {
    FileMap fm;
    if (filemap_open(&fm, path, e)) return NULL;
    Model *m = NULL;
    int32_t h[7];
    if (fm.size < sizeof h) {
        err_set(e, "%s: too short for a llama2.c checkpoint", path);
        goto done;
    }
    memcpy(h, fm.data, sizeof h);
    if (!memcmp(fm.data, "ak42", 4) || !memcmp(fm.data, "24ka", 4)) {
        err_set(e, "%s: llama2.c export format version 1/2 is not supported (only the legacy "
                   "version-0 .bin)",
                path);
        goto done;
    }
    ModelConfig c;
    model_config_default(&c, h[0], h[1], h[2], h[3], h[4], h[5] < 0 ? -h[5] : h[5], h[6]);
    c.tied_embeddings = h[5] > 0;
    c.file_rope = ROPE_ADJACENT;
    if (config_check(&c, path, e)) {
        if (!ends_with(path, ".bin"))
            err_set(e, "%s: not a model: expected a HF directory, a .gguf file or a llama2.c .bin "
                       "checkpoint",
                    path);
        goto done;
    }
    if (c.dim % c.n_heads) {
        err_set(e, "%s: dim %d is not a multiple of %d heads", path, c.dim, c.n_heads);
        goto done;
    }
    BinCtx b = {(const float *)(fm.data + sizeof h), &c, h[5] > 0, h[6]};
    int64_t total;
    bin_offset(&b, R_EMB, 0, 0, &total);
    if ((uint64_t)total * 4 + sizeof h != fm.size) {
        err_set(e, "%s: file is %zu bytes but a llama2.c checkpoint with this header (dim %d, "
                   "hidden %d, layers %d, heads %d, kv heads %d, vocab %d, seq_len %d) needs %lld",
                path, fm.size, h[0], h[1], h[2], h[3], h[4], h[5], h[6],
                (long long)(total * 4 + (int64_t)sizeof h));
        goto done;
    }
    if (!(m = model_alloc(&c, path, e))) goto done;
    if (model_fill(m, bin_read, &b, NULL, 0.0f, quant, e)) {
        model_free(m);
        m = NULL;
    }
done:
    filemap_close(&fm);
    return m;
}

// ---- dispatch -------------------------------------------------------------------------------

Model *model_load(const char *path, Err *e) {
    ModelLoadOptions o;
    model_load_options_default(&o);
    return model_load_ex(path, &o, e);
}

Model *model_load_quant(const char *path, const char *quant, Err *e) {
    ModelLoadOptions o;
    model_load_options_default(&o);
    if (quant && quant_parse(quant, &o.quant, e)) return NULL;
    return model_load_ex(path, &o, e);
}

static Model *load_source(const char *path, QuantType q, Err *e);

Model *model_load_ex(const char *path, const ModelLoadOptions *o, Err *e) {
    QuantType q = o ? o->quant : QUANT_NONE;
    const char *cache = o && q == QUANT_NF4 && o->quant_cache && *o->quant_cache ? o->quant_cache : NULL;
    if (cache) {
        Model *m = model_cache_read(cache, path, NULL);
        if (m) return m;
    }
    Model *m = load_source(path, q, e);
    if (m && cache && model_cache_write(m, cache, path, e)) {
        char msg[ERR_LEN];
        snprintf(msg, sizeof msg, "%s", e->msg);
        err_set(e, "--quant-cache: %s", msg);
        model_free(m);
        return NULL;
    }
    return m;
}

// One of the three formats, by what path is.
static Model *load_source(const char *path, QuantType q, Err *e) {
    if (is_directory(path)) return load_hf(path, q, e);
    if (!file_exists(path)) {
        err_set(e, "%s: no such file or directory", path);
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    if (f) {
        if (fread(magic, 1, 4, f) != 4) memset(magic, 0, 4);
        fclose(f);
    }
    if (!memcmp(magic, "GGUF", 4)) return load_gguf(path, q, e);
    if (ends_with(path, ".gguf")) {
        err_set(e, "%s: not a GGUF file (bad magic)", path);
        return NULL;
    }
    if (ends_with(path, ".safetensors") || ends_with(path, "config.json")) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
        return load_hf(dir, q, e);
    }
    return load_bin(path, q, e);
}

// ---- writing ------------------------------------------------------------------------------

static json_object *config_json(const ModelConfig *c) {
    json_object *j = json_object_new_object();
    arch_config_to_hf(c, j);
    json_object_object_add(j, "hidden_size", json_object_new_int(c->dim));
    json_object_object_add(j, "intermediate_size", json_object_new_int(c->hidden_dim));
    json_object_object_add(j, "num_hidden_layers", json_object_new_int(c->n_layers));
    json_object_object_add(j, "num_attention_heads", json_object_new_int(c->n_heads));
    json_object_object_add(j, "num_key_value_heads", json_object_new_int(c->n_kv_heads));
    json_object_object_add(j, "head_dim", json_object_new_int(c->head_dim));
    json_object_object_add(j, "vocab_size", json_object_new_int(c->vocab_size));
    json_object_object_add(j, "max_position_embeddings", json_object_new_int(c->max_seq_len));
    json_object_object_add(j, "rms_norm_eps", json_new_float(c->norm_eps));
    json_object_object_add(j, "rope_theta", json_new_float(c->rope_theta));
    json_object_object_add(j, "tie_word_embeddings", json_object_new_boolean(c->tied_embeddings));
    json_object_object_add(j, "attention_bias", json_object_new_boolean(0));
    json_object_object_add(j, "mlp_bias", json_object_new_boolean(0));
    if (c->bos_id >= 0) json_object_object_add(j, "bos_token_id", json_object_new_int(c->bos_id));
    if (c->eos_id >= 0) json_object_object_add(j, "eos_token_id", json_object_new_int(c->eos_id));
    json_object_object_add(j, "torch_dtype", json_object_new_string("float32"));
    return j;
}

// Weight w as fp32 (rows, cols) into a new buffer (any storage type).
static float *weight_f32(const Weight *w, Err *e) {
    float *buf = xmalloc((size_t)(w->rows * w->cols) * sizeof(float), "weight copy", e);
    if (!buf) return NULL;
    for (int64_t r = 0; r < w->rows; r++) weight_row_f32(w, r, buf + r * w->cols);
    return buf;
}

static int add_weight(StWriter *sw, const char *name, const Weight *w, Err *e) {
    float *buf = weight_f32(w, e);
    if (!buf) return -1;
    int64_t shape[2] = {w->rows, w->cols};
    int rc = stw_add_f32(sw, name, ST_F32, 2, shape, buf, e);
    free(buf);
    return rc;
}

static int add_tensor(StWriter *sw, const char *name, const Tensor *t, Err *e) {
    return stw_add_f32(sw, name, ST_F32, t->ndim, t->shape, t->data, e);
}

// A norm as HF stores it: the in-memory multiplier minus the architecture's offset (Gemma).
static int add_norm(StWriter *sw, const char *name, const Tensor *t, float offset, Err *e) {
    if (offset == 0) return add_tensor(sw, name, t, e);
    float *w = xmalloc((size_t)t->n * sizeof(float), "norm copy", e);
    if (!w) return -1;
    for (int64_t i = 0; i < t->n; i++) w[i] = t->data[i] - offset;
    int rc = stw_add_f32(sw, name, ST_F32, t->ndim, t->shape, w, e);
    free(w);
    return rc;
}

// Weights ws[0..n) stacked by rows as one tensor (Phi-3's qkv_proj, gate_up_proj).
static int add_fused(StWriter *sw, const char *name, const Weight *const *ws, int n, Err *e) {
    int64_t rows = 0, cols = ws[0]->cols;
    for (int i = 0; i < n; i++) rows += ws[i]->rows;
    float *buf = xmalloc((size_t)(rows * cols) * sizeof(float), "weight copy", e);
    if (!buf) return -1;
    for (int i = 0, r = 0; i < n; i++)
        for (int64_t k = 0; k < ws[i]->rows; k++, r++) weight_row_f32(ws[i], k, buf + (size_t)r * cols);
    int64_t shape[2] = {rows, cols};
    int rc = stw_add_f32(sw, name, ST_F32, 2, shape, buf, e);
    free(buf);
    return rc;
}

int model_save_hf(const Model *m, const char *dir, Err *e) {
    const ModelConfig *c = &m->cfg;
    if (make_dirs(dir, e)) return -1;
    StWriter *sw = stw_new(e);
    if (!sw) return -1;
    char name[160], path[1100];
    int rc = stw_add_metadata(sw, "format", "pt", e);
    if (!rc) rc = add_weight(sw, "model.embed_tokens.weight", &m->emb, e);
    for (int l = 0; l < c->n_layers && !rc; l++) {
        const Layer *L = &m->layers[l];
        const NameScheme *s = scheme_of(c, 0);
        tensor_name(s, name, sizeof name, R_ATTN_NORM, l, 0);
        rc = add_norm(sw, name, L->attn_norm, c->norm_offset, e);
        for (int t = 0; t < LT_COUNT && !rc; t++) {
            if (!s->w[t]) continue;  // a fused member, written with its group
            tensor_name(s, name, sizeof name, R_WEIGHT, l, (LoraTarget)t);
            if (c->fused_proj && (t == LT_Q || t == LT_GATE)) {
                const Weight *ws[3] = {&L->w[t], &L->w[t + 1], t == LT_Q ? &L->w[LT_V] : NULL};
                rc = add_fused(sw, name, ws, t == LT_Q ? 3 : 2, e);
            } else {
                rc = add_weight(sw, name, &L->w[t], e);
            }
            if (!rc && L->bias[t]) {
                tensor_name(s, name, sizeof name, R_BIAS, l, (LoraTarget)t);
                rc = add_tensor(sw, name, L->bias[t], e);
            }
        }
        tensor_name(s, name, sizeof name, R_FFN_NORM, l, 0);
        if (!rc) rc = add_norm(sw, name, L->ffn_norm, c->norm_offset, e);
    }
    if (!rc) rc = add_norm(sw, "model.norm.weight", m->final_norm, c->norm_offset, e);
    if (!rc && !c->tied_embeddings) rc = add_weight(sw, "lm_head.weight", &m->lm_head, e);
    if (!rc) rc = stw_save(sw, path_join(path, sizeof path, dir, "model.safetensors"), e);
    stw_free(sw);
    if (rc) return -1;
    json_object *j = config_json(c);
    rc = json_write_file(path_join(path, sizeof path, dir, "config.json"), j, e);
    json_object_put(j);
    return rc;
}

int model_write_random(const ModelConfig *cfg, uint64_t seed, float std, const char *dir, Err *e) {
    Model *m = model_alloc(cfg, dir, e);
    if (!m) return -1;
    const ModelConfig *c = &m->cfg;
    Rng rng;
    rng_seed(&rng, seed);
    int64_t V = c->vocab_size, C = c->dim;
    int rc = 0;
    // draws in file order: embeddings, per layer q k v o gate up down, then the classifier
    float *emb = xmalloc_aligned((size_t)(V * C) * sizeof(float), "embedding table", e);
    int64_t es[2] = {V, C};
    if (!emb || !(m->tok_emb = tensor_wrap(emb, 2, es, "tok_emb", e))) {
        free(emb);
        model_free(m);
        return -1;
    }
    m->emb = (Weight){WT_F32, V, C, emb, 0, "tok_emb"};
    for (int64_t i = 0; i < V * C; i++) emb[i] = std * rng_normal(&rng);
    float *ones = xmalloc((size_t)C * sizeof(float), "norm", e);
    if (ones)
        for (int64_t i = 0; i < C; i++) ones[i] = 1.0f;
    if (!(m->final_norm = wrap_vec(ones, C, "final_norm", e))) rc = -1;
    for (int l = 0; l < c->n_layers && !rc; l++) {
        Layer *L = &m->layers[l];
        for (int k = 0; k < 2 && !rc; k++) {
            float *w = xmalloc((size_t)C * sizeof(float), "norm", e);
            if (w)
                for (int64_t i = 0; i < C; i++) w[i] = 1.0f;
            Tensor *t = wrap_vec(w, C, k ? "ffn_norm" : "attn_norm", e);
            if (!t) rc = -1;
            *(k ? &L->ffn_norm : &L->attn_norm) = t;
        }
        for (int t = 0; t < LT_COUNT && !rc; t++) {
            int64_t rows, cols;
            model_weight_dims(c, (LoraTarget)t, &rows, &cols);
            float *w = xmalloc_aligned((size_t)(rows * cols) * sizeof(float), "weight", e);
            if (!w) {
                rc = -1;
                break;
            }
            for (int64_t i = 0; i < rows * cols; i++) w[i] = std * rng_normal(&rng);
            L->w[t] = (Weight){WT_F32, rows, cols, w, 1, lora_target_name((LoraTarget)t)};
        }
    }
    float *head = NULL;
    if (!rc && !c->tied_embeddings) {
        head = xmalloc_aligned((size_t)(V * C) * sizeof(float), "classifier", e);
        if (!head) rc = -1;
        else
            for (int64_t i = 0; i < V * C; i++) head[i] = std * rng_normal(&rng);
    }
    m->lm_head = (Weight){WT_F32, V, C, head ? head : emb, head != NULL, "lm_head"};
    if (!rc) rc = model_save_hf(m, dir, e);
    model_free(m);
    return rc;
}
