import CLLHTTP

/// HTTP/1.1 response framing for a load generator, on llhttp with only the two callbacks framing
/// needs: each response's status, where it ends and whether the connection stays open — nothing
/// is stored (llhttp tracks Content-Length, chunked coding and Connection itself). `next` returns
/// at each complete response (a read holding several pipelined responses gives several events);
/// `.needMore` when the bytes are used up. 1xx interim responses are skipped; 101 ends HTTP on
/// the connection. Strict llhttp: a malformed response is `.error`, for good. (Nothing is kept, so
/// a huge head costs no memory; a server that never ends one meets the generator's timeout.)
public final class HTTP1ResponseFramer {
    public enum Event: Equatable {
        /// Everything given was used; feed the next read.
        case needMore
        /// A final response is complete.
        case response(status: Int, keepAlive: Bool)
        /// Not HTTP/1.1 (or beyond a limit): the connection is out of step for good.
        case error
    }

    let ll: UnsafeMutablePointer<llhttp_t>
    /// The requests are HEAD: responses have no body whatever their headers say.
    public let isHEAD: Bool
    /// The response completed inside the current `llhttp_execute`.
    var completed = Event.needMore
    /// An error or a 101 ended HTTP on the connection: nothing more is parsed.
    var over: Event? = nil

    public init(isHEAD: Bool) {
        self.isHEAD = isHEAD
        ll = .allocate(capacity: 1)
        llhttp_init(ll, HTTP_RESPONSE, framerSettings)
        ll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit { ll.deallocate() }

    /// Parses `data` from `offset` up to the end of the next complete response (returning it, with
    /// `offset` just past it) or to the end of `data` (`.needMore`).
    public func next(_ data: UnsafeRawBufferPointer, _ offset: inout Int) -> Event {
        if let over { offset = data.count; return over == .error ? .error : .needMore }
        guard let base = data.baseAddress, offset < data.count else { return .needMore }
        let start = (base + offset).assumingMemoryBound(to: CChar.self)
        completed = .needMore
        let rc = llhttp_execute(ll, start, data.count - offset)
        switch rc {
        case HPE_OK:
            offset = data.count
            return .needMore
        case HPE_PAUSED:
            offset += start.distance(to: llhttp_get_error_pos(ll)!)
            llhttp_resume(ll)
            return completed
        case HPE_PAUSED_UPGRADE:   // 101: what follows is not HTTP
            offset = data.count
            over = .needMore
            return completed
        default:
            over = .error
            offset = data.count
            return .error
        }
    }

    /// The connection ended: completes a response delimited by the close (or nothing).
    public func finish() -> Event {
        if let over { return over == .error ? .error : .needMore }
        completed = .needMore
        let rc = llhttp_finish(ll)
        if rc == HPE_OK || rc == HPE_PAUSED { return completed }
        over = .error
        return .needMore   // cut short mid-response: nothing completed
    }

    // MARK: from the callbacks (LLHTTPCallbacks.swift)

    func headersComplete() -> Int32 {
        if ll.pointee.http_major != 1 { return -1 }
        let status = Int(ll.pointee.status_code)
        if status == 101 { return 0 }   // upgrade: llhttp pauses after the head
        // 1: no body follows (after HEAD; 204 and 304 never have one, whatever Content-Length says)
        return (isHEAD && status >= 200) || status == 204 || status == 304 ? 1 : 0
    }

    func messageComplete() -> Int32 {
        let status = Int(ll.pointee.status_code)
        if status < 200 && status != 101 { return 0 }   // interim: skipped
        let keepAlive = status != 101 && llhttp_should_keep_alive(ll) != 0
        completed = .response(status: status, keepAlive: keepAlive)
        if !keepAlive { over = .needMore }   // the connection's HTTP ends here (also after 101)
        return Int32(HPE_PAUSED.rawValue)
    }
}
