/// One problem found in a configuration, located as precisely as the source allows.
/// Printed as `file:line: path.to.field: message`, the form `remora validate` lists.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file the config came from ("<embedded>" for the built-in demo config).
    public var file: String
    /// 1-based line of the offending node, 0 when unknown.
    public var line: Int
    /// Dotted path of the field, with list indices: `listeners[0].routes[1].timeout`.
    public var path: String
    /// What is wrong, for a person: `unknown key "tiemout"`, `expected a duration like "250ms" or "5s"`.
    public var message: String

    public init(file: String, line: Int, path: String, message: String) {
        self.file = file; self.line = line; self.path = path; self.message = message
    }

    public var description: String { "\(file):\(line): \(path.isEmpty ? "(top)" : path): \(message)" }
}

/// All the problems found in one configuration.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [ConfigError]
    public init(_ errors: [ConfigError]) { self.errors = errors }
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}
