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
#ifdef __AVX512F__
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
// converted in registers (decoding through a bf16 lm_head).
static void bf16_gemv(float *out, const float *x, const uint16_t *w, int64_t N, int64_t OC, int64_t C) {
#pragma omp parallel for schedule(static) if (OC * C >= 32768)
    for (int64_t r = 0; r < OC; r++) {
        const uint16_t *wr = w + r * C;
        float acc[BF16_GEMV_MAX_N] = {0};
        int64_t c = 0;
#ifdef __AVX512F__
        __m512 va[BF16_GEMV_MAX_N];
        for (int64_t n = 0; n < N; n++) va[n] = _mm512_setzero_ps();
        for (; c + 16 <= C; c += 16) {
            __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(wr + c)));
            __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
            for (int64_t n = 0; n < N; n++) va[n] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + n * C + c), va[n]);
        }
        for (int64_t n = 0; n < N; n++) acc[n] = _mm512_reduce_add_ps(va[n]);
#endif
        for (; c < C; c++) {
            float wc = bf16_to_f32(wr[c]);
            for (int64_t n = 0; n < N; n++) acc[n] += wc * x[n * C + c];
        }
        for (int64_t n = 0; n < N; n++) out[n * OC + r] = acc[n];
    }
}

// ---- bf16 compute (tape_compute_bf16): quant.h's AVX-512 BF16 GEMMs over any weight type
#define BF16_MIN_N 16  // fewer rows of x (decoding): the fp32 GEMV paths

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

static int use_bf16(Tape *t, int64_t N) { return N >= BF16_MIN_N && tape_compute_bf16(t); }

// GEMM scratch for an (N, K) activation operand, in tape scratch
static void *bf16_scratch(Tape *t, int64_t N, int64_t K) {
    return tape_scratch(t, SCR_GEMM, bf16_gemm_scratch_bytes(N, K) / sizeof(float) + 1);
}

// x (N,C), w (OC,C) -> out (N,OC)      out = x wᵀ
void weight_matmul_xwt(Tape *t, const Weight *w, const float *x, int64_t N, float *out) {
    int64_t OC = w->rows, C = w->cols;
    if (use_bf16(t, N)) {
        TiledWeight tw = weight_tiled(w);
        bf16_matmul_xwt(x, N, C, &tw, out, OC, 0, bf16_scratch(t, N, C));
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
    if (use_bf16(t, N)) {
        TiledWeight tw = weight_tiled(w);
        bf16_matmul_dyw(dout, N, OC, &tw, dx, C, 1, bf16_scratch(t, N, OC));
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
    if (dx) weight_matmul_dyw(t, w, dy, N, dx);  // dx += dy W
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
    if (dx) {
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

static Tensor *op_lora_linear_run(Tape *t, Tensor *x, const Weight *w, Tensor *A, Tensor *B, float scale,
                       float dropout_p) {
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
    // out (N,OC) = x Wᵀ
    weight_matmul_xwt(t, w, x->data, N, out->data);
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
    if (!A) return out;
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
    float *h = n ? tape_alloc(t, (size_t)(N * r) * sizeof(float)) : tape_scratch(t, SCR_C, (size_t)(N * r));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)r, (int)C, 1.0f, xd, (int)C, A->data,
                (int)C, 0.0f, h, (int)r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)r, scale, h, (int)r, B->data,
                (int)r, 1.0f, out->data, (int)OC);
    if (n) n->saved[0] = h;
    return out;
}

Tensor *op_lora_linear(Tape *t, Tensor *x, const Weight *w, Tensor *A, Tensor *B, float scale,
                       float dropout_p) {
    double t0 = tape_prof_begin(t, "linear");
    Tensor *out = op_lora_linear_run(t, x, w, A, B, scale, dropout_p);
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
// 1/sum (B,H,Tq,2) and the backward recomputes the probabilities of one head at a time,
// bit-identical to the forward's, in a per-thread buffer.

// Keys visible to query i: [lo, hi] with hi = Tk - Tq + i, lo = hi - window + 1 (window > 0).
static void visible_keys(int64_t i, int64_t Tq, int64_t Tk, int window, int64_t *lo, int64_t *hi) {
    *hi = Tk - Tq + i;
    *lo = window > 0 && *hi - window + 1 > 0 ? *hi - window + 1 : 0;
}

// Q (Tq,·) row stride ldq, K (Tk,·) row stride ldk -> P (Tq,Tk): the head's probabilities
// softmax(mask(scale · Q Kᵀ)), zero outside the visible keys. stats (Tq,2) (max, 1/sum):
// written when fresh, else read (the backward's recomputation, giving identical values).
static void attention_probs(float *P, float *stats, int fresh, const float *Q, int ldq, const float *K, int ldk,
                            int64_t Tq, int64_t Tk, int D, int window, float scale) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Tq, (int)Tk, D, scale, Q, ldq, K, ldk, 0.0f, P,
                (int)Tk);
    for (int64_t i = 0; i < Tq; i++) {
        float *row = P + i * Tk;
        int64_t lo, hi;
        visible_keys(i, Tq, Tk, window, &lo, &hi);
        float mx, inv;
        if (fresh) {
            mx = -INFINITY;
            for (int64_t j = lo; j <= hi; j++) mx = row[j] > mx ? row[j] : mx;
            float sum = 0.0f;
            for (int64_t j = lo; j <= hi; j++) {
                row[j] = expf(row[j] - mx);
                sum += row[j];
            }
            inv = 1.0f / sum;
            if (stats) {
                stats[2 * i] = mx;
                stats[2 * i + 1] = inv;
            }
        } else {
            mx = stats[2 * i];
            inv = stats[2 * i + 1];
            for (int64_t j = lo; j <= hi; j++) row[j] = expf(row[j] - mx);
        }
        for (int64_t j = 0; j < lo; j++) row[j] = 0.0f;
        for (int64_t j = lo; j <= hi; j++) row[j] *= inv;
        for (int64_t j = hi + 1; j < Tk; j++) row[j] = 0.0f;
    }
}

// q (B,Tq,H*D), k/v (B,Tk,KVH*D) -> out (B,Tq,H*D), stats (B,H,Tq,2) (NULL = not kept)
// Per (b,h): P = softmax(mask(scale · Q Kᵀ)) in a per-thread buffer of work (nthreads,Tq,Tk),
// O = P V.
static void attention_forward(float *out, float *stats, float *work, const float *q, const float *k,
                              const float *v, int64_t B, int64_t Tq, int64_t Tk, int H, int KVH, int D,
                              int window) {
    int64_t HD = (int64_t)H * D, KD = (int64_t)KVH * D, G = H / KVH;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            float *P = work + (int64_t)omp_get_thread_num() * Tq * Tk;
            const float *Q = q + b * Tq * HD + h * D;
            const float *K = k + b * Tk * KD + (h / G) * D, *V = v + b * Tk * KD + (h / G) * D;
            attention_probs(P, stats ? stats + (b * H + h) * Tq * 2 : NULL, 1, Q, (int)HD, K, (int)KD, Tq, Tk, D,
                            window, scale);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Tq, D, (int)Tk, 1.0f, P, (int)Tk, V,
                        (int)KD, 0.0f, out + b * Tq * HD + h * D, (int)HD);
        }
}

// dout (B,Tq,H*D), stats (B,H,Tq,2), q, k, v -> dq (B,Tq,H*D) +=, dk, dv (B,Tk,KVH*D) +=
// Per (b,h): P recomputed, dP = dO Vᵀ, dS = P ⊙ (dP - rowsum(P ⊙ dP)), dQ += scale dS K,
// dK += scale dSᵀ Q, dV += Pᵀ dO. With G = H/KVH > 1 query heads share a KV head: their dK/dV
// go to per-head buffers (B,H,Tk,D) first and are summed over the group afterwards.
static void attention_backward(Tape *t, float *dq, float *dk, float *dv, const float *dout, const float *stats,
                               const float *q, const float *k, const float *v, int64_t B, int64_t Tq,
                               int64_t Tk, int H, int KVH, int D, int window) {
    int64_t HD = (int64_t)H * D, KD = (int64_t)KVH * D, G = H / KVH;
    float scale = 1.0f / sqrtf((float)D);
    int nt = omp_get_max_threads();
    int need_ds = dq || dk;
    // per thread: P and dS (Tq,Tk) each
    float *work = tape_scratch(t, SCR_A, (size_t)nt * 2 * Tq * Tk);
    float *dkh = dk && G > 1 ? tape_scratch(t, SCR_B, (size_t)(B * H * Tk * D)) : NULL;
    float *dvh = dv && G > 1 ? tape_scratch(t, SCR_C, (size_t)(B * H * Tk * D)) : NULL;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            float *P = work + (int64_t)omp_get_thread_num() * 2 * Tq * Tk, *dS = P + Tq * Tk;
            const float *Q = q + b * Tq * HD + h * D, *dO = dout + b * Tq * HD + h * D;
            const float *K = k + b * Tk * KD + (h / G) * D, *V = v + b * Tk * KD + (h / G) * D;
            attention_probs(P, (float *)stats + (b * H + h) * Tq * 2, 0, Q, (int)HD, K, (int)KD, Tq, Tk, D, window,
                            scale);
            // where this head's dK, dV go: straight into dk/dv, or into its own buffer
            float *dK = NULL, *dV = NULL;
            int ldk = (int)KD;
            float beta = 1.0f;
            if (G > 1) {
                ldk = D;
                beta = 0.0f;
                if (dk) dK = dkh + (b * H + h) * Tk * D;
                if (dv) dV = dvh + (b * H + h) * Tk * D;
            } else {
                if (dk) dK = dk + b * Tk * KD + h * D;
                if (dv) dV = dv + b * Tk * KD + h * D;
            }
            if (dV)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)Tk, D, (int)Tq, 1.0f, P, (int)Tk, dO,
                            (int)HD, beta, dV, ldk);
            if (!need_ds) continue;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Tq, (int)Tk, D, 1.0f, dO, (int)HD, V,
                        (int)KD, 0.0f, dS, (int)Tk);
            for (int64_t i = 0; i < Tq; i++) {
                const float *pr = P + i * Tk;
                float *dr = dS + i * Tk;
                float dot = 0.0f;
                for (int64_t j = 0; j < Tk; j++) dot += pr[j] * dr[j];
                for (int64_t j = 0; j < Tk; j++) dr[j] = pr[j] * (dr[j] - dot);
            }
            if (dq)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Tq, D, (int)Tk, scale, dS, (int)Tk, K,
                            (int)KD, 1.0f, dq + b * Tq * HD + h * D, (int)HD);
            if (dK)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)Tk, D, (int)Tq, scale, dS, (int)Tk, Q,
                            (int)HD, beta, dK, ldk);
        }
    if (G == 1 || (!dk && !dv)) return;
    // sum the per-head buffers over each group: dk[b,j,kvh*D + d] += Σ_g dkh[b, kvh*G+g, j, d]
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

static void attention_node_backward(Tape *t, const Node *n) {
    Tensor *q = n->in[0], *k = n->in[1], *v = n->in[2];
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
    float *work = tape_scratch(t, SCR_A, (size_t)omp_get_max_threads() * Tq * Tk);
    attention_forward(out->data, stats, work, q->data, k->data, v->data, B, Tq, Tk, H, KVH, D, window);
    if (n) {
        n->in[0] = q;
        n->in[1] = k;
        n->in[2] = v;
        n->saved[0] = stats;
        int64_t d[7] = {B, Tq, Tk, H, KVH, D, window};
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

// ---- SwiGLU ---------------------------------------------------------------------------------

// gate (n), up (n) -> out (n)      out = silu(gate) · up = gate · σ(gate) · up
static void swiglu_forward(float *out, const float *g, const float *u, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

// dout, gate, up (n) -> dgate +=, dup += (NULL = not needed)
//   dgate = dout · up · σ(g)(1 + g(1-σ(g))),  dup = dout · silu(g)
static void swiglu_backward(float *dg, float *du, const float *dout, const float *g, const float *u, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        if (dg) dg[i] += dout[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
        if (du) du[i] += dout[i] * g[i] * s;
    }
}

static void swiglu_node_backward(Tape *t, const Node *n) {
    Tensor *g = n->in[0], *u = n->in[1];
    swiglu_backward(tape_grad(t, g), tape_grad(t, u), n->out->grad, g->data, u->data, g->n);
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
    swiglu_forward(out->data, gate->data, up->data, gate->n);
    return out;
}

Tensor *op_swiglu(Tape *t, Tensor *gate, Tensor *up) {
    double t0 = tape_prof_begin(t, "swiglu");
    Tensor *out = op_swiglu_run(t, gate, up);
    tape_prof_end(t, t0);
    return out;
}

// ---- GeGLU (tanh-approximated gelu) --------------------------------------------------------

#define GELU_K 0.7978845608028654f  // sqrt(2/π)
#define GELU_C 0.044715f

// gate (n), up (n) -> out (n)      out = gelu_tanh(gate) · up
static void geglu_forward(float *out, const float *g, const float *u, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float x = g[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_K * (x + GELU_C * x * x * x))) * u[i];
    }
}

// dout, gate, up (n) -> dgate +=, dup += (NULL = not needed)
//   th = tanh(k(x + c x³)): gelu' = ½(1 + th) + ½ x (1 - th²) k (1 + 3c x²)
static void geglu_backward(float *dg, float *du, const float *dout, const float *g, const float *u, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float x = g[i], th = tanhf(GELU_K * (x + GELU_C * x * x * x));
        if (dg) dg[i] += dout[i] * u[i] * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * GELU_K * (1.0f + 3.0f * GELU_C * x * x));
        if (du) du[i] += dout[i] * 0.5f * x * (1.0f + th);
    }
}

static void geglu_node_backward(Tape *t, const Node *n) {
    Tensor *g = n->in[0], *u = n->in[1];
    geglu_backward(tape_grad(t, g), tape_grad(t, u), n->out->grad, g->data, u->data, g->n);
}

static Tensor *op_geglu_run(Tape *t, Tensor *gate, Tensor *up) {
    Tensor *out = elementwise_pair(t, gate, up, geglu_node_backward, "op_geglu");
    geglu_forward(out->data, gate->data, up->data, gate->n);
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
        float mx = -INFINITY;
        for (int64_t j = 0; j < V; j++) mx = li[j] > mx ? li[j] : mx;
        float sum = 0.0f;
        for (int64_t j = 0; j < V; j++) sum += expf(li[j] - mx);
        lse[i] = mx + logf(sum);
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
        for (int64_t j = 0; j < V; j++) di[j] += expf(li[j] - lse[i]) * k;
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
// Only the K rows with a target take part, in chunks of at most LCE_ROWS rows (xk, their copy,
// and dxk, their gradient, live in tape scratch). The vocabulary is processed in tiles of nv
// rows of w: logits L (Kc,nv) = xk Wtᵀ in tape scratch, never the whole (N,V).
#define LCE_ROWS 2048

// Vocabulary rows per tile: at most ~16 MiB of logits and of converted weights.
static int64_t lce_tile(const Weight *w, int64_t K) {
    int64_t big = K > w->cols ? K : w->cols;
    int64_t tv = ((int64_t)1 << 22) / big;
    tv = tv < 16 ? 16 : tv;
    return tv < w->rows ? tv : w->rows;
}

// x (N,C), rows (K) -> xk (K,C): the kept rows of x
static void gather_rows(float *xk, const float *x, const int *rows, int64_t K, int64_t C) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < K; i++) memcpy(xk + i * C, x + (int64_t)rows[i] * C, (size_t)C * sizeof(float));
}

// xk (K,C), rows [v0, v0+nv) of w -> L (K,nv) = xk · wtᵀ in scratch; *wt: those rows as fp32.
static float *lce_logits(Tape *t, const float *xk, const Weight *w, int64_t v0, int64_t nv, int64_t K, int64_t C,
                         const float **wt) {
    *wt = weight_rows(t, w, v0, nv);
    float *L = tape_scratch(t, SCR_B, (size_t)(K * nv));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)K, (int)nv, (int)C, 1.0f, xk, (int)C, *wt, (int)C, 0.0f,
                L, (int)nv);
    return L;
}

// xk (K,C), w (V,C), tk (K) -> lse (K), tl (K): log Σ_v exp(xk wᵀ) and the target's logit,
// tile by tile with an online log-sum-exp (running max mx, running sum sm).
static void lce_forward(Tape *t, float *lse, float *tl, const float *xk, const Weight *w, const int *tk,
                        int64_t K, int64_t C) {
    int64_t V = w->rows, TV = lce_tile(w, K);
    float *mx = tape_alloc(t, (size_t)K * sizeof(float)), *sm = tape_alloc(t, (size_t)K * sizeof(float));
    for (int64_t i = 0; i < K; i++) {
        mx[i] = -INFINITY;
        sm[i] = 0.0f;
        tl[i] = 0.0f;
    }
    for (int64_t v0 = 0; v0 < V; v0 += TV) {
        int64_t nv = V - v0 < TV ? V - v0 : TV;
        const float *wt;
        const float *L = lce_logits(t, xk, w, v0, nv, K, C, &wt);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < K; i++) {
            const float *row = L + i * nv;
            float m = mx[i];
            for (int64_t j = 0; j < nv; j++) m = row[j] > m ? row[j] : m;
            float s = sm[i] * expf(mx[i] - m);
            for (int64_t j = 0; j < nv; j++) s += expf(row[j] - m);
            sm[i] = s;
            mx[i] = m;
            if (tk[i] >= v0 && tk[i] < v0 + nv) tl[i] = row[tk[i] - v0];
        }
    }
    for (int64_t i = 0; i < K; i++) lse[i] = mx[i] + logf(sm[i]);
}

// dloss, xk (K,C), w (V,C), tk (K), lse (K) -> dxk (K,C) +=
//   dxk += ((softmax - onehot(target)) · dloss/norm) w, one vocabulary tile at a time
static void lce_backward(Tape *t, float *dxk, float k, const float *xk, const Weight *w, const int *tk,
                         const float *lse, int64_t K, int64_t C) {
    int64_t V = w->rows, TV = lce_tile(w, K);
    for (int64_t v0 = 0; v0 < V; v0 += TV) {
        int64_t nv = V - v0 < TV ? V - v0 : TV;
        const float *wt;
        float *L = lce_logits(t, xk, w, v0, nv, K, C, &wt);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < K; i++) {
            float *row = L + i * nv;
            for (int64_t j = 0; j < nv; j++) row[j] = expf(row[j] - lse[i]) * k;
            if (tk[i] >= v0 && tk[i] < v0 + nv) row[tk[i] - v0] -= k;
        }
        // dxk (K,C) += G (K,nv) · wt (nv,C)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)K, (int)C, (int)nv, 1.0f, L, (int)nv, wt, (int)C,
                    1.0f, dxk, (int)C);
    }
}

// Saved: rows (K) then the targets of those rows (K) as ints, lse (K).
static void lce_node_backward(Tape *t, const Node *n) {
    Tensor *x = n->in[0];
    float *dx = tape_grad(t, x);
    if (!dx) return;
    int64_t K = n->d[0], C = n->d[1];
    const int *rows = n->saved[0], *tk = rows + K;
    const float *lse = n->saved[1];
    for (int64_t c0 = 0; c0 < K; c0 += LCE_ROWS) {
        int64_t Kc = K - c0 < LCE_ROWS ? K - c0 : LCE_ROWS;
        float *xk = tape_scratch(t, SCR_A, (size_t)(Kc * C)), *dxk = tape_scratch(t, SCR_C, (size_t)(Kc * C));
        gather_rows(xk, x->data, rows + c0, Kc, C);
        memset(dxk, 0, (size_t)(Kc * C) * sizeof(float));
        lce_backward(t, dxk, n->out->grad[0] / n->f[0], xk, n->w, tk + c0, lse + c0, Kc, C);
        // kept rows are distinct: no two threads touch the same row of dx
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < Kc; i++) {
            float *d = dx + (int64_t)rows[c0 + i] * C;
            const float *s = dxk + i * C;
            for (int64_t c = 0; c < C; c++) d[c] += s[c];
        }
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
    float *lse = tape_alloc(t, (size_t)K * sizeof(float)), *tl = tape_alloc(t, (size_t)K * sizeof(float));
    for (int64_t c0 = 0; c0 < K; c0 += LCE_ROWS) {
        int64_t Kc = K - c0 < LCE_ROWS ? K - c0 : LCE_ROWS;
        float *xk = tape_scratch(t, SCR_A, (size_t)(Kc * C));
        gather_rows(xk, x->data, rows + c0, Kc, C);
        lce_forward(t, lse + c0, tl + c0, xk, w, tk + c0, Kc, C);
    }
    double total = 0.0;  // summed in row order: the same result whatever the thread count
    for (int64_t i = 0; i < K; i++) total += lse[i] - tl[i];
    out->data[0] = (float)(total / norm);
    Node *n = tape_record(t, lce_node_backward, out);
    if (n) {
        n->in[0] = x;
        n->w = w;
        n->saved[0] = rows;
        n->saved[1] = lse;
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
