// lora — the command line: train, generate, eval, init-model, convert.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export/export.h"
#include "train/train.h"

static const char *USAGE =
    "lora — LoRA fine-tuning of Llama-family models on a CPU\n"
    "\n"
    "usage:\n"
    "  lora train [RECIPE.json] [--KEY VALUE ...]   fine-tune; every recipe key is also a flag\n"
    "  lora generate --model M [--tokenizer T] [--adapter DIR] --prompt TEXT\n"
    "                [--max-tokens N] [--temperature T] [--seed S] [--template raw|alpaca|chatml]\n"
    "                [--no-bos] [--ignore-eos] [--print-ids]\n"
    "  lora eval --model M [--tokenizer T] [--adapter DIR] --data HELDOUT.jsonl [--batch-size N]\n"
    "  lora init-model --out DIR [--dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 172\n"
    "                  --vocab 512 --seq 256 --seed 1 --std 0.02]   random-weight Llama (HF dir)\n"
    "  lora convert --model M --out DIR             any supported model file -> HF directory\n"
    "\n"
    "train flags (recipe keys with '_' written as '-'):\n"
    "  --model --tokenizer --data --val-data --out --steps --epochs --lr --rank --alpha\n"
    "  --dropout --targets --batch-size --grad-accum --seq-len --seed --scheduler\n"
    "  --warmup-steps --warmup-ratio --max-grad-norm --weight-decay --beta1 --beta2 --eps\n"
    "  --template --format --train-on-inputs --add-bos --add-eos --on-bad-line skip|stop\n"
    "  --val-fraction --log-every --eval-every --eval-max-examples --rslora --threads\n";

static int fail(const Err *e) {
    fprintf(stderr, "lora: %s\n", e->msg);
    return 1;
}

// Flag parsing for the small commands: --name value pairs and boolean switches.
typedef struct {
    const char *name;
    const char *value;  // NULL = absent; "1" for a switch that is present
    int is_switch;
} Flag;

static int parse_flags(int argc, char **argv, Flag *flags, int nflags, Err *e) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) return err_set(e, "unexpected argument \"%s\"", a);
        int found = 0;
        for (int f = 0; f < nflags; f++) {
            if (strcmp(a + 2, flags[f].name) != 0) continue;
            found = 1;
            if (flags[f].is_switch) {
                flags[f].value = "1";
            } else {
                if (i + 1 >= argc) return err_set(e, "%s needs a value", a);
                flags[f].value = argv[++i];
            }
        }
        if (!found) return err_set(e, "unknown option %s (see `lora --help`)", a);
    }
    return 0;
}

static const char *flag(const Flag *flags, int n, const char *name, const char *def) {
    for (int i = 0; i < n; i++)
        if (!strcmp(flags[i].name, name)) return flags[i].value ? flags[i].value : def;
    return def;
}

static int flag_int(const Flag *flags, int n, const char *name, int def, Err *e, int *out) {
    const char *v = flag(flags, n, name, NULL);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end) return err_set(e, "--%s: expected a whole number, got \"%s\"", name, v);
    *out = (int)x;
    return 0;
}

static int flag_float(const Flag *flags, int n, const char *name, float def, Err *e, float *out) {
    const char *v = flag(flags, n, name, NULL);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !isfinite(x)) return err_set(e, "--%s: expected a number, got \"%s\"", name, v);
    *out = (float)x;
    return 0;
}

// ---- train --------------------------------------------------------------------------------
static int cmd_train(int argc, char **argv) {
    TrainConfig c;
    Err e = {{0}};
    train_config_default(&c);
    int i = 0;
    if (argc > 0 && strncmp(argv[0], "--", 2) != 0) {
        if (train_config_load_json(&c, argv[0], &e)) return fail(&e);
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
            return fail(&e);
        }
        const char *key = a + 2, *val;
        const char *eq = strchr(key, '=');
        char keybuf[64];
        if (eq) {  // --key=value
            snprintf(keybuf, sizeof keybuf, "%.*s", (int)(eq - key), key);
            key = keybuf;
            val = eq + 1;
        } else if (!strcmp(key, "rslora") || !strcmp(key, "train-on-inputs")) {
            val = (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) ? argv[++i] : "true";
        } else {
            if (i + 1 >= argc) {
                err_set(&e, "%s needs a value", a);
                return fail(&e);
            }
            val = argv[++i];
        }
        if (train_config_set(&c, key, val, &e)) return fail(&e);
    }
    if (train_run(&c, &e)) return fail(&e);
    return 0;
}

// ---- generate -----------------------------------------------------------------------------
// logits (V) -> token: argmax at temperature 0, else a sample from softmax(logits / T).
static int sample_token(const float *logits, int V, float temperature, Rng *rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature <= 0) return best;
    double sum = 0;
    double *p = malloc(sizeof(double) * (size_t)V);
    if (!p) return best;
    for (int i = 0; i < V; i++) sum += p[i] = exp((logits[i] - logits[best]) / temperature);
    double r = rng_uniform(rng) * sum, acc = 0;
    int tok = V - 1;
    for (int i = 0; i < V; i++) {
        acc += p[i];
        if (acc > r) {
            tok = i;
            break;
        }
    }
    free(p);
    return tok;
}

static int cmd_generate(int argc, char **argv) {
    Flag f[] = {{"model", 0, 0},       {"tokenizer", 0, 0},  {"adapter", 0, 0},  {"prompt", 0, 0},
                {"max-tokens", 0, 0},  {"temperature", 0, 0}, {"seed", 0, 0},    {"template", 0, 0},
                {"no-bos", 0, 1},      {"ignore-eos", 0, 1}, {"print-ids", 0, 1}, {"threads", 0, 0}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int max_tokens, seed, threads;
    float temperature;
    if (parse_flags(argc, argv, f, nf, &e) || flag_int(f, nf, "max-tokens", 128, &e, &max_tokens) ||
        flag_int(f, nf, "seed", 42, &e, &seed) || flag_int(f, nf, "threads", 0, &e, &threads) ||
        flag_float(f, nf, "temperature", 0.8f, &e, &temperature))
        return fail(&e);
    const char *model_path = flag(f, nf, "model", NULL);
    if (!model_path) {
        err_set(&e, "generate needs --model");
        return fail(&e);
    }
    if (threads > 0) set_num_threads(threads);
    int tpl = (int)template_parse(flag(f, nf, "template", "raw"), &e);
    if (tpl < 0) return fail(&e);
    const char *prompt = flag(f, nf, "prompt", "");
    int rc = 1;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    LoraAdapter *lora = NULL;
    KVCache *kv = NULL;
    Tape *t = NULL;
    int *ids = NULL, *prompt_ids = NULL;
    char *text = NULL;
    if (!(m = model_load(model_path, &e))) goto done;
    if (!(tok = load_tokenizer_for(model_path, flag(f, nf, "tokenizer", NULL), &e))) goto done;
    const char *adapter = flag(f, nf, "adapter", NULL);
    if (adapter && !(lora = adapter_load_peft(adapter, m, &e))) goto done;
    text = tpl == TPL_RAW ? strdup(prompt) : template_format_prompt((Template)tpl, prompt, NULL);
    int np = tok_encode(tok, text, &prompt_ids, &e);
    if (np < 0) goto done;
    int cap = m->cfg.max_seq_len > 0 ? m->cfg.max_seq_len : 2048;
    int use_bos = !flag(f, nf, "no-bos", NULL) && tok_bos(tok) >= 0;
    int n = 0;
    if (!(ids = malloc(sizeof(int) * (size_t)(np + 1 + max_tokens)))) {
        err_set(&e, "out of memory");
        goto done;
    }
    if (use_bos) ids[n++] = tok_bos(tok);
    memcpy(ids + n, prompt_ids, sizeof(int) * (size_t)np);
    n += np;
    if (n == 0) {
        err_set(&e, "empty prompt and no BOS token: nothing to condition on");
        goto done;
    }
    if (n + max_tokens > cap) {
        if (n >= cap) {
            err_set(&e, "prompt has %d tokens; the model's context is %d", n, cap);
            goto done;
        }
        max_tokens = cap - n;
    }
    if (!(kv = kv_new(&m->cfg, n + max_tokens, &e)) || !(t = tape_new(&e))) goto done;
    tape_set_recording(t, 0);
    Rng rng;
    rng_seed(&rng, (uint64_t)seed);
    int print_ids = flag(f, nf, "print-ids", NULL) != NULL, ignore_eos = flag(f, nf, "ignore-eos", NULL) != NULL;
    int prev = n > 0 ? ids[n - 1] : -1;
    Tensor *logits = model_forward(t, m, lora, ids, 1, n, kv, 1);
    char piece[256];
    for (int i = 0; i < max_tokens; i++) {
        int next = sample_token(logits->data, m->cfg.vocab_size, temperature, &rng);
        if (next == tok_eos(tok) && !ignore_eos) break;
        ids[n++] = next;
        if (print_ids) printf("%s%d", i ? " " : "", next);
        else fputs(tok_piece_text(tok, prev, next, piece, sizeof piece), stdout);
        fflush(stdout);
        prev = next;
        if (i + 1 == max_tokens) break;
        tape_reset(t);
        logits = model_forward(t, m, lora, &next, 1, 1, kv, 1);
    }
    printf("\n");
    rc = 0;
done:
    if (rc) fail(&e);
    free(text);
    free(ids);
    free(prompt_ids);
    tape_free(t);
    kv_free(kv);
    lora_free(lora);
    tok_free(tok);
    model_free(m);
    return rc;
}

// ---- eval ---------------------------------------------------------------------------------
static int cmd_eval(int argc, char **argv) {
    Flag f[] = {{"model", 0, 0}, {"tokenizer", 0, 0},  {"adapter", 0, 0}, {"data", 0, 0},
                {"batch-size", 0, 0}, {"seq-len", 0, 0}, {"template", 0, 0}, {"threads", 0, 0}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int bs, seq, threads;
    if (parse_flags(argc, argv, f, nf, &e) || flag_int(f, nf, "batch-size", 4, &e, &bs) ||
        flag_int(f, nf, "seq-len", 512, &e, &seq) || flag_int(f, nf, "threads", 0, &e, &threads))
        return fail(&e);
    const char *model_path = flag(f, nf, "model", NULL), *data = flag(f, nf, "data", NULL);
    if (!model_path || !data) {
        err_set(&e, "eval needs --model and --data");
        return fail(&e);
    }
    if (threads > 0) set_num_threads(threads);
    if (bs < 1) bs = 1;
    int rc = 1;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    LoraAdapter *lora = NULL;
    Dataset *ds = NULL;
    Tape *t = NULL;
    DataOptions o;
    data_options_default(&o);
    o.seq_len = seq;
    const char *tname = flag(f, nf, "template", NULL);
    if (tname) {
        int tp = (int)template_parse(tname, &e);
        if (tp < 0) goto done;
        o.tpl = (Template)tp;
    }
    if (!(m = model_load(model_path, &e))) goto done;
    if (!(tok = load_tokenizer_for(model_path, flag(f, nf, "tokenizer", NULL), &e))) goto done;
    const char *adapter = flag(f, nf, "adapter", NULL);
    if (adapter && !(lora = adapter_load_peft(adapter, m, &e))) goto done;
    if (!(ds = dataset_load(data, tok, &o, &e)) || !(t = tape_new(&e))) goto done;
    long ntok;
    double loss = evaluate_loss(t, m, lora, ds, bs, 0, &ntok, &e);
    if (isnan(loss)) goto done;
    printf("%s: loss %.6f, perplexity %.4f over %ld tokens in %d examples\n", adapter ? adapter : "base",
           loss, exp(loss), ntok, ds->n);
    rc = 0;
done:
    if (rc) fail(&e);
    tape_free(t);
    dataset_free(ds);
    lora_free(lora);
    tok_free(tok);
    model_free(m);
    return rc;
}

// ---- init-model / convert -----------------------------------------------------------------
static int cmd_init_model(int argc, char **argv) {
    Flag f[] = {{"out", 0, 0},  {"dim", 0, 0},   {"layers", 0, 0}, {"heads", 0, 0}, {"kv-heads", 0, 0},
                {"ffn", 0, 0},  {"vocab", 0, 0}, {"seq", 0, 0},    {"seed", 0, 0},  {"std", 0, 0},
                {"tied", 0, 1}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int dim, layers, heads, kvh, ffn, vocab, seq, seed;
    float std;
    if (parse_flags(argc, argv, f, nf, &e) || flag_int(f, nf, "dim", 64, &e, &dim) ||
        flag_int(f, nf, "layers", 2, &e, &layers) || flag_int(f, nf, "heads", 4, &e, &heads) ||
        flag_int(f, nf, "kv-heads", 2, &e, &kvh) || flag_int(f, nf, "ffn", 172, &e, &ffn) ||
        flag_int(f, nf, "vocab", 512, &e, &vocab) || flag_int(f, nf, "seq", 256, &e, &seq) ||
        flag_int(f, nf, "seed", 1, &e, &seed) || flag_float(f, nf, "std", 0.02f, &e, &std))
        return fail(&e);
    const char *out = flag(f, nf, "out", NULL);
    if (!out) {
        err_set(&e, "init-model needs --out DIR");
        return fail(&e);
    }
    if (dim < 2 || layers < 1 || heads < 1 || kvh < 1 || heads % kvh || dim % heads || (dim / heads) % 2 ||
        ffn < 1 || vocab < 2 || seq < 2) {
        err_set(&e, "invalid shape: need heads divisible by kv-heads and dim divisible by heads into an even head size");
        return fail(&e);
    }
    ModelConfig c;
    model_config_default(&c, dim, ffn, layers, heads, kvh, vocab, seq);
    c.tied_embeddings = flag(f, nf, "tied", NULL) != NULL;
    if (model_write_random(&c, (uint64_t)seed, std, out, &e)) return fail(&e);
    printf("wrote a random-weight llama (dim %d, %d layers, %d heads, %d kv heads, ffn %d, vocab %d) to %s\n",
           dim, layers, heads, kvh, ffn, vocab, out);
    return 0;
}

static int cmd_convert(int argc, char **argv) {
    Flag f[] = {{"model", 0, 0}, {"out", 0, 0}};
    Err e = {{0}};
    if (parse_flags(argc, argv, f, 2, &e)) return fail(&e);
    const char *mp = flag(f, 2, "model", NULL), *out = flag(f, 2, "out", NULL);
    if (!mp || !out) {
        err_set(&e, "convert needs --model and --out");
        return fail(&e);
    }
    Model *m = model_load(mp, &e);
    if (!m) return fail(&e);
    int rc = model_save_hf(m, out, &e);
    model_free(m);
    if (rc) return fail(&e);
    printf("wrote %s (config.json, model.safetensors)\n", out);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "train")) return cmd_train(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "init-model")) return cmd_init_model(argc - 2, argv + 2);
    if (!strcmp(cmd, "convert")) return cmd_convert(argc - 2, argv + 2);
    fprintf(stderr, "lora: unknown command \"%s\"\n\n%s", cmd, USAGE);
    return 2;
}
