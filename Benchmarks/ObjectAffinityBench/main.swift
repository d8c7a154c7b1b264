// ObjectAffinityBench: object affinity or client affinity? (issue 14, seed 001). A small object server on LNet
// over o2ib, and the clients that load it; not a timed test (scripts/object-affinity.sh runs it in the SoftRoCE VM
// and prints the table).
//
//   ObjectAffinityBench server --address 192.0.2.1 --objects 8 --ready-file F --stop-file S
//       LNET_PLACEMENT (nid, hint, none) places its incoming messages. Each object has a lock-protected state: an
//       extent map (page number -> cache slot) and a cache of 4 KiB pages. A request is an eager PUT of a 32-byte
//       header (op, object, offset, sequence) and, for a write, 4 KiB of data; the server's handler (an inline
//       event handler: it runs where the request was matched) takes the object's lock, updates or looks up the
//       extent map, copies the page in or out (real memory touched) plus a small checksum, and PUTs the answer
//       back (4 KiB for a read, 32 bytes for a write). On the stop file it prints one JSON object: operations,
//       lock acquisitions that found the lock held (by a thread on another CPU), object CPU changes, operations
//       per partition, and LNet's placement counters (cross-partition hand-offs, queuelet batch sizes).
//   ObjectAffinityBench clients --server 192.0.2.1 --addresses 192.0.2.2,...,192.0.2.7 --objects 8 --inflight 4
//                               --seconds 10
//       One LNet node per address in this process; each keeps --inflight requests going, reads and writes half
//       and half at random page offsets of the objects it uses (client i uses objects i, i+1, i+2 modulo
//       --objects, so neighbours share objects), every request carrying hints (major = object + 1, minor = 0).
//       Prints one JSON object: operations, ops/s, p50/p99 latency.
//
// Both need LND_IMMEDIATE_SIZE >= 4160 so a 4 KiB page and its header go eagerly (the script sets 8192).

import CSystemShims
import Foundation
import LNet
import LNetSelftest
import RDMALND
import Synchronization

// MARK: - Shared

let requestPortal: UInt32 = 40
let answerPortal: UInt32 = 41
let pageSize = 4096
let headerSize = 32
let slotBytes = 8192
let pagesPerObject = 64

enum Op: UInt32 { case read = 1, write = 2 }

func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
func fail(_ line: String) -> Never {
    FileHandle.standardError.write(Data(("ObjectAffinityBench: " + line + "\n").utf8))
    exit(1)
}

func option(_ name: String) -> String? {
    let args = CommandLine.arguments
    guard let index = args.firstIndex(of: name), index + 1 < args.count else { return nil }
    return args[index + 1]
}

func intOption(_ name: String, _ value: Int) -> Int { option(name).flatMap(Int.init) ?? value }

func json(_ object: [String: Any]) -> String {
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return "{}" }
    return String(decoding: data, as: UTF8.self)
}

func node(address: String, placement: PlacementPolicy, tunables: LNDTunables) throws -> (LNet, LNetNI) {
    guard let parsed = parseIPv4(address) else { fail("bad address \(address)") }
    let lnet = LNet(configuration: LNet.Configuration(placement: placement))
    let ni = try lnet.addInterface(NetworkInterfaceConfiguration(network: .o2ib, address: parsed),
                                   lnd: RDMALND(tunables: tunables))
    return (lnet, ni)
}

func header(_ buffer: LNetBuffer, at offset: Int) -> (op: UInt32, object: UInt32, offset: UInt64, sequence: UInt64) {
    let raw = UnsafeRawBufferPointer(rebasing: buffer.bytes[offset..<offset + headerSize])
    return (raw.loadUnaligned(fromByteOffset: 0, as: UInt32.self), raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self),
            raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self), raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
}

func writeHeader(_ buffer: LNetBuffer, at offset: Int, op: UInt32, object: UInt32, offset objectOffset: UInt64, sequence: UInt64) {
    let raw = UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[offset..<offset + headerSize])
    raw.storeBytes(of: op, toByteOffset: 0, as: UInt32.self)
    raw.storeBytes(of: object, toByteOffset: 4, as: UInt32.self)
    raw.storeBytes(of: objectOffset, toByteOffset: 8, as: UInt64.self)
    raw.storeBytes(of: sequence, toByteOffset: 16, as: UInt64.self)
}

// MARK: - Server

final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

/// One object: its extent map and page cache, behind its lock.
final class StoredObject: Sendable {
    struct State: @unchecked Sendable {  // the pages are only touched under the lock
        var extents: [Int: Int] = [:]
        var pages: UnsafeMutableRawBufferPointer
        var usedPages = 0
        var lastCPU: Int32 = -1
        var cpuChanges = 0
        var checksum: UInt64 = 0
    }
    let state: Mutex<State>
    let contended = Atomic<Int>(0)
    let operations = Atomic<Int>(0)

    init() {
        let pages = UnsafeMutableRawBufferPointer.allocate(byteCount: pagesPerObject * pageSize, alignment: 64)
        pages.initializeMemory(as: UInt8.self, repeating: 0)
        state = Mutex(State(pages: pages))
    }

    /// Runs `body` under the object's lock, counting an acquisition that found it held.
    func locked<T: Sendable>(_ body: @Sendable (inout State) -> T) -> T {
        if let result = state.withLockIfAvailable({ body(&$0) }) { return result }
        contended.add(1, ordering: .relaxed)
        return state.withLock { body(&$0) }
    }
}

func runServer() throws {
    guard let address = option("--address") else { fail("server needs --address") }
    let objectCount = max(1, intOption("--objects", 8))
    guard let stopFile = option("--stop-file") else { fail("server needs --stop-file") }
    let environment = ProcessInfo.processInfo.environment
    let policy = PlacementPolicy(name: environment["LNET_PLACEMENT"] ?? "nid") ?? .peerHash
    let tunables = try LNDTunables.fromEnvironment(environment)
    let (lnet, ni) = try node(address: address, placement: policy, tunables: tunables)
    let partitions = ni.partitions
    let objects = (0..<objectCount).map { _ in StoredObject() }
    // Landing zone of requests: a slot of 8 KiB per (client, slot), chosen by the client (the remote offset).
    let landing = try LNetBuffer(count: 64 * 16 * slotBytes)
    let answers = try LNetBuffer(count: 64 * 16 * slotBytes)
    let perPartition = (0..<partitions.count).map { _ in Counter() }
    let objectPartitions = Mutex<[Set<Int>]>(Array(repeating: [], count: objectCount))
    let errors = Atomic<Int>(0)
    let handler: @Sendable (LNetEvent) -> Void = { event in
        guard event.kind == .put, event.status == .ok else { return }
        let request = header(landing, at: event.offset)
        guard Int(request.object) < objects.count, let op = Op(rawValue: request.op) else {
            errors.add(1, ordering: .relaxed)
            return
        }
        let object = objects[Int(request.object)]
        let page = Int(request.offset) / pageSize % pagesPerObject
        let answer = event.offset  // the answer is staged at the same slot offset
        let cpu = CSystemShims_current_cpu()
        object.locked { state in
            if state.lastCPU >= 0, state.lastCPU != cpu { state.cpuChanges += 1 }
            state.lastCPU = cpu
            let slot: Int
            if let existing = state.extents[page] {
                slot = existing
            } else {
                slot = state.usedPages % pagesPerObject
                state.usedPages += 1
                state.extents[page] = slot
            }
            let cached = UnsafeMutableRawBufferPointer(rebasing: state.pages[slot * pageSize..<(slot + 1) * pageSize])
            switch op {
            case .write:
                cached.copyMemory(from: UnsafeRawBufferPointer(rebasing: landing.bytes[event.offset + headerSize..<event.offset + headerSize + pageSize]))
            case .read:
                UnsafeMutableRawBufferPointer(rebasing: answers.bytes[answer + headerSize..<answer + headerSize + pageSize])
                    .copyMemory(from: UnsafeRawBufferPointer(cached))
            }
            // A small CPU cost per operation: a checksum over the page.
            var sum = state.checksum
            for index in stride(from: 0, to: pageSize, by: 64) { sum = sum &* 31 &+ UInt64(cached[index]) }
            state.checksum = sum
        }
        object.operations.add(1, ordering: .relaxed)
        let partition = partitions.partitionOfCurrentThread()
        perPartition[partition].value.add(1, ordering: .relaxed)
        objectPartitions.withLock { _ = $0[Int(request.object)].insert(partition) }
        writeHeader(answers, at: answer, op: request.op, object: request.object, offset: request.offset, sequence: request.sequence)
        let length = op == .read ? headerSize + pageSize : headerSize
        do {
            let md = try lnet.bind(MemoryDescriptor(storage: .region(answers, offset: answer, length: length), threshold: .count(1)))
            try lnet.put(md, to: event.initiator, portal: answerPortal, matchBits: event.matchBits, ackRequested: false)
        } catch {
            errors.add(1, ordering: .relaxed)
        }
    }
    _ = try lnet.attach(MatchEntry(portal: requestPortal, matchBits: 0, ignoreBits: .max, unlink: .retain),
                        descriptor: MemoryDescriptor(buffer: landing, threshold: .infinite, options: [.put, .manageRemote],
                                                     eventQueue: EventQueue(label: "requests", capacity: 1 << 16, delivery: .inline(handler))))
    if let ready = option("--ready-file") { _ = FileManager.default.createFile(atPath: ready, contents: Data("\(getpid())\n".utf8)) }
    let started = ContinuousClock.now
    while !FileManager.default.fileExists(atPath: stopFile) { usleep(10_000) }
    let elapsed = ContinuousClock.now - started
    let placement = ni.placementStatistics
    let lnd = ni.lnd as? RDMALND
    var result: [String: Any] = [
        "role": "server", "policy": policy.description, "objects": objectCount, "partitions": partitions.count,
        "cpus": partitions.cpus.reduce(0) { $0 + $1.count },
        "operations": objects.reduce(0) { $0 + $1.operations.load(ordering: .relaxed) },
        "lock_contended": objects.reduce(0) { $0 + $1.contended.load(ordering: .relaxed) },
        "object_cpu_changes": objects.reduce(0) { total, object in total + object.state.withLock { $0.cpuChanges } },
        "ops_per_partition": perPartition.map { $0.value.load(ordering: .relaxed) },
        "partitions_per_object": objectPartitions.withLock { $0.map(\.count) },
        "received_per_partition": lnd?.receivedPerPartition ?? [],
        "errors": errors.load(ordering: .relaxed),
        "seconds": elapsed.inSeconds,
    ]
    if let placement {
        result["cross_partition"] = placement.crossPartition
        result["held_for_order"] = placement.heldForOrder
        result["queuelet_handoffs"] = placement.queuelets.handoffs
        result["mean_batch"] = placement.queuelets.meanBatch
        result["matched_per_partition"] = placement.matchedPerPartition
    } else {
        result["cross_partition"] = 0
        result["held_for_order"] = 0
        result["queuelet_handoffs"] = 0
        result["mean_batch"] = 0.0
    }
    lnet.shutdown()
    say(json(result))
}

// MARK: - Clients

final class ClientNode: Sendable {
    let index: Int
    let lnet: LNet
    let server: ProcessID
    let objects: [UInt32]
    let requests: LNetBuffer
    let answers: LNetBuffer
    let inflight: Int
    let deadline: ContinuousClock.Instant
    struct State {
        var random: UInt64
        var started: [ContinuousClock.Instant]
        var sequence: UInt64 = 0
        var latencies = LatencyHistogram()
        var done = 0
        var active: Int
        var errors = 0
    }
    let state: Mutex<State>
    let finished = Atomic<Int>(0)

    init(index: Int, address: String, server: ProcessID, objects: [UInt32], inflight: Int, seconds: Int, tunables: LNDTunables) throws {
        self.index = index
        (lnet, _) = try node(address: address, placement: .peerHash, tunables: tunables)
        self.server = server
        self.objects = objects
        self.inflight = inflight
        self.requests = try LNetBuffer(count: inflight * slotBytes)
        self.answers = try LNetBuffer(count: inflight * slotBytes)
        self.deadline = ContinuousClock.now + .seconds(seconds)
        state = Mutex(State(random: UInt64(index + 1) &* 0x9E37_79B9_7F4A_7C15, started: Array(repeating: .now, count: inflight),
                            active: inflight))
    }

    func start() throws {
        let handler: @Sendable (LNetEvent) -> Void = { [self] event in
            guard event.kind == .put else { return }
            let slot = Int(event.matchBits & 0xFFFF)
            completed(slot: slot, ok: event.status == .ok)
        }
        _ = try lnet.attach(MatchEntry(portal: answerPortal, matchBits: 0, ignoreBits: .max, unlink: .retain),
                            descriptor: MemoryDescriptor(buffer: answers, threshold: .infinite, options: [.put, .manageRemote],
                                                         eventQueue: EventQueue(label: "answers", capacity: 1 << 16, delivery: .inline(handler))))
        for slot in 0..<inflight { issue(slot: slot) }
    }

    private func completed(slot: Int, ok: Bool) {
        let now = ContinuousClock.now
        let more = state.withLock { state -> Bool in
            state.latencies.record(UInt64(max(0, (now - state.started[slot]).inNanoseconds)))
            state.done += 1
            if !ok { state.errors += 1 }
            if now >= deadline {
                state.active -= 1
                return false
            }
            return true
        }
        if more { issue(slot: slot) } else { finished.add(1, ordering: .relaxed) }
    }

    private func issue(slot: Int) {
        let (object, page, op, sequence) = state.withLock { state -> (UInt32, Int, Op, UInt64) in
            state.random = state.random &* 6364136223846793005 &+ 1442695040888963407
            let draw = state.random >> 33
            state.sequence += 1
            state.started[slot] = .now
            return (objects[Int(draw % UInt64(objects.count))], Int(draw / 7 % UInt64(pagesPerObject)),
                    (draw >> 20) & 1 == 0 ? .read : .write, state.sequence)
        }
        let base = slot * slotBytes
        writeHeader(requests, at: base, op: op.rawValue, object: object, offset: UInt64(page * pageSize), sequence: sequence)
        if op == .write {
            UnsafeMutableRawBufferPointer(rebasing: requests.bytes[base + headerSize..<base + headerSize + pageSize])
                .initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: sequence))
        }
        let length = op == .write ? headerSize + pageSize : headerSize
        let landing = (index * inflight + slot) * slotBytes
        do {
            let md = try lnet.bind(MemoryDescriptor(storage: .region(requests, offset: base, length: length), threshold: .count(1)))
            try lnet.put(md, to: server, portal: requestPortal, matchBits: UInt64(index) << 16 | UInt64(slot), offset: landing,
                         ackRequested: false, hints: LNetHints(major: UInt64(object) + 1, minor: 0))
        } catch {
            state.withLock { $0.errors += 1; $0.active -= 1 }
            finished.add(1, ordering: .relaxed)
        }
    }
}

func runClients() throws {
    guard let serverAddress = option("--server").flatMap({ parseIPv4($0) }) else { fail("clients need --server") }
    guard let addresses = option("--addresses")?.split(separator: ",").map(String.init), !addresses.isEmpty else {
        fail("clients need --addresses")
    }
    let objectCount = max(1, intOption("--objects", 8))
    let inflight = max(1, min(16, intOption("--inflight", 4)))
    let seconds = max(1, intOption("--seconds", 10))
    let tunables = try LNDTunables.fromEnvironment(ProcessInfo.processInfo.environment)
    let server = ProcessID(nid: NID(address: serverAddress, network: .o2ib), pid: ProcessID.defaultPID)
    let started = ContinuousClock.now
    let clients = try addresses.enumerated().map { index, address in
        try ClientNode(index: index, address: address, server: server,
                       objects: (0..<min(3, objectCount)).map { UInt32((index + $0) % objectCount) },
                       inflight: inflight, seconds: seconds, tunables: tunables)
    }
    for client in clients { try client.start() }
    let limit = ContinuousClock.now + .seconds(seconds + 60)
    while clients.contains(where: { $0.finished.load(ordering: .relaxed) < $0.inflight }), ContinuousClock.now < limit {
        usleep(10_000)
    }
    let elapsed = ContinuousClock.now - started
    var latencies = LatencyHistogram()
    for client in clients { latencies.merge(client.state.withLock { $0.latencies }) }
    func microseconds(atPercentile p: Double) -> Double { Double(latencies.percentile(p)) / 1000 }
    let operations = clients.reduce(0) { total, client in total + client.state.withLock { $0.done } }
    let errors = clients.reduce(0) { total, client in total + client.state.withLock { $0.errors } }
    let stuck = clients.reduce(0) { total, client in total + client.state.withLock { $0.active } }
    let elapsedSeconds = elapsed.inSeconds
    for client in clients { client.lnet.shutdown() }
    say(json(["role": "clients", "clients": clients.count, "inflight": inflight, "operations": operations,
              "ops_per_s": Double(operations) / elapsedSeconds, "p50_us": microseconds(atPercentile: 50), "p99_us": microseconds(atPercentile: 99),
              "errors": errors, "unfinished": stuck, "seconds": elapsedSeconds]))
    if errors > 0 || stuck > 0 { exit(1) }
}

do {
    switch CommandLine.arguments.dropFirst().first {
    case "server": try runServer()
    case "clients": try runClients()
    default: fail("usage: ObjectAffinityBench server|clients ... (see the comment at the top of main.swift)")
    }
} catch {
    fail("\(error)")
}
