import Dispatch
import Synchronization
import Testing

@testable import LNet

/// Queuelet hand-off, the partial-batch deadline, per-peer order with cross-peer parallelism, and placement.
@Suite struct QueueletSchedulerTests {
    struct Work: Sendable {
        var peer: UInt64
        var sequence: Int
        var partition: Int = 0
    }

    private func scheduler(partitions: Int = 1, threads: Int = 2, batch: Int, delay: Duration = .seconds(30),
                           handler: @escaping @Sendable (Work, Int) -> Void) throws -> QueueletScheduler<Work> {
        try QueueletScheduler<Work>(
            configuration: QueueletConfiguration(partitions: CPUPartitionTable(count: partitions), threadsPerPartition: threads,
                                                 batchSize: batch, maxBatchDelay: delay),
            placement: { $0.partition }, orderingKey: { $0.peer }, handler: handler)
    }

    @Test func fullQueueletsAreHandedOverWhole() async throws {
        let handled = Atomic<Int>(0)
        let s = try scheduler(batch: 16) { _, _ in handled.add(1, ordering: .relaxed) }
        defer { s.shutdown() }
        let producer = s.makeProducer()
        for index in 0..<160 { producer.submit(Work(peer: UInt64(index % 4), sequence: index)) }
        #expect(await eventually { handled.load(ordering: .relaxed) == 160 })
        let stats = s.statistics
        #expect(stats.handoffs == 10 && stats.partialHandoffs == 0 && stats.meanBatch == 16)
        producer.submit(Work(peer: 0, sequence: 160))
        #expect(s.statistics.handoffs == 10) // a partial queuelet waits...
        producer.flush()                       // ...until flushed (or its deadline passes)
        #expect(await eventually { handled.load(ordering: .relaxed) == 161 })
        #expect(s.statistics.partialHandoffs == 1)
    }

    /// Never flushed: only the 5 ms bound hands the partial batches over. Wall time would say little on a loaded
    /// machine (the ticker thread may not run for a while), so the scheduler counts the hand-offs it made late by
    /// its own fault - at a ticker pass due more than one tick after the queuelet's deadline - and that must be
    /// none, while every batch went over by the deadline (none by a flush, none full).
    @Test func aPartialQueueletWaitsNoLongerThanTheBound() async throws {
        let handled = Atomic<Int>(0)
        let s = try scheduler(partitions: 2, batch: 1000, delay: .milliseconds(5)) { _, _ in handled.add(1, ordering: .relaxed) }
        defer { s.shutdown() }
        #expect(s.configuration.deadlineTick <= .microseconds(2500))
        let producer = s.makeProducer()
        var submitted = 0
        for round in 0..<20 {
            // Batches that start at different moments of the ticker's cycle, on both partitions.
            for index in 0..<3 { producer.submit(Work(peer: 1, sequence: round * 3 + index, partition: round % 2)) }
            submitted += 3
            try await Task.sleep(for: .microseconds(Int.random(in: 0...4000)))
        }
        #expect(await eventually(timeout: .seconds(30)) { handled.load(ordering: .relaxed) == submitted })
        let stats = s.statistics
        #expect(stats.deadlineHandoffs == stats.handoffs && stats.partialHandoffs == stats.handoffs && stats.handoffs >= 2,
                "\(stats)")
        #expect(stats.lateHandoffs == 0, "\(stats.lateHandoffs) of \(stats.deadlineHandoffs) deadline hand-offs were late")
    }

    @Test func onePeerInOrderOthersInParallelDespiteASlowHandler() async throws {
        let order = Mutex<[UInt64: [Int]]>([:])
        let othersDone = Gate()
        let blockedOnSlowPeer = Collector<Bool>()
        let othersHandled = Atomic<Int>(0)
        let perPeer = 50
        let s = try scheduler(batch: 8) { work, _ in
            order.withLock { $0[work.peer, default: []].append(work.sequence) }
            if work.peer == 0 && work.sequence == 0 {
                // Peer 0's first request is slow: it waits for every other peer to be served meanwhile.
                blockedOnSlowPeer.append(othersDone.wait(seconds: 5))
            } else if work.peer != 0, othersHandled.add(1, ordering: .relaxed).newValue == 3 * perPeer {
                othersDone.open()
            }
        }
        defer { s.shutdown() }
        let producer = s.makeProducer()
        for sequence in 0..<perPeer {
            for peer in UInt64(0)..<4 { producer.submit(Work(peer: peer, sequence: sequence)) }
        }
        producer.flush()
        #expect(await eventually { order.withLock { $0.values.reduce(0) { $0 + $1.count } } == 4 * perPeer })
        #expect(blockedOnSlowPeer.items == [true])
        for (_, sequences) in order.withLock({ $0 }) { #expect(sequences == Array(0..<perPeer)) }
    }

    /// Two queuelets handed over back to back, each of one peer, wake two sleeping threads, as a semaphore's two
    /// signals would: the second wake-up must not go to the thread the first one already woke (it would then run
    /// both, and a slow handler of the first peer would hold up the second).
    @Test func backToBackHandoffsWakeTwoThreads() async throws {
        for round in 0..<20 {
            let release = Gate()
            let waited = Collector<Bool>()
            let s = try scheduler(threads: 2, batch: 1) { work, _ in
                if work.peer == 0 { waited.append(release.wait(seconds: 5)) } else { release.open() }
            }
            // Both threads asleep before the hand-offs.
            try await Task.sleep(for: .milliseconds(20))
            let producer = s.makeProducer()
            producer.submit(Work(peer: 0, sequence: 0))
            producer.submit(Work(peer: 1, sequence: 0))
            #expect(await eventually { waited.count == 1 })
            s.shutdown()
            #expect(waited.items == [true], "round \(round): peer 1 waited for peer 0's slow handler")
        }
    }

    @Test func perPeerOrderHoldsUnderConcurrentProducers() async throws {
        let last = Mutex<[UInt64: Int]>([:])
        let violations = Atomic<Int>(0)
        let handled = Atomic<Int>(0)
        let s = try scheduler(partitions: 2, threads: 2, batch: 32, delay: .milliseconds(1)) { work, _ in
            let previous = last.withLock { table -> Int in
                let previous = table[work.peer] ?? -1
                table[work.peer] = work.sequence
                return previous
            }
            if work.sequence != previous + 1 { violations.add(1, ordering: .relaxed) }
            handled.add(1, ordering: .relaxed)
        }
        defer { s.shutdown() }
        let perPeer = 2000
        let peersPerProducer = 10
        await withTaskGroup(of: Void.self) { group in
            for producerIndex in 0..<2 {
                group.addTask {
                    let producer = s.makeProducer()
                    for sequence in 0..<perPeer {
                        for local in 0..<peersPerProducer {
                            let peer = UInt64(producerIndex * peersPerProducer + local)
                            producer.submit(Work(peer: peer, sequence: sequence, partition: Int(peer % 2)))
                        }
                    }
                    producer.flush()
                }
            }
        }
        #expect(await eventually(timeout: .seconds(10)) { handled.load(ordering: .relaxed) == 2 * peersPerProducer * perPeer })
        #expect(violations.load(ordering: .relaxed) == 0)
        let stats = s.statistics
        #expect(stats.handledPerPartition.allSatisfy { $0 == peersPerProducer * perPeer })
        #expect(stats.meanBatch > 8)
    }

    @Test func shutdownDrainsAndLaterWorkIsDiscarded() throws {
        let handled = Atomic<Int>(0)
        let s = try scheduler(partitions: 2, batch: 64) { _, _ in handled.add(1, ordering: .relaxed) }
        let producer = s.makeProducer()
        for index in 0..<100 { producer.submit(Work(peer: 1, sequence: index, partition: index % 2)) }
        s.shutdown()
        #expect(handled.load(ordering: .relaxed) == 100)
        producer.submit(Work(peer: 1, sequence: 100))
        #expect(s.statistics.discarded == 1)
        s.shutdown()
    }

    @Test(arguments: [PlacementPolicy.peerHash, .hints])
    func eventsArePlacedByPeerOrByHint(_ policy: PlacementPolicy) async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let table = CPUPartitionTable(count: 2)
        let placed = Mutex<[UInt64: Set<Int>]>([:])
        let handled = Atomic<Int>(0)
        let s = try QueueletScheduler<LNetEvent>(
            events: QueueletConfiguration(partitions: table, threadsPerPartition: 1, batchSize: 8, maxBatchDelay: .milliseconds(2)),
            placement: policy) { event, partition in
            _ = placed.withLock { $0[event.hints.major, default: []].insert(partition) }
            handled.add(1, ordering: .relaxed)
        }
        defer { s.shutdown() }
        let eq = EventQueue(label: "service", delivery: .scheduler(s))
        _ = try lnet.attach(MatchEntry(portal: 7, matchBits: 0),
                            descriptor: MemoryDescriptor(storage: .none, threshold: .infinite, options: [.put], eventQueue: eq))
        let source = try lnet.bind(MemoryDescriptor(storage: .none, threshold: .infinite))
        let objects: [UInt64] = [11, 12, 13, 14, 15, 16, 17, 18]
        for round in 0..<10 {
            for object in objects {
                try lnet.put(source, to: me, portal: 7, matchBits: 0, ackRequested: false,
                             hints: LNetHints(major: object, minor: UInt64(round % 1)))
            }
        }
        #expect(await eventually { handled.load(ordering: .relaxed) == 80 })
        let result = placed.withLock { $0 }
        for object in objects {
            let expected = policy == .hints ? table.partition(forHints: LNetHints(major: object, minor: 0))
                                            : table.partition(forPeer: .loopback)
            #expect(result[object] == [expected], "object \(object) on \(result[object] ?? [])")
        }
        if policy == .hints { #expect(Set(result.values.flatMap { $0 }).count == 2) }
    }
}
