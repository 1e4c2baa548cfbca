import Glibc
import RemoraAdmin
import RemoraConfig
import RemoraCore
import RemoraIO
import RemoraProxy

// The one executable. Arguments are parsed by hand: swift-argument-parser imports
// FoundationEssentials, which the data-plane binary leaves out to keep its memory small.

let usage = """
usage: remora <command> [options]

commands:
  run --config FILE [--watch]
                           run the proxy in the foreground (SIGTERM drains, then exits 0;
                           SIGHUP, or any change with --watch, reloads FILE without a restart)
  run --control URL --node ID --group NAME [--admin HOST:PORT] [--config FILE] [--token-file F]
                           take the configuration from a control server (FILE: the initial one)
  run --sidecar [--config FILE] [--admin HOST:PORT] [--control URL --node ID --group NAME ...]
                           sidecar mode: adds the `sidecar:` section's defaults to a configuration
                           (FILE's or the control server's) that has none (outbound listener 15001,
                           inbound 15006; docs/sidecar.md)
  iptables --uid N [--apply | --clean] [options]
                           print (or apply) the iptables rules that send traffic to the sidecar
  wait-ready [--admin HOST:PORT] [--timeout 60s]
                           wait until that proxy is ready (a postStart hook: the application
                           starts once its sidecar serves)
  validate FILE...         check config files; every error as file:line: path: message
  demo [--port N]          the proxy with a built-in config and two demo backends
  bench [options] URL      load generator: closed/open loop, HdrHistogram latency (bench --help)
  control --state DIR [--listen HOST:PORT] [--token-file F] [--trust-domain D] [--cert-ttl 24h]
          [--ca-cert F --ca-key F]
                           the control server: holds each group's config, pushes it to proxies;
                           the mesh CA (workload certificates for CSRs with a bootstrap token)
  control token --state DIR NAMESPACE SERVICE_ACCOUNT [--revoke]
                           print a new bootstrap token for that identity (or revoke its tokens)
  ctl [--control URL] status | get G | apply G FILE | split G ROUTE c1=W c2=W
      | split G ROUTE --canary C --step N --every D [--max-5xx-rate R]
                           talk to the control server
  help                     this text

"""

func printErr(_ s: String) {
    var s = s + "\n"
    s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func printOut(_ s: String) {
    var s = s + "\n"
    s.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
}

/// Values of `--name VALUE` / `--name=VALUE`, `--flag`s; everything else is positional.
struct Args {
    var options: [String: String] = [:]
    var flags: Set<String> = []
    var positional: [String] = []
    init(_ argv: ArraySlice<String>, valued: Set<String>, flags allowed: Set<String> = []) throws {
        var it = argv.makeIterator()
        while let a = it.next() {
            if a.hasPrefix("--") {
                let body = a.dropFirst(2)
                if let eq = body.firstIndex(of: "=") {
                    options[String(body[..<eq])] = String(body[body.index(after: eq)...])
                } else if allowed.contains(String(body)) {
                    flags.insert(String(body))
                } else if valued.contains(String(body)) {
                    guard let v = it.next() else { throw UsageError("option --\(body) needs a value") }
                    options[String(body)] = v
                } else {
                    throw UsageError("unknown option \(a)")
                }
            } else {
                positional.append(a)
            }
        }
        for k in options.keys where !valued.contains(k) { throw UsageError("unknown option --\(k)") }
    }
}

struct UsageError: Error { let message: String; init(_ m: String) { message = m } }

func load(_ path: String) -> Config? {
    switch ConfigLoader.load(path: path) {
    case .success(let c): return c
    case .failure(let e):
        printErr(e.description)
        return nil
    }
}

func runCommand(_ args: Args) -> Int32 {
    let path = args.options["config"] ?? args.positional.first
    let controlURL = args.options["control"]
    let sidecar = args.flags.contains("sidecar")
    guard path != nil || controlURL != nil || sidecar else {
        printErr("remora run: --config FILE, --control URL or --sidecar is required\n\n" + usage)
        return 2
    }
    var config = Config()
    if let path {
        guard let c = load(path) else { return 1 }
        config = c
    }
    if sidecar && config.sidecar == nil {
        let clash = config.addSidecar(SidecarConfig())
        if !clash.isEmpty { printErr("remora run: --sidecar: listener names taken: \(clash.joined(separator: ", "))"); return 1 }
    }
    if let a = args.options["admin"] {
        guard let hp = HostPort.parse(a) else { printErr("remora run: --admin: expected HOST:PORT, got \(a)"); return 2 }
        config.admin = AdminConfig(address: hp)
    }
    let server = Server(config: config, source: path.flatMap(readFile) ?? "")
    server.configPath = path
    server.watch = args.flags.contains("watch")
    server.sidecarDefault = sidecar
    if let url = controlURL {
        guard let node = args.options["node"], let group = args.options["group"] else {
            printErr("remora run: --control needs --node ID and --group NAME")
            return 2
        }
        for (flag, value) in [("--node", node), ("--group", group)] where value.isEmpty || !value.utf8.allSatisfy({
            ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D
        }) {
            printErr("remora run: \(flag) \"\(value)\": use letters, digits, '.', '_' and '-'")
            return 2
        }
        var token = getenv("REMORA_CONTROL_TOKEN").map { String(cString: $0) }
        if let f = args.options["token-file"] {
            guard let t = readFile(f) else { printErr("remora run: cannot read --token-file \(f)"); return 2 }
            token = String(t.split(whereSeparator: \.isNewline).first ?? "")
        }
        server.control = (url, node, group, token)
    }
    return server.run()
}

func validateCommand(_ args: Args) -> Int32 {
    guard !args.positional.isEmpty else { printErr("remora validate: name at least one file"); return 2 }
    var failed = false
    for path in args.positional {
        switch ConfigLoader.load(path: path) {
        case .success(let config):
            // The TLS files too: a missing certificate or a key that does not match is an error here.
            if let e = Snapshot.checkTLSFiles(config) {
                let text = readFile(path) ?? ""
                printErr(ConfigLoader.locate(e, in: text, file: path).description)
                failed = true
                continue
            }
            printOut("\(path): ok")
        case .failure(let e):
            printErr(e.description)
            failed = true
        }
    }
    return failed ? 1 : 0
}

func demoCommand(_ args: Args) -> Int32 {
    let port = args.options["port"] ?? "8080"
    let adminPort = args.options["admin-port"] ?? "9901"
    let loop = EventLoop()
    var backends: [LocalHTTPServer] = []
    for name in ["v1", "v2"] {
        do {
            let s = try LocalHTTPServer(loop: loop, address: SocketAddress(ip: "127.0.0.1", port: 0)!) { req in
                .init(status: 200, body: "hello from demo backend \(name): \(req.method) \(req.target)\n")
            }
            backends.append(s)
        } catch {
            printErr("demo backend: \(error)")
            return 1
        }
    }
    let yaml = demoConfig(port: port, adminPort: adminPort, v1: backends[0].address.port, v2: backends[1].address.port)
    let config: Config
    switch ConfigLoader.parse(yaml: yaml, file: "<demo>") {
    case .success(let c): config = c
    case .failure(let e): printErr(e.description); return 1
    }
    let server = Server(config: config, source: yaml, loop: loop)
    server.extraClose = backends.map { b in { b.close() } }
    server.onReady = {
        printErr("""

        Remora demo: a proxy on 127.0.0.1:\(port) in front of two demo backends, v1 and v2, split 90/10.
        Try:
          curl -s http://127.0.0.1:\(port)/hello
          for i in $(seq 100); do curl -s http://127.0.0.1:\(port)/; done | sort | uniq -c      # ~90 v1, ~10 v2
          curl -s -H 'x-canary: always' http://127.0.0.1:\(port)/                             # always v2
          curl -s --http2-prior-knowledge http://127.0.0.1:\(port)/                            # HTTP/2 (h2c)
          curl -s http://127.0.0.1:\(adminPort)/stats | grep upstream_rq_total
        The config it runs:
        \(yaml)
        Ctrl-C to stop.
        """)
    }
    return server.run()
}

func demoConfig(port: String, adminPort: String, v1: UInt16, v2: UInt16) -> String {
    """
    admin: { address: 127.0.0.1:\(adminPort) }
    workers: 1
    listeners:
      - name: web
        address: 127.0.0.1:\(port)
        protocol: http            # HTTP/1.1 and h2c on the same port
        routes:
          # Testing in production: this header always reaches the canary.
          - name: canary-override
            match: { headers: [ { name: x-canary, exact: always } ] }
            backends: [ { cluster: v2 } ]
          # The canary split: 90 % to v1, 10 % to v2.
          - name: split
            match: { path: { prefix: / } }
            backends: [ { cluster: v1, weight: 90 }, { cluster: v2, weight: 10 } ]
    clusters:
      - name: v1
        endpoints: [ "127.0.0.1:\(v1)" ]
      - name: v2
        endpoints: [ "127.0.0.1:\(v2)" ]
    """
}

let argv = CommandLine.arguments
let command = argv.count > 1 ? argv[1] : "help"
let rest = argv.dropFirst(2)
let code: Int32
do {
    switch command {
    case "run": code = runCommand(try Args(rest, valued: ["config", "control", "node", "group", "admin", "token-file"],
                                           flags: ["watch", "sidecar"]))
    case "iptables": code = iptablesCommand(rest)
    case "wait-ready": code = waitReadyCommand(rest)
    case "validate": code = validateCommand(try Args(rest, valued: []))
    case "demo": code = demoCommand(try Args(rest, valued: ["port", "admin-port"]))
    case "bench": code = benchCommand(rest)
    case "control": code = controlCommand(rest)
    case "ctl": code = ctlCommand(rest)
    case "help", "--help", "-h": printOut(usage); code = 0
    default: printErr("remora: unknown command \(command)\n\n" + usage); code = 2
    }
} catch let e as UsageError {
    printErr("remora \(command): \(e.message)\n\n" + usage)
    code = 2
}
exit(code)
