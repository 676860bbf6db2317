// The tidy test: rules that keep the tree honest, checked on every run. Line length, the
// import graph (each module imports only the layers below it), no unsafeFlags, no stray
// prints in library code, a header comment on every source file, and randomized tests that
// draw only from seeded generators.
import Foundation
import Testing

@Suite("Lint")
struct LintTests {
    static let root: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// Modules each target may import (besides the standard library and the C library).
    static let allowedImports: [String: Set<String>] = [
        "MoraineSystem": ["CSystemShims", "Logging", "Synchronization"],
        "MoraineFormat": ["MoraineSystem", "Synchronization"],
        "MoraineMemtable": ["MoraineFormat", "MoraineSystem", "Atomics"],
        "MoraineEngine": ["MoraineSystem", "MoraineFormat", "MoraineMemtable", "Synchronization"],
        "Moraine": ["MoraineCompute", "MoraineEngine", "MoraineFormat", "MoraineMessages", "MoraineSystem", "MoraineTransport"],
        "MoraineCompute": [
            "MoraineEngine", "MoraineFormat", "MoraineMemory", "MoraineMessages", "MoraineStorage", "MoraineSystem",
            "MoraineTransport", "MoraineWorker", "Synchronization",
        ],
        "MoraineTransport": ["MoraineSystem", "Crypto", "NIOCore", "NIOPosix", "NIOSSL", "Synchronization"],
        "MoraineMessages": ["MoraineFormat", "MoraineSystem", "MoraineTransport"],
        "MoraineStorage": ["MoraineMessages", "MoraineSystem", "MoraineTransport", "Synchronization"],
        "MoraineWorker": [
            "MoraineEngine", "MoraineFormat", "MoraineMemtable", "MoraineMessages", "MoraineStorage", "MoraineSystem",
            "MoraineTransport", "Synchronization",
        ],
        "MoraineMemory": [
            "MoraineEngine", "MoraineFormat", "MoraineMemtable", "MoraineMessages", "MoraineSystem", "MoraineTransport",
            "Synchronization", "Atomics",
        ],
        "MoraineCluster": ["MoraineMessages", "MoraineStorage", "MoraineSystem", "MoraineTransport"],
        "MoraineRESP": ["Moraine", "MoraineSystem", "CoreMetrics", "NIOCore", "NIOPosix", "Synchronization"],
        "MoraineMetrics": ["MoraineSystem", "CoreMetrics", "Prometheus", "NIOCore", "NIOHTTP1", "NIOPosix", "Synchronization"],
        "MoraineCLI": [
            "ArgumentParser", "Moraine", "MoraineBench", "MoraineFormat", "MoraineSystem", "MoraineTransport",
            "MoraineTransportBench", "MoraineMessages", "MoraineStorage", "MoraineCluster", "MoraineWorker", "MoraineRESP",
            "MoraineMemory", "MoraineCompute", "MoraineMetrics", "Logging", "Synchronization",
        ],
        "MoraineTransportBench": ["MoraineSystem", "MoraineTransport", "Atomics", "Histogram"],
        "MoraineTestSupport": ["Moraine", "MoraineSystem", "Synchronization"],
        "MoraineBench": ["Moraine", "MoraineSystem", "Histogram", "ArgumentParser", "Synchronization"],
    ]
    static let platformModules: Set<String> = ["Glibc", "Musl", "Foundation"]
    /// Modules that may import Foundation: the command, not the libraries.
    static let foundationAllowed: Set<String> = ["MoraineCLI"]
    static let libraryModules: Set<String> = [
        "MoraineSystem", "MoraineFormat", "MoraineMemtable", "MoraineEngine", "Moraine", "MoraineTransport",
        "MoraineMessages", "MoraineStorage", "MoraineCluster", "MoraineWorker", "MoraineRESP", "MoraineMemory", "MoraineCompute",
        "MoraineMetrics",
    ]

    static func swiftFiles(under folder: String) -> [URL] {
        let base = root.appendingPathComponent(folder)
        guard let walker = FileManager.default.enumerator(at: base, includingPropertiesForKeys: nil) else { return [] }
        return walker.compactMap { $0 as? URL }.filter { $0.pathExtension == "swift" }
    }

    static func module(of file: URL) -> String {
        let parts = file.path.split(separator: "/")
        guard let index = parts.lastIndex(of: "Sources"), index + 1 < parts.count else { return "" }
        return String(parts[index + 1])
    }

    @Test("source files exist to check")
    func treeFound() {
        #expect(Self.swiftFiles(under: "Sources").count > 20, "lint found no sources under \(Self.root.path)")
    }

    @Test("lines are at most 160 characters")
    func lineLength() throws {
        for file in Self.swiftFiles(under: "Sources") + Self.swiftFiles(under: "Tests") {
            let text = try String(contentsOf: file, encoding: .utf8)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
            where line.count > 160 {
                Issue.record("\(file.lastPathComponent):\(number + 1) is \(line.count) characters")
            }
        }
    }

    @Test("modules import only the layers below them")
    func importGraph() throws {
        for file in Self.swiftFiles(under: "Sources") {
            let module = Self.module(of: file)
            guard let allowed = Self.allowedImports[module] else {
                Issue.record("module \(module) has no import rule in LintTests")
                continue
            }
            let text = try String(contentsOf: file, encoding: .utf8)
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ")
                guard let importIndex = words.firstIndex(of: "import"), importIndex <= 1, words.count > importIndex + 1
                else { continue }
                var imported = String(words[words.count - 1])
                if words.count > importIndex + 2 {  // `import struct Module.Type`
                    imported = String(imported.split(separator: ".")[0])
                }
                if Self.platformModules.contains(imported) {
                    #expect(
                        imported != "Foundation" || Self.foundationAllowed.contains(module),
                        "\(file.lastPathComponent) imports Foundation")
                    continue
                }
                #expect(allowed.contains(imported), "\(module)/\(file.lastPathComponent) imports \(imported)")
            }
        }
    }

    @Test("no unsafeFlags in the package")
    func noUnsafeFlags() throws {
        let manifest = try String(contentsOf: Self.root.appendingPathComponent("Package.swift"), encoding: .utf8)
        #expect(!manifest.contains("unsafeFlags"))
    }

    /// Words that draw randomness; a line using one must pass a seeded generator (`using:`) or
    /// a seed (`seed:`, as a fault trigger takes).
    static let randomCalls = [".random(", "randomElement(", "shuffled(", ".shuffle("]

    @Test("randomized tests draw from seeded generators, never from hash order or the system's")
    func seededRandomness() throws {
        let files = Self.swiftFiles(under: "Tests") + Self.swiftFiles(under: "Sources/MoraineTestSupport")
        for file in files where file.lastPathComponent != "LintTests.swift" {
            let text = try String(contentsOf: file, encoding: .utf8)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
            where !line.contains("// lint: unseeded") {
                let place = "\(file.lastPathComponent):\(number + 1)"
                let unseeded = Self.randomCalls.contains { line.contains($0) } && !line.contains("using:") && !line.contains("seed:")
                #expect(!unseeded, "\(place) draws without a seeded generator")
                #expect(!line.contains("SystemRandomNumberGenerator"), "\(place) uses the system generator")
                // A pick from a Dictionary's or Set's order changes per process: pick from sorted keys.
                let hashOrder = line.contains(".keys.randomElement") || line.contains(".values.randomElement")
                #expect(!hashOrder, "\(place) picks from a hashed collection's order")
            }
        }
    }

    @Test("library code does not print, and every source file opens with a comment")
    func noPrintsAndHeaders() throws {
        for file in Self.swiftFiles(under: "Sources") {
            let text = try String(contentsOf: file, encoding: .utf8)
            let hasHeader = text.hasPrefix("//")
            #expect(hasHeader, "\(file.lastPathComponent) does not open with a comment")
            if Self.libraryModules.contains(Self.module(of: file)) {
                // `print(` as a call, not as the end of a name such as `footprint(`.
                let prints = text.contains(/(^|[^A-Za-z0-9_])print\(/)
                #expect(!prints, "\(file.lastPathComponent) prints")
            }
        }
    }
}
