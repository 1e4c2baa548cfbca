import Glibc
import RemoraControl
import RemoraCore
import RemoraXDS

// remora-xds: the xDS agent (docs/xds.md).

let usage = """
usage: remora-xds --xds HOST:PORT --node-id ID --state DIR [--node-cluster NAME] [--node-metadata KEY=VALUE]...
                  [--listen HOST:PORT] [--group NAME] [--token-file F] [--workers N]

  Speaks ADS (state of the world, gRPC over h2c) to the xDS server at --xds as node ID, translates what it
  is sent into Remora's configuration and serves it as group NAME (default xds) on --listen (default
  127.0.0.1:9912), the protocol of `remora control`. Run the proxy with:
      remora run --control http://HOST:PORT --node ID --group NAME [--admin HOST:PORT]
  --state DIR keeps the last good configuration across restarts of this agent.

"""

func fail(_ s: String, _ code: Int32 = 2) -> Never {
    var line = "remora-xds: " + s + "\n"
    if code == 2 { line += "\n" + usage }
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(code)
}

var values: [String: String] = [:]
var metadata: [(String, String)] = []
var i = 1
let argv = CommandLine.arguments
let valued: Set = ["xds", "node-id", "node-cluster", "node-metadata", "state", "listen", "group", "token-file", "workers"]
while i < argv.count {
    let a = argv[i]
    if a == "-h" || a == "--help" { print(usage, terminator: ""); exit(0) }
    guard a.hasPrefix("--"), valued.contains(String(a.dropFirst(2))) else { fail("unknown argument \(a)") }
    guard i + 1 < argv.count else { fail("\(a) needs a value") }
    let k = String(a.dropFirst(2)), v = argv[i + 1]
    if k == "node-metadata" {
        guard let eq = v.firstIndex(of: "=") else { fail("--node-metadata: expected KEY=VALUE, got \(v)") }
        metadata.append((String(v[..<eq]), String(v[v.index(after: eq)...])))
    } else {
        values[k] = v
    }
    i += 2
}
guard let xds = values["xds"], let hp = HostPort.parse(xds) else { fail("--xds HOST:PORT is required") }
guard let node = values["node-id"], !node.isEmpty else { fail("--node-id ID is required") }
guard let state = values["state"], !state.isEmpty else { fail("--state DIR is required") }
var options = XDSAgent.Options(xds: hp, nodeID: node, stateDirectory: state)
options.nodeCluster = values["node-cluster"] ?? ""
options.metadata = metadata
if let l = values["listen"] {
    guard let lp = HostPort.parse(l) else { fail("--listen: expected HOST:PORT, got \(l)") }
    options.listen = lp
}
if let g = values["group"] { options.group = g }
if let w = values["workers"] {
    guard let n = Int(w), n >= 0, n <= 256 else { fail("--workers: 0...256, got \(w)") }
    options.workers = n
}
do { options.token = try Ctl.token(file: values["token-file"]) } catch { fail(error.message) }
let agent: XDSAgent
do { agent = try XDSAgent(options: options) } catch { fail(error.message, 1) }
agent.onReady = {
    var s = "listening control \(agent.control.address)\nready\n"
    s.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
}
exit(agent.run())
