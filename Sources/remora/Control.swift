import Glibc
import RemoraControl
import RemoraCore

// `remora control` and `remora ctl`: see docs/control-plane.md.

func controlCommand(_ argv: ArraySlice<String>) -> Int32 {
    let args: Args
    do { args = try Args(argv, valued: ["state", "listen", "token-file"]) } catch let e as UsageError {
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
