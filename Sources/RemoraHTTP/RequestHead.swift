import RemoraCore

/// The request-head policy, written once for both upstream codecs (`HTTP1Head.writeRequest`,
/// `HTTP2Head.storeRequest`): which of the client's fields are forwarded. Hop-by-hop fields go
/// (`HopFilter`), and so do X-Forwarded-For and X-Forwarded-Proto, which the writers add anew (the
/// client's X-Forwarded-For list first, then the client's address; the listener's scheme), and
/// X-Forwarded-Client-Cert, which only the proxy may write (from a verified client certificate on
/// a mutual-TLS listener): a client's own is always removed, so it cannot be forged.
public struct RequestHead {
    /// The authority replaces any Host field (requests from HTTP/2, absolute-form targets, and
    /// every request toward HTTP/2, where `:authority` carries it).
    public var dropHost: Bool
    /// `Expect: 100-continue` is answered by the proxy.
    public var dropExpect: Bool
    /// The body is re-framed as chunks: the client's Content-Length would contradict it.
    public var dropContentLength: Bool
    /// Cookie fields are left for the writer to join into one (toward HTTP/1.1 from HTTP/2).
    public var joinCookies: Bool
    /// `te: trailers` stays (toward HTTP/2: gRPC needs it).
    public var keepTETrailers: Bool

    public init(dropHost: Bool, dropExpect: Bool, dropContentLength: Bool, joinCookies: Bool, keepTETrailers: Bool) {
        self.dropHost = dropHost; self.dropExpect = dropExpect; self.dropContentLength = dropContentLength
        self.joinCookies = joinCookies; self.keepTETrailers = keepTETrailers
    }

    /// What the policy noted while filtering one list: Cookie fields left for the writer to join,
    /// and the index of the first X-Forwarded-For (-1: none).
    public struct Seen {
        public var cookies = 0
        public var forwardedFor = -1
        public init() {}
    }

    /// The hop-by-hop filter for `h` under this policy (once per list).
    @inline(__always)
    public func hopFilter(_ h: UnsafeBufferPointer<HeaderRef>) -> HopFilter { HopFilter(h, keepTETrailers: keepTETrailers) }

    /// Whether field `i` of `h` is forwarded as it is (`hop` from `hopFilter(h)`); notes in `seen`
    /// the fields the writer deals with itself. Writers call it for each field, in order.
    @inline(__always)
    public func forwards(_ h: UnsafeBufferPointer<HeaderRef>, _ i: Int, _ hop: HopFilter, _ seen: inout Seen) -> Bool {
        let n = h[i].name
        switch n.count {
        case 4: if dropHost && n.equalsLowercase("host") { return false }
        case 6:
            if joinCookies && n.equalsLowercase("cookie") { seen.cookies &+= 1; return false }
            if dropExpect && n.equalsLowercase("expect") { return false }
        case 14: if dropContentLength && n.equalsLowercase("content-length") { return false }
        case 15: if n.equalsLowercase("x-forwarded-for") { if seen.forwardedFor < 0 { seen.forwardedFor = i }; return false }
        case 17: if n.equalsLowercase("x-forwarded-proto") { return false }
        case 23: if n.equalsLowercase("x-forwarded-client-cert") { return false }
        default: break
        }
        return !hop.isHopByHop(h, i)
    }

    /// Calls `value` with each X-Forwarded-For value of `h`, from index `first` (-1: none).
    @inline(__always)
    public static func forEachForwardedFor(_ h: UnsafeBufferPointer<HeaderRef>, from first: Int,
                                           _ value: (UnsafeRawBufferPointer) -> Void) {
        guard first >= 0 else { return }
        for i in first..<h.count where h[i].name.count == 15 && h[i].name.equalsLowercase("x-forwarded-for") {
            value(h[i].value)
        }
    }
}

/// Fields the proxy adds to a request itself (the request id, the trace context): lowercase names,
/// valid values, nothing for the request-head policy to decide, written after the client's fields.
/// `fields` for HTTP/2; `lines` — the same fields as HTTP/1.1 header lines (`name: value\r\n` each,
/// in order) — for HTTP/1.1, which copies them in one piece. The codecs take the one they write
/// (two words: a wider argument costs every request a few spills, tracing on or off).
public struct AddedFields {
    public var fields: UnsafeBufferPointer<HeaderRef>
    public var lines: UnsafeRawBufferPointer

    @inline(__always)
    public init(fields: UnsafeBufferPointer<HeaderRef>, lines: UnsafeRawBufferPointer) {
        self.fields = fields; self.lines = lines
    }

    public static var none: AddedFields {
        AddedFields(fields: UnsafeBufferPointer(start: nil, count: 0), lines: UnsafeRawBufferPointer(start: nil, count: 0))
    }
}

/// Request heads for an HTTP/2 upstream.
public enum HTTP2Head {
    /// Stores the request for an HTTP/2 upstream in `block` (kept: a retry submits it again):
    /// :method, :authority, :path, then the fields the request-head policy forwards, lowercased
    /// unless `namesLowercase` (from HTTP/2, whose codec refuses uppercase), X-Forwarded-For with
    /// `clientIP` last, and X-Forwarded-Proto `proto` (the listener's scheme).
    public static func storeRequest(_ v: RequestView, clientIP: UnsafeRawBufferPointer, proto: StaticString,
                                    dropExpect: Bool, namesLowercase: Bool, extendedConnect: Bool = false,
                                    clientCert: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                                    extra: UnsafeBufferPointer<HeaderRef> = UnsafeBufferPointer(start: nil, count: 0),
                                    into block: inout HeaderBlock) {
        block.append(bytesOf(":method"), v.method)
        block.append(bytesOf(":authority"), v.authority)
        block.append(bytesOf(":path"), v.target)
        // RFC 8441 passed through: `:protocol` right after the pseudo-fields the session writes itself
        // (the first of the "headers", which an HTTP/2 session sends as they are, pseudo-fields first).
        if extendedConnect { block.append(bytesOf(":protocol"), bytesOf("websocket")) }
        let h = v.headers
        let policy = RequestHead(dropHost: true, dropExpect: dropExpect, dropContentLength: false, joinCookies: false,
                                 keepTETrailers: true)
        let hop = policy.hopFilter(h)
        var seen = RequestHead.Seen()
        for i in h.indices where policy.forwards(h, i, hop, &seen) {
            if namesLowercase { block.append(h[i].name, h[i].value) } else { block.append(lowercasingName: h[i].name, h[i].value) }
        }
        for f in extra { block.append(f.name, f.value) }   // the proxy's own fields: lowercase, valid
        let xff = block.beginField(bytesOf("x-forwarded-for"))
        RequestHead.forEachForwardedFor(h, from: seen.forwardedFor) { value in
            block.appendToValue(value)
            block.appendToValue(bytesOf(", "))
        }
        block.appendToValue(clientIP)
        block.endField(nameOffset: xff, nameLength: 15)
        block.append(bytesOf("x-forwarded-proto"),
                     bytesOf(proto))
        if clientCert.count > 0 { block.append(bytesOf("x-forwarded-client-cert"), clientCert) }
    }
}

/// The bytes of a literal.
@inline(__always)
func bytesOf(_ s: StaticString) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)
}
