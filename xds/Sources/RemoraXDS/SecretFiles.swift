import Glibc

/// Where the agent puts the certificates, keys and CAs that SDS delivers inline, for the proxy to load:
/// one directory (mode 0700, created if needed, refused if it is a symbolic link or another user's),
/// each file written with mode 0600 to a temporary name, synced, then renamed over the old one (the
/// proxy's file watcher sees a whole file and reloads it: docs/tls.md "Rotate certificates"; new
/// handshakes use it, open connections are kept). The key never lands on disk readable by others.
///
/// Why files and not the control channel: the proxy already loads, watches and reloads certificate
/// files without a configuration change, so a rotation is two renames instead of a new configuration
/// version (validated, compiled and swapped); and keys stay out of the control server's stored
/// versions (`--state`), of `GET /config_dump`, and off the control connection.
public struct SecretFiles: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    /// Creates the directory (0700) or checks an existing one: a directory, not a link, ours, and
    /// then set to 0700. nil when usable, else why not.
    public func prepare() -> String? {
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            return "cannot create \(directory): \(String(cString: strerror(errno)))"
        }
        var st = stat()
        guard lstat(directory, &st) == 0 else { return "cannot stat \(directory): \(String(cString: strerror(errno)))" }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { return "\(directory) is not a directory (a link or a file)" }
        guard st.st_uid == getuid() else { return "\(directory) belongs to another user (uid \(st.st_uid))" }
        if (st.st_mode & 0o777) != 0o700 && chmod(directory, 0o700) != 0 {
            return "cannot chmod 0700 \(directory): \(String(cString: strerror(errno)))"
        }
        return nil
    }

    /// Writes each file (temporary name, 0600, fsync, rename, then fsync of the directory). The
    /// errors, one per file that could not be written.
    public func write(_ files: [SecretFile]) -> [String] {
        var errors: [String] = []
        for f in files {
            if let e = writeOne(f) { errors.append(e) }
        }
        let d = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if d >= 0 { fsync(d); close(d) }
        return errors
    }

    func writeOne(_ f: SecretFile) -> String? {
        guard let slash = f.path.lastIndex(of: "/") else { return "\(f.path): not in \(directory)" }
        let tmp = String(f.path[..<slash]) + "/." + String(f.path[f.path.index(after: slash)...]) + ".tmp"
        unlink(tmp)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return "cannot create \(tmp): \(String(cString: strerror(errno)))" }
        var ok = fchmod(fd, 0o600) == 0
        var off = 0
        f.bytes.withUnsafeBytes { raw in
            while ok && off < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { ok = false; break }
                off += n
            }
        }
        let err = ok ? 0 : errno
        if ok && fsync(fd) != 0 { ok = false }
        close(fd)
        guard ok, rename(tmp, f.path) == 0 else {
            let e = err != 0 ? err : errno
            unlink(tmp)
            return "cannot write \(f.path): \(String(cString: strerror(e)))"
        }
        return nil
    }
}
