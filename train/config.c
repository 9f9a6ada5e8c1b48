// Training configuration: defaults, recipe JSON, command-line overrides.
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "train/train.h"

void train_config_default(TrainConfig *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->out, sizeof c->out, "out");
    c->rank = 8;
    c->alpha = 16.0f;
    c->dropout = 0.05f;
    c->targets = (1u << LT_COUNT) - 1;
    c->quant = QUANT_NF4;
    c->grad_checkpointing = 1;
    c->memory_limit_mb = 1536;
    data_options_default(&c->data_opts);
    c->val_fraction = 0.1f;
    c->epochs = 1.0f;
    c->batch_size = 4;
    c->grad_accum = 1;
    c->lr = 2e-4f;
    c->sched = SCHED_COSINE;
    c->max_grad_norm = 1.0f;
    adamw_config_default(&c->adamw);
    c->seed = 42;
    c->log_every = 1;
}

static const char *const COMPUTE_NAMES[] = {"auto", "fp32", "bf16"};

int compute_dtype_parse(const char *s, ComputeDtype *out, Err *e) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, COMPUTE_NAMES[i])) {
            *out = (ComputeDtype)i;
            return 0;
        }
    return err_set(e, "compute_dtype: expected auto, fp32 or bf16, got \"%s\"", s);
}

const char *compute_dtype_name(ComputeDtype d) { return COMPUTE_NAMES[d]; }

const GemmKernel *compute_gemm(ComputeDtype d) {
    const KernelChoice *kc = kernel_choice();
    if (d == COMPUTE_FP32) return kc->fp32;
    if (d == COMPUTE_BF16) return kc->bf16 ? kc->bf16 : kc->fp32;
    return kc->best;
}

static int parse_int(const char *key, const char *v, int lo, int hi, int *out, Err *e) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return err_set(e, "%s: expected a whole number in [%d, %d], got \"%s\"", key, lo, hi, v);
    *out = (int)x;
    return 0;
}

static int parse_float(const char *key, const char *v, double lo, double hi, float *out, Err *e) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x) || x < lo || x > hi)
        return err_set(e, "%s: expected a number in [%g, %g], got \"%s\"", key, lo, hi, v);
    *out = (float)x;
    return 0;
}

static int parse_bool(const char *key, const char *v, int *out, Err *e) {
    if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on")) {
        *out = 1;
        return 0;
    }
    if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off")) {
        *out = 0;
        return 0;
    }
    return err_set(e, "%s: expected true or false, got \"%s\"", key, v);
}

static int set_path(char *dst, size_t n, const char *key, const char *v, Err *e) {
    if (strlen(v) >= n) return err_set(e, "%s: path too long", key);
    snprintf(dst, n, "%s", v);
    return 0;
}

int train_config_set(TrainConfig *c, const char *key_in, const char *v, Err *e) {
    char key[64];
    snprintf(key, sizeof key, "%s", key_in);
    for (char *p = key; *p; p++)
        if (*p == '-') *p = '_';
    const float BIG = 1e30f;
#define IS(k) (!strcmp(key, k))
    if (IS("model")) return set_path(c->model, sizeof c->model, key, v, e);
    if (IS("tokenizer")) return set_path(c->tokenizer, sizeof c->tokenizer, key, v, e);
    if (IS("data")) return set_path(c->data, sizeof c->data, key, v, e);
    if (IS("val_data")) return set_path(c->val_data, sizeof c->val_data, key, v, e);
    if (IS("out")) return set_path(c->out, sizeof c->out, key, v, e);
    if (IS("rank")) return parse_int(key, v, 1, 4096, &c->rank, e);
    if (IS("alpha")) return parse_float(key, v, 0, BIG, &c->alpha, e);
    if (IS("dropout")) return parse_float(key, v, 0, 0.99, &c->dropout, e);
    if (IS("targets")) {
        unsigned m = lora_parse_targets(v, e);
        if (!m) return -1;
        c->targets = m;
        return 0;
    }
    if (IS("rslora") || IS("use_rslora")) return parse_bool(key, v, &c->use_rslora, e);
    if (IS("quant")) return quant_parse(v, &c->quant, e);
    if (IS("quant_cache")) return set_path(c->quant_cache, sizeof c->quant_cache, key, v, e);
    if (IS("profile")) return parse_bool(key, v, &c->profile, e);
    if (IS("grad_checkpointing")) return parse_bool(key, v, &c->grad_checkpointing, e);
    if (IS("compute_dtype")) return compute_dtype_parse(v, &c->compute, e);
    if (IS("memory_limit")) return parse_int(key, v, 0, 1 << 30, &c->memory_limit_mb, e);
    if (IS("format")) {
        int f = (int)data_format_parse(v, e);
        if (f < 0) return -1;
        c->data_opts.format = (DataFormat)f;
        return 0;
    }
    if (IS("template")) {
        int t = (int)template_parse(v, e);
        if (t < 0) return -1;
        c->data_opts.tpl = (Template)t;
        return 0;
    }
    if (IS("seq_len")) return parse_int(key, v, 2, 1 << 20, &c->data_opts.seq_len, e);
    if (IS("train_on_inputs")) return parse_bool(key, v, &c->data_opts.train_on_inputs, e);
    if (IS("add_bos")) return parse_bool(key, v, &c->data_opts.add_bos, e);
    if (IS("add_eos")) return parse_bool(key, v, &c->data_opts.add_eos, e);
    if (IS("skip_bad_lines")) return parse_bool(key, v, &c->data_opts.skip_bad_lines, e);
    if (IS("on_bad_line")) {  // "skip" | "stop"
        if (!strcmp(v, "skip")) c->data_opts.skip_bad_lines = 1;
        else if (!strcmp(v, "stop")) c->data_opts.skip_bad_lines = 0;
        else return err_set(e, "on_bad_line: expected skip or stop, got \"%s\"", v);
        return 0;
    }
    if (IS("val_fraction")) return parse_float(key, v, 0, 0.9, &c->val_fraction, e);
    if (IS("steps")) return parse_int(key, v, 0, 1 << 30, &c->steps, e);
    if (IS("epochs")) return parse_float(key, v, 0, 1e6, &c->epochs, e);
    if (IS("batch_size")) return parse_int(key, v, 1, 1 << 16, &c->batch_size, e);
    if (IS("grad_accum")) return parse_int(key, v, 1, 1 << 16, &c->grad_accum, e);
    if (IS("lr")) return parse_float(key, v, 0, 10, &c->lr, e);
    if (IS("scheduler") || IS("lr_scheduler")) {
        int s = (int)sched_parse(v, e);
        if (s < 0) return -1;
        c->sched = (SchedType)s;
        return 0;
    }
    if (IS("warmup_steps")) return parse_int(key, v, 0, 1 << 30, &c->warmup_steps, e);
    if (IS("warmup_ratio")) return parse_float(key, v, 0, 1, &c->warmup_ratio, e);
    if (IS("max_grad_norm")) return parse_float(key, v, 0, BIG, &c->max_grad_norm, e);
    if (IS("beta1")) return parse_float(key, v, 0, 0.999999, &c->adamw.beta1, e);
    if (IS("beta2")) return parse_float(key, v, 0, 0.999999, &c->adamw.beta2, e);
    if (IS("eps") || IS("adam_eps")) return parse_float(key, v, 0, 1, &c->adamw.eps, e);
    if (IS("weight_decay")) return parse_float(key, v, 0, 10, &c->adamw.weight_decay, e);
    if (IS("seed")) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 10);
        if (errno || end == v || *end) return err_set(e, "seed: expected a whole number, got \"%s\"", v);
        c->seed = s;
        return 0;
    }
    if (IS("log_every")) return parse_int(key, v, 1, 1 << 30, &c->log_every, e);
    if (IS("eval_every")) return parse_int(key, v, 0, 1 << 30, &c->eval_every, e);
    if (IS("eval_max_examples")) return parse_int(key, v, 0, 1 << 30, &c->eval_max_examples, e);
    if (IS("eval_before")) return parse_bool(key, v, &c->eval_before, e);
    if (IS("threads")) return parse_int(key, v, 0, 1024, &c->threads, e);
    if (IS("save_every")) return parse_int(key, v, 0, 1 << 30, &c->save_every, e);
    if (IS("resume")) return set_path(c->resume, sizeof c->resume, key, v, e);
#undef IS
    return err_set(e, "unknown setting \"%s\" (see `lora train --help`)", key_in);
}

int train_config_load_json(TrainConfig *c, const char *path, Err *e) {
    char *text = read_file(path, NULL, e);
    if (!text) return -1;
    enum json_tokener_error jerr;
    json_object *root = json_tokener_parse_verbose(text, &jerr);
    free(text);
    if (!root) return err_set(e, "%s: invalid JSON: %s", path, json_tokener_error_desc(jerr));
    if (!json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        return err_set(e, "%s: a recipe must be a JSON object", path);
    }
    int rc = 0;
    json_object_object_foreach(root, key, val) {
        if (key[0] == '_' || !strcmp(key, "comment")) continue;  // "_comment": free text
        char buf[2048];
        Err sub;
        if (json_object_is_type(val, json_type_array)) {  // e.g. "targets": ["q_proj", ...]
            size_t used = 0;
            buf[0] = 0;
            for (size_t i = 0; i < json_object_array_length(val); i++) {
                const char *s = json_object_get_string(json_object_array_get_idx(val, i));
                used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%s", i ? "," : "", s ? s : "");
                if (used >= sizeof buf) break;
            }
        } else if (json_object_is_type(val, json_type_null) || json_object_is_type(val, json_type_object)) {
            rc = err_set(e, "%s: \"%s\" must be a string, number or boolean", path, key);
            break;
        } else {
            snprintf(buf, sizeof buf, "%s", json_object_get_string(val));
        }
        if (train_config_set(c, key, buf, &sub)) {
            rc = err_set(e, "%s: %s", path, sub.msg);
            break;
        }
    }
    json_object_put(root);
    return rc;
}

int train_config_save(const TrainConfig *c, const char *path, Err *e) {
    char tg[160];
    json_object *o = json_object_new_object();
#define S(k, v) json_object_object_add(o, k, json_object_new_string(v))
#define I(k, v) json_object_object_add(o, k, json_object_new_int64(v))
#define F(k, v) json_object_object_add(o, k, json_object_new_double(v))
#define BOOL(k, v) json_object_object_add(o, k, json_object_new_boolean(v))
    S("model", c->model);
    S("tokenizer", c->tokenizer);
    S("data", c->data);
    S("val_data", c->val_data);
    S("out", c->out);
    I("rank", c->rank);
    F("alpha", c->alpha);
    F("dropout", c->dropout);
    S("targets", lora_targets_str(c->targets, tg, sizeof tg));
    BOOL("use_rslora", c->use_rslora);
    S("quant", quant_name(c->quant));
    S("quant_cache", c->quant_cache);
    BOOL("grad_checkpointing", c->grad_checkpointing);
    S("compute_dtype", compute_dtype_name(c->compute));
    I("memory_limit", c->memory_limit_mb);
    static const char *const FORMATS[] = {"auto", "alpaca", "completion", "messages", "text"};
    S("format", FORMATS[c->data_opts.format]);
    S("template", template_name(c->data_opts.tpl));
    I("seq_len", c->data_opts.seq_len);
    BOOL("train_on_inputs", c->data_opts.train_on_inputs);
    BOOL("add_bos", c->data_opts.add_bos);
    BOOL("add_eos", c->data_opts.add_eos);
    BOOL("skip_bad_lines", c->data_opts.skip_bad_lines);
    F("val_fraction", c->val_fraction);
    I("steps", c->steps);
    F("epochs", c->epochs);
    I("batch_size", c->batch_size);
    I("grad_accum", c->grad_accum);
    F("lr", c->lr);
    S("scheduler", sched_name(c->sched));
    I("warmup_steps", c->warmup_steps);
    F("warmup_ratio", c->warmup_ratio);
    F("max_grad_norm", c->max_grad_norm);
    F("beta1", c->adamw.beta1);
    F("beta2", c->adamw.beta2);
    F("eps", c->adamw.eps);
    F("weight_decay", c->adamw.weight_decay);
    I("seed", (int64_t)c->seed);
    I("log_every", c->log_every);
    I("eval_every", c->eval_every);
    I("eval_max_examples", c->eval_max_examples);
    BOOL("eval_before", c->eval_before);
    I("threads", c->threads);
    I("save_every", c->save_every);
#undef S
#undef I
#undef F
#undef BOOL
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
    int rc = write_file_atomic(path, s, strlen(s), e);
    json_object_put(o);
    return rc;
}
