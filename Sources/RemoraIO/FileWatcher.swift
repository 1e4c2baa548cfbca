import CLibUV
import Glibc

/// Calls a handler when a file changes, however it is written: the file's directory is watched
/// (editors and config tools replace files by renaming a new one over them), events for other names
/// are ignored, and bursts are folded into one call after `debounce` ms.
public final class FileWatcher {
    let handle: UnsafeMutablePointer<uv_fs_event_t>
    let name: String
    let debounceTimer: LoopTimer
    let debounce: UInt64
    let handler: () -> Void
    let path: String
    var last: [Int]
    var closed = false

    /// `path` is the file to watch; false from `start` when its directory cannot be watched.
    public init(loop: EventLoop, path: String, debounce: UInt64 = 100, _ handler: @escaping () -> Void) {
        self.handler = handler
        self.debounce = debounce
        self.path = path
        last = FileWatcher.identity(path)
        let slash = path.lastIndex(of: "/")
        name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        debounceTimer = LoopTimer(loop: loop)
        handle = .allocate(capacity: 1)
        uv_fs_event_init(loop.uv, handle)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        let dir = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        uv_fs_event_start(handle, ioFSEventCallback, dir, 0)
    }

    /// Any event in the directory: the file itself is checked (its target's device, inode, size and
    /// modification time), so symlink swaps (a Kubernetes ConfigMap's `..data`) count too.
    func changed(_ file: UnsafePointer<CChar>?) {
        let now = FileWatcher.identity(path)
        if file.map({ String(cString: $0) == name }) != true && now == last { return }
        last = now
        debounceTimer.start(after: debounce) { [weak self] in self?.handler() }
    }

    static func identity(_ path: String) -> [Int] {
        var st = stat()
        guard stat(path, &st) == 0 else { return [] }
        return [Int(st.st_dev), Int(st.st_ino), Int(st.st_size), Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec)]
    }

    public func close() {
        guard !closed else { return }
        closed = true
        debounceTimer.close()
        uv_close(remora_handle_fs_event(handle), ioFSEventCloseCallback)
    }

    func handleClosed() {
        handle.deallocate()
        Unmanaged.passUnretained(self).release()
    }
}
