// autograd — tensors, frozen-weight helpers and the tape (arena + node list + backward).
//
// The arena is a list of blocks. Allocation bumps a pointer in the current block and moves
// to the next block when it does not fit (creating a new one, at least as large as all the
// previous ones together, only when none is left). tape_reset rewinds every block, so an
// identical step replays exactly the same allocations and never creates a block again.
//
// Gradient checkpointing runs a function on the tape's sub-tape (another Tape with its own
// arena, sharing the root tape's scratch) and keeps only its output; see op_checkpoint.
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd.h"
#include "autograd/internal.h"
#include "quant/quant.h"

#define ARENA_MIN_BLOCK ((size_t)16 << 20)
#define GRAD_POOL 16  // recycled gradient buffers remembered per tape

typedef struct {
    char *mem;
    size_t cap, used;
} Block;

struct Tape {
    Block *blocks;
    int nblocks, cap_blocks, cur;
    size_t high_water;        // max over time of bytes of the arena passed over so far
    Node *last;               // most recent node
    int recording, training, checkpointing;
    int recomputing;          // a checkpoint's backward re-run (sub-tapes only)
    const GemmKernel *gemm;   // read on the root tape only (NULL: OpenBLAS)
    size_t recompute_cache;   // read on the root tape only
    Rng rng;
    float *scratch[SCR_COUNT];  // used on the root tape only
    size_t scratch_n[SCR_COUNT];
    Tape *root;               // the outermost tape (owner of the scratch); itself at the top
    Tape *sub;                // sub-tape for op_checkpoint, created on first use
    Profile *prof;            // root only: per-op wall times (NULL = not profiling)
    // gradient buffers (arena memory, valid until tape_reset) free for reuse: pointer, floats
    float *pool[GRAD_POOL];
    int64_t pool_n[GRAD_POOL];
    int npool;
};

// ---- tensors --------------------------------------------------------------------------------

static int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

static int check_shape(int ndim, const int64_t *shape, const char *name, Err *e) {
    if (ndim < 1 || ndim > AG_MAXDIM)
        return err_set(e, "tensor %s: %d dimensions (1..%d allowed)", name ? name : "?", ndim,
                       AG_MAXDIM);
    for (int i = 0; i < ndim; i++)
        if (shape[i] <= 0)
            return err_set(e, "tensor %s: dimension %d is %lld", name ? name : "?", i,
                           (long long)shape[i]);
    return 0;
}

// A caller-owned tensor: the Tensor, whether its data is ours, and a copy of its name.
typedef struct {
    Tensor t;
    int owns_data;
    char name[];
} OwnedTensor;

static Tensor *tensor_header(int ndim, const int64_t *shape, const char *name, Err *e) {
    if (check_shape(ndim, shape, name, e)) return NULL;
    size_t nlen = name ? strlen(name) + 1 : 0;
    OwnedTensor *o = xcalloc(1, sizeof(OwnedTensor) + nlen, name ? name : "tensor", e);
    if (!o) return NULL;
    Tensor *t = &o->t;
    if (name) {
        memcpy(o->name, name, nlen);
        t->name = o->name;
    }
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->n = shape_numel(ndim, shape);
    t->is_param = 1;
    return t;
}

Tensor *tensor_new_param(int ndim, const int64_t *shape, int requires_grad, const char *name, Err *e) {
    Tensor *t = tensor_header(ndim, shape, name, e);
    if (!t) return NULL;
    ((OwnedTensor *)t)->owns_data = 1;
    size_t bytes = (size_t)t->n * sizeof(float);
    t->data = xmalloc_aligned(bytes, name ? name : "parameter", e);
    if (t->data && requires_grad) t->grad = xmalloc_aligned(bytes, name ? name : "gradient", e);
    if (!t->data || (requires_grad && !t->grad)) {
        tensor_free(t);
        return NULL;
    }
    memset(t->data, 0, bytes);
    if (t->grad) memset(t->grad, 0, bytes);
    t->requires_grad = requires_grad ? 1 : 0;
    return t;
}

Tensor *tensor_wrap(float *data, int ndim, const int64_t *shape, const char *name, Err *e) {
    Tensor *t = tensor_header(ndim, shape, name, e);
    if (!t) return NULL;
    t->data = data;
    return t;
}

void tensor_free(Tensor *t) {
    if (!t) return;
    if (((OwnedTensor *)t)->owns_data) free(t->data);
    free(t->grad);
    free(t);
}

int64_t tensor_cols(const Tensor *t) { return t->shape[t->ndim - 1]; }
int64_t tensor_rows(const Tensor *t) { return t->n / tensor_cols(t); }

void tensor_zero_grad(Tensor *t) {
    if (t && t->grad) memset(t->grad, 0, (size_t)t->n * sizeof(float));
}

// ---- frozen weights -----------------------------------------------------------------------

void weight_free(Weight *w) {
    if (!w) return;
    if (w->owns_data && w->type == WT_NF4) nf4_free(w->data);
    if (w->owns_data) free(w->data);
    w->data = NULL;
    w->owns_data = 0;
}

void weight_row_f32(const Weight *w, int64_t r, float *out) {
    if (r < 0 || r >= w->rows) die_internal("weight_row_f32: row %lld of %lld", (long long)r,
                                            (long long)w->rows);
    switch (w->type) {
    case WT_F32: memcpy(out, (const float *)w->data + r * w->cols, (size_t)w->cols * sizeof(float)); break;
    case WT_BF16: {
        const uint16_t *src = (const uint16_t *)w->data + r * w->cols;
        for (int64_t c = 0; c < w->cols; c++) out[c] = bf16_to_f32(src[c]);
        break;
    }
    case WT_NF4: nf4_dequant_rows(w->data, r, 1, out); break;
    case WT_GGQ: ggq_dequant_rows(w->data, r, 1, out); break;
    default: die_internal("weight %s: unknown type %d", w->name ? w->name : "", (int)w->type);
    }
}

size_t weight_bytes(const Weight *w) {
    switch (w->type) {
    case WT_F32: return (size_t)(w->rows * w->cols) * sizeof(float);
    case WT_BF16: return (size_t)(w->rows * w->cols) * sizeof(uint16_t);
    case WT_NF4: return nf4_bytes(w->data) + sizeof(Nf4Matrix);
    case WT_GGQ: return ggq_bytes(w->data) + sizeof(GgqMatrix);
    default: return 0;
    }
}

const char *weight_type_name(WeightType t) {
    switch (t) {
    case WT_F32: return "f32";
    case WT_BF16: return "bf16";
    case WT_NF4: return "nf4";
    case WT_GGQ: return "ggml";
    default: return "?";
    }
}

// ---- tape ---------------------------------------------------------------------------------

Tape *tape_new(Err *e) {
    Tape *t = xcalloc(1, sizeof(Tape), "tape", e);
    if (!t) return NULL;
    t->recording = 1;
    t->root = t;
    rng_seed(&t->rng, 1234);
    return t;
}

void tape_free(Tape *t) {
    if (!t) return;
    tape_free(t->sub);
    if (t->root == t) profile_free(t->prof);
    for (int i = 0; i < t->nblocks; i++) free(t->blocks[i].mem);
    free(t->blocks);
    for (int i = 0; i < SCR_COUNT; i++) free(t->scratch[i]);
    free(t);
}

void tape_reset(Tape *t) {
    for (int i = 0; i < t->nblocks; i++) t->blocks[i].used = 0;
    t->cur = 0;
    t->last = NULL;
    t->npool = 0;
}

void tape_set_recording(Tape *t, int on) { t->recording = on ? 1 : 0; }
int tape_recording(const Tape *t) { return t->recording; }
void tape_set_training(Tape *t, int on) { t->training = on ? 1 : 0; }
int tape_training(const Tape *t) { return t->training; }
Rng *tape_rng(Tape *t) { return &t->rng; }
void tape_seed(Tape *t, uint64_t seed) { rng_seed(&t->rng, seed); }
size_t tape_arena_bytes(const Tape *t) { return t->high_water + (t->sub ? tape_arena_bytes(t->sub) : 0); }
void tape_set_profile(Tape *t, int on) {
    Tape *r = t->root;
    if (on && !r->prof) {
        r->prof = profile_new();
        if (!r->prof) die_internal("out of memory: profile");
    } else if (!on) {
        profile_free(r->prof);
        r->prof = NULL;
    }
}
int tape_profiling(const Tape *t) { return t->root->prof != NULL; }
void tape_profile_add(Tape *t, const char *section, double seconds) {
    if (t->root->prof) profile_section_add(t->root->prof, section, seconds);
}
void tape_profile_print(const Tape *t, FILE *f) {
    if (t->root->prof) profile_print(t->root->prof, f);
}
double tape_profile_now(void) { return prof_now(); }
void tape_profile_pause(Tape *t, int paused) {
    if (t->root->prof) profile_pause(t->root->prof, paused);
}
double tape_prof_begin(Tape *t, const char *op) {
    return t->root->prof ? profile_op_begin(t->root->prof, op) : 0.0;
}
void tape_prof_end(Tape *t, double t0) {
    if (t->root->prof) profile_op_end(t->root->prof, t0);
}
void tape_set_checkpointing(Tape *t, int on) { t->checkpointing = on ? 1 : 0; }
int tape_checkpointing(const Tape *t) { return t->checkpointing; }
int tape_recomputing(const Tape *t) { return t->recomputing; }
void tape_set_recompute_cache(Tape *t, size_t bytes) { t->root->recompute_cache = bytes; }
size_t tape_recompute_cache(const Tape *t) { return t->root->recompute_cache; }
void tape_set_gemm(Tape *t, const GemmKernel *g) { t->root->gemm = gemm_kernel_usable(g) ? g : NULL; }
const GemmKernel *tape_gemm(const Tape *t) { return t->root->gemm; }
int tape_compute_bf16(const Tape *t) { return gemm_kernel_bf16(t->root->gemm); }

static void add_block(Tape *t, size_t min_bytes) {
    size_t total = 0;
    for (int i = 0; i < t->nblocks; i++) total += t->blocks[i].cap;
    size_t cap = ARENA_MIN_BLOCK;
    if (cap < total) cap = total;
    if (cap < min_bytes) cap = min_bytes;
    if (t->nblocks == t->cap_blocks) {
        int nc = t->cap_blocks ? 2 * t->cap_blocks : 8;
        Block *nb = realloc(t->blocks, (size_t)nc * sizeof(Block));
        if (!nb) die_internal("out of memory growing the tape");
        t->blocks = nb;
        t->cap_blocks = nc;
    }
    char *mem = xmalloc_aligned(cap, "tape arena", NULL);
    if (!mem) die_internal("out of memory: tape arena block of %.1f MiB", cap / 1048576.0);
    t->blocks[t->nblocks++] = (Block){mem, cap, 0};
}

void *tape_alloc(Tape *t, size_t bytes) {
    size_t sz = (bytes + 63) & ~(size_t)63;
    if (sz == 0) sz = 64;
    while (t->cur < t->nblocks && t->blocks[t->cur].used + sz > t->blocks[t->cur].cap) t->cur++;
    if (t->cur == t->nblocks) add_block(t, sz);
    Block *b = &t->blocks[t->cur];
    void *p = b->mem + b->used;
    b->used += sz;
    size_t pos = b->used;
    for (int i = 0; i < t->cur; i++) pos += t->blocks[i].cap;
    if (pos > t->high_water) t->high_water = pos;
    return p;
}

static Tensor *tape_header(Tape *t, int ndim, const int64_t *shape) {
    if (ndim < 1 || ndim > AG_MAXDIM) die_internal("tape tensor with %d dimensions", ndim);
    Tensor *x = tape_alloc(t, sizeof(Tensor));
    memset(x, 0, sizeof *x);
    x->ndim = ndim;
    for (int i = 0; i < ndim; i++) x->shape[i] = shape[i];
    x->n = shape_numel(ndim, shape);
    return x;
}

Tensor *tape_tensor(Tape *t, int ndim, const int64_t *shape) {
    Tensor *x = tape_header(t, ndim, shape);
    x->data = tape_alloc(t, (size_t)x->n * sizeof(float));
    return x;
}

Tensor *tape_view(Tape *t, float *data, int ndim, const int64_t *shape) {
    Tensor *x = tape_header(t, ndim, shape);
    x->data = data;
    return x;
}

// ---- recording (internal.h) -----------------------------------------------------------------

Tensor *tape_result(Tape *t, int ndim, const int64_t *shape, int any_input_rg) {
    Tensor *x = tape_tensor(t, ndim, shape);
    x->requires_grad = (any_input_rg && t->recording) ? 1 : 0;
    return x;
}

Node *tape_record(Tape *t, BackwardFn backward, Tensor *out) {
    if (!t->recording || !out->requires_grad) return NULL;
    Node *n = tape_alloc(t, sizeof(Node));
    memset(n, 0, sizeof *n);
    n->backward = backward;
    n->out = out;
    if (t->root->prof) n->op = profile_current(t->root->prof);
    n->prev = t->last;
    t->last = n;
    return n;
}

// A recycled gradient buffer of exactly n floats, or NULL.
static float *pool_take(Tape *t, int64_t n) {
    for (int i = t->npool - 1; i >= 0; i--)
        if (t->pool_n[i] == n) {
            float *p = t->pool[i];
            t->pool[i] = t->pool[t->npool - 1];
            t->pool_n[i] = t->pool_n[t->npool - 1];
            t->npool--;
            return p;
        }
    return NULL;
}

// x's gradient buffer (arena memory of t) is dead: offer it for reuse.
static void pool_put(Tape *t, Tensor *x) {
    if (!x->grad || x->is_param) return;
    if (t->npool == GRAD_POOL) {  // forget the oldest
        memmove(t->pool, t->pool + 1, (GRAD_POOL - 1) * sizeof t->pool[0]);
        memmove(t->pool_n, t->pool_n + 1, (GRAD_POOL - 1) * sizeof t->pool_n[0]);
        t->npool--;
    }
    t->pool[t->npool] = x->grad;
    t->pool_n[t->npool++] = x->n;
    x->grad = NULL;
}

float *tape_grad(Tape *t, Tensor *x) {
    if (!x || !x->requires_grad) return NULL;
    if (!x->grad) {
        size_t bytes = (size_t)x->n * sizeof(float);
        if (x->is_param) {
            x->grad = xmalloc_aligned(bytes, "gradient", NULL);
            if (!x->grad) die_internal("out of memory: gradient of %s", x->name ? x->name : "?");
        } else if (!(x->grad = pool_take(t, x->n))) {
            x->grad = tape_alloc(t, bytes);
        }
        memset(x->grad, 0, bytes);
    }
    return x->grad;
}

float *tape_scratch(Tape *t, int slot, size_t nfloats) {
    t = t->root;
    if (nfloats > t->scratch_n[slot]) {
        free(t->scratch[slot]);
        t->scratch[slot] = xmalloc_aligned(nfloats * sizeof(float), "tape scratch", NULL);
        if (!t->scratch[slot])
            die_internal("out of memory: tape scratch of %.1f MiB", nfloats * 4 / 1048576.0);
        t->scratch_n[slot] = nfloats;
    }
    return t->scratch[slot];
}

// ---- backward -----------------------------------------------------------------------------

static void zero_stale_grad(Tensor *x) {
    if (x && x->grad && !x->is_param) memset(x->grad, 0, (size_t)x->n * sizeof(float));
}

static void checkpoint_node_backward(Tape *t, const Node *n);

// n's backward, timed under its op name when profiling (a checkpoint node is not: the ops it
// re-runs and back-propagates through are timed themselves)
static void run_backward(Tape *t, const Node *n) {
    Profile *p = t->root->prof;
    if (!p || n->backward == checkpoint_node_backward) {
        n->backward(t, n);
        return;
    }
    double t0 = prof_now();
    n->backward(t, n);
    profile_backward_add(p, n->op, prof_now() - t0);
}

void tape_backward(Tape *t, Tensor *loss) {
    if (loss->n != 1) die_internal("tape_backward: loss has %lld elements, not 1", (long long)loss->n);
    if (!loss->requires_grad) return;  // nothing recorded leads to it
    // Intermediate gradients left by an earlier tape_backward over the same nodes restart at
    // zero, so calling backward twice accumulates twice into parameters only.
    for (Node *n = t->last; n; n = n->prev) {
        zero_stale_grad(n->out);
        for (int i = 0; i < 3; i++) zero_stale_grad(n->in[i]);
    }
    tape_grad(t, loss)[0] += 1.0f;
    Profile *p = t->root->prof;
    if (p) profile_set_backward(p, 1);
    for (Node *n = t->last; n; n = n->prev)
        if (n->out->grad) run_backward(t, n);
    if (p) profile_set_backward(p, 0);
}

// ---- gradient checkpointing -------------------------------------------------------------------

// What a checkpoint node keeps for its backward (arena memory of the recording tape).
typedef struct {
    CheckpointFn fn;
    void *ctx;
    Rng rng;        // the RNG state fn started from (its dropout masks)
    int training;
} Checkpoint;

// t's sub-tape, rewound, in t's modes with the given recording.
static Tape *sub_tape(Tape *t, int recording) {
    if (!t->sub) {
        t->sub = tape_new(NULL);
        if (!t->sub) die_internal("out of memory: sub-tape");
        t->sub->root = t->root;
    }
    Tape *s = t->sub;
    tape_reset(s);
    s->recording = recording;
    s->training = t->training;
    s->checkpointing = t->checkpointing;
    s->recomputing = 0;
    return s;
}

// Re-runs fn(x) on the sub-tape, recording, and back-propagates out's gradient through it.
static void checkpoint_node_backward(Tape *t, const Node *n) {
    const Checkpoint *c = n->saved[0];
    Tensor *x = n->in[0];
    Tape *s = sub_tape(t, 1);
    s->training = c->training;
    s->recomputing = 1;
    s->rng = c->rng;
    tape_grad(t, x);  // x's gradient lives on t (none when x is frozen)
    Tensor *y = c->fn(s, x, c->ctx);
    if (y->n != n->out->n) die_internal("op_checkpoint: the re-run gave %lld values, not %lld", (long long)y->n,
                                        (long long)n->out->n);
    if (y->requires_grad) {
        y->grad = n->out->grad;
        for (Node *m = s->last; m; m = m->prev) {
            if (m->out->grad) run_backward(s, m);
            // every consumer of m->out was recorded after m and has run: its gradient is dead
            if (m->out != y && m->out != x) pool_put(s, m->out);
        }
    }
    tape_reset(s);
    pool_put(t, n->out);
}

Tensor *op_checkpoint(Tape *t, Tensor *x, CheckpointFn fn, void *ctx, int has_params) {
    Tape *s = sub_tape(t, 0);
    Rng rng0 = t->rng;
    s->rng = rng0;
    Tensor *y = fn(s, x, ctx);
    t->rng = s->rng;  // t's stream advances as if fn had run on t
    Tensor *out = tape_result(t, y->ndim, y->shape, x->requires_grad || has_params);
    memcpy(out->data, y->data, (size_t)y->n * sizeof(float));
    tape_reset(s);
    Node *n = tape_record(t, checkpoint_node_backward, out);
    if (n) {
        Checkpoint *c = tape_alloc(t, sizeof *c);
        *c = (Checkpoint){fn, ctx, rng0, t->training};
        n->in[0] = x;
        n->saved[0] = c;
    }
    return out;
}
