/*
 * spm_shim.cc - extern "C" wrapper over libsentencepiece (see spm_shim.h).
 * Invariant: no C++ exception escapes; errors become negative NI_E* codes
 * (values duplicated from engine/util/util.h to keep this file free of C headers
 * that are not C++-clean).
 */
#include "spm_shim.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace {
constexpr int kENOMEM = -1;   /* NI_ENOMEM */
constexpr int kEFORMAT = -3;  /* NI_EFORMAT */
constexpr int kEINVAL = -5;   /* NI_EINVAL */
constexpr int kERANGE = -6;   /* NI_ERANGE */
}  // namespace

struct tok_spm_shim {
    sentencepiece::SentencePieceProcessor sp;
};

extern "C" int tok_spm_shim_load(const void *proto, size_t n, tok_spm_shim **out, char *err, size_t errlen) {
    if (!out || (!proto && n)) return kEINVAL;
    *out = nullptr;
    tok_spm_shim *s = nullptr;
    try {
        s = new tok_spm_shim;
        auto st = s->sp.LoadFromSerializedProto(std::string_view(static_cast<const char *>(proto), n));
        if (!st.ok()) {
            if (err && errlen) std::snprintf(err, errlen, "sentencepiece: %s", st.ToString().c_str());
            delete s;
            return kEFORMAT;
        }
        *out = s;
        return 0;
    } catch (const std::bad_alloc &) {
        delete s;
        if (err && errlen) std::snprintf(err, errlen, "sentencepiece: out of memory");
        return kENOMEM;
    } catch (const std::exception &e) {
        delete s;
        if (err && errlen) std::snprintf(err, errlen, "sentencepiece: %s", e.what());
        return kEFORMAT;
    } catch (...) {
        delete s;
        if (err && errlen) std::snprintf(err, errlen, "sentencepiece: unknown exception");
        return kEFORMAT;
    }
}

extern "C" int tok_spm_shim_encode(const tok_spm_shim *s, const char *text, size_t n, int32_t **ids,
                                   size_t *n_ids) {
    if (!s || (!text && n) || !ids || !n_ids) return kEINVAL;
    *ids = nullptr;
    *n_ids = 0;
    try {
        std::vector<int> v;
        auto st = s->sp.Encode(std::string_view(text ? text : "", n), &v);
        if (!st.ok()) return kERANGE;
        if (v.empty()) return 0;
        auto *p = static_cast<int32_t *>(std::malloc(v.size() * sizeof(int32_t)));
        if (!p) return kENOMEM;
        for (size_t i = 0; i < v.size(); i++) p[i] = static_cast<int32_t>(v[i]);
        *ids = p;
        *n_ids = v.size();
        return 0;
    } catch (const std::bad_alloc &) {
        return kENOMEM;
    } catch (...) {
        return kERANGE;
    }
}

extern "C" int tok_spm_shim_size(const tok_spm_shim *s) {
    if (!s) return 0;
    try {
        return s->sp.GetPieceSize();
    } catch (...) {
        return 0;
    }
}

extern "C" void tok_spm_shim_free(tok_spm_shim *s) {
    try {
        delete s;
    } catch (...) {
    }
}
