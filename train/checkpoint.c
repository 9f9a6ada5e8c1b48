// Training checkpoints: everything a resumed run needs to take exactly the steps the
// uninterrupted run would have taken — the adapter, the AdamW moments and step count, the
// dropout RNG, the data position (the epoch's order is rebuilt from (seed, epoch)), the
// settings, and where the metrics log stood.
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "export/export.h"
#include "train/train.h"

#define CKPT_PREFIX "checkpoint-"
#define CKPT_PARAMS_MAX 4096

uint64_t dataset_hash(const Dataset *ds) {
    uint64_t h = 1469598103934665603ULL;  // FNV-1a 64
    const uint64_t P = 1099511628211ULL;
    for (int i = 0; i < ds->n; i++) {
        const Example *x = &ds->ex[i];
        h = (h ^ (uint64_t)(uint32_t)x->n) * P;
        for (int k = 0; k < x->n; k++) {
            h = (h ^ (uint64_t)(uint32_t)x->ids[k]) * P;
            h = (h ^ (uint64_t)x->mask[k]) * P;
        }
    }
    return h;
}

// ---- files of one directory -----------------------------------------------------------------

// Removes dir and the files in it (checkpoint directories hold no subdirectories).
static int remove_flat_dir(const char *dir, Err *e) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : err_set(e, "%s: cannot open: %s", dir, strerror(errno));
    int rc = 0;
    for (struct dirent *de; (de = readdir(d));) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char p[1400];
        if (unlink(path_join(p, sizeof p, dir, de->d_name)) && !rc)
            rc = err_set(e, "%s: cannot remove: %s", p, strerror(errno));
    }
    closedir(d);
    if (!rc && rmdir(dir)) rc = err_set(e, "%s: cannot remove: %s", dir, strerror(errno));
    return rc;
}

static json_object *json_exact_double(double v) {
    char buf[40];
    snprintf(buf, sizeof buf, "%.17g", v);
    return json_object_new_double_s(v, buf);
}

static json_object *json_u64_hex(uint64_t v) {
    char buf[24];
    snprintf(buf, sizeof buf, "0x%016" PRIx64, v);
    return json_object_new_string(buf);
}

static int write_state(const char *path, const TrainState *s, Err *e) {
    json_object *j = json_object_new_object();
    json_object_object_add(j, "step", json_object_new_int64(s->step));
    json_object_object_add(j, "total_steps", json_object_new_int64(s->total_steps));
    json_object_object_add(j, "adam_t", json_object_new_int64(s->adam_t));
    json_object_object_add(j, "epoch", json_object_new_int(s->epoch));
    json_object_object_add(j, "pos", json_object_new_int(s->pos));
    json_object_object_add(j, "dropout_rng", json_u64_hex(s->dropout_rng));
    json_object_object_add(j, "val_before", json_exact_double(s->val_before));
    json_object_object_add(j, "window_loss", json_exact_double(s->window_loss));
    json_object_object_add(j, "window_tokens", json_object_new_int64(s->window_tokens));
    json_object_object_add(j, "metrics_bytes", json_object_new_int64(s->metrics_bytes));
    json_object_object_add(j, "n_train", json_object_new_int(s->n_train));
    json_object_object_add(j, "data_hash", json_u64_hex(s->data_hash));
    int rc = json_write_file(path, j, e);
    json_object_put(j);
    return rc;
}

static int opt_hex(json_object *j, const char *key, const char *file, uint64_t *out, Err *e) {
    const char *s = NULL;
    if (json_opt_str(j, key, file, &s, e) < 0) return -1;
    char *end = NULL;
    if (!s || strncmp(s, "0x", 2) || (*out = strtoull(s + 2, &end, 16), !end || *end))
        return err_set(e, "%s: \"%s\" missing or not a hex string", file, key);
    return 0;
}

// An integer member that must be present.
static int req_int(json_object *j, const char *key, const char *file, int64_t *out, Err *e) {
    int rc = json_opt_int(j, key, file, out, e);
    if (rc == 0) return err_set(e, "%s: missing \"%s\"", file, key);
    return rc < 0 ? -1 : 0;
}

static int read_state(const char *path, TrainState *s, Err *e) {
    json_object *j = json_read_file(path, e);
    if (!j) return -1;
    int64_t v[8];
    const char *ikeys[8] = {"step", "total_steps", "adam_t", "epoch", "pos", "window_tokens", "metrics_bytes", "n_train"};
    int rc = json_object_is_type(j, json_type_object) ? 0 : err_set(e, "%s: not a JSON object", path);
    for (int i = 0; i < 8 && !rc; i++) rc = req_int(j, ikeys[i], path, &v[i], e);
    memset(s, 0, sizeof *s);
    if (!rc && json_opt_num(j, "val_before", path, &s->val_before, e) != 1)
        rc = err_set(e, "%s: \"val_before\" missing or not a number", path);
    if (!rc && json_opt_num(j, "window_loss", path, &s->window_loss, e) != 1)
        rc = err_set(e, "%s: \"window_loss\" missing or not a number", path);
    if (!rc) rc = opt_hex(j, "dropout_rng", path, &s->dropout_rng, e);
    if (!rc) rc = opt_hex(j, "data_hash", path, &s->data_hash, e);
    json_object_put(j);
    if (rc) return -1;
    s->step = v[0];
    s->total_steps = v[1];
    s->adam_t = v[2];
    s->epoch = (int)v[3];
    s->pos = (int)v[4];
    s->window_tokens = (long)v[5];
    s->metrics_bytes = (long)v[6];
    s->n_train = (int)v[7];
    if (s->step < 0 || s->adam_t < 0 || s->epoch < 0 || s->pos < 0 || s->metrics_bytes < 0)
        return err_set(e, "%s: negative step, epoch or position", path);
    return 0;
}

// AdamW moments as tensors "param.N.exp_avg" / "param.N.exp_avg_sq" (N in lora_params order).
static int write_optimizer(const char *path, const AdamW *opt, Err *e) {
    StWriter *w = stw_new(e);
    if (!w) return -1;
    int rc = stw_add_metadata(w, "format", "lora.c-adamw", e);
    for (int i = 0; i < opt->n_params && !rc; i++) {
        const Tensor *p = opt->params[i];
        char name[64];
        snprintf(name, sizeof name, "param.%d.exp_avg", i);
        rc = stw_add_f32(w, name, ST_F32, p->ndim, p->shape, opt->m[i], e);
        snprintf(name, sizeof name, "param.%d.exp_avg_sq", i);
        if (!rc) rc = stw_add_f32(w, name, ST_F32, p->ndim, p->shape, opt->v[i], e);
    }
    if (!rc) rc = stw_save(w, path, e);
    stw_free(w);
    return rc;
}

static int read_optimizer(const char *path, AdamW *opt, Err *e) {
    SafeTensors *st = st_open(path, e);
    if (!st) return -1;
    int rc = 0;
    if (st_count(st) != 2 * opt->n_params)
        rc = err_set(e, "%s: %d tensors, expected %d (2 per LoRA parameter): the checkpoint was made with other "
                        "LoRA settings",
                     path, st_count(st), 2 * opt->n_params);
    for (int i = 0; i < opt->n_params && !rc; i++) {
        const Tensor *p = opt->params[i];
        char name[64];
        snprintf(name, sizeof name, "param.%d.exp_avg", i);
        rc = st_read_f32(st, name, opt->m[i], p->ndim, p->shape, e);
        snprintf(name, sizeof name, "param.%d.exp_avg_sq", i);
        if (!rc) rc = st_read_f32(st, name, opt->v[i], p->ndim, p->shape, e);
    }
    st_close(st);
    return rc;
}

// ---- saving ---------------------------------------------------------------------------------

int checkpoint_save(const char *out, const TrainConfig *c, const TrainState *s, const LoraAdapter *a,
                    const Model *m, const AdamW *opt, Err *e) {
    char dir[1100], tmp[1200], old[1200], p[1300];
    snprintf(dir, sizeof dir, "%s/" CKPT_PREFIX "%lld", out, (long long)s->step);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    snprintf(old, sizeof old, "%s.old", dir);
    if (remove_flat_dir(tmp, e) || make_dirs(tmp, e)) return -1;
    if (adapter_save_peft(a, m, tmp, e) ||
        write_optimizer(path_join(p, sizeof p, tmp, "optimizer.safetensors"), opt, e) ||
        write_state(path_join(p, sizeof p, tmp, "trainer_state.json"), s, e) ||
        train_config_save(c, path_join(p, sizeof p, tmp, "train_config.json"), e))
        return -1;
    // an earlier checkpoint of the same step (a resumed run passing it again) is replaced
    if (is_directory(dir) && (remove_flat_dir(old, e) || rename(dir, old)))
        return err_set(e, "%s: cannot replace the earlier checkpoint: %s", dir, strerror(errno));
    if (rename(tmp, dir)) return err_set(e, "%s: cannot rename to %s: %s", tmp, dir, strerror(errno));
    return remove_flat_dir(old, e);
}

// ---- finding and loading ------------------------------------------------------------------------

// "checkpoint-123" -> 123; -1 for any other name (including "checkpoint-123.tmp").
static long long ckpt_step(const char *name) {
    size_t k = strlen(CKPT_PREFIX);
    if (strncmp(name, CKPT_PREFIX, k) || !name[k]) return -1;
    char *end;
    long long v = strtoll(name + k, &end, 10);
    return (*end || v < 0) ? -1 : v;
}

int checkpoint_find(const char *path, char *dir, size_t n, Err *e) {
    char p[1300];
    if (!is_directory(path)) return err_set(e, "%s: no such checkpoint directory", path);
    if (file_exists(path_join(p, sizeof p, path, "trainer_state.json"))) {
        snprintf(dir, n, "%s", path);
        return 0;
    }
    DIR *d = opendir(path);
    if (!d) return err_set(e, "%s: cannot open: %s", path, strerror(errno));
    long long best = -1;
    for (struct dirent *de; (de = readdir(d));) {
        long long s = ckpt_step(de->d_name);
        char sub[1300];
        if (s > best && file_exists(path_join(p, sizeof p, path_join(sub, sizeof sub, path, de->d_name),
                                              "trainer_state.json")))
            best = s;
    }
    closedir(d);
    if (best < 0)
        return err_set(e, "%s: no checkpoint found (neither trainer_state.json nor checkpoint-STEP/ directories; "
                          "train with --save-every N to write them)",
                       path);
    snprintf(dir, n, "%s/" CKPT_PREFIX "%lld", path, best);
    return 0;
}

int checkpoint_load(const char *dir, const Model *m, TrainState *s, LoraAdapter *a, AdamW *opt, Err *e) {
    char p[1300];
    if (read_state(path_join(p, sizeof p, dir, "trainer_state.json"), s, e)) return -1;
    LoraAdapter *saved = adapter_load_peft(dir, m, e);
    if (!saved) return -1;
    int rc = 0;
    if (saved->targets != a->targets || saved->rank != a->rank || saved->alpha != a->alpha ||
        saved->use_rslora != a->use_rslora)
        rc = err_set(e, "%s: the adapter (rank %d, alpha %g, rslora %d) differs from this run's LoRA settings "
                        "(rank %d, alpha %g, rslora %d)",
                     dir, saved->rank, saved->alpha, saved->use_rslora, a->rank, a->alpha, a->use_rslora);
    for (int i = 0; i < a->n_layers * LT_COUNT && !rc; i++) {
        if (!a->A[i]) continue;
        memcpy(a->A[i]->data, saved->A[i]->data, (size_t)a->A[i]->n * sizeof(float));
        memcpy(a->B[i]->data, saved->B[i]->data, (size_t)a->B[i]->n * sizeof(float));
    }
    lora_free(saved);
    if (!rc) rc = read_optimizer(path_join(p, sizeof p, dir, "optimizer.safetensors"), opt, e);
    if (!rc) opt->t = s->adam_t;
    return rc;
}

int train_config_load_checkpoint(TrainConfig *c, const char *path, Err *e) {
    char dir[1100], p[1300];
    if (checkpoint_find(path, dir, sizeof dir, e)) return -1;
    return train_config_load_json(c, path_join(p, sizeof p, dir, "train_config.json"), e);
}
