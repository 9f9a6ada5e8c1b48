// Command-line helpers shared by the `lora` subcommands: --name value flags, switches,
// repeated flags, numbers with a clear message on a bad value.
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/train.h"

int cli_fail(const Err *e) {
    fprintf(stderr, "lora: %s\n", e->msg);
    return 1;
}

int cli_parse(int argc, char **argv, CliFlag *flags, int nflags, Err *e) {
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

int cli_all(int argc, char **argv, const char *name, const char **out, int max, Err *e) {
    int n = 0;
    for (int i = 0; i + 1 < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0 || strcmp(argv[i] + 2, name) != 0) continue;
        if (n == max) return err_set(e, "--%s: at most %d allowed", name, max);
        out[n++] = argv[++i];
    }
    return n;
}

const char *cli_get(const CliFlag *flags, int n, const char *name, const char *def) {
    for (int i = 0; i < n; i++)
        if (!strcmp(flags[i].name, name)) return flags[i].value ? flags[i].value : def;
    return def;
}

int cli_int(const CliFlag *flags, int n, const char *name, int def, Err *e, int *out) {
    const char *v = cli_get(flags, n, name, NULL);
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

int cli_float(const CliFlag *flags, int n, const char *name, float def, Err *e, float *out) {
    const char *v = cli_get(flags, n, name, NULL);
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

int cli_gen_config(const CliFlag *flags, int n, int argc, char **argv, int def_max_tokens, float def_temperature,
                   GenConfig *g, Err *e) {
    gen_config_default(g);
    int seed = 42;
    SamplerConfig *s = &g->sampler;
    if (cli_int(flags, n, "max-tokens", def_max_tokens, e, &g->max_tokens) ||
        cli_float(flags, n, "temperature", def_temperature, e, &s->temperature) ||
        cli_int(flags, n, "top-k", 0, e, &s->top_k) || cli_float(flags, n, "top-p", 1.0f, e, &s->top_p) ||
        cli_float(flags, n, "min-p", 0.0f, e, &s->min_p) ||
        cli_float(flags, n, "repetition-penalty", 1.0f, e, &s->repetition_penalty) ||
        cli_int(flags, n, "seed", 42, e, &seed))
        return -1;
    if (g->max_tokens < 0) return err_set(e, "--max-tokens must be >= 0 (got %d)", g->max_tokens);
    s->seed = (uint64_t)(int64_t)seed;
    g->ignore_eos = cli_get(flags, n, "ignore-eos", NULL) != NULL;
    int ns = cli_all(argc, argv, "stop", g->stop, GEN_MAX_STOP, e);
    if (ns < 0) return -1;
    g->n_stop = ns;
    return sampler_config_check(s, e);
}

int cli_load_adapters(AdapterRegistry *r, int argc, char **argv, Err *e) {
    const char *specs[64];
    int n = cli_all(argc, argv, "adapter", specs, 64, e);
    for (int i = 0; i < n; i++) {
        char name[ADAPTER_NAME_MAX], path[1024];
        float scale;
        if (adapter_spec_parse(specs[i], name, sizeof name, path, sizeof path, &scale, e) ||
            registry_load(r, name, path, scale, e))
            return -1;
    }
    return n;
}

Template cli_detect_template(const CliFlag *flags, int n) {
    // tokenizer_config.json / chat_template.jinja beside --tokenizer, then --model (or its GGUF)
    const char *paths[2] = {cli_get(flags, n, "tokenizer", NULL), cli_get(flags, n, "model", NULL)};
    Template t = TPL_AUTO;
    for (int i = 0; i < 2 && t == TPL_AUTO; i++)
        if (paths[i]) t = template_detect(paths[i]);
    return t;
}

int cli_template(const CliFlag *flags, int n, Err *e) {
    int t = (int)template_parse(cli_get(flags, n, "template", "auto"), e);
    if (t != TPL_AUTO) return t;  // a template, or -1
    t = (int)cli_detect_template(flags, n);
    return t == TPL_AUTO ? TPL_ALPACA : t;
}

// The "quant" of DIR/train_config.json (what `lora train` ran with) into *q. Returns 1 when
// found, 0 when dir has no train_config.json or it has no "quant" (not a `lora train`
// output: a GGUF LoRA, a PEFT adapter from elsewhere), -1 on a file that cannot be read.
static int adapter_trained_quant(const char *dir, char *file, size_t file_n, QuantType *q, Err *e) {
    if (!is_directory(dir)) return 0;
    path_join(file, file_n, dir, "train_config.json");
    if (!file_exists(file)) return 0;
    json_object *root = json_object_from_file(file), *v = NULL;
    int rc = 0;
    if (!root || !json_object_is_type(root, json_type_object))
        rc = err_set(e, "%s: not a JSON object (pass --quant nf4|none to skip reading it)", file);
    else if (json_object_object_get_ex(root, "quant", &v)) {
        if (!json_object_is_type(v, json_type_string) || quant_parse(json_object_get_string(v), q, NULL))
            rc = err_set(e, "%s: \"quant\" must be \"nf4\" or \"none\" (pass --quant to choose)", file);
        else rc = 1;
    }
    json_object_put(root);
    return rc;
}

int cli_quant(const CliFlag *flags, int n, int argc, char **argv, QuantType *q, Err *e) {
    const char *given = cli_get(flags, n, "quant", "auto");
    *q = QUANT_NONE;
    if (strcmp(given, "auto") != 0) {
        if (quant_parse(given, q, e)) return err_set(e, "--quant: expected auto, nf4 or none, got \"%s\"", given);
        fprintf(stderr, "lora: base weights %s (--quant)\n", quant_name(*q));
        return 0;
    }
    // the quantisation each `lora train` adapter was trained on; the first one's wins
    const char *specs[64];
    int ns = cli_all(argc, argv, "adapter", specs, 64, e), found = 0;
    if (ns < 0) return -1;
    char first_name[ADAPTER_NAME_MAX] = "", first_file[1100] = "", others[512] = "";
    for (int i = 0; i < ns; i++) {
        char name[ADAPTER_NAME_MAX], path[1024], file[1100];
        float scale;
        QuantType aq;
        if (adapter_spec_parse(specs[i], name, sizeof name, path, sizeof path, &scale, e)) return -1;
        int r = adapter_trained_quant(path, file, sizeof file, &aq, e);
        if (r < 0) return -1;
        if (r == 0) continue;
        if (!found++) {
            *q = aq;
            snprintf(first_name, sizeof first_name, "%s", name);
            snprintf(first_file, sizeof first_file, "%s", file);
        } else if (aq != *q) {
            size_t l = strlen(others);
            snprintf(others + l, sizeof others - l, "%s%s (%s)", l ? ", " : "", name, quant_name(aq));
        }
    }
    if (!found)
        fprintf(stderr, "lora: base weights none (no adapter with a train_config.json; --quant nf4 for a 4-bit base)\n");
    else if (!others[0])
        fprintf(stderr, "lora: base weights %s, as adapter %s was trained (%s; --quant overrides)\n", quant_name(*q),
                first_name, first_file);
    else
        fprintf(stderr,
                "lora: warning: the adapters were trained on different bases: %s (%s) but %s; using %s, the first "
                "one's (%s); pass --quant nf4|none to choose\n",
                first_name, quant_name(*q), others, quant_name(*q), first_file);
    return 0;
}
