// The quantized-base cache (`--quant-cache PATH`): a model loaded with --quant nf4 written as
// it is held in memory, so the next run reads it instead of converting and quantizing the
// source again. The file names its source (every file of it: path, size, modification time),
// and a cache whose source differs, or that is damaged, is ignored (and rewritten).
//
// Layout (native byte order, an x86 is little-endian; every count is checked on reading):
//   "LORANF4C" u32 version u32 sizeof(ModelConfig)
//   u32 n + source identity text (n bytes)
//   ModelConfig (raw) u32 quant
//   emb (V*C bf16) [lm_head (V*C bf16) unless tied] final_norm (C f32)
//   per layer: attn_norm (C f32) ffn_norm (C f32), per target q..down:
//     i64 rows i64 cols f32 offset, scale2 (nblocks2 f32), absmax_q (nblocks u8), packed ((n+1)/2 u8)
//     u8 has_bias [bias (rows f32)]
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/io_internal.h"
#include "quant/quant.h"

#define CACHE_MAGIC "LORANF4C"
#define CACHE_VERSION 2u

// "path size mtime;" for path, or for each *.safetensors / *.json file of a directory in name
// order. Returns 0, -1 when the text does not fit or a file cannot be read.
static int source_identity(const char *path, char *buf, size_t n) {
    struct stat sb;
    size_t used = 0;
    if (stat(path, &sb)) return -1;
    if (!S_ISDIR(sb.st_mode)) {
        int k = snprintf(buf, n, "%s %lld %lld;", path, (long long)sb.st_size, (long long)sb.st_mtime);
        return k > 0 && (size_t)k < n ? 0 : -1;
    }
    struct dirent **list;
    int cnt = scandir(path, &list, NULL, alphasort);
    if (cnt < 0) return -1;
    int rc = 0;
    buf[0] = 0;
    for (int i = 0; i < cnt; i++) {
        const char *nm = list[i]->d_name;
        size_t len = strlen(nm);
        int want = (len > 12 && !strcmp(nm + len - 12, ".safetensors")) || (len > 5 && !strcmp(nm + len - 5, ".json"));
        char p[2048];
        if (want && !rc) {
            snprintf(p, sizeof p, "%s/%s", path, nm);
            if (stat(p, &sb)) rc = -1;
            int k = rc ? 0 : snprintf(buf + used, n - used, "%s %lld %lld;", nm, (long long)sb.st_size, (long long)sb.st_mtime);
            if (k < 0 || (size_t)k >= n - used) rc = -1;
            else used += (size_t)k;
        }
        free(list[i]);
    }
    free(list);
    return rc;
}

// ---- writing ----------------------------------------------------------------------------------

static int put(AtomicFile *af, const void *p, size_t n, Err *e) { return atomic_write(af, p, n, e); }

static int put_weight(AtomicFile *af, const Weight *w, Err *e) {
    const Nf4Matrix *q = w->data;
    int64_t rc[2] = {q->rows, q->cols};
    if (put(af, rc, sizeof rc, e) || put(af, &q->offset, sizeof q->offset, e) ||
        put(af, q->scale2, (size_t)q->nblocks2 * sizeof(float), e) || put(af, q->absmax_q, (size_t)q->nblocks, e) ||
        put(af, q->packed, (size_t)((q->n + 1) / 2), e))
        return -1;
    return 0;
}

int model_cache_write(const Model *m, const char *cache, const char *src, Err *e) {
    const ModelConfig *c = &m->cfg;
    char ident[8192];
    if (m->quant != QUANT_NF4 || m->emb.type != WT_BF16) return err_set(e, "%s: only an NF4 model can be cached", cache);
    if (source_identity(src, ident, sizeof ident)) return err_set(e, "%s: cannot describe the source files", src);
    AtomicFile af;
    if (atomic_open(&af, cache, e)) return -1;
    uint32_t hdr[2] = {CACHE_VERSION, (uint32_t)sizeof(ModelConfig)}, ilen = (uint32_t)strlen(ident),
             quant = (uint32_t)m->quant;
    int64_t V = c->vocab_size, C = c->dim;
    int rc = put(&af, CACHE_MAGIC, 8, e) || put(&af, hdr, sizeof hdr, e) || put(&af, &ilen, 4, e) ||
             put(&af, ident, ilen, e) || put(&af, c, sizeof *c, e) || put(&af, &quant, 4, e) ||
             put(&af, m->emb.data, (size_t)(V * C) * 2, e) ||
             (!c->tied_embeddings && put(&af, m->lm_head.data, (size_t)(V * C) * 2, e)) ||
             put(&af, m->final_norm->data, (size_t)C * sizeof(float), e);
    for (int l = 0; l < c->n_layers && !rc; l++) {
        const Layer *L = &m->layers[l];
        rc = put(&af, L->attn_norm->data, (size_t)C * sizeof(float), e) ||
             put(&af, L->ffn_norm->data, (size_t)C * sizeof(float), e);
        for (int t = 0; t < LT_COUNT && !rc; t++) {
            uint8_t hb = L->bias[t] != NULL;
            rc = put_weight(&af, &L->w[t], e) || put(&af, &hb, 1, e) ||
                 (hb && put(&af, L->bias[t]->data, (size_t)L->bias[t]->n * sizeof(float), e));
        }
    }
    if (rc) {
        atomic_abort(&af);
        return -1;
    }
    return atomic_close(&af, e);
}

// ---- reading ----------------------------------------------------------------------------------

typedef struct {
    FILE *f;
    int bad;
} In;

static void get(In *in, void *p, size_t n) {
    if (!in->bad && fread(p, 1, n, in->f) != n) in->bad = 1;
}

// n bytes into a new 64-byte aligned buffer (NULL when short or out of memory).
static void *get_new(In *in, size_t n) {
    if (in->bad) return NULL;
    void *p = xmalloc_aligned(n ? n : 1, "quantized-base cache", NULL);
    if (!p) in->bad = 1;
    else get(in, p, n);
    return p;
}

static Tensor *get_vec(In *in, int64_t n, const char *name) {
    float *d = get_new(in, (size_t)n * sizeof(float));
    int64_t shape[1] = {n};
    Tensor *t = d && !in->bad ? tensor_wrap(d, 1, shape, name, NULL) : NULL;
    if (!t) {
        free(d);
        in->bad = 1;
    }
    return t;
}

static void get_weight(In *in, int64_t rows, int64_t cols, const char *name, Weight *w) {
    int64_t rc[2] = {0, 0};
    get(in, rc, sizeof rc);
    Nf4Matrix *q = in->bad ? NULL : calloc(1, sizeof *q);
    if (!q || rc[0] != rows || rc[1] != cols) {
        free(q);
        in->bad = 1;
        return;
    }
    q->rows = rows;
    q->cols = cols;
    q->n = rows * cols;
    q->nblocks = (q->n + NF4_BLOCK - 1) / NF4_BLOCK;
    q->nblocks2 = (q->nblocks + NF4_BLOCK2 - 1) / NF4_BLOCK2;
    memcpy(q->code2, dyn_map_signed(), sizeof q->code2);
    q->name = name;
    get(in, &q->offset, sizeof q->offset);
    q->scale2 = get_new(in, (size_t)q->nblocks2 * sizeof(float));
    q->absmax_q = get_new(in, (size_t)q->nblocks);
    q->packed = get_new(in, (size_t)((q->n + 1) / 2));
    *w = (Weight){WT_NF4, rows, cols, q, 1, name};  // freed by model_free even when incomplete
}

Model *model_cache_read(const char *cache, const char *src, Err *e) {
    char ident[8192], have[8192];
    FILE *f = fopen(cache, "rb");
    if (!f) return NULL;
    In in = {f, 0};
    char magic[8];
    uint32_t hdr[2], ilen = 0, quant = 0;
    get(&in, magic, 8);
    get(&in, hdr, sizeof hdr);
    get(&in, &ilen, 4);
    if (in.bad || memcmp(magic, CACHE_MAGIC, 8) || hdr[0] != CACHE_VERSION || hdr[1] != sizeof(ModelConfig) ||
        ilen >= sizeof have || source_identity(src, ident, sizeof ident)) {
        fclose(f);
        return NULL;
    }
    get(&in, have, ilen);
    have[in.bad ? 0 : ilen] = 0;
    ModelConfig c;
    get(&in, &c, sizeof c);
    get(&in, &quant, 4);
    Model *m = NULL;
    if (in.bad || strcmp(have, ident) || quant != QUANT_NF4 || !(m = model_alloc(&c, src, NULL))) {
        fclose(f);
        return NULL;  // another source, or not a model we wrote: not an error, just not usable
    }
    int64_t V = c.vocab_size, C = c.dim;
    m->quant = QUANT_NF4;
    uint16_t *emb = get_new(&in, (size_t)(V * C) * 2);
    m->emb = (Weight){WT_BF16, V, C, emb, 1, "tok_emb"};
    m->lm_head = (Weight){WT_BF16, V, C, emb, 0, "lm_head"};
    if (!c.tied_embeddings) m->lm_head = (Weight){WT_BF16, V, C, get_new(&in, (size_t)(V * C) * 2), 1, "lm_head"};
    m->final_norm = get_vec(&in, C, "final_norm");
    for (int l = 0; l < c.n_layers && !in.bad; l++) {
        Layer *L = &m->layers[l];
        L->attn_norm = get_vec(&in, C, "attn_norm");
        L->ffn_norm = get_vec(&in, C, "ffn_norm");
        for (int t = 0; t < LT_COUNT && !in.bad; t++) {
            int64_t rows, cols;
            model_weight_dims(&c, (LoraTarget)t, &rows, &cols);
            get_weight(&in, rows, cols, lora_target_name((LoraTarget)t), &L->w[t]);
            uint8_t hb = 0;
            get(&in, &hb, 1);
            if (hb) L->bias[t] = get_vec(&in, rows, "bias");
        }
    }
    char extra;
    if (!in.bad && fread(&extra, 1, 1, f) == 1) in.bad = 1;  // trailing bytes: not ours
    fclose(f);
    if (in.bad) {
        model_free(m);
        err_set(e, "%s: damaged quantized-base cache (ignored)", cache);
        return NULL;
    }
    return m;
}
