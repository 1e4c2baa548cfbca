import Glibc
import RemoraControl
import RemoraCore
import RemoraIO
import RemoraTLS
import RemoraXDSProto
import SwiftProtobuf

/// `remora-xds` (docs/xds.md): one process beside the proxy, one libuv loop. The ADS client speaks to the
/// xDS server; each configuration it translates is stored as the next version of a group in an embedded
/// control server (the one `remora control` runs, RemoraControl), which the proxy already long-polls
/// (`remora run --control http://HOST:PORT --node ID --group xds`), ACKs and NACKs. So the proxy's side
/// is the one config path it has (validate, compile, swap without a restart), and Foundation and
/// SwiftProtobuf stay in this process.
public final class XDSAgent {
    public struct Options {
        public var xds: HostPort
        /// TLS toward the ADS server (nil: h2c): `ca` (nil: the system's CAs), `serverName` (SNI, also
        /// the name checked when `verifySAN` is empty), `verifySAN`, `cert` + `key` (mutual TLS).
        public var xdsTLS: ClusterTLSConfig?
        /// Where SDS secrets delivered inline are written for the proxy (0700 directory, 0600 files).
        /// nil: `<stateDirectory>/secrets`.
        public var secretsDirectory: String?
        /// Incremental xDS (`DeltaAggregatedResources`) instead of state of the world.
        public var delta = false
        public var nodeID: String
        public var nodeCluster = ""
        public var metadata: [(String, String)] = []
        public var stateDirectory: String
        public var listen = HostPort(host: "127.0.0.1", port: 9912)
        public var group = "xds"
        public var token: String?
        public var workers: Int?
        public init(xds: HostPort, nodeID: String, stateDirectory: String) {
            self.xds = xds; self.nodeID = nodeID; self.stateDirectory = stateDirectory
        }
    }

    public let loop: EventLoop
    public let control: ControlServer
    public let client: ADSClient
    let options: Options
    public var onReady: (() -> Void)?

    public init(options: Options) throws(ControlError) {
        self.options = options
        loop = EventLoop()
        control = try ControlServer(options: .init(stateDirectory: options.stateDirectory, listen: options.listen, token: options.token),
                                    loop: loop)
        let addr: SocketAddress
        do {
            guard let a = try Resolver.resolve(options.xds).first else { throw ControlError(400, "--xds: cannot resolve \(options.xds)") }
            addr = a
        } catch let e as ControlError { throw e } catch { throw ControlError(400, "--xds \(options.xds): \(error)") }
        var node = XDSNode()
        node.id = options.nodeID
        node.cluster = options.nodeCluster
        node.userAgentName = "remora-xds"
        node.userAgentVersion = "1"
        if !options.metadata.isEmpty {
            var s = Google_Protobuf_Struct()
            for (k, v) in options.metadata { s.fields[k] = Google_Protobuf_Value(stringValue: v) }
            node.metadata = s
        }
        let authority = options.xds.host.contains(":") ? "[\(options.xds.host)]:\(options.xds.port)" : "\(options.xds.host):\(options.xds.port)"
        // Secrets go where the proxy can find them whatever its working directory: an absolute path.
        var secrets = options.secretsDirectory ?? options.stateDirectory + "/secrets"
        if !secrets.hasPrefix("/") {
            var buf = [CChar](repeating: 0, count: 4096)
            if getcwd(&buf, buf.count) != nil { secrets = String(cString: buf) + "/" + secrets }
        }
        let secretFiles = SecretFiles(directory: secrets)
        if let e = secretFiles.prepare() { throw ControlError(400, "--secrets: \(e)") }
        var translator = Translator(workers: options.workers)
        translator.secretsDirectory = secrets
        translator.checkFile = Translator.readableFile
        var state = ADSState(node: node, translator: translator)
        if options.delta { state.mode = .delta }
        client = ADSClient(loop: loop, address: addr, authority: authority, tls: options.xdsTLS, state: state)
        client.secretFiles = secretFiles
        let group = options.group
        client.log = { [unowned self] s in self.log(s) }
        client.onPublish = { [unowned self] yaml, versions in
            do {
                let w = try self.control.publish(group: group, document: yaml, validated: true)
                if w.changed { self.log("group \(group): version \(w.version) (\(versions))") }
            } catch {
                self.log("cannot store the configuration (\(versions)): \((error as? ControlError)?.message ?? "\(error)")")
            }
        }
        control.log = { [unowned self] s in self.log(s) }
        control.onStop = { [unowned self] in self.client.stop() }
        control.onReport = { [unowned self] node, g, version, reason in
            guard g == group else { return }
            if let reason { self.log("proxy \(node) refused version \(version): \(reason)") }
        }
    }

    public func log(_ s: String) {
        var line = "remora-xds: " + s + "\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }

    /// Serves until SIGTERM / SIGINT; exit code.
    public func run() -> Int32 {
        control.onReady = { [unowned self] in
            self.log("ADS server \(self.options.xds), node \(self.options.nodeID); proxies: remora run --control http://\(self.control.address) --node ID --group \(self.options.group)")
            self.client.start()
            self.onReady?()
        }
        return control.run()
    }
}
