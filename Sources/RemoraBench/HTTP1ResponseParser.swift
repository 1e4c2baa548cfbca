import Glibc
import RemoraCore

/// HTTP/1.1 response framing for the load generator: each response's status, where it ends and
/// whether the connection stays open — all `remora bench` needs from a response, and nothing more.
/// No header is stored: a header line is looked at (three names matter: Content-Length,
/// Transfer-Encoding, Connection) and dropped; a line is copied only when it spans two reads; the
/// body is skipped, never touched. (The data plane's `HTTP1Parser` — llhttp plus head storage for
/// a proxy — costs about three times as many instructions per small response.)
///
/// A pure state machine: `next` takes the bytes of one read from `offset` on and returns at each
/// complete response (`offset` moved past it), so that a read holding several pipelined responses
/// gives several events; `.needMore` when the bytes are used up. 1xx interim responses are skipped
/// (but 101, which ends HTTP on the connection).
///
/// Message length as RFC 9112 §6.3 says for a response: none after HEAD, 1xx, 204 and 304;
/// chunked when the last transfer coding is chunked; else until the connection closes when there
/// is a Transfer-Encoding; else Content-Length; else until the connection closes (`finish`).
/// Refused (`.error`, for good): a status line that is not `HTTP/1.0|1.1 DDD[ reason]`, a header
/// line without a name and a colon (whitespace before the colon, obs-fold), a Content-Length that
/// is not one decimal number or differs from an earlier one, Content-Length with
/// Transfer-Encoding, a malformed chunk, a head larger than `maxHeadBytes` or with more than
/// `maxHeaders` fields. Lines may end in CRLF or a bare LF.
struct HTTP1ResponseParser {
    enum Event: Equatable {
        /// Everything given was used; feed the next read.
        case needMore
        /// A final response is complete.
        case response(status: Int, keepAlive: Bool)
        /// Not HTTP/1.1 (or beyond a limit): the connection is out of step for good.
        case error
    }

    enum State {
        case statusLine, header, body, chunkSize, chunkData, chunkEnd, trailer
        /// No length: the body runs until the connection closes.
        case untilClose
        /// After a response that ends the connection's HTTP (not keep-alive, 101): the rest is ignored.
        case done
        case failed
    }

    /// The requests are HEAD: responses have no body whatever their headers say.
    let isHEAD: Bool
    /// Bytes of status line and header lines (and of trailer lines) one response may have.
    let maxHeadBytes: Int
    let maxHeaders: Int

    private(set) var state = State.statusLine
    /// Of the response being parsed.
    var status = 0
    var http11 = true
    /// Connection: close / keep-alive tokens seen.
    var closeToken = false
    var keepAliveToken = false
    /// -1 until a Content-Length field.
    var contentLength = -1
    var transferEncoding = false
    var chunked = false
    /// The connection stays open after this response (known at the end of its head).
    var keepAlive = true
    /// Body or chunk bytes still to come.
    var remaining = 0
    /// Head (or trailer) bytes so far, and header fields.
    var headBytes = 0
    var fields = 0
    /// The start of a line that a read cut short.
    var carry = ByteBuffer()

    init(isHEAD: Bool, maxHeadBytes: Int = 256 * 1024, maxHeaders: Int = 256) {
        self.isHEAD = isHEAD
        self.maxHeadBytes = maxHeadBytes
        self.maxHeaders = maxHeaders
    }

    mutating func release() { carry.release() }

    /// Parses `data` from `offset` up to the end of the next complete response (returning it, with
    /// `offset` just past it) or to the end of `data` (`.needMore`).
    mutating func next(_ data: UnsafeRawBufferPointer, _ offset: inout Int) -> Event {
        guard let base = data.baseAddress else { return state == .failed ? .error : .needMore }
        let end = data.count
        while true {
            switch state {
            case .body, .chunkData:
                let n = min(remaining, end - offset)
                offset += n
                remaining -= n
                if remaining > 0 { return .needMore }
                if state == .body { return complete() }
                state = .chunkEnd
            case .untilClose, .done:
                offset = end
                return .needMore
            case .failed:
                return .error
            case .statusLine, .header, .chunkSize, .chunkEnd, .trailer:
                if offset >= end { return .needMore }
                // One line, without its LF (and CR): in `data` when whole, else completed in `carry`.
                let start = base + offset
                guard let lf = memchr(start, 0x0A, end - offset) else {
                    carry.append(start, end - offset)
                    offset = end
                    if carry.count > maxHeadBytes { return fail() }
                    return .needMore
                }
                let n = UnsafeRawPointer(lf) - start
                offset += n + 1
                let event: Event?
                if carry.isEmpty {
                    event = line(UnsafeRawBufferPointer(start: start, count: n))
                } else {
                    carry.append(start, n)
                    event = line(carry.bytes)
                    carry.clear(keepingAtMost: 4096)
                }
                if let event { return event }
            }
        }
    }

    /// The connection's end: completes a response whose body runs until then.
    mutating func finish() -> Event {
        guard state == .untilClose else { return state == .failed ? .error : .needMore }
        return complete()
    }

    /// One line of the head, of a chunk's framing or of the trailers. Returns an event when the
    /// line ends a response or is refused; nil to go on.
    private mutating func line(_ raw: UnsafeRawBufferPointer) -> Event? {
        let l = raw.count > 0 && raw[raw.count - 1] == 0x0D ? UnsafeRawBufferPointer(rebasing: raw[0..<raw.count - 1]) : raw
        switch state {
        case .statusLine:
            headBytes = raw.count + 1
            return statusLine(l) ? nil : fail()
        case .header:
            headBytes += raw.count + 1
            if headBytes > maxHeadBytes { return fail() }
            if l.isEmpty { return headComplete() }
            fields += 1
            return fields <= maxHeaders && header(l) ? nil : fail()
        case .chunkSize:
            return chunkSize(l) ? nil : fail()
        case .chunkEnd:
            if !l.isEmpty { return fail() }
            state = .chunkSize
            return nil
        default:   // .trailer
            headBytes += raw.count + 1
            if headBytes > maxHeadBytes { return fail() }
            if l.isEmpty { return complete() }
            return fieldName(l) != nil ? nil : fail()
        }
    }

    /// `HTTP/1.x DDD[ reason]`.
    private mutating func statusLine(_ l: UnsafeRawBufferPointer) -> Bool {
        guard l.count >= 12, l[0] == 0x48, l[1] == 0x54, l[2] == 0x54, l[3] == 0x50, l[4] == 0x2F,
              l[5] == 0x31, l[6] == 0x2E, l[7] == 0x30 || l[7] == 0x31, l[8] == 0x20,
              isDigit(l[9]), isDigit(l[10]), isDigit(l[11]), l.count == 12 || l[12] == 0x20 else { return false }
        http11 = l[7] == 0x31
        status = Int(l[9] &- 0x30) * 100 + Int(l[10] &- 0x30) * 10 + Int(l[11] &- 0x30)
        state = .header
        return true
    }

    /// A header line: only the three fields that frame the response are read.
    private mutating func header(_ l: UnsafeRawBufferPointer) -> Bool {
        guard let colon = fieldName(l) else { return false }
        switch colon {
        case 14 where sameName(l, "content-length"):
            let value = fieldValue(l, colon)
            guard !value.isEmpty else { return false }
            var n = 0
            for c in value {
                guard isDigit(c), n <= (Int.max - 9) / 10 else { return false }
                n = n * 10 + Int(c &- 0x30)
            }
            if contentLength >= 0 && contentLength != n { return false }
            contentLength = n
        case 17 where sameName(l, "transfer-encoding"):
            transferEncoding = true
            chunked = lastToken(fieldValue(l, colon), is: "chunked")
        case 10 where sameName(l, "connection"):
            let value = fieldValue(l, colon)
            var t = 0
            while t < value.count {
                var k = t
                while k < value.count && value[k] != 0x2C { k += 1 }
                let token = UnsafeRawBufferPointer(rebasing: value[t..<k])
                if lastToken(token, is: "close") { closeToken = true }
                if lastToken(token, is: "keep-alive") { keepAliveToken = true }
                t = k + 1
            }
        default:
            break
        }
        return true
    }

    /// The head is complete: where does the body end?
    private mutating func headComplete() -> Event? {
        if status >= 100 && status < 200 && status != 101 {   // interim (100 Continue, 103 Early Hints): the final response follows
            resetMessage()
            state = .statusLine
            return nil
        }
        if transferEncoding && contentLength >= 0 { return fail() }
        keepAlive = (http11 ? !closeToken : keepAliveToken && !closeToken) && status != 101
        if isHEAD || status == 101 || status == 204 || status == 304 { return complete() }
        if transferEncoding {
            if chunked {
                state = .chunkSize
                return nil
            }
        } else if contentLength >= 0 {
            if contentLength == 0 { return complete() }
            remaining = contentLength
            state = .body
            return nil
        }
        keepAlive = false
        state = .untilClose
        return nil
    }

    /// `HEX[ ][;extension]`: the next chunk's size; 0 starts the trailers.
    private mutating func chunkSize(_ l: UnsafeRawBufferPointer) -> Bool {
        var n = 0
        var i = 0
        while i < l.count, let d = hexValue(l[i]) {
            guard n <= Int.max >> 4 else { return false }
            n = n << 4 | d
            i += 1
        }
        guard i > 0 else { return false }
        while i < l.count && (l[i] == 0x20 || l[i] == 0x09) { i += 1 }
        guard i == l.count || l[i] == 0x3B else { return false }
        if n == 0 {
            headBytes = 0
            state = .trailer
        } else {
            remaining = n
            state = .chunkData
        }
        return true
    }

    private mutating func complete() -> Event {
        let event = Event.response(status: status, keepAlive: keepAlive)
        state = keepAlive ? .statusLine : .done
        resetMessage()
        return event
    }

    private mutating func fail() -> Event {
        state = .failed
        return .error
    }

    private mutating func resetMessage() {
        closeToken = false
        keepAliveToken = false
        contentLength = -1
        transferEncoding = false
        chunked = false
        keepAlive = true
        fields = 0
    }
}

/// The colon's index in a field line with a non-empty name and no whitespace before the colon.
@inline(__always)
private func fieldName(_ l: UnsafeRawBufferPointer) -> Int? {
    guard let p = l.baseAddress, let c = memchr(p, 0x3A, l.count) else { return nil }
    let i = UnsafeRawPointer(c) - p
    guard i > 0, l[0] != 0x20, l[0] != 0x09, l[i - 1] != 0x20, l[i - 1] != 0x09 else { return nil }
    return i
}

/// A field line's value, without the whitespace around it.
private func fieldValue(_ l: UnsafeRawBufferPointer, _ colon: Int) -> UnsafeRawBufferPointer {
    var v = colon + 1
    var e = l.count
    while v < e && (l[v] == 0x20 || l[v] == 0x09) { v += 1 }
    while e > v && (l[e - 1] == 0x20 || l[e - 1] == 0x09) { e -= 1 }
    return UnsafeRawBufferPointer(rebasing: l[v..<e])
}

@inline(__always)
private func isDigit(_ c: UInt8) -> Bool { c &- 0x30 < 10 }

@inline(__always)
private func hexValue(_ c: UInt8) -> Int? {
    if c &- 0x30 < 10 { return Int(c &- 0x30) }
    let l = c | 0x20
    return l &- 0x61 < 6 ? Int(l &- 0x61) + 10 : nil
}

/// The line's first `name.count` bytes are `name` (lowercase letters and '-'), in any case.
@inline(__always)
private func sameName(_ l: UnsafeRawBufferPointer, _ name: StaticString) -> Bool {
    let n = name.utf8Start
    for i in 0..<name.utf8CodeUnitCount {
        let c = l[i]
        if c != n[i] && !(n[i] >= 0x61 && c | 0x20 == n[i]) { return false }
    }
    return true
}

/// The last comma-separated token of `v` (whitespace around it ignored) is `token`, in any case.
private func lastToken(_ v: UnsafeRawBufferPointer, is token: StaticString) -> Bool {
    var e = v.count
    while e > 0 && (v[e - 1] == 0x20 || v[e - 1] == 0x09) { e -= 1 }
    var s = e
    while s > 0 && v[s - 1] != 0x2C { s -= 1 }
    while s < e && (v[s] == 0x20 || v[s] == 0x09) { s += 1 }
    guard e - s == token.utf8CodeUnitCount else { return false }
    let t = token.utf8Start
    for i in 0..<(e - s) where v[s + i] | 0x20 != t[i] | 0x20 || (t[i] < 0x61 && v[s + i] != t[i]) { return false }
    return true
}
