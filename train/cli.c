// Command-line helpers shared by the `lora` subcommands: --name value flags, switches,
// repeated flags, numbers with a clear message on a bad value.
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

int cli_template(const CliFlag *flags, int n, Err *e) {
    int t = (int)template_parse(cli_get(flags, n, "template", "auto"), e);
    if (t != TPL_AUTO) return t;  // a template, or -1
    // the model's own chat template (tokenizer_config.json, GGUF), else alpaca
    const char *paths[2] = {cli_get(flags, n, "tokenizer", NULL), cli_get(flags, n, "model", NULL)};
    for (int i = 0; i < 2 && t == TPL_AUTO; i++)
        if (paths[i]) t = (int)template_detect(paths[i]);
    return t == TPL_AUTO ? TPL_ALPACA : t;
}
