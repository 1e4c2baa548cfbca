import CLibUV

// Every libuv callback of the project, in one place. Each is a non-capturing trampoline that
// recovers its object from `data` and calls one method on it.

/// Calls `body` with the connection behind `p`, without retaining it (its handles hold +1).
@inline(__always)
private func conn(_ p: UnsafeMutableRawPointer?, _ body: (TCPConnection) -> Void) {
    Unmanaged<TCPConnection>.fromOpaque(p!)._withUnsafeGuaranteedRef(body)
}

let ioAllocCallback: uv_alloc_cb = { handle, _, buf in
    conn(handle!.pointee.data) { buf!.pointee = uv_buf_init($0.readBuffer.assumingMemoryBound(to: CChar.self), $0.readLimit) }
}

let ioReadCallback: uv_read_cb = { stream, n, _ in
    conn(stream!.pointee.data) { $0.readCompleted(n) }
}

let ioWriteCallback: uv_write_cb = { req, status in
    conn(req!.pointee.data) { $0.writeCompleted(status) }
}

let ioConnectCallback: uv_connect_cb = { req, status in
    conn(req!.pointee.data) { $0.connectCompleted(status) }
}

let ioShutdownCallback: uv_shutdown_cb = { req, status in
    conn(req!.pointee.data) { $0.shutdownCompleted(status) }
}

let ioTimerCallback: uv_timer_cb = { t in
    conn(t!.pointee.data) { $0.timerFired() }
}

let ioCloseCallback: uv_close_cb = { h in
    conn(h!.pointee.data) { $0.handleClosed() }
}

let ioConnectionCallback: uv_connection_cb = { server, status in
    guard status == 0 else { return }
    Unmanaged<Listener>.fromOpaque(server!.pointee.data).takeUnretainedValue().accept()
}

let ioListenerCloseCallback: uv_close_cb = { h in
    Unmanaged<Listener>.fromOpaque(h!.pointee.data).takeUnretainedValue().closed()
}

let ioAsyncCallback: uv_async_cb = { a in
    Unmanaged<MailboxBase>.fromOpaque(a!.pointee.data).takeUnretainedValue().deliver()
}

let ioAsyncCloseCallback: uv_close_cb = { h in
    Unmanaged<MailboxBase>.fromOpaque(h!.pointee.data).takeUnretainedValue().handleClosed()
}

let ioSignalCallback: uv_signal_cb = { s, signum in
    let w = Unmanaged<SignalWatcher>.fromOpaque(s!.pointee.data).takeUnretainedValue()
    w.handler(signum)
}

let ioSignalCloseCallback: uv_close_cb = { h in
    Unmanaged<SignalWatcher>.fromOpaque(h!.pointee.data).takeUnretainedValue().handleClosed()
}

let ioGetAddrInfoCallback: uv_getaddrinfo_cb = { req, status, res in
    Unmanaged<PendingLookup>.fromOpaque(req!.pointee.data).takeRetainedValue().finished(status, res)
}

let ioLoopTimerCallback: uv_timer_cb = { t in
    Unmanaged<LoopTimer>.fromOpaque(t!.pointee.data).takeUnretainedValue().handler?()
}

let ioLoopTimerCloseCallback: uv_close_cb = { h in
    Unmanaged<LoopTimer>.fromOpaque(h!.pointee.data).takeUnretainedValue().handleClosed()
}

let ioDeadlineCallback: uv_timer_cb = { t in
    Unmanaged<DeadlineTimer>.fromOpaque(t!.pointee.data)._withUnsafeGuaranteedRef { $0.fired() }
}

let ioDeadlineCloseCallback: uv_close_cb = { h in
    Unmanaged<DeadlineTimer>.fromOpaque(h!.pointee.data).takeUnretainedValue().handleClosed()
}

let ioCheckCallback: uv_check_cb = { h in
    Unmanaged<IterationHook>.fromOpaque(h!.pointee.data)._withUnsafeGuaranteedRef { $0.run() }
}

let ioIdleCallback: uv_idle_cb = { _ in }   // exists only to keep the loop from blocking in poll

let ioCheckCloseCallback: uv_close_cb = { h in
    Unmanaged<IterationHook>.fromOpaque(h!.pointee.data).takeUnretainedValue().handleClosed()
}

let ioFSEventCallback: uv_fs_event_cb = { h, file, _, _ in
    Unmanaged<FileWatcher>.fromOpaque(h!.pointee.data)._withUnsafeGuaranteedRef { $0.changed(file) }
}

let ioFSEventCloseCallback: uv_close_cb = { h in
    Unmanaged<FileWatcher>.fromOpaque(h!.pointee.data).takeUnretainedValue().handleClosed(UnsafeMutableRawPointer(h!))
}
