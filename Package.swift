// swift-tools-version:6.0
import PackageDescription

// Hot modules skip dynamic exclusivity checks in release builds (the checks cost ~18 % of
// instructions per request when state crosses modules) and allow cross-module optimization.
let hot: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization"], .when(configuration: .release)),
]

let package = Package(
    name: "Remora",
    products: [
        .executable(name: "remora", targets: ["remora"]),
    ],
    dependencies: [
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // C modules: system libraries found through pkg-config, plus llhttp built from Debian's node-llhttp.
        .systemLibrary(name: "CLibUV", path: "CShims/CLibUV", pkgConfig: "libuv",
                       providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CNGHTTP2", path: "CShims/CNGHTTP2", pkgConfig: "libnghttp2",
                       providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(name: "CYAML", path: "CShims/CYAML", pkgConfig: "yaml-0.1",
                       providers: [.apt(["libyaml-dev"])]),
        .systemLibrary(name: "CRemoraSupport", path: "CShims/CRemoraSupport"),
        // nghttp2's allocator: per-thread size-class free lists (nghttp2 allocates ~35 blocks per stream).
        .target(name: "CH2Mem", path: "CShims/CH2Mem",
                cSettings: [.unsafeFlags(["-O2"])]),
        .target(name: "CLLHTTP", path: "CShims/CLLHTTP",
                cSettings: [.unsafeFlags(["-O3", "-Wno-everything"])]),
        // RE2 (Debian libre2-dev) behind a small C interface: linear-time regex matching for routes.
        .target(name: "CRE2", path: "CShims/CRE2", linkerSettings: [.linkedLibrary("re2")]),
        // OpenSSL 3 (Debian libssl-dev) behind a small C interface; every OpenSSL callback is in its tls.c.
        .target(name: "COpenSSL", path: "CShims/COpenSSL", cSettings: [.unsafeFlags(["-O2"])],
                linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),

        // Pure Swift values: config model, errors, sizes and durations, stat names.
        .target(name: "RemoraCore", dependencies: ["CRemoraSupport", "RemoraPolicy"], swiftSettings: hot),
        // YAML (libyaml) -> validated config model, errors as file:line: path: message.
        .target(name: "RemoraConfig", dependencies: ["RemoraCore", "RemoraRouting", "RemoraPolicy", "CYAML"]),
        // The only importer of libuv.
        .target(name: "RemoraIO", dependencies: ["RemoraCore", "CLibUV"], swiftSettings: hot),
        // The only importer of llhttp (and, later, nghttp2).
        .target(name: "RemoraHTTP", dependencies: ["RemoraCore", "CLLHTTP", "CNGHTTP2", "CH2Mem"], swiftSettings: hot),
        // The only importer of OpenSSL (COpenSSL): the TLS transport socket, certificate contexts.
        .target(name: "RemoraTLS", dependencies: ["RemoraCore", "RemoraIO", "COpenSSL"], swiftSettings: hot),
        // Pure decisions, no I/O: the route table, matchers, weighted split.
        .target(name: "RemoraRouting", dependencies: ["RemoraCore", "RemoraPolicy"], swiftSettings: hot),
        // Pure policy, no I/O: attempt outcomes, load balancers, retry state and budgets, breakers,
        // outlier detection, health state, backoff; values and state machines that return decisions.
        // RE2 (CRE2) lives here, behind `Regex`: route and authorization matchers both use it.
        .target(name: "RemoraPolicy", dependencies: ["CRE2"], swiftSettings: hot),
        // The local HTTP server, who may call it, the admin endpoints and the stats renderers.
        // Off the data path: it reads the proxy through `AdminTarget`, never imports RemoraProxy.
        .target(name: "RemoraAdmin", dependencies: ["RemoraCore", "RemoraIO", "RemoraHTTP"]),
        // The glue: workers, connection managers, upstream pools, TCP proxy, process lifecycle.
        .target(name: "RemoraProxy",
                dependencies: ["RemoraCore", "RemoraConfig", "RemoraIO", "RemoraHTTP", "RemoraRouting", "RemoraPolicy",
                               "RemoraAdmin", "RemoraTLS", "RemoraControl", "CRemoraSupport"],
                swiftSettings: hot),
        // Control plane: `remora control` (desired state, long-poll pushes, the mesh CA) and `remora ctl`,
        // and the proxy's identity agent (CSRs to the CA, renewals). (CYAML: the split edit locates weights
        // in the stored YAML text to change only them; RemoraTLS: the CA's X.509 work, MeshPKI.)
        .target(name: "RemoraControl", dependencies: ["RemoraCore", "RemoraConfig", "RemoraIO", "RemoraHTTP", "RemoraAdmin",
                                                       "RemoraTLS", "CYAML"]),
        // ns per match of a compiled route table (perf/routing/README.md).
        .executableTarget(name: "RemoraRoutingBench", dependencies: ["RemoraRouting", "RemoraCore", "RemoraPolicy"],
                          path: "perf/routing", exclude: ["README.md"], swiftSettings: hot),
        // `remora bench`: the load generator (HTTP/1.1, h2c, gRPC).
        .target(name: "RemoraBench",
                dependencies: ["RemoraCore", "RemoraIO", "RemoraHTTP", "RemoraPolicy",
                               .product(name: "Histogram", package: "hdrhistogram-swift")],
                swiftSettings: hot),
        .executableTarget(name: "remora", dependencies: ["RemoraProxy", "RemoraConfig", "RemoraCore", "RemoraControl",
                                                         "RemoraBench", "RemoraAdmin"]),

        .testTarget(name: "RemoraCoreTests", dependencies: ["RemoraCore"]),
        .testTarget(name: "RemoraConfigTests", dependencies: ["RemoraConfig", "RemoraCore"]),
        .testTarget(name: "RemoraHTTPTests", dependencies: ["RemoraHTTP", "RemoraCore"]),
        .testTarget(name: "RemoraRoutingTests", dependencies: ["RemoraRouting", "RemoraCore", "RemoraPolicy"]),
        .testTarget(name: "RemoraPolicyTests", dependencies: ["RemoraPolicy"]),
        .testTarget(name: "RemoraIOTests", dependencies: ["RemoraIO", "RemoraCore"]),
        .testTarget(name: "RemoraBenchTests", dependencies: ["RemoraBench", "RemoraCore", "RemoraHTTP",
                                                              .product(name: "Histogram", package: "hdrhistogram-swift")]),
        .testTarget(name: "RemoraControlTests", dependencies: ["RemoraControl", "RemoraConfig", "RemoraCore", "RemoraTLS"]),
        .testTarget(name: "RemoraAdminTests", dependencies: ["RemoraAdmin", "RemoraCore"]),
        .testTarget(name: "RemoraProxyTests", dependencies: ["RemoraProxy", "RemoraAdmin", "RemoraCore", "RemoraConfig", "RemoraIO", "RemoraPolicy"]),
    ],
    swiftLanguageModes: [.v6]
)

// libFuzzer targets (Tests/fuzz/README.md, `make fuzz`): declared only when REMORA_FUZZ is set, so the
// normal build and `swift test` never see them. Built with -sanitize=fuzzer,address by Tests/fuzz/run.sh;
// linked with lld (gold fails on the sanitizer runtime's debug info).
if Context.environment["REMORA_FUZZ"] != nil {
    let lld: [LinkerSetting] = [.unsafeFlags(["-use-ld=lld"])]
    package.targets += [
        .executableTarget(name: "FuzzHTTP1", dependencies: ["RemoraHTTP", "RemoraCore"], path: "Tests/fuzz/http1",
                          linkerSettings: lld),
        .executableTarget(name: "FuzzHTTP2", dependencies: ["RemoraHTTP", "RemoraCore"], path: "Tests/fuzz/http2",
                          linkerSettings: lld),
        .executableTarget(name: "FuzzTLS", dependencies: ["RemoraHTTP", "RemoraRouting"], path: "Tests/fuzz/tls",
                          linkerSettings: lld),
        .executableTarget(name: "FuzzConfig", dependencies: ["RemoraConfig", "RemoraRouting", "RemoraCore"],
                          path: "Tests/fuzz/config", linkerSettings: lld),
        .executableTarget(name: "FuzzPathNorm", dependencies: ["RemoraHTTP", "RemoraPolicy", "RemoraCore"],
                          path: "Tests/fuzz/pathnorm", linkerSettings: lld),
    ]
}

// The xDS agent, remora-xds (docs/xds.md): a process of its own beside the proxy. Declared only when
// REMORA_XDS is set (`make build`, `make xds-unit` build it in .build-xds/), because SwiftPM builds every
// executable of a dependency on a plain `swift build` or `swift test`, and swift-protobuf's include a C++
// protoc: without the variable, the data plane's builds and tests never see swift-protobuf. With
// REMORA_XDS=tests only the xDS unit tests are declared (`swift build --product RemoraPackageTests`).
if let mode = Context.environment["REMORA_XDS"] {
    package.dependencies.append(.package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0"))
    let protobuf: Target.Dependency = .product(name: "SwiftProtobuf", package: "swift-protobuf")
    package.products.append(.executable(name: "remora-xds", targets: ["remora-xds"]))
    if mode == "tests" { package.targets.removeAll { $0.type == .test } }
    package.targets += [
        // The Envoy API messages, generated once by xds/generate.py (committed).
        .target(name: "RemoraXDSProto", dependencies: [protobuf], path: "xds/Sources/RemoraXDSProto"),
        // The translation to Remora's config, the ADS state machine and client, the agent. It serves the
        // result to the proxy as `remora control` does (RemoraControl's server, embedded).
        .target(name: "RemoraXDS",
                dependencies: ["RemoraXDSProto", "RemoraCore", "RemoraConfig", "RemoraIO", "RemoraHTTP", "RemoraPolicy",
                               "RemoraControl", "RemoraTLS", protobuf],
                path: "xds/Sources/RemoraXDS"),
        .executableTarget(name: "remora-xds", dependencies: ["RemoraXDS", "RemoraControl", "RemoraCore"],
                          path: "xds/Sources/remora-xds"),
        .testTarget(name: "RemoraXDSTests", dependencies: ["RemoraXDS", "RemoraXDSProto", "RemoraConfig", "RemoraCore", protobuf],
                    path: "xds/Tests/RemoraXDSTests"),
    ]
}
