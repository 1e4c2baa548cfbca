#if canImport(Glibc)
import Glibc
#endif

/// A growable byte buffer over malloc'd memory, for the hot path: appends copy bytes, nothing is
/// reference counted, and the owner decides when the memory goes back (`release()`), so a buffer
/// that is reused request after request allocates only when it first grows.
///
/// It is a plain struct with manual memory: exactly one owner may call `release()`, and a copy
/// of the struct must not outlive it. Owners are long-lived objects (a connection, a worker).
public struct ByteBuffer {
    // Public so that appends inline across modules; only ByteBuffer's own methods change them.
    /// Start of the storage; nil until the first append or reserve.
    public var base: UnsafeMutableRawPointer?
    /// Bytes in use, 0 ... capacity.
    public var count: Int = 0
    /// Bytes allocated.
    public var capacity: Int = 0

    public init() {}

    public init(capacity: Int) { reserve(capacity) }

    @inlinable public var isEmpty: Bool { count == 0 }

    /// The bytes in use (valid until the next mutation).
    @inlinable public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    @inlinable
    public mutating func reserve(_ minimumCapacity: Int) {
        guard minimumCapacity > capacity else { return }
        var newCapacity = Swift.max(capacity * 2, 256)
        while newCapacity < minimumCapacity { newCapacity *= 2 }
        guard let p = realloc(base, newCapacity) else { fatalError("out of memory") }
        base = p
        capacity = newCapacity
    }

    @inlinable @inline(__always)
    public mutating func append(_ p: UnsafeRawPointer, _ n: Int) {
        if n == 0 { return }
        if count + n > capacity { reserve(count + n) }
        (base! + count).copyMemory(from: p, byteCount: n)
        count += n
    }

    @inlinable @inline(__always)
    public mutating func append(_ b: UnsafeRawBufferPointer) {
        if let p = b.baseAddress { append(p, b.count) }
    }

    @inlinable @inline(__always)
    public mutating func append(_ s: StaticString) {
        append(s.utf8Start, s.utf8CodeUnitCount)
    }

    @inlinable @inline(__always)
    public mutating func append(byte: UInt8) {
        if count + 1 > capacity { reserve(count + 1) }
        base!.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    /// (Named apart from `append(_: StaticString)`, which string literals must reach: a literal
    /// would otherwise become a String and take the slow path.)
    public mutating func append(string s: String) {
        var s = s
        s.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    /// Appends `v` in decimal without allocating.
    @inlinable
    public mutating func appendDecimal(_ v: UInt64) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0) // 24 bytes of scratch, enough for 20 digits
        withUnsafeMutableBytes(of: &digits) { scratch in
            var i = scratch.count
            var x = v
            repeat {
                i -= 1
                scratch[i] = UInt8(truncatingIfNeeded: 48 + x % 10)
                x /= 10
            } while x != 0
            append(UnsafeRawBufferPointer(rebasing: scratch[i...]))
        }
    }

    /// Appends `v` in lowercase hexadecimal without allocating (chunk sizes).
    @inlinable
    public mutating func appendHex(_ v: UInt64) {
        var digits: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &digits) { scratch in
            var i = scratch.count
            var x = v
            repeat {
                i -= 1
                let d = UInt8(truncatingIfNeeded: x & 0xF)
                scratch[i] = d < 10 ? 48 + d : 87 + d
                x >>= 4
            } while x != 0
            append(UnsafeRawBufferPointer(rebasing: scratch[i...]))
        }
    }

    /// Drops the first `n` bytes, moving the rest to the front.
    public mutating func consume(_ n: Int) {
        if n >= count { count = 0; return }
        memmove(base!, base! + n, count - n)
        count -= n
    }

    /// Forgets the contents; frees the storage when it has grown beyond `keepingAtMost` bytes, so a
    /// connection that once carried a large head does not hold that memory while idle.
    @inlinable
    public mutating func clear(keepingAtMost limit: Int = Int.max) {
        count = 0
        if capacity > limit { release() }
    }

    /// Frees the storage. The buffer is empty and usable again afterwards.
    @inlinable
    public mutating func release() {
        free(base)
        base = nil
        count = 0
        capacity = 0
    }

    public mutating func swapContents(with other: inout ByteBuffer) {
        swap(&self, &other)
    }
}

/// Copies `n` bytes from `src` to `dst` (not overlapping). Up to 16 bytes (most header names and
/// values) by two overlapping loads and stores, without a call to `memcpy` (~20 instructions with
/// its own dispatch on size, for a few bytes); longer ones by `memcpy`.
@inlinable @inline(__always)
public func copySmall(_ dst: UnsafeMutableRawPointer, _ src: UnsafeRawPointer, _ n: Int) {
    if n >= 8 {
        if n > 16 { dst.copyMemory(from: src, byteCount: n); return }
        let a = src.loadUnaligned(as: UInt64.self), b = src.loadUnaligned(fromByteOffset: n &- 8, as: UInt64.self)
        dst.storeBytes(of: a, as: UInt64.self)
        dst.storeBytes(of: b, toByteOffset: n &- 8, as: UInt64.self)
    } else if n >= 4 {
        let a = src.loadUnaligned(as: UInt32.self), b = src.loadUnaligned(fromByteOffset: n &- 4, as: UInt32.self)
        dst.storeBytes(of: a, as: UInt32.self)
        dst.storeBytes(of: b, toByteOffset: n &- 4, as: UInt32.self)
    } else if n > 0 {
        // 1 ... 3 bytes: first, middle and last (overlapping when fewer).
        let a = src.load(as: UInt8.self), m = src.load(fromByteOffset: n >> 1, as: UInt8.self)
        let z = src.load(fromByteOffset: n &- 1, as: UInt8.self)
        dst.storeBytes(of: a, as: UInt8.self)
        dst.storeBytes(of: m, toByteOffset: n >> 1, as: UInt8.self)
        dst.storeBytes(of: z, toByteOffset: n &- 1, as: UInt8.self)
    }
}

extension UnsafeRawBufferPointer {
    /// ASCII case-insensitive comparison with a lowercase literal (letters, digits and '-'): each
    /// byte with bit 5 set must equal the literal's. Eight bytes at a time, the tail by one
    /// overlapping load (four for names of 4 to 7 bytes).
    @inlinable @inline(__always)
    public func equalsLowercase(_ lower: StaticString) -> Bool {
        let n = count
        guard n == lower.utf8CodeUnitCount, let b = baseAddress else { return false }
        let l = UnsafeRawPointer(lower.utf8Start)
        if n >= 8 {
            let m: UInt64 = 0x2020_2020_2020_2020
            var i = 0
            while i + 8 < n {
                if b.loadUnaligned(fromByteOffset: i, as: UInt64.self) | m != l.loadUnaligned(fromByteOffset: i, as: UInt64.self) {
                    return false
                }
                i &+= 8
            }
            return b.loadUnaligned(fromByteOffset: n &- 8, as: UInt64.self) | m == l.loadUnaligned(fromByteOffset: n &- 8, as: UInt64.self)
        }
        if n >= 4 {
            let m: UInt32 = 0x2020_2020
            return b.loadUnaligned(as: UInt32.self) | m == l.loadUnaligned(as: UInt32.self)
                && b.loadUnaligned(fromByteOffset: n &- 4, as: UInt32.self) | m == l.loadUnaligned(fromByteOffset: n &- 4, as: UInt32.self)
        }
        for i in 0..<n where (b.load(fromByteOffset: i, as: UInt8.self) | 0x20) != l.load(fromByteOffset: i, as: UInt8.self) { return false }
        return true
    }

    /// Whether any byte is `byte`: eight bytes at a time, the tail by one overlapping load, so a
    /// header name costs a handful of instructions.
    @inlinable @inline(__always)
    public func contains(byte: UInt8) -> Bool {
        guard let p = baseAddress else { return false }
        let n = count
        if n >= 8 {
            let ones: UInt64 = 0x0101_0101_0101_0101
            let pattern = ones &* UInt64(byte)
            @inline(__always) func has(_ at: Int) -> Bool {
                let x = p.loadUnaligned(fromByteOffset: at, as: UInt64.self) ^ pattern
                return (x &- ones) & ~x & 0x8080_8080_8080_8080 != 0
            }
            var i = 0
            while i &+ 8 < n {
                if has(i) { return true }
                i &+= 8
            }
            return has(n &- 8)
        }
        if n >= 4 {
            let ones: UInt32 = 0x0101_0101
            let pattern = ones &* UInt32(byte)
            @inline(__always) func has(_ at: Int) -> Bool {
                let x = p.loadUnaligned(fromByteOffset: at, as: UInt32.self) ^ pattern
                return (x &- ones) & ~x & 0x8080_8080 != 0
            }
            return has(0) || has(n &- 4)
        }
        var i = 0
        while i < n {
            if p.load(fromByteOffset: i, as: UInt8.self) == byte { return true }
            i &+= 1
        }
        return false
    }

    /// Byte-for-byte comparison with a literal.
    @inlinable @inline(__always)
    public func equals(_ s: StaticString) -> Bool {
        count == s.utf8CodeUnitCount && (count == 0 || memcmp(baseAddress!, s.utf8Start, count) == 0)
    }

    public var string: String { String(decoding: self, as: UTF8.self) }
}

/// Buffers lent for the length of one exchange and given back, so that an idle connection owns no
/// buffer and a busy one allocates nothing in steady state. One per worker (not thread-safe).
public final class BufferPool {
    /// The kept buffers, a stack of `kept` entries (manual storage: no array bookkeeping per call).
    @usableFromInline let free: UnsafeMutablePointer<ByteBuffer>
    @usableFromInline var kept = 0
    /// The fewest buffers kept since the last `trim` (the bottom ones, which no `take` reached).
    @usableFromInline var lowest = 0
    /// Capacity of a new buffer, bytes.
    public let initialCapacity: Int
    /// Buffers kept for reuse at most; more are freed when given back. The default, 2,048 (8 MiB of
    /// 4 KiB buffers at most, kept only after that many were in use at once), holds the swings of a
    /// worker with ~512 HTTP/2 requests in flight (~10 buffers each); at 1,024 they went back to
    /// malloc on every request (~840 instructions per gRPC call).
    public let maxKept: Int
    /// A buffer that grew beyond this is freed instead of kept, bytes.
    public let maxCapacity: Int

    public init(initialCapacity: Int = 4096, maxKept: Int = 2048, maxCapacity: Int = 64 * 1024) {
        self.initialCapacity = initialCapacity
        self.maxKept = maxKept
        self.maxCapacity = maxCapacity
        free = .allocate(capacity: maxKept)
    }

    /// An empty buffer with at least `initialCapacity` bytes.
    @inlinable
    public func take() -> ByteBuffer {
        if kept > 0 {
            kept -= 1
            if kept < lowest { lowest = kept }
            return (free + kept).move()
        }
        return ByteBuffer(capacity: initialCapacity)
    }

    /// Takes `b` back (emptied) and leaves an empty, storage-less buffer in its place.
    @inlinable
    public func give(_ b: inout ByteBuffer) {
        guard b.capacity > 0 else { return }
        if b.capacity > maxCapacity || kept >= maxKept {
            b.release()
        } else {
            b.count = 0
            (free + kept).initialize(to: b)
            kept += 1
            b = ByteBuffer()
        }
    }

    /// Frees the buffers no `take` reached since the last call: kept through a whole period without
    /// use, as after a burst (see `Recycler`). Returns how many.
    @discardableResult
    public func trim() -> Int {
        let n = lowest
        if n > 0 {
            for i in 0..<n { free[i].release() }
            free.moveInitialize(from: free + n, count: kept - n)
            kept -= n
        }
        lowest = kept
        return n
    }

    deinit {
        for i in 0..<kept { free[i].release() }
        free.deallocate()
    }
}
