// quant — GGUF block formats (ggml Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) read in
// place: validation, row/tile dequantization bit-identical to llama.cpp's dequantize_row_*,
// and the fused matmuls through the shared driver. Layouts: see quant.h.
#include "quant/quant.h"
#include "quant/quant_internal.h"

#include <omp.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

// One row of whole blocks: src (nb blocks) -> out (nb * QK)
typedef void (*BlocksFn)(const uint8_t *src, int64_t nb, float *out);

typedef struct {
    int type;
    const char *name;
    int qk;          // elements per block
    int bytes;       // bytes per block
    int scale_off[2];  // byte offsets of the fp16 scales in a block (-1: none)
    BlocksFn fn;
} GgqType;

static inline float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    return f16_to_f32(h);
#endif
}

#ifdef __AVX512F__
// 16 unsigned bytes -> 16 floats
static inline __m512 u8x16_ps(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }
// 16 signed bytes -> 16 floats
static inline __m512 i8x16_ps(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
#endif

// ---- 32-element blocks -------------------------------------------------------------------

// Q8_0: d, qs[32] int8 -> x = qs * d
static void blocks_q8_0(const uint8_t *src, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++, src += 34, y += 32) {
        const float d = half_at(src);
        const int8_t *q = (const int8_t *)(src + 2);
#ifdef __AVX512F__
        const __m512 vd = _mm512_set1_ps(d);
        _mm512_storeu_ps(y, _mm512_mul_ps(i8x16_ps(_mm_loadu_si128((const __m128i *)q)), vd));
        _mm512_storeu_ps(y + 16, _mm512_mul_ps(i8x16_ps(_mm_loadu_si128((const __m128i *)(q + 16))), vd));
#else
        for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;
#endif
    }
}

// Q4_0 (d, qs[16]), Q4_1 (d, m, qs[16]), Q5_0 (d, qh, qs[16]), Q5_1 (d, m, qh, qs[16]):
// element j < 16 is the low nibble of qs[j], element j + 16 its high nibble; with five
// bits, bit j of the little-endian u32 qh is bit 4 of element j.
// x = (q - 8) * d (Q4_0), (q - 16) * d (Q5_0), q * d + m (Q4_1, Q5_1).
static inline __attribute__((always_inline)) void blocks_q45(const uint8_t *src, int64_t nb, float *y,
                                                             int has_min, int five) {
    const int bytes = 18 + 2 * has_min + 4 * five, sub = has_min ? 0 : five ? 16 : 8;
    for (int64_t i = 0; i < nb; i++, src += bytes, y += 32) {
        const float d = half_at(src), m = has_min ? half_at(src + 2) : 0.0f;
        const uint8_t *p = src + 2 + 2 * has_min, *qs = p + 4 * five;
        const uint32_t qh = five ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24 : 0;
#ifdef __AVX512F__
        const __m128i b = _mm_loadu_si128((const __m128i *)qs), m4 = _mm_set1_epi8(0x0F);
        const __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
        const __m512i v16 = _mm512_set1_epi32(16), vsub = _mm512_set1_epi32(sub);
        __m512i q0 = _mm512_cvtepu8_epi32(lo), q1 = _mm512_cvtepu8_epi32(hi);
        if (five) {
            q0 = _mm512_mask_or_epi32(q0, (__mmask16)(qh & 0xFFFF), q0, v16);
            q1 = _mm512_mask_or_epi32(q1, (__mmask16)(qh >> 16), q1, v16);
        }
        const __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(m);
        __m512 x0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q0, vsub)), vd);
        __m512 x1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q1, vsub)), vd);
        if (has_min) {
            x0 = _mm512_add_ps(x0, vm);
            x1 = _mm512_add_ps(x1, vm);
        }
        _mm512_storeu_ps(y, x0);
        _mm512_storeu_ps(y + 16, x1);
#else
        for (int j = 0; j < 16; j++) {
            int q0 = (qs[j] & 15) | (int)((qh >> j) & 1) << 4, q1 = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            float x0 = (float)(q0 - sub) * d, x1 = (float)(q1 - sub) * d;
            y[j] = has_min ? x0 + m : x0;
            y[j + 16] = has_min ? x1 + m : x1;
        }
#endif
    }
}

static void blocks_q4_0(const uint8_t *src, int64_t nb, float *y) { blocks_q45(src, nb, y, 0, 0); }
static void blocks_q4_1(const uint8_t *src, int64_t nb, float *y) { blocks_q45(src, nb, y, 1, 0); }
static void blocks_q5_0(const uint8_t *src, int64_t nb, float *y) { blocks_q45(src, nb, y, 0, 1); }
static void blocks_q5_1(const uint8_t *src, int64_t nb, float *y) { blocks_q45(src, nb, y, 1, 1); }

// ---- 256-element super-blocks ------------------------------------------------------------

// 6-bit scale and min of sub-block s (0..7) from the 12 packed bytes of Q4_K / Q5_K.
static inline void k4_scale_min(int s, const uint8_t *sc, int *scale, int *min) {
    if (s < 4) {
        *scale = sc[s] & 63;
        *min = sc[s + 4] & 63;
    } else {
        *scale = (sc[s + 4] & 15) | (sc[s - 4] >> 6) << 4;
        *min = (sc[s + 4] >> 4) | (sc[s] >> 6) << 4;
    }
}

// Q4_K (qh == NULL) and Q5_K: d, dmin, scales[12], [qh[32]], qs[128].
// Sub-block s = 2g + k (k = 0 low nibbles, 1 high nibbles of qs[32g..32g+31]);
// the 5th bit of element l of sub-block s is bit s of qh[l]. x = (d*sc) * q - (dmin*m).
static inline void block_qk45(const uint8_t *src, int with_qh, float *y) {
    const float d = half_at(src), dmin = half_at(src + 2);
    const uint8_t *scales = src + 4, *qh = src + 16, *qs = src + (with_qh ? 48 : 16);
    for (int g = 0; g < 4; g++, qs += 32, y += 64) {
        float ds[2], ms[2];
        for (int k = 0; k < 2; k++) {
            int sc, mn;
            k4_scale_min(2 * g + k, scales, &sc, &mn);
            ds[k] = d * (float)sc;
            ms[k] = dmin * (float)mn;
        }
#ifdef __AVX512F__
        const __m256i q = _mm256_loadu_si256((const __m256i *)qs), m4 = _mm256_set1_epi8(0x0F);
        __m256i nib[2] = {_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4)};
        if (with_qh) {  // bit (2g + k) of each qh byte -> bit 4 (16-bit shifts stay within bytes after the masks)
            const __m256i h = _mm256_loadu_si256((const __m256i *)qh), one = _mm256_set1_epi8(1);
            for (int k = 0; k < 2; k++) {
                __m256i bit = _mm256_and_si256(_mm256_srli_epi16(h, 2 * g + k), one);
                nib[k] = _mm256_or_si256(nib[k], _mm256_slli_epi16(bit, 4));
            }
        }
        for (int k = 0; k < 2; k++) {
            const __m512 vd = _mm512_set1_ps(ds[k]), vm = _mm512_set1_ps(ms[k]);
            __m512 a = u8x16_ps(_mm256_castsi256_si128(nib[k])), b = u8x16_ps(_mm256_extracti128_si256(nib[k], 1));
            _mm512_storeu_ps(y + 32 * k, _mm512_sub_ps(_mm512_mul_ps(vd, a), vm));
            _mm512_storeu_ps(y + 32 * k + 16, _mm512_sub_ps(_mm512_mul_ps(vd, b), vm));
        }
#else
        for (int l = 0; l < 32; l++) {
            int q0 = qs[l] & 15, q1 = qs[l] >> 4;
            if (with_qh) {
                q0 |= ((qh[l] >> (2 * g)) & 1) << 4;
                q1 |= ((qh[l] >> (2 * g + 1)) & 1) << 4;
            }
            y[l] = ds[0] * (float)q0 - ms[0];
            y[32 + l] = ds[1] * (float)q1 - ms[1];
        }
#endif
    }
}

static void blocks_q4_k(const uint8_t *src, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) block_qk45(src + 144 * i, 0, y + 256 * i);
}

static void blocks_q5_k(const uint8_t *src, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) block_qk45(src + 176 * i, 1, y + 256 * i);
}

// Q6_K: ql[128], qh[64], scales[16] int8, d. Half h (128 values): for l < 32 codes
// c_k = (ql[l + 32(k&1)] >> 4(k>>1) & 15) | ((qh[l] >> 2k) & 3) << 4 -> element 32k + l;
// element i of the block: x = (d * scales[i/16]) * (c - 32).
static void blocks_q6_k(const uint8_t *restrict src, int64_t nb, float *restrict y) {
    for (int64_t i = 0; i < nb; i++, src += 210, y += 256) {
        const float d = half_at(src + 208);
        const int8_t *scales = (const int8_t *)(src + 192);
        float ds[16];
        for (int k = 0; k < 16; k++) ds[k] = d * (float)scales[k];
#ifdef __AVX512F__
        // the whole block is loaded before the first store (a load issued after stores to
        // an address 4 KiB apart stalls; small tiles hit that pattern)
        __m256i l[4], hb[2];
        for (int k = 0; k < 4; k++) l[k] = _mm256_loadu_si256((const __m256i *)(src + 32 * k));
        for (int h = 0; h < 2; h++) hb[h] = _mm256_loadu_si256((const __m256i *)(src + 128 + 32 * h));
        const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3), b32 = _mm256_set1_epi8(32);
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = l[2 * h], l1 = l[2 * h + 1];
            const __m256i low[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                                    _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                    _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
            for (int k = 0; k < 4; k++) {
                __m256i top = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb[h], 2 * k), m2), 4);
                __m256i c = _mm256_sub_epi8(_mm256_or_si256(low[k], top), b32);  // -32 .. 31
                __m512 a = i8x16_ps(_mm256_castsi256_si128(c)), b = i8x16_ps(_mm256_extracti128_si256(c, 1));
                float *o = y + 128 * h + 32 * k;
                _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_set1_ps(ds[8 * h + 2 * k]), a));
                _mm512_storeu_ps(o + 16, _mm512_mul_ps(_mm512_set1_ps(ds[8 * h + 2 * k + 1]), b));
            }
        }
#else
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = src + 64 * h, *qh = src + 128 + 32 * h;
            float *o = y + 128 * h;
            const float *dh = ds + 8 * h;
            for (int l = 0; l < 32; l++) {
                int c0 = ((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
                int c1 = ((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
                int c2 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                int c3 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                o[l] = dh[l / 16] * (float)c0;
                o[l + 32] = dh[2 + l / 16] * (float)c1;
                o[l + 64] = dh[4 + l / 16] * (float)c2;
                o[l + 96] = dh[6 + l / 16] * (float)c3;
            }
        }
#endif
    }
}

static const GgqType TYPES[] = {
    {GGQ_Q4_0, "Q4_0", 32, 18, {0, -1}, blocks_q4_0},
    {GGQ_Q4_1, "Q4_1", 32, 20, {0, 2}, blocks_q4_1},
    {GGQ_Q5_0, "Q5_0", 32, 22, {0, -1}, blocks_q5_0},
    {GGQ_Q5_1, "Q5_1", 32, 24, {0, 2}, blocks_q5_1},
    {GGQ_Q8_0, "Q8_0", 32, 34, {0, -1}, blocks_q8_0},
    {GGQ_Q4_K, "Q4_K", 256, 144, {0, 2}, blocks_q4_k},
    {GGQ_Q5_K, "Q5_K", 256, 176, {0, 2}, blocks_q5_k},
    {GGQ_Q6_K, "Q6_K", 256, 210, {208, -1}, blocks_q6_k},
};

static const GgqType *find_type(int type) {
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
        if (TYPES[i].type == type) return &TYPES[i];
    return NULL;
}

int ggq_supported(int type) { return find_type(type) != NULL; }

const char *ggq_type_name(int type) {
    const GgqType *t = find_type(type);
    return t ? t->name : NULL;
}

int ggq_block_elems(int type) {
    const GgqType *t = find_type(type);
    return t ? t->qk : 0;
}

size_t ggq_block_bytes(int type) {
    const GgqType *t = find_type(type);
    return t ? (size_t)t->bytes : 0;
}

size_t ggq_row_bytes(int type, int64_t cols) {
    const GgqType *t = find_type(type);
    if (!t || cols <= 0) return 0;
    return (size_t)((cols + t->qk - 1) / t->qk) * (size_t)t->bytes;
}

size_t ggq_bytes_for(int type, int64_t rows, int64_t cols) {
    return rows > 0 ? (size_t)rows * ggq_row_bytes(type, cols) : 0;
}

size_t ggq_bytes(const GgqMatrix *m) { return ggq_bytes_for(m->type, m->rows, m->cols); }

int ggq_check(int type, int64_t rows, int64_t cols, size_t nbytes, const char *name, Err *e) {
    const char *nm = name ? name : "weight";
    const GgqType *t = find_type(type);
    if (!t)
        return err_set(e, "%s: ggml type %d is not a supported quantized type (supported: Q4_0, Q4_1, "
                          "Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)", nm, type);
    if (rows < 1 || cols < 1)
        return err_set(e, "%s: a %s matrix of (%lld, %lld) values is empty", nm, t->name, (long long)rows,
                       (long long)cols);
    if (cols % t->qk)
        return err_set(e, "%s: %lld columns is not a multiple of the %s block size %d", nm, (long long)cols,
                       t->name, t->qk);
    size_t row = (size_t)(cols / t->qk) * (size_t)t->bytes;
    if ((size_t)rows > SIZE_MAX / row || (size_t)rows * row != nbytes)
        return err_set(e, "%s: a %s (%lld x %lld) matrix takes %lld x %zu bytes, but %zu bytes are given", nm,
                       t->name, (long long)rows, (long long)cols, (long long)rows, row, nbytes);
    return 0;
}

int ggq_init(GgqMatrix *m, int type, int64_t rows, int64_t cols, const void *data, size_t nbytes,
             const char *name, Err *e) {
    memset(m, 0, sizeof *m);
    if (ggq_check(type, rows, cols, nbytes, name, e)) return -1;
    if (!data) return err_set(e, "%s: no data", name ? name : "weight");
    *m = (GgqMatrix){type, rows, cols, data, name};
    return 0;
}

int ggq_check_scales(const GgqMatrix *m, Err *e) {
    const GgqType *t = find_type(m->type);
    if (!t) return ggq_check(m->type, m->rows, m->cols, 0, m->name, e);
    const uint8_t *p = m->data;
    const int64_t nb = m->rows * (m->cols / t->qk);
    int64_t first = nb;
    int which = 0;
#pragma omp parallel for schedule(static) reduction(min : first) if (nb >= QT_PAR_MIN / 32)
    for (int64_t b = 0; b < nb; b++)
        for (int k = 0; k < 2; k++) {
            if (t->scale_off[k] < 0) continue;
            const uint8_t *s = p + b * t->bytes + t->scale_off[k];
            if ((s[1] & 0x7C) == 0x7C && b < first) first = b;  // exponent all ones: Inf or NaN
        }
    if (first == nb) return 0;
    const uint8_t *blk = p + first * t->bytes;
    uint16_t h = 0;
    for (int k = 0; k < 2; k++)
        if (t->scale_off[k] >= 0 && (blk[t->scale_off[k] + 1] & 0x7C) == 0x7C) {
            which = k;
            memcpy(&h, blk + t->scale_off[k], 2);
            break;
        }
    const int64_t bpr = m->cols / t->qk;
    return err_set(e, "%s: %s block %lld of row %lld (columns %lld..%lld) has a non-finite %s (fp16 0x%04x)",
                   m->name ? m->name : "weight", t->name, (long long)(first % bpr), (long long)(first / bpr),
                   (long long)(first % bpr * t->qk), (long long)(first % bpr * t->qk + t->qk - 1),
                   which == 0 ? "scale d" : m->type == GGQ_Q4_1 || m->type == GGQ_Q5_1 ? "min m" : "min scale dmin",
                   (unsigned)h);
}

// ---- dequantization ---------------------------------------------------------------------

// Row r, columns [c0, c0+n) -> out (n), on the calling thread.
static void dequant_row_part(const GgqMatrix *m, const GgqType *t, int64_t r, int64_t c0, int64_t n, float *out) {
    const uint8_t *row = (const uint8_t *)m->data + (size_t)r * (size_t)(m->cols / t->qk) * (size_t)t->bytes;
    const int64_t qk = t->qk, end = c0 + n;
    float tmp[256];
    int64_t c = c0;
    if (c % qk) {  // leading partial block
        int64_t b = c / qk, k = (b + 1) * qk < end ? (b + 1) * qk - c : end - c;
        t->fn(row + b * t->bytes, 1, tmp);
        memcpy(out, tmp + c % qk, (size_t)k * sizeof(float));
        out += k;
        c += k;
    }
    int64_t whole = (end - c) / qk;
    if (whole > 0) {
        t->fn(row + (c / qk) * t->bytes, whole, out);
        out += whole * qk;
        c += whole * qk;
    }
    if (c < end) {  // trailing partial block
        t->fn(row + (c / qk) * t->bytes, 1, tmp);
        memcpy(out, tmp, (size_t)(end - c) * sizeof(float));
    }
}

void ggq_dequant_tile(const GgqMatrix *m, int64_t r0, int64_t nrows, int64_t c0, int64_t ncols,
                      float *out, int64_t ldo) {
    if (nrows <= 0 || ncols <= 0) return;
    const GgqType *t = find_type(m->type);
    if (!t) die_internal("ggq_dequant_tile: %s has unsupported ggml type %d (not validated with ggq_init)",
                         m->name ? m->name : "weight", m->type);
    // (small or nested calls stay out of the OpenMP construct: entering even an if(0)
    // parallel region costs about a microsecond, which the fused matmuls would pay per tile)
    int par = nrows * ncols >= QT_PAR_MIN && !omp_in_parallel();
    if (c0 == 0 && ncols == m->cols && ldo == m->cols) {
        // whole rows: one run of consecutive blocks, split into chunks of whole blocks
        const int64_t bpr = m->cols / t->qk, b0 = r0 * bpr, nbt = nrows * bpr;
        const uint8_t *src = (const uint8_t *)m->data + (size_t)b0 * (size_t)t->bytes;
        if (!par) {
            t->fn(src, nbt, out);
            return;
        }
        const int64_t chunk = QT_DQ_CHUNK / t->qk, nchunks = (nbt + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
        for (int64_t k = 0; k < nchunks; k++) {
            int64_t nb = nbt - k * chunk < chunk ? nbt - k * chunk : chunk;
            t->fn(src + (size_t)(k * chunk) * (size_t)t->bytes, nb, out + k * chunk * t->qk);
        }
    } else if (!par) {
        for (int64_t r = 0; r < nrows; r++) dequant_row_part(m, t, r0 + r, c0, ncols, out + r * ldo);
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < nrows; r++) dequant_row_part(m, t, r0 + r, c0, ncols, out + r * ldo);
    }
}

void ggq_dequant_rows(const GgqMatrix *m, int64_t r0, int64_t nrows, float *out) {
    ggq_dequant_tile(m, r0, nrows, 0, m->cols, out, m->cols);
}

// ---- fused matmuls: the shared tiled driver of quant_internal.h ------------------------

static void ggq_tile_cb(const void *w, int64_t r0, int64_t nrows, int64_t c0, int64_t ncols, float *out,
                        int64_t ldo) {
    ggq_dequant_tile((const GgqMatrix *)w, r0, nrows, c0, ncols, out, ldo);
}

static QtMatrix ggq_qt(const GgqMatrix *w) {
    const GgqType *t = find_type(w->type);
    return (QtMatrix){w, ggq_tile_cb, w->rows, w->cols, t ? t->qk : 32, t ? t->name : "?", w->name};
}

size_t ggq_scratch_floats(const GgqMatrix *w) {
    QtMatrix q = ggq_qt(w);
    return qt_scratch_floats(&q);
}

// x (N,C), W (OC,C) -> y (N,OC)
int ggq_matmul_xwt(const float *x, int64_t N, const GgqMatrix *w, float *y, int accumulate,
                   float *scratch, Err *e) {
    QtMatrix q = ggq_qt(w);
    return qt_matmul_xwt(&q, x, N, y, accumulate, scratch, e);
}

// dy (N,OC), W (OC,C) -> dx (N,C)
int ggq_matmul_dyw(const float *dy, int64_t N, const GgqMatrix *w, float *dx, int accumulate,
                   float *scratch, Err *e) {
    QtMatrix q = ggq_qt(w);
    return qt_matmul_dyw(&q, dy, N, dx, accumulate, scratch, e);
}
