// `lora eval`: the base and every --adapter on the same held-out examples, one table (and
// optionally JSON) with loss, perplexity, token accuracy and greedy-generation metrics.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/train.h"

#define MAX_ROWS 65

int cmd_eval(int argc, char **argv) {
    CliFlag f[] = {{"model", 0, 0},      {"tokenizer", 0, 0},    {"adapter", 0, 0},  {"data", 0, 0},
                   {"json", 0, 0},       {"max-tokens", 0, 0},   {"template", 0, 0}, {"format", 0, 0},
                   {"batch-size", 0, 0}, {"seq-len", 0, 0},      {"max-examples", 0, 0},
                   {"no-generate", 0, 1}, {"threads", 0, 0}, {"quant", 0, 0}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int seq, threads;
    EvalOptions eo;
    eval_options_default(&eo);
    eo.progress = 1;
    if (cli_parse(argc, argv, f, nf, &e) || cli_int(f, nf, "batch-size", 4, &e, &eo.batch_size) ||
        cli_int(f, nf, "seq-len", 512, &e, &seq) || cli_int(f, nf, "threads", 0, &e, &threads) ||
        cli_int(f, nf, "max-tokens", 0, &e, &eo.max_tokens) ||
        cli_int(f, nf, "max-examples", 0, &e, &eo.max_examples))
        return cli_fail(&e);
    eo.generate = !cli_get(f, nf, "no-generate", NULL);
    const char *model_path = cli_get(f, nf, "model", NULL), *data = cli_get(f, nf, "data", NULL);
    if (!model_path || !data) {
        err_set(&e, "eval needs --model and --data");
        return cli_fail(&e);
    }
    if (eo.batch_size < 1 || seq < 2 || eo.max_tokens < 0 || eo.max_examples < 0) {
        err_set(&e, "eval: --batch-size must be >= 1, --seq-len >= 2, --max-tokens and --max-examples >= 0");
        return cli_fail(&e);
    }
    if (threads > 0) set_num_threads(threads);
    DataOptions o;
    data_options_default(&o);
    o.seq_len = seq;
    const char *tname = cli_get(f, nf, "template", NULL), *fname = cli_get(f, nf, "format", NULL);
    if (tname) {
        int tp = (int)template_parse(tname, &e);
        if (tp < 0) return cli_fail(&e);
        o.tpl = (Template)tp;
    }
    if (fname) {
        int fm = (int)data_format_parse(fname, &e);
        if (fm < 0) return cli_fail(&e);
        o.format = (DataFormat)fm;
    }
    if (o.tpl == TPL_AUTO) {  // messages rows in the model's own chat template, as `lora train` lays them out
        o.chat_tpl = cli_detect_template(f, nf);
        fprintf(stderr, "lora: chat template (messages rows): %s\n",
                o.chat_tpl != TPL_AUTO ? template_name(o.chat_tpl) : "chatml (no known chat_template beside the model)");
    }
    QuantType quant;
    if (cli_quant(f, nf, argc, argv, &quant, &e)) return cli_fail(&e);
    int rc = 1, nrows = 0;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    AdapterRegistry *reg = NULL;
    Dataset *ds = NULL;
    EvalResult *rows = NULL;
    AdapterInfo info[MAX_ROWS - 1];
    if (!(m = model_load_quant(model_path, quant_name(quant), &e))) goto done;
    if (!(tok = load_tokenizer_for(model_path, cli_get(f, nf, "tokenizer", NULL), &e))) goto done;
    if (m->cfg.max_seq_len > 0 && o.seq_len > m->cfg.max_seq_len) o.seq_len = m->cfg.max_seq_len;
    if (!(reg = registry_new(m, "base", &e)) || cli_load_adapters(reg, argc, argv, &e) < 0) goto done;
    if (!(ds = dataset_load(data, tok, &o, &e))) goto done;
    int na = registry_list(reg, info, MAX_ROWS - 1);
    if (!(rows = xcalloc((size_t)na + 1, sizeof *rows, "eval results", &e))) goto done;
    if (eval_model(m, NULL, tok, ds, &eo, "base", &rows[nrows++], &e)) goto done;
    for (int i = 0; i < na; i++) {
        const LoraAdapter *lora;
        AdapterEntry *ref;
        if (registry_acquire(reg, info[i].name, &lora, &ref, &e)) goto done;
        int r = eval_model(m, lora, tok, ds, &eo, info[i].name, &rows[nrows++], &e);
        registry_release(reg, ref);
        if (r) goto done;
    }
    printf("held-out %s\n", data);
    eval_print_table(stdout, rows, nrows);
    const char *json = cli_get(f, nf, "json", NULL);
    if (json) {
        if (eval_write_json(json, rows, nrows, &e)) goto done;
        printf("wrote %s\n", json);
    }
    rc = 0;
done:
    if (rc) cli_fail(&e);
    free(rows);
    dataset_free(ds);
    registry_free(reg);
    tok_free(tok);
    model_free(m);
    return rc;
}
