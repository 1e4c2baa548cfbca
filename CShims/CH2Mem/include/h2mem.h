#ifndef REMORA_H2MEM_H
#define REMORA_H2MEM_H

/// nghttp2's allocator for every session Remora creates: size-class free lists kept per thread
/// (each worker loop is one thread), so the ~35 small allocations nghttp2 makes per stream
/// (stream state, header buffers, outbound items) are a pointer pop and push instead of a trip
/// through malloc's bins. A block may be freed on another thread (it then joins that thread's
/// lists). Each class keeps at most 512 KiB (10 classes: 5 MiB per thread at worst, reached only
/// after that many blocks were in use at once); beyond that blocks go back to libc. (At 128 KiB a
/// worker with ~512 streams in flight per side freed and malloc'd its stream blocks again on every
/// request: ~500 instructions per gRPC call.)
/// The allocator, an `nghttp2_mem *` (void * here so that nghttp2.h stays owned by CNGHTTP2).
void *remora_h2_mem(void);

#endif
