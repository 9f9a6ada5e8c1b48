// optim — AdamW over a list of parameter tensors, learning-rate schedules, global-norm
// gradient clipping. The update is the one torch.optim.AdamW performs (decoupled weight
// decay applied before the Adam step, bias-corrected moments, eps added after the sqrt).
#pragma once
#include <stdint.h>
#include "util/util.h"
#include "autograd/autograd.h"

typedef struct {
    float beta1, beta2, eps, weight_decay;
} AdamWConfig;
void adamw_config_default(AdamWConfig *c);  // 0.9, 0.999, 1e-8, 0.0

typedef struct {
    AdamWConfig cfg;
    int n_params;
    Tensor **params;          // (n_params), not owned
    float **m, **v;           // first and second moments, one buffer per parameter
    int64_t t;                // steps taken
} AdamW;

AdamW *adamw_new(Tensor **params, int n_params, const AdamWConfig *cfg, Err *e);
void adamw_free(AdamW *o);
// One update of every parameter from its grad with learning rate lr (t += 1 first):
//   p -= lr·wd·p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;
//   p -= lr · (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
void adamw_step(AdamW *o, float lr);
void adamw_zero_grad(AdamW *o);
// Scales every gradient by s (e.g. 1/grad_accum).
void grads_scale(Tensor **params, int n, float s);
// Global L2 norm of all gradients; when max_norm > 0 and the norm exceeds it, scales the
// gradients by max_norm / (norm + 1e-6) (as torch.nn.utils.clip_grad_norm_). Returns the
// norm before clipping.
float grads_clip_global_norm(Tensor **params, int n, float max_norm);

typedef enum { SCHED_CONSTANT = 0, SCHED_LINEAR, SCHED_COSINE } SchedType;
SchedType sched_parse(const char *name, Err *e);  // "constant|linear|cosine"; -1 on error
const char *sched_name(SchedType s);
// Learning rate for optimizer step `step` (0-based, the step about to be taken) exactly as
// HF transformers' get_{constant,linear,cosine}_schedule_with_warmup:
//   step < warmup: base · step / max(1, warmup)
//   then linear: base · max(0, (total-step) / max(1, total-warmup))
//        cosine: base · max(0, 0.5·(1 + cos(pi · progress))), progress = (step-warmup)/(total-warmup)
//        constant: base
float sched_lr(SchedType s, float base_lr, int64_t step, int64_t warmup, int64_t total);
