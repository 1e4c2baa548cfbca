import CLLHTTP

// Every llhttp callback, in one place: non-capturing trampolines that recover the parser from
// `data` and call one method. The settings tables are immutable after creation.

/// Calls `body` with the parser behind `ll`, without retaining it (the owner keeps it alive).
@inline(__always)
private func parser<R>(_ ll: UnsafeMutablePointer<llhttp_t>?, _ body: (HTTP1Parser) -> R) -> R {
    Unmanaged<HTTP1Parser>.fromOpaque(ll!.pointee.data)._withUnsafeGuaranteedRef(body)
}

private func makeSettings(_ kind: HTTP1Parser.Kind) -> UnsafeMutablePointer<llhttp_settings_t> {
    let s = UnsafeMutablePointer<llhttp_settings_t>.allocate(capacity: 1)
    llhttp_settings_init(s)
    s.pointee.on_message_begin = { ll in parser(ll) { $0.messageBegin() }; return 0 }
    if kind == .request {
        s.pointee.on_url = { ll, p, n in parser(ll) { $0.startLineData(p!, n) } }
    } else {
        s.pointee.on_status = { ll, p, n in parser(ll) { $0.startLineData(p!, n) } }
    }
    s.pointee.on_header_field = { ll, p, n in parser(ll) { $0.headerField(p!, n) } }
    s.pointee.on_header_value = { ll, p, n in parser(ll) { $0.headerValue(p!, n) } }
    s.pointee.on_headers_complete = { ll in parser(ll) { $0.headersComplete() } }
    s.pointee.on_body = { ll, p, n in parser(ll) { $0.body(p!, n) } }
    s.pointee.on_message_complete = { ll in parser(ll) { $0.messageComplete() } }
    return s
}

nonisolated(unsafe) let requestSettings = makeSettings(.request)
nonisolated(unsafe) let responseSettings = makeSettings(.response)

/// The load generator's response framer: only what framing needs (see HTTP1ResponseFramer).
private func makeFramerSettings() -> UnsafeMutablePointer<llhttp_settings_t> {
    let s = UnsafeMutablePointer<llhttp_settings_t>.allocate(capacity: 1)
    llhttp_settings_init(s)
    s.pointee.on_headers_complete = { ll in
        Unmanaged<HTTP1ResponseFramer>.fromOpaque(ll!.pointee.data)._withUnsafeGuaranteedRef { $0.headersComplete() }
    }
    s.pointee.on_message_complete = { ll in
        Unmanaged<HTTP1ResponseFramer>.fromOpaque(ll!.pointee.data)._withUnsafeGuaranteedRef { $0.messageComplete() }
    }
    return s
}

nonisolated(unsafe) let framerSettings = makeFramerSettings()
