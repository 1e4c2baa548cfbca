/// Bytes of string literals that stay put for a test (freed with this object): what the HTTP/2
/// session tests hand nghttp2 as header names and values.
final class TestBytes {
    var blocks: [UnsafeMutableRawBufferPointer] = []
    func of(_ s: String) -> UnsafeRawBufferPointer {
        let u = Array(s.utf8)
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(u.count, 1), alignment: 1)
        b.copyBytes(from: u)
        blocks.append(b)
        return UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(b)[0..<u.count])
    }
    deinit { blocks.forEach { $0.deallocate() } }
}
