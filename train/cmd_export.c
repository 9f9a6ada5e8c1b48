// `lora export`: an adapter (PEFT directory or GGUF LoRA) written in the other format — a
// llama.cpp GGUF LoRA adapter (--to gguf) or a PEFT directory (--to peft). The base model
// gives the shapes and the attention heads whose rows the RoPE permutation reorders.
#include <stdio.h>
#include <string.h>

#include "export/export.h"
#include "train/train.h"

int cmd_export(int argc, char **argv) {
    CliFlag f[] = {{"adapter", 0, 0}, {"model", 0, 0}, {"out", 0, 0}, {"to", 0, 0}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    if (cli_parse(argc, argv, f, nf, &e)) return cli_fail(&e);
    const char *adapter = cli_get(f, nf, "adapter", NULL), *model_path = cli_get(f, nf, "model", NULL);
    const char *out = cli_get(f, nf, "out", NULL), *to = cli_get(f, nf, "to", "gguf");
    if (!adapter || !model_path || !out) {
        err_set(&e, "export needs --adapter, --model (the base it was trained on) and --out");
        return cli_fail(&e);
    }
    if (strcmp(to, "gguf") && strcmp(to, "peft")) {
        err_set(&e, "--to: expected gguf or peft, got \"%s\"", to);
        return cli_fail(&e);
    }
    int to_gguf = !strcmp(to, "gguf"), ok = 0;
    Model *m = model_load(model_path, &e);
    LoraAdapter *lora = m ? adapter_load(adapter, m, &e) : NULL;
    if (lora)
        ok = !(to_gguf ? adapter_save_gguf(lora, m, out, &e) : adapter_save_peft(lora, m, out, &e));
    if (ok)
        printf("wrote %s (%s LoRA adapter, rank %d, alpha %g%s)\n", out, to_gguf ? "llama.cpp GGUF" : "PEFT",
               lora->rank, lora->alpha, lora->use_rslora && to_gguf ? ", rsLoRA folded into B" : "");
    lora_free(lora);
    model_free(m);
    return ok ? 0 : cli_fail(&e);
}
