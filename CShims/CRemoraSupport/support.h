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
#endif
