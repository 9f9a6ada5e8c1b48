// The training loop: steps with gradient accumulation, evaluation, logging, saving.
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "export/export.h"
#include "quant/quant.h"
#include "train/train.h"

#define MAX_PARAMS 4096

float train_step(Tape *t, const Model *m, LoraAdapter *lora, AdamW *opt, const Batch *micro,
                 int n_micro, const TrainConfig *c, int64_t step, int64_t total_steps,
                 float *grad_norm, float *lr) {
    long kept = 0;
    for (int i = 0; i < n_micro; i++) kept += micro[i].n_targets;
    float norm = kept > 0 ? (float)kept : 1.0f;
    int was_recording = tape_recording(t), was_training = tape_training(t);
    const GemmKernel *was_gemm = tape_gemm(t);
    tape_set_recording(t, 1);
    tape_set_training(t, 1);
    tape_set_gemm(t, compute_gemm(c->compute));
    double total = 0;
    for (int i = 0; i < n_micro; i++) {
        tape_reset(t);
        Tensor *loss = model_loss(t, m, lora, micro[i].ids, micro[i].targets, micro[i].B, micro[i].T, norm);
        total += loss->data[0];
        tape_backward(t, loss);
    }
    tape_reset(t);
    tape_set_recording(t, was_recording);
    tape_set_training(t, was_training);
    tape_set_gemm(t, was_gemm);
    double t_opt = tape_profile_now();
    float gn = grads_clip_global_norm(opt->params, opt->n_params, c->max_grad_norm);
    int64_t warmup = c->warmup_steps > 0 ? c->warmup_steps : (int64_t)ceil((double)c->warmup_ratio * total_steps);
    float rate = sched_lr(c->sched, c->lr, step, warmup, total_steps);
    adamw_step(opt, rate);
    adamw_zero_grad(opt);
    tape_profile_add(t, "optimizer (AdamW+clip)", tape_profile_now() - t_opt);
    if (grad_norm) *grad_norm = gn;
    if (lr) *lr = rate;
    return (float)total;
}

double evaluate_loss(Tape *t, const Model *m, const LoraAdapter *lora, const Dataset *ds,
                     int batch_size, int max_examples, long *n_tokens, Err *e) {
    int n = ds->n;
    if (max_examples > 0 && max_examples < n) n = max_examples;
    int was_recording = tape_recording(t), was_training = tape_training(t);
    tape_set_recording(t, 0);
    tape_set_training(t, 0);
    double t_eval = tape_profile_now();
    tape_profile_pause(t, 1);
    double sum = 0;
    long count = 0;
    Batch b = {0};
    int rc = 0;
    for (int first = 0; first < n; first += batch_size) {
        int cnt = n - first < batch_size ? n - first : batch_size;
        if (batch_from_range(ds, first, cnt, 0, &b, e)) {
            rc = -1;
            break;
        }
        tape_reset(t);
        Tensor *loss = model_loss(t, m, lora, b.ids, b.targets, b.B, b.T, 1.0f);
        sum += loss->data[0];
        count += b.n_targets;
    }
    tape_reset(t);
    batch_free(&b);
    tape_profile_pause(t, 0);
    tape_profile_add(t, "eval", tape_profile_now() - t_eval);
    tape_set_recording(t, was_recording);
    tape_set_training(t, was_training);
    if (n_tokens) *n_tokens = count;
    if (rc) return NAN;
    if (!count) {
        err_set(e, "%s: no held-out tokens to evaluate", ds->path);
        return NAN;
    }
    return sum / count;
}

Tokenizer *load_tokenizer_for(const char *model_path, const char *tok_path, Err *e) {
    if (tok_path && *tok_path) return tok_load(tok_path, e);
    char dir[1024], path[1200];
    Err gguf_err = {{0}};
    if (is_directory(model_path)) {
        snprintf(dir, sizeof dir, "%s", model_path);
    } else {
        // a GGUF model carries its vocabulary (tokenizer.ggml.*); else look beside the file
        char magic[4] = "";
        FILE *f = fopen(model_path, "rb");
        if (f && fread(magic, 1, 4, f) == 4 && !memcmp(magic, "GGUF", 4)) {
            fclose(f);
            f = NULL;
            Tokenizer *t = tok_load(model_path, &gguf_err);
            if (t) return t;
        }
        if (f) fclose(f);
        char tmp[1024];
        snprintf(tmp, sizeof tmp, "%s", model_path);
        snprintf(dir, sizeof dir, "%s", dirname(tmp));
    }
    const char *names[2] = {"tokenizer.json", "tokenizer.model"};
    for (int i = 0; i < 2; i++) {
        path_join(path, sizeof path, dir, names[i]);
        if (file_exists(path)) return tok_load(path, e);
    }
    if (gguf_err.msg[0]) err_set(e, "%s; no tokenizer.json or tokenizer.model beside it either: pass --tokenizer FILE", gguf_err.msg);
    else err_set(e, "no tokenizer found for %s (looked for tokenizer.json and tokenizer.model in %s): pass --tokenizer FILE",
                 model_path, dir);
    return NULL;
}

// One line of OUT/metrics.jsonl.
static void log_metrics(FILE *f, const char *event, int64_t step, int epoch, double loss,
                        double val_loss, double lr, double grad_norm, double tok_s, long tokens) {
    if (!f) return;
    fprintf(f, "{\"event\":\"%s\",\"step\":%lld,\"epoch\":%d", event, (long long)step, epoch);
    if (isnan(loss)) fprintf(f, ",\"loss\":null");
    else fprintf(f, ",\"loss\":%.6f", loss);
    if (!isnan(val_loss)) fprintf(f, ",\"val_loss\":%.6f,\"val_ppl\":%.4f", val_loss, exp(val_loss));
    if (!isnan(lr)) fprintf(f, ",\"lr\":%.6g", lr);
    if (!isnan(grad_norm)) fprintf(f, ",\"grad_norm\":%.6g", grad_norm);
    if (!isnan(tok_s)) fprintf(f, ",\"tokens_per_s\":%.1f", tok_s);
    if (tokens >= 0) fprintf(f, ",\"tokens\":%ld", tokens);
    fprintf(f, "}\n");
    fflush(f);
}

// Deterministic split: shuffle examples with the seed, the first n_val become validation.
static void split_dataset(Dataset *all, double fraction, uint64_t seed, Dataset *train, Dataset *val) {
    Rng r;
    rng_seed(&r, seed ^ 0x5eedULL);
    for (int i = all->n - 1; i > 0; i--) {
        int j = (int)rng_below(&r, (uint32_t)i + 1);
        Example tmp = all->ex[i];
        all->ex[i] = all->ex[j];
        all->ex[j] = tmp;
    }
    int n_val = (int)floor(all->n * fraction + 0.5);
    if (n_val < 1) n_val = 1;
    if (n_val >= all->n) n_val = all->n - 1;
    *val = *all;
    val->n = n_val;
    *train = *all;
    train->ex = all->ex + n_val;
    train->n = all->n - n_val;
}

typedef struct {
    Model *model;
    Tokenizer *tok;
    Dataset *train_ds, *val_ds;  // owned (val_ds may be NULL when split)
    Dataset train_view, val_view;
    LoraAdapter *lora;
    Tensor **params;             // the adapter's tensors, as the optimizer sees them
    AdamW *opt;
    Tape *tape;
    DataLoader *loader;
    Batch *micro;
    int n_micro;
    FILE *metrics;
} Run;

static void run_free(Run *r) {
    if (r->micro)
        for (int i = 0; i < r->n_micro; i++) batch_free(&r->micro[i]);
    free(r->micro);
    loader_free(r->loader);
    tape_free(r->tape);
    adamw_free(r->opt);
    free(r->params);
    lora_free(r->lora);
    dataset_free(r->val_ds);
    dataset_free(r->train_ds);
    tok_free(r->tok);
    model_free(r->model);
    if (r->metrics) fclose(r->metrics);
}

static int run_setup(Run *r, const TrainConfig *c, Err *e) {
    if (!c->model[0]) return err_set(e, "no model: pass --model (a HF directory, .gguf or .bin)");
    if (!c->data[0]) return err_set(e, "no training data: pass --data FILE.jsonl");
    if (make_dirs(c->out, e)) return -1;
    printf("loading model %s (quant %s)\n", c->model, quant_name(c->quant));
    ModelLoadOptions lo;
    model_load_options_default(&lo);
    lo.quant = c->quant;
    lo.quant_cache = c->quant_cache;
    if (!(r->model = model_load_ex(c->model, &lo, e))) return -1;
    if (!(r->tok = load_tokenizer_for(c->model, c->tokenizer, e))) return -1;
    const ModelConfig *mc = &r->model->cfg;
    if (tok_vocab_size(r->tok) > mc->vocab_size)
        return err_set(e, "tokenizer has %d tokens but the model's vocabulary is %d: wrong tokenizer?",
                       tok_vocab_size(r->tok), mc->vocab_size);
    printf("model: %s, dim %d, %d layers, %d heads (%d kv), ffn %d, vocab %d\n", mc->arch, mc->dim,
           mc->n_layers, mc->n_heads, mc->n_kv_heads, mc->hidden_dim, mc->vocab_size);
    DataOptions dopt = c->data_opts;
    if (dopt.tpl == TPL_AUTO) {  // messages rows in the model's own chat template
        dopt.chat_tpl = template_detect(c->tokenizer[0] ? c->tokenizer : c->model);
        if (dopt.chat_tpl == TPL_AUTO && c->tokenizer[0]) dopt.chat_tpl = template_detect(c->model);
        printf("chat template (messages data): %s\n", dopt.chat_tpl != TPL_AUTO ? template_name(dopt.chat_tpl)
                                                     : "chatml (no known chat_template beside the model)");
    }
    if (dopt.seq_len > mc->max_seq_len && mc->max_seq_len > 0) {
        printf("note: seq_len %d exceeds the model's context %d; using %d\n", dopt.seq_len,
               mc->max_seq_len, mc->max_seq_len);
        dopt.seq_len = mc->max_seq_len;
    }
    if (!(r->train_ds = dataset_load(c->data, r->tok, &dopt, e))) return -1;
    if (c->val_data[0]) {
        if (!(r->val_ds = dataset_load(c->val_data, r->tok, &dopt, e))) return -1;
        r->train_view = *r->train_ds;
        r->val_view = *r->val_ds;
    } else {
        if (r->train_ds->n < 2)
            return err_set(e, "%s: need at least 2 examples to split off validation data (or pass --val-data)",
                           c->data);
        split_dataset(r->train_ds, c->val_fraction, c->seed, &r->train_view, &r->val_view);
    }
    printf("data: %d training examples, %d held-out examples (%s)\n", r->train_view.n, r->val_view.n,
           c->val_data[0] ? c->val_data : "split from the training file");
    if (!(r->lora = lora_new(r->model, c->rank, c->alpha, c->targets, c->dropout, c->use_rslora, c->seed, e)))
        return -1;
    // the optimizer keeps this list: it lives as long as the run
    Tensor **params = r->params = xcalloc(MAX_PARAMS, sizeof(Tensor *), "parameter list", e);
    if (!params) return -1;
    int np = lora_params(r->lora, params, MAX_PARAMS);
    long trainable = 0;
    for (int i = 0; i < np; i++) trainable += (long)params[i]->n;
    char tg[160];
    printf("LoRA: rank %d, alpha %g (scale %g), dropout %g, targets %s: %ld trainable parameters\n",
           c->rank, c->alpha, r->lora->scale, c->dropout, lora_targets_str(c->targets, tg, sizeof tg), trainable);
    if (!(r->opt = adamw_new(params, np, &c->adamw, e))) return -1;
    if (!(r->tape = tape_new(e))) return -1;
    tape_seed(r->tape, c->seed + 1);
    tape_set_checkpointing(r->tape, c->grad_checkpointing);
    tape_set_profile(r->tape, c->profile);
    const KernelChoice *kc = kernel_choice();
    const GemmKernel *g = compute_gemm(c->compute);
    if (c->compute == COMPUTE_BF16 && !gemm_kernel_bf16(g))
        printf("note: --compute-dtype bf16: this CPU has no bf16 dot products, the matmuls run in fp32\n");
    tape_set_gemm(r->tape, kc->fp32);  // evaluation: the fastest fp32 path
    printf("compute: %s matmuls over the frozen base in training steps (%s kernel, %s); evaluation in fp32 "
           "(%s)\n",
           gemm_kernel_bf16(g) ? "bf16 (fp32 accumulation)" : "fp32", gemm_kernel_name(g),
           kc->forced ? "forced by LORA_KERNEL" : kc->from_cache ? "measured earlier, see `lora info`" : "measured now",
           gemm_kernel_name(kc->fp32));
    MemoryPlan plan;
    model_memory_plan(r->model, r->lora, 2, c->batch_size, dopt.seq_len, &plan);
    model_print_memory_plan(stdout, r->model, &plan, c->batch_size, dopt.seq_len, c->grad_checkpointing);
    // what the memory limit leaves over the plan: checkpointed blocks keep their matmul outputs
    size_t budget = model_recompute_budget(&plan, c->grad_checkpointing, (size_t)c->memory_limit_mb << 20);
    int kept_blocks = 0;
    size_t kept = model_recompute_cache_plan(r->model, r->lora, c->batch_size, dopt.seq_len, budget, &kept_blocks);
    tape_set_recompute_cache(r->tape, budget);
    if (c->grad_checkpointing)
        printf("  %-22s %9.1f MiB  %d of %d blocks keep their matmul outputs for the backward (--memory-limit %d MiB)\n",
               "kept for recompute", kept / 1048576.0, kept_blocks, r->model->cfg.n_layers, c->memory_limit_mb);
    if (!(r->loader = loader_new(&r->train_view, c->batch_size, 1, c->seed, 0, e))) return -1;
    r->n_micro = c->grad_accum;
    if (!(r->micro = xcalloc((size_t)r->n_micro, sizeof(Batch), "micro-batches", e))) return -1;
    char path[1200];
    path_join(path, sizeof path, c->out, "metrics.jsonl");
    r->metrics = fopen(path, c->resume[0] ? "a" : "w");  // a resume cuts it back (resume_run)
    if (!r->metrics) return err_set(e, "%s: cannot create", path);
    return 0;
}

// --eval-before: the full `lora eval` metrics (loss and greedy generation) on the held-out set.
static int eval_full(const Run *r, const TrainConfig *c, const LoraAdapter *lora, const char *name,
                     EvalResult *out, Err *e) {
    EvalOptions o;
    eval_options_default(&o);
    o.batch_size = c->batch_size;
    o.max_examples = c->eval_max_examples;
    return eval_model(r->model, lora, r->tok, &r->val_view, &o, name, out, e);
}

// ---- checkpoints ----------------------------------------------------------------------------

// OUT/checkpoint-STEP after `step` optimizer steps (train/checkpoint.c writes it).
static int save_checkpoint(Run *r, const TrainConfig *c, int64_t step, int64_t total, double val_before,
                           double window_loss, long window_tokens, Err *e) {
    fflush(r->metrics);
    fseek(r->metrics, 0, SEEK_END);  // an append stream's position is only known after a seek
    TrainState st = {step, total, r->opt->t, r->loader->epoch, r->loader->pos, tape_rng(r->tape)->s,
                     val_before, window_loss, window_tokens, ftell(r->metrics), r->train_view.n,
                     dataset_hash(&r->train_view)};
    if (checkpoint_save(c->out, c, &st, r->lora, r->model, r->opt, e)) return -1;
    printf("step %lld | checkpoint saved to %s/checkpoint-%lld\n", (long long)step, c->out, (long long)step);
    return 0;
}

// --resume: the checkpoint's adapter, AdamW moments, dropout RNG and data position; the
// metrics log cut back to where it stood, so the run goes on as if never stopped.
static int resume_run(Run *r, const TrainConfig *c, int64_t total, TrainState *st, Err *e) {
    char dir[1100];
    if (checkpoint_find(c->resume, dir, sizeof dir, e) || checkpoint_load(dir, r->model, st, r->lora, r->opt, e))
        return -1;
    if (st->n_train != r->train_view.n || st->data_hash != dataset_hash(&r->train_view))
        return err_set(e, "%s: the training data differs from the checkpoint's (%d examples then, %d now): resume "
                          "with the same data and settings",
                       dir, st->n_train, r->train_view.n);
    if (st->step > total)
        return err_set(e, "%s: the checkpoint is at step %lld, past this run's %lld steps", dir,
                       (long long)st->step, (long long)total);
    if (st->total_steps != total)
        printf("note: the checkpoint was made for %lld steps, this run has %lld (the schedule changes)\n",
               (long long)st->total_steps, (long long)total);
    tape_rng(r->tape)->s = st->dropout_rng;
    loader_seek(r->loader, st->epoch, st->pos);
    // the checkpoint's own run: its log up to the checkpoint; another output directory: a new log
    char ck_out[PATH_MAX], out[PATH_MAX], tmp[1100];
    snprintf(tmp, sizeof tmp, "%s", dir);
    int same = realpath(dirname(tmp), ck_out) && realpath(c->out, out) && !strcmp(ck_out, out);
    long keep = same ? st->metrics_bytes : 0;
    fflush(r->metrics);
    if (fseek(r->metrics, 0, SEEK_END) == 0 && ftell(r->metrics) > keep && ftruncate(fileno(r->metrics), keep))
        return err_set(e, "%s/metrics.jsonl: cannot cut back to the checkpoint", c->out);
    fseek(r->metrics, 0, SEEK_END);
    printf("resuming from %s at step %lld of %lld (epoch %d, example %d of %d)\n", dir, (long long)st->step,
           (long long)total, st->epoch, st->pos, r->train_view.n);
    return 0;
}

int train_run(const TrainConfig *c, Err *e) {
    if (c->threads > 0) set_num_threads(c->threads);
    Run r;
    memset(&r, 0, sizeof r);
    int rc = -1;
    if (run_setup(&r, c, e)) goto done;

    int64_t batches_per_epoch = (r.train_view.n + c->batch_size - 1) / c->batch_size;
    int64_t total = c->steps > 0 ? c->steps
                                 : (int64_t)ceil(c->epochs * batches_per_epoch / (double)c->grad_accum);
    if (total < 1) total = 1;
    printf("training: %lld steps, batch %d x grad_accum %d, lr %g (%s), seq_len %d\n", (long long)total,
           c->batch_size, c->grad_accum, c->lr, sched_name(c->sched), c->data_opts.seq_len);

    long ntok;
    double t0 = now_seconds();
    TrainState st;  // where the run starts: step 0, or a checkpoint's state with --resume
    memset(&st, 0, sizeof st);
    if (c->resume[0] && resume_run(&r, c, total, &st, e)) goto done;
    double val_before = st.val_before;
    if (!c->resume[0]) {
        val_before = evaluate_loss(r.tape, r.model, r.lora, &r.val_view, c->batch_size, c->eval_max_examples, &ntok, e);
        if (isnan(val_before)) goto done;
        printf("step 0 | held-out loss %.4f (ppl %.2f) over %ld tokens [%.1fs]\n", val_before, exp(val_before),
               ntok, now_seconds() - t0);
        log_metrics(r.metrics, "eval", 0, 0, NAN, val_before, NAN, NAN, NAN, ntok);
    }
    EvalResult ev[2];  // --eval-before: the base before step 0, the adapter at the end
    if (c->eval_before && eval_full(&r, c, NULL, "base", &ev[0], e)) goto done;

    double val_after = val_before;
    double window_loss = st.window_loss;
    long window_tokens = st.window_tokens;
    double window_t = now_seconds();
    for (int64_t step = st.step; step < total; step++) {
        long tokens = 0;
        double t_data = tape_profile_now();
        for (int i = 0; i < r.n_micro; i++) {
            if (loader_next(r.loader, &r.micro[i], e)) goto done;
            tokens += r.micro[i].n_tokens;
        }
        tape_profile_add(r.tape, "data", tape_profile_now() - t_data);
        float gn, lr;
        float loss = train_step(r.tape, r.model, r.lora, r.opt, r.micro, r.n_micro, c, step, total, &gn, &lr);
        if (!isfinite(loss)) {
            err_set(e, "training diverged at step %lld (loss %g): lower --lr", (long long)step + 1, loss);
            goto done;
        }
        window_loss += loss;
        window_tokens += tokens;
        int64_t s = step + 1;
        if (s % c->log_every == 0 || s == total) {
            int n = (int)(s % c->log_every == 0 ? c->log_every : s % c->log_every);
            double dt = now_seconds() - window_t;
            double tps = dt > 0 ? window_tokens / dt : 0;
            printf("step %lld/%lld | loss %.4f | lr %.3g | grad norm %.3f | %.0f tok/s\n", (long long)s,
                   (long long)total, window_loss / n, lr, gn, tps);
            log_metrics(r.metrics, "train", s, r.loader->epoch, window_loss / n, NAN, lr, gn, tps, window_tokens);
            fflush(stdout);
            window_loss = 0;
            window_tokens = 0;
            window_t = now_seconds();
        }
        if (c->eval_every > 0 && s % c->eval_every == 0 && s != total) {
            double vl = evaluate_loss(r.tape, r.model, r.lora, &r.val_view, c->batch_size, c->eval_max_examples, &ntok, e);
            if (isnan(vl)) goto done;
            printf("step %lld | held-out loss %.4f (ppl %.2f)\n", (long long)s, vl, exp(vl));
            log_metrics(r.metrics, "eval", s, r.loader->epoch, loss, vl, NAN, NAN, NAN, ntok);
            window_t = now_seconds();
        }
        if (s == total) {
            val_after = evaluate_loss(r.tape, r.model, r.lora, &r.val_view, c->batch_size, c->eval_max_examples, &ntok, e);
            if (isnan(val_after)) goto done;
            printf("step %lld | held-out loss %.4f (ppl %.2f)\n", (long long)s, val_after, exp(val_after));
            log_metrics(r.metrics, "eval", s, r.loader->epoch, loss, val_after, NAN, NAN, NAN, ntok);
        }
        if (c->save_every > 0 && s % c->save_every == 0 && s < total &&
            save_checkpoint(&r, c, s, total, val_before, window_loss, window_tokens, e))
            goto done;
    }
    if (adapter_save_peft(r.lora, r.model, c->out, e)) goto done;
    char path[1200];
    path_join(path, sizeof path, c->out, "train_config.json");
    if (train_config_save(c, path, e)) goto done;
    if (c->eval_before) {
        if (eval_full(&r, c, r.lora, "adapter", &ev[1], e)) goto done;
        eval_print_table(stdout, ev, 2);
        if (eval_write_json(path_join(path, sizeof path, c->out, "eval.json"), ev, 2, e)) goto done;
    }
    printf("held-out loss: %.4f -> %.4f (ppl %.2f -> %.2f)\n", val_before, val_after, exp(val_before), exp(val_after));
    printf("adapter saved to %s (adapter_model.safetensors, adapter_config.json); %.1fs, peak RSS %.0f MiB\n",
           c->out, now_seconds() - t0, peak_rss_bytes() / 1048576.0);
    if (c->profile) tape_profile_print(r.tape, stdout);
    rc = 0;
done:
    run_free(&r);
    return rc;
}
