// spm_shim — a tiny extern "C" API over libsentencepiece, used only by data/tokenizer.c
// (its prototypes are declared there). No exception escapes; the only state is the handle.
#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

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

}  // extern "C"
