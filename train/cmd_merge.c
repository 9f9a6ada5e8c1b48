// `lora merge`: base + adapter -> one model with W' = W + scale·BA, as a HF directory
// (safetensors f32/bf16/f16, config and tokenizer files alongside) or a GGUF llama.cpp loads.
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export/export.h"
#include "train/train.h"

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

// The directory a model lives in: the model path itself for a HF directory.
static void model_dir(const char *model_path, char *dir, size_t n) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", model_path);
    snprintf(dir, n, "%s", is_directory(model_path) ? model_path : dirname(tmp));
}

static int write_hf(const Model *m, const char *model_path, const char *tok, StDtype dtype, const char *out, Err *e) {
    char dir[1024], cfg[1100];
    model_dir(model_path, dir, sizeof dir);
    path_join(cfg, sizeof cfg, dir, "config.json");
    if (merged_save_hf(m, dtype, is_directory(model_path) ? cfg : NULL, out, e)) return -1;
    int copied = copy_tokenizer_files(dir, out, e);
    if (copied < 0) return -1;
    char dst[1100];
    if (tok && ends_with(tok, ".model") && !file_exists(path_join(dst, sizeof dst, out, "tokenizer.model"))) {
        size_t len;
        char *data = read_file(tok, &len, e);
        if (!data || write_file_atomic(dst, data, len, e)) {
            free(data);
            return -1;
        }
        free(data);
        copied++;
    }
    printf("wrote %s (config.json, model.safetensors in %s, %d tokenizer file%s)\n", out,
           dtype == ST_BF16 ? "bf16" : dtype == ST_F16 ? "f16" : "f32", copied, copied == 1 ? "" : "s");
    if (!copied) printf("note: no tokenizer files found beside %s: copy them into %s yourself\n", model_path, out);
    return 0;
}

static int write_gguf(const Model *m, const char *model_path, const char *tok, GgmlType type, const char *out,
                      Err *e) {
    char path[1100], vbuf[1100];
    if (ends_with(out, ".gguf")) {
        snprintf(path, sizeof path, "%s", out);
    } else {
        if (make_dirs(out, e)) return -1;
        path_join(path, sizeof path, out, "model.gguf");
    }
    const char *vocab = gguf_vocab_source(model_path, tok, vbuf, sizeof vbuf);
    if (merged_save_gguf(m, type, vocab, path, e)) return -1;
    printf("wrote %s (GGUF, %s, vocabulary from %s)\n", path,
           type == GGML_BF16 ? "bf16" : type == GGML_F16 ? "f16" : "f32", vocab ? vocab : "nowhere");
    if (!vocab)
        printf("note: no tokenizer found (pass --tokenizer FILE.model): the GGUF has no vocabulary "
               "(tokenizer.ggml.model \"no_vocab\")\n");
    return 0;
}

int cmd_merge(int argc, char **argv) {
    CliFlag f[] = {{"model", 0, 0},  {"adapter", 0, 0},   {"out", 0, 0},
                   {"format", 0, 0}, {"dtype", 0, 0},     {"tokenizer", 0, 0}, {"threads", 0, 0}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int threads;
    if (cli_parse(argc, argv, f, nf, &e) || cli_int(f, nf, "threads", 0, &e, &threads)) return cli_fail(&e);
    const char *model_path = cli_get(f, nf, "model", NULL), *adapter = cli_get(f, nf, "adapter", NULL);
    const char *out = cli_get(f, nf, "out", NULL), *tok = cli_get(f, nf, "tokenizer", NULL);
    if (!model_path || !adapter || !out) {
        err_set(&e, "merge needs --model, --adapter and --out");
        return cli_fail(&e);
    }
    const char *format = cli_get(f, nf, "format", ends_with(out, ".gguf") ? "gguf" : "safetensors");
    const char *dtype = cli_get(f, nf, "dtype", "f32");
    int is_gguf = !strcmp(format, "gguf");
    if (!is_gguf && strcmp(format, "safetensors")) {
        err_set(&e, "--format: expected safetensors or gguf, got \"%s\"", format);
        return cli_fail(&e);
    }
    int kind = !strcmp(dtype, "f32") ? 0 : !strcmp(dtype, "bf16") ? 1 : !strcmp(dtype, "f16") ? 2 : -1;
    if (kind < 0) {
        err_set(&e, "--dtype: expected f32, bf16 or f16, got \"%s\"", dtype);
        return cli_fail(&e);
    }
    if (threads > 0) set_num_threads(threads);
    int rc = 1;
    LoraAdapter *lora = NULL;
    Model *m = model_load(model_path, &e);
    if (!m || !(lora = adapter_load(adapter, m, &e)) || lora_merge(m, lora, &e)) goto done;
    char tg[160];
    printf("merged %s (rank %d, scale %g, %s) into %s\n", adapter, lora->rank, lora->scale,
           lora_targets_str(lora->targets, tg, sizeof tg), model_path);
    static const StDtype ST[3] = {ST_F32, ST_BF16, ST_F16};
    static const GgmlType GG[3] = {GGML_F32, GGML_BF16, GGML_F16};
    if (is_gguf ? write_gguf(m, model_path, tok, GG[kind], out, &e) : write_hf(m, model_path, tok, ST[kind], out, &e))
        goto done;
    rc = 0;
done:
    if (rc) cli_fail(&e);
    lora_free(lora);
    model_free(m);
    return rc;
}
