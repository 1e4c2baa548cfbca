import CLibUV

/// Calls a handler when a file changes, however it is written: the file's directory is watched
/// (editors and config tools replace files by renaming a new one over them), events for other names
/// are ignored, and bursts are folded into one call after `debounce` ms.
public final class FileWatcher {
    let handle: UnsafeMutablePointer<uv_fs_event_t>
    let name: String
    let debounceTimer: LoopTimer
    let debounce: UInt64
    let handler: () -> Void
    var closed = false

    /// `path` is the file to watch; false from `start` when its directory cannot be watched.
    public init(loop: EventLoop, path: String, debounce: UInt64 = 100, _ handler: @escaping () -> Void) {
        self.handler = handler
        self.debounce = debounce
        let slash = path.lastIndex(of: "/")
        name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        debounceTimer = LoopTimer(loop: loop)
        handle = .allocate(capacity: 1)
        uv_fs_event_init(loop.uv, handle)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        let dir = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        uv_fs_event_start(handle, ioFSEventCallback, dir, 0)
    }

    func changed(_ file: UnsafePointer<CChar>?) {
        guard let file, String(cString: file) == name else { return }
        debounceTimer.start(after: debounce) { [weak self] in self?.handler() }
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
