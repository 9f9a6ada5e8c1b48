// model/io_internal.h — PRIVATE to model/ (safetensors.c, gguf.c, load.c). Not part of the
// module interface; nothing outside model/ includes it.
#pragma once
#include "model/model.h"

// A whole file mapped read-only.
typedef struct {
    const uint8_t *data;
    size_t size;
} FileMap;
int filemap_open(FileMap *fm, const char *path, Err *e);
void filemap_close(FileMap *fm);

// Tensors held by a writer: fp32 input converted to dtype (F32/F16/BF16) and copied.
// shape is as the format writes it (row-major for safetensors, ne fastest-first for GGUF).
typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[AG_MAXDIM];
    void *data;
    size_t nbytes;
    int gtype;  // GGUF writer: the ggml type of data (set by gguf.c; 0 = F32 otherwise)
} EncTensor;
typedef struct {
    EncTensor *t;
    int n, cap;
} EncList;
// Appends a converted copy; errors (bad dtype/rank, duplicate name, OOM) are prefixed by who.
int enc_add(EncList *l, const char *who, const char *name, StDtype dtype, int ndim,
            const int64_t *shape, const float *data, Err *e);
// Appends a tensor of (Π shape / block_elems) · block_bytes bytes, data allocated but not
// written (the caller fills it; dtype 0), after checking the name, the rank, the dimensions
// and, for blocks of block_elems > 1 values, that shape[0] (a row) is whole blocks. NULL on
// error (message prefixed by who).
EncTensor *enc_push(EncList *l, const char *who, const char *name, int ndim, const int64_t *shape,
                    int block_elems, size_t block_bytes, Err *e);
void enc_free(EncList *l);
// Writes header then every tensor's bytes, each padded with zeros to a multiple of align
// (1 = packed), to path atomically.
int enc_save(const char *path, const void *header, size_t header_len, const EncList *l,
             size_t align, Err *e);

// load.c: a model with config c and its rotary frequencies, no weights yet (config checked).
Model *model_alloc(const ModelConfig *c, const char *source, Err *e);
// nf4_cache.c: the quantized-base cache of an NF4 model loaded from src. Reading returns NULL
// when the cache is absent, of another source or damaged; writing is atomic.
Model *model_cache_read(const char *cache, const char *src, Err *e);
int model_cache_write(const Model *m, const char *cache, const char *src, Err *e);
// arch.c: the architecture (llama, mistral, qwen2, phi3, gemma) of a HF config.json object j
// and its variant members (activation, biases, sliding window, rope_scaling), into c; the
// same from GGUF metadata (general.architecture; also c->file_rope); rotary frequencies
// inv_freq (head_dim / 2) with c's rope scaling; the architecture members of a config.json.
int arch_config_hf(struct json_object *j, const char *file, ModelConfig *c, Err *e);
int arch_config_gguf(const Gguf *g, const char *path, ModelConfig *c, Err *e);
void arch_inv_freq(const ModelConfig *c, float *out);
// Derived members once the shape is known (Gemma's embedding scale sqrt(dim)).
void arch_finish(ModelConfig *c);
void arch_config_to_hf(const ModelConfig *c, struct json_object *j);
