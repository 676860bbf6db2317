// swift-tools-version: 6.0
// Moraine: an LSM key-value store for disaggregated infrastructure. One target per layer,
// dependencies pointing down only:
//   CSystemShims (C) → MoraineSystem → MoraineFormat → MoraineMemtable → MoraineEngine
//   → Moraine (public API) → moraine (command)
//   MoraineSystem → MoraineTransport (protocol, shared-memory and TCP carriers; the only NIO user)
//   MoraineTransport → MoraineMessages (the roles' message codecs) → one target per role:
//   MoraineStorage (the storage node, and the remote file system that reaches it),
//   MoraineWorker (compaction workers, and the job runner that reaches them),
//   MoraineMemory (the memory node, and the memtable-arena provider that reaches it)
// MoraineMetrics serves /metrics (swift-prometheus) from samples every layer reads at scrape time.
// MoraineBench (db_bench, YCSB) and MoraineTransportBench (transport-bench) are the measurements.
// MoraineTestSupport holds the oracle, the simulated, fault-injecting and forwarding file systems, seeds.
import PackageDescription

let package = Package(
    name: "Moraine",
    products: [
        .library(name: "Moraine", targets: ["Moraine"]),
        .executable(name: "moraine", targets: ["MoraineCLI"]),
        .library(name: "MoraineBench", targets: ["MoraineBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .target(
            name: "CSystemShims",
            path: "CSystemShims",
            linkerSettings: [
                .linkedLibrary("uring"), .linkedLibrary("pmem"), .linkedLibrary("numa"), .linkedLibrary("lz4"),
            ]
        ),
        .target(name: "MoraineSystem", dependencies: ["CSystemShims", .product(name: "Logging", package: "swift-log")]),
        .target(name: "MoraineFormat", dependencies: ["MoraineSystem"]),
        .target(
            name: "MoraineMemtable",
            dependencies: ["MoraineFormat", .product(name: "Atomics", package: "swift-atomics")]
        ),
        .target(
            name: "MoraineEngine",
            dependencies: ["MoraineSystem", "MoraineFormat", "MoraineMemtable"]
        ),
        .target(
            name: "MoraineTransport",
            dependencies: [
                "MoraineSystem",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // The roles' message codecs, then one library per role (the storage node first).
        .target(name: "MoraineMessages", dependencies: ["MoraineFormat", "MoraineSystem", "MoraineTransport"]),
        .target(name: "MoraineStorage", dependencies: ["MoraineMessages", "MoraineSystem", "MoraineTransport"]),
        // Compaction workers, and the job runner that sends them jobs.
        .target(
            name: "MoraineWorker",
            dependencies: [
                "MoraineEngine", "MoraineFormat", "MoraineMemtable", "MoraineMessages", "MoraineStorage", "MoraineSystem",
                "MoraineTransport",
            ]
        ),
        // The memory node (a region of memtable arenas), and the arena provider that reaches it.
        .target(
            name: "MoraineMemory",
            dependencies: [
                "MoraineEngine", "MoraineFormat", "MoraineMemtable", "MoraineMessages", "MoraineSystem", "MoraineTransport",
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        // `moraine up`, `status`, `down`: the one-box cluster's supervisor.
        .target(name: "MoraineCluster", dependencies: ["MoraineMessages", "MoraineStorage", "MoraineSystem", "MoraineTransport"]),
        .target(
            name: "MoraineCompute",
            dependencies: [
                "MoraineEngine", "MoraineFormat", "MoraineMemory", "MoraineMessages", "MoraineStorage", "MoraineSystem",
                "MoraineTransport", "MoraineWorker",
            ]
        ),
        .target(
            name: "Moraine",
            dependencies: ["MoraineCompute", "MoraineEngine", "MoraineFormat", "MoraineMessages", "MoraineSystem", "MoraineTransport"]
        ),
        // `/metrics` over HTTP: samples from every layer, in Prometheus' text format.
        .target(
            name: "MoraineMetrics",
            dependencies: [
                "MoraineSystem", .product(name: "CoreMetrics", package: "swift-metrics"), .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The Redis-protocol front end (`moraine serve`).
        .target(
            name: "MoraineRESP",
            dependencies: [
                "Moraine", "MoraineSystem", .product(name: "CoreMetrics", package: "swift-metrics"), .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .target(
            name: "MoraineBench",
            dependencies: [
                "Moraine", "MoraineSystem",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .target(
            name: "MoraineTransportBench",
            dependencies: [
                "MoraineSystem", "MoraineTransport",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .executableTarget(
            name: "MoraineCLI",
            dependencies: [
                "Moraine", "MoraineBench", "MoraineEngine", "MoraineFormat", "MoraineSystem", "MoraineTransport",
                "MoraineTransportBench", "MoraineMessages", "MoraineStorage", "MoraineCluster", "MoraineWorker", "MoraineRESP",
                "MoraineMemory", "MoraineCompute", "MoraineMetrics", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "MoraineTestSupport",
            dependencies: ["Moraine", "MoraineEngine", "MoraineSystem"]
        ),
        .testTarget(
            name: "MoraineTests",
            dependencies: [
                "Moraine", "MoraineBench", "MoraineEngine", "MoraineFormat", "MoraineMemtable", "MoraineSystem",
                "MoraineTestSupport", "MoraineCLI", "MoraineTransport", "MoraineMessages", "MoraineStorage", "MoraineCluster",
                "MoraineWorker", "MoraineRESP", "MoraineMemory", "MoraineCompute", "MoraineMetrics",
            ],
            exclude: ["Fixtures"]  // TLS test certificate, read by path
        ),
    ],
    swiftLanguageModes: [.v6]
)
