import Glibc
import RemoraBench
import RemoraCore
import RemoraIO

// `remora bench`: the command-line glue around RemoraBench (parse, resolve, run, write files).

func benchCommand(_ argv: ArraySlice<String>) -> Int32 {
    let options: BenchOptions
    do {
        switch try BenchCommandLine.parse(argv) {
        case .help:
            printOut(BenchCommandLine.help)
            return 0
        case let .run(o):
            options = o
        }
    } catch {
        printErr("remora bench: \(error.message)\n\n" + BenchCommandLine.help)
        return 2
    }

    // Everything that can fail before the run fails now, not after it.
    var body: [UInt8]?
    if let path = options.bodyFile {
        guard let b = readWholeFile(path) else {
            printErr("remora bench: --body-file \(path): \(String(cString: strerror(errno)))")
            return 1
        }
        body = b
    }
    var others: [SavedRun] = []
    if let path = options.plotComparePath {
        guard let bytes = readWholeFile(path) else {
            printErr("remora bench: --plot-compare \(path): \(String(cString: strerror(errno)))")
            return 1
        }
        do { others.append(try SavedRun.load(json: String(decoding: bytes, as: UTF8.self))) } catch {
            printErr("remora bench: --plot-compare \(path): \(error)")
            return 1
        }
    }

    let proto: any BenchProtocol
    let addresses: [SocketAddress]
    switch options.target {
    case let .http1(url):
        do {
            addresses = try Resolver.resolve(HostPort(host: url.host, port: url.port))
        } catch {
            printErr("remora bench: \(error)")
            return 1
        }
        let request = HTTP1Protocol.serialize(method: options.effectiveMethod, url: url, headers: options.headers, body: body)
        proto = HTTP1Protocol(request: request, method: options.effectiveMethod, streams: options.streams,
                              timeoutNs: options.timeout)
    case let .h2c(url), let .grpc(url):
        do {
            addresses = try Resolver.resolve(HostPort(host: url.host, port: url.port))
        } catch {
            printErr("remora bench: \(error)")
            return 1
        }
        if options.isGRPC {
            if let path = options.dataFile {
                guard let b = readWholeFile(path) else {
                    printErr("remora bench: --data \(path): \(String(cString: strerror(errno)))")
                    return 1
                }
                body = b
            } else {
                body = []
            }
        }
        proto = HTTP2Protocol(grpc: options.isGRPC ? options.grpcMode : nil, messagesPerCall: options.messagesPerCall,
                              method: options.effectiveMethod, url: url, headers: options.headers,
                              body: body, streams: options.streams, timeoutNs: options.timeout)
    }

    var o = options
    if o.progress == nil { o.progress = isatty(2) == 1 }
    let threads = o.effectiveThreads(cores: onlineCPUs())
    let plan = BenchPlan(options: o, addresses: addresses, threads: threads, now: monotonicNanos())
    let runner = BenchRunner(plan: plan, proto: proto)
    if plan.progress { runner.progressSink = { printErr($0) } }
    let result = runner.run()

    let report = BenchReport(options: options, protocolName: proto.name, threads: threads, result: result)
    printOut(report.summary())

    var failed = false
    func save(_ path: String?, _ what: String, _ text: @autoclosure () -> String) {
        guard let path else { return }
        if writeWholeFile(path, text()) {
            printErr("remora bench: wrote \(what) to \(path)")
        } else {
            printErr("remora bench: cannot write \(path): \(String(cString: strerror(errno)))")
            failed = true
        }
    }
    save(options.jsonPath, "JSON", report.json().serialized())
    save(options.hgrmPath, "the percentile distribution", BenchReport.hgrm(result.latency))
    save(options.plotPath, "the latency chart", report.svg(comparing: others))

    if result.interrupted { return 130 }
    if failed || result.counters.responses == 0 { return 1 }
    return 0
}

func readWholeFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 { if errno == EINTR { continue }; return nil }
        if n == 0 { return out }
        out += chunk[0..<n]
    }
}

func writeWholeFile(_ path: String, _ text: String) -> Bool {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var text = text
    return text.withUTF8 { buf in
        var off = 0
        while off < buf.count {
            let n = write(fd, buf.baseAddress! + off, buf.count - off)
            if n < 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }
}
