// The decoding engine (infer.h): prefill through model_forward (GEMM over the prompt's
// tokens, the trainer's tiled kernels, in chunks), and a batched decode step written for
// memory bandwidth: every frozen matrix is read once per step for all rows, in its stored
// format (quant.h's qv_gemv), with the independent products of a step fused into one pass
// (q,k,v; gate,up) whose rows the threads of one OpenMP team split between them. Each row
// then adds its own adapter's low-rank term, rotates, attends over its own KV cache.
//
// A row's arithmetic is the same whatever the other rows of its step: qv_gemv is row-
// independent by contract and everything else here loops over rows.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "infer/infer.h"
#include "quant/quant.h"

#define PREFILL_CHUNK 512   // prompt tokens per model_forward (the cancel flag is read between)
#define PREFILL_ROWS 32     // prompt tokens per step when a prompt runs as decode rows
#define TUNE_TRIES 3        // decode steps timed per team size and row count
#define QV_CHUNK_BYTES 16384  // weight bytes per unit of work split between the threads

// The three product groups of a layer that share an input, plus the two that read the
// attention output and the activation.
enum { G_QKV, G_O, G_GU, G_DOWN, G_N };
static const LoraTarget GROUP_FIRST[G_N] = {LT_Q, LT_O, LT_GATE, LT_DOWN};
static const int GROUP_COUNT[G_N] = {3, 1, 2, 1};

typedef struct {
    QvMatrix w;
    const Weight *src;
    const QvKernel *k;         // NULL: no variant fits (NF4 rows not a whole number of blocks):
                               // rows converted to fp32 one at a time (weight_row_f32) and dotted
    size_t act_bytes;
} Proj;

struct Engine {
    const Model *m;
    int max_rows;              // engine_decode's most rows
    int rows;                  // the scratch's rows: max(max_rows, PREFILL_ROWS when row_prefill)
    int row_prefill;           // 1: prompts run as rows of the decode step (every matrix GGUF)
    const LoraAdapter **row_lora;  // (rows) a prompt chunk's per-row arguments
    KVCache **row_kv;
    int *row_pos, *row_tok;
    Proj *proj;                // (n_layers, LT_COUNT)
    Proj head;                 // lm_head
    size_t act_stride[LT_COUNT + 1];  // the most bytes of one prepared activation per target
                                      // (over the layers); [LT_COUNT]: lm_head
    void *qx[LT_COUNT + 1];    // (rows, ·) prepared activations, consecutive: each
                               // matrix's qv_act_bytes apart (as qv_gemv reads them)
    // (rows, ·) fp32 rows
    float *x, *h, *out[LT_COUNT], *att, *act;
    float *lora_h;             // (rows, max rank) the low-rank h of each row
    float *logits;             // (max_rows, V): a step's logits (a prompt chunk's: at most max_rows)
    float *scores;             // (threads, H/KVH, ctx) attention scores
    float *wrow;               // (threads, wrow_len) slow_gemv's rows
    size_t wrow_len;           // max(C, F)
    int max_rank, score_len, threads;
    // engine_decode's team size for each row count n (index n): 1 or `threads`, whichever
    // steps measured faster (best of TUNE_TRIES each, alternating, over the first steps with
    // that n): a small model's step can be faster on one thread than split between two, when
    // the ten barriers a layer cost more than the work between them
    struct { double best[2]; int tries[2], team; } *tune;
    Tape *tape;                // the prefill's forward (recording off); NULL when row_prefill
    const volatile int *cancel;
};

static QvMatrix qv_of(const Weight *w) {
    QvMatrix q = {QV_F32, w->rows, w->cols, w->data};
    if (w->type == WT_BF16) q.fmt = QV_BF16;
    else if (w->type == WT_NF4) q.fmt = QV_NF4;
    else if (w->type == WT_GGQ) q.fmt = QV_GGQ;
    return q;
}

static void proj_init(Proj *p, const Weight *w) {
    p->w = qv_of(w);
    p->src = w;
    p->k = qv_kernel_for(&p->w);
    p->act_bytes = p->k ? qv_act_bytes(p->k, &p->w) : (size_t)w->cols * sizeof(float);
}

size_t engine_kv_bytes_per_pos(const ModelConfig *c) {
    return (size_t)2 * c->n_layers * c->n_kv_heads * c->head_dim * sizeof(float);
}



void engine_set_cancel(Engine *en, const volatile int *flag) { en->cancel = flag; }

void engine_free(Engine *en) {
    if (!en) return;
    free(en->proj);
    for (int i = 0; i <= LT_COUNT; i++) free(en->qx[i]);
    for (int i = 0; i < LT_COUNT; i++) free(en->out[i]);
    free(en->x);
    free(en->h);
    free(en->att);
    free(en->act);
    free(en->lora_h);
    free(en->logits);
    free(en->scores);
    free(en->wrow);
    free(en->row_lora);
    free(en->row_kv);
    free(en->row_pos);
    free(en->row_tok);
    free(en->tune);
    tape_free(en->tape);
    free(en);
}

Engine *engine_new(const Model *m, int max_rows, Err *e) {
    if (max_rows < 1) {
        err_set(e, "engine: max_rows must be >= 1");
        return NULL;
    }
    const ModelConfig *c = &m->cfg;
    Engine *en = xcalloc(1, sizeof *en, "decoding engine", e);
    if (!en) return NULL;
    en->m = m;
    en->max_rows = max_rows;
    en->threads = omp_get_max_threads();
    if (!(en->proj = xcalloc((size_t)c->n_layers * LT_COUNT, sizeof *en->proj, "engine projections", e))) goto fail;
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < LT_COUNT; t++) {
            Proj *p = &en->proj[l * LT_COUNT + t];
            proj_init(p, &m->layers[l].w[t]);
            if (p->act_bytes > en->act_stride[t]) en->act_stride[t] = p->act_bytes;
        }
    proj_init(&en->head, &m->lm_head);
    en->act_stride[LT_COUNT] = en->head.act_bytes;
    // Prompts of a model whose every layer matrix is in a GGUF block format run as rows of the
    // decode step, PREFILL_ROWS at a time: the integer products of the quantized activations,
    // as llama.cpp does (measured faster than dequantizing tiles for the fp32 GEMM); others
    // through model_forward's GEMM.
    en->row_prefill = 1;
    for (int i = 0; i < c->n_layers * LT_COUNT; i++)
        if (en->proj[i].w.fmt != QV_GGQ || !en->proj[i].k) en->row_prefill = 0;
    en->rows = en->row_prefill && max_rows < PREFILL_ROWS ? PREFILL_ROWS : max_rows;
    if (!(en->tune = xcalloc((size_t)max_rows + 1, sizeof *en->tune, "engine rows", e)) ||
        !(en->row_lora = xcalloc((size_t)en->rows, sizeof *en->row_lora, "engine rows", e)) ||
        !(en->row_kv = xcalloc((size_t)en->rows, sizeof *en->row_kv, "engine rows", e)) ||
        !(en->row_pos = xcalloc((size_t)en->rows, sizeof *en->row_pos, "engine rows", e)) ||
        !(en->row_tok = xcalloc((size_t)en->rows, sizeof *en->row_tok, "engine rows", e)))
        goto fail;
    const size_t R = (size_t)en->rows, C = (size_t)c->dim, HD = (size_t)c->n_heads * c->head_dim;
    for (int t = 0; t <= LT_COUNT; t++) {
        en->act_stride[t] = (en->act_stride[t] + 63) & ~(size_t)63;
        if (!(en->qx[t] = xmalloc_aligned(R * en->act_stride[t] + 64, "engine activations", e))) goto fail;
    }
    for (int t = 0; t < LT_COUNT; t++) {
        size_t rows = (size_t)m->layers[0].w[t].rows;
        if (!(en->out[t] = xmalloc_aligned(R * rows * sizeof(float), "engine outputs", e))) goto fail;
    }
    en->max_rank = 0;
    en->score_len = c->max_seq_len > 0 ? c->max_seq_len : 2048;
    if (!(en->x = xmalloc_aligned(R * C * sizeof(float), "engine rows", e)) ||
        !(en->h = xmalloc_aligned(R * C * sizeof(float), "engine rows", e)) ||
        !(en->att = xmalloc_aligned(R * HD * sizeof(float), "engine rows", e)) ||
        !(en->act = xmalloc_aligned(R * (size_t)c->hidden_dim * sizeof(float), "engine rows", e)) ||
        !(en->logits = xmalloc_aligned((size_t)max_rows * c->vocab_size * sizeof(float), "engine logits", e)) ||
        !(en->scores = xmalloc_aligned((size_t)en->threads * (c->n_heads / c->n_kv_heads) * en->score_len * sizeof(float),
                                       "attention scores", e)) ||
        !(en->wrow = xmalloc_aligned((size_t)en->threads * (en->wrow_len = C > (size_t)c->hidden_dim ? C : (size_t)c->hidden_dim) *
                                         sizeof(float), "engine scratch", e)))
        goto fail;
    if (!en->row_prefill) {
        if (!(en->tape = tape_new(e))) goto fail;
        tape_set_recording(en->tape, 0);
        tape_set_training(en->tape, 0);
        // prefill: the fastest fp32 GEMM. Not bf16 even where it is faster: it would round the
        // dequantized weights to 8 bits of mantissa (a Q4_0 weight d·q needs up to 15), and that
        // was visible: stories260K in Q4_0 greedy-decoded as llama.cpp does for 24 tokens with an
        // fp32 prefill, for 11 with a bf16 one
        tape_set_gemm(en->tape, kernel_choice()->fp32);
    }
    return en;
fail:
    engine_free(en);
    return NULL;
}

// ---- prefill --------------------------------------------------------------------------------
static int run_rows(Engine *en, const LoraAdapter *const *lora, KVCache *const *kv, const int *pos,
                    const int *tokens, int n, int head_from, int team, Err *e);

int engine_prefill(Engine *en, const LoraAdapter *lora, KVCache *kv, const int *ids, int n, float *logits,
                   Err *e) {
    if (en->row_prefill) return engine_prefill_many(en, &lora, &kv, &ids, &n, 1, &logits, e);
    const Model *m = en->m;
    const int V = m->cfg.vocab_size;
    if (n < 1) return err_set(e, "empty prompt: nothing to condition on");
    if (kv->len + n > kv->max_seq)
        return err_set(e, "%d more tokens do not fit the KV cache (%d of %d positions used)", n, kv->len, kv->max_seq);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return err_set(e, "prompt token %d is outside the model's vocabulary (%d)", ids[i], V);
    if (kv->len + n > en->score_len)
        return err_set(e, "%d more tokens do not fit the model's context (%d of %d positions used)", n, kv->len,
                       en->score_len);
    for (int i0 = 0; i0 < n; i0 += PREFILL_CHUNK) {
        if (en->cancel && *en->cancel) return err_set(e, "cancelled");
        int nc = n - i0 < PREFILL_CHUNK ? n - i0 : PREFILL_CHUNK;
        tape_reset(en->tape);
        Tensor *out = model_forward(en->tape, m, lora, ids + i0, 1, nc, kv, 1);
        if (i0 + nc == n) memcpy(logits, out->data, (size_t)V * sizeof(float));
    }
    tape_reset(en->tape);
    return 0;
}

int engine_prefill_many(Engine *en, const LoraAdapter *const *lora, KVCache *const *kv, const int *const *ids,
                        const int *n, int count, float *const *logits, Err *e) {
    if (!en->row_prefill) {
        for (int s = 0; s < count; s++)
            if (engine_prefill(en, lora[s], kv[s], ids[s], n[s], logits[s], e)) return -1;
        return 0;
    }
    const Model *m = en->m;
    const int V = m->cfg.vocab_size;
    for (int s = 0; s < count; s++) {
        if (n[s] < 1) return err_set(e, "empty prompt: nothing to condition on");
        if (kv[s]->len + n[s] > kv[s]->max_seq || kv[s]->len + n[s] > en->score_len)
            return err_set(e, "%d more tokens do not fit the KV cache (%d of %d positions used)", n[s], kv[s]->len,
                           kv[s]->max_seq < en->score_len ? kv[s]->max_seq : en->score_len);
        for (int i = 0; i < n[s]; i++)
            if (ids[s][i] < 0 || ids[s][i] >= V)
                return err_set(e, "prompt token %d is outside the model's vocabulary (%d)", ids[s][i], V);
    }
    int *tok = en->row_tok;
    int s = 0, t = 0;  // the next token: t of sequence s
    while (s < count) {
        if (en->cancel && *en->cancel) return err_set(e, "cancelled");
        // up to en->rows rows: the sequences' tokens in order, each sequence's last token
        // (when it falls in this chunk) placed at the end, where the logits are computed
        int nr = 0, nlast = 0, last_seq[en->rows];
        while (s < count && nr + nlast < en->rows && nlast < en->max_rows) {
            const int room = en->rows - nr - nlast, take = n[s] - t < room ? n[s] - t : room;
            const int ends = t + take == n[s], body = take - ends;
            for (int i = 0; i < body; i++, nr++) {
                en->row_lora[nr] = lora[s], en->row_kv[nr] = kv[s], en->row_pos[nr] = kv[s]->len + t + i;
                tok[nr] = ids[s][t + i];
            }
            if (!ends) {  // the chunk is full: sequence s goes on in the next one
                t += body;
                break;
            }
            last_seq[nlast++] = s++;
            t = 0;
        }
        // the last tokens after the others
        for (int k = 0; k < nlast; k++) {
            const int q = last_seq[k], r = nr + k;
            en->row_lora[r] = lora[q], en->row_kv[r] = kv[q], en->row_pos[r] = kv[q]->len + n[q] - 1;
            tok[r] = ids[q][n[q] - 1];
        }
        if (run_rows(en, en->row_lora, en->row_kv, en->row_pos, tok, nr + nlast, nr, en->threads, e)) return -1;
        for (int k = 0; k < nlast; k++) {
            memcpy(logits[last_seq[k]], en->logits + (size_t)k * V, (size_t)V * sizeof(float));
        }
        // positions written: every row's; a sequence's len moves when all of it is in
        for (int k = 0; k < nlast; k++) kv[last_seq[k]]->len += n[last_seq[k]];
    }
    return 0;
}

// ---- decode ---------------------------------------------------------------------------------
// a (n), b (n) -> a·b in 16 partial sums, added as a tree (a fixed order the compiler
// vectorizes, the same for every row whatever else runs), then the tail.
static float dot16(const float *a, const float *b, int64_t n) {
    float part[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) part[j] += a[i + j] * b[i + j];
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) part[j] += part[j + w];
    float s = part[0];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

// x (C), w (C) -> out (C)      out = x / sqrt(mean(x²) + eps) · w
static void rmsnorm_row(float *out, const float *x, const float *w, int C, float eps) {
    float r = 1.0f / sqrtf(dot16(x, x, C) / (float)C + eps);
    for (int i = 0; i < C; i++) out[i] = x[i] * r * w[i];
}

// x (H*D) of one token at position pos, in place: each head's pairs (i, i+D/2) rotated by
// pos · inv_freq[i] (the HF rotate-half convention every model is kept in).
static void rope_row(float *x, int H, int D, int pos, const float *inv_freq) {
    const int half = D / 2;
    for (int i = 0; i < half; i++) {
        float ang = (float)pos * inv_freq[i], c = cosf(ang), s = sinf(ang);
        for (int h = 0; h < H; h++) {
            float *xh = x + (size_t)h * D;
            float x1 = xh[i], x2 = xh[i + half];
            xh[i] = x1 * c - x2 * s;
            xh[i + half] = x2 * c + x1 * s;
        }
    }
}

// The R query heads q (R, D) that share one key/value head, keys/values (Tk, kv_dim) of that
// head (at its offset) -> out (R, D): head r's out = softmax(q_r·k_j / sqrt(D) over the
// visible j) · V. Each key and value row is read once for the R heads; each head's sums run in
// the same order as for a head alone. scores: (R, Tk) scratch.
static void attend_group(float *out, const float *q, int R, const float *K, const float *Vv, int lo, int Tk,
                         int kv_dim, int D, float *scores) {
    const float scale = 1.0f / sqrtf((float)D);
    float mx[R], inv[R];
    for (int r = 0; r < R; r++) mx[r] = -INFINITY;
    for (int j = lo; j < Tk; j++) {
        const float *k = K + (size_t)j * kv_dim;
        for (int r = 0; r < R; r++) {
            float s = dot16(q + (size_t)r * D, k, D) * scale;
            scores[(size_t)r * Tk + j] = s;
            if (s > mx[r]) mx[r] = s;
        }
    }
    for (int r = 0; r < R; r++) {
        float *sc = scores + (size_t)r * Tk, sum = 0.0f;
        for (int j = lo; j < Tk; j++) {
            sc[j] = expf(sc[j] - mx[r]);
            sum += sc[j];
        }
        inv[r] = 1.0f / sum;
    }
    for (int i = 0; i < R * D; i++) out[i] = 0.0f;
    for (int j = lo; j < Tk; j++) {
        const float *v = Vv + (size_t)j * kv_dim;
        for (int r = 0; r < R; r++) {
            const float p = scores[(size_t)r * Tk + j] * inv[r];
            float *o = out + (size_t)r * D;
            for (int d = 0; d < D; d++) o[d] += p * v[d];
        }
    }
}

// y (OC) += scale · B (OC,r) · (A (r,C) · x (C)); hbuf (r) scratch. The low-rank term of one row.
static void lora_row(float *y, const float *x, const Tensor *A, const Tensor *B, float scale, float *hbuf) {
    const int64_t r = A->shape[0], C = A->shape[1], OC = B->shape[0];
    for (int64_t j = 0; j < r; j++) hbuf[j] = dot16(A->data + j * C, x, C) * scale;
    for (int64_t o = 0; o < OC; o++) {
        const float *b = B->data + o * r;
        float s = 0.0f;
        for (int64_t j = 0; j < r; j++) s += b[j] * hbuf[j];
        y[o] += s;
    }
}


// The fallback of a matrix no qv variant takes: rows [r0, r0+nr) of W, one at a time in fp32
// (wrow: cols floats), against n fp32 activations x (n, cols) -> y[g*ldy + r].
static void slow_gemv(const Proj *p, int64_t r0, int64_t nr, const float *x, int n, float *y, int64_t ldy,
                      float *wrow) {
    const int64_t C = p->w.cols;
    for (int64_t r = r0; r < r0 + nr; r++) {
        weight_row_f32(p->src, r, wrow);
        for (int g = 0; g < n; g++) y[g * ldy + r] = dot16(wrow, x + g * C, C);
    }
}

// Row `row`'s input in (cols) prepared for p's products -> qx[row] (consecutive, p's
// act_bytes apart: as qv_gemv reads them).
static void prepare_row(const Proj *p, void *qx, int row, const float *in) {
    char *q = (char *)qx + (size_t)row * p->act_bytes;
    if (p->k) qv_prepare(p->k, &p->w, in, q);
    else memcpy(q, in, p->act_bytes);
}

// Row `row`'s input to group g of layer l, prepared for each of its matrices.
static void prepare_group_row(Engine *en, int l, int g, int row, const float *in) {
    for (int j = 0; j < GROUP_COUNT[g]; j++) {
        int t = GROUP_FIRST[g] + j;
        prepare_row(&en->proj[l * LT_COUNT + t], en->qx[t], row, in);
    }
}

// The products of nm matrices (ps[j] -> ys[j], row stride ldys[j]) for n prepared rows, inside
// the team: every matrix's rows in chunks of about QV_CHUNK_BYTES split statically between the
// threads (one barrier for them all). qxs[j]: the prepared rows of matrix j.
static void gemv_mats(Engine *en, const Proj *const *ps, void *const *qxs, float *const *ys, const int64_t *ldys,
                      int nm, int n) {
    float *wrow = en->wrow + (size_t)omp_get_thread_num() * en->wrow_len;
    int64_t chunk_rows[3] = {0}, chunks[3] = {0}, total = 0;
    for (int j = 0; j < nm; j++) {
        const QvMatrix *w = &ps[j]->w;
        size_t row_bytes = w->fmt == QV_F32 ? (size_t)w->cols * 4
                         : w->fmt == QV_BF16 ? (size_t)w->cols * 2
                         : w->fmt == QV_NF4 ? (size_t)w->cols / 2
                                            : ggq_row_bytes(((const GgqMatrix *)w->data)->type, w->cols);
        int64_t cr = (int64_t)(QV_CHUNK_BYTES / (row_bytes ? row_bytes : 1));
        if (cr < 4) cr = 4;
        cr = (cr + 3) & ~(int64_t)3;
        chunk_rows[j] = cr;
        chunks[j] = (w->rows + cr - 1) / cr;
        total += chunks[j];
    }
#pragma omp for schedule(static)
    for (int64_t ci = 0; ci < total; ci++) {
        int j = 0;
        int64_t c = ci;
        while (c >= chunks[j]) c -= chunks[j++];
        const Proj *p = ps[j];
        int64_t r0 = c * chunk_rows[j], nr = p->w.rows - r0 < chunk_rows[j] ? p->w.rows - r0 : chunk_rows[j];
        if (p->k) qv_gemv(p->k, &p->w, r0, nr, qxs[j], n, ys[j], ldys[j], 0);
        else slow_gemv(p, r0, nr, qxs[j], n, ys[j], ldys[j], wrow);
    }
}

// The frozen products of group g of layer l for n prepared rows -> out[t] (inside the team).
static void gemv_group(Engine *en, int l, int g, int n) {
    const Proj *ps[3];
    void *qxs[3];
    float *ys[3];
    int64_t ldys[3];
    for (int j = 0; j < GROUP_COUNT[g]; j++) {
        int t = GROUP_FIRST[g] + j;
        ps[j] = &en->proj[l * LT_COUNT + t];
        qxs[j] = en->qx[t];
        ys[j] = en->out[t];
        ldys[j] = en->m->layers[l].w[t].rows;
    }
    gemv_mats(en, ps, qxs, ys, ldys, GROUP_COUNT[g], n);
}

// Row `row` of group g of layer l: its adapter's low-rank terms (a may be NULL) and the biases,
// added to out[t] (in: the group's input row).
static void group_extras_row(Engine *en, int l, int g, int row, const float *in, const LoraAdapter *a) {
    const Model *m = en->m;
    for (int j = 0; j < GROUP_COUNT[g]; j++) {
        int t = GROUP_FIRST[g] + j;
        const Weight *w = &m->layers[l].w[t];
        float *y = en->out[t] + (int64_t)row * w->rows;
        const Tensor *A = a ? a->A[l * LT_COUNT + t] : NULL;
        if (A) lora_row(y, in, A, a->B[l * LT_COUNT + t], a->scale, en->lora_h + (int64_t)row * en->max_rank);
        const Tensor *bias = m->layers[l].bias[t];
        if (bias)
            for (int64_t o = 0; o < w->rows; o++) y[o] += bias->data[o];
    }
}

// x (C) += o (C), then h (C) = rmsnorm(x) · w: a block's residual and the next norm.
static void residual_norm_row(float *x, const float *o, float *h, const float *w, int C, float eps) {
    for (int j = 0; j < C; j++) x[j] += o[j];
    rmsnorm_row(h, x, w, C, eps);
}

// gate, up (F) -> act (F)      act = act_fn(gate) · up  (silu, or tanh-gelu for GeGLU)
static void glu_row(float *act, const float *g, const float *u, int F, int gelu) {
    for (int i = 0; i < F; i++) {
        float x = g[i], a = gelu ? 2.0f * 0.7978845608028654f * (x + 0.044715f * x * x * x) : x;
        act[i] = x / (1.0f + expf(-a)) * u[i];
    }
}

// One step over n rows (1 <= n <= en->rows): row i is token tokens[i] at position pos[i] of the
// sequence in kv[i] (its k, v are written there at pos[i]; it attends to positions 0..pos[i]),
// with adapter lora[i] (lora NULL = all base). Rows of one sequence (a prompt chunk: one kv,
// consecutive positions) see each other's keys: every row's k, v are written before any row
// attends. Logits only for rows head_from..n-1 -> en->logits row i - head_from. KV lengths are
// the caller's to advance.
static int run_rows(Engine *en, const LoraAdapter *const *lora, KVCache *const *kv, const int *pos,
                    const int *tokens, int n, int head_from, int team, Err *e) {
    const Model *m = en->m;
    const ModelConfig *c = &m->cfg;
    const int C = c->dim, H = c->n_heads, KVH = c->n_kv_heads, D = c->head_dim, F = c->hidden_dim;
    const int HD = H * D, KD = KVH * D, L = c->n_layers;
    // the largest rank among the rows' adapters: the LoRA scratch
    int rank = 0;
    for (int i = 0; lora && i < n; i++)
        if (lora[i] && lora[i]->rank > rank) rank = lora[i]->rank;
    if (rank > en->max_rank) {
        float *p = xmalloc_aligned((size_t)en->rows * rank * sizeof(float), "LoRA scratch", e);
        if (!p) return -1;
        free(en->lora_h);
        en->lora_h = p;
        en->max_rank = rank;
    }
    for (int i = 0; i < n; i++) {
        float *xi = en->x + (size_t)i * C;
        weight_row_f32(&m->emb, tokens[i], xi);
        if (c->embed_scale > 0)
            for (int j = 0; j < C; j++) xi[j] *= c->embed_scale;
    }
    const int window = c->sliding_window;
#pragma omp parallel num_threads(team)
    {
        float *scores = en->scores + (size_t)omp_get_thread_num() * (H / KVH) * en->score_len;
        const int gelu = c->act == ACT_GELU_TANH;
        // Per layer: each group's products (one barrier), then one per-row phase that adds the
        // rows' adapters and biases, does the element-wise work and prepares the next group's
        // input; attention between. Ten barriers a layer.
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            rmsnorm_row(en->h + (size_t)i * C, en->x + (size_t)i * C, m->layers[0].attn_norm->data, C, c->norm_eps);
            prepare_group_row(en, 0, G_QKV, i, en->h + (size_t)i * C);
        }
        for (int l = 0; l < L; l++) {
            const Layer *Ly = &m->layers[l];
            gemv_group(en, l, G_QKV, n);
            // each row: its LoRA, rotate q and k at its position, append k, v to its cache
#pragma omp for schedule(static)
            for (int i = 0; i < n; i++) {
                group_extras_row(en, l, G_QKV, i, en->h + (size_t)i * C, lora ? lora[i] : NULL);
                float *q = en->out[LT_Q] + (size_t)i * HD, *k = en->out[LT_K] + (size_t)i * KD;
                rope_row(q, H, D, pos[i], m->inv_freq);
                rope_row(k, KVH, D, pos[i], m->inv_freq);
                size_t at = ((size_t)l * kv[i]->max_seq + pos[i]) * KD;
                memcpy(kv[i]->k + at, k, (size_t)KD * sizeof(float));
                memcpy(kv[i]->v + at, en->out[LT_V] + (size_t)i * KD, (size_t)KD * sizeof(float));
            }
            // each row's key/value heads, with the query heads that share each
#pragma omp for schedule(dynamic, 1)
            for (int ig = 0; ig < n * KVH; ig++) {
                int i = ig / KVH, g = ig % KVH, Tk = pos[i] + 1, R = H / KVH;
                int lo = window > 0 && Tk - window > 0 ? Tk - window : 0;
                size_t base = (size_t)l * kv[i]->max_seq * KD + (size_t)g * D, at = (size_t)i * HD + (size_t)g * R * D;
                attend_group(en->att + at, en->out[LT_Q] + at, R, kv[i]->k + base, kv[i]->v + base, lo, Tk, KD, D,
                             scores);
            }
#pragma omp for schedule(static)
            for (int i = 0; i < n; i++) prepare_group_row(en, l, G_O, i, en->att + (size_t)i * HD);
            gemv_group(en, l, G_O, n);
#pragma omp for schedule(static)
            for (int i = 0; i < n; i++) {
                group_extras_row(en, l, G_O, i, en->att + (size_t)i * HD, lora ? lora[i] : NULL);
                residual_norm_row(en->x + (size_t)i * C, en->out[LT_O] + (size_t)i * C, en->h + (size_t)i * C,
                                  Ly->ffn_norm->data, C, c->norm_eps);
                prepare_group_row(en, l, G_GU, i, en->h + (size_t)i * C);
            }
            gemv_group(en, l, G_GU, n);
#pragma omp for schedule(static)
            for (int i = 0; i < n; i++) {
                group_extras_row(en, l, G_GU, i, en->h + (size_t)i * C, lora ? lora[i] : NULL);
                glu_row(en->act + (size_t)i * F, en->out[LT_GATE] + (size_t)i * F, en->out[LT_UP] + (size_t)i * F, F,
                        gelu);
                prepare_group_row(en, l, G_DOWN, i, en->act + (size_t)i * F);
            }
            gemv_group(en, l, G_DOWN, n);
            // the residual, then the next block's input norm (or the final one) and its input
#pragma omp for schedule(static)
            for (int i = 0; i < n; i++) {
                group_extras_row(en, l, G_DOWN, i, en->act + (size_t)i * F, lora ? lora[i] : NULL);
                float *hi = en->h + (size_t)i * C;
                const int last = l + 1 == L;
                if (last && i < head_from) {  // no logits wanted: the residual is all
                    const float *o = en->out[LT_DOWN] + (size_t)i * C;
                    for (int j = 0; j < C; j++) en->x[(size_t)i * C + j] += o[j];
                    continue;
                }
                residual_norm_row(en->x + (size_t)i * C, en->out[LT_DOWN] + (size_t)i * C, hi,
                                  !last ? m->layers[l + 1].attn_norm->data : m->final_norm->data, C, c->norm_eps);
                if (!last) prepare_group_row(en, l + 1, G_QKV, i, hi);
                else prepare_row(&en->head, en->qx[LT_COUNT], i - head_from, hi);
            }
        }
        const Proj *hp = &en->head;
        void *hq = en->qx[LT_COUNT];
        float *hy = en->logits;
        int64_t ldv = c->vocab_size;
        gemv_mats(en, &hp, &hq, &hy, &ldv, 1, n - head_from);
    }
    return 0;
}

int engine_decode(Engine *en, const LoraAdapter *const *lora, KVCache *const *kv, const int *tokens, int n,
                  float *const *logits, Err *e) {
    const ModelConfig *c = &en->m->cfg;
    const int V = c->vocab_size;
    if (n < 1 || n > en->max_rows) return err_set(e, "engine: %d rows (1..%d)", n, en->max_rows);
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return err_set(e, "token %d is outside the model's vocabulary (%d)", tokens[i], V);
        if (kv[i]->len + 1 > kv[i]->max_seq) return err_set(e, "the KV cache of row %d is full (%d positions)", i, kv[i]->max_seq);
        if (kv[i]->len + 1 > en->score_len) return err_set(e, "row %d is past the model's context (%d)", i, en->score_len);
        en->row_pos[i] = kv[i]->len;
    }
    int team = en->threads, k = -1;
    if (team > 1 && !en->tune[n].team) {  // still measuring: the team size with fewer tries
        k = en->tune[n].tries[0] <= en->tune[n].tries[1] ? 0 : 1;
        team = k ? en->threads : 1;
    } else if (team > 1) {
        team = en->tune[n].team;
    }
    double t0 = omp_get_wtime();
    if (run_rows(en, lora, kv, en->row_pos, tokens, n, 0, team, e)) return -1;
    if (k >= 0) {
        double dt = omp_get_wtime() - t0;
        if (!en->tune[n].tries[k] || dt < en->tune[n].best[k]) en->tune[n].best[k] = dt;
        if (++en->tune[n].tries[k] >= TUNE_TRIES && en->tune[n].tries[!k] >= TUNE_TRIES)
            en->tune[n].team = en->tune[n].best[0] < en->tune[n].best[1] ? 1 : en->threads;
    }
    for (int i = 0; i < n; i++) memcpy(logits[i], en->logits + (size_t)i * V, (size_t)V * sizeof(float));
    for (int i = 0; i < n; i++) kv[i]->len++;
    return 0;
}
