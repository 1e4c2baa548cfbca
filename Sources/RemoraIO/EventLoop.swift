import CLibUV
import RemoraCore

/// One libuv loop, owned by one thread. Also holds the loop-wide read buffer: every read on this
/// loop lands in it and is consumed synchronously by the reader, so an idle connection owns no
/// read buffer at all.
public final class EventLoop {
    public let uv: UnsafeMutablePointer<uv_loop_t>
    /// Size of the shared read buffer; also the most one read callback hands over (a connection may
    /// ask for less: `TCPConnection.readLimit`). 256 KiB: a bulk transfer leaves in writes of 256 KiB,
    /// which on loopback (MTU 64 KiB) is four full segments and a small one, where 64 KiB reads made a
    /// full segment and a 53-byte one per write (1 MiB responses: ~1.4× the bytes per second).
    public static let readBufferSize = 256 * 1024
    /// The most one read of an HTTP/1.1 upstream hands to an HTTP/2 stream (`TCPConnection.readLimit`):
    /// what a stream can receive beyond its connection's buffer limit before it is paused.
    public static let streamReadSize: UInt32 = 64 * 1024
    let readBuffer: UnsafeMutableRawPointer
    /// Write-queue storage no connection holds (`TCPConnection.borrowQueue`): a connection that
    /// queues bytes (corked, or the kernel took only part) borrows it when it has none of its own
    /// and gives it back once they have left and the loop has none, so a connection whose writes
    /// all leave at once holds no queue storage between writes. At most one is kept.
    var spareQueue = ByteBuffer()

    public init() {
        uv = .allocate(capacity: 1)
        uv_loop_init(uv)
        readBuffer = .allocate(byteCount: EventLoop.readBufferSize, alignment: 16)
        uv.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    /// The loop's cached time in milliseconds (updated once per loop iteration).
    @inline(__always) public var now: UInt64 { uv_now(uv) }

    /// Runs until no active handle or request is left.
    public func run() { uv_run(uv, UV_RUN_DEFAULT) }

    /// Runs one iteration without blocking (tests).
    public func runOnce() { uv_run(uv, UV_RUN_NOWAIT) }

    public func stop() { uv_stop(uv) }

    /// Handles still known to the loop (open or closing). 0 when everything was closed properly.
    public var handleCount: Int {
        var n = 0
        withUnsafeMutablePointer(to: &n) { np in
            uv_walk(uv, { _, arg in arg!.assumingMemoryBound(to: Int.self).pointee += 1 }, np)
        }
        return n
    }

    /// Closes the loop and frees it. Returns false (and frees nothing) while handles remain.
    @discardableResult
    public func close() -> Bool {
        guard uv_loop_close(uv) == 0 else { return false }
        uv.deallocate()
        readBuffer.deallocate()
        spareQueue.release()
        return true
    }
}

/// Human-readable libuv error name ("ECONNREFUSED").
public func uvErrorName(_ code: Int32) -> String { String(cString: uv_err_name(code)) }

public enum IOError: Error, CustomStringConvertible {
    case uv(op: String, code: Int32)
    public var description: String {
        switch self {
        case let .uv(op, code): return "\(op): \(String(cString: uv_strerror(code))) (\(uvErrorName(code)))"
        }
    }
}

/// libuv error codes the proxy reasons about, re-exported so that callers need not import libuv.
public enum UVCode {
    public static let eof = Int32(UV_EOF.rawValue)
    public static let connectionRefused = Int32(UV_ECONNREFUSED.rawValue)
    public static let timedOut = Int32(UV_ETIMEDOUT.rawValue)
    public static let canceled = Int32(UV_ECANCELED.rawValue)
}

/// Writes to a peer that closed must fail with EPIPE, not kill the process.
public func remoraIgnoreSIGPIPE() { remora_ignore_sigpipe() }
