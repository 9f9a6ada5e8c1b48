// quant — NF4 + double quantization as bitsandbytes' quantize_4bit(..., "nf4",
// compress_statistics=True); see quant.h for the format.
#include "quant/quant.h"
#include "quant/quant_internal.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

static const float NF4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

// dQuantizeNF4's thresholds (kernels.cu), ascending: code = number of thresholds t with
// x > t, which is exactly where its decision tree lands.
// Written as the same decimal float literals, so they round to the same float32.
static const float NF4_TH[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f,
};

// bitsandbytes' create_dynamic_map(signed=True): for i = 0..6 the 2^i means of adjacent
// points of torch.linspace(0.1, 1, 2^i + 1) (float32), times +-10^(i-6), plus 0 and 1,
// sorted. The values depend on how torch rounds its float32 linspace (90 of them differ
// by an ulp from a float64 construction), so they are tabulated here as produced by torch
// (tests/ref_nf4.py --emit-c-table) and checked bit for bit by tests/test_quant.c.
static const float DYN_MAP[256] = {
    -0x1.fc6666p-1f, -0x1.f53332p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f,
    -0x1.df9998p-1f, -0x1.d86666p-1f, -0x1.d13334p-1f, -0x1.cap-1f,
    -0x1.c2ccccp-1f, -0x1.bb9998p-1f, -0x1.b46666p-1f, -0x1.ad3332p-1f,
    -0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.979998p-1f, -0x1.906666p-1f,
    -0x1.893334p-1f, -0x1.82p-1f, -0x1.7acccep-1f, -0x1.73999ap-1f,
    -0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56cccep-1f,
    -0x1.4f999ap-1f, -0x1.486666p-1f, -0x1.413334p-1f, -0x1.3ap-1f,
    -0x1.32ccccp-1f, -0x1.2b999ap-1f, -0x1.246668p-1f, -0x1.1d3334p-1f,
    -0x1.16p-1f, -0x1.0eccccp-1f, -0x1.07999ap-1f, -0x1.006666p-1f,
    -0x1.f26668p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f,
    -0x1.b8ccccp-2f, -0x1.aa6664p-2f, -0x1.9cp-2f, -0x1.8d9998p-2f,
    -0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626664p-2f, -0x1.54p-2f,
    -0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f,
    -0x1.0cp-2f, -0x1.fb3334p-3f, -0x1.de6668p-3f, -0x1.c1999ap-3f,
    -0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3332p-3f, -0x1.4e6666p-3f,
    -0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f,
    -0x1.93d70ap-4f, -0x1.8851eap-4f, -0x1.7ccccep-4f, -0x1.7147aep-4f,
    -0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb85p-4f, -0x1.433334p-4f,
    -0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f,
    -0x1.09999ap-4f, -0x1.fc28f4p-5f, -0x1.e51ebap-5f, -0x1.ce147ap-5f,
    -0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f,
    -0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c28ep-5f,
    -0x1.fd70a4p-6f, -0x1.cf5c26p-6f, -0x1.a147aep-6f, -0x1.733334p-6f,
    -0x1.451eb8p-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f,
    -0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f,
    -0x1.e978d4p-8f, -0x1.c49ba6p-8f, -0x1.9fbe76p-8f, -0x1.7ae148p-8f,
    -0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f,
    -0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,
    -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f, -0x1.3dd982p-11f,
    -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f,
    -0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0x0p+0f,
    0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f,
    0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f,
    0x1.19ce0ap-12f, 0x1.8fc506p-12f, 0x1.02de02p-11f, 0x1.3dd982p-11f,
    0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,
    0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f,
    0x1.0c49bap-8f, 0x1.3126e8p-8f, 0x1.56041ap-8f, 0x1.7ae148p-8f,
    0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f,
    0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f,
    0x1.d1eb86p-7f, 0x1.170a3ep-6f, 0x1.451eb8p-6f, 0x1.733334p-6f,
    0x1.a147aep-6f, 0x1.cf5c26p-6f, 0x1.fd70a4p-6f, 0x1.15c28ep-5f,
    0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f,
    0x1.88f5c2p-5f, 0x1.ap-5f, 0x1.b70a3ep-5f, 0x1.ce147ap-5f,
    0x1.e51ebap-5f, 0x1.fc28f4p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f,
    0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f,
    0x1.4eb85p-4f, 0x1.5a3d7p-4f, 0x1.65c29p-4f, 0x1.7147aep-4f,
    0x1.7ccccep-4f, 0x1.8851eap-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,
    0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f,
    0x1.6b3332p-3f, 0x1.88p-3f, 0x1.a4ccccp-3f, 0x1.c1999ap-3f,
    0x1.de6668p-3f, 0x1.fb3334p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f,
    0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f,
    0x1.626664p-2f, 0x1.70ccccp-2f, 0x1.7f3334p-2f, 0x1.8d9998p-2f,
    0x1.9cp-2f, 0x1.aa6664p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,
    0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26668p-2f, 0x1.006666p-1f,
    0x1.07999ap-1f, 0x1.0eccccp-1f, 0x1.16p-1f, 0x1.1d3334p-1f,
    0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f,
    0x1.413334p-1f, 0x1.486666p-1f, 0x1.4f999ap-1f, 0x1.56cccep-1f,
    0x1.5ep-1f, 0x1.653334p-1f, 0x1.6c6668p-1f, 0x1.73999ap-1f,
    0x1.7acccep-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f,
    0x1.979998p-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3332p-1f,
    0x1.b46666p-1f, 0x1.bb9998p-1f, 0x1.c2ccccp-1f, 0x1.cap-1f,
    0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df9998p-1f, 0x1.e6ccccp-1f,
    0x1.eep-1f, 0x1.f53332p-1f, 0x1.fc6666p-1f, 0x1p+0f,
};

const float *nf4_codebook(void) { return NF4; }
const float *dyn_map_signed(void) { return DYN_MAP; }

size_t nf4_bytes_for(int64_t rows, int64_t cols) {
    int64_t n = rows * cols;
    int64_t nb = (n + NF4_BLOCK - 1) / NF4_BLOCK;
    int64_t nb2 = (nb + NF4_BLOCK2 - 1) / NF4_BLOCK2;
    return (size_t)((n + 1) / 2) + (size_t)nb + (size_t)nb2 * sizeof(float);
}

size_t nf4_bytes(const Nf4Matrix *m) { return nf4_bytes_for(m->rows, m->cols); }

void nf4_free(Nf4Matrix *m) {
    if (!m) return;
    free(m->packed);
    free(m->absmax_q);
    free(m->scale2);
    m->packed = NULL;
    m->absmax_q = NULL;
    m->scale2 = NULL;
}

// ---- quantization -----------------------------------------------------------------------

// kernels.cu dQuantize<0>: binary search over the sorted 256-value code from pivot 127 in
// 7 halving steps, then the midpoint rule between the last pivot and its bracket
// (ties go to the pivot). x is already scaled by 1/absmax.
static uint8_t dquantize8(const float *code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[upper_pivot];
    if (lower_pivot == 0) lower = code[lower_pivot];
    if (x > val) {
        float midpoint = (upper + val) * 0.5f;
        return (uint8_t)(x > midpoint ? upper_pivot : pivot);
    }
    float midpoint = (lower + val) * 0.5f;
    return (uint8_t)(x < midpoint ? lower_pivot : pivot);
}

// One block of `valid` (1..64) weights w -> its absmax and (valid+1)/2 packed bytes.
// Like kQuantizeBlockwise: missing elements are 0 and x is scaled by the float reciprocal
// 1.0f/absmax. One deliberate difference: in an all-zero block 0 * (1/0) is NaN, which the
// CUDA decision tree sends to code 0 (-1.0), so after double quantization bitsandbytes
// dequantizes such a block to -absmax' (its absmax 0 reconstructed with the 8-bit error,
// not 0); here a NaN ratio gets code 7 (0.0) and the block stays exactly zero.
// Returns the index within the block of the first non-finite weight, or -1.
static int quantize_block(const float *w, int valid, float *absmax, uint8_t *out) {
    float x[NF4_BLOCK];
    float amax = 0.0f;
    int nonfinite = 0;
    for (int j = 0; j < NF4_BLOCK; j++) {
        x[j] = j < valid ? w[j] : 0.0f;
        float a = fabsf(x[j]);
        nonfinite |= !(a <= FLT_MAX);  // inf or NaN
        amax = a > amax ? a : amax;
    }
    int bad = -1;
    for (int j = 0; nonfinite && j < valid && bad < 0; j++)
        if (!isfinite(w[j])) bad = j;
    float inv = 1.0f / amax;
    int32_t q[NF4_BLOCK];
    for (int j = 0; j < NF4_BLOCK; j++) {
        float r = x[j] * inv;
        x[j] = r == r ? r : 0.0f;
        q[j] = 0;
    }
    for (int t = 0; t < 15; t++)
        for (int j = 0; j < NF4_BLOCK; j++) q[j] += x[j] > NF4_TH[t];
    for (int k = 0; k < (valid + 1) / 2; k++) out[k] = (uint8_t)((q[2 * k] << 4) | q[2 * k + 1]);
    *absmax = amax;
    return bad;
}

int nf4_quantize(const float *w, int64_t rows, int64_t cols, const char *name, Nf4Matrix *out, Err *e) {
    memset(out, 0, sizeof *out);
    const char *nm = name ? name : "weight";
    if (rows < 1 || cols < 1)
        return err_set(e, "%s: cannot quantize a (%lld, %lld) matrix", nm, (long long)rows, (long long)cols);
    int64_t n = rows * cols, nb = (n + NF4_BLOCK - 1) / NF4_BLOCK, nb2 = (nb + NF4_BLOCK2 - 1) / NF4_BLOCK2;
    char what[200];
    snprintf(what, sizeof what, "NF4 codes of %s (%lld x %lld)", nm, (long long)rows, (long long)cols);
    uint8_t *packed = xmalloc_aligned((size_t)((n + 1) / 2), what, e);
    uint8_t *absq = xmalloc_aligned((size_t)nb, "NF4 absmax codes", e);
    float *scale2 = xmalloc_aligned((size_t)nb2 * sizeof(float), "NF4 absmax scales", e);
    float *absmax = xmalloc_aligned((size_t)nb * sizeof(float), "NF4 absmax (temporary)", e);
    if (!packed || !absq || !scale2 || !absmax) {
        free(packed), free(absq), free(scale2), free(absmax);
        return -1;
    }

    // level 1: NF4 codes and fp32 absmax per block of 64
    int64_t first_bad = n;
#pragma omp parallel for schedule(static) reduction(min : first_bad)
    for (int64_t b = 0; b < nb; b++) {
        int64_t i0 = b * NF4_BLOCK;
        int valid = (int)(n - i0 < NF4_BLOCK ? n - i0 : NF4_BLOCK);
        int bad = quantize_block(w + i0, valid, &absmax[b], packed + i0 / 2);
        if (bad >= 0 && i0 + bad < first_bad) first_bad = i0 + bad;
    }
    if (first_bad < n) {
        free(packed), free(absq), free(scale2), free(absmax);
        return err_set(e, "%s: weight at row %lld, column %lld is %g; cannot quantize a non-finite value",
                       nm, (long long)(first_bad / cols), (long long)(first_bad % cols), (double)w[first_bad]);
    }

    // level 2: offset = mean (float64, fixed serial order, rounded once), then the centred
    // values in blocks of 256 -> 8-bit codes into the dynamic map + an fp32 scale per block
    double sum = 0.0;
    for (int64_t b = 0; b < nb; b++) sum += absmax[b];
    float offset = (float)(sum / (double)nb);
#pragma omp parallel for schedule(static)
    for (int64_t b2 = 0; b2 < nb2; b2++) {
        int64_t j0 = b2 * NF4_BLOCK2, j1 = j0 + NF4_BLOCK2 < nb ? j0 + NF4_BLOCK2 : nb;
        float smax = 0.0f;
        for (int64_t j = j0; j < j1; j++) {
            absmax[j] = absmax[j] - offset;
            float a = fabsf(absmax[j]);
            smax = a > smax ? a : smax;
        }
        float inv = 1.0f / smax;
        for (int64_t j = j0; j < j1; j++) absq[j] = dquantize8(DYN_MAP, absmax[j] * inv);
        scale2[b2] = smax;
    }
    free(absmax);

    out->rows = rows;
    out->cols = cols;
    out->n = n;
    out->nblocks = nb;
    out->nblocks2 = nb2;
    out->packed = packed;
    out->absmax_q = absq;
    out->scale2 = scale2;
    out->offset = offset;
    memcpy(out->code2, DYN_MAP, sizeof out->code2);
    out->name = name;
    return 0;
}

// ---- dequantization ---------------------------------------------------------------------

// absmax of block b: dequantize_blockwise, then += offset: two fp32 roundings. The volatile
// keeps the compiler from contracting them into one FMA (which -ffp-contract=fast would do,
// and which changes the result by an ulp); it costs one store per 64 weights.
static inline float block_absmax(const Nf4Matrix *m, int64_t b) {
    volatile float a = m->code2[m->absmax_q[b]] * m->scale2[b / NF4_BLOCK2];
    return a + m->offset;
}

// packed (32 bytes) -> out (64): out[i] = nf4[code_i] * a
static inline void dequant_block64(const uint8_t *p, float a, float *out) {
#ifdef __AVX512F__
    const __m512 cb = _mm512_loadu_ps(NF4);
    const __m512 va = _mm512_set1_ps(a);
    const __m128i lo4 = _mm_set1_epi8(0x0F);
    for (int h = 0; h < 2; h++) {
        __m128i b = _mm_loadu_si128((const __m128i *)(p + 16 * h));
        __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), lo4);  // even elements
        __m128i lo = _mm_and_si128(b, lo4);                      // odd elements
        __m128i c0 = _mm_unpacklo_epi8(hi, lo), c1 = _mm_unpackhi_epi8(hi, lo);
        _mm512_storeu_ps(out + 32 * h, _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c0), cb), va));
        _mm512_storeu_ps(out + 32 * h + 16,
                         _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c1), cb), va));
    }
#elif defined(__aarch64__)
    // NEON: the codebook's 64 bytes are a 4-register table; each code c becomes the byte
    // indices 4c .. 4c+3 of its float (tbl), 16 lookups of 4 floats per block
    const uint8_t *cbb = (const uint8_t *)NF4;
    const uint8x16x4_t tb = {{vld1q_u8(cbb), vld1q_u8(cbb + 16), vld1q_u8(cbb + 32), vld1q_u8(cbb + 48)}};
    const uint8x16_t off = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
    const float32x4_t va = vdupq_n_f32(a);
    for (int h = 0; h < 2; h++) {
        uint8x16_t b = vld1q_u8(p + 16 * h);
        uint8x16x2_t z = vzipq_u8(vshrq_n_u8(b, 4), vandq_u8(b, vdupq_n_u8(15)));  // codes of 32 elements
        for (int e = 0; e < 2; e++) {
            uint8x16x2_t d = vzipq_u8(z.val[e], z.val[e]);  // each code twice
            for (int f = 0; f < 2; f++) {
                uint8x16x2_t q = vzipq_u8(d.val[f], d.val[f]);  // each code four times
                for (int g = 0; g < 2; g++) {
                    uint8x16_t idx = vaddq_u8(vshlq_n_u8(q.val[g], 2), off);
                    float32x4_t v = vreinterpretq_f32_u8(vqtbl4q_u8(tb, idx));
                    vst1q_f32(out + 32 * h + 16 * e + 8 * f + 4 * g, vmulq_f32(v, va));
                }
            }
        }
    }
#else
    for (int k = 0; k < NF4_BLOCK / 2; k++) {
        out[2 * k] = NF4[p[k] >> 4] * a;
        out[2 * k + 1] = NF4[p[k] & 15] * a;
    }
#endif
}

// Flat elements [i0, i0+cnt) -> out (cnt), on the calling thread.
static void dequant_range(const Nf4Matrix *m, int64_t i0, int64_t cnt, float *out) {
    int64_t i = i0, end = i0 + cnt;
    while (i < end) {
        int64_t b = i / NF4_BLOCK, bstart = b * NF4_BLOCK;
        int64_t seg_end = bstart + NF4_BLOCK < end ? bstart + NF4_BLOCK : end;
        float a = block_absmax(m, b);
        if (i == bstart && seg_end == bstart + NF4_BLOCK) {
            dequant_block64(m->packed + bstart / 2, a, out);
        } else {
            for (int64_t j = i; j < seg_end; j++) {
                uint8_t byte = m->packed[j >> 1];
                out[j - i] = NF4[(j & 1) ? (byte & 15) : (byte >> 4)] * a;
            }
        }
        out += seg_end - i;
        i = seg_end;
    }
}

void nf4_dequant_tile(const Nf4Matrix *m, int64_t r0, int64_t nrows, int64_t c0, int64_t ncols,
                      float *out, int64_t ldo) {
    if (nrows <= 0 || ncols <= 0) return;
    int par = nrows * ncols >= QT_PAR_MIN && !omp_in_parallel();
    if (!par) {  // outside the OpenMP construct: entering even an if(0) region costs ~1 us
        for (int64_t r = 0; r < nrows; r++) dequant_range(m, (r0 + r) * m->cols + c0, ncols, out + r * ldo);
        return;
    }
    if (ncols == m->cols && ldo == m->cols) {
        // whole rows: one contiguous flat range, split into chunks on block boundaries
        int64_t i0 = r0 * m->cols, cnt = nrows * m->cols;
        int64_t first = (i0 / QT_DQ_CHUNK + 1) * QT_DQ_CHUNK;  // first chunk boundary after i0
        int64_t nchunks = 1 + (i0 + cnt > first ? (i0 + cnt - first + QT_DQ_CHUNK - 1) / QT_DQ_CHUNK : 0);
#pragma omp parallel for schedule(static)
        for (int64_t k = 0; k < nchunks; k++) {
            int64_t s = k == 0 ? i0 : first + (k - 1) * QT_DQ_CHUNK;
            int64_t t = k == 0 ? first : s + QT_DQ_CHUNK;
            if (t > i0 + cnt) t = i0 + cnt;
            dequant_range(m, s, t - s, out + (s - i0));
        }
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < nrows; r++)
            dequant_range(m, (r0 + r) * m->cols + c0, ncols, out + r * ldo);
    }
}

void nf4_dequant_rows(const Nf4Matrix *m, int64_t r0, int64_t nrows, float *out) {
    nf4_dequant_tile(m, r0, nrows, 0, m->cols, out, m->cols);
}

// ---- fused matmuls: the shared tiled driver of quant_internal.h ------------------------

static void nf4_tile_cb(const void *w, int64_t r0, int64_t nrows, int64_t c0, int64_t ncols, float *out,
                        int64_t ldo) {
    nf4_dequant_tile((const Nf4Matrix *)w, r0, nrows, c0, ncols, out, ldo);
}

static QtMatrix nf4_qt(const Nf4Matrix *w) {
    return (QtMatrix){w, nf4_tile_cb, w->rows, w->cols, NF4_BLOCK, "NF4", w->name};
}

size_t nf4_scratch_floats(const Nf4Matrix *w) {
    QtMatrix q = nf4_qt(w);
    return qt_scratch_floats(&q);
}

// x (N,C), W (OC,C) -> y (N,OC)
int nf4_matmul_xwt(const float *x, int64_t N, const Nf4Matrix *w, float *y, int accumulate,
                   float *scratch, Err *e) {
    QtMatrix q = nf4_qt(w);
    return qt_matmul_xwt(&q, x, N, y, accumulate, scratch, e);
}

// dy (N,OC), W (OC,C) -> dx (N,C)
int nf4_matmul_dyw(const float *dy, int64_t N, const Nf4Matrix *w, float *dx, int accumulate,
                   float *scratch, Err *e) {
    QtMatrix q = nf4_qt(w);
    return qt_matmul_dyw(&q, dy, N, dx, accumulate, scratch, e);
}
