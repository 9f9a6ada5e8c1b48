// The memory plan of a training step: what the weights, the adapter, the optimizer and the
// activations of one batch x seq step take, estimated from the shapes (printed by `lora
// train` at start-up; the peak RSS printed at the end is the measured counterpart).
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "quant/quant.h"

#define F4 ((size_t)sizeof(float))
#define MIB (1024.0 * 1024.0)

// Floats of one block's recorded forward intermediates (N tokens) and bytes of its LoRA
// dropout masks.
static size_t block_forward_floats(const ModelConfig *c, const LoraAdapter *lora, int layer, int64_t B, int64_t T,
                                   size_t *mask_bytes) {
    int64_t N = B * T, C = c->dim, F = c->hidden_dim, QD = (int64_t)c->n_heads * c->head_dim,
            KD = (int64_t)c->n_kv_heads * c->head_dim;
    // norm, q, k, v, rope q/k, attention, o, add, norm, gate, up, swiglu, down, add
    size_t f = (size_t)(N * (6 * C + 3 * QD + 3 * KD + 3 * F) + 2 * N + 2 * B * c->n_heads * T + 2 * T * c->head_dim);
    *mask_bytes = 0;
    if (!lora) return f;
    for (int tg = 0; tg < LT_COUNT; tg++) {
        const Tensor *A = lora->A[layer * LT_COUNT + tg];
        if (!A) continue;
        f += (size_t)(N * A->shape[0]);                                      // h = x Aᵀ
        if (lora->dropout > 0) *mask_bytes += (size_t)(N * A->shape[1]);  // keep mask
    }
    return f;
}

void model_memory_plan(const Model *m, const LoraAdapter *lora, int optimizer_moments, int batch, int seq,
                       MemoryPlan *p) {
    const ModelConfig *c = &m->cfg;
    memset(p, 0, sizeof *p);
    size_t wtile = 0;  // largest weight conversion tile (floats)
    for (int l = 0; l < c->n_layers; l++)
        for (int tg = 0; tg < LT_COUNT; tg++) {
            const Weight *w = &m->layers[l].w[tg];
            p->linear += weight_bytes(w);
            size_t tf = w->type == WT_NF4 ? nf4_scratch_floats(w->data) : (size_t)1 << 20;
            if (w->type != WT_F32 && tf > wtile) wtile = tf;
        }
    p->embedding = weight_bytes(&m->emb);
    p->lm_head = c->tied_embeddings ? 0 : weight_bytes(&m->lm_head);
    p->norms = (size_t)(2 * c->n_layers + 1) * (size_t)c->dim * F4;
    if (lora) {  // every trainable tensor once (fused models share some)
        int cap = 2 * lora->n_layers * LT_COUNT;
        Tensor **ps = malloc((size_t)cap * sizeof *ps);
        int np = ps ? lora_params(lora, ps, cap) : 0;
        for (int i = 0; i < np; i++) p->adapter_params += (long)ps[i]->n;
        free(ps);
    }
    p->adapter = (size_t)p->adapter_params * F4;
    p->adapter_grads = p->adapter;
    p->optimizer = (size_t)optimizer_moments * p->adapter;

    int64_t B = batch, T = seq, N = B * T, C = c->dim, V = c->vocab_size, H = c->n_heads,
            G = c->n_heads / c->n_kv_heads, D = c->head_dim;
    int nt = get_num_threads();
    // scratch shared by every op: attention (P and dS per thread for a block of 64 query rows,
    // per-head dK/dV for GQA), weight tiles, the fused cross-entropy (a chunk of Kc kept rows
    // and their logits over the whole vocabulary, at most 2^23 floats), LoRA dropout buffers
    size_t scratch = (size_t)nt * 2 * 64 * (size_t)T + (G > 1 ? 2 * (size_t)(B * H * T * D) : 0) + wtile;
    int64_t Kc = ((int64_t)1 << 23) / V;
    Kc = Kc < 1 ? 1 : Kc > N ? N : Kc;
    scratch += (size_t)(Kc * C) + (size_t)(Kc * V);
    scratch += 2 * (size_t)(N * C);  // LoRA dropout: x masked and its gradient
    {  // the tiled GEMMs' packed operands (any variant kernel_choice may pick)
        int64_t kmax = C > c->hidden_dim ? C : c->hidden_dim;
        kmax = kmax > H * D ? kmax : H * D;
        size_t a = gemm_scratch_bytes(NULL, N, kmax + 257), b = gemm_scratch_bytes(NULL, Kc, V + 1);
        // bf16 attention: bf16 copies of k and v, per-thread Q/dO packs and block buffers
        size_t att = (size_t)(2 * N * c->n_kv_heads * D) * 2 + (size_t)nt * (2 * T * D + 3 * 64 * T) * F4;
        a = a > att ? a : att;
        scratch += (a > b ? a : b) / F4;
    }
    // outside the blocks: embeddings out, final norm out and their gradients, the fused
    // cross-entropy's gradient of its input (computed in its forward)
    size_t outside = 5 * (size_t)(N * C);
    size_t full = 0, worst_block = 0, masks_worst = 0;
    for (int l = 0; l < c->n_layers; l++) {
        size_t mb;
        size_t f = block_forward_floats(c, lora, l, B, T, &mb);
        full += 2 * f * F4 + mb;  // intermediates + their gradients
        if (2 * f * F4 + mb > worst_block) worst_block = 2 * f * F4 + mb;
        if (mb > masks_worst) masks_worst = mb;
    }
    p->act_full = full + (outside + scratch) * F4;
    // checkpointed: each block's input kept, two gradient buffers in turn, one block live
    p->act_checkpointed = ((size_t)c->n_layers * (size_t)(N * C) + 2 * (size_t)(N * C) + outside + scratch) * F4 +
                          worst_block;
}

size_t model_memory_total(const MemoryPlan *p, int checkpointing) {
    return p->linear + p->embedding + p->lm_head + p->norms + p->adapter + p->adapter_grads + p->optimizer +
           (checkpointing ? p->act_checkpointed : p->act_full);
}

size_t model_recompute_budget(const MemoryPlan *p, int checkpointing, size_t limit) {
    size_t total = model_memory_total(p, checkpointing);
    return checkpointing && limit > total ? limit - total : 0;
}

static void line(FILE *f, const char *what, size_t bytes, const char *note) {
    fprintf(f, "  %-22s %9.1f MiB  %s\n", what, bytes / MIB, note);
}

void model_print_memory_plan(FILE *f, const Model *m, const MemoryPlan *p, int batch, int seq, int checkpointing) {
    const ModelConfig *c = &m->cfg;
    char note[160];
    fprintf(f, "memory plan (batch %d x seq %d, gradient checkpointing %s):\n", batch, seq,
            checkpointing ? "on" : "off");
    const Weight *w0 = &m->layers[0].w[0];
    int64_t nw = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int tg = 0; tg < LT_COUNT; tg++) nw += m->layers[l].w[tg].rows * m->layers[l].w[tg].cols;
    snprintf(note, sizeof note, "%s, %d x 7 matrices, %.3f bits/weight", weight_type_name(w0->type), c->n_layers,
             8.0 * p->linear / (double)nw);
    line(f, "base linear weights", p->linear, note);
    snprintf(note, sizeof note, "%s (%d x %d)", weight_type_name(m->emb.type), c->vocab_size, c->dim);
    line(f, "embedding", p->embedding, note);
    if (c->tied_embeddings) line(f, "lm_head", 0, "tied to the embedding");
    else line(f, "lm_head", p->lm_head, weight_type_name(m->lm_head.type));
    line(f, "norms", p->norms, "f32");
    snprintf(note, sizeof note, "%ld parameters (f32)", p->adapter_params);
    line(f, "LoRA adapter", p->adapter, note);
    line(f, "adapter gradients", p->adapter_grads, "f32");
    line(f, "optimizer state", p->optimizer, "AdamW moments (f32)");
    size_t act = checkpointing ? p->act_checkpointed : p->act_full;
    snprintf(note, sizeof note, "estimate, %s checkpointing (%.1f MiB %s)", checkpointing ? "with" : "without",
             (checkpointing ? p->act_full : p->act_checkpointed) / MIB, checkpointing ? "without" : "with");
    line(f, "activations", act, note);
    line(f, "total", model_memory_total(p, checkpointing), "(plus code, libraries and data)");
}
