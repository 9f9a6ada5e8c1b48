// tokenizer — one interface (a small table of operations, data/tok_internal.h) over the
// tokenizer implementations: SentencePiece .model files through data/spm_shim.cpp (here),
// and BPE from tokenizer.json files and GGUF vocabularies (data/bpe*.c).
#include <stdlib.h>
#include <string.h>

#include "data/tok_internal.h"
#include "data/unicode_internal.h"

// ---- the C++ shim (data/spm_shim.cpp) ---------------------------------------------------------
void *spm_shim_load(const char *data, size_t n, char *err, size_t errn);
void spm_shim_free(void *h);
int spm_shim_encode(const void *h, const char *text, size_t len, int **ids, char *err, size_t errn);
char *spm_shim_decode(const void *h, const int *ids, int n, char *err, size_t errn);
int spm_shim_piece_size(const void *h);
int spm_shim_bos(const void *h);
int spm_shim_eos(const void *h);
int spm_shim_unk(const void *h);
const char *spm_shim_piece(const void *h, int id);
int spm_shim_kind(const void *h, int id);  // 0 normal, 1 control, 2 byte, 3 unknown, 4 unused
enum { SPM_NORMAL = 0, SPM_CONTROL = 1, SPM_BYTE = 2, SPM_UNKNOWN = 3, SPM_UNUSED = 4 };

// ---- SentencePiece backend --------------------------------------------------------------------
// Two processors over the same model: `sp` as the file says, and `sp_cont` with the
// normalizer's add_dummy_prefix switched off (for tok_encode_cont). The model file is a
// serialized protobuf ModelProto; we read three things from it ourselves and write the
// patched copy (see spm_patch).
typedef struct {
    void *sp, *sp_cont;
    int dummy_prefix;       // normalizer: add_dummy_prefix
    int rm_ws;              // normalizer: remove_extra_whitespaces (leading/trailing/repeated ' ')
    char unk_surface[64];   // how Decode shows <unk>
} Spm;

// Protobuf wire format: one field at *p. Returns 0 on malformed input.
typedef struct {
    uint32_t field;
    int wt;                 // 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32
    uint64_t v;             // varint value
    const uint8_t *body;    // wt 2: bytes
    size_t len;
} PbField;

static int pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return 0;
        uint8_t c = *(*p)++;
        r |= (uint64_t)(c & 0x7f) << shift;
        if (c < 0x80) { *v = r; return 1; }
    }
    return 0;
}

static int pb_next(const uint8_t **p, const uint8_t *end, PbField *f) {
    uint64_t tag;
    if (!pb_varint(p, end, &tag)) return 0;
    f->field = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    f->body = NULL; f->len = 0; f->v = 0;
    switch (f->wt) {
    case 0: return pb_varint(p, end, &f->v);
    case 1: if (end - *p < 8) return 0; *p += 8; return 1;
    case 5: if (end - *p < 4) return 0; *p += 4; return 1;
    case 2:
        if (!pb_varint(p, end, &f->v) || f->v > (uint64_t)(end - *p)) return 0;
        f->body = *p; f->len = (size_t)f->v; *p += f->len;
        return 1;
    default: return 0;
    }
}

// Reads NormalizerSpec (ModelProto field 3: add_dummy_prefix = 3, remove_extra_whitespaces = 4,
// both default true) and TrainerSpec.unk_surface (ModelProto field 2, field 44), and writes
// the model for sp_cont into *out: every top-level field but self_test_data (4, whose
// samples were made with the dummy prefix and would fail the load-time self test) and then
// a NormalizerSpec {add_dummy_prefix: false}, which protobuf merges into the first one.
static int spm_patch(const uint8_t *m, size_t n, Spm *s, uint8_t **out, size_t *out_n) {
    int dummy = 1, rm_ws = 1;
    snprintf(s->unk_surface, sizeof s->unk_surface, " \xE2\x81\x87 ");
    uint8_t *o = malloc(n + 4);
    if (!o) return 0;
    size_t k = 0;
    const uint8_t *p = m, *end = m + n;
    while (p < end) {
        const uint8_t *start = p;
        PbField f;
        if (!pb_next(&p, end, &f)) { free(o); return 0; }
        if (f.field == 4) continue;
        memcpy(o + k, start, (size_t)(p - start));
        k += (size_t)(p - start);
        if (f.wt != 2 || (f.field != 2 && f.field != 3)) continue;
        const uint8_t *q = f.body, *qend = f.body + f.len;
        while (q < qend) {
            PbField g;
            if (!pb_next(&q, qend, &g)) { free(o); return 0; }
            if (f.field == 3 && g.wt == 0 && g.field == 3) dummy = g.v != 0;
            if (f.field == 3 && g.wt == 0 && g.field == 4) rm_ws = g.v != 0;
            if (f.field == 2 && g.wt == 2 && g.field == 44 && g.len < sizeof s->unk_surface) {
                memcpy(s->unk_surface, g.body, g.len);
                s->unk_surface[g.len] = '\0';
            }
        }
    }
    // field 3 (length-delimited), length 2: { field 3 (varint) = 0 }
    o[k++] = 0x1a; o[k++] = 0x02; o[k++] = 0x18; o[k++] = 0x00;
    s->dummy_prefix = dummy;
    s->rm_ws = rm_ws;
    *out = o;
    *out_n = k;
    return 1;
}

// A continuation is encoded without the dummy prefix, except when the model removes extra
// whitespace and the text starts with a space: that normalizer would drop the space, so
// the dummy-prefix processor is used, which turns the leading spaces into one "▁" (as the
// whole text would be tokenized).
static int spm_encode(const Tokenizer *t, const char *text, size_t len, int cont, int **ids, Err *e) {
    const Spm *s = t->impl;
    char msg[256] = "";
    int keep_space = cont && s->rm_ws && s->dummy_prefix && len > 0 && text[0] == ' ';
    int n = spm_shim_encode(cont && !keep_space ? s->sp_cont : s->sp, text, len, ids, msg, sizeof msg);
    if (n < 0) return err_set(e, "%s: cannot encode text: %s", t->path, msg);
    return n;
}

static char *spm_decode(const Tokenizer *t, const int *ids, int n, Err *e) {
    const Spm *s = t->impl;
    char msg[256] = "";
    char *r = spm_shim_decode(s->sp, ids, n, msg, sizeof msg);
    if (!r) err_set(e, "%s: cannot decode ids: %s", t->path, msg);
    return r;
}

// Copies src into buf (size n >= 1), truncating; returns buf.
static const char *copy_str(char *buf, size_t n, const char *src) {
    snprintf(buf, n, "%s", src);
    return buf;
}

static const char *spm_piece_text(const Tokenizer *t, int prev, int id, char *buf, size_t n) {
    const Spm *s = t->impl;
    int kind = spm_shim_kind(s->sp, id);
    const char *piece = spm_shim_piece(s->sp, id);
    if (kind < 0 || kind == SPM_CONTROL || !piece) return copy_str(buf, n, "");
    if (kind == SPM_UNKNOWN) return copy_str(buf, n, s->unk_surface);
    unsigned byte;
    if (kind == SPM_BYTE && strlen(piece) == 6 && sscanf(piece, "<0x%2X>", &byte) == 1) {
        buf[0] = (char)byte;  // one raw byte: a multi-byte character arrives over several calls
        if (n > 1) buf[1] = '\0';
        return buf;
    }
    // "▁" (U+2581, E2 96 81) is a space; at the start of a stream (nothing or only control
    // pieces before) the first one is the dummy prefix and is dropped, as Decode does.
    int at_start = prev < 0 || spm_shim_kind(s->sp, prev) == SPM_CONTROL;
    if (at_start && (s->dummy_prefix || s->rm_ws) && strncmp(piece, "\xE2\x96\x81", 3) == 0) piece += 3;
    size_t k = 0;
    while (*piece && k + 1 < n) {
        if (strncmp(piece, "\xE2\x96\x81", 3) == 0) { buf[k++] = ' '; piece += 3; }
        else buf[k++] = *piece++;
    }
    buf[k] = '\0';
    return buf;
}

static int spm_piece_id(const Tokenizer *t, const char *piece) {
    const Spm *s = t->impl;
    for (int id = 0; id < t->vocab; id++) {
        const char *p = spm_shim_piece(s->sp, id);
        if (p && !strcmp(p, piece)) return id;
    }
    return -1;
}

static void spm_destroy(void *impl) {
    Spm *s = impl;
    if (!s) return;
    if (s->sp) spm_shim_free(s->sp);
    if (s->sp_cont) spm_shim_free(s->sp_cont);
    free(s);
}

static const TokOps spm_ops = {spm_encode, spm_decode, spm_piece_text, spm_piece_id, spm_destroy};

static Tokenizer *spm_load(Tokenizer *t, const char *data, size_t len, Err *e) {
    char msg[256] = "";
    Spm *s = xcalloc(1, sizeof *s, "SentencePiece tokenizer", e);
    if (!s) return NULL;
    t->impl = s;
    t->ops = &spm_ops;
    s->sp = spm_shim_load(data, len, msg, sizeof msg);
    if (!s->sp) {
        err_set(e, "%s: not a valid SentencePiece model: %s", t->path, msg);
        return NULL;
    }
    uint8_t *patched = NULL;
    size_t plen = 0;
    if (!spm_patch((const uint8_t *)data, len, s, &patched, &plen)) {
        err_set(e, "%s: not a valid SentencePiece model (malformed protobuf)", t->path);
        return NULL;
    }
    s->sp_cont = spm_shim_load((const char *)patched, plen, msg, sizeof msg);
    free(patched);
    if (!s->sp_cont) {
        err_set(e, "%s: cannot load SentencePiece model without dummy prefix: %s", t->path, msg);
        return NULL;
    }
    t->vocab = spm_shim_piece_size(s->sp);
    t->bos = spm_shim_bos(s->sp);
    t->eos = spm_shim_eos(s->sp);
    if (t->vocab <= 0) {
        err_set(e, "%s: SentencePiece model has no pieces", t->path);
        return NULL;
    }
    if (t->bos >= t->vocab) t->bos = -1;
    if (t->eos >= t->vocab) t->eos = -1;
    return t;
}

// ---- public API -------------------------------------------------------------------------------
// What a file is: GGUF (magic), tokenizer.json (a JSON object) or a SentencePiece model.
typedef enum { KIND_SPM, KIND_JSON, KIND_GGUF, KIND_EMPTY } FileKind;

static int file_kind(const char *path, FileKind *kind, Err *e) {
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(e, "cannot open tokenizer %s", path);
    unsigned char head[64];
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    size_t i = 0;
    while (i < n && (head[i] == ' ' || head[i] == '\n' || head[i] == '\r' || head[i] == '\t')) i++;
    *kind = n == 0 ? KIND_EMPTY : n >= 4 && !memcmp(head, "GGUF", 4) ? KIND_GGUF : i < n && head[i] == '{' ? KIND_JSON : KIND_SPM;
    return 0;
}

Tokenizer *tok_load(const char *path, Err *e) {
    char file[1024];
    snprintf(file, sizeof file, "%s", path);
    if (is_directory(path)) {  // a model directory: tokenizer.json, else tokenizer.model
        char a[1024], b[1024];
        path_join(a, sizeof a, path, "tokenizer.json");
        path_join(b, sizeof b, path, "tokenizer.model");
        if (file_exists(a)) snprintf(file, sizeof file, "%s", a);
        else if (file_exists(b)) snprintf(file, sizeof file, "%s", b);
        else {
            err_set(e, "%s: no tokenizer.json or tokenizer.model in this directory", path);
            return NULL;
        }
    }
    FileKind kind;
    if (file_kind(file, &kind, e)) return NULL;
    if (kind == KIND_EMPTY) {
        err_set(e, "%s: empty tokenizer file", file);
        return NULL;
    }
    Tokenizer *t = xcalloc(1, sizeof *t, "tokenizer", e);
    if (!t) return NULL;
    snprintf(t->path, sizeof t->path, "%s", file);
    Tokenizer *r = NULL;
    if (kind == KIND_JSON) {
        r = bpe_load_json(t, file, e);
    } else if (kind == KIND_GGUF) {
        r = bpe_load_gguf(t, file, e);
    } else {
        size_t len = 0;
        char *data = read_file(file, &len, e);
        if (data) r = spm_load(t, data, len, e);
        free(data);
    }
    if (!r) tok_free(t);
    return r;
}

void tok_free(Tokenizer *t) {
    if (!t) return;
    if (t->ops && t->impl) t->ops->destroy(t->impl);
    free(t);
}

int tok_vocab_size(const Tokenizer *t) { return t->vocab; }
int tok_bos(const Tokenizer *t) { return t->bos; }
int tok_eos(const Tokenizer *t) { return t->eos; }

static int encode_common(const Tokenizer *t, const char *text, int cont, int **ids, Err *e) {
    *ids = NULL;
    if (!text) return err_set(e, "%s: cannot encode NULL text", t->path);
    return t->ops->encode(t, text, strlen(text), cont, ids, e);
}

int tok_encode(const Tokenizer *t, const char *text, int **ids, Err *e) {
    return encode_common(t, text, 0, ids, e);
}

int tok_encode_cont(const Tokenizer *t, const char *text, int **ids, Err *e) {
    return encode_common(t, text, 1, ids, e);
}

char *tok_decode(const Tokenizer *t, const int *ids, int n, Err *e) {
    if (n < 0 || (n > 0 && !ids)) {
        err_set(e, "%s: cannot decode %d ids", t->path, n);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab) {
            err_set(e, "%s: token id %d at position %d is out of range (vocab %d)", t->path, ids[i], i,
                    t->vocab);
            return NULL;
        }
    }
    return t->ops->decode(t, ids, n, e);
}

const char *tok_piece_text(const Tokenizer *t, int prev, int id, char *buf, size_t n) {
    if (!buf || n == 0) return "";
    if (id < 0 || id >= t->vocab) { buf[0] = '\0'; return buf; }
    if (prev >= t->vocab) prev = -1;
    return t->ops->piece_text(t, prev, id, buf, n);
}

int tok_piece_id(const Tokenizer *t, const char *piece) {
    return piece ? t->ops->piece_id(t, piece) : -1;
}

void tok_stream_init(TokStream *s) {
    memset(s, 0, sizeof *s);
    s->prev = -1;
}

// Writes the complete characters of p[0..len) into buf (invalid sequences as U+FFFD) and
// keeps a trailing unfinished character in s->pend, unless flush.
static const char *stream_emit(TokStream *s, const uint8_t *p, size_t len, char *buf, size_t n, int flush) {
    size_t keep = 0;
    for (size_t k = len < 3 ? len : 3; k >= 1 && !flush; k--) {
        int incomplete = 0;
        if (utf8_valid_prefix(p + len - k, k, &incomplete) == 0 && incomplete) { keep = k; break; }
    }
    char *out = malloc(3 * len + 1);
    size_t m = out ? utf8_sanitize(p, len - keep, out) : 0;
    if (m > n - 1) m = n - 1;
    memcpy(buf, out ? out : "", m);
    buf[m] = '\0';
    free(out);
    memcpy(s->pend, p + len - keep, keep);
    s->npend = (int)keep;
    return buf;
}

const char *tok_stream_next(const Tokenizer *t, TokStream *s, int id, char *buf, size_t n) {
    if (!buf || n == 0) return "";
    uint8_t text[1024 + sizeof s->pend];
    memcpy(text, s->pend, (size_t)s->npend);
    tok_piece_text(t, s->prev, id, (char *)text + s->npend, 1024);
    size_t pl = strlen((char *)text + s->npend);
    // the stream has begun once a piece with text came (even if its text was the dropped
    // dummy-prefix space): a piece's text in mid-stream is that after itself
    char mid[8];
    if (*tok_piece_text(t, id, id, mid, sizeof mid)) s->prev = id;
    return stream_emit(s, text, (size_t)s->npend + pl, buf, n, 0);
}

const char *tok_stream_flush(TokStream *s, char *buf, size_t n) {
    if (!buf || n == 0) return "";
    uint8_t text[sizeof s->pend];
    memcpy(text, s->pend, (size_t)s->npend);
    return stream_emit(s, text, (size_t)s->npend, buf, n, 1);
}
