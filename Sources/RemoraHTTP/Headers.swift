import RemoraCore

/// A header list the codec owns: name and value bytes in one arena, and the fields as `HeaderRef`s
/// pointing into it (moved along when the arena grows), so handing the list on costs nothing. Used
/// for HTTP/2 header blocks as they arrive, request heads kept for retries, and trailers; storage
/// comes from and goes back to a pool.
public struct HeaderBlock {
    public var arena = ByteBuffer()
    var refs = ByteBuffer()
    public private(set) var count = 0
    /// Bytes of names and values plus 32 per field (RFC 9113 §6.5.2's header list size).
    public private(set) var listSize = 0

    public init() {}

    /// An empty block at a fixed address (an HTTP/2 stream's, which the session appends to
    /// directly: `HTTP2Session.collectHeaders`); the owner deallocates it.
    public static func allocate() -> UnsafeMutablePointer<HeaderBlock> {
        let p = UnsafeMutablePointer<HeaderBlock>.allocate(capacity: 1)
        p.initialize(to: HeaderBlock())
        return p
    }

    /// Takes storage from `pool` for an empty block that has none.
    @inline(__always)
    public mutating func prepareIfEmpty(_ pool: BufferPool) {
        if count == 0 { prepare(pool) }
    }

    /// Takes storage from `pool` unless the block has some (before filling it).
    @inline(__always)
    public mutating func prepare(_ pool: BufferPool) {
        if arena.base == nil { arena = pool.take() }
        if refs.base == nil { refs = pool.take() }
        removeAll()
    }

    @inline(__always) var fields: UnsafeMutablePointer<HeaderRef> { refs.base!.assumingMemoryBound(to: HeaderRef.self) }

    /// Makes room for `n` more arena bytes; fields move with the arena.
    @inline(__always)
    mutating func reserveArena(_ n: Int) {
        if arena.count &+ n > arena.capacity { growArena(arena.count &+ n) }
    }

    mutating func growArena(_ capacity: Int) {
        let old = arena.base
        arena.reserve(capacity)
        guard let old = old.map(UnsafeRawPointer.init), let new = arena.base, UnsafeRawPointer(new) != old else { return }
        let f = fields
        for i in 0..<count {
            let r = f[i]
            f[i] = HeaderRef(name: UnsafeRawBufferPointer(start: new + (r.name.baseAddress! - old), count: r.name.count),
                             value: UnsafeRawBufferPointer(start: new + (r.value.baseAddress! - old), count: r.value.count))
        }
    }

    /// Appends a field (names from HTTP/2 are lowercase already: nghttp2 refuses others).
    @inline(__always)
    public mutating func append(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) {
        let nl = name.count, vl = value.count
        reserveArena(nl &+ vl)
        let offset = arena.count
        let base = arena.base!
        if nl > 0 { copySmall(base + offset, name.baseAddress!, nl) }
        if vl > 0 { copySmall(base + (offset &+ nl), value.baseAddress!, vl) }
        arena.count = offset &+ nl &+ vl
        endField(nameOffset: offset, nameLength: nl)
    }

    /// Appends a field with its name ASCII-lowercased (from HTTP/1.1).
    public mutating func append(lowercasingName name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) {
        let nameOffset = beginField(name)
        if let b = arena.base?.advanced(by: nameOffset).assumingMemoryBound(to: UInt8.self) {
            for i in 0..<name.count where b[i] &- 0x41 < 26 { b[i] |= 0x20 }
        }
        appendToValue(value)
        endField(nameOffset: nameOffset, nameLength: name.count)
    }

    /// A field built in pieces: `beginField(name)`, any number of `appendToValue`, then `endField`.
    @inline(__always)
    public mutating func beginField(_ name: UnsafeRawBufferPointer) -> Int {
        let offset = arena.count
        appendToValue(name)
        return offset
    }

    @inline(__always)
    public mutating func appendToValue(_ bytes: UnsafeRawBufferPointer) {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return }
        reserveArena(bytes.count)
        copySmall(arena.base! + arena.count, p, bytes.count)
        arena.count &+= bytes.count
    }

    @inline(__always)
    public mutating func endField(nameOffset: Int, nameLength: Int) {
        // (Sizes stay far below 2^31: header lists are capped well under a megabyte.)
        let need = (count &+ 1) &* MemoryLayout<HeaderRef>.stride
        if need > refs.capacity { refs.reserve(need) }
        if arena.base == nil { arena.reserve(1) }   // an empty first field still points somewhere
        let base = arena.base!
        let valueOffset = nameOffset &+ nameLength
        let valueLength = arena.count &- valueOffset
        fields[count] = HeaderRef(name: UnsafeRawBufferPointer(start: base + nameOffset, count: nameLength),
                                  value: UnsafeRawBufferPointer(start: base + valueOffset, count: valueLength))
        count &+= 1
        listSize &+= nameLength &+ valueLength &+ 32
    }

    public func name(_ i: Int) -> UnsafeRawBufferPointer { fields[i].name }

    public func value(_ i: Int) -> UnsafeRawBufferPointer { fields[i].value }

    public mutating func removeAll() {
        arena.count = 0
        count = 0
        listSize = 0
    }

    /// Gives the storage back to `pool`.
    @inline(__always)
    public mutating func release(to pool: BufferPool) {
        if arena.base == nil && refs.base == nil { return }
        removeAll()
        pool.give(&arena)
        pool.give(&refs)
    }

    /// Frees the storage.
    public mutating func release() {
        removeAll()
        arena.release()
        refs.release()
    }

    /// The fields (valid until the block changes).
    @inline(__always)
    public var headerRefs: UnsafeBufferPointer<HeaderRef> {
        count == 0 ? UnsafeBufferPointer(start: nil, count: 0) : UnsafeBufferPointer(start: fields, count: count)
    }

    /// The fields as `HeaderRef`s (valid inside `body` only).
    @inline(__always)
    public func withRefs<R>(_ body: (UnsafeBufferPointer<HeaderRef>) -> R) -> R { body(headerRefs) }
}

/// Which fields of a header list must not be forwarded to the next hop (RFC 9110 §7.6.1):
/// Connection and the fields it names, Keep-Alive, Proxy-Connection, TE (except `te: trailers`
/// toward HTTP/2, where gRPC needs it), Upgrade, Transfer-Encoding (bodies are re-framed).
/// A `Connection` token naming Content-Length or Host is ignored, as HAProxy does: the framing and
/// the authority the proxy sends come from its own parse, and a peer that could delete them would
/// make the next hop read the body as another request (request smuggling). Ignoring is chosen over
/// a 400 because the field itself is valid; only the peer's claim that it is hop-by-hop is not.
public struct HopFilter: Sendable {
    /// Index of a Connection header naming fields beyond close/keep-alive, or -1.
    let connection: Int
    let keepTETrailers: Bool

    /// Filters nothing (for lists known to hold no hop-by-hop field).
    public static let none = HopFilter(connection: -1, keepTETrailers: true)
    init(connection: Int, keepTETrailers: Bool) { self.connection = connection; self.keepTETrailers = keepTETrailers }

    public init(_ h: UnsafeBufferPointer<HeaderRef>, keepTETrailers: Bool = false) {
        var c = -1
        for i in h.indices where h[i].name.count == 10 && h[i].name.equalsLowercase("connection") {
            let v = h[i].value
            if !(v.equalsLowercase("keep-alive") || v.equalsLowercase("close")) { c = i; break }
        }
        connection = c
        self.keepTETrailers = keepTETrailers
    }

    @inline(__always)
    public func isHopByHop(_ h: UnsafeBufferPointer<HeaderRef>, _ i: Int) -> Bool {
        let n = h[i].name
        switch n.count {
        case 2: if n.equalsLowercase("te") { return !(keepTETrailers && h[i].value.equalsLowercase("trailers")) }
        case 7: if n.equalsLowercase("upgrade") { return true }
        case 10: if n.equalsLowercase("connection") || n.equalsLowercase("keep-alive") { return true }
        case 16: if n.equalsLowercase("proxy-connection") { return true }
        case 17: if n.equalsLowercase("transfer-encoding") { return true }
        default: break
        }
        if connection < 0 || HopFilter.isFraming(n) { return false }
        for j in connection..<h.count where h[j].name.count == 10 && h[j].name.equalsLowercase("connection") {
            if HTTP1Head.connectionTokens(h[j].value, contain: n) { return true }
        }
        return false
    }
}

extension HopFilter {
    /// Content-Length and Host: fields a `Connection` header may not remove (see the type's note).
    @inline(__always)
    static func isFraming(_ n: UnsafeRawBufferPointer) -> Bool {
        (n.count == 14 && n.equalsLowercase("content-length")) || (n.count == 4 && n.equalsLowercase("host"))
    }
}

extension UnsafeBufferPointer where Element == HeaderRef {
    /// Index of the first field named `lower` (a lowercase literal), or nil. Inlined where it is
    /// called, so the literal's length and bytes are constants (not read from a `StaticString` per field).
    @inlinable @inline(__always)
    public func firstIndex(named lower: StaticString) -> Int? {
        let n = lower.utf8CodeUnitCount
        for i in indices where self[i].name.count == n && self[i].name.equalsLowercase(lower) { return i }
        return nil
    }
}

extension HTTP1Parser {
    /// The parsed request as routing sees it (valid inside `body` only). Authority is the Host header.
    public func withRequestView<R>(_ body: (RequestView) -> R) -> R {
        withHeaderRefs { refs in
            let authority = hostIndex >= 0 ? value(hostIndex) : UnsafeRawBufferPointer(start: nil, count: 0)
            return body(RequestView(method: methodName, target: startLine, authority: authority, headers: refs))
        }
    }

    /// The parsed headers as `HeaderRef`s (valid inside `body` only).
    public func withHeaderRefs<R>(_ body: (UnsafeBufferPointer<HeaderRef>) -> R) -> R {
        withUnsafeTemporaryAllocation(of: HeaderRef.self, capacity: max(headerCount, 1)) { buf in
            for i in 0..<headerCount { buf.initializeElement(at: i, to: HeaderRef(name: name(i), value: value(i))) }
            return body(UnsafeBufferPointer(rebasing: buf[0..<headerCount]))
        }
    }
}

/// Request targets (RFC 9112 §3.2).
public enum RequestTarget {
    /// Whether a proxy can forward `t` as an origin-form target: origin form ("/a?q"), an absolute
    /// form `splitAbsolute` takes apart, or "*" for OPTIONS.
    public static func isForwardable(_ t: UnsafeRawBufferPointer, isOPTIONS: Bool) -> Bool {
        guard let first = t.first else { return false }
        if first == 0x2F { return true }
        if t.count == 1 && first == 0x2A { return isOPTIONS }
        return splitAbsolute(t) != nil
    }

    /// For an absolute-form target ("http://host:port/path?q", scheme http or https), its authority
    /// and its origin-form rest ("/path?q", "/" when empty); nil for any other form, and for an
    /// absolute form whose rest is not origin-form ("http://host?q": no path before the query).
    public static func splitAbsolute(_ t: UnsafeRawBufferPointer) -> (authority: UnsafeRawBufferPointer, path: UnsafeRawBufferPointer)? {
        guard t.count > 7, t[0] != 0x2F, let colon = t.firstIndex(of: 0x3A), colon + 2 < t.count,
              t[colon + 1] == 0x2F, t[colon + 2] == 0x2F
        else { return nil }
        let scheme = UnsafeRawBufferPointer(rebasing: t[0..<colon])
        guard scheme.equalsLowercase("http") || scheme.equalsLowercase("https") else { return nil }
        let start = colon + 3
        var end = start
        while end < t.count && t[end] != 0x2F && t[end] != 0x3F { end += 1 }
        if end < t.count && t[end] == 0x3F { return nil }
        let authority = UnsafeRawBufferPointer(rebasing: t[start..<end])
        if end == t.count {
            let slash: StaticString = "/"
            return (authority, UnsafeRawBufferPointer(start: slash.utf8Start, count: 1))
        }
        return (authority, UnsafeRawBufferPointer(rebasing: t[end...]))
    }
}
