#ifndef REMORA_SUPPORT_H
#define REMORA_SUPPORT_H
#include <stdint.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <elf.h>
#include <sys/mman.h>
#include <unistd.h>

/* Stats counters: each worker is the single writer of its own counters, the
 * admin thread only reads them. A relaxed load+store (plain mov on x86, no
 * locked instruction) is enough for a single writer and is race-free. */
static inline void remora_counter_add(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}
static inline void remora_counter_sub(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) - v, __ATOMIC_RELAXED);
}
static inline uint64_t remora_counter_load(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void remora_counter_store(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

/* A word several workers update (the shared token buckets of local rate limits): a relaxed load,
 * then a compare-and-swap (lock cmpxchg) that succeeds only if nobody changed the word meanwhile;
 * on failure *expected holds the current value. Relaxed: the word publishes no other data. */
static inline uint64_t remora_shared_load(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline int remora_shared_cas(uint64_t *p, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

/* Counts shared by every worker (circuit breakers, outlier detection's failures in a row): many
 * writers, so a locked read-modify-write; relaxed, since nothing else is ordered by them. */
static inline int64_t remora_atomic_add(int64_t *p, int64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
static inline int64_t remora_atomic_load(const int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void remora_atomic_store(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

#if UINTPTR_MAX > 0xffffffffu
typedef Elf64_Phdr remora_phdr;
typedef Elf64_Dyn remora_dyn;
#else
typedef Elf32_Phdr remora_phdr;
typedef Elf32_Dyn remora_dyn;
#endif

/* The executable's program headers (from the auxiliary vector) and its load bias. */
static inline size_t remora_exe_phdrs(const remora_phdr **out, uintptr_t *bias) {
    const remora_phdr *ph = (const remora_phdr *)getauxval(AT_PHDR);
    size_t n = (size_t)getauxval(AT_PHNUM);
    if (!ph || !n) return 0;
    *bias = 0;
    for (size_t i = 0; i < n; i++) if (ph[i].p_type == PT_PHDR) *bias = (uintptr_t)ph - ph[i].p_vaddr;
    *out = ph;
    return n;
}

static inline int remora_traced(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 1;
    char line[256];
    int traced = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "TracerPid:", 10) == 0) { traced = atoi(line + 10) != 0; break; }
    }
    fclose(f);
    return traced;
}

/* Start-up code (argument and YAML parsing, validation, compiling the routes, the Swift runtime's
 * first look at every type) is run once, but the kernel maps the executable's text in 64 KiB
 * windows around each page touched (fault-around), so it stays in the process's resident set
 * for its whole life: 4.5 of 6 MiB of text after start-up. Once the proxy serves, it tells the
 * kernel it no longer needs that mapping of its read-only executable segment (MADV_DONTNEED):
 * the pages stay in the page cache (clean, shared, reclaimable) and the code that runs again is
 * mapped again on its first use, a minor fault per window. Only whole pages of the segment that
 * is executable and not writable; never when the executable has text relocations (its text was
 * written to) or a debugger is attached (its breakpoints are written into the text). Returns the
 * bytes released from the mapping (0 when skipped). */
static inline size_t remora_release_startup_text(void) {
    const remora_phdr *ph;
    uintptr_t bias, page = (uintptr_t)sysconf(_SC_PAGESIZE);
    size_t n = remora_exe_phdrs(&ph, &bias), released = 0;
    if (n == 0 || remora_traced()) return 0;
    for (size_t i = 0; i < n; i++) {
        if (ph[i].p_type != PT_DYNAMIC) continue;
        for (const remora_dyn *d = (const remora_dyn *)(bias + ph[i].p_vaddr); d->d_tag != DT_NULL; d++) {
            if (d->d_tag == DT_TEXTREL || (d->d_tag == DT_FLAGS && (d->d_un.d_val & DF_TEXTREL))) return 0;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (ph[i].p_type != PT_LOAD || !(ph[i].p_flags & PF_X) || (ph[i].p_flags & PF_W)) continue;
        uintptr_t start = bias + ph[i].p_vaddr, end = start + ph[i].p_filesz;
        uintptr_t lo = (start + page - 1) & ~(page - 1), hi = end & ~(page - 1);
        if (hi > lo && madvise((void *)lo, hi - lo, MADV_DONTNEED) == 0) released += hi - lo;
    }
    return released;
}

/* Freed memory goes back to malloc's free lists, not to the kernel: after a burst of connections
 * that all park at once (each gives back its parser and write buffers), the freed chunks lie between
 * live ones and stay resident. Every few seconds the main thread asks how much the heaps hold free
 * (mallinfo2: a walk over each arena's bins under its lock); when it is at least `threshold` bytes,
 * malloc_trim(0) gives the whole free pages back (MADV_DONTNEED inside each heap, not only at its
 * top). Workers allocate nothing per request, so the arena locks this takes are not contended on
 * the request path. Returns the free bytes seen when it trimmed, else 0. */
#include <malloc.h>
static inline size_t remora_trim_heap(size_t threshold) {
    struct mallinfo2 mi = mallinfo2();
    if (mi.fordblks < threshold) return 0;
    malloc_trim(0);
    return mi.fordblks;
}

/* Histograms (RemoraCore/Stats.swift): per worker, single writer, plain words like the counters.
 * One histogram is REMORA_HIST_STRIDE words: a count per bucket of Envoy's default bounds (not
 * cumulative: word i counts values in (bound[i-1], bound[i]]), the count above the last bound,
 * then the sum of the values in microseconds. */
#define REMORA_HIST_BUCKETS 19
#define REMORA_HIST_STRIDE (REMORA_HIST_BUCKETS + 2)
/* Envoy's default buckets (0.5 ms ... 1 h), in microseconds. */
static const uint64_t remora_hist_bounds_us[REMORA_HIST_BUCKETS] = {
    500, 1000, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
    10000000, 30000000, 60000000, 300000000, 600000000, 1800000000, 3600000000ull
};
static inline void remora_histogram_record(uint64_t *h, uint64_t us) {
    unsigned i = 0;
    while (i < REMORA_HIST_BUCKETS && us > remora_hist_bounds_us[i]) i++;
    remora_counter_add(h + i, 1);
    remora_counter_add(h + REMORA_HIST_BUCKETS + 1, us);
}

/* A labelled series table (Istio's request metrics): `n` entries of 1 key word + one histogram,
 * keyed by a non-zero 64-bit label set; n - 1 is a power of two. The worker inserts (single writer): the key is published
 * with a release store after the entry's words, which are zero from the start, so a reader that
 * sees the key (acquire) sees a valid entry. The last entry collects every label set that found
 * no room (key UINT64_MAX): the table never grows and never allocates. Returns the histogram. */
#define REMORA_SERIES_ENTRY (1 + REMORA_HIST_STRIDE)
static inline uint64_t *remora_series_find(uint64_t *table, unsigned n, uint64_t key) {
    unsigned slots = n - 1;   /* a power of two */
    unsigned i = (unsigned)((key * 0x9E3779B97F4A7C15ull) >> 40) & (slots - 1);
    for (unsigned probe = 0; probe < slots; probe++) {
        uint64_t *e = table + (uint64_t)i * REMORA_SERIES_ENTRY;
        uint64_t k = __atomic_load_n(e, __ATOMIC_RELAXED);
        if (k == key) return e + 1;
        if (k == 0) { __atomic_store_n(e, key, __ATOMIC_RELEASE); return e + 1; }
        i = (i + 1) & (slots - 1);
    }
    uint64_t *e = table + (uint64_t)slots * REMORA_SERIES_ENTRY;
    if (__atomic_load_n(e, __ATOMIC_RELAXED) == 0) __atomic_store_n(e, UINT64_MAX, __ATOMIC_RELEASE);
    return e + 1;
}
static inline uint64_t remora_series_key(const uint64_t *table, unsigned i) {
    return __atomic_load_n(table + (uint64_t)i * REMORA_SERIES_ENTRY, __ATOMIC_ACQUIRE);
}
/* Access log ring (RemoraProxy/Observe/AccessLog.swift): one producer (a worker), one consumer (the
 * log writer thread). The producer copies whole lines in and publishes the new tail (release); the
 * consumer reads what is published and gives the space back by publishing the new head. A line that
 * does not fit is refused (the worker drops and counts it): the worker never waits. */
#include <string.h>
typedef struct {
    uint64_t head;          /* consumer: bytes taken */
    char pad0[56];
    uint64_t tail;          /* producer: bytes published */
    uint64_t signalled;     /* producer asked the writer to come (cleared by the writer) */
    char pad1[48];
    uint64_t capacity;
    uint8_t *bytes;
} remora_log_ring;

static inline int remora_log_ring_push(remora_log_ring *r, const uint8_t *p, uint64_t n) {
    uint64_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    uint64_t tail = r->tail;
    if (tail - head + n > r->capacity) return 0;
    uint64_t off = tail % r->capacity, first = r->capacity - off;
    if (first >= n) memcpy(r->bytes + off, p, n);
    else { memcpy(r->bytes + off, p, first); memcpy(r->bytes, p + first, n - first); }
    __atomic_store_n(&r->tail, tail + n, __ATOMIC_RELEASE);
    return 1;
}
/* Bytes published and not yet taken (producer side: for the flush threshold). */
static inline uint64_t remora_log_ring_used(remora_log_ring *r) {
    return r->tail - __atomic_load_n(&r->head, __ATOMIC_RELAXED);
}
/* Consumer: up to two spans of what is published now (whole lines). */
static inline uint64_t remora_log_ring_peek(remora_log_ring *r, const uint8_t **a, uint64_t *na,
                                            const uint8_t **b, uint64_t *nb) {
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    uint64_t head = r->head, n = tail - head;
    uint64_t off = head % r->capacity, first = r->capacity - off;
    *a = r->bytes + off; *na = n < first ? n : first;
    *b = r->bytes; *nb = n - *na;
    return n;
}
static inline void remora_log_ring_consume(remora_log_ring *r, uint64_t n) {
    __atomic_store_n(&r->head, r->head + n, __ATOMIC_RELEASE);
}
/* Access log flags (a ring's signalled word, reopen, stop): named apart from the int64 remora_atomic_* of the breakers. */
static inline uint64_t remora_flag_exchange(uint64_t *p, uint64_t v) {
    return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}
static inline uint64_t remora_flag_load(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void remora_flag_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
/* Lowercase hex of the low `n` (1 ... 8) nibbles of v into dst, most significant first, without a
 * loop per digit (request ids and traceparent: Observe/Tracing.swift). */
static inline void remora_hex8(uint8_t *dst, uint32_t v, int n) {
    uint64_t x = v;
    x = ((x & 0xFFFF0000ull) << 16) | (x & 0xFFFFull);
    x = ((x & 0x0000FF000000FF00ull) << 8) | (x & 0x000000FF000000FFull);
    x = ((x & 0x00F000F000F000F0ull) << 4) | (x & 0x000F000F000F000Full);
    uint64_t letters = ((x + 0x0606060606060606ull) >> 4) & 0x0101010101010101ull;
    x += 0x3030303030303030ull + letters * 0x27;
    x = __builtin_bswap64(x);
    memcpy(dst, (const uint8_t *)&x + (8 - n), (size_t)n);
}
#if defined(__SSE2__)
#include <emmintrin.h>
/* 16 bytes (hi's most significant first, then lo's) as 32 lowercase hex digits, with SSE2: nibbles
 * split and interleaved, then '0' + n (+ 39 above 9), about 20 instructions (trace and request ids). */
static inline void remora_hex_x2(uint8_t *dst, __m128i v) {
    const __m128i mask = _mm_set1_epi8(0x0F), nine = _mm_set1_epi8(9);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask), lo = _mm_and_si128(v, mask);
    __m128i a = _mm_unpacklo_epi8(hi, lo), b = _mm_unpackhi_epi8(hi, lo);
    a = _mm_add_epi8(a, _mm_add_epi8(_mm_set1_epi8('0'), _mm_and_si128(_mm_cmpgt_epi8(a, nine), _mm_set1_epi8(39))));
    b = _mm_add_epi8(b, _mm_add_epi8(_mm_set1_epi8('0'), _mm_and_si128(_mm_cmpgt_epi8(b, nine), _mm_set1_epi8(39))));
    _mm_storeu_si128((__m128i *)dst, a);
    _mm_storeu_si128((__m128i *)(dst + 16), b);
}
static inline void remora_hex32(uint8_t *dst, uint64_t hi, uint64_t lo) {
    remora_hex_x2(dst, _mm_set_epi64x((long long)__builtin_bswap64(lo), (long long)__builtin_bswap64(hi)));
}
/* The 16 hex digits (either case) at p as a number in *out: 1, or 0 when any byte is not one. All 16
 * at once with SSE2: each byte in '0'...'9' or, with bit 5 set, in 'a'...'f' (signed compares: bytes
 * >= 0x80 fail both); its value; the nibbles of each pair joined in a 16-bit lane, packed to 8 bytes,
 * most significant first (traceparent ids: TraceContext.parseTraceparent). */
static inline int remora_hex16_read(const uint8_t *p, uint64_t *out) {
    __m128i x = _mm_loadu_si128((const __m128i *)p), lower = _mm_or_si128(x, _mm_set1_epi8(0x20));
    __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(x, _mm_set1_epi8('0' - 1)), _mm_cmplt_epi8(x, _mm_set1_epi8('9' + 1)));
    __m128i letter = _mm_and_si128(_mm_cmpgt_epi8(lower, _mm_set1_epi8('a' - 1)), _mm_cmplt_epi8(lower, _mm_set1_epi8('f' + 1)));
    if (_mm_movemask_epi8(_mm_or_si128(digit, letter)) != 0xFFFF) return 0;
    __m128i v = _mm_or_si128(_mm_and_si128(digit, _mm_sub_epi8(x, _mm_set1_epi8('0'))),
                             _mm_andnot_si128(digit, _mm_sub_epi8(lower, _mm_set1_epi8('a' - 10))));
    __m128i pairs = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(v, _mm_set1_epi16(0x00FF)), 4), _mm_srli_epi16(v, 8));
    *out = __builtin_bswap64((uint64_t)_mm_cvtsi128_si64(_mm_packus_epi16(pairs, pairs)));
    return 1;
}
static inline void remora_hex16(uint8_t *dst, uint64_t v) {
    const __m128i mask = _mm_set1_epi8(0x0F), nine = _mm_set1_epi8(9);
    __m128i x = _mm_cvtsi64_si128((long long)__builtin_bswap64(v));
    __m128i a = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(x, 4), mask), _mm_and_si128(x, mask));
    a = _mm_add_epi8(a, _mm_add_epi8(_mm_set1_epi8('0'), _mm_and_si128(_mm_cmpgt_epi8(a, nine), _mm_set1_epi8(39))));
    _mm_storeu_si128((__m128i *)dst, a);
}
#else
static inline void remora_hex16(uint8_t *dst, uint64_t v) {
    remora_hex8(dst, (uint32_t)(v >> 32), 8);
    remora_hex8(dst + 8, (uint32_t)v, 8);
}
static inline void remora_hex32(uint8_t *dst, uint64_t hi, uint64_t lo) {
    remora_hex16(dst, hi);
    remora_hex16(dst + 16, lo);
}
#endif
/* A UUID's 128 bits as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (36 bytes at dst; version and variant
 * bits are the caller's). */
static inline void remora_uuid36(uint8_t *dst, uint64_t hi, uint64_t lo) {
    uint8_t d[32];
    remora_hex32(d, hi, lo);
    memcpy(dst, d, 8); dst[8] = '-';
    memcpy(dst + 9, d + 8, 4); dst[13] = '-';
    memcpy(dst + 14, d + 12, 4); dst[18] = '-';
    memcpy(dst + 19, d + 16, 4); dst[23] = '-';
    memcpy(dst + 24, d + 20, 12);
}
/* Lowers the calling thread's priority (Linux: nice applies per thread): the access log writer. */
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
static inline void remora_nice_this_thread(int n) {
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), n);
}
#endif
