import SwiftProtobuf

/// A resource remora-xds cannot apply: the NACK's error_detail. `resource` names the xDS resource
/// (`Listener web`), `field` the proto path of what is not supported (`filter_chains[0].filters[1]`).
public struct XDSError: Error, Equatable, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The names of the fields set in `rest`, a copy of a message with every field the translation reads
/// cleared: what is left is not supported. Named from the text format (proto field names; an unknown
/// field shows as its number), so no field is ever ignored without a NACK, including ones added to the
/// API after this code was generated.
func leftoverFields<M: Message>(_ rest: M) -> [String] {
    if rest.isEqualTo(message: M()) { return [] }
    var names: [String] = []
    for line in rest.textFormatString().split(separator: "\n", omittingEmptySubsequences: true) {
        guard let first = line.first, first != " ", first != "}" else { continue }
        var name = Substring(line)
        if let end = name.firstIndex(where: { $0 == ":" || $0 == " " || $0 == "{" }) { name = name[..<end] }
        let n = String(name)
        if !names.contains(n) { names.append(n) }
    }
    return names.isEmpty ? ["(unknown)"] : names
}

/// Throws when `rest` has a field set: `"<at>: <field> is not supported"`.
func refuseLeftovers<M: Message>(_ rest: M, at path: String, note: String = "") throws(XDSError) {
    let f = leftoverFields(rest)
    guard !f.isEmpty else { return }
    let what = f.map { path.isEmpty ? $0 : path + "." + $0 }
    throw XDSError((f.count == 1 ? "\(what[0]) is not supported" : "\(what.joined(separator: ", ")) are not supported")
                   + (note.isEmpty ? "" : " (\(note))"))
}
