import Glibc
import Testing
import RemoraCore
import RemoraIO
@testable import RemoraBench

/// A tiny HTTP/1.1 responder on its own thread and loop: answers every request head
/// ("\r\n\r\n") with a fixed response, pipelined requests included.
final class Responder: ListenerDelegate, TCPConnectionDelegate, @unchecked Sendable {
    static let response = Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8)
    var port: UInt16 = 0
    var ready = sem_t()
    var thread = pthread_t()
    var stopBox: Mailbox<Int>?
    var listener: Listener?
    var conns: [TCPConnection] = []
    /// Per connection: how many bytes of "\r\n\r\n" matched so far (tag) — kept in `TCPConnection.tag`.
    var requests = 0

    init() {
        sem_init(&ready, 0, 0)
        thread = spawnThread { [unowned self] in self.serve() }
        sem_wait(&ready)
    }

    func serve() {
        let loop = EventLoop()
        let fd = try! ListenSocket.bind(SocketAddress(ip: "127.0.0.1", port: 0)!)
        port = ListenSocket.localAddress(fd)!.port
        let l = try! Listener(loop: loop, fd: fd)
        l.delegate = self
        listener = l
        stopBox = Mailbox<Int>(loop: loop) { [unowned self] _ in
            self.listener?.close()
            for c in self.conns { c.close() }
            self.stopBox?.close()
        }
        sem_post(&ready)
        loop.run()
        _ = loop.close()
    }

    func stop() {
        stopBox?.post(0)
        joinThread(thread)
    }

    func listenerAccepted(_ l: Listener, _ c: TCPConnection) {
        c.delegate = self
        c.owner = self
        conns.append(c)
        c.startReading()
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        let crlfcrlf: [UInt8] = [13, 10, 13, 10]
        c.cork()
        for b in data {
            if b == crlfcrlf[c.tag] {
                c.tag += 1
                if c.tag == 4 {
                    c.tag = 0
                    requests += 1
                    Responder.response.withUnsafeBytes { _ = c.write($0) }
                }
            } else {
                c.tag = b == 13 ? 1 : 0
            }
        }
        c.uncork()
    }
    func connectionEOF(_ c: TCPConnection) { c.close() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { c.close() }
    func connectionClosed(_ c: TCPConnection) { conns.removeAll { $0 === c } }
}

@Suite(.serialized) struct WorkerTests {
    func run(_ args: String, port: UInt16) throws -> (BenchResult, Bool) {
        guard case let .run(o) = try BenchCommandLine.parse((args + " http://127.0.0.1:\(port)/").split(separator: " ").map(String.init)) else {
            throw BenchUsageError("help")
        }
        guard case let .http1(url) = o.target else { throw BenchUsageError("target") }
        let proto = HTTP1Protocol(request: HTTP1Protocol.serialize(method: o.effectiveMethod, url: url, headers: [], body: nil),
                                  method: o.effectiveMethod, streams: o.streams, timeoutNs: o.timeout)
        let plan = BenchPlan(options: o, addresses: [SocketAddress(ip: "127.0.0.1", port: port)!],
                             threads: o.effectiveThreads(cores: 2), now: monotonicNanos())
        let runner = BenchRunner(plan: plan, proto: proto)
        let r = runner.run()
        return (r, runner.closedCleanly)
    }

    @Test func closedLoopSendsExactlyTheRequestCount() throws {
        let server = Responder()
        defer { server.stop() }
        let (r, clean) = try run("-t 2 -c 4 -m 3 -n 1000", port: server.port)
        #expect(clean)
        #expect(r.counters.responses == 1000)
        #expect(r.counters.sent == 1000)
        #expect(r.counters.status[200] == 1000)
        #expect(r.counters.errorsTotal == 0)
        #expect(r.latency.totalCount == 1000)
        #expect(r.uncorrected.totalCount == 0)   // closed loop: no second histogram
        #expect(r.counters.connectionsOpened == 4)
        #expect(r.counters.bytesRead == UInt64(1000 * Responder.response.count))
    }

    @Test func openLoopKeepsTheRate() throws {
        let server = Responder()
        defer { server.stop() }
        let (r, clean) = try run("-t 2 -c 4 -R 4000 -d 500ms -w 100ms", port: server.port)
        #expect(clean)
        // 4,000/s for 0.5 s: 2,000 intended in the measured period (a few may still wait at the end
        // on a loaded machine).
        #expect(r.counters.responses >= 1_800 && r.counters.responses <= 2_002)
        #expect(r.counters.responses + r.counters.unsentAtEnd + r.counters.errorsTotal >= 1_990)
        #expect(r.counters.errorsTotal == 0)
        #expect(r.uncorrected.totalCount == r.latency.totalCount)
        #expect(abs(Double(r.elapsedNs) / 1e9 - 0.5) < 0.1)
    }

    @Test func openLoopWithARequestCountStopsByItself() throws {
        let server = Responder()
        defer { server.stop() }
        let (r, clean) = try run("-t 1 -c 2 -R 2000 -n 300", port: server.port)
        #expect(clean)
        #expect(r.counters.responses == 300)
        #expect(r.counters.sent == 300)
    }

    @Test func refusedTargetIsCountedAndTheRunEnds() throws {
        // Bound, not listening: connects are refused.
        let fd = try ListenSocket.bind(SocketAddress(ip: "127.0.0.1", port: 0)!)
        let port = ListenSocket.localAddress(fd)!.port
        ListenSocket.closeFD(fd)
        let (r, clean) = try run("-t 1 -c 3 -n 10 --timeout 200ms", port: port)
        #expect(clean)
        #expect(r.counters.responses == 0)
        #expect(r.counters[.connect] >= 3)
    }
}
