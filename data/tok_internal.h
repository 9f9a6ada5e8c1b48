// data/ internal: the tokenizer object shared by data/tokenizer.c (the public API and the
// SentencePiece backend) and the BPE backend (data/bpe.c engine, data/bpe_json.c for
// tokenizer.json, data/bpe_gguf.c for GGUF vocabularies). Not part of the module interface.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "data/data.h"

// ---- one interface over the backends --------------------------------------------------------
typedef struct {
    // cont = 1: the text continues a stream (no dummy-prefix space)
    int (*encode)(const Tokenizer *t, const char *text, size_t len, int cont, int **ids, Err *e);
    char *(*decode)(const Tokenizer *t, const int *ids, int n, Err *e);
    const char *(*piece_text)(const Tokenizer *t, int prev, int id, char *buf, size_t n);
    int (*piece_id)(const Tokenizer *t, const char *piece);
    void (*destroy)(void *impl);
} TokOps;

struct Tokenizer {
    const TokOps *ops;
    void *impl;
    int vocab;
    int bos, eos;           // as tok_bos / tok_eos report them (bos -1 when none is added)
    char path[1024];
};

// ---- the BPE backend ------------------------------------------------------------------------
// Token types: GGUF's tokenizer.ggml.token_type numbering (= SentencePiece's piece types).
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };
// How a matched (added / special) token absorbs text around it (HF AddedToken flags).
enum { AF_LSTRIP = 1, AF_RSTRIP = 2, AF_SINGLE_WORD = 4, AF_NORMALIZED = 8 };

typedef enum {
    BPE_MERGES = 0,   // merges by rank (HF BPE; GGUF "gpt2")
    BPE_SCORES = 1,   // score-driven bigram merging with byte fallback (llama.cpp SPM; GGUF "llama")
} BpeAlgo;

// The pre-tokenizer regexes we recognise (each has a hand-written matcher in data/bpe.c).
typedef enum { PAT_GPT2 = 0, PAT_LLAMA3, PAT_QWEN2 } BpePattern;
typedef enum { PREPEND_ALWAYS = 0, PREPEND_FIRST, PREPEND_NEVER } PrependScheme;

typedef enum { NM_NFC = 0, NM_PREPEND, NM_REPLACE } NormKind;
typedef struct {
    NormKind kind;
    PrependScheme scheme;   // NM_PREPEND: every segment, or only the one at the text's start
    char a[16], b[16];      // NM_PREPEND: a; NM_REPLACE: a -> b
} NormStep;

typedef enum { PT_SPLIT = 0, PT_DIGITS, PT_BYTELEVEL, PT_METASPACE } PtKind;
typedef struct {
    PtKind kind;
    int arg;                // SPLIT: BpePattern; DIGITS: individual; BYTELEVEL: add_prefix_space;
                            // METASPACE: PrependScheme
    int flag;               // BYTELEVEL: use_regex (GPT-2 pattern); METASPACE: split on the replacement
    char rep[8];            // METASPACE: the replacement character (UTF-8)
} PtStep;

#define BPE_MAX_STEPS 8

// Everything a loader found in its file. Strings are borrowed (valid during bpe_build).
typedef struct {
    int n;                        // token ids 0..n-1
    const char **text;            // (n) token as the file spells it; NULL: no token has this id
    uint8_t *type;                // (n) TT_*; CONTROL and USER tokens are matched in text before BPE
    uint8_t *aflags;              // (n) AF_* of matched tokens, or NULL (none)
    const float *score;           // (n) BPE_SCORES: the pieces' scores
    const char **merge_a, **merge_b;  // (n_merges) BPE_MERGES: pairs in rank order
    int n_merges;
    BpeAlgo algo;
    int byte_level;               // GPT-2 byte-to-unicode mapped vocabulary
    int ignore_merges;            // a pre-token that is itself a token is not merged (Llama-3)
    int byte_fallback;            // characters outside the vocabulary become <0xXX> tokens
    int fuse_unk;
    int unk;                      // unknown-token id or -1
    NormStep norm[BPE_MAX_STEPS];
    int n_norm;
    PtStep pt[BPE_MAX_STEPS];
    int n_pt;
    int dec_spaces;               // decoding turns U+2581 into spaces
    int dec_strip;                // 0; 1: one leading space of the first piece is dropped;
                                  // 2: every space of the first piece (HF Metaspace decoder)
    int control_empty;            // CONTROL tokens decode to "" (SentencePiece); else their text
    int bos, eos;                 // ids or -1
    int add_bos;                  // the tokenizer puts BOS before a text
} BpeSpec;

// Builds the BPE tokenizer into t (t->path names the file in messages). Returns t, or NULL
// with e filled (t is then freed by the caller with tok_free).
Tokenizer *bpe_build(Tokenizer *t, const BpeSpec *spec, Err *e);

// Loaders: tokenizer.json (+ tokenizer_config.json, config.json, generation_config.json
// beside it) and the tokenizer.ggml.* vocabulary of a GGUF file. Return t or NULL.
Tokenizer *bpe_load_json(Tokenizer *t, const char *json_path, Err *e);
Tokenizer *bpe_load_gguf(Tokenizer *t, const char *gguf_path, Err *e);
