import CLibUV
import Glibc
import RemoraCore

public protocol ListenerDelegate: AnyObject {
    /// A new downstream connection, already accepted, not yet reading.
    func listenerAccepted(_ l: Listener, _ c: TCPConnection)
}

/// A listening socket on one loop. Each worker has its own, bound to the same address with
/// SO_REUSEPORT, so the kernel spreads new connections across workers.
public final class Listener {
    let tcp: UnsafeMutablePointer<uv_tcp_t>
    public unowned(unsafe) let loop: EventLoop
    public unowned(unsafe) var delegate: (any ListenerDelegate)?
    public var owner: AnyObject?
    public private(set) var isClosing = false
    /// Free for the owner (listener index).
    public var tag: Int = 0
    /// Accepted sockets come with TCP_NODELAY from the listening socket (set in `init`; Linux copies
    /// it to each accepted socket), so `accept` makes no setsockopt per connection. Found out on the
    /// first accepted socket (one getsockopt); until then, and if it is off, each gets the setsockopt.
    var noDelayInherited = false
    var noDelayChecked = false

    /// Takes ownership of `fd` (from `ListenSocket.bind`) and starts listening.
    public init(loop: EventLoop, fd: Int32, backlog: Int32 = 1024) throws {
        self.loop = loop
        tcp = .allocate(capacity: 1)
        uv_tcp_init(loop.uv, tcp)
        tcp.pointee.data = Unmanaged.passRetained(self).toOpaque()
        var rc = uv_tcp_open(tcp, uv_os_sock_t(fd))
        if rc == 0 {
            _ = uv_tcp_nodelay(tcp, 1)   // inherited by accepted sockets (`noDelayInherited`)
            rc = uv_listen(remora_stream(tcp), backlog, ioConnectionCallback)
        }
        if rc != 0 {
            close()
            throw IOError.uv(op: "listen", code: rc)
        }
    }

    func accept() {
        let c = TCPConnection(loop: loop)
        if uv_accept(remora_stream(tcp), c.stream) != 0 { c.close(); return }
        if !noDelayInherited {
            if !noDelayChecked {
                noDelayChecked = true
                noDelayInherited = remora_tcp_nodelay_is_on(c.tcp) != 0
            }
            if !noDelayInherited { uv_tcp_nodelay(c.tcp, 1) }
        }
        if let d = delegate { d.listenerAccepted(self, c) } else { c.close() }
    }

    public func close() {
        guard !isClosing else { return }
        isClosing = true
        uv_close(remora_handle_tcp(tcp), ioListenerCloseCallback)
    }

    func closed() {
        delegate = nil
        owner = nil
        tcp.deallocate()
        Unmanaged.passUnretained(self).release()
    }
}

/// Creating listening sockets off the worker loops (the main thread binds, workers listen).
public enum ListenSocket {
    /// Binds a non-blocking socket to `addr`; returns the fd. The `first` socket of a group binds
    /// exclusively (fails with EADDRINUSE when another process holds the port) and the rest of the
    /// group joins it with SO_REUSEPORT.
    public static func bind(_ addr: SocketAddress, first: Bool = true) throws -> Int32 {
        let fd = addr.withSockaddr { remora_reuseport_socket($0, first ? 1 : 0) }
        if fd < 0 { throw IOError.uv(op: "bind \(addr)", code: uv_translate_sys_error(-fd)) }
        return fd
    }

    /// The address a bound socket actually got (port 0 resolved).
    public static func localAddress(_ fd: Int32) -> SocketAddress? {
        var out = SocketAddress()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &out.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return rc == 0 ? out : nil
    }

    public static func closeFD(_ fd: Int32) { _ = Glibc.close(fd) }
}
