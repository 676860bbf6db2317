// swift-tools-version: 6.0
// MoraineBenchmarks: the benchmark harness's RocksDB side, kept apart from the Moraine package so
// that building Moraine never needs RocksDB. CRocksDB exposes RocksDB's C API (librocksdb-dev);
// RocksDBPeer implements MoraineBench's BenchEngine over it; RocksDBPeerSmoke is a quick check.
// Thread-safety lives in the targets: see each file's header.
import PackageDescription

let package = Package(
    name: "MoraineBenchmarks",
    products: [
        .executable(name: "moraine-bench", targets: ["MoraineBenchTool"]),
    ],
    dependencies: [
        .package(name: "Moraine", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],

    targets: [
        .systemLibrary(name: "CRocksDB", path: "Sources/CRocksDB"),
        .target(
            name: "RocksDBPeer",
            dependencies: [
                "CRocksDB",
                .product(name: "MoraineBench", package: "Moraine"),
                .product(name: "Moraine", package: "Moraine"),
            ]
        ),
        .executableTarget(
            name: "MoraineBenchTool",
            dependencies: [
                "RocksDBPeer",
                .product(name: "MoraineBench", package: "Moraine"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "RocksDBPeerSmoke",
            dependencies: [
                "RocksDBPeer",
                .product(name: "MoraineBench", package: "Moraine"),
                .product(name: "Moraine", package: "Moraine"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
