import LNet
import Testing
@testable import RDMALND

/// RDMA work requests each node's queue pairs took: which bulk mode really moved the data.
struct RDMAWork: Equatable, CustomStringConvertible {
    var reads = 0
    var writes = 0
    init(reads: Int = 0, writes: Int = 0) {
        self.reads = reads
        self.writes = writes
    }
    init(_ node: LNDNode) {
        let counters = node.lnd.counters
        self.init(reads: counters?.rdmaReads ?? -1, writes: counters?.rdmaWrites ?? -1)
    }
    var description: String { "\(reads) READs, \(writes) WRITEs" }
}

/// Two LNet nodes over rxe (192.0.2.1 and 192.0.2.2), contents checked.
@Suite(.requiresDevice, .serialized) struct BulkTransferDeviceTests {
    @Test(arguments: [0, 1, 4096])
    func eagerPutWithAck(size: Int) async throws {
        let (server, client) = try LNDNode.pair()
        defer { client.shutdown(); server.shutdown() }
        let sink = try LNetBuffer(count: max(size, 1))
        let serverEQ = EventQueue()
        _ = try server.lnet.attach(MatchEntry(portal: 5, matchBits: 0xE),
                                   descriptor: MemoryDescriptor(storage: .buffer(sink), options: [.put], eventQueue: serverEQ))
        let source = try patterned(max(size, 1), seed: UInt64(size))
        let eq = EventQueue()
        let md = try client.lnet.bind(MemoryDescriptor(storage: .region(source, offset: 0, length: size), threshold: .count(2), eventQueue: eq))
        try client.lnet.put(md, to: server.id, portal: 5, matchBits: 0xE, ackRequested: true)
        let send = try await expectEvent(.send, on: eq)
        #expect(send.status == .ok)
        let ack = try await expectEvent(.ack, on: eq)
        #expect(ack.status == .ok && ack.matchedLength == size)
        let put = try await expectEvent(.put, on: serverEQ)
        #expect(put.status == .ok && put.matchedLength == size && put.initiator == client.id)
        #expect(same(sink, 0, source, 0, length: size))
        // Eager: one SEND each way, no RDMA on either side.
        #expect(RDMAWork(client) == RDMAWork() && RDMAWork(server) == RDMAWork(), "client \(RDMAWork(client)), server \(RDMAWork(server))")
    }

    /// A GET whose sink fits one message is answered by a REPLY carrying the data: no RDMA either way.
    @Test(arguments: [0, 1, 4096])
    func eagerGetIsAnsweredInOneMessage(size: Int) async throws {
        let (server, client) = try LNDNode.pair()
        defer { client.shutdown(); server.shutdown() }
        let source = try patterned(size + 64, seed: 12)
        let serverEQ = EventQueue()
        _ = try server.lnet.attach(MatchEntry(portal: 5, matchBits: 0xF),
                                   descriptor: MemoryDescriptor(storage: .buffer(source), threshold: .infinite,
                                                                options: [.get, .manageRemote], eventQueue: serverEQ))
        let sink = try LNetBuffer(count: max(size, 1))
        let eq = EventQueue()
        let md = try client.lnet.bind(MemoryDescriptor(storage: .region(sink, offset: 0, length: size), threshold: .count(2), eventQueue: eq))
        try client.lnet.get(md, from: server.id, portal: 5, matchBits: 0xF, offset: 64)
        #expect(try await expectEvent(.send, on: eq).status == .ok)
        let reply = try await expectEvent(.reply, on: eq)
        #expect(reply.status == .ok && reply.matchedLength == size && reply.unlinked)
        #expect(same(sink, 0, source, 64, length: size))
        let get = try await expectEvent(.get, on: serverEQ)
        #expect(get.status == .ok && get.matchedLength == size)
        #expect(RDMAWork(client) == RDMAWork() && RDMAWork(server) == RDMAWork(), "client \(RDMAWork(client)), server \(RDMAWork(server))")
        // Nothing was registered for it either: the sink went undescribed.
        #expect(client.lnd.registrationStatistics?.misses == 0)
    }

    static let bulkCases: [(Int, BulkMode)] = [4096, 1 << 20, 16 << 20].flatMap { size in BulkMode.allCases.map { (size, $0) } }

    @Test(arguments: bulkCases)
    func putOverRDMA(size: Int, mode: BulkMode) async throws {
        let (server, client) = try LNDNode.pair { $0.putMode = mode; $0.immediateSize = 2048 }
        defer { client.shutdown(); server.shutdown() }
        let sink = try LNetBuffer(count: size)
        let serverEQ = EventQueue()
        _ = try server.lnet.attach(MatchEntry(portal: 6, matchBits: 1),
                                   descriptor: MemoryDescriptor(storage: .buffer(sink), options: [.put], eventQueue: serverEQ))
        let source = try patterned(size, seed: 77)
        let eq = EventQueue()
        let md = try client.lnet.bind(MemoryDescriptor(storage: .buffer(source), threshold: .count(2), eventQueue: eq))
        try client.lnet.put(md, to: server.id, portal: 6, matchBits: 1, ackRequested: true)
        #expect(try await expectEvent(.send, on: eq).status == .ok)
        #expect(try await expectEvent(.ack, on: eq).matchedLength == size)
        let put = try await expectEvent(.put, on: serverEQ)
        #expect(put.status == .ok && put.matchedLength == size)
        #expect(same(sink, 0, source, 0, length: size))
        // Pull: the sink (server) READs the source in one request per contiguous range; push: the source
        // (client) WRITEs. The other side posts no RDMA at all.
        let (sourceSide, sinkSide) = (RDMAWork(client), RDMAWork(server))
        switch mode {
        case .pull: #expect(sinkSide == RDMAWork(reads: 1) && sourceSide == RDMAWork(), "client \(sourceSide), server \(sinkSide)")
        case .push: #expect(sourceSide == RDMAWork(writes: 1) && sinkSide == RDMAWork(), "client \(sourceSide), server \(sinkSide)")
        }
    }

    @Test(arguments: bulkCases)
    func getOverRDMA(size: Int, mode: BulkMode) async throws {
        let (server, client) = try LNDNode.pair { $0.getMode = mode; $0.immediateSize = 2048 }
        defer { client.shutdown(); server.shutdown() }
        let source = try patterned(size + 512, seed: 91)
        let serverEQ = EventQueue()
        _ = try server.lnet.attach(MatchEntry(portal: 7, matchBits: 2),
                                   descriptor: MemoryDescriptor(storage: .buffer(source), threshold: .infinite,
                                                                options: [.get, .manageRemote], eventQueue: serverEQ))
        let sink = try LNetBuffer(count: size)
        let eq = EventQueue()
        let md = try client.lnet.bind(MemoryDescriptor(storage: .buffer(sink), threshold: .count(2), eventQueue: eq))
        try client.lnet.get(md, from: server.id, portal: 7, matchBits: 2, offset: 512)
        #expect(try await expectEvent(.send, on: eq).status == .ok)
        let reply = try await expectEvent(.reply, on: eq)
        #expect(reply.status == .ok && reply.matchedLength == size)
        #expect(same(sink, 0, source, 512, length: size))
        let get = try await expectEvent(.get, on: serverEQ)
        #expect(get.status == .ok && get.offset == 512)
        // Pull: the requester (client) READs the staged source; push: the target (server) WRITEs the sink.
        let (requester, target) = (RDMAWork(client), RDMAWork(server))
        switch mode {
        case .pull: #expect(requester == RDMAWork(reads: 1) && target == RDMAWork(), "client \(requester), server \(target)")
        case .push: #expect(target == RDMAWork(writes: 1) && requester == RDMAWork(), "client \(requester), server \(target)")
        }
    }

    /// Repeated transfers of the same buffers reuse their registrations; a freed buffer's pages are forgotten.
    @Test func repeatedTransfersHitTheRegistrationCache() async throws {
        let (server, client) = try LNDNode.pair { $0.putMode = .pull; $0.immediateSize = 1024 }
        defer { client.shutdown(); server.shutdown() }
        let sink = try LNetBuffer(count: 256 << 10)
        _ = try server.lnet.attach(MatchEntry(portal: 8, matchBits: 3),
                                   descriptor: MemoryDescriptor(storage: .buffer(sink), threshold: .infinite, options: [.put, .manageRemote]))
        let source = try patterned(256 << 10, seed: 4)
        for _ in 0..<5 {
            let eq = EventQueue()
            let md = try client.lnet.bind(MemoryDescriptor(storage: .buffer(source), threshold: .count(2), eventQueue: eq))
            try client.lnet.put(md, to: server.id, portal: 8, matchBits: 3, ackRequested: true)
            let send = try await expectEvent(.send, on: eq)
            #expect(send.status == .ok, "\(send)")
            let ack = try await expectEvent(.ack, on: eq)
            #expect(ack.status == .ok, "\(ack)")
        }
        #expect(same(sink, 0, source, 0, length: 256 << 10))
        // The server READs into its sink: registered once, then found in the cache.
        let stats = try #require(server.lnd.registrationStatistics)
        #expect(stats.misses >= 1 && stats.hits >= 4, "\(stats)")
    }

    @Test func getWithNoMatchFailsPromptly() async throws {
        let (server, client) = try LNDNode.pair()
        defer { client.shutdown(); server.shutdown() }
        let eq = EventQueue()
        let md = try client.lnet.bind(MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 1 << 20)), threshold: .count(2), eventQueue: eq))
        let start = ContinuousClock.now
        try client.lnet.get(md, from: server.id, portal: 9, matchBits: 0xDEAD)
        _ = try await expectEvent(.send, on: eq)
        let reply = try await expectEvent(.reply, on: eq)
        #expect(reply.status == .noMatch)
        #expect(ContinuousClock.now - start < .seconds(5))
    }

    @Test func putWithNoMatchFailsItsSender() async throws {
        let (server, client) = try LNDNode.pair { $0.immediateSize = 1024 }
        defer { client.shutdown(); server.shutdown() }
        let eq = EventQueue()
        let md = try client.lnet.bind(MemoryDescriptor(storage: .buffer(try patterned(64 << 10, seed: 1)), threshold: .count(2), eventQueue: eq))
        try client.lnet.put(md, to: server.id, portal: 9, matchBits: 0xBEEF, ackRequested: true)
        let first = try await eq.next(timeout: .seconds(30))
        #expect(first.status == .noMatch, "\(first.kind) \(first.status)")
    }
}
