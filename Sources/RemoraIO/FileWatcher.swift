import CLibUV
import Glibc

/// Calls a handler once a file has changed and then stayed unchanged for `settle` ms, however it
/// is written:
/// - in place (truncate, then write, perhaps in pieces): every event restarts the wait, so a writer
///   that pauses for less than `settle` between pieces is never read half-way;
/// - replaced by renaming a new file over it (editors, config tools): the file's directory is
///   watched, not the file's inode, so the new file is seen;
/// - through symbolic links, e.g. a Kubernetes ConfigMap volume (`dir/F -> ..data/F`,
///   `dir/..data -> ..2026_05_01_…`, updated by renaming a new `..data` link over the old one):
///   the directory holding each link on the way to the file is watched too, and those watches move
///   to the new directories when a link changes.
/// An event for another name counts only when the file's identity (device, inode, size,
/// modification time, seen through the links) changed, so an editor's swap files do not.
public final class FileWatcher {
    /// One watched directory: the path it was reached by (through the links) and the directory it
    /// resolved to when the watch was armed (inotify watches that inode, not the path).
    struct Watch {
        var path: String
        var real: String
        var handle: UnsafeMutablePointer<uv_fs_event_t>
    }

    let loop: EventLoop
    let path: String
    /// How long the file must stay unchanged before the handler runs, in ms.
    public let settle: UInt64
    let settleTimer: LoopTimer
    let handler: () -> Void
    var watches: [Watch] = []
    /// Base names of the file and of every link on the way to it.
    var names: [String] = []
    /// The file's identity at the last event (`identity(path)`; empty while it cannot be read).
    var last: [Int]
    var closed = false

    /// `path` is the file to watch (it need not exist yet; its directory must).
    public init(loop: EventLoop, path: String, settle: UInt64 = 500, _ handler: @escaping () -> Void) {
        self.loop = loop
        self.path = path
        self.settle = settle
        self.handler = handler
        settleTimer = LoopTimer(loop: loop)
        last = FileWatcher.identity(path)
        arm()
    }

    /// The directories currently watched (resolved), for tests.
    public var watchedDirectories: [String] { watches.map(\.real) }

    /// Any event in a watched directory: the wait starts over if the file may have changed. Only
    /// recorded here; the watches move in `settled` (not from inside libuv's event callback).
    func changed(_ file: UnsafePointer<CChar>?) {
        guard !closed else { return }
        let now = FileWatcher.identity(path)
        if now == last && !(file.map { names.contains(String(cString: $0)) } ?? false) { return }
        last = now
        settleTimer.start(after: settle) { [unowned self] in self.settled() }
    }

    /// `settle` ms without an event. The links are followed again (a ConfigMap update moves
    /// `..data`), then the handler runs, unless the file changed meanwhile without an event
    /// reaching us (then the wait starts over).
    func settled() {
        arm()
        let now = FileWatcher.identity(path)
        if now != last {
            last = now
            settleTimer.start(after: settle) { [unowned self] in self.settled() }
            return
        }
        handler()
    }

    /// Watches the directory of `path` and of every link target on the way to the file; keeps
    /// the watches whose directory did not change, moves the others.
    func arm() {
        let (dirs, names) = FileWatcher.chain(path)
        self.names = names
        var next: [Watch] = []
        for dir in dirs {
            let real = FileWatcher.realPath(dir) ?? dir
            if next.contains(where: { $0.real == real }) { continue }
            if let i = watches.firstIndex(where: { $0.real == real && $0.path == dir }) {
                next.append(watches.remove(at: i))
                continue
            }
            let h = UnsafeMutablePointer<uv_fs_event_t>.allocate(capacity: 1)
            uv_fs_event_init(loop.uv, h)
            h.pointee.data = Unmanaged.passRetained(self).toOpaque()   // released in handleClosed
            uv_fs_event_start(h, ioFSEventCallback, dir, 0)             // a missing directory: no events
            next.append(Watch(path: dir, real: real, handle: h))
        }
        watches.forEach { uv_close(remora_handle_fs_event($0.handle), ioFSEventCloseCallback) }
        watches = next
    }

    /// The directories to watch for `path` and the names that matter in them: `path`'s own, then
    /// for each symbolic link on the way (at most 8) its target's.
    static func chain(_ path: String) -> (dirs: [String], names: [String]) {
        var dirs: [String] = [], names: [String] = []
        var p = path
        for _ in 0..<8 {
            let slash = p.lastIndex(of: "/")
            let dir = slash.map { $0 == p.startIndex ? "/" : String(p[..<$0]) } ?? "."
            if !dirs.contains(dir) { dirs.append(dir) }
            names.append(slash.map { String(p[p.index(after: $0)...]) } ?? p)
            guard let target = linkTarget(p) else { break }
            p = target.hasPrefix("/") ? target : dir + "/" + target
        }
        return (dirs, names)
    }

    static func linkTarget(_ p: String) -> String? {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(p, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func realPath(_ p: String) -> String? {
        guard let r = realpath(p, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    static func identity(_ path: String) -> [Int] {
        var st = stat()
        guard stat(path, &st) == 0 else { return [] }
        return [Int(st.st_dev), Int(st.st_ino), Int(st.st_size), Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec)]
    }

    public func close() {
        guard !closed else { return }
        closed = true
        settleTimer.close()
        watches.forEach { uv_close(remora_handle_fs_event($0.handle), ioFSEventCloseCallback) }
        watches = []
    }

    func handleClosed(_ h: UnsafeMutableRawPointer) {
        h.assumingMemoryBound(to: uv_fs_event_t.self).deallocate()
        Unmanaged.passUnretained(self).release()
    }
}
