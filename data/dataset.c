// dataset — JSONL instruction data -> token ids + loss masks, and seeded batching.
//
// Each line is one JSON object in one of four shapes (see data.h). Lines are read with
// getline (any length) and parsed with json-c (strict JSON, UTF-8 validated). A prompt/
// response example is laid out by its template and encoded by template_encode (exact mask
// boundary, see template.c); then BOS (mask 0) and EOS (mask 1: the model learns to stop)
// are added and the whole is truncated to seq_len.
#include <errno.h>
#include <limits.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

void data_options_default(DataOptions *o) {
    memset(o, 0, sizeof *o);
    o->format = FMT_AUTO;
    o->tpl = TPL_AUTO;
    o->seq_len = 512;
    o->train_on_inputs = 0;
    o->add_bos = 1;
    o->add_eos = 1;
    o->skip_bad_lines = 0;
}

static const char *const FORMAT_NAMES[] = {"auto", "alpaca", "completion", "messages", "text"};

DataFormat data_format_parse(const char *name, Err *e) {
    for (int i = 0; i < 5; i++)
        if (name && strcmp(name, FORMAT_NAMES[i]) == 0) return (DataFormat)i;
    err_set(e, "unknown data format \"%s\" (expected auto, alpaca, completion, messages or text)",
            name ? name : "");
    return (DataFormat)-1;
}

// ---- one line -> one example ------------------------------------------------------------------
// A reason for a malformed line is written into Err without the "FILE:LINE: " prefix; the
// caller adds it.

static const char *type_name(json_object *v) {
    switch (json_object_get_type(v)) {
    case json_type_null: return "null";
    case json_type_boolean: return "a boolean";
    case json_type_double:
    case json_type_int: return "a number";
    case json_type_object: return "an object";
    case json_type_array: return "an array";
    case json_type_string: return "a string";
    }
    return "?";
}

// Gets string field `key` of obj into *out (pointing into obj). where: "" or "messages[2]: ".
// Missing: error when required, else *out = "". null: error when required, else "".
static int get_string(json_object *obj, const char *key, int required, const char *where, const char **out,
                      Err *e) {
    json_object *v = NULL;
    *out = "";
    if (!json_object_object_get_ex(obj, key, &v)) {
        if (required) return err_set(e, "%smissing field \"%s\"", where, key);
        return 0;
    }
    if (v == NULL && !required) return 0;
    if (v == NULL || !json_object_is_type(v, json_type_string))
        return err_set(e, "%sfield \"%s\" must be a string, not %s", where, key, type_name(v));
    *out = json_object_get_string(v);
    return 0;
}

static int has_key(json_object *obj, const char *key) { return json_object_object_get_ex(obj, key, NULL); }

static DataFormat detect_format(json_object *obj) {
    if (has_key(obj, "messages")) return FMT_MESSAGES;
    if (has_key(obj, "instruction") || has_key(obj, "output")) return FMT_ALPACA;
    if (has_key(obj, "prompt") || has_key(obj, "completion")) return FMT_COMPLETION;
    if (has_key(obj, "text")) return FMT_TEXT;
    return FMT_AUTO;
}

// Token ids and mask of one parsed object (before BOS/EOS). Returns the count, -1 on error.
// *ends_with_reply: the example ends with response text (so EOS is a target).
static int encode_object(json_object *obj, const Tokenizer *tok, const DataOptions *o, int **ids,
                         uint8_t **mask, int *ends_with_reply, Err *e) {
    DataFormat fmt = o->format == FMT_AUTO ? detect_format(obj) : o->format;
    *ends_with_reply = 1;
    if (fmt == FMT_AUTO)
        return err_set(e, "no known fields (expected \"instruction\"/\"output\", \"prompt\"/\"completion\", "
                          "\"messages\" or \"text\")");
    if (fmt == FMT_TEXT) {
        const char *text;
        if (get_string(obj, "text", 1, "", &text, e)) return -1;
        int n = tok_encode(tok, text, ids, e);
        if (n < 0) return -1;
        *mask = xmalloc((size_t)n + 1, "loss mask", e);
        if (!*mask) { free(*ids); *ids = NULL; return -1; }
        memset(*mask, 1, (size_t)n);
        return n;
    }
    Template tpl = o->tpl;
    ChatMsg two[2];
    const ChatMsg *msgs = two;
    ChatMsg *many = NULL;
    int n_msgs = 2;
    const char *input = NULL;
    if (fmt == FMT_ALPACA) {
        if (tpl == TPL_AUTO) tpl = TPL_ALPACA;
        two[0].role = "user";
        two[1].role = "assistant";
        if (get_string(obj, "instruction", 1, "", &two[0].content, e)) return -1;
        if (get_string(obj, "input", 0, "", &input, e)) return -1;
        if (get_string(obj, "output", 1, "", &two[1].content, e)) return -1;
    } else if (fmt == FMT_COMPLETION) {
        if (tpl == TPL_AUTO) tpl = TPL_RAW;
        two[0].role = "user";
        two[1].role = "assistant";
        if (get_string(obj, "prompt", 1, "", &two[0].content, e)) return -1;
        if (get_string(obj, "completion", 1, "", &two[1].content, e)) return -1;
    } else {
        if (tpl == TPL_AUTO) tpl = o->chat_tpl != TPL_AUTO ? o->chat_tpl : TPL_CHATML;
        json_object *arr = NULL;
        if (!json_object_object_get_ex(obj, "messages", &arr)) return err_set(e, "missing field \"messages\"");
        if (!json_object_is_type(arr, json_type_array))
            return err_set(e, "field \"messages\" must be an array, not %s", type_name(arr));
        n_msgs = (int)json_object_array_length(arr);
        if (n_msgs == 0) return err_set(e, "field \"messages\" is an empty array");
        many = xmalloc((size_t)n_msgs * sizeof *many, "messages", e);
        if (!many) return -1;
        for (int i = 0; i < n_msgs; i++) {
            json_object *m = json_object_array_get_idx(arr, (size_t)i);
            char where[48];
            snprintf(where, sizeof where, "messages[%d]: ", i);
            if (!m || !json_object_is_type(m, json_type_object)) {
                free(many);
                return err_set(e, "messages[%d] must be an object, not %s", i, type_name(m));
            }
            if (get_string(m, "role", 1, where, &many[i].role, e) ||
                get_string(m, "content", 1, where, &many[i].content, e)) {
                free(many);
                return -1;
            }
            if (strcmp(many[i].role, "system") && strcmp(many[i].role, "user") && strcmp(many[i].role, "assistant")) {
                err_set(e, "messages[%d]: unknown role \"%.40s\" (expected system, user or assistant)", i,
                        many[i].role);
                free(many);
                return -1;
            }
        }
        msgs = many;
        *ends_with_reply = strcmp(many[n_msgs - 1].role, "assistant") == 0;
    }
    int n = template_encode(tpl, tok, msgs, n_msgs, input, ids, mask, e);
    free(many);
    return n;
}

// Parses and encodes one line. Returns 0 with *ex filled, 1 when the example has no
// trainable token (warned and skipped), -1 on a malformed line (reason in e).
static int parse_line(json_tokener *jt, const char *line, size_t len, const Tokenizer *tok, const DataOptions *o,
                      Example *ex, Err *e) {
    memset(ex, 0, sizeof *ex);
    if (strlen(line) != len) return err_set(e, "invalid JSON: NUL byte in line");
    if (len >= INT_MAX) return err_set(e, "line too long (%zu bytes)", len);
    json_tokener_reset(jt);
    // len + 1: the terminating NUL ends a bare top-level number
    json_object *obj = json_tokener_parse_ex(jt, line, (int)len + 1);
    enum json_tokener_error jerr = json_tokener_get_error(jt);
    if (jerr != json_tokener_success) {
        if (jerr == json_tokener_continue) return err_set(e, "invalid JSON: unexpected end of line");
        size_t col = json_tokener_get_parse_end(jt);  // past the end: the NUL we passed
        return err_set(e, "invalid JSON: %s at column %zu", json_tokener_error_desc(jerr), (col < len ? col : len) + 1);
    }
    size_t end = json_tokener_get_parse_end(jt);
    while (end < len && (line[end] == ' ' || line[end] == '\t')) end++;
    if (end < len) {
        json_object_put(obj);
        return err_set(e, "invalid JSON: unexpected text after the value at column %zu", end + 1);
    }
    if (!obj || !json_object_is_type(obj, json_type_object)) {
        int rc = err_set(e, "expected a JSON object, got %s", type_name(obj));
        json_object_put(obj);
        return rc;
    }
    int *body = NULL;
    uint8_t *bmask = NULL;
    int reply_last;
    int nb = encode_object(obj, tok, o, &body, &bmask, &reply_last, e);
    json_object_put(obj);
    if (nb < 0) return -1;
    int bos = o->add_bos ? tok_bos(tok) : -1, eos = o->add_eos ? tok_eos(tok) : -1;
    int n = nb + (bos >= 0) + (eos >= 0);
    ex->ids = xmalloc((size_t)n * sizeof *ex->ids + 1, "token ids", e);
    ex->mask = xmalloc((size_t)n + 1, "loss mask", e);
    if (!ex->ids || !ex->mask) {
        free(body); free(bmask); free(ex->ids); free(ex->mask);
        memset(ex, 0, sizeof *ex);
        return -1;
    }
    int k = 0;
    if (bos >= 0) { ex->ids[k] = bos; ex->mask[k++] = 0; }
    memcpy(ex->ids + k, body, (size_t)nb * sizeof *body);
    for (int i = 0; i < nb; i++) ex->mask[k + i] = o->train_on_inputs ? 1 : bmask[i];
    k += nb;
    if (eos >= 0) { ex->ids[k] = eos; ex->mask[k++] = (uint8_t)(reply_last || o->train_on_inputs); }
    if (k > 0) ex->mask[0] = 0;  // the first token is never predicted
    ex->n = k;
    free(body);
    free(bmask);
    return 0;
}

// ---- the file ---------------------------------------------------------------------------------
void dataset_free(Dataset *d) {
    if (!d) return;
    for (int i = 0; i < d->n; i++) {
        free(d->ex[i].ids);
        free(d->ex[i].mask);
    }
    free(d->ex);
    free(d);
}

static int has_target(const Example *ex) {
    for (int i = 1; i < ex->n; i++)
        if (ex->mask[i]) return 1;
    return 0;
}

Dataset *dataset_load(const char *path, const Tokenizer *tok, const DataOptions *o, Err *e) {
    if (!tok) { err_set(e, "%s: no tokenizer", path); return NULL; }
    if (o->seq_len < 2) { err_set(e, "seq_len must be at least 2 (got %d)", o->seq_len); return NULL; }
    FILE *f = fopen(path, "rb");
    if (!f) { err_set(e, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    Dataset *d = xcalloc(1, sizeof *d, "dataset", e);
    json_tokener *jt = json_tokener_new_ex(64);
    char *line = NULL;
    size_t line_cap = 0;
    int cap = 0, lineno = 0, failed = 0;
    if (!d || !jt) {
        if (d && !jt) err_set(e, "out of memory (JSON parser)");
        failed = 1;
    } else {
        snprintf(d->path, sizeof d->path, "%s", path);
        json_tokener_set_flags(jt, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    }
    ssize_t got;
    while (!failed && (got = getline(&line, &line_cap, f)) >= 0) {
        lineno++;
        size_t len = (size_t)got;
        char *s = line;
        if (lineno == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) { s += 3; len -= 3; }  // BOM
        while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r')) s[--len] = '\0';
        size_t sp = 0;
        while (sp < len && (s[sp] == ' ' || s[sp] == '\t')) sp++;
        if (sp == len) continue;  // empty line
        Example ex;
        Err why = {{0}};
        int rc = parse_line(jt, s, len, tok, o, &ex, &why);
        if (rc < 0) {
            if (!o->skip_bad_lines) {
                err_set(e, "%s:%d: %s", path, lineno, why.msg);
                failed = 1;
                break;
            }
            fprintf(stderr, "warning: %s:%d: %s (line skipped)\n", path, lineno, why.msg);
            d->n_skipped++;
            continue;
        }
        ex.line = lineno;
        int truncated = ex.n > o->seq_len;
        if (truncated) {
            ex.n = o->seq_len;
            d->n_truncated++;
        }
        if (!has_target(&ex)) {
            fprintf(stderr, "warning: %s:%d: no trainable token%s (example skipped)\n", path, lineno,
                    truncated ? " after truncation to seq_len" : "");
            free(ex.ids);
            free(ex.mask);
            continue;
        }
        if (d->n == cap) {
            int ncap = cap ? 2 * cap : 256;
            Example *p = realloc(d->ex, (size_t)ncap * sizeof *p);
            if (!p) {
                free(ex.ids);
                free(ex.mask);
                err_set(e, "%s:%d: out of memory (%d examples)", path, lineno, d->n);
                failed = 1;
                break;
            }
            d->ex = p;
            cap = ncap;
        }
        d->ex[d->n++] = ex;
    }
    if (!failed && ferror(f)) {
        err_set(e, "%s: read error: %s", path, strerror(errno));
        failed = 1;
    }
    if (!failed && d->n == 0) {
        err_set(e, "%s: no usable example (%d lines, %d malformed skipped)", path, lineno, d->n_skipped);
        failed = 1;
    }
    free(line);
    if (jt) json_tokener_free(jt);
    fclose(f);
    if (failed) {
        dataset_free(d);
        return NULL;
    }
    return d;
}

// ---- batching ---------------------------------------------------------------------------------
// Examples idx[0..count) -> b: ids (B,T) padded with pad_id, T = longest example;
// targets (B,T): targets[r,t] = ids[r,t+1] when mask[t+1] = 1, else -1.
static int batch_fill(const Dataset *ds, const int *idx, int count, int pad_id, Batch *b, Err *e) {
    int T = 1;
    for (int r = 0; r < count; r++)
        if (ds->ex[idx[r]].n > T) T = ds->ex[idx[r]].n;
    free(b->ids);
    free(b->targets);
    b->ids = xmalloc((size_t)count * T * sizeof *b->ids, "batch ids", e);
    b->targets = xmalloc((size_t)count * T * sizeof *b->targets, "batch targets", e);
    if (!b->ids || !b->targets) {
        batch_free(b);
        return -1;
    }
    b->B = count;
    b->T = T;
    b->n_targets = 0;
    b->n_tokens = 0;
    for (int r = 0; r < count; r++) {
        const Example *ex = &ds->ex[idx[r]];
        int *ids = b->ids + (size_t)r * T, *tg = b->targets + (size_t)r * T;
        for (int t = 0; t < T; t++) {
            ids[t] = t < ex->n ? ex->ids[t] : pad_id;
            tg[t] = -1;
            if (t + 1 < ex->n && ex->mask[t + 1]) {
                tg[t] = ex->ids[t + 1];
                b->n_targets++;
            }
        }
        b->n_tokens += ex->n;
    }
    return 0;
}

void batch_free(Batch *b) {
    if (!b) return;
    free(b->ids);
    free(b->targets);
    memset(b, 0, sizeof *b);
}

int batch_from_range(const Dataset *ds, int first, int count, int pad_id, Batch *b, Err *e) {
    if (!ds || first < 0 || count <= 0 || first > ds->n - count)
        return err_set(e, "batch range [%d, %d) outside the dataset (%d examples)", first, first + count,
                       ds ? ds->n : 0);
    int *idx = xmalloc((size_t)count * sizeof *idx, "batch indices", e);
    if (!idx) return -1;
    for (int i = 0; i < count; i++) idx[i] = first + i;
    int rc = batch_fill(ds, idx, count, pad_id, b, e);
    free(idx);
    return rc;
}

// This epoch's order: identity, or a Fisher-Yates shuffle driven by a stream derived from
// (seed, epoch) alone, so any epoch's order can be rebuilt when resuming.
static void make_order(DataLoader *l) {
    int n = l->ds->n;
    for (int i = 0; i < n; i++) l->order[i] = i;
    if (!l->shuffle) return;
    Rng r;
    rng_seed(&r, l->seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(l->epoch + 1)));
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(&r, (uint32_t)i + 1);
        int t = l->order[i];
        l->order[i] = l->order[j];
        l->order[j] = t;
    }
}

DataLoader *loader_new(const Dataset *ds, int batch_size, int shuffle, uint64_t seed, int pad_id, Err *e) {
    if (!ds || ds->n <= 0) { err_set(e, "data loader: empty dataset"); return NULL; }
    if (batch_size <= 0) { err_set(e, "data loader: batch size must be positive (got %d)", batch_size); return NULL; }
    DataLoader *l = xcalloc(1, sizeof *l, "data loader", e);
    if (!l) return NULL;
    l->order = xmalloc((size_t)ds->n * sizeof *l->order, "data order", e);
    if (!l->order) { free(l); return NULL; }
    l->ds = ds;
    l->batch_size = batch_size;
    l->shuffle = shuffle;
    l->seed = seed;
    l->pad_id = pad_id;
    make_order(l);
    return l;
}

void loader_free(DataLoader *l) {
    if (!l) return;
    free(l->order);
    free(l);
}

void loader_seek(DataLoader *l, int epoch, int pos) {
    if (epoch < 0) epoch = 0;
    if (pos < 0) pos = 0;
    if (pos >= l->ds->n) { epoch++; pos = 0; }
    l->epoch = epoch;
    l->pos = pos;
    make_order(l);
}

// The last batch of an epoch holds what is left (it may be smaller than batch_size); the
// position then moves to the start of the next epoch.
int loader_next(DataLoader *l, Batch *b, Err *e) {
    int n = l->ds->n;
    if (l->pos >= n) loader_seek(l, l->epoch, l->pos);
    int count = n - l->pos < l->batch_size ? n - l->pos : l->batch_size;
    if (batch_fill(l->ds, l->order + l->pos, count, l->pad_id, b, e) != 0) return -1;
    l->pos += count;
    if (l->pos >= n) {
        l->epoch++;
        l->pos = 0;
        make_order(l);
    }
    return 0;
}
