import RemoraConfig
import RemoraCore
import Testing

@Suite struct ConfigValueTests {
    @Test(arguments: [
        ("0", 0), ("0ms", 0), ("0s", 0), ("250ms", 250), ("5s", 5_000), ("2m", 120_000), ("1h", 3_600_000),
        ("1.5s", 1_500), ("0.25s", 250), ("1.5m", 90_000), ("0.001s", 1), ("007s", 7_000),
        ("18446744073709551615ms", UInt64.max),
    ] as [(String, Millis)])
    func validDurations(text: String, ms: Millis) {
        #expect(ConfigValue.duration(text) == ms)
    }

    @Test(arguments: [
        "", "5", "100", "0.0", "fast", "5 s", " 5s", "5S", "5sec", "-5s", "+5s", "s", "ms", ".5s", "5.s", "1.5.5s",
        "1.5ms", "0.0001s", "1h30m", "5d", "1e3ms", "5s ", "18446744073709551616ms", "5124095576030432h",
    ])
    func invalidDurations(text: String) {
        #expect(ConfigValue.duration(text) == nil)
    }

    @Test(arguments: [
        ("0", 0), ("512", 512), ("512B", 512), ("1KiB", 1_024), ("60KiB", 61_440), ("1MiB", 1_048_576),
        ("1GiB", 1_073_741_824), ("16KB", 16_000), ("4MB", 4_000_000), ("2GB", 2_000_000_000),
    ] as [(String, Int)])
    func validSizes(text: String, bytes: Int) {
        #expect(ConfigValue.size(text) == bytes)
    }

    @Test(arguments: [
        "", "B", "KiB", "-1", "-1KiB", "1.5MiB", "1 KiB", "1kib", "1KIB", "1K", "1Ki", "1TiB", "lots", "0x10",
        "9223372036854775808", "9999999999999GiB",
    ])
    func invalidSizes(text: String) {
        #expect(ConfigValue.size(text) == nil)
    }
}
