// bench_step — times lora.c's LoRA/QLoRA training step (or NF4 decode) on a model directory.
// Built by `make bench` into $(BUILD)/bench/bench_step and run by bench/bench.sh; each
// configuration runs in its own process so that its peak RSS (ru_maxrss) is its own.
//
//   bench_step train MODEL_DIR QUANT B T STEPS [CKPT]   QUANT nf4|none, CKPT 1 (default) | 0
//   bench_step decode MODEL_DIR QUANT PROMPT NEW
//   bench_step engine MODEL QUANT ROWS [RANK STEPS]   the decode engine's step time with 1, 2, 4
//                                .. ROWS sequences, each on its own random rank-RANK adapter
//                                (all seven targets; RANK 0: the base), after a 32-token prompt
//   bench_step init OUT_DIR DIM LAYERS HEADS KV_HEADS FFN VOCAB TIED
//   bench_step qgemv [ROWS COLS [FORMATS]]   decode GEMV GB/s per format and variant, 1 and 2
//                                threads (FORMATS: a comma list such as q4_0,q4_k; default all)
//
// BENCH_PROFILE=1: also the per-op wall-time table (all steps) on stderr.
// Prints ONE line of key=value pairs (bench.sh parses it). A benchmark, never an assertion.
// train: rank 8, alpha 16, all seven targets, AdamW (lr 1e-4, wd 0), max-grad-norm 1, random
// token ids; the first step (arena growth, page faults) is excluded: reported time is the
// fastest warm step (step_s; other tenants of the machine only ever slow a step down), the
// median is med_s.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <sys/resource.h>
#include "util/util.h"
#include "autograd/autograd.h"
#include "model/model.h"
#include "optim/optim.h"
#include "quant/quant.h"
#include "train/train.h"
#include "infer/infer.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;  // KiB on Linux
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int fail(Err *e) {
    fprintf(stderr, "bench_step: %s\n", e->msg);
    return 1;
}

// Useful FLOPs of one training step over tok = B·T tokens (the formula bench.sh states; the
// checkpointing recompute is not counted, as it is not useful work):
//   4·N_lin·tok     frozen linears: forward (2) + input gradient (2), no weight gradient
//   + 4·V·C·tok     lm_head forward + input gradient
//   + 6·N_lora·tok  LoRA A and B: forward + input gradient + weight gradient
//   + 6·L·B·T²·H·D  attention: QK^T and AV causal (2·T²·H·D forward), backward twice that
static double step_flops(const ModelConfig *c, int B, int T, int rank) {
    double C = c->dim, F = c->hidden_dim, H = c->n_heads, KV = c->n_kv_heads, D = c->head_dim;
    double nlin = (double)c->n_layers * (C * H * D + 2 * C * KV * D + H * D * C + 3 * C * F);
    double nlora = (double)c->n_layers * rank *
                   ((C + H * D) + 2 * (C + KV * D) + (H * D + C) + 2 * (C + F) + (F + C));
    double tok = (double)B * T;
    double attn = (double)c->n_layers * B * 2.0 * T * T * H * D * 3.0;
    return 4.0 * nlin * tok + 4.0 * c->vocab_size * C * tok + 6.0 * nlora * tok + attn;
}

static int bench_train(const char *dir, const char *quant, int B, int T, int steps, int ckpt) {
    Err e = {{0}};
    ModelLoadOptions lo;
    model_load_options_default(&lo);
    if (quant_parse(quant, &lo.quant, &e)) return fail(&e);
    double t0 = now_s();
    Model *m = model_load_ex(dir, &lo, &e);
    if (!m) return fail(&e);
    double t_load = now_s() - t0;
    LoraAdapter *lora = lora_new(m, 8, 16.0f, (1u << LT_COUNT) - 1, 0.0f, 0, 1, &e);
    if (!lora) return fail(&e);
    Tensor *params[1024];
    int np = lora_params(lora, params, 1024);
    AdamWConfig ac;
    adamw_config_default(&ac);
    AdamW *opt = adamw_new(params, np, &ac, &e);
    Tape *t = tape_new(&e);
    if (!opt || !t) return fail(&e);
    tape_set_recording(t, 1);
    tape_set_training(t, 1);
    tape_set_checkpointing(t, ckpt);
    const char *cd = getenv("BENCH_COMPUTE");  // auto (default) | fp32 | bf16, as --compute-dtype
    ComputeDtype cdt = COMPUTE_AUTO;
    if (cd && compute_dtype_parse(cd, &cdt, &e)) return fail(&e);
    tape_set_gemm(t, compute_gemm(cdt));
    // as `lora train`: --memory-limit (BENCH_MEMORY_LIMIT MiB, default 1536) over the plan lets
    // checkpointed blocks keep their matmul outputs
    const char *ml = getenv("BENCH_MEMORY_LIMIT");
    MemoryPlan plan;
    model_memory_plan(m, lora, 2, B, T, &plan);
    size_t budget = model_recompute_budget(&plan, ckpt, (size_t)(ml ? atol(ml) : 1536) << 20);
    int kept_blocks = 0;
    model_recompute_cache_plan(m, lora, B, T, budget, &kept_blocks);
    tape_set_recompute_cache(t, budget);
    int prof = getenv("BENCH_PROFILE") != NULL;  // per-op table on stderr (as lora train --profile)
    if (prof) model_print_memory_plan(stderr, m, &plan, B, T, ckpt);
    tape_set_profile(t, prof);
    int n = B * T, V = m->cfg.vocab_size;
    int *ids = malloc(sizeof(int) * (n + 1));
    if (!ids) return 1;
    uint64_t s = 12345;
    for (int i = 0; i <= n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        ids[i] = (int)((s >> 33) % (uint64_t)V);
    }
    double *dt = calloc(steps, sizeof(double));
    float loss_v = 0;
    for (int step = 0; step < steps; step++) {
        double a = now_s();
        tape_reset(t);
        Tensor *loss = model_loss(t, m, lora, ids, ids + 1, B, T, (float)n);
        loss_v = loss->data[0];
        tape_backward(t, loss);
        tape_reset(t);
        double t_opt = now_s();
        grads_clip_global_norm(params, np, 1.0f);
        adamw_step(opt, 1e-4f);
        adamw_zero_grad(opt);
        tape_profile_add(t, "optimizer (AdamW+clip)", now_s() - t_opt);
        dt[step] = now_s() - a;
        fprintf(stderr, "  step %d: %.3f s (loss %.4f)\n", step, dt[step], loss_v);
    }
    if (prof) tape_profile_print(t, stderr);
    int warm = steps > 1 ? steps - 1 : 1;
    qsort(dt + (steps > 1), warm, sizeof(double), cmp_double);
    double med = dt[(steps > 1) + warm / 2], best = dt[steps > 1];
    double fl = step_flops(&m->cfg, B, T, 8);
    printf("mode=train quant=%s compute=%s kernel=%s B=%d T=%d ckpt=%d step_s=%.4f med_s=%.4f first_s=%.4f tok_s=%.2f gflops=%.2f "
           "peak_rss_mb=%.1f load_s=%.2f loss=%.4f arena_mb=%.1f step_gflop=%.1f kept_blocks=%d plan_mb=%.0f\n",
           quant, tape_compute_bf16(t) ? "bf16" : "fp32", gemm_kernel_name(tape_gemm(t)), B, T, ckpt, best, med, dt[0], n / best, fl / best / 1e9, peak_rss_mb(), t_load, loss_v,
           tape_arena_bytes(t) / 1048576.0, fl / 1e9, kept_blocks, model_memory_total(&plan, ckpt) / 1048576.0);
    free(dt);
    free(ids);
    tape_free(t);
    adamw_free(opt);
    lora_free(lora);
    model_free(m);
    return 0;
}

static int bench_decode(const char *dir, const char *quant, int prompt, int nnew) {
    Err e = {{0}};
    ModelLoadOptions lo;
    model_load_options_default(&lo);
    if (quant_parse(quant, &lo.quant, &e)) return fail(&e);
    Model *m = model_load_ex(dir, &lo, &e);
    if (!m) return fail(&e);
    Tape *t = tape_new(&e);
    KVCache *kv = t ? kv_new(&m->cfg, prompt + nnew, &e) : NULL;
    if (!kv) return fail(&e);
    tape_set_recording(t, 0);
    int *ids = malloc(sizeof(int) * (prompt + nnew));
    for (int i = 0; i < prompt + nnew; i++) ids[i] = (i * 7919 + 13) % m->cfg.vocab_size;
    tape_reset(t);
    double a = now_s();
    model_forward(t, m, NULL, ids, 1, prompt, kv, 1);
    double t_prefill = now_s() - a;
    a = now_s();
    for (int i = 0; i < nnew; i++) {
        tape_reset(t);
        Tensor *lg = model_forward(t, m, NULL, ids + prompt + i, 1, 1, kv, 1);
        int best = 0;  // greedy pick: the logits are read, the next input is the pick
        for (int v = 1; v < m->cfg.vocab_size; v++)
            if (lg->data[v] > lg->data[best]) best = v;
        if (i + 1 < nnew) ids[prompt + i + 1] = best;
    }
    double dt = now_s() - a;
    MemoryPlan p;
    model_memory_plan(m, NULL, 0, 1, 1, &p);
    double bytes = (double)p.linear + (double)p.lm_head + (double)p.norms;  // streamed per token
    printf("mode=decode quant=%s prompt=%d new=%d prefill_tok_s=%.2f tok_s=%.3f weight_mb=%.1f "
           "gb_s=%.2f peak_rss_mb=%.1f\n",
           quant, prompt, nnew, prompt / t_prefill, nnew / dt, bytes / 1048576.0, bytes * nnew / dt / 1e9,
           peak_rss_mb());
    free(ids);
    kv_free(kv);
    tape_free(t);
    model_free(m);
    return 0;
}

// engine_decode's step time with n = 1, 2, 4 .. rows sequences, each with its own adapter
// (rank > 0: random A and B on all seven targets) and its own KV cache after a 32-token
// prefill: the fastest of `steps` steps per n, and its ratio to n = 1 (the cost of batching).
static int bench_engine(const char *path, const char *quant, int rows, int rank, int steps) {
    Err e = {{0}};
    Model *m = model_load_quant(path, quant, &e);
    if (!m) return fail(&e);
    const int P = 32, V = m->cfg.vocab_size;
    Engine *en = engine_new(m, rows, &e);
    if (!en) return fail(&e);
    LoraAdapter **ad = calloc((size_t)rows, sizeof *ad);
    KVCache **kv = calloc((size_t)rows, sizeof *kv);
    float **lg = calloc((size_t)rows, sizeof *lg);
    int *tok = calloc((size_t)rows, sizeof *tok), ids[32];
    Rng rng;
    rng_seed(&rng, 5);
    for (int i = 0; i < rows; i++) {
        if (rank > 0) {
            if (!(ad[i] = lora_new(m, rank, 2.0f * rank, (1u << LT_COUNT) - 1, 0.0f, 0, 11 + i, &e))) return fail(&e);
            for (int t = 0; t < m->cfg.n_layers * LT_COUNT; t++)
                if (ad[i]->B[t])
                    for (int64_t k = 0; k < ad[i]->B[t]->n; k++) ad[i]->B[t]->data[k] = 0.01f * rng_normal(&rng);
        }
        if (!(kv[i] = kv_new(&m->cfg, P + steps * 8 + 8, &e))) return fail(&e);
        lg[i] = malloc(sizeof(float) * V);
        for (int j = 0; j < P; j++) ids[j] = (j * 7919 + 13 * i + 1) % V;
        if (engine_prefill(en, ad[i], kv[i], ids, P, lg[i], &e)) return fail(&e);
        tok[i] = (i * 31 + 7) % V;
    }
    printf("mode=engine quant=%s rank=%d threads=%d", quant, rank, omp_get_max_threads());
    double t1 = 0;
    for (int n = getenv("BENCH_ENGINE_ROWS_ONLY") ? rows : 1; n <= rows; n *= 2) {
        double best = 1e30;
        for (int s = 0; s < steps; s++) {
            double a = now_s();
            if (engine_decode(en, (const LoraAdapter *const *)ad, kv, tok, n, lg, &e)) return fail(&e);
            double dt = now_s() - a;
            if (dt < best) best = dt;
        }
        if (n == 1) t1 = best;
        printf(" n%d_ms=%.3f n%d_ratio=%.2f", n, best * 1e3, n, best / t1);
        if (n < rows && 2 * n > rows) n = rows / 2;  // rows itself last
    }
    printf(" peak_rss_mb=%.1f\n", peak_rss_mb());
    for (int i = 0; i < rows; i++) lora_free(ad[i]), kv_free(kv[i]), free(lg[i]);
    free(ad), free(kv), free(lg), free(tok);
    engine_free(en);
    model_free(m);
    return 0;
}

// One frozen NF4 matmul pair (y = x Wᵀ and dx = dy W) of shape M x (OC,C), timed for OpenBLAS
// (dequantized tiles + cblas_sgemm) and every tiled GEMM variant this CPU runs; GFLOP/s.
static int bench_gemm(int64_t M, int64_t OC, int64_t C, int reps) {
    Err e = {{0}};
    float *w = malloc(sizeof(float) * OC * C), *x = malloc(sizeof(float) * M * C), *y = malloc(sizeof(float) * M * OC);
    float *dx = malloc(sizeof(float) * M * C);
    uint64_t s = 7;
    for (int64_t i = 0; i < OC * C; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        w[i] = (float)((s >> 40) & 0xFFFF) / 65536.0f - 0.5f;
    }
    for (int64_t i = 0; i < M * C; i++) x[i] = w[i % (OC * C)];
    Nf4Matrix q;
    if (nf4_quantize(w, OC, C, "bench", &q, &e)) return fail(&e);
    float *scr = malloc(sizeof(float) * nf4_scratch_floats(&q));
    int64_t K = C > OC ? C : OC;
    void *bscr = malloc(gemm_scratch_bytes(NULL, M, K));
    TiledWeight tw = tiled_nf4(&q);
    double fl = 2.0 * M * OC * C;
    printf("mode=gemm M=%lld OC=%lld C=%lld", (long long)M, (long long)OC, (long long)C);
    for (int ki = -1; ki < gemm_kernel_count(); ki++) {
        const GemmKernel *g = ki < 0 ? NULL : gemm_kernel_at(ki);
        if (g && (!gemm_kernel_usable(g) || !strcmp(gemm_kernel_isa(g), "c"))) continue;
        double best[2] = {1e9, 1e9};
        for (int r = 0; r < reps; r++) {
            double a = now_s();
            if (g) gemm_xwt(g, x, M, C, &tw, y, OC, 0, bscr);
            else nf4_matmul_xwt(x, M, &q, y, 0, scr, &e);
            double b = now_s();
            if (g) gemm_dyw(g, y, M, OC, &tw, dx, C, 0, bscr);
            else nf4_matmul_dyw(y, M, &q, dx, 0, scr, &e);
            double c = now_s();
            if (b - a < best[0]) best[0] = b - a;
            if (c - b < best[1]) best[1] = c - b;
        }
        printf(" %s=%.1f/%.1f", gemm_kernel_name(g), fl / best[0] / 1e9, fl / best[1] / 1e9);
    }
    printf("\n");
    nf4_free(&q);
    free(w), free(x), free(y), free(dx), free(scr), free(bscr);
    return 0;
}

// Decode GEMVs (quant/qgemv*.c): y = W x for one activation, W (rows, cols) in each format
// (random weights; GGUF blocks with sane scales), every variant this CPU runs, with 1 and 2
// threads (rows split evenly, in chunks of 16, across an OpenMP team here: the kernels have no
// threading of their own). Prints GB/s of weight bytes streamed per variant (best of the runs
// within ~0.15 s; preparing the activation is not timed). TinyLlama's FFN shapes by default.
// G activations (qx: G prepared copies, as qv_gemv reads them; y (G, rows))
static double qgemv_time(const QvKernel *k, const QvMatrix *w, const void *qx, int G, float *y, int nt) {
    double best = 1e30, spent = 0;
    for (int rep = 0; rep < 200 && (rep < 3 || spent < 0.15); rep++) {
        double t0 = now_s();
#pragma omp parallel num_threads(nt)
        {
            const int t = omp_get_thread_num(), n = omp_get_num_threads();
            const int64_t per = (w->rows + n - 1) / n, chunk = (per + 15) / 16 * 16;
            const int64_t r0 = t * chunk, r1 = r0 + chunk < w->rows ? r0 + chunk : w->rows;
            if (r1 > r0) qv_gemv(k, w, r0, r1 - r0, qx, G, y, w->rows, 0);
        }
        double dt = now_s() - t0;
        spent += dt;
        if (rep > 0 && dt < best) best = dt;
    }
    return best;
}

static int bench_qgemv(int64_t rows, int64_t cols, const char *only) {
    static const struct { QvFormat fmt; int type; const char *name; } F[] = {
        {QV_F32, 0, "f32"}, {QV_BF16, 0, "bf16"}, {QV_NF4, 0, "nf4"}, {QV_GGQ, GGQ_Q4_0, "q4_0"},
        {QV_GGQ, GGQ_Q8_0, "q8_0"}, {QV_GGQ, GGQ_Q4_K, "q4_k"}, {QV_GGQ, GGQ_Q6_K, "q6_k"},
        {QV_GGQ, GGQ_Q5_K, "q5_k"}, {QV_GGQ, GGQ_Q4_1, "q4_1"}, {QV_GGQ, GGQ_Q5_0, "q5_0"},
        {QV_GGQ, GGQ_Q5_1, "q5_1"}};
    uint64_t s = 11;
    float *x = malloc(sizeof(float) * cols), *y = malloc(sizeof(float) * rows * 8);
    for (int64_t i = 0; i < cols; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((s >> 40) & 0xFFFF) / 32768.0f - 1.0f;
    }
    for (size_t f = 0; f < sizeof F / sizeof F[0]; f++) {
        if (only) {  // FORMATS: F[f].name as a whole item of the comma list
            const size_t n = strlen(F[f].name);
            const char *h = only;
            while ((h = strstr(h, F[f].name)) && ((h != only && h[-1] != ',') || (h[n] && h[n] != ','))) h += n;
            if (!h) continue;
        }
        QvMatrix w = {F[f].fmt, rows, cols, NULL};
        GgqMatrix gm;
        Nf4Matrix nm = {0};
        void *buf = NULL;
        size_t bytes;
        if (F[f].fmt == QV_GGQ) {
            const int t = F[f].type;
            if (cols % ggq_block_elems(t)) continue;
            bytes = ggq_bytes_for(t, rows, cols);
            uint8_t *p = malloc(bytes);
            for (size_t i = 0; i < bytes; i++) {
                s = s * 6364136223846793005ULL + 1442695040888963407ULL;
                p[i] = (uint8_t)(s >> 33);
            }
            const size_t bb = ggq_block_bytes(t);
            const uint16_t h = 0x1c00;  // 2^-8
            for (size_t b = 0; b < bytes / bb; b++) {
                memcpy(p + b * bb + (t == GGQ_Q6_K ? 208 : 0), &h, 2);
                if (t == GGQ_Q4_1 || t == GGQ_Q5_1 || t == GGQ_Q4_K || t == GGQ_Q5_K) memcpy(p + b * bb + 2, &h, 2);
            }
            gm = (GgqMatrix){t, rows, cols, p, "bench"};
            w.data = &gm;
            buf = p;
        } else {
            const size_t n = (size_t)(rows * cols);
            float *wf = malloc(sizeof(float) * n);
            for (size_t i = 0; i < n; i++) wf[i] = x[i % (size_t)cols] * 0.02f;
            if (F[f].fmt == QV_F32) {
                w.data = buf = wf;
                bytes = n * 4;
            } else if (F[f].fmt == QV_BF16) {
                uint16_t *b = malloc(2 * n);
                for (size_t i = 0; i < n; i++) b[i] = f32_to_bf16(wf[i]);
                free(wf);
                w.data = buf = b;
                bytes = n * 2;
            } else {
                Err e = {{0}};
                if (nf4_quantize(wf, rows, cols, "bench", &nm, &e)) return fail(&e);
                free(wf);
                w.data = &nm;
                bytes = nf4_bytes(&nm);
            }
        }
        const QvKernel *chosen = qv_kernel_for(&w);
        for (int i = 0; i < qv_kernel_count(); i++) {
            const QvKernel *k = qv_kernel_at(i);
            if (!qv_kernel_usable(k) || !qv_kernel_fits(k, &w)) continue;
            const size_t ab = qv_act_bytes(k, &w);
            uint8_t *qx = malloc(ab * 8);
            for (int g = 0; g < 8; g++) qv_prepare(k, &w, x, qx + g * ab);
            double t1 = qgemv_time(k, &w, qx, 1, y, 1), t2 = qgemv_time(k, &w, qx, 1, y, 2);
            double t8 = qgemv_time(k, &w, qx, 8, y, 2);
            printf("mode=qgemv rows=%lld cols=%lld format=%s kernel=%s chosen=%d weight_mb=%.1f gbs_1t=%.1f gbs_2t=%.1f "
                   "g8_2t_ratio=%.2f\n",
                   (long long)rows, (long long)cols, F[f].name, qv_kernel_name(k), k == chosen, bytes / 1e6,
                   bytes / t1 / 1e9, bytes / t2 / 1e9, t8 / t2);
            fflush(stdout);
            free(qx);
        }
        free(buf);
        if (nm.packed) nf4_free(&nm);
    }
    free(x), free(y);
    return 0;
}

// The machine's state: peak vdpbf16ps and fp32 FMA throughput of all threads together, from
// independent register-resident chains (~0.3 s each). On a shared host the two vCPUs are
// sometimes co-scheduled on one core, halving every figure of the run: this line shows it.
#if defined(__AVX512BF16__)
// 24 independent accumulators per thread, iters rounds: vdpbf16ps (kind 0) or FMA (kind 1)
static double peak_run(int kind, long iters) {
    double t0 = now_s();
    float sink = 0;
#pragma omp parallel reduction(+ : sink)
    {
        __m512 acc[24];
        for (int i = 0; i < 24; i++) acc[i] = _mm512_set1_ps(0.001f * i);
        const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-6f);
        const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x3c003c00);
        if (kind == 0)
            for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
                for (int i = 0; i < 24; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
            }
        else
            for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
                for (int i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
            }
        for (int i = 0; i < 24; i++) sink += _mm512_reduce_add_ps(acc[i]);
    }
    double dt = now_s() - t0;
    if (sink == 12345.0f) printf(" ");  // keeps the chains alive
    return (double)omp_get_max_threads() * iters * 24 * (kind ? 32 : 64) / dt / 1e9;
}
#endif

static int bench_peak(void) {
#if defined(__AVX512BF16__)
    double bf = peak_run(0, 8000000), f32 = peak_run(1, 8000000);
    printf("mode=peak threads=%d bf16_gflops=%.0f fp32_gflops=%.0f\n", omp_get_max_threads(), bf, f32);
#else
    printf("mode=peak threads=%d bf16_gflops=0 fp32_gflops=0\n", omp_get_max_threads());
#endif
    return 0;
}

// Writes the random-weight model bench.sh times (as `lora init-model`, std 0.02, seed 1).
static int bench_init(char **a) {
    Err e = {{0}};
    ModelConfig c;
    model_config_default(&c, atoi(a[1]), atoi(a[5]), atoi(a[2]), atoi(a[3]), atoi(a[4]), atoi(a[6]), 2048);
    c.tied_embeddings = atoi(a[7]);
    if (model_write_random(&c, 1, 0.02f, a[0], &e)) return fail(&e);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 10 && !strcmp(argv[1], "init")) return bench_init(argv + 2);
    if (argc >= 7 && !strcmp(argv[1], "train"))
        return bench_train(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]),
                           argc > 7 ? atoi(argv[7]) : 1);
    if (argc == 2 && !strcmp(argv[1], "peak")) return bench_peak();
    if (argc >= 5 && !strcmp(argv[1], "gemm"))
        return bench_gemm(atoll(argv[2]), atoll(argv[3]), atoll(argv[4]), argc > 5 ? atoi(argv[5]) : 5);
    if (argc >= 2 && !strcmp(argv[1], "qgemv")) {
        if (argc >= 4) return bench_qgemv(atoll(argv[2]), atoll(argv[3]), argc > 4 ? argv[4] : NULL);
        int rc = bench_qgemv(5632, 2048, NULL);
        return rc ? rc : bench_qgemv(2048, 5632, NULL);
    }
    if (argc >= 6 && !strcmp(argv[1], "decode"))
        return bench_decode(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    if (argc >= 5 && !strcmp(argv[1], "engine"))
        return bench_engine(argv[2], argv[3], atoi(argv[4]), argc > 5 ? atoi(argv[5]) : 8,
                            argc > 6 ? atoi(argv[6]) : 5);
    fprintf(stderr, "usage: bench_step train MODEL_DIR nf4|none B T STEPS [CKPT 1|0]\n"
                    "       bench_step decode MODEL_DIR nf4|none PROMPT NEW\n"
                    "       bench_step engine MODEL nf4|none ROWS [RANK STEPS]\n"
                    "       bench_step gemm M OC C [REPS]\n"
                    "       bench_step qgemv [ROWS COLS [FORMATS]]   (default: 5632 2048, then 2048 5632, all formats)\n"
                    "       bench_step peak\n"
                    "       bench_step init OUT_DIR DIM LAYERS HEADS KV_HEADS FFN VOCAB TIED\n");
    return 2;
}
