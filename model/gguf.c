// GGUF files (v2/v3): a reader over a read-only mapping and a v3 writer.
//
// Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv,
//   n_kv × { string key, u32 value type, value }     string = u64 length + bytes (no NUL)
//                                                    array  = u32 elem type + u64 count + elems
//   n_tensors × { string name, u32 n_dims, u64 ne[n_dims] (fastest first), u32 ggml type,
//                 u64 offset (relative to the data block, a multiple of the alignment) }
//   padding to general.alignment (default 32), then the data block.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/io_internal.h"
#include "quant/quant.h"

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ARRAY_DEPTH 4

// ---- ggml tensor types ----------------------------------------------------------------------

typedef struct {
    int type;
    const char *name;
    int block;  // elements per block
    int bytes;  // bytes per block
} TypeInfo;

static const TypeInfo TYPES[] = {
    {GGML_F32, "F32", 1, 4},        {GGML_F16, "F16", 1, 2},       {GGML_Q4_0, "Q4_0", 32, 18},
    {GGML_Q4_1, "Q4_1", 32, 20},    {GGML_Q5_0, "Q5_0", 32, 22},   {GGML_Q5_1, "Q5_1", 32, 24},
    {GGML_Q8_0, "Q8_0", 32, 34},    {GGML_Q8_1, "Q8_1", 32, 36},   {GGML_Q2_K, "Q2_K", 256, 84},
    {GGML_Q3_K, "Q3_K", 256, 110},  {GGML_Q4_K, "Q4_K", 256, 144}, {GGML_Q5_K, "Q5_K", 256, 176},
    {GGML_Q6_K, "Q6_K", 256, 210},  {GGML_Q8_K, "Q8_K", 256, 292}, {24, "I8", 1, 1},
    {25, "I16", 1, 2},              {26, "I32", 1, 4},             {27, "I64", 1, 8},
    {28, "F64", 1, 8},              {GGML_BF16, "BF16", 1, 2},
};

static const TypeInfo *type_info(int type) {
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
        if (TYPES[i].type == type) return &TYPES[i];
    return NULL;
}

// The fp32-convertible ggml types as safetensors dtypes; ST_OTHER otherwise.
static StDtype as_st_dtype(GgmlType t) {
    return t == GGML_F32 ? ST_F32 : t == GGML_F16 ? ST_F16 : t == GGML_BF16 ? ST_BF16 : ST_OTHER;
}

static int scalar_size(uint32_t vt) {
    switch (vt) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    default: return 0;
    }
}

// ---- reader -------------------------------------------------------------------------------

typedef struct {
    char *key;
    GgufValueType type;
    const uint8_t *val;      // scalar: the value bytes in the map
    char *str;               // string: NUL-terminated copy
    GgufValueType elem;      // array: element type, count, first element in the map
    uint64_t count;
    const uint8_t *arr;
    char **strs;             // array of strings: NUL-terminated copies (one block)
} Kv;

struct Gguf {
    char path[1024];
    FileMap map;
    uint32_t version;
    Kv *kv;
    uint64_t n_kv;
    GgufTensor *t;
    int n_t;
    uint32_t alignment;
};

// Bounds-checked cursor over the mapped file.
typedef struct {
    const uint8_t *p, *end, *base;
    const char *path;
    Err *e;
} Cur;

static int cur_fail(Cur *c, const char *what) {
    return err_set(c->e, "%s: truncated or corrupt GGUF file: cannot read %s at byte %zu", c->path,
                   what, (size_t)(c->p - c->base));
}

static int cur_take(Cur *c, size_t n, const uint8_t **out, const char *what) {
    if ((size_t)(c->end - c->p) < n) {
        *out = NULL;
        cur_fail(c, what);
        return -1;
    }
    *out = c->p;
    c->p += n;
    return 0;
}

static int cur_u32(Cur *c, uint32_t *v, const char *what) {
    const uint8_t *q;
    if (cur_take(c, 4, &q, what)) return -1;
    memcpy(v, q, 4);
    return 0;
}

static int cur_u64(Cur *c, uint64_t *v, const char *what) {
    const uint8_t *q;
    if (cur_take(c, 8, &q, what)) return -1;
    memcpy(v, q, 8);
    return 0;
}

static int cur_str(Cur *c, const uint8_t **s, uint64_t *len, const char *what) {
    if (cur_u64(c, len, what)) return -1;
    if (*len > (uint64_t)(c->end - c->p)) return cur_fail(c, what);
    return cur_take(c, (size_t)*len, s, what);
}

static char *dup_n(const uint8_t *s, uint64_t n) {
    char *r = malloc((size_t)n + 1);
    if (r) {
        memcpy(r, s, (size_t)n);
        r[n] = 0;
    }
    return r;
}

static int skip_value(Cur *c, uint32_t vt, int depth, const char *key);

// Skips n array elements of type et.
static int skip_elems(Cur *c, uint32_t et, uint64_t n, int depth, const char *key) {
    int sz = scalar_size(et);
    if (sz) {
        const uint8_t *q;
        if (n > (uint64_t)(c->end - c->p) / (uint64_t)sz) return cur_fail(c, key);
        return cur_take(c, (size_t)n * sz, &q, key);
    }
    for (uint64_t i = 0; i < n; i++)
        if (skip_value(c, et, depth + 1, key)) return -1;
    return 0;
}

// Skips one value of type vt (arrays recursively).
static int skip_value(Cur *c, uint32_t vt, int depth, const char *key) {
    if (vt == GGUF_STRING) {
        const uint8_t *s;
        uint64_t n;
        return cur_str(c, &s, &n, key);
    }
    if (vt == GGUF_ARRAY) {
        uint32_t et;
        uint64_t n;
        if (depth >= GGUF_MAX_ARRAY_DEPTH)
            return err_set(c->e, "%s: metadata %s: arrays nested too deeply", c->path, key);
        if (cur_u32(c, &et, key) || cur_u64(c, &n, key)) return -1;
        return skip_elems(c, et, n, depth, key);
    }
    int sz = scalar_size(vt);
    if (!sz) return err_set(c->e, "%s: metadata %s: unknown value type %u", c->path, key, vt);
    const uint8_t *q;
    return cur_take(c, (size_t)sz, &q, key);
}

// Array value of kv (cursor after the type): keeps element type/count; copies strings.
static int read_array(Cur *c, Kv *kv) {
    uint32_t et;
    if (cur_u32(c, &et, kv->key) || cur_u64(c, &kv->count, kv->key)) return -1;
    kv->elem = (GgufValueType)et;
    kv->arr = c->p;
    if (et != GGUF_STRING) return skip_elems(c, et, kv->count, 0, kv->key);
    // strings: first pass measures, second copies into one block (pointers, then text)
    uint64_t total = 0;
    for (uint64_t i = 0; i < kv->count; i++) {
        const uint8_t *s;
        uint64_t n;
        if (cur_str(c, &s, &n, kv->key)) return -1;
        total += n + 1;
    }
    size_t ptrs = (size_t)kv->count * sizeof(char *);
    kv->strs = xmalloc(ptrs + (size_t)total, kv->key, c->e);
    if (!kv->strs) return -1;
    char *text = (char *)kv->strs + ptrs;
    Cur again = *c;
    again.p = kv->arr;
    for (uint64_t i = 0; i < kv->count; i++) {
        const uint8_t *s;
        uint64_t n;
        cur_str(&again, &s, &n, kv->key);  // cannot fail: measured above
        memcpy(text, s, (size_t)n);
        text[n] = 0;
        kv->strs[i] = text;
        text += n + 1;
    }
    return 0;
}

static int read_kv(Cur *c, Kv *kv, uint64_t index) {
    const uint8_t *s;
    uint64_t n;
    char what[64];
    snprintf(what, sizeof what, "metadata key %llu", (unsigned long long)index);
    if (cur_str(c, &s, &n, what)) return -1;
    if (!(kv->key = dup_n(s, n))) return err_set(c->e, "out of memory reading %s", c->path);
    uint32_t vt;
    if (cur_u32(c, &vt, kv->key)) return -1;
    kv->type = (GgufValueType)vt;
    if (vt == GGUF_STRING) {
        if (cur_str(c, &s, &n, kv->key)) return -1;
        if (!(kv->str = dup_n(s, n))) return err_set(c->e, "out of memory reading %s", c->path);
        return 0;
    }
    if (vt == GGUF_ARRAY) return read_array(c, kv);
    kv->val = c->p;
    return skip_value(c, vt, 0, kv->key);
}

static int read_tensor_info(Cur *c, GgufTensor *t, int index) {
    const uint8_t *s;
    uint64_t n;
    char what[64];
    snprintf(what, sizeof what, "tensor info %d", index);
    if (cur_str(c, &s, &n, what)) return -1;
    if (n >= sizeof t->name)
        return err_set(c->e, "%s: tensor %d: name longer than %zu bytes", c->path, index,
                       sizeof t->name - 1);
    memcpy(t->name, s, (size_t)n);
    t->name[n] = 0;
    uint32_t nd, type;
    if (cur_u32(c, &nd, t->name)) return -1;
    if (nd < 1 || nd > AG_MAXDIM)
        return err_set(c->e, "%s: tensor %s: %u dimensions (1..%d allowed)", c->path, t->name, nd,
                       AG_MAXDIM);
    t->n_dims = (int)nd;
    t->n = 1;
    for (int i = 0; i < AG_MAXDIM; i++) t->ne[i] = 1;
    for (uint32_t i = 0; i < nd; i++) {
        uint64_t ne;
        if (cur_u64(c, &ne, t->name)) return -1;
        if (ne > (uint64_t)INT64_MAX || __builtin_mul_overflow(t->n, (int64_t)ne, &t->n))
            return err_set(c->e, "%s: tensor %s: dimensions too large", c->path, t->name);
        t->ne[i] = (int64_t)ne;
    }
    if (cur_u32(c, &type, t->name)) return -1;
    t->type = (GgmlType)type;
    const TypeInfo *ti = type_info((int)type);
    if (!ti) return err_set(c->e, "%s: tensor %s: unknown ggml type %u", c->path, t->name, type);
    if (t->ne[0] % ti->block)
        return err_set(c->e, "%s: tensor %s: first dimension %lld is not a multiple of the %s "
                             "block size %d",
                       c->path, t->name, (long long)t->ne[0], ti->name, ti->block);
    t->nbytes = (size_t)(t->n / ti->block) * (size_t)ti->bytes;
    uint64_t off;
    if (cur_u64(c, &off, t->name)) return -1;
    t->data = (const void *)(uintptr_t)off;  // relative for now; fixed up once the data start is known
    return 0;
}

void gguf_close(Gguf *g) {
    if (!g) return;
    for (uint64_t i = 0; g->kv && i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].str);
        free(g->kv[i].strs);
    }
    free(g->kv);
    free(g->t);
    filemap_close(&g->map);
    free(g);
}

static const Kv *find_kv(const Gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && !strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

static int parse(Gguf *g, Err *e) {
    Cur c = {g->map.data, g->map.data + g->map.size, g->map.data, g->path, e};
    const uint8_t *magic;
    if (c.end - c.p < 24 || memcmp(c.p, "GGUF", 4) != 0)
        return err_set(e, "%s: not a GGUF file (bad magic)", g->path);
    cur_take(&c, 4, &magic, "magic");
    uint64_t nt = 0, nkv = 0;
    cur_u32(&c, &g->version, "version");
    if (g->version == 1) return err_set(e, "%s: GGUF version 1 is not supported (2 or 3)", g->path);
    if (g->version != 2 && g->version != 3) {
        if ((g->version & 0xffff) == 0)
            return err_set(e, "%s: big-endian GGUF files are not supported", g->path);
        return err_set(e, "%s: unsupported GGUF version %u (2 or 3)", g->path, g->version);
    }
    cur_u64(&c, &nt, "tensor count");
    cur_u64(&c, &nkv, "metadata count");
    // every kv takes at least 12 bytes, every tensor info at least 24
    if (nkv > g->map.size / 12 || nt > g->map.size / 24 || nt > INT32_MAX)
        return err_set(e, "%s: corrupt GGUF header (%llu tensors, %llu metadata keys)", g->path,
                       (unsigned long long)nt, (unsigned long long)nkv);
    g->kv = xcalloc((size_t)nkv + 1, sizeof(Kv), "GGUF metadata", e);
    g->t = xcalloc((size_t)nt + 1, sizeof(GgufTensor), "GGUF tensor infos", e);
    if (!g->kv || !g->t) return -1;
    for (g->n_kv = 0; g->n_kv < nkv; g->n_kv++)
        if (read_kv(&c, &g->kv[g->n_kv], g->n_kv)) {
            g->n_kv++;  // so gguf_close frees the partly read entry
            return -1;
        }
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const Kv *al = find_kv(g, "general.alignment");
    if (al) {
        uint32_t a;
        if (gguf_get_u32(g, "general.alignment", &a) || a == 0 || (a & (a - 1)))
            return err_set(e, "%s: general.alignment must be a power of two", g->path);
        g->alignment = a;
    }
    for (g->n_t = 0; g->n_t < (int)nt; g->n_t++) {
        GgufTensor *t = &g->t[g->n_t];
        if (read_tensor_info(&c, t, g->n_t)) return -1;
        if (gguf_find_tensor(g, t->name))
            return err_set(e, "%s: tensor %s appears twice", g->path, t->name);
    }
    size_t start = (size_t)(c.p - c.base);
    start = (start + g->alignment - 1) / g->alignment * g->alignment;
    size_t data_size = g->map.size >= start ? g->map.size - start : 0;
    for (int i = 0; i < g->n_t; i++) {
        GgufTensor *t = &g->t[i];
        uint64_t off = (uint64_t)(uintptr_t)t->data;
        if (off % g->alignment)
            return err_set(e, "%s: tensor %s: data offset %llu is not a multiple of the alignment "
                              "%u",
                           g->path, t->name, (unsigned long long)off, g->alignment);
        if (off > data_size || t->nbytes > data_size - off)
            return err_set(e, "%s: tensor %s: data [%llu, +%zu) lies outside the %zu-byte data "
                              "block (truncated file?)",
                           g->path, t->name, (unsigned long long)off, t->nbytes, data_size);
        t->data = g->map.data + start + off;
    }
    return 0;
}

Gguf *gguf_open(const char *path, Err *e) {
    Gguf *g = xcalloc(1, sizeof *g, "GGUF reader", e);
    if (!g) return NULL;
    snprintf(g->path, sizeof g->path, "%s", path);
    if (filemap_open(&g->map, path, e) || parse(g, e)) {
        gguf_close(g);
        return NULL;
    }
    return g;
}

int gguf_tensor_count(const Gguf *g) { return g->n_t; }

const GgufTensor *gguf_tensor_at(const Gguf *g, int i) { return (i >= 0 && i < g->n_t) ? &g->t[i] : NULL; }

const GgufTensor *gguf_find_tensor(const Gguf *g, const char *name) {
    for (int i = 0; i < g->n_t; i++)
        if (!strcmp(g->t[i].name, name)) return &g->t[i];
    return NULL;
}

int gguf_read_f32(const Gguf *g, const char *name, float *out, int64_t n, Err *e) {
    const GgufTensor *t = gguf_find_tensor(g, name);
    if (!t) return err_set(e, "%s: tensor %s not found", g->path, name);
    if (t->n != n)
        return err_set(e, "%s: tensor %s has %lld elements, expected %lld", g->path, name,
                       (long long)t->n, (long long)n);
    if (st_convert_f32(as_st_dtype(t->type), t->data, n, out))
        return err_set(e, "%s: tensor %s: unsupported tensor type %s (only F32/F16/BF16 can be "
                          "loaded)",
                       g->path, name, type_info((int)t->type)->name);
    return 0;
}

// Integer or float value at p of type vt as double / as int64 (ok = 0 when it is that kind).
static int scalar_int(uint32_t vt, const uint8_t *p, int64_t *iv, uint64_t *uv) {
    uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
    *iv = 0;
    *uv = 0;
    switch (vt) {
    case GGUF_U8: case GGUF_BOOL: memcpy(&u8, p, 1); *uv = u8; return 1;
    case GGUF_I8: memcpy(&i8, p, 1); *iv = i8; return 2;
    case GGUF_U16: memcpy(&u16, p, 2); *uv = u16; return 1;
    case GGUF_I16: memcpy(&i16, p, 2); *iv = i16; return 2;
    case GGUF_U32: memcpy(&u32, p, 4); *uv = u32; return 1;
    case GGUF_I32: memcpy(&i32, p, 4); *iv = i32; return 2;
    case GGUF_U64: memcpy(uv, p, 8); return 1;
    case GGUF_I64: memcpy(iv, p, 8); return 2;
    default: return 0;
    }
}

int gguf_get_u32(const Gguf *g, const char *key, uint32_t *out) {
    const Kv *kv = find_kv(g, key);
    if (!kv || kv->type == GGUF_BOOL || !kv->val) return -1;
    int64_t iv;
    uint64_t uv;
    int kind = scalar_int(kv->type, kv->val, &iv, &uv);
    if (kind == 2) {
        if (iv < 0) return -1;
        uv = (uint64_t)iv;
    } else if (kind != 1) {
        return -1;
    }
    if (uv > UINT32_MAX) return -1;
    *out = (uint32_t)uv;
    return 0;
}

int gguf_get_f32(const Gguf *g, const char *key, float *out) {
    const Kv *kv = find_kv(g, key);
    if (!kv || !kv->val) return -1;
    if (kv->type == GGUF_F32) {
        memcpy(out, kv->val, 4);
        return 0;
    }
    if (kv->type == GGUF_F64) {
        double d;
        memcpy(&d, kv->val, 8);
        *out = (float)d;
        return 0;
    }
    return -1;
}

int gguf_get_bool(const Gguf *g, const char *key, int *out) {
    const Kv *kv = find_kv(g, key);
    if (!kv || kv->type != GGUF_BOOL || !kv->val) return -1;
    *out = kv->val[0] != 0;
    return 0;
}

uint64_t gguf_kv_count(const Gguf *g) { return g->n_kv; }

const char *gguf_kv_key(const Gguf *g, uint64_t i, GgufValueType *type) {
    if (i >= g->n_kv || !g->kv[i].key) return NULL;
    if (type) *type = g->kv[i].type;
    return g->kv[i].key;
}

const char *gguf_get_str(const Gguf *g, const char *key) {
    const Kv *kv = find_kv(g, key);
    return kv && kv->type == GGUF_STRING ? kv->str : NULL;
}

int gguf_get_arr(const Gguf *g, const char *key, GgufValueType *elem_type, uint64_t *count) {
    const Kv *kv = find_kv(g, key);
    if (!kv || kv->type != GGUF_ARRAY) return -1;
    *elem_type = kv->elem;
    *count = kv->count;
    return 0;
}

const char *gguf_arr_str(const Gguf *g, const char *key, uint64_t i) {
    const Kv *kv = find_kv(g, key);
    if (!kv || kv->type != GGUF_ARRAY || kv->elem != GGUF_STRING || i >= kv->count) return NULL;
    return kv->strs[i];
}

// NAN when key is not a numeric array or i is out of range.
double gguf_arr_num(const Gguf *g, const char *key, uint64_t i) {
    const Kv *kv = find_kv(g, key);
    if (!kv || kv->type != GGUF_ARRAY || i >= kv->count) return NAN;
    int sz = scalar_size(kv->elem);
    if (!sz) return NAN;
    const uint8_t *p = kv->arr + i * (uint64_t)sz;
    if (kv->elem == GGUF_F32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    if (kv->elem == GGUF_F64) {
        double d;
        memcpy(&d, p, 8);
        return d;
    }
    int64_t iv;
    uint64_t uv;
    return scalar_int(kv->elem, p, &iv, &uv) == 2 ? (double)iv : (double)uv;
}

// ---- writer -------------------------------------------------------------------------------

typedef struct {
    char *key;
    uint8_t *val;  // serialized: u32 type + value
    size_t len;
} WKv;

struct GgufWriter {
    WKv *kv;
    int n_kv, cap_kv;
    EncList t;  // shape = ne (fastest first)
};

// A growable byte buffer for serializing values.
typedef struct {
    uint8_t *p;
    size_t len, cap;
    int oom;
} Buf;

static void buf_put(Buf *b, const void *d, size_t n) {
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void buf_u32(Buf *b, uint32_t v) { buf_put(b, &v, 4); }
static void buf_u64(Buf *b, uint64_t v) { buf_put(b, &v, 8); }
static void buf_str(Buf *b, const char *s) {
    uint64_t n = strlen(s);
    buf_u64(b, n);
    buf_put(b, s, (size_t)n);
}

GgufWriter *ggw_new(Err *e) { return xcalloc(1, sizeof(GgufWriter), "GGUF writer", e); }

void ggw_free(GgufWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    free(w->kv);
    enc_free(&w->t);
    free(w);
}

// Takes ownership of the serialized value b (replacing an earlier value of key).
static int set_kv(GgufWriter *w, const char *key, Buf *b, Err *e) {
    if (b->oom) {
        free(b->p);
        return err_set(e, "out of memory writing GGUF metadata %s", key);
    }
    for (int i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kv[i].key, key)) {
            free(w->kv[i].val);
            w->kv[i].val = b->p;
            w->kv[i].len = b->len;
            return 0;
        }
    if (w->n_kv == w->cap_kv) {
        int cap = w->cap_kv ? 2 * w->cap_kv : 32;
        WKv *kv = realloc(w->kv, (size_t)cap * sizeof *kv);
        if (!kv) {
            free(b->p);
            return err_set(e, "out of memory writing GGUF metadata %s", key);
        }
        w->kv = kv;
        w->cap_kv = cap;
    }
    char *k = strdup(key);
    if (!k) {
        free(b->p);
        return err_set(e, "out of memory writing GGUF metadata %s", key);
    }
    w->kv[w->n_kv++] = (WKv){k, b->p, b->len};
    return 0;
}

int ggw_set_str(GgufWriter *w, const char *key, const char *val, Err *e) {
    Buf b = {0};
    buf_u32(&b, GGUF_STRING);
    buf_str(&b, val);
    return set_kv(w, key, &b, e);
}

int ggw_set_u32(GgufWriter *w, const char *key, uint32_t val, Err *e) {
    Buf b = {0};
    buf_u32(&b, GGUF_U32);
    buf_u32(&b, val);
    return set_kv(w, key, &b, e);
}

int ggw_set_bool(GgufWriter *w, const char *key, int val, Err *e) {
    Buf b = {0};
    uint8_t v = val ? 1 : 0;
    buf_u32(&b, GGUF_BOOL);
    buf_put(&b, &v, 1);
    return set_kv(w, key, &b, e);
}

int ggw_set_f32(GgufWriter *w, const char *key, float val, Err *e) {
    Buf b = {0};
    buf_u32(&b, GGUF_F32);
    buf_put(&b, &val, 4);
    return set_kv(w, key, &b, e);
}

int ggw_set_arr_str(GgufWriter *w, const char *key, const char *const *vals, uint64_t n, Err *e) {
    Buf b = {0};
    buf_u32(&b, GGUF_ARRAY);
    buf_u32(&b, GGUF_STRING);
    buf_u64(&b, n);
    for (uint64_t i = 0; i < n; i++) buf_str(&b, vals[i]);
    return set_kv(w, key, &b, e);
}

// n elements of 4 bytes each with element type et.
static int set_arr4(GgufWriter *w, const char *key, GgufValueType et, const void *vals, uint64_t n,
                    Err *e) {
    Buf b = {0};
    buf_u32(&b, GGUF_ARRAY);
    buf_u32(&b, et);
    buf_u64(&b, n);
    buf_put(&b, vals, (size_t)n * 4);
    return set_kv(w, key, &b, e);
}

int ggw_set_arr_f32(GgufWriter *w, const char *key, const float *vals, uint64_t n, Err *e) {
    return set_arr4(w, key, GGUF_F32, vals, n, e);
}

int ggw_set_arr_i32(GgufWriter *w, const char *key, const int32_t *vals, uint64_t n, Err *e) {
    return set_arr4(w, key, GGUF_I32, vals, n, e);
}

int ggw_add_f32(GgufWriter *w, const char *name, GgmlType type, int n_dims, const int64_t *ne,
                const float *data, Err *e) {
    static const char WHO[] = "GGUF writer";
    if (n_dims < 1) return err_set(e, "%s: tensor %s: no dimensions", WHO, name);
    if (as_st_dtype(type) != ST_OTHER) {
        if (enc_add(&w->t, WHO, name, as_st_dtype(type), n_dims, ne, data, e)) return -1;
        w->t.t[w->t.n - 1].gtype = type;
        return 0;
    }
    const TypeInfo *ti = type_info(type);
    if (!ggq_quantizable(type))
        return err_set(e, "%s: tensor %s: cannot write type %s (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)",
                       WHO, name, ti ? ti->name : "?");
    EncTensor *t = enc_push(&w->t, WHO, name, n_dims, ne, ti->block, (size_t)ti->bytes, e);
    if (!t) return -1;
    t->gtype = type;
    int64_t rows = 1;
    for (int d = 1; d < n_dims; d++) rows *= ne[d];
    GgqMatrix m;
    int rc = ggq_quantize_rows(type, data, rows, ne[0], t->data)
                 ? err_set(e, "%s: tensor %s: cannot quantize rows of %lld values", WHO, name, (long long)ne[0])
                 : ggq_init(&m, type, rows, ne[0], t->data, t->nbytes, name, e) || ggq_check_scales(&m, e);
    if (rc) {  // an empty tensor, or a non-finite scale: not kept, the writer stays usable
        free(t->name);
        free(t->data);
        w->t.n--;
        return -1;
    }
    return 0;
}

static size_t pad_to(size_t x, size_t a) { return (x + a - 1) / a * a; }

int ggw_save(GgufWriter *w, const char *path, Err *e) {
    const size_t A = GGUF_DEFAULT_ALIGNMENT;
    Buf h = {0};
    buf_put(&h, "GGUF", 4);
    buf_u32(&h, 3);
    buf_u64(&h, (uint64_t)w->t.n);
    buf_u64(&h, (uint64_t)w->n_kv);
    for (int i = 0; i < w->n_kv; i++) {
        buf_str(&h, w->kv[i].key);
        buf_put(&h, w->kv[i].val, w->kv[i].len);
    }
    size_t off = 0;
    for (int i = 0; i < w->t.n; i++) {
        const EncTensor *t = &w->t.t[i];
        buf_str(&h, t->name);
        buf_u32(&h, (uint32_t)t->ndim);
        for (int d = 0; d < t->ndim; d++) buf_u64(&h, (uint64_t)t->shape[d]);
        buf_u32(&h, (uint32_t)t->gtype);
        buf_u64(&h, off);
        off = pad_to(off + t->nbytes, A);
    }
    static const uint8_t zeros[GGUF_DEFAULT_ALIGNMENT];
    buf_put(&h, zeros, pad_to(h.len, A) - h.len);
    int rc = h.oom ? err_set(e, "%s: out of memory building the GGUF header", path)
                   : enc_save(path, h.p, h.len, &w->t, A, e);
    free(h.p);
    return rc;
}
