// Architectures beyond plain Llama, against PyTorch. tests/ref_arch.py builds tiny random
// models as HF writes them (config.json + model.safetensors with the real tensor names) with
// a PEFT adapter (random non-zero A and B on every target module), and records what
// HF/PEFT compute in float64: logits, loss and every LoRA gradient. Variants: Llama with
// Llama-3 rope_scaling (also the rotary frequencies themselves), Mistral (sliding window 4,
// also through the KV cache one token at a time), Qwen2 (q/k/v biases, tied), Gemma (GeGLU
// with tanh gelu, RMSNorm (1 + w), embeddings × sqrt(dim), head_dim != dim / heads).
// Tolerance as tests/test_reference.c: 1e-4 relative with a floor of 5% of the tensor's
// largest magnitude.
//
// Quantized GGUF bases: tests/ref_ggq_model.py writes one tiny llama twice — q.gguf with its
// linear weights in ggml block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K; token_embd
// Q8_0, output Q6_K) and f32.gguf with numpy's dequantization of the same blocks. The
// quantized model must keep its blocks (no requantization), give the logits and LoRA
// gradients of the F32 one, and train (loss drops over a few AdamW steps).
#include "tests/testutil.h"
#include "model/model.h"
#include "export/export.h"
#include "optim/optim.h"
#include "train/train.h"
#include "quant/quant.h"

#include "tests/refcheck.h"

#define TOL REF_TOL

// Every A and B (grads when use_grad) of lora against "<prefix><PEFT key>" in st, by the
// PEFT module names listed in the comma-separated `modules`.
static double compare_adapter(const SafeTensors *st, const LoraAdapter *lora, const char *modules,
                              const char *prefix, int use_grad, char *worst, size_t wn, int *count) {
    double max_err = 0;
    *count = 0;
    snprintf(worst, wn, "(none)");
    char buf[256];
    for (int l = 0; l < lora->n_layers; l++) {
        snprintf(buf, sizeof buf, "%s", modules);
        char *save = NULL;
        for (char *mod = strtok_r(buf, ",", &save); mod; mod = strtok_r(NULL, ",", &save))
            for (int ab = 0; ab < 2; ab++) {
                Tensor *p = lora_module_tensor(lora, l, mod, ab ? 'B' : 'A');
                char key[256];
                snprintf(key, sizeof key, "%sbase_model.model.model.layers.%d.%s.%s.lora_%c.weight",
                         prefix, l, strchr("qkvo", mod[0]) ? "self_attn" : "mlp", mod, ab ? 'B' : 'A');
                double err = p ? compare(st, key, use_grad ? p->grad : p->data, p->n) : INFINITY;
                if (p) (*count)++;
                if (!(err <= max_err)) {
                    max_err = err;
                    snprintf(worst, wn, "%s", key + strlen(prefix));
                }
            }
    }
    return max_err;
}

// Loads the model at path with the PEFT adapter adir and returns the max rel err of its
// logits for ids (B,T) against the expected ones; its architecture name into arch (32).
static double other_logits_err(Tape *t, const char *path, const char *adir, const SafeTensors *ex,
                               const int *ids, int B, int T, char *arch, Err *e) {
    Model *m = model_load(path, e);
    LoraAdapter *lora = m ? adapter_load_peft(adir, m, e) : NULL;
    double err = INFINITY;
    if (lora) {
        const int64_t n = (int64_t)B * T * m->cfg.vocab_size;
        Tensor *lg = model_forward(t, m, lora, ids, B, T, NULL, 0);
        err = compare(ex, "logits", lg->n == n ? lg->data : NULL, n);
        tape_reset(t);
    }
    if (m) snprintf(arch, 32, "%s", m->cfg.arch);
    lora_free(lora);
    model_free(m);
    return err;
}

static void run_variant(const char *root, const char *name) {
    char dir[600], mdir[700], adir[700], xpath[700], sdir[700], label[512], worst[256];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    path_join(mdir, sizeof mdir, dir, "model");
    path_join(adir, sizeof adir, dir, "adapter");
    path_join(sdir, sizeof sdir, dir, "saved");
    path_join(xpath, sizeof xpath, dir, "expected.safetensors");
    Err e = {{0}};
    SafeTensors *ex = st_open(xpath, &e);
    Model *m = ex ? model_load(mdir, &e) : NULL;
    LoraAdapter *lora = m ? adapter_load_peft(adir, m, &e) : NULL;
    Tape *t = lora ? tape_new(&e) : NULL;
    snprintf(label, sizeof label, "arch %s: load model (%s) and PEFT adapter", name, m ? m->cfg.arch : "?");
    CHECK(label, t != NULL && !strcmp(m->cfg.arch, name[0] == 'l' ? "llama" : name), "%s", e.msg);
    if (!t) goto done;
    const char *modules = st_metadata(ex, "targets");
    int *ids = exp_i32(ex, "ids", NULL), *targets = exp_i32(ex, "targets", NULL);
    const StTensor *sid = st_find(ex, "ids");
    if (!ids || !targets || !modules) {
        CHECK("expected ids/targets/targets metadata", 0, "missing");
        goto free_ids;
    }
    const int B = (int)sid->shape[0], T = (int)sid->shape[1], V = m->cfg.vocab_size;

    if (!strcmp(name, "llama3")) {
        double err = compare(ex, "inv_freq", m->inv_freq, m->cfg.head_dim / 2);
        snprintf(label, sizeof label, "arch %s: rope_scaling llama3 rotary frequencies max rel err %.2e",
                 name, err);
        CHECK(label, err < 1e-6, "tolerance 1e-6");
    }

    tape_set_recording(t, 1);
    Tensor *logits = model_forward(t, m, lora, ids, B, T, NULL, 0);
    double err = compare(ex, "logits", logits->n == (int64_t)B * T * V ? logits->data : NULL,
                         (int64_t)B * T * V);
    snprintf(label, sizeof label, "arch %s: logits (%dx%dx%d) max rel err %.2e", name, B, T, V, err);
    CHECK(label, err < TOL, "tolerance %.0e", TOL);
    tape_reset(t);

    {  // the generation path: row 1 as a 3-token prefix, then one token at a time
        const int b = 1, pre = 3;
        KVCache *kv = kv_new(&m->cfg, T, &e);
        float *want = exp_f32(ex, "logits", (int64_t)B * T * V);
        float *got = malloc((size_t)T * V * sizeof(float));
        tape_set_recording(t, 0);
        if (kv && want && got) {
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
        snprintf(label, sizeof label, "arch %s: logits via KV cache max rel err %.2e", name, err);
        CHECK(label, err < TOL, "tolerance %.0e; %s", TOL, e.msg);
        tape_set_recording(t, 1);
        kv_free(kv);
        free(want);
        free(got);
    }

    Tensor *params[256];
    int np = lora_params(lora, params, 256);
    for (int i = 0; i < np; i++) tensor_zero_grad(params[i]);
    int kept = 0;
    for (int i = 0; i < B * T; i++) kept += targets[i] >= 0;
    Tensor *loss = model_loss(t, m, lora, ids, targets, B, T, (float)kept);
    tape_backward(t, loss);
    err = compare(ex, "loss", loss->data, 1);
    snprintf(label, sizeof label, "arch %s: loss %.6f rel err %.2e", name, loss->data[0], err);
    CHECK(label, err < TOL, "tolerance %.0e", TOL);
    int count;
    err = compare_adapter(ex, lora, modules, "grad.", 1, worst, sizeof worst, &count);
    snprintf(label, sizeof label, "arch %s: %d LoRA grads (%s) max rel err %.2e (worst %s)", name,
             count, modules, err, worst);
    CHECK(label, err < TOL && count > 0, "tolerance %.0e", TOL);
    tape_reset(t);

    {  // save as PEFT and load back: the same module names and values
        LoraAdapter *back = NULL;
        int rc = adapter_save_peft(lora, m, sdir, &e);
        if (!rc) back = adapter_load_peft(sdir, m, &e);
        char sp[800];
        SafeTensors *saved = back ? st_open(path_join(sp, sizeof sp, sdir, "adapter_model.safetensors"), &e) : NULL;
        SafeTensors *orig = saved ? st_open(path_join(sp, sizeof sp, adir, "adapter_model.safetensors"), &e) : NULL;
        int same = saved && orig && st_count(saved) == st_count(orig);
        for (int i = 0; same && i < st_count(orig); i++) {
            const StTensor *a = st_at(orig, i), *s = st_find(saved, a->name);
            same = s && s->n == a->n && !memcmp(s->data, a->data, (size_t)a->n * sizeof(float));
        }
        snprintf(label, sizeof label, "arch %s: adapter saved as PEFT holds the same %d tensors", name,
                 orig ? st_count(orig) : 0);
        CHECK(label, same, "%s", e.msg);
        st_close(saved);
        st_close(orig);
        lora_free(back);
    }

    {  // the same model as llama.cpp's converter writes it (GGUF names, <arch>. metadata,
       // llama q/k rows permuted, Gemma norms 1 + w, rope_freqs.weight): the same logits
        char gpath[700];
        snprintf(gpath, sizeof gpath, "%s/model.gguf", dir);
        if (!strcmp(name, "phi3")) {  // fused modules: part of a group is refused, by name
            LoraAdapter *bad = lora_new(m, 4, 8.0f, 1u << LT_Q, 0.0f, 0, 1, &e);
            snprintf(label, sizeof label, "arch %s: q_proj alone is refused (%.300s)", name, bad ? "" : e.msg);
            CHECK(label, !bad && strstr(e.msg, "qkv_proj"), "got an adapter");
            lora_free(bad);
        }
        {  // model_save_hf and back (config.json architecture members, biases, 1 + w norms,
           // fused weights): the same logits
            char rdir[700];
            snprintf(rdir, sizeof rdir, "%s/resaved", dir);
            char got[32] = "?";
            err = model_save_hf(m, rdir, &e) ? INFINITY : other_logits_err(t, rdir, adir, ex, ids, B, T, got, &e);
            snprintf(label, sizeof label, "arch %s: saved by model_save_hf and reloaded (%s), logits max rel err %.2e",
                     name, got, err);
            CHECK(label, err < TOL && !strcmp(got, m->cfg.arch), "tolerance %.0e; %s", TOL, e.msg);
        }
        if (file_exists(gpath)) {
            char got[32] = "?";
            err = other_logits_err(t, gpath, adir, ex, ids, B, T, got, &e);
            snprintf(label, sizeof label, "arch %s: from GGUF (general.architecture %s), logits max rel err %.2e",
                     name, got, err);
            CHECK(label, err < TOL, "tolerance %.0e; %s", TOL, e.msg);
        }
    }

free_ids:
    free(ids);
    free(targets);
done:
    tape_free(t);
    lora_free(lora);
    model_free(m);
    st_close(ex);
}

// ---- quantized GGUF bases ---------------------------------------------------------------------

static void run_ggq(const char *root) {
    char qpath[600], fpath[600], label[256];
    snprintf(qpath, sizeof qpath, "%s/ggq/q.gguf", root);
    snprintf(fpath, sizeof fpath, "%s/ggq/f32.gguf", root);
    Err e = {{0}};
    Model *mq = model_load(qpath, &e);
    Model *mf = mq ? model_load(fpath, &e) : NULL;
    CHECK("ggq: quantized and F32 GGUF models load", mq && mf, "%s", e.msg);
    if (!mq || !mf) goto done_models;
    int nq = 0, total = 0;
    char types[128] = "";
    for (int l = 0; l < mq->cfg.n_layers; l++)
        for (int tg = 0; tg < LT_COUNT; tg++) {
            const Weight *w = &mq->layers[l].w[tg];
            total++;
            if (w->type != WT_GGQ) continue;
            nq++;
            const char *tn = ggq_type_name(((const GgqMatrix *)w->data)->type);
            if (tn && !strstr(types, tn) && strlen(types) + strlen(tn) + 2 < sizeof types)
                snprintf(types + strlen(types), sizeof types - strlen(types), "%s%s", types[0] ? "," : "", tn);
        }
    snprintf(label, sizeof label, "ggq: %d/%d linear weights kept in their ggml blocks (%s); "
                                  "token_embd/output (Q8_0/Q6_K) kept too: %s/%s",
             nq, total, types, weight_type_name(mq->emb.type), weight_type_name(mq->lm_head.type));
    CHECK(label, nq == total && nq == 14 && mq->emb.type == WT_GGQ && mq->lm_head.type == WT_GGQ,
          "want all 14 as %s", weight_type_name(WT_GGQ));

    // the same LoRA (random A and B) on both; logits and gradients must agree
    const int B = 2, T = 10, V = mq->cfg.vocab_size;
    LoraAdapter *lq = lora_new(mq, 4, 8.0f, (1u << LT_COUNT) - 1, 0.0f, 0, 7, &e);
    LoraAdapter *lf = lq ? lora_new(mf, 4, 8.0f, (1u << LT_COUNT) - 1, 0.0f, 0, 7, &e) : NULL;
    Tape *t = lf ? tape_new(&e) : NULL;
    CHECK("ggq: adapters and tape", t != NULL, "%s", e.msg);
    if (!t) goto done_lora;
    Tensor *pq[64], *pf[64];
    int np = lora_params(lq, pq, 64);
    lora_params(lf, pf, 64);
    Rng rng;
    rng_seed(&rng, 99);
    for (int i = 0; i < np; i++)
        for (int64_t j = 0; j < pq[i]->n; j++) {
            if (i % 2) pq[i]->data[j] = (2 * rng_uniform(&rng) - 1) * 0.05f;
            pf[i]->data[j] = pq[i]->data[j];
        }
    int ids[2 * 10], tg[2 * 10];
    for (int i = 0; i < B * T; i++) ids[i] = (int)(rng_next(&rng) % (uint64_t)V);
    for (int i = 0; i < B * T; i++) tg[i] = (i % T == T - 1) ? -1 : ids[i + 1];

    tape_set_recording(t, 1);
    float *lg_q = malloc((size_t)B * T * V * sizeof(float));
    Tensor *lg = model_forward(t, mq, lq, ids, B, T, NULL, 0);
    memcpy(lg_q, lg->data, (size_t)B * T * V * sizeof(float));
    tape_reset(t);
    lg = model_forward(t, mf, lf, ids, B, T, NULL, 0);
    double err = rel_err(lg_q, lg->data, (int64_t)B * T * V);
    tape_reset(t);
    snprintf(label, sizeof label, "ggq: logits equal the dequantized F32 model's, max rel err %.2e", err);
    CHECK(label, err < TOL, "tolerance %.0e", TOL);
    free(lg_q);

    Tensor *loss = model_loss(t, mq, lq, ids, tg, B, T, (float)(B * (T - 1)));
    tape_backward(t, loss);
    float l_q = loss->data[0];
    tape_reset(t);
    loss = model_loss(t, mf, lf, ids, tg, B, T, (float)(B * (T - 1)));
    tape_backward(t, loss);
    float l_f = loss->data[0];
    tape_reset(t);
    double gerr = 0;
    for (int i = 0; i < np; i++) gerr = tu_worse(gerr, rel_err(pq[i]->grad, pf[i]->grad, pq[i]->n));
    snprintf(label, sizeof label, "ggq: loss %.6f vs %.6f, %d LoRA grads max rel err %.2e", l_q, l_f, np, gerr);
    CHECK(label, fabs(l_q - l_f) < TOL * fabs(l_f) && gerr < TOL, "tolerance %.0e", TOL);

    // a few training steps on the quantized base: the loss on the (fixed) batch drops
    TrainConfig c;
    train_config_default(&c);
    c.lr = 1e-2f;
    c.sched = SCHED_CONSTANT;
    c.warmup_steps = 0;
    c.warmup_ratio = 0;
    c.grad_accum = 1;
    c.batch_size = B;
    c.steps = 6;
    AdamW *opt = adamw_new(pq, np, &c.adamw, &e);
    float first = NAN, last = NAN, gn, lr;
    for (int s = 0; opt && s < c.steps; s++) {
        Batch mb = {.B = B, .T = T, .ids = ids, .targets = tg, .n_tokens = B * T, .n_targets = B * (T - 1)};
        float l = train_step(t, mq, lq, opt, &mb, 1, &c, s, c.steps, &gn, &lr);
        if (s == 0) first = l;
        last = l;
    }
    snprintf(label, sizeof label, "ggq: training on the quantized base, loss %.4f -> %.4f in %d steps",
             first, last, c.steps);
    CHECK(label, opt && last < first - 0.05f, "%s", e.msg);
    adamw_free(opt);
done_lora:
    tape_free(t);
    lora_free(lq);
    lora_free(lf);
done_models:
    model_free(mq);
    model_free(mf);
}

int main(void) {
    if (!tu_have_torch()) {
        SKIP("architectures vs PyTorch", "/usr/bin/python3 cannot import torch");
        return tu_exit();
    }
    char root[512], cmd[1200];
    tu_tmpdir("arch", root, sizeof root);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_arch.py '%s' && /usr/bin/python3 tests/ref_ggq_model.py '%s/ggq'",
             root, root);
    int rc = system(cmd);
    CHECK("ref_arch.py and ref_ggq_model.py wrote the references", rc == 0, "exit status %d", rc);
    if (rc != 0) return tu_exit();
    const char *variants[] = {"llama3", "qwen2", "gemma", "mistral", "phi3"};
    for (size_t i = 0; i < sizeof variants / sizeof *variants; i++) run_variant(root, variants[i]);
    run_ggq(root);
    return tu_exit();
}
