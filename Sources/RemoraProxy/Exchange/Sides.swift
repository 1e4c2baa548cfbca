import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraPolicy
import RemoraRouting

/// Where a response goes: an HTTP/1.1 connection or an HTTP/2 stream. Calls come from the exchange.
protocol DownstreamSide: AnyObject {
    /// The response head. `endStream`: nothing follows. `lengthKnown`: headers carry Content-Length.
    func respondHead(status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                     lengthKnown: Bool, endStream: Bool)
    func respondBody(_ data: UnsafeRawBufferPointer)
    /// The response is complete, with trailer fields when given.
    func respondEnd(trailers: UnsafeBufferPointer<HeaderRef>?)
    /// The response cannot be completed: the client must see an error, never a clean end.
    func respondReset(code: UInt32)
    /// More response bytes are queued toward the client than its high watermark.
    var responseBlocked: Bool { get }
    /// `n` request body bytes were passed on: give the client credit (HTTP/2 WINDOW_UPDATE).
    func requestConsumed(_ n: Int)
    /// Stop / resume taking request body bytes from the client.
    func pauseRequest()
    func resumeRequest()
    /// The exchange is over; the downstream forgets it (and may reuse its connection).
    func exchangeDone(_ e: Exchange)
    /// The downstream is inside its read (writes toward the upstream may be collected).
    var isReading: Bool { get }
    /// Sends what was collected toward the client.
    func flushResponse()
    /// The memory budget the response shares with other streams of its connection (HTTP/2), or nil.
    var responseBudget: ResponseBudget? { get }
    /// The client's connection (its peer identity and SNI are read from it), or nil (a shadow's).
    var transportConnection: TCPConnection? { get }
    /// The client connection's `TCPConnection.peerTag` (its identity for the metrics; 0: none).
    var peerTag: UInt16 { get }
    /// The client's address, parsed once per connection (authorization's source CIDRs); nil when unknown.
    var sourceAddress: IPAddress? { get }
    /// An upgrade was accepted (101, already written by `respondHead`): the downstream and `upstream`
    /// (an HTTP/1.1 connection of `cluster`, handed over) become a byte tunnel, `leftover` (bytes the
    /// upstream sent after its 101) going to the client first. False when this side cannot tunnel.
    /// The exchange finishes right after (`exchangeDone`). `Exchange+Upgrade.swift`.
    func startTunnel(cluster: Cluster, upstream: TCPConnection, leftover: UnsafeRawBufferPointer) -> Bool
}

extension DownstreamSide {
    var responseBudget: ResponseBudget? { nil }
    var transportConnection: TCPConnection? { nil }
    var peerTag: UInt16 { 0 }
    var sourceAddress: IPAddress? { nil }
    func startTunnel(cluster: Cluster, upstream: TCPConnection, leftover: UnsafeRawBufferPointer) -> Bool { false }
}

/// Where a request goes: an HTTP/1.1 upstream connection or an HTTP/2 upstream stream.
protocol UpstreamStream: AnyObject {
    func sendBody(_ data: UnsafeRawBufferPointer)
    func sendEnd(trailers: UnsafeBufferPointer<HeaderRef>?)
    /// Too many request bytes are queued toward the upstream.
    var requestBlocked: Bool { get }
    /// Stop / resume taking response bytes from the upstream.
    func pauseResponse()
    func resumeResponse()
    /// `n` response body bytes were passed on (HTTP/2 credit).
    func responseConsumed(_ n: Int)
    /// It had carried an exchange before (a failure may be the keep-alive close race).
    var wasReused: Bool { get }
    /// Some response byte arrived.
    var gotResponseBytes: Bool { get }
    /// The exchange is over: `clean` when request and response completed (a connection may be
    /// pooled); otherwise the upstream is told the request is cancelled.
    func detach(clean: Bool)
    /// Sends what was collected toward the upstream.
    func flushRequest()
    /// The endpoint it goes to (read when an attempt starts).
    var endpoint: Endpoint.Ref { get }
    /// The exchange it serves (the one its callbacks go to); a hedge's winning try is handed over.
    var exchange: Exchange? { get set }
}

/// Why an upstream request failed.
enum UpstreamFailure {
    case connectFailed
    /// The upstream never processed the request (HTTP/2 REFUSED_STREAM or above GOAWAY's last id).
    case refused
    /// Connection closed or stream reset; `code` is the HTTP/2 error code (0 for HTTP/1.1).
    case reset(code: UInt32)
    case protocolError
}

/// The downstream of shadow (mirrored) requests: keeps them alive while they run and discards
/// their responses.
final class DiscardDownstream: DownstreamSide {
    unowned(unsafe) let worker: Worker
    var running: [Exchange] = []
    init(worker: Worker) { self.worker = worker }
    func respondHead(status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                     lengthKnown: Bool, endStream: Bool) {}
    func respondBody(_ data: UnsafeRawBufferPointer) {}
    func respondEnd(trailers: UnsafeBufferPointer<HeaderRef>?) {}
    func respondReset(code: UInt32) {}
    var responseBlocked: Bool { false }
    func requestConsumed(_ n: Int) {}
    func pauseRequest() {}
    func resumeRequest() {}
    func exchangeDone(_ e: Exchange) {
        if let i = running.firstIndex(where: { $0 === e }) { running.swapAt(i, running.count - 1); running.removeLast() }
        worker.recycle(e)
    }
    var isReading: Bool { false }
    func flushResponse() {}
}

/// `headers` with a route's changes applied (the same list when there are none), valid inside `body`.
@inline(__always)
func withMutated<R>(_ headers: UnsafeBufferPointer<HeaderRef>, _ m: HeaderMutations,
                    _ body: (UnsafeBufferPointer<HeaderRef>) -> R) -> R {
    if m.isEmpty { return body(headers) }
    return withUnsafeTemporaryAllocation(of: HeaderRef.self, capacity: headers.count + m.items.count) { buf in
        var n = 0
        m.apply(to: headers) { name, value in
            buf.initializeElement(at: n, to: HeaderRef(name: name, value: value))
            n += 1
        }
        return body(UnsafeBufferPointer(rebasing: buf[0..<n]))
    }
}

/// The bytes of a literal, for writes.
@inline(__always)
func rawBytes(_ s: StaticString) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)
}

