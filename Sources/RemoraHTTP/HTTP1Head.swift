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

/// Writes heads to forward: hop-by-hop fields dropped (RFC 9110 §7.6.1: Connection and the fields it
/// names, Keep-Alive, Proxy-Connection, TE, Upgrade, Transfer-Encoding — re-framed instead),
/// X-Forwarded-For/-Proto added, Host and everything else copied in order.
public enum HTTP1Head {
    /// True when header `i` must not be forwarded: hop-by-hop by name or named by a Connection header.
    @inline(__always)
    static func isHopByHop(_ p: HTTP1Parser, _ i: Int) -> Bool {
        let connection = p.connectionNamesFields
        let n = p.name(i)
        switch n.count {
        case 2: if n.equalsLowercase("te") { return true }
        case 7: if n.equalsLowercase("upgrade") { return true }
        case 10: if n.equalsLowercase("connection") || n.equalsLowercase("keep-alive") { return true }
        case 16: if n.equalsLowercase("proxy-connection") { return true }
        case 17: if n.equalsLowercase("transfer-encoding") { return true }
        default: break
        }
        // Named by a Connection header? (only scanned when one exists)
        if connection < 0 { return false }
        for j in connection..<p.headerCount where p.name(j).count == 10 && p.name(j).equalsLowercase("connection") {
            if connectionTokens(p.value(j), contain: n) { return true }
        }
        return false
    }

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

    @inline(__always)
    static func appendHeader(_ out: inout ByteBuffer, _ p: HTTP1Parser, _ i: Int) {
        out.append(p.name(i)); out.append(": "); out.append(p.value(i)); out.append("\r\n")
    }

    /// The request head to send upstream, from a parsed downstream request.
    /// `clientIP` is appended to X-Forwarded-For; `dropExpect` removes `Expect: 100-continue`
    /// (the proxy answers it itself).
    public static func writeRequest(_ p: HTTP1Parser, framing: BodyFraming, clientIP: UnsafeRawBufferPointer,
                                    proto: StaticString, dropExpect: Bool, into out: inout ByteBuffer) {
        out.append(p.methodName)
        out.append(byte: 0x20)
        out.append(p.startLine)
        out.append(" HTTP/1.1\r\n")
        var xffFirst = -1
        for i in 0..<p.headerCount {
            let n = p.name(i)
            if n.count == 15 && n.equalsLowercase("x-forwarded-for") { if xffFirst < 0 { xffFirst = i }; continue }
            if n.count == 17 && n.equalsLowercase("x-forwarded-proto") { continue }
            if dropExpect && i == p.expectIndex { continue }
            if isHopByHop(p, i) { continue }
            appendHeader(&out, p, i)
        }
        if framing == .chunked { out.append("transfer-encoding: chunked\r\n") }
        out.append("x-forwarded-for: ")
        if xffFirst >= 0 {
            for i in xffFirst..<p.headerCount where p.name(i).count == 15 && p.name(i).equalsLowercase("x-forwarded-for") {
                out.append(p.value(i)); out.append(", ")
            }
        }
        out.append(clientIP)
        out.append("\r\nx-forwarded-proto: ")
        out.append(proto)
        out.append("\r\n\r\n")
    }

    /// The response head to send downstream, from a parsed upstream response.
    public static func writeResponse(_ p: HTTP1Parser, framing: BodyFraming, keepAlive: Bool, into out: inout ByteBuffer) {
        out.append("HTTP/1.1 ")
        out.appendDecimal(UInt64(p.statusCode))
        out.append(byte: 0x20)
        out.append(p.startLine)
        out.append("\r\n")
        for i in 0..<p.headerCount where !isHopByHop(p, i) {
            if framing == .chunked && p.name(i).count == 14 && p.name(i).equalsLowercase("content-length") { continue }
            appendHeader(&out, p, i)
        }
        if framing == .chunked { out.append("transfer-encoding: chunked\r\n") }
        if !keepAlive { out.append("connection: close\r\n") }
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
    case 200: return "OK"
    case 400: return "Bad Request"
    case 403: return "Forbidden"
    case 404: return "Not Found"
    case 405: return "Method Not Allowed"
    case 408: return "Request Timeout"
    case 413: return "Content Too Large"
    case 417: return "Expectation Failed"
    case 431: return "Request Header Fields Too Large"
    case 500: return "Internal Server Error"
    case 501: return "Not Implemented"
    case 502: return "Bad Gateway"
    case 503: return "Service Unavailable"
    case 504: return "Gateway Timeout"
    default: return "Unknown"
    }
}
