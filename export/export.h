// export — adapter files. PEFT layout: DIR/adapter_model.safetensors with keys
//   base_model.model.model.layers.N.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight
//   base_model.model.model.layers.N.mlp.{gate,up,down}_proj.lora_{A,B}.weight
// (A (r,in), B (out,r)) and DIR/adapter_config.json (peft_type LORA, task_type CAUSAL_LM,
// r, lora_alpha, target_modules, lora_dropout, bias none, use_rslora, fan_in_fan_out false,
// base_model_name_or_path). Files are written to temporary names and renamed.
//
// Also: llama.cpp GGUF LoRA adapters, merged models (HF safetensors or GGUF).
// RoPE: a PEFT adapter and a merged HF model are in the HF rotate-half convention (as the
// in-memory model); a GGUF adapter and a merged GGUF in the adjacent-pairs convention: the
// rows of q and k (of B for an adapter) are permuted on the way out and back on the way in.
#pragma once
#include "util/util.h"
#include "model/model.h"

int adapter_save_peft(const LoraAdapter *a, const Model *m, const char *dir, Err *e);
// Loads a PEFT adapter directory for model m, checking every shape against m.
LoraAdapter *adapter_load_peft(const char *dir, const Model *m, Err *e);

// Any adapter: a directory is a PEFT adapter, a file a GGUF LoRA adapter. Use this wherever
// the user names an adapter.
LoraAdapter *adapter_load(const char *path, const Model *m, Err *e);

// ---- GGUF LoRA adapters (llama.cpp --lora) -------------------------------------------------
// general.type "adapter", general.architecture m's, adapter.type "lora", adapter.lora.alpha
// (f32); F32 tensors "<base tensor>.lora_a" (ne [in, r]) and "<base tensor>.lora_b" (ne
// [r, out]), e.g. blk.0.attn_q.weight.lora_a. llama.cpp scales by alpha/r (1 when alpha is
// 0), so any other scale (rsLoRA's alpha/sqrt(r)) is folded into B; the rows of B for q and
// k are permuted to the adjacent-pairs RoPE convention.
int adapter_save_gguf(const LoraAdapter *a, const Model *m, const char *path, Err *e);
// The inverse: one rank for all tensors; the result has use_rslora 0 and scale alpha/r.
LoraAdapter *adapter_load_gguf(const char *path, const Model *m, Err *e);

// ---- merged models ------------------------------------------------------------------------
// W += scale · B A for every target of a (in place; those weights become fp32).
int lora_merge(Model *m, const LoraAdapter *a, Err *e);
// m as a HF directory: model.safetensors in dtype (ST_F32, ST_BF16 or ST_F16) and config.json
// (the keys of src_config, when given, kept but quantization_config; the model's own values
// and torch_dtype set).
int merged_save_hf(const Model *m, StDtype dtype, const char *src_config, const char *dir, Err *e);
// ---- GGUF models (lora merge / convert / init-model --out F.gguf) --------------------------
// A llama as a GGUF llama.cpp loads: llama.* metadata, q/k rows in the adjacent-pairs
// convention, 1-D norms F32, matrices in the writer's type, output.weight omitted when tied.
// The tensors come from a callback, one at a time in file order (token_embd; per layer
// attn_norm, q k v o gate up down, ffn_norm; output_norm; output), each as fp32 in the HF
// layout: a matrix (rows, cols) row-major with q/k rows in the HF rotate-half order, a norm
// (1, dim). which: a LoraTarget (a layer's matrix) or a GgufSlot; layer -1 for GS_EMB,
// GS_HEAD, GS_FINAL_NORM. Only one tensor's fp32 copy exists at a time; the encoded file is
// held in memory until written.
typedef enum { GS_EMB = LT_COUNT, GS_HEAD, GS_ATTN_NORM, GS_FFN_NORM, GS_FINAL_NORM } GgufSlot;
typedef int (*GgufTensorFn)(void *user, int layer, int which, int64_t rows, int64_t cols, float *out, Err *e);
typedef struct {
    GgmlType type;        // F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (see gguf_matrix_type)
    const char *vocab;    // tokenizer.ggml.* from a .gguf file (its keys copied) or a
                          // SentencePiece .model file; NULL writes tokenizer.ggml.model "no_vocab"
    const char *name;     // general.name (NULL: "lora.c model")
    GgufTensorFn tensor;
    void *user;
    int n_f16;            // out: matrices written F16 for a quantized type (rows not whole blocks)
} GgufModelWriter;
int model_save_gguf(const ModelConfig *c, GgufModelWriter *o, const char *path, Err *e);
// The type a matrix `which` with rows of cols values is written in for the requested type, as
// llama.cpp's convert / llama-quantize choose: the requested one, except with Q4_0, Q4_1,
// Q5_0, Q5_1 the output matrix (output.weight, or token_embd when tied) in Q8_0 (llama.cpp
// uses Q6_K, which we do not write), and F16 for a quantized type when cols % 32 != 0.
GgmlType gguf_matrix_type(GgmlType type, int which, int tied, int64_t cols);
// m's tensors (any storage, read as fp32) through model_save_gguf (sets o->tensor, o->user).
int model_write_gguf(const Model *m, GgufModelWriter *o, const char *path, Err *e);
// model_write_gguf with general.name "lora.c merged model".
int merged_save_gguf(const Model *m, GgmlType type, const char *vocab, const char *path, Err *e);
// Where a GGUF's vocabulary comes from for the model at model_path: tok when given, the
// model's own when it is a GGUF with one, else a tokenizer.model beside the model (written
// into buf); NULL when there is none.
const char *gguf_vocab_source(const char *model_path, const char *tok, char *buf, size_t n);
// Copies the tokenizer and generation files found in src_dir (tokenizer.model,
// tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json)
// into dir. Returns the number copied, -1 on error.
int copy_tokenizer_files(const char *src_dir, const char *dir, Err *e);

// ---- helpers ------------------------------------------------------------------------------
// GGUF name of a weight: "blk.3.attn_q.weight", ..., "blk.3.ffn_down.weight".
const char *gguf_weight_name(char *buf, size_t n, int layer, LoraTarget t);
// w (heads*D, cols): reorders the rows of every head between the RoPE conventions. To
// ROPE_ADJACENT: HF row j*D/2 + i becomes row 2i + j; to ROPE_HALF: the inverse.
int rope_permute_rows(float *w, int heads, int D, int64_t cols, RopeStyle to, Err *e);
