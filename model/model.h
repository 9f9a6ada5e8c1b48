// model — Llama-family models: config, weights from HF safetensors / GGUF / llama2.c files,
// LoRA adapters attached to any of q,k,v,o,gate,up,down, a KV cache, and ONE forward pass
// used two ways: recorded on a tape for training, or with a KV cache and recording off for
// generation.
//
// Internally q/k weight rows are always in the HF rotate-half RoPE convention: files in the
// adjacent-pairs convention (GGUF llama, llama2.c) are permuted at load. A LoRA adapter in
// memory is therefore always in the HF (PEFT) convention.
//
// Also here: readers and writers of the tensor file formats (safetensors, GGUF).
#pragma once
#include <stdint.h>
#include "util/util.h"
#include "autograd/autograd.h"

// ---- config -------------------------------------------------------------------------------
// The Llama-family variants (config.json architectures/model_type, GGUF general.architecture).
// A zero-filled config beyond the shape fields is a plain Llama.
typedef enum { ARCH_LLAMA = 0, ARCH_MISTRAL, ARCH_QWEN2, ARCH_PHI3, ARCH_GEMMA } ModelArch;
typedef enum { ACT_SILU = 0, ACT_GELU_TANH = 1 } Activation;  // SwiGLU / GeGLU (gelu_pytorch_tanh)
typedef enum { ROPE_SCALING_NONE = 0, ROPE_SCALING_LINEAR, ROPE_SCALING_LLAMA3 } RopeScaling;

typedef struct {
    char arch[32];            // "llama", "mistral", "qwen2", "phi3", "gemma"
    int dim;                  // hidden_size C
    int hidden_dim;           // intermediate_size F
    int n_layers;
    int n_heads;              // H
    int n_kv_heads;           // KVH
    int head_dim;             // D (dim / n_heads unless the config says otherwise)
    int vocab_size;           // V
    int max_seq_len;          // max_position_embeddings
    float norm_eps;           // rms_norm_eps
    float rope_theta;
    int tied_embeddings;      // lm_head shares the embedding table
    int bos_id, eos_id;       // -1 when the file does not say
    RopeStyle file_rope;      // RoPE convention of the q/k rows in the source file
    // architecture variants (all 0 for Llama)
    ModelArch arch_id;
    RopeScaling rope_scaling; // HF rope_scaling: linear (inv_freq / factor) or llama3
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_max_pos;    // original_max_position_embeddings (llama3)
    int sliding_window;       // > 0: a query sees only keys at positions > its own - window
    int qkv_bias;             // q, k, v projections have biases (Qwen2)
    float norm_offset;        // HF norm weights w act as (norm_offset + w): 1 for Gemma. The
                              // norm tensors in memory (and in GGUF files) hold the effective
                              // multiplier: HF loads add the offset, HF saves subtract it
    float embed_scale;        // > 0: embeddings are multiplied by it (Gemma: sqrt(dim) as fp32)
    Activation act;           // gate activation of the MLP
    int fused_proj;           // Phi-3: files hold qkv_proj (q;k;v rows) and gate_up_proj (gate;up)
} ModelConfig;
// "llama", ...; the HF class name ("LlamaForCausalLM", ...).
const char *model_arch_name(ModelArch a);
const char *model_arch_hf_class(ModelArch a);

// ---- weights ------------------------------------------------------------------------------
typedef enum { LT_Q, LT_K, LT_V, LT_O, LT_GATE, LT_UP, LT_DOWN, LT_COUNT } LoraTarget;
// PEFT module names, indexed by LoraTarget: "q_proj", ..., "down_proj".
const char *lora_target_name(LoraTarget t);

typedef struct {
    Tensor *attn_norm;        // (C)
    Tensor *ffn_norm;         // (C)
    // q (H*D,C) k (KVH*D,C) v (KVH*D,C) o (C,H*D) gate (F,C) up (F,C) down (C,F)
    Weight w[LT_COUNT];
    Tensor *bias[LT_COUNT];   // frozen (out) biases, NULL where none (Qwen2: q, k, v)
} Layer;

// How the frozen base is stored in memory (`--quant`).
typedef enum {
    QUANT_NONE = 0,           // weights as fp32
    QUANT_NF4 = 1,            // QLoRA: q,k,v,o,gate,up,down NF4 with double quantization
                              // (quant/quant.h); embeddings and lm_head bf16; norms fp32
} QuantType;
// "none" | "nf4" -> *out; an unknown name is an error naming the accepted ones.
int quant_parse(const char *s, QuantType *out, Err *e);
const char *quant_name(QuantType q);

typedef struct {
    ModelConfig cfg;
    QuantType quant;          // how the weights were stored at load
    Tensor *tok_emb;          // (V,C) frozen fp32 table; NULL when stored as bf16 (QUANT_NF4)
    Weight emb;               // (V,C) the same table as a Weight (WT_F32 over tok_emb's data,
                              // or WT_BF16): read the embeddings through this one
    Layer *layers;            // (n_layers)
    Tensor *final_norm;       // (C)
    Weight lm_head;           // (V,C); shares the embedding's data when tied
    float *inv_freq;          // (D/2) rotary frequencies
    char source[1024];        // the path it was loaded from
} Model;

// Loads a model from: a HF directory (config.json + model.safetensors), a .gguf file, or a
// llama2.c .bin checkpoint. F16/BF16 tensors are converted to fp32.
Model *model_load(const char *path, Err *e);  // = model_load_ex with the default options
typedef struct {
    QuantType quant;          // QUANT_NONE (default) or QUANT_NF4: each linear weight is
                              // quantized right after it is read and its fp32 copy freed, so
                              // loading needs about one fp32 tensor beyond the NF4 model
    const char *quant_cache;  // NULL/"" or, with QUANT_NF4, a file holding the quantized model:
                              // read instead of the source when it was made from the same
                              // source files (paths, sizes, modification times), else written
} ModelLoadOptions;
void model_load_options_default(ModelLoadOptions *o);
Model *model_load_ex(const char *path, const ModelLoadOptions *o, Err *e);
// The commands' `--quant NAME`: quant "nf4" | "none" | NULL (= none).
Model *model_load_quant(const char *path, const char *quant, Err *e);
void model_free(Model *m);
// Writes m as a HF directory (config.json + model.safetensors in F32), atomically per file.
int model_save_hf(const Model *m, const char *dir, Err *e);
// Writes a random-weight Llama with config cfg as a HF directory (weights ~ N(0, std²),
// norms 1). Used by the built-in demo and tests. The weights are std · rng_normal draws of
// one Rng seeded with seed, in this order: embeddings, each layer's q k v o gate up down
// (LoraTarget order, row-major), the classifier when untied (`lora init-model --out F.gguf`
// draws the same).
int model_write_random(const ModelConfig *cfg, uint64_t seed, float std, const char *dir, Err *e);
// The (rows, cols) of a layer's base weight t under config c (q (H·D, dim), k/v (KVH·D, dim),
// o (dim, H·D), gate/up (hidden, dim), down (dim, hidden)).
void model_weight_dims(const ModelConfig *c, LoraTarget t, int64_t *rows, int64_t *cols);
// Fills cfg with defaults for a llama of the given shape (eps 1e-5, theta 10000, ...).
void model_config_default(ModelConfig *cfg, int dim, int hidden_dim, int n_layers, int n_heads,
                          int n_kv_heads, int vocab_size, int max_seq_len);

// ---- LoRA ---------------------------------------------------------------------------------
typedef struct {
    int rank;
    float alpha;
    float dropout;
    int use_rslora;
    float scale;              // alpha / rank, or alpha / sqrt(rank) with rsLoRA
    unsigned targets;         // bitmask of (1u << LoraTarget)
    int n_layers;
    // [layer * LT_COUNT + target], NULL where not targeted. A (r,in), B (out,r).
    Tensor **A, **B;
    char base_model[1024];    // base_model_name_or_path
    // Fused models (Phi-3), whose PEFT modules are qkv_proj and gate_up_proj: then A[q], A[k],
    // A[v] of a layer are ONE tensor (qkv_proj's A) and B[q], B[k], B[v] views of consecutive
    // rows of fused_B[l * 2] (qkv_proj's B); gate/up likewise with fused_B[l * 2 + 1]. The
    // targets mask holds all three (both) bits. NULL for other models.
    Tensor **fused_B;
} LoraAdapter;

// New adapter: A Kaiming-uniform (bound 1/sqrt(in), as PEFT), B zero.
LoraAdapter *lora_new(const Model *m, int rank, float alpha, unsigned targets, float dropout,
                      int use_rslora, uint64_t seed, Err *e);
void lora_free(LoraAdapter *a);
// An adapter for m with no targets yet (rank and base_model set; alpha, scale etc. are the
// caller's), and zero A, B for target t of layer l (for fused models the whole fused group).
LoraAdapter *lora_alloc(const Model *m, int rank, Err *e);
int lora_alloc_target(LoraAdapter *a, const Model *m, int l, LoraTarget t, Err *e);
// Fused models (Phi-3) take q,k,v and gate,up together (PEFT's qkv_proj, gate_up_proj):
// an error naming the fused module when targets holds part of a group.
int lora_check_fused(const Model *m, unsigned targets, Err *e);
// The A (ab 'A') or B ('B') of PEFT module `module` ("q_proj", ..., or for fused models
// "qkv_proj" / "gate_up_proj") of layer l; NULL when not targeted.
Tensor *lora_module_tensor(const LoraAdapter *a, int layer, const char *module, char ab);
// Collects the trainable tensors (A and B of every target, layer by layer; each shared or
// fused tensor once). Returns count.
int lora_params(const LoraAdapter *a, Tensor **out, int max);
// "q_proj,v_proj" / "q,k,v,o,gate,up,down" / "all" / "attn" / "mlp" -> bitmask; 0 + Err on
// an unknown name.
unsigned lora_parse_targets(const char *csv, Err *e);
// "q_proj,k_proj" for a mask (buf of at least 128 bytes).
const char *lora_targets_str(unsigned mask, char *buf, size_t n);

// ---- forward ------------------------------------------------------------------------------
typedef struct {
    int max_seq;              // capacity in positions
    int len;                  // positions filled
    int n_layers, kv_dim;     // kv_dim = KVH*D
    float *k, *v;             // (n_layers, max_seq, kv_dim)
} KVCache;
KVCache *kv_new(const ModelConfig *cfg, int max_seq, Err *e);
void kv_free(KVCache *kv);
void kv_reset(KVCache *kv);

// ids (B,T) -> logits (B,T,V), or (B,1,V) for the last position only when last_only.
// Without kv: positions 0..T-1. With kv (B must be 1): positions kv->len.., the new keys and
// values are appended and kv->len grows by T. lora may be NULL. Training-mode dropout and
// recording follow the tape's settings.
Tensor *model_forward(Tape *t, const Model *m, const LoraAdapter *lora, const int *ids,
                      int B, int T, KVCache *kv, int last_only);
// ids, targets (B,T) (target < 0 = ignored) -> scalar Σ CE(kept) / norm. The logits are
// never materialised (op_linear_cross_entropy). With tape_checkpointing(t) each transformer
// block is recorded as one op_checkpoint node (recomputed in backward); with recording off
// (evaluation, generation) blocks always run on the sub-tape, so the arena holds one
// block's intermediates at a time.
Tensor *model_loss(Tape *t, const Model *m, const LoraAdapter *lora, const int *ids,
                   const int *targets, int B, int T, float norm);

// ---- memory plan ----------------------------------------------------------------------------
// What a training step of batch x seq needs, estimated from the shapes (bytes).
typedef struct {
    size_t linear;            // the q..down weights of every layer
    size_t embedding, lm_head, norms;
    size_t adapter, adapter_grads, optimizer;  // LoRA A/B, their gradients, optimizer moments
    size_t act_checkpointed;  // activations + gradients + scratch with gradient checkpointing
    size_t act_full;          // the same without
    long adapter_params;
} MemoryPlan;
// optimizer_moments: fp32 values kept per trainable parameter (AdamW: 2). lora may be NULL.
void model_memory_plan(const Model *m, const LoraAdapter *lora, int optimizer_moments, int batch,
                       int seq, MemoryPlan *p);
// Bytes of the plan: weights, adapter, its gradients, optimizer state and the activations
// (with or without checkpointing).
size_t model_memory_total(const MemoryPlan *p, int checkpointing);
// Checkpointed blocks may keep their frozen-matmul outputs (q, k, v, o, gate, up and the LoRA
// h's) so that their backward re-run skips those matmuls (tape_set_recompute_cache): the
// bytes that a budget of `budget` bytes lets whole blocks keep in a batch x seq step, and in
// *blocks how many blocks that is (the first ones that train).
// What a memory limit (bytes) leaves over the plan for kept outputs: 0 without checkpointing.
size_t model_recompute_budget(const MemoryPlan *p, int checkpointing, size_t limit);
size_t model_recompute_cache_plan(const Model *m, const LoraAdapter *lora, int batch, int seq, size_t budget,
                                  int *blocks);
// Prints the plan (weights by kind and storage type, adapter, optimizer state, activations
// with and without checkpointing, total) as an indented block.
void model_print_memory_plan(FILE *f, const Model *m, const MemoryPlan *p, int batch, int seq,
                             int checkpointing);

// ---- tensor files -------------------------------------------------------------------------
typedef enum { ST_F32, ST_F16, ST_BF16, ST_I32, ST_I64, ST_U8, ST_OTHER } StDtype;

typedef struct {
    char name[256];
    StDtype dtype;
    int ndim;
    int64_t shape[AG_MAXDIM];  // as written (row-major, slowest first)
    int64_t n;                 // element count
    const void *data;          // into the mapped file
    size_t nbytes;
} StTensor;

typedef struct SafeTensors SafeTensors;
SafeTensors *st_open(const char *path, Err *e);   // mmap; validates header and offsets
void st_close(SafeTensors *st);
int st_count(const SafeTensors *st);
const StTensor *st_at(const SafeTensors *st, int i);
const StTensor *st_find(const SafeTensors *st, const char *name);  // NULL if absent
// Copies tensor `name` into out as fp32, checking it has exactly `n` elements and the
// expected shape when shape != NULL. Errors name the file and tensor.
int st_read_f32(const SafeTensors *st, const char *name, float *out, int ndim,
                const int64_t *shape, Err *e);
// __metadata__ value for key (NULL if absent).
const char *st_metadata(const SafeTensors *st, const char *key);
// n values stored as dtype at src (any alignment) -> fp32. F32/F16/BF16/I32/I64/U8;
// returns -1 for ST_OTHER.
int st_convert_f32(StDtype dtype, const void *src, int64_t n, float *out);
// n fp32 values -> dtype (F32/F16/BF16, round to nearest even) at dst (any alignment).
void st_encode_f32(StDtype dtype, const float *src, int64_t n, void *dst);

typedef struct StWriter StWriter;
StWriter *stw_new(Err *e);
// Adds a tensor; data (fp32, n = Π shape) is converted to dtype (F32/F16/BF16) and copied.
int stw_add_f32(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape,
                const float *data, Err *e);
int stw_add_metadata(StWriter *w, const char *key, const char *value, Err *e);
int stw_save(StWriter *w, const char *path, Err *e);  // atomic (temp + rename)
void stw_free(StWriter *w);

// JSON helpers over json-c for config files (config.json, adapter_config.json).
struct json_object;
// Parses a JSON file; errors name the file and line. Free with json_object_put.
struct json_object *json_read_file(const char *path, Err *e);
// Writes obj pretty-printed to path, atomically.
int json_write_file(const char *path, struct json_object *obj, Err *e);
// A float as a JSON number printed with the shortest text that reads back as the same float.
struct json_object *json_new_float(float v);
// Member key of obj: returns 0 when absent or null (out untouched), 1 when read, -1 (Err
// naming file and key) when of the wrong type. Integers accept only JSON integers; numbers
// accept integers and reals.
int json_opt_int(const struct json_object *obj, const char *key, const char *file, int64_t *out,
                 Err *e);
int json_opt_num(const struct json_object *obj, const char *key, const char *file, double *out,
                 Err *e);
int json_opt_bool(const struct json_object *obj, const char *key, const char *file, int *out,
                  Err *e);
int json_opt_str(const struct json_object *obj, const char *key, const char *file,
                 const char **out, Err *e);

// GGUF (v2/v3). Types as in ggml.
typedef enum {
    GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q5_0 = 6, GGML_Q5_1 = 7,
    GGML_Q8_0 = 8, GGML_Q8_1 = 9, GGML_Q2_K = 10, GGML_Q3_K = 11, GGML_Q4_K = 12,
    GGML_Q5_K = 13, GGML_Q6_K = 14, GGML_Q8_K = 15, GGML_BF16 = 30,
} GgmlType;
typedef enum {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5,
    GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_U64 = 10,
    GGUF_I64 = 11, GGUF_F64 = 12,
} GgufValueType;

typedef struct {
    char name[256];
    GgmlType type;
    int n_dims;
    int64_t ne[AG_MAXDIM];    // fastest-first: ne = [in, out] is a row-major (out, in)
    int64_t n;
    const void *data;
    size_t nbytes;
} GgufTensor;

typedef struct Gguf Gguf;
Gguf *gguf_open(const char *path, Err *e);        // mmap; validates
void gguf_close(Gguf *g);
int gguf_tensor_count(const Gguf *g);
const GgufTensor *gguf_tensor_at(const Gguf *g, int i);
const GgufTensor *gguf_find_tensor(const Gguf *g, const char *name);
// Tensor as fp32 (F32/F16/BF16), checking element count.
int gguf_read_f32(const Gguf *g, const char *name, float *out, int64_t n, Err *e);
// Metadata lookups. Return 0 when found (value written), -1 when absent or of another type.
int gguf_get_u32(const Gguf *g, const char *key, uint32_t *out);  // accepts any int type
int gguf_get_f32(const Gguf *g, const char *key, float *out);     // accepts f32/f64
int gguf_get_bool(const Gguf *g, const char *key, int *out);      // bool keys only
const char *gguf_get_str(const Gguf *g, const char *key);         // NUL-terminated copy, or NULL
// Metadata keys in file order: key i and its value type (NULL when i is out of range).
uint64_t gguf_kv_count(const Gguf *g);
const char *gguf_kv_key(const Gguf *g, uint64_t i, GgufValueType *type);
// Arrays: element type and count; element i as string / float / int.
int gguf_get_arr(const Gguf *g, const char *key, GgufValueType *elem_type, uint64_t *count);
const char *gguf_arr_str(const Gguf *g, const char *key, uint64_t i);   // NUL-terminated
double gguf_arr_num(const Gguf *g, const char *key, uint64_t i);

typedef struct GgufWriter GgufWriter;
GgufWriter *ggw_new(Err *e);
int ggw_set_str(GgufWriter *w, const char *key, const char *val, Err *e);
int ggw_set_u32(GgufWriter *w, const char *key, uint32_t val, Err *e);
int ggw_set_f32(GgufWriter *w, const char *key, float val, Err *e);
int ggw_set_bool(GgufWriter *w, const char *key, int val, Err *e);
int ggw_set_arr_str(GgufWriter *w, const char *key, const char *const *vals, uint64_t n, Err *e);
int ggw_set_arr_f32(GgufWriter *w, const char *key, const float *vals, uint64_t n, Err *e);
int ggw_set_arr_i32(GgufWriter *w, const char *key, const int32_t *vals, uint64_t n, Err *e);
// Adds a tensor given as row-major fp32 with GGUF dims ne (fastest first), stored as type:
// F32/F16/BF16 (round to nearest even), or Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 (ggq_quantize_rows, as
// llama.cpp's reference quantizers; ne[0] a multiple of 32; -1 when a scale comes out
// non-finite). data is copied (encoded); a tensor that fails is not added.
int ggw_add_f32(GgufWriter *w, const char *name, GgmlType type, int n_dims, const int64_t *ne,
                const float *data, Err *e);
int ggw_save(GgufWriter *w, const char *path, Err *e);  // atomic, alignment 32
void ggw_free(GgufWriter *w);
