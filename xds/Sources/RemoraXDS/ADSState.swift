import Foundation
import RemoraConfig
import RemoraXDSProto
import SwiftProtobuf

public typealias DiscoveryRequest = Envoy_Service_Discovery_V3_DiscoveryRequest
public typealias DiscoveryResponse = Envoy_Service_Discovery_V3_DiscoveryResponse
public typealias XDSNode = Envoy_Config_Core_V3_Node
public typealias DeltaDiscoveryRequest = Envoy_Service_Discovery_V3_DeltaDiscoveryRequest
public typealias DeltaDiscoveryResponse = Envoy_Service_Discovery_V3_DeltaDiscoveryResponse

/// The ADS protocol, state of the world, without I/O (the client carries out its actions): what to
/// request on a new stream, and for each response whether it is ACKed (version_info = the response's,
/// response_nonce = its nonce) or NACKed (version_info = the last accepted one, error_detail saying
/// which field is not supported), which names of RDS and EDS to subscribe to, and when a new Remora
/// configuration is ready, and which SDS secrets to write to files for the proxy. Accepted resources survive a lost stream: the last good configuration keeps
/// serving and the next stream starts from the accepted versions.
///
/// `mode` `.delta` speaks incremental xDS (`DeltaAggregatedResources`) with the same decisions: a
/// response carries the changed resources and the names of removed ones; ACK = its nonce, NACK = its
/// nonce with error_detail; names are subscribed and unsubscribed as the accepted resources reference
/// them (LDS and CDS wildcard); a new stream sends the accepted version of each resource
/// (`initial_resource_versions`).
public struct ADSState {
    public enum Mode: Sendable { case stateOfTheWorld, delta }

    public enum Action: Equatable {
        case send(DiscoveryRequest)
        case sendDelta(DeltaDiscoveryRequest)
        /// A new configuration (YAML in Remora's schema) to hand to the proxy; `versions` for logs.
        case publish(yaml: String, versions: String)
        /// Secrets from SDS to write for the proxy (before the `publish` that names them; alone when a
        /// secret rotates: the configuration names the same files, the proxy reloads them).
        case writeSecrets([SecretFile])
        case log(String)
    }

    public var node: XDSNode
    public var translator: Translator
    public var mode: Mode = .stateOfTheWorld
    /// Delta: the accepted version of every resource, per type (sent as `initial_resource_versions`).
    public internal(set) var resourceVersions: [XDSType: [String: String]] = [:]
    /// The accepted resources.
    public private(set) var resources = XDSResources()
    /// Last accepted version_info per type ("" before any).
    public private(set) var versions: [XDSType: String] = [:]
    /// Last response nonce per type on this stream.
    var nonces: [XDSType: String] = [:]
    /// Names subscribed to (RDS, EDS); nil: not requested on this stream yet.
    var subscribed: [XDSType: [String]] = [:]
    /// The last configuration published.
    public private(set) var published: String?
    public private(set) var acks = 0, nacks = 0
    /// The last NACK's error_detail message ("" if none).
    public private(set) var lastError = ""
    /// Why the last accepted state is not a configuration yet ("" when it is).
    public private(set) var pending = ""
    /// What the secret files hold as last written (path → bytes): only changes are written again.
    var written: [String: [UInt8]] = [:]

    public init(node: XDSNode, translator: Translator = Translator()) {
        self.node = node
        self.translator = translator
    }

    /// A new stream: wildcard CDS and LDS (CDS first, as Envoy: clusters before the listeners that use
    /// them), then RDS and EDS for the names already known, each with the version accepted before.
    public mutating func streamStarted() -> [Action] {
        nonces = [:]
        subscribed = [:]
        var out: [Action]
        if mode == .delta {
            subscribed[.cluster] = []; subscribed[.listener] = []
            out = [.sendDelta(deltaRequest(.cluster, subscribe: [], initial: true)),
                   .sendDelta(deltaRequest(.listener, subscribe: [], initial: true))]
        } else {
            out = [.send(request(.cluster, names: [])), .send(request(.listener, names: []))]
        }
        out += resubscribe(.endpoint, resources.edsNames, force: false)
        out += resubscribe(.route, resources.rdsNames, force: false)
        out += resubscribe(.secret, resources.sdsNames, force: false)
        return out
    }

    func request(_ t: XDSType, names: [String], error: String? = nil) -> DiscoveryRequest {
        var r = DiscoveryRequest()
        r.node = node
        r.typeURL = t.rawValue
        r.versionInfo = versions[t] ?? ""
        r.responseNonce = nonces[t] ?? ""
        r.resourceNames = names
        if let error {
            var s = Google_Rpc_Status()
            s.code = 3   // INVALID_ARGUMENT, as Envoy
            s.message = error
            r.errorDetail = s
        }
        return r
    }

    /// Delta: a request for `t` (no node after the first of the stream, as Envoy: the server keeps it).
    /// `initial`: the stream's first for `t`, with the accepted versions of the resources subscribed.
    func deltaRequest(_ t: XDSType, subscribe: [String] = [], unsubscribe: [String] = [], initial: Bool = false,
                      error: String? = nil) -> DeltaDiscoveryRequest {
        var r = DeltaDiscoveryRequest()
        if initial { r.node = node }
        r.typeURL = t.rawValue
        r.resourceNamesSubscribe = subscribe
        r.resourceNamesUnsubscribe = unsubscribe
        if initial {
            let known = resourceVersions[t] ?? [:]
            r.initialResourceVersions = t.isWildcard ? known : known.filter { subscribe.contains($0.key) }
        } else {
            r.responseNonce = nonces[t] ?? ""
        }
        if let error {
            var s = Google_Rpc_Status()
            s.code = 3
            s.message = error
            r.errorDetail = s
        }
        return r
    }

    /// A request for `t` when the names differ from what this stream asked for (delta: the names added
    /// and removed; the removed ones' resources are dropped, as Envoy drops what it unsubscribes from).
    mutating func resubscribe(_ t: XDSType, _ names: [String], force: Bool) -> [Action] {
        if !force && subscribed[t] == names { return [] }
        if subscribed[t] == nil && names.isEmpty { return [] }
        let before = subscribed[t]
        subscribed[t] = names
        guard mode == .delta else { return [.send(request(t, names: names))] }
        guard let before else { return [.sendDelta(deltaRequest(t, subscribe: names, initial: true))] }
        let gone = before.filter { !names.contains($0) }
        for n in gone {
            resources.remove(t, name: n)
            resourceVersions[t]?[n] = nil
        }
        return [.sendDelta(deltaRequest(t, subscribe: names.filter { !before.contains($0) }, unsubscribe: gone))]
    }

    public mutating func receive(_ r: DiscoveryResponse) -> [Action] {
        guard let t = XDSType(rawValue: r.typeURL) else {
            return [.log("a response of type \(r.typeURL), which was not asked for: ignored")]
        }
        nonces[t] = r.nonce
        var candidate = resources
        var failed: XDSError?
        do { try candidate.replace(t, with: r.resources) } catch { failed = error }
        return evaluate(t, candidate, version: r.versionInfo, failed: failed).actions
    }

    /// Delta: the changed resources replace their namesakes, the removed ones go; then as `receive`.
    public mutating func receive(delta r: DeltaDiscoveryResponse) -> [Action] {
        guard let t = XDSType(rawValue: r.typeURL) else {
            return [.log("a delta response of type \(r.typeURL), which was not asked for: ignored")]
        }
        nonces[t] = r.nonce
        var candidate = resources
        var failed: XDSError?
        do { try candidate.apply(t, updated: r.resources, removed: r.removedResources) } catch { failed = error }
        let version = r.systemVersionInfo.isEmpty ? "nonce \(r.nonce)" : r.systemVersionInfo
        let (accepted, actions) = evaluate(t, candidate, version: version, failed: failed)
        if accepted {
            var known = resourceVersions[t] ?? [:]
            for n in r.removedResources { known[n] = nil }
            for res in r.resources { known[res.name] = res.version }
            resourceVersions[t] = known
        }
        return actions
    }

    /// ACK or NACK of a response of type `t` that makes `candidate` (or `failed` to decode): whether it
    /// was accepted, and what to do.
    mutating func evaluate(_ t: XDSType, _ candidate: XDSResources, version: String, failed: XDSError?) -> (accepted: Bool, actions: [Action]) {
        var outcome: Result<Translation, XDSError>
        if let failed {
            outcome = .failure(failed)
        } else {
            do { outcome = .success(try translator.translate(candidate)) } catch { outcome = .failure(error) }
        }
        var yaml: String?
        var unchanged = false
        if case .success(.config(let doc)) = outcome {
            let body = doc.text
            let text = "# generated by remora-xds from " + versionLine(with: (t, version)) + "\n" + body
            // The same configuration as the one published (most responses of a push change one type
            // only): validated already.
            unchanged = published.map { Self.body($0) == body } ?? false
            if unchanged {
                yaml = text
            } else if case .failure(let e) = ConfigLoader.parse(yaml: text, file: "xds") {
                outcome = .failure(XDSError("\(t.short) version \(version): Remora refuses the configuration it translates to:\n\(e)"))
            } else {
                yaml = text
            }
        }
        switch outcome {
        case .failure(let e):
            nacks += 1
            lastError = e.message
            let names = t.isWildcard ? [] : (subscribed[t] ?? [])
            return (false, [.log("NACK \(t.short) version \(version): \(e.message)"),
                            mode == .delta ? .sendDelta(deltaRequest(t, error: e.message)) : .send(request(t, names: names, error: e.message))])
        case .success(let tr):
            acks += 1
            resources = candidate
            versions[t] = version
            var out: [Action] = [mode == .delta ? .sendDelta(deltaRequest(t))
                                                : .send(request(t, names: t.isWildcard ? [] : (subscribed[t] ?? [])))]
            if t == .cluster { out += resubscribe(.endpoint, resources.edsNames, force: false) }
            if t == .listener { out += resubscribe(.route, resources.rdsNames, force: false) }
            if t == .listener || t == .cluster { out += resubscribe(.secret, resources.sdsNames, force: false) }
            if t == .secret || t == .listener || t == .cluster {
                let files = translator.secretFiles(resources).filter { written[$0.path] != $0.bytes }
                if !files.isEmpty {
                    for f in files { written[f.path] = f.bytes }
                    out.append(.writeSecrets(files))
                }
            }
            switch tr {
            case .pending(let why):
                if pending != why { out.append(.log("\(t.short) version \(version) accepted; waiting for \(why)")) }
                pending = why
            case .config:
                pending = ""
                if let yaml, !unchanged {
                    published = yaml
                    out.append(.publish(yaml: yaml, versions: versionLine(with: nil)))
                }
            }
            return (true, out)
        }
    }

    /// A published document without its first line (the versions comment).
    static func body(_ yaml: String) -> Substring {
        guard let nl = yaml.firstIndex(of: "\n") else { return Substring(yaml) }
        return yaml[yaml.index(after: nl)...]
    }

    func versionLine(with extra: (XDSType, String)?) -> String {
        XDSType.allCases.map { t in
            "\(t.short) \((extra?.0 == t ? extra?.1 : versions[t]).map { $0.isEmpty ? "-" : $0 } ?? "-")"
        }.joined(separator: ", ")
    }
}
