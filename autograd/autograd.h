// autograd — fp32 tensors, a tape, reverse-mode backward, and the ops a Llama needs.
//
// A Tape is both the activation arena and the record of operations. Each op_* computes its
// forward result into memory taken from the tape's arena and, when recording is on and any
// input needs a gradient, records a node with its backward. tape_backward() walks the nodes
// in reverse and accumulates gradients (`grad +=`) into every tensor that needs one.
// tape_reset() forgets the nodes and recycles the arena (its memory is kept for the next
// step, so a training loop allocates nothing after its first step).
//
// Tensors are row-major; the last dimension is the feature dimension and ops that do not
// care about the rest treat a tensor as (N, last). Frozen tensors (requires_grad == 0)
// never get a gradient buffer and no backward work is done for them.
//
// Frozen base weights are not Tensors but Weights: a matrix (rows=OC, cols=C) in some
// storage type, used as y = x Wᵀ. Only an input gradient flows through a Weight.
#pragma once
#include <stdio.h>
#include <stdint.h>
#include <stddef.h>
#include "util/util.h"

#define AG_MAXDIM 4

typedef struct Tensor {
    float *data;              // (n) values
    float *grad;              // (n) gradient, NULL unless requires_grad (allocated lazily)
    int64_t shape[AG_MAXDIM];
    int ndim;
    int64_t n;                // product of shape
    int requires_grad;
    int is_param;             // owned by the caller (tensor_new_param), survives tape_reset
    const char *name;         // optional, for messages
} Tensor;

// A parameter (e.g. LoRA A/B): data zeroed, grad allocated and zeroed when requires_grad.
// Returns NULL with a message on out-of-memory.
Tensor *tensor_new_param(int ndim, const int64_t *shape, int requires_grad, const char *name, Err *e);
// A frozen tensor that wraps memory owned elsewhere (e.g. norm weights in a loaded model).
Tensor *tensor_wrap(float *data, int ndim, const int64_t *shape, const char *name, Err *e);
void tensor_free(Tensor *t);  // only for tensor_new_param / tensor_wrap tensors
int64_t tensor_rows(const Tensor *t);  // n / last dim
int64_t tensor_cols(const Tensor *t);  // last dim
void tensor_zero_grad(Tensor *t);

// ---- frozen weights -------------------------------------------------------------------
typedef enum {
    WT_F32 = 0,   // data: float[rows*cols]
    WT_BF16 = 1,  // data: uint16_t[rows*cols] (bf16)
    WT_NF4 = 2,   // data: Nf4Matrix * (quant/quant.h); owns_data: nf4_free + free in weight_free
    WT_GGQ = 3,   // data: GgqMatrix * (quant/quant.h), ggml blocks (Q8_0, Q4_K, ...) of a GGUF
                  // base; owns_data: one allocation holding the struct and the blocks
} WeightType;

typedef struct {
    WeightType type;
    int64_t rows, cols;  // (OC, C): y = x Wᵀ
    void *data;
    int owns_data;       // free data in weight_free
    const char *name;
} Weight;

void weight_free(Weight *w);
// Copy row r of W into out (cols floats), converting from the storage type (NF4: the
// dequantized row).
void weight_row_f32(const Weight *w, int64_t r, float *out);
// Bytes of storage behind w (NF4: codes + absmax codes + scales).
size_t weight_bytes(const Weight *w);
// "f32", "bf16", "nf4"
const char *weight_type_name(WeightType t);

// ---- tape ---------------------------------------------------------------------------------
typedef struct Tape Tape;

Tape *tape_new(Err *e);
void tape_free(Tape *t);
void tape_reset(Tape *t);              // drop nodes and intermediates; keep memory
void tape_set_recording(Tape *t, int on);  // off: ops compute forward only (eval, decode)
int tape_recording(const Tape *t);
void tape_set_training(Tape *t, int on);   // on: dropout active (default off)
int tape_training(const Tape *t);
Rng *tape_rng(Tape *t);                    // dropout masks draw from here
void tape_seed(Tape *t, uint64_t seed);
size_t tape_arena_bytes(const Tape *t);    // high-water mark of the arena (+ its sub-tapes')
// Backward from a scalar (n == 1) tensor: seeds dloss = 1 and accumulates into every
// tensor with requires_grad (parameters accumulate across calls until tensor_zero_grad).
void tape_backward(Tape *t, Tensor *loss);

// ---- profiling (`lora train --profile`) -----------------------------------------------------
// Off by default (each op then pays one pointer test). On: the wall time of every op's forward,
// of its re-run inside a checkpoint's backward ("recompute") and of its backward is
// accumulated per op type on t (and its sub-tapes) until tape_set_profile(t, 0) or tape_free;
// sections the caller times itself (optimizer, data, eval) are added with tape_profile_add.
void tape_set_profile(Tape *t, int on);
int tape_profiling(const Tape *t);
void tape_profile_add(Tape *t, const char *section, double seconds);  // section: static string
void tape_profile_print(const Tape *t, FILE *f);  // the table, largest total first
void tape_profile_pause(Tape *t, int paused);     // 1: ops not timed (e.g. inside a section)
double tape_profile_now(void);                     // monotonic seconds, for the sections

// ---- gradient checkpointing: sub-tapes ----------------------------------------------------
// Every tape owns (lazily) one sub-tape: a second arena and node list, rewound and reused
// for each checkpointed call, sharing the parent's scratch buffers. Sub-tapes nest.
//
// A function of one tensor computed by ops on tape t (e.g. one transformer block):
typedef Tensor *(*CheckpointFn)(Tape *t, Tensor *x, void *ctx);
// out = fn(x), keeping only out: fn runs on the sub-tape with recording off, out is copied
// onto t and the sub-tape is rewound, so fn's intermediates never outlive the call. When t
// records and x or fn's parameters need gradients (has_params: fn uses tensors other than x
// that require a gradient, e.g. LoRA matrices), ONE node is recorded. Its backward re-runs
// fn(x) on the sub-tape with recording on from the RNG state of the forward (the same dropout
// masks: the gradients equal those of running fn directly on t, bit for bit), propagates
// out's gradient through it into x and the parameters, and rewinds the sub-tape. Inside the
// sub-tape an intermediate's gradient buffer is recycled as soon as the node that produced
// it has run its backward; likewise out's gradient after the checkpoint's backward (it must
// not be read afterwards). ctx must stay valid until backward (tape_alloc it on t); fn must
// not keep pointers into the sub-tape, and apart from x the only tensors it uses that need a
// gradient must be parameters (tensor_new_param: their gradients live outside any arena).
Tensor *op_checkpoint(Tape *t, Tensor *x, CheckpointFn fn, void *ctx, int has_params);
// Whether model code runs its blocks under op_checkpoint while recording (default off; with
// recording off blocks always run on the sub-tape).
void tape_set_checkpointing(Tape *t, int on);
int tape_checkpointing(const Tape *t);
// 1 on the sub-tape while op_checkpoint re-runs fn for its backward. fn's output VALUES are
// not read then (only its shape, and the gradient that flows back through it), so fn may skip
// work that feeds nothing but them (op_lora_linear_nobase).
int tape_recomputing(const Tape *t);
// Bytes of the tape's arena that model code may spend per step keeping the outputs of the
// frozen matmuls of checkpointed blocks (op_lora_linear_cache), so that their backward re-run
// skips those matmuls. 0 (default): everything is recomputed.
void tape_set_recompute_cache(Tape *t, size_t bytes);
size_t tape_recompute_cache(const Tape *t);

// The GEMM of the big frozen-weight matmuls (op_lora_linear's W in forward and input
// gradient, op_linear_cross_entropy's lm_head), for x with at least 16 rows (decoding keeps
// its fp32 GEMVs): NULL (default) = OpenBLAS sgemm over dequantized tiles; else one of
// quant.h's tiled GEMM variants (kernel_choice() picks the fastest for a precision), which
// also fuses the LoRA term into the frozen matmul's pass. A variant this CPU cannot run
// leaves NULL. With a bf16 variant (tape_compute_bf16: bf16 operands, fp32 accumulation)
// op_attention also runs its products (Q Kᵀ, P V and those of its backward) in bf16 with
// fp32 accumulation and an fp32 softmax, at any Tq, where the build has those kernels.
// LoRA A/B and norms stay fp32.
typedef struct GemmKernel GemmKernel;
void tape_set_gemm(Tape *t, const GemmKernel *g);
const GemmKernel *tape_gemm(const Tape *t);
int tape_compute_bf16(const Tape *t);

// Arena allocation, valid until tape_reset. Aborts via die_internal only if the machine is
// truly out of memory (a user-facing check of sizes happens before training starts).
void *tape_alloc(Tape *t, size_t bytes);   // 64-byte aligned, uninitialised
Tensor *tape_tensor(Tape *t, int ndim, const int64_t *shape);  // uninitialised intermediate
// A tensor whose data points at memory owned elsewhere (e.g. a KV cache), no grad.
Tensor *tape_view(Tape *t, float *data, int ndim, const int64_t *shape);

// Matmuls against a frozen Weight (op_linear uses them): every storage type is converted to
// fp32 in tiles of at most ~16 MiB in tape scratch, never as a whole matrix. For a few rows of
// x (decoding: N <= 8 for NF4, N == 1 for BF16) fused dequantize-and-dot kernels stream the
// weights once instead.
// x (N,C), w (OC,C) -> out (N,OC)        out = x wᵀ
void weight_matmul_xwt(Tape *t, const Weight *w, const float *x, int64_t N, float *out);
// dout (N,OC), w (OC,C) -> dx (N,C) +=   dx += dout w
void weight_matmul_dyw(Tape *t, const Weight *w, const float *dout, int64_t N, float *dx);

// The exp the kernels use (softmax, sigmoid, cross-entropy), exposed so that tests can measure
// it: x (n) -> y (n), y = exp(x) (AVX-512 polynomial within 2 ulp of the exact value, else
// expf; -inf and x < -104 give 0, x > 89 gives inf, NaN stays NaN). y may equal x.
void vec_exp(float *y, const float *x, int64_t n);

// ---- ops -------------------------------------------------------------------------------
// Each returns a new intermediate tensor on the tape. Shapes are checked; a mismatch is an
// internal error (die_internal) because the model code builds every shape.

// table (V,C), ids (N) in [0,V) -> out (N,C)
Tensor *op_embedding(Tape *t, Tensor *table, const int *ids, int64_t N);
// The same from a frozen table in any storage type (no gradient flows to it).
Tensor *op_embedding_weight(Tape *t, const Weight *table, const int *ids, int64_t N);

// x (N,C), w (OC,C) frozen -> out (N,OC)        out = x wᵀ
Tensor *op_linear(Tape *t, Tensor *x, const Weight *w);

// x (N,C), w (OC,C) frozen, A (r,C), B (OC,r) -> out (N,OC)
//   out = x wᵀ + scale · (dropout_p(x) Aᵀ) Bᵀ
// A == NULL (and B == NULL) gives op_linear. Dropout is applied only when the tape is in
// training mode and p > 0 (inverted dropout: kept values scaled by 1/(1-p)).
Tensor *op_lora_linear(Tape *t, Tensor *x, const Weight *w, Tensor *A, Tensor *B,
                       float scale, float dropout_p);
// op_lora_linear whose forward skips the matmuls into out (out is zeros; h = drop(x) Aᵀ is
// still computed and saved), the backward is op_lora_linear's (which never reads out). For an output whose
// values nothing will read: the last projection of a block re-run by a checkpoint's backward
// (tape_recomputing), where only the gradient flows back through it.
Tensor *op_lora_linear_nobase(Tape *t, Tensor *x, const Weight *w, Tensor *A, Tensor *B,
                              float scale, float dropout_p);
// op_lora_linear for a checkpointed block that keeps its matmul outputs for the backward re-run
// (tape_recompute_cache). reuse 0 (the forward): computes as op_lora_linear and copies out
// (N,OC) into cache_out and h = drop(x) Aᵀ (N,r) into cache_h (when A). reuse 1 (the re-run,
// same x, w, A, B, dropout RNG state): out and h come from the cache, no matmul; the dropout
// mask is drawn again. Gradients are those of op_lora_linear, bit for bit.
Tensor *op_lora_linear_cache(Tape *t, Tensor *x, const Weight *w, Tensor *A, Tensor *B, float scale,
                             float dropout_p, float *cache_out, float *cache_h, int reuse);

// x (N,C), w (C) -> out (N,C)      out = x / sqrt(mean(x²) + eps) · w
Tensor *op_rmsnorm(Tape *t, Tensor *x, Tensor *w, float eps);

// Rotary position embedding.
typedef enum {
    ROPE_HALF = 0,      // HF rotate-half: pairs (i, i + D/2)
    ROPE_ADJACENT = 1,  // GGUF / Meta: pairs (2i, 2i+1)
} RopeStyle;
// x (B,T,H*D) -> out (B,T,H*D); token t of every batch row has position pos0 + t;
// inv_freq (D/2): angle of pair i at position p is p · inv_freq[i].
Tensor *op_rope(Tape *t, Tensor *x, int64_t B, int64_t T, int H, int D, int pos0,
                const float *inv_freq, RopeStyle style);

// Causal grouped-query attention, softmax(q kᵀ / sqrt(D)) v.
// q (B,Tq,H*D), k (B,Tk,KVH*D), v (B,Tk,KVH*D) -> out (B,Tq,H*D), Tk >= Tq.
// Query i sits at position Tk - Tq + i and sees keys j <= that position (and, when
// window > 0, only keys with position > query position - window). Head h uses KV head
// h / (H / KVH).
Tensor *op_attention(Tape *t, Tensor *q, Tensor *k, Tensor *v, int64_t B, int64_t Tq,
                     int64_t Tk, int H, int KVH, int D, int window);
// 1 when op_attention has its bf16 kernels (built with AVX-512 BF16): with a bf16 tape_gemm
// it then runs them; else it stays fp32 whatever the tape's GEMM.
int op_attention_has_bf16(void);

// gate (N,F), up (N,F) -> out (N,F)     out = silu(gate) · up
Tensor *op_swiglu(Tape *t, Tensor *gate, Tensor *up);

// gate (N,F), up (N,F) -> out (N,F)     out = gelu_tanh(gate) · up   (GeGLU, Gemma)
//   gelu_tanh(x) = x/2 · (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))   (gelu_pytorch_tanh)
Tensor *op_geglu(Tape *t, Tensor *gate, Tensor *up);

// x (N,C), b (C) -> out (N,C)            out = x + b (broadcast over rows; b may be frozen)
Tensor *op_add_bias(Tape *t, Tensor *x, Tensor *b);

// a (N,C), b (N,C) -> out (N,C)         out = a + b
Tensor *op_add(Tape *t, Tensor *a, Tensor *b);

// logits (N,V), targets (N) (target < 0 = ignored) -> out (1)
//   out = Σ_{kept i} -log softmax(logits_i)[target_i] / norm
// norm is the caller's normaliser (e.g. the number of kept targets in the whole
// accumulated batch), so micro-batches sum to a true mean.
Tensor *op_cross_entropy(Tape *t, Tensor *logits, const int *targets, float norm);

// x (N,C), w (V,C) frozen, targets (N) -> out (1)
//   out = op_cross_entropy(x wᵀ, targets, norm), without ever holding the (N,V) logits:
// only rows with a target are computed, in chunks of rows whose logits over the whole
// vocabulary take at most ~32 MiB (tape scratch). When recorded, the forward also computes
// the gradient of those rows, dx = (softmax - onehot)/norm · w (kept on the tape, K x C
// floats), and the backward only scales it by dloss: two GEMMs over the vocabulary in all.
// Equal to the unfused ops up to fp32 rounding.
Tensor *op_linear_cross_entropy(Tape *t, Tensor *x, const Weight *w, const int *targets, float norm);
