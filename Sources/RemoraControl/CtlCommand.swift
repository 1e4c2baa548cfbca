import RemoraConfig
import RemoraCore

// `remora ctl` arguments, parsed without I/O (tests cover every refusal).

/// A canary walk: the canary's share goes up by `step` points every `every` until 100 %.
public struct CanaryOptions: Equatable, Sendable {
    public var group: String
    public var route: String
    public var canary: String
    /// Percentage points per step, 1 ... 100.
    public var step: Int
    /// Time between steps, ms (> 0).
    public var every: UInt64
    /// Highest 5xx share of the canary's requests over one step, 0 ... 1. Default 0.01.
    public var max5xxRate: Double

    public init(group: String, route: String, canary: String, step: Int, every: UInt64, max5xxRate: Double = 0.01) {
        self.group = group; self.route = route; self.canary = canary
        self.step = step; self.every = every; self.max5xxRate = max5xxRate
    }
}

public enum CtlCommand: Equatable, Sendable {
    case status
    case get(group: String)
    /// `file` "-" reads standard input.
    case apply(group: String, file: String, force: Bool)
    case split(group: String, route: String, weights: [ClusterWeight])
    case canary(CanaryOptions)
    /// `top ADMIN_URL`: a proxy's golden metrics every `interval` ms; `count` tables (0 = until
    /// interrupted; piped output: one).
    case top(admin: ControlURL, interval: UInt64, count: Int)
    /// `ca status` (`GET /v1/ca`), `ca bundle` (`GET /v1/ca/bundle`).
    case caStatus
    case caBundle
    /// `ca rotate start [--sign-after D]` (seconds) / `ca rotate finish [--force]`.
    case caRotate(start: Bool, signAfter: UInt64?, force: Bool)
}

public struct CtlInvocation: Equatable, Sendable {
    public var control: ControlURL
    public var tokenFile: String?
    public var command: CtlCommand
    public init(control: ControlURL = .default, tokenFile: String? = nil, command: CtlCommand) {
        self.control = control; self.tokenFile = tokenFile; self.command = command
    }
}

public struct CtlUsageError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ m: String) { message = m }
    public var description: String { message }
}

extension CtlInvocation {
    public static let usage = """
    usage: remora ctl [--control URL] [--token-file F] <command>
      status                               the proxies: node, group, version, ACK/NACK, reason, last seen, admin
      get GROUP                            the group's current document
      apply GROUP FILE [--force]           store FILE ("-": stdin) as the group's next version
      split GROUP ROUTE C1=W C2=W ...      set the weights of ROUTE's backends (ROUTE or LISTENER/ROUTE)
      split GROUP ROUTE --canary C --step N --every D [--max-5xx-rate R]
                                           walk cluster C up by N points every D (e.g. 30s) to 100 %;
                                           stop and set C back to 0 if its 5xx rate over a step exceeds R
                                           (default 0.01), read from each ACKing proxy's /stats
      ca status | ca bundle                the mesh CA: trust domain, roots, rotation, certificates issued
                                           and refused | the trust bundle (PEM)
      ca rotate start [--sign-after D]     a new root joins the trust bundle now and signs from D on
                                           (default 90s: every proxy fetches the new bundle meanwhile)
      ca rotate finish [--force]           the old root leaves the bundle (refused while certificates
                                           it signed may still be valid, unless --force)
      top ADMIN_URL [--interval D] [--count N]
                                           a proxy's golden metrics per route and backend (req/s, success,
                                           split, p50/p99) from its admin address, every D (default 1s);
                                           one table when piped
    URL defaults to http://127.0.0.1:9911; the token comes from F or REMORA_CONTROL_TOKEN.
    """

    /// Options may come anywhere, as `--name VALUE` or `--name=VALUE`.
    public static func parse(_ argv: [String]) throws(CtlUsageError) -> CtlInvocation {
        let valued: Set<String> = ["control", "token-file", "canary", "step", "every", "max-5xx-rate", "f", "interval", "count",
                                   "sign-after"]
        let flags: Set<String> = ["force"]
        var options: [String: String] = [:]
        var given: Set<String> = []
        var positional: [String] = []
        var i = 0
        while i < argv.count {
            let a = argv[i]
            i += 1
            if a == "-" || !a.hasPrefix("-") || (a.count > 1 && a.dropFirst().first?.isNumber == true) {
                positional.append(a)
                continue
            }
            let body = a.hasPrefix("--") ? a.dropFirst(2) : a.dropFirst()
            if a.hasPrefix("-") && !a.hasPrefix("--") && body != "f" { throw CtlUsageError("unknown option \(a)") }
            var name = String(body)
            var value: String?
            if let eq = body.firstIndex(of: "=") {
                name = String(body[..<eq])
                value = String(body[body.index(after: eq)...])
            }
            if flags.contains(name) {
                if value != nil { throw CtlUsageError("option --\(name) takes no value") }
                given.insert(name)
                continue
            }
            guard valued.contains(name) else { throw CtlUsageError("unknown option \(a)") }
            if value == nil {
                guard i < argv.count else { throw CtlUsageError("option \(a) needs a value") }
                value = argv[i]
                i += 1
            }
            if given.contains(name) { throw CtlUsageError("option --\(name) given twice") }
            given.insert(name)
            options[name] = value
        }

        var control = ControlURL.default
        if let u = options["control"] {
            guard let url = ControlURL.parse(u) else { throw CtlUsageError("--control: expected http://HOST:PORT, got \(u)") }
            control = url
        }
        func allow(_ names: Set<String>, for command: String) throws(CtlUsageError) {
            for n in given.subtracting(["control", "token-file"]).sorted() where !names.contains(n) {
                throw CtlUsageError("option --\(n) does not apply to \(command)")
            }
        }
        func group(_ s: String) throws(CtlUsageError) -> String {
            do { return try ControlRequest.checkGroup(s) } catch { throw CtlUsageError(error.message) }
        }
        guard let sub = positional.first else { throw CtlUsageError("name a command: status, get, apply, split or top") }
        let args = Array(positional.dropFirst())
        let command: CtlCommand
        switch sub {
        case "status":
            try allow([], for: "status")
            guard args.isEmpty else { throw CtlUsageError("status takes no arguments, got \(args.joined(separator: " "))") }
            command = .status
        case "get":
            try allow([], for: "get")
            guard args.count == 1 else { throw CtlUsageError("usage: get GROUP") }
            command = .get(group: try group(args[0]))
        case "apply":
            try allow(["force", "f"], for: "apply")
            var rest = args
            if let f = options["f"] { rest.append(f) }
            guard rest.count == 2 else { throw CtlUsageError("usage: apply GROUP FILE [--force]") }
            command = .apply(group: try group(rest[0]), file: rest[1], force: given.contains("force"))
        case "split":
            guard args.count >= 2 else { throw CtlUsageError("usage: split GROUP ROUTE C1=W C2=W ... | split GROUP ROUTE --canary C --step N --every D") }
            let g = try group(args[0])
            let route = args[1]
            do { try ControlRequest.checkRouteSpec(route) } catch { throw CtlUsageError(error.message) }
            if let canary = options["canary"] {
                try allow(["canary", "step", "every", "max-5xx-rate"], for: "split --canary")
                guard args.count == 2 else {
                    throw CtlUsageError("split --canary takes no weights (the walk sets them), got \(args.dropFirst(2).joined(separator: " "))")
                }
                guard ControlRequest.isName(canary) else { throw CtlUsageError("--canary: not a cluster name: \(canary)") }
                guard let s = options["step"] else { throw CtlUsageError("split --canary needs --step N (percentage points per step)") }
                guard let step = Int(s), (1...100).contains(step) else { throw CtlUsageError("--step: expected 1 to 100, got \(s)") }
                guard let e = options["every"] else { throw CtlUsageError("split --canary needs --every D (e.g. 30s)") }
                guard let every = ConfigValue.duration(e), every > 0 else {
                    throw CtlUsageError("--every: expected a duration like \"30s\" or \"2m\", got \(e)")
                }
                var rate = 0.01
                if let r = options["max-5xx-rate"] {
                    guard let v = Double(r), v >= 0, v <= 1 else { throw CtlUsageError("--max-5xx-rate: expected a number from 0 to 1, got \(r)") }
                    rate = v
                }
                command = .canary(CanaryOptions(group: g, route: route, canary: canary, step: step, every: every, max5xxRate: rate))
            } else {
                try allow([], for: "split without --canary")
                guard args.count > 2 else { throw CtlUsageError("split: give the weights (C1=W C2=W ...) or --canary C --step N --every D") }
                do {
                    command = .split(group: g, route: route, weights: try ControlRequest.parseWeights(args.dropFirst(2).joined(separator: " ")))
                } catch {
                    throw CtlUsageError(error.message)
                }
            }
        case "top":
            try allow(["interval", "count"], for: "top")
            guard args.count == 1 else { throw CtlUsageError("usage: top ADMIN_URL (the proxy's admin address, e.g. http://127.0.0.1:9901)") }
            guard let admin = ControlURL.parse(args[0]) else { throw CtlUsageError("top: expected ADMIN_URL like http://127.0.0.1:9901, got \(args[0])") }
            var interval: UInt64 = 1000
            if let d = options["interval"] {
                guard let v = ConfigValue.duration(d), v >= 100 else { throw CtlUsageError("--interval: expected a duration of at least 100ms, got \(d)") }
                interval = v
            }
            var count = 0
            if let c = options["count"] {
                guard let v = Int(c), v >= 1 else { throw CtlUsageError("--count: expected a number of tables >= 1, got \(c)") }
                count = v
            }
            command = .top(admin: admin, interval: interval, count: count)
        case "ca":
            switch args {
            case ["status"]:
                try allow([], for: "ca status")
                command = .caStatus
            case ["bundle"]:
                try allow([], for: "ca bundle")
                command = .caBundle
            case ["rotate", "start"]:
                try allow(["sign-after"], for: "ca rotate start")
                var after: UInt64?
                if let d = options["sign-after"] {
                    guard let v = ConfigValue.duration(d) else { throw CtlUsageError("--sign-after: expected a duration like \"90s\" or \"0s\", got \(d)") }
                    after = v / 1000
                }
                command = .caRotate(start: true, signAfter: after, force: false)
            case ["rotate", "finish"]:
                try allow(["force"], for: "ca rotate finish")
                command = .caRotate(start: false, signAfter: nil, force: given.contains("force"))
            default:
                throw CtlUsageError("usage: ca status | ca bundle | ca rotate start [--sign-after D] | ca rotate finish [--force]")
            }
        default:
            throw CtlUsageError("unknown command \(sub) (expected status, get, apply, split or top)")
        }
        return CtlInvocation(control: control, tokenFile: options["token-file"], command: command)
    }
}
