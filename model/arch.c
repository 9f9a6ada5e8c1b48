// Llama-family architecture variants: Llama (with rope_scaling), Mistral (sliding window),
// Qwen2 (q/k/v biases), Phi-3 (fused qkv and gate_up projections), Gemma (GeGLU, RMSNorm
// with 1 + w, embeddings scaled by sqrt(dim)). What config.json and GGUF metadata say about
// them, their rotary frequencies, and the config.json written back.
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/io_internal.h"

static const char *const ARCH_NAMES[] = {"llama", "mistral", "qwen2", "phi3", "gemma"};
static const char *const ARCH_CLASSES[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                           "Qwen2ForCausalLM", "Phi3ForCausalLM",
                                           "GemmaForCausalLM"};
#define N_ARCH ((int)(sizeof ARCH_NAMES / sizeof *ARCH_NAMES))

const char *model_arch_name(ModelArch a) { return a >= 0 && (int)a < N_ARCH ? ARCH_NAMES[a] : "?"; }
const char *model_arch_hf_class(ModelArch a) { return a >= 0 && (int)a < N_ARCH ? ARCH_CLASSES[a] : "?"; }

// Sets the fixed traits of architecture a in c (c->arch, arch_id, biases, norms, ...).
static void arch_traits(ModelConfig *c, ModelArch a) {
    c->arch_id = a;
    snprintf(c->arch, sizeof c->arch, "%s", ARCH_NAMES[a]);
    c->qkv_bias = a == ARCH_QWEN2;
    c->fused_proj = a == ARCH_PHI3;
    c->act = a == ARCH_GEMMA ? ACT_GELU_TANH : ACT_SILU;
    c->norm_offset = a == ARCH_GEMMA ? 1.0f : 0.0f;
    c->embed_scale = 0.0f;  // set by arch_finish once dim is known
}

void arch_finish(ModelConfig *c) {
    c->embed_scale = c->arch_id == ARCH_GEMMA ? sqrtf((float)c->dim) : 0.0f;
}

// A member that must be absent, null or false (a feature we do not implement).
static int cfg_unsupported_bool(json_object *j, const char *key, const char *file, Err *e) {
    int b = 0;
    if (json_opt_bool(j, key, file, &b, e) < 0) return -1;
    return b ? err_set(e, "%s: %s is not supported", file, key) : 0;
}

static int cfg_rope_scaling(json_object *j, const char *file, ModelConfig *c, Err *e) {
    json_object *rs;
    if (!json_object_object_get_ex(j, "rope_scaling", &rs) || json_object_is_type(rs, json_type_null))
        return 0;
    const char *type = NULL;
    if (json_opt_str(rs, "rope_type", file, &type, e) < 0) return -1;
    if (!type && json_opt_str(rs, "type", file, &type, e) < 0) return -1;
    if (!type || !strcmp(type, "default")) return 0;
    double f = 1, lo = 1, hi = 4;
    int64_t orig = 8192;
    if (json_opt_num(rs, "factor", file, &f, e) < 0) return -1;
    if (!strcmp(type, "linear")) {
        c->rope_scaling = ROPE_SCALING_LINEAR;
    } else if (!strcmp(type, "llama3")) {
        c->rope_scaling = ROPE_SCALING_LLAMA3;
        if (json_opt_num(rs, "low_freq_factor", file, &lo, e) < 0 ||
            json_opt_num(rs, "high_freq_factor", file, &hi, e) < 0 ||
            json_opt_int(rs, "original_max_position_embeddings", file, &orig, e) < 0)
            return -1;
        if (!(hi > lo) || orig < 1 || orig > INT32_MAX)
            return err_set(e, "%s: rope_scaling llama3 needs high_freq_factor > low_freq_factor "
                              "and original_max_position_embeddings >= 1",
                           file);
    } else {
        return err_set(e, "%s: rope_scaling type \"%s\" is not supported (default, linear, llama3)",
                       file, type);
    }
    if (!(f > 0)) return err_set(e, "%s: rope_scaling factor must be > 0", file);
    c->rope_factor = (float)f;
    c->rope_low_freq_factor = (float)lo;
    c->rope_high_freq_factor = (float)hi;
    c->rope_orig_max_pos = (int)orig;
    return 0;
}

int arch_config_hf(json_object *j, const char *file, ModelConfig *c, Err *e) {
    const char *mt = NULL, *act = NULL;
    if (json_opt_str(j, "model_type", file, &mt, e) < 0) return -1;
    json_object *archs;
    char cls[96] = "";
    if (json_object_object_get_ex(j, "architectures", &archs) &&
        json_object_is_type(archs, json_type_array) && json_object_array_length(archs) > 0) {
        const char *s = json_object_get_string(json_object_array_get_idx(archs, 0));
        snprintf(cls, sizeof cls, "%s", s ? s : "");
    }
    int a = -1;
    for (int i = 0; i < N_ARCH; i++)
        if ((mt && !strcmp(mt, ARCH_NAMES[i])) || (!mt && !strcmp(cls, ARCH_CLASSES[i]))) a = i;
    if (a < 0 || (cls[0] && strcmp(cls, ARCH_CLASSES[a])))
        return err_set(e,
                       "%s: model_type \"%s\"%s%s is not supported (llama, mistral, qwen2, phi3, "
                       "gemma with their *ForCausalLM classes)",
                       file, mt ? mt : "(missing)", cls[0] ? ", architecture " : "", cls);
    arch_traits(c, (ModelArch)a);
    // activation: Gemma's config names gelu / gelu_pytorch_tanh (HF runs the tanh one)
    if (json_opt_str(j, a == ARCH_GEMMA ? "hidden_activation" : "hidden_act", file, &act, e) < 0) return -1;
    if (a == ARCH_GEMMA) {
        if (act && strcmp(act, "gelu_pytorch_tanh") && strcmp(act, "gelu"))
            return err_set(e, "%s: hidden_activation \"%s\" is not supported (gelu_pytorch_tanh)", file, act);
    } else if (act && strcmp(act, "silu")) {
        return err_set(e, "%s: hidden_act \"%s\" is not supported (silu only)", file, act);
    }
    if (a != ARCH_QWEN2 && cfg_unsupported_bool(j, "attention_bias", file, e)) return -1;
    if (cfg_unsupported_bool(j, "mlp_bias", file, e)) return -1;
    if (a == ARCH_QWEN2 && cfg_unsupported_bool(j, "use_sliding_window", file, e)) return -1;
    if (a == ARCH_MISTRAL || a == ARCH_PHI3) {
        int64_t w = 0;
        if (json_opt_int(j, "sliding_window", file, &w, e) < 0) return -1;
        if (w < 0 || w > INT32_MAX) return err_set(e, "%s: sliding_window out of range", file);
        c->sliding_window = (int)w;
    }
    if (a == ARCH_PHI3) {
        double prf = 1.0;
        if (json_opt_num(j, "partial_rotary_factor", file, &prf, e) < 0) return -1;
        if (prf != 1.0) return err_set(e, "%s: partial_rotary_factor is not supported", file);
    }
    return cfg_rope_scaling(j, file, c, e);
}

void arch_config_to_hf(const ModelConfig *c, json_object *j) {
    json_object *arch = json_object_new_array();
    json_object_array_add(arch, json_object_new_string(model_arch_hf_class(c->arch_id)));
    json_object_object_add(j, "architectures", arch);
    json_object_object_add(j, "model_type", json_object_new_string(model_arch_name(c->arch_id)));
    const char *act = c->act == ACT_GELU_TANH ? "gelu_pytorch_tanh" : "silu";
    json_object_object_add(j, "hidden_act", json_object_new_string(act));
    if (c->arch_id == ARCH_GEMMA) json_object_object_add(j, "hidden_activation", json_object_new_string(act));
    if (c->rope_scaling == ROPE_SCALING_NONE) {
        json_object_object_add(j, "rope_scaling", NULL);
    } else {
        json_object *rs = json_object_new_object();
        int l3 = c->rope_scaling == ROPE_SCALING_LLAMA3;
        json_object_object_add(rs, "rope_type", json_object_new_string(l3 ? "llama3" : "linear"));
        json_object_object_add(rs, "factor", json_new_float(c->rope_factor));
        if (l3) {
            json_object_object_add(rs, "low_freq_factor", json_new_float(c->rope_low_freq_factor));
            json_object_object_add(rs, "high_freq_factor", json_new_float(c->rope_high_freq_factor));
            json_object_object_add(rs, "original_max_position_embeddings", json_object_new_int(c->rope_orig_max_pos));
        }
        json_object_object_add(j, "rope_scaling", rs);
    }
    if (c->arch_id == ARCH_MISTRAL || c->arch_id == ARCH_PHI3)
        json_object_object_add(j, "sliding_window",
                               c->sliding_window > 0 ? json_object_new_int(c->sliding_window) : NULL);
    if (c->arch_id == ARCH_QWEN2) json_object_object_add(j, "use_sliding_window", json_object_new_boolean(0));
}

// ---- GGUF -----------------------------------------------------------------------------------

int arch_config_gguf(const Gguf *g, const char *path, ModelConfig *c, Err *e) {
    const char *arch = gguf_get_str(g, "general.architecture");
    // GGUF names: Mistral files say "llama"
    static const char *const GGUF_ARCHS[] = {"llama", NULL, "qwen2", "phi3", "gemma"};
    int a = -1;
    for (int i = 0; arch && i < N_ARCH; i++)
        if (GGUF_ARCHS[i] && !strcmp(arch, GGUF_ARCHS[i])) a = i;
    if (a < 0)
        return err_set(e, "%s: general.architecture \"%s\" is not supported (llama, qwen2, phi3, gemma)",
                       path, arch ? arch : "(missing)");
    arch_traits(c, (ModelArch)a);
    // q/k rows: llama files are permuted to adjacent pairs; the NEOX-rope architectures not
    c->file_rope = a == ARCH_LLAMA ? ROPE_ADJACENT : ROPE_HALF;
    char key[96];
    uint32_t u;
    snprintf(key, sizeof key, "%s.attention.sliding_window", arch);
    if (a == ARCH_PHI3 && !gguf_get_u32(g, key, &u) && u <= INT32_MAX) c->sliding_window = (int)u;
    return 0;
}

// ---- rotary frequencies --------------------------------------------------------------------

// inv_freq[i] = theta^(-2i/D), then HF's rope scaling: linear divides by factor; llama3
// (_compute_llama3_parameters) divides the low frequencies (wavelength > orig / low) by
// factor, keeps the high ones (wavelength < orig / high) and blends in between.
void arch_inv_freq(const ModelConfig *c, float *out) {
    const int D = c->head_dim;
    for (int i = 0; i < D / 2; i++) {
        double f = pow((double)c->rope_theta, -2.0 * i / D);
        if (c->rope_scaling == ROPE_SCALING_LINEAR) {
            f /= c->rope_factor;
        } else if (c->rope_scaling == ROPE_SCALING_LLAMA3) {
            double factor = c->rope_factor, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
            double old = c->rope_orig_max_pos, wavelen = 2.0 * M_PI / f;
            if (wavelen > old / lo) {
                f /= factor;
            } else if (wavelen >= old / hi) {
                double smooth = (old / wavelen - lo) / (hi - lo);
                f = (1.0 - smooth) * f / factor + smooth * f;
            }
        }
        out[i] = (float)f;
    }
}
