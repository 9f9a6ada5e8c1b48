// quant — fp32 -> the GGUF 32-element block formats Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, as
// llama.cpp's reference quantizers compute them (the rules and the error bound: quant.h).
// The fp32 operations are written out one by one (no FMA contraction under -std=c11), so the
// bytes match llama.cpp's quantize_row_*_ref for the same input.
#include "quant/quant.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#define QK 32

static void put_half(uint8_t *p, float v) {
    uint16_t h = f32_to_f16(v);
    memcpy(p, &h, 2);
}

// Q8_0: d fp16, qs[32] int8
static void block_q8_0(const float *x, uint8_t *b) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_half(b, d);
    for (int j = 0; j < QK; j++) b[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

// Q4_0 (nbits 4) and Q5_0 (nbits 5): d fp16, [qh u32 for Q5_0], qs[16]. Codes are offset by
// half = 2^(nbits-1); the value of largest magnitude s (the first one on ties) maps to code 0.
static void block_x_0(const float *x, uint8_t *b, int nbits) {
    const int half = 1 << (nbits - 1), top = (1 << nbits) - 1;
    float amax = 0.0f, s = 0.0f;
    for (int j = 0; j < QK; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            s = x[j];
        }
    const float d = s / (float)-half;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float off = (float)half + 0.5f;
    put_half(b, d);
    uint8_t code[QK];
    for (int j = 0; j < QK; j++) {
        int q = (int8_t)(x[j] * id + off);  // truncation of a value in [0, 2^nbits + 0.5]
        code[j] = (uint8_t)(q < top ? q : top);
    }
    uint8_t *qs = b + (nbits == 5 ? 6 : 2);
    if (nbits == 5) {
        uint32_t qh = 0;
        for (int j = 0; j < QK; j++) qh |= (uint32_t)(code[j] >> 4) << j;
        memcpy(b + 2, &qh, 4);  // little endian (the only byte order the GGUF reader takes)
    }
    for (int j = 0; j < QK / 2; j++) qs[j] = (uint8_t)((code[j] & 15) | (code[j + QK / 2] & 15) << 4);
}

// Q4_1 (nbits 4) and Q5_1 (nbits 5): d, m fp16, [qh u32 for Q5_1], qs[16]; x = q·d + m.
static void block_x_1(const float *x, uint8_t *b, int nbits) {
    const int top = (1 << nbits) - 1;
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < QK; j++) {
        if (x[j] < mn) mn = x[j];
        if (x[j] > mx) mx = x[j];
    }
    const float d = (mx - mn) / (float)top;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_half(b, d);
    put_half(b + 2, mn);
    uint8_t code[QK];
    for (int j = 0; j < QK; j++) {
        int q = (int)((x[j] - mn) * id + 0.5f);  // x >= mn: a value in [0, 2^nbits - 0.5]
        code[j] = (uint8_t)(q < top ? q : top);
    }
    uint8_t *qs = b + (nbits == 5 ? 8 : 4);
    if (nbits == 5) {
        uint32_t qh = 0;
        for (int j = 0; j < QK; j++) qh |= (uint32_t)(code[j] >> 4) << j;
        memcpy(b + 4, &qh, 4);
    }
    for (int j = 0; j < QK / 2; j++) qs[j] = (uint8_t)((code[j] & 15) | (code[j + QK / 2] & 15) << 4);
}

static void quantize_block(int type, const float *x, uint8_t *b) {
    switch (type) {
        case GGQ_Q8_0: block_q8_0(x, b); break;
        case GGQ_Q4_0: block_x_0(x, b, 4); break;
        case GGQ_Q5_0: block_x_0(x, b, 5); break;
        case GGQ_Q4_1: block_x_1(x, b, 4); break;
        case GGQ_Q5_1: block_x_1(x, b, 5); break;
        default: break;
    }
}

int ggq_quantizable(int type) {
    return type == GGQ_Q8_0 || type == GGQ_Q4_0 || type == GGQ_Q4_1 || type == GGQ_Q5_0 || type == GGQ_Q5_1;
}

int ggq_quantize_rows(int type, const float *x, int64_t rows, int64_t cols, void *out) {
    if (!ggq_quantizable(type) || cols < QK || cols % QK || rows < 0) return -1;
    const int64_t nb = cols / QK;
    const size_t bb = ggq_block_bytes(type), rb = ggq_row_bytes(type, cols);
    uint8_t *o = out;
    // each row on its own: the same bytes whatever the thread count
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16) && !omp_in_parallel())
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < nb; i++) quantize_block(type, x + r * cols + i * QK, o + (size_t)r * rb + (size_t)i * bb);
    return 0;
}
