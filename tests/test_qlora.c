// QLoRA plumbing: NF4 frozen weights inside autograd (op_linear forward and input gradient
// against the dequantized fp32 matrix), the fused single-token NF4 and BF16 kernels against
// dequantize + sgemm, the fused lm_head + cross-entropy against op_linear + op_cross_entropy,
// gradient checkpointing (bit-identical loss and gradients, with dropout, and less arena
// memory), recording-off forwards on the sub-tape, `--quant nf4` loading (storage types,
// peak memory while loading, dequantized save/reload, the --quant-cache file) and the memory
// plan.
// The whole-model comparison with PyTorch on the dequantized weights is the "nf4" variant of
// tests/test_reference.c.
#include <cblas.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/model.h"
#include "quant/quant.h"
#include "tests/testutil.h"

static float *gaussian(int64_t n, float std, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    float *w = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) w[i] = std * rng_normal(&r);
    return w;
}

// max |a - b| / max |b|; +inf when either side holds a NaN or an infinity
static double scaled_err(const float *a, const float *b, int64_t n) {
    double d = 0, m = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return d / m;
}

// Two computations of the same products (N, M) with inner dimension K (tests/testutil.h):
// max over elements of |a - b| / tu_sum_tol(K, Σ_k |terms|), abs_sum from tu_abs_matmul. <= 1 passes.
static double sum_err(const float *a, const float *b, double *abs_sum, int64_t n, int64_t K) {
    double r = tu_sum_err(a, b, abs_sum, (long)n, (double)K);
    free(abs_sum);
    return r;
}

// An NF4 Weight of a Gaussian (rows, cols) matrix, and the dequantized fp32 copy.
static Weight nf4_weight(int64_t rows, int64_t cols, uint64_t seed, float **deq) {
    float *w = gaussian(rows * cols, 0.05f, seed);
    Nf4Matrix *q = malloc(sizeof *q);
    Err e;
    if (nf4_quantize(w, rows, cols, "test", q, &e)) {
        printf("quantize: %s\n", e.msg);
        exit(1);
    }
    *deq = malloc((size_t)(rows * cols) * sizeof(float));
    nf4_dequant_rows(q, 0, rows, *deq);
    free(w);
    return (Weight){WT_NF4, rows, cols, q, 1, "nf4 test"};
}

// y = x wᵀ with w fp32 (rows, cols), by one sgemm.
static void ref_xwt(const float *x, int64_t N, const float *w, int64_t OC, int64_t C, float *y) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)C, 1.0f, x, (int)C, w, (int)C, 0.0f,
                y, (int)OC);
}

static Tensor *param(Tape *t, int64_t N, int64_t C, uint64_t seed) {
    (void)t;
    int64_t shape[2] = {N, C};
    Err e;
    Tensor *x = tensor_new_param(2, shape, 1, "x", &e);
    float *g = gaussian(N * C, 1.0f, seed);
    memcpy(x->data, g, (size_t)(N * C) * sizeof(float));
    free(g);
    return x;
}

static void test_nf4_weight_ops(void) {
    char name[200];
    Err e;
    Tape *t = tape_new(&e);
    // (96, 128): whole blocks per row; (40, 100): blocks straddle rows
    int64_t shapes[2][2] = {{96, 128}, {40, 100}};
    for (int s = 0; s < 2; s++) {
        int64_t OC = shapes[s][0], C = shapes[s][1], N = 37;
        float *deq;
        Weight w = nf4_weight(OC, C, 10 + s, &deq);
        Weight wf = {WT_F32, OC, C, deq, 0, "deq"};
        float *row = malloc((size_t)C * sizeof(float));
        int same = 1;
        for (int64_t r = 0; r < OC; r++) {
            weight_row_f32(&w, r, row);
            same &= !memcmp(row, deq + r * C, (size_t)C * sizeof(float));
        }
        snprintf(name, sizeof name, "weight_row_f32 of NF4 (%lld x %lld) = dequantized rows", (long long)OC,
                 (long long)C);
        CHECK(name, same, "a row differs");
        CHECK("weight_bytes of NF4 = codes + absmax codes + scales",
              weight_bytes(&w) == nf4_bytes(w.data) + sizeof(Nf4Matrix) && weight_bytes(&w) < (size_t)(OC * C),
              "%zu", weight_bytes(&w));
        // forward and input gradient through the NF4 weight vs the dequantized fp32 weight
        Tensor *x = param(t, N, C, 20 + s), *x2 = param(t, N, C, 20 + s);
        float *dy = gaussian(N * OC, 1.0f, 30 + s);
        tape_reset(t);
        Tensor *y = op_linear(t, x, &w), *y2 = op_linear(t, x2, &wf);
        double ef = sum_err(y->data, y2->data, tu_abs_matmul(x2->data, C, 1, deq, 1, C, N, C, OC, NULL), N * OC, C);
        // the input gradient of sum(y * dy): dx += dy W (onto a zero gradient)
        weight_matmul_dyw(t, &w, dy, N, x->grad);
        weight_matmul_dyw(t, &wf, dy, N, x2->grad);
        double eb = sum_err(x->grad, x2->grad, tu_abs_matmul(dy, OC, 1, deq, C, 1, N, OC, C, NULL), N * C, OC + 1);
        snprintf(name, sizeof name, "op_linear over NF4 (%lldx%lld, N=%lld) = over dequantized fp32: fwd %.2g, dx %.2g "
                 "of the tolerance", (long long)OC, (long long)C, (long long)N, ef, eb);
        CHECK(name, ef <= 1 && eb <= 1, "tolerance %g·sqrt(K)·u·Σ|terms|", TU_SUM_C);
        tensor_free(x);
        tensor_free(x2);
        free(dy);
        free(row);
        free(deq);
        weight_free(&w);
    }
    tape_free(t);
}

// The fused single-token kernels against dequantize (or convert) + sgemm.
static void test_gemv(void) {
    char name[200];
    Err e;
    Tape *t = tape_new(&e);
    int64_t shapes[3][2] = {{300, 2048}, {64, 128}, {33, 100}};  // the last: not whole blocks per row
    for (int s = 0; s < 3; s++) {
        int64_t OC = shapes[s][0], C = shapes[s][1];
        float *deq;
        Weight w = nf4_weight(OC, C, 40 + s, &deq);
        double worst = 0;
        for (int64_t N = 1; N <= NF4_GEMV_MAX_N + 1; N++) {
            float *x = gaussian(N * C, 1.0f, 50 + N), *y = malloc((size_t)(N * OC) * sizeof(float)),
                  *yr = malloc((size_t)(N * OC) * sizeof(float));
            weight_matmul_xwt(t, &w, x, N, y);
            ref_xwt(x, N, deq, OC, C, yr);
            worst = tu_worse(worst, sum_err(y, yr, tu_abs_matmul(x, C, 1, deq, 1, C, N, C, OC, NULL), N * OC, C));
            free(x);
            free(y);
            free(yr);
        }
        snprintf(name, sizeof name, "NF4 x Wt for N = 1..%d (%lld x %lld%s) = dequant + sgemm: %.2g of the tolerance",
                 NF4_GEMV_MAX_N + 1, (long long)OC, (long long)C,
                 nf4_gemv_ok(w.data) ? ", fused kernel" : ", tiled path", worst);
        CHECK(name, worst <= 1, "tolerance %g·sqrt(K)·u·Σ|terms|", TU_SUM_C);
        if (s == 0) {
            // the kernel itself, accumulating
            float *x = gaussian(3 * C, 1.0f, 77), *y = gaussian(3 * OC, 1.0f, 78), *yr = malloc((size_t)(3 * OC) * 4);
            float *scratch = malloc((size_t)(3 * C) * sizeof(float));
            memcpy(yr, y, (size_t)(3 * OC) * 4);
            double *abs_sum = tu_abs_matmul(x, C, 1, deq, 1, C, 3, C, OC, y);  // + |y| accumulated into
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 3, (int)OC, (int)C, 1.0f, x, (int)C, deq, (int)C, 1.0f,
                        yr, (int)OC);
            nf4_gemv(x, 3, w.data, y, 1, scratch);
            double err = sum_err(y, yr, abs_sum, 3 * OC, C + 1);
            snprintf(name, sizeof name, "nf4_gemv accumulate (N=3) = y + dequant x Wt: %.2g of the tolerance", err);
            CHECK(name, err <= 1, "tolerance %g·sqrt(K)·u·Σ|terms|", TU_SUM_C);
            free(x), free(y), free(yr), free(scratch);
        }
        free(deq);
        weight_free(&w);
    }
    // BF16: the fused kernel (N <= 4) against the tiled conversion path (N = 5, one row kept)
    int64_t OC = 257, C = 200;
    float *wf = gaussian(OC * C, 0.05f, 90);
    uint16_t *wb = malloc((size_t)(OC * C) * sizeof(uint16_t));
    for (int64_t i = 0; i < OC * C; i++) {
        wb[i] = f32_to_bf16(wf[i]);
        wf[i] = bf16_to_f32(wb[i]);
    }
    Weight w = {WT_BF16, OC, C, wb, 1, "bf16"};
    double worst = 0;
    for (int64_t N = 1; N <= 5; N++) {
        float *x = gaussian(N * C, 1.0f, 91 + N), *y = malloc((size_t)(N * OC) * 4), *yr = malloc((size_t)(N * OC) * 4);
        weight_matmul_xwt(t, &w, x, N, y);
        ref_xwt(x, N, wf, OC, C, yr);
        worst = tu_worse(worst, sum_err(y, yr, tu_abs_matmul(x, C, 1, wf, 1, C, N, C, OC, NULL), N * OC, C));
        free(x), free(y), free(yr);
    }
    snprintf(name, sizeof name, "BF16 x Wt for N = 1..5 = converted + sgemm: %.2g of the tolerance", worst);
    CHECK(name, worst <= 1, "tolerance %g·sqrt(K)·u·Σ|terms|", TU_SUM_C);
    weight_free(&w);
    free(wf);
    tape_free(t);
}

// Tolerances for the fused lm_head + cross-entropy against op_linear + op_cross_entropy, the
// sum rule of tests/testutil.h carried through the steps. A logit z = x·w sums C products: off
// by at most ez_i = tu_sum_tol(C, |x_i| · max_v |w_v|) in row i (Cauchy–Schwarz bounds
// Σ_c |x_c w_c| by the norms). Row i's log-sum-exp - z_target: off by at most
// er_i = 2 ez_i + tu_sum_tol(V, 1) (the sum of V exponentials, all positive: relative)
// + 2u range_i (the shift z - max rounds by u |z - max|; range_i = max - min of the row's
// logits) + 8u (exp, normalization). The loss, Σ of the kept rows' terms (all >= 0) / kept:
// tol_loss = max_i er_i + tu_sum_tol(kept, loss).
// dx_ic = Σ_v g_iv w_vc with g = (softmax - onehot) / kept sums V products, and each g_iv is
// off by (ez_i + er_i) p_iv / kept: tol_dx[ic] = tu_sum_tol(V, S_ic) + (ez_i + er_i) S_ic with
// S = (p + onehot) / kept · |W| (sgemm).
// logits (N, V) from the unfused path, w (V, C) the weight's values in fp32.
static double *fused_ce_tol(const float *x, const float *w, const float *logits, const int *targets, int64_t N,
                            int64_t C, int64_t V, int kept, double loss, double *tol_loss) {
    double wmax = 0;
    float *aw = malloc((size_t)(V * C) * sizeof(float));
    for (int64_t v = 0; v < V; v++) {
        double s = 0;
        for (int64_t c = 0; c < C; c++) {
            s += (double)w[v * C + c] * w[v * C + c];
            aw[v * C + c] = fabsf(w[v * C + c]);
        }
        wmax = fmax(wmax, sqrt(s));
    }
    double ermax = 0;
    double *er = calloc((size_t)N, sizeof(double)), *ez = calloc((size_t)N, sizeof(double));
    float *g = calloc((size_t)(N * V), sizeof(float)), *s = malloc((size_t)(N * C) * sizeof(float));
    for (int64_t i = 0; i < N; i++) {
        if (targets[i] < 0) continue;
        const float *z = logits + i * V;
        double mx = -INFINITY, mn = INFINITY, sum = 0, xn = 0;
        for (int64_t v = 0; v < V; v++) mx = fmax(mx, z[v]), mn = fmin(mn, z[v]);
        for (int64_t c = 0; c < C; c++) xn += (double)x[i * C + c] * x[i * C + c];
        ez[i] = tu_sum_tol((double)C, sqrt(xn) * wmax);
        er[i] = 2 * ez[i] + tu_sum_tol((double)V, 1.0) + 2 * TU_U32 * (mx - mn) + 8 * TU_U32;
        ermax = fmax(ermax, er[i]);
        for (int64_t v = 0; v < V; v++) sum += exp((double)z[v] - mx);
        for (int64_t v = 0; v < V; v++) g[i * V + v] = (float)(exp((double)z[v] - mx) / sum / kept);
        g[i * V + targets[i]] += 1.0f / (float)kept;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)V, 1.0f, g, (int)V, aw, (int)C, 0.0f, s,
                (int)C);
    *tol_loss = ermax + tu_sum_tol((double)kept, fabs(loss));
    double *tol = malloc((size_t)(N * C) * sizeof(double));
    // S in fp32 through sgemm: at most ~1e-6 relative low, which the factor 1.01 more than covers
    for (int64_t i = 0; i < N * C; i++)
        tol[i] = 1.01 * (tu_sum_tol((double)V, s[i]) + (ez[i / C] + er[i / C]) * s[i]);
    free(aw), free(g), free(s), free(er), free(ez);
    return tol;
}

// The fused lm_head + cross-entropy against the two unfused ops, for every storage type: one
// shape with several vocabulary tiles, one with several chunks of rows.
static void fused_ce_case(Tape *t, int64_t N, int64_t C, int64_t V, uint64_t seed) {
    char name[240];
    float *deq;
    Weight wn = nf4_weight(V, C, seed, &deq);
    float *wf = gaussian(V * C, 0.05f, seed + 1);
    uint16_t *wb = malloc((size_t)(V * C) * sizeof(uint16_t));
    float *wbf = malloc((size_t)(V * C) * sizeof(float));  // the bf16 weight's values
    for (int64_t i = 0; i < V * C; i++) wb[i] = f32_to_bf16(wf[i]), wbf[i] = bf16_to_f32(wb[i]);
    Weight ws[3] = {{WT_F32, V, C, wf, 0, "f32"}, {WT_BF16, V, C, wb, 0, "bf16"}, wn};
    const float *wv[3] = {wf, wbf, deq};
    int *targets = malloc((size_t)N * sizeof(int));
    Rng r;
    rng_seed(&r, seed + 2);
    for (int64_t i = 0; i < N; i++) targets[i] = rng_uniform(&r) < 0.3f ? -1 : (int)rng_below(&r, (uint32_t)V);
    targets[5] = (int)V - 1;  // the last vocabulary row of the last tile
    targets[6] = 0;
    int kept = 0;
    for (int64_t i = 0; i < N; i++) kept += targets[i] >= 0;
    for (int k = 0; k < 3; k++) {
        Tensor *x = param(t, N, C, seed + 3), *x2 = param(t, N, C, seed + 3);
        tape_reset(t);
        Tensor *l1 = op_linear_cross_entropy(t, x, &ws[k], targets, (float)kept);
        tape_backward(t, l1);
        tape_reset(t);
        Tensor *logits = op_linear(t, x2, &ws[k]);
        Tensor *l2 = op_cross_entropy(t, logits, targets, (float)kept);
        tape_backward(t, l2);
        double tol_loss;
        double *tol_dx = fused_ce_tol(x2->data, wv[k], logits->data, targets, N, C, V, kept, l2->data[0], &tol_loss);
        double el = tu_err_ratio(l1->data[0], l2->data[0], tol_loss), eg = 0;
        for (int64_t i = 0; i < N * C; i++) eg = tu_worse(eg, tu_err_ratio(x->grad[i], x2->grad[i], tol_dx[i]));
        free(tol_dx);
        int untouched = 1;  // rows without a target get no gradient
        for (int64_t i = 0; i < N; i++)
            if (targets[i] < 0)
                for (int64_t c = 0; c < C; c++) untouched &= x->grad[i * C + c] == 0.0f;
        snprintf(name, sizeof name, "fused lm_head+CE (%s, %lld rows x %lld, V %lld) = op_linear+op_cross_entropy: "
                 "loss %.2g, dx %.2g of the tolerance", weight_type_name(ws[k].type), (long long)N, (long long)C,
                 (long long)V, el, eg);
        CHECK(name, el <= 1 && eg <= 1 && untouched, "tolerances derived from C, V and kept rows (loss %.3g); ignored "
              "rows untouched %d", tol_loss, untouched);
        tensor_free(x);
        tensor_free(x2);
    }
    free(targets);
    free(wf);
    free(wb);
    free(wbf);
    free(deq);
    weight_free(&wn);
}

static void test_fused_ce(void) {
    Err e;
    Tape *t = tape_new(&e);
    fused_ce_case(t, 600, 256, 20000, 60);  // 3 vocabulary tiles
    fused_ce_case(t, 4500, 64, 3000, 70);   // 3 chunks of rows
    // no kept target: loss 0, nothing to propagate
    const int64_t N = 50, C = 32, V = 40;
    float *wf = gaussian(V * C, 0.05f, 80);
    Weight w = {WT_F32, V, C, wf, 0, "f32"};
    int none[50];
    for (int64_t i = 0; i < N; i++) none[i] = -1;
    Tensor *x = param(t, N, C, 64);
    tape_reset(t);
    Tensor *l0 = op_linear_cross_entropy(t, x, &w, none, 1.0f);
    tape_backward(t, l0);
    int zero = 1;
    for (int64_t i = 0; i < N * C; i++) zero &= x->grad[i] == 0.0f;
    CHECK("fused CE with every target ignored: loss 0, no gradient", l0->data[0] == 0.0f && zero, "loss %g",
          l0->data[0]);
    tensor_free(x);
    free(wf);
    tape_free(t);
}

// ---- whole models ------------------------------------------------------------------------------

static Model *load_q(const char *dir, QuantType q) {
    ModelLoadOptions o;
    model_load_options_default(&o);
    o.quant = q;
    Err e;
    Model *m = model_load_ex(dir, &o, &e);
    if (!m) printf("load %s: %s\n", dir, e.msg);
    return m;
}

// A LoRA adapter with both A and B non-zero (B is zero at init: no gradient for A then).
static LoraAdapter *adapter(const Model *m, float dropout) {
    Err e;
    LoraAdapter *a = lora_new(m, 4, 8, (1u << LT_COUNT) - 1, dropout, 0, 7, &e);
    Rng r;
    rng_seed(&r, 8);
    for (int i = 0; i < a->n_layers * LT_COUNT; i++)
        if (a->B[i])
            for (int64_t k = 0; k < a->B[i]->n; k++) a->B[i]->data[k] = 0.05f * rng_normal(&r);
    return a;
}

static void zero_grads(LoraAdapter *a) {
    for (int i = 0; i < a->n_layers * LT_COUNT; i++) {
        tensor_zero_grad(a->A[i]);
        tensor_zero_grad(a->B[i]);
    }
}

// Concatenated A and B gradients (malloc'd), *n their count.
static float *all_grads(const LoraAdapter *a, int64_t *n) {
    int64_t total = 0;
    for (int i = 0; i < a->n_layers * LT_COUNT; i++)
        if (a->A[i]) total += a->A[i]->n + a->B[i]->n;
    float *g = malloc((size_t)total * sizeof(float)), *p = g;
    for (int i = 0; i < a->n_layers * LT_COUNT; i++)
        if (a->A[i]) {
            memcpy(p, a->A[i]->grad, (size_t)a->A[i]->n * 4);
            p += a->A[i]->n;
            memcpy(p, a->B[i]->grad, (size_t)a->B[i]->n * 4);
            p += a->B[i]->n;
        }
    *n = total;
    return g;
}

// One training-mode loss + backward; returns the loss, gradients into *grads.
static float step(Tape *t, const Model *m, LoraAdapter *a, const int *ids, const int *tg, int B, int T, int ckpt,
                  float **grads, int64_t *ng, size_t *arena) {
    zero_grads(a);
    tape_seed(t, 99);
    tape_set_training(t, 1);
    tape_set_recording(t, 1);
    tape_set_checkpointing(t, ckpt);
    tape_reset(t);
    Tensor *loss = model_loss(t, m, a, ids, tg, B, T, 100.0f);
    float l = loss->data[0];
    tape_backward(t, loss);
    tape_reset(t);
    *grads = all_grads(a, ng);
    if (arena) *arena = tape_arena_bytes(t);
    return l;
}

static void batch(int B, int T, int V, int **ids, int **tg) {
    Rng r;
    rng_seed(&r, 5);
    *ids = malloc(sizeof(int) * (size_t)(B * T));
    *tg = malloc(sizeof(int) * (size_t)(B * T));
    for (int i = 0; i < B * T; i++) (*ids)[i] = (int)rng_below(&r, (uint32_t)V);
    for (int i = 0; i < B * T; i++) (*tg)[i] = (i % T) + 1 < T && i % 5 != 0 ? (*ids)[i + 1] : -1;
}

static void test_checkpointing(const char *dir) {
    char name[240];
    Err e;
    const int B = 2, T = 48;
    for (int q = 0; q < 2; q++) {
        Model *m = load_q(dir, q ? QUANT_NF4 : QUANT_NONE);
        if (!m) {
            CHECK("checkpointing: load", 0, "see above");
            return;
        }
        LoraAdapter *a = adapter(m, 0.1f);
        int *ids, *tg;
        batch(B, T, m->cfg.vocab_size, &ids, &tg);
        Tape *t1 = tape_new(&e), *t2 = tape_new(&e);
        float *g_off, *g_on, *g_on2;
        int64_t n1, n2, n3;
        size_t arena_off, arena_on;
        float l_off = step(t1, m, a, ids, tg, B, T, 0, &g_off, &n1, &arena_off);
        uint64_t rng_off = tape_rng(t1)->s;
        float l_on = step(t2, m, a, ids, tg, B, T, 1, &g_on, &n2, &arena_on);
        uint64_t rng_on = tape_rng(t2)->s;
        float l_on2 = step(t2, m, a, ids, tg, B, T, 1, &g_on2, &n3, NULL);  // the same tape again
        int nonzero = 0;
        for (int64_t i = 0; i < n1; i++) nonzero += g_off[i] != 0.0f;
        snprintf(name, sizeof name,
                 "%s: loss and %lld LoRA gradients bit-identical with and without checkpointing (dropout 0.1)",
                 q ? "nf4" : "fp32", (long long)n1);
        CHECK(name, n1 == n2 && l_off == l_on && !memcmp(g_off, g_on, (size_t)n1 * 4) && rng_off == rng_on &&
                        nonzero > n1 / 2,
              "loss %.9g vs %.9g, grads %s, rng %s, %d nonzero", l_off, l_on,
              n1 == n2 && !memcmp(g_off, g_on, (size_t)n1 * 4) ? "same" : "differ", rng_off == rng_on ? "same" : "differs",
              nonzero);
        snprintf(name, sizeof name, "%s: a second checkpointed step on the same tape repeats it bit for bit",
                 q ? "nf4" : "fp32");
        CHECK(name, l_on2 == l_on && !memcmp(g_on, g_on2, (size_t)n1 * 4), "differs");
        // checkpointed blocks that keep their matmul outputs for the re-run (all of them, then
        // a budget for one block only): the same loss and gradients, bit for bit
        for (int part = 0; part < 2; part++) {
            Tape *t3 = tape_new(&e);
            tape_set_recompute_cache(t3, part ? (size_t)200000 : (size_t)1 << 30);  // a block keeps ~181 KB
            float *g_c;
            int64_t nc;
            size_t arena_c;
            float l_c = step(t3, m, a, ids, tg, B, T, 1, &g_c, &nc, &arena_c);
            snprintf(name, sizeof name,
                     "%s: checkpointing with %s blocks' matmul outputs kept: bit-identical (arena %.2f MiB)",
                     q ? "nf4" : "fp32", part ? "one of the" : "all", arena_c / 1048576.0);
            CHECK(name, nc == n1 && l_c == l_off && !memcmp(g_c, g_off, (size_t)n1 * 4) && arena_c > arena_on &&
                            (part || arena_c < arena_off),
                  "loss %.9g vs %.9g, grads %s, arena %zu (ckpt %zu, full %zu)", l_c, l_off,
                  nc == n1 && !memcmp(g_c, g_off, (size_t)n1 * 4) ? "same" : "differ", arena_c, arena_on, arena_off);
            free(g_c);
            tape_free(t3);
        }
        snprintf(name, sizeof name, "%s: checkpointing needs less arena (%.2f MiB vs %.2f MiB without)",
                 q ? "nf4" : "fp32", arena_on / 1048576.0, arena_off / 1048576.0);
        CHECK(name, arena_on < arena_off * 0.6, "not less enough");
        // recording off (evaluation) runs blocks on the sub-tape: the same logits as recording
        tape_set_training(t1, 0);
        tape_set_checkpointing(t1, 0);
        tape_reset(t1);
        tape_set_recording(t1, 1);
        Tensor *lr = model_forward(t1, m, a, ids, B, T, NULL, 0);
        int64_t nl = lr->n;
        float *keep = malloc((size_t)nl * 4);
        memcpy(keep, lr->data, (size_t)nl * 4);
        tape_reset(t1);
        tape_set_recording(t1, 0);
        Tensor *lo = model_forward(t1, m, a, ids, B, T, NULL, 0);
        snprintf(name, sizeof name, "%s: logits with recording off (blocks on the sub-tape) = recording on", q ? "nf4" : "fp32");
        CHECK(name, lo->n == nl && !memcmp(keep, lo->data, (size_t)nl * 4), "differ");
        // the loss with recording off equals the recorded one
        tape_reset(t1);
        float le = model_loss(t1, m, a, ids, tg, B, T, 100.0f)->data[0];
        tape_reset(t1);
        tape_set_recording(t1, 1);
        float lrec = model_loss(t1, m, a, ids, tg, B, T, 100.0f)->data[0];
        snprintf(name, sizeof name, "%s: evaluation loss (recording off) = recorded loss", q ? "nf4" : "fp32");
        CHECK(name, le == lrec, "%.9g vs %.9g", le, lrec);
        tape_reset(t1);
        // the memory plan covers the measured arena of a checkpointed step, and says more without
        MemoryPlan p;
        model_memory_plan(m, a, 2, B, T, &p);
        snprintf(name, sizeof name, "%s: memory plan activations %.2f MiB (ckpt) >= arena %.2f MiB; %.2f MiB without",
                 q ? "nf4" : "fp32", p.act_checkpointed / 1048576.0, arena_on / 1048576.0, p.act_full / 1048576.0);
        CHECK(name, p.act_checkpointed >= arena_on && p.act_checkpointed < 4 * arena_on + (64u << 20) &&
                        p.act_full > p.act_checkpointed && p.act_full >= arena_off,
              "estimate off");
        free(keep);
        free(g_off), free(g_on), free(g_on2);
        free(ids), free(tg);
        tape_free(t1);
        tape_free(t2);
        lora_free(a);
        model_free(m);
    }
}

// The tiled GEMM variants under the frozen-base matmuls (and the lm_head), every one this CPU
// runs, against the OpenBLAS fp32 path: a bf16 variant stays close (bf16 keeps 8 significant
// bits) but not identical (the path is really taken); an fp32 variant agrees to fp32 rounding:
// within (K + 2)·2^-24 per GEMM (K the largest inner dimension), times the 4L + 2 GEMMs of a
// forward and backward in a chain, times 16 for the network's amplification — a wrong term
// would be off by O(1). Checkpointing stays bit-exact under every variant.
static void test_bf16_compute(const char *dir) {
    char name[300];
    Err e;
    const int B = 2, T = 48;
    for (int ki = 0; ki < gemm_kernel_count(); ki++) {
        const GemmKernel *g = gemm_kernel_at(ki);
        const char *kn = gemm_kernel_name(g);
        if (!gemm_kernel_usable(g)) {
            snprintf(name, sizeof name, "tiled gemm %s", kn);
            SKIP(name, "this CPU lacks %s (or LORA_ISA caps it)", gemm_kernel_isa(g));
            continue;
        }
        for (int q = 0; q < 2; q++) {
            Model *m = load_q(dir, q ? QUANT_NF4 : QUANT_NONE);
            if (!m) {
                CHECK("tiled gemm: load", 0, "see above");
                return;
            }
            LoraAdapter *a = adapter(m, 0.0f);
            int *ids, *tg;
            batch(B, T, m->cfg.vocab_size, &ids, &tg);
            Tape *t = tape_new(&e);
            float *g32, *g16, *g16c;
            int64_t n1, n2, n3;
            float l32 = step(t, m, a, ids, tg, B, T, 0, &g32, &n1, NULL);
            tape_set_gemm(t, g);
            float l16 = step(t, m, a, ids, tg, B, T, 0, &g16, &n2, NULL);
            float l16c = step(t, m, a, ids, tg, B, T, 1, &g16c, &n3, NULL);
            double ge = scaled_err(g16, g32, n1), le = fabs(l16 - l32) / fabs(l32);
            int64_t K = m->cfg.hidden_dim > m->cfg.dim ? m->cfg.hidden_dim : m->cfg.dim;
            double tol32 = (double)(K + 2) * 5.9604644775390625e-8 * (4.0 * m->cfg.n_layers + 2.0) * 16.0;
            snprintf(name, sizeof name, "%s, %s: close to OpenBLAS fp32: loss %.6f vs %.6f, LoRA grads err %.2e", q ? "nf4" : "fp32",
                     kn, l16, l32, ge);
            if (gemm_kernel_bf16(g))
                CHECK(name, tape_compute_bf16(t) && n1 == n2 && le < 2e-3 && ge < 3e-2 && ge > 0,
                      "too far (or identical: the bf16 path was not taken)");
            else
                CHECK(name, tape_gemm(t) == g && !tape_compute_bf16(t) && n1 == n2 && le <= tol32 && ge <= tol32,
                      "over %.2e", tol32);
            snprintf(name, sizeof name, "%s, %s: checkpointing bit-identical", q ? "nf4" : "fp32", kn);
            CHECK(name, n3 == n2 && l16c == l16 && !memcmp(g16, g16c, (size_t)n2 * 4), "differs");
            free(g32), free(g16), free(g16c), free(ids), free(tg);
            tape_free(t);
            lora_free(a);
            model_free(m);
        }
    }
}

static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') v = atol(line + n + 1);
    if (f) fclose(f);
    return v;
}

static void test_load(const char *dir, const char *big) {
    char name[240], sdir[700];
    Err e;
    Model *m = load_q(dir, QUANT_NF4), *f = load_q(dir, QUANT_NONE);
    if (!m || !f) {
        CHECK("load nf4", 0, "see above");
        return;
    }
    int nf4 = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int tg = 0; tg < LT_COUNT; tg++) nf4 += m->layers[l].w[tg].type == WT_NF4;
    CHECK("--quant nf4: every linear weight NF4, embeddings and lm_head bf16, norms fp32",
          nf4 == m->cfg.n_layers * LT_COUNT && m->emb.type == WT_BF16 && !m->tok_emb &&
              m->lm_head.type == WT_BF16 && m->quant == QUANT_NF4 && m->final_norm->n == m->cfg.dim,
          "%d NF4", nf4);
    CHECK("--quant none: fp32 throughout", f->layers[0].w[0].type == WT_F32 && f->emb.type == WT_F32 &&
                                               f->tok_emb && f->emb.data == f->tok_emb->data && f->quant == QUANT_NONE,
          "types");
    // the NF4 model saved (dequantized) and reloaded unquantized computes the same logits
    snprintf(sdir, sizeof sdir, "%s_saved", dir);
    int rc = model_save_hf(m, sdir, &e);
    Model *r = rc ? NULL : load_q(sdir, QUANT_NONE);
    int *ids, *tg;
    batch(1, 16, m->cfg.vocab_size, &ids, &tg);
    double err = INFINITY;
    if (r) {
        Tape *t = tape_new(&e);
        tape_set_recording(t, 0);
        Tensor *a = model_forward(t, m, NULL, ids, 1, 16, NULL, 0);
        int64_t n = a->n;
        float *keep = malloc((size_t)n * 4);
        memcpy(keep, a->data, (size_t)n * 4);
        tape_reset(t);
        Tensor *b = model_forward(t, r, NULL, ids, 1, 16, NULL, 0);
        err = b->n == n ? scaled_err(b->data, keep, n) : INFINITY;
        free(keep);
        tape_free(t);
    }
    snprintf(name, sizeof name, "NF4 model saved dequantized and reloaded fp32: same logits (%.1e)", err);
    CHECK(name, err < 1e-5, "rc %d %s", rc, e.msg);
    model_free(r);
    free(ids), free(tg);
    model_free(m);
    model_free(f);

    // loading quantizes tensor by tensor: the peak grows by about the NF4 model, not the fp32
    // file. Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
    FILE *cr = fopen("/proc/self/clear_refs", "w");
    int reset = cr && fputs("5", cr) >= 0;
    if (cr && fclose(cr)) reset = 0;
    long hwm0 = status_kb("VmHWM"), rss0 = status_kb("VmRSS");
    if (!reset || hwm0 < 0 || hwm0 > rss0 + 1024) {
        SKIP("nf4 load peak memory", "cannot reset the peak RSS (/proc/self/clear_refs)");
        return;
    }
    Model *b = load_q(big, QUANT_NF4);
    long hwm1 = status_kb("VmHWM");
    if (!b) {
        CHECK("load the bigger model", 0, "see above");
        return;
    }
    double fp32_mib = 0, held_mib = 0;
    for (int l = 0; l < b->cfg.n_layers; l++)
        for (int tg = 0; tg < LT_COUNT; tg++) {
            fp32_mib += (double)(b->layers[l].w[tg].rows * b->layers[l].w[tg].cols) * 4 / 1048576.0;
            held_mib += weight_bytes(&b->layers[l].w[tg]) / 1048576.0;
        }
    fp32_mib += (double)b->cfg.vocab_size * b->cfg.dim * 4 / 1048576.0;
    held_mib += weight_bytes(&b->emb) / 1048576.0;
    double grew = (hwm1 - hwm0) / 1024.0;
    snprintf(name, sizeof name, "nf4 load of a %.0f MiB fp32 model holds %.1f MiB; peak grew %.1f MiB", fp32_mib, held_mib,
             grew);
    CHECK(name, grew < 0.5 * fp32_mib, "the loader seems to hold the fp32 weights");
    model_free(b);
}

static int64_t mtime_ns(const char *path) {
    struct stat sb;
    return stat(path, &sb) ? -1 : (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
}

// Logits of m on a fixed batch (malloc'd, *n values).
static float *logits_of(const Model *m, int64_t *n) {
    Err e;
    Tape *t = tape_new(&e);
    tape_set_recording(t, 0);
    int *ids, *tg;
    batch(1, 12, m->cfg.vocab_size, &ids, &tg);
    Tensor *l = model_forward(t, m, NULL, ids, 1, 12, NULL, 0);
    *n = l->n;
    float *out = malloc((size_t)l->n * 4);
    memcpy(out, l->data, (size_t)l->n * 4);
    tape_free(t);
    free(ids), free(tg);
    return out;
}

// --quant-cache: written on the first load, read on the next (same logits, file untouched),
// rewritten when the source changes or the cache is damaged.
static void test_cache(const char *dir, const char *root) {
    char cache[700], cfg[700], name[200];
    snprintf(cache, sizeof cache, "%s/base.nf4", root);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    ModelLoadOptions o;
    model_load_options_default(&o);
    o.quant = QUANT_NF4;
    o.quant_cache = cache;
    Err e;
    Model *ref = load_q(dir, QUANT_NF4), *a = model_load_ex(dir, &o, &e);
    int64_t t1 = mtime_ns(cache);
    CHECK("quant cache written on the first load", a && t1 > 0, "%s", a ? "no file" : e.msg);
    Model *b = a ? model_load_ex(dir, &o, &e) : NULL;
    int64_t t2 = mtime_ns(cache), n1 = 0, n2 = 0, n3 = 0;
    float *l1 = ref ? logits_of(ref, &n1) : NULL, *l2 = b ? logits_of(b, &n2) : NULL;
    snprintf(name, sizeof name, "quant cache read back: same logits bit for bit, file not rewritten");
    CHECK(name, b && t2 == t1 && l1 && l2 && n1 == n2 && !memcmp(l1, l2, (size_t)n1 * 4) &&
                    b->layers[1].w[LT_DOWN].type == WT_NF4 && b->cfg.n_layers == ref->cfg.n_layers,
          "%s", b ? "differs" : e.msg);
    // a changed source (its config.json touched) makes the cache stale
    struct timespec ts[2] = {{0, UTIME_OMIT}, {(time_t)(t1 / 1000000000) + 5, 0}};
    utimensat(AT_FDCWD, cfg, ts, 0);
    Model *c = model_load_ex(dir, &o, &e);
    int64_t t3 = mtime_ns(cache);
    CHECK("quant cache of another source (modified file) is not used, and rewritten", c && t3 != t2, "mtime %lld",
          (long long)t3);
    // a damaged (truncated) cache is ignored and rewritten
    FILE *f = fopen(cache, "r+b");
    if (f) {
        if (ftruncate(fileno(f), 100000)) {
        }
        fclose(f);
    }
    Model *d = model_load_ex(dir, &o, &e);
    float *l3 = d ? logits_of(d, &n3) : NULL;
    CHECK("damaged quant cache ignored and rewritten", d && l3 && n3 == n1 && !memcmp(l1, l3, (size_t)n1 * 4) &&
                                                       mtime_ns(cache) != t3,
          "%s", d ? "differs" : e.msg);
    free(l1), free(l2), free(l3);
    model_free(ref), model_free(a), model_free(b), model_free(c), model_free(d);
}

int main(void) {
    test_nf4_weight_ops();
    test_gemv();
    test_fused_ce();

    char root[512], dir[600], big[600];
    tu_tmpdir("qlora", root, sizeof root);
    snprintf(dir, sizeof dir, "%s/model", root);
    snprintf(big, sizeof big, "%s/big", root);
    Err e;
    ModelConfig c;
    // head_dim 16, GQA 4/2, FFN 128 (whole NF4 blocks: the fused kernel in decoding)
    model_config_default(&c, 64, 128, 3, 4, 2, 300, 128);
    if (model_write_random(&c, 11, 0.08f, dir, &e)) {
        CHECK("write the test model", 0, "%s", e.msg);
        return tu_exit();
    }
    // a bigger model for the load-memory check, written by a child process so that writing it
    // does not raise this process's peak
    pid_t pid = fork();
    if (pid == 0) {
        ModelConfig cb;
        model_config_default(&cb, 512, 1536, 8, 8, 4, 1000, 128);
        _exit(model_write_random(&cb, 12, 0.02f, big, &e) ? 1 : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK("write the bigger model (child process)", WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
    test_checkpointing(dir);
    test_bf16_compute(dir);
    test_load(dir, big);
    test_cache(dir, root);
    return tu_exit();
}
