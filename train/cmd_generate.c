// `lora generate`: one prompt, one answer, streamed to stdout (base, or base + one adapter).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/train.h"

static int emit_stdout(void *user, const char *text, size_t len) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

int cmd_generate(int argc, char **argv) {
    CliFlag f[] = {{"model", 0, 0},       {"tokenizer", 0, 0},    {"adapter", 0, 0},   {"prompt", 0, 0},
                   {"max-tokens", 0, 0},  {"temperature", 0, 0},  {"seed", 0, 0},      {"template", 0, 0},
                   {"top-k", 0, 0},       {"top-p", 0, 0},        {"min-p", 0, 0},     {"repetition-penalty", 0, 0},
                   {"stop", 0, 0},        {"no-bos", 0, 1},       {"ignore-eos", 0, 1}, {"print-ids", 0, 1},
                   {"threads", 0, 0}, {"quant", 0, 0},        {"verbose", 0, 1}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int threads;
    GenConfig g;
    if (cli_parse(argc, argv, f, nf, &e) || cli_int(f, nf, "threads", 0, &e, &threads) ||
        cli_gen_config(f, nf, argc, argv, 128, 0.8f, &g, &e))
        return cli_fail(&e);
    const char *model_path = cli_get(f, nf, "model", NULL);
    if (!model_path) {
        err_set(&e, "generate needs --model");
        return cli_fail(&e);
    }
    const char *specs[2];
    if (cli_all(argc, argv, "adapter", specs, 2, &e) > 1) {
        err_set(&e, "generate takes one --adapter (use `lora chat` or `lora serve` to switch between several)");
        return cli_fail(&e);
    }
    if (threads > 0) set_num_threads(threads);
    int tpl = (int)template_parse(cli_get(f, nf, "template", "raw"), &e);
    QuantType quant;
    if (tpl < 0 || cli_quant(f, nf, argc, argv, &quant, &e)) return cli_fail(&e);
    int rc = 1;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    AdapterRegistry *reg = NULL;
    AdapterEntry *ref = NULL;
    const LoraAdapter *lora = NULL;
    int *ids = NULL;
    GenResult res = {0};
    if (!(m = model_load_quant(model_path, quant_name(quant), &e))) goto done;
    if (!(tok = load_tokenizer_for(model_path, cli_get(f, nf, "tokenizer", NULL), &e))) goto done;
    if (!(reg = registry_new(m, "base", &e)) || cli_load_adapters(reg, argc, argv, &e) < 0) goto done;
    if (cli_get(f, nf, "adapter", NULL)) {
        AdapterInfo info;
        registry_list(reg, &info, 1);
        if (registry_acquire(reg, info.name, &lora, &ref, &e)) goto done;
    }
    gen_add_template_stops(&g, (Template)tpl);
    int add_bos = !cli_get(f, nf, "no-bos", NULL);
    int n = prompt_ids_text(tok, (Template)tpl, cli_get(f, nf, "prompt", ""), add_bos, &ids, &e);
    if (n < 0) goto done;
    int print_ids = cli_get(f, nf, "print-ids", NULL) != NULL;
    if (generate(m, lora, tok, ids, n, &g, print_ids ? NULL : emit_stdout, NULL, &res, &e)) goto done;
    if (print_ids)
        for (int i = 0; i < res.n; i++) printf("%s%d", i ? " " : "", res.ids[i]);
    printf("\n");
    if (cli_get(f, nf, "verbose", NULL)) {
        // prefill: the prompt in one pass (GEMM); decode: the tokens after the first, one step each
        const GenTiming *t = &res.timing;
        fprintf(stderr, "timing: prompt %d tok %.3f s (%.1f tok/s), decode %d tok %.3f s (%.1f tok/s)\n",
                t->prompt_tokens, t->prefill_s, t->prefill_s > 0 ? t->prompt_tokens / t->prefill_s : 0.0,
                t->decode_tokens, t->decode_s, t->decode_s > 0 ? t->decode_tokens / t->decode_s : 0.0);
    }
    rc = 0;
done:
    if (rc) cli_fail(&e);
    gen_result_free(&res);
    free(ids);
    registry_release(reg, ref);
    registry_free(reg);
    tok_free(tok);
    model_free(m);
    return rc;
}
