#ifndef REMORA_SUPPORT_H
#define REMORA_SUPPORT_H
#include <stdint.h>
#include <pthread.h>
#include <stdlib.h>

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
#endif
