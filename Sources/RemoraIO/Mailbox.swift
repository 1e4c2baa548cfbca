import CLibUV
import Glibc

/// Cross-thread messages into one loop: any thread posts, the loop's thread receives them in order
/// from a uv_async callback. This is how the main thread hands config snapshots and drain orders
/// to workers, and how workers report back.
public class MailboxBase: @unchecked Sendable {
    let async: UnsafeMutablePointer<uv_async_t>
    var closed = false

    init(loop: EventLoop) {
        async = .allocate(capacity: 1)
        uv_async_init(loop.uv, async, ioAsyncCallback)
        async.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    func deliver() {}

    /// Closes the async handle (on the loop's thread). Messages posted later are dropped.
    public func close() {
        guard !closed else { return }
        closed = true
        uv_close(remora_handle_async(async), ioAsyncCloseCallback)
    }

    func handleClosed() {
        async.deallocate()
        Unmanaged.passUnretained(self).release()
    }
}

public final class Mailbox<Message: Sendable>: MailboxBase, @unchecked Sendable {
    var mutex = pthread_mutex_t()
    var queue: [Message] = []
    let handler: (Message) -> Void
    var isShut = false

    /// `handler` runs on `loop`'s thread, once per message.
    public init(loop: EventLoop, handler: @escaping (Message) -> Void) {
        self.handler = handler
        pthread_mutex_init(&mutex, nil)
        super.init(loop: loop)
    }

    /// Thread-safe. Returns false when the mailbox is shut.
    @discardableResult
    public func post(_ m: Message) -> Bool {
        pthread_mutex_lock(&mutex)
        if isShut { pthread_mutex_unlock(&mutex); return false }
        queue.append(m)
        uv_async_send(async)
        pthread_mutex_unlock(&mutex)
        return true
    }

    override func deliver() {
        pthread_mutex_lock(&mutex)
        let batch = queue
        queue.removeAll(keepingCapacity: true)
        pthread_mutex_unlock(&mutex)
        for m in batch { handler(m) }
    }

    public override func close() {
        pthread_mutex_lock(&mutex)
        isShut = true   // async_send after uv_close would be a use-after-free
        pthread_mutex_unlock(&mutex)
        super.close()
    }
}

/// Watches one POSIX signal on a loop.
public final class SignalWatcher {
    let handle: UnsafeMutablePointer<uv_signal_t>
    let handler: (Int32) -> Void
    var closed = false

    public init(loop: EventLoop, signal: Int32, handler: @escaping (Int32) -> Void) {
        self.handler = handler
        handle = .allocate(capacity: 1)
        uv_signal_init(loop.uv, handle)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        uv_signal_start(handle, ioSignalCallback, signal)
    }

    /// Lets the loop exit while the watcher stays armed.
    public func unref() { uv_unref(remora_handle_signal(handle)) }

    public func close() {
        guard !closed else { return }
        closed = true
        uv_close(remora_handle_signal(handle), ioSignalCloseCallback)
    }

    func handleClosed() {
        handle.deallocate()
        Unmanaged.passUnretained(self).release()
    }
}

/// A one-shot or repeating timer not tied to a connection (admin, control loops, tests).
public final class LoopTimer {
    let handle: UnsafeMutablePointer<uv_timer_t>
    var handler: (() -> Void)?
    var closed = false

    public init(loop: EventLoop) {
        handle = .allocate(capacity: 1)
        uv_timer_init(loop.uv, handle)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    public func start(after ms: UInt64, repeat rep: UInt64 = 0, _ handler: @escaping () -> Void) {
        self.handler = handler
        uv_timer_start(handle, ioLoopTimerCallback, ms, rep)
    }

    public func stop() { uv_timer_stop(handle) }

    public func unref() { uv_unref(remora_handle_timer(handle)) }

    public func close() {
        guard !closed else { return }
        closed = true
        handler = nil
        uv_close(remora_handle_timer(handle), ioLoopTimerCloseCallback)
    }

    func handleClosed() {
        handle.deallocate()
        Unmanaged.passUnretained(self).release()
    }
}

/// Starts an OS thread running `body` (a worker's loop). Join it with `joinThread`.
public func spawnThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    var tid = pthread_t()
    let arg = Unmanaged.passRetained(Box(body)).toOpaque()
    let rc = pthread_create(&tid, nil, { arg in
        let box = Unmanaged<AnyObject>.fromOpaque(arg!).takeRetainedValue() as! Box
        box.body()
        return nil
    }, arg)
    precondition(rc == 0, "pthread_create failed")
    return tid
}

public func joinThread(_ t: pthread_t) { pthread_join(t, nil) }

public func onlineCPUs() -> Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
