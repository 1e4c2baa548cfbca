// libFuzzer target: bytes -> ConfigLoader (libyaml -> node tree -> schema checks -> Config) -> the
// route tables a snapshot compiles from it (RE2 patterns, matchers, splits). Errors are expected
// results; a crash, a memory error or an input that runs past the per-input timeout is a finding.
// Endpoint names are not resolved (that is DNS, in RemoraProxy's Snapshot). See Tests/fuzz/README.md.
import Glibc
import RemoraConfig
import RemoraCore
import RemoraRouting

func run(_ input: UnsafeRawBufferPointer) {
    let text = String(decoding: input, as: UTF8.self)
    switch ConfigLoader.parse(yaml: text, file: "<fuzz>") {
    case .failure(let errors):
        precondition(!errors.errors.isEmpty, "a failure with no error")
        for e in errors.errors { _ = e.description }
    case .success(let config):
        var index: [String: Int] = [:]
        for (i, c) in config.clusters.enumerated() { index[c.name] = i }
        for l in config.listeners where l.protocol == .http {
            do { _ = try RouteTable(l, clusters: index) } catch { _ = error.errors.count }
        }
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
