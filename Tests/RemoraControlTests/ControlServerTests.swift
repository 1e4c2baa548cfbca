import Glibc
import RemoraControl
import RemoraCore
import RemoraIO
import Testing

/// Monotonic ms.
func nowMs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
}

func sleepMs(_ ms: UInt64) { usleep(UInt32(ms * 1000)) }

/// One blocking request to the control server at `port`: "status body" or "error: …".
func call(_ port: UInt16, _ method: String, _ target: String, _ body: String = "", token: String? = nil) -> (Int, String, String?) {
    do {
        let r = try BlockingHTTPClient(timeout: 15_000).request(method, host: "127.0.0.1", port: port, target: target,
                                                                headers: token.map { [("authorization", "Bearer \($0)")] } ?? [],
                                                                body: Array(body.utf8))
        return (r.status, r.text, r.header("x-remora-version"))
    } catch {
        return (0, error.message, nil)
    }
}

/// Opens a connection, sends `request`, and closes it after `ms` without reading.
func sendAndLeave(_ port: UInt16, _ request: String, after ms: UInt64) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_port = port.bigEndian
    sa.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var r = request
    r.withUTF8 { _ = send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    sleepMs(ms)
    close(fd)
}

/// Sends `request` on one connection and reads until the server closes it.
func exchange(_ port: UInt16, _ request: String) -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_port = port.bigEndian
    sa.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var r = request
    r.withUTF8 { _ = send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        out += buf[..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

extension String {
    var trimmed: String {
        var s = Substring(self)
        while s.first?.isWhitespace == true { s = s.dropFirst() }
        while s.last?.isWhitespace == true { s = s.dropLast() }
        return String(s)
    }
}

/// Messages from the test's client threads to the server's loop.
enum Probe: Sendable {
    case record(String)
    case checkWaiting(String)
    case stop
}

/// The real server on a loop: long polls answered at once on a change, 304 after `wait`, a client
/// that leaves frees its poll, SIGTERM-style stop answers waiting polls with 304, the loop closes
/// with no handle left, and a restarted server serves the same versions.
@Suite(.serialized) struct ControlServerTests {
    final class Log: @unchecked Sendable {
        var lines: [String] = []
        var mutex = pthread_mutex_t()
        init() { pthread_mutex_init(&mutex, nil) }
        func add(_ s: String) { pthread_mutex_lock(&mutex); lines.append(s); pthread_mutex_unlock(&mutex) }
        var all: [String] { pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }; return lines }
    }

    /// Runs the server on this thread and `script` on another until the script posts `.stop`.
    func withServer(_ dir: String, token: String? = nil, _ script: @escaping @Sendable (UInt16, Mailbox<Probe>, Log) -> Void) throws -> (Log, ControlServer) {
        let server = try ControlServer(options: .init(stateDirectory: dir, listen: HostPort(host: "127.0.0.1", port: 0), token: token))
        server.log = { _ in }
        let log = Log()
        let box = Mailbox<Probe>(loop: server.loop) { m in
            switch m {
            case .record(let s): log.add(s)
            case .checkWaiting(let label): log.add("\(label): waiting \(server.waitingCount)")
            case .stop: server.stop()
            }
        }
        let guardTimer = LoopTimer(loop: server.loop)
        guardTimer.start(after: 30_000) { server.stop() }
        guardTimer.unref()
        let port = server.address.port
        let t = spawnThread { script(port, box, log) }
        // The mailbox and guard timer must not keep the loop alive once the server stopped.
        let closer = LoopTimer(loop: server.loop)
        closer.start(after: 20, repeat: 20) {
            if server.isStopping { box.close(); guardTimer.close(); closer.close() }
        }
        #expect(server.run() == 0)
        joinThread(t)
        #expect(server.closedClean)
        return (log, server)
    }

    @Test func longPollsAndRestart() throws {
        let dir = scratchDirectory()
        defer { cleanup(dir) }
        let (log, _) = try withServer(dir) { port, box, log in
            func rec(_ s: String) { log.add(s) }
            var r = call(port, "PUT", "/v1/groups/web", small)
            rec("put \(r.0) \(r.1.trimmed) \(r.2 ?? "-")")
            r = call(port, "GET", "/v1/snapshot?group=web&node=n1&version=0&admin=127.0.0.1:9901")
            rec("poll0 \(r.0) \(r.2 ?? "-") \(r.1 == small)")
            r = call(port, "GET", "/v1/snapshot?group=nope&node=n1")
            rec("unknown \(r.0)")
            // A poll waiting with wait=10 gets the next version as soon as it is stored.
            let waiter = spawnThread {
                let t0 = nowMs()
                let r = call(port, "GET", "/v1/snapshot?group=web&node=n2&version=1&wait=10&admin=127.0.0.1:9902")
                log.add("woken \(r.0) \(r.2 ?? "-") fast=\(nowMs() - t0 < 1_500)")
            }
            sleepMs(300)
            box.post(.checkWaiting("before put"))
            r = call(port, "POST", "/v1/groups/web/split?route=split", "v1=50 v2=50")
            rec("split \(r.0) \(r.1.trimmed)")
            joinThread(waiter)
            // No change within wait=1: 304 after about a second.
            let t0 = nowMs()
            r = call(port, "GET", "/v1/snapshot?group=web&node=n1&version=2&wait=1")
            let took = nowMs() - t0
            rec("timeout \(r.0) \(took >= 900 && took < 2_000)")
            // A client that leaves while waiting frees its poll.
            sendAndLeave(port, "GET /v1/snapshot?group=web&node=n3&version=2&wait=10 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n", after: 200)
            sleepMs(200)
            box.post(.checkWaiting("after leaving"))
            // Reports, then status.
            r = call(port, "POST", "/v1/ack?group=web&node=n2&version=2")
            rec("ack \(r.0)")
            r = call(port, "POST", "/v1/nack?group=web&node=n1&version=2", "web@2:3: listeners[0]: bad")
            rec("nack \(r.0)")
            r = call(port, "GET", "/v1/status")
            rec("status \(r.0)\n\(r.1)")
            // Pipelined requests on one connection while the first waits: answered in order.
            let both = exchange(port, "GET /v1/snapshot?group=web&node=n5&version=2&wait=1 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
                                + "GET /v1/groups HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            rec("pipelined \(both.hasPrefix("HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 200 OK\r\n") && both.hasSuffix("\r\n\r\nweb 2\n"))")
            // A poll waiting when the server stops gets 304.
            let last = spawnThread {
                let t0 = nowMs()
                let r = call(port, "GET", "/v1/snapshot?group=web&node=n4&version=2&wait=20")
                log.add("stopped \(r.0) fast=\(nowMs() - t0 < 1_500)")
            }
            sleepMs(300)
            box.post(.stop)
            joinThread(last)
        }
        let lines = log.all
        #expect(lines.contains("put 200 version 1 1"))
        #expect(lines.contains("poll0 200 1 true"))
        #expect(lines.contains("unknown 404"))
        #expect(lines.contains("before put: waiting 1"))
        #expect(lines.contains("split 200 version 2"))
        #expect(lines.contains("woken 200 2 fast=true"))
        #expect(lines.contains("timeout 304 true"))
        #expect(lines.contains("after leaving: waiting 0"))
        #expect(lines.contains("ack 204"))
        #expect(lines.contains("nack 204"))
        let status = lines.first { $0.hasPrefix("status 200") }?.split(separator: "\n").dropFirst().map { $0.split(separator: " ") }
        #expect(status?.count == 3)   // n1, n2, and n3 (which left)
        #expect(status?.first { $0[0] == "n1" }.map { Array($0[1...4]) } == ["web", "2", "NACK", "web@2:3:%20listeners[0]:%20bad"])
        #expect(status?.first { $0[0] == "n2" }.map { Array($0[1...3]) + [$0[6]] } == ["web", "2", "ACK", "127.0.0.1:9902"])
        #expect(lines.contains("stopped 304 fast=true"))
        #expect(lines.contains("pipelined true"))

        // Restarted on the same directory: the same version and document.
        let (log2, _) = try withServer(dir) { port, box, log in
            let r = call(port, "GET", "/v1/groups/web")
            log.add("get \(r.0) \(r.2 ?? "-") \(r.1.contains("{ cluster: v1, weight: 50 }, { cluster: v2, weight: 50 }"))")
            log.add("groups \(call(port, "GET", "/v1/groups").1)")
            box.post(.stop)
        }
        #expect(log2.all == ["get 200 2 true", "groups web 2\n"])
    }

    @Test func bearerToken() throws {
        let dir = scratchDirectory()
        defer { cleanup(dir) }
        let (log, _) = try withServer(dir, token: "s3cret") { port, box, log in
            log.add("none \(call(port, "GET", "/v1/groups").0)")
            log.add("wrong \(call(port, "GET", "/v1/groups", token: "s3crex").0)")
            log.add("short \(call(port, "GET", "/v1/groups", token: "s3").0)")
            log.add("right \(call(port, "GET", "/v1/groups", token: "s3cret").0)")
            box.post(.stop)
        }
        #expect(log.all == ["none 401", "wrong 401", "short 401", "right 200"])
        // Without a token the server refuses a non-loopback address.
        do {
            _ = try ControlServer(options: .init(stateDirectory: dir, listen: HostPort(host: "0.0.0.0", port: 0)))
            Issue.record("started without a token on 0.0.0.0")
        } catch {
            #expect(error.message.contains("not a loopback address: a bearer token is required"))
        }
    }
}
