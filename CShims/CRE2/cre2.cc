// See include/cre2.h. The one translation unit that includes RE2's C++ header.
#include "cre2.h"

#include <re2/re2.h>

#include <cstring>
#include <string>

namespace {
re2::RE2 *cast(cre2_regex *re) { return reinterpret_cast<re2::RE2 *>(re); }
const re2::RE2 *cast(const cre2_regex *re) { return reinterpret_cast<const re2::RE2 *>(re); }

void copyMessage(const std::string &message, char *err, size_t errlen) {
    if (errlen == 0) return;
    size_t n = message.size() < errlen - 1 ? message.size() : errlen - 1;
    std::memcpy(err, message.data(), n);
    err[n] = 0;
}
}  // namespace

extern "C" cre2_regex *cre2_compile(const char *pattern, size_t len, int ignore_case, char *err, size_t errlen) {
    re2::RE2::Options options;
    options.set_log_errors(false);
    options.set_case_sensitive(ignore_case == 0);
    auto *re = new re2::RE2(re2::StringPiece(pattern, len), options);
    if (re->ok()) return reinterpret_cast<cre2_regex *>(re);
    copyMessage(re->error(), err, errlen);
    delete re;
    return nullptr;
}

extern "C" void cre2_free(cre2_regex *re) { delete cast(re); }

extern "C" int cre2_groups(const cre2_regex *re) { return cast(re)->NumberOfCapturingGroups(); }

extern "C" int cre2_full_match(const cre2_regex *re, const char *text, size_t len) {
    return cast(re)->Match(re2::StringPiece(text, len), 0, len, re2::RE2::ANCHOR_BOTH, nullptr, 0) ? 1 : 0;
}

extern "C" int cre2_search(const cre2_regex *re, const char *text, size_t len, size_t pos, long *spans, int ngroups) {
    re2::StringPiece groups[10];
    if (ngroups > 10) ngroups = 10;
    if (!cast(re)->Match(re2::StringPiece(text, len), pos, len, re2::RE2::UNANCHORED, groups, ngroups)) return 0;
    for (int i = 0; i < ngroups; i++) {
        bool set = groups[i].data() != nullptr;
        spans[2 * i] = set ? static_cast<long>(groups[i].data() - text) : -1;
        spans[2 * i + 1] = set ? spans[2 * i] + static_cast<long>(groups[i].size()) : -1;
    }
    return 1;
}

extern "C" int cre2_range(const cre2_regex *re, char *min, size_t *minlen, char *max, size_t *maxlen, size_t cap) {
    std::string lo, hi;
    if (!cast(re)->PossibleMatchRange(&lo, &hi, static_cast<int>(cap))) return 0;
    if (lo.size() > cap || hi.size() > cap) return 0;
    std::memcpy(min, lo.data(), lo.size());
    std::memcpy(max, hi.data(), hi.size());
    *minlen = lo.size();
    *maxlen = hi.size();
    return 1;
}

extern "C" int cre2_check_rewrite(const cre2_regex *re, const char *rewrite, size_t len, char *err, size_t errlen) {
    std::string message;
    if (cast(re)->CheckRewriteString(re2::StringPiece(rewrite, len), &message)) return 1;
    copyMessage(message, err, errlen);
    return 0;
}
