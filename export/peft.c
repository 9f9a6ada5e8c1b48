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

// The PEFT modules of m's architecture, in file order, and the first LoraTarget of each.
static const char *const MODULES[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
static const LoraTarget MODULE_T[] = {LT_Q, LT_K, LT_V, LT_O, LT_GATE, LT_UP, LT_DOWN};
static const char *const FUSED_MODULES[] = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"};
static const LoraTarget FUSED_T[] = {LT_Q, LT_O, LT_GATE, LT_DOWN};
static int modules_of(int fused, const char *const **names, const LoraTarget **first) {
    *names = fused ? FUSED_MODULES : MODULES;
    *first = fused ? FUSED_T : MODULE_T;
    return fused ? 4 : 7;
}

// "base_model.model.model.layers.3.self_attn.q_proj.lora_A" + suffix
static void peft_key(char *buf, size_t n, int layer, const char *module, char ab, const char *suffix) {
    snprintf(buf, n, PEFT_PREFIX "%d.%s.%s.lora_%c%s", layer,
             strchr("qkvo", module[0]) ? "self_attn" : "mlp", module, ab, suffix);
}

static json_object *adapter_config(const LoraAdapter *a) {
    json_object *j = json_object_new_object(), *tm = json_object_new_array();
    const char *const *mods;
    const LoraTarget *first;
    int nm = modules_of(a->fused_B != NULL, &mods, &first);
    for (int i = 0; i < nm; i++)
        if (a->targets & (1u << first[i])) json_object_array_add(tm, json_object_new_string(mods[i]));
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
    const char *const *mods;
    const LoraTarget *first;
    int nm = modules_of(a->fused_B != NULL, &mods, &first);
    for (int l = 0; l < a->n_layers && !rc; l++)
        for (int i = 0; i < nm && !rc; i++) {
            const Tensor *A = lora_module_tensor(a, l, mods[i], 'A'), *B = lora_module_tensor(a, l, mods[i], 'B');
            if (!A) continue;
            char key[200];
            peft_key(key, sizeof key, l, mods[i], 'A', ".weight");
            rc = stw_add_f32(w, key, ST_F32, A->ndim, A->shape, A->data, e);
            peft_key(key, sizeof key, l, mods[i], 'B', ".weight");
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
        unsigned found = 0;
        for (int t = 0; t < LT_COUNT && s; t++)
            if (!strcmp(s, lora_target_name((LoraTarget)t))) found = 1u << t;
        if (s && !strcmp(s, "qkv_proj")) found = (1u << LT_Q) | (1u << LT_K) | (1u << LT_V);
        if (s && !strcmp(s, "gate_up_proj")) found = (1u << LT_GATE) | (1u << LT_UP);
        if (!found)
            return err_set(e, "%s: target module \"%s\" is not supported (q_proj, k_proj, v_proj, "
                              "o_proj, gate_proj, up_proj, down_proj; Phi-3: qkv_proj, gate_up_proj)",
                           file, s ? s : "?");
        *mask |= found;
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
static const char *find_key(const SafeTensors *st, char *buf, size_t n, int l, const char *module, char ab) {
    peft_key(buf, n, l, module, ab, ".weight");
    if (st_find(st, buf)) return buf;
    peft_key(buf, n, l, module, ab, ".default.weight");
    return st_find(st, buf) ? buf : NULL;
}

// One module's A and B (first target t), checked against the model's weight shapes.
static int load_pair(LoraAdapter *a, const SafeTensors *st, const Model *m, int l, const char *module,
                     LoraTarget t, const char *file, int *used, Err *e) {
    char ka[200], kb[200];
    const char *has_a = find_key(st, ka, sizeof ka, l, module, 'A');
    const char *has_b = find_key(st, kb, sizeof kb, l, module, 'B');
    if (!has_a && !has_b) return 0;
    if (!has_a || !has_b)
        return err_set(e, "%s: %s has no matching %s", file, has_a ? ka : kb,
                       has_a ? "lora_B" : "lora_A");
    if (lora_alloc_target(a, m, l, t, e)) return -1;
    Tensor *A = lora_module_tensor(a, l, module, 'A'), *B = lora_module_tensor(a, l, module, 'B');
    if (st_read_f32(st, ka, A->data, 2, A->shape, e) || st_read_f32(st, kb, B->data, 2, B->shape, e))
        return -1;
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
    LoraAdapter *a = lora_alloc(m, 1, e);
    if (!a) return NULL;
    a->base_model[0] = 0;
    unsigned listed = 0;
    SafeTensors *st = NULL;
    int rc = read_config(a, cfg_path, &listed, e);
    if (!rc && !(st = st_open(st_path, e))) rc = -1;
    int used = 0;
    const char *const *mods;
    const LoraTarget *first;
    int nm = modules_of(m->cfg.fused_proj, &mods, &first);
    for (int l = 0; l < m->cfg.n_layers && !rc; l++)
        for (int i = 0; i < nm && !rc; i++)
            rc = load_pair(a, st, m, l, mods[i], first[i], st_path, &used, e);
    if (!rc && used != st_count(st)) {
        // name the first tensor we did not take
        for (int i = 0; i < st_count(st) && !rc; i++) {
            const char *k = st_at(st, i)->name;
            int l = -1, pos = 0, found = 0;
            char mod[64] = "";
            if (sscanf(k, PEFT_PREFIX "%d.%n", &l, &pos) == 1 && l >= 0 && l < m->cfg.n_layers) {
                for (int mi = 0; mi < nm; mi++) {
                    snprintf(mod, sizeof mod, "%s.%s.lora_", strchr("qkvo", mods[mi][0]) ? "self_attn" : "mlp",
                             mods[mi]);
                    if (!strncmp(k + pos, mod, strlen(mod)) && lora_module_tensor(a, l, mods[mi], 'A')) found = 1;
                }
            }
            if (!found)
                rc = err_set(e, "%s: unexpected tensor %s (not a LoRA A/B of a %s projection of this "
                                "%d-layer %s model)",
                             st_path, k, m->cfg.fused_proj ? "qkv/o/gate_up/down" : "q/k/v/o/gate/up/down",
                             m->cfg.n_layers, m->cfg.arch);
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
