// `moraine transport-bench`: the transport's round trips next to the machine's floor for each
// carrier, with a server in a second process (this executable again, with --serve). Prints a
// table, the ratios the targets are stated in, and (with --delays_us) how closely the link
// emulation delivers the delay asked for. --json writes the rows.
import ArgumentParser
import Foundation
import MoraineSystem
import MoraineTransport
import MoraineTransportBench

struct TransportBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "transport-bench",
        abstract: "Round-trip latency and throughput over shared memory and TCP, next to each carrier's floor.")
    @Option(help: "Seconds per measured row (after a 0.3 s warm-up).") var seconds = 2.0
    @Option(help: "Payload sizes in bytes, comma-separated.") var payloads = "64,4096,65536"
    @Option(help: "Requests in flight, comma-separated.") var inflight = "1,16"
    @Option(name: .customLong("delays_us"), help: "One-way delays to emulate for the accuracy check, comma-separated.")
    var delaysMicros = ""
    @Option(
        help: "Rows to run: any of floor-shm, shm, floor-tcp, tcp (the direct client), tcp-nio (the SwiftNIO client), comma-separated.")
    var carriers = "floor-shm,shm,floor-tcp,tcp,tcp-nio"
    @Option(help: "Write the rows as JSON to this file.") var json: String?
    @Flag(help: .hidden) var serve = false
    @Option(help: .hidden) var dir: String?
    @Option(name: .customLong("delay_ns"), help: .hidden) var delayNanos: Int64 = 0

    func validate() throws {
        try validateNumbers(
            seconds: seconds,
            lists: [("--payloads", payloads, 0...65536), ("--inflight", inflight, 1...1024)],
            decimals: [("--delays_us", delaysMicros, 0...1_000_000)])
        if delayNanos < 0 { throw ValidationError("--delay_ns must not be negative, not \(delayNanos)") }
    }

    func run() throws {
        if serve {
            guard let dir else { throw ValidationError("--serve needs --dir") }
            try TransportBenchServer.run(directory: dir, delayNanos: delayNanos)
            return
        }
        let sizes = payloads.split(separator: ",").compactMap { Int($0) }
        let depths = inflight.split(separator: ",").compactMap { Int($0) }.filter { $0 > 0 && $0 <= 1024 }
        let delays = delaysMicros.split(separator: ",").compactMap { Double($0) }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 >= 0 && $0 <= 64 << 10 }) else {
            throw ValidationError("--payloads takes sizes from 0 to 65536")
        }
        guard !depths.isEmpty else { throw ValidationError("--inflight takes numbers from 1 to 1024") }
        try reporting {
            var rows: [TransportBenchRow] = []
            print("carrier    payload_bytes inflight     p50_us     p99_us   p999_us   ops_per_sec   mb_per_sec")
            let base = try BenchServerProcess(delayNanos: 0)
            defer { base.stop() }
            let bench = TransportBenchClient(endpoints: base.endpoints, key: base.key, secondsPerRow: seconds)
            let wanted = Set(carriers.split(separator: ",").map(String.init))
            for size in sizes {
                if wanted.contains("floor-shm") { rows.append(report(try bench.measureSharedMemoryFloor(payloadBytes: size))) }
                for carrier in ["shm", "tcp", "tcp-nio"] {
                    if carrier == "tcp" && wanted.contains("floor-tcp") {
                        rows.append(report(try bench.measureTCPFloor(payloadBytes: size)))
                    }
                    guard wanted.contains(carrier) else { continue }
                    let client = try bench.connect(carrier)
                    defer { client.close() }
                    for depth in depths {
                        rows.append(report(try bench.measure(client, carrier: carrier, payloadBytes: size, inflight: depth)))
                    }
                }
            }
            summarize(rows)
            if !delays.isEmpty { rows += try measureDelays(delays, baseline: rows) }
            if let json { try ("[" + rows.map(\.json).joined(separator: ",\n") + "]\n").write(toFile: json, atomically: true, encoding: .utf8) }
        }
    }

    /// Round trips with a fixed one-way delay on both ends of each carrier, against the same
    /// carrier without one: the extra round trip, halved, is the delivered one-way delay.
    private func measureDelays(_ delays: [Double], baseline: [TransportBenchRow]) throws -> [TransportBenchRow] {
        var rows: [TransportBenchRow] = []
        let smallest = baseline.map(\.payloadBytes).min() ?? 64
        print("\nlink emulation (payload \(smallest) B, 1 in flight): requested one-way delay vs delivered")
        for micros in delays {
            let nanos = Int64(micros * 1000)
            let server = try BenchServerProcess(delayNanos: nanos)
            defer { server.stop() }
            let bench = TransportBenchClient(endpoints: server.endpoints, key: server.key, secondsPerRow: seconds)
            for carrier in ["shm", "tcp", "tcp-nio"] where Set(carriers.split(separator: ",").map(String.init)).contains(carrier) {
                let client = try bench.connect(carrier, link: LinkEmulation(delay: .fixed(nanos: nanos)))
                defer { client.close() }
                let row = try bench.measure(client, carrier: carrier, payloadBytes: smallest, inflight: 1, delayNanos: nanos)
                rows.append(row)
                guard let plain = baseline.first(where: { $0.carrier == carrier && $0.payloadBytes == smallest && $0.inflight == 1 })
                else { continue }
                let delivered = (row.p50Micros - plain.p50Micros) / 2
                print(
                    "  \(carrier.padding(toLength: 8, withPad: " ", startingAt: 0)) requested \(fixed(micros)) us  "
                        + "delivered \(fixed(delivered)) us  (ratio \(fixed(delivered / micros)); round trip p50 "
                        + "\(fixed(row.p50Micros)) us, p99 \(fixed(row.p99Micros)) us)")
            }
        }
        return rows
    }

    private func report(_ row: TransportBenchRow) -> TransportBenchRow {
        func column(_ text: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - text.count)) + text }
        print(
            row.carrier.padding(toLength: 10, withPad: " ", startingAt: 0) + column(String(row.payloadBytes), 14)
                + column(String(row.inflight), 9) + column(fixed(row.p50Micros), 11) + column(fixed(row.p99Micros), 11)
                + column(fixed(row.p999Micros), 10) + column(String(Int(row.opsPerSecond)), 14)
                + column(fixed(row.megabytesPerSecond), 13))
        return row
    }

    /// The ratios the issue's targets are stated in.
    private func summarize(_ rows: [TransportBenchRow]) {
        func find(_ carrier: String, _ size: Int, _ depth: Int) -> TransportBenchRow? {
            rows.first { $0.carrier == carrier && $0.payloadBytes == size && $0.inflight == depth }
        }
        print("")
        for size in Set(rows.map(\.payloadBytes)).sorted() {
            for (carrier, floor) in [("shm", "floor-shm"), ("tcp", "floor-tcp"), ("tcp-nio", "floor-tcp")] {
                guard let row = find(carrier, size, 1), let base = find(floor, size, 1) else { continue }
                print("\(carrier) p50 / \(floor) p50 at \(size) B: \(fixed(row.p50Micros / base.p50Micros))")
            }
        }
        for row in rows where row.carrier == "shm" && row.payloadBytes == 4096 {
            print("shm 4 KiB throughput, \(row.inflight) in flight: \(fixed(row.megabytesPerSecond / 1000)) GB/s one way")
        }
    }

    private func fixed(_ value: Double) -> String { String(format: "%.2f", value) }
}

/// The bench's server: this executable with --serve, in a run directory of its own.
final class BenchServerProcess {
    let directory: String
    let key: ClusterKey
    let endpoints: TransportBenchEndpoints
    private let process = Process()

    init(delayNanos: Int64) throws {
        var template = Array((NSTemporaryDirectory() + "/moraine-transport-bench-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw MoraineError(.io, "cannot make a run directory") }
        directory = String(cString: made)
        try ClusterKey.generate(path: directory + "/cluster.key")
        key = try ClusterKey.load(path: directory + "/cluster.key")
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        process.arguments = ["transport-bench", "--serve", "--dir", directory, "--delay_ns", String(delayNanos)]
        try process.run()
        do {
            endpoints = try TransportBenchEndpoints.read(directory: directory)
        } catch {
            process.terminate()
            throw error
        }
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}
