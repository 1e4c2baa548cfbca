import CLibUV

/// Runs a handler once per loop iteration, after I/O callbacks (uv_check): HTTP/2 sessions
/// collect frames during the iteration and write them once, here. Work scheduled from a timer
/// callback must not wait for the next I/O event: `arm()` starts an idle handle, which makes the
/// loop's poll return at once, until the hook has run.
public final class IterationHook {
    let handle: UnsafeMutablePointer<uv_check_t>
    let idle: UnsafeMutablePointer<uv_idle_t>
    let handler: () -> Void
    var armed = false
    var closed = false
    var openHandles = 2

    public init(loop: EventLoop, _ handler: @escaping () -> Void) {
        self.handler = handler
        handle = .allocate(capacity: 1)
        idle = .allocate(capacity: 1)
        uv_check_init(loop.uv, handle)
        uv_idle_init(loop.uv, idle)
        let me = Unmanaged.passRetained(self).toOpaque()
        handle.pointee.data = me
        idle.pointee.data = me
        uv_check_start(handle, ioCheckCallback)
        uv_unref(UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self))
        uv_unref(UnsafeMutableRawPointer(idle).assumingMemoryBound(to: uv_handle_t.self))
    }

    /// Work is pending: run the hook in this iteration even if no I/O arrives.
    @inline(__always)
    public func arm() {
        if armed || closed { return }
        armed = true
        uv_idle_start(idle, ioIdleCallback)
    }

    func run() {
        if armed { armed = false; uv_idle_stop(idle) }
        handler()
    }

    public func close() {
        guard !closed else { return }
        closed = true
        uv_close(UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self), ioCheckCloseCallback)
        uv_close(UnsafeMutableRawPointer(idle).assumingMemoryBound(to: uv_handle_t.self), ioCheckCloseCallback)
    }

    func handleClosed() {
        openHandles -= 1
        guard openHandles == 0 else { return }
        handle.deallocate()
        idle.deallocate()
        Unmanaged.passUnretained(self).release()
    }
}
