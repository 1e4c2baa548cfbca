import RemoraPolicy

/// How a listener normalizes request paths before anything looks at them (`path_normalization:`).
/// Routing, authorization and the upstream all see the normalized path, so `//admin`, `/%61dmin`,
/// `/a/../admin` and `/./admin` cannot reach `/admin` past a rule written for `/admin`.
/// docs/config.md says why the defaults are what they are.
public struct PathNormalization: Sendable, Equatable {
    /// What becomes of `%2F` and `%5C` (an encoded `/` and `\`) in a path.
    public enum EscapedSlashes: String, Sendable, Equatable, CaseIterable {
        /// Left encoded (hex digits uppercased): one path segment to the proxy.
        case keep
        /// The request gets 400 (`downstream_rq_failed_path_normalization`).
        case reject
        /// Decoded to `/` and `\` before the other steps (Envoy's UNESCAPE_AND_FORWARD).
        case decode
    }
    /// RFC 3986 §5.2.4: `.` and `..` segments are removed (`/a/./b/../c` → `/a/c`). Default on.
    public var removeDotSegments = true
    /// RFC 3986 §6.2.2.2: percent-encoded unreserved characters (letters, digits, `-._~`) are
    /// decoded (`/%61dmin` → `/admin`); other escapes get uppercase hex digits; a `%` not followed
    /// by two hex digits gets 400. Default on.
    public var decodeUnreserved = true
    /// Runs of `/` become one (`//admin` → `/admin`), as nginx does by default. Default on.
    public var mergeSlashes = true
    /// nil = the default: `reject` on a listener with an authorization policy (on itself or on one
    /// of its routes), else `keep`.
    public var escapedSlashes: EscapedSlashes?

    public init(removeDotSegments: Bool = true, decodeUnreserved: Bool = true, mergeSlashes: Bool = true,
                escapedSlashes: EscapedSlashes? = nil) {
        self.removeDotSegments = removeDotSegments; self.decodeUnreserved = decodeUnreserved
        self.mergeSlashes = mergeSlashes; self.escapedSlashes = escapedSlashes
    }

    /// Every step off (`path_normalization: false`).
    public static let off = PathNormalization(removeDotSegments: false, decodeUnreserved: false, mergeSlashes: false,
                                              escapedSlashes: .keep)
}

extension ListenerConfig {
    /// The listener or one of its routes has an authorization policy.
    public var hasAuthorization: Bool {
        authorization != nil || virtualHosts.contains { $0.routes.contains { $0.authorization != nil } }
    }

    /// `path_normalization.escaped_slashes` with its default resolved.
    public var escapedSlashes: PathNormalization.EscapedSlashes {
        pathNormalization.escapedSlashes ?? (hasAuthorization ? .reject : .keep)
    }

    /// The normalization does nothing at all (no step on): requests skip it.
    public var normalizesPaths: Bool {
        pathNormalization.removeDotSegments || pathNormalization.decodeUnreserved || pathNormalization.mergeSlashes
            || escapedSlashes != .keep
    }
}
