import CLibUV

public protocol DeadlineTimerDelegate: AnyObject {
    func deadlineReached(_ t: DeadlineTimer)
}

/// A deadline on a loop for objects that have no connection of their own (an HTTP/2 stream's
/// exchange). Like `TCPConnection.setDeadline`, the timer is re-armed only when a deadline moves
/// earlier. Allocated once per owner; the owner is pooled, so nothing is allocated per request.
public final class DeadlineTimer {
    let handle: UnsafeMutablePointer<uv_timer_t>
    public unowned(unsafe) let loop: EventLoop
    /// The loop's libuv handle (reading the time through it costs no retain of `loop`).
    let uvLoop: UnsafeMutablePointer<uv_loop_t>
    public unowned(unsafe) var delegate: (any DeadlineTimerDelegate)?
    var deadline: UInt64 = 0
    var due: UInt64 = 0
    var closed = false

    public init(loop: EventLoop) {
        self.loop = loop
        uvLoop = loop.uv
        handle = .allocate(capacity: 1)
        uv_timer_init(loop.uv, handle)
        uv_unref(remora_handle_timer(handle))   // a pending deadline alone does not keep a loop alive
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    @inline(__always)
    public func set(after ms: UInt64) {
        guard !closed else { return }
        let d = uv_now(uvLoop) &+ ms
        deadline = d
        if due == 0 || due > d {
            due = d
            uv_timer_start(handle, ioDeadlineCallback, ms, 0)
        }
    }

    @inline(__always)
    public func clear() { deadline = 0 }

    /// The loop's cached time, ms.
    @inline(__always) public var now: UInt64 { uv_now(uvLoop) }

    public var isSet: Bool { deadline != 0 }

    func fired() {
        due = 0
        guard deadline != 0, !closed else { return }
        let now = uv_now(uvLoop)
        if now >= deadline {
            deadline = 0
            delegate?.deadlineReached(self)
        } else {
            due = deadline
            uv_timer_start(handle, ioDeadlineCallback, deadline - now, 0)
        }
    }

    public func close() {
        guard !closed else { return }
        closed = true
        delegate = nil
        uv_close(remora_handle_timer(handle), ioDeadlineCloseCallback)
    }

    func handleClosed() {
        handle.deallocate()
        Unmanaged.passUnretained(self).release()
    }
}
