// Attention with the bf16 compute dtype (autograd/ops.c: attention_forward_bf16 /
// attention_backward_bf16): output and dq/dk/dv against the fp32 path (itself checked against
// naive double formulas in test_autograd) on the same inputs, over causal, GQA, sliding-window,
// Tq < Tk (KV cache), one decoded query, head sizes 64, 48, 16 and odd; bitwise independence of
// the thread count; recording off = on; fp32 unchanged when the compute dtype is switched back.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd.h"
#include "quant/quant.h"
#include "tests/testutil.h"

static uint64_t rng_state = 12345;

static float rnd(void) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static Tensor *param_rg(int64_t d0, int64_t d1, int64_t d2, float scale, int rg, const char *name) {
    int64_t shape[3] = {d0, d1, d2};
    Err e = {{0}};
    Tensor *t = tensor_new_param(3, shape, rg, name, &e);
    if (!t) {
        fprintf(stderr, "%s\n", e.msg);
        exit(2);
    }
    for (int64_t i = 0; i < t->n; i++) t->data[i] = rnd() * scale;
    return t;
}

static Tensor *param(int64_t d0, int64_t d1, int64_t d2, float scale, const char *name) {
    return param_rg(d0, d1, d2, scale, 1, name);
}

typedef struct {
    int64_t B, Tq, Tk;
    int H, KVH, D, window;
    float qscale;  // magnitude of q (a larger one gives peakier softmax rows)
} Case;

// Results of one run: out (B,Tq,H*D) and the three gradients, copied out of the tape / tensors.
typedef struct {
    float *out, *dq, *dk, *dv;
} Run;

static void run_free(Run *r) {
    free(r->out);
    free(r->dq);
    free(r->dk);
    free(r->dv);
}

static float *copy(const float *x, int64_t n) {
    if (!x) return NULL;  // a frozen input
    float *y = malloc((size_t)n * sizeof(float));
    memcpy(y, x, (size_t)n * sizeof(float));
    return y;
}

// out = attention(q, k, v); L = Σ out · r; backward. Gradients start from zero.
static Run run(Tape *t, const Case *c, Tensor *q, Tensor *k, Tensor *v, float *r, int bf16) {
    Tensor *in[3] = {q, k, v};
    for (int i = 0; i < 3; i++)
        if (in[i]->requires_grad) tensor_zero_grad(in[i]);
    tape_reset(t);
    tape_set_gemm(t, bf16 ? gemm_kernel_find("bf16-avx512") : NULL);
    Tensor *out = op_attention(t, q, k, v, c->B, c->Tq, c->Tk, c->H, c->KVH, c->D, c->window);
    int64_t fshape[2] = {1, out->n};
    Tensor *flat = tape_view(t, out->data, 2, fshape);
    float *g = tape_alloc(t, (size_t)out->n * sizeof(float));
    memset(g, 0, (size_t)out->n * sizeof(float));
    out->grad = g;
    flat->requires_grad = 1;
    flat->grad = g;
    Weight R = {WT_F32, 1, out->n, r, 0, "r"};
    Tensor *L = op_linear(t, flat, &R);  // one row: fp32 whatever the compute dtype
    tape_backward(t, L);
    Run res = {copy(out->data, out->n), copy(q->grad, q->n), copy(k->grad, k->n), copy(v->grad, v->n)};
    tape_reset(t);
    tape_set_gemm(t, NULL);
    return res;
}

// max |got - ref| / max |ref|; +inf when either side holds a NaN or an infinity
static double rel_err(const float *got, const float *ref, int64_t n) {
    double m = 0, d = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(ref[i])) return INFINITY;  // a NaN fails every check
        m = fmax(m, fabs((double)ref[i]));
        d = fmax(d, fabs((double)got[i] - (double)ref[i]));
    }
    return m > 0 ? d / m : d;
}

static int finite_all(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static int same(const Run *a, const Run *b, int64_t nq, int64_t nk) {
    return !memcmp(a->out, b->out, (size_t)nq * sizeof(float)) && !memcmp(a->dq, b->dq, (size_t)nq * sizeof(float)) &&
           !memcmp(a->dk, b->dk, (size_t)nk * sizeof(float)) && !memcmp(a->dv, b->dv, (size_t)nk * sizeof(float));
}

#define TOL 1e-2

static void test_case(Tape *t, const Case *c, int thread_check) {
    int64_t HD = (int64_t)c->H * c->D, KD = (int64_t)c->KVH * c->D;
    int64_t nq = c->B * c->Tq * HD, nk = c->B * c->Tk * KD;
    Tensor *q = param(c->B, c->Tq, HD, c->qscale, "q");
    Tensor *k = param(c->B, c->Tk, KD, 1.0f, "k");
    Tensor *v = param(c->B, c->Tk, KD, 1.0f, "v");
    float *r = malloc((size_t)nq * sizeof(float));
    for (int64_t i = 0; i < nq; i++) r[i] = rnd();
    char name[160];
    snprintf(name, sizeof name, "attention bf16 B=%lld Tq=%lld Tk=%lld H=%d KVH=%d D=%d window=%d", (long long)c->B,
             (long long)c->Tq, (long long)c->Tk, c->H, c->KVH, c->D, c->window);

    Run ref = run(t, c, q, k, v, r, 0);
    Run bf = run(t, c, q, k, v, r, 1);
    double eo = rel_err(bf.out, ref.out, nq), eq = rel_err(bf.dq, ref.dq, nq);
    double ek = rel_err(bf.dk, ref.dk, nk), ev = rel_err(bf.dv, ref.dv, nk);
    int fin = finite_all(bf.out, nq) && finite_all(bf.dq, nq) && finite_all(bf.dk, nk) && finite_all(bf.dv, nk);
    char lab[320];
    snprintf(lab, sizeof lab, "%s vs fp32: out %.2e dq %.2e dk %.2e dv %.2e", name, eo, eq, ek, ev);
    // nonzero: the bf16 kernels ran (bf16 rounding of the operands always shows)
    CHECK(lab, fin && eo < TOL && eq < TOL && ek < TOL && ev < TOL && eo > 0 && eq > 0 && ek > 0 && ev > 0,
          "want 0 < error < %g (finite %d)", TOL, fin);

    // the forward with recording off (checkpointed blocks, eval) gives the recorded forward's output
    tape_reset(t);
    tape_set_gemm(t, gemm_kernel_find("bf16-avx512"));
    tape_set_recording(t, 0);
    Tensor *y = op_attention(t, q, k, v, c->B, c->Tq, c->Tk, c->H, c->KVH, c->D, c->window);
    int off_same = !memcmp(y->data, bf.out, (size_t)nq * sizeof(float));
    tape_set_recording(t, 1);
    tape_set_gemm(t, NULL);
    tape_reset(t);
    snprintf(lab, sizeof lab, "%s recording off = on", name);
    CHECK(lab, off_same, "outputs differ");

    // switching back to fp32 gives the fp32 results bit for bit
    Run ref2 = run(t, c, q, k, v, r, 0);
    snprintf(lab, sizeof lab, "%s fp32 after bf16 unchanged", name);
    CHECK(lab, same(&ref, &ref2, nq, nk), "fp32 results changed");
    run_free(&ref2);

    if (thread_check) {
        int nt = omp_get_max_threads();
        omp_set_num_threads(1);
        Run one = run(t, c, q, k, v, r, 1);
        omp_set_num_threads(nt > 1 ? nt : 2);
        Run two = run(t, c, q, k, v, r, 1);
        omp_set_num_threads(nt);
        snprintf(lab, sizeof lab, "%s 1 thread = %d threads, bitwise", name, nt > 1 ? nt : 2);
        CHECK(lab, same(&one, &two, nq, nk) && same(&one, &bf, nq, nk), "results differ");
        run_free(&one);
        run_free(&two);
    }
    run_free(&ref);
    run_free(&bf);
    free(r);
    tensor_free(q);
    tensor_free(k);
    tensor_free(v);
}

// Only some inputs need a gradient (the backward skips the others' products): the gradients
// that are computed match the fp32 path's as when all three are.
static void test_partial(Tape *t) {
    Case c = {.B = 1, .Tq = 100, .Tk = 100, .H = 4, .KVH = 2, .D = 32, .window = 0, .qscale = 1.0f};
    int64_t HD = (int64_t)c.H * c.D, KD = (int64_t)c.KVH * c.D, nq = c.Tq * HD, nk = c.Tk * KD;
    float *r = malloc((size_t)nq * sizeof(float));
    for (int64_t i = 0; i < nq; i++) r[i] = rnd();
    const char *names[3] = {"q", "k", "v"};
    for (int only = 0; only < 3; only++) {
        Tensor *x[3];
        for (int i = 0; i < 3; i++)
            x[i] = param_rg(1, i ? c.Tk : c.Tq, i ? KD : HD, 1.0f, i == only, names[i]);
        Run ref = run(t, &c, x[0], x[1], x[2], r, 0), bf = run(t, &c, x[0], x[1], x[2], r, 1);
        float *g16[3] = {bf.dq, bf.dk, bf.dv}, *g32[3] = {ref.dq, ref.dk, ref.dv};
        int64_t n = only ? nk : nq;
        double e = g16[only] && g32[only] ? rel_err(g16[only], g32[only], n) : 1.0;
        int others_null = 1;
        for (int i = 0; i < 3; i++)
            if (i != only && g16[i]) others_null = 0;
        char lab[160];
        snprintf(lab, sizeof lab, "attention bf16 with only d/d%s: err %.2e vs fp32", names[only], e);
        CHECK(lab, e > 0 && e < TOL && others_null && finite_all(g16[only], n), "want 0 < error < %g", TOL);
        run_free(&ref);
        run_free(&bf);
        for (int i = 0; i < 3; i++) tensor_free(x[i]);
    }
    free(r);
}

int main(void) {
    if (!op_attention_has_bf16() || !gemm_kernel_find("bf16-avx512") || !gemm_kernel_usable(gemm_kernel_find("bf16-avx512"))) {
        SKIP("attention bf16", "this build or CPU has no AVX-512 BF16 (or LORA_ISA caps it)");
        return tu_exit();
    }
    Err e = {{0}};
    Tape *t = tape_new(&e);
    if (!t) {
        fprintf(stderr, "%s\n", e.msg);
        return 2;
    }
    tape_set_gemm(t, gemm_kernel_find("bf16-avx512"));
    CHECK("attention bf16: compute dtype on", tape_compute_bf16(t), "tape_compute_bf16 reads 0");
    tape_set_gemm(t, NULL);
    Case cases[] = {
        // SmolLM2-like head (G = 3), causal, several blocks of query rows
        {.B = 2, .Tq = 200, .Tk = 200, .H = 6, .KVH = 2, .D = 64, .window = 0, .qscale = 1.0f},
        // peaky softmax rows
        {.B = 1, .Tq = 129, .Tk = 129, .H = 3, .KVH = 1, .D = 64, .window = 0, .qscale = 4.0f},
        // sliding window, D not a multiple of 32
        {.B = 1, .Tq = 150, .Tk = 150, .H = 3, .KVH = 3, .D = 48, .window = 40, .qscale = 1.0f},
        // KV cache: Tq < Tk, D = 16
        {.B = 2, .Tq = 70, .Tk = 133, .H = 4, .KVH = 2, .D = 16, .window = 0, .qscale = 1.0f},
        // KV cache with a sliding window across several blocks, G = 2
        {.B = 1, .Tq = 300, .Tk = 520, .H = 4, .KVH = 2, .D = 64, .window = 100, .qscale = 1.0f},
        // odd head size and odd lengths, window longer than a block
        {.B = 1, .Tq = 67, .Tk = 91, .H = 3, .KVH = 1, .D = 9, .window = 70, .qscale = 1.0f},
        // one decoded query against a cache; the same with a window
        {.B = 1, .Tq = 1, .Tk = 77, .H = 6, .KVH = 2, .D = 64, .window = 0, .qscale = 1.0f},
        {.B = 2, .Tq = 1, .Tk = 300, .H = 2, .KVH = 2, .D = 128, .window = 50, .qscale = 1.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        test_case(t, &cases[i], i == 0 || i == 3 || i == 4 || i == 5);  // thread check: GQA shapes
    test_partial(t);
    tape_free(t);
    return tu_exit();
}
