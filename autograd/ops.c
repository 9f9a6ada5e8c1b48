// ops — forward and backward kernels of every op, side by side, and the op_* wrappers that
// run the forward and record the backward on the tape.
//
// Conventions: kernels take raw pointers and sizes; backward kernels ACCUMULATE (+=) into the
// gradient buffers they are given and skip any that is NULL (a frozen input).
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autograd/autograd.h"
#include "autograd/internal.h"
#include "quant/quant.h"
#if defined(__AVX512F__) || defined(__x86_64__)
#include <immintrin.h>
#endif

static int any_rg(const Tensor *a, const Tensor *b, const Tensor *c) {
    return (a && a->requires_grad) || (b && b->requires_grad) || (c && c->requires_grad);
}

// A tensor copy of the caller's ints (ids, targets), kept on the tape for backward.
static int *tape_ints(Tape *t, const int *src, int64_t n) {
    int *p = tape_alloc(t, (size_t)n * sizeof(int));
    memcpy(p, src, (size_t)n * sizeof(int));
    return p;
}

// ---- vector math: exp, sigmoid, row max --------------------------------------------------
// The kernels' exp goes through exp_shift_sum and sigmoid_vec: an AVX-512 polynomial where the
// compiler targets AVX-512, plain expf otherwise. Sums are taken in a fixed order (16 lanes,
// then a fixed reduction), so results never depend on the thread count.

#ifdef __AVX512F__
// x (16) -> exp(x) (16). Cody-Waite reduction x = n·ln2 + r, |r| <= ln2/2 (ln2 split in a
// 9-bit head, so n·ln2_hi and x - n·ln2_hi are exact, and a tail), e^r = 1 + r + r²·P(r) with
// Cephes expf's degree-5 P, then scalef multiplies by 2^n with overflow to inf and gradual
// underflow to 0. x is first clamped to [-104, 89] (exp is 0 / inf beyond): max/min return
// their second operand when one is NaN, so a NaN x stays NaN.
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    return _mm512_scalef_ps(_mm512_add_ps(p, _mm512_set1_ps(1.0f)), n);
}

// lanes [0, n) of 16 (n < 16: the tail of an array)
static inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }
#endif

// Elementwise kernels take their exps / sigmoids EW_BLOCK values at a time into a stack buffer.
#define EW_BLOCK 512

// x (n) -> y (n) (NULL: not stored)    y = exp(x - m); returns Σ y. y may equal x.
static float exp_shift_sum(float *y, const float *x, int64_t n, float m) {
#ifdef __AVX512F__
    __m512 vm = _mm512_set1_ps(m), acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 k = tail_mask(n - j);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm));
        acc = _mm512_mask_add_ps(acc, k, acc, e);
        if (y) _mm512_mask_storeu_ps(y + j, k, e);
    }
    return _mm512_reduce_add_ps(acc);
#else
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        float e = expf(x[j] - m);
        sum += e;
        if (y) y[j] = e;
    }
    return sum;
#endif
}

// x (n) -> y (n)     y = σ(x) = 1 / (1 + exp(-x)). y may equal x.
static void sigmoid_vec(float *y, const float *x, int64_t n) {
#ifdef __AVX512F__
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 k = tail_mask(n - j);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_maskz_loadu_ps(k, x + j)));
        _mm512_mask_storeu_ps(y + j, k, _mm512_div_ps(one, _mm512_add_ps(one, e)));
    }
#else
    for (int64_t j = 0; j < n; j++) y[j] = 1.0f / (1.0f + expf(-x[j]));
#endif
}

// x (n), n >= 1 -> max_j x[j]
static float row_max(const float *x, int64_t n) {
    float m = x[0];
#pragma omp simd reduction(max : m)
    for (int64_t j = 1; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
}

// x (n) -> y (n)     y = exp(x)
void vec_exp(float *y, const float *x, int64_t n) { exp_shift_sum(y, x, n, 0.0f); }

// ---- embedding ------------------------------------------------------------------------------

// table (V,C), ids (N) -> out (N,C)
static void embedding_forward(float *out, const float *table, const int *ids, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++)
        memcpy(out + i * C, table + (int64_t)ids[i] * C, (size_t)C * sizeof(float));
}

// dout (N,C), ids (N) -> dtable (V,C) +=. Threads own column ranges, so repeated ids are safe.
static void embedding_backward(float *dtable, const float *dout, const int *ids, int64_t N, int64_t C) {
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        int64_t c0 = C * tid / nt, c1 = C * (tid + 1) / nt;
        for (int64_t i = 0; i < N; i++) {
            float *dst = dtable + (int64_t)ids[i] * C;
            const float *src = dout + i * C;
            for (int64_t c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
}

static void embedding_node_backward(Tape *t, const Node *n) {
    Tensor *table = n->in[0];
    embedding_backward(tape_grad(t, table), n->out->grad, n->saved[0], n->d[0], n->d[1]);
}

static Tensor *op_embedding_run(Tape *t, Tensor *table, const int *ids, int64_t N) {
    if (table->ndim != 2) die_internal("op_embedding: table %s is not 2-D", table->name ? table->name : "");
    int64_t V = table->shape[0], C = table->shape[1];
    for (int64_t i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= V)
            die_internal("op_embedding: id %d at %lld outside [0,%lld)", ids[i], (long long)i, (long long)V);
    int64_t shape[2] = {N, C};
    Tensor *out = tape_result(t, 2, shape, table->requires_grad);
    embedding_forward(out->data, table->data, ids, N, C);
    Node *n = tape_record(t, embedding_node_backward, out);
    if (n) {
        n->in[0] = table;
        n->saved[0] = tape_ints(t, ids, N);
        n->d[0] = N;
        n->d[1] = C;
    }
    return out;
}

Tensor *op_embedding(Tape *t, Tensor *table, const int *ids, int64_t N) {
    double t0 = tape_prof_begin(t, "embedding");
    Tensor *out = op_embedding_run(t, table, ids, N);
    tape_prof_end(t, t0);
    return out;
}

// table (V,C) any storage, ids (N) -> out (N,C)
static Tensor *op_embedding_weight_run(Tape *t, const Weight *table, const int *ids, int64_t N) {
    int64_t V = table->rows, C = table->cols;
    for (int64_t i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= V)
            die_internal("op_embedding_weight: id %d at %lld outside [0,%lld)", ids[i], (long long)i, (long long)V);
    int64_t shape[2] = {N, C};
    Tensor *out = tape_result(t, 2, shape, 0);
#pragma omp parallel for schedule(static) if (N * C >= 32768)
    for (int64_t i = 0; i < N; i++) weight_row_f32(table, ids[i], out->data + i * C);
    return out;
}

Tensor *op_embedding_weight(Tape *t, const Weight *table, const int *ids, int64_t N) {
    double t0 = tape_prof_begin(t, "embedding_weight");
    Tensor *out = op_embedding_weight_run(t, table, ids, N);
    tape_prof_end(t, t0);
    return out;
}

// ---- frozen weight access ---------------------------------------------------------------

#define WTILE_FLOATS ((int64_t)1 << 20)  // a converted BF16 tile: about 4 MiB of floats
#define BF16_GEMV_MAX_N 1                 // up to this many rows of x: the fused BF16 kernel

// Rows per tile when a weight must be converted to fp32.
static int64_t weight_tile_rows(const Weight *w, int64_t max_floats) {
    if (w->type == WT_F32) return w->rows;
    int64_t tr = max_floats / w->cols;
    tr = tr < 16 ? 16 : tr & ~(int64_t)15;
    return tr < w->rows ? tr : w->rows;
}

// Rows [r0, r0+nr) of w as fp32 (cols floats each, contiguous): the weight itself for
// WT_F32, a conversion into tape scratch otherwise (valid until the next call).
static const float *weight_rows(Tape *t, const Weight *w, int64_t r0, int64_t nr) {
    int64_t C = w->cols;
    if (w->type == WT_F32) return (const float *)w->data + r0 * C;
    float *dst = tape_scratch(t, SCR_WTILE, (size_t)(nr * C));
    if (w->type == WT_NF4) {
        nf4_dequant_rows(w->data, r0, nr, dst);
        return dst;
    }
    if (w->type == WT_GGQ) {
        ggq_dequant_rows(w->data, r0, nr, dst);
        return dst;
    }
    if (w->type != WT_BF16) die_internal("weight %s: unknown type %d", w->name ? w->name : "", (int)w->type);
    const uint16_t *src = (const uint16_t *)w->data + r0 * C;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nr * C; i++) {
        uint32_t bits = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &bits, sizeof bits);
    }
    return dst;
}

// x (N,C), w (OC,C) bf16 -> out (N,OC), N <= BF16_GEMV_MAX_N: each row of w is read once and
// converted in registers (decoding through a bf16 lm_head). Two versions: AVX-512 (compiled
// for it whatever -march, a target region, taken when the CPU has it) and portable C (16
// partial sums per row of x, bf16 -> fp32 as a shift: the compiler vectorizes it).
#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
static void bf16_gemv_z(float *out, const float *x, const uint16_t *w, int64_t N, int64_t OC, int64_t C) {
#pragma omp parallel for schedule(static) if (OC * C >= 32768)
    for (int64_t r = 0; r < OC; r++) {
        const uint16_t *wr = w + r * C;
        float acc[BF16_GEMV_MAX_N] = {0};
        int64_t c = 0;
        __m512 va[BF16_GEMV_MAX_N];
        for (int64_t n = 0; n < N; n++) va[n] = _mm512_setzero_ps();
        for (; c + 16 <= C; c += 16) {
            __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(wr + c)));
            __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
            for (int64_t n = 0; n < N; n++) va[n] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + n * C + c), va[n]);
        }
        for (int64_t n = 0; n < N; n++) acc[n] = _mm512_reduce_add_ps(va[n]);
        for (; c < C; c++) {
            float wc = bf16_to_f32(wr[c]);
            for (int64_t n = 0; n < N; n++) acc[n] += wc * x[n * C + c];
        }
        for (int64_t n = 0; n < N; n++) out[n * OC + r] = acc[n];
    }
}
#pragma GCC pop_options
#endif

static void bf16_gemv(float *out, const float *x, const uint16_t *w, int64_t N, int64_t OC, int64_t C) {
#if defined(__x86_64__)
    if (cpu_isa_usable("avx512f")) {
        bf16_gemv_z(out, x, w, N, OC, C);
        return;
    }
#endif
#pragma omp parallel for schedule(static) if (OC * C >= 32768)
    for (int64_t r = 0; r < OC; r++) {
        const uint16_t *wr = w + r * C;
        float part[BF16_GEMV_MAX_N][16] = {{0}};
        int64_t c = 0;
        for (; c + 16 <= C; c += 16)
            for (int64_t n = 0; n < N; n++)
                for (int j = 0; j < 16; j++) {
                    uint32_t u = (uint32_t)wr[c + j] << 16;
                    float wc;
                    memcpy(&wc, &u, sizeof wc);
                    part[n][j] += wc * x[n * C + c + j];
                }
        for (int64_t n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int j = 0; j < 16; j++) acc += part[n][j];
            for (int64_t k = c; k < C; k++) acc += bf16_to_f32(wr[k]) * x[n * C + k];
            out[n * OC + r] = acc;
        }
    }
}

// ---- the tiled GEMMs (tape_gemm): quant.h's kernel variants over any weight type
#define TILED_MIN_N 16  // fewer rows of x (decoding): the fp32 GEMV paths

static TiledWeight weight_tiled(const Weight *w) {
    switch (w->type) {
    case WT_F32: return tiled_f32(w->data, w->rows, w->cols);
    case WT_BF16: return tiled_bf16(w->data, w->rows, w->cols);
    case WT_NF4: return tiled_nf4(w->data);
    case WT_GGQ: return tiled_ggq(w->data);
    }
    die_internal("weight %s: unknown type %d", w->name ? w->name : "", (int)w->type);
    return tiled_f32(NULL, 0, 0);
}

static int use_tiled(Tape *t, int64_t N) { return N >= TILED_MIN_N && tape_gemm(t); }

// GEMM scratch for an (N, K) activation operand, in tape scratch
static void *gemm_scratch(Tape *t, int64_t N, int64_t K) {
    return tape_scratch(t, SCR_GEMM, gemm_scratch_bytes(tape_gemm(t), N, K) / sizeof(float) + 1);
}

// x (N,C), w (OC,C) -> out (N,OC)      out = x wᵀ
void weight_matmul_xwt(Tape *t, const Weight *w, const float *x, int64_t N, float *out) {
    int64_t OC = w->rows, C = w->cols;
    if (use_tiled(t, N)) {
        TiledWeight tw = weight_tiled(w);
        gemm_xwt(tape_gemm(t), x, N, C, &tw, out, OC, 0, gemm_scratch(t, N, C));
        return;
    }
    if (w->type == WT_NF4) {
        const Nf4Matrix *m = w->data;
        if (N <= NF4_GEMV_MAX_N && nf4_gemv_ok(m))
            nf4_gemv(x, N, m, out, 0, tape_scratch(t, SCR_WTILE, (size_t)(N * C)));
        else if (nf4_matmul_xwt(x, N, m, out, 0, tape_scratch(t, SCR_WTILE, nf4_scratch_floats(m)), NULL))
            die_internal("nf4_matmul_xwt failed with a scratch buffer");
        return;
    }
    if (w->type == WT_GGQ) {
        const GgqMatrix *m = w->data;
        if (ggq_matmul_xwt(x, N, m, out, 0, tape_scratch(t, SCR_WTILE, ggq_scratch_floats(m)), NULL))
            die_internal("ggq_matmul_xwt failed with a scratch buffer");
        return;
    }
    if (w->type == WT_BF16 && N <= BF16_GEMV_MAX_N) {
        bf16_gemv(out, x, w->data, N, OC, C);
        return;
    }
    int64_t tr = weight_tile_rows(w, WTILE_FLOATS);
    for (int64_t r0 = 0; r0 < OC; r0 += tr) {
        int64_t nr = OC - r0 < tr ? OC - r0 : tr;
        const float *wt = weight_rows(t, w, r0, nr);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)nr, (int)C, 1.0f, x, (int)C,
                    wt, (int)C, 0.0f, out + r0, (int)OC);
    }
}

// dout (N,OC), w (OC,C) -> dx (N,C) +=   dx += dout w
void weight_matmul_dyw(Tape *t, const Weight *w, const float *dout, int64_t N, float *dx) {
    int64_t OC = w->rows, C = w->cols;
    if (use_tiled(t, N)) {
        TiledWeight tw = weight_tiled(w);
        gemm_dyw(tape_gemm(t), dout, N, OC, &tw, dx, C, 1, gemm_scratch(t, N, OC));
        return;
    }
    if (w->type == WT_NF4) {
        const Nf4Matrix *m = w->data;
        if (nf4_matmul_dyw(dout, N, m, dx, 1, tape_scratch(t, SCR_WTILE, nf4_scratch_floats(m)), NULL))
            die_internal("nf4_matmul_dyw failed with a scratch buffer");
        return;
    }
    if (w->type == WT_GGQ) {
        const GgqMatrix *m = w->data;
        if (ggq_matmul_dyw(dout, N, m, dx, 1, tape_scratch(t, SCR_WTILE, ggq_scratch_floats(m)), NULL))
            die_internal("ggq_matmul_dyw failed with a scratch buffer");
        return;
    }
    int64_t tr = weight_tile_rows(w, WTILE_FLOATS);
    for (int64_t r0 = 0; r0 < OC; r0 += tr) {
        int64_t nr = OC - r0 < tr ? OC - r0 : tr;
        const float *wt = weight_rows(t, w, r0, nr);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)nr, 1.0f, dout + r0,
                    (int)OC, wt, (int)C, 1.0f, dx, (int)C);
    }
}

// ---- linear + LoRA --------------------------------------------------------------------------
// Saved: h = drop(x) Aᵀ (N,r) and, with dropout, the keep mask (N,C) bytes.

// x (N,C), mask (N,C) -> xd (N,C)     xd = x · mask / (1-p)
static void dropout_apply(float *xd, const float *x, const uint8_t *mask, int64_t n, float inv_keep) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) xd[i] = mask[i] ? x[i] * inv_keep : 0.0f;
}

// mask (n) <- 1 with probability 1-p, from the tape's RNG (sequential: reproducible)
static void dropout_mask(Tape *t, uint8_t *mask, int64_t n, float p) {
    Rng *r = tape_rng(t);
    for (int64_t i = 0; i < n; i++) mask[i] = rng_uniform(r) >= p;
}

static void lora_linear_node_backward(Tape *t, const Node *n) {
    Tensor *x = n->in[0], *A = n->in[1], *B = n->in[2];
    const Weight *w = n->w;
    const float *dy = n->out->grad;  // (N,OC)
    int64_t N = n->d[0], C = n->d[1], OC = n->d[2], r = n->d[3];
    float scale = n->f[0], p = n->f[1];
    const uint8_t *mask = n->saved[1];
    float *dx = tape_grad(t, x);
    // tiled GEMM without dropout: dx += dy W + dh A in one GEMM pass, after dh is known
    int fuse = dx && A && !mask && use_tiled(t, N);
    if (dx && !fuse) weight_matmul_dyw(t, w, dy, N, dx);  // dx += dy W
    if (!A) return;
    const float *h = n->saved[0];  // (N,r)
    float *dB = tape_grad(t, B);
    // dB (OC,r) += scale · dyᵀ h
    if (dB)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)r, (int)N, scale, dy, (int)OC,
                    h, (int)r, 1.0f, dB, (int)r);
    float *dA = tape_grad(t, A);
    if (!dA && !dx) return;
    // dh (N,r) = scale · dy B
    float *dh = tape_scratch(t, SCR_A, (size_t)(N * r));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)r, (int)OC, scale, dy, (int)OC,
                B->data, (int)r, 0.0f, dh, (int)r);
    float inv_keep = mask ? 1.0f / (1.0f - p) : 1.0f;
    if (dA) {
        // dA (r,C) += dhᵀ xd
        const float *xd = x->data;
        if (mask) {
            float *buf = tape_scratch(t, SCR_B, (size_t)(N * C));
            dropout_apply(buf, x->data, mask, N * C, inv_keep);
            xd = buf;
        }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r, (int)C, (int)N, 1.0f, dh, (int)r, xd,
                    (int)C, 1.0f, dA, (int)C);
    }
    if (fuse) {
        // dx (N,C) += dy W + dh A
        TiledWeight tw = weight_tiled(w), ta = tiled_f32(A->data, r, C);
        gemm_dyw2(tape_gemm(t), dy, N, OC, &tw, dh, r, &ta, dx, C, 1, gemm_scratch(t, N, OC + r + 1));
    } else if (dx) {
        // dx (N,C) += drop'(dh A)
        if (!mask) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)r, 1.0f, dh, (int)r,
                        A->data, (int)C, 1.0f, dx, (int)C);
        } else {
            float *dxd = tape_scratch(t, SCR_C, (size_t)(N * C));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)r, 1.0f, dh, (int)r,
                        A->data, (int)C, 0.0f, dxd, (int)C);
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < N * C; i++)
                if (mask[i]) dx[i] += dxd[i] * inv_keep;
        }
    }
}

// mode: LIN_FULL; LIN_NOBASE (no x Wᵀ: op_lora_linear_nobase); LIN_KEEP (also copies out and
// h into keep_out / keep_h); LIN_KEPT (out and h taken from keep_out / keep_h, no matmul).
enum { LIN_FULL, LIN_NOBASE, LIN_KEEP, LIN_KEPT };

static Tensor *op_lora_linear_run(Tape *t, Tensor *x, const Weight *w, Tensor *A, Tensor *B, float scale,
                       float dropout_p, int mode, float *keep_out, float *keep_h) {
    const int base = mode == LIN_FULL || mode == LIN_KEEP;
    int64_t C = tensor_cols(x), N = tensor_rows(x), OC = w->rows;
    if (w->cols != C)
        die_internal("op_lora_linear: x has %lld columns, weight %s has %lld", (long long)C,
                     w->name ? w->name : "", (long long)w->cols);
    if ((A == NULL) != (B == NULL)) die_internal("op_lora_linear: A and B must both be given");
    int64_t r = 0;
    if (A) {
        r = A->shape[0];
        if (A->ndim != 2 || A->shape[1] != C || B->ndim != 2 || B->shape[0] != OC || B->shape[1] != r)
            die_internal("op_lora_linear: LoRA %s/%s shapes do not match weight %s (%lld x %lld)",
                         A->name ? A->name : "A", B->name ? B->name : "B", w->name ? w->name : "",
                         (long long)OC, (long long)C);
    }
    int64_t shape[AG_MAXDIM];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = OC;
    Tensor *out = tape_result(t, x->ndim, shape, any_rg(x, A, B));
    // out (N,OC) = x Wᵀ (or 0: op_lora_linear_nobase); with a tiled GEMM and LoRA, x Wᵀ and
    // the LoRA term go through one GEMM pass, below
    int fuse = base && A && use_tiled(t, N);
    if (base && !fuse)
        weight_matmul_xwt(t, w, x->data, N, out->data);
    else if (mode == LIN_NOBASE)
        memset(out->data, 0, (size_t)(N * OC) * sizeof(float));
    else if (mode == LIN_KEPT)
        memcpy(out->data, keep_out, (size_t)(N * OC) * sizeof(float));
    Node *n = tape_record(t, lora_linear_node_backward, out);
    if (n) {
        n->in[0] = x;
        n->in[1] = A;
        n->in[2] = B;
        n->w = w;
        n->f[0] = scale;
        n->f[1] = dropout_p;
        n->d[0] = N;
        n->d[1] = C;
        n->d[2] = OC;
        n->d[3] = r;
    }
    if (!A) {
        if (mode == LIN_KEEP) memcpy(keep_out, out->data, (size_t)(N * OC) * sizeof(float));
        return out;
    }
    const float *xd = x->data;
    int drop = tape_training(t) && dropout_p > 0.0f;
    if (drop) {
        if (dropout_p >= 1.0f) die_internal("op_lora_linear: dropout %g", (double)dropout_p);
        uint8_t *mask = n ? tape_alloc(t, (size_t)(N * C)) : (uint8_t *)tape_scratch(t, SCR_A, (size_t)(N * C + 3) / 4);
        dropout_mask(t, mask, N * C, dropout_p);
        float *buf = tape_scratch(t, SCR_B, (size_t)(N * C));
        dropout_apply(buf, x->data, mask, N * C, 1.0f / (1.0f - dropout_p));
        xd = buf;
        if (n) n->saved[1] = mask;
    }
    // h (N,r) = xd Aᵀ; out += scale · h Bᵀ
    if (mode == LIN_KEPT) {  // the mask above is drawn again (the same RNG state); h is kept
        if (n) n->saved[0] = keep_h;
        return out;
    }
    float *h = n ? tape_alloc(t, (size_t)(N * r) * sizeof(float)) : tape_scratch(t, SCR_C, (size_t)(N * r));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)r, (int)C, 1.0f, xd, (int)C, A->data,
                (int)C, 0.0f, h, (int)r);
    if (fuse) {
        // out (N,OC) = x Wᵀ + (scale · h) Bᵀ
        float *sh = tape_alloc(t, (size_t)(N * r) * sizeof(float));
        for (int64_t i = 0; i < N * r; i++) sh[i] = scale * h[i];
        TiledWeight tw = weight_tiled(w), tb = tiled_f32(B->data, OC, r);
        gemm_xwt2(tape_gemm(t), x->data, N, C, &tw, sh, r, &tb, out->data, OC, 0, gemm_scratch(t, N, C + r + 1));
    } else if (mode != LIN_NOBASE) {  // nobase: out is never read, only h is needed
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)r, scale, h, (int)r, B->data,
                    (int)r, 1.0f, out->data, (int)OC);
    }
    if (n) n->saved[0] = h;
    if (mode == LIN_KEEP) {
        memcpy(keep_out, out->data, (size_t)(N * OC) * sizeof(float));
        memcpy(keep_h, h, (size_t)(N * r) * sizeof(float));
    }
    return out;
}

Tensor *op_lora_linear(Tape *t, Tensor *x, const Weight *w, Tensor *A, Tensor *B, float scale,
                       float dropout_p) {
    double t0 = tape_prof_begin(t, "linear");
    Tensor *out = op_lora_linear_run(t, x, w, A, B, scale, dropout_p, LIN_FULL, NULL, NULL);
    tape_prof_end(t, t0);
    return out;
}

Tensor *op_lora_linear_nobase(Tape *t, Tensor *x, const Weight *w, Tensor *A, Tensor *B, float scale,
                              float dropout_p) {
    double t0 = tape_prof_begin(t, "linear");
    Tensor *out = op_lora_linear_run(t, x, w, A, B, scale, dropout_p, LIN_NOBASE, NULL, NULL);
    tape_prof_end(t, t0);
    return out;
}

Tensor *op_lora_linear_cache(Tape *t, Tensor *x, const Weight *w, Tensor *A, Tensor *B, float scale,
                             float dropout_p, float *cache_out, float *cache_h, int reuse) {
    double t0 = tape_prof_begin(t, "linear");
    Tensor *out = op_lora_linear_run(t, x, w, A, B, scale, dropout_p, reuse ? LIN_KEPT : LIN_KEEP, cache_out, cache_h);
    tape_prof_end(t, t0);
    return out;
}

Tensor *op_linear(Tape *t, Tensor *x, const Weight *w) { return op_lora_linear(t, x, w, NULL, NULL, 0.0f, 0.0f); }

// ---- RMSNorm --------------------------------------------------------------------------------

// x (N,C), w (C) -> out (N,C), rstd (N)      out = x · rstd · w, rstd = 1/sqrt(mean(x²)+eps)
static void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int64_t N, int64_t C,
                            float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * C;
        float *oi = out + i * C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < C; c++) ss += xi[c] * xi[c];
        float rs = 1.0f / sqrtf(ss / (float)C + eps);
        if (rstd) rstd[i] = rs;
        for (int64_t c = 0; c < C; c++) oi[c] = xi[c] * rs * w[c];
    }
}

// dout (N,C), x (N,C), w (C), rstd (N) -> dx (N,C) +=, dw (C) += (NULL = not needed)
//   dx = rstd · (g - x · rstd² · mean(g·x)), g = dout · w;   dw = Σ_rows dout · x · rstd
// dw is summed in per-thread partials (scratch) reduced in thread order: deterministic.
static void rmsnorm_backward(Tape *t, float *dx, float *dw, const float *dout, const float *x, const float *w,
                             const float *rstd, int64_t N, int64_t C) {
    int nt = omp_get_max_threads();
    float *part = dw ? tape_scratch(t, SCR_A, (size_t)nt * C) : NULL;
    if (part) memset(part, 0, (size_t)nt * C * sizeof(float));
#pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        int64_t i0 = N * tid / nth, i1 = N * (tid + 1) / nth;
        float *pw = part ? part + (int64_t)tid * C : NULL;
        for (int64_t i = i0; i < i1; i++) {
            const float *xi = x + i * C, *di = dout + i * C;
            float rs = rstd[i];
            if (dx) {
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int64_t c = 0; c < C; c++) dot += di[c] * w[c] * xi[c];
                float k = rs * rs * dot / (float)C;
                float *dxi = dx + i * C;
                for (int64_t c = 0; c < C; c++) dxi[c] += rs * (di[c] * w[c] - xi[c] * k);
            }
            if (pw)
                for (int64_t c = 0; c < C; c++) pw[c] += di[c] * xi[c] * rs;
        }
    }
    if (dw)
        for (int th = 0; th < nt; th++)
            for (int64_t c = 0; c < C; c++) dw[c] += part[(int64_t)th * C + c];
}

static void rmsnorm_node_backward(Tape *t, const Node *n) {
    Tensor *x = n->in[0], *w = n->in[1];
    rmsnorm_backward(t, tape_grad(t, x), tape_grad(t, w), n->out->grad, x->data, w->data, n->saved[0],
                     n->d[0], n->d[1]);
}

static Tensor *op_rmsnorm_run(Tape *t, Tensor *x, Tensor *w, float eps) {
    int64_t C = tensor_cols(x), N = tensor_rows(x);
    if (w->n != C)
        die_internal("op_rmsnorm: norm weight %s has %lld elements, x has %lld columns",
                     w->name ? w->name : "", (long long)w->n, (long long)C);
    Tensor *out = tape_result(t, x->ndim, x->shape, any_rg(x, w, NULL));
    Node *n = tape_record(t, rmsnorm_node_backward, out);
    float *rstd = n ? tape_alloc(t, (size_t)N * sizeof(float)) : NULL;
    rmsnorm_forward(out->data, rstd, x->data, w->data, N, C, eps);
    if (n) {
        n->in[0] = x;
        n->in[1] = w;
        n->saved[0] = rstd;
        n->d[0] = N;
        n->d[1] = C;
    }
    return out;
}

Tensor *op_rmsnorm(Tape *t, Tensor *x, Tensor *w, float eps) {
    double t0 = tape_prof_begin(t, "rmsnorm");
    Tensor *out = op_rmsnorm_run(t, x, w, eps);
    tape_prof_end(t, t0);
    return out;
}

// ---- RoPE -----------------------------------------------------------------------------------

// x (B,T,H*D), cos/sin (T,D/2) -> out (B,T,H*D) (+= when accumulate)
// Rotates each pair (x1,x2) by +angle (sign 1, forward) or -angle (sign -1, backward: the
// inverse rotation is the transpose). Pairs are (i, i+D/2) for ROPE_HALF, (2i, 2i+1) for
// ROPE_ADJACENT.
static void rope_rotate(float *out, const float *x, const float *cosv, const float *sinv, int64_t B, int64_t T,
                        int H, int D, RopeStyle style, float sign, int accumulate) {
    int half = D / 2;
    int64_t HD = (int64_t)H * D;
    int64_t stride = style == ROPE_HALF ? 1 : 2, off = style == ROPE_HALF ? half : 1;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t tt = 0; tt < T; tt++) {
            const float *cs = cosv + tt * half, *sn = sinv + tt * half;
            for (int h = 0; h < H; h++) {
                int64_t base = (b * T + tt) * HD + (int64_t)h * D;
                const float *xh = x + base;
                float *oh = out + base;
                for (int i = 0; i < half; i++) {
                    int64_t i1 = i * stride, i2 = i1 + off;
                    float c = cs[i], s = sign * sn[i];
                    float x1 = xh[i1], x2 = xh[i2];
                    float o1 = x1 * c - x2 * s, o2 = x2 * c + x1 * s;
                    if (accumulate) {
                        oh[i1] += o1;
                        oh[i2] += o2;
                    } else {
                        oh[i1] = o1;
                        oh[i2] = o2;
                    }
                }
            }
        }
}

static void rope_node_backward(Tape *t, const Node *n) {
    const float *cosv = n->saved[0];
    int64_t T = n->d[1];
    int D = (int)n->d[3];
    rope_rotate(tape_grad(t, n->in[0]), n->out->grad, cosv, cosv + T * (D / 2), n->d[0], T, (int)n->d[2], D,
                (RopeStyle)n->d[4], -1.0f, 1);
}

static Tensor *op_rope_run(Tape *t, Tensor *x, int64_t B, int64_t T, int H, int D, int pos0, const float *inv_freq,
                RopeStyle style) {
    if (D % 2 || x->n != B * T * H * D)
        die_internal("op_rope: %s has %lld elements, not B*T*H*D = %lld*%lld*%d*%d",
                     x->name ? x->name : "x", (long long)x->n, (long long)B, (long long)T, H, D);
    int half = D / 2;
    Tensor *out = tape_result(t, x->ndim, x->shape, x->requires_grad);
    // cos, sin (T, D/2) one after the other
    float *cosv = tape_alloc(t, (size_t)(2 * T * half) * sizeof(float)), *sinv = cosv + T * half;
    for (int64_t tt = 0; tt < T; tt++)
        for (int i = 0; i < half; i++) {
            float ang = (float)(pos0 + tt) * inv_freq[i];
            cosv[tt * half + i] = cosf(ang);
            sinv[tt * half + i] = sinf(ang);
        }
    rope_rotate(out->data, x->data, cosv, sinv, B, T, H, D, style, 1.0f, 0);
    Node *n = tape_record(t, rope_node_backward, out);
    if (n) {
        n->in[0] = x;
        n->saved[0] = cosv;
        n->d[0] = B;
        n->d[1] = T;
        n->d[2] = H;
        n->d[3] = D;
        n->d[4] = style;
    }
    return out;
}

Tensor *op_rope(Tape *t, Tensor *x, int64_t B, int64_t T, int H, int D, int pos0, const float *inv_freq,
                RopeStyle style) {
    double t0 = tape_prof_begin(t, "rope");
    Tensor *out = op_rope_run(t, x, B, T, H, D, pos0, inv_freq, style);
    tape_prof_end(t, t0);
    return out;
}

// ---- attention ------------------------------------------------------------------------------
// The (B,H,Tq,Tk) probabilities are never kept: the forward saves each row's max and
// 1/sum (B,H,Tq,2) and the backward recomputes the probabilities of one block of query rows
// at a time, bit-identical to the forward's, in a per-thread buffer.
//
// Queries go in blocks of ATT_BR rows; a block multiplies only against the keys some row of
// it can see (causal: the prefix up to its last row; with a window, from its first row's
// first key), so Q Kᵀ, P V, dP, dQ, dK and dV skip the fully masked keys (about half of the
// work of full causal attention).
#define ATT_BR 64

// Keys visible to query i: [lo, hi] with hi = Tk - Tq + i, lo = hi - window + 1 (window > 0).
static void visible_keys(int64_t i, int64_t Tq, int64_t Tk, int window, int64_t *lo, int64_t *hi) {
    *hi = Tk - Tq + i;
    *lo = window > 0 && *hi - window + 1 > 0 ? *hi - window + 1 : 0;
}

// Keys visible to some query of rows [i0, i0+nr): [k0, k0+nk) (lo and hi grow with i).
static void block_keys(int64_t i0, int64_t nr, int64_t Tq, int64_t Tk, int window, int64_t *k0, int64_t *nk) {
    int64_t lo, hi, lo1, hi1;
    visible_keys(i0, Tq, Tk, window, &lo, &hi);
    visible_keys(i0 + nr - 1, Tq, Tk, window, &lo1, &hi1);
    *k0 = lo;
    *nk = hi1 - lo + 1;
}

// row (·) of scores, keys [lo, hi] visible -> row[lo..hi] = exp(row - max) in place; returns
// 1/sum. st (2) = (max, 1/sum): written when fresh (unless NULL), else read (the backward's
// recomputation, giving identical values).
static float softmax_row_exp(float *row, int64_t lo, int64_t hi, float *st, int fresh) {
    float mx, inv;
    if (fresh) {
        mx = row_max(row + lo, hi - lo + 1);
        inv = 1.0f / exp_shift_sum(row + lo, row + lo, hi - lo + 1, mx);
        if (st) {
            st[0] = mx;
            st[1] = inv;
        }
    } else {
        mx = st[0];
        inv = st[1];
        exp_shift_sum(row + lo, row + lo, hi - lo + 1, mx);
    }
    return inv;
}

// Q (nr,·) row stride ldq: queries i0.., K (nk,·) row stride ldk: keys k0.. -> P (nr,nk): the
// probabilities softmax(mask(scale · Q Kᵀ)) of those rows, zero outside each row's visible
// keys. stats (nr,2) (max, 1/sum): written when fresh, else read (the backward's
// recomputation, giving identical values).
static void attention_probs(float *P, float *stats, int fresh, const float *Q, int ldq, const float *K, int ldk,
                            int64_t i0, int64_t nr, int64_t k0, int64_t nk, int64_t Tq, int64_t Tk, int D,
                            int window, float scale) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)nk, D, scale, Q, ldq, K, ldk, 0.0f, P,
                (int)nk);
    for (int64_t i = 0; i < nr; i++) {
        float *row = P + i * nk;
        int64_t lo, hi;
        visible_keys(i0 + i, Tq, Tk, window, &lo, &hi);
        lo -= k0;
        hi -= k0;
        float inv = softmax_row_exp(row, lo, hi, stats ? stats + 2 * i : NULL, fresh);
        for (int64_t j = 0; j < lo; j++) row[j] = 0.0f;
        for (int64_t j = lo; j <= hi; j++) row[j] *= inv;
        for (int64_t j = hi + 1; j < nk; j++) row[j] = 0.0f;
    }
}

// q (B,Tq,H*D), k/v (B,Tk,KVH*D) -> out (B,Tq,H*D), stats (B,H,Tq,2) (NULL = not kept)
// Per (b,h) and block of query rows: P = softmax(mask(scale · Q Kᵀ)) over the block's visible
// keys in a per-thread buffer of work (nthreads,ATT_BR,Tk), O = P V.
static void attention_forward(float *out, float *stats, float *work, const float *q, const float *k,
                              const float *v, int64_t B, int64_t Tq, int64_t Tk, int H, int KVH, int D,
                              int window) {
    int64_t HD = (int64_t)H * D, KD = (int64_t)KVH * D, G = H / KVH;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            float *P = work + (int64_t)omp_get_thread_num() * ATT_BR * Tk;
            const float *Q = q + b * Tq * HD + h * D;
            const float *K = k + b * Tk * KD + (h / G) * D, *V = v + b * Tk * KD + (h / G) * D;
            for (int64_t i0 = 0; i0 < Tq; i0 += ATT_BR) {
                int64_t nr = Tq - i0 < ATT_BR ? Tq - i0 : ATT_BR, k0, nk;
                block_keys(i0, nr, Tq, Tk, window, &k0, &nk);
                attention_probs(P, stats ? stats + ((b * H + h) * Tq + i0) * 2 : NULL, 1, Q + i0 * HD, (int)HD,
                                K + k0 * KD, (int)KD, i0, nr, k0, nk, Tq, Tk, D, window, scale);
                // O (nr,D) = P (nr,nk) · V[k0:k0+nk] (nk,D)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, D, (int)nk, 1.0f, P, (int)nk,
                            V + k0 * KD, (int)KD, 0.0f, out + (b * Tq + i0) * HD + h * D, (int)HD);
            }
        }
}

// P (nr,nk), dP (nr,nk) -> dS (nr,nk) in place of dP:   dS = P ⊙ (dP - rowsum(P ⊙ dP))
static void softmax_backward_rows(float *dS, const float *P, int64_t nr, int64_t nk) {
    for (int64_t i = 0; i < nr; i++) {
        const float *pr = P + i * nk;
        float *dr = dS + i * nk;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < nk; j++) dot += pr[j] * dr[j];
#pragma omp simd
        for (int64_t j = 0; j < nk; j++) dr[j] = pr[j] * (dr[j] - dot);
    }
}

// dkh, dvh (B,H,Tk,D) per query head -> dk, dv (B,Tk,KVH*D) +=, summed over each group of G heads
// in a fixed order: dk[b,j,kvh*D + d] += Σ_g dkh[b, kvh*G+g, j, d] (NULL: skipped)
static void attention_sum_groups(float *dk, float *dv, const float *dkh, const float *dvh, int64_t B, int64_t Tk,
                                 int KVH, int64_t G, int D) {
    int64_t H = KVH * G, KD = (int64_t)KVH * D;
    if (!dk && !dv) return;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < Tk; j++)
            for (int64_t kh = 0; kh < KVH; kh++)
                for (int64_t g = 0; g < G; g++) {
                    int64_t src = ((b * H + kh * G + g) * Tk + j) * D, dst = (b * Tk + j) * KD + kh * D;
                    if (dk)
                        for (int d = 0; d < D; d++) dk[dst + d] += dkh[src + d];
                    if (dv)
                        for (int d = 0; d < D; d++) dv[dst + d] += dvh[src + d];
                }
}

// dout (B,Tq,H*D), stats (B,H,Tq,2), q, k, v -> dq (B,Tq,H*D) +=, dk, dv (B,Tk,KVH*D) +=
// Per (b,h) and block of query rows (over the block's visible keys): P recomputed,
// dV += Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP - rowsum(P ⊙ dP)), dQ += scale dS K,
// dK += scale dSᵀ Q. With G = H/KVH > 1 query heads share a KV head: their dK/dV go to
// per-head buffers (B,H,Tk,D) first and are summed over the group afterwards.
static void attention_backward(Tape *t, float *dq, float *dk, float *dv, const float *dout, const float *stats,
                               const float *q, const float *k, const float *v, int64_t B, int64_t Tq,
                               int64_t Tk, int H, int KVH, int D, int window) {
    int64_t HD = (int64_t)H * D, KD = (int64_t)KVH * D, G = H / KVH;
    float scale = 1.0f / sqrtf((float)D);
    int nt = omp_get_max_threads();
    int need_ds = dq || dk;
    // per thread: P and dS (ATT_BR,Tk) each
    float *work = tape_scratch(t, SCR_A, (size_t)nt * 2 * ATT_BR * Tk);
    float *dkh = dk && G > 1 ? tape_scratch(t, SCR_B, (size_t)(B * H * Tk * D)) : NULL;
    float *dvh = dv && G > 1 ? tape_scratch(t, SCR_C, (size_t)(B * H * Tk * D)) : NULL;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            float *P = work + (int64_t)omp_get_thread_num() * 2 * ATT_BR * Tk, *dS = P + ATT_BR * Tk;
            const float *Q = q + b * Tq * HD + h * D, *dO = dout + b * Tq * HD + h * D;
            const float *K = k + b * Tk * KD + (h / G) * D, *V = v + b * Tk * KD + (h / G) * D;
            // where this head's dK, dV go: straight into dk/dv, or into its own (zeroed) buffer
            float *dK = NULL, *dV = NULL;
            int64_t ldk = KD;
            if (G > 1) {
                ldk = D;
                if (dk) dK = memset(dkh + (b * H + h) * Tk * D, 0, (size_t)(Tk * D) * sizeof(float));
                if (dv) dV = memset(dvh + (b * H + h) * Tk * D, 0, (size_t)(Tk * D) * sizeof(float));
            } else {
                if (dk) dK = dk + b * Tk * KD + h * D;
                if (dv) dV = dv + b * Tk * KD + h * D;
            }
            for (int64_t i0 = 0; i0 < Tq; i0 += ATT_BR) {
                int64_t nr = Tq - i0 < ATT_BR ? Tq - i0 : ATT_BR, k0, nk;
                block_keys(i0, nr, Tq, Tk, window, &k0, &nk);
                const float *Qb = Q + i0 * HD, *dOb = dO + i0 * HD, *Kb = K + k0 * KD, *Vb = V + k0 * KD;
                attention_probs(P, (float *)stats + ((b * H + h) * Tq + i0) * 2, 0, Qb, (int)HD, Kb, (int)KD, i0, nr,
                                k0, nk, Tq, Tk, D, window, scale);
                // dV[k0:k0+nk] (nk,D) += Pᵀ (nk,nr) · dO (nr,D)
                if (dV)
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, D, (int)nr, 1.0f, P, (int)nk, dOb,
                                (int)HD, 1.0f, dV + k0 * ldk, (int)ldk);
                if (!need_ds) continue;
                // dP (nr,nk) = dO (nr,D) · V[k0:k0+nk]ᵀ, then dS in place
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)nk, D, 1.0f, dOb, (int)HD, Vb,
                            (int)KD, 0.0f, dS, (int)nk);
                softmax_backward_rows(dS, P, nr, nk);
                // dQ (nr,D) += scale dS (nr,nk) · K[k0:k0+nk] (nk,D)
                if (dq)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, D, (int)nk, scale, dS, (int)nk,
                                Kb, (int)KD, 1.0f, dq + (b * Tq + i0) * HD + h * D, (int)HD);
                // dK[k0:k0+nk] (nk,D) += scale dSᵀ (nk,nr) · Q (nr,D)
                if (dK)
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, D, (int)nr, scale, dS, (int)nk, Qb,
                                (int)HD, 1.0f, dK + k0 * ldk, (int)ldk);
            }
        }
    if (G > 1) attention_sum_groups(dk, dv, dkh, dvh, B, Tk, KVH, G, D);
}

// ---- attention in bf16 (tape_compute_bf16) ---------------------------------------------------
// The same blocks and the same fp32 softmax as above, but every product runs on AVX-512 BF16
// dot products (vdpbf16ps: each fp32 lane adds the two products of one pair of bf16 words)
// with fp32 accumulation: Q Kᵀ and dO Vᵀ over bf16 Q, K, dO, V; P V with P rounded to bf16;
// dQ = dS K, dK = dSᵀ Q, dV = Pᵀ dO with dS (already scaled) and P rounded to bf16. Gradients
// accumulate in fp32.
//
// A product C (M,N) = A (M,K) · B (K,N) takes K in pairs: A as 32-bit words (m, kp) holding
// (A[m][2kp], A[m][2kp+1]) (low half = even k), broadcast one at a time; B as words (kp, n)
// holding (B[2kp][n], B[2kp+1][n]), read 16 columns per vector. The micro-kernel keeps an
// ATT_MR × (16·ATT_NV) block of C in zmm accumulators. Layouts ("words" = bf16 pairs):
//   rows:     X (R,n) -> (R, ceil(n/2)) words, pairs along a row (a plain bf16 copy)
//   rowpairs: X (R,n) -> (ceil(R/2), n') words, word [rp][c] = (X[2rp][c], X[2rp+1][c])
//   cols:     X (R,n) -> (ceil(n/2), R') words, word [cp][r] = (X[r][2cp], X[r][2cp+1])
// so that
//   S  (nr,nk) = Q·Kᵀ  : A = Q rows        B = K cols   (per (b,kvh), keys padded to 16)
//   O  (nr,D)  = P·V   : A = P rows        B = V rowpairs
//   dP (nr,nk) = dO·Vᵀ : A = dO rows       B = V cols
//   dQ (nr,D)  = dS·K  : A = dS rows       B = K rowpairs
//   dK (nk,D)  = dSᵀ·Q : A = dS rowpairs read transposed (word (j, ip) at [ip][j])  B = Q rowpairs
//   dV (nk,D)  = Pᵀ·dO : A = P rowpairs read transposed                            B = dO rowpairs
// A block's keys start at k0 rounded down to 16 (an even key, so pairs of keys line up with
// the per-(b,kvh) packs) and end rounded up to 16: the extra keys are masked (P = dS = 0).
// Within a block, each micro-kernel call covers only the keys (or queries) its rows can see,
// to 16 columns or one pair (AttBand): the masked triangle of a causal block is mostly skipped.
// Pads are zeros (0 · anything finite). Every output element is computed by one thread in a
// fixed order, so results do not depend on the thread count.
// These kernels are compiled for AVX-512 BF16 whatever the build's -march (a target region):
// op_attention runs them only with a bf16 tape_gemm, which only a CPU with AVX-512 BF16 gets.
#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")
#define ATT_BF16 1
#define ATT_MR 6  // rows of A per micro-kernel
#define ATT_NV 4  // vectors of 16 columns of B per micro-kernel (6 × 4 accumulators)

static int64_t att_round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// lanes [0, n) of 16, n <= 0 -> none
static inline __mmask16 att_mask(int64_t n) {
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

// x (n) -> 16 words c: (bf16(mul·x[2c]), bf16(mul·x[2c+1])), the values past n zero
static inline __m512i att_words(const float *x, int64_t n, __m512 mul) {
    __m512 lo = _mm512_mul_ps(_mm512_maskz_loadu_ps(att_mask(n), x), mul);
    __m512 hi = _mm512_mul_ps(_mm512_maskz_loadu_ps(att_mask(n - 16), x + 16), mul);
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

// a, b (16) -> 16 words c: (bf16(a[c]), bf16(b[c]))
static inline __m512i att_interleave(__m512 a, __m512 b) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(b, a));
}

// x0, x1 (n) (x1 NULL: zeros) -> 16 words c: (bf16(mul·x0[c]), bf16(mul·x1[c])), past n zero
static inline __m512i att_pair_words(const float *x0, const float *x1, int64_t n, __m512 mul) {
    __mmask16 k = att_mask(n);
    __m512 a = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x0), mul);
    __m512 b = x1 ? _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x1), mul) : _mm512_setzero_ps();
    return att_interleave(a, b);
}

// x (n): fetched into L1 ahead of use (the rows of one head are strided, so the hardware
// prefetchers miss them)
static inline void att_prefetch(const float *x, int64_t n) {
    for (int64_t c = 0; c < n; c += 16) _mm_prefetch((const char *)(x + c), _MM_HINT_T0);
}

// x (R,n) row stride ldx -> dst (R, nw) words row stride ldd ("rows" of mul·x; words past n/2 zero)
static void att_pack_rows(uint32_t *dst, int64_t ldd, const float *x, int64_t ldx, int64_t R, int64_t n,
                          int64_t nw, float mul) {
    const __m512 vm = _mm512_set1_ps(mul);
    for (int64_t r = 0; r < R; r++) {
        if (r + 8 < R) att_prefetch(x + (r + 8) * ldx, n);
        for (int64_t c = 0; c < nw; c += 16)
            _mm512_mask_storeu_epi32(dst + r * ldd + c, att_mask(nw - c),
                                     att_words(x + r * ldx + 2 * c, n - 2 * c, vm));
    }
}

// x (R,n) row stride ldx -> dst (npr, nw) words row stride ldd ("rowpairs" of mul·x; rows past
// R and columns past n zero; npr >= ceil(R/2))
static void att_pack_rowpairs(uint32_t *dst, int64_t ldd, const float *x, int64_t ldx, int64_t R, int64_t npr,
                              int64_t n, int64_t nw, float mul) {
    const __m512 vm = _mm512_set1_ps(mul);
    for (int64_t rp = 0; rp < npr; rp++) {
        const float *x0 = 2 * rp < R ? x + 2 * rp * ldx : NULL, *x1 = 2 * rp + 1 < R ? x + (2 * rp + 1) * ldx : NULL;
        for (int64_t r = 2 * rp + 8; r < 2 * rp + 10 && r < R; r++) att_prefetch(x + r * ldx, n);
        for (int64_t c = 0; c < nw; c += 16) {
            __m512i w = x0 ? att_pair_words(x0 + c, x1 ? x1 + c : NULL, n - c, vm) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(dst + rp * ldd + c, att_mask(nw - c), w);
        }
    }
}

// x (R,n) row stride ldx -> dst (ceil(n/2), Rp) words row stride ldd ("cols"; rows past R up to
// Rp, a multiple of 16, zero): 16 rows at a time are packed as rows, then scattered
static void att_pack_cols(uint32_t *dst, int64_t ldd, const float *x, int64_t ldx, int64_t R, int64_t Rp, int64_t n) {
    const int64_t nw = (n + 1) / 2;
    uint32_t tmp[16 * 64];  // 16 rows x up to 64 words
    const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(64));  // word offsets of column 0 in tmp
    for (int64_t r0 = 0; r0 < Rp; r0 += 16) {
        for (int64_t r = r0 + 16; r < r0 + 32 && r < R; r++) att_prefetch(x + r * ldx, n);
        for (int64_t c0 = 0; c0 < nw; c0 += 64) {
            int64_t cw = nw - c0 < 64 ? nw - c0 : 64;
            int64_t rr = R - r0 < 16 ? (R - r0 > 0 ? R - r0 : 0) : 16;
            att_pack_rows(tmp, 64, x + r0 * ldx + 2 * c0, ldx, rr, n - 2 * c0, cw, 1.0f);
            for (int64_t r = rr; r < 16; r++) memset(tmp + r * 64, 0, (size_t)cw * sizeof(uint32_t));
            for (int64_t c = 0; c < cw; c++)  // column c of the 16 rows
                _mm512_storeu_si512(dst + (c0 + c) * ldd + r0, _mm512_i32gather_epi32(rows, tmp + c, 4));
        }
    }
}

// A words (m,kp) at a[m·lda + kp·ska] for m < ATT_MR, B words (kp, 16v..16v+15) at b[kp·ldb + 16v]
// for v < nv -> c (mr, ncols) row stride ldc: c = alpha · Σ_kp a·b (+ c when add). Rows of A past
// mr are read and their results dropped.
static inline __attribute__((always_inline)) void att_kernel(const int nv, const uint32_t *a, int64_t lda,
                                                             int64_t ska, const uint32_t *b, int64_t ldb,
                                                             int64_t kpn, float *c, int64_t ldc, int mr, int ncols,
                                                             float alpha, int add) {
    __m512 acc[ATT_MR][ATT_NV];
#pragma GCC unroll 6
    for (int m = 0; m < ATT_MR; m++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[m][v] = _mm512_setzero_ps();
    for (int64_t kp = 0; kp < kpn; kp++) {
        __m512bh bv[ATT_NV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) bv[v] = (__m512bh)_mm512_loadu_si512(b + kp * ldb + 16 * v);
        const uint32_t *ak = a + kp * ska;
#pragma GCC unroll 6
        for (int m = 0; m < ATT_MR; m++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)ak[m * lda]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], av, bv[v]);
        }
    }
    const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 6
    for (int m = 0; m < ATT_MR; m++) {
        if (m >= mr) break;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __mmask16 k = att_mask(ncols - 16 * v);
            float *cr = c + m * ldc + 16 * v;
            __m512 r = _mm512_mul_ps(acc[m][v], va);
            if (k == 0xFFFF) {  // masked stores are slow on some CPUs (AMD): only at a tail
                if (add) r = _mm512_add_ps(r, _mm512_loadu_ps(cr));
                _mm512_storeu_ps(cr, r);
            } else {
                if (add) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(k, cr));
                _mm512_mask_storeu_ps(cr, k, r);
            }
        }
    }
}

// Where a product is banded: row m of C needs only the indices x of one dimension (ATT_BAND_N:
// columns of C; ATT_BAND_K: k, counted in values, not pairs) with m + lo <= x <= m + hi. For K,
// A or B is zero outside (the masked probabilities), so skipping it changes no sum; for N, C
// outside is left unwritten (the softmax reads only visible keys). Causal attention skips most
// of the upper triangle of its diagonal blocks so.
enum { ATT_BAND_NONE, ATT_BAND_N, ATT_BAND_K };
typedef struct {
    int dim;
    int64_t lo, hi;
} AttBand;
#define ATT_FAR ((int64_t)1 << 40)  // an unbounded side of a band

// C (M,N) row stride ldc = alpha · A (M, kpn pairs) · B (kpn pairs, N) (+ C when add), within
// band. A word (m,kp) at a[m·lda + kp·ska], rows up to round_up(M, ATT_MR) readable; B word
// (kp,n) at b[kp·ldb + n], columns up to round_up(N, 16) readable.
static void att_gemm(const uint32_t *a, int64_t lda, int64_t ska, const uint32_t *b, int64_t ldb, int64_t M,
                     int64_t N, int64_t kpn, float *c, int64_t ldc, float alpha, int add, AttBand band) {
    for (int64_t n0 = 0; n0 < N; n0 += 16 * ATT_NV) {
        int64_t n1 = N - n0 < 16 * ATT_NV ? N : n0 + 16 * ATT_NV;
        for (int64_t m0 = 0; m0 < M; m0 += ATT_MR) {
            int mr = (int)(M - m0 < ATT_MR ? M - m0 : ATT_MR);
            int64_t xs = m0 + band.lo, xe = m0 + mr - 1 + band.hi;  // indices needed: [xs, xe]
            xs = xs < 0 ? 0 : xs;
            int64_t ns = n0, ne = n1, ks = 0, ke = kpn;
            if (band.dim == ATT_BAND_N) {
                ns = (xs & ~(int64_t)15) > n0 ? xs & ~(int64_t)15 : n0;
                ne = att_round_up(xe + 1, 16) < n1 ? att_round_up(xe + 1, 16) : n1;
                if (ne <= ns) continue;
            } else if (band.dim == ATT_BAND_K) {
                ks = xs / 2 < kpn ? xs / 2 : kpn;
                ke = (xe + 2) / 2 < kpn ? (xe + 2) / 2 : kpn;
                ke = ke < ks ? ks : ke;
            }
            int nc = (int)(ne - ns), nv = (nc + 15) / 16;
            const uint32_t *am = a + m0 * lda + ks * ska, *bn = b + ks * ldb + ns;
            float *cm = c + m0 * ldc + ns;
            int64_t kn = ke - ks;
            switch (nv) {
            case 4: att_kernel(4, am, lda, ska, bn, ldb, kn, cm, ldc, mr, nc, alpha, add); break;
            case 3: att_kernel(3, am, lda, ska, bn, ldb, kn, cm, ldc, mr, nc, alpha, add); break;
            case 2: att_kernel(2, am, lda, ska, bn, ldb, kn, cm, ldc, mr, nc, alpha, add); break;
            default: att_kernel(1, am, lda, ska, bn, ldb, kn, cm, ldc, mr, nc, alpha, add); break;
            }
        }
    }
}

// The bands of a block of query rows i0.. against keys kb0..: off = position of query i0 - kb0.
// Rows = queries, columns (N) or k (K) = keys: keys [i + off - window + 1, i + off] of query i.
static AttBand att_band_q(int dim, int64_t off, int window) {
    return (AttBand){dim, window > 0 ? off - window + 1 : -ATT_FAR, off};
}
// Rows = keys, k = queries: queries [j - off, j - off + window - 1] see key j.
static AttBand att_band_k(int64_t off, int window) {
    return (AttBand){ATT_BAND_K, -off, window > 0 ? -off + window - 1 : ATT_FAR};
}

// Sizes of the bf16 layouts of one head: DW words per row of a "rows" pack of a (·,D) matrix,
// D16 words per row of a "rowpairs" pack, T16 = keys padded to 16.
typedef struct {
    int64_t DW, D16, T16;
} AttDims;

static AttDims att_dims(int64_t Tk, int D) { return (AttDims){(D + 1) / 2, att_round_up(D, 16), att_round_up(Tk, 16)}; }

// Keys of the bf16 block of query rows [i0, i0+nr): [kb0, kb0+nkb), block_keys widened to
// multiples of 16 (within the padded T16 keys).
static void att_block_keys16(int64_t i0, int64_t nr, int64_t Tq, int64_t Tk, int window, int64_t T16, int64_t *kb0,
                             int64_t *nkb) {
    int64_t k0, nk;
    block_keys(i0, nr, Tq, Tk, window, &k0, &nk);
    *kb0 = k0 & ~(int64_t)15;
    int64_t kb1 = att_round_up(k0 + nk, 16);
    *nkb = (kb1 < T16 ? kb1 : T16) - *kb0;
}

// lanes l < 16 with j0 + l inside [lo, hi]
static inline __mmask16 att_range_mask(int64_t j0, int64_t lo, int64_t hi) {
    int64_t a = lo - j0 < 0 ? 0 : lo - j0, b = hi + 1 - j0 > 16 ? 16 : hi + 1 - j0;
    return b <= a ? 0 : (__mmask16)(((1u << b) - 1) & ~((1u << a) - 1));
}

// S (nr,nkb) = scale · Q Kᵀ of queries i0.. and keys kb0.. (nkb a multiple of 16; read only at
// each row's visible keys) -> the probabilities of attention_probs (softmax_row_exp: the same
// max, exps and 1/sum; stats as there), zero outside each row's visible keys, as: P (nr,nkb)
// fp32 in place of S (when keep), Pw "rows" (nr, nkb/2) words (NULL: none), Pp "rowpairs"
// (ceil(nr/2), nkb) words of row stride ldp (NULL: none).
static void att_softmax_bf16(float *S, int keep, uint32_t *Pw, uint32_t *Pp, int64_t ldp, float *stats, int fresh,
                             int64_t i0, int64_t nr, int64_t kb0, int64_t nkb, int64_t Tq, int64_t Tk, int window) {
    for (int64_t i = 0; i < nr; i += 2) {
        int rows = i + 1 < nr ? 2 : 1;
        int64_t lo[2] = {0, 0}, hi[2] = {-1, -1};
        __m512 inv[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int r = 0; r < rows; r++) {
            visible_keys(i0 + i + r, Tq, Tk, window, &lo[r], &hi[r]);
            lo[r] -= kb0;
            hi[r] -= kb0;
            inv[r] = _mm512_set1_ps(
                softmax_row_exp(S + (i + r) * nkb, lo[r], hi[r], stats ? stats + 2 * (i + r) : NULL, fresh));
        }
        for (int64_t c = 0; c < nkb; c += 16) {
            __m512 x[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int r = 0; r < rows; r++) {
                float *row = S + (i + r) * nkb + c;
                x[r] = _mm512_mul_ps(_mm512_maskz_loadu_ps(att_range_mask(c, lo[r], hi[r]), row), inv[r]);
                if (keep) _mm512_storeu_ps(row, x[r]);
                if (Pw)
                    _mm256_storeu_si256((__m256i *)(Pw + (i + r) * (nkb / 2) + c / 2),
                                        (__m256i)_mm512_cvtneps_pbh(x[r]));
            }
            if (Pp) _mm512_storeu_si512(Pp + i / 2 * ldp + c, att_interleave(x[0], x[1]));
        }
    }
}

// P (nr,nkb) fp32 of queries i0.. and keys kb0.. (nkb a multiple of 16, zero outside the visible
// keys), dP (nr,nkb) fp32 (read only at visible keys) -> scale · dS,
// dS = P ⊙ (dP - rowsum(P ⊙ dP)), as dSw "rows" (nr, nkb/2) words (NULL: none) and dSp
// "rowpairs" (ceil(nr/2), nkb) words of row stride ldp (NULL: none)
static void att_dscores_bf16(uint32_t *dSw, uint32_t *dSp, int64_t ldp, const float *P, const float *dP, int64_t i0,
                             int64_t nr, int64_t kb0, int64_t nkb, int64_t Tq, int64_t Tk, int window, float scale) {
    const __m512 vs = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < nr; i += 2) {
        int rows = i + 1 < nr ? 2 : 1;
        int64_t lo[2] = {0, 0}, hi[2] = {-1, -1};
        __m512 dot[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int r = 0; r < rows; r++) {
            const float *pr = P + (i + r) * nkb, *dr = dP + (i + r) * nkb;
            visible_keys(i0 + i + r, Tq, Tk, window, &lo[r], &hi[r]);
            lo[r] -= kb0;
            hi[r] -= kb0;
            __m512 acc = _mm512_setzero_ps();
            for (int64_t c = 0; c < nkb; c += 16)
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(pr + c),
                                      _mm512_maskz_loadu_ps(att_range_mask(c, lo[r], hi[r]), dr + c), acc);
            dot[r] = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
        }
        for (int64_t c = 0; c < nkb; c += 16) {
            __m512 x[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int r = 0; r < rows; r++) {
                const float *pr = P + (i + r) * nkb + c, *dr = dP + (i + r) * nkb + c;
                __m512 d = _mm512_maskz_loadu_ps(att_range_mask(c, lo[r], hi[r]), dr);
                x[r] = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(pr), _mm512_sub_ps(d, dot[r])), vs);
                if (dSw)
                    _mm256_storeu_si256((__m256i *)(dSw + (i + r) * (nkb / 2) + c / 2),
                                        (__m256i)_mm512_cvtneps_pbh(x[r]));
            }
            if (dSp) _mm512_storeu_si512(dSp + i / 2 * ldp + c, att_interleave(x[0], x[1]));
        }
    }
}

// k or v (B,Tk,KVH*D) -> per (b,kvh): "cols" (DW, T16) words when cols, else "rowpairs"
// (T16/2, D16) words, at dst + (b·KVH + kvh)·stride
static void att_pack_kv(uint32_t *dst, int64_t stride, const float *x, int64_t B, int64_t Tk, int KVH, int D,
                        AttDims dd, int cols) {
    int64_t KD = (int64_t)KVH * D;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t kh = 0; kh < KVH; kh++) {
            const float *X = x + b * Tk * KD + kh * D;
            uint32_t *o = dst + (b * KVH + kh) * stride;
            if (cols)
                att_pack_cols(o, dd.T16, X, KD, Tk, dd.T16, D);
            else
                att_pack_rowpairs(o, dd.D16, X, KD, Tk, dd.T16 / 2, D, dd.D16, 1.0f);
        }
}

// n floats of scratch starting at *p (64-byte multiples), *p advanced
static float *att_carve(float **p, int64_t n) {
    float *r = *p;
    *p += att_round_up(n, 16);
    return r;
}

// attention_forward with bf16 products: q (B,Tq,H*D), k/v (B,Tk,KVH*D) -> out (B,Tq,H*D),
// stats (B,H,Tq,2) (NULL = not kept). Per (b,kvh): Kt "cols" (DW,T16), Vp "rowpairs" (T16/2,D16);
// per thread: Qw "rows" (Tq+ATT_MR, DW), S (ATT_BR, T16) fp32, Pw "rows" (ATT_BR+ATT_MR, T16/2).
static void attention_forward_bf16(Tape *t, float *out, float *stats, const float *q, const float *k,
                                   const float *v, int64_t B, int64_t Tq, int64_t Tk, int H, int KVH, int D,
                                   int window) {
    int64_t HD = (int64_t)H * D, G = H / KVH;
    float scale = 1.0f / sqrtf((float)D);
    AttDims dd = att_dims(Tk, D);
    int nt = omp_get_max_threads();
    int64_t kts = att_round_up(dd.DW * dd.T16, 16), vps = att_round_up(dd.T16 / 2 * dd.D16, 16);
    int64_t per = att_round_up((Tq + ATT_MR) * dd.DW, 16) + ATT_BR * dd.T16 +
                  att_round_up((ATT_BR + ATT_MR) * (dd.T16 / 2), 16);
    float *shared = tape_scratch(t, SCR_GEMM, (size_t)(B * KVH * (kts + vps)));
    float *work = tape_scratch(t, SCR_A, (size_t)(nt * per));
    uint32_t *Kt = (uint32_t *)shared, *Vp = Kt + B * KVH * kts;
    att_pack_kv(Kt, kts, k, B, Tk, KVH, D, dd, 1);
    att_pack_kv(Vp, vps, v, B, Tk, KVH, D, dd, 0);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            float *p = work + (int64_t)omp_get_thread_num() * per;
            uint32_t *Qw = (uint32_t *)att_carve(&p, (Tq + ATT_MR) * dd.DW);
            float *S = att_carve(&p, ATT_BR * dd.T16);
            uint32_t *Pw = (uint32_t *)att_carve(&p, (ATT_BR + ATT_MR) * (dd.T16 / 2));
            const uint32_t *Ktb = Kt + (b * KVH + h / G) * kts, *Vpb = Vp + (b * KVH + h / G) * vps;
            att_pack_rows(Qw, dd.DW, q + b * Tq * HD + h * D, HD, Tq, D, dd.DW, 1.0f);
            memset(Qw + Tq * dd.DW, 0, (size_t)(ATT_MR * dd.DW) * sizeof(uint32_t));
            for (int64_t i0 = 0; i0 < Tq; i0 += ATT_BR) {
                int64_t nr = Tq - i0 < ATT_BR ? Tq - i0 : ATT_BR, kb0, nkb;
                att_block_keys16(i0, nr, Tq, Tk, window, dd.T16, &kb0, &nkb);
                // S (nr,nkb) = scale Q Kᵀ, then P (bf16) = softmax(mask(S))
                int64_t off = Tk - Tq + i0 - kb0;  // position of query i0 - kb0
                att_gemm(Qw + i0 * dd.DW, dd.DW, 1, Ktb + kb0, dd.T16, nr, nkb, dd.DW, S, nkb, scale, 0,
                         att_band_q(ATT_BAND_N, off, window));
                att_softmax_bf16(S, 0, Pw, NULL, 0, stats ? stats + ((b * H + h) * Tq + i0) * 2 : NULL, 1, i0, nr,
                                 kb0, nkb, Tq, Tk, window);
                memset(Pw + nr * (nkb / 2), 0, (size_t)(ATT_MR * (nkb / 2)) * sizeof(uint32_t));
                // O (nr,D) = P (nr,nkb) · V[kb0:kb0+nkb] (nkb,D)
                att_gemm(Pw, nkb / 2, 1, Vpb + kb0 / 2 * dd.D16, dd.D16, nr, D, nkb / 2,
                         out + (b * Tq + i0) * HD + h * D, HD, 1.0f, 0, att_band_q(ATT_BAND_K, off, window));
            }
        }
}

// attention_backward with bf16 products (dK, dV per head of a group in (B,H,Tk,D) buffers as
// there). Per (b,kvh): Kt, Vt "cols" (DW,T16), Kp "rowpairs" (T16/2,D16); per thread: Qw, dOw
// "rows" (Tq+ATT_MR, DW), Qp, dOp "rowpairs" (ceil(Tq/2), D16), P, dP (ATT_BR, T16) fp32, dSw
// "rows" (ATT_BR+ATT_MR, T16/2), Pp, dSp "rowpairs" (ATT_BR/2, T16+16) (read transposed: the
// row stride is the block's nkb + 16, room for the micro-kernel's extra rows). Blocks of query
// rows go last to first: the last one sees the last key (and every key without a window), so
// it can write a per-head dK, dV instead of adding to a zeroed one.
static void attention_backward_bf16(Tape *t, float *dq, float *dk, float *dv, const float *dout,
                                    const float *stats, const float *q, const float *k, const float *v, int64_t B,
                                    int64_t Tq, int64_t Tk, int H, int KVH, int D, int window) {
    int64_t HD = (int64_t)H * D, KD = (int64_t)KVH * D, G = H / KVH;
    float scale = 1.0f / sqrtf((float)D);
    AttDims dd = att_dims(Tk, D);
    int nt = omp_get_max_threads();
    int need_ds = dq || dk;
    int64_t kts = att_round_up(dd.DW * dd.T16, 16), kps = att_round_up(dd.T16 / 2 * dd.D16, 16);
    int64_t qw = att_round_up((Tq + ATT_MR) * dd.DW, 16), qp = att_round_up((Tq + 1) / 2 * dd.D16, 16);
    int64_t bw = att_round_up((ATT_BR + ATT_MR) * (dd.T16 / 2), 16), bp = ATT_BR / 2 * (dd.T16 + 16);
    int64_t per = 2 * qw + 2 * qp + 2 * ATT_BR * dd.T16 + bw + 2 * bp;
    float *shared = tape_scratch(t, SCR_GEMM, (size_t)(B * KVH * (2 * kts + kps)));
    float *work = tape_scratch(t, SCR_A, (size_t)(nt * per));
    float *dkh = dk && G > 1 ? tape_scratch(t, SCR_B, (size_t)(B * H * Tk * D)) : NULL;
    float *dvh = dv && G > 1 ? tape_scratch(t, SCR_C, (size_t)(B * H * Tk * D)) : NULL;
    uint32_t *Kt = (uint32_t *)shared, *Vt = Kt + B * KVH * kts, *Kp = Vt + B * KVH * kts;
    att_pack_kv(Kt, kts, k, B, Tk, KVH, D, dd, 1);
    if (need_ds) att_pack_kv(Vt, kts, v, B, Tk, KVH, D, dd, 1);
    if (dq) att_pack_kv(Kp, kps, k, B, Tk, KVH, D, dd, 0);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            float *p = work + (int64_t)omp_get_thread_num() * per;
            uint32_t *Qw = (uint32_t *)att_carve(&p, qw), *dOw = (uint32_t *)att_carve(&p, qw);
            uint32_t *Qp = (uint32_t *)att_carve(&p, qp), *dOp = (uint32_t *)att_carve(&p, qp);
            float *P = att_carve(&p, ATT_BR * dd.T16), *dP = att_carve(&p, ATT_BR * dd.T16);
            uint32_t *dSw = (uint32_t *)att_carve(&p, bw);
            uint32_t *Pp = (uint32_t *)att_carve(&p, bp), *dSp = (uint32_t *)att_carve(&p, bp);
            const float *Q = q + b * Tq * HD + h * D, *dO = dout + b * Tq * HD + h * D;
            int64_t kvo = b * KVH + h / G;
            const uint32_t *Ktb = Kt + kvo * kts, *Vtb = Vt + kvo * kts, *Kpb = Kp + kvo * kps;
            // where this head's dK, dV go: added into dk/dv, or written into its own buffer
            float *dK = dk ? (G > 1 ? dkh + (b * H + h) * Tk * D : dk + b * Tk * KD + h * D) : NULL;
            float *dV = dv ? (G > 1 ? dvh + (b * H + h) * Tk * D : dv + b * Tk * KD + h * D) : NULL;
            int64_t ldk = G > 1 ? D : KD;
            att_pack_rows(Qw, dd.DW, Q, HD, Tq, D, dd.DW, 1.0f);
            memset(Qw + Tq * dd.DW, 0, (size_t)(ATT_MR * dd.DW) * sizeof(uint32_t));
            if (need_ds) {
                att_pack_rows(dOw, dd.DW, dO, HD, Tq, D, dd.DW, 1.0f);
                memset(dOw + Tq * dd.DW, 0, (size_t)(ATT_MR * dd.DW) * sizeof(uint32_t));
            }
            if (dK) att_pack_rowpairs(Qp, dd.D16, Q, HD, Tq, (Tq + 1) / 2, D, dd.D16, 1.0f);
            if (dV) att_pack_rowpairs(dOp, dd.D16, dO, HD, Tq, (Tq + 1) / 2, D, dd.D16, 1.0f);
            for (int64_t i0 = (Tq - 1) / ATT_BR * ATT_BR; i0 >= 0; i0 -= ATT_BR) {
                int64_t nr = Tq - i0 < ATT_BR ? Tq - i0 : ATT_BR, npr = (nr + 1) / 2, kb0, nkb;
                att_block_keys16(i0, nr, Tq, Tk, window, dd.T16, &kb0, &nkb);
                int64_t mk = (kb0 + nkb < Tk ? kb0 + nkb : Tk) - kb0, ldp = nkb + 16;  // key rows of dK, dV
                int add = G == 1 || i0 + nr < Tq;  // the first (last) block writes the per-head buffers
                if (!add) {
                    if (dK) memset(dK, 0, (size_t)(kb0 * D) * sizeof(float));
                    if (dV) memset(dV, 0, (size_t)(kb0 * D) * sizeof(float));
                }
                // S (nr,nkb) = scale Q Kᵀ, then P = softmax(mask(S)) (fp32, and bf16 pairs of rows)
                int64_t off = Tk - Tq + i0 - kb0;  // position of query i0 - kb0
                att_gemm(Qw + i0 * dd.DW, dd.DW, 1, Ktb + kb0, dd.T16, nr, nkb, dd.DW, P, nkb, scale, 0,
                         att_band_q(ATT_BAND_N, off, window));
                att_softmax_bf16(P, 1, NULL, dV ? Pp : NULL, ldp, (float *)stats + ((b * H + h) * Tq + i0) * 2, 0,
                                 i0, nr, kb0, nkb, Tq, Tk, window);
                // dV[kb0:] (mk,D) += Pᵀ (mk,nr) · dO (nr,D)
                if (dV)
                    att_gemm(Pp, 1, ldp, dOp + i0 / 2 * dd.D16, dd.D16, mk, D, npr, dV + kb0 * ldk, ldk, 1.0f, add,
                             att_band_k(off, window));
                if (!need_ds) continue;
                // dP (nr,nkb) = dO (nr,D) · V[kb0:]ᵀ; scale dS = scale P ⊙ (dP - rowsum(P ⊙ dP)) in bf16
                att_gemm(dOw + i0 * dd.DW, dd.DW, 1, Vtb + kb0, dd.T16, nr, nkb, dd.DW, dP, nkb, 1.0f, 0,
                         att_band_q(ATT_BAND_N, off, window));
                att_dscores_bf16(dq ? dSw : NULL, dK ? dSp : NULL, ldp, P, dP, i0, nr, kb0, nkb, Tq, Tk, window,
                                 scale);
                // dQ (nr,D) += scale dS (nr,nkb) · K[kb0:] (nkb,D)
                if (dq) {
                    memset(dSw + nr * (nkb / 2), 0, (size_t)(ATT_MR * (nkb / 2)) * sizeof(uint32_t));
                    att_gemm(dSw, nkb / 2, 1, Kpb + kb0 / 2 * dd.D16, dd.D16, nr, D, nkb / 2,
                             dq + (b * Tq + i0) * HD + h * D, HD, 1.0f, 1, att_band_q(ATT_BAND_K, off, window));
                }
                // dK[kb0:] (mk,D) += scale dSᵀ (mk,nr) · Q (nr,D)
                if (dK)
                    att_gemm(dSp, 1, ldp, Qp + i0 / 2 * dd.D16, dd.D16, mk, D, npr, dK + kb0 * ldk, ldk, 1.0f, add,
                             att_band_k(off, window));
            }
        }
    if (G > 1) attention_sum_groups(dk, dv, dkh, dvh, B, Tk, KVH, G, D);
}
#pragma GCC pop_options
#endif

int op_attention_has_bf16(void) {
#ifdef ATT_BF16
    return cpu_isa_usable("avx512bf16");
#else
    return 0;
#endif
}

// d: B, Tq, Tk, H, KVH, D, window, bf16 (the forward's products: the backward uses the same)
static void attention_node_backward(Tape *t, const Node *n) {
    Tensor *q = n->in[0], *k = n->in[1], *v = n->in[2];
#ifdef ATT_BF16
    if (n->d[7]) {
        attention_backward_bf16(t, tape_grad(t, q), tape_grad(t, k), tape_grad(t, v), n->out->grad, n->saved[0],
                                q->data, k->data, v->data, n->d[0], n->d[1], n->d[2], (int)n->d[3], (int)n->d[4],
                                (int)n->d[5], (int)n->d[6]);
        return;
    }
#endif
    attention_backward(t, tape_grad(t, q), tape_grad(t, k), tape_grad(t, v), n->out->grad, n->saved[0], q->data,
                       k->data, v->data, n->d[0], n->d[1], n->d[2], (int)n->d[3], (int)n->d[4], (int)n->d[5],
                       (int)n->d[6]);
}

static Tensor *op_attention_run(Tape *t, Tensor *q, Tensor *k, Tensor *v, int64_t B, int64_t Tq, int64_t Tk, int H, int KVH,
                     int D, int window) {
    if (KVH <= 0 || H % KVH || Tk < Tq || Tq <= 0 || q->n != B * Tq * H * D || k->n != B * Tk * KVH * D ||
        v->n != B * Tk * KVH * D)
        die_internal("op_attention: shapes q %lld, k %lld, v %lld elements for B=%lld Tq=%lld Tk=%lld H=%d "
                     "KVH=%d D=%d",
                     (long long)q->n, (long long)k->n, (long long)v->n, (long long)B, (long long)Tq,
                     (long long)Tk, H, KVH, D);
    Tensor *out = tape_result(t, q->ndim, q->shape, any_rg(q, k, v));
    Node *n = tape_record(t, attention_node_backward, out);
    float *stats = n ? tape_alloc(t, (size_t)(B * H * Tq * 2) * sizeof(float)) : NULL;
    int bf16 = 0;
#ifdef ATT_BF16
    bf16 = tape_compute_bf16(t) && op_attention_has_bf16();  // (bf16-c, say, on another CPU: fp32 here)
    if (bf16)
        attention_forward_bf16(t, out->data, stats, q->data, k->data, v->data, B, Tq, Tk, H, KVH, D, window);
#endif
    if (!bf16) {
        float *work = tape_scratch(t, SCR_A, (size_t)omp_get_max_threads() * ATT_BR * Tk);
        attention_forward(out->data, stats, work, q->data, k->data, v->data, B, Tq, Tk, H, KVH, D, window);
    }
    if (n) {
        n->in[0] = q;
        n->in[1] = k;
        n->in[2] = v;
        n->saved[0] = stats;
        int64_t d[8] = {B, Tq, Tk, H, KVH, D, window, bf16};
        memcpy(n->d, d, sizeof d);
    }
    return out;
}

Tensor *op_attention(Tape *t, Tensor *q, Tensor *k, Tensor *v, int64_t B, int64_t Tq, int64_t Tk, int H, int KVH,
                     int D, int window) {
    double t0 = tape_prof_begin(t, "attention");
    Tensor *out = op_attention_run(t, q, k, v, B, Tq, Tk, H, KVH, D, window);
    tape_prof_end(t, t0);
    return out;
}

// ---- SwiGLU (and the kernels GeGLU shares) ---------------------------------------------------

// SwiGLU and GeGLU share their kernels: both activations are act(x) = x · σ(a(x)), with
// a(x) = x (silu) or a(x) = 2k(x + c x³) (gelu_tanh, since x/2 · (1 + tanh(y)) = x · σ(2y)),
// so act'(x) = s + x s (1 - s) a'(x), s = σ(a(x)).
#define GELU_K 0.7978845608028654f  // sqrt(2/π)
#define GELU_C 0.044715f

// gate (n) -> s (n) = σ(a(gate)), da (n) = a'(gate) (NULL = not needed)
static void glu_sigmoid(float *s, float *da, const float *g, int64_t n, int gelu) {
    if (gelu) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) s[i] = 2.0f * GELU_K * (g[i] + GELU_C * g[i] * g[i] * g[i]);
        if (da)
#pragma omp simd
            for (int64_t i = 0; i < n; i++) da[i] = 2.0f * GELU_K * (1.0f + 3.0f * GELU_C * g[i] * g[i]);
        sigmoid_vec(s, s, n);
        return;
    }
    sigmoid_vec(s, g, n);
    if (da)
        for (int64_t i = 0; i < n; i++) da[i] = 1.0f;
}

// gate (n), up (n) -> out (n)      out = act(gate) · up = gate · s · up
static void glu_forward(float *out, const float *g, const float *u, int64_t n, int gelu) {
#pragma omp parallel for schedule(static)
    for (int64_t i0 = 0; i0 < n; i0 += EW_BLOCK) {
        int64_t nb = n - i0 < EW_BLOCK ? n - i0 : EW_BLOCK;
        float *o = out + i0;
        const float *gi = g + i0, *ui = u + i0;
        glu_sigmoid(o, NULL, gi, nb, gelu);
#pragma omp simd
        for (int64_t i = 0; i < nb; i++) o[i] *= gi[i] * ui[i];
    }
}

// dout, gate, up (n) -> dgate +=, dup += (NULL = not needed)
//   dgate = dout · up · (s + g s (1 - s) a'(g)),  dup = dout · g · s
static void glu_backward(float *dg, float *du, const float *dout, const float *g, const float *u, int64_t n,
                         int gelu) {
#pragma omp parallel for schedule(static)
    for (int64_t i0 = 0; i0 < n; i0 += EW_BLOCK) {
        int64_t nb = n - i0 < EW_BLOCK ? n - i0 : EW_BLOCK;
        const float *gi = g + i0, *ui = u + i0, *di = dout + i0;
        float s[EW_BLOCK], da[EW_BLOCK];
        glu_sigmoid(s, dg ? da : NULL, gi, nb, gelu);
        if (dg) {
            float *o = dg + i0;
#pragma omp simd
            for (int64_t i = 0; i < nb; i++) o[i] += di[i] * ui[i] * (s[i] + gi[i] * s[i] * (1.0f - s[i]) * da[i]);
        }
        if (du) {
            float *o = du + i0;
#pragma omp simd
            for (int64_t i = 0; i < nb; i++) o[i] += di[i] * gi[i] * s[i];
        }
    }
}

static void swiglu_node_backward(Tape *t, const Node *n) {
    Tensor *g = n->in[0], *u = n->in[1];
    glu_backward(tape_grad(t, g), tape_grad(t, u), n->out->grad, g->data, u->data, g->n, 0);
}

// The output of an elementwise op of a and b (shaped like a), with its node recorded.
static Tensor *elementwise_pair(Tape *t, Tensor *a, Tensor *b, BackwardFn backward, const char *op) {
    if (a->n != b->n || tensor_cols(a) != tensor_cols(b))
        die_internal("%s: %lld vs %lld elements", op, (long long)a->n, (long long)b->n);
    Tensor *out = tape_result(t, a->ndim, a->shape, any_rg(a, b, NULL));
    Node *n = tape_record(t, backward, out);
    if (n) {
        n->in[0] = a;
        n->in[1] = b;
    }
    return out;
}

static Tensor *op_swiglu_run(Tape *t, Tensor *gate, Tensor *up) {
    Tensor *out = elementwise_pair(t, gate, up, swiglu_node_backward, "op_swiglu");
    glu_forward(out->data, gate->data, up->data, gate->n, 0);
    return out;
}

Tensor *op_swiglu(Tape *t, Tensor *gate, Tensor *up) {
    double t0 = tape_prof_begin(t, "swiglu");
    Tensor *out = op_swiglu_run(t, gate, up);
    tape_prof_end(t, t0);
    return out;
}

// ---- GeGLU (tanh-approximated gelu) --------------------------------------------------------

static void geglu_node_backward(Tape *t, const Node *n) {
    Tensor *g = n->in[0], *u = n->in[1];
    glu_backward(tape_grad(t, g), tape_grad(t, u), n->out->grad, g->data, u->data, g->n, 1);
}

static Tensor *op_geglu_run(Tape *t, Tensor *gate, Tensor *up) {
    Tensor *out = elementwise_pair(t, gate, up, geglu_node_backward, "op_geglu");
    glu_forward(out->data, gate->data, up->data, gate->n, 1);
    return out;
}

Tensor *op_geglu(Tape *t, Tensor *gate, Tensor *up) {
    double t0 = tape_prof_begin(t, "geglu");
    Tensor *out = op_geglu_run(t, gate, up);
    tape_prof_end(t, t0);
    return out;
}

// ---- bias -----------------------------------------------------------------------------------

// x (N,C), b (C) -> out (N,C)      out = x + b
static void add_bias_forward(float *out, const float *x, const float *b, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static) if (N * C >= 16384)
    for (int64_t i = 0; i < N; i++)
        for (int64_t c = 0; c < C; c++) out[i * C + c] = x[i * C + c] + b[c];
}

// dout (N,C) -> dx (N,C) +=, db (C) += Σ_rows dout (NULL = not needed)
static void add_bias_backward(float *dx, float *db, const float *dout, int64_t N, int64_t C) {
    if (dx)
#pragma omp parallel for schedule(static) if (N * C >= 16384)
        for (int64_t i = 0; i < N * C; i++) dx[i] += dout[i];
    if (db)
        for (int64_t i = 0; i < N; i++)
            for (int64_t c = 0; c < C; c++) db[c] += dout[i * C + c];
}

static void add_bias_node_backward(Tape *t, const Node *n) {
    int64_t C = tensor_cols(n->out);
    add_bias_backward(tape_grad(t, n->in[0]), tape_grad(t, n->in[1]), n->out->grad, n->out->n / C, C);
}

static Tensor *op_add_bias_run(Tape *t, Tensor *x, Tensor *b) {
    int64_t C = tensor_cols(x);
    if (b->n != C) die_internal("op_add_bias: bias of %lld for %lld columns", (long long)b->n, (long long)C);
    Tensor *out = tape_result(t, x->ndim, x->shape, any_rg(x, b, NULL));
    Node *n = tape_record(t, add_bias_node_backward, out);
    if (n) {
        n->in[0] = x;
        n->in[1] = b;
    }
    add_bias_forward(out->data, x->data, b->data, x->n / C, C);
    return out;
}

Tensor *op_add_bias(Tape *t, Tensor *x, Tensor *b) {
    double t0 = tape_prof_begin(t, "add_bias");
    Tensor *out = op_add_bias_run(t, x, b);
    tape_prof_end(t, t0);
    return out;
}

// ---- add ------------------------------------------------------------------------------------

// a (n), b (n) -> out (n)      out = a + b
static void add_forward(float *out, const float *a, const float *b, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// dout (n) -> dx (n) +=
static void add_backward(float *dx, const float *dout, int64_t n) {
    if (!dx) return;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) dx[i] += dout[i];
}

static void add_node_backward(Tape *t, const Node *n) {
    add_backward(tape_grad(t, n->in[0]), n->out->grad, n->out->n);
    add_backward(tape_grad(t, n->in[1]), n->out->grad, n->out->n);
}

static Tensor *op_add_run(Tape *t, Tensor *a, Tensor *b) {
    Tensor *out = elementwise_pair(t, a, b, add_node_backward, "op_add");
    add_forward(out->data, a->data, b->data, a->n);
    return out;
}

Tensor *op_add(Tape *t, Tensor *a, Tensor *b) {
    double t0 = tape_prof_begin(t, "add");
    Tensor *out = op_add_run(t, a, b);
    tape_prof_end(t, t0);
    return out;
}

// ---- cross-entropy --------------------------------------------------------------------------

// logits (N,V), targets (N) -> loss (N) (0 on ignored rows), lse (N) = log Σ exp(logits)
static void cross_entropy_forward(float *loss, float *lse, const float *logits, const int *targets, int64_t N,
                                  int64_t V) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++) {
        loss[i] = 0.0f;
        if (targets[i] < 0) continue;
        const float *li = logits + i * V;
        float mx = row_max(li, V);
        lse[i] = mx + logf(exp_shift_sum(NULL, li, V, mx));
        loss[i] = lse[i] - li[targets[i]];
    }
}

// dloss (scalar), logits (N,V), targets, lse (N) -> dlogits (N,V) +=
//   kept rows: (softmax - onehot(target)) · dloss / norm; ignored rows: nothing
static void cross_entropy_backward(float *dlogits, float dloss, const float *logits, const int *targets,
                                   const float *lse, int64_t N, int64_t V, float norm) {
    float k = dloss / norm;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++) {
        if (targets[i] < 0) continue;
        const float *li = logits + i * V;
        float *di = dlogits + i * V;
        float e[EW_BLOCK];
        for (int64_t j0 = 0; j0 < V; j0 += EW_BLOCK) {
            int64_t nb = V - j0 < EW_BLOCK ? V - j0 : EW_BLOCK;
            exp_shift_sum(e, li + j0, nb, lse[i]);
#pragma omp simd
            for (int64_t j = 0; j < nb; j++) di[j0 + j] += e[j] * k;
        }
        di[targets[i]] -= k;
    }
}

static void cross_entropy_node_backward(Tape *t, const Node *n) {
    Tensor *logits = n->in[0];
    cross_entropy_backward(tape_grad(t, logits), n->out->grad[0], logits->data, n->saved[0], n->saved[1],
                           n->d[0], n->d[1], n->f[0]);
}

static Tensor *op_cross_entropy_run(Tape *t, Tensor *logits, const int *targets, float norm) {
    int64_t V = tensor_cols(logits), N = tensor_rows(logits);
    for (int64_t i = 0; i < N; i++)
        if (targets[i] >= V)
            die_internal("op_cross_entropy: target %d at row %lld outside [0,%lld)", targets[i], (long long)i,
                         (long long)V);
    if (!(norm > 0.0f)) die_internal("op_cross_entropy: normaliser %g", (double)norm);
    int64_t shape[1] = {1};
    Tensor *out = tape_result(t, 1, shape, logits->requires_grad);
    float *lse = tape_alloc(t, (size_t)N * sizeof(float));
    float *loss = tape_scratch(t, SCR_A, (size_t)N);
    cross_entropy_forward(loss, lse, logits->data, targets, N, V);
    double total = 0.0;  // summed in row order: the same result whatever the thread count
    for (int64_t i = 0; i < N; i++) total += loss[i];
    out->data[0] = (float)(total / norm);
    Node *n = tape_record(t, cross_entropy_node_backward, out);
    if (n) {
        n->in[0] = logits;
        n->saved[0] = tape_ints(t, targets, N);
        n->saved[1] = lse;
        n->d[0] = N;
        n->d[1] = V;
        n->f[0] = norm;
    }
    return out;
}

Tensor *op_cross_entropy(Tape *t, Tensor *logits, const int *targets, float norm) {
    double t0 = tape_prof_begin(t, "cross_entropy");
    Tensor *out = op_cross_entropy_run(t, logits, targets, norm);
    tape_prof_end(t, t0);
    return out;
}

// ---- fused linear + cross-entropy ------------------------------------------------------------
// Only the K rows with a target take part, in chunks of Kc rows whose logits over the FULL
// vocabulary fit in LCE_CHUNK_FLOATS (tape scratch; xk, the chunk's rows of x, too). The
// logits L (Kc,V) are computed tile by tile of the vocabulary (a tile of w converted to fp32
// at a time), then each row's max, log-sum-exp and target logit. When the node is recorded
// the gradient is computed right there (as Liger-Kernel does): G = (softmax - onehot)/norm in
// place of L, dxk (Kc,C) = G w, tile by tile, stored on the tape; the backward only scales it
// by dloss into dx. Two GEMMs over the vocabulary, never the (N,V) logits.
#define LCE_CHUNK_FLOATS ((int64_t)1 << 23)  // 32 MiB of logits per chunk of rows

// Rows per chunk: as many as fit in LCE_CHUNK_FLOATS (at least 1), balanced over the chunks.
static int64_t lce_chunk_rows(int64_t K, int64_t V) {
    int64_t cap = LCE_CHUNK_FLOATS / V;
    cap = cap < 1 ? 1 : cap;
    int64_t nchunks = (K + cap - 1) / cap;
    return (K + nchunks - 1) / nchunks;
}

// x (N,C), rows (K) -> xk (K,C): the kept rows of x
static void gather_rows(float *xk, const float *x, const int *rows, int64_t K, int64_t C) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < K; i++) memcpy(xk + i * C, x + (int64_t)rows[i] * C, (size_t)C * sizeof(float));
}

// xk (K,C), rows [v0, v0+nv) of w (V,C) -> L (K,nv), row stride ldl:   L = xk · w[v0:v0+nv]ᵀ
static void lce_logits(Tape *t, float *L, int64_t ldl, const float *xk, const Weight *w, int64_t v0, int64_t nv,
                       int64_t K) {
    int64_t C = w->cols;
    const float *wt = weight_rows(t, w, v0, nv);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)K, (int)nv, (int)C, 1.0f, xk, (int)C, wt, (int)C, 0.0f,
                L, (int)ldl);
}

// G (K,nv) row stride ldg, rows [v0, v0+nv) of w (V,C) -> dxk (K,C) +=   dxk += G · w[v0:v0+nv]
static void lce_dx(Tape *t, float *dxk, const float *G, int64_t ldg, const Weight *w, int64_t v0, int64_t nv,
                   int64_t K) {
    int64_t C = w->cols;
    const float *wt = weight_rows(t, w, v0, nv);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)K, (int)C, (int)nv, 1.0f, G, (int)ldg, wt, (int)C,
                1.0f, dxk, (int)C);
}

// L (K,V) logits, tk (K) -> lse (K), tl (K): log Σ_v exp(L) and the target's logit. With
// kg != 0, L becomes G = (softmax(L) - onehot(tk)) · kg.
static void lce_softmax(float *L, float *lse, float *tl, const int *tk, int64_t K, int64_t V, float kg) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < K; i++) {
        float *row = L + i * V;
        tl[i] = row[tk[i]];
        float mx = row_max(row, V);
        float sum = exp_shift_sum(kg != 0.0f ? row : NULL, row, V, mx);
        lse[i] = mx + logf(sum);
        if (kg == 0.0f) continue;
        float s = kg / sum;
#pragma omp simd
        for (int64_t j = 0; j < V; j++) row[j] *= s;
        row[tk[i]] -= kg;
    }
}

// xk (K,C), w (V,C), tk (K) -> lse (K), tl (K); dxk (K,C) = (softmax - onehot(tk)) / norm · w
// when dxk != NULL. L: scratch for (K,V) logits.
static void lce_chunk(Tape *t, float *lse, float *tl, float *dxk, float *L, const float *xk, const Weight *w,
                      const int *tk, int64_t K, float norm) {
    int64_t V = w->rows, C = w->cols, TV = weight_tile_rows(w, WTILE_FLOATS);
    int bf = use_tiled(t, K);  // tiled GEMM: each one call over the whole vocabulary
    TiledWeight tw = bf ? weight_tiled(w) : tiled_f32(NULL, 0, 0);
    if (bf)
        gemm_xwt(tape_gemm(t), xk, K, C, &tw, L, V, 0, gemm_scratch(t, K, C));  // L (K,V) = xk wᵀ
    else
        for (int64_t v0 = 0; v0 < V; v0 += TV) lce_logits(t, L + v0, V, xk, w, v0, V - v0 < TV ? V - v0 : TV, K);
    lce_softmax(L, lse, tl, tk, K, V, dxk ? 1.0f / norm : 0.0f);
    if (!dxk) return;
    if (bf) {
        gemm_dyw(tape_gemm(t), L, K, V, &tw, dxk, C, 0, gemm_scratch(t, K, V));  // dxk (K,C) = G w
        return;
    }
    memset(dxk, 0, (size_t)(K * C) * sizeof(float));
    for (int64_t v0 = 0; v0 < V; v0 += TV) lce_dx(t, dxk, L + v0, V, w, v0, V - v0 < TV ? V - v0 : TV, K);
}

// Saved: rows (K) then the targets of those rows (K) as ints; dxs (K,C), the gradient of the
// kept rows for dloss = 1.
static void lce_node_backward(Tape *t, const Node *n) {
    float *dx = tape_grad(t, n->in[0]);
    if (!dx) return;
    int64_t K = n->d[0], C = n->d[1];
    const int *rows = n->saved[0];
    const float *dxs = n->saved[1];
    float dloss = n->out->grad[0];
    // kept rows are distinct: no two threads touch the same row of dx
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < K; i++) {
        float *d = dx + (int64_t)rows[i] * C;
        const float *s = dxs + i * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) d[c] += dloss * s[c];
    }
}

static Tensor *op_linear_cross_entropy_run(Tape *t, Tensor *x, const Weight *w, const int *targets, float norm) {
    int64_t C = tensor_cols(x), N = tensor_rows(x), V = w->rows;
    if (w->cols != C)
        die_internal("op_linear_cross_entropy: x has %lld columns, weight %s has %lld", (long long)C,
                     w->name ? w->name : "", (long long)w->cols);
    if (!(norm > 0.0f)) die_internal("op_linear_cross_entropy: normaliser %g", (double)norm);
    int *rows = tape_alloc(t, (size_t)(2 * N) * sizeof(int));
    int64_t K = 0;
    for (int64_t i = 0; i < N; i++) {
        if (targets[i] >= V)
            die_internal("op_linear_cross_entropy: target %d at row %lld outside [0,%lld)", targets[i], (long long)i,
                         (long long)V);
        if (targets[i] >= 0) rows[K++] = (int)i;
    }
    int *tk = rows + K;  // the targets of the kept rows, right after them
    for (int64_t i = 0; i < K; i++) tk[i] = targets[rows[i]];
    int64_t shape[1] = {1};
    Tensor *out = tape_result(t, 1, shape, x->requires_grad && K > 0);
    if (K == 0) {
        out->data[0] = 0.0f;
        return out;
    }
    Node *n = tape_record(t, lce_node_backward, out);
    float *lse = tape_alloc(t, (size_t)K * sizeof(float)), *tl = tape_alloc(t, (size_t)K * sizeof(float));
    float *dxs = n ? tape_alloc(t, (size_t)(K * C) * sizeof(float)) : NULL;
    int64_t KC = lce_chunk_rows(K, V);
    for (int64_t c0 = 0; c0 < K; c0 += KC) {
        int64_t Kc = K - c0 < KC ? K - c0 : KC;
        float *xk = tape_scratch(t, SCR_A, (size_t)(Kc * C)), *L = tape_scratch(t, SCR_B, (size_t)(Kc * V));
        gather_rows(xk, x->data, rows + c0, Kc, C);
        lce_chunk(t, lse + c0, tl + c0, dxs ? dxs + c0 * C : NULL, L, xk, w, tk + c0, Kc, norm);
    }
    double total = 0.0;  // summed in row order: the same result whatever the thread count
    for (int64_t i = 0; i < K; i++) total += lse[i] - tl[i];
    out->data[0] = (float)(total / norm);
    if (n) {
        n->in[0] = x;
        n->w = w;
        n->saved[0] = rows;
        n->saved[1] = dxs;
        n->d[0] = K;
        n->d[1] = C;
        n->f[0] = norm;
    }
    return out;
}

Tensor *op_linear_cross_entropy(Tape *t, Tensor *x, const Weight *w, const int *targets, float norm) {
    double t0 = tape_prof_begin(t, "linear_cross_entropy");
    Tensor *out = op_linear_cross_entropy_run(t, x, w, targets, norm);
    tape_prof_end(t, t0);
    return out;
}
