// Whole-model check against PyTorch. tests/ref_llama.py builds a tiny Llama (2 layers, GQA
// 4/2 heads, head_dim 16, SwiGLU 96, vocab 101) with random weights and a LoRA adapter
// (rank 4, alpha 8, on q,k,v,o,gate,up,down, A and B both non-zero), writes it as a HF model
// dir + PEFT adapter dir, and records in expected.safetensors what HF/PEFT/torch compute in
// float64: logits, loss, the gradient of every lora_A/lora_B, and a 5-step training run
// (grad_accum 2, global-norm clipping that bites on some steps, HF cosine schedule with 2
// warmup steps, torch.optim.AdamW). Variants: untied lm_head (F32 file), tied embeddings
// (BF16 file), rsLoRA (scale alpha/sqrt(r)), and QLoRA: the model loaded with --quant nf4 and
// trained with gradient checkpointing, against PyTorch run on the dequantized weights
// (tests/ref_nf4.py's independent NF4) with bf16-rounded embeddings and lm_head.
// Everything must agree to 1e-4 relative, element by element with a floor of 5% of the
// tensor's largest magnitude: smaller entries are compared on the tensor's own scale, because
// fp32 arithmetic (ours, and PyTorch's own fp32 path alike) leaves an absolute noise of about
// 1e-6 × the tensor's scale — with a floor of 1e-3 PyTorch fp32 itself would miss 1e-4.
#include "tests/testutil.h"
#include "model/model.h"
#include "export/export.h"
#include "optim/optim.h"
#include "train/train.h"

#include "tests/refcheck.h"

#define TOL REF_TOL
#define MAX_PARAMS 512

static double meta_num(const SafeTensors *st, const char *key) {
    const char *v = st_metadata(st, key);
    return v ? strtod(v, NULL) : NAN;
}

// PEFT key of the A (ab = 'A') or B matrix of target tg in layer l, after `prefix`.
static const char *peft_key(char *buf, size_t n, const char *prefix, int l, int tg, char ab) {
    snprintf(buf, n, "%sbase_model.model.model.layers.%d.%s.%s.lora_%c.weight", prefix, l,
             tg < LT_GATE ? "self_attn" : "mlp", lora_target_name((LoraTarget)tg), ab);
    return buf;
}

// Compares every A and B of lora (their grads when use_grad, else their values) with
// expected "<prefix><peft key>". Returns the worst error; *worst names it; *count counts.
static double compare_adapter(const SafeTensors *st, const LoraAdapter *lora, const char *prefix,
                              int use_grad, char *worst, size_t wn, int *count) {
    double max_err = 0;
    *count = 0;
    snprintf(worst, wn, "(none)");
    for (int l = 0; l < lora->n_layers; l++)
        for (int tg = 0; tg < LT_COUNT; tg++)
            for (int ab = 0; ab < 2; ab++) {
                Tensor *p = ab ? lora->B[l * LT_COUNT + tg] : lora->A[l * LT_COUNT + tg];
                char key[256];
                peft_key(key, sizeof key, prefix, l, tg, ab ? 'B' : 'A');
                double err = p ? compare(st, key, use_grad ? p->grad : p->data, p->n) : INFINITY;
                if (p) (*count)++;
                if (!(err <= max_err)) {  // also catches NaN
                    max_err = err;
                    snprintf(worst, wn, "%s", key + strlen(prefix));
                }
            }
    return max_err;
}

static void run_variant(const char *root, const char *name, QuantType quant) {
    char dir[512], mdir[600], adir[600], xpath[600], label[512], worst[256];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    path_join(mdir, sizeof mdir, dir, "model");
    path_join(adir, sizeof adir, dir, "adapter");
    path_join(xpath, sizeof xpath, dir, "expected.safetensors");
    Err e = {{0}};
    SafeTensors *ex = st_open(xpath, &e);
    ModelLoadOptions lo;
    model_load_options_default(&lo);
    lo.quant = quant;
    Model *m = ex ? model_load_ex(mdir, &lo, &e) : NULL;
    LoraAdapter *lora = m ? adapter_load_peft(adir, m, &e) : NULL;
    Tape *t = lora ? tape_new(&e) : NULL;
    snprintf(label, sizeof label, "ref %s: load expected, model and adapter", name);
    CHECK(label, t != NULL, "%s", e.msg);
    if (!t) goto done;
    if (quant == QUANT_NF4) {
        int nf4 = 0;
        for (int l = 0; l < m->cfg.n_layers; l++)
            for (int tg = 0; tg < LT_COUNT; tg++) nf4 += m->layers[l].w[tg].type == WT_NF4;
        snprintf(label, sizeof label, "ref %s: %d linear weights NF4, embeddings and lm_head bf16", name, nf4);
        CHECK(label, nf4 == m->cfg.n_layers * LT_COUNT && m->emb.type == WT_BF16 && m->lm_head.type == WT_BF16,
              "emb %s lm_head %s", weight_type_name(m->emb.type), weight_type_name(m->lm_head.type));
        tape_set_checkpointing(t, 1);
    }

    int64_t n_ids = 0, n_tg = 0, n_tids = 0, n_ttg = 0;
    int *ids = exp_i32(ex, "ids", &n_ids), *targets = exp_i32(ex, "targets", &n_tg);
    int *tids = exp_i32(ex, "train_ids", &n_tids), *ttg = exp_i32(ex, "train_targets", &n_ttg);
    const StTensor *sid = st_find(ex, "ids");
    if (!ids || !targets || !tids || !ttg || n_tg != n_ids || n_ttg != n_tids) goto free_ids;
    const int B = (int)sid->shape[0], T = (int)sid->shape[1], V = m->cfg.vocab_size;
    double want_scale = meta_num(ex, "scale");
    snprintf(label, sizeof label, "ref %s: adapter scale %g", name, lora->scale);
    CHECK(label, fabs(lora->scale - want_scale) < 1e-6 * want_scale, "want %g", want_scale);

    // ---- forward: logits --------------------------------------------------------------------
    tape_set_recording(t, 1);
    tape_set_training(t, 0);
    Tensor *logits = model_forward(t, m, lora, ids, B, T, NULL, 0);
    double err = compare(ex, "logits", logits->n == (int64_t)B * T * V ? logits->data : NULL,
                         (int64_t)B * T * V);
    snprintf(label, sizeof label, "ref %s: logits (%dx%dx%d) max rel err %.2e", name, B, T, V, err);
    CHECK(label, err < TOL, "tolerance %.0e", TOL);
    tape_reset(t);

    // ---- the same logits through the KV cache with recording off (the generation path):
    // row 1 as a 5-token prefix, then one token at a time asking for the last position only
    {
        const int b = 1, pre = 5;
        KVCache *kv = kv_new(&m->cfg, T, &e);
        float *want = exp_f32(ex, "logits", (int64_t)B * T * V);
        float *got = malloc((size_t)T * V * sizeof(float));
        tape_set_recording(t, 0);
        if (kv && want && got && B > b && T > pre) {
            Tensor *lg = model_forward(t, m, lora, ids + b * T, 1, pre, kv, 0);
            memcpy(got, lg->data, (size_t)pre * V * sizeof(float));
            tape_reset(t);
            for (int p = pre; p < T; p++) {
                lg = model_forward(t, m, lora, ids + b * T + p, 1, 1, kv, 1);
                memcpy(got + (size_t)p * V, lg->data, (size_t)V * sizeof(float));
                tape_reset(t);
            }
        }
        err = kv && want && got ? rel_err(got, want + (size_t)b * T * V, (int64_t)T * V) : INFINITY;
        snprintf(label, sizeof label, "ref %s: logits via KV cache (prefix %d + %d single) max rel err %.2e",
                 name, pre, T - pre, err);
        CHECK(label, err < TOL, "tolerance %.0e; %s", TOL, e.msg);
        tape_set_recording(t, 1);
        kv_free(kv);
        free(want);
        free(got);
    }

    // ---- loss and LoRA gradients -------------------------------------------------------------
    Tensor *params[MAX_PARAMS];
    int np = lora_params(lora, params, MAX_PARAMS);
    for (int i = 0; i < np; i++) tensor_zero_grad(params[i]);
    int kept = 0;
    for (int i = 0; i < B * T; i++) kept += targets[i] >= 0;
    Tensor *loss = model_loss(t, m, lora, ids, targets, B, T, (float)kept);
    tape_backward(t, loss);
    err = compare(ex, "loss", loss->data, 1);
    snprintf(label, sizeof label, "ref %s: loss %.6f (%d kept targets) rel err %.2e", name,
             loss->data[0], kept, err);
    CHECK(label, err < TOL, "tolerance %.0e", TOL);
    int count;
    err = compare_adapter(ex, lora, "grad.", 1, worst, sizeof worst, &count);
    snprintf(label, sizeof label, "ref %s: %d LoRA grads max rel err %.2e (worst %s)", name,
             count, err, worst);
    CHECK(label, err < TOL && count == 2 * m->cfg.n_layers * LT_COUNT, "tolerance %.0e", TOL);
    tape_reset(t);

    // ---- training: 5 optimizer steps from the same adapter -----------------------------------
    lora_free(lora);
    lora = adapter_load_peft(adir, m, &e);
    snprintf(label, sizeof label, "ref %s: reload adapter", name);
    CHECK(label, lora != NULL, "%s", e.msg);
    if (!lora) goto free_ids;
    np = lora_params(lora, params, MAX_PARAMS);
    TrainConfig c;
    train_config_default(&c);
    c.compute = COMPUTE_FP32;  // the PyTorch reference is fp32 (bf16 compute: test_qlora)
    const int steps = (int)meta_num(ex, "steps"), accum = (int)meta_num(ex, "grad_accum");
    c.lr = (float)meta_num(ex, "lr");
    c.sched = SCHED_COSINE;
    c.warmup_steps = (int)meta_num(ex, "warmup_steps");
    c.warmup_ratio = 0;
    c.max_grad_norm = (float)meta_num(ex, "max_grad_norm");
    c.grad_accum = accum;
    c.batch_size = B;
    c.steps = steps;
    c.adamw.weight_decay = (float)meta_num(ex, "weight_decay");
    AdamW *opt = adamw_new(params, np, &c.adamw, &e);
    if (!opt || steps < 1 || accum < 1 || steps > 64 || accum > 8 ||
        n_tids != (int64_t)steps * accum * B * T) {
        CHECK("ref training setup", 0, "%s (steps %d, grad_accum %d)", e.msg, steps, accum);
        adamw_free(opt);
        goto free_ids;
    }
    float losses[64], norms[64], lrs[64];
    for (int s = 0; s < steps; s++) {
        Batch mb[8];
        for (int a = 0; a < accum; a++) {
            size_t off = (size_t)(s * accum + a) * B * T;
            mb[a] = (Batch){.B = B, .T = T, .ids = tids + off, .targets = ttg + off,
                            .n_tokens = B * T};
            for (int i = 0; i < B * T; i++) mb[a].n_targets += mb[a].targets[i] >= 0;
        }
        losses[s] = train_step(t, m, lora, opt, mb, accum, &c, s, steps, &norms[s], &lrs[s]);
    }
    double e_loss = compare(ex, "train_loss", losses, steps);
    double e_norm = compare(ex, "train_grad_norm", norms, steps);
    double e_lr = compare(ex, "train_lr", lrs, steps);
    snprintf(label, sizeof label,
             "ref %s: %d train steps (%d clipped): losses %.2e, grad norms %.2e, lrs %.2e max rel err",
             name, steps, (int)meta_num(ex, "clipped_steps"), e_loss, e_norm, e_lr);
    CHECK(label, e_loss < TOL && e_norm < TOL && e_lr < TOL, "tolerance %.0e", TOL);
    err = compare_adapter(ex, lora, "final.", 0, worst, sizeof worst, &count);
    snprintf(label, sizeof label, "ref %s: final A/B after %d steps max rel err %.2e (worst %s)",
             name, steps, err, worst);
    CHECK(label, err < TOL && count == 2 * m->cfg.n_layers * LT_COUNT, "tolerance %.0e", TOL);
    adamw_free(opt);

free_ids:
    free(ids);
    free(targets);
    free(tids);
    free(ttg);
done:
    tape_free(t);
    lora_free(lora);
    model_free(m);
    st_close(ex);
}

// refcheck.h's rel_err follows the NaN rule: a NaN or an infinity planted on either side (or
// the same infinity on both) gives +inf, failing `err < TOL`; the clean arrays pass.
static void test_refcheck_nan_rule(void) {
    float want[8] = {0.5f, -1.25f, 2.0f, 0.0f, 3.5f, -0.75f, 1e-3f, 4.0f}, got[8];
    for (int i = 0; i < 8; i++) got[i] = want[i] * (1.0f + 1e-6f);
    double clean = rel_err(got, want, 8);
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    int fails = 1;
    for (int k = 0; k < 3; k++)
        for (int side = 0; side < 3; side++) {
            float g[8], w[8];
            memcpy(g, got, sizeof g);
            memcpy(w, want, sizeof w);
            if (side != 1) g[4] = bad[k];  // 0: ours, 1: the reference, 2: both
            if (side != 0) w[4] = bad[k];
            double err = rel_err(g, w, 8);
            fails &= !(err < TOL) && !(err <= TOL);
        }
    CHECK("refcheck NaN rule: NaN / +inf / -inf on either or both sides fail rel_err, clean passes",
          clean < TOL && fails, "clean %.3g; a planted value passed", clean);
}

int main(void) {
    test_refcheck_nan_rule();
    if (!tu_have_torch()) {
        SKIP("reference vs PyTorch", "/usr/bin/python3 cannot import torch");
        return tu_exit();
    }
    char root[512], cmd[1024];
    tu_tmpdir("ref", root, sizeof root);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_llama.py '%s'", root);
    int rc = system(cmd);
    CHECK("ref_llama.py wrote the reference", rc == 0, "exit status %d", rc);
    if (rc != 0) return tu_exit();
    run_variant(root, "untied", QUANT_NONE);
    run_variant(root, "tied", QUANT_NONE);
    run_variant(root, "rslora", QUANT_NONE);
    run_variant(root, "nf4", QUANT_NF4);
    return tu_exit();
}
