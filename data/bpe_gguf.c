// bpe_gguf — the vocabulary a GGUF file carries in its metadata (tokenizer.ggml.*), as
// llama.cpp reads it:
//   model "llama": SentencePiece pieces (tokens, scores, token_type) tokenized by score-driven
//                  bigram merging with byte fallback, a "▁" prefix (add_space_prefix);
//   model "gpt2":  byte-level BPE (tokens, merges "a b" by rank, token_type) with the
//                  pre-tokenizer named by tokenizer.ggml.pre.
// CONTROL and USER_DEFINED tokens are matched in text before tokenizing (llama.cpp with
// parse_special). BOS / EOS / UNK ids and add_bos_token come from tokenizer.ggml.* too.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/tok_internal.h"
#include "model/model.h"

// tokenizer.ggml.pre names -> the pre-tokenizer (llama.cpp's groups of the same regexes).
static const struct {
    const char *name;
    int pat;          // BpePattern
    int digits;       // a \p{N} split before the pattern (SmolLM, StarCoder)
    int nfc;          // the HF tokenizer normalizes to NFC (Qwen2)
    int add_bos;      // default when tokenizer.ggml.add_bos_token is absent
} PRE[] = {
    {"llama-bpe", PAT_LLAMA3, 0, 0, 1}, {"llama3", PAT_LLAMA3, 0, 0, 1},   {"dbrx", PAT_LLAMA3, 0, 0, 0},
    {"smaug-bpe", PAT_LLAMA3, 0, 0, 1}, {"qwen2", PAT_QWEN2, 0, 1, 0},     {"stablelm2", PAT_QWEN2, 0, 0, 0},
    {"gpt-2", PAT_GPT2, 0, 0, 0},       {"gpt2", PAT_GPT2, 0, 0, 0},       {"phi-2", PAT_GPT2, 0, 0, 0},
    {"smollm", PAT_GPT2, 1, 0, 0},      {"starcoder", PAT_GPT2, 1, 0, 0}, {"refact", PAT_GPT2, 1, 0, 0},
};

// Reads tokenizer.ggml.KEY as a flag: a bool or an integer (0/1); def when absent.
// (The metadata API reads integers; a GGUF bool reads as absent, so def applies.)
// A boolean key (also accepted as an integer, as some converters write it).
static int flag(const Gguf *g, const char *key, int def) {
    int b;
    uint32_t v;
    if (gguf_get_bool(g, key, &b) == 0) return b;
    return gguf_get_u32(g, key, &v) == 0 ? v != 0 : def;
}

// An id key: -1 when absent or "none" (0xFFFFFFFF), else checked against n.
static int id_key(const Gguf *g, const char *key, int n, const char *path, int *out, Err *e) {
    uint32_t v;
    *out = -1;
    if (gguf_get_u32(g, key, &v) != 0 || v == UINT32_MAX) return 0;
    if (v >= (uint32_t)n) return err_set(e, "%s: %s = %u is outside the vocabulary (%d tokens)", path, key, v, n);
    *out = (int)v;
    return 0;
}

// A metadata array that must hold count elements of one of the given kinds (0: strings,
// 1: numbers).
static int check_arr(const Gguf *g, const char *key, int numbers, uint64_t count, const char *path, Err *e) {
    GgufValueType ty;
    uint64_t n;
    if (gguf_get_arr(g, key, &ty, &n) != 0) return err_set(e, "%s: %s is missing or not an array", path, key);
    int ok = numbers ? ty != GGUF_STRING && ty != GGUF_ARRAY && ty != GGUF_BOOL : ty == GGUF_STRING;
    if (!ok) return err_set(e, "%s: %s must be an array of %s", path, key, numbers ? "numbers" : "strings");
    if (count && n != count)
        return err_set(e, "%s: %s has %llu entries but tokenizer.ggml.tokens has %llu", path, key,
                       (unsigned long long)n, (unsigned long long)count);
    return 0;
}

Tokenizer *bpe_load_gguf(Tokenizer *t, const char *path, Err *e) {
    Gguf *g = gguf_open(path, e);
    if (!g) return NULL;
    Tokenizer *r = NULL;
    BpeSpec sp = {.unk = -1};
    char **merge_mem = NULL;
    float *scores = NULL;
    const char *model = gguf_get_str(g, "tokenizer.ggml.model");
    GgufValueType ty;
    uint64_t n = 0;
    if (!model) {
        err_set(e, "%s: no tokenizer.ggml.model: this GGUF file has no vocabulary (pass --tokenizer)", path);
        goto done;
    }
    if (strcmp(model, "llama") && strcmp(model, "gpt2")) {
        err_set(e, "%s: tokenizer.ggml.model \"%s\" is not supported (llama or gpt2)", path, model);
        goto done;
    }
    if (check_arr(g, "tokenizer.ggml.tokens", 0, 0, path, e)) goto done;
    gguf_get_arr(g, "tokenizer.ggml.tokens", &ty, &n);
    if (n == 0 || n > (1u << 24)) {
        err_set(e, "%s: tokenizer.ggml.tokens has %llu entries", path, (unsigned long long)n);
        goto done;
    }
    sp.n = (int)n;
    sp.text = calloc(n, sizeof(char *));
    sp.type = malloc(n);
    if (!sp.text || !sp.type) { err_set(e, "%s: out of memory", path); goto done; }
    int has_types = gguf_get_arr(g, "tokenizer.ggml.token_type", &ty, &n) == 0;
    if (has_types && check_arr(g, "tokenizer.ggml.token_type", 1, (uint64_t)sp.n, path, e)) goto done;
    for (int i = 0; i < sp.n; i++) {
        sp.text[i] = gguf_arr_str(g, "tokenizer.ggml.tokens", (uint64_t)i);
        double v = has_types ? gguf_arr_num(g, "tokenizer.ggml.token_type", (uint64_t)i) : TT_NORMAL;
        if (!(v >= TT_NORMAL && v <= TT_BYTE)) {
            err_set(e, "%s: tokenizer.ggml.token_type[%d] = %g is not a token type (1..6)", path, i, v);
            goto done;
        }
        sp.type[i] = (uint8_t)v;
    }
    if (id_key(g, "tokenizer.ggml.bos_token_id", sp.n, path, &sp.bos, e) ||
        id_key(g, "tokenizer.ggml.eos_token_id", sp.n, path, &sp.eos, e) ||
        id_key(g, "tokenizer.ggml.unknown_token_id", sp.n, path, &sp.unk, e))
        goto done;
    if (!strcmp(model, "llama")) {
        if (check_arr(g, "tokenizer.ggml.scores", 1, (uint64_t)sp.n, path, e)) goto done;
        scores = malloc(sizeof(float) * (size_t)sp.n);
        if (!scores) { err_set(e, "%s: out of memory", path); goto done; }
        for (int i = 0; i < sp.n; i++) {
            scores[i] = (float)gguf_arr_num(g, "tokenizer.ggml.scores", (uint64_t)i);
            if (!isfinite(scores[i])) scores[i] = -1e30f;
        }
        sp.score = scores;
        sp.algo = BPE_SCORES;
        sp.byte_fallback = 1;
        // " " -> "▁", and a "▁" before the text and after each special token (add_space_prefix)
        int n_norm = 0;
        if (flag(g, "tokenizer.ggml.add_space_prefix", 1)) {
            sp.norm[n_norm] = (NormStep){.kind = NM_PREPEND, .scheme = PREPEND_ALWAYS};
            strcpy(sp.norm[n_norm++].a, "\xE2\x96\x81");
            sp.dec_strip = 1;
        }
        sp.norm[n_norm] = (NormStep){.kind = NM_REPLACE};
        strcpy(sp.norm[n_norm].a, " ");
        strcpy(sp.norm[n_norm++].b, "\xE2\x96\x81");
        sp.n_norm = n_norm;
        sp.dec_spaces = 1;
        sp.control_empty = 1;
        sp.add_bos = flag(g, "tokenizer.ggml.add_bos_token", 1);
    } else {
        const char *pre = gguf_get_str(g, "tokenizer.ggml.pre");
        int k = -1;
        for (size_t i = 0; pre && i < sizeof PRE / sizeof PRE[0]; i++)
            if (!strcmp(pre, PRE[i].name)) k = (int)i;
        if (k < 0) {
            err_set(e, "%s: tokenizer.ggml.pre \"%s\" is not supported (llama-bpe, qwen2, smollm, gpt-2, ...)", path,
                    pre ? pre : "(missing)");
            goto done;
        }
        if (check_arr(g, "tokenizer.ggml.merges", 0, 0, path, e)) goto done;
        gguf_get_arr(g, "tokenizer.ggml.merges", &ty, &n);
        sp.n_merges = (int)n;
        sp.merge_a = calloc(n + 1, sizeof(char *));
        sp.merge_b = calloc(n + 1, sizeof(char *));
        merge_mem = calloc(n + 1, sizeof(char *));
        if (!sp.merge_a || !sp.merge_b || !merge_mem) { err_set(e, "%s: out of memory", path); goto done; }
        for (int i = 0; i < sp.n_merges; i++) {
            const char *m = gguf_arr_str(g, "tokenizer.ggml.merges", (uint64_t)i);
            const char *space = m ? strchr(m, ' ') : NULL;
            if (!space || space == m || !space[1]) {
                err_set(e, "%s: tokenizer.ggml.merges[%d] \"%.60s\" is not two tokens separated by a space", path, i,
                        m ? m : "");
                goto done;
            }
            if (!(merge_mem[i] = strdup(m))) { err_set(e, "%s: out of memory", path); goto done; }
            merge_mem[i][space - m] = '\0';
            sp.merge_a[i] = merge_mem[i];
            sp.merge_b[i] = merge_mem[i] + (space - m) + 1;
        }
        sp.algo = BPE_MERGES;
        sp.byte_level = 1;
        sp.ignore_merges = PRE[k].pat == PAT_LLAMA3;
        if (PRE[k].nfc) sp.norm[sp.n_norm++] = (NormStep){.kind = NM_NFC};
        if (PRE[k].digits) sp.pt[sp.n_pt++] = (PtStep){.kind = PT_DIGITS, .arg = 1};
        sp.pt[sp.n_pt++] = (PtStep){.kind = PT_SPLIT, .arg = PRE[k].pat};
        sp.add_bos = flag(g, "tokenizer.ggml.add_bos_token", PRE[k].add_bos);
    }
    sp.add_bos = sp.add_bos && sp.bos >= 0;
    r = bpe_build(t, &sp, e);
done:
    if (merge_mem)
        for (int i = 0; i < sp.n_merges; i++) free(merge_mem[i]);
    free(merge_mem);
    free((void *)sp.merge_a);
    free((void *)sp.merge_b);
    free(scores);
    free((void *)sp.text);
    free(sp.type);
    gguf_close(g);
    return r;
}
