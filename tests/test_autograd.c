// autograd: every op's backward against central finite differences, forwards against naive
// double-precision references, and the tape's bookkeeping (frozen tensors, reset, recording).
//
// Gradient checks use the scalar L = Σ out · r (r a fixed random projection, so any output
// shape works). Each input element is perturbed by ±eps in fp32 and
// fd = (L(x+eps) - L(x-eps)) / 2eps is compared with the analytic gradient as
//   err = max_i |g_i - fd_i| / max(|g_i|, |fd_i|, 0.05 · max_j |fd_j|)
// which must stay below FD_TOL: elementwise relative, floored at 5% of the largest entry so
// that fp32 rounding of tiny entries does not count. A wrong formula gives err ~ 1.
//
// Forwards and gradients against double references: sums (matmuls, attention, softmax
// normalizations, cross-entropy) within the tolerance tests/testutil.h derives from each sum's
// length K and the absolute values of its terms, tu_sum_tol(K, Σ|terms|) = 4·sqrt(K)·u·Σ|terms|,
// carried through the steps (see lora_tol, attn_naive, ce_tol); elementwise formulas within a
// few ulps of the largest entry. A NaN or an infinity fails every comparison (test_nan_rule).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd.h"
#include "tests/testutil.h"

#define FD_EPS 1e-2f
#define FD_TOL 1e-2

static Rng g_rng;  // test data only

static void fill(float *p, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) p[i] = scale * rng_normal(&g_rng);
}

static Tensor *param(int ndim, int64_t d0, int64_t d1, int64_t d2, int rg, float scale, const char *name) {
    int64_t shape[3] = {d0, d1, d2};
    Err e = {{0}};
    Tensor *t = tensor_new_param(ndim, shape, rg, name, &e);
    if (!t) {
        fprintf(stderr, "%s\n", e.msg);
        exit(2);
    }
    fill(t->data, t->n, scale);
    return t;
}

// ---- finite-difference machinery ----------------------------------------------------------

typedef Tensor *(*Fwd)(Tape *t, void *ctx);

static double project(const Tensor *out, const float *r) {
    double s = 0;
    for (int64_t i = 0; i < out->n; i++) s += (double)out->data[i] * r[i];
    return s;
}

// L = Σ out · r with recording off (forward only); the tape RNG is reseeded so dropout masks
// are the same in every evaluation.
static double eval_loss(Tape *t, Fwd f, void *ctx, const float *r, uint64_t seed) {
    tape_reset(t);
    tape_seed(t, seed);
    int rec = tape_recording(t);
    tape_set_recording(t, 0);
    double L = project(f(t, ctx), r);
    tape_set_recording(t, rec);
    return L;
}

// Forward on the tape, then backward of L = Σ out · r. out is viewed as a (1,n) row `flat`
// sharing its gradient buffer, so L = op_linear(flat, r) is a scalar on the tape.
static Tensor *run_backward(Tape *t, Fwd f, void *ctx, float **r, uint64_t seed) {
    tape_reset(t);
    tape_seed(t, seed);
    Tensor *out = f(t, ctx);
    if (!*r) {
        *r = malloc((size_t)out->n * sizeof(float));
        fill(*r, out->n, 1.0f);
    }
    if (!out->requires_grad) return out;
    float *g = tape_alloc(t, (size_t)out->n * sizeof(float));
    memset(g, 0, (size_t)out->n * sizeof(float));
    out->grad = g;
    int64_t fshape[2] = {1, out->n};
    Tensor *flat = tape_view(t, out->data, 2, fshape);
    flat->requires_grad = 1;
    flat->grad = g;
    Weight R = {WT_F32, 1, out->n, *r, 0, "r"};
    Tensor *L = op_linear(t, flat, &R);
    tape_backward(t, L);
    return out;
}

// max_i |g_i - fd_i| / max(|g_i|, |fd_i|, 0.05 · max_j |fd_j|); +inf when a value on either
// side is a NaN or an infinity (so `err < FD_TOL` fails). *fdmax (when given) gets max |fd|.
static double fd_err(const float *g, const double *fd, int64_t n, double *fdmax) {
    double mx = 0, err = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(g[i]) || !isfinite(fd[i])) err = INFINITY;
        else mx = fmax(mx, fabs(fd[i]));
    }
    if (fdmax) *fdmax = mx;
    for (int64_t i = 0; i < n && err < INFINITY; i++) {
        double d = fabs((double)g[i] - fd[i]), s = fmax(fmax(fabs((double)g[i]), fabs(fd[i])), 0.05 * mx);
        err = tu_worse(err, s > 0 ? d / s : (d > 0 ? INFINITY : 0.0));
    }
    return err;
}

// Checks the gradients of every tensor in xs (NULL-terminated) against finite differences.
static void check_fd(const char *name, Tape *t, Fwd f, void *ctx, Tensor **xs, uint64_t seed) {
    for (int k = 0; xs[k]; k++) tensor_zero_grad(xs[k]);
    float *r = NULL;
    run_backward(t, f, ctx, &r, seed);
    for (int k = 0; xs[k]; k++) {
        Tensor *x = xs[k];
        char label[160];
        snprintf(label, sizeof label, "%s d/d%s", name, x->name);
        if (!x->grad) {
            CHECK(label, 0, "no gradient");
            continue;
        }
        double *fd = malloc((size_t)x->n * sizeof(double));
        for (int64_t i = 0; i < x->n; i++) {
            float x0 = x->data[i];
            x->data[i] = x0 + FD_EPS;
            double lp = eval_loss(t, f, ctx, r, seed);
            x->data[i] = x0 - FD_EPS;
            double lm = eval_loss(t, f, ctx, r, seed);
            x->data[i] = x0;
            fd[i] = (lp - lm) / (2.0 * (double)FD_EPS);
        }
        double fdmax;
        double err = fd_err(x->grad, fd, x->n, &fdmax);
        CHECK(label, err < FD_TOL && fdmax > 0, "max rel err %.3g (max |grad| %.3g)", err, fdmax);
        printf("    %s: max rel err %.2e over %lld elements\n", label, err, (long long)x->n);
        free(fd);
    }
    free(r);
}

// ---- lora_linear ----------------------------------------------------------------------------

typedef struct {
    Tensor *x, *A, *B;
    Weight W;
    float scale, p;
} LinCtx;

static Tensor *lin_fwd(Tape *t, void *c) {
    LinCtx *l = c;
    return op_lora_linear(t, l->x, &l->W, l->A, l->B, l->scale, l->p);
}

// W (OC,C) as a Weight of the given type holding exactly the values of f32 (rounded to bf16
// first for WT_BF16, so both types describe the same matrix).
static Weight make_weight(float *f32, int64_t OC, int64_t C, WeightType type) {
    Weight w = {type, OC, C, NULL, 1, "W"};
    if (type == WT_F32) {
        w.data = malloc((size_t)(OC * C) * sizeof(float));
        memcpy(w.data, f32, (size_t)(OC * C) * sizeof(float));
    } else {
        uint16_t *b = malloc((size_t)(OC * C) * sizeof(uint16_t));
        for (int64_t i = 0; i < OC * C; i++) {
            b[i] = f32_to_bf16(f32[i]);
            f32[i] = bf16_to_f32(b[i]);
        }
        w.data = b;
    }
    return w;
}

// out (M, N) (+)= alpha · |A| |B| in double: A(i,k) = a[i*ai + k*ak], B(k,j) = b[k*bk + j*bj]
static void absmm(double *out, double alpha, const float *a, int64_t ai, int64_t ak, const float *b, int64_t bk,
                  int64_t bj, int64_t M, int64_t K, int64_t N, int acc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += fabs((double)a[i * ai + k * ak]) * fabs((double)b[k * bk + j * bj]);
            out[i * N + j] = (acc ? out[i * N + j] : 0.0) + alpha * s;
        }
}

// Tolerances for y = x Wᵀ + s (x Aᵀ) Bᵀ and, for dy (NULL: forward only), its gradients, each
// element's tu_sum_tol(K, Σ|terms|) (tests/testutil.h) with Σ|terms| the same products taken
// in absolute values (H = |x||A|ᵀ, G = |dy||B|, both sums themselves):
//   y  (N,OC):  |x||W|ᵀ + s H |B|ᵀ     K = C + r + 1
//   dx (N,C):   |dy||W| + s G |A|      K = OC + r + 1
//   dA (r,C):   s Gᵀ |x|               K = OC + N
//   dB (OC,r):  s |dy|ᵀ H              K = C + N
// ddy (NULL: none) is how much the two computations' dy differ: the same products with |ddy|
// in place of |dy| are added as they are (a difference of inputs, not of rounding).
typedef struct {
    double *y, *dx, *dA, *dB;
} LoraTol;

static void lora_tol_free(LoraTol *l) { free(l->y), free(l->dx), free(l->dA), free(l->dB); }

static LoraTol lora_tol(const float *x, const float *W, const float *A, const float *B, float scale, const float *dy,
                        const float *ddy, int64_t N, int64_t C, int64_t OC, int64_t r) {
    LoraTol l = {malloc((size_t)(N * OC) * sizeof(double)), NULL, NULL, NULL};
    float *h = malloc((size_t)(N * r) * sizeof(float));  // |x||A|ᵀ (exact enough for a tolerance)
    double *hd = malloc((size_t)(N * r) * sizeof(double));
    absmm(hd, 1.0, x, C, 1, A, 1, C, N, C, r, 0);
    for (int64_t i = 0; i < N * r; i++) h[i] = (float)hd[i];
    absmm(l.y, 1.0, x, C, 1, W, 1, C, N, C, OC, 0);
    absmm(l.y, scale, h, r, 1, B, 1, r, N, r, OC, 1);
    for (int64_t i = 0; i < N * OC; i++) l.y[i] = tu_sum_tol((double)(C + r + 1), l.y[i]);
    if (dy) {
        l.dx = malloc((size_t)(N * C) * sizeof(double));
        l.dA = malloc((size_t)(r * C) * sizeof(double));
        l.dB = malloc((size_t)(OC * r) * sizeof(double));
        double *sx = malloc((size_t)(N * C) * sizeof(double)), *sa = malloc((size_t)(r * C) * sizeof(double));
        double *sb = malloc((size_t)(OC * r) * sizeof(double));
        float *g = malloc((size_t)(N * r) * sizeof(float));
        for (int pass = 0; pass < 2; pass++) {  // |dy| (tolerance of the sums), then |ddy| (as is)
            const float *d = pass ? ddy : dy;
            if (!d) break;
            absmm(hd, 1.0, d, OC, 1, B, r, 1, N, OC, r, 0);
            for (int64_t i = 0; i < N * r; i++) g[i] = (float)hd[i];
            absmm(sx, 1.0, d, OC, 1, W, C, 1, N, OC, C, 0);
            absmm(sx, scale, g, r, 1, A, C, 1, N, r, C, 1);
            absmm(sa, scale, g, 1, r, x, C, 1, r, N, C, 0);
            absmm(sb, scale, d, 1, OC, h, r, 1, OC, N, r, 0);
            for (int64_t i = 0; i < N * C; i++)
                l.dx[i] = pass ? l.dx[i] + sx[i] : tu_sum_tol((double)(OC + r + 1), sx[i]);
            for (int64_t i = 0; i < r * C; i++) l.dA[i] = pass ? l.dA[i] + sa[i] : tu_sum_tol((double)(OC + N), sa[i]);
            for (int64_t i = 0; i < OC * r; i++) l.dB[i] = pass ? l.dB[i] + sb[i] : tu_sum_tol((double)(C + N), sb[i]);
        }
        free(sx), free(sa), free(sb), free(g);
    }
    free(h), free(hd);
    return l;
}

// max_i |got_i - want_i| / tol_i (pass: <= 1); +inf on a NaN or an infinity on either side
static double tol_err(const float *got, const float *want, const double *tol, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = tu_worse(m, tu_err_ratio(got[i], want[i], tol[i]));
    return m;
}

// the same against a double reference
static double tol_err_d(const float *got, const double *want, const double *tol, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = tu_worse(m, tu_err_ratio(got[i], want[i], tol[i]));
    return m;
}

static void test_lora_linear(Tape *t) {
    const int64_t N = 5, C = 6, OC = 7, r = 3;
    for (int type = WT_F32; type <= WT_BF16; type++) {
        for (int drop = 0; drop <= 1; drop++) {
            LinCtx l;
            l.x = param(2, N, C, 0, 1, 1.0f, "x");
            l.A = param(2, r, C, 0, 1, 0.5f, "A");
            l.B = param(2, OC, r, 0, 1, 0.5f, "B");
            float *wf = malloc((size_t)(OC * C) * sizeof(float));
            fill(wf, OC * C, 0.5f);
            l.W = make_weight(wf, OC, C, (WeightType)type);
            l.scale = 2.0f;
            l.p = drop ? 0.3f : 0.0f;
            tape_set_training(t, drop);
            char name[96];
            snprintf(name, sizeof name, "lora_linear %s%s", type == WT_F32 ? "f32" : "bf16",
                     drop ? " dropout" : "");
            // forward vs a naive reference (no dropout)
            if (!drop) {
                tape_reset(t);
                Tensor *y = lin_fwd(t, &l);
                double *ref = malloc((size_t)(N * OC) * sizeof(double));
                for (int64_t i = 0; i < N; i++)
                    for (int64_t o = 0; o < OC; o++) {
                        double v = 0;
                        for (int64_t c = 0; c < C; c++) v += (double)l.x->data[i * C + c] * wf[o * C + c];
                        for (int64_t k = 0; k < r; k++) {
                            double h = 0;
                            for (int64_t c = 0; c < C; c++)
                                h += (double)l.x->data[i * C + c] * l.A->data[k * C + c];
                            v += l.scale * h * l.B->data[o * r + k];
                        }
                        ref[i * OC + o] = v;
                    }
                LoraTol lt = lora_tol(l.x->data, wf, l.A->data, l.B->data, l.scale, NULL, NULL, N, C, OC, r);
                double err = tol_err_d(y->data, ref, lt.y, N * OC);
                lora_tol_free(&lt);
                free(ref);
                char lab[256];
                snprintf(lab, sizeof lab, "%s forward vs naive: %.2g of the tolerance", name, err);
                CHECK(lab, err <= 1, "tolerance %g·sqrt(C+r+1)·u·Σ|terms|", TU_SUM_C);
            } else {
                // dropout really drops: with p = 0.3 some outputs must differ from the p = 0 ones,
                // and the same seed gives the same result
                tape_reset(t);
                tape_seed(t, 42);
                Tensor *y1 = lin_fwd(t, &l);
                tape_seed(t, 42);
                Tensor *y2 = lin_fwd(t, &l);
                l.p = 0.0f;
                Tensor *y0 = lin_fwd(t, &l);
                l.p = 0.3f;
                char lab[256];
                snprintf(lab, sizeof lab, "%s same seed same mask, differs from no dropout", name);
                CHECK(lab, !memcmp(y1->data, y2->data, N * OC * 4) && memcmp(y1->data, y0->data, N * OC * 4),
                      "masks not reproducible or dropout inactive");
            }
            Tensor *xs[] = {l.x, l.A, l.B, NULL};
            check_fd(name, t, lin_fwd, &l, xs, 7);
            tape_set_training(t, 0);
            tensor_free(l.x);
            tensor_free(l.A);
            tensor_free(l.B);
            weight_free(&l.W);
            free(wf);
        }
    }
}

// bf16 weights span several conversion tiles: results equal the fp32 weight's.
static void test_bf16_tiles(Tape *t) {
    const int64_t N = 3, C = 2048, OC = 1100, r = 4;
    float *wf = malloc((size_t)(OC * C) * sizeof(float));
    fill(wf, OC * C, 0.02f);
    Weight wb = make_weight(wf, OC, C, WT_BF16);  // rounds wf to bf16 values
    Weight w32 = make_weight(wf, OC, C, WT_F32);
    Tensor *x = param(2, N, C, 0, 1, 1.0f, "x");
    Tensor *A = param(2, r, C, 0, 1, 0.02f, "A");
    Tensor *B = param(2, OC, r, 0, 1, 0.1f, "B");
    float *res[2][5];
    for (int k = 0; k < 2; k++) {
        tensor_zero_grad(x);
        tensor_zero_grad(A);
        tensor_zero_grad(B);
        tape_reset(t);
        Tensor *y = op_lora_linear(t, x, k ? &wb : &w32, A, B, 1.5f, 0.0f);
        Tensor *l = op_cross_entropy(t, y, (int[]){1, 1099, 500}, 3.0f);
        tape_backward(t, l);
        float *bufs[5] = {y->data, x->grad, A->grad, B->grad, y->grad};
        int64_t ns[5] = {N * OC, N * C, r * C, OC * r, N * OC};
        for (int j = 0; j < 5; j++) {
            res[k][j] = malloc((size_t)ns[j] * sizeof(float));
            memcpy(res[k][j], bufs[j], (size_t)ns[j] * sizeof(float));
        }
    }
    // both weights hold the same values (wf was rounded to bf16): two computations of the same
    // sums; the gradients' tolerance also carries the difference of the two runs' dy
    float *ddy = malloc((size_t)(N * OC) * sizeof(float));
    for (int64_t i = 0; i < N * OC; i++) ddy[i] = res[1][4][i] - res[0][4][i];
    LoraTol lt = lora_tol(x->data, wf, A->data, B->data, 1.5f, res[0][4], ddy, N, C, OC, r);
    double e0 = tol_err(res[1][0], res[0][0], lt.y, N * OC), e1 = tol_err(res[1][1], res[0][1], lt.dx, N * C);
    double e2 = tol_err(res[1][2], res[0][2], lt.dA, r * C), e3 = tol_err(res[1][3], res[0][3], lt.dB, OC * r);
    lora_tol_free(&lt);
    free(ddy);
    CHECK("lora_linear bf16 multi-tile forward = f32", e0 <= 1, "%.3g of the tolerance %g·sqrt(K)·u·Σ|terms|", e0,
          TU_SUM_C);
    CHECK("lora_linear bf16 multi-tile grads = f32", e1 <= 1 && e2 <= 1 && e3 <= 1,
          "of the tolerance: dx %.3g dA %.3g dB %.3g", e1, e2, e3);
    printf("    bf16 vs f32 weight, errors as fractions of the tolerance: out %.2e dx %.2e dA %.2e dB %.2e\n", e0, e1,
           e2, e3);
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 5; j++) free(res[k][j]);
    tensor_free(x);
    tensor_free(A);
    tensor_free(B);
    weight_free(&wb);
    weight_free(&w32);
    free(wf);
}

// ---- rmsnorm --------------------------------------------------------------------------------

typedef struct {
    Tensor *x, *w;
} NormCtx;

static Tensor *norm_fwd(Tape *t, void *c) {
    NormCtx *n = c;
    return op_rmsnorm(t, n->x, n->w, 1e-5f);
}

static void test_rmsnorm(Tape *t) {
    const int64_t N = 4, C = 8;
    NormCtx n = {param(2, N, C, 0, 1, 1.0f, "x"), param(1, C, 0, 0, 1, 1.0f, "w")};
    for (int64_t i = 0; i < C; i++) n.w->data[i] += 1.0f;
    tape_reset(t);
    Tensor *y = norm_fwd(t, &n);
    // the sum of squares has C terms (all positive: its relative error is tu_sum_tol(C, 1),
    // halved by the square root), then a few more roundings (mean, + eps, sqrt, 1/, two
    // products): relative to each output, tu_sum_tol(C + 4, |y|)
    double err = 0;
    for (int64_t i = 0; i < N; i++) {
        double ss = 0;
        for (int64_t c = 0; c < C; c++) ss += (double)n.x->data[i * C + c] * n.x->data[i * C + c];
        double rs = 1.0 / sqrt(ss / C + 1e-5);
        for (int64_t c = 0; c < C; c++) {
            double ref = n.x->data[i * C + c] * rs * n.w->data[c];
            err = tu_worse(err, tu_err_ratio(y->data[i * C + c], ref, tu_sum_tol((double)(C + 4), fabs(ref))));
        }
    }
    char lab[160];
    snprintf(lab, sizeof lab, "rmsnorm forward vs naive: %.2g of the tolerance", err);
    CHECK(lab, err <= 1, "tolerance %g·sqrt(C+4)·u·|y|", TU_SUM_C);
    Tensor *xs[] = {n.x, n.w, NULL};
    check_fd("rmsnorm", t, norm_fwd, &n, xs, 1);
    tensor_free(n.x);
    tensor_free(n.w);
}

// ---- rope -----------------------------------------------------------------------------------

typedef struct {
    Tensor *x;
    int64_t B, T;
    int H, D, pos0;
    float inv_freq[32];
    RopeStyle style;
} RopeCtx;

static Tensor *rope_fwd(Tape *t, void *c) {
    RopeCtx *r = c;
    return op_rope(t, r->x, r->B, r->T, r->H, r->D, r->pos0, r->inv_freq, r->style);
}

static void test_rope(Tape *t) {
    RopeCtx r = {.B = 2, .T = 3, .H = 2, .D = 8, .pos0 = 5};
    for (int i = 0; i < r.D / 2; i++) r.inv_freq[i] = powf(10000.0f, -2.0f * i / r.D);
    int64_t HD = r.H * r.D, n = r.B * r.T * HD;
    r.x = param(3, r.B, r.T, HD, 1, 1.0f, "x");
    // forward vs the formula (HF rotate_half), in double
    r.style = ROPE_HALF;
    tape_reset(t);
    Tensor *y = rope_fwd(t, &r);
    double err = 0;
    for (int64_t b = 0; b < r.B; b++)
        for (int64_t tt = 0; tt < r.T; tt++)
            for (int h = 0; h < r.H; h++)
                for (int i = 0; i < r.D; i++) {
                    int64_t base = (b * r.T + tt) * HD + h * r.D;
                    int half = r.D / 2, j = i % half;
                    double ang = (double)(r.pos0 + tt) * r.inv_freq[j];
                    double x1 = r.x->data[base + j], x2 = r.x->data[base + j + half];
                    double ref = i < half ? x1 * cos(ang) - x2 * sin(ang) : x2 * cos(ang) + x1 * sin(ang);
                    err = tu_worse(err, tu_err_ratio(y->data[base + i], ref, 1.0));  // = |difference|
                }
    // elementwise (two products and a sum per value, angles < 8 rad): within 1e-5 of x ~ N(0, 1)
    CHECK("rope half forward vs formula", err < 1e-5, "abs err %.3g", err);
    // ROPE_ADJACENT on x with rows (i, i+D/2) moved to (2i, 2i+1) gives the same rotation
    float *xperm = malloc((size_t)n * sizeof(float)), *yhalf = malloc((size_t)n * sizeof(float));
    memcpy(yhalf, y->data, (size_t)n * sizeof(float));
    int half = r.D / 2;
    for (int64_t p = 0; p < n / r.D; p++)
        for (int i = 0; i < half; i++) {
            xperm[p * r.D + 2 * i] = r.x->data[p * r.D + i];
            xperm[p * r.D + 2 * i + 1] = r.x->data[p * r.D + i + half];
        }
    int64_t shape[3] = {r.B, r.T, HD};
    Tensor *xv = tape_view(t, xperm, 3, shape);
    Tensor *ya = op_rope(t, xv, r.B, r.T, r.H, r.D, r.pos0, r.inv_freq, ROPE_ADJACENT);
    double d = 0;
    for (int64_t p = 0; p < n / r.D; p++)
        for (int i = 0; i < half; i++) {
            d = tu_worse(d, tu_err_ratio(ya->data[p * r.D + 2 * i], yhalf[p * r.D + i], 1.0));
            d = tu_worse(d, tu_err_ratio(ya->data[p * r.D + 2 * i + 1], yhalf[p * r.D + i + half], 1.0));
        }
    CHECK("rope adjacent = half on permuted rows", d < 1e-6, "abs diff %.3g", d);
    free(xperm);
    free(yhalf);
    r.style = ROPE_HALF;
    Tensor *xs[] = {r.x, NULL};
    check_fd("rope half pos0=5", t, rope_fwd, &r, xs, 1);
    r.style = ROPE_ADJACENT;
    check_fd("rope adjacent pos0=5", t, rope_fwd, &r, xs, 1);
    tensor_free(r.x);
}

// ---- attention ------------------------------------------------------------------------------

typedef struct {
    Tensor *q, *k, *v;
    int64_t B, Tq, Tk;
    int H, KVH, D, window;
} AttnCtx;

static Tensor *attn_fwd(Tape *t, void *c) {
    AttnCtx *a = c;
    return op_attention(t, a->q, a->k, a->v, a->B, a->Tq, a->Tk, a->H, a->KVH, a->D, a->window);
}

// Naive attention in double: out (B,Tq,H*D); with tol (NULL: not wanted) each output's
// tolerance, the sum rule of tests/testutil.h through the steps. Row i, visible key j:
//   score s_j = q·k_j / sqrt(D) sums D products: off by es_j = tu_sum_tol(D, Σ_d |q_d k_jd|) / sqrt(D)
//     + 2u |s_j| (the scale);
//   p_j = softmax(s)_j, relative error ep = 2 max_j es_j (its own score and the shift all rows
//     share) + tu_sum_tol(n, 1) (the sum of n visible exponentials, all positive) + 2u range
//     (s_j - max rounds by u |s_j - max|; range = max - min of the visible scores) + 10u (exp
//     within 2 ulps, the division, the normalization);
//   out_d = Σ_j p_j v_jd sums n products: tol = tu_sum_tol(n, Σ_j p_j |v_jd|) + ep Σ_j p_j |v_jd|.
// ep (B,H,Tq) (NULL: not wanted) receives each row's ep, for the backward's tolerances.
static void attn_naive(const AttnCtx *a, double *out, double *tol, double *ep_out) {
    int64_t HD = a->H * a->D, KD = a->KVH * a->D;
    double *s = malloc((size_t)a->Tk * sizeof(double)), *es = malloc((size_t)a->Tk * sizeof(double));
    double sc = 1.0 / sqrt((double)a->D);
    for (int64_t b = 0; b < a->B; b++)
        for (int h = 0; h < a->H; h++) {
            int kh = h / (a->H / a->KVH);
            for (int64_t i = 0; i < a->Tq; i++) {
                int64_t qpos = a->Tk - a->Tq + i, nvis = 0;
                double mx = -1e300, mn = 1e300, sum = 0, esmax = 0;
                for (int64_t j = 0; j < a->Tk; j++) {
                    int vis = j <= qpos && (a->window <= 0 || j > qpos - a->window);
                    s[j] = -1e300;
                    if (!vis) continue;
                    double dot = 0, adot = 0;
                    for (int dd = 0; dd < a->D; dd++) {
                        double t = (double)a->q->data[(b * a->Tq + i) * HD + h * a->D + dd] *
                                   a->k->data[(b * a->Tk + j) * KD + kh * a->D + dd];
                        dot += t;
                        adot += fabs(t);
                    }
                    s[j] = dot * sc;
                    es[j] = tu_sum_tol((double)a->D, adot) * sc + 2 * TU_U32 * fabs(s[j]);
                    esmax = fmax(esmax, es[j]);
                    nvis++;
                    if (s[j] > mx) mx = s[j];
                    if (s[j] < mn) mn = s[j];
                }
                for (int64_t j = 0; j < a->Tk; j++) {
                    s[j] = s[j] > -1e299 ? exp(s[j] - mx) : 0.0;
                    sum += s[j];
                }
                double ep = 2 * esmax + tu_sum_tol((double)nvis, 1.0) + 2 * TU_U32 * (mx - mn) + 10 * TU_U32;
                if (ep_out) ep_out[(b * a->H + h) * a->Tq + i] = ep;
                for (int dd = 0; dd < a->D; dd++) {
                    double o = 0, ao = 0;
                    for (int64_t j = 0; j < a->Tk; j++) {
                        double vj = a->v->data[(b * a->Tk + j) * KD + kh * a->D + dd];
                        o += s[j] / sum * vj;
                        ao += s[j] / sum * fabs(vj);
                    }
                    out[(b * a->Tq + i) * HD + h * a->D + dd] = o;
                    if (tol) tol[(b * a->Tq + i) * HD + h * a->D + dd] = tu_sum_tol((double)nvis, ao) + ep * ao;
                }
            }
        }
    free(s);
    free(es);
}

static void test_attention(Tape *t) {
    int windows[2] = {0, 3};
    for (int wi = 0; wi < 2; wi++) {
        AttnCtx a = {.B = 2, .Tq = 3, .Tk = 5, .H = 4, .KVH = 2, .D = 4, .window = windows[wi]};
        int64_t HD = a.H * a.D, KD = a.KVH * a.D;
        a.q = param(3, a.B, a.Tq, HD, 1, 1.0f, "q");
        a.k = param(3, a.B, a.Tk, KD, 1, 1.0f, "k");
        a.v = param(3, a.B, a.Tk, KD, 1, 1.0f, "v");
        char name[96];
        snprintf(name, sizeof name, "attention H=4 KVH=2 Tq=3 Tk=5 window=%d", a.window);
        // forward vs naive, recording on (probabilities saved) and off (scratch rows)
        int64_t no = a.B * a.Tq * HD;
        double *ref = malloc((size_t)no * sizeof(double)), *tol = malloc((size_t)no * sizeof(double));
        attn_naive(&a, ref, tol, NULL);
        tape_reset(t);
        Tensor *y1 = attn_fwd(t, &a);
        tape_set_recording(t, 0);
        Tensor *y2 = attn_fwd(t, &a);
        tape_set_recording(t, 1);
        double err = tol_err_d(y1->data, ref, tol, no);
        char lab[160];
        snprintf(lab, sizeof lab, "%s forward vs naive: %.2g of the tolerance", name, err);
        CHECK(lab, err <= 1, "tolerance derived from D, Tk and the magnitudes (attn_naive)");
        snprintf(lab, sizeof lab, "%s recording off = on", name);
        CHECK(lab, !memcmp(y1->data, y2->data, (size_t)no * sizeof(float)), "outputs differ");
        free(ref);
        free(tol);
        Tensor *xs[] = {a.q, a.k, a.v, NULL};
        check_fd(name, t, attn_fwd, &a, xs, 1);
        tensor_free(a.q);
        tensor_free(a.k);
        tensor_free(a.v);
    }
    // decoding one query at the end of the keys (as with a KV cache) gives the last row of the
    // full causal attention
    AttnCtx a = {.B = 1, .Tq = 6, .Tk = 6, .H = 4, .KVH = 1, .D = 8, .window = 0};
    int64_t HD = a.H * a.D, KD = a.KVH * a.D;
    a.q = param(3, 1, 6, HD, 0, 1.0f, "q");
    a.k = param(3, 1, 6, KD, 0, 1.0f, "k");
    a.v = param(3, 1, 6, KD, 0, 1.0f, "v");
    tape_reset(t);
    Tensor *full = attn_fwd(t, &a);
    int64_t s1[3] = {1, 1, HD};
    Tensor *qlast = tape_view(t, a.q->data + 5 * HD, 3, s1);
    Tensor *one = op_attention(t, qlast, a.k, a.v, 1, 1, 6, a.H, a.KVH, a.D, 0);
    // both within attn_naive's tolerance of the exact row: within twice that of each other
    double *ref = malloc((size_t)(6 * HD) * sizeof(double)), *tol = malloc((size_t)(6 * HD) * sizeof(double));
    attn_naive(&a, ref, tol, NULL);
    for (int64_t i = 0; i < 6 * HD; i++) tol[i] *= 2;
    double e = tol_err(one->data, full->data + 5 * HD, tol + 5 * HD, HD);
    free(ref);
    free(tol);
    char lab[160];
    snprintf(lab, sizeof lab, "attention Tq=1 decode = last row of full: %.2g of the tolerance", e);
    CHECK(lab, e <= 1, "tolerance 2 x attn_naive's");
    tensor_free(a.q);
    tensor_free(a.k);
    tensor_free(a.v);
}

// Naive attention backward in double for dout (B,Tq,H*D): dq (B,Tq,H*D), dk, dv (B,Tk,KVH*D)
// (zeroed here), the textbook formulas over every (query, visible key) pair. With tq, tk, tv
// (all or none) the tolerances, continuing attn_naive's (ep: its rows' relative error of p):
//   dv_jd = Σ_(h,i) p_ij dout_id:    tu_sum_tol(G Tq, Σ p|dout|) + Σ ep_i p_ij |dout_id|
//   dp_ij = dout_i · v_j (D terms):  off by edp_ij = tu_sum_tol(D, Σ_d |dout_id v_jd|)
//   dot_i = Σ_j p_ij dp_ij:          off by edot_i = tu_sum_tol(n, Σ_j p_ij |dp_ij|)
//                                                   + Σ_j p_ij (ep_i |dp_ij| + edp_ij)
//   ds_ij = p_ij (dp_ij - dot_i) / sqrt(D): off by eds_ij = p_ij (ep_i |dp_ij - dot_i| + edp_ij + edot_i
//                                       + 3u |dp_ij - dot_i|) / sqrt(D)
//   dq_id = Σ_j ds_ij k_jd:           tu_sum_tol(n, Σ_j |ds_ij k_jd|) + Σ_j eds_ij |k_jd|
//   dk_jd = Σ_(h,i) ds_ij q_id:       tu_sum_tol(G Tq, Σ |ds q|) + Σ eds_ij |q_id|
static void attn_naive_backward(const AttnCtx *a, const float *dout, double *dq, double *dk, double *dv, double *tq,
                                double *tk, double *tv) {
    int64_t HD = a->H * a->D, KD = a->KVH * a->D, G = a->H / a->KVH;
    int64_t nq = a->B * a->Tq * HD, nk = a->B * a->Tk * KD;
    memset(dq, 0, (size_t)nq * sizeof(double));
    memset(dk, 0, (size_t)nk * sizeof(double));
    memset(dv, 0, (size_t)nk * sizeof(double));
    // abs sums (s*) and propagated input errors (e*) of dq, dk, dv
    double *sq = calloc((size_t)nq, sizeof(double)), *eq = calloc((size_t)nq, sizeof(double));
    double *sk = calloc((size_t)nk, sizeof(double)), *ek = calloc((size_t)nk, sizeof(double));
    double *sv = calloc((size_t)nk, sizeof(double)), *ev = calloc((size_t)nk, sizeof(double));
    double *ep = malloc((size_t)(a->B * a->H * a->Tq) * sizeof(double)), *scratch = malloc((size_t)nq * sizeof(double));
    attn_naive(a, scratch, NULL, ep);
    double *p = malloc((size_t)a->Tk * sizeof(double)), *dp = malloc((size_t)a->Tk * sizeof(double));
    double *edp = malloc((size_t)a->Tk * sizeof(double));
    double sc = 1.0 / sqrt((double)a->D);
    for (int64_t b = 0; b < a->B; b++)
        for (int h = 0; h < a->H; h++) {
            int kh = h / (a->H / a->KVH);
            for (int64_t i = 0; i < a->Tq; i++) {
                int64_t qpos = a->Tk - a->Tq + i, qo = (b * a->Tq + i) * HD + h * a->D, nvis = 0;
                double mx = -1e300, sum = 0, dot = 0, adot = 0, edot = 0, e = ep[(b * a->H + h) * a->Tq + i];
                for (int64_t j = 0; j < a->Tk; j++) {
                    p[j] = -1e300;
                    if (j > qpos || (a->window > 0 && j <= qpos - a->window)) continue;
                    double s = 0;
                    const float *kj = a->k->data + (b * a->Tk + j) * KD + kh * a->D;
                    for (int dd = 0; dd < a->D; dd++) s += (double)a->q->data[qo + dd] * kj[dd];
                    p[j] = s * sc;
                    mx = fmax(mx, p[j]);
                    nvis++;
                }
                for (int64_t j = 0; j < a->Tk; j++) sum += p[j] = p[j] > -1e299 ? exp(p[j] - mx) : 0.0;
                for (int64_t j = 0; j < a->Tk; j++) {
                    p[j] /= sum;
                    int64_t ko = (b * a->Tk + j) * KD + kh * a->D;
                    double adp = 0;
                    dp[j] = 0;
                    for (int dd = 0; dd < a->D; dd++) {
                        dp[j] += (double)dout[qo + dd] * a->v->data[ko + dd];
                        adp += fabs((double)dout[qo + dd] * a->v->data[ko + dd]);
                        dv[ko + dd] += p[j] * dout[qo + dd];
                        sv[ko + dd] += p[j] * fabs(dout[qo + dd]);
                        ev[ko + dd] += e * p[j] * fabs(dout[qo + dd]);
                    }
                    edp[j] = tu_sum_tol((double)a->D, adp);
                    dot += p[j] * dp[j];
                    adot += p[j] * fabs(dp[j]);
                    edot += p[j] * (e * fabs(dp[j]) + edp[j]);
                }
                edot += tu_sum_tol((double)nvis, adot);
                for (int64_t j = 0; j < a->Tk; j++) {
                    double ds = p[j] * (dp[j] - dot) * sc;
                    double eds = p[j] * ((e + 3 * TU_U32) * fabs(dp[j] - dot) + edp[j] + edot) * sc;
                    int64_t ko = (b * a->Tk + j) * KD + kh * a->D;
                    for (int dd = 0; dd < a->D; dd++) {
                        dq[qo + dd] += ds * a->k->data[ko + dd];
                        sq[qo + dd] += fabs(ds * a->k->data[ko + dd]);
                        eq[qo + dd] += eds * fabs(a->k->data[ko + dd]);
                        dk[ko + dd] += ds * a->q->data[qo + dd];
                        sk[ko + dd] += fabs(ds * a->q->data[qo + dd]);
                        ek[ko + dd] += eds * fabs(a->q->data[qo + dd]);
                    }
                }
            }
        }
    if (tq) {
        for (int64_t i = 0; i < nq; i++) tq[i] = tu_sum_tol((double)a->Tk, sq[i]) + eq[i];
        for (int64_t i = 0; i < nk; i++) {
            tk[i] = tu_sum_tol((double)(G * a->Tq), sk[i]) + ek[i];
            tv[i] = tu_sum_tol((double)(G * a->Tq), sv[i]) + ev[i];
        }
    }
    free(sq), free(eq), free(sk), free(ek), free(sv), free(ev), free(ep), free(scratch);
    free(p);
    free(dp);
    free(edp);
}

// max |got - want| / max |want|; +inf when either side holds a NaN or an infinity
static double max_err_vs(const float *got, const double *want, int64_t n) {
    double m = 0, d = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(want[i])) return INFINITY;
        m = fmax(m, fabs(want[i]));
        d = fmax(d, fabs(got[i] - want[i]));
    }
    return m > 0 ? d / m : d;
}

// Shapes spanning several blocks of query rows (the kernels skip the keys a block cannot
// see): full causal, KV-cache style Tq < Tk, sliding windows, one decoded query; forward and
// all three gradients against the straightforward formulas in double.
static void test_attention_blocks(Tape *t) {
    AttnCtx cases[] = {
        {.B = 2, .Tq = 150, .Tk = 150, .H = 4, .KVH = 2, .D = 8, .window = 0},
        {.B = 1, .Tq = 130, .Tk = 201, .H = 2, .KVH = 1, .D = 8, .window = 0},
        {.B = 1, .Tq = 140, .Tk = 170, .H = 3, .KVH = 3, .D = 8, .window = 45},
        {.B = 2, .Tq = 129, .Tk = 129, .H = 2, .KVH = 1, .D = 16, .window = 64},
        {.B = 1, .Tq = 1, .Tk = 200, .H = 4, .KVH = 2, .D = 8, .window = 0},
        {.B = 1, .Tq = 3, .Tk = 200, .H = 4, .KVH = 2, .D = 8, .window = 30},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        AttnCtx a = cases[ci];
        int64_t HD = a.H * a.D, KD = a.KVH * a.D, nq = a.B * a.Tq * HD, nk = a.B * a.Tk * KD;
        a.q = param(3, a.B, a.Tq, HD, 1, 1.0f, "q");
        a.k = param(3, a.B, a.Tk, KD, 1, 1.0f, "k");
        a.v = param(3, a.B, a.Tk, KD, 1, 1.0f, "v");
        double *ref = malloc((size_t)nq * sizeof(double)), *dq = malloc((size_t)nq * sizeof(double));
        double *dk = malloc((size_t)nk * sizeof(double)), *dv = malloc((size_t)nk * sizeof(double));
        double *to = malloc((size_t)nq * sizeof(double)), *tq = malloc((size_t)nq * sizeof(double));
        double *tk = malloc((size_t)nk * sizeof(double)), *tv = malloc((size_t)nk * sizeof(double));
        attn_naive(&a, ref, to, NULL);
        Tensor *xs[] = {a.q, a.k, a.v};
        for (int i = 0; i < 3; i++) tensor_zero_grad(xs[i]);
        float *r = NULL;
        Tensor *y = run_backward(t, attn_fwd, &a, &r, 1);
        attn_naive_backward(&a, r, dq, dk, dv, tq, tk, tv);
        double eo = tol_err_d(y->data, ref, to, nq), eq = tol_err_d(a.q->grad, dq, tq, nq);
        double ek = tol_err_d(a.k->grad, dk, tk, nk), ev = tol_err_d(a.v->grad, dv, tv, nk);
        tape_reset(t);
        tape_set_recording(t, 0);
        Tensor *y2 = attn_fwd(t, &a);
        tape_set_recording(t, 1);
        int same = !memcmp(y->data, y2->data, (size_t)nq * sizeof(float));
        char lab[200];
        snprintf(lab, sizeof lab, "attention blocks B=%lld Tq=%lld Tk=%lld H=%d KVH=%d D=%d window=%d vs naive, "
                 "of the tolerance: out %.2g dq %.2g dk %.2g dv %.2g", (long long)a.B, (long long)a.Tq,
                 (long long)a.Tk, a.H, a.KVH, a.D, a.window, eo, eq, ek, ev);
        CHECK(lab, eo <= 1 && eq <= 1 && ek <= 1 && ev <= 1 && same,
              "tolerances derived from D, Tk, Tq and the magnitudes (attn_naive, attn_naive_backward); "
              "recording off = on: %d", same);
        free(to), free(tq), free(tk), free(tv);
        free(r);
        free(ref);
        free(dq);
        free(dk);
        free(dv);
        for (int i = 0; i < 3; i++) tensor_free(xs[i]);
    }
}

// ---- swiglu, add, embedding, cross-entropy --------------------------------------------------

typedef struct {
    Tensor *a, *b;
    int which;  // 0 swiglu, 1 add, 2 geglu, 3 add_bias (b: the first row's worth)
} PairCtx;

static Tensor *pair_fwd(Tape *t, void *c) {
    PairCtx *p = c;
    switch (p->which) {
    case 1: return op_add(t, p->a, p->b);
    case 2: return op_geglu(t, p->a, p->b);
    case 3: return op_add_bias(t, p->a, p->b);
    default: return op_swiglu(t, p->a, p->b);
    }
}

static void test_swiglu_add(Tape *t) {
    PairCtx p = {param(2, 3, 5, 0, 1, 1.5f, "gate"), param(2, 3, 5, 0, 1, 1.0f, "up"), 0};
    tape_reset(t);
    Tensor *y = pair_fwd(t, &p);
    double err = 0;
    for (int64_t i = 0; i < 15; i++) {
        double g = p.a->data[i], ref = g / (1 + exp(-g)) * p.b->data[i];
        err = tu_worse(err, fabs(ref - y->data[i]) / fmax(fabs(ref), 1e-3));
    }
    CHECK("swiglu forward vs naive", err < 1e-5, "rel err %.3g", err);
    Tensor *xs[] = {p.a, p.b, NULL};
    check_fd("swiglu", t, pair_fwd, &p, xs, 1);
    p.which = 1;
    check_fd("add", t, pair_fwd, &p, xs, 1);
    // GeGLU: forward against the formula in double, backward by finite differences
    p.which = 2;
    tape_reset(t);
    y = pair_fwd(t, &p);
    err = 0;
    for (int64_t i = 0; i < 15; i++) {
        double g = p.a->data[i];
        double ref = 0.5 * g * (1 + tanh(sqrt(2 / M_PI) * (g + 0.044715 * g * g * g))) * p.b->data[i];
        err = tu_worse(err, fabs(ref - y->data[i]) / fmax(fabs(ref), 1e-3));
    }
    CHECK("geglu (gelu_pytorch_tanh) forward vs naive", err < 1e-5, "rel err %.3g", err);
    check_fd("geglu", t, pair_fwd, &p, xs, 1);
    tensor_free(p.b);
    // bias: x (3,5) + b (5), gradient to both
    p.b = param(1, 5, 0, 0, 1, 1.0f, "bias");
    p.which = 3;
    tape_reset(t);
    y = pair_fwd(t, &p);
    err = 0;
    for (int64_t i = 0; i < y->n; i++) err = tu_worse(err, fabs(y->data[i] - p.a->data[i] - p.b->data[i % 5]));
    CHECK("add_bias forward", y->n == 15 && err < 1e-6, "err %.3g", err);
    Tensor *xb[] = {p.a, p.b, NULL};
    check_fd("add_bias", t, pair_fwd, &p, xb, 1);
    tensor_free(p.a);
    tensor_free(p.b);
}

typedef struct {
    Tensor *table;
    int ids[7];
} EmbCtx;

static Tensor *emb_fwd(Tape *t, void *c) {
    EmbCtx *e = c;
    return op_embedding(t, e->table, e->ids, 7);
}

static void test_embedding(Tape *t) {
    EmbCtx e = {param(2, 6, 4, 0, 1, 1.0f, "table"), {3, 0, 5, 3, 3, 1, 0}};
    tape_reset(t);
    Tensor *y = emb_fwd(t, &e);
    int ok = y->ndim == 2 && y->shape[0] == 7 && y->shape[1] == 4;
    for (int i = 0; i < 7 && ok; i++) ok = !memcmp(y->data + i * 4, e.table->data + e.ids[i] * 4, 16);
    CHECK("embedding forward gathers rows", ok, "wrong rows");
    Tensor *xs[] = {e.table, NULL};
    check_fd("embedding (repeated ids)", t, emb_fwd, &e, xs, 1);
    // row 2 and 4 are never used: exactly zero gradient
    CHECK("embedding unused rows get zero grad",
          e.table->grad[2 * 4] == 0 && e.table->grad[4 * 4 + 3] == 0 && e.table->grad[3 * 4] != 0,
          "unexpected gradient pattern");
    tensor_free(e.table);
}

typedef struct {
    Tensor *logits;
    int targets[5];
    float norm;
} CeCtx;

static Tensor *ce_fwd(Tape *t, void *c) {
    CeCtx *ce = c;
    return op_cross_entropy(t, ce->logits, ce->targets, ce->norm);
}

static void test_cross_entropy(Tape *t) {
    CeCtx ce = {param(2, 5, 7, 0, 1, 2.0f, "logits"), {3, -100, 1, 6, -1}, 2.5f};
    // a large logit (the target of its row, so the loss stays O(1) and the fp32 rounding of
    // L small for finite differences): log-sum-exp must stay stable
    ce.logits->data[2 * 7 + 1] = 80.0f;
    tape_reset(t);
    Tensor *y = ce_fwd(t, &ce);
    double ref = 0;
    for (int i = 0; i < 5; i++) {
        if (ce.targets[i] < 0) continue;
        const float *l = ce.logits->data + i * 7;
        double mx = -1e300, s = 0;
        for (int j = 0; j < 7; j++) mx = fmax(mx, l[j]);
        for (int j = 0; j < 7; j++) s += exp(l[j] - mx);
        ref += mx + log(s) - l[ce.targets[i]];
    }
    ref /= ce.norm;
    CHECK("cross_entropy forward vs naive (ignored targets)", y->n == 1 && fabs(y->data[0] - ref) < 1e-5 * fmax(1, fabs(ref)),
          "got %.7g want %.7g", y->data[0], ref);
    Tensor *xs[] = {ce.logits, NULL};
    check_fd("cross_entropy", t, ce_fwd, &ce, xs, 1);
    int zero = 1;
    for (int j = 0; j < 7; j++) zero &= ce.logits->grad[7 + j] == 0 && ce.logits->grad[4 * 7 + j] == 0;
    CHECK("cross_entropy ignored rows get zero grad", zero, "nonzero gradient on an ignored row");
    tensor_free(ce.logits);
}

// SwiGLU and GeGLU over many values (several blocks of the kernels, a ragged tail, large |g|):
// forward and both gradients against the formulas in double.
static void test_glu_large(Tape *t) {
    PairCtx p = {param(2, 7, 301, 0, 1, 4.0f, "gate"), param(2, 7, 301, 0, 1, 1.0f, "up"), 0};
    int64_t n = p.a->n;
    p.a->data[5] = 60.0f;
    p.a->data[6] = -60.0f;
    p.a->data[7] = -200.0f;
    double *ref = malloc((size_t)(3 * n) * sizeof(double)), *rg = ref + n, *ru = ref + 2 * n;
    for (p.which = 0; p.which <= 2; p.which += 2) {
        tensor_zero_grad(p.a);
        tensor_zero_grad(p.b);
        float *r = NULL;
        Tensor *y = run_backward(t, pair_fwd, &p, &r, 1);
        for (int64_t i = 0; i < n; i++) {
            double g = p.a->data[i], u = p.b->data[i], act, dact;
            if (p.which == 0) {
                double sg = 1 / (1 + exp(-g));
                act = g * sg;
                dact = sg * (1 + g * (1 - sg));
            } else {
                double k = sqrt(2 / M_PI), th = tanh(k * (g + 0.044715 * g * g * g));
                act = 0.5 * g * (1 + th);
                dact = 0.5 * (1 + th) + 0.5 * g * (1 - th * th) * k * (1 + 3 * 0.044715 * g * g);
            }
            ref[i] = act * u;
            rg[i] = r[i] * u * dact;
            ru[i] = r[i] * act;
        }
        double eo = max_err_vs(y->data, ref, n), eg = max_err_vs(p.a->grad, rg, n), eu = max_err_vs(p.b->grad, ru, n);
        char lab[160];
        snprintf(lab, sizeof lab, "%s over %lld values vs double: out %.1e dgate %.1e dup %.1e",
                 p.which ? "geglu" : "swiglu", (long long)n, eo, eg, eu);
        CHECK(lab, eo < 1e-6 && eg < 1e-6 && eu < 1e-6, "tolerance 1e-6 of the largest entry");
        free(r);
    }
    free(ref);
    tensor_free(p.a);
    tensor_free(p.b);
}

// Cross-entropy over a wide vocabulary (vector lanes, blocks, a ragged tail), unfused and
// fused with its linear layer (several chunks of rows), against double; the fused loss
// without recording equals the recorded one.
typedef struct {
    Tensor *x;
    Weight w;
    int *targets;
    float norm;
} LceCtx;

static Tensor *lce_fwd(Tape *t, void *c) {
    LceCtx *l = c;
    return op_linear_cross_entropy(t, l->x, &l->w, l->targets, l->norm);
}

// logits of row i (V) -> loss += lse - logit[target], grad (V) = (softmax - onehot) / norm
static double ce_row_naive(const double *l, int64_t V, int target, double norm, double *grad) {
    double mx = -1e300, s = 0;
    for (int64_t j = 0; j < V; j++) mx = fmax(mx, l[j]);
    for (int64_t j = 0; j < V; j++) s += exp(l[j] - mx);
    for (int64_t j = 0; j < V; j++) grad[j] = exp(l[j] - mx) / s / norm;
    grad[target] -= 1 / norm;
    return mx + log(s) - l[target];
}

// Tolerances of cross-entropy rows over V logits z (tests/testutil.h's sum rule): p = softmax(z)
// is off by a relative ep = ez2 + tu_sum_tol(V, 1) (the sum of V positive exponentials)
// + 2u range (the shift z - max rounds by u |z - max|, in p's own exponent and the sum's)
// + 8u (exp within 2 ulps, the normalization), ez2 = twice the logits' own error (0 when
// exact), range = max z - min z of the row; a row's lse - z_target by ep + 2u |lse|.
static double ce_row_ep(int64_t V, double ez2, double range) {
    return ez2 + tu_sum_tol((double)V, 1.0) + 2 * TU_U32 * range + 8 * TU_U32;
}

static double row_range(const double *z, int64_t n) {
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t j = 0; j < n; j++) lo = fmin(lo, z[j]), hi = fmax(hi, z[j]);
    return hi - lo;
}

static void test_cross_entropy_wide(Tape *t) {
    const int64_t N = 5, V = 1037;
    CeCtx ce = {param(2, N, V, 0, 1, 3.0f, "logits"), {3, -1, 1036, 500, 0}, 4.0f};
    double *l = malloc((size_t)V * sizeof(double)), *g = malloc((size_t)(N * V) * sizeof(double));
    double *tg = malloc((size_t)(N * V) * sizeof(double));
    double loss = 0, lsum = 0, eloss = 0;
    int rows = 0;
    memset(g, 0, (size_t)(N * V) * sizeof(double));
    memset(tg, 0, (size_t)(N * V) * sizeof(double));
    for (int64_t i = 0; i < N; i++) {
        if (ce.targets[i] < 0) continue;
        for (int64_t j = 0; j < V; j++) l[j] = ce.logits->data[i * V + j];
        double li = ce_row_naive(l, V, ce.targets[i], ce.norm, g + i * V), ep = ce_row_ep(V, 0.0, row_range(l, V));
        loss += li;
        lsum += fabs(li);
        eloss += ep + 2 * TU_U32 * fabs(li + l[ce.targets[i]]);
        rows++;
        // dlogits = (p - onehot) / norm: p off by ep relative, the subtraction by u
        for (int64_t j = 0; j < V; j++) {
            double pj = g[i * V + j] + (j == ce.targets[i] ? 1 / ce.norm : 0.0);
            tg[i * V + j] = ep * pj + 2 * TU_U32 * fabs(g[i * V + j]);
        }
    }
    loss /= ce.norm;
    eloss = (eloss + tu_sum_tol((double)rows, lsum)) / ce.norm;  // the rows' sum / norm
    tensor_zero_grad(ce.logits);
    tape_reset(t);
    Tensor *y = ce_fwd(t, &ce);
    tape_backward(t, y);
    double el = tu_err_ratio(y->data[0], loss, eloss), eg = tol_err_d(ce.logits->grad, g, tg, N * V);
    char lab[160];
    snprintf(lab, sizeof lab, "cross_entropy V=%lld vs double, of the tolerance: loss %.2g dlogits %.2g", (long long)V,
             el, eg);
    CHECK(lab, el <= 1 && eg <= 1, "tolerances derived from V and the magnitudes (ce_row_ep)");
    free(tg);
    free(l);
    free(g);
    tensor_free(ce.logits);

    // fused: 3000 rows (some ignored) x V 3000: two chunks of rows
    const int64_t M = 3000, C = 16, W = 3000;
    LceCtx lc = {param(2, M, C, 0, 1, 1.0f, "x"), {WT_F32, W, C, malloc((size_t)(W * C) * sizeof(float)), 1, "w"},
                 malloc((size_t)M * sizeof(int)), 0.0f};
    fill(lc.w.data, W * C, 0.5f);
    int kept = 0;
    for (int64_t i = 0; i < M; i++) {
        lc.targets[i] = i % 11 == 3 ? -100 : (int)rng_below(&g_rng, (uint32_t)W);
        kept += lc.targets[i] >= 0;
    }
    lc.norm = (float)kept;
    // tolerances: logit (i, j) sums C products, off by at most tu_sum_tol(C, Σ_c |x_ic w_jc|), at
    // most ez_i over the row; then ce_row_ep with 2 ez_i; the loss sums the kept rows;
    // dx_ic = Σ_j g_ij w_jc sums W products, each g_ij off by (ez_i + ep_i) p_ij / norm:
    // tol = tu_sum_tol(W + 1, Σ_j |g_ij| |w_jc|) + (ez_i + ep_i) Σ_j p_ij / norm |w_jc|
    double *dx = calloc((size_t)(M * C), sizeof(double)), *row = malloc((size_t)W * sizeof(double)),
           *gr = malloc((size_t)W * sizeof(double)), *sdx = calloc((size_t)(M * C), sizeof(double)),
           *edx = calloc((size_t)(M * C), sizeof(double));
    const float *wf = lc.w.data;
    loss = 0;
    lsum = 0;
    eloss = 0;
    for (int64_t i = 0; i < M; i++) {
        if (lc.targets[i] < 0) continue;
        double amax = 0;
        for (int64_t j = 0; j < W; j++) {
            double s = 0, a = 0;
            for (int64_t c = 0; c < C; c++) {
                s += (double)lc.x->data[i * C + c] * wf[j * C + c];
                a += fabs((double)lc.x->data[i * C + c] * wf[j * C + c]);
            }
            row[j] = s;
            amax = fmax(amax, a);
        }
        double ez = tu_sum_tol((double)C, amax);
        double li = ce_row_naive(row, W, lc.targets[i], lc.norm, gr), lep = ce_row_ep(W, 2 * ez, row_range(row, W));
        loss += li;
        lsum += fabs(li);
        eloss += lep + 2 * TU_U32 * fabs(li + row[lc.targets[i]]);
        for (int64_t j = 0; j < W; j++) {
            double pj = gr[j] + (j == lc.targets[i] ? 1 / lc.norm : 0.0);
            for (int64_t c = 0; c < C; c++) {
                double aw = fabs((double)wf[j * C + c]);
                dx[i * C + c] += gr[j] * wf[j * C + c];
                sdx[i * C + c] += fabs(gr[j]) * aw;
                edx[i * C + c] += (ez + lep) * pj * aw;
            }
        }
    }
    loss /= lc.norm;
    eloss = (eloss + tu_sum_tol((double)kept, lsum)) / lc.norm;
    for (int64_t i = 0; i < M * C; i++) sdx[i] = tu_sum_tol((double)(W + 1), sdx[i]) + edx[i];
    tensor_zero_grad(lc.x);
    tape_reset(t);
    y = lce_fwd(t, &lc);
    float l1 = y->data[0];
    tape_backward(t, y);
    tape_reset(t);
    tape_set_recording(t, 0);
    float l0 = lce_fwd(t, &lc)->data[0];
    tape_set_recording(t, 1);
    el = tu_err_ratio(l1, loss, eloss);
    eg = tol_err_d(lc.x->grad, dx, sdx, M * C);
    int untouched = 1;
    for (int64_t i = 0; i < M; i++)
        for (int64_t c = 0; c < C && lc.targets[i] < 0; c++) untouched &= lc.x->grad[i * C + c] == 0.0f;
    snprintf(lab, sizeof lab, "linear_cross_entropy %lld rows x V %lld vs double, of the tolerance: loss %.2g dx %.2g",
             (long long)M, (long long)W, el, eg);
    CHECK(lab, el <= 1 && eg <= 1 && untouched && l0 == l1,
          "tolerances derived from C, V and the magnitudes; ignored rows untouched %d; loss recording off %.9g, on %.9g",
          untouched, l0, l1);
    // a small case by finite differences (the backward scales the saved gradient by dloss)
    int small_targets[6] = {3, -1, 8, 0, 3, 5};
    LceCtx sm = {param(2, 6, 5, 0, 1, 1.0f, "x"), {WT_F32, 9, 5, lc.w.data, 0, "w"}, small_targets, 4.0f};
    Tensor *xs[] = {sm.x, NULL};
    check_fd("linear_cross_entropy", t, lce_fwd, &sm, xs, 1);
    tensor_free(sm.x);
    free(dx);
    free(row);
    free(gr);
    free(sdx);
    free(edx);
    free(lc.targets);
    weight_free(&lc.w);
    tensor_free(lc.x);
}

// ---- composed graph and tape bookkeeping ----------------------------------------------------

// x -> rmsnorm(w) -> h; g = lora(h; Wg, A, B) and u = linear(h; Wu) both read h;
// y = linear(swiglu(g, u); Wd) + x (x feeds two ops as well) -> lora(y; Wo, A2, B2) -> logits.
typedef struct {
    Tensor *x, *w, *A, *B, *A2, *B2;
    Weight Wg, Wu, Wd, Wo;
    int targets[4];
    float p;
} GraphCtx;

static Tensor *graph_fwd(Tape *t, void *c) {
    GraphCtx *g = c;
    Tensor *h = op_rmsnorm(t, g->x, g->w, 1e-5f);
    Tensor *gt = op_lora_linear(t, h, &g->Wg, g->A, g->B, 1.5f, g->p);
    Tensor *u = op_linear(t, h, &g->Wu);
    Tensor *y = op_add(t, op_linear(t, op_swiglu(t, gt, u), &g->Wd), g->x);
    return op_lora_linear(t, y, &g->Wo, g->A2, g->B2, 0.5f, g->p);
}

static Tensor *graph_loss(Tape *t, GraphCtx *g) {
    return op_cross_entropy(t, graph_fwd(t, g), g->targets, 3.0f);
}

static Weight rand_weight(int64_t OC, int64_t C, float scale) {
    float *f = malloc((size_t)(OC * C) * sizeof(float));
    fill(f, OC * C, scale);
    Weight w = make_weight(f, OC, C, WT_F32);
    free(f);
    return w;
}

static void graph_free(GraphCtx *g) {
    Tensor *ts[] = {g->x, g->w, g->A, g->B, g->A2, g->B2};
    for (int i = 0; i < 6; i++) tensor_free(ts[i]);
    weight_free(&g->Wg);
    weight_free(&g->Wu);
    weight_free(&g->Wd);
    weight_free(&g->Wo);
}

static GraphCtx graph_new(int x_trainable) {
    const int64_t N = 4, C = 6, F = 5, V = 7, r = 2;
    GraphCtx g = {
        .x = param(2, N, C, 0, x_trainable, 1.0f, "x"),
        .w = param(1, C, 0, 0, 1, 0.3f, "w"),
        .A = param(2, r, C, 0, 1, 0.5f, "A"),
        .B = param(2, F, r, 0, 1, 0.5f, "B"),
        .A2 = param(2, r, C, 0, 1, 0.5f, "A2"),
        .B2 = param(2, V, r, 0, 1, 0.5f, "B2"),
        .Wg = rand_weight(F, C, 0.5f),
        .Wu = rand_weight(F, C, 0.5f),
        .Wd = rand_weight(C, F, 0.5f),
        .Wo = rand_weight(V, C, 0.5f),
        .targets = {2, -1, 6, 0},
    };
    for (int64_t i = 0; i < C; i++) g.w->data[i] += 1.0f;
    return g;
}

static void test_graph(Tape *t) {
    GraphCtx g = graph_new(1);
    Tensor *xs[] = {g.x, g.w, g.A, g.B, g.A2, g.B2, NULL};
    check_fd("composed graph", t, graph_fwd, &g, xs, 3);
    tape_set_training(t, 1);
    g.p = 0.25f;
    check_fd("composed graph dropout", t, graph_fwd, &g, xs, 3);
    tape_set_training(t, 0);
    graph_free(&g);
}

// copies loss and every gradient into buf (returns floats written)
static int64_t snapshot(Tensor *loss, Tensor **ps, float *buf) {
    int64_t k = 0;
    buf[k++] = loss->data[0];
    for (int i = 0; ps[i]; i++) {
        memcpy(buf + k, ps[i]->grad, (size_t)ps[i]->n * sizeof(float));
        k += ps[i]->n;
    }
    return k;
}

static void test_tape(Tape *t) {
    // frozen x (a wrapped tensor) and frozen norm weight: no gradient buffers, and an op on
    // frozen inputs only records nothing
    GraphCtx g = graph_new(0);
    float *xdata = g.x->data, *wdata = g.w->data;
    int64_t xs_[2] = {4, 6}, ws_[1] = {6};
    Err e = {{0}};
    Tensor *xf = tensor_wrap(xdata, 2, xs_, "x frozen", &e), *wf = tensor_wrap(wdata, 1, ws_, "w frozen", &e);
    Tensor *x0 = g.x, *w0 = g.w;
    g.x = xf;
    g.w = wf;
    Tensor *ps[] = {g.A, g.B, g.A2, g.B2, NULL};
    tape_reset(t);
    Tensor *lin = op_linear(t, g.x, &g.Wg);
    CHECK("op on frozen inputs needs no grad", !lin->requires_grad, "requires_grad set");
    Tensor *loss = graph_loss(t, &g);
    tape_backward(t, loss);
    CHECK("frozen inputs get no grad buffer", xf->grad == NULL && wf->grad == NULL && lin->grad == NULL,
          "x %p w %p", (void *)xf->grad, (void *)wf->grad);
    int nz = 0;
    for (int i = 0; ps[i]; i++)
        for (int64_t j = 0; j < ps[i]->n; j++) nz += ps[i]->grad[j] != 0;
    CHECK("trainable params get grads with frozen x", nz > 0, "all zero");

    // reset + identical step: bit-identical loss and grads, arena does not grow (with dropout)
    tape_set_training(t, 1);
    g.p = 0.2f;
    int64_t total = 1;
    for (int i = 0; ps[i]; i++) total += ps[i]->n;
    float *s1 = malloc((size_t)total * sizeof(float)), *s2 = malloc((size_t)total * sizeof(float));
    size_t bytes[3];
    for (int run = 0; run < 3; run++) {
        for (int i = 0; ps[i]; i++) tensor_zero_grad(ps[i]);
        tape_reset(t);
        tape_seed(t, 99);
        loss = graph_loss(t, &g);
        tape_backward(t, loss);
        bytes[run] = tape_arena_bytes(t);
        snapshot(loss, ps, run ? s2 : s1);
    }
    CHECK("tape_reset: identical step is bit-identical", !memcmp(s1, s2, (size_t)total * sizeof(float)),
          "loss %.9g vs %.9g", s1[0], s2[0]);
    CHECK("tape_reset: arena does not grow", bytes[1] == bytes[0] && bytes[2] == bytes[0] && bytes[0] > 0,
          "%zu %zu %zu", bytes[0], bytes[1], bytes[2]);

    // two backward calls over the same tape: params accumulate exactly twice
    tape_backward(t, loss);
    int twice = 1;
    int64_t k = 1;
    for (int i = 0; ps[i]; i++)
        for (int64_t j = 0; j < ps[i]->n; j++, k++) twice &= ps[i]->grad[j] == 2.0f * s2[k];
    CHECK("second tape_backward accumulates into params", twice, "grad != 2x single");

    // recording off: outputs need no grad, backward is a no-op, grads unchanged
    snapshot(loss, ps, s1);
    tape_reset(t);
    tape_set_recording(t, 0);
    tape_seed(t, 99);
    loss = graph_loss(t, &g);
    tape_backward(t, loss);
    snapshot(loss, ps, s2);
    CHECK("recording off: no grad, backward no-op",
          !loss->requires_grad && !memcmp(s1 + 1, s2 + 1, (size_t)(total - 1) * sizeof(float)),
          "grads changed");
    CHECK("recording off: same loss", s1[0] == s2[0], "%.9g vs %.9g", s1[0], s2[0]);
    tape_set_recording(t, 1);
    tape_set_training(t, 0);
    free(s1);
    free(s2);
    g.x = x0;
    g.w = w0;
    tensor_free(xf);
    tensor_free(wf);
    graph_free(&g);
}

// ---- PyTorch oracle -------------------------------------------------------------------------
// The same inputs go through tests/ref_autograd.py (float64 PyTorch, reference formulations);
// outputs and gradients of L = Σ out · r must agree to 1e-4 relative (floored at 1% of the
// array's largest entry).

typedef struct {
    char label[96];
    float *data;
    int64_t n;
} Result;

static Result g_res[64];
static int g_nres;

static void keep(const char *label, const float *data, int64_t n) {
    Result *r = &g_res[g_nres++];
    snprintf(r->label, sizeof r->label, "%s", label);
    r->data = malloc((size_t)n * sizeof(float));
    memcpy(r->data, data, (size_t)n * sizeof(float));
    r->n = n;
}

static void put(FILE *f, const float *d, int64_t n) {
    int32_t nd = 1;
    fwrite(&nd, 4, 1, f);
    fwrite(&n, 8, 1, f);
    fwrite(d, 4, (size_t)n, f);
}

static void put_tensor(FILE *f, const Tensor *t) {
    int32_t nd = t->ndim;
    fwrite(&nd, 4, 1, f);
    fwrite(t->shape, 8, (size_t)nd, f);
    fwrite(t->data, 4, (size_t)t->n, f);
}

static float *put_random(FILE *f, int64_t n) {
    float *r = malloc((size_t)n * sizeof(float));
    fill(r, n, 1.0f);
    put(f, r, n);
    return r;
}

// Runs f with backward of Σ out · r and keeps out and the gradients of xs.
static void oracle_case(const char *name, Tape *t, Fwd f, void *ctx, Tensor **xs, float *r) {
    for (int k = 0; xs[k]; k++) tensor_zero_grad(xs[k]);
    Tensor *out = run_backward(t, f, ctx, &r, 1);
    char lab[96];
    snprintf(lab, sizeof lab, "%s out", name);
    keep(lab, out->data, out->n);
    for (int k = 0; xs[k]; k++) {
        snprintf(lab, sizeof lab, "%s d/d%s", name, xs[k]->name);
        keep(lab, xs[k]->grad, xs[k]->n);
    }
    free(r);
}

static void test_torch(Tape *t) {
    char dir[256], in[300], out[300], cmd[1000];
    tu_tmpdir("autograd_ref", dir, sizeof dir);
    snprintf(in, sizeof in, "%s/in.bin", dir);
    snprintf(out, sizeof out, "%s/out.bin", dir);
    FILE *f = fopen(in, "wb");
    if (!f) {
        CHECK("pytorch oracle: write inputs", 0, "cannot write %s", in);
        return;
    }
    g_nres = 0;
    // rope: x, inv_freq, meta, r_half, r_adjacent
    RopeCtx ro = {.B = 2, .T = 3, .H = 2, .D = 8, .pos0 = 7};
    for (int i = 0; i < ro.D / 2; i++) ro.inv_freq[i] = powf(10000.0f, -2.0f * i / ro.D);
    ro.x = param(3, ro.B, ro.T, ro.H * ro.D, 1, 1.0f, "x");
    put_tensor(f, ro.x);
    put(f, ro.inv_freq, ro.D / 2);
    put(f, (float[]){2, 3, 2, 8, 7}, 5);
    float *r1 = put_random(f, ro.x->n), *r2 = put_random(f, ro.x->n);
    Tensor *xr[] = {ro.x, NULL};
    ro.style = ROPE_HALF;
    oracle_case("rope half", t, rope_fwd, &ro, xr, r1);
    ro.style = ROPE_ADJACENT;
    oracle_case("rope adjacent", t, rope_fwd, &ro, xr, r2);
    // attention: q, k, v, meta, r
    AttnCtx a = {.B = 2, .Tq = 3, .Tk = 6, .H = 4, .KVH = 2, .D = 8, .window = 4};
    a.q = param(3, a.B, a.Tq, a.H * a.D, 1, 1.0f, "q");
    a.k = param(3, a.B, a.Tk, a.KVH * a.D, 1, 1.0f, "k");
    a.v = param(3, a.B, a.Tk, a.KVH * a.D, 1, 1.0f, "v");
    put_tensor(f, a.q);
    put_tensor(f, a.k);
    put_tensor(f, a.v);
    put(f, (float[]){2, 3, 6, 4, 2, 8, 4}, 7);
    Tensor *xa[] = {a.q, a.k, a.v, NULL};
    oracle_case("attention GQA Tq<Tk window=4", t, attn_fwd, &a, xa, put_random(f, a.q->n));
    // rmsnorm: x, w, eps, r
    NormCtx nc = {param(2, 3, 16, 0, 1, 1.0f, "x"), param(1, 16, 0, 0, 1, 1.0f, "w")};
    put_tensor(f, nc.x);
    put_tensor(f, nc.w);
    put(f, (float[]){1e-5f}, 1);
    Tensor *xn[] = {nc.x, nc.w, NULL};
    oracle_case("rmsnorm", t, norm_fwd, &nc, xn, put_random(f, nc.x->n));
    // cross-entropy: logits, targets, norm, r
    CeCtx ce = {param(2, 5, 11, 0, 1, 2.0f, "logits"), {3, -100, 10, 0, -1}, 3.0f};
    put_tensor(f, ce.logits);
    put(f, (float[]){3, -100, 10, 0, -1}, 5);
    put(f, &ce.norm, 1);
    Tensor *xc[] = {ce.logits, NULL};
    oracle_case("cross_entropy", t, ce_fwd, &ce, xc, put_random(f, 1));
    // LoRA linear: x, W, A, B, scale, r
    LinCtx l = {param(2, 4, 8, 0, 1, 1.0f, "x"), param(2, 2, 8, 0, 1, 0.5f, "A"), param(2, 6, 2, 0, 1, 0.5f, "B"),
                {0}, 2.0f, 0.0f};
    float wf[48];
    fill(wf, 48, 0.5f);
    l.W = make_weight(wf, 6, 8, WT_F32);
    put_tensor(f, l.x);
    int64_t wshape[2] = {6, 8};
    Tensor *wt = tape_view(t, wf, 2, wshape);
    put_tensor(f, wt);
    put_tensor(f, l.A);
    put_tensor(f, l.B);
    put(f, &l.scale, 1);
    Tensor *xl[] = {l.x, l.A, l.B, NULL};
    oracle_case("lora_linear", t, lin_fwd, &l, xl, put_random(f, 4 * 6));
    // SwiGLU: gate, up, r
    PairCtx p = {param(2, 2, 9, 0, 1, 1.5f, "gate"), param(2, 2, 9, 0, 1, 1.0f, "up"), 0};
    put_tensor(f, p.a);
    put_tensor(f, p.b);
    Tensor *xp[] = {p.a, p.b, NULL};
    oracle_case("swiglu", t, pair_fwd, &p, xp, put_random(f, p.a->n));
    fclose(f);

    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_autograd.py %s %s", in, out);
    if (system("/usr/bin/python3 -c 'import torch' 2>/dev/null") != 0) {
        SKIP("pytorch oracle", "PyTorch is not installed for /usr/bin/python3");
    } else if (system(cmd) != 0) {
        CHECK("pytorch oracle: tests/ref_autograd.py runs", 0, "it failed");
    } else if (!(f = fopen(out, "rb"))) {
        CHECK("pytorch oracle: read results", 0, "cannot open %s", out);
    } else {
        for (int i = 0; i < g_nres; i++) {
            Result *r = &g_res[i];
            int32_t nd = 0;
            int64_t dims[AG_MAXDIM] = {0}, n = 1;
            int ok = fread(&nd, 4, 1, f) == 1 && nd >= 1 && nd <= AG_MAXDIM && fread(dims, 8, (size_t)nd, f) == (size_t)nd;
            for (int d = 0; d < nd; d++) n *= dims[d];
            ok = ok && n == r->n;
            float *ref = ok ? malloc((size_t)n * sizeof(float)) : NULL;
            ok = ok && fread(ref, 4, (size_t)n, f) == (size_t)n;
            // as tests/refcheck.h: relative, floored at 1% of the largest magnitude; a NaN or an
            // infinity on either side is +inf (tu_max_rel_err)
            double mx = 0, err = INFINITY;
            for (int64_t j = 0; ok && j < n; j++) mx = fmax(mx, fabs(ref[j]));
            if (ok) err = tu_max_rel_err(r->data, ref, (long)n, fmax(0.01 * mx, 1e-30));
            char lab[160];
            snprintf(lab, sizeof lab, "pytorch oracle: %.95s", r->label);
            CHECK(lab, ok && err < 1e-4, ok ? "rel err %.3g" : "bad record (rel err %.3g)", err);
            if (ok) printf("    %s: rel err vs torch %.2e\n", r->label, err);
            free(ref);
        }
        fclose(f);
    }
    for (int i = 0; i < g_nres; i++) free(g_res[i].data);
    Tensor *all[] = {ro.x, a.q, a.k, a.v, nc.x, nc.w, ce.logits, l.x, l.A, l.B, p.a, p.b};
    for (int i = 0; i < 12; i++) tensor_free(all[i]);
    weight_free(&l.W);
}

// ---- the kernels' exp ----------------------------------------------------------------------

// Ulps between got and the exact e^x: |got - exp(x)| in units of the float spacing at exp(x)
// (2^-149 below the normal range).
static double exp_ulps(float got, double x) {
    double want = exp(x);
    int ex;
    frexp(want, &ex);
    double ulp = ldexp(1.0, (ex - 1 > -126 ? ex - 1 : -126) - 23);
    return fabs((double)got - want) / ulp;
}

static void test_vec_exp(void) {
    // a dense sweep of [-100, 88] plus every float in [-1, 1] with a stride
    const int64_t n = 4000001;
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = (float)(-100.0 + 188.0 * (double)i / (double)(n - 1));
    vec_exp(y, x, n);
    double worst = 0, worst_libm = 0;
    float at = 0;
    for (int64_t i = 0; i < n; i++) {
        double u = exp_ulps(y[i], x[i]);
        if (!(u <= worst)) worst = isnan(u) ? INFINITY : u, at = x[i];  // a NaN counts as +inf
        worst_libm = fmax(worst_libm, exp_ulps(expf(x[i]), x[i]));
    }
    int64_t m = 0;
    for (uint32_t b = 0x3f800000u; m < n; b -= 211) {  // from 1.0 down through the small values
        memcpy(&x[m], &b, 4);
        x[m + 1] = -x[m];
        m += 2;
    }
    vec_exp(y, x, n);
    double worst_small = 0;
    for (int64_t i = 0; i < n; i++) worst_small = tu_worse(worst_small, exp_ulps(y[i], x[i]));
    char lab[200];
    snprintf(lab, sizeof lab,
             "vec_exp over [-100, 88]: max %.2f ulp (at %g; libm expf %.2f ulp), over [-1, 1]: max %.2f ulp", worst,
             (double)at, worst_libm, worst_small);
    CHECK(lab, worst <= 2.0 && worst_small <= 2.0, "tolerance 2 ulp");
    // special values, and every tail length giving the same values as full vectors
    float sx[9] = {0.0f, -INFINITY, -104.5f, -1000.0f, 89.0f, 1000.0f, INFINITY, NAN, -0.0f}, sy[9];
    vec_exp(sy, sx, 9);
    int ok = sy[0] == 1.0f && sy[1] == 0.0f && sy[2] == 0.0f && sy[3] == 0.0f && isinf(sy[4]) && isinf(sy[5]) &&
             isinf(sy[6]) && isnan(sy[7]) && sy[8] == 1.0f;
    CHECK("vec_exp: exp(0) = 1, -inf and very negative -> 0, large and +inf -> inf, NaN -> NaN", ok,
          "%g %g %g %g %g %g %g %g %g", sy[0], sy[1], sy[2], sy[3], sy[4], sy[5], sy[6], sy[7], sy[8]);
    for (int64_t i = 0; i < 40; i++) x[i] = (float)i * 0.37f - 7.0f;
    vec_exp(y, x, 40);
    int same = 1;
    for (int64_t len = 1; len <= 40; len++) {
        float z[40];
        vec_exp(z, x, len);
        same &= !memcmp(z, y, (size_t)len * sizeof(float));
    }
    CHECK("vec_exp: tails of every length equal full vectors", same, "differ");
    free(x);
    free(y);
}

// ---- the NaN rule ---------------------------------------------------------------------------
// A NaN or an infinity fails every comparison: planted into a real compared tensor (an
// op_linear output against its double reference, on either side), every error helper returns
// +inf, which fails both `err <= tol` and `err < tol` for any finite tolerance, while the clean
// tensor passes. Also two infinities of the same sign (equal, but not a result).
static void test_nan_rule(Tape *t) {
    const int64_t N = 4, C = 33, OC = 5;
    Tensor *x = param(2, N, C, 0, 0, 1.0f, "x");
    float wf[5 * 33];
    fill(wf, OC * C, 0.5f);
    Weight w = {WT_F32, OC, C, wf, 0, "W"};
    tape_reset(t);
    Tensor *y = op_linear(t, x, &w);
    double ref[20], tol[20];
    float reff[20], got[20];
    for (int64_t i = 0; i < N; i++)
        for (int64_t o = 0; o < OC; o++) {
            double s = 0, a = 0;
            for (int64_t c = 0; c < C; c++) {
                s += (double)x->data[i * C + c] * wf[o * C + c];
                a += fabs((double)x->data[i * C + c] * wf[o * C + c]);
            }
            ref[i * OC + o] = s;
            reff[i * OC + o] = (float)s;
            tol[i * OC + o] = tu_sum_tol((double)C, a);
        }
    double *abs_sum = tu_abs_matmul(x->data, C, 1, wf, 1, C, N, C, OC, NULL);
    // the clean comparison passes every helper
    double fd[20];
    for (int i = 0; i < 20; i++) fd[i] = ref[i];
    int clean = tol_err_d(y->data, ref, tol, 20) <= 1 && tol_err(y->data, reff, tol, 20) <= 1 &&
                tu_sum_err(y->data, reff, abs_sum, 20, (double)C) <= 1 &&
                tu_max_rel_err(y->data, reff, 20, 1e-2) < 1e-5 &&
                max_err_vs(y->data, ref, 20) < 1e-5 && fd_err(y->data, fd, 20, NULL) < FD_TOL;
    CHECK("NaN rule: the clean op_linear output passes every comparison helper", clean, "a helper failed");
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    const char *bn[3] = {"NaN", "+inf", "-inf"};
    for (int k = 0; k < 3; k++)
        for (int side = 0; side < 2; side++) {
            // side 0: planted in our output; side 1: in the reference
            memcpy(got, y->data, sizeof got);
            float rf[20];
            memcpy(rf, reff, sizeof rf);
            double rd[20], fdd[20];
            memcpy(rd, ref, sizeof rd);
            memcpy(fdd, fd, sizeof fdd);
            if (side) rf[7] = bad[k], rd[7] = bad[k], fdd[7] = bad[k];
            else got[7] = bad[k];
            double e[7] = {tol_err_d(got, rd, tol, 20),
                           tol_err(got, rf, tol, 20),
                           tu_sum_err(got, rf, abs_sum, 20, (double)C),
                           tu_max_rel_err(got, rf, 20, 1e-2),
                           max_err_vs(got, rd, 20),
                           fd_err(got, fdd, 20, NULL),
                           tu_worse(0.0, tu_err_ratio(got[7], rf[7], 1e30))};
            int fails = 1;
            for (int j = 0; j < 7; j++) fails &= !(e[j] <= 1e300) && !(e[j] < 1e300);
            char lab[160];
            snprintf(lab, sizeof lab, "NaN rule: %s planted in %s fails every comparison helper", bn[k],
                     side ? "the reference" : "our output");
            CHECK(lab, fails, "errors %g %g %g %g %g %g %g", e[0], e[1], e[2], e[3], e[4], e[5], e[6]);
        }
    // the same infinity on both sides: still a failure
    memcpy(got, y->data, sizeof got);
    float rf[20];
    memcpy(rf, reff, sizeof rf);
    got[3] = rf[3] = INFINITY;
    double e1 = tu_max_rel_err(got, rf, 20, 1e-2), e2 = tu_sum_err(got, rf, abs_sum, 20, (double)C);
    CHECK("NaN rule: +inf on both sides fails", !(e1 <= 1e300) && !(e2 <= 1e300), "errors %g %g", e1, e2);
    // fmax would have dropped it: the reason for tu_worse
    CHECK("NaN rule: tu_worse keeps a NaN (as +inf) where fmax drops it",
          fmax(0.5, NAN) == 0.5 && isinf(tu_worse(0.5, NAN)) && isinf(tu_worse(NAN, 0.5)) && tu_worse(0.5, 0.25) == 0.5,
          "tu_worse");
    free(abs_sum);
    tensor_free(x);
}

int main(void) {
    rng_seed(&g_rng, 2024);
    Err e = {{0}};
    Tape *t = tape_new(&e);
    if (!t) {
        fprintf(stderr, "%s\n", e.msg);
        return 2;
    }
    printf("finite differences: eps %g, tolerance %g (relative, floored at 5%% of max |grad|)\n",
           (double)FD_EPS, FD_TOL);
    test_nan_rule(t);
    test_lora_linear(t);
    test_bf16_tiles(t);
    test_rmsnorm(t);
    test_rope(t);
    test_vec_exp();
    test_attention(t);
    test_attention_blocks(t);
    test_swiglu_add(t);
    test_glu_large(t);
    test_embedding(t);
    test_cross_entropy(t);
    test_cross_entropy_wide(t);
    test_graph(t);
    test_tape(t);
    test_torch(t);
    tape_free(t);
    return tu_exit();
}
