// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "swift-lnet",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Verbs", targets: ["Verbs"]),
        .library(name: "LNet", targets: ["LNet"]),
        .library(name: "RDMALND", targets: ["RDMALND"]),
        .library(name: "LNetSelftest", targets: ["LNetSelftest"]),
        .executable(name: "lnetctl", targets: ["lnetctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // `swift package generate-documentation` (the DocC catalogues of LNet and RDMALND).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // Layer 1: the C shim over libibverbs and librdmacm. Only what Swift cannot call directly.
        .target(
            name: "CShims",
            path: "CShims",
            linkerSettings: [.linkedLibrary("ibverbs"), .linkedLibrary("rdmacm")]
        ),
        // Beside it, below LNet: the GNU C calls of the service threads (names, CPU affinity, eventfd, ppoll).
        .target(name: "CSystemShims", path: "CSystemShims"),
        // Layer 2: owned, typed Swift handles over verbs and rdma_cm.
        .target(
            name: "Verbs",
            dependencies: [
                "CShims",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Layer 3: the LNet core. Knows nothing of verbs; LNDs plug into it.
        .target(
            name: "LNet",
            dependencies: [
                "CSystemShims",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
            ]
        ),
        // Layer 4: the RDMA LND, an LND of the core carried over verbs RC queue pairs.
        .target(
            name: "RDMALND",
            dependencies: [
                "CShims",
                "Verbs",
                "LNet",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Configuration", package: "swift-configuration"),
            ]
        ),
        // Layer 5: LNet self-test and ping (like Lustre's lnet_selftest): protocol, server and client over any LND.
        .target(
            name: "LNetSelftest",
            dependencies: [
                "LNet",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The `lnetctl` commands (devices, tunables, serve, ping, selftest), a library so tests can call them.
        .target(
            name: "LNetControl",
            dependencies: [
                "LNet",
                "LNetSelftest",
                "RDMALND",
                "Verbs",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "lnetctl", dependencies: ["LNetControl"]),
        // Examples/: a server that attaches an ME and a client that PUTs a buffer and GETs it back (o2ib or 0@lo).
        .executableTarget(name: "ExampleServer", dependencies: ["LNet", "RDMALND"], path: "Examples/Server"),
        .executableTarget(name: "ExampleClient", dependencies: ["LNet", "RDMALND"], path: "Examples/Client"),
        // Benchmarks print figures; they are not timed tests.
        .executableTarget(name: "LNetCoreBench", dependencies: ["LNet"], path: "Benchmarks/LNetCoreBench"),
        // Instructions per message, counted by Benchmarks/callgrind.sh under valgrind.
        .executableTarget(name: "LNetInstructionBench", dependencies: ["LNet", "RDMALND"], path: "Benchmarks/LNetInstructionBench"),
        // Object affinity or client affinity (LNET_PLACEMENT): an object server and its clients over o2ib, run in
        // the SoftRoCE VM by scripts/object-affinity.sh.
        .executableTarget(name: "ObjectAffinityBench", dependencies: ["LNet", "LNetSelftest", "RDMALND", "CSystemShims"],
                          path: "Benchmarks/ObjectAffinityBench"),
        // The fuzz target of the wire and handshake parsers (scripts/fuzz.sh builds it with libFuzzer); its
        // invariants are a library of their own, so that the tests replay the corpus through the same checks.
        .target(name: "WireFuzzChecks", dependencies: ["RDMALND", "LNet"], path: "Fuzz/WireFuzzChecks"),
        .executableTarget(name: "WireFuzz", dependencies: ["WireFuzzChecks"], path: "Fuzz/WireFuzz"),
        // What the test targets share: the test bed (device present or required, its addresses, `.requiresDevice`).
        .target(name: "DeviceTestSupport", path: "Tests/DeviceTestSupport"),
        .testTarget(name: "VerbsTests", dependencies: ["Verbs", "DeviceTestSupport"]),
        .testTarget(name: "LNetTests", dependencies: ["LNet", .product(name: "MetricsTestKit", package: "swift-metrics")]),
        .testTarget(name: "RDMALNDTests", dependencies: ["RDMALND", "Verbs", "LNet", "WireFuzzChecks", "DeviceTestSupport"]),
        .testTarget(name: "LNetSelftestTests", dependencies: ["LNetSelftest", "LNet"]),
        // Runs the built Examples/ binaries (over 0@lo here, over rxe in the device suite).
        .testTarget(name: "ExamplesTests", dependencies: ["DeviceTestSupport"]),
        .testTarget(name: "lnetctlTests", dependencies: [
            "LNetControl", "LNetSelftest", "LNet", "RDMALND", "DeviceTestSupport",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
