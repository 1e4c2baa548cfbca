/// Counts the gRPC messages in a response body as its DATA chunks arrive: each message is a 5-byte
/// prefix (compressed flag, 32-bit big-endian length) and that many bytes. Prefixes and messages
/// may be split across chunks anywhere, and a chunk may hold many messages. Only the position in
/// the current message is kept (no copy of any byte): nothing is allocated, per message or at all.
public struct GRPCMessageFramer: Sendable, Equatable {
    /// Bytes of the current message's prefix still to read (5 between messages, 0 in its body).
    var prefixLeft = 5
    /// The length read so far from the prefix.
    var length: UInt32 = 0
    /// Bytes of the current message's body still to read.
    var bodyLeft = 0

    public init() {}

    /// Between two messages: nothing of a message has been read without its end (a body that ends
    /// elsewhere was cut short).
    public var atBoundary: Bool { prefixLeft == 5 }

    /// Reads a chunk of the body; returns the messages it completed.
    public mutating func feed(_ data: UnsafeRawBufferPointer) -> Int {
        var i = 0
        let n = data.count
        var completed = 0
        while i < n {
            if prefixLeft > 0 {
                if prefixLeft < 5 { length = length << 8 | UInt32(data[i]) }   // byte 0: the compressed flag
                i += 1
                prefixLeft -= 1
                if prefixLeft > 0 { continue }
                bodyLeft = Int(length)
                length = 0
            } else {
                let take = min(bodyLeft, n - i)
                i += take
                bodyLeft -= take
            }
            if bodyLeft == 0 {
                completed += 1
                prefixLeft = 5
            }
        }
        return completed
    }
}
