// A minimal C interface to RE2 (Debian libre2-dev), for RemoraRouting only. Every function is
// safe to call from several threads at once on the same compiled regex (RE2 objects are
// immutable after compilation; RE2 guards its lazily built DFA cache itself).
#ifndef REMORA_CRE2_H
#define REMORA_CRE2_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cre2_regex cre2_regex;

/// Compiles `pattern` (`len` bytes of UTF-8, RE2 syntax). On failure returns NULL and writes RE2's
/// message, NUL-terminated and truncated to `errlen` bytes, into `err`.
cre2_regex *cre2_compile(const char *pattern, size_t len, int ignore_case, char *err, size_t errlen);

void cre2_free(cre2_regex *re);

/// Capturing groups, not counting the whole match: 2 for "(a)(b)".
int cre2_groups(const cre2_regex *re);

/// 1 when the whole of `text` matches (anchored at both ends), else 0.
int cre2_full_match(const cre2_regex *re, const char *text, size_t len);

/// Unanchored search in text[pos...]; on a match stores, for groups 0 ..< ngroups (0 = the whole
/// match), the start and end offsets in `spans` (2 per group, -1 for a group that did not take
/// part) and returns 1; else 0. ngroups is at most 10.
int cre2_search(const cre2_regex *re, const char *text, size_t len, size_t pos, long *spans, int ngroups);

/// Bounds of every full match: any matching string s has min <= s <= max (byte order). Writes at
/// most `cap` bytes to each and their lengths to *minlen / *maxlen; returns 0 when RE2 cannot
/// bound the matches (e.g. the pattern starts with ".*").
int cre2_range(const cre2_regex *re, char *min, size_t *minlen, char *max, size_t *maxlen, size_t cap);

/// 1 when `rewrite` is a valid substitution for `re` ("\0".."\9" referring to existing groups,
/// "\\" for a backslash); else 0 with RE2's message in `err` as for cre2_compile.
int cre2_check_rewrite(const cre2_regex *re, const char *rewrite, size_t len, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
