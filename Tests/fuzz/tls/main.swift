// libFuzzer target: bytes -> ClientHello.parse and ProtocolSniffer.classify, the sniffing of
// `protocol: tls` listeners and of the sidecar's outbound listener (Tests/fuzz/README.md). Byte 0
// picks how many prefixes are checked; the rest is what a client sends first.
//
// Checks, beyond "no crash, no memory error, no leak, no hang":
// - a prefix never contradicts the whole: it is `needMore`, or the whole's answer (a ClientHello
//   with the same name and ALPN list), since a parser that has seen a byte never takes it back;
// - a server name is lowercased, 1 ... 255 bytes of [a-z0-9-_.], without a trailing or doubled dot;
//   ALPN names are not empty and at most 32;
// - `length` is within the input; the sniffer agrees with the parser on TLS input;
// - the SNI table answers every name (exact, wildcard or default) without trapping.
import Glibc
import RemoraHTTP
import RemoraRouting

let table: ServerNameTable<Int> = {
    var t = ServerNameTable<Int>(defaultValue: 0)
    t.add("api.example.com", 1)
    t.add("*.example.com", 2)
    t.add("*.a.b", 3)
    return t
}()

func same(_ a: ClientHello.Parse, _ b: ClientHello.Parse) -> Bool {
    switch (a, b) {
    case (.hello(let x), .hello(let y)): return x.serverName == y.serverName && x.alpn == y.alpn
    default: return a == b
    }
}

func run(_ input: UnsafeRawBufferPointer) {
    guard input.count >= 1 else { return }
    let steps = Int(input[0] % 8) + 1
    let data = UnsafeRawBufferPointer(rebasing: input[1...])
    let whole = ClientHello.parse(data)
    if case .hello(let h) = whole {
        precondition(h.length > 0 && h.length <= data.count, "length \(h.length) outside the input (\(data.count))")
        if let n = h.serverName {
            let u = Array(n.utf8)
            precondition(!u.isEmpty && u.count <= 255, "server name length \(u.count)")
            precondition(u.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 95 || $0 == 46 },
                         "server name bytes \(u)")
            precondition(u.last != 46 && !n.contains(".."), "server name dots: \(n)")
            _ = table.lookup(n)
        }
        precondition(h.alpn.count <= 32 && h.alpn.allSatisfy { !$0.isEmpty }, "alpn \(h.alpn)")
        if case .tls(let s)? = ProtocolSniffer.classify(data, maxBytes: 1 << 20) {
            precondition(s == h, "sniffer \(s) vs parser \(h)")
        } else {
            preconditionFailure("the sniffer did not see the ClientHello")
        }
    }
    _ = ProtocolSniffer.classify(data, maxBytes: 64)
    // Prefixes: `steps` evenly spread cut points, plus every one of the first 8 bytes.
    var cuts = Set((0..<min(8, data.count)).map { $0 })
    for k in 1...steps { cuts.insert(data.count * k / (steps + 1)) }
    for c in cuts where c < data.count {
        let p = ClientHello.parse(UnsafeRawBufferPointer(rebasing: data[0..<c]))
        precondition(p == .needMore || same(p, whole), "prefix \(c): \(p), whole: \(whole)")
    }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ cb: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
    run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
})
