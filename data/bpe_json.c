// bpe_json — HF tokenizer.json files (model.type "BPE": byte-level like GPT-2 / Llama-3 /
// Qwen2 / SmolLM2, or SentencePiece-style with byte fallback like Llama-2 / TinyLlama), with
// tokenizer_config.json, config.json and generation_config.json read from beside it for
// BOS/EOS and add_bos_token. Parts of the pipeline we do not implement are an error naming
// them, never ignored.
#include <json-c/json.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "data/tok_internal.h"
#include "model/model.h"

// The pre-tokenizer regexes as tokenizer.json spells them.
static const struct {
    BpePattern pat;
    const char *re;
} KNOWN_RE[] = {
    {PAT_GPT2, "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"},
    {PAT_LLAMA3, "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                 "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {PAT_QWEN2, "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
};

typedef struct {
    const char *path;
    json_object *root;
    BpeSpec sp;
    json_object *vocab;        // model.vocab
    int pp_bos;                // post_processor: -1 unknown, 0 no BOS, 1 a leading special token
    char pp_bos_tok[256];
} JsonLoad;

static json_object *member(json_object *o, const char *key) {
    json_object *v = NULL;
    if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v)) return NULL;
    return json_object_is_type(v, json_type_null) ? NULL : v;
}

static const char *type_of(json_object *o) {
    json_object *t = member(o, "type");
    return t && json_object_is_type(t, json_type_string) ? json_object_get_string(t) : "";
}

static int opt_bool(JsonLoad *L, json_object *o, const char *key, int def, Err *e) {
    int v = def;
    if (json_opt_bool(o, key, L->path, &v, e) < 0) return -1;
    return v;
}

// A short string member copied into out (size n); "" when absent; -1 when too long or not a string.
static int short_str(JsonLoad *L, json_object *o, const char *key, char *out, size_t n, const char *what, Err *e) {
    const char *s = NULL;
    out[0] = '\0';
    if (json_opt_str(o, key, L->path, &s, e) < 0) return -1;
    if (!s) return 0;
    if (strlen(s) >= n) return err_set(e, "%s: %s: \"%s\" is too long", L->path, what, key);
    strcpy(out, s);
    return 0;
}

// ---- normalizer, pre-tokenizer, decoder ---------------------------------------------------------
typedef int (*StepParser)(JsonLoad *L, json_object *o, Err *e);

// A {"type": "Sequence", list: [...]} runs parse over each element: 1 when o is one (-1 on
// error), 0 when it is a single step.
static int parse_sequence(JsonLoad *L, json_object *o, const char *list, const char *what, StepParser parse, Err *e) {
    if (strcmp(type_of(o), "Sequence")) return 0;
    json_object *arr = member(o, list);
    if (!arr || !json_object_is_type(arr, json_type_array))
        return err_set(e, "%s: %s Sequence without a \"%s\" list", L->path, what, list);
    for (size_t i = 0; i < json_object_array_length(arr); i++)
        if (parse(L, json_object_array_get_idx(arr, i), e)) return -1;
    return 1;
}

static int parse_normalizer(JsonLoad *L, json_object *o, Err *e) {
    if (!o) return 0;
    const char *ty = type_of(o);
    BpeSpec *sp = &L->sp;
    int seq = parse_sequence(L, o, "normalizers", "normalizer", parse_normalizer, e);
    if (seq) return seq < 0 ? -1 : 0;
    if (sp->n_norm == BPE_MAX_STEPS) return err_set(e, "%s: too many normalizers", L->path);
    NormStep *st = &sp->norm[sp->n_norm];
    memset(st, 0, sizeof *st);
    if (!strcmp(ty, "NFC")) {
        st->kind = NM_NFC;
    } else if (!strcmp(ty, "Prepend")) {
        st->kind = NM_PREPEND;
        st->scheme = PREPEND_ALWAYS;
        if (short_str(L, o, "prepend", st->a, sizeof st->a, "normalizer Prepend", e)) return -1;
    } else if (!strcmp(ty, "Replace")) {
        st->kind = NM_REPLACE;
        json_object *pat = member(o, "pattern");
        if (!member(pat, "String"))
            return err_set(e, "%s: normalizer Replace: only a {\"String\": ...} pattern is supported", L->path);
        if (short_str(L, pat, "String", st->a, sizeof st->a, "normalizer Replace", e) ||
            short_str(L, o, "content", st->b, sizeof st->b, "normalizer Replace", e))
            return -1;
    } else {
        return err_set(e, "%s: normalizer \"%s\" is not supported (NFC, Prepend, Replace, Sequence)", L->path, ty);
    }
    sp->n_norm++;
    return 0;
}

static int prepend_scheme(JsonLoad *L, json_object *o, int *out, Err *e) {
    const char *s = NULL;
    if (json_opt_str(o, "prepend_scheme", L->path, &s, e) < 0) return -1;
    if (s) {
        if (!strcmp(s, "always")) *out = PREPEND_ALWAYS;
        else if (!strcmp(s, "first")) *out = PREPEND_FIRST;
        else if (!strcmp(s, "never")) *out = PREPEND_NEVER;
        else return err_set(e, "%s: Metaspace: unknown prepend_scheme \"%s\"", L->path, s);
        return 0;
    }
    int add = opt_bool(L, o, "add_prefix_space", 1, e);  // older files
    if (add < 0) return -1;
    *out = add ? PREPEND_ALWAYS : PREPEND_NEVER;
    return 0;
}

static int parse_pretokenizer(JsonLoad *L, json_object *o, Err *e) {
    if (!o) return 0;
    const char *ty = type_of(o);
    BpeSpec *sp = &L->sp;
    int seq = parse_sequence(L, o, "pretokenizers", "pre_tokenizer", parse_pretokenizer, e);
    if (seq) return seq < 0 ? -1 : 0;
    if (sp->n_pt == BPE_MAX_STEPS) return err_set(e, "%s: too many pre-tokenizers", L->path);
    PtStep *st = &sp->pt[sp->n_pt];
    memset(st, 0, sizeof *st);
    if (!strcmp(ty, "ByteLevel")) {
        st->kind = PT_BYTELEVEL;
        if ((st->arg = opt_bool(L, o, "add_prefix_space", 0, e)) < 0) return -1;
        if ((st->flag = opt_bool(L, o, "use_regex", 1, e)) < 0) return -1;
        sp->byte_level = 1;
    } else if (!strcmp(ty, "Split")) {
        json_object *pat = member(o, "pattern");
        json_object *re = member(pat, "Regex");
        const char *beh = NULL;
        int invert = opt_bool(L, o, "invert", 0, e);
        if (invert < 0 || json_opt_str(o, "behavior", L->path, &beh, e) < 0) return -1;
        if (!re || !json_object_is_type(re, json_type_string))
            return err_set(e, "%s: pre_tokenizer Split: only {\"Regex\": ...} patterns are supported", L->path);
        const char *rs = json_object_get_string(re);
        int found = -1;
        for (size_t i = 0; i < sizeof KNOWN_RE / sizeof KNOWN_RE[0]; i++)
            if (!strcmp(rs, KNOWN_RE[i].re)) found = (int)KNOWN_RE[i].pat;
        if (found < 0)
            return err_set(e, "%s: pre_tokenizer Split: unknown regex \"%.120s\" (known: the GPT-2, Llama-3 and Qwen2 patterns)",
                           L->path, rs);
        if (invert || !beh || strcmp(beh, "Isolated"))
            return err_set(e, "%s: pre_tokenizer Split: only behavior \"Isolated\" without invert is supported", L->path);
        st->kind = PT_SPLIT;
        st->arg = found;
    } else if (!strcmp(ty, "Digits")) {
        st->kind = PT_DIGITS;
        if ((st->arg = opt_bool(L, o, "individual_digits", 0, e)) < 0) return -1;
    } else if (!strcmp(ty, "Metaspace")) {
        st->kind = PT_METASPACE;
        if (short_str(L, o, "replacement", st->rep, sizeof st->rep, "pre_tokenizer Metaspace", e) ||
            prepend_scheme(L, o, &st->arg, e))
            return -1;
        if (!st->rep[0]) strcpy(st->rep, "\xE2\x96\x81");
        if ((st->flag = opt_bool(L, o, "split", 1, e)) < 0) return -1;
    } else {
        return err_set(e, "%s: pre_tokenizer \"%s\" is not supported (ByteLevel, Split, Digits, Metaspace, Sequence)",
                       L->path, ty);
    }
    sp->n_pt++;
    return 0;
}

static int parse_decoder(JsonLoad *L, json_object *o, Err *e) {
    if (!o) return 0;
    const char *ty = type_of(o);
    BpeSpec *sp = &L->sp;
    int seq = parse_sequence(L, o, "decoders", "decoder", parse_decoder, e);
    if (seq) return seq < 0 ? -1 : 0;
    if (!strcmp(ty, "ByteLevel") || !strcmp(ty, "ByteFallback") || !strcmp(ty, "Fuse")) return 0;
    if (!strcmp(ty, "Replace")) {
        char a[16], b[16];
        json_object *pat = member(o, "pattern");
        if (short_str(L, pat, "String", a, sizeof a, "decoder Replace", e) ||
            short_str(L, o, "content", b, sizeof b, "decoder Replace", e))
            return -1;
        if (strcmp(a, "\xE2\x96\x81") || strcmp(b, " "))
            return err_set(e, "%s: decoder Replace: only \"\xE2\x96\x81\" -> \" \" is supported", L->path);
        sp->dec_spaces = 1;
        return 0;
    }
    if (!strcmp(ty, "Strip")) {
        char c[8];
        int64_t start = 0, stop = 0;
        if (short_str(L, o, "content", c, sizeof c, "decoder Strip", e) ||
            json_opt_int(o, "start", L->path, &start, e) < 0 || json_opt_int(o, "stop", L->path, &stop, e) < 0)
            return -1;
        if (strcmp(c, " ") || start > 1 || stop != 0)
            return err_set(e, "%s: decoder Strip: only stripping one leading space is supported", L->path);
        if (start == 1) sp->dec_strip = 1;
        return 0;
    }
    if (!strcmp(ty, "Metaspace")) {
        int scheme;
        if (prepend_scheme(L, o, &scheme, e)) return -1;
        sp->dec_spaces = 1;
        if (scheme != PREPEND_NEVER) sp->dec_strip = 2;
        return 0;
    }
    return err_set(e, "%s: decoder \"%s\" is not supported (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip)",
                   L->path, ty);
}

// post_processor: does it put a special token before the text (TemplateProcessing "single")?
static void parse_post(JsonLoad *L, json_object *o) {
    if (!o) return;
    const char *ty = type_of(o);
    if (!strcmp(ty, "Sequence")) {
        json_object *arr = member(o, "processors");
        for (size_t i = 0; arr && json_object_is_type(arr, json_type_array) && i < json_object_array_length(arr); i++)
            parse_post(L, json_object_array_get_idx(arr, i));
        return;
    }
    if (strcmp(ty, "TemplateProcessing")) return;
    json_object *single = member(o, "single");
    L->pp_bos = 0;
    if (!single || !json_object_is_type(single, json_type_array) || json_object_array_length(single) == 0) return;
    json_object *id = member(member(json_object_array_get_idx(single, 0), "SpecialToken"), "id");
    if (id && json_object_is_type(id, json_type_string)) {
        L->pp_bos = 1;
        snprintf(L->pp_bos_tok, sizeof L->pp_bos_tok, "%s", json_object_get_string(id));
    }
}

// ---- vocabulary and merges ----------------------------------------------------------------------------
static int token_id(JsonLoad *L, const char *s) {
    for (int id = 0; id < L->sp.n; id++)
        if (L->sp.text[id] && (L->sp.type[id] == TT_CONTROL || L->sp.type[id] == TT_USER) && !strcmp(L->sp.text[id], s))
            return id;
    json_object *v = member(L->vocab, s);
    return v && json_object_is_type(v, json_type_int) ? json_object_get_int(v) : -1;
}

static int read_vocab(JsonLoad *L, json_object *model, json_object *added, Err *e) {
    BpeSpec *sp = &L->sp;
    L->vocab = member(model, "vocab");
    if (!L->vocab || !json_object_is_type(L->vocab, json_type_object))
        return err_set(e, "%s: model.vocab is missing or not an object", L->path);
    if (added && !json_object_is_type(added, json_type_array))
        return err_set(e, "%s: added_tokens is not a list", L->path);
    int64_t max_id = -1;
    json_object_object_foreach(L->vocab, key, val) {
        if (!json_object_is_type(val, json_type_int) || json_object_get_int64(val) < 0 ||
            json_object_get_int64(val) >= (1 << 24))
            return err_set(e, "%s: model.vocab: \"%.60s\" has no valid id", L->path, key);
        if (json_object_get_int64(val) > max_id) max_id = json_object_get_int64(val);
    }
    size_t na = added ? json_object_array_length(added) : 0;
    for (size_t i = 0; i < na; i++) {
        json_object *a = json_object_array_get_idx(added, i), *id = member(a, "id"), *c = member(a, "content");
        if (!id || !json_object_is_type(id, json_type_int) || json_object_get_int64(id) < 0 ||
            json_object_get_int64(id) >= (1 << 24) || !c || !json_object_is_type(c, json_type_string))
            return err_set(e, "%s: added_tokens[%zu]: needs an integer \"id\" and a string \"content\"", L->path, i);
        if (json_object_get_int64(id) > max_id) max_id = json_object_get_int64(id);
    }
    if (max_id < 0) return err_set(e, "%s: model.vocab is empty", L->path);
    sp->n = (int)max_id + 1;
    sp->text = calloc((size_t)sp->n, sizeof(char *));
    sp->type = calloc((size_t)sp->n, 1);
    sp->aflags = calloc((size_t)sp->n, 1);
    if (!sp->text || !sp->type || !sp->aflags) return err_set(e, "%s: out of memory", L->path);
    json_object_object_foreach(L->vocab, k2, v2) {
        int id = json_object_get_int(v2);
        if (sp->text[id]) return err_set(e, "%s: model.vocab: id %d is given twice", L->path, id);
        sp->text[id] = k2;
        unsigned byte;
        char tail;
        sp->type[id] = sp->byte_fallback && strlen(k2) == 6 && sscanf(k2, "<0x%2X%c", &byte, &tail) == 2 && tail == '>'
                           ? TT_BYTE
                           : TT_NORMAL;
    }
    for (size_t i = 0; i < na; i++) {
        json_object *a = json_object_array_get_idx(added, i);
        int id = json_object_get_int(member(a, "id"));
        int special = opt_bool(L, a, "special", 0, e), lstrip = opt_bool(L, a, "lstrip", 0, e),
            rstrip = opt_bool(L, a, "rstrip", 0, e), single = opt_bool(L, a, "single_word", 0, e),
            normd = opt_bool(L, a, "normalized", !special, e);
        if (special < 0 || lstrip < 0 || rstrip < 0 || single < 0 || normd < 0) return -1;
        sp->text[id] = json_object_get_string(member(a, "content"));
        sp->type[id] = special ? TT_CONTROL : TT_USER;
        sp->aflags[id] = (uint8_t)((lstrip ? AF_LSTRIP : 0) | (rstrip ? AF_RSTRIP : 0) | (single ? AF_SINGLE_WORD : 0) |
                                   (normd ? AF_NORMALIZED : 0));
    }
    return 0;
}

// merges: "a b" strings or ["a", "b"] pairs. The split strings live in *mem.
static int read_merges(JsonLoad *L, json_object *model, char **mem, Err *e) {
    BpeSpec *sp = &L->sp;
    json_object *m = member(model, "merges");
    if (!m) return 0;
    if (!json_object_is_type(m, json_type_array)) return err_set(e, "%s: model.merges is not a list", L->path);
    size_t n = json_object_array_length(m), bytes = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *x = json_object_array_get_idx(m, i);
        if (json_object_is_type(x, json_type_string)) bytes += (size_t)json_object_get_string_len(x) + 1;
    }
    sp->merge_a = calloc(n + 1, sizeof(char *));
    sp->merge_b = calloc(n + 1, sizeof(char *));
    *mem = malloc(bytes + 1);
    if (!sp->merge_a || !sp->merge_b || !*mem) return err_set(e, "%s: out of memory for %zu merges", L->path, n);
    char *p = *mem;
    for (size_t i = 0; i < n; i++) {
        json_object *x = json_object_array_get_idx(m, i);
        if (json_object_is_type(x, json_type_string)) {
            const char *s = json_object_get_string(x);
            const char *sp1 = strchr(s, ' ');
            if (!sp1 || sp1 == s || !sp1[1] || strchr(sp1 + 1, ' '))
                return err_set(e, "%s: model.merges[%zu] \"%.60s\" is not two tokens separated by one space", L->path,
                               i, s);
            size_t len = strlen(s);
            memcpy(p, s, len + 1);
            p[sp1 - s] = '\0';
            sp->merge_a[i] = p;
            sp->merge_b[i] = p + (sp1 - s) + 1;
            p += len + 1;
        } else if (json_object_is_type(x, json_type_array) && json_object_array_length(x) == 2 &&
                   json_object_is_type(json_object_array_get_idx(x, 0), json_type_string) &&
                   json_object_is_type(json_object_array_get_idx(x, 1), json_type_string)) {
            sp->merge_a[i] = json_object_get_string(json_object_array_get_idx(x, 0));
            sp->merge_b[i] = json_object_get_string(json_object_array_get_idx(x, 1));
        } else {
            return err_set(e, "%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", L->path, i);
        }
    }
    sp->n_merges = (int)n;
    return 0;
}

// ---- files beside tokenizer.json ----------------------------------------------------------------
// A token named in tokenizer_config.json: "<s>" or {"content": "<s>", ...}; NULL when absent.
static const char *config_token(json_object *cfg, const char *key) {
    json_object *v = member(cfg, key);
    if (v && json_object_is_type(v, json_type_object)) v = member(v, "content");
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

// bos_token_id / eos_token_id of config.json or generation_config.json: an integer or a list
// (its first element); -1 when absent.
static int config_id(json_object *cfg, const char *key) {
    json_object *v = member(cfg, key);
    if (v && json_object_is_type(v, json_type_array) && json_object_array_length(v) > 0)
        v = json_object_array_get_idx(v, 0);
    return v && json_object_is_type(v, json_type_int) ? json_object_get_int(v) : -1;
}

// DIR/name for the directory of json_path, parsed into *out (NULL when absent); p gets the path.
static int read_beside(const char *json_path, const char *name, json_object **out, char *p, size_t pn, Err *e) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", json_path);
    path_join(p, pn, dirname(tmp), name);
    *out = NULL;
    if (!file_exists(p)) return 0;
    *out = json_read_file(p, e);
    return *out ? 0 : -1;
}

static int special_ids(JsonLoad *L, Err *e) {
    BpeSpec *sp = &L->sp;
    json_object *cfg[3] = {NULL, NULL, NULL};  // tokenizer_config, generation_config, config
    const char *names[3] = {"tokenizer_config.json", "generation_config.json", "config.json"};
    char cfg_path[1200] = "";
    int rc = 0;
    for (int i = 2; i >= 0 && !rc; i--) rc = read_beside(L->path, names[i], &cfg[i], cfg_path, sizeof cfg_path, e);
    sp->bos = sp->eos = -1;
    const char *bt = rc ? NULL : config_token(cfg[0], "bos_token"), *et = rc ? NULL : config_token(cfg[0], "eos_token");
    if (!bt && L->pp_bos == 1) bt = L->pp_bos_tok;
    if (bt && !rc && (sp->bos = token_id(L, bt)) < 0)
        rc = err_set(e, "%s: bos_token \"%.60s\" is not in the vocabulary", L->path, bt);
    if (et && !rc && (sp->eos = token_id(L, et)) < 0)
        rc = err_set(e, "%s: eos_token \"%.60s\" is not in the vocabulary", L->path, et);
    for (int i = 1; i < 3 && !rc; i++) {
        if (sp->bos < 0) sp->bos = config_id(cfg[i], "bos_token_id");
        if (sp->eos < 0) sp->eos = config_id(cfg[i], "eos_token_id");
    }
    if (!rc && (sp->bos >= sp->n || sp->eos >= sp->n))
        rc = err_set(e, "%s: BOS/EOS id %d/%d out of range (vocabulary %d)", L->path, sp->bos, sp->eos, sp->n);
    if (!rc) {
        // does the tokenizer put BOS before a text? add_bos_token, else the post-processor's
        // template, else the Llama tokenizer classes' default, else only Llama-3's BOS
        int add = -1;
        const char *cls = config_token(cfg[0], "tokenizer_class");
        if (json_opt_bool(cfg[0], "add_bos_token", cfg_path, &add, e) < 0) rc = -1;
        else if (add < 0 && L->pp_bos >= 0) add = L->pp_bos;
        else if (add < 0 && cls && !strncmp(cls, "LlamaTokenizer", 14)) add = 1;
        else if (add < 0) add = bt && !strcmp(bt, "<|begin_of_text|>");
        sp->add_bos = add && sp->bos >= 0;
    }
    for (int i = 0; i < 3; i++) json_object_put(cfg[i]);
    return rc;
}

Tokenizer *bpe_load_json(Tokenizer *t, const char *json_path, Err *e) {
    JsonLoad L = {.path = t->path, .pp_bos = -1};
    char *merge_mem = NULL;
    Tokenizer *r = NULL;
    L.root = json_read_file(json_path, e);
    if (!L.root) return NULL;
    BpeSpec *sp = &L.sp;
    sp->unk = -1;
    json_object *model = member(L.root, "model");
    const char *mty = type_of(model);
    const char *unk = NULL, *pfx = NULL, *sfx = NULL;
    if (!model || !json_object_is_type(model, json_type_object)) {
        err_set(e, "%s: no \"model\" object: not a tokenizer.json file", L.path);
    } else if (mty[0] && strcmp(mty, "BPE")) {
        err_set(e, "%s: model type \"%s\" is not supported (only BPE)", L.path, mty);
    } else if ((sp->byte_fallback = opt_bool(&L, model, "byte_fallback", 0, e)) < 0 ||
               (sp->fuse_unk = opt_bool(&L, model, "fuse_unk", 0, e)) < 0 ||
               (sp->ignore_merges = opt_bool(&L, model, "ignore_merges", 0, e)) < 0 ||
               json_opt_str(model, "unk_token", L.path, &unk, e) < 0 ||
               json_opt_str(model, "continuing_subword_prefix", L.path, &pfx, e) < 0 ||
               json_opt_str(model, "end_of_word_suffix", L.path, &sfx, e) < 0) {
    } else if ((pfx && pfx[0]) || (sfx && sfx[0])) {
        err_set(e, "%s: BPE continuing_subword_prefix / end_of_word_suffix are not supported", L.path);
    } else if (parse_normalizer(&L, member(L.root, "normalizer"), e) ||
               parse_pretokenizer(&L, member(L.root, "pre_tokenizer"), e) ||
               parse_decoder(&L, member(L.root, "decoder"), e) ||
               read_vocab(&L, model, member(L.root, "added_tokens"), e) || read_merges(&L, model, &merge_mem, e)) {
    } else if (unk && (sp->unk = token_id(&L, unk)) < 0) {
        err_set(e, "%s: unk_token \"%.60s\" is not in the vocabulary", L.path, unk);
    } else {
        parse_post(&L, member(L.root, "post_processor"));
        sp->algo = BPE_MERGES;
        if (!special_ids(&L, e)) r = bpe_build(t, sp, e);
    }
    free((void *)sp->text);
    free(sp->type);
    free(sp->aflags);
    free((void *)sp->merge_a);
    free((void *)sp->merge_b);
    free(merge_mem);
    json_object_put(L.root);
    return r;
}
