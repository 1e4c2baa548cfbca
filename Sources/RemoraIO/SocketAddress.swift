import CLibUV
import RemoraCore

/// An IPv4 or IPv6 socket address (value type, no heap storage).
public struct SocketAddress: @unchecked Sendable, CustomStringConvertible {
    public var storage = sockaddr_storage()

    public init() {}

    /// Parses a numeric IPv4 or IPv6 literal (no DNS).
    public init?(ip: String, port: UInt16) {
        let ok: Bool = withUnsafeMutableBytes(of: &storage) { raw in
            let sa = raw.baseAddress!
            if ip.contains(":") {
                return uv_ip6_addr(ip, Int32(port), sa.assumingMemoryBound(to: sockaddr_in6.self)) == 0
            }
            return uv_ip4_addr(ip, Int32(port), sa.assumingMemoryBound(to: sockaddr_in.self)) == 0
        }
        if !ok { return nil }
    }

    init(copying sa: UnsafePointer<sockaddr>) {
        let len = sa.pointee.sa_family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size
                                                                   : MemoryLayout<sockaddr_in>.size
        withUnsafeMutableBytes(of: &storage) { $0.baseAddress!.copyMemory(from: sa, byteCount: len) }
    }

    public var isIPv6: Bool { storage.ss_family == sa_family_t(AF_INET6) }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>) -> R) -> R {
        withUnsafeBytes(of: storage) { body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self)) }
    }

    public var port: UInt16 { withSockaddr { UInt16(remora_sockaddr_port($0)) } }

    /// The address as an `IPKey` (compared and hashed without formatting it). Linux's layouts:
    /// sockaddr_in's address at byte 4, sockaddr_in6's at byte 8.
    public var ipKey: IPKey {
        withUnsafeBytes(of: storage) { raw in
            isIPv6 ? IPKey(ipv6: UnsafeRawBufferPointer(rebasing: raw[8..<24]))
                   : IPKey(ipv4: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        }
    }

    /// 127.0.0.1:`port`, or [::1]:`port` (no parsing).
    public static func loopback(ipv6: Bool, port: UInt16) -> SocketAddress {
        var a = SocketAddress()
        withUnsafeMutableBytes(of: &a.storage) { raw in
            raw.storeBytes(of: sa_family_t(ipv6 ? AF_INET6 : AF_INET), toByteOffset: 0, as: sa_family_t.self)
            raw.storeBytes(of: port.bigEndian, toByteOffset: 2, as: UInt16.self)
            if ipv6 { raw[23] = 1 } else { raw.storeBytes(of: UInt32(0x7F00_0001).bigEndian, toByteOffset: 4, as: UInt32.self) }
        }
        return a
    }

    /// The numeric address without the port: "127.0.0.1", "::1".
    public var ipString: String {
        withSockaddr { sa in
            withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { buf in
                let n = remora_sockaddr_ip(sa, buf.baseAddress!, 64)
                return String(decoding: UnsafeRawBufferPointer(start: buf.baseAddress!, count: Int(n)), as: UTF8.self)
            }
        }
    }

    public var description: String { isIPv6 ? "[\(ipString)]:\(port)" : "\(ipString):\(port)" }
}

public enum Resolver {
    /// Resolves a host (literal or DNS name) to socket addresses, synchronously (config load only,
    /// never on a worker loop). Literals never touch DNS.
    public static func resolve(_ hp: HostPort) throws -> [SocketAddress] {
        if let a = SocketAddress(ip: hp.host, port: hp.port) { return [a] }
        let loop = EventLoop()
        defer { loop.close() }
        let req = UnsafeMutablePointer<uv_getaddrinfo_t>.allocate(capacity: 1)
        defer { req.deallocate() }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        let rc = uv_getaddrinfo(loop.uv, req, nil, hp.host, String(hp.port), &hints)
        guard rc == 0 else { throw IOError.uv(op: "resolve \(hp.host)", code: rc) }
        defer { uv_freeaddrinfo(req.pointee.addrinfo) }
        var out: [SocketAddress] = []
        var ai = req.pointee.addrinfo
        while let a = ai {
            if let sa = a.pointee.ai_addr, a.pointee.ai_family == AF_INET || a.pointee.ai_family == AF_INET6 {
                let addr = SocketAddress(copying: sa)
                if !out.contains(where: { $0.description == addr.description }) { out.append(addr) }
            }
            ai = a.pointee.ai_next
        }
        if out.isEmpty { throw IOError.uv(op: "resolve \(hp.host)", code: Int32(UV_EAI_NONAME.rawValue)) }
        return out
    }

    /// Resolves `hp` off the loop (uv_getaddrinfo: getaddrinfo on libuv's thread pool) and calls
    /// `done` on the loop with its addresses in the resolver's order (duplicates dropped), or nil
    /// when it does not resolve. A literal answers at once, without DNS.
    public static func resolve(_ hp: HostPort, on loop: EventLoop, _ done: @escaping ([SocketAddress]?) -> Void) {
        if let a = SocketAddress(ip: hp.host, port: hp.port) { done([a]); return }
        let lookup = PendingLookup(done)
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        lookup.req.pointee.data = Unmanaged.passRetained(lookup).toOpaque()   // released in `finished`
        let rc = uv_getaddrinfo(loop.uv, lookup.req, ioGetAddrInfoCallback, hp.host, String(hp.port), &hints)
        if rc != 0 {
            Unmanaged.passUnretained(lookup).release()
            done(nil)
        }
    }
}

/// One `uv_getaddrinfo` under way: its request (freed with it) and what to call with the answer.
final class PendingLookup {
    let req: UnsafeMutablePointer<uv_getaddrinfo_t>
    let done: ([SocketAddress]?) -> Void

    init(_ done: @escaping ([SocketAddress]?) -> Void) {
        self.done = done
        req = .allocate(capacity: 1)
    }

    deinit { req.deallocate() }

    /// The answer (from the getaddrinfo callback): the addresses, then the request's memory let go.
    func finished(_ status: Int32, _ res: UnsafeMutablePointer<addrinfo>?) {
        var out: [SocketAddress] = []
        var ai = res
        while let a = ai {
            if let sa = a.pointee.ai_addr, a.pointee.ai_family == AF_INET || a.pointee.ai_family == AF_INET6 {
                let addr = SocketAddress(copying: sa)
                if !out.contains(where: { $0.description == addr.description }) { out.append(addr) }
            }
            ai = a.pointee.ai_next
        }
        if let res { uv_freeaddrinfo(res) }
        done(status == 0 && !out.isEmpty ? out : nil)
    }
}
