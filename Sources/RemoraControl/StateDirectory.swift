import Glibc

/// One group's desired configuration as stored: its name, version and YAML document.
public struct StoredGroup: Equatable, Sendable {
    /// A config name (`[A-Za-z0-9_.-]+`, not starting with "."): also the file name.
    public var name: String
    /// Grows by one per change, never reused; 1 for the first document.
    public var version: UInt64
    /// The YAML document as applied (comments and layout kept).
    public var document: String
    public init(name: String, version: UInt64, document: String) {
        self.name = name; self.version = version; self.document = document
    }
}

/// The control server's state on disk: `<dir>/<group>.yaml` and `<dir>/<group>.version`, each
/// replaced atomically (temp file, fsync, rename, fsync of the directory). The version file is
/// written first: a crash between the two writes leaves the old document under the new version,
/// which proxies re-apply harmlessly, never a new document under an old version that proxies would
/// not fetch. `<dir>/.lock` (flock) keeps a second server off the same directory.
public final class StateDirectory {
    public let path: String
    var lockFD: Int32 = -1

    /// Creates the directory (and its parents) if needed.
    public init(path: String) throws(ControlError) {
        self.path = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        try Self.makeDirectories(self.path)
    }

    deinit { if lockFD >= 0 { Glibc.close(lockFD) } }

    /// Takes the directory's lock for the life of this object; fails if another process holds it.
    public func lock() throws(ControlError) {
        let fd = open(path + "/.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 { throw Self.failure("open \(path)/.lock") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            Glibc.close(fd)
            if e == EWOULDBLOCK { throw ControlError(500, "\(path) is in use by another control server (\(path)/.lock is locked)") }
            throw Self.failure("lock \(path)/.lock", e)
        }
        lockFD = fd
    }

    /// Every `<group>.yaml` with its version (a missing `.version` is version 1, and is written),
    /// sorted by name. Leftover temp files of an interrupted write are removed.
    public func load() throws(ControlError) -> [StoredGroup] {
        var groups: [StoredGroup] = []
        for name in try Self.list(path) {
            if name.hasPrefix(".") && name.hasSuffix(".tmp") {
                unlink(path + "/" + name)
                continue
            }
            guard name.hasSuffix(".yaml") else { continue }
            let group = String(name.dropLast(5))
            guard (try? ControlRequest.checkGroup(group)) != nil else { continue }
            let document = try Self.read(path + "/" + name)
            var version: UInt64 = 1
            switch Self.readIfPresent(path + "/" + group + ".version") {
            case .absent:
                try Self.writeAtomically(directory: path, name: group + ".version", Array("1\n".utf8))
            case .failed(let e):
                throw e
            case .present(let bytes):
                let text = String(decoding: bytes, as: UTF8.self).trimmingWhitespace
                guard let v = UInt64(text), v > 0 else {
                    throw ControlError(500, "\(path)/\(group).version: expected a version number, got \"\(text)\"")
                }
                version = v
            }
            groups.append(StoredGroup(name: group, version: version,
                                      document: String(decoding: document, as: UTF8.self)))
        }
        return groups.sorted { $0.name < $1.name }
    }

    /// Stores one group (version first, then the document).
    public func save(_ g: StoredGroup) throws(ControlError) {
        try Self.writeAtomically(directory: path, name: g.name + ".version", Array("\(g.version)\n".utf8))
        try Self.writeAtomically(directory: path, name: g.name + ".yaml", Array(g.document.utf8))
    }

    // MARK: files

    /// Writes `<directory>/.<name>.tmp`, fsyncs it, renames it over `<directory>/<name>` and
    /// fsyncs the directory, so that after a crash the file is either the old one or the new one.
    public static func writeAtomically(directory: String, name: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws(ControlError) {
        let tmp = directory + "/." + name + ".tmp"
        let final = directory + "/" + name
        unlink(tmp)   // a leftover temp file keeps its mode: start anew
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        if fd < 0 { throw failure("create \(tmp)") }
        var ok = true
        var e: Int32 = 0
        bytes.withUnsafeBytes { b in
            var off = 0
            while off < b.count {
                let n = write(fd, b.baseAddress! + off, b.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    ok = false; e = errno; return
                }
                off += n
            }
        }
        if ok && fsync(fd) != 0 { ok = false; e = errno }
        if Glibc.close(fd) != 0 && ok { ok = false; e = errno }
        if !ok {
            unlink(tmp)
            throw failure("write \(tmp)", e)
        }
        if rename(tmp, final) != 0 {
            let e = errno
            unlink(tmp)
            throw failure("rename \(tmp) to \(final)", e)
        }
        try syncDirectory(directory)
    }

    static func syncDirectory(_ dir: String) throws(ControlError) {
        let fd = open(dir, O_RDONLY | O_CLOEXEC | O_DIRECTORY)
        if fd < 0 { throw failure("open \(dir)") }
        defer { Glibc.close(fd) }
        if fsync(fd) != 0 { throw failure("fsync \(dir)") }
    }

    enum ReadResult { case present([UInt8]), absent, failed(ControlError) }

    static func readIfPresent(_ file: String) -> ReadResult {
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return errno == ENOENT ? .absent : .failed(failure("open \(file)")) }
        defer { Glibc.close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return .failed(failure("read \(file)"))
            }
            if n == 0 { return .present(out) }
            out += chunk[..<n]
        }
    }

    /// The whole file.
    public static func read(_ file: String) throws(ControlError) -> [UInt8] {
        switch readIfPresent(file) {
        case .present(let b): return b
        case .absent: throw ControlError(500, "\(file): no such file")
        case .failed(let e): throw e
        }
    }

    /// Names in a directory (not "." and "..").
    static func list(_ dir: String) throws(ControlError) -> [String] {
        guard let d = opendir(dir) else { throw failure("open directory \(dir)") }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: &e.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static func makeDirectories(_ dir: String) throws(ControlError) {
        var st = stat()
        if stat(dir, &st) == 0 {
            if st.st_mode & S_IFMT != S_IFDIR { throw ControlError(500, "\(dir) is not a directory") }
            return
        }
        var prefix = dir.hasPrefix("/") ? "" : "."
        for part in dir.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST { throw failure("mkdir \(prefix)") }
        }
    }

    static func failure(_ what: String, _ code: Int32 = errno) -> ControlError {
        ControlError(500, "\(what): \(String(cString: strerror(code)))")
    }
}

extension String {
    var trimmingWhitespace: String {
        let u = Array(utf8)
        var a = 0, b = u.count
        while a < b && (u[a] == 0x20 || u[a] == 0x0A || u[a] == 0x0D || u[a] == 0x09) { a += 1 }
        while b > a && (u[b - 1] == 0x20 || u[b - 1] == 0x0A || u[b - 1] == 0x0D || u[b - 1] == 0x09) { b -= 1 }
        return String(decoding: u[a..<b], as: UTF8.self)
    }
}
