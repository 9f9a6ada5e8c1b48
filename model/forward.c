// The Llama forward pass — one function for training (recorded on the tape) and for
// generation (recording off, keys/values appended to a KV cache).
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

KVCache *kv_new(const ModelConfig *cfg, int max_seq, Err *e) {
    KVCache *kv = xcalloc(1, sizeof *kv, "KV cache", e);
    if (!kv) return NULL;
    kv->max_seq = max_seq;
    kv->n_layers = cfg->n_layers;
    kv->kv_dim = cfg->n_kv_heads * cfg->head_dim;
    size_t n = (size_t)cfg->n_layers * max_seq * kv->kv_dim;
    kv->k = xmalloc_aligned(n * sizeof(float), "KV cache keys", e);
    kv->v = xmalloc_aligned(n * sizeof(float), "KV cache values", e);
    if (!kv->k || !kv->v) {
        kv_free(kv);
        return NULL;
    }
    return kv;
}

void kv_free(KVCache *kv) {
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    free(kv);
}

void kv_reset(KVCache *kv) { kv->len = 0; }

// How proj_ex runs the linear: op_lora_linear, op_lora_linear_nobase (an output nobody reads:
// the frozen x wᵀ is skipped), or op_lora_linear_cache through a checkpointed block's slot.
typedef enum { PROJ_FULL, PROJ_NOBASE, PROJ_CACHE } ProjMode;

// x (N,in) -> (N,out) through base weight w[target] of layer l, plus its LoRA when present.
// PROJ_CACHE: slot holds out (N,out) then h (N,r); kept in the forward, reused in the re-run.
static Tensor *proj_ex(Tape *t, const Model *m, const LoraAdapter *lora, int l, LoraTarget target, Tensor *x,
                       ProjMode mode, float *slot) {
    const Weight *w = &m->layers[l].w[target];
    Tensor *bias = m->layers[l].bias[target], *A = NULL, *B = NULL;
    if (lora) {
        A = lora->A[l * LT_COUNT + target];
        B = lora->B[l * LT_COUNT + target];
    }
    float scale = A ? lora->scale : 0.0f, p = A ? lora->dropout : 0.0f;
    Tensor *y;
    if (mode == PROJ_CACHE)
        y = op_lora_linear_cache(t, x, w, A, B, scale, p, slot, slot + (x->n / w->cols) * w->rows,
                                 tape_recomputing(t));
    else if (mode == PROJ_NOBASE)
        y = op_lora_linear_nobase(t, x, w, A, B, scale, p);
    else
        y = op_lora_linear(t, x, w, A, B, scale, p);
    return bias ? op_add_bias(t, y, bias) : y;
}

// k or v (T, kv_dim) of layer l appended to the cache at positions kv->len..; returns a
// view of the cache's first kv->len + T positions, shaped (1, Tk, kv_dim).
static Tensor *cache_append(Tape *t, KVCache *kv, float *store, int l, const Tensor *x, int T) {
    float *base = store + (size_t)l * kv->max_seq * kv->kv_dim;
    memcpy(base + (size_t)kv->len * kv->kv_dim, x->data, (size_t)T * kv->kv_dim * sizeof(float));
    int64_t shape[3] = {1, kv->len + T, kv->kv_dim};
    return tape_view(t, base, 3, shape);
}

// One transformer block (attention + MLP, both residual) of layer l, run by op_checkpoint or
// directly: x (B*T, C) -> (B*T, C).
typedef struct {
    const Model *m;
    const LoraAdapter *lora;
    KVCache *kv;
    int l, B, T;
    float *cache;  // NULL, or this checkpointed block's kept matmul outputs (block_cache_floats)
} Block;

// The projections whose outputs a checkpointed block may keep for its backward re-run (the
// down projection's output is not read there at all: proj_ex skips its matmul).
static const LoraTarget CACHED[] = {LT_Q, LT_K, LT_V, LT_O, LT_GATE, LT_UP};
#define N_CACHED ((int)(sizeof CACHED / sizeof CACHED[0]))

// Floats of target CACHED[i]'s slot in layer l's cache for N tokens: out (N,OC), then its LoRA
// h (N,r) when it has one.
static int64_t cache_slot_floats(const Model *m, const LoraAdapter *lora, int l, int i, int64_t N) {
    LoraTarget tg = CACHED[i];
    const Tensor *A = lora ? lora->A[l * LT_COUNT + tg] : NULL;
    return N * (m->layers[l].w[tg].rows + (A ? A->shape[0] : 0));
}

static int64_t block_cache_floats(const Model *m, const LoraAdapter *lora, int l, int64_t N) {
    int64_t f = 0;
    for (int i = 0; i < N_CACHED; i++) f += cache_slot_floats(m, lora, l, i, N);
    return f;
}

// proj for block b: through its cache when it has one (kept in the forward, reused by the
// backward re-run), else computed.
static Tensor *proj_block(Tape *t, const Block *b, LoraTarget target, Tensor *x) {
    if (!b->cache) return proj_ex(t, b->m, b->lora, b->l, target, x, PROJ_FULL, NULL);
    const int64_t N = (int64_t)b->B * b->T;
    float *slot = b->cache;
    for (int i = 0; CACHED[i] != target; i++) slot += cache_slot_floats(b->m, b->lora, b->l, i, N);
    return proj_ex(t, b->m, b->lora, b->l, target, x, PROJ_CACHE, slot);
}

static Tensor *block_forward(Tape *t, Tensor *x, void *ctx) {
    const Block *b = ctx;
    const Model *m = b->m;
    const LoraAdapter *lora = b->lora;
    const ModelConfig *c = &m->cfg;
    const Layer *L = &m->layers[b->l];
    const int H = c->n_heads, KVH = c->n_kv_heads, D = c->head_dim, l = b->l, B = b->B, T = b->T;
    KVCache *kv = b->kv;
    const int pos0 = kv ? kv->len : 0;
    // attention block
    Tensor *h = op_rmsnorm(t, x, L->attn_norm, c->norm_eps);
    Tensor *q = proj_block(t, b, LT_Q, h);  // (B*T, H*D)
    Tensor *k = proj_block(t, b, LT_K, h);  // (B*T, KVH*D)
    Tensor *v = proj_block(t, b, LT_V, h);  // (B*T, KVH*D)
    q = op_rope(t, q, B, T, H, D, pos0, m->inv_freq, ROPE_HALF);
    k = op_rope(t, k, B, T, KVH, D, pos0, m->inv_freq, ROPE_HALF);
    int64_t Tk = T;
    if (kv) {
        k = cache_append(t, kv, kv->k, l, k, T);
        v = cache_append(t, kv, kv->v, l, v, T);
        Tk = pos0 + T;
    }
    Tensor *a = op_attention(t, q, k, v, B, T, Tk, H, KVH, D, c->sliding_window);  // (B*T, H*D)
    x = op_add(t, x, proj_block(t, b, LT_O, a));
    // MLP block
    h = op_rmsnorm(t, x, L->ffn_norm, c->norm_eps);
    Tensor *g = proj_block(t, b, LT_GATE, h);  // (B*T, F)
    Tensor *u = proj_block(t, b, LT_UP, h);    // (B*T, F)
    Tensor *act = c->act == ACT_GELU_TANH ? op_geglu(t, g, u) : op_swiglu(t, g, u);
    // A checkpoint's backward re-run reads none of the block's output values, only the
    // gradient flowing back: the down projection's frozen matmul (a quarter of the block's
    // matmul work) is skipped there.
    return op_add(t, x, proj_ex(t, m, lora, l, LT_DOWN, act, tape_recomputing(t) ? PROJ_NOBASE : PROJ_FULL, NULL));
}

// Whether layer l has LoRA matrices that need gradients.
static int layer_trains(const LoraAdapter *lora, int l) {
    if (!lora) return 0;
    for (int tg = 0; tg < LT_COUNT; tg++) {
        const Tensor *A = lora->A[l * LT_COUNT + tg], *B = lora->B[l * LT_COUNT + tg];
        if ((A && A->requires_grad) || (B && B->requires_grad)) return 1;
    }
    return 0;
}

// Bytes layer l's checkpointed block keeps for its re-run (0: it trains nothing, no re-run).
static size_t cache_need(const Model *m, const LoraAdapter *lora, int l, int64_t N) {
    return lora && layer_trains(lora, l) ? (size_t)block_cache_floats(m, lora, l, N) * sizeof(float) : 0;
}

// Whether a block needing `need` bytes keeps its outputs under *budget (taken from it if so).
static int cache_take(size_t need, size_t *budget) {
    if (!need || need > *budget) return 0;
    *budget -= need;
    return 1;
}

size_t model_recompute_cache_plan(const Model *m, const LoraAdapter *lora, int batch, int seq, size_t budget,
                                  int *blocks) {
    size_t used = 0;
    int n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        size_t need = cache_need(m, lora, l, (int64_t)batch * seq);
        if (cache_take(need, &budget)) {
            used += need;
            n++;
        }
    }
    if (blocks) *blocks = n;
    return used;
}

// ids (B,T) -> the final-normed hidden states (B*T, C), or (B, C) for the last positions.
static Tensor *model_trunk(Tape *t, const Model *m, const LoraAdapter *lora, const int *ids, int B,
                           int T, KVCache *kv, int last_only) {
    const ModelConfig *c = &m->cfg;
    if (kv && (B != 1 || kv->len + T > kv->max_seq))
        die_internal("model_forward: KV cache needs B == 1 and room for %d more positions", T);
    if (last_only && tape_recording(t)) die_internal("model_forward: last_only is for inference");
    const int64_t N = (int64_t)B * T;
    // blocks on the sub-tape: always when not recording (only one block's intermediates at a
    // time), and as checkpoints (recomputed in backward) when asked for
    int sub = !tape_recording(t) || tape_checkpointing(t);

    Tensor *x = m->tok_emb ? op_embedding(t, m->tok_emb, ids, N) : op_embedding_weight(t, &m->emb, ids, N);
    if (c->embed_scale > 0) {  // Gemma: × sqrt(dim); the table is frozen, so in place
        const float s = c->embed_scale;
        for (int64_t i = 0; i < x->n; i++) x->data[i] *= s;
    }
    // checkpointed blocks keep their matmul outputs for the re-run while the budget lasts
    size_t budget = sub && tape_recording(t) ? tape_recompute_cache(t) : 0;
    for (int l = 0; l < c->n_layers; l++) {
        Block *b = tape_alloc(t, sizeof *b);
        *b = (Block){m, lora, kv, l, B, T, NULL};
        size_t need = cache_need(m, lora, l, N);
        if (cache_take(need, &budget)) b->cache = tape_alloc(t, need);
        x = sub ? op_checkpoint(t, x, block_forward, b, layer_trains(lora, l)) : block_forward(t, x, b);
    }
    if (kv) kv->len += T;
    if (last_only) {
        // keep only the last position of each row: (B, C)
        int64_t shape[2] = {B, c->dim};
        Tensor *last = tape_tensor(t, 2, shape);
        for (int b = 0; b < B; b++)
            memcpy(last->data + (size_t)b * c->dim, x->data + ((size_t)b * T + T - 1) * c->dim,
                   (size_t)c->dim * sizeof(float));
        x = last;
    }
    return op_rmsnorm(t, x, m->final_norm, c->norm_eps);
}

Tensor *model_forward(Tape *t, const Model *m, const LoraAdapter *lora, const int *ids, int B,
                      int T, KVCache *kv, int last_only) {
    Tensor *x = model_trunk(t, m, lora, ids, B, T, kv, last_only);
    return op_linear(t, x, &m->lm_head);  // (B*T, V) or (B, V)
}

Tensor *model_loss(Tape *t, const Model *m, const LoraAdapter *lora, const int *ids,
                   const int *targets, int B, int T, float norm) {
    Tensor *x = model_trunk(t, m, lora, ids, B, T, NULL, 0);
    return op_linear_cross_entropy(t, x, &m->lm_head, targets, norm);
}
