// swift-tools-version: 6.0
// MoraineBenchmarks: the benchmark harness's peers, kept apart from the Moraine package so that
// building Moraine never needs RocksDB or LevelDB. CRocksDB and CLevelDB expose their C APIs
// (librocksdb-dev, libleveldb-dev); RocksDBPeer and LevelDBPeer implement MoraineBench's
// BenchEngine over them; RocksDBPeerSmoke is a quick check.
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
        .systemLibrary(name: "CLevelDB", path: "Sources/CLevelDB"),
        .target(
            name: "LevelDBPeer",
            dependencies: [
                "CLevelDB",
                .product(name: "MoraineBench", package: "Moraine"),
                .product(name: "Moraine", package: "Moraine"),
            ]
        ),
        .executableTarget(
            name: "MoraineBenchTool",
            dependencies: [
                "RocksDBPeer",
                "LevelDBPeer",
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
