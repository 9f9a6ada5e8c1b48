// optim: AdamW + cosine-with-warmup schedule + global-norm clipping + gradient scaling,
// 10 steps on 3 parameters, against torch.optim.AdamW / LambdaLR / clip_grad_norm_
// (tests/ref_optim.py); schedules against the HF transformers formulas; zero_grad.
#include "optim/optim.h"
#include "tests/testutil.h"

#define NP 3
#define STEPS 10
#define WARMUP 3
static const int64_t shapes[NP][3] = {{7, 13}, {16}, {5, 3, 4}};
static const int ndims[NP] = {2, 1, 3};
static const float base_lr = 1e-2f, wd = 0.01f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
static const float max_norm = 8.0f;

// Gradient scale of step s: norms grow from ~3.6 to ~16, so max_norm 8 clips only some.
static float grad_scale(int s) { return 0.4f + 0.15f * (float)s; }

static int write_f32(const char *dir, const char *name, const float *x, int64_t n) {
    char path[600];
    Err e;
    if (write_file_atomic(path_join(path, sizeof path, dir, name), x, (size_t)n * sizeof(float), &e)) {
        printf("cannot write %s: %s\n", path, e.msg);
        return -1;
    }
    return 0;
}

// Reads exactly `bytes` bytes of DIR/NAME; NULL (with a message) otherwise.
static void *read_exact(const char *dir, const char *name, size_t bytes) {
    char path[600];
    Err e;
    size_t len = 0;
    char *buf = read_file(path_join(path, sizeof path, dir, name), &len, &e);
    if (!buf) { printf("%s\n", e.msg); return NULL; }
    if (len != bytes) { printf("%s: %zu bytes, expected %zu\n", path, len, bytes); free(buf); return NULL; }
    return buf;
}

static int grads_all_zero(Tensor **p, int n) {
    for (int i = 0; i < n; i++)
        for (int64_t j = 0; j < p[i]->n; j++)
            if (p[i]->grad[j] != 0.0f) return 0;
    return 1;
}

static void test_sched_local(void) {
    Err e;
    CHECK("sched_parse names", sched_parse("constant", &e) == SCHED_CONSTANT &&
          sched_parse("linear", &e) == SCHED_LINEAR && sched_parse("cosine", &e) == SCHED_COSINE,
          "parse failed");
    e.msg[0] = 0;
    CHECK("sched_parse rejects unknown", (int)sched_parse("cosin", &e) == -1 && strstr(e.msg, "cosin"),
          "got no error / message '%s'", e.msg);
    CHECK("sched_name round trip", !strcmp(sched_name(SCHED_LINEAR), "linear") &&
          !strcmp(sched_name(SCHED_COSINE), "cosine") && !strcmp(sched_name(SCHED_CONSTANT), "constant"),
          "names differ");
    CHECK("sched warmup step 0 is 0", sched_lr(SCHED_COSINE, 1e-3f, 0, 3, 10) == 0.0f &&
          sched_lr(SCHED_LINEAR, 1e-3f, 0, 3, 10) == 0.0f && sched_lr(SCHED_CONSTANT, 1e-3f, 0, 3, 10) == 0.0f,
          "nonzero lr at step 0 with warmup");
    CHECK("sched end of linear is 0", sched_lr(SCHED_LINEAR, 1e-3f, 10, 3, 10) == 0.0f, "%g",
          sched_lr(SCHED_LINEAR, 1e-3f, 10, 3, 10));
    float mid = sched_lr(SCHED_COSINE, 2.0f, 7, 2, 12);  // progress 0.5 -> half
    CHECK("sched cosine midpoint", fabsf(mid - 1.0f) < 1e-6f, "%.9g", mid);
    CHECK("sched no warmup starts at base", sched_lr(SCHED_COSINE, 3e-4f, 0, 0, 10) == 3e-4f, "%g",
          sched_lr(SCHED_COSINE, 3e-4f, 0, 0, 10));
}

// Compares sched_lr with the HF multipliers ref_optim.py wrote (base 1 and base 3e-4).
static void test_sched_ref(const char *dir) {
    char path[600];
    FILE *f = fopen(path_join(path, sizeof path, dir, "sched.txt"), "r");
    if (!f) { CHECK("sched vs HF formulas", 0, "cannot open %s", path); return; }
    char kind[32];
    long long step, warm, total;
    double mult, maxerr = 0;
    int lines = 0, bad = 0;
    while (fscanf(f, "%31s %lld %lld %lld %lf", kind, &step, &warm, &total, &mult) == 5) {
        Err e;
        SchedType s = sched_parse(kind, &e);
        double a = sched_lr(s, 1.0f, step, warm, total);
        double b = sched_lr(s, 3e-4f, step, warm, total);
        double err = tu_worse(fabs(a - mult), fabs(b - 3e-4 * mult) / 3e-4);  // a NaN counts as +inf
        maxerr = tu_worse(maxerr, err);
        if (!(err <= 1e-6)) {
            if (bad++ < 5) printf("  %s step %lld warmup %lld total %lld: got %.9g, HF %.9g\n",
                                  kind, step, warm, total, a, mult);
        }
        lines++;
    }
    fclose(f);
    CHECK("sched vs HF formulas (constant/linear/cosine)", lines >= 60 && bad == 0,
          "%d lines, %d mismatches, max err %.3g", lines, bad, maxerr);
    printf("  sched: %d points, max abs error of multiplier %.3g\n", lines, maxerr);
}

// Tolerances for our AdamW run against torch's on the same inputs (tests/testutil.h's sum rule
// and fp32 rounding, carried through the steps in double, element by element). The only sum is
// the global gradient norm over K = all elements (then the NP tensors' norms): each side's
// norm is within tu_sum_tol(K + NP, 1) relative, so the clip coefficient differs by at most
// dc = tu_sum_tol(K + NP, 1) + 4u on a clipped step (0 otherwise), and the clipped gradient g
// by dg = dc + 3u relative. Then, each side rounding every operation (3 in m's update, 4 in
// v's, 8 in p's: 2x for the two sides):
//   m = b1 m + (1-b1) g:    tm = b1 tm + (1-b1) |g| dg + 6u (b1 |m| + (1-b1) |g|)
//   v = b2 v + (1-b2) g²:   tv = b2 tv + (1-b2) g² 2 dg + 8u v
//   p = p (1 - lr wd) - lr m̂ / (sqrt(v̂) + eps): tp = tp (1 - lr wd) + lr (tm / bc1 / den
//       + |m̂| / den² · tv / bc2 / (2 sqrt(v̂))) + |dlr| (|m̂| / den + wd |p|) + 16u (|update| + |p|)
// with dlr = our lr - torch's (the schedule, computed apart). tm, tv, tp per element (total_n).
static void adamw_tolerances(const float *p0, const float *gclip, const int *clipped, const double *lrs,
                             const double *rlrs, int64_t total_n, double *tp, double *tm, double *tv) {
    const double u = TU_U32, b1 = beta1, b2 = beta2;
    double dc = tu_sum_tol((double)(total_n + NP), 1.0) + 4 * u;
    for (int64_t j = 0; j < total_n; j++) {
        double p = p0[j], m = 0, v = 0, em = 0, ev = 0, ep = 0;
        for (int s = 0; s < STEPS; s++) {
            double g = gclip[(int64_t)s * total_n + j], dg = (clipped[s] ? dc : 0.0) + 3 * u, lr = lrs[s];
            em = b1 * em + (1 - b1) * fabs(g) * dg + 6 * u * (b1 * fabs(m) + (1 - b1) * fabs(g));
            m = b1 * m + (1 - b1) * g;
            v = b2 * v + (1 - b2) * g * g;
            ev = b2 * ev + (1 - b2) * g * g * 2 * dg + 8 * u * v;
            double bc1 = 1 - pow(b1, s + 1), bc2 = 1 - pow(b2, s + 1), sv = sqrt(v / bc2), den = sv + eps;
            double mh = m / bc1, upd = lr * mh / den;
            double dupd = lr * (em / bc1 / den + (sv > 0 ? fabs(mh) / (den * den) * ev / bc2 / (2 * sv) : 0.0));
            ep = ep * (1 - lr * wd) + dupd + fabs(lrs[s] - rlrs[s]) * (fabs(mh) / den + wd * fabs(p)) +
                 16 * u * (fabs(upd) + fabs(p));
            p = p * (1 - lr * wd) - upd;
        }
        tp[j] = ep, tm[j] = em, tv[j] = ev;
    }
}

static void test_adamw_vs_torch(Tensor **P, const char *dir) {
    // initial values and gradients, deterministic
    Rng r;
    rng_seed(&r, 1234);
    for (int i = 0; i < NP; i++)
        for (int64_t j = 0; j < P[i]->n; j++) P[i]->data[j] = rng_normal(&r);
    int64_t total_n = 0;
    for (int i = 0; i < NP; i++) total_n += P[i]->n;
    float *grads = malloc((size_t)(STEPS * 2 * total_n) * sizeof(float));
    int64_t off = 0;
    for (int s = 0; s < STEPS; s++)
        for (int m = 0; m < 2; m++)
            for (int i = 0; i < NP; i++)
                for (int64_t j = 0; j < P[i]->n; j++) grads[off++] = rng_normal(&r) * grad_scale(s);

    char path[600], name[64];
    FILE *f = fopen(path_join(path, sizeof path, dir, "spec.txt"), "w");
    for (int i = 0; i < NP; i++) {
        fprintf(f, "shape");
        for (int d = 0; d < ndims[i]; d++) fprintf(f, " %lld", (long long)shapes[i][d]);
        fprintf(f, "\n");
    }
    fprintf(f, "steps %d\nwarmup %d\nlr %.9g\nwd %.9g\nbeta1 %.9g\nbeta2 %.9g\neps %.9g\nmax_norm %.9g\n",
            STEPS, WARMUP, base_lr, wd, beta1, beta2, eps, max_norm);
    fclose(f);
    int ok = 0;
    for (int i = 0; i < NP; i++) {
        snprintf(name, sizeof name, "init_%d.f32", i);
        ok |= write_f32(dir, name, P[i]->data, P[i]->n);
    }
    ok |= write_f32(dir, "grads.f32", grads, STEPS * 2 * total_n);
    if (ok) { CHECK("write reference inputs", 0, "see above"); free(grads); return; }

    char cmd[800];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_optim.py '%s'", dir);
    int rc = system(cmd);
    CHECK("ref_optim.py ran", rc == 0, "exit status %d", rc);
    if (rc != 0) { free(grads); return; }

    // the C run
    AdamWConfig cfg;
    adamw_config_default(&cfg);
    cfg.beta1 = beta1; cfg.beta2 = beta2; cfg.eps = eps; cfg.weight_decay = wd;
    Err e;
    AdamW *o = adamw_new(P, NP, &cfg, &e);
    if (!o) { CHECK("adamw_new", 0, "%s", e.msg); free(grads); return; }
    float norms[STEPS];
    double lrs[STEPS];
    // the starting values and each step's clipped gradients, for the tolerances
    float *p0 = malloc((size_t)total_n * sizeof(float)), *gclip = malloc((size_t)(STEPS * total_n) * sizeof(float));
    for (int i = 0, k = 0; i < NP; k += (int)P[i]->n, i++) memcpy(p0 + k, P[i]->data, (size_t)P[i]->n * sizeof(float));
    off = 0;
    for (int s = 0; s < STEPS; s++) {
        adamw_zero_grad(o);
        for (int m = 0; m < 2; m++)
            for (int i = 0; i < NP; i++)
                for (int64_t j = 0; j < P[i]->n; j++) P[i]->grad[j] += grads[off++];
        grads_scale(P, NP, 0.5f);
        norms[s] = grads_clip_global_norm(P, NP, max_norm);
        for (int i = 0, k = 0; i < NP; k += (int)P[i]->n, i++)
            memcpy(gclip + (int64_t)s * total_n + k, P[i]->grad, (size_t)P[i]->n * sizeof(float));
        lrs[s] = sched_lr(SCHED_COSINE, base_lr, s, WARMUP, STEPS);
        adamw_step(o, (float)lrs[s]);
    }
    CHECK("adamw step count", o->t == STEPS, "t = %lld", (long long)o->t);

    float *rnorms = read_exact(dir, "norms.f32", STEPS * sizeof(float));
    double *rlrs = read_exact(dir, "lrs.f64", STEPS * sizeof(double));
    int clipped[STEPS] = {0};
    for (int s = 0; s < STEPS; s++) clipped[s] = norms[s] > max_norm;
    if (rnorms && rlrs) {
        // the global norm sums the squares of all total_n gradients (then NP tensors' norms)
        double nerr = 0;
        int nclipped = 0;
        for (int s = 0; s < STEPS; s++) {
            nerr = tu_worse(nerr, tu_err_ratio(norms[s], rnorms[s], tu_sum_tol((double)(total_n + NP), rnorms[s])));
            nclipped += clipped[s];
        }
        CHECK("clip norm equals torch clip_grad_norm_", nerr <= 1,
              "max error %.3g of the tolerance %g·sqrt(K)·u·norm", nerr, TU_SUM_C);
        CHECK("clipping active on some steps only", nclipped >= 2 && nclipped <= STEPS - 2,
              "%d of %d steps clipped", nclipped, STEPS);
        double lerr = 0;
        for (int s = 0; s < STEPS; s++) lerr = tu_worse(lerr, fabs(lrs[s] - rlrs[s]) / base_lr);
        CHECK("cosine lr per step equals LambdaLR", lerr < 1e-6 && rlrs[0] == 0.0, "max err %.3g", lerr);
        printf("  norms %.4g..%.4g, %d/%d clipped; norm max error %.3g of the tolerance; lr max rel err %.3g\n",
               norms[0], norms[STEPS - 1], nclipped, STEPS, nerr, lerr);
    }

    double perr = INFINITY, merr = INFINITY, verr = INFINITY, moved = 0;
    int missing = 0;
    if (rlrs) {
        double *tp = malloc((size_t)total_n * sizeof(double)), *tm = malloc((size_t)total_n * sizeof(double));
        double *tv = malloc((size_t)total_n * sizeof(double));
        adamw_tolerances(p0, gclip, clipped, lrs, rlrs, total_n, tp, tm, tv);
        perr = merr = verr = 0;
        for (int i = 0, k = 0; i < NP; k += (int)P[i]->n, i++) {
            size_t bytes = (size_t)P[i]->n * sizeof(float);
            snprintf(name, sizeof name, "param_%d.f32", i);
            float *rp = read_exact(dir, name, bytes);
            snprintf(name, sizeof name, "m_%d.f32", i);
            float *rm = read_exact(dir, name, bytes);
            snprintf(name, sizeof name, "v_%d.f32", i);
            float *rv = read_exact(dir, name, bytes);
            if (rp && rm && rv) {
                for (int64_t j = 0; j < P[i]->n; j++) {
                    perr = tu_worse(perr, tu_err_ratio(P[i]->data[j], rp[j], tp[k + j]));
                    merr = tu_worse(merr, tu_err_ratio(o->m[i][j], rm[j], tm[k + j]));
                    verr = tu_worse(verr, tu_err_ratio(o->v[i][j], rv[j], tv[k + j]));
                }
            } else {
                missing++;
            }
            free(rp); free(rm); free(rv);
        }
        free(tp), free(tm), free(tv);
    }
    free(rnorms);
    free(rlrs);
    free(p0);
    free(gclip);
    // the parameters must actually have moved (10 steps of ~lr each)
    Rng r2;
    rng_seed(&r2, 1234);
    for (int i = 0; i < NP; i++)
        for (int64_t j = 0; j < P[i]->n; j++) moved = tu_worse(moved, fabs(P[i]->data[j] - rng_normal(&r2)));
    CHECK("params moved", moved > 1e-2 && isfinite(moved), "max change %.3g", moved);
    CHECK("AdamW params equal torch", !missing && perr <= 1, "max error %.3g of the tolerance (adamw_tolerances)",
          perr);
    CHECK("AdamW moments equal torch", !missing && merr <= 1 && verr <= 1,
          "of the tolerance (adamw_tolerances): m %.3g v %.3g", merr, verr);
    printf("  after %d steps, errors as fractions of the tolerance: params %.3g (max change %.3g), m %.3g, v %.3g\n",
           STEPS, perr, moved, merr, verr);

    CHECK("grads nonzero before zero_grad", !grads_all_zero(P, NP), "all zero already");
    adamw_zero_grad(o);
    CHECK("adamw_zero_grad zeroes", grads_all_zero(P, NP), "nonzero gradient left");
    adamw_free(o);
    free(grads);
}

static void test_local(Tensor **P) {
    AdamWConfig c;
    adamw_config_default(&c);
    CHECK("adamw_config_default", c.beta1 == 0.9f && c.beta2 == 0.999f && c.eps == 1e-8f &&
          c.weight_decay == 0.0f, "%g %g %g %g", c.beta1, c.beta2, c.eps, c.weight_decay);

    // clipping: norm reported, no change with max_norm <= 0 or above the norm; exact scale below
    double ss = 0;
    for (int i = 0; i < NP; i++)
        for (int64_t j = 0; j < P[i]->n; j++) {
            P[i]->grad[j] = (float)((j % 7) - 3) * 0.25f * (float)(i + 1);
            ss += (double)P[i]->grad[j] * P[i]->grad[j];
        }
    float g0 = P[2]->grad[5];
    float n0 = grads_clip_global_norm(P, NP, 0.0f);
    float n1 = grads_clip_global_norm(P, NP, 1e6f);
    CHECK("clip norm value", fabs(n0 - sqrt(ss)) < 1e-6 * sqrt(ss) && n1 == n0, "%.9g vs %.9g", n0, sqrt(ss));
    CHECK("no clip when max_norm <= 0 or above norm", P[2]->grad[5] == g0, "grad changed");
    float n2 = grads_clip_global_norm(P, NP, n0 / 4);
    float n3 = grads_clip_global_norm(P, NP, 0.0f);
    CHECK("clip scales to max_norm", n2 == n0 && fabsf(n3 - n0 / 4) < 1e-5f * n0, "after clip %.9g, want %.9g",
          n3, n0 / 4);
    grads_scale(P, NP, 0.0f);
    CHECK("grads_scale(0) zeroes", grads_all_zero(P, NP), "nonzero left");

    // errors a user can cause
    Err e;
    e.msg[0] = 0;
    c.beta2 = 1.5f;
    CHECK("adamw_new rejects beta2 1.5", adamw_new(P, NP, &c, &e) == NULL && strstr(e.msg, "beta"),
          "msg '%s'", e.msg);
    adamw_config_default(&c);
    int64_t sh[1] = {4};
    Tensor *frozen = tensor_new_param(1, sh, 0, "frozen.w", &e);
    Tensor *two[2] = {P[0], frozen};
    e.msg[0] = 0;
    CHECK("adamw_new rejects frozen tensor", frozen && adamw_new(two, 2, &c, &e) == NULL &&
          strstr(e.msg, "frozen.w"), "msg '%s'", e.msg);
    tensor_free(frozen);
}

int main(void) {
    Err e;
    Tensor *P[NP];
    for (int i = 0; i < NP; i++) {
        static const char *const names[NP] = {"p0", "p1", "p2"};
        P[i] = tensor_new_param(ndims[i], shapes[i], 1, names[i], &e);
        if (!P[i]) { CHECK("tensor_new_param", 0, "%s", e.msg); return tu_exit(); }
    }
    test_sched_local();
    test_local(P);
    if (!tu_have_torch()) {
        SKIP("AdamW/clip/schedules vs torch", "/usr/bin/python3 cannot import torch");
    } else {
        char dir[512];
        tu_tmpdir("optim", dir, sizeof dir);
        test_adamw_vs_torch(P, dir);  // runs tests/ref_optim.py, which also writes sched.txt
        test_sched_ref(dir);
    }
    for (int i = 0; i < NP; i++) tensor_free(P[i]);
    return tu_exit();
}
