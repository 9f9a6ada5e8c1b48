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
} EncTensor;
typedef struct {
    EncTensor *t;
    int n, cap;
} EncList;
// Appends a converted copy; errors (bad dtype/rank, duplicate name, OOM) are prefixed by who.
int enc_add(EncList *l, const char *who, const char *name, StDtype dtype, int ndim,
            const int64_t *shape, const float *data, Err *e);
void enc_free(EncList *l);
// Writes header then every tensor's bytes, each padded with zeros to a multiple of align
// (1 = packed), to path atomically.
int enc_save(const char *path, const void *header, size_t header_len, const EncList *l,
             size_t align, Err *e);
