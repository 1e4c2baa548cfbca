#include "h2mem.h"
#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__)
#define REMORA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define REMORA_ASAN 1
#endif
#endif

#ifndef REMORA_ASAN
// Classes 32 B ... 16 KiB (powers of two); larger blocks go straight to malloc. Every block has a
// 16-byte header (keeps the 16-byte alignment malloc gives) holding its class, LARGE for malloc'd ones.
#define MIN_SHIFT 5
#define CLASSES 10
#define HEADER 16
#define LARGE 0xFF
#define REMORA_H2MEM_KEEP_BYTES (512 * 1024)

typedef struct block { struct block *next; } block;
typedef struct { block *head[CLASSES]; uint32_t kept[CLASSES]; } lists;

static __thread lists tls;

static inline unsigned class_of(size_t n) {
    if (n <= (1u << MIN_SHIFT)) return 0;
    unsigned c = (unsigned)(64 - __builtin_clzll((unsigned long long)(n - 1))) - MIN_SHIFT;
    return c < CLASSES ? c : LARGE;
}

static void *h2_malloc(size_t size, void *user) {
    (void)user;
    unsigned c = class_of(size);
    unsigned char *p;
    if (c != LARGE && tls.head[c]) {
        block *b = tls.head[c];
        tls.head[c] = b->next;
        tls.kept[c]--;
        p = (unsigned char *)b - HEADER;
    } else {
        p = malloc(HEADER + (c == LARGE ? size : ((size_t)1 << (c + MIN_SHIFT))));
        if (!p) return NULL;
        p[0] = (unsigned char)c;
    }
    return p + HEADER;
}

static void h2_free(void *ptr, void *user) {
    (void)user;
    if (!ptr) return;
    unsigned char *p = (unsigned char *)ptr - HEADER;
    unsigned c = p[0];
    if (c == LARGE || ((size_t)tls.kept[c] << (c + MIN_SHIFT)) >= REMORA_H2MEM_KEEP_BYTES) { free(p); return; }
    block *b = ptr;
    b->next = tls.head[c];
    tls.head[c] = b;
    tls.kept[c]++;
}

static void *h2_calloc(size_t n, size_t size, void *user) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = h2_malloc(n * size, user);
    if (p) memset(p, 0, n * size);
    return p;
}

static void *h2_realloc(void *ptr, size_t size, void *user) {
    if (!ptr) return h2_malloc(size, user);
    unsigned c = ((unsigned char *)ptr - HEADER)[0];
    if (c != LARGE) {
        size_t have = (size_t)1 << (c + MIN_SHIFT);
        if (size <= have) return ptr;
        void *q = h2_malloc(size, user);
        if (!q) return NULL;
        memcpy(q, ptr, have);
        h2_free(ptr, user);
        return q;
    }
    unsigned char *p = realloc((unsigned char *)ptr - HEADER, HEADER + size);
    return p ? p + HEADER : NULL;   // stays LARGE: the header byte moved with the block
}

#endif

#ifdef REMORA_ASAN
// AddressSanitizer builds (`make asan`, the fuzz targets): every block straight from malloc, so that a
// use after free or an overflow inside nghttp2's blocks is reported instead of hidden by a free list.
static void *asan_malloc(size_t size, void *user) { (void)user; return malloc(size); }
static void asan_free(void *ptr, void *user) { (void)user; free(ptr); }
static void *asan_calloc(size_t n, size_t size, void *user) { (void)user; return calloc(n, size); }
static void *asan_realloc(void *ptr, size_t size, void *user) { (void)user; return realloc(ptr, size); }
static nghttp2_mem mem = { NULL, asan_malloc, asan_free, asan_calloc, asan_realloc };
#else
static nghttp2_mem mem = { NULL, h2_malloc, h2_free, h2_calloc, h2_realloc };
#endif

void *remora_h2_mem(void) { return &mem; }
