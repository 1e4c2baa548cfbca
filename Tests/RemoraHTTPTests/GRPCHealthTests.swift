import RemoraHTTP
import Testing

/// The grpc.health.v1 messages of `health_check: { grpc: { service } }`, against bytes protoc's
/// encoding produces (`HealthCheckRequest(service="x").SerializeToString()` and friends).
@Suite struct GRPCHealthTests {
    @Test func requestIsOneLengthPrefixedMessage() {
        #expect(GRPC.healthCheckRequest(service: "") == [0, 0, 0, 0, 0])
        #expect(GRPC.healthCheckRequest(service: "app") == [0, 0, 0, 0, 5, 0x0A, 3, 0x61, 0x70, 0x70])
        let long = String(repeating: "s", count: 200)
        let r = GRPC.healthCheckRequest(service: long)
        #expect(Array(r.prefix(8)) == [0, 0, 0, 0, 203, 0x0A, 0xC8, 0x01] && r.count == 5 + 203)
    }

    func status(_ b: [UInt8]) -> Int? { b.withUnsafeBytes { GRPC.healthCheckStatus($0) } }

    @Test func responseStatus() {
        #expect(status([0, 0, 0, 0, 2, 0x08, 1]) == GRPC.ServingStatus.serving.rawValue)
        #expect(status([0, 0, 0, 0, 2, 0x08, 2]) == GRPC.ServingStatus.notServing.rawValue)
        #expect(status([0, 0, 0, 0, 0]) == 0)   // the default: UNKNOWN
        // unknown fields skipped (varint, length-delimited, fixed64, fixed32)
        #expect(status([0, 0, 0, 0, 23, 0x10, 0x96, 0x01, 0x1A, 2, 0x61, 0x62, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 0x2D, 1, 2, 3, 4, 0x08, 1]) == 1)
    }

    @Test func malformedResponsesAreNotAnswers() {
        #expect(status([]) == nil)
        #expect(status([1, 0, 0, 0, 2, 0x08, 1]) == nil)          // compressed
        #expect(status([0, 0, 0, 0, 3, 0x08, 1]) == nil)          // truncated
        #expect(status([0, 0, 0, 0, 2, 0x08, 1, 0]) == nil)       // trailing bytes
        #expect(status([0, 0, 0, 0, 2, 0x08, 0x80]) == nil)       // unterminated varint
        #expect(status([0, 0, 0, 0, 2, 0x0A, 5]) == nil)          // length beyond the message
        #expect(status([0, 0, 0, 0, 2, 0x0B, 1]) == nil)          // wire type 3 (groups): not ours
        #expect(status([0, 0, 0, 0, 2, 0x09, 1]) == nil)          // fixed64 past the end
    }
}
