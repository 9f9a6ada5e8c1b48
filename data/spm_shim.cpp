// spm_shim — a tiny extern "C" API over libsentencepiece, used by data/tokenizer.c (its
// prototypes are declared there), plus spm_vocab_load (declared in data/data.h) for GGUF
// export. No exception escapes; the only state is the handle.
#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

extern "C" {
#include "data/data.h"
}

namespace {

void set_err(char *err, size_t n, const char *msg) {
    if (err && n) std::snprintf(err, n, "%s", msg);
}

const sentencepiece::SentencePieceProcessor *sp_of(const void *h) {
    return static_cast<const sentencepiece::SentencePieceProcessor *>(h);
}

// Runs f; any exception becomes an error message and the value `fail`.
template <typename T, typename F>
T guarded(char *err, size_t errn, T fail, F &&f) {
    try {
        return f();
    } catch (const std::exception &ex) {
        set_err(err, errn, ex.what());
    } catch (...) {
        set_err(err, errn, "unknown C++ exception");
    }
    return fail;
}

}  // namespace

extern "C" {

// Loads a serialized ModelProto (the bytes of a .model file). NULL + err on failure.
void *spm_shim_load(const char *data, size_t n, char *err, size_t errn) {
    return guarded(err, errn, static_cast<void *>(nullptr), [&]() -> void * {
        auto *sp = new sentencepiece::SentencePieceProcessor();
        auto st = sp->LoadFromSerializedProto(std::string(data, n));
        if (st.ok()) return sp;
        set_err(err, errn, st.ToString().c_str());
        delete sp;
        return nullptr;
    });
}

void spm_shim_free(void *h) {
    guarded(nullptr, 0, 0, [&]() {
        delete static_cast<sentencepiece::SentencePieceProcessor *>(h);
        return 0;
    });
}

// text (len bytes) -> *ids (malloc'd, never NULL on success); returns the count or -1.
int spm_shim_encode(const void *h, const char *text, size_t len, int **ids, char *err, size_t errn) {
    *ids = nullptr;
    return guarded(err, errn, -1, [&]() {
        std::vector<int> v;
        auto st = sp_of(h)->Encode(std::string(text, len), &v);
        if (!st.ok()) {
            set_err(err, errn, st.ToString().c_str());
            return -1;
        }
        int *out = static_cast<int *>(std::malloc((v.size() + 1) * sizeof(int)));
        if (!out) {
            set_err(err, errn, "out of memory");
            return -1;
        }
        if (!v.empty()) std::memcpy(out, v.data(), v.size() * sizeof(int));
        *ids = out;
        return static_cast<int>(v.size());
    });
}

// ids -> malloc'd NUL-terminated text (control pieces are invisible), NULL + err on failure.
// The caller checks that every id is in range.
char *spm_shim_decode(const void *h, const int *ids, int n, char *err, size_t errn) {
    return guarded(err, errn, static_cast<char *>(nullptr), [&]() -> char * {
        std::string s;
        auto st = sp_of(h)->Decode(std::vector<int>(ids, ids + n), &s);
        if (!st.ok()) {
            set_err(err, errn, st.ToString().c_str());
            return nullptr;
        }
        char *out = static_cast<char *>(std::malloc(s.size() + 1));
        if (!out) {
            set_err(err, errn, "out of memory");
            return nullptr;
        }
        std::memcpy(out, s.data(), s.size());
        out[s.size()] = '\0';
        return out;
    });
}

int spm_shim_piece_size(const void *h) {
    return guarded(nullptr, 0, 0, [&]() { return sp_of(h)->GetPieceSize(); });
}
int spm_shim_bos(const void *h) {
    return guarded(nullptr, 0, -1, [&]() { return sp_of(h)->bos_id(); });
}
int spm_shim_eos(const void *h) {
    return guarded(nullptr, 0, -1, [&]() { return sp_of(h)->eos_id(); });
}
int spm_shim_unk(const void *h) {
    return guarded(nullptr, 0, -1, [&]() { return sp_of(h)->unk_id(); });
}

// The piece string of id (valid while the model is loaded), NULL when out of range.
const char *spm_shim_piece(const void *h, int id) {
    return guarded(nullptr, 0, static_cast<const char *>(nullptr), [&]() -> const char * {
        if (id < 0 || id >= sp_of(h)->GetPieceSize()) return nullptr;
        return sp_of(h)->IdToPiece(id).c_str();
    });
}

// Kind of a piece: 0 normal, 1 control (<s>, </s>), 2 byte (<0xHH>), 3 unknown, 4 unused,
// -1 out of range.
int spm_shim_kind(const void *h, int id) {
    return guarded(nullptr, 0, -1, [&]() {
        const auto *sp = sp_of(h);
        if (id < 0 || id >= sp->GetPieceSize()) return -1;
        if (sp->IsControl(id)) return 1;
        if (sp->IsByte(id)) return 2;
        if (sp->IsUnknown(id)) return 3;
        if (sp->IsUnused(id)) return 4;
        return 0;
    });
}

// ---- SentencePiece vocabulary for GGUF export (declared in data/data.h) ------------------------

void spm_vocab_free(SpmVocab *v) {
    if (!v) return;
    for (int i = 0; v->pieces && i < v->n; i++) std::free(v->pieces[i]);
    std::free(v->pieces);
    std::free(v->scores);
    std::free(v->types);
    std::free(v);
}

SpmVocab *spm_vocab_load(const char *path, Err *e) {
    size_t len = 0;
    char *data = read_file(path, &len, e);
    if (!data) return nullptr;
    char msg[256] = "";
    void *h = spm_shim_load(data, len, msg, sizeof msg);
    std::free(data);
    if (!h) {
        err_set(e, "%s: not a SentencePiece model: %s", path, msg);
        return nullptr;
    }
    SpmVocab *v = static_cast<SpmVocab *>(std::calloc(1, sizeof(SpmVocab)));
    int ok = v != nullptr;
    if (ok) {
        v->n = spm_shim_piece_size(h);
        v->pieces = static_cast<char **>(std::calloc(v->n > 0 ? v->n : 1, sizeof(char *)));
        v->scores = static_cast<float *>(std::calloc(v->n > 0 ? v->n : 1, sizeof(float)));
        v->types = static_cast<int32_t *>(std::calloc(v->n > 0 ? v->n : 1, sizeof(int32_t)));
        ok = v->pieces && v->scores && v->types;
        v->bos = spm_shim_bos(h);
        v->eos = spm_shim_eos(h);
        v->unk = spm_shim_unk(h);
    }
    // kind (0 normal, 1 control, 2 byte, 3 unknown, 4 unused) -> llama.cpp token type
    static const int32_t type_of_kind[5] = {1, 3, 6, 2, 5};
    for (int i = 0; ok && i < v->n; i++) {
        const char *p = spm_shim_piece(h, i);
        int kind = spm_shim_kind(h, i);
        v->pieces[i] = p ? strdup(p) : nullptr;
        v->scores[i] = guarded(nullptr, 0, 0.0f, [&]() { return sp_of(h)->GetScore(i); });
        v->types[i] = kind >= 0 && kind < 5 ? type_of_kind[kind] : 1;
        ok = v->pieces[i] != nullptr;
    }
    spm_shim_free(h);
    if (!ok) {
        spm_vocab_free(v);
        err_set(e, "%s: out of memory reading the vocabulary", path);
        return nullptr;
    }
    return v;
}

}  // extern "C"
