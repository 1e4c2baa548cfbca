import CLibUV

/// Runs a handler once per loop iteration, after I/O callbacks (uv_check): HTTP/2 sessions
/// collect frames during the iteration and write them once, here.
public final class IterationHook {
    let handle: UnsafeMutablePointer<uv_check_t>
    let handler: () -> Void
    var closed = false

    public init(loop: EventLoop, _ handler: @escaping () -> Void) {
        self.handler = handler
        handle = .allocate(capacity: 1)
        uv_check_init(loop.uv, handle)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        uv_check_start(handle, ioCheckCallback)
        uv_unref(UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self))
    }

    public func close() {
        guard !closed else { return }
        closed = true
        uv_close(UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self), ioCheckCloseCallback)
    }

    func handleClosed() {
        handle.deallocate()
        Unmanaged.passUnretained(self).release()
    }
}
