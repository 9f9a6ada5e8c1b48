// unicode — UTF-8 helpers, the regex character classes and NFC for the BPE tokenizers,
// over the tables generated into data/unicode_tables.c.
#include <stdlib.h>
#include <string.h>

#include "data/unicode_internal.h"

uint32_t utf8_decode(const uint8_t *s, size_t n, int *len) {
    uint8_t c = s[0];
    *len = 1;
    if (c < 0x80) return c;
    int k;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) { k = 2; cp = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { k = 3; cp = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { k = 4; cp = c & 0x07; min = 0x10000; }
    else return 0xFFFD;
    if ((size_t)k > n) return 0xFFFD;
    for (int i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0xFFFD;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0xFFFD;
    *len = k;
    return cp;
}

int utf8_encode(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) { out[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { out[0] = (uint8_t)(0xC0 | cp >> 6); out[1] = (uint8_t)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

// Whether s[0..n) (n < the character's length) can still become a valid character.
static int utf8_could_complete(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    size_t k = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (k == 0 || n >= k) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        // the second byte's range excludes overlong forms, surrogates and > U+10FFFF
        if (i == 1 && ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F) || (c == 0xF0 && s[1] < 0x90) ||
                       (c == 0xF4 && s[1] > 0x8F)))
            return 0;
    }
    return 1;
}

size_t utf8_valid_prefix(const uint8_t *s, size_t n, int *incomplete) {
    size_t i = 0;
    *incomplete = 0;
    while (i < n) {
        int len;
        uint32_t cp = utf8_decode(s + i, n - i, &len);
        if (cp == 0xFFFD && len == 1 && s[i] >= 0x80) {
            *incomplete = utf8_could_complete(s + i, n - i);
            return i;
        }
        i += (size_t)len;
    }
    return i;
}

size_t utf8_sanitize(const uint8_t *s, size_t n, char *out) {
    size_t i = 0, k = 0;
    while (i < n) {
        int incomplete;
        size_t v = utf8_valid_prefix(s + i, n - i, &incomplete);
        memcpy(out + k, s + i, v);
        k += v;
        i += v;
        if (i >= n) break;
        // one U+FFFD for the maximal start of a character (or a lone bad byte)
        size_t bad = 1;
        while (i + bad < n && bad < 4 && utf8_could_complete(s + i, bad + 1)) bad++;
        memcpy(out + k, "\xEF\xBF\xBD", 3);
        k += 3;
        i += bad;
    }
    out[k] = '\0';
    return k;
}

static uint32_t range_lookup(const UniRange *r, int n, uint32_t cp) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < r[mid].lo) hi = mid - 1;
        else if (cp > r[mid].hi) lo = mid + 1;
        else return r[mid].v;
    }
    return 0;
}

int uni_class_of(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return UNI_L;
        if (cp >= '0' && cp <= '9') return UNI_N;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return UNI_S;
        return 0;
    }
    return (int)range_lookup(uni_class, uni_class_n, cp);
}

// ---- NFC ----------------------------------------------------------------------------------------
enum { S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7, L_COUNT = 19, V_COUNT = 21,
       T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT, S_COUNT = L_COUNT * N_COUNT };

static int ccc(uint32_t cp) { return cp < 0x300 ? 0 : (int)range_lookup(uni_ccc, uni_ccc_n, cp); }

static const UniDecomp *find_decomp(uint32_t cp) {
    int lo = 0, hi = uni_decomp_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < uni_decomp[mid].cp) hi = mid - 1;
        else if (cp > uni_decomp[mid].cp) lo = mid + 1;
        else return &uni_decomp[mid];
    }
    return NULL;
}

// The primary composite of a + b, 0 if none.
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE && b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    int lo = 0, hi = uni_compose_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const UniPair *p = &uni_compose[mid];
        if (a < p->a || (a == p->a && b < p->b)) hi = mid - 1;
        else if (a > p->a || b > p->b) lo = mid + 1;
        else return p->c;
    }
    return 0;
}

// Unicode's canonical decomposition, canonical ordering and canonical composition (UAX #15).
char *uni_nfc(const char *str, size_t n, size_t *out_n) {
    const uint8_t *s = (const uint8_t *)str;
    *out_n = 0;
    int need = 0;
    for (size_t i = 0; i < n && !need;) {
        if (s[i] < 0xCC) { i += s[i] < 0x80 ? 1 : s[i] >= 0xC2 ? 2 : 1; continue; }  // below U+0300: stable
        int len;
        uint32_t cp = utf8_decode(s + i, n - i, &len);
        need = range_lookup(uni_nfc_unsafe, uni_nfc_unsafe_n, cp) != 0;
        i += (size_t)len;
    }
    if (!need) return NULL;
    // decomposition: at most 4 code points per character of at least one byte (Hangul: 3)
    uint32_t *cps = malloc(sizeof(uint32_t) * (4 * n + 1));
    char *out = malloc(4 * n + 1);
    if (!cps || !out) { free(cps); free(out); *out_n = (size_t)-1; return NULL; }
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        int len;
        uint32_t cp = utf8_decode(s + i, n - i, &len);
        i += (size_t)len;
        const UniDecomp *d;
        if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
            uint32_t si = cp - S_BASE;
            cps[m++] = L_BASE + si / N_COUNT;
            cps[m++] = V_BASE + (si % N_COUNT) / T_COUNT;
            if (si % T_COUNT) cps[m++] = T_BASE + si % T_COUNT;
        } else if (cp >= 0xC0 && (d = find_decomp(cp))) {
            for (uint32_t k = 0; k < d->len; k++) cps[m++] = uni_decomp_cps[d->off + k];
        } else {
            cps[m++] = cp;
        }
    }
    // canonical ordering: stable insertion sort of each run of non-starters by class
    for (size_t i = 1; i < m; i++) {
        int c = ccc(cps[i]);
        if (c == 0) continue;
        size_t j = i;
        uint32_t x = cps[i];
        while (j > 0 && ccc(cps[j - 1]) > c) { cps[j] = cps[j - 1]; j--; }
        cps[j] = x;
    }
    // composition: a character joins the last starter unless blocked by a character of the
    // same or higher class in between
    if (m > 0) {
        size_t starter = 0, k = 1;
        int last = ccc(cps[0]) ? 256 : 0;
        for (size_t i = 1; i < m; i++) {
            uint32_t ch = cps[i];
            int c = ccc(ch);
            uint32_t comp = last < c || last == 0 ? compose(cps[starter], ch) : 0;
            if (comp) { cps[starter] = comp; continue; }
            if (c == 0) starter = k;
            last = c;
            cps[k++] = ch;
        }
        m = k;
    }
    size_t k = 0;
    for (size_t i = 0; i < m; i++) k += (size_t)utf8_encode(cps[i], (uint8_t *)out + k);
    out[k] = '\0';
    free(cps);
    *out_n = k;
    return out;
}
