import Glibc
import RemoraConfig
import RemoraControl
import RemoraCore

/// `remora wait-ready [--admin HOST:PORT] [--timeout 60s]`: polls the admin API's `/ready` until
/// it answers 200 (exit 0) or the time is up (exit 1). For a Kubernetes postStart hook on the
/// sidecar container, so that the application container starts only once the sidecar serves
/// (the iptables rules send its connections to the sidecar from the first one); Istio's
/// `pilot-agent wait` does the same. A CLI helper: it blocks and allocates.
func waitReadyCommand(_ rest: ArraySlice<String>) -> Int32 {
    let args: Args
    do { args = try Args(rest, valued: ["admin", "timeout"]) } catch let e as UsageError {
        printErr("remora wait-ready: \(e.message)\n\n" + waitReadyUsage)
        return 2
    } catch { return 2 }
    guard args.positional.isEmpty else { printErr("remora wait-ready: unexpected \(args.positional[0])\n\n" + waitReadyUsage); return 2 }
    let adminText = args.options["admin"] ?? "127.0.0.1:15000"
    guard let admin = HostPort.parse(adminText), admin.port != 0 else {
        printErr("remora wait-ready: --admin: expected HOST:PORT, got \(adminText)")
        return 2
    }
    let timeoutText = args.options["timeout"] ?? "60s"
    guard let timeout = ConfigValue.duration(timeoutText) else {
        printErr("remora wait-ready: --timeout: expected a duration like 60s, got \(timeoutText)")
        return 2
    }
    let deadline = monotonicMillis() + UInt64(timeout)
    let client = BlockingHTTPClient(timeout: 1_000)
    var last = "no answer"
    while true {
        do {
            let r = try client.request("GET", host: admin.host, port: admin.port, target: "/ready", headers: [], body: [])
            if r.status == 200 {
                printOut("remora wait-ready: \(r.text.trimmingNewline)")
                return 0
            }
            last = "\(r.status) \(r.text.trimmingNewline)"
        } catch {
            last = error.message
        }
        let now = monotonicMillis()
        guard now < deadline else {
            printErr("remora wait-ready: not ready within \(timeoutText) (http://\(admin)/ready: \(last))")
            return 1
        }
        usleep(UInt32(min(200, deadline - now)) * 1_000)
    }
}

func monotonicMillis() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000 + UInt64(ts.tv_nsec) / 1_000_000
}

extension String {
    var trimmingNewline: String { hasSuffix("\n") ? String(dropLast()) : self }
}

let waitReadyUsage = """
usage: remora wait-ready [--admin HOST:PORT] [--timeout DURATION]
  waits until the proxy whose admin API is at HOST:PORT (default 127.0.0.1:15000) is ready
  (GET /ready answers 200): exit 0; exit 1 after DURATION (default 60s). For a postStart hook.
"""
