// swift-tools-version: 6.0
// MoraineBenchmarks: the benchmark harness's RocksDB side, kept apart from the Moraine package so
// that building Moraine never needs RocksDB. CRocksDB exposes RocksDB's C API (librocksdb-dev);
// RocksDBPeer implements MoraineBench's BenchEngine over it; RocksDBPeerSmoke is a quick check.
// Thread-safety lives in the targets: see each file's header.
import PackageDescription

let package = Package(
    name: "MoraineBenchmarks",
    dependencies: [
        .package(name: "Moraine", path: ".."),
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
