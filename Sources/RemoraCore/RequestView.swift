/// One header as seen by routing: name and value bytes, valid for the duration of one call.
/// HTTP/2 names arrive lowercase; HTTP/1 names as the client sent them: compare names ignoring case.
public struct HeaderRef {
    public var name: UnsafeRawBufferPointer
    public var value: UnsafeRawBufferPointer
    public init(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) { self.name = name; self.value = value }
}

/// A request head as routing sees it, whatever the protocol: HTTP/1.1 fills it from the parsed
/// request line, Host and headers; HTTP/2 from the pseudo-headers and header block. Every field
/// points into the codec's buffers and is valid only during the call it is passed to (matching
/// allocates nothing and copies nothing).
public struct RequestView {
    /// "GET", "POST", …
    public var method: UnsafeRawBufferPointer
    /// The request target in origin form, query included: "/pkg.Svc/Method", "/a/b?x=1".
    public var target: UnsafeRawBufferPointer
    /// `:authority`, or the Host header for HTTP/1.1 (may carry a port: "api.example.com:8080").
    public var authority: UnsafeRawBufferPointer
    /// Regular headers (no pseudo-headers), in the order received.
    public var headers: UnsafeBufferPointer<HeaderRef>
    /// The peer's verified identity (mTLS), for routes that match on it; empty when it has none, or
    /// when no route of the listener asks (`RouteTable.matchesPrincipal`: only then is it filled).
    public var principal = UnsafeRawBufferPointer(start: nil, count: 0)

    public init(method: UnsafeRawBufferPointer, target: UnsafeRawBufferPointer, authority: UnsafeRawBufferPointer,
                headers: UnsafeBufferPointer<HeaderRef>) {
        self.method = method; self.target = target; self.authority = authority; self.headers = headers
    }
}
