// SafeTensors files: a reader over a read-only mapping and a writer.
//
// Layout: u64 little-endian header length N, N bytes of JSON
//   {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}}
// then the data block; offsets are relative to the start of the data block (8 + N).
// The writer pads the header with spaces to a multiple of 8 bytes, as the HF library does.
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/io_internal.h"

#define ST_MAX_HEADER (100u << 20)  // the HF library refuses headers over 100 MB too

// ---- mapping and conversion (shared with gguf.c) ------------------------------------------

int filemap_open(FileMap *fm, const char *path, Err *e) {
    fm->data = NULL;
    fm->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_set(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return err_set(e, "%s: not a regular file", path);
    }
    if (sb.st_size == 0) {
        close(fd);
        return err_set(e, "%s: empty file", path);
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return err_set(e, "%s: cannot map: %s", path, strerror(errno));
    fm->data = p;
    fm->size = (size_t)sb.st_size;
    return 0;
}

void filemap_close(FileMap *fm) {
    if (fm->data) munmap((void *)fm->data, fm->size);
    fm->data = NULL;
    fm->size = 0;
}

// src (n values of dtype, unaligned) -> out (n) fp32
int st_convert_f32(StDtype dtype, const void *src, int64_t n, float *out) {
    const uint8_t *s = src;
    switch (dtype) {
    case ST_F32: memcpy(out, s, (size_t)n * 4); return 0;
    case ST_F16:
    case ST_BF16: {
        float (*cv)(uint16_t) = dtype == ST_F16 ? f16_to_f32 : bf16_to_f32;
#pragma omp parallel for if (n > (1 << 18))
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            out[i] = cv(h);
        }
        return 0;
    }
    case ST_I32:
    case ST_I64:
    case ST_U8:
        for (int64_t i = 0; i < n; i++) {
            int32_t v32;
            int64_t v64 = 0;
            if (dtype == ST_U8) {
                v64 = s[i];
            } else if (dtype == ST_I32) {
                memcpy(&v32, s + 4 * i, 4);
                v64 = v32;
            } else {
                memcpy(&v64, s + 8 * i, 8);
            }
            out[i] = (float)v64;
        }
        return 0;
    default: return -1;
    }
}

// src (n) fp32 -> dst (n values of dtype F32/F16/BF16, unaligned)
void st_encode_f32(StDtype dtype, const float *src, int64_t n, void *dst) {
    uint8_t *d = dst;
    if (dtype == ST_F32) {
        memcpy(d, src, (size_t)n * 4);
        return;
    }
    if (dtype != ST_F16 && dtype != ST_BF16) die_internal("st_encode_f32: dtype %d", (int)dtype);
#pragma omp parallel for if (n > (1 << 18))
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = dtype == ST_F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
        memcpy(d + 2 * i, &h, 2);
    }
}

// ---- dtypes -------------------------------------------------------------------------------

typedef struct {
    const char *name;
    StDtype dtype;
    int size;  // bytes per element
} DtypeInfo;

// Every dtype the format defines, so any valid file opens; only some convert to fp32.
static const DtypeInfo DTYPES[] = {
    {"F32", ST_F32, 4},       {"F16", ST_F16, 2},       {"BF16", ST_BF16, 2},
    {"I32", ST_I32, 4},       {"I64", ST_I64, 8},       {"U8", ST_U8, 1},
    {"F64", ST_OTHER, 8},     {"I8", ST_OTHER, 1},      {"I16", ST_OTHER, 2},
    {"U16", ST_OTHER, 2},     {"U32", ST_OTHER, 4},     {"U64", ST_OTHER, 8},
    {"BOOL", ST_OTHER, 1},    {"F8_E4M3", ST_OTHER, 1}, {"F8_E5M2", ST_OTHER, 1},
};

static const DtypeInfo *dtype_by_name(const char *s) {
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (!strcmp(DTYPES[i].name, s)) return &DTYPES[i];
    return NULL;
}

static const DtypeInfo *dtype_info(StDtype d) {
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (DTYPES[i].dtype == d) return &DTYPES[i];
    return NULL;
}

// ---- reader -------------------------------------------------------------------------------

struct SafeTensors {
    char path[1024];
    FileMap map;
    StTensor *t;
    int n;
    char **meta;  // key0, value0, key1, value1, ...
    int n_meta;
};

void st_close(SafeTensors *st) {
    if (!st) return;
    filemap_close(&st->map);
    for (int i = 0; i < 2 * st->n_meta; i++) free(st->meta[i]);
    free(st->meta);
    free(st->t);
    free(st);
}

// One header entry name: {dtype, shape, data_offsets} -> *t, checked against the data block.
static int parse_entry(SafeTensors *st, const char *name, json_object *v, const uint8_t *data,
                       size_t data_size, StTensor *t, Err *e) {
    const char *path = st->path;
    if (strlen(name) >= sizeof t->name)
        return err_set(e, "%s: tensor name too long: %.80s...", path, name);
    snprintf(t->name, sizeof t->name, "%s", name);
    json_object *jd, *js, *jo;
    if (!json_object_is_type(v, json_type_object) || !json_object_object_get_ex(v, "dtype", &jd) ||
        !json_object_object_get_ex(v, "shape", &js) ||
        !json_object_object_get_ex(v, "data_offsets", &jo))
        return err_set(e, "%s: tensor %s: header entry needs dtype, shape and data_offsets", path,
                       name);
    if (!json_object_is_type(jd, json_type_string))
        return err_set(e, "%s: tensor %s: dtype is not a string", path, name);
    const DtypeInfo *di = dtype_by_name(json_object_get_string(jd));
    if (!di)
        return err_set(e, "%s: tensor %s: unknown dtype \"%s\"", path, name,
                       json_object_get_string(jd));
    t->dtype = di->dtype;
    if (!json_object_is_type(js, json_type_array))
        return err_set(e, "%s: tensor %s: shape is not a list", path, name);
    size_t nd = json_object_array_length(js);
    if (nd > AG_MAXDIM)
        return err_set(e, "%s: tensor %s: %zu dimensions (at most %d supported)", path, name, nd,
                       AG_MAXDIM);
    t->ndim = (int)nd;
    int64_t n = 1;
    for (size_t i = 0; i < nd; i++) {
        json_object *d = json_object_array_get_idx(js, i);
        int64_t x = json_object_is_type(d, json_type_int) ? json_object_get_int64(d) : -1;
        if (x < 0) return err_set(e, "%s: tensor %s: bad shape entry %zu", path, name, i);
        t->shape[i] = x;
        if (__builtin_mul_overflow(n, x, &n))
            return err_set(e, "%s: tensor %s: shape too large", path, name);
    }
    for (size_t i = nd; i < AG_MAXDIM; i++) t->shape[i] = 0;
    t->n = n;
    if (!json_object_is_type(jo, json_type_array) || json_object_array_length(jo) != 2)
        return err_set(e, "%s: tensor %s: data_offsets must be [begin, end]", path, name);
    json_object *jb = json_object_array_get_idx(jo, 0), *je = json_object_array_get_idx(jo, 1);
    if (!json_object_is_type(jb, json_type_int) || !json_object_is_type(je, json_type_int))
        return err_set(e, "%s: tensor %s: data_offsets must be integers", path, name);
    int64_t b = json_object_get_int64(jb), end = json_object_get_int64(je);
    if (b < 0 || end < b || (uint64_t)end > data_size)
        return err_set(e,
                       "%s: tensor %s: data_offsets [%lld, %lld] outside the data block of %zu "
                       "bytes (truncated file?)",
                       path, name, (long long)b, (long long)end, data_size);
    int64_t want;
    if (__builtin_mul_overflow(n, (int64_t)di->size, &want) || want != end - b)
        return err_set(e,
                       "%s: tensor %s: data_offsets give %lld bytes but shape and dtype %s need "
                       "%lld",
                       path, name, (long long)(end - b), di->name, (long long)n * di->size);
    t->data = data + b;
    t->nbytes = (size_t)(end - b);
    return 0;
}

static int parse_metadata(SafeTensors *st, json_object *v, Err *e) {
    if (!json_object_is_type(v, json_type_object))
        return err_set(e, "%s: __metadata__ is not an object", st->path);
    int n = json_object_object_length(v);
    st->meta = xcalloc((size_t)2 * n, sizeof(char *), "safetensors metadata", e);
    if (!st->meta) return -1;
    json_object_object_foreach(v, key, val) {
        // values are strings by the format; anything else is kept as its JSON text
        const char *s = json_object_is_type(val, json_type_string) ? json_object_get_string(val)
                                                                   : json_object_to_json_string(val);
        st->meta[2 * st->n_meta] = strdup(key);
        st->meta[2 * st->n_meta + 1] = strdup(s ? s : "");
        st->n_meta++;
        if (!st->meta[2 * st->n_meta - 2] || !st->meta[2 * st->n_meta - 1])
            return err_set(e, "out of memory reading %s", st->path);
    }
    return 0;
}

static int parse_header(SafeTensors *st, Err *e) {
    const uint8_t *p = st->map.data;
    size_t size = st->map.size;
    if (size < 8) return err_set(e, "%s: not a safetensors file (only %zu bytes)", st->path, size);
    uint64_t hlen;
    memcpy(&hlen, p, 8);  // little-endian host
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > size - 8)
        return err_set(e,
                       "%s: bad safetensors header length %llu (file is %zu bytes; not a "
                       "safetensors file or truncated)",
                       st->path, (unsigned long long)hlen, size);
    if (p[8] != '{') return err_set(e, "%s: safetensors header does not start with '{'", st->path);
    json_tokener *tok = json_tokener_new();
    if (!tok) return err_set(e, "out of memory reading %s", st->path);
    json_object *root = json_tokener_parse_ex(tok, (const char *)p + 8, (int)hlen);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!root || jerr != json_tokener_success) {
        json_object_put(root);
        return err_set(e, "%s: bad safetensors JSON header at byte %zu: %s", st->path, 8 + end,
                       jerr == json_tokener_continue || jerr == json_tokener_success
                           ? "unexpected end of header"
                           : json_tokener_error_desc(jerr));
    }
    for (size_t i = end; i < hlen; i++)
        if (p[8 + i] != ' ' && p[8 + i] != '\n' && p[8 + i] != '\t' && p[8 + i] != '\r' &&
            p[8 + i] != 0) {
            json_object_put(root);
            return err_set(e, "%s: junk after the JSON header at byte %zu", st->path, 8 + i);
        }
    if (!json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        return err_set(e, "%s: safetensors header is not a JSON object", st->path);
    }
    const uint8_t *data = p + 8 + hlen;
    size_t data_size = size - 8 - hlen;
    int n = json_object_object_length(root);
    st->t = xcalloc((size_t)n, sizeof(StTensor), "safetensors index", e);
    int rc = st->t ? 0 : -1;
    json_object_object_foreach(root, key, val) {
        if (rc) break;
        if (!strcmp(key, "__metadata__"))
            rc = parse_metadata(st, val, e);
        else if ((rc = parse_entry(st, key, val, data, data_size, &st->t[st->n], e)) == 0)
            st->n++;
    }
    json_object_put(root);
    return rc;
}

SafeTensors *st_open(const char *path, Err *e) {
    SafeTensors *st = xcalloc(1, sizeof *st, "safetensors reader", e);
    if (!st) return NULL;
    snprintf(st->path, sizeof st->path, "%s", path);
    if (filemap_open(&st->map, path, e) || parse_header(st, e)) {
        st_close(st);
        return NULL;
    }
    return st;
}

int st_count(const SafeTensors *st) { return st->n; }

const StTensor *st_at(const SafeTensors *st, int i) { return (i >= 0 && i < st->n) ? &st->t[i] : NULL; }

const StTensor *st_find(const SafeTensors *st, const char *name) {
    for (int i = 0; i < st->n; i++)
        if (!strcmp(st->t[i].name, name)) return &st->t[i];
    return NULL;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

// Without shape (NULL) nothing is checked: out must hold st_find(st, name)->n values.
int st_read_f32(const SafeTensors *st, const char *name, float *out, int ndim,
                const int64_t *shape, Err *e) {
    const StTensor *t = st_find(st, name);
    if (!t) return err_set(e, "%s: tensor %s not found", st->path, name);
    if (shape) {
        int same = t->ndim == ndim;
        for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
        if (!same) {
            char a[96], b[96];
            shape_str(a, sizeof a, t->ndim, t->shape);
            shape_str(b, sizeof b, ndim, shape);
            return err_set(e, "%s: tensor %s has shape %s, expected %s", st->path, name, a, b);
        }
    }
    if (st_convert_f32(t->dtype, t->data, t->n, out))
        return err_set(e, "%s: tensor %s: dtype cannot be read as fp32 (F32/F16/BF16 expected)",
                       st->path, name);
    return 0;
}

const char *st_metadata(const SafeTensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (!strcmp(st->meta[2 * i], key)) return st->meta[2 * i + 1];
    return NULL;
}

// ---- tensors held by the writers (shared with gguf.c) --------------------------------------

void enc_free(EncList *l) {
    for (int i = 0; i < l->n; i++) {
        free(l->t[i].name);
        free(l->t[i].data);
    }
    free(l->t);
    memset(l, 0, sizeof *l);
}

EncTensor *enc_push(EncList *l, const char *who, const char *name, int ndim, const int64_t *shape,
                    int block_elems, size_t block_bytes, Err *e) {
    if (ndim < 0 || ndim > AG_MAXDIM) {
        err_set(e, "%s: tensor %s: bad number of dimensions %d", who, name, ndim);
        return NULL;
    }
    if (!*name || strlen(name) >= 256) {
        err_set(e, "%s: invalid tensor name \"%.60s\"", who, name);
        return NULL;
    }
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->t[i].name, name)) {
            err_set(e, "%s: tensor %s added twice", who, name);
            return NULL;
        }
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            err_set(e, "%s: tensor %s: negative dimension", who, name);
            return NULL;
        }
        n *= shape[i];
    }
    if (block_elems > 1 && (ndim < 1 || shape[0] % block_elems)) {
        err_set(e, "%s: tensor %s: rows of %lld values are not whole blocks of %d", who, name,
                (long long)(ndim ? shape[0] : 1), block_elems);
        return NULL;
    }
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        EncTensor *t = realloc(l->t, (size_t)cap * sizeof *t);
        if (!t) {
            err_set(e, "out of memory adding tensor %s", name);
            return NULL;
        }
        l->t = t;
        l->cap = cap;
    }
    EncTensor *t = &l->t[l->n];
    memset(t, 0, sizeof *t);
    t->nbytes = (size_t)(n / block_elems) * block_bytes;
    t->name = strdup(name);
    t->data = xmalloc(t->nbytes ? t->nbytes : 1, name, e);
    if (!t->name || !t->data) {
        free(t->name);
        free(t->data);
        err_set(e, "out of memory adding tensor %s", name);
        return NULL;
    }
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    l->n++;
    return t;
}

int enc_add(EncList *l, const char *who, const char *name, StDtype dtype, int ndim,
            const int64_t *shape, const float *data, Err *e) {
    if (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16)
        return err_set(e, "%s: tensor %s: only F32/F16/BF16 can be written", who, name);
    EncTensor *t = enc_push(l, who, name, ndim, shape, 1, dtype_info(dtype)->size, e);
    if (!t) return -1;
    t->dtype = dtype;
    st_encode_f32(dtype, data, (int64_t)(t->nbytes / dtype_info(dtype)->size), t->data);
    return 0;
}

int enc_save(const char *path, const void *header, size_t header_len, const EncList *l,
             size_t align, Err *e) {
    static const uint8_t zeros[64];
    if (align < 1 || align > sizeof zeros) die_internal("enc_save: alignment %zu", align);
    AtomicFile af;
    int rc = atomic_open(&af, path, e);
    if (!rc) rc = atomic_write(&af, header, header_len, e);
    for (int i = 0; i < l->n && !rc; i++) {
        rc = atomic_write(&af, l->t[i].data, l->t[i].nbytes, e);
        if (!rc) rc = atomic_write(&af, zeros, (align - l->t[i].nbytes % align) % align, e);
    }
    if (!rc) return atomic_close(&af, e);
    if (af.f) atomic_abort(&af);
    return -1;
}

// ---- writer -------------------------------------------------------------------------------

struct StWriter {
    EncList t;
    json_object *meta;  // __metadata__ (insertion order is kept)
};

StWriter *stw_new(Err *e) {
    StWriter *w = xcalloc(1, sizeof *w, "safetensors writer", e);
    if (!w) return NULL;
    w->meta = json_object_new_object();
    if (!w->meta) {
        free(w);
        err_set(e, "out of memory creating a safetensors writer");
        return NULL;
    }
    return w;
}

void stw_free(StWriter *w) {
    if (!w) return;
    enc_free(&w->t);
    json_object_put(w->meta);
    free(w);
}

int stw_add_f32(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape,
                const float *data, Err *e) {
    if (!strcmp(name, "__metadata__"))
        return err_set(e, "safetensors writer: invalid tensor name \"%s\"", name);
    return enc_add(&w->t, "safetensors writer", name, dtype, ndim, shape, data, e);
}

int stw_add_metadata(StWriter *w, const char *key, const char *value, Err *e) {
    json_object *s = json_object_new_string(value);
    if (!s || json_object_object_add(w->meta, key, s) != 0) {
        json_object_put(s);
        return err_set(e, "out of memory adding metadata %s", key);
    }
    return 0;
}

// The JSON header, tensors in insertion order, data packed back to back.
static json_object *build_header(const StWriter *w) {
    json_object *root = json_object_new_object();
    if (!root) return NULL;
    if (json_object_object_length(w->meta) > 0)
        json_object_object_add(root, "__metadata__", json_object_get(w->meta));
    int64_t off = 0;
    for (int i = 0; i < w->t.n; i++) {
        const EncTensor *t = &w->t.t[i];
        json_object *o = json_object_new_object(), *shape = json_object_new_array(),
                    *offs = json_object_new_array();
        if (!o || !shape || !offs) {
            json_object_put(o);
            json_object_put(shape);
            json_object_put(offs);
            json_object_put(root);
            return NULL;
        }
        for (int d = 0; d < t->ndim; d++) json_object_array_add(shape, json_object_new_int64(t->shape[d]));
        json_object_array_add(offs, json_object_new_int64(off));
        json_object_array_add(offs, json_object_new_int64(off + (int64_t)t->nbytes));
        off += (int64_t)t->nbytes;
        json_object_object_add(o, "dtype", json_object_new_string(dtype_info(t->dtype)->name));
        json_object_object_add(o, "shape", shape);
        json_object_object_add(o, "data_offsets", offs);
        json_object_object_add(root, t->name, o);
    }
    return root;
}

int stw_save(StWriter *w, const char *path, Err *e) {
    json_object *root = build_header(w);
    if (!root) return err_set(e, "%s: out of memory building the header", path);
    const char *js = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
                                                              JSON_C_TO_STRING_NOSLASHESCAPE);
    // u64 header length, then the JSON padded with spaces to a multiple of 8 bytes
    size_t jl = strlen(js), padded = (jl + 7) & ~(size_t)7;
    uint8_t *hdr = xmalloc(8 + padded, "safetensors header", e);
    if (!hdr) {
        json_object_put(root);
        return -1;
    }
    uint64_t hlen = padded;
    memcpy(hdr, &hlen, 8);
    memcpy(hdr + 8, js, jl);
    memset(hdr + 8 + jl, ' ', padded - jl);
    json_object_put(root);
    int rc = enc_save(path, hdr, 8 + padded, &w->t, 1, e);
    free(hdr);
    return rc;
}
