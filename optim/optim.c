// optim — AdamW (as torch.optim.AdamW, PyTorch 1.13, single-tensor path), global-norm
// gradient clipping (as torch.nn.utils.clip_grad_norm_) and the HF transformers
// warmup schedules. Element loops run under OpenMP; reductions are chunked so the result
// does not depend on the thread count (resuming must reproduce a run bit for bit).
#include "optim/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void adamw_config_default(AdamWConfig *c) {
    c->beta1 = 0.9f;
    c->beta2 = 0.999f;
    c->eps = 1e-8f;
    c->weight_decay = 0.0f;
}

AdamW *adamw_new(Tensor **params, int n_params, const AdamWConfig *cfg, Err *e) {
    if (n_params <= 0) { err_set(e, "optimizer: no trainable parameters"); return NULL; }
    if (!(cfg->beta1 >= 0 && cfg->beta1 < 1) || !(cfg->beta2 >= 0 && cfg->beta2 < 1)) {
        err_set(e, "optimizer: betas must be in [0, 1), got (%g, %g)", cfg->beta1, cfg->beta2);
        return NULL;
    }
    if (!(cfg->eps >= 0) || !(cfg->weight_decay >= 0)) {
        err_set(e, "optimizer: eps and weight_decay must be >= 0, got eps %g, weight_decay %g",
                cfg->eps, cfg->weight_decay);
        return NULL;
    }
    for (int i = 0; i < n_params; i++) {
        if (!params[i] || !params[i]->requires_grad) {
            err_set(e, "optimizer: parameter %d (%s) does not require a gradient", i,
                    params[i] && params[i]->name ? params[i]->name : "?");
            return NULL;
        }
    }
    AdamW *o = xcalloc(1, sizeof *o, "optimizer", e);
    if (!o) return NULL;
    o->cfg = *cfg;
    o->n_params = n_params;
    o->params = params;
    o->m = xcalloc((size_t)n_params, sizeof(float *), "optimizer moment table", e);
    o->v = xcalloc((size_t)n_params, sizeof(float *), "optimizer moment table", e);
    if (!o->m || !o->v) { adamw_free(o); return NULL; }
    for (int i = 0; i < n_params; i++) {
        size_t bytes = (size_t)params[i]->n * sizeof(float);
        char what[160];
        snprintf(what, sizeof what, "AdamW moments of %s (%lld floats)",
                 params[i]->name ? params[i]->name : "parameter", (long long)params[i]->n);
        o->m[i] = xmalloc_aligned(bytes ? bytes : 64, what, e);
        o->v[i] = xmalloc_aligned(bytes ? bytes : 64, what, e);
        if (!o->m[i] || !o->v[i]) { adamw_free(o); return NULL; }
        memset(o->m[i], 0, bytes);
        memset(o->v[i], 0, bytes);
    }
    return o;
}

void adamw_free(AdamW *o) {
    if (!o) return;
    for (int i = 0; i < o->n_params; i++) {
        if (o->m) free(o->m[i]);
        if (o->v) free(o->v[i]);
    }
    free(o->m);
    free(o->v);
    free(o);
}

// Hyperparameters come from decimal text (a recipe) and torch holds them as Python
// doubles; the shortest decimal that rounds to the stored float recovers that double, so
// bias corrections and (1 - beta) match torch's instead of differing by ~2e-7 relative.
static double decimal_of(float f) {
    char buf[40];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        double d = strtod(buf, NULL);
        if ((float)d == f) return d;
    }
    return (double)f;
}

// p (n), g (n), m (n), v (n): one AdamW update in place, with the scalars already
// prepared in double and rounded to float as torch rounds its Python scalars. The
// operation order (and fusing) is torch 1.13's _single_tensor_adamw on CPU:
//   p *= 1 - lr·wd;  m = m·b1 + (1-b1)·g;  v = v·b2 + (1-b2)·g·g;
//   denom = sqrt(v) / sqrt(1-b2^t) + eps;  p += (-lr/(1-b1^t)) · m / denom
static void adamw_update(float *p, const float *g, float *m, float *v, int64_t n,
                         float decay, float b1, float a1, float b2, float a2, float bc2_sqrt,
                         float eps, float neg_step) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = fmaf(a1, gi, m[i] * b1);       // ATen's add(alpha) is a fused multiply-add
        float vi = fmaf(a2 * gi, gi, v[i] * b2);  // and so is its addcmul
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        float pi = p[i] * decay;
        p[i] = pi + neg_step * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

void adamw_step(AdamW *o, float lr) {
    o->t += 1;
    double b1 = decimal_of(o->cfg.beta1), b2 = decimal_of(o->cfg.beta2);
    double eps = decimal_of(o->cfg.eps), wd = decimal_of(o->cfg.weight_decay);
    double bc1 = 1.0 - pow(b1, (double)o->t);
    double bc2 = 1.0 - pow(b2, (double)o->t);
    float decay = (float)(1.0 - (double)lr * wd);
    float neg_step = (float)(-((double)lr / bc1));
    for (int i = 0; i < o->n_params; i++) {
        Tensor *p = o->params[i];
        if (!p->grad) continue;  // as torch: a parameter without a gradient is skipped
        adamw_update(p->data, p->grad, o->m[i], o->v[i], p->n, decay, (float)b1,
                     (float)(1.0 - b1), (float)b2, (float)(1.0 - b2), (float)sqrt(bc2),
                     (float)eps, neg_step);
    }
}

void adamw_zero_grad(AdamW *o) {
    for (int i = 0; i < o->n_params; i++) tensor_zero_grad(o->params[i]);
}

// g (n) *= s
static void scale_inplace(float *g, int64_t n, float s) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) g[i] *= s;
}

void grads_scale(Tensor **params, int n, float s) {
    for (int i = 0; i < n; i++)
        if (params[i]->grad) scale_inplace(params[i]->grad, params[i]->n, s);
}

// g (n) -> Σ g² in double, summed over fixed chunks in a fixed order (thread-count
// independent).
#define SUMSQ_CHUNK 16384
static double sum_squares(const float *g, int64_t n) {
    int64_t nchunks = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    if (nchunks <= 1) {
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += (double)g[i] * g[i];
        return s;
    }
    double *part = malloc((size_t)nchunks * sizeof(double));
    if (!part) die_internal("out of memory in gradient norm (%lld chunks)", (long long)nchunks);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t lo = c * SUMSQ_CHUNK, hi = lo + SUMSQ_CHUNK < n ? lo + SUMSQ_CHUNK : n;
        double s = 0;
        for (int64_t i = lo; i < hi; i++) s += (double)g[i] * g[i];
        part[c] = s;
    }
    double s = 0;
    for (int64_t c = 0; c < nchunks; c++) s += part[c];
    free(part);
    return s;
}

// The norm is accumulated in double (torch accumulates in fp32, so the two differ by about
// one fp32 ulp).
float grads_clip_global_norm(Tensor **params, int n, float max_norm) {
    double ss = 0;
    for (int i = 0; i < n; i++)
        if (params[i]->grad) ss += sum_squares(params[i]->grad, params[i]->n);
    float norm = (float)sqrt(ss);
    if (max_norm > 0) {
        // torch: clip_coef = max_norm / (total_norm + 1e-6) in fp32 (a reciprocal times
        // max_norm), clamped to 1; clamped to 1 leaves the gradients unchanged.
        float coef = (1.0f / (norm + 1e-6f)) * max_norm;
        if (coef < 1.0f) grads_scale(params, n, coef);
    }
    return norm;
}

static const char *const sched_names[] = {"constant", "linear", "cosine"};

SchedType sched_parse(const char *name, Err *e) {
    for (int i = 0; i < 3; i++)
        if (name && strcmp(name, sched_names[i]) == 0) return (SchedType)i;
    err_set(e, "unknown lr schedule \"%s\" (expected constant, linear or cosine)",
            name ? name : "(null)");
    return (SchedType)-1;
}

const char *sched_name(SchedType s) {
    return (s >= SCHED_CONSTANT && s <= SCHED_COSINE) ? sched_names[s] : "unknown";
}

float sched_lr(SchedType s, float base_lr, int64_t step, int64_t warmup, int64_t total) {
    double mult;
    if (step < warmup) {
        mult = (double)step / (double)(warmup > 1 ? warmup : 1);
    } else if (s == SCHED_LINEAR) {
        int64_t span = total - warmup > 1 ? total - warmup : 1;
        mult = fmax(0.0, (double)(total - step) / (double)span);
    } else if (s == SCHED_COSINE) {
        int64_t span = total - warmup > 1 ? total - warmup : 1;
        double progress = (double)(step - warmup) / (double)span;
        // HF: num_cycles = 0.5 -> cos(pi · 2 · 0.5 · progress)
        mult = fmax(0.0, 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress)));
    } else {
        mult = 1.0;
    }
    return (float)((double)base_lr * mult);
}
