import CH2Mem
import CNGHTTP2
import RemoraCore

/// What an HTTP/2 connection reports. Calls come from inside `receive` (frames read) or `send`
/// (body bytes wanted); a delegate records what to do and must not call back into the session
/// from them — the session's owner acts after `receive` / `send` return.
public protocol HTTP2SessionDelegate: AnyObject {
    /// A header block starts on `stream` (server: a request; client: a response or trailers).
    func h2BeginHeaders(_ s: HTTP2Session, stream: Int32)
    /// One field of the block (names are lowercase; pseudo-headers first). Return false to refuse
    /// the stream (it is reset).
    func h2Header(_ s: HTTP2Session, stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool
    /// The block is complete. `endStream`: nothing follows on this stream from the peer.
    func h2HeadersComplete(_ s: HTTP2Session, stream: Int32, endStream: Bool)
    /// Body bytes (flow-control credit is given back only by `consume`).
    func h2Data(_ s: HTTP2Session, stream: Int32, data: UnsafeRawBufferPointer)
    /// END_STREAM arrived on a DATA frame.
    func h2DataEnd(_ s: HTTP2Session, stream: Int32)
    /// The stream is gone; `errorCode` 0 when it ended cleanly, else the RST_STREAM code.
    func h2StreamClosed(_ s: HTTP2Session, stream: Int32, errorCode: UInt32)
    /// The peer sent GOAWAY: streams above `lastStreamID` were never processed.
    func h2GoAway(_ s: HTTP2Session, lastStreamID: Int32, errorCode: UInt32)
    /// The peer's SETTINGS arrived (or changed).
    func h2Settings(_ s: HTTP2Session)
    /// Body bytes to send on `stream`: copy at most `buf.count` into `buf`. Return nil when nothing
    /// is available yet (the stream waits for `resumeData`), else the count and whether the body
    /// ended (`trailers`: the body ended and trailer fields follow; the owner submits them after `send`).
    func h2ReadBody(_ s: HTTP2Session, stream: Int32, into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)?
}

extension HTTP2SessionDelegate {
    /// `body` with the object at `p` (of this type) as a guaranteed reference: no retain.
    @inline(__always)
    static func guaranteed<R>(_ p: UnsafeMutableRawPointer, _ body: (any HTTP2SessionDelegate) -> R) -> R {
        Unmanaged<Self>.fromOpaque(p)._withUnsafeGuaranteedRef { body($0) }
    }
}

/// One HTTP/2 connection's protocol state (nghttp2), server or client side. Reading
/// (`receive`, nghttp2_session_mem_recv) and writing (`send`, nghttp2_session_mem_send into the
/// connection's write path) are separate steps; flow-control credit is returned explicitly
/// (`consume`) once received bytes have been passed on, so a slow reader throttles a fast writer
/// through HTTP/2 windows instead of through memory.
public final class HTTP2Session {
    public enum Role { case server, client }

    let session: OpaquePointer
    public let role: Role
    /// Not retained. Kept as a raw object pointer and its type so that the callbacks reach it as a
    /// guaranteed reference (no retain/release per frame or header).
    public var delegate: (any HTTP2SessionDelegate)? {
        get { delegateObject.flatMap { p in delegateType.map { $0.guaranteed(p) { $0 } } } }
        set {
            delegateObject = newValue.map { Unmanaged.passUnretained($0 as AnyObject).toOpaque() }
            delegateType = newValue.map { type(of: $0) }
        }
    }
    var delegateObject: UnsafeMutableRawPointer?
    var delegateType: (any HTTP2SessionDelegate.Type)?

    /// Calls `body` with the delegate (`none` when there is none).
    @inline(__always)
    func withDelegate<R>(_ none: R, _ body: (any HTTP2SessionDelegate) -> R) -> R {
        guard let p = delegateObject, let t = delegateType else { return none }
        return t.guaranteed(p, body)
    }
    /// Streams whose body ended with trailers to submit (collected during `send`).
    public var trailersDue: [Int32] = []
    /// Lowercased names for outgoing header lists (nghttp2 copies what it is given).
    var scratch = ByteBuffer()
    /// Empty DATA frames without END_STREAM in a row (CVE-2019-9518 style floods).
    var emptyFrames = 0
    /// Names of per-request fields (request id, trace context) indexed on this session
    /// (`nameFlags`), one bit per name; cleared every 256 header lists that have such fields
    /// (`indexedLists`).
    var indexedNames: UInt32 = 0
    var indexedLists: UInt32 = 0
    /// The peer did something abusive; the session is being torn down (GOAWAY queued).
    public private(set) var abused = false
    /// The header block being received goes straight into this block (`collectHeaders`), not
    /// through `h2Header`, while it is on `headerStream`; nil: every field goes to `h2Header`.
    var headerTarget: UnsafeMutablePointer<HeaderBlock>?
    var headerStream: Int32 = 0
    /// The list size beyond which the stream is refused (as a false from `h2Header`).
    var headerLimit = 0
    /// Names with `_` still go to `h2Header` (the owner's policy decides about them).
    var underscoresToDelegate = false

    public init(role: Role, settings: HTTP2Settings) {
        self.role = role
        var opt: OpaquePointer?
        nghttp2_option_new(&opt)
        nghttp2_option_set_no_auto_window_update(opt, 1)     // credit only when bytes were passed on
        nghttp2_option_set_max_outbound_ack(opt, 1000)       // PING / SETTINGS floods
        nghttp2_option_set_max_settings(opt, 64)             // SETTINGS with too many entries
        nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 100)   // rapid reset (CVE-2023-44487)
        nghttp2_option_set_max_continuations(opt, 16)        // CONTINUATION floods (CVE-2024-28182)
        // gRPC metadata may end in a space (PROTOCOL-HTTP2.md); grpc peers accept it, so must we.
        nghttp2_option_set_no_rfc9113_leading_and_trailing_ws_validation(opt, 1)
        if role == .client { nghttp2_option_set_peer_max_concurrent_streams(opt, 100) }
        var s: OpaquePointer?
        if role == .server {
            nghttp2_session_server_new3(&s, h2Callbacks, nil, opt, remora_h2_mem().assumingMemoryBound(to: nghttp2_mem.self))
        } else {
            nghttp2_session_client_new3(&s, h2Callbacks, nil, opt, remora_h2_mem().assumingMemoryBound(to: nghttp2_mem.self))
        }
        nghttp2_option_del(opt)
        session = s!
        nghttp2_session_set_user_data(session, Unmanaged.passUnretained(self).toOpaque())
        var iv: [nghttp2_settings_entry] = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue),
                                   value: UInt32(settings.initialStreamWindow)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue),
                                   value: UInt32(settings.maxHeaderListSize)),
        ]
        if role == .server {
            iv.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue),
                                             value: UInt32(settings.maxConcurrentStreams)))
            // RFC 8441: extended CONNECT (`:protocol websocket`) is accepted; whether a route takes
            // it is the router's decision (Exchange+Upgrade.swift).
            iv.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL.rawValue), value: 1))
        } else {
            iv.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0))
        }
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), iv, iv.count)
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Int32(settings.connectionWindow))
    }

    deinit {
        nghttp2_session_del(session)
        scratch.release()
    }

    /// Frees Remora's own buffers of an idle session (the name scratch, the trailers list);
    /// nghttp2's state stays. They grow again on the next use.
    public func releaseIdleMemory() {
        scratch.release()
        trailersDue = []
    }

    /// From `h2BeginHeaders` only: the fields of the block starting on `stream` are appended to
    /// `block` directly (one call less per field, and no stream lookup), while the block's list size
    /// stays within `limit`: beyond it the stream is refused, as when `h2Header` returns false.
    /// `underscores`: names with `_` (pseudo-fields aside) go to `h2Header` instead. `block` must stay
    /// valid until the block ends or the stream closes (the session forgets it then by itself).
    @inline(__always)
    public func collectHeaders(stream: Int32, into block: UnsafeMutablePointer<HeaderBlock>, limit: Int, underscores: Bool) {
        headerTarget = block
        headerStream = stream
        headerLimit = limit
        underscoresToDelegate = underscores
    }

    /// The header callback's fast path (`collectHeaders`): nil when the field goes to `h2Header`,
    /// else whether the stream may go on.
    @inline(__always)
    func collect(stream: Int32, _ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Bool? {
        guard let t = headerTarget, headerStream == stream else { return nil }
        if underscoresToDelegate && name.first != 0x3A && name.contains(byte: 0x5F) { return nil }
        t.pointee.append(name, value)
        return t.pointee.listSize <= headerLimit
    }

    // MARK: reading and writing

    /// Processes bytes from the peer. False: the connection must be closed; a GOAWAY saying why is
    /// queued (call `send` first).
    public func receive(_ data: UnsafeRawBufferPointer) -> Bool {
        guard let p = data.baseAddress else { return true }
        let rc = nghttp2_session_mem_recv(session, p.assumingMemoryBound(to: UInt8.self), data.count)
        if rc < 0 && !abused {
            // Floods (PING/SETTINGS acks, CONTINUATION) are a matter of calm; anything else a protocol error.
            let calm = rc == Int(NGHTTP2_ERR_FLOODED.rawValue) || rc == Int(NGHTTP2_ERR_TOO_MANY_CONTINUATIONS.rawValue)
            terminate(code: calm ? NGHTTP2_ENHANCE_YOUR_CALM.rawValue : NGHTTP2_PROTOCOL_ERROR.rawValue)
        }
        return rc >= 0 && !abused
    }

    /// Hands pending frames to `write` (which copies or sends them at once) until nothing is left or
    /// `until` says to stop (the socket is full). False: `write` failed or the session hit a fatal error.
    public func send(until full: () -> Bool = { false }, _ write: (UnsafeRawBufferPointer) -> Bool) -> Bool {
        while !full() {
            var p: UnsafePointer<UInt8>?
            let n = nghttp2_session_mem_send(session, &p)
            if n < 0 { return false }
            if n == 0 { return true }
            if !write(UnsafeRawBufferPointer(start: p, count: n)) { return false }
        }
        return true
    }

    /// `send`, then the trailers of the streams whose body ended during it (`trailersDue`): `submit`
    /// hands each stream's to `submitTrailers`, and those are sent too, until none is due.
    public func send(until full: () -> Bool, _ write: (UnsafeRawBufferPointer) -> Bool,
                     trailers submit: (Int32) -> Void) -> Bool {
        var ok = send(until: full, write)
        while ok && !trailersDue.isEmpty {
            // By index, then emptied in place: a copy of the list would make `removeAll` allocate anew
            // (`submitTrailers` does not add to it; only `send`'s data source reads do).
            for i in 0..<trailersDue.count { submit(trailersDue[i]) }
            trailersDue.removeAll(keepingCapacity: true)
            ok = send(until: full, write)
        }
        return ok
    }

    public var wantsRead: Bool { nghttp2_session_want_read(session) != 0 }
    public var wantsWrite: Bool { nghttp2_session_want_write(session) != 0 }

    // MARK: submitting (never from inside a delegate call)

    /// Builds an nghttp2 header list: up to four pseudo-headers, then `headers`. Unless `clean`
    /// (the caller knows the names are lowercase and no hop-by-hop field or Host is among them),
    /// hop-by-hop fields are dropped (and Host when `dropHost`: `:authority` replaces it) and names
    /// are lowercased into `scratch`. nghttp2 copies names and values (pseudo-header names are
    /// literals: not copied).
    /// `addedFields`: the list has fields the proxy added (request id, trace context), whose names are
    /// indexed once per session (`nameFlags`).
    @inline(__always)
    func withNV<R>(_ p0: StaticString?, _ v0: UnsafeRawBufferPointer, _ p1: StaticString?, _ v1: UnsafeRawBufferPointer,
                   _ p2: StaticString?, _ v2: UnsafeRawBufferPointer, _ p3: StaticString?, _ v3: UnsafeRawBufferPointer,
                   headers h: UnsafeBufferPointer<HeaderRef>, dropHost: Bool, clean: Bool, addedFields: Bool = false,
                   _ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
        let hop = clean ? HopFilter.none : HopFilter(h, keepTETrailers: true)
        if !clean {
            scratch.count = 0
            var nameBytes = 0
            for f in h { nameBytes += f.name.count }
            scratch.reserve(nameBytes)
        }
        return withUnsafeTemporaryAllocation(of: nghttp2_nv.self, capacity: h.count + 4) { nv in
            var n = 0
            @inline(__always) func add(_ name: UnsafeRawPointer, _ nl: Int, _ value: UnsafeRawBufferPointer, _ f: UInt32) {
                nv[n] = nghttp2_nv(name: UnsafeMutablePointer(mutating: name.assumingMemoryBound(to: UInt8.self)),
                                   value: UnsafeMutablePointer(mutating: (value.baseAddress ?? name).assumingMemoryBound(to: UInt8.self)),
                                   namelen: nl, valuelen: value.count, flags: UInt8(f))
                n += 1
            }
            let literal = NGHTTP2_NV_FLAG_NO_COPY_NAME.rawValue
            if let p0 { add(p0.utf8Start, p0.utf8CodeUnitCount, v0, literal) }
            if let p1 { add(p1.utf8Start, p1.utf8CodeUnitCount, v1, literal) }
            if let p2 { add(p2.utf8Start, p2.utf8CodeUnitCount, v2, literal) }
            if let p3 { add(p3.utf8Start, p3.utf8CodeUnitCount, v3, literal) }
            if addedFields {
                indexedLists &+= 1
                if indexedLists & 255 == 0 { indexedNames = 0 }
            }
            for i in h.indices {
                let name = h[i].name
                if !clean {
                    if hop.isHopByHop(h, i) { continue }
                    if dropHost && name.count == 4 && name.equalsLowercase("host") { continue }
                }
                // A request id or trace field: its literal name, neither copied nor lowercased by nghttp2.
                // (Value and name lengths first: other fields pay two compares.)
                if h[i].value.count >= 16 && (UInt(bitPattern: name.count &- 11) < 2 || name.count == 17 || name.count == 2),
                   let literal = HTTP2Session.perRequestName(h[i]) {
                    add(literal.utf8Start, literal.utf8CodeUnitCount, h[i].value, nameFlags(literal, addedFields))
                    continue
                }
                if clean {
                    add(name.baseAddress!, name.count, h[i].value, HTTP2Session.indexFlag(h[i]))
                    continue
                }
                let start = scratch.count
                scratch.append(name)
                let b = (scratch.base! + start).assumingMemoryBound(to: UInt8.self)
                for k in 0..<name.count where b[k] &- 0x41 < 26 { b[k] |= 0x20 }
                add(scratch.base! + start, name.count, h[i].value, HTTP2Session.indexFlag(h[i]))
            }
            return body(UnsafePointer(nv.baseAddress!), n)
        }
    }

    /// A request id or a trace context (traceparent, B3 ids) is new on every request: its value is kept
    /// out of the HPACK dynamic table (NO_INDEX), where it would only push useful entries out and cost a
    /// table search and an insert per request (+26 % instructions per request on h2c with tracing on).
    /// The known names are `perRequestName`'s; this is the rest: another `x-b3-…` field with a long
    /// value (a client's) stays out of the table too. Lengths first: other fields pay two compares.
    @inline(__always) static func indexFlag(_ f: HeaderRef) -> UInt32 {
        let n = f.name.count
        if n >= 11 && n <= 17 && f.value.count >= 16
            && f.name[0] | 0x20 == 0x78 && f.name[1] == 0x2D && f.name[2] | 0x20 == 0x62 && f.name[3] == 0x33 {
            return NGHTTP2_NV_FLAG_NO_INDEX.rawValue
        }
        return NGHTTP2_NV_FLAG_NONE.rawValue
    }

    /// The name of a per-request field (request id, traceparent, B3 ids, with a value of 16 bytes or
    /// more; traceparent exactly 55) whose value stays out of the table, as a literal (nil for other
    /// fields): nghttp2 takes a literal name as it is (NO_COPY_NAME: it lives as long as the process),
    /// instead of copying and lowercasing it on every request. Lengths first: other fields pay a switch.
    @inline(__always) static func perRequestName(_ f: HeaderRef) -> StaticString? {
        let v = f.value.count
        guard v >= 16, let p = f.name.baseAddress else { return nil }
        switch f.name.count {
        case 11:
            if v == 55 && same(p, 11, "traceparent") { return "traceparent" }
            return same(p, 11, "x-b3-spanid") ? "x-b3-spanid" : nil
        case 12:
            if same(p, 12, "x-request-id") { return "x-request-id" }
            return same(p, 12, "x-b3-traceid") ? "x-b3-traceid" : nil
        case 17: return same(p, 17, "x-b3-parentspanid") ? "x-b3-parentspanid" : nil
        case 2: return f.name.equalsLowercase("b3") ? "b3" : nil
        default: return nil
        }
    }

    /// The `n` bytes (8 ... 24) at `p` equal literal `s` (lowercase letters, digits and '-') in any
    /// case: as `equalsLowercase`, by 8-byte words (the last one overlapping) instead of bytes.
    @inline(__always) static func same(_ p: UnsafeRawPointer, _ n: Int, _ s: StaticString) -> Bool {
        let q = UnsafeRawPointer(s.utf8Start), m: UInt64 = 0x2020_2020_2020_2020
        @inline(__always) func w(_ at: Int) -> Bool {
            p.loadUnaligned(fromByteOffset: at, as: UInt64.self) | m == q.loadUnaligned(fromByteOffset: at, as: UInt64.self)
        }
        return w(0) && (n <= 16 || w(8)) && w(n &- 8)
    }

    /// The flags of per-request field `name` (a `perRequestName` literal): its value out of the table
    /// (NO_INDEX), its name a literal. A *name* is worth a table entry, though, since a NO_INDEX field
    /// whose name is in the table refers to it by index instead of Huffman-coding the name again
    /// (~500 instructions per request for traceparent and x-request-id): in a list with the proxy's own
    /// fields (`added`), the first field of each such name on a session is indexed (a bit per name in
    /// `indexedNames`: its length, + 16 for B3's `x-b3-…`), and again every 256 such lists
    /// (`indexedLists`), in case later fields pushed the entry out.
    @inline(__always) func nameFlags(_ name: StaticString, _ added: Bool) -> UInt32 {
        let noIndex = NGHTTP2_NV_FLAG_NO_INDEX.rawValue | NGHTTP2_NV_FLAG_NO_COPY_NAME.rawValue
        guard added else { return noIndex }
        let n = name.utf8CodeUnitCount
        let bit: UInt32 = 1 << UInt32((n + (n > 3 && name.utf8Start[2] == 0x62 ? 16 : 0)) & 31)
        if indexedNames & bit != 0 { return noIndex }
        indexedNames |= bit
        return NGHTTP2_NV_FLAG_NO_COPY_NAME.rawValue
    }

    static var none: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: nil, count: 0) }

    /// Server: sends a response head; `hasBody` attaches the body source (`h2ReadBody`). `clean`:
    /// names are lowercase and no hop-by-hop field is among them (they come from HTTP/2, whose
    /// codec refuses both); otherwise names are lowercased and hop-by-hop fields dropped here.
    @discardableResult
    public func submitResponse(stream: Int32, status: Int, headers: UnsafeBufferPointer<HeaderRef>, hasBody: Bool,
                               clean: Bool) -> Bool {
        var digits: (UInt8, UInt8, UInt8) = (48 + UInt8(status / 100 % 10), 48 + UInt8(status / 10 % 10), 48 + UInt8(status % 10))
        return withUnsafeBytes(of: &digits) { st in
            withNV(":status", st, nil, Self.none, nil, Self.none, nil, Self.none, headers: headers, dropHost: false,
                   clean: clean) { nv, n in
                if hasBody {
                    var prd = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: h2ReadCallback)
                    return nghttp2_submit_response(session, stream, nv, n, &prd) == 0
                }
                return nghttp2_submit_response(session, stream, nv, n, nil) == 0
            }
        }
    }

    /// Client: sends a request head; returns the stream id (< 0 on failure). `hasBody` attaches the
    /// body source. Unless `clean` (lowercase names, no hop-by-hop fields, no Host: the caller
    /// filtered them), names are lowercased and those fields dropped here (`authority` becomes
    /// `:authority`). `addedFields`: the proxy added a request id or trace context (`nameFlags`).
    public func submitRequest(method: UnsafeRawBufferPointer, scheme: StaticString, authority: UnsafeRawBufferPointer,
                              path: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>, clean: Bool,
                              hasBody: Bool, streamData: UnsafeMutableRawPointer?, addedFields: Bool = false) -> Int32 {
        let sch = UnsafeRawBufferPointer(start: scheme.utf8Start, count: scheme.utf8CodeUnitCount)
        return withNV(":method", method, ":scheme", sch, ":authority", authority, ":path", path,
                      headers: headers, dropHost: true, clean: clean, addedFields: addedFields) { nv, n in
            if hasBody {
                var prd = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: h2ReadCallback)
                return nghttp2_submit_request(session, nil, nv, n, &prd, streamData)
            }
            return nghttp2_submit_request(session, nil, nv, n, nil, streamData)
        }
    }

    /// Trailer fields, ending the stream (after the body source reported `trailers`). `clean`: the
    /// names are lowercase and no hop-by-hop field is among them (trailers received over HTTP/2, whose
    /// codec refuses both), so they are not filtered again.
    public func submitTrailers(stream: Int32, _ trailers: UnsafeBufferPointer<HeaderRef>, clean: Bool = false) {
        withNV(nil, Self.none, nil, Self.none, nil, Self.none, nil, Self.none, headers: trailers, dropHost: false,
               clean: clean) { nv, n in
            _ = nghttp2_submit_trailer(session, stream, nv, n)
        }
    }

    /// The body source of `stream` has data again.
    public func resumeData(stream: Int32) { nghttp2_session_resume_data(session, stream) }

    /// Gives `n` bytes of credit back on `stream` only. Connection-level credit is returned as soon
    /// as DATA arrives (`consumeConnection`), so a stalled stream holds back its own window, never
    /// its siblings' (no head-of-line blocking across streams); buffering stays bounded by one
    /// stream window per stream.
    public func consume(stream: Int32, _ n: Int) {
        if n > 0 { nghttp2_session_consume_stream(session, stream, n) }
    }

    /// Raises the receive window of `stream` to `size` bytes (a WINDOW_UPDATE for the difference).
    public func setStreamWindow(stream: Int32, _ size: Int) {
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, Int32(size))
    }

    /// Gives `n` bytes of connection-level credit back.
    public func consumeConnection(_ n: Int) {
        if n > 0 { nghttp2_session_consume_connection(session, n) }
    }

    public func reset(stream: Int32, code: UInt32) {
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, code)
    }

    /// Graceful shutdown: new streams are refused, open ones finish.
    public func goAway(code: UInt32 = 0) {
        nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue),
                              nghttp2_session_get_last_proc_stream_id(session), code, nil, 0)
    }

    /// Immediate shutdown with an error code (abuse): GOAWAY, then the owner closes after `send`.
    public func terminate(code: UInt32) {
        abused = true
        nghttp2_session_terminate_session(session, code)
    }

    public func setStreamData(_ stream: Int32, _ p: UnsafeMutableRawPointer?) {
        nghttp2_session_set_stream_user_data(session, stream, p)
    }

    public func streamData(_ stream: Int32) -> UnsafeMutableRawPointer? {
        nghttp2_session_get_stream_user_data(session, stream)
    }

    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS (100 until its SETTINGS arrive).
    public var remoteMaxConcurrentStreams: Int {
        Int(nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))
    }

    /// The peer announced SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): it takes extended CONNECT.
    /// Meaningful once its SETTINGS arrived (0 before).
    public var remoteEnablesConnectProtocol: Bool {
        nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) != 0
    }

    /// Whether a new request may be opened (client; false after GOAWAY or when ids run out).
    public var canOpenStream: Bool { nghttp2_session_check_request_allowed(session) != 0 }

    // MARK: from the callbacks

    func frameReceived(_ f: UnsafePointer<nghttp2_frame>) -> Int32 {
        let hd = f.pointee.hd
        let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        switch Int(hd.type) {
        case Int(NGHTTP2_HEADERS.rawValue):
            headerTarget = nil
            withDelegate(()) { $0.h2HeadersComplete(self, stream: hd.stream_id, endStream: endStream) }
        case Int(NGHTTP2_DATA.rawValue):
            if hd.length == 0 && !endStream {
                emptyFrames += 1
                if emptyFrames > 100 { terminate(code: NGHTTP2_ENHANCE_YOUR_CALM.rawValue) }
            } else {
                emptyFrames = 0
            }
            if endStream { withDelegate(()) { $0.h2DataEnd(self, stream: hd.stream_id) } }
        case Int(NGHTTP2_GOAWAY.rawValue):
            withDelegate(()) { $0.h2GoAway(self, lastStreamID: f.pointee.goaway.last_stream_id, errorCode: f.pointee.goaway.error_code) }
        case Int(NGHTTP2_SETTINGS.rawValue):
            if hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) == 0 { withDelegate(()) { $0.h2Settings(self) } }
        default:
            break
        }
        return 0
    }

    func readBody(_ stream: Int32, _ buf: UnsafeMutablePointer<UInt8>, _ length: Int, _ flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard let r = withDelegate(nil, { $0.h2ReadBody(self, stream: stream, into: UnsafeMutableRawBufferPointer(start: buf, count: length)) }) else {
            return Int(NGHTTP2_ERR_DEFERRED.rawValue)
        }
        if r.eof {
            flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
            if r.trailers {
                flags.pointee |= NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                trailersDue.append(stream)
            }
        }
        return r.count
    }
}
