import CLLHTTP
import Glibc
import RemoraCore

/// Where one header's name and value sit in `HTTP1Parser.head`.
public struct HeaderSpan {
    public var nameOffset: Int32 = 0
    public var nameLength: Int32 = 0
    public var valueOffset: Int32 = 0
    public var valueLength: Int32 = 0
}

public protocol HTTP1ParserDelegate: AnyObject {
    /// The head is complete and readable through the parser. Return true when the message has no
    /// body whatever its headers say (a response to HEAD).
    func parserHeadComplete(_ p: HTTP1Parser) -> Bool
    /// A piece of the body, de-chunked. Points into the caller's input: use or copy it now.
    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer)
    /// The message (body included) is complete.
    func parserMessageComplete(_ p: HTTP1Parser)
}

/// Why a message was refused; `status` is what a server answers (400, 431, …).
public struct HTTPParseError: Error, CustomStringConvertible {
    public var status: Int
    public var reason: String
    public var description: String { "\(status) \(reason)" }
}

/// A strict HTTP/1.x parser for one connection: llhttp (Node's parser, from Debian's node-llhttp)
/// plus the head storage and limits a proxy needs. The head (request target or reason phrase, then
/// every header name and value) is copied into one reusable buffer as it streams in, indexed by
/// `HeaderSpan`s, so nothing is allocated per message once the buffer has grown to the usual size.
public final class HTTP1Parser {
    public enum Kind { case request, response }
    public enum Result: Equatable {
        case ok
        /// Stopped after a complete message (pipelining): `consumed` bytes of the input were used.
        case paused(consumed: Int)
        case error
    }

    let ll: UnsafeMutablePointer<llhttp_t>
    public let kind: Kind
    /// Not retained. Kept as a raw object pointer and its type, so that the callbacks reach it as
    /// a guaranteed reference (no retain/release per callback).
    public var delegate: (any HTTP1ParserDelegate)? {
        get { delegateObject.flatMap { p in delegateType.map { $0.guaranteed(p) { $0 } } } }
        set {
            delegateObject = newValue.map { Unmanaged.passUnretained($0 as AnyObject).toOpaque() }
            delegateType = newValue.map { type(of: $0) }
        }
    }
    @usableFromInline var delegateObject: UnsafeMutableRawPointer?
    @usableFromInline var delegateType: (any HTTP1ParserDelegate.Type)?

    /// Sets the delegate (not retained) for a known type: no existential built at run time.
    @inlinable @inline(__always)
    public func attach<D: HTTP1ParserDelegate>(_ d: D) {
        delegateObject = Unmanaged.passUnretained(d).toOpaque()
        delegateType = D.self
    }

    /// Clears the delegate.
    @inlinable @inline(__always)
    public func detach() { delegateObject = nil }

    /// The next parser in an owner's free list (+1 held by the list; `ParserFreeList`).
    @usableFromInline var nextFree: Unmanaged<HTTP1Parser>?

    @inline(__always)
    func withDelegate<R>(_ none: R, _ body: (any HTTP1ParserDelegate) -> R) -> R {
        guard let p = delegateObject, let t = delegateType else { return none }
        return t.guaranteed(p, body)
    }

    /// Request target (or reason phrase), then header names and values, back to back.
    public private(set) var head = ByteBuffer()
    /// The `HeaderSpan`s, back to back.
    var spans = ByteBuffer()
    public private(set) var headerCount = 0
    /// When set, head storage comes from this pool at a message's start and goes back right after
    /// `parserHeadComplete`: the head is then readable only inside that call, and a connection
    /// between messages owns no head storage.
    public var pool: BufferPool? {
        get { poolRef?.takeUnretainedValue() }
        set { poolRef = newValue.map { Unmanaged.passUnretained($0) } }
    }
    /// Not retained (the owner keeps the pool alive); reached as a guaranteed reference.
    var poolRef: Unmanaged<BufferPool>?
    /// Length of the request target / reason phrase at the start of `head`.
    public private(set) var startLineLength = 0
    /// Largest head accepted (bytes of target + headers as sent); beyond it the error is 431.
    public var maxHeadBytes: Int
    /// At most this many headers; beyond it the error is 431.
    public let maxHeaders: Int
    /// Pause after each complete message, so that a pipelined next message waits its turn.
    public var pauseAfterMessage: Bool
    public private(set) var error: HTTPParseError?
    /// True between the first byte of a message and its head's end.
    public private(set) var inHead = false
    /// True from the head's end to the message's end (body and trailers).
    public private(set) var inBody = false
    /// Index of the first `Expect` header, or -1.
    public private(set) var expectIndex = -1
    /// Index of the first `Host` header, or -1; `hostCount` how many there are.
    public private(set) var hostIndex = -1
    public private(set) var hostCount = 0
    /// Index of the first `Transfer-Encoding` header, or -1.
    public private(set) var transferEncodingIndex = -1
    /// The message asks for a protocol switch (`Connection: upgrade` and `Upgrade` in a request;
    /// a response: `101` with both), as llhttp saw it; CONNECT not included. The message itself is
    /// parsed as a plain message whatever this says: the owner decides what follows it.
    public private(set) var wantsUpgrade = false
    /// Trailer fields of a chunked message (complete at `parserMessageComplete`).
    public private(set) var trailers = HeaderBlock()
    var trailerName = ByteBuffer()
    var trailerValue = ByteBuffer()
    var fieldState: UInt8 = 0     // 0 none, 1 in a name, 2 in a value
    var headBytes = 0              // as sent on the wire, roughly: target + names + values + 4 per header
    /// Request headers whose names contain `_`: forwarded, dropped (default) or refused with 400.
    public var underscoreAction = HeadersWithUnderscores.drop
    public static let underscoreRefusal = "header name with an underscore"
    /// Headers dropped by `underscoreAction` in the current message.
    public private(set) var droppedUnderscoreHeaders = 0
    /// `underscoreAction` applies to this message (a request, and not `allow`).
    var checkUnderscores = false
    /// The name of the field being read has a `_`.
    var fieldUnderscore = false
    /// Where the next piece of the current header value must start: just past the previous piece in
    /// the same input, or at the start of the next `feed`'s input when that piece ended the last one
    /// (`valueAtEnd`); nil when no piece may follow. A piece that starts elsewhere had a line break
    /// before it (obs-fold). Reset at every `feed`, so a pointer into an earlier input never matches.
    var valueEnd: UnsafePointer<CChar>?
    var valueAtEnd = false

    public init(kind: Kind, maxHeadBytes: Int = 60 * 1024, maxHeaders: Int = 100, pauseAfterMessage: Bool = true) {
        self.kind = kind
        self.maxHeadBytes = maxHeadBytes
        self.maxHeaders = maxHeaders
        self.pauseAfterMessage = pauseAfterMessage
        ll = .allocate(capacity: 1)
        llhttp_init(ll, kind == .request ? HTTP_REQUEST : HTTP_RESPONSE,
                    kind == .request ? requestSettings : responseSettings)
        ll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        giveBack()
        clearTrailers()
        head.release()
        spans.release()
        ll.deallocate()
    }

    @inline(__always)
    var headers: UnsafeMutablePointer<HeaderSpan> { spans.base!.assumingMemoryBound(to: HeaderSpan.self) }

    /// Returns head storage to the pool (when pooled).
    func giveBack() {
        poolRef?._withUnsafeGuaranteedRef { pool in
            pool.give(&head)
            pool.give(&spans)
        }
    }

    /// Parses `data`. Delegate calls happen inside.
    public func feed(_ data: UnsafeRawBufferPointer) -> Result {
        guard let base = data.baseAddress else { return .ok }
        let start = base.assumingMemoryBound(to: CChar.self)
        valueEnd = valueAtEnd ? UnsafePointer(start) : nil
        let rc = llhttp_execute(ll, start, data.count)
        valueAtEnd = fieldState == 2 && valueEnd == UnsafePointer(start + data.count)
        switch rc {
        case HPE_OK: return .ok
        case HPE_PAUSED:
            let pos = llhttp_get_error_pos(ll)!
            return .paused(consumed: start.distance(to: pos))
        default:
            recordError(rc)
            return .error
        }
    }

    /// The peer closed: completes a message delimited by the connection's end, or reports that
    /// the message was cut short.
    public func finish() -> Result {
        let rc = llhttp_finish(ll)
        if rc == HPE_OK { return .ok }
        if rc == HPE_PAUSED { return .paused(consumed: 0) }
        recordError(rc)
        return .error
    }

    /// Continues after `.paused`.
    public func resume() { llhttp_resume(ll) }

    /// Back to the initial state (a new connection).
    public func reset() {
        llhttp_reset(ll)
        if poolRef != nil { giveBack() } else { head.clear(keepingAtMost: 4096) }
        headerCount = 0
        inHead = false
        inBody = false
        valueAtEnd = false
        error = nil
    }

    /// Gives back head storage beyond the usual size (an idle connection holds little).
    public func trim() {
        if inHead { return }
        if poolRef != nil { giveBack() } else { head.clear(keepingAtMost: 4096) }
    }

    func recordError(_ rc: llhttp_errno_t) {
        if error != nil { return }
        let reason = llhttp_get_error_reason(ll).map { String(cString: $0) } ?? String(cString: llhttp_errno_name(rc))
        error = HTTPParseError(status: 400, reason: reason)
    }

    // MARK: the parsed message

    public var method: UInt8 { ll.pointee.method }
    public var isHEAD: Bool { ll.pointee.method == UInt8(HTTP_HEAD.rawValue) }
    public var isOPTIONS: Bool { ll.pointee.method == UInt8(HTTP_OPTIONS.rawValue) }
    public var isCONNECT: Bool { ll.pointee.method == UInt8(HTTP_CONNECT.rawValue) }
    /// The method as text ("GET"); a static C string, nothing allocated.
    public var methodName: UnsafeRawBufferPointer {
        let p = llhttp_method_name(llhttp_method_t(UInt32(ll.pointee.method)))!
        return UnsafeRawBufferPointer(start: p, count: strlen(p))
    }
    public var statusCode: Int { Int(ll.pointee.status_code) }
    public var versionMajor: Int { Int(ll.pointee.http_major) }
    public var versionMinor: Int { Int(ll.pointee.http_minor) }
    /// Request target, or the reason phrase of a response.
    public var startLine: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: head.base, count: startLineLength) }
    public var isChunked: Bool { ll.pointee.flags & UInt16(F_CHUNKED.rawValue) != 0 }
    public var hasContentLength: Bool { ll.pointee.flags & UInt16(F_CONTENT_LENGTH.rawValue) != 0 }
    /// Remaining body bytes of a Content-Length message (decreases as the body is parsed).
    public var contentLength: UInt64 { ll.pointee.content_length }
    /// Whether the connection may carry another message after this one (HTTP version + Connection).
    public var shouldKeepAlive: Bool { llhttp_should_keep_alive(ll) != 0 }
    /// Whether the message's body, as framed, has any bytes to come (chunked or Content-Length > 0).
    public var hasBody: Bool { isChunked || (hasContentLength && ll.pointee.content_length > 0) }

    @inline(__always)
    public func name(_ i: Int) -> UnsafeRawBufferPointer {
        let s = headers[i]
        return UnsafeRawBufferPointer(start: head.base! + Int(s.nameOffset), count: Int(s.nameLength))
    }

    @inline(__always)
    public func value(_ i: Int) -> UnsafeRawBufferPointer {
        let s = headers[i]
        if s.valueLength == 0 { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: head.base! + Int(s.valueOffset), count: Int(s.valueLength))
    }

    // MARK: from the callbacks

    func messageBegin() {
        if let poolRef {
            if head.base == nil { head = poolRef._withUnsafeGuaranteedRef { $0.take() } }
            if spans.base == nil { spans = poolRef._withUnsafeGuaranteedRef { $0.take() } }
        }
        head.clear(keepingAtMost: 16 * 1024)
        headerCount = 0
        startLineLength = 0
        headBytes = 0
        fieldState = 0
        expectIndex = -1
        hostIndex = -1
        hostCount = 0
        transferEncodingIndex = -1
        droppedUnderscoreHeaders = 0
        checkUnderscores = kind == .request && underscoreAction != .allow
        fieldUnderscore = false
        inHead = true
        inBody = false
    }

    /// Appends head bytes, enforcing the size limit. Returns false when over.
    @inline(__always)
    func appendHead(_ p: UnsafePointer<CChar>, _ n: Int) -> Bool {
        headBytes += n
        if headBytes > maxHeadBytes { error = HTTPParseError(status: 431, reason: "request header fields too large"); return false }
        head.append(UnsafeRawPointer(p), n)
        return true
    }

    func startLineData(_ p: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        guard appendHead(p, n) else { return -1 }
        startLineLength += n
        return 0
    }

    /// A trailer field (after a chunked body): collected into `trailers`, within the head's size limit.
    func trailerData(_ p: UnsafePointer<CChar>, _ n: Int, value: Bool) -> Int32 {
        if value && !valuePieceContinues(p, n) { return -1 }
        if !value && fieldState == 2 { commitTrailer() }
        fieldState = value ? 2 : 1
        headBytes += n
        if headBytes > maxHeadBytes { error = HTTPParseError(status: 431, reason: "trailer fields too large"); return -1 }
        if value { trailerValue.append(UnsafeRawPointer(p), n) } else { trailerName.append(UnsafeRawPointer(p), n) }
        return 0
    }

    func commitTrailer() {
        if trailerName.count == 0 && trailerValue.count > 0 {   // ": v" among the trailers: dropped
            trailerValue.clear()
            return
        }
        if trailerName.count > 0 {
            poolRef?._withUnsafeGuaranteedRef { trailers.prepareIfEmpty($0) }
            trailers.append(trailerName.bytes, trailerValue.bytes)
        }
        trailerName.clear()
        trailerValue.clear()
    }

    /// Forgets the trailers (after they were passed on).
    public func clearTrailers() {
        if let poolRef { poolRef._withUnsafeGuaranteedRef { trailers.release(to: $0) } } else { trailers.release() }
        trailerName.release()
        trailerValue.release()
    }

    /// Drops trailing spaces and tabs of the last value (RFC 9112 §5.1: optional whitespace
    /// around a field value is not part of it; llhttp strips only the leading one).
    @inline(__always)
    func trimLastValue() {
        guard fieldState == 2, headerCount > 0, let b = head.base else { return }
        let i = headerCount - 1
        while headers[i].valueLength > 0 {
            let c = b.load(fromByteOffset: Int(headers[i].valueOffset + headers[i].valueLength - 1), as: UInt8.self)
            guard c == 0x20 || c == 0x09 else { break }
            headers[i].valueLength -= 1
        }
    }

    func headerField(_ p: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        if inBody { return trailerData(p, n, value: false) }
        trimLastValue()
        if fieldState != 1 {
            if headerCount > 0 && !endHeaderField() { return -1 }
            if headerCount == maxHeaders { error = HTTPParseError(status: 431, reason: "too many header fields"); return -1 }
            spans.reserve((headerCount + 1) * MemoryLayout<HeaderSpan>.stride)
            headers[headerCount] = HeaderSpan(nameOffset: Int32(head.count), nameLength: 0, valueOffset: 0, valueLength: 0)
            headerCount += 1
            headBytes += 4
            fieldState = 1
        }
        guard appendHead(p, n) else { return -1 }
        headers[headerCount - 1].nameLength += Int32(n)
        if checkUnderscores && !fieldUnderscore { fieldUnderscore = UnsafeRawBufferPointer(start: p, count: n).contains(byte: 0x5F) }
        return 0
    }

    /// The last field is complete: refuses an empty name, and applies `underscoreAction` to a name
    /// with `_` (the field is dropped, or the message refused). False on a refusal (`error` says why).
    @inline(__always)
    func endHeaderField() -> Bool {
        let i = headerCount &- 1
        if headers[i].nameLength == 0 {
            error = HTTPParseError(status: 400, reason: "empty header name")
            return false
        }
        if fieldUnderscore {
            fieldUnderscore = false
            if underscoreAction == .reject {
                error = HTTPParseError(status: 400, reason: HTTP1Parser.underscoreRefusal)
                return false
            }
            droppedUnderscoreHeaders &+= 1
            headerCount = i
        }
        return true
    }

    /// Notes where a value piece ends; false (and a 400) when a piece of the same value starts
    /// elsewhere: llhttp joins an obsolete line folding (RFC 9112 §5.2) into the value, and a
    /// proxy that forwarded `Host: x` + ` Transfer-Encoding: chunked` as one field would hand
    /// the next hop a header the proxy never saw. Refused, as RFC 9112 allows.
    @inline(__always)
    func valuePieceContinues(_ p: UnsafePointer<CChar>, _ n: Int) -> Bool {
        if fieldState == 2 && p != valueEnd {
            error = HTTPParseError(status: 400, reason: "obsolete line folding in a header value")
            return false
        }
        valueEnd = p + n
        return true
    }

    func headerValue(_ p: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        if inBody { return trailerData(p, n, value: true) }
        if !valuePieceContinues(p, n) { return -1 }
        if fieldState != 2 {
            headers[headerCount - 1].valueOffset = Int32(head.count)
            fieldState = 2
        }
        guard appendHead(p, n) else { return -1 }
        headers[headerCount - 1].valueLength += Int32(n)
        return 0
    }

    /// Ends the last field, then notes the headers the proxy acts on, once per head. False on a
    /// refusal (`error` says why).
    func classifyHeaders() -> Bool {
        trimLastValue()
        if headerCount > 0 && !endHeaderField() { return false }
        for i in 0..<headerCount {
            let n = name(i)
            switch n.count {
            case 4: if n.equalsLowercase("host") { if hostIndex < 0 { hostIndex = i }; hostCount += 1 }
            case 6: if expectIndex < 0 && n.equalsLowercase("expect") { expectIndex = i }
            case 17: if transferEncodingIndex < 0 && n.equalsLowercase("transfer-encoding") { transferEncodingIndex = i }
            default: break
            }
        }
        return true
    }

    func headersComplete() -> Int32 {
        inHead = false
        if inBody { return 0 }   // the end of the trailer section
        if ll.pointee.http_major != 1 {
            error = HTTPParseError(status: 400, reason: "unsupported HTTP version")
            return -1
        }
        guard classifyHeaders() else { return -1 }
        inBody = true
        // Upgrade and Connection: upgrade are hop-by-hop: the message is parsed on as a plain one;
        // `wantsUpgrade` tells the owner, which decides (WebSocket) what the bytes after it are.
        wantsUpgrade = ll.pointee.upgrade != 0 && !isCONNECT
        if wantsUpgrade { ll.pointee.upgrade = 0 }
        guard delegateObject != nil else { return 0 }
        let skipBody = withDelegate(false) { $0.parserHeadComplete(self) }
        if poolRef != nil { giveBack() }
        return skipBody ? 1 : 0
    }

    func body(_ p: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        withDelegate(()) { $0.parserBody(self, UnsafeRawBufferPointer(start: p, count: n)) }
        return 0
    }

    func messageComplete() -> Int32 {
        if fieldState == 2 || trailerName.count > 0 { commitTrailer() }
        fieldState = 0
        inBody = false
        withDelegate(()) { $0.parserMessageComplete(self) }
        return pauseAfterMessage ? Int32(HPE_PAUSED.rawValue) : 0
    }
}

/// Parsers between messages, for reuse by any connection of one owner (a worker): an intrusive
/// list of +1 references, so taking and giving back cost no reference counting. A parser given
/// back must be between two messages (a keep-alive request complete and resumed) or new.
public struct ParserFreeList {
    @usableFromInline var head: Unmanaged<HTTP1Parser>?
    /// Parsers in the list.
    public var count: Int { kept }
    @usableFromInline var kept = 0
    /// More given back are freed.
    public let maxKept: Int
    /// Another parser given back would be kept, not freed.
    @inlinable public var hasRoom: Bool { kept < maxKept }

    public init(maxKept: Int) { self.maxKept = maxKept }

    /// A kept parser (+1, owned by the caller), or nil.
    @inlinable @inline(__always)
    public mutating func take() -> Unmanaged<HTTP1Parser>? {
        guard let p = head else { return nil }
        head = p._withUnsafeGuaranteedRef { $0.nextFree }
        kept &-= 1
        return p
    }

    /// Keeps `p` (+1, given up by the caller), or frees it when `maxKept` are kept.
    @inlinable @inline(__always)
    public mutating func give(_ p: Unmanaged<HTTP1Parser>) {
        if kept >= maxKept { p.release(); return }
        p._withUnsafeGuaranteedRef { $0.nextFree = head }
        head = p
        kept &+= 1
    }

    /// Frees every kept parser.
    public mutating func removeAll() {
        while let p = take() { p.release() }
    }
}

extension HTTP1ParserDelegate {
    /// `body` with the object at `p` (of this type) as a guaranteed reference: no retain.
    @inline(__always)
    static func guaranteed<R>(_ p: UnsafeMutableRawPointer, _ body: (any HTTP1ParserDelegate) -> R) -> R {
        Unmanaged<Self>.fromOpaque(p)._withUnsafeGuaranteedRef { body($0) }
    }
}
