import Histogram

/// Why a request (or a connection attempt) failed, by who failed.
public enum BenchErrorKind: Int, CaseIterable, Sendable {
    /// The connection could not be made: refused, unreachable, connect timeout.
    case connect
    /// The connection broke with requests in flight: reset, or closed by the server before the
    /// response was complete (mid-response, or before its first byte); for HTTP/2, also a stream
    /// reset by the server (RST_STREAM) while the connection stays up.
    case reset
    /// No complete response within `--timeout` (including requests that never found a
    /// connection in time, open loop).
    case timeout
    /// The response was not valid HTTP.
    case parse

    public var name: String {
        switch self {
        case .connect: return "connect"
        case .reset: return "reset"
        case .timeout: return "timeout"
        case .parse: return "parse"
        }
    }
}

/// Latency histograms: values in µs, 1 µs to 1 h at 3 significant digits (HdrHistogram's usual
/// layout for latency; ~184 KiB of UInt64 counts). Values beyond the range are clamped to it.
public enum LatencyHistogram {
    public static let highestTrackable: UInt64 = 3_600_000_000
    public static func make() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: highestTrackable,
                          numberOfSignificantValueDigits: .three)
    }
}

/// Counters of one thread (single writer), summed across threads at the end. Counts only what
/// belongs to the measured period (after the warm-up), except the connection counters, which
/// cover the whole run.
public struct BenchCounters: Sendable, Equatable {
    /// Responses received and recorded (any status).
    public var responses: UInt64 = 0
    /// Requests written.
    public var sent: UInt64 = 0
    /// gRPC: messages written (whole, length prefix included) and messages received (complete).
    public var messagesSent: UInt64 = 0
    public var messagesReceived: UInt64 = 0
    /// Bytes read from sockets (response heads and bodies).
    public var bytesRead: UInt64 = 0
    /// Bytes of requests written.
    public var bytesWritten: UInt64 = 0
    /// Responses by status code: index = status (100…599); index 0 = anything else.
    public var status = [UInt64](repeating: 0, count: 600)
    /// gRPC responses by grpc-status: index = code (0…16); 17 = missing or out of range. All zero
    /// for HTTP targets.
    public var grpcStatus = [UInt64](repeating: 0, count: 18)
    /// Failed requests (and connection attempts, for `.connect`) by kind.
    public var errors = [UInt64](repeating: 0, count: BenchErrorKind.allCases.count)
    /// Connections established.
    public var connectionsOpened: UInt64 = 0
    /// Connections the server closed (Connection: close, idle close, mid-response).
    public var connectionsClosedByServer: UInt64 = 0
    /// Most connections open (or opening) at once.
    public var connectionsPeak: UInt64 = 0
    /// Open loop: sends that left more than `lateThreshold` after their intended time.
    public var lateSends: UInt64 = 0
    /// Open loop: largest gap between a request's intended and actual send time, ns.
    public var maxLatenessNs: UInt64 = 0
    /// Open loop: sum of (actual − intended) over all sends, ns (for the mean).
    public var totalLatenessNs: UInt64 = 0
    /// Open loop: requests that found no free connection at their send time and waited.
    public var waitedForConnection: UInt64 = 0
    /// Open loop: requests that expired (timeout) before any connection could take them.
    public var expiredUnsent: UInt64 = 0
    /// Requests that were due or queued but never sent when the run ended.
    public var unsentAtEnd: UInt64 = 0

    /// A send this much after its intended time is "late", ns.
    public static let lateThreshold: UInt64 = 1_000_000

    public init() {}

    public var errorsTotal: UInt64 { errors.reduce(0, +) }

    public subscript(_ k: BenchErrorKind) -> UInt64 {
        get { errors[k.rawValue] }
        set { errors[k.rawValue] = newValue }
    }

    public mutating func add(_ o: BenchCounters) {
        responses += o.responses
        sent += o.sent
        messagesSent += o.messagesSent
        messagesReceived += o.messagesReceived
        bytesRead += o.bytesRead
        bytesWritten += o.bytesWritten
        for i in status.indices { status[i] += o.status[i] }
        for i in errors.indices { errors[i] += o.errors[i] }
        for i in grpcStatus.indices { grpcStatus[i] += o.grpcStatus[i] }
        connectionsOpened += o.connectionsOpened
        connectionsClosedByServer += o.connectionsClosedByServer
        connectionsPeak += o.connectionsPeak   // threads run side by side: the peaks add up
        lateSends += o.lateSends
        maxLatenessNs = max(maxLatenessNs, o.maxLatenessNs)
        totalLatenessNs += o.totalLatenessNs
        waitedForConnection += o.waitedForConnection
        expiredUnsent += o.expiredUnsent
        unsentAtEnd += o.unsentAtEnd
    }

    /// gRPC status codes that occurred, ascending, with their counts (17 = missing).
    public var grpcStatusCounts: [(code: Int, count: UInt64)] {
        grpcStatus.indices.filter { grpcStatus[$0] > 0 }.map { ($0, grpcStatus[$0]) }
    }

    /// Status codes that occurred, ascending, with their counts (index 0 reported as 0).
    public var statusCounts: [(code: Int, count: UInt64)] {
        status.indices.filter { status[$0] > 0 }.map { ($0, status[$0]) }
    }
}

/// What one thread (or, merged, the whole run) measured.
public struct BenchResult: Sendable {
    public var counters = BenchCounters()
    /// Latency, µs: from the intended send time (open loop) or the actual send time (closed loop).
    /// gRPC bidi: per message round trip instead (the first message of a call timed from the
    /// call's send time, each next one from the reply before it, when it is written).
    public var latency = LatencyHistogram.make()
    /// Open loop only: latency from the actual send time, µs — what a tool that ignores
    /// coordinated omission would report. Empty in closed loop.
    public var uncorrected = LatencyHistogram.make()
    /// Start of the measured period, ns (monotonic clock).
    public var measureStart: UInt64 = 0
    /// End of the measured period, ns: when sending stopped, or the last response, if later.
    public var measureEnd: UInt64 = 0
    /// The run was cut short (Ctrl-C).
    public var interrupted = false

    public init() {}

    public var elapsedNs: UInt64 { measureEnd > measureStart ? measureEnd - measureStart : 0 }

    /// Adds another thread's results (histograms added bucket by bucket, counters summed, the
    /// measured period spanning both).
    public mutating func merge(_ o: BenchResult) {
        counters.add(o.counters)
        latency.add(o.latency)
        uncorrected.add(o.uncorrected)
        if measureStart == 0 || (o.measureStart != 0 && o.measureStart < measureStart) { measureStart = o.measureStart }
        measureEnd = max(measureEnd, o.measureEnd)
        interrupted = interrupted || o.interrupted
    }
}
