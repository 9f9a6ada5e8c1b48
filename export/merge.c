// Merged models: W' = W + scale · B A written as a HF directory (safetensors in f32/bf16/f16)
// or as a GGUF file llama.cpp loads, with the tokenizer carried along.
#include <cblas.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "export/export.h"
#include "quant/quant.h"

// Weight w as a new fp32 (rows, cols) buffer, whatever its storage type.
static float *weight_copy_f32(const Weight *w, Err *e) {
    float *buf = xmalloc_aligned((size_t)(w->rows * w->cols) * sizeof(float), "merged weight", e);
    if (!buf) return NULL;
    for (int64_t r = 0; r < w->rows; r++) weight_row_f32(w, r, buf + r * w->cols);
    return buf;
}

int lora_merge(Model *m, const LoraAdapter *a, Err *e) {
    if (a->n_layers != m->cfg.n_layers)
        return err_set(e, "adapter has %d layers but the model %d", a->n_layers, m->cfg.n_layers);
    for (int l = 0; l < a->n_layers; l++)
        for (int t = 0; t < LT_COUNT; t++) {
            const Tensor *A = a->A[l * LT_COUNT + t], *B = a->B[l * LT_COUNT + t];
            if (!A) continue;
            Weight *w = &m->layers[l].w[t];
            int64_t r = A->shape[0];
            if (A->shape[1] != w->cols || B->shape[0] != w->rows || B->shape[1] != r)
                return err_set(e, "adapter %s of layer %d has A (%lld, %lld), B (%lld, %lld); the weight is "
                                  "(%lld, %lld)",
                               lora_target_name((LoraTarget)t), l, (long long)A->shape[0],
                               (long long)A->shape[1], (long long)B->shape[0], (long long)B->shape[1],
                               (long long)w->rows, (long long)w->cols);
            float *W = weight_copy_f32(w, e);
            if (!W) return -1;
            // W (out,in) += scale · B (out,r) @ A (r,in)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)w->rows, (int)w->cols, (int)r,
                        a->scale, B->data, (int)r, A->data, (int)w->cols, 1.0f, W, (int)w->cols);
            Weight merged = {WT_F32, w->rows, w->cols, W, 1, w->name};
            weight_free(w);
            *w = merged;
        }
    return 0;
}

// ---- HF directory -------------------------------------------------------------------------

static const char *torch_dtype_name(StDtype d) {
    return d == ST_BF16 ? "bfloat16" : d == ST_F16 ? "float16" : "float32";
}

// Re-encodes every tensor of the safetensors file at path as dtype (in place, atomically).
static int reencode_safetensors(const char *path, StDtype dtype, Err *e) {
    SafeTensors *st = st_open(path, e);
    if (!st) return -1;
    StWriter *w = stw_new(e);
    int rc = w ? stw_add_metadata(w, "format", "pt", e) : -1;
    float *buf = NULL;
    for (int i = 0; i < st_count(st) && !rc; i++) {
        const StTensor *t = st_at(st, i);
        free(buf);
        if (!(buf = xmalloc((size_t)t->n * sizeof(float), "tensor conversion buffer", e))) rc = -1;
        if (!rc) rc = st_read_f32(st, t->name, buf, t->ndim, t->shape, e);
        if (!rc) rc = stw_add_f32(w, t->name, dtype, t->ndim, t->shape, buf, e);
    }
    free(buf);
    if (!rc) rc = stw_save(w, path, e);
    stw_free(w);
    st_close(st);
    return rc;
}

int merged_save_hf(const Model *m, StDtype dtype, const char *src_config, const char *dir, Err *e) {
    if (dtype != ST_F32 && dtype != ST_BF16 && dtype != ST_F16)
        return err_set(e, "merged model dtype must be f32, bf16 or f16");
    if (model_save_hf(m, dir, e)) return -1;
    char path[1100];
    path_join(path, sizeof path, dir, "model.safetensors");
    if (dtype != ST_F32 && reencode_safetensors(path, dtype, e)) return -1;
    // config.json: the source's keys, overridden by ours, with the dtype written
    path_join(path, sizeof path, dir, "config.json");
    json_object *ours = json_read_file(path, e), *cfg = NULL;
    if (!ours) return -1;
    if (src_config && file_exists(src_config)) {
        cfg = json_read_file(src_config, e);
        if (!cfg) {
            json_object_put(ours);
            return -1;
        }
        if (!json_object_is_type(cfg, json_type_object)) {
            json_object_put(cfg);
            cfg = NULL;
        }
    }
    if (cfg) {
        json_object_object_foreach(ours, key, val) json_object_object_add(cfg, key, json_object_get(val));
        json_object_put(ours);
    } else {
        cfg = ours;
    }
    json_object_object_add(cfg, "torch_dtype", json_object_new_string(torch_dtype_name(dtype)));
    json_object_object_del(cfg, "quantization_config");  // the merged weights are plain floats
    int rc = json_write_file(path, cfg, e);
    json_object_put(cfg);
    return rc;
}

int copy_tokenizer_files(const char *src_dir, const char *dir, Err *e) {
    static const char *const FILES[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "generation_config.json"};
    int copied = 0;
    for (size_t i = 0; i < sizeof FILES / sizeof FILES[0]; i++) {
        char src[1100], dst[1100];
        path_join(src, sizeof src, src_dir, FILES[i]);
        if (!file_exists(src)) continue;
        size_t len;
        char *data = read_file(src, &len, e);
        if (!data) return -1;
        int rc = write_file_atomic(path_join(dst, sizeof dst, dir, FILES[i]), data, len, e);
        free(data);
        if (rc) return -1;
        copied++;
    }
    return copied;
}

// ---- GGUF ---------------------------------------------------------------------------------

// Tokenizer metadata copied from GGUF file g (at path): the keys llama.cpp reads, by type.
static int copy_gguf_vocab(GgufWriter *w, const Gguf *g, const char *path, Err *e) {
    static const char *const STR_KEYS[] = {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template"};
    static const char *const ID_KEYS[] = {"tokenizer.ggml.bos_token_id",     "tokenizer.ggml.eos_token_id",
                                          "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.seperator_token_id",
                                          "tokenizer.ggml.padding_token_id", "tokenizer.ggml.eot_token_id",
                                          "tokenizer.ggml.eom_token_id",     "tokenizer.ggml.mask_token_id"};
    static const char *const ARR_KEYS[] = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                           "tokenizer.ggml.token_type", "tokenizer.ggml.merges"};
    int rc = 0;
    if (!gguf_get_str(g, "tokenizer.ggml.model"))
        rc = err_set(e, "%s: no tokenizer.ggml.model: this GGUF holds no vocabulary", path);
    for (size_t i = 0; i < sizeof STR_KEYS / sizeof STR_KEYS[0] && !rc; i++) {
        const char *s = gguf_get_str(g, STR_KEYS[i]);
        if (s) rc = ggw_set_str(w, STR_KEYS[i], s, e);
    }
    for (size_t i = 0; i < sizeof ID_KEYS / sizeof ID_KEYS[0] && !rc; i++) {
        uint32_t v;
        if (!gguf_get_u32(g, ID_KEYS[i], &v)) rc = ggw_set_u32(w, ID_KEYS[i], v, e);
    }
    static const char *const BOOL_KEYS[] = {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                                            "tokenizer.ggml.add_space_prefix"};
    for (size_t i = 0; i < sizeof BOOL_KEYS / sizeof BOOL_KEYS[0] && !rc; i++) {
        int b;
        if (!gguf_get_bool(g, BOOL_KEYS[i], &b)) rc = ggw_set_bool(w, BOOL_KEYS[i], b, e);
    }
    for (size_t i = 0; i < sizeof ARR_KEYS / sizeof ARR_KEYS[0] && !rc; i++) {
        GgufValueType et;
        uint64_t n;
        if (gguf_get_arr(g, ARR_KEYS[i], &et, &n)) continue;
        if (et == GGUF_STRING) {
            const char **v = xmalloc((n ? n : 1) * sizeof *v, "vocabulary", e);
            if (!v) { rc = -1; break; }
            for (uint64_t k = 0; k < n; k++) v[k] = gguf_arr_str(g, ARR_KEYS[i], k);
            rc = ggw_set_arr_str(w, ARR_KEYS[i], v, n, e);
            free(v);
        } else if (et == GGUF_F32 || et == GGUF_I32) {
            void *v = xmalloc((n ? n : 1) * 4, "vocabulary", e);
            if (!v) { rc = -1; break; }
            for (uint64_t k = 0; k < n; k++) {
                double x = gguf_arr_num(g, ARR_KEYS[i], k);
                if (et == GGUF_F32) ((float *)v)[k] = (float)x;
                else ((int32_t *)v)[k] = (int32_t)x;
            }
            rc = et == GGUF_F32 ? ggw_set_arr_f32(w, ARR_KEYS[i], v, n, e) : ggw_set_arr_i32(w, ARR_KEYS[i], v, n, e);
            free(v);
        } else {
            rc = err_set(e, "%s: %s has an element type (%d) that cannot be copied", path, ARR_KEYS[i], (int)et);
        }
    }
    return rc;
}

// Tokenizer metadata from a SentencePiece model, as convert_hf_to_gguf.py writes it for a
// llama: the pieces padded to the model's vocabulary with unused "[PAD<id>]" tokens.
static int spm_gguf_vocab(GgufWriter *w, const char *path, int vocab_size, Err *e) {
    SpmVocab *v = spm_vocab_load(path, e);
    if (!v) return -1;
    if (v->n > vocab_size) {
        int n = v->n;
        spm_vocab_free(v);
        return err_set(e, "%s: %d pieces but the model's vocabulary is %d: wrong tokenizer?", path, n, vocab_size);
    }
    int n = vocab_size, rc = 0;
    const char **pieces = xcalloc((size_t)n, sizeof *pieces, "vocabulary", e);
    char *pads = xcalloc((size_t)(n - v->n) + 1, 24, "vocabulary padding", e);
    float *scores = xcalloc((size_t)n, sizeof *scores, "vocabulary", e);
    int32_t *types = xcalloc((size_t)n, sizeof *types, "vocabulary", e);
    if (!pieces || !pads || !scores || !types) rc = -1;
    for (int i = 0; i < n && !rc; i++) {
        if (i < v->n) {
            pieces[i] = v->pieces[i];
            scores[i] = v->scores[i];
            types[i] = v->types[i];
        } else {
            char *p = pads + (size_t)(i - v->n) * 24;
            snprintf(p, 24, "[PAD%d]", i);
            pieces[i] = p;
            scores[i] = -1000.0f;
            types[i] = 5;  // unused
        }
    }
    if (!rc) rc = ggw_set_str(w, "tokenizer.ggml.model", "llama", e);
    if (!rc) rc = ggw_set_arr_str(w, "tokenizer.ggml.tokens", pieces, (uint64_t)n, e);
    if (!rc) rc = ggw_set_arr_f32(w, "tokenizer.ggml.scores", scores, (uint64_t)n, e);
    if (!rc) rc = ggw_set_arr_i32(w, "tokenizer.ggml.token_type", types, (uint64_t)n, e);
    if (!rc && v->bos >= 0) rc = ggw_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos, e);
    if (!rc && v->eos >= 0) rc = ggw_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos, e);
    if (!rc && v->unk >= 0) rc = ggw_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk, e);
    free(pieces);
    free(pads);
    free(scores);
    free(types);
    spm_vocab_free(v);
    return rc;
}

// One model tensor (layer, which: a LoraTarget or GS_*) of model m as fp32 (HF layout).
static int model_tensor(void *user, int layer, int which, int64_t rows, int64_t cols, float *out, Err *e) {
    const Model *m = user;
    const Weight *w = which == GS_EMB ? &m->emb : which == GS_HEAD ? &m->lm_head : NULL;
    const Tensor *t = which == GS_FINAL_NORM  ? m->final_norm
                      : which == GS_ATTN_NORM ? m->layers[layer].attn_norm
                      : which == GS_FFN_NORM  ? m->layers[layer].ffn_norm
                                              : NULL;
    if (!w && !t) w = &m->layers[layer].w[which];
    if (t) {
        if (t->n != rows * cols) return err_set(e, "norm of %lld values, expected %lld", (long long)t->n, (long long)(rows * cols));
        memcpy(out, t->data, (size_t)t->n * sizeof(float));
        return 0;
    }
    if (w->rows != rows || w->cols != cols)
        return err_set(e, "weight %s is (%lld, %lld), expected (%lld, %lld)", w->name ? w->name : "?",
                       (long long)w->rows, (long long)w->cols, (long long)rows, (long long)cols);
    for (int64_t r = 0; r < rows; r++) weight_row_f32(w, r, out + r * cols);
    return 0;
}

static int is_quant(GgmlType t) { return t != GGML_F32 && t != GGML_F16 && t != GGML_BF16; }

GgmlType gguf_matrix_type(GgmlType type, int which, int tied, int64_t cols) {
    if (!is_quant(type)) return type;
    if (type != GGML_Q8_0 && (which == GS_HEAD || (tied && which == GS_EMB))) type = GGML_Q8_0;
    return cols % 32 ? GGML_F16 : type;
}

// general.file_type as llama.cpp numbers it (LLAMA_FTYPE_ALL_F32, MOSTLY_F16, ...)
static uint32_t file_type(GgmlType t) {
    switch (t) {
        case GGML_F16: return 1;
        case GGML_Q4_0: return 2;
        case GGML_Q4_1: return 3;
        case GGML_Q8_0: return 7;
        case GGML_Q5_0: return 8;
        case GGML_Q5_1: return 9;
        case GGML_BF16: return 32;
        default: return 0;
    }
}

static int gguf_model_meta(GgufWriter *w, const ModelConfig *c, GgmlType type, const char *name, Err *e) {
    int rc = ggw_set_str(w, "general.architecture", "llama", e);
    if (!rc) rc = ggw_set_str(w, "general.type", "model", e);
    if (!rc) rc = ggw_set_str(w, "general.name", name, e);
    if (!rc) rc = ggw_set_u32(w, "general.file_type", file_type(type), e);
    if (!rc && is_quant(type)) rc = ggw_set_u32(w, "general.quantization_version", 2, e);
    if (!rc) rc = ggw_set_u32(w, "llama.context_length", (uint32_t)c->max_seq_len, e);
    if (!rc) rc = ggw_set_u32(w, "llama.embedding_length", (uint32_t)c->dim, e);
    if (!rc) rc = ggw_set_u32(w, "llama.block_count", (uint32_t)c->n_layers, e);
    if (!rc) rc = ggw_set_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden_dim, e);
    if (!rc) rc = ggw_set_u32(w, "llama.rope.dimension_count", (uint32_t)c->head_dim, e);
    if (!rc) rc = ggw_set_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads, e);
    if (!rc) rc = ggw_set_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads, e);
    if (!rc && c->head_dim * c->n_heads != c->dim) {
        rc = ggw_set_u32(w, "llama.attention.key_length", (uint32_t)c->head_dim, e);
        if (!rc) rc = ggw_set_u32(w, "llama.attention.value_length", (uint32_t)c->head_dim, e);
    }
    if (!rc) rc = ggw_set_f32(w, "llama.attention.layer_norm_rms_epsilon", c->norm_eps, e);
    if (!rc) rc = ggw_set_f32(w, "llama.rope.freq_base", c->rope_theta, e);
    if (!rc) rc = ggw_set_u32(w, "llama.vocab_size", (uint32_t)c->vocab_size, e);
    return rc;
}

// Tensor (layer, which) of (rows, cols) from the source into w as name: norms F32, matrices
// in their gguf_matrix_type, q/k rows (rope_heads > 0) permuted to the adjacent convention.
static int add_tensor(GgufWriter *w, GgufModelWriter *o, const ModelConfig *c, int layer, int which,
                      const char *name, int64_t rows, int64_t cols, int rope_heads, Err *e) {
    float *buf = xmalloc_aligned((size_t)(rows * cols) * sizeof(float), name, e);
    if (!buf) return -1;
    int norm = which >= GS_ATTN_NORM;
    GgmlType type = norm ? GGML_F32 : gguf_matrix_type(o->type, which, c->tied_embeddings, cols);
    int64_t ne[2] = {cols, rows};
    int rc = o->tensor(o->user, layer, which, rows, cols, buf, e);
    if (!rc && rope_heads) rc = rope_permute_rows(buf, rope_heads, c->head_dim, cols, ROPE_ADJACENT, e);
    if (!rc) rc = ggw_add_f32(w, name, type, norm ? 1 : 2, ne, buf, e);
    free(buf);
    if (!rc && !norm && type == GGML_F16 && is_quant(o->type)) o->n_f16++;
    return rc;
}

int model_save_gguf(const ModelConfig *c, GgufModelWriter *o, const char *path, Err *e) {
    o->n_f16 = 0;
    if (strcmp(c->arch, "llama"))
        return err_set(e, "GGUF export supports llama models only (this one is \"%s\")", c->arch);
    GgmlType T = o->type;
    if (T != GGML_F32 && T != GGML_F16 && T != GGML_BF16 && !ggq_quantizable(T))
        return err_set(e, "GGUF model type must be f32, f16, bf16, q8_0, q4_0, q4_1, q5_0 or q5_1");
    GgufWriter *w = ggw_new(e);
    if (!w) return -1;
    int rc = gguf_model_meta(w, c, T, o->name ? o->name : "lora.c model", e);
    if (!rc && !o->vocab) rc = ggw_set_str(w, "tokenizer.ggml.model", "no_vocab", e);
    if (!rc && o->vocab) {  // a GGUF file, or else a SentencePiece model
        Err not_gguf;
        Gguf *g = gguf_open(o->vocab, &not_gguf);
        rc = g ? copy_gguf_vocab(w, g, o->vocab, e) : spm_gguf_vocab(w, o->vocab, c->vocab_size, e);
        gguf_close(g);
    }
    const int64_t V = c->vocab_size, C = c->dim;
    if (!rc) rc = add_tensor(w, o, c, -1, GS_EMB, "token_embd.weight", V, C, 0, e);
    for (int l = 0; l < c->n_layers && !rc; l++) {
        char name[96];
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        rc = add_tensor(w, o, c, l, GS_ATTN_NORM, name, 1, C, 0, e);
        for (int t = 0; t < LT_COUNT && !rc; t++) {
            int heads = t == LT_Q ? c->n_heads : t == LT_K ? c->n_kv_heads : 0;
            int64_t rows, cols;
            model_weight_dims(c, (LoraTarget)t, &rows, &cols);
            rc = add_tensor(w, o, c, l, t, gguf_weight_name(name, sizeof name, l, (LoraTarget)t), rows, cols, heads, e);
        }
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        if (!rc) rc = add_tensor(w, o, c, l, GS_FFN_NORM, name, 1, C, 0, e);
    }
    if (!rc) rc = add_tensor(w, o, c, -1, GS_FINAL_NORM, "output_norm.weight", 1, C, 0, e);
    if (!rc && !c->tied_embeddings) rc = add_tensor(w, o, c, -1, GS_HEAD, "output.weight", V, C, 0, e);
    if (!rc) rc = ggw_save(w, path, e);
    ggw_free(w);
    return rc;
}


int model_write_gguf(const Model *m, GgufModelWriter *o, const char *path, Err *e) {
    o->tensor = model_tensor;
    o->user = (void *)m;
    return model_save_gguf(&m->cfg, o, path, e);
}

int merged_save_gguf(const Model *m, GgmlType type, const char *vocab, const char *path, Err *e) {
    GgufModelWriter o = {.type = type, .vocab = vocab, .name = "lora.c merged model"};
    return model_write_gguf(m, &o, path, e);
}

const char *gguf_vocab_source(const char *model_path, const char *tok, char *buf, size_t n) {
    if (tok) return tok;
    int dir = is_directory(model_path);
    size_t len = strlen(model_path);
    if (!dir && len > 5 && !strcmp(model_path + len - 5, ".gguf")) {
        Err ignore;
        Gguf *g = gguf_open(model_path, &ignore);
        int has = g && gguf_get_str(g, "tokenizer.ggml.model") != NULL;
        gguf_close(g);
        if (has) return model_path;
    }
    // the model's directory: the path itself, or what dirname(3) gives for a file
    const char *slash = strrchr(model_path, '/');
    char parent[1024];
    if (dir) snprintf(parent, sizeof parent, "%s", model_path);
    else if (!slash) snprintf(parent, sizeof parent, ".");
    else snprintf(parent, sizeof parent, "%.*s", slash == model_path ? 1 : (int)(slash - model_path), model_path);
    path_join(buf, n, parent, "tokenizer.model");
    return file_exists(buf) ? buf : NULL;
}
