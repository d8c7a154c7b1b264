// LNetCoreBench: figures for the LNet core's CPU-partition machinery (not a timed test).
//
// 1. Hand-off: 2 producers -> 2 consumers (2 partitions x 1 service thread), 1M messages over 128 peers, per-peer
//    order on. "per-message" hands every message over on its own (batch 1); "queuelet N" hands over N at a time.
// 2. Placement: 1000 peers hitting 4 objects at random 1 GiB extents (8 per object). "nid-hash" places by the peer
//    NID; "hints" by (object id, extent). Reports balance, how many partitions touch each object/extent, how often an
//    extent's state moves between partitions, and throughput with a per-extent locked state update.
//
// Run: swift run -c release LNetCoreBench [--messages N] [--runs R] [--placement-only]

import Dispatch
import LNet
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// MARK: - Helpers

struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func argument(_ name: String, default value: Int) -> Int {
    let args = CommandLine.arguments
    guard let index = args.firstIndex(of: name), index + 1 < args.count, let parsed = Int(args[index + 1]) else { return value }
    return parsed
}

func format(_ value: Double, _ decimals: Int = 1) -> String {
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    return decimals == 0 ? String(Int(rounded)) : String(rounded)
}

func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}

let totalMessages = argument("--messages", default: 1_000_000)
let placementOnly = CommandLine.arguments.contains("--placement-only")
let runs = max(1, argument("--runs", default: 3))
let partitions = CPUPartitionTable(count: 2)

// MARK: - 1. Hand-off per message vs queuelets

struct Message: Sendable {
    var peer: UInt64
    var sequence: Int
}

struct HandoffResult {
    var name: String
    var shape: String
    var batch: Int
    var seconds: Double
    var handoffs: Int
    var meanBatch: Double
    var orderViolations: Int
    var messagesPerSecond: Double { Double(totalMessages) / seconds }
    var nanosecondsPerMessage: Double { seconds * 1e9 / Double(totalMessages) }
}

func runHandoff(batch: Int, partitionCount: Int, threads: Int) throws -> HandoffResult {
    let peers = 128
    let done = DispatchSemaphore(value: 0)
    let handled = Atomic<Int>(0)
    let violations = Atomic<Int>(0)
    // Last sequence per peer. A peer is owned by one service thread at a time and ownership passes under the
    // scheduler's lock, so plain memory is enough.
    let lastSequence = Slots(count: peers)
    let scheduler = try QueueletScheduler<Message>(
        configuration: QueueletConfiguration(partitions: CPUPartitionTable(count: partitionCount), threadsPerPartition: threads,
                                             batchSize: batch, maxBatchDelay: .milliseconds(1)),
        placement: { Int($0.peer % UInt64(partitionCount)) }, orderingKey: { $0.peer }
    ) { message, _ in
        let peer = Int(message.peer)
        if lastSequence.values[peer] + 1 != message.sequence { violations.add(1, ordering: .relaxed) }
        lastSequence.values[peer] = message.sequence
        if handled.add(1, ordering: .relaxed).newValue == totalMessages { done.signal() }
    }
    let perProducer = totalMessages / 2
    let start = ContinuousClock.now
    DispatchQueue.concurrentPerform(iterations: 2) { producerIndex in
        let producer = scheduler.makeProducer()
        let myPeers = peers / 2
        for index in 0..<perProducer {
            let local = index % myPeers
            producer.submit(Message(peer: UInt64(producerIndex * myPeers + local), sequence: index / myPeers))
        }
        producer.flush()
    }
    done.wait()
    let elapsed = (ContinuousClock.now - start).inSeconds
    let stats = scheduler.statistics
    scheduler.shutdown()
    return HandoffResult(name: batch == 1 ? "per-message" : "queuelet \(batch)", shape: "\(partitionCount)x\(threads)",
                         batch: batch, seconds: elapsed,
                         handoffs: stats.handoffs, meanBatch: stats.meanBatch,
                         orderViolations: violations.load(ordering: .relaxed))
}

final class Slots: @unchecked Sendable {
    let values: UnsafeMutablePointer<Int>
    init(count: Int) {
        values = .allocate(capacity: count)
        values.initialize(repeating: -1, count: count)
    }
    deinit { values.deallocate() }
}

var handoffResults: [HandoffResult] = []
// 2x1: two partitions with one consumer each (CPU-partition shape). 1x2: one partition, two consumers sharing it,
// which needs per-peer runs to keep order while either thread can take any peer.
let shapes = [(2, 1, 1), (2, 1, 16), (2, 1, 64), (2, 1, 256), (1, 2, 1), (1, 2, 64), (1, 2, 256)]
for (partitionCount, threads, batch) in placementOnly ? [] : shapes {
    var best: HandoffResult?
    for _ in 0..<runs {
        let result = try runHandoff(batch: batch, partitionCount: partitionCount, threads: threads)
        if best == nil || result.seconds < best!.seconds { best = result }
    }
    handoffResults.append(best!)
}

print("LNetCoreBench (\(CPUPartitionTable.onlineCPUs) CPUs, best of \(runs) runs)")
print("")
print("1. Hand-off: 2 producers -> 2 consumers, \(totalMessages) messages, 128 peers, per-peer order checked")
print("   shape = partitions x consumer threads per partition")
print("\(pad("mode", 14)) \(pad("shape", 5)) \(pad("msgs/s", 12)) \(pad("ns/msg", 8)) \(pad("handoffs", 9)) \(pad("mean batch", 10)) \(pad("order errs", 10))")
for r in handoffResults {
    print("\(pad(r.name, 14)) \(pad(r.shape, 5)) \(pad(format(r.messagesPerSecond, 0), 12)) \(pad(format(r.nanosecondsPerMessage), 8)) "
          + "\(pad(String(r.handoffs), 9)) \(pad(format(r.meanBatch), 10)) \(pad(String(r.orderViolations), 10))")
}

// MARK: - 2. NID-hash vs hint placement

struct Request: Sendable {
    var peer: NID
    var hints: LNetHints
    var extent: Int
}

let peerCount = 1000
let objectCount = 4
let extentsPerObject = 8
let requestCount = max(10_000, totalMessages / 5)

var generator = SplitMix64(state: 0x5EED)
let peerNIDs = (0..<peerCount).map { NID(address: 0xC000_0000 | UInt32($0 + 1), network: .o2ib) }
let objectIDs: [UInt64] = (0..<objectCount).map { 0x2000_0000_0000 + UInt64($0) * 7919 }
let requests: [Request] = (0..<requestCount).map { _ in
    let object = Int.random(in: 0..<objectCount, using: &generator)
    let gib = Int.random(in: 0..<extentsPerObject, using: &generator)
    return Request(peer: peerNIDs[Int.random(in: 0..<peerCount, using: &generator)],
                   hints: LNetHints(major: objectIDs[object], minor: UInt64(gib)), extent: object * extentsPerObject + gib)
}

struct PlacementStats {
    var balance: Double          // max partition load / mean load
    var objectSpread: Double     // partitions touching each object, averaged
    var extentSpread: Double     // partitions touching each (object, GiB) extent, averaged
}

func placementStats(_ table: CPUPartitionTable, _ policy: PlacementPolicy) -> PlacementStats {
    var load = [Int](repeating: 0, count: table.count)
    var objectParts = [Set<Int>](repeating: [], count: objectCount)
    var extentParts = [Set<Int>](repeating: [], count: objectCount * extentsPerObject)
    for request in requests {
        let partition = table.partition(peer: request.peer, hints: request.hints, policy: policy)
        load[partition] += 1
        objectParts[request.extent / extentsPerObject].insert(partition)
        extentParts[request.extent].insert(partition)
    }
    let mean = Double(requests.count) / Double(table.count)
    return PlacementStats(balance: Double(load.max() ?? 0) / mean,
                          objectSpread: Double(objectParts.map(\.count).reduce(0, +)) / Double(objectCount),
                          extentSpread: Double(extentParts.map(\.count).reduce(0, +)) / Double(extentParts.count))
}

/// Per-extent state: a lock, a counter, the partition that touched it last, and 4 KiB of "cached" data.
final class ExtentState: @unchecked Sendable {
    struct Inner {
        var updates = 0
        var lastPartition = -1
        var migrations = 0
    }
    let lock = Mutex(Inner())
    let data = UnsafeMutablePointer<UInt64>.allocate(capacity: 512)
    init() { data.initialize(repeating: 0, count: 512) }
    deinit { data.deallocate() }
}

struct PlacementRun {
    var seconds: Double
    var migrations: Int
    var perPartition: [Int]
}

func runPlacement(_ policy: PlacementPolicy) throws -> PlacementRun {
    let extents = (0..<objectCount * extentsPerObject).map { _ in ExtentState() }
    let done = DispatchSemaphore(value: 0)
    let handled = Atomic<Int>(0)
    let total = requests.count
    let scheduler = try QueueletScheduler<Request>(
        configuration: QueueletConfiguration(partitions: partitions, threadsPerPartition: 1, batchSize: 64,
                                             maxBatchDelay: .milliseconds(1)),
        placement: { partitions.partition(peer: $0.peer, hints: $0.hints, policy: policy) },
        orderingKey: { $0.peer.rawValue }
    ) { request, partition in
        let extent = extents[request.extent]
        extent.lock.withLock { inner in
            inner.updates += 1
            if inner.lastPartition != partition {
                if inner.lastPartition >= 0 { inner.migrations += 1 }
                inner.lastPartition = partition
            }
            // Touch the extent's data, as a server would touch an object's cached pages and locks.
            var sum: UInt64 = 0
            for index in stride(from: 0, to: 512, by: 8) {
                extent.data[index] &+= 1
                sum &+= extent.data[index]
            }
            extent.data[1] = sum
        }
        if handled.add(1, ordering: .relaxed).newValue == total { done.signal() }
    }
    let half = requests.count / 2
    let start = ContinuousClock.now
    DispatchQueue.concurrentPerform(iterations: 2) { producerIndex in
        let producer = scheduler.makeProducer()
        let slice = producerIndex == 0 ? requests[0..<half] : requests[half...]
        for request in slice { producer.submit(request) }
        producer.flush()
    }
    done.wait()
    let elapsed = (ContinuousClock.now - start).inSeconds
    let stats = scheduler.statistics
    scheduler.shutdown()
    let migrations = extents.reduce(0) { $0 + $1.lock.withLock { $0.migrations } }
    return PlacementRun(seconds: elapsed, migrations: migrations, perPartition: stats.handledPerPartition)
}

struct PlacementResult {
    var name: String
    var stats2: PlacementStats
    var stats8: PlacementStats
    var run: PlacementRun
    var requestsPerSecond: Double { Double(requests.count) / run.seconds }
}

var placementResults: [PlacementResult] = []
for (name, policy) in [("nid-hash", PlacementPolicy.peerHash), ("hints", PlacementPolicy.hints)] {
    var best: PlacementRun?
    for _ in 0..<runs {
        let run = try runPlacement(policy)
        if best == nil || run.seconds < best!.seconds { best = run }
    }
    placementResults.append(PlacementResult(name: name, stats2: placementStats(partitions, policy),
                                            stats8: placementStats(CPUPartitionTable(count: 8), policy), run: best!))
}

print("")
print("2. Placement: \(requests.count) requests, \(peerCount) peers, \(objectCount) objects x \(extentsPerObject) GiB extents")
print("   balance = max/mean partition load; spread = partitions touching one object / one extent (1.0 = affine);")
print("   migrations = times an extent's state was next touched from another partition (2 partitions, threaded run)")
print("\(pad("policy", 9)) \(pad("req/s", 10)) \(pad("per-partition", 16)) \(pad("migrations", 10)) "
      + "\(pad("bal@2", 6)) \(pad("obj@2", 6)) \(pad("ext@2", 6)) \(pad("bal@8", 6)) \(pad("obj@8", 6)) \(pad("ext@8", 6))")
for r in placementResults {
    print("\(pad(r.name, 9)) \(pad(format(r.requestsPerSecond, 0), 10)) \(pad(r.run.perPartition.map(String.init).joined(separator: "/"), 16)) "
          + "\(pad(String(r.run.migrations), 10)) \(pad(format(r.stats2.balance, 2), 6)) \(pad(format(r.stats2.objectSpread, 2), 6)) "
          + "\(pad(format(r.stats2.extentSpread, 2), 6)) \(pad(format(r.stats8.balance, 2), 6)) "
          + "\(pad(format(r.stats8.objectSpread, 2), 6)) \(pad(format(r.stats8.extentSpread, 2), 6))")
}

// MARK: - JSON

var json = "{\"bench\":\"LNetCoreBench\",\"cpus\":\(CPUPartitionTable.onlineCPUs),\"runs\":\(runs),\"messages\":\(totalMessages),\"handoff\":["
json += handoffResults.map { r in
    "{\"mode\":\"\(r.name)\",\"shape\":\"\(r.shape)\",\"batch\":\(r.batch),\"msgs_per_s\":\(format(r.messagesPerSecond, 0)),"
        + "\"ns_per_msg\":\(format(r.nanosecondsPerMessage)),\"handoffs\":\(r.handoffs),\"mean_batch\":\(format(r.meanBatch)),"
        + "\"order_violations\":\(r.orderViolations)}"
}.joined(separator: ",")
json += "],\"placement\":["
json += placementResults.map { r in
    "{\"policy\":\"\(r.name)\",\"requests\":\(requests.count),\"req_per_s\":\(format(r.requestsPerSecond, 0)),"
        + "\"per_partition\":[\(r.run.perPartition.map(String.init).joined(separator: ","))],\"migrations\":\(r.run.migrations),"
        + "\"balance_2\":\(format(r.stats2.balance, 3)),\"object_spread_2\":\(format(r.stats2.objectSpread, 2)),"
        + "\"extent_spread_2\":\(format(r.stats2.extentSpread, 2)),\"balance_8\":\(format(r.stats8.balance, 3)),"
        + "\"object_spread_8\":\(format(r.stats8.objectSpread, 2)),\"extent_spread_8\":\(format(r.stats8.extentSpread, 2))}"
}.joined(separator: ",")
json += "]}"
print("")
print(json)
