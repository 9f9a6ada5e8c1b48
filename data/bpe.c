// bpe — the BPE tokenizer engine behind tokenizer.json files (data/bpe_json.c) and GGUF
// vocabularies (data/bpe_gguf.c).
//
// Encoding a text, as HF tokenizers does it:
//   1. added / special tokens are cut out first (leftmost-longest, with their lstrip / rstrip /
//      single_word flags), those with normalized=false on the raw text;
//   2. each remaining segment is normalized (NFC, Prepend, Replace), then tokens with
//      normalized=true are cut out of it;
//   3. the pre-tokenizers split each piece into words (the GPT-2 / Llama-3 / Qwen2 regexes by
//      hand-written matchers, Digits, ByteLevel, Metaspace);
//   4. each word becomes ids: merges by rank (BPE_MERGES: a heap of candidate pairs, lowest
//      rank then leftmost first) or llama.cpp's SentencePiece bigrams by score (BPE_SCORES),
//      through a cache word -> ids.
// A byte-level vocabulary is stored un-mapped: every token is kept as the raw bytes it
// stands for, so words are looked up and merged as bytes and decoding is a copy.
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "data/tok_internal.h"
#include "data/unicode_internal.h"

// ---- hashing --------------------------------------------------------------------------------
static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xFF51AFD7ED558CCDULL);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ (v * 0xC2B2AE3D27D4EB4FULL)) * 0x9E3779B97F4A7C15ULL;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ (v * 0xC2B2AE3D27D4EB4FULL)) * 0x9E3779B97F4A7C15ULL;
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ULL;
    return h ^ (h >> 32);
}

static uint64_t pow2_at_least(uint64_t x) {
    uint64_t c = 16;
    while (c < x) c <<= 1;
    return c;
}

// ---- the engine's data ----------------------------------------------------------------------
typedef struct {
    uint64_t *slot;               // (hash high 32 bits << 32) | (id + 1); 0 = empty
    uint64_t mask;
} StrMap;

typedef struct {
    uint64_t key;                 // ((a << 32) | b) + 1; 0 = empty
    int32_t rank, id;
} PairSlot;

typedef struct {
    int id;
    uint32_t off, len;            // content in Bpe.atext
    uint8_t flags;                // AF_*
} Added;

typedef struct {
    Added *tok;                   // sorted by first byte, then longest first
    int n;
    int start[257];               // tokens starting with byte c: tok[start[c] .. start[c+1])
} AddedSet;

typedef struct {
    uint64_t h;
    uint32_t koff, klen, voff, vlen;
} CacheEnt;

typedef struct {
    CacheEnt *ent;                // open addressing; klen 0 = empty (empty words are not cached)
    uint32_t mask, used;
    char *keys;
    size_t kn, kcap;
    int *vals;
    size_t vn, vcap;
    pthread_mutex_t mu;
} Cache;

typedef struct {
    BpeAlgo algo;
    int byte_level, ignore_merges, byte_fallback, fuse_unk, unk;
    int n;
    char *kbuf;                   // key bytes of each token: what it matches in a word
    uint32_t *koff, *klen;
    char *dbuf;                   // decoded bytes of each token
    uint32_t *doff, *dlen;
    uint8_t *type;
    float *score;
    StrMap vocab;
    PairSlot *pairs;
    uint64_t pmask;
    int byte_sym[256];            // byte-level: the token of each byte; else the <0xXX> token; -1
    char *atext;                  // added-token contents
    AddedSet raw, normd;
    NormStep norm[BPE_MAX_STEPS];
    int n_norm;
    PtStep pt[BPE_MAX_STEPS];
    int n_pt;
    int dec_strip;
    int bos_id, eos_id;           // the tokenizer's BOS / EOS (skipped when decoding)
    Cache cache;
} Bpe;

// ---- vocabulary map: key bytes -> id ----------------------------------------------------------
static int map_get(const Bpe *b, const void *s, size_t n) {
    uint64_t h = hash_bytes(s, n), tag = h >> 32 << 32;
    for (uint64_t i = h & b->vocab.mask;; i = (i + 1) & b->vocab.mask) {
        uint64_t v = b->vocab.slot[i];
        if (!v) return -1;
        if ((v >> 32 << 32) != tag) continue;
        int id = (int)(uint32_t)v - 1;
        if (b->klen[id] == n && memcmp(b->kbuf + b->koff[id], s, n) == 0) return id;
    }
}

static void map_put(Bpe *b, int id) {
    const char *s = b->kbuf + b->koff[id];
    size_t n = b->klen[id];
    if (map_get(b, s, n) >= 0) return;  // the first token with these bytes keeps them
    uint64_t h = hash_bytes(s, n);
    uint64_t i = h & b->vocab.mask;
    while (b->vocab.slot[i]) i = (i + 1) & b->vocab.mask;
    b->vocab.slot[i] = (h >> 32 << 32) | (uint64_t)(id + 1);
}

static const PairSlot *pair_get(const Bpe *b, int x, int y) {
    uint64_t key = (((uint64_t)(uint32_t)x << 32) | (uint32_t)y) + 1;
    for (uint64_t i = hash_bytes(&key, 8) & b->pmask;; i = (i + 1) & b->pmask) {
        if (b->pairs[i].key == key) return &b->pairs[i];
        if (!b->pairs[i].key) return NULL;
    }
}

// ---- word cache ---------------------------------------------------------------------------------
enum { CACHE_MAX_WORD = 128, CACHE_SLOTS = 1 << 18 };

static void cache_clear(Cache *c) {
    memset(c->ent, 0, sizeof(CacheEnt) * (c->mask + 1));
    c->used = 0;
    c->kn = 0;
    c->vn = 0;
}

// Appends the cached ids of word w to *out via copy; returns the count, -1 when absent.
static int cache_get(Cache *c, const uint8_t *w, size_t n, uint64_t h, int **ids) {
    for (uint32_t i = (uint32_t)h & c->mask;; i = (i + 1) & c->mask) {
        const CacheEnt *x = &c->ent[i];
        if (!x->klen) return -1;
        if (x->h == h && x->klen == n && memcmp(c->keys + x->koff, w, n) == 0) {
            *ids = c->vals + x->voff;
            return (int)x->vlen;
        }
    }
}

static void cache_put(Cache *c, const uint8_t *w, size_t n, uint64_t h, const int *ids, int k) {
    if (c->used + 1 > (c->mask + 1) / 2 || c->kn + n > c->kcap || c->vn + (size_t)k > c->vcap) cache_clear(c);
    if (c->kn + n > c->kcap || c->vn + (size_t)k > c->vcap) return;
    uint32_t i = (uint32_t)h & c->mask;
    while (c->ent[i].klen) i = (i + 1) & c->mask;
    memcpy(c->keys + c->kn, w, n);
    memcpy(c->vals + c->vn, ids, sizeof(int) * (size_t)k);
    c->ent[i] = (CacheEnt){h, (uint32_t)c->kn, (uint32_t)n, (uint32_t)c->vn, (uint32_t)k};
    c->kn += n;
    c->vn += (size_t)k;
    c->used++;
}

// ---- encoding state -----------------------------------------------------------------------------
typedef struct {
    double pri;                   // lower first: merge rank, or minus the bigram's score
    int pos;                      // left symbol (ties: leftmost first)
    int a, b;                     // BPE_MERGES: new id; BPE_SCORES: right symbol, merged length
} HeapItem;

typedef struct {
    const Bpe *b;
    int *ids;
    int n, cap;
    int *sid, *prv, *nxt;         // symbols of the word being merged
    uint32_t *soff, *slen;
    int scap;
    HeapItem *heap;
    int hn, hcap;
    int oom;
} Enc;

static void push_id(Enc *x, int id) {
    if (x->n == x->cap) {
        int cap = x->cap ? 2 * x->cap : 64;
        int *p = realloc(x->ids, sizeof(int) * (size_t)cap);
        if (!p) { x->oom = 1; return; }
        x->ids = p;
        x->cap = cap;
    }
    x->ids[x->n++] = id;
}

static int sym_reserve(Enc *x, size_t n) {
    if ((size_t)x->scap >= n) return 0;
    int cap = (int)pow2_at_least(n);
    free(x->sid); free(x->prv); free(x->nxt); free(x->soff); free(x->slen); free(x->heap);
    x->sid = malloc(sizeof(int) * (size_t)cap);
    x->prv = malloc(sizeof(int) * (size_t)cap);
    x->nxt = malloc(sizeof(int) * (size_t)cap);
    x->soff = malloc(sizeof(uint32_t) * (size_t)cap);
    x->slen = malloc(sizeof(uint32_t) * (size_t)cap);
    x->heap = malloc(sizeof(HeapItem) * (size_t)cap * 2);
    x->scap = cap;
    x->hcap = 2 * cap;
    if (!x->sid || !x->prv || !x->nxt || !x->soff || !x->slen || !x->heap) { x->oom = 1; x->scap = 0; return -1; }
    return 0;
}

static int heap_less(const HeapItem *p, const HeapItem *q) {
    return p->pri < q->pri || (p->pri == q->pri && p->pos < q->pos);
}

static void heap_push(Enc *x, HeapItem it) {
    if (x->hn == x->hcap) {
        HeapItem *p = realloc(x->heap, sizeof(HeapItem) * (size_t)x->hcap * 2);
        if (!p) { x->oom = 1; return; }
        x->heap = p;
        x->hcap *= 2;
    }
    int i = x->hn++;
    while (i > 0 && heap_less(&it, &x->heap[(i - 1) / 2])) {
        x->heap[i] = x->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    x->heap[i] = it;
}

static HeapItem heap_pop(Enc *x) {
    HeapItem top = x->heap[0], last = x->heap[--x->hn];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= x->hn) break;
        if (c + 1 < x->hn && heap_less(&x->heap[c + 1], &x->heap[c])) c++;
        if (!heap_less(&x->heap[c], &last)) break;
        x->heap[i] = x->heap[c];
        i = c;
    }
    if (x->hn > 0) x->heap[i] = last;
    return top;
}

// ---- BPE_MERGES: merges by rank -----------------------------------------------------------------
static void merge_candidate(Enc *x, int left) {
    if (left < 0 || x->nxt[left] < 0) return;
    const PairSlot *p = pair_get(x->b, x->sid[left], x->sid[x->nxt[left]]);
    if (p) heap_push(x, (HeapItem){(double)p->rank, left, p->id, 0});
}

// Initial symbols of a word: one per byte (byte-level) or per character, characters outside
// the vocabulary as <0xXX> tokens (byte fallback) or the unknown token (fused when asked).
static int initial_symbols(Enc *x, const uint8_t *w, size_t n) {
    const Bpe *b = x->b;
    int m = 0;
    for (size_t i = 0; i < n;) {
        int len = 1, id;
        if (b->byte_level) {
            id = b->byte_sym[w[i]];
        } else {
            utf8_decode(w + i, n - i, &len);
            id = map_get(b, w + i, (size_t)len);
        }
        if (id < 0 && b->byte_fallback) {
            int ok = 1;
            for (int k = 0; k < len; k++) ok = ok && b->byte_sym[w[i + k]] >= 0;
            if (ok) {
                for (int k = 0; k < len; k++) x->sid[m++] = b->byte_sym[w[i + k]];
                i += (size_t)len;
                continue;
            }
        }
        if (id < 0) id = b->unk;
        if (id >= 0 && !(id == b->unk && b->fuse_unk && m > 0 && x->sid[m - 1] == b->unk)) x->sid[m++] = id;
        i += (size_t)len;
    }
    return m;
}

static void bpe_merges_word(Enc *x, const uint8_t *w, size_t n) {
    const Bpe *b = x->b;
    if (b->ignore_merges) {
        int id = map_get(b, w, n);
        if (id >= 0) { push_id(x, id); return; }
    }
    if (sym_reserve(x, n + 1)) return;
    int m = initial_symbols(x, w, n);
    for (int i = 0; i < m; i++) { x->prv[i] = i - 1; x->nxt[i] = i + 1 < m ? i + 1 : -1; x->slen[i] = 1; }
    x->hn = 0;
    for (int i = 0; i + 1 < m; i++) merge_candidate(x, i);
    while (x->hn > 0 && !x->oom) {
        HeapItem it = heap_pop(x);
        int l = it.pos, r = x->nxt[l];
        if (!x->slen[l] || r < 0) continue;
        const PairSlot *p = pair_get(b, x->sid[l], x->sid[r]);
        if (!p || p->id != it.a) continue;  // stale: one side merged since
        x->sid[l] = it.a;
        x->slen[r] = 0;
        x->nxt[l] = x->nxt[r];
        if (x->nxt[r] >= 0) x->prv[x->nxt[r]] = l;
        merge_candidate(x, x->prv[l]);
        merge_candidate(x, l);
    }
    for (int i = m > 0 ? 0 : -1; i >= 0; i = x->nxt[i]) push_id(x, x->sid[i]);
}

// ---- BPE_SCORES: llama.cpp's SentencePiece tokenizer ------------------------------------------
static void bigram_candidate(Enc *x, const uint8_t *w, int left, int right) {
    if (left < 0 || right < 0) return;
    uint32_t len = x->slen[left] + x->slen[right];
    int id = map_get(x->b, w + x->soff[left], len);
    if (id < 0) return;
    heap_push(x, (HeapItem){-(double)x->b->score[id], left, right, (int)len});
}

static void bpe_scores_word(Enc *x, const uint8_t *w, size_t n) {
    const Bpe *b = x->b;
    if (sym_reserve(x, n + 1)) return;
    int m = 0;
    for (size_t i = 0; i < n; m++) {
        int len;
        utf8_decode(w + i, n - i, &len);
        x->soff[m] = (uint32_t)i;
        x->slen[m] = (uint32_t)len;
        x->prv[m] = m - 1;
        x->nxt[m] = i + (size_t)len < n ? m + 1 : -1;
        i += (size_t)len;
    }
    x->hn = 0;
    for (int i = 1; i < m; i++) bigram_candidate(x, w, i - 1, i);
    while (x->hn > 0 && !x->oom) {
        HeapItem it = heap_pop(x);
        int l = it.pos, r = it.a;
        if (!x->slen[l] || !x->slen[r] || x->slen[l] + x->slen[r] != (uint32_t)it.b) continue;
        x->slen[l] += x->slen[r];
        x->slen[r] = 0;
        x->nxt[l] = x->nxt[r];
        if (x->nxt[r] >= 0) x->prv[x->nxt[r]] = l;
        bigram_candidate(x, w, x->prv[l], l);
        bigram_candidate(x, w, l, x->nxt[l]);
    }
    for (int i = m > 0 ? 0 : -1; i >= 0; i = x->nxt[i]) {
        int id = map_get(b, w + x->soff[i], x->slen[i]);
        if (id >= 0) { push_id(x, id); continue; }
        for (uint32_t k = 0; k < x->slen[i]; k++) {
            int bid = b->byte_sym[w[x->soff[i] + k]];
            if (bid >= 0) push_id(x, bid);
            else if (b->unk >= 0 && k == 0) push_id(x, b->unk);
        }
    }
}

static void encode_word(Enc *x, const uint8_t *w, size_t n) {
    if (n == 0) return;
    Bpe *b = (Bpe *)x->b;  // the cache is the only state changed by encoding (under its lock)
    uint64_t h = 0;
    if (n <= CACHE_MAX_WORD) {
        h = hash_bytes(w, n);
        pthread_mutex_lock(&b->cache.mu);
        int *ids, k = cache_get(&b->cache, w, n, h, &ids);
        if (k >= 0)
            for (int i = 0; i < k; i++) push_id(x, ids[i]);
        pthread_mutex_unlock(&b->cache.mu);
        if (k >= 0) return;
    }
    int first = x->n;
    if (b->algo == BPE_SCORES) bpe_scores_word(x, w, n);
    else bpe_merges_word(x, w, n);
    if (n <= CACHE_MAX_WORD && !x->oom) {
        pthread_mutex_lock(&b->cache.mu);
        cache_put(&b->cache, w, n, h, x->ids + first, x->n - first);
        pthread_mutex_unlock(&b->cache.mu);
    }
}

// ---- pre-tokenizer patterns ---------------------------------------------------------------------
// Each matcher returns the end of the pattern's match starting at i (< n); the patterns
// match at every position, so the text is cut into consecutive pieces.
static int class_at(const uint8_t *s, size_t n, size_t i, int *len) {
    if (s[i] < 0x80) { *len = 1; return uni_class_of(s[i]); }
    return uni_class_of(utf8_decode(s + i, n - i, len));
}

// End of the run of characters from i whose class (UNI_L / UNI_N / UNI_S, or 0 for "other":
// none of them) is want; at most max characters.
static size_t run_of(const uint8_t *s, size_t n, size_t i, int want, size_t max) {
    size_t k = 0;
    while (i < n && k < max) {
        int len, c = class_at(s, n, i, &len);
        if (c != want) break;
        i += (size_t)len;
        k++;
    }
    return i;
}

static int is_crlf(uint8_t c) { return c == '\r' || c == '\n'; }

// 's 't 're 've 'm 'll 'd at i (ASCII case folded when icase): length or 0.
static size_t contraction(const uint8_t *s, size_t n, size_t i, int icase) {
    if (s[i] != '\'' || i + 1 >= n) return 0;
    uint8_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (icase) {
        if (a >= 'A' && a <= 'Z') a = (uint8_t)(a + 32);
        if (b >= 'A' && b <= 'Z') b = (uint8_t)(b + 32);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

// \s+(?!\S)|\s+ at i (s[i] is whitespace): the run, leaving its last character to the next
// piece when a non-space follows.
static size_t space_tail(const uint8_t *s, size_t n, size_t i) {
    size_t end = run_of(s, n, i, UNI_S, (size_t)-1);
    if (end == n) return end;
    size_t last = end;  // start of the run's last character
    do last--; while ((s[last] & 0xC0) == 0x80);
    return last > i ? last : end;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
static size_t match_gpt2(const uint8_t *s, size_t n, size_t i) {
    size_t k = contraction(s, n, i, 0);
    if (k) return i + k;
    size_t j = s[i] == ' ' && i + 1 < n ? i + 1 : i;
    int len, c = class_at(s, n, j, &len);
    if (c != UNI_S) return run_of(s, n, j, c, (size_t)-1);
    return space_tail(s, n, i);
}

// Llama-3 (digits 3) and Qwen2 (digits 1):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
static size_t match_llama3(const uint8_t *s, size_t n, size_t i, size_t digits) {
    size_t k = contraction(s, n, i, 1);
    if (k) return i + k;
    int len, c = class_at(s, n, i, &len);
    if (c == UNI_L) return run_of(s, n, i, UNI_L, (size_t)-1);
    if (c != UNI_N && !is_crlf(s[i]) && i + (size_t)len < n) {
        int len2, c2 = class_at(s, n, i + (size_t)len, &len2);
        if (c2 == UNI_L) return run_of(s, n, i + (size_t)len, UNI_L, (size_t)-1);
    }
    if (c == UNI_N) return run_of(s, n, i, UNI_N, digits);
    size_t j = s[i] == ' ' && i + 1 < n ? i + 1 : i;
    int c3 = j == i ? c : class_at(s, n, j, &len);
    if (c3 == 0) {
        size_t e = run_of(s, n, j, 0, (size_t)-1);
        while (e < n && is_crlf(s[e])) e++;
        return e;
    }
    // here s[i] is whitespace
    size_t end = run_of(s, n, i, UNI_S, (size_t)-1), last_nl = 0;
    for (size_t p = i; p < end; p++)
        if (is_crlf(s[p])) last_nl = p + 1;
    if (last_nl) return last_nl;
    return space_tail(s, n, i);
}

static size_t match_pattern(int pat, const uint8_t *s, size_t n, size_t i) {
    switch (pat) {
    case PAT_LLAMA3: return match_llama3(s, n, i, 3);
    case PAT_QWEN2: return match_llama3(s, n, i, 1);
    default: return match_gpt2(s, n, i);
    }
}

// ---- pre-tokenizer chain --------------------------------------------------------------------------
// Where a piece is: at the start of the text, at the start of a continuation text (which
// gets no prefix), or elsewhere. A piece's sub-pieces after its first are AT_MID.
enum { AT_START = 0, AT_CONT = 1, AT_MID = 2 };

static int prepend_here(PrependScheme sch, int at) {
    return (sch == PREPEND_ALWAYS && at != AT_CONT) || (sch == PREPEND_FIRST && at == AT_START);
}

// Runs pre-tokenizer steps k.. over the piece s[0..n) found at `at`.
static void pretok(Enc *x, int k, const uint8_t *s, size_t n, int at);

static void pretok_split(Enc *x, int k, int pat, const uint8_t *s, size_t n, int at) {
    for (size_t i = 0; i < n;) {
        size_t e = match_pattern(pat, s, n, i);
        pretok(x, k + 1, s + i, e - i, i == 0 ? at : AT_MID);
        i = e;
    }
}

// Step k over a piece rewritten as pre ++ s[0..n) with every `from` replaced by `to`, then
// cut: Metaspace (split_on_to: before each `to`), ByteLevel (pat >= 0: the GPT-2 regex) or
// not at all; the pieces go on to step k + 1.
static void pretok_rewritten(Enc *x, int k, const char *pre, const uint8_t *s, size_t n, const char *from,
                             const char *to, int at, int split_on_to, int pat) {
    size_t lp = strlen(pre), lf = from ? strlen(from) : 0, lt = to ? strlen(to) : 0;
    size_t cap = lp + n * (lt > lf ? lt : 1) + 1;
    uint8_t stackbuf[512], *buf = cap <= sizeof stackbuf ? stackbuf : malloc(cap);
    if (!buf) { x->oom = 1; return; }
    size_t m = lp;
    memcpy(buf, pre, lp);
    for (size_t i = 0; i < n;) {
        if (lf && i + lf <= n && memcmp(s + i, from, lf) == 0) { memcpy(buf + m, to, lt); m += lt; i += lf; }
        else buf[m++] = s[i++];
    }
    if (pat >= 0) {
        pretok_split(x, k, pat, buf, m, at);
    } else if (!split_on_to) {
        pretok(x, k + 1, buf, m, at);
    } else {  // Metaspace split: each replacement starts a new piece (merged with what follows)
        size_t start = 0;
        for (size_t i = 1; i <= m; i++) {
            if (i == m || (i + lt <= m && memcmp(buf + i, to, lt) == 0)) {
                pretok(x, k + 1, buf + start, i - start, start == 0 ? at : AT_MID);
                start = i;
            }
        }
    }
    if (buf != stackbuf) free(buf);
}

static void pretok(Enc *x, int k, const uint8_t *s, size_t n, int at) {
    if (n == 0 || x->oom) return;
    const Bpe *b = x->b;
    if (k == b->n_pt) { encode_word(x, s, n); return; }
    const PtStep *st = &b->pt[k];
    switch (st->kind) {
    case PT_SPLIT:
        pretok_split(x, k, st->arg, s, n, at);
        return;
    case PT_DIGITS:
        for (size_t i = 0; i < n;) {
            int len, c = class_at(s, n, i, &len);
            size_t e = c == UNI_N ? (st->arg ? i + (size_t)len : run_of(s, n, i, UNI_N, (size_t)-1)) : i + (size_t)len;
            if (c != UNI_N)
                while (e < n && class_at(s, n, e, &len) != UNI_N) e += (size_t)len;
            pretok(x, k + 1, s + i, e - i, i == 0 ? at : AT_MID);
            i = e;
        }
        return;
    case PT_BYTELEVEL:  // add_prefix_space applies to every piece, as HF's ByteLevel does
        if (st->arg && s[0] != ' ') pretok_rewritten(x, k, " ", s, n, NULL, NULL, at, 0, st->flag ? PAT_GPT2 : -1);
        else if (st->flag) pretok_split(x, k, PAT_GPT2, s, n, at);
        else pretok(x, k + 1, s, n, at);
        return;
    case PT_METASPACE: {
        size_t lr = strlen(st->rep);
        // the prepend check looks at the text after spaces became the replacement
        int starts = s[0] == ' ' || (n >= lr && memcmp(s, st->rep, lr) == 0);
        int pre = !starts && prepend_here((PrependScheme)st->arg, at);
        pretok_rewritten(x, k, pre ? st->rep : "", s, n, " ", st->rep, at, st->flag, -1);
        return;
    }
    }
}

// ---- added tokens ---------------------------------------------------------------------------------
static int is_space_at(const uint8_t *s, size_t n, size_t i, int *len) {
    return class_at(s, n, i, len) == UNI_S;
}

// The next added token in s[from..n): sets *ms, *me (the matched span including stripped
// whitespace) and returns its id, or -1 when none.
static int find_added(const Bpe *b, const AddedSet *a, const uint8_t *s, size_t n, size_t from, size_t *ms,
                      size_t *me) {
    if (a->n == 0) return -1;
    for (size_t p = from; p < n; p++) {
        int lo = a->start[s[p]], hi = a->start[s[p] + 1];
        for (int t = lo; t < hi; t++) {
            const Added *d = &a->tok[t];
            if (d->len > n - p || memcmp(s + p, b->atext + d->off, d->len) != 0) continue;
            size_t st = p, en = p + d->len;
            if (d->flags & AF_SINGLE_WORD) {
                int len = 1, before = 1, after = 1;
                if (st > 0) {
                    size_t q = st - 1;
                    while (q > 0 && (s[q] & 0xC0) == 0x80) q--;
                    before = is_space_at(s, n, q, &len);
                }
                if (en < n) after = is_space_at(s, n, en, &len);
                if (!before || !after) { p = en - 1; break; }  // this match is dropped
            }
            if (d->flags & AF_LSTRIP) {
                while (st > from) {
                    size_t q = st - 1;
                    while (q > from && (s[q] & 0xC0) == 0x80) q--;
                    int len;
                    if (!is_space_at(s, n, q, &len)) break;
                    st = q;
                }
            }
            if (d->flags & AF_RSTRIP) {
                int len;
                while (en < n && is_space_at(s, n, en, &len)) en += (size_t)len;
            }
            *ms = st;
            *me = en;
            return d->id;
        }
    }
    return -1;
}

// Normalizes s[0..n) (a segment between added tokens, found at `at`). Returns a malloc'd
// string (length in *m), NULL on OOM.
static char *normalize(const Bpe *b, const char *s, size_t n, int at, size_t *m) {
    char *cur = malloc(n + 1);
    if (!cur) return NULL;
    memcpy(cur, s, n);
    cur[n] = '\0';
    size_t len = n;
    for (int k = 0; k < b->n_norm && cur; k++) {
        const NormStep *st = &b->norm[k];
        char *next = NULL;
        size_t nl = 0;
        if (st->kind == NM_NFC) {
            next = uni_nfc(cur, len, &nl);
            if (!next && nl == (size_t)-1) { free(cur); return NULL; }
        } else if (st->kind == NM_PREPEND) {
            if (len > 0 && prepend_here(st->scheme, at)) {
                size_t la = strlen(st->a);
                next = malloc(la + len + 1);
                if (!next) { free(cur); return NULL; }
                memcpy(next, st->a, la);
                memcpy(next + la, cur, len + 1);
                nl = la + len;
            }
        } else {
            size_t la = strlen(st->a), lb = strlen(st->b), cnt = 0;
            if (la == 0) continue;
            for (char *p = strstr(cur, st->a); p; p = strstr(p + la, st->a)) cnt++;
            if (!cnt) continue;
            next = malloc(len + cnt * lb + 1);
            if (!next) { free(cur); return NULL; }
            char *q = next, *p = cur;
            for (char *hit = strstr(p, st->a); hit; hit = strstr(p, st->a)) {
                memcpy(q, p, (size_t)(hit - p));
                q += hit - p;
                memcpy(q, st->b, lb);
                q += lb;
                p = hit + la;
            }
            size_t rest = strlen(p);
            memcpy(q, p, rest + 1);
            nl = (size_t)(q - next) + rest;
        }
        if (next) { free(cur); cur = next; len = nl; }
    }
    *m = len;
    return cur;
}

// A segment between raw-matched tokens: normalize, cut normalized tokens, pre-tokenize, BPE.
static void encode_segment(Enc *x, const char *s, size_t n, int at) {
    const Bpe *b = x->b;
    size_t m;
    char *norm = b->n_norm ? normalize(b, s, n, at, &m) : NULL;
    if (b->n_norm && !norm) { x->oom = 1; return; }
    const uint8_t *t = norm ? (const uint8_t *)norm : (const uint8_t *)s;
    if (!norm) m = n;
    size_t pos = 0;
    while (pos < m && !x->oom) {
        size_t ms = m, me = m;
        int id = find_added(b, &b->normd, t, m, pos, &ms, &me);
        if (ms > pos) pretok(x, 0, t + pos, ms - pos, pos == 0 ? at : AT_MID);
        if (id < 0) break;
        push_id(x, id);
        pos = me;
    }
    free(norm);
}

static int bpe_encode(const Tokenizer *t, const char *text, size_t len, int cont, int **ids, Err *e) {
    const Bpe *b = t->impl;
    Enc x = {.b = b};
    const uint8_t *s = (const uint8_t *)text;
    size_t pos = 0;
    while (pos < len && !x.oom) {
        size_t ms = len, me = len;
        int id = find_added(b, &b->raw, s, len, pos, &ms, &me);
        if (ms > pos) encode_segment(&x, text + pos, ms - pos, pos > 0 ? AT_MID : cont ? AT_CONT : AT_START);
        if (id < 0) break;
        push_id(&x, id);
        pos = me;
    }
    free(x.sid); free(x.prv); free(x.nxt); free(x.soff); free(x.slen); free(x.heap);
    if (x.oom) {
        free(x.ids);
        *ids = NULL;
        return err_set(e, "%s: out of memory encoding %zu bytes of text", t->path, len);
    }
    if (!x.ids) x.ids = malloc(sizeof(int));  // a valid pointer for 0 ids
    if (!x.ids) return err_set(e, "%s: out of memory", t->path);
    *ids = x.ids;
    return x.n;
}

// ---- decoding -------------------------------------------------------------------------------------
static int skipped(const Bpe *b, int id) { return id == b->bos_id || id == b->eos_id; }

// Bytes of one piece: the token's text, without its leading space(s) at the stream start.
static const char *piece_bytes(const Bpe *b, int id, int at_start, size_t *n) {
    const char *p = b->dbuf + b->doff[id];
    size_t len = b->dlen[id];
    if (at_start && b->dec_strip == 1 && len > 0 && p[0] == ' ') { p++; len--; }
    if (at_start && b->dec_strip == 2)
        while (len > 0 && p[0] == ' ') { p++; len--; }
    *n = len;
    return p;
}

static char *bpe_decode(const Tokenizer *t, const int *ids, int n, Err *e) {
    const Bpe *b = t->impl;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += b->dlen[ids[i]];
    char *raw = malloc(total + 1), *out = malloc(3 * total + 1);
    if (!raw || !out) {
        free(raw); free(out);
        err_set(e, "%s: out of memory decoding %d ids", t->path, n);
        return NULL;
    }
    size_t k = 0;
    int at_start = 1;
    for (int i = 0; i < n; i++) {
        if (skipped(b, ids[i])) continue;
        size_t len;
        const char *p = piece_bytes(b, ids[i], at_start, &len);
        memcpy(raw + k, p, len);
        k += len;
        if (b->dlen[ids[i]] > 0) at_start = 0;
    }
    utf8_sanitize((const uint8_t *)raw, k, out);
    free(raw);
    return out;
}

static const char *bpe_piece_text(const Tokenizer *t, int prev, int id, char *buf, size_t n) {
    const Bpe *b = t->impl;
    if (skipped(b, id)) { buf[0] = '\0'; return buf; }
    int at_start = prev < 0 || skipped(b, prev) || b->dlen[prev] == 0;
    size_t len;
    const char *p = piece_bytes(b, id, at_start, &len);
    if (len > n - 1) len = n - 1;
    memcpy(buf, p, len);
    buf[len] = '\0';
    return buf;
}

static int bpe_piece_id(const Tokenizer *t, const char *piece) {
    const Bpe *b = t->impl;
    size_t n = strlen(piece);
    const AddedSet *sets[2] = {&b->raw, &b->normd};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < sets[k]->n; i++)
            if (sets[k]->tok[i].len == n && memcmp(b->atext + sets[k]->tok[i].off, piece, n) == 0)
                return sets[k]->tok[i].id;
    int id = map_get(b, piece, n);  // a piece as words are matched (raw bytes, or with "▁")
    if (id >= 0) return id;
    for (id = 0; id < b->n; id++)  // else as decoding shows it (rare calls: a scan)
        if (b->dlen[id] == n && memcmp(b->dbuf + b->doff[id], piece, n) == 0) return id;
    return -1;
}

static void bpe_destroy(void *impl) {
    Bpe *b = impl;
    if (!b) return;
    free(b->kbuf); free(b->koff); free(b->klen);
    free(b->dbuf); free(b->doff); free(b->dlen);
    free(b->type); free(b->score);
    free(b->vocab.slot);
    free(b->pairs);
    free(b->atext);
    free(b->raw.tok); free(b->normd.tok);
    free(b->cache.ent); free(b->cache.keys); free(b->cache.vals);
    pthread_mutex_destroy(&b->cache.mu);
    free(b);
}

static const TokOps bpe_ops = {bpe_encode, bpe_decode, bpe_piece_text, bpe_piece_id, bpe_destroy};

// ---- building -------------------------------------------------------------------------------------
// GPT-2's byte-to-unicode map: printable bytes stand for themselves, the others for
// U+0100 + k in byte order. unmap[cp] = byte + 1 for cp < 324 (0 = not a mapped character).
static void byte_unmap_table(uint16_t unmap[324]) {
    memset(unmap, 0, sizeof(uint16_t) * 324);
    int k = 0;
    for (int c = 0; c < 256; c++) {
        int printable = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
        int cp = printable ? c : 256 + k++;
        unmap[cp] = (uint16_t)(c + 1);
    }
}

// The raw bytes a byte-level token stands for; returns the length, -1 when a character is
// not in the map (the token is then kept as its own UTF-8).
static long byte_unmap(const uint16_t unmap[324], const char *s, uint8_t *out) {
    const uint8_t *p = (const uint8_t *)s;
    size_t n = strlen(s), k = 0;
    for (size_t i = 0; i < n;) {
        int len;
        uint32_t cp = utf8_decode(p + i, n - i, &len);
        if (cp >= 324 || !unmap[cp]) return -1;
        out[k++] = (uint8_t)(unmap[cp] - 1);
        i += (size_t)len;
    }
    return (long)k;
}

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

static long buf_add(Buf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return (long)(b->n - n);
}

static int byte_token_value(const char *s) {  // "<0xAB>" -> 0xAB, else -1
    unsigned v;
    char tail;
    if (strlen(s) != 6 || strncmp(s, "<0x", 3) != 0 || sscanf(s + 3, "%2X%c", &v, &tail) != 2 || tail != '>') return -1;
    return (int)v;
}

// Key and decoded bytes of every token.
static int build_texts(Bpe *b, const BpeSpec *sp, const char *path, Err *e) {
    uint16_t unmap[324];
    byte_unmap_table(unmap);
    Buf kb = {0}, db = {0};
    uint8_t tmp[1024];
    for (int id = 0; id < sp->n; id++) {
        const char *s = sp->text[id] ? sp->text[id] : "";
        size_t n = strlen(s);
        int ty = sp->type[id];
        const void *key = s, *dec = s;
        size_t kn = n, dn = n;
        int bv = byte_token_value(s);
        char *spaced = NULL;
        if (sp->byte_level && n < sizeof tmp && ty != TT_CONTROL && ty != TT_USER) {
            long k = byte_unmap(unmap, s, tmp);
            if (k >= 0) { key = dec = tmp; kn = dn = (size_t)k; }
        }
        if (ty == TT_CONTROL && sp->control_empty) {
            dn = 0;
        } else if (ty == TT_UNKNOWN && sp->algo == BPE_SCORES) {
            dec = " \xE2\x81\x87 ";  // as SentencePiece shows <unk>
            dn = 5;
        } else if (bv >= 0 && (ty == TT_BYTE || sp->byte_fallback)) {
            tmp[0] = (uint8_t)bv;
            dec = tmp;
            dn = 1;
        } else if (sp->dec_spaces && ty != TT_CONTROL && ty != TT_USER && strstr(s, "\xE2\x96\x81")) {
            spaced = malloc(n + 1);
            if (!spaced) goto oom;
            size_t k = 0;
            for (size_t i = 0; i < n;) {
                if (strncmp(s + i, "\xE2\x96\x81", 3) == 0) { spaced[k++] = ' '; i += 3; }
                else spaced[k++] = s[i++];
            }
            dec = spaced;
            dn = k;
        }
        long ko = buf_add(&kb, key, kn), dof = buf_add(&db, dec, dn);
        free(spaced);
        if (ko < 0 || dof < 0) goto oom;
        b->koff[id] = (uint32_t)ko;
        b->klen[id] = (uint32_t)kn;
        b->doff[id] = (uint32_t)dof;
        b->dlen[id] = (uint32_t)dn;
        if (kb.n > UINT32_MAX / 2 || db.n > UINT32_MAX / 2)
            return free(kb.p), free(db.p), err_set(e, "%s: vocabulary too large", path);
    }
    b->kbuf = kb.p ? kb.p : calloc(1, 1);
    b->dbuf = db.p ? db.p : calloc(1, 1);
    if (!b->kbuf || !b->dbuf) return err_set(e, "%s: out of memory", path);
    return 0;
oom:
    free(kb.p);
    free(db.p);
    return err_set(e, "%s: out of memory reading the vocabulary", path);
}

// The key bytes of a merge side as the vocabulary stores it.
static const char *merge_key(const BpeSpec *sp, const uint16_t unmap[324], const char *s, uint8_t *tmp, size_t cap,
                             size_t *n) {
    *n = strlen(s);
    if (!sp->byte_level || *n >= cap) return s;
    long k = byte_unmap(unmap, s, tmp);
    if (k < 0) return s;
    *n = (size_t)k;
    return (const char *)tmp;
}

static int build_merges(Bpe *b, const BpeSpec *sp, const char *path, Err *e) {
    b->pmask = pow2_at_least(2 * (uint64_t)sp->n_merges + 1) - 1;
    b->pairs = calloc(b->pmask + 1, sizeof(PairSlot));
    if (!b->pairs) return err_set(e, "%s: out of memory for %d merges", path, sp->n_merges);
    uint16_t unmap[324];
    byte_unmap_table(unmap);
    uint8_t ta[512], tb[512], both[1024];
    for (int r = 0; r < sp->n_merges; r++) {
        size_t na, nb;
        const char *a = merge_key(sp, unmap, sp->merge_a[r], ta, sizeof ta, &na);
        const char *c = merge_key(sp, unmap, sp->merge_b[r], tb, sizeof tb, &nb);
        int ia = map_get(b, a, na), ib = map_get(b, c, nb), im = -1;
        if (na + nb <= sizeof both) {
            memcpy(both, a, na);
            memcpy(both + na, c, nb);
            im = map_get(b, both, na + nb);
        }
        if (ia < 0 || ib < 0 || im < 0)
            return err_set(e, "%s: merge %d (\"%.60s\" + \"%.60s\"): %s is not in the vocabulary", path, r,
                           sp->merge_a[r], sp->merge_b[r], ia < 0 ? "the first part" : ib < 0 ? "the second part" : "the merged token");
        uint64_t key = (((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib) + 1;
        uint64_t i = hash_bytes(&key, 8) & b->pmask;
        while (b->pairs[i].key && b->pairs[i].key != key) i = (i + 1) & b->pmask;
        if (b->pairs[i].key) continue;  // a repeated pair keeps its first (best) rank
        b->pairs[i] = (PairSlot){key, r, im};
    }
    return 0;
}

// Matched tokens (CONTROL and USER types): content as the file spells it, those with
// AF_NORMALIZED matched in normalized text (their content normalized the same way).
static int build_added(Bpe *b, const BpeSpec *sp, const char *path, Err *e) {
    Buf ab = {0};
    int cnt = 0;
    for (int id = 0; id < sp->n; id++) cnt += sp->text[id] && sp->text[id][0] && (sp->type[id] == TT_CONTROL || sp->type[id] == TT_USER);
    Added *all = calloc((size_t)cnt + 1, sizeof(Added));
    if (!all) return err_set(e, "%s: out of memory", path);
    int k = 0;
    for (int id = 0; id < sp->n; id++) {
        if (!sp->text[id] || !sp->text[id][0] || (sp->type[id] != TT_CONTROL && sp->type[id] != TT_USER)) continue;
        uint8_t fl = sp->aflags ? sp->aflags[id] : 0;
        const char *s = sp->text[id];
        size_t n = strlen(s);
        char *norm = NULL;
        if (fl & AF_NORMALIZED) {
            norm = normalize(b, s, n, AT_START, &n);
            if (!norm) { free(all); free(ab.p); return err_set(e, "%s: out of memory", path); }
            s = norm;
        }
        long off = buf_add(&ab, s, n);
        free(norm);
        if (off < 0) { free(all); free(ab.p); return err_set(e, "%s: out of memory", path); }
        all[k++] = (Added){id, (uint32_t)off, (uint32_t)n, fl};
    }
    b->atext = ab.p;
    // split into the raw and normalized sets, each bucketed by first byte, longest first
    AddedSet *sets[2] = {&b->raw, &b->normd};
    for (int which = 0; which < 2; which++) {
        AddedSet *set = sets[which];
        set->tok = calloc((size_t)cnt + 1, sizeof(Added));
        if (!set->tok) { free(all); return err_set(e, "%s: out of memory", path); }
        int m = 0;
        for (int c = 0; c < 256; c++) {
            set->start[c] = m;
            int first = m;
            for (int i = 0; i < k; i++) {
                int normd = (all[i].flags & AF_NORMALIZED) != 0;
                if (normd != which || (uint8_t)ab.p[all[i].off] != c) continue;
                // insertion by length, longest first (stable for equal lengths: lower id first)
                int j = m++;
                while (j > first && set->tok[j - 1].len < all[i].len) { set->tok[j] = set->tok[j - 1]; j--; }
                set->tok[j] = all[i];
            }
        }
        set->start[256] = m;
        set->n = m;
    }
    free(all);
    return 0;
}

Tokenizer *bpe_build(Tokenizer *t, const BpeSpec *sp, Err *e) {
    if (sp->n <= 0) { err_set(e, "%s: the vocabulary is empty", t->path); return NULL; }
    Bpe *b = calloc(1, sizeof *b);
    if (!b) { err_set(e, "%s: out of memory", t->path); return NULL; }
    t->impl = b;
    t->ops = &bpe_ops;
    pthread_mutex_init(&b->cache.mu, NULL);
    b->algo = sp->algo;
    b->byte_level = sp->byte_level;
    b->ignore_merges = sp->ignore_merges;
    b->byte_fallback = sp->byte_fallback;
    b->fuse_unk = sp->fuse_unk;
    b->unk = sp->unk;
    b->n = sp->n;
    b->n_norm = sp->n_norm;
    memcpy(b->norm, sp->norm, sizeof b->norm);
    b->n_pt = sp->n_pt;
    memcpy(b->pt, sp->pt, sizeof b->pt);
    b->dec_strip = sp->dec_strip;
    b->bos_id = sp->bos;
    b->eos_id = sp->eos;
    size_t n = (size_t)sp->n;
    b->koff = malloc(sizeof(uint32_t) * n);
    b->klen = malloc(sizeof(uint32_t) * n);
    b->doff = malloc(sizeof(uint32_t) * n);
    b->dlen = malloc(sizeof(uint32_t) * n);
    b->type = malloc(n);
    b->score = calloc(n, sizeof(float));
    b->vocab.mask = pow2_at_least(2 * n + 1) - 1;
    b->vocab.slot = calloc(b->vocab.mask + 1, sizeof(uint64_t));
    b->cache.mask = CACHE_SLOTS - 1;
    b->cache.ent = calloc(CACHE_SLOTS, sizeof(CacheEnt));
    b->cache.kcap = (size_t)CACHE_SLOTS * 16;
    b->cache.vcap = (size_t)CACHE_SLOTS * 4;
    b->cache.keys = malloc(b->cache.kcap);
    b->cache.vals = malloc(sizeof(int) * b->cache.vcap);
    if (!b->koff || !b->klen || !b->doff || !b->dlen || !b->type || !b->score || !b->vocab.slot || !b->cache.ent ||
        !b->cache.keys || !b->cache.vals) {
        err_set(e, "%s: out of memory for a vocabulary of %d tokens", t->path, sp->n);
        return NULL;
    }
    memcpy(b->type, sp->type, n);
    if (sp->score) memcpy(b->score, sp->score, sizeof(float) * n);
    if (build_texts(b, sp, t->path, e)) return NULL;
    // the words' vocabulary: every token for merges (as HF's model vocabulary, normal tokens
    // first when two share their bytes); SentencePiece merging uses normal and user pieces
    for (int pass = 0; pass < 2; pass++)
        for (int id = 0; id < sp->n; id++) {
            int normal = sp->type[id] == TT_NORMAL;
            if (!sp->text[id] || b->klen[id] == 0 || normal != (pass == 0)) continue;
            if (sp->algo == BPE_SCORES && !normal && sp->type[id] != TT_USER) continue;
            map_put(b, id);
        }
    for (int c = 0; c < 256; c++) b->byte_sym[c] = -1;
    for (int id = 0; id < sp->n; id++) {
        if (!sp->text[id]) continue;
        if (sp->byte_level) {
            if (b->klen[id] == 1 && b->byte_sym[(uint8_t)b->kbuf[b->koff[id]]] < 0 && map_get(b, b->kbuf + b->koff[id], 1) == id)
                b->byte_sym[(uint8_t)b->kbuf[b->koff[id]]] = id;
        } else {
            int v = byte_token_value(sp->text[id]);
            if (v >= 0 && (sp->type[id] == TT_BYTE || sp->byte_fallback) && b->byte_sym[v] < 0) b->byte_sym[v] = id;
        }
    }
    if (sp->algo == BPE_MERGES && build_merges(b, sp, t->path, e)) return NULL;
    if (build_added(b, sp, t->path, e)) return NULL;
    t->vocab = sp->n;
    t->bos = sp->add_bos ? sp->bos : -1;
    t->eos = sp->eos;
    return t;
}
