import Glibc
import RemoraControl
import RemoraCore
import RemoraXDS

// remora-xds: the xDS agent (docs/xds.md).

let usage = """
usage: remora-xds --xds HOST:PORT --node-id ID --state DIR [--node-cluster NAME] [--node-metadata KEY=VALUE]...
                  [--xds-tls] [--xds-ca F] [--xds-cert F --xds-key F] [--xds-server-name NAME] [--xds-san SAN]...
                  [--xds-delta] [--secrets DIR] [--listen HOST:PORT] [--group NAME] [--token-file F] [--workers N]

  Speaks ADS (state of the world, gRPC over h2c, or TLS with any --xds-* TLS flag) to the xDS server at
  --xds as node ID, translates what it is sent into Remora's configuration and serves it as group NAME
  (default xds) on --listen (default 127.0.0.1:9912), the protocol of `remora control`. Run the proxy with:
      remora run --control http://HOST:PORT --node ID --group NAME [--admin HOST:PORT]
  --xds-delta: incremental xDS (DeltaAggregatedResources, istiod's preference) instead of state of the world.
  --state DIR keeps the last good configuration across restarts of this agent; SDS secrets are written
  to --secrets DIR (default DIR/secrets; 0700, files 0600), which the proxy must be able to read.
  TLS to the server: --xds-ca (default: the system's CAs), --xds-server-name (SNI, and the SAN required
  unless --xds-san is given), --xds-san (one of these SANs required, repeatable: e.g. istiod's spiffe://cluster.local/ns/istio-system/sa/istiod-service-account
  or DNS istiod.istio-system.svc), --xds-cert/--xds-key (mutual TLS, read again at every connect).

"""

func fail(_ s: String, _ code: Int32 = 2) -> Never {
    var line = "remora-xds: " + s + "\n"
    if code == 2 { line += "\n" + usage }
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(code)
}

var values: [String: String] = [:]
var metadata: [(String, String)] = []
var sans: [String] = []
var xdsTLSFlag = false
var deltaFlag = false
var i = 1
let argv = CommandLine.arguments
let valued: Set = ["xds", "node-id", "node-cluster", "node-metadata", "state", "listen", "group", "token-file", "workers",
                   "xds-ca", "xds-cert", "xds-key", "xds-server-name", "xds-san", "secrets"]
while i < argv.count {
    let a = argv[i]
    if a == "-h" || a == "--help" { print(usage, terminator: ""); exit(0) }
    if a == "--xds-tls" { xdsTLSFlag = true; i += 1; continue }
    if a == "--xds-delta" { deltaFlag = true; i += 1; continue }
    guard a.hasPrefix("--"), valued.contains(String(a.dropFirst(2))) else { fail("unknown argument \(a)") }
    guard i + 1 < argv.count else { fail("\(a) needs a value") }
    let k = String(a.dropFirst(2)), v = argv[i + 1]
    if k == "node-metadata" {
        guard let eq = v.firstIndex(of: "=") else { fail("--node-metadata: expected KEY=VALUE, got \(v)") }
        metadata.append((String(v[..<eq]), String(v[v.index(after: eq)...])))
    } else if k == "xds-san" {
        guard !v.isEmpty else { fail("--xds-san: empty") }
        sans.append(v)
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
if let s = values["secrets"] { options.secretsDirectory = s }
options.delta = deltaFlag
// TLS toward the ADS server: on with --xds-tls or any of its settings.
if xdsTLSFlag || !sans.isEmpty || ["xds-ca", "xds-cert", "xds-key", "xds-server-name"].contains(where: { values[$0] != nil }) {
    guard (values["xds-cert"] == nil) == (values["xds-key"] == nil) else { fail("--xds-cert and --xds-key go together") }
    for k in ["xds-ca", "xds-cert", "xds-key"] {
        if let f = values[k], let why = Translator.readableFile(f) { fail("--\(k): \(why)", 1) }
    }
    // Remora's TLS client checks SANs, not a host name: the server name is the SAN required unless
    // --xds-san says otherwise (as a gRPC client checks the host name it connects to).
    if sans.isEmpty, let n = values["xds-server-name"] { sans = [n] }
    options.xdsTLS = ClusterTLSConfig(ca: values["xds-ca"], serverName: values["xds-server-name"], verifySAN: sans,
                                      cert: values["xds-cert"], key: values["xds-key"], alpn: ["h2"])
}
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
