// PEFT LoRA adapter directories: adapter_model.safetensors + adapter_config.json.
// Keys as PEFT saves them (the adapter name "default" dropped):
//   base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight   A (r, in)
//   base_model.model.model.layers.N.self_attn.q_proj.lora_B.weight   B (out, r)
// The in-memory adapter is in the HF RoPE convention already, so nothing is permuted.
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "export/export.h"

#define PEFT_PREFIX "base_model.model.model.layers."

// "base_model.model.model.layers.3.self_attn.q_proj.lora_A" + suffix
static void peft_key(char *buf, size_t n, int layer, LoraTarget t, char ab, const char *suffix) {
    snprintf(buf, n, PEFT_PREFIX "%d.%s.%s.lora_%c%s", layer, t <= LT_O ? "self_attn" : "mlp",
             lora_target_name(t), ab, suffix);
}

static json_object *adapter_config(const LoraAdapter *a) {
    json_object *j = json_object_new_object(), *tm = json_object_new_array();
    for (int t = 0; t < LT_COUNT; t++)
        if (a->targets & (1u << t)) json_object_array_add(tm, json_object_new_string(lora_target_name((LoraTarget)t)));
    json_object_object_add(j, "peft_type", json_object_new_string("LORA"));
    json_object_object_add(j, "task_type", json_object_new_string("CAUSAL_LM"));
    json_object_object_add(j, "base_model_name_or_path", json_object_new_string(a->base_model));
    json_object_object_add(j, "r", json_object_new_int(a->rank));
    if (a->alpha == floorf(a->alpha) && fabsf(a->alpha) < 1e9f)
        json_object_object_add(j, "lora_alpha", json_object_new_int64((int64_t)a->alpha));
    else
        json_object_object_add(j, "lora_alpha", json_new_float(a->alpha));
    json_object_object_add(j, "lora_dropout", json_new_float(a->dropout));
    json_object_object_add(j, "target_modules", tm);
    json_object_object_add(j, "bias", json_object_new_string("none"));
    json_object_object_add(j, "use_rslora", json_object_new_boolean(a->use_rslora));
    json_object_object_add(j, "use_dora", json_object_new_boolean(0));
    json_object_object_add(j, "fan_in_fan_out", json_object_new_boolean(0));
    json_object_object_add(j, "inference_mode", json_object_new_boolean(1));
    json_object_object_add(j, "init_lora_weights", json_object_new_boolean(1));
    json_object_object_add(j, "modules_to_save", NULL);
    json_object_object_add(j, "layers_to_transform", NULL);
    json_object_object_add(j, "rank_pattern", json_object_new_object());
    json_object_object_add(j, "alpha_pattern", json_object_new_object());
    return j;
}

int adapter_save_peft(const LoraAdapter *a, const Model *m, const char *dir, Err *e) {
    if (a->n_layers != m->cfg.n_layers)
        return err_set(e, "adapter has %d layers but the model %d", a->n_layers, m->cfg.n_layers);
    if (make_dirs(dir, e)) return -1;
    StWriter *w = stw_new(e);
    if (!w) return -1;
    int rc = stw_add_metadata(w, "format", "pt", e);
    for (int l = 0; l < a->n_layers && !rc; l++)
        for (int t = 0; t < LT_COUNT && !rc; t++) {
            const Tensor *A = a->A[l * LT_COUNT + t], *B = a->B[l * LT_COUNT + t];
            if (!A) continue;
            char key[200];
            peft_key(key, sizeof key, l, (LoraTarget)t, 'A', ".weight");
            rc = stw_add_f32(w, key, ST_F32, A->ndim, A->shape, A->data, e);
            peft_key(key, sizeof key, l, (LoraTarget)t, 'B', ".weight");
            if (!rc) rc = stw_add_f32(w, key, ST_F32, B->ndim, B->shape, B->data, e);
        }
    char path[1100];
    if (!rc) rc = stw_save(w, path_join(path, sizeof path, dir, "adapter_model.safetensors"), e);
    stw_free(w);
    if (rc) return -1;
    json_object *j = adapter_config(a);
    rc = json_write_file(path_join(path, sizeof path, dir, "adapter_config.json"), j, e);
    json_object_put(j);
    return rc;
}

// ---- loading --------------------------------------------------------------------------------

// An empty or absent dict / list / null member (PEFT writes {} and null for unused options).
static int is_unset(json_object *j, const char *key) {
    json_object *v;
    if (!json_object_object_get_ex(j, key, &v) || json_object_is_type(v, json_type_null)) return 1;
    if (json_object_is_type(v, json_type_object)) return json_object_object_length(v) == 0;
    if (json_object_is_type(v, json_type_array)) return json_object_array_length(v) == 0;
    return 0;
}

// target_modules -> bitmask (0 when it is a regex string we cannot read: tensors decide).
static int parse_target_modules(json_object *j, const char *file, unsigned *mask, Err *e) {
    json_object *tm;
    *mask = 0;
    if (!json_object_object_get_ex(j, "target_modules", &tm) || json_object_is_type(tm, json_type_null))
        return 0;
    if (json_object_is_type(tm, json_type_string)) {
        Err ignore;
        *mask = lora_parse_targets(json_object_get_string(tm), &ignore);
        return 0;
    }
    if (!json_object_is_type(tm, json_type_array))
        return err_set(e, "%s: \"target_modules\" must be a list of module names", file);
    for (size_t i = 0; i < json_object_array_length(tm); i++) {
        const char *s = json_object_get_string(json_object_array_get_idx(tm, i));
        int found = -1;
        for (int t = 0; t < LT_COUNT && s; t++)
            if (!strcmp(s, lora_target_name((LoraTarget)t))) found = t;
        if (found < 0)
            return err_set(e, "%s: target module \"%s\" is not supported (q_proj, k_proj, v_proj, "
                              "o_proj, gate_proj, up_proj, down_proj)",
                           file, s ? s : "?");
        *mask |= 1u << found;
    }
    return 0;
}

static int read_config(LoraAdapter *a, const char *file, unsigned *listed, Err *e) {
    json_object *j = json_read_file(file, e);
    if (!j) return -1;
    const char *s = NULL;
    int64_t r = 0;
    double alpha = 8.0, dropout = 0.0;  // PEFT's defaults
    int b = 0, rc = 0;
    if (!json_object_is_type(j, json_type_object)) rc = err_set(e, "%s: not a JSON object", file);
    if (!rc && json_opt_str(j, "peft_type", file, &s, e) < 0) rc = -1;
    if (!rc && s && strcmp(s, "LORA"))
        rc = err_set(e, "%s: peft_type \"%s\" is not supported (LORA only)", file, s);
    if (!rc && json_opt_int(j, "r", file, &r, e) < 0) rc = -1;
    if (!rc && (r < 1 || r > 1 << 20)) rc = err_set(e, "%s: \"r\" missing or invalid", file);
    if (!rc && json_opt_num(j, "lora_alpha", file, &alpha, e) < 0) rc = -1;
    if (!rc && json_opt_num(j, "lora_dropout", file, &dropout, e) < 0) rc = -1;
    if (!rc && !(dropout >= 0 && dropout < 1))
        rc = err_set(e, "%s: lora_dropout %g must be in [0, 1)", file, dropout);
    if (!rc && json_opt_bool(j, "use_rslora", file, &a->use_rslora, e) < 0) rc = -1;
    s = NULL;
    if (!rc && json_opt_str(j, "bias", file, &s, e) < 0) rc = -1;
    if (!rc && s && strcmp(s, "none"))
        rc = err_set(e, "%s: bias \"%s\" is not supported (none only)", file, s);
    if (!rc && json_opt_bool(j, "fan_in_fan_out", file, &b, e) < 0) rc = -1;
    if (!rc && b) rc = err_set(e, "%s: fan_in_fan_out adapters are not supported", file);
    b = 0;
    if (!rc && json_opt_bool(j, "use_dora", file, &b, e) < 0) rc = -1;
    if (!rc && b) rc = err_set(e, "%s: DoRA adapters (use_dora) are not supported", file);
    const char *unsupported[] = {"rank_pattern", "alpha_pattern", "modules_to_save"};
    for (int i = 0; i < 3 && !rc; i++)
        if (!is_unset(j, unsupported[i]))
            rc = err_set(e, "%s: \"%s\" is not supported", file, unsupported[i]);
    s = NULL;
    if (!rc && json_opt_str(j, "base_model_name_or_path", file, &s, e) < 0) rc = -1;
    if (!rc && s) snprintf(a->base_model, sizeof a->base_model, "%s", s);
    if (!rc) rc = parse_target_modules(j, file, listed, e);
    json_object_put(j);
    a->rank = (int)r;
    a->alpha = (float)alpha;
    a->dropout = (float)dropout;
    a->scale = a->use_rslora ? a->alpha / sqrtf((float)a->rank) : a->alpha / (float)a->rank;
    return rc;
}

// The key as saved, or with PEFT's adapter name still in it (".lora_A.default.weight").
static const char *find_key(const SafeTensors *st, char *buf, size_t n, int l, LoraTarget t, char ab) {
    peft_key(buf, n, l, t, ab, ".weight");
    if (st_find(st, buf)) return buf;
    peft_key(buf, n, l, t, ab, ".default.weight");
    return st_find(st, buf) ? buf : NULL;
}

// One target's A and B, checked against the model's weight shape.
static int load_pair(LoraAdapter *a, const SafeTensors *st, const Model *m, int l, LoraTarget t,
                     const char *file, int *used, Err *e) {
    char ka[200], kb[200];
    const char *has_a = find_key(st, ka, sizeof ka, l, t, 'A');
    const char *has_b = find_key(st, kb, sizeof kb, l, t, 'B');
    if (!has_a && !has_b) return 0;
    if (!has_a || !has_b)
        return err_set(e, "%s: %s has no matching %s", file, has_a ? ka : kb,
                       has_a ? "lora_B" : "lora_A");
    const Weight *w = &m->layers[l].w[t];
    int64_t sa[2] = {a->rank, w->cols}, sb[2] = {w->rows, a->rank};
    Tensor *A = tensor_new_param(2, sa, 1, lora_target_name(t), e);
    Tensor *B = tensor_new_param(2, sb, 1, lora_target_name(t), e);
    a->A[l * LT_COUNT + t] = A;
    a->B[l * LT_COUNT + t] = B;
    if (!A || !B) return -1;
    if (st_read_f32(st, ka, A->data, 2, sa, e) || st_read_f32(st, kb, B->data, 2, sb, e))
        return -1;
    a->targets |= 1u << t;
    *used += 2;
    return 0;
}

LoraAdapter *adapter_load_peft(const char *dir, const Model *m, Err *e) {
    char cfg_path[1100], st_path[1100];
    path_join(cfg_path, sizeof cfg_path, dir, "adapter_config.json");
    path_join(st_path, sizeof st_path, dir, "adapter_model.safetensors");
    if (!file_exists(st_path)) {
        char bin[1100];
        if (file_exists(path_join(bin, sizeof bin, dir, "adapter_model.bin")))
            err_set(e, "%s: only adapter_model.bin found; save the adapter with safetensors", dir);
        else
            err_set(e, "%s: no adapter_model.safetensors", dir);
        return NULL;
    }
    LoraAdapter *a = xcalloc(1, sizeof *a, "LoRA adapter", e);
    if (!a) return NULL;
    a->n_layers = m->cfg.n_layers;
    size_t slots = (size_t)m->cfg.n_layers * LT_COUNT;
    a->A = xcalloc(slots, sizeof(Tensor *), "LoRA A list", e);
    a->B = xcalloc(slots, sizeof(Tensor *), "LoRA B list", e);
    unsigned listed = 0;
    SafeTensors *st = NULL;
    int rc = (!a->A || !a->B) ? -1 : read_config(a, cfg_path, &listed, e);
    if (!rc && !(st = st_open(st_path, e))) rc = -1;
    int used = 0;
    for (int l = 0; l < m->cfg.n_layers && !rc; l++)
        for (int t = 0; t < LT_COUNT && !rc; t++)
            rc = load_pair(a, st, m, l, (LoraTarget)t, st_path, &used, e);
    if (!rc && used != st_count(st)) {
        // name the first tensor we did not take
        for (int i = 0; i < st_count(st) && !rc; i++) {
            const char *k = st_at(st, i)->name;
            int l = -1, pos = 0, t = -1;
            char mod[64] = "";
            if (sscanf(k, PEFT_PREFIX "%d.%n", &l, &pos) == 1 && l >= 0 && l < m->cfg.n_layers) {
                for (int tt = 0; tt < LT_COUNT; tt++) {
                    snprintf(mod, sizeof mod, "%s.%s.lora_", tt <= LT_O ? "self_attn" : "mlp",
                             lora_target_name((LoraTarget)tt));
                    if (!strncmp(k + pos, mod, strlen(mod))) t = tt;
                }
            }
            if (t < 0 || !a->A[l * LT_COUNT + t])
                rc = err_set(e, "%s: unexpected tensor %s (not a LoRA A/B of a q/k/v/o/gate/up/down "
                                "projection of this %d-layer model)",
                             st_path, k, m->cfg.n_layers);
        }
        if (!rc) rc = err_set(e, "%s: duplicate LoRA tensors", st_path);
    }
    if (!rc && !a->targets) rc = err_set(e, "%s: no LoRA tensors found", st_path);
    if (!rc && listed && (a->targets & ~listed)) {
        char buf[128];
        rc = err_set(e, "%s: holds tensors for %s, which target_modules in %s does not list",
                     st_path, lora_targets_str(a->targets & ~listed, buf, sizeof buf), cfg_path);
    }
    st_close(st);
    if (rc) {
        lora_free(a);
        return NULL;
    }
    return a;
}
