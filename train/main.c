// lora — the command line: train, generate, eval, chat, serve, init-model, convert, merge, export.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "export/export.h"
#include "quant/quant.h"
#include "train/train.h"

static const char *USAGE =
    "lora — LoRA fine-tuning of Llama-family models on a CPU\n"
    "\n"
    "usage:\n"
    "  lora train [RECIPE.json] [--KEY VALUE ...]   fine-tune; every recipe key is also a flag\n"
    "  lora generate --model M [--tokenizer T] [--adapter PATH[:SCALE]] --prompt TEXT\n"
    "                [--template TEMPLATE] [SAMPLING] [--no-bos] [--ignore-eos] [--print-ids] [--verbose]\n"
    "  lora eval --model M [--tokenizer T] [--adapter [NAME=]PATH[:SCALE]]... --data HELDOUT.jsonl\n"
    "            [--json OUT.json] [--max-tokens N] [--template TEMPLATE] [--batch-size N]\n"
    "            [--max-examples N] [--no-generate]   base + each adapter: loss, perplexity, token\n"
    "            accuracy, greedy exact match / starts-with / contains / F1, and the change against\n"
    "            the base\n"
    "  lora chat --model M [--adapter NAME=PATH[:SCALE]]... [--template TEMPLATE] [--system TEXT]\n"
    "            [SAMPLING]   interactive; /adapter NAME, /adapters, /load NAME PATH, /unload NAME,\n"
    "            /reset, /quit (template: --template, else the model's chat template, else alpaca)\n"
    "  lora serve --model M [--adapter NAME=PATH[:SCALE]]... [--host 127.0.0.1] [--port 8080]\n"
    "            [--adapter-dir DIR] [--template TEMPLATE] [--name BASE]   OpenAI-style HTTP server:\n"
    "            POST /v1/completions, /v1/chat/completions (model = adapter or base name; chat\n"
    "            template as for chat), GET /v1/models, GET /health, POST /adapters {name,path},\n"
    "            DELETE /adapters/NAME; continuous batching: [--max-batch 8] [--ctx N] [--queue 64]\n"
    "            [--max-conn-per-client 16] [--max-conn 1024] [--timeout 10] [--threads N]\n"
    "  lora init-model --out DIR|FILE.gguf [--dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 172\n"
    "                  --vocab 512 --seq 256 --seed 1 --std 0.02 --tied] [--outtype T --tokenizer F]\n"
    "                  random-weight Llama: a HF dir (f32), or a GGUF written tensor by tensor\n"
    "  lora convert --model M --out DIR|FILE.gguf [--outtype T] [--tokenizer F]   any supported model\n"
    "             -> HF directory (T f32|f16|bf16) or GGUF (T f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1, as\n"
    "             llama.cpp's reference quantizers; with q4_*/q5_* the output matrix Q8_0; default f32)\n"
    "  lora merge --model M --adapter A --out DIR|FILE.gguf [--format safetensors|gguf]\n"
    "             [--dtype f32|bf16|f16] [--tokenizer T]   W + scale*BA as a HF directory (config and\n"
    "             tokenizer files copied) or a GGUF llama.cpp loads\n"
    "  lora export --adapter A --model M --out F.gguf [--to gguf|peft]   llama.cpp GGUF LoRA adapter\n"
    "             (q/k rows in the GGUF RoPE order, rsLoRA folded into B), or back to PEFT\n"
    "  lora info [--threads N] [--recalibrate]   the CPU, its instruction sets, the GEMM kernels\n"
    "             measured here (GFLOP/s) and chosen per precision, memory bandwidth, OpenBLAS's\n"
    "             core, the calibration cache\n"
    "\n"
    "train flags (recipe keys with '_' written as '-'):\n"
    "  --model --tokenizer --data --val-data --out --steps --epochs --lr --rank --alpha\n"
    "  --dropout --targets --batch-size --grad-accum --seq-len --seed --scheduler\n"
    "  --warmup-steps --warmup-ratio --max-grad-norm --weight-decay --beta1 --beta2 --eps\n"
    "  --template --format --train-on-inputs --add-bos --add-eos --on-bad-line skip|stop\n"
    "  --val-fraction --log-every --eval-every --eval-max-examples --rslora --threads\n"
    "  --eval-before (the full `lora eval` table: base before step 0, adapter at the end)\n"
    "  --save-every N (OUT/checkpoint-STEP: adapter, optimizer state, RNG, data position)\n"
    "  --resume DIR (a checkpoint, or OUT for its latest: continue with its settings, bit for bit)\n"
    "  --quant nf4|none (default nf4: QLoRA, the frozen base in 4 bits; none: fp32 base)\n"
    "  --quant-cache FILE (keep the quantized base in FILE: later runs on the same model load it)\n"
    "  --grad-checkpointing true|false (default true: recompute each block in backward)\n"
    "  --memory-limit MiB (default 1536: while the planned step stays under it, checkpointed blocks\n"
    "    keep their matmul outputs and the backward skips recomputing them; 0: recompute all)\n"
    "  --compute-dtype auto|bf16|fp32 (default auto: whichever GEMM over the frozen base measured\n"
    "    fastest on this CPU — bf16 products with fp32 accumulation, or fp32 — see `lora info`;\n"
    "    evaluation always fp32)\n"
    "  --profile (wall time per op: forward, recompute, backward; optimizer, data, eval)\n"
    "generate, eval, chat and serve take --quant auto|nf4|none too (default auto: the quant the\n"
    "  --adapter was trained with, from its train_config.json, else none).\n"
    "\n"
    "TEMPLATE: alpaca, raw, or a chat template: chatml, qwen2, qwen2.5, smollm2, llama2, llama3,\n"
    "  llama3.2, zephyr, phi3, gemma; or auto: for train and eval (their default) alpaca rows in\n"
    "  alpaca, completion rows raw, messages rows in the model's own chat template, else chatml;\n"
    "  for chat and serve (their default) the model's own chat template, else alpaca; for generate\n"
    "  alpaca (its default is raw). Prompt with the template the adapter was trained with.\n"
    "SAMPLING: --max-tokens N --temperature T (0 = greedy) --top-k K --top-p P --min-p P\n"
    "  --repetition-penalty R --seed S --stop TEXT (repeatable) --ignore-eos\n"
    "An adapter is a PEFT directory or a GGUF LoRA file; SCALE multiplies its alpha/r (0 disables).\n";

// ---- train --------------------------------------------------------------------------------
static int cmd_train(int argc, char **argv) {
    TrainConfig c;
    Err e = {{0}};
    train_config_default(&c);
    // --resume: the checkpoint's settings first; a recipe and flags given with it override them
    for (int k = 0; k < argc; k++) {
        const char *dir = !strcmp(argv[k], "--resume") && k + 1 < argc ? argv[k + 1]
                          : !strncmp(argv[k], "--resume=", 9)           ? argv[k] + 9
                                                                        : NULL;
        if (dir && train_config_load_checkpoint(&c, dir, &e)) return cli_fail(&e);
    }
    int i = 0;
    if (argc > 0 && strncmp(argv[0], "--", 2) != 0) {
        if (train_config_load_json(&c, argv[0], &e)) return cli_fail(&e);
        i = 1;
    }
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (strncmp(a, "--", 2) != 0) {
            err_set(&e, "unexpected argument \"%s\" (a recipe file must come first)", a);
            return cli_fail(&e);
        }
        const char *key = a + 2, *val;
        const char *eq = strchr(key, '=');
        char keybuf[64];
        if (eq) {  // --key=value
            snprintf(keybuf, sizeof keybuf, "%.*s", (int)(eq - key), key);
            key = keybuf;
            val = eq + 1;
        } else if (!strcmp(key, "rslora") || !strcmp(key, "train-on-inputs") || !strcmp(key, "eval-before") ||
                   !strcmp(key, "profile")) {
            val = (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) ? argv[++i] : "true";
        } else {
            if (i + 1 >= argc) {
                err_set(&e, "%s needs a value", a);
                return cli_fail(&e);
            }
            val = argv[++i];
        }
        if (train_config_set(&c, key, val, &e)) return cli_fail(&e);
    }
    if (train_run(&c, &e)) return cli_fail(&e);
    return 0;
}

// ---- init-model / convert -----------------------------------------------------------------
static int ends_with_gguf(const char *s) {
    size_t n = strlen(s);
    return n >= 5 && !strcmp(s + n - 5, ".gguf");
}

// --outtype NAME -> a GGUF type (GGML_F32 when absent); -1 with a message when unknown, or
// a quantized type for a HF directory (safetensors holds f32, bf16, f16 only).
static int parse_outtype(const char *name, int gguf, GgmlType *t, Err *e) {
    static const struct { const char *name; GgmlType t; } T[] = {
        {"f32", GGML_F32},   {"f16", GGML_F16},   {"bf16", GGML_BF16}, {"q8_0", GGML_Q8_0},
        {"q4_0", GGML_Q4_0}, {"q4_1", GGML_Q4_1}, {"q5_0", GGML_Q5_0}, {"q5_1", GGML_Q5_1}};
    *t = GGML_F32;
    if (!name) return 0;
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (!strcmp(name, T[i].name)) {
            *t = T[i].t;
            if (!gguf && i > 2) return err_set(e, "--outtype %s needs a .gguf --out (a HF directory holds f32, f16, bf16)", name);
            return 0;
        }
    return err_set(e, "--outtype: expected f32, f16, bf16, q8_0, q4_0, q4_1, q5_0 or q5_1, got \"%s\"", name);
}

static const char *type_label(GgmlType t) {
    return t == GGML_F32 ? "F32" : t == GGML_F16 ? "F16" : t == GGML_BF16 ? "BF16" : ggq_type_name((int)t);
}

// "wrote F (GGUF Q4_0; output.weight Q8_0 where llama.cpp writes Q6_K; 5 matrices F16: rows
// not whole 32-blocks; norms F32; vocabulary from X)"
static void print_gguf_written(const char *path, const ModelConfig *c, const GgufModelWriter *o) {
    printf("wrote %s (GGUF %s", path, type_label(o->type));
    GgmlType out = gguf_matrix_type(o->type, GS_HEAD, c->tied_embeddings, c->dim);
    if (out != o->type)
        printf("; %s %s where llama.cpp writes Q6_K", c->tied_embeddings ? "token_embd (tied output)" : "output.weight",
               type_label(out));
    if (o->n_f16) printf("; %d matri%s F16: rows not whole 32-blocks", o->n_f16, o->n_f16 == 1 ? "x" : "ces");
    printf("; norms F32; vocabulary from %s)\n", o->vocab ? o->vocab : "nowhere");
    if (!o->vocab)
        printf("note: no tokenizer (pass --tokenizer FILE.model): the GGUF has no vocabulary "
               "(tokenizer.ggml.model \"no_vocab\")\n");
}

// model_write_random's weights, drawn in the same order (model.h), for model_save_gguf.
typedef struct {
    Rng rng;
    float std;
} RandomWeights;

static int random_tensor(void *user, int layer, int which, int64_t rows, int64_t cols, float *out, Err *e) {
    (void)layer, (void)e;
    RandomWeights *r = user;
    for (int64_t i = 0; i < rows * cols; i++) out[i] = which >= GS_ATTN_NORM ? 1.0f : r->std * rng_normal(&r->rng);
    return 0;
}

static int cmd_init_model(int argc, char **argv) {
    CliFlag f[] = {{"out", 0, 0},  {"dim", 0, 0},   {"layers", 0, 0}, {"heads", 0, 0}, {"kv-heads", 0, 0},
                {"ffn", 0, 0},  {"vocab", 0, 0}, {"seq", 0, 0},    {"seed", 0, 0},  {"std", 0, 0},
                {"tied", 0, 1}, {"outtype", 0, 0}, {"tokenizer", 0, 0}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int dim, layers, heads, kvh, ffn, vocab, seq, seed;
    float std;
    if (cli_parse(argc, argv, f, nf, &e) || cli_int(f, nf, "dim", 64, &e, &dim) ||
        cli_int(f, nf, "layers", 2, &e, &layers) || cli_int(f, nf, "heads", 4, &e, &heads) ||
        cli_int(f, nf, "kv-heads", 2, &e, &kvh) || cli_int(f, nf, "ffn", 172, &e, &ffn) ||
        cli_int(f, nf, "vocab", 512, &e, &vocab) || cli_int(f, nf, "seq", 256, &e, &seq) ||
        cli_int(f, nf, "seed", 1, &e, &seed) || cli_float(f, nf, "std", 0.02f, &e, &std))
        return cli_fail(&e);
    const char *out = cli_get(f, nf, "out", NULL);
    if (!out) {
        err_set(&e, "init-model needs --out DIR or --out FILE.gguf");
        return cli_fail(&e);
    }
    if (dim < 2 || layers < 1 || heads < 1 || kvh < 1 || heads % kvh || dim % heads || (dim / heads) % 2 ||
        ffn < 1 || vocab < 2 || seq < 2) {
        err_set(&e, "invalid shape: need heads divisible by kv-heads and dim divisible by heads into an even head size");
        return cli_fail(&e);
    }
    int gguf = ends_with_gguf(out);
    GgmlType type;
    if (parse_outtype(cli_get(f, nf, "outtype", NULL), gguf, &type, &e)) return cli_fail(&e);
    if (!gguf && (type != GGML_F32 || cli_get(f, nf, "tokenizer", NULL))) {
        err_set(&e, "init-model writes a HF directory in f32: --outtype and --tokenizer need --out FILE.gguf");
        return cli_fail(&e);
    }
    ModelConfig c;
    model_config_default(&c, dim, ffn, layers, heads, kvh, vocab, seq);
    c.tied_embeddings = cli_get(f, nf, "tied", NULL) != NULL;
    if (gguf) {
        RandomWeights r = {.std = std};
        rng_seed(&r.rng, (uint64_t)seed);
        GgufModelWriter o = {.type = type, .vocab = cli_get(f, nf, "tokenizer", NULL), .name = "lora.c model",
                             .tensor = random_tensor, .user = &r};
        if (model_save_gguf(&c, &o, out, &e)) return cli_fail(&e);
        print_gguf_written(out, &c, &o);
    } else if (model_write_random(&c, (uint64_t)seed, std, out, &e)) {
        return cli_fail(&e);
    }
    printf("wrote a random-weight llama (dim %d, %d layers, %d heads, %d kv heads, ffn %d, vocab %d) to %s\n",
           dim, layers, heads, kvh, ffn, vocab, out);
    return 0;
}

static int cmd_convert(int argc, char **argv) {
    CliFlag f[] = {{"model", 0, 0}, {"out", 0, 0}, {"outtype", 0, 0}, {"tokenizer", 0, 0}, {"threads", 0, 0}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int threads;
    if (cli_parse(argc, argv, f, nf, &e) || cli_int(f, nf, "threads", 0, &e, &threads)) return cli_fail(&e);
    const char *mp = cli_get(f, nf, "model", NULL), *out = cli_get(f, nf, "out", NULL);
    if (!mp || !out) {
        err_set(&e, "convert needs --model and --out");
        return cli_fail(&e);
    }
    int gguf = ends_with_gguf(out);
    GgmlType type;
    if (parse_outtype(cli_get(f, nf, "outtype", NULL), gguf, &type, &e)) return cli_fail(&e);
    if (!gguf && cli_get(f, nf, "tokenizer", NULL)) {
        err_set(&e, "--tokenizer is for a .gguf --out (a HF directory gets no tokenizer files from convert)");
        return cli_fail(&e);
    }
    if (threads > 0) set_num_threads(threads);
    Model *m = model_load(mp, &e);
    if (!m) return cli_fail(&e);
    int rc;
    if (gguf) {
        char vbuf[1100];
        GgufModelWriter o = {.type = type, .vocab = gguf_vocab_source(mp, cli_get(f, nf, "tokenizer", NULL), vbuf, sizeof vbuf),
                             .name = "lora.c model"};
        rc = model_write_gguf(m, &o, out, &e);
        if (!rc) print_gguf_written(out, &m->cfg, &o);
    } else {
        StDtype dt = type == GGML_BF16 ? ST_BF16 : type == GGML_F16 ? ST_F16 : ST_F32;
        rc = dt == ST_F32 ? model_save_hf(m, out, &e) : merged_save_hf(m, dt, NULL, out, &e);
        if (!rc) printf("wrote %s (config.json, model.safetensors%s%s)\n", out, dt == ST_F32 ? "" : " in ",
                        dt == ST_F32 ? "" : type_label(type));
    }
    model_free(m);
    return rc ? cli_fail(&e) : 0;
}

// libgomp threads spin while they wait (its default policy): on a shared 2-core machine the
// spinning thread takes the core the other process needs and every parallel region then waits
// for a descheduled thread (measured: a training step 2.5x slower with one other busy
// process). libgomp reads OMP_WAIT_POLICY once, when it loads, so when the user has not chosen
// one we set "passive" and re-run ourselves once (the variable is then set: no loop).
// OpenBLAS is its OpenMP build and runs on the same libgomp, inside our thread count.
// We exec the file /proc/self/exe links to, not "/proc/self/exe" itself: under an emulator
// (qemu-user: an aarch64 build on x86-64) the kernel's /proc/self/exe is the emulator, which
// would then run with our arguments as its own; qemu answers the readlink with the emulated
// program. Without binfmt_misc the exec of that program fails (ENOEXEC): we carry on.
// OpenBLAS too reads OPENBLAS_CORETYPE only when it loads: when its own detection fell back to
// a generic core on a CPU it does not know (Debian 12's 0.3.21 on recent Intel Xeons: its
// "Prescott" kernels at a fifth of the speed) and the user set none, the same re-run gives it
// the core the CPU's instruction sets allow (quant.h's openblas_coretype_fix), and
// LORA_OPENBLAS_CORETYPE tells `lora info` that we did.
static void set_runtime_env(char **argv) {
    const char *ct = openblas_coretype_fix();
    if (getenv("OMP_WAIT_POLICY") && !ct) return;
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0 || n >= (ssize_t)sizeof self - 1) return;
    self[n] = 0;
    if (!getenv("OMP_WAIT_POLICY") && setenv("OMP_WAIT_POLICY", "passive", 1)) return;
    // ...but passive makes a waiting thread sleep at once, and a decode step is a few hundred
    // short phases (a barrier every few tens of µs): each would pay a futex wake-up (a tiny
    // model decoded 3.4x slower). A brief spin first (libgomp's GOMP_SPINCOUNT, a few
    // thousand pause loops: tens of µs) keeps those, and still frees the core soon.
    if (!getenv("GOMP_SPINCOUNT") && setenv("GOMP_SPINCOUNT", "10000", 1)) return;
    if (ct && (setenv("OPENBLAS_CORETYPE", ct, 1) || setenv("LORA_OPENBLAS_CORETYPE", ct, 1))) return;
    execv(self, argv);  // only returns on failure: carry on with the defaults
}

int main(int argc, char **argv) {
    set_runtime_env(argv);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "train")) return cmd_train(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "chat")) return cmd_chat(argc - 2, argv + 2);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 2, argv + 2);
    if (!strcmp(cmd, "init-model")) return cmd_init_model(argc - 2, argv + 2);
    if (!strcmp(cmd, "convert")) return cmd_convert(argc - 2, argv + 2);
    if (!strcmp(cmd, "merge")) return cmd_merge(argc - 2, argv + 2);
    if (!strcmp(cmd, "export")) return cmd_export(argc - 2, argv + 2);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 2, argv + 2);
    fprintf(stderr, "lora: unknown command \"%s\"\n\n%s", cmd, USAGE);
    return 2;
}
