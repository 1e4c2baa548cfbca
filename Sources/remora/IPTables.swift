import Glibc
import RemoraConfig
import RemoraCore

/// `remora iptables --uid N [--apply | --clean]`: prints (or runs) the rules that redirect a
/// workload's traffic to the sidecar's listeners (docs/sidecar.md). Ports come from the options,
/// else from `--config FILE`'s `sidecar:` and `admin:` sections, else Istio's defaults.
func iptablesCommand(_ rest: ArraySlice<String>) -> Int32 {
    let args: Args
    do {
        args = try Args(rest, valued: ["uid", "gid", "config", "outbound-port", "inbound-port", "admin-port", "inbound-ports",
                                       "exclude-inbound-ports", "exclude-outbound-ports"],
                        flags: ["apply", "clean", "no-ipv6"])
    } catch let e as UsageError {
        printErr("remora iptables: \(e.message)\n\n" + iptablesUsage)
        return 2
    } catch { return 2 }
    guard let uidText = args.options["uid"], let uid = UInt32(uidText) else {
        printErr("remora iptables: --uid N is required (the uid the proxy runs as; its connections are not redirected)\n\n"
                 + iptablesUsage)
        return 2
    }
    var t = SidecarIPTables(uid: uid)
    if let path = args.options["config"] {
        guard let c = load(path) else { return 1 }
        if let s = c.sidecar { t.outboundPort = s.outboundPort; t.inboundPort = s.inboundPort; t.ipv6 = s.ipv6 }
        if let a = c.admin { t.adminPort = a.address.port }
    }
    func port(_ name: String) -> UInt16?? {
        guard let v = args.options[name] else { return .some(nil) }
        guard let p = UInt16(v), p > 0 else { printErr("remora iptables: --\(name): expected a port, got \(v)"); return nil }
        return .some(p)
    }
    func ports(_ name: String) -> [UInt16]? {
        guard let v = args.options[name] else { return [] }
        var out: [UInt16] = []
        for part in v.split(separator: ",") {
            guard let p = UInt16(part.trimmingSpaces), p > 0 else {
                printErr("remora iptables: --\(name): expected ports like 8080,9090, got \(v)")
                return nil
            }
            out.append(p)
        }
        return out
    }
    if let g = args.options["gid"] {
        guard let gid = UInt32(g) else { printErr("remora iptables: --gid: expected a number, got \(g)"); return 2 }
        t.gid = gid
    }
    guard let o = port("outbound-port"), let i = port("inbound-port"), let a = port("admin-port"),
          let inPorts = ports("inbound-ports"), let exIn = ports("exclude-inbound-ports"), let exOut = ports("exclude-outbound-ports")
    else { return 2 }
    if let o { t.outboundPort = o }
    if let i { t.inboundPort = i }
    if let a { t.adminPort = a }
    t.inboundPorts = inPorts
    t.excludeInboundPorts = exIn
    t.excludeOutboundPorts = exOut
    if args.flags.contains("no-ipv6") { t.ipv6 = false }

    let clean = args.flags.contains("clean")
    let commands = clean ? t.cleanup() : t.rules()
    for c in commands { printOut(c.joined(separator: " ")) }
    guard args.flags.contains("apply") || clean && args.flags.contains("apply") else { return 0 }
    for c in commands {
        let rc = spawnWait(c)
        if rc != 0 && !clean {
            let v6 = c.first == "ip6tables" && access("/proc/net/if_inet6", F_OK) != 0
            printErr("remora iptables: \(c.joined(separator: " ")) failed (exit \(rc))"
                     + (v6 ? "; this host has no IPv6: use --no-ipv6 here, and `ipv6: false` in the sidecar: section"
                        : c.contains("-N") ? "; are the rules there already? `remora iptables --uid \(uid) --clean --apply` removes them" : ""))
            return 1
        }
    }
    return 0
}

let iptablesUsage = """
usage: remora iptables --uid N [--gid N] [--config FILE] [--outbound-port 15001] [--inbound-port 15006]
                       [--admin-port 15000] [--inbound-ports P,P] [--exclude-inbound-ports P,P]
                       [--exclude-outbound-ports P,P] [--no-ipv6] [--apply] [--clean]
  prints the iptables and ip6tables commands that redirect this network namespace's TCP traffic to
  the sidecar (outbound to --outbound-port, inbound to --inbound-port), except the proxy's own (uid N),
  loopback, the admin port and the excluded ports; --apply runs them, --clean removes them (docs/sidecar.md).
"""

/// Runs `argv` (PATH lookup) and waits: its exit status, or -1 when it could not start.
func spawnWait(_ argv: [String]) -> Int32 {
    var pid: pid_t = 0
    var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    defer { for p in cargs { free(p) } }
    guard posix_spawnp(&pid, argv[0], nil, nil, &cargs, environ) == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 { if errno != EINTR { return -1 } }
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return s
    }
}
