import Glibc
import RemoraConfig
import RemoraControl
import RemoraCore

// `remora control` and `remora ctl`: see docs/control-plane.md.

func controlCommand(_ argv: ArraySlice<String>) -> Int32 {
    if argv.first == "token" { return controlTokenCommand(argv.dropFirst()) }
    let args: Args
    do {
        args = try Args(argv, valued: ["state", "listen", "token-file", "trust-domain", "cert-ttl", "ca-cert", "ca-key"])
    } catch let e as UsageError {
        printErr("remora control: \(e.message)\n\n" + usage)
        return 2
    } catch { return 2 }
    guard args.positional.isEmpty else {
        printErr("remora control: unexpected argument \(args.positional[0])\n\n" + usage)
        return 2
    }
    guard let dir = args.options["state"], !dir.isEmpty else {
        printErr("remora control: --state DIR is required\n\n" + usage)
        return 2
    }
    var options = ControlServer.Options(stateDirectory: dir)
    if let l = args.options["listen"] {
        guard let hp = HostPort.parse(l) else { printErr("remora control: --listen: expected HOST:PORT, got \(l)"); return 2 }
        options.listen = hp
    }
    do { options.token = try Ctl.token(file: args.options["token-file"]) } catch {
        printErr("remora control: \(error.message)")
        return 2
    }
    if let td = args.options["trust-domain"] {
        guard MeshCA.Options.validTrustDomain(td) else {
            printErr("remora control: --trust-domain: expected a name like mesh.local (lowercase letters, digits, \".\", \"-\", \"_\"), got \(td)")
            return 2
        }
        options.ca.trustDomain = td
    }
    if let t = args.options["cert-ttl"] {
        guard let ms = ConfigValue.duration(t), ms >= 10_000, ms <= 30 * 86_400_000 else {
            printErr("remora control: --cert-ttl: expected a duration from 10s to 720h, got \(t)")
            return 2
        }
        options.ca.certificateTTL = Int64(ms / 1000)
    }
    switch (args.options["ca-cert"], args.options["ca-key"]) {
    case (nil, nil): break
    case let (c?, k?): options.ca.rootCertFile = c; options.ca.rootKeyFile = k
    default:
        printErr("remora control: --ca-cert and --ca-key go together")
        return 2
    }
    let server: ControlServer
    do { server = try ControlServer(options: options) } catch {
        printErr("remora control: \(error.message)")
        return error.status == 400 ? 2 : 1
    }
    server.onReady = {
        var s = "listening control \(server.address)\nready\n"
        s.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
    }
    return server.run()
}

func ctlCommand(_ argv: ArraySlice<String>) -> Int32 {
    let inv: CtlInvocation
    let token: String?
    do {
        inv = try CtlInvocation.parse(Array(argv))
        token = try Ctl.token(file: inv.tokenFile)
    } catch {
        printErr("remora ctl: \(error.message)\n\n" + CtlInvocation.usage)
        return 2
    }
    return Ctl(control: inv.control, token: token).run(inv.command)
}

/// `remora control token --state DIR NAMESPACE SERVICE_ACCOUNT [--revoke]`: makes a bootstrap token for
/// that identity (its SHA-256 goes into `DIR/ca/tokens`) and prints it; `--revoke` removes every token
/// of the identity. Works while the server runs (it reads the file at every request).
func controlTokenCommand(_ argv: ArraySlice<String>) -> Int32 {
    let args: Args
    do { args = try Args(argv, valued: ["state"], flags: ["revoke"]) } catch let e as UsageError {
        printErr("remora control token: \(e.message)")
        return 2
    } catch { return 2 }
    guard let dir = args.options["state"], !dir.isEmpty else {
        printErr("usage: remora control token --state DIR NAMESPACE SERVICE_ACCOUNT [--revoke]")
        return 2
    }
    var parts = args.positional
    if parts.count == 1, parts[0].contains("/") { parts = parts[0].split(separator: "/").map(String.init) }
    guard parts.count == 2 else {
        printErr("usage: remora control token --state DIR NAMESPACE SERVICE_ACCOUNT [--revoke]")
        return 2
    }
    do {
        let id = try WorkloadIdentity.parse(namespace: parts[0], serviceAccount: parts[1])
        if args.flags.contains("revoke") {
            let n = try MeshCA.revokeTokens(stateDirectory: dir, id)
            printErr("remora control token: \(n) token(s) of \(id) revoked")
            return n > 0 ? 0 : 1
        }
        let token = try MeshCA.createToken(stateDirectory: dir, id)
        var line = token + "\n"
        line.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
        return 0
    } catch {
        printErr("remora control token: \(error.message)")
        return error.status == 400 ? 2 : 1
    }
}
