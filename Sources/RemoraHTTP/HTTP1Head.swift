import RemoraCore

/// How a forwarded body is delimited on the side it is written to.
public enum BodyFraming: Equatable {
    /// No body (HEAD responses, 204, 304, GET without a body).
    case none
    /// The original Content-Length header is kept; bytes pass through unchanged.
    case contentLength
    /// Re-framed as chunks (the source was chunked, or delimited by its connection's end).
    case chunked
    /// Delimited by closing the connection (an HTTP/1.0 client that cannot take chunks).
    case closeDelimited
}

/// Writes HTTP/1.1 heads to forward, from any protocol's header list: hop-by-hop fields dropped
/// (`HopFilter`), X-Forwarded-For/-Proto added, Host and everything else copied in order (requests:
/// by the request-head policy, `RequestHead`, which the HTTP/2 writer shares).
public enum HTTP1Head {
    /// Whether a comma-separated token list contains `name` (ASCII case-insensitive).
    static func connectionTokens(_ list: UnsafeRawBufferPointer, contain name: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        let n = list.count
        while i < n {
            while i < n && (list[i] == 0x20 || list[i] == 0x09 || list[i] == 0x2C) { i += 1 }
            let start = i
            while i < n && list[i] != 0x2C { i += 1 }
            var end = i
            while end > start && (list[end - 1] == 0x20 || list[end - 1] == 0x09) { end -= 1 }
            if end - start == name.count {
                var same = true
                for k in 0..<name.count where (list[start + k] | 0x20) != (name[k] | 0x20) { same = false; break }
                if same { return true }
            }
        }
        return false
    }

    /// Out of line: requests without added fields pay one compare, not the copy's code around them.
    @inline(never)
    static func appendLines(_ out: inout ByteBuffer, _ lines: UnsafeRawBufferPointer) { out.append(lines) }

    @inline(__always)
    static func appendHeader(_ out: inout ByteBuffer, _ h: HeaderRef) {
        out.append(h.name); out.append(": "); out.append(h.value); out.append("\r\n")
    }

    /// The request head to send to an HTTP/1.1 upstream, by the request-head policy (`RequestHead`).
    /// `addHost` writes Host from the authority (requests that came over HTTP/2 carry `:authority`,
    /// not Host); `clientIP` is appended to X-Forwarded-For; `proto` is the listener's scheme, for
    /// X-Forwarded-Proto; `dropExpect` removes `Expect: 100-continue` (the proxy answers it itself).
    /// `clientCert`: the `x-forwarded-client-cert` value to add (empty: none; a client's own never passes).
    /// `extraLines`: fields the proxy adds itself (request id, trace context) as header lines, written
    /// as they are after the client's (`AddedFields.lines`).
    /// `upgradeFields` (non-empty for a WebSocket handshake: `connection: upgrade`, `upgrade: …`
    /// lines, the client's own being hop-by-hop) are written as they are.
    public static func writeRequest(_ v: RequestView, framing: BodyFraming, addHost: Bool, clientIP: UnsafeRawBufferPointer,
                                    proto: StaticString, dropExpect: Bool,
                                    clientCert: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                                    extraLines: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                                    upgradeFields: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                                    into out: inout ByteBuffer) {
        let h = v.headers
        out.append(v.method)
        out.append(byte: 0x20)
        out.append(v.target)
        out.append(" HTTP/1.1\r\n")
        if addHost { out.append("host: "); out.append(v.authority); out.append("\r\n") }
        // HTTP/2 may split Cookie into several fields; HTTP/1.1 gets one (RFC 9113 §8.2.3).
        let policy = RequestHead(dropHost: addHost, dropExpect: dropExpect, dropContentLength: framing == .chunked,
                                 joinCookies: addHost, keepTETrailers: false)
        let hop = policy.hopFilter(h)
        var seen = RequestHead.Seen()
        for i in h.indices where policy.forwards(h, i, hop, &seen) { appendHeader(&out, h[i]) }
        if extraLines.count > 0 { appendLines(&out, extraLines) }   // the proxy's own fields
        if seen.cookies > 0 {
            out.append("cookie: ")
            var first = true
            for f in h where f.name.count == 6 && f.name.equalsLowercase("cookie") {
                if !first { out.append("; ") }
                out.append(f.value)
                first = false
            }
            out.append("\r\n")
        }
        if framing == .chunked { out.append("transfer-encoding: chunked\r\n") }
        if upgradeFields.count > 0 { out.append(upgradeFields) }
        out.append("x-forwarded-for: ")
        RequestHead.forEachForwardedFor(h, from: seen.forwardedFor) { out.append($0); out.append(", ") }
        out.append(clientIP)
        out.append("\r\nx-forwarded-proto: ")
        out.append(proto)
        if clientCert.count > 0 { out.append("\r\nx-forwarded-client-cert: "); out.append(clientCert) }
        out.append("\r\n\r\n")
    }

    /// The response head to send to an HTTP/1.1 client. `reason` empty = the standard phrase.
    public static func writeResponse(status: Int, reason: UnsafeRawBufferPointer, headers h: UnsafeBufferPointer<HeaderRef>,
                                     framing: BodyFraming, keepAlive: Bool, extraLine: StaticString? = nil,
                                     into out: inout ByteBuffer) {
        let hop = HopFilter(h)
        out.append("HTTP/1.1 ")
        out.appendDecimal(UInt64(status))
        out.append(byte: 0x20)
        if reason.count > 0 { out.append(reason) } else { out.append(reasonPhrase(status)) }
        out.append("\r\n")
        for i in h.indices where !hop.isHopByHop(h, i) {
            if framing == .chunked && h[i].name.count == 14 && h[i].name.equalsLowercase("content-length") { continue }
            appendHeader(&out, h[i])
        }
        if framing == .chunked { out.append("transfer-encoding: chunked\r\n") }
        if let extraLine { out.append(extraLine) }
        if !keepAlive { out.append("connection: close\r\n") }
        out.append("\r\n")
    }

    /// A `101 Switching Protocols` for an HTTP/1.1 client: the upstream's fields without its
    /// hop-by-hop ones, then `connection: upgrade` and `upgrade: <protocol>` (the upstream's own
    /// Upgrade value, else `fallback`).
    public static func writeSwitchingProtocols(headers h: UnsafeBufferPointer<HeaderRef>, fallback: StaticString,
                                               into out: inout ByteBuffer) {
        let hop = HopFilter(h)
        out.append("HTTP/1.1 101 Switching Protocols\r\n")
        for i in h.indices where !hop.isHopByHop(h, i) { appendHeader(&out, h[i]) }
        out.append("connection: upgrade\r\nupgrade: ")
        if let i = h.firstIndex(named: "upgrade"), h[i].value.count > 0 { out.append(h[i].value) } else { out.append(fallback) }
        out.append("\r\n\r\n")
    }

    /// The end of a chunked body, with trailer fields when there are any.
    public static func writeLastChunk(trailers: UnsafeBufferPointer<HeaderRef>?, into out: inout ByteBuffer) {
        out.append("0\r\n")
        if let t = trailers { for f in t { appendHeader(&out, f) } }
        out.append("\r\n")
    }

    /// A complete small response the proxy produces itself (errors, 404, admin).
    public static func writeLocalResponse(status: Int, reason: StaticString, contentType: StaticString = "text/plain",
                                          body: UnsafeRawBufferPointer, keepAlive: Bool, headOnly: Bool = false,
                                          into out: inout ByteBuffer) {
        out.append("HTTP/1.1 ")
        out.appendDecimal(UInt64(status))
        out.append(byte: 0x20)
        out.append(reason)
        out.append("\r\ncontent-type: ")
        out.append(contentType)
        out.append("\r\ncontent-length: ")
        out.appendDecimal(UInt64(body.count))
        out.append(keepAlive ? "\r\n\r\n" : "\r\nconnection: close\r\n\r\n")
        if !headOnly { out.append(body) }
    }

    /// Chunk framing: the size line before `n` bytes of data.
    @inline(__always)
    public static func writeChunkHeader(_ n: Int, into out: inout ByteBuffer) {
        out.appendHex(UInt64(n))
        out.append("\r\n")
    }
}

/// Standard reason phrases for the statuses the proxy produces itself.
public func reasonPhrase(_ status: Int) -> StaticString {
    switch status {
    case 100: return "Continue"
    case 101: return "Switching Protocols"
    case 103: return "Early Hints"
    case 200: return "OK"
    case 201: return "Created"
    case 202: return "Accepted"
    case 204: return "No Content"
    case 206: return "Partial Content"
    case 301: return "Moved Permanently"
    case 302: return "Found"
    case 303: return "See Other"
    case 304: return "Not Modified"
    case 307: return "Temporary Redirect"
    case 308: return "Permanent Redirect"
    case 401: return "Unauthorized"
    case 400: return "Bad Request"
    case 403: return "Forbidden"
    case 404: return "Not Found"
    case 405: return "Method Not Allowed"
    case 408: return "Request Timeout"
    case 409: return "Conflict"
    case 410: return "Gone"
    case 413: return "Content Too Large"
    case 417: return "Expectation Failed"
    case 418: return "I'm a teapot"
    case 429: return "Too Many Requests"
    case 431: return "Request Header Fields Too Large"
    case 500: return "Internal Server Error"
    case 501: return "Not Implemented"
    case 502: return "Bad Gateway"
    case 503: return "Service Unavailable"
    case 504: return "Gateway Timeout"
    default: return "Unknown"
    }
}
