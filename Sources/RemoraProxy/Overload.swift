import Glibc
import RemoraCore
import RemoraIO

/// Samples the process's resident set size once a second on the main loop (`/proc/self/statm`: one
/// open, read and close) and publishes the overload level the workers act on (`overloadLevel`).
/// Runs only while the configuration has an `overload:` section; `config` is asked at every tick,
/// so a reload that adds, changes or removes it takes effect within a second.
final class OverloadMonitor {
    let timer: LoopTimer
    let config: () -> OverloadConfig?
    let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))

    init(loop: EventLoop, config: @escaping () -> OverloadConfig?) {
        self.config = config
        timer = LoopTimer(loop: loop)
        timer.start(after: 0, repeat: 1_000) { [unowned self] in self.tick() }
        timer.unref()   // never keeps the main loop alive by itself
    }

    func tick() {
        guard let c = config() else {
            if overloadLevel != 0 || overloadRSS != 0 { overloadLevel = 0; overloadRSS = 0 }
            return
        }
        let rss = OverloadMonitor.residentPages() * pageSize
        let level: UInt64 = rss > UInt64(c.refuseConnectionsAbove) ? 2 : rss > UInt64(c.refuseStreamsAbove) ? 1 : 0
        if level != overloadLevel { log("overload: RSS \(rss >> 20) MiB, level \(level)") }
        overloadLevel = level
        overloadRSS = rss
    }

    /// The second field of /proc/self/statm (resident pages), 0 when unreadable.
    static func residentPages() -> UInt64 {
        let fd = open("/proc/self/statm", O_RDONLY)
        if fd < 0 { return 0 }
        defer { Glibc.close(fd) }
        var buf = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        return withUnsafeMutableBytes(of: &buf) { b -> UInt64 in
            let n = Glibc.read(fd, b.baseAddress, b.count)
            guard n > 0 else { return 0 }
            var field = 0
            var v: UInt64 = 0
            for i in 0..<n {
                let c = b[i]
                if c == 0x20 {
                    if field == 1 { return v }
                    field += 1
                    continue
                }
                if field == 1 && c >= 0x30 && c <= 0x39 { v = v * 10 + UInt64(c - 0x30) }
            }
            return v
        }
    }

    func close() { timer.close() }
}
