import Glibc
import RemoraConfig
import RemoraControl
import RemoraCore
import Testing

let small = """
    listeners:
      - name: web
        address: 127.0.0.1:0
        routes:
          - name: split
            backends: [ { cluster: v1, weight: 90 }, { cluster: v2, weight: 10 } ]
    clusters:
      - { name: v1, endpoints: [ "127.0.0.1:1" ] }
      - { name: v2, endpoints: [ "127.0.0.1:2" ] }

    """

/// A fresh, empty directory under /tmp, removed by `cleanup`.
func scratchDirectory() -> String {
    var template = Array("/tmp/remora-control-test-XXXXXX".utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    return String(cString: p!)
}

func cleanup(_ dir: String) {
    if let d = opendir(dir) {
        while let e = readdir(d) {
            let name = withUnsafePointer(to: &e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name != "." && name != ".." { unlink(dir + "/" + name) }
        }
        closedir(d)
    }
    rmdir(dir)
}

func files(_ dir: String) -> [String] {
    var out: [String] = []
    if let d = opendir(dir) {
        while let e = readdir(d) {
            let name = withUnsafePointer(to: &e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name != "." && name != ".." { out.append(name) }
        }
        closedir(d)
    }
    return out.sorted()
}

func text(_ path: String) -> String? { (try? StateDirectory.read(path)).map { String(decoding: $0, as: UTF8.self) } }

@Suite struct ControlStateTests {
    @Test func versionsOnlyGrow() throws {
        let s = ControlState()
        #expect(try s.put(group: "web", document: small, force: false) == .init(version: 1, changed: true))
        // The same document again changes nothing.
        #expect(try s.put(group: "web", document: small, force: false) == .init(version: 1, changed: false))
        #expect(try s.put(group: "web", document: small + "# v2\n", force: false) == .init(version: 2, changed: true))
        #expect(try s.split(group: "web", route: "split", weights: [ClusterWeight("v2", 50)]) == .init(version: 3, changed: true))
        #expect(try s.split(group: "web", route: "split", weights: [ClusterWeight("v2", 50)]) == .init(version: 3, changed: false))
        // Groups are independent.
        #expect(try s.put(group: "api", document: small, force: false) == .init(version: 1, changed: true))
        #expect(s.groupLines() == "api 1\nweb 3\n")
    }

    @Test func invalidDocumentsListEveryError() throws {
        let s = ControlState()
        let bad = "listeners:\n  - name: web\n    address: nope\n    routes: [ { name: r, backends: [ { cluster: missing } ] } ]\n"
        do {
            _ = try s.put(group: "web", document: bad, force: false)
            Issue.record("accepted")
        } catch {
            #expect(error.status == 400)
            let lines = error.message.split(separator: "\n")
            #expect(lines.count == 2)
            #expect(lines.allSatisfy { $0.hasPrefix("web:") })
            #expect(lines[0] == #"web:3: listeners[0].address: expected host:port like "127.0.0.1:8080" or "[::1]:8080", got "nope""#)
        }
        #expect(s.groups["web"] == nil)
        // force stores it anyway (to test NACKs).
        #expect(try s.put(group: "web", document: bad, force: true).version == 1)
        // A split of an invalid document is refused with its errors.
        #expect(throws: ControlError.self) { _ = try s.split(group: "web", route: "r", weights: [ClusterWeight("missing", 2)]) }
        #expect(throws: ControlError(404, "no group nope")) { _ = try s.split(group: "nope", route: "r", weights: [ClusterWeight("a", 2)]) }
    }

    @Test func pollsGetNewerVersionsOrWait() throws {
        let s = ControlState()
        #expect(throws: ControlError(404, "no group web")) { _ = try s.poll(group: "web", version: 0) }
        _ = try s.put(group: "web", document: small, force: false)
        #expect(try s.poll(group: "web", version: 0) == .send(s.groups["web"]!))
        #expect(try s.poll(group: "web", version: 1) == .wait)
        _ = try s.put(group: "web", document: small + "#\n", force: false)
        #expect(try s.poll(group: "web", version: 1) == .send(s.groups["web"]!))
        // A node ahead of the server (state restored from an old copy): the version jumps past it.
        let g = try s.poll(group: "web", version: 40)
        #expect(g == .send(StoredGroup(name: "web", version: 41, document: small + "#\n")))
        #expect(try s.poll(group: "web", version: 41) == .wait)
    }

    @Test func nodeStates() throws {
        let s = ControlState()
        _ = try s.put(group: "web", document: small, force: false)
        s.saw(node: "n1", group: "web", admin: "127.0.0.1:9901", now: 1_000)
        s.polled(node: "n1", version: 0)
        #expect(s.nodes["n1"]?.state == .pending)
        s.delivered(node: "n1", version: 1)
        #expect(s.nodes["n1"]?.version == 1)
        s.report(node: "n1", group: "web", version: 1, nack: nil, now: 2_000)
        #expect(s.nodes["n1"] == NodeRecord(id: "n1", group: "web", version: 1, state: .ack, reason: "", admin: "127.0.0.1:9901", lastSeen: 2_000))
        s.delivered(node: "n1", version: 2)
        #expect(s.nodes["n1"]?.state == .pending)
        s.report(node: "n1", group: "web", version: 2, nack: "web@2:3: listeners[0].address: bad\nweb@2:4: second", now: 3_000)
        #expect(s.nodes["n1"]?.state == .nack)
        // A stale report (older version) only counts as a sign of life.
        s.report(node: "n1", group: "web", version: 1, nack: nil, now: 4_000)
        #expect(s.nodes["n1"]?.state == .nack)
        #expect(s.nodes["n1"]?.lastSeen == 4_000)
        // Polling with the refused version does not forget the refusal.
        s.polled(node: "n1", version: 2)
        #expect(s.nodes["n1"]?.state == .nack)
        // An ACK from a node this server never saw (it restarted): recorded.
        s.report(node: "n2", group: "web", version: 1, nack: nil, now: 5_000)
        #expect(s.statusLines(now: 6_500) == """
            n1 web 2 NACK web@2:3:%20listeners[0].address:%20bad%0Aweb@2:4:%20second 2 127.0.0.1:9901
            n2 web 1 ACK - 1 -

            """)
    }

    @Test func nodeRecordsAreBounded() {
        let s = ControlState()
        s.maxNodes = 3
        for i in 0..<5 { s.saw(node: "n\(i)", group: "g", admin: nil, now: UInt64(i)) }
        #expect(s.nodes.count == 3)
        #expect(Set(s.nodes.keys) == ["n2", "n3", "n4"])
    }

    @Test func nothingChangesWhenStoringFails() throws {
        var fail = false
        let s = ControlState { g throws(ControlError) in if fail { throw ControlError(500, "disk full") } }
        _ = try s.put(group: "web", document: small, force: false)
        fail = true
        #expect(throws: ControlError(500, "disk full")) { _ = try s.put(group: "web", document: small + "#\n", force: false) }
        #expect(s.groups["web"]?.version == 1)
        #expect(s.groups["web"]?.document == small)
    }
}

@Suite struct StateDirectoryTests {
    @Test func writesAreAtomicAndSurviveARestart() throws {
        let dir = scratchDirectory()
        defer { cleanup(dir) }
        do {
            let d = try StateDirectory(path: dir)
            try d.lock()
            let s = ControlState(groups: try d.load()) { g throws(ControlError) in try d.save(g) }
            _ = try s.put(group: "web", document: small, force: false)
            _ = try s.put(group: "api", document: small, force: false)
            _ = try s.split(group: "web", route: "split", weights: [ClusterWeight("v1", 1)])
            // No temp file is left behind; only the documents, the versions and the lock.
            #expect(files(dir) == [".lock", "api.version", "api.yaml", "web.version", "web.yaml"])
            #expect(text(dir + "/web.version") == "2\n")
            // Another server cannot take the same directory.
            #expect(throws: ControlError.self) { try StateDirectory(path: dir).lock() }
        }
        // "Restart": a new directory object loads the same versions and documents.
        let d2 = try StateDirectory(path: dir)
        try d2.lock()
        let loaded = try d2.load()
        #expect(loaded.map(\.name) == ["api", "web"])
        #expect(loaded.map(\.version) == [1, 2])
        let s2 = ControlState(groups: loaded) { g throws(ControlError) in try d2.save(g) }
        #expect(s2.groups["web"]?.document.contains("{ cluster: v1, weight: 1 }") == true)
        // The next version continues from the stored one.
        #expect(try s2.put(group: "web", document: small, force: false).version == 3)
    }

    @Test func loadCleansUpAndFillsIn() throws {
        let dir = scratchDirectory()
        defer { cleanup(dir) }
        // An interrupted write's temp file, a document without a version file, files that are not groups.
        try StateDirectory.writeAtomically(directory: dir, name: ".web.yaml.tmp", Array("partial".utf8))
        try StateDirectory.writeAtomically(directory: dir, name: "web.yaml", Array(small.utf8))
        try StateDirectory.writeAtomically(directory: dir, name: "notes.txt", Array("hello".utf8))
        let d = try StateDirectory(path: dir)
        let loaded = try d.load()
        #expect(loaded == [StoredGroup(name: "web", version: 1, document: small)])
        #expect(files(dir) == ["notes.txt", "web.version", "web.yaml"])
        // A version file that is not a number stops the server from starting.
        try StateDirectory.writeAtomically(directory: dir, name: "web.version", Array("seven\n".utf8))
        #expect(throws: ControlError.self) { _ = try d.load() }
    }

    @Test func createsTheDirectory() throws {
        let dir = scratchDirectory()
        defer { cleanup(dir + "/a/b"); cleanup(dir + "/a"); cleanup(dir) }
        let d = try StateDirectory(path: dir + "/a/b/")
        #expect(d.path == dir + "/a/b")
        #expect(try d.load().isEmpty)
        try d.save(StoredGroup(name: "g", version: 9, document: "x"))
        #expect(try d.load() == [StoredGroup(name: "g", version: 9, document: "x")])
    }
}
