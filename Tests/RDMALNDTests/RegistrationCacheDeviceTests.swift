import Foundation
import Testing
import Verbs
@testable import RDMALND

/// Two RC queue pairs on one device connected through rdma_cm in one process (server 192.0.2.1, client
/// 192.0.2.2): the minimal part of VerbsTests' `ConnectedPair` (test targets cannot share code).
final class CacheTestPair {
    struct Side {
        let channel: CMEventChannel
        let id: CMID
        let protectionDomain: ProtectionDomain
        let sendQueue: CompletionQueue
        let receiveQueue: CompletionQueue
        let queuePair: QueuePair
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    let listener: CMID
    let server: Side
    let client: Side

    private static func side(_ channel: CMEventChannel, _ id: CMID) throws -> Side {
        guard let context = id.deviceContext else { throw Failure(description: "the CM id has no device") }
        let pd = try ProtectionDomain(context: context)
        let sendQueue = try CompletionQueue(context: context, capacity: 64)
        let receiveQueue = try CompletionQueue(context: context, capacity: 64)
        let qp = try id.createQueuePair(protectionDomain: pd, sendQueue: sendQueue, receiveQueue: receiveQueue,
                                        capabilities: QueuePairCapabilities(maxSendWorkRequests: 32, maxReceiveWorkRequests: 32,
                                                                            maxSendScatterGather: 4, maxReceiveScatterGather: 1))
        return Side(channel: channel, id: id, protectionDomain: pd, sendQueue: sendQueue, receiveQueue: receiveQueue, queuePair: qp)
    }

    static func event(_ kind: CMEvent.Kind, on channel: CMEventChannel) throws -> CMEvent {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if let event = try channel.waitForEvent(timeout: .milliseconds(100)) {
                guard event.kind == kind else { throw Failure(description: "wanted \(kind), got \(event.kind) (status \(event.status))") }
                return event
            }
        }
        throw Failure(description: "timed out waiting for \(kind)")
    }

    /// Connects; `beforeAccept` runs on the server side before it accepts (to post receives).
    init(beforeAccept: (Side) throws -> Void = { _ in }) throws {
        let serverChannel = try CMEventChannel()
        let clientChannel = try CMEventChannel()
        listener = try serverChannel.createID()
        try listener.bind(IPv4Endpoint(LNDTestDevice.serverAddress, port: 0))
        try listener.listen()
        guard let port = listener.localEndpoint?.port else { throw Failure(description: "no listener port") }
        let clientID = try clientChannel.createID()
        try clientID.resolveAddress(from: IPv4Endpoint(LNDTestDevice.clientAddress),
                                    to: IPv4Endpoint(LNDTestDevice.serverAddress, port: port), timeout: .seconds(5))
        _ = try Self.event(.addressResolved, on: clientChannel)
        try clientID.resolveRoute(timeout: .seconds(5))
        _ = try Self.event(.routeResolved, on: clientChannel)
        client = try Self.side(clientChannel, clientID)
        let parameters = ConnectionParameters(responderResources: 4, initiatorDepth: 4)
        try clientID.connect(parameters)
        let request = try Self.event(.connectRequest, on: serverChannel)
        server = try Self.side(serverChannel, request.id)
        try beforeAccept(server)
        try request.id.accept(parameters)
        _ = try Self.event(.established, on: clientChannel)
        _ = try Self.event(.established, on: serverChannel)
    }

    /// Polls `cq` for one completion.
    static func completion(_ cq: CompletionQueue) throws -> WorkCompletion {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if let completion = try cq.poll(max: 1).first { return completion }
            Thread.sleep(forTimeInterval: 0.0005)
        }
        throw Failure(description: "timed out waiting for a completion")
    }

    /// The client RDMA READs `length` bytes at `address` through `rkey` into `sink`.
    func clientReads(_ address: UInt64, rkey: UInt32, length: Int, into sink: MemoryRegion) throws -> WorkCompletionStatus {
        try client.queuePair.post(SendWorkRequest(id: 1, operation: .rdmaRead(remoteAddress: address, rkey: rkey),
                                                  scatterGather: [sink.sge(length: length)]))
        return try Self.completion(client.sendQueue).status
    }

    /// The client RDMA WRITEs `length` bytes of `source` to `address` through `rkey`.
    func clientWrites(_ address: UInt64, rkey: UInt32, length: Int, from source: MemoryRegion) throws -> WorkCompletionStatus {
        try client.queuePair.post(SendWorkRequest(id: 2, operation: .rdmaWrite(remoteAddress: address, rkey: rkey),
                                                  scatterGather: [source.sge(length: length)]))
        return try Self.completion(client.sendQueue).status
    }
}

/// Page-aligned memory the test owns (the cache registers memory it does not own).
final class TestMemory {
    let bytes: UnsafeMutableRawBufferPointer

    init(_ count: Int, pattern seed: UInt8 = 0) {
        var raw: UnsafeMutableRawPointer?
        precondition(posix_memalign(&raw, 4096, count) == 0)
        bytes = UnsafeMutableRawBufferPointer(start: raw, count: count)
        for i in 0..<count { bytes[i] = UInt8(truncatingIfNeeded: i &* 11 &+ Int(seed)) }
    }

    deinit { free(bytes.baseAddress) }

    var address: UInt64 { UInt64(UInt(bitPattern: bytes.baseAddress)) }

    func fragment(_ offset: Int, _ length: Int) -> (base: UnsafeMutableRawPointer, length: Int) {
        (bytes.baseAddress! + offset, length)
    }
}

/// The cache against a real device: hits and evictions with real registrations, and the security property:
/// cached registrations grant no remote access, and a transfer's remote grant dies with its release.
///
/// A remote access error moves both QPs to the error state, so each test provokes at most one, last.
@Suite(.requiresDevice, .serialized) struct RegistrationCacheDeviceTests {
    @Test func repeatedTransfersHitTheCacheAndTheCachedKeyWorks() throws {
        let pair = try CacheTestPair()
        let cache = RegistrationCache(protectionDomain: pair.client.protectionDomain, capacity: 1 << 20)
        let source = try MemoryRegion(protectionDomain: pair.server.protectionDomain, length: 65536, access: [.remoteRead])
        for i in 0..<source.length { source.bytes[i] = UInt8(truncatingIfNeeded: i &* 3 &+ 1) }
        let memory = TestMemory(65536)
        for round in 0..<3 {
            // A READ sink in two fragments; the cache answers both from one registration after the first round.
            let sink = try cache.register([memory.fragment(0, 30000), memory.fragment(30000, 35536)], access: [.localWrite])
            #expect(sink.fragments.count == 2)
            #expect(sink.fragments.allSatisfy { $0.rkey == 0 }, "a local sink gets no remote key")
            memory.bytes.initializeMemory(as: UInt8.self, repeating: 0)
            try pair.client.queuePair.post(SendWorkRequest(
                id: UInt64(round), operation: .rdmaRead(remoteAddress: source.address, rkey: source.rkey),
                scatterGather: sink.fragments.map { ScatterGatherElement(address: $0.address, length: $0.length, lkey: $0.lkey) }))
            #expect(try CacheTestPair.completion(pair.client.sendQueue).status == .success)
            #expect(memory.bytes.elementsEqual(source.bytes))
            #expect(cache.statistics.entriesInUse == (round == 0 ? 2 : 1))
            sink.release()
            #expect(sink.isReleased)
        }
        // Round 1: two misses (the second fragment's pages overlap the first's: one registration of the union
        // replaces the first). Rounds 2 and 3: four hits on it.
        let stats = cache.statistics
        #expect(stats.misses == 2, "\(stats)")
        #expect(stats.hits == 4, "\(stats)")
        #expect(stats.entries == 1 && stats.entriesInUse == 0 && stats.cachedBytes == 65536)
    }

    @Test func aSmallCacheEvictsTheLeastRecentlyUsed() throws {
        let context = try DeviceContext(deviceName: Devices.list().first { $0.ports.contains { $0.state == .active } }?.name ?? "rxe0")
        let pd = try ProtectionDomain(context: context)
        let cache = RegistrationCache(protectionDomain: pd, capacity: 2 * 4096)
        let memory = TestMemory(4 * 4096)
        for page in [0, 1, 0, 2] {
            try cache.register([memory.fragment(page * 4096 + 8, 100)], access: [.localWrite]).release()
        }
        var stats = cache.statistics
        #expect(stats.misses == 3 && stats.hits == 1 && stats.evictions == 1 && stats.entries == 2, "\(stats)")
        #expect(stats.cachedBytes == 2 * 4096)
        // Page 1 was the least recently used; page 0 is still cached.
        try cache.register([memory.fragment(0, 100)], access: [.localWrite]).release()
        #expect(cache.statistics.hits == 2)
        // With both pages in use, a third goes uncached rather than failing.
        let a = try cache.register([memory.fragment(0, 100)], access: [.localWrite])
        let b = try cache.register([memory.fragment(2 * 4096, 100)], access: [.localWrite])
        let c = try cache.register([memory.fragment(3 * 4096, 100)], access: [.localWrite])
        stats = cache.statistics
        #expect(stats.uncachedRegistrations == 1 && stats.entriesInUse == 2 && stats.entries == 2, "\(stats)")
        for transfer in [a, b, c] { transfer.release() }
        #expect(cache.statistics.entriesInUse == 0)
        cache.purge()
        #expect(cache.statistics.entries == 0)
    }

    @Test func cachedRegistrationsGrantNoRemoteAccess() throws {
        let pair = try CacheTestPair()
        let cache = RegistrationCache(protectionDomain: pair.server.protectionDomain, capacity: 1 << 20)
        let memory = TestMemory(8192)
        let local = try cache.register([memory.fragment(0, 8192)], access: [.localWrite])
        #expect(cache.statistics.entries == 1)
        let sink = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 8192, access: [.localWrite])
        // The peer guesses the key: the local key of the cached registration.
        let status = try pair.clientReads(memory.address, rkey: local.fragments[0].lkey, length: 4096, into: sink)
        #expect(status == .remoteAccessError)
        local.release()
    }

    @Test func aRevokedPullGrantRefusesTheOldKey() throws {
        let pair = try CacheTestPair()
        let cache = RegistrationCache(protectionDomain: pair.server.protectionDomain, capacity: 1 << 20)
        let memory = TestMemory(3 * 4096, pattern: 7)
        let grant = try cache.register([memory.fragment(100, 5000), memory.fragment(8192, 4096)], access: [.remoteRead])
        #expect(grant.bindRequests.isEmpty)
        #expect(grant.fragments.map(\.address) == [memory.address + 100, memory.address + 8192])
        #expect(grant.fragments.allSatisfy { $0.rkey != 0 })
        #expect(cache.statistics.remoteGrants == 2)
        let sink = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 8192, access: [.localWrite])
        let first = grant.fragments[0]
        #expect(try pair.clientReads(first.address, rkey: first.rkey, length: Int(first.length), into: sink) == .success)
        #expect(sink.bytes[0..<5000].elementsEqual(memory.bytes[100..<5100]))
        grant.release()
        #expect(try pair.clientReads(first.address, rkey: first.rkey, length: Int(first.length), into: sink) == .remoteAccessError)
    }

    @Test func aPullGrantExposesOnlyItsFragment() throws {
        let pair = try CacheTestPair()
        let cache = RegistrationCache(protectionDomain: pair.server.protectionDomain, capacity: 1 << 20)
        let memory = TestMemory(8192)
        let grant = try cache.register([memory.fragment(100, 1000)], access: [.remoteRead])
        let sink = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 8192, access: [.localWrite])
        let fragment = grant.fragments[0]
        #expect(try pair.clientReads(fragment.address - 100, rkey: fragment.rkey, length: 64, into: sink) == .remoteAccessError)
        grant.release()
    }

    @Test func aRevokedPushGrantRefusesAWrite() throws {
        let pair = try CacheTestPair()
        let cache = RegistrationCache(protectionDomain: pair.server.protectionDomain, capacity: 1 << 20)
        let memory = TestMemory(4096)
        let grant = try cache.register([memory.fragment(0, 4096)], access: [.localWrite, .remoteWrite])
        let source = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 4096, access: [])
        source.bytes.copyBytes(from: Array(repeating: UInt8(0xA5), count: 4096))
        let fragment = grant.fragments[0]
        #expect(try pair.clientWrites(fragment.address, rkey: fragment.rkey, length: 4096, from: source) == .success)
        #expect(memory.bytes.allSatisfy { $0 == 0xA5 })
        grant.release()
        #expect(try pair.clientWrites(fragment.address, rkey: fragment.rkey, length: 4096, from: source) == .remoteAccessError)
    }

    @Test func theRegistrarGrantKeepsCachedRegionsInUseUntilRevoked() throws {
        let context = try DeviceContext(deviceName: Devices.list().first { $0.ports.contains { $0.state == .active } }?.name ?? "rxe0")
        let cache = RegistrationCache(protectionDomain: try ProtectionDomain(context: context), capacity: 1 << 20)
        let registrar: any Registrar = cache
        let memory = TestMemory(16384)
        let grant = try registrar.grant([UnsafeMutableRawBufferPointer(rebasing: memory.bytes[0..<10000])], access: [.localWrite])
        #expect(grant.descriptor.fragments.isEmpty)
        #expect(grant.pieces.count == 1 && grant.pieces[0].length == 10000)
        #expect(cache.statistics.entriesInUse == 1)
        grant.revoke()
        #expect(cache.statistics.entriesInUse == 0 && cache.statistics.entries == 1)
        let remote = try registrar.grant([UnsafeMutableRawBufferPointer(rebasing: memory.bytes[0..<10000])], access: [.remoteRead])
        #expect(remote.descriptor.fragments.count == 1 && remote.descriptor.fragments[0].rkey != 0)
        #expect(cache.statistics.hits == 0, "remote grants do not come from the cache")
        remote.revoke()
    }

    /// Window-backed grants (opt-in; see `RemoteAccessStrategy.memoryWindow` for why not on rxe by default):
    /// the grant binds a window over the cached registration, the peer reads through it, and release revokes it.
    @Test func aWindowBackedGrantIsRevokedOnRelease() throws {
        let pair = try CacheTestPair { server in
            try server.queuePair.post(ReceiveWorkRequest(id: 0, scatterGather: []))
        }
        let cache = RegistrationCache(protectionDomain: pair.client.protectionDomain, capacity: 1 << 20, remoteAccess: .memoryWindow)
        let memory = TestMemory(8192, pattern: 3)
        // The client exposes a pull source: bind, then the message that carries the key, in one chain.
        let grant = try cache.register([memory.fragment(512, 6000)], access: [.remoteRead])
        let fragment = grant.fragments[0]
        #expect(grant.bindRequests.count == 1)
        try pair.client.queuePair.post(grant.bindRequests + [
            SendWorkRequest(id: 9, operation: .sendWithImmediate(fragment.rkey), scatterGather: []),
        ])
        #expect(try CacheTestPair.completion(pair.client.sendQueue).status == .success)
        let received = try CacheTestPair.completion(pair.server.receiveQueue)
        #expect(received.immediateData == fragment.rkey)
        let sink = try MemoryRegion(protectionDomain: pair.server.protectionDomain, length: 8192, access: [.localWrite])
        try pair.server.queuePair.post(SendWorkRequest(id: 10, operation: .rdmaRead(remoteAddress: fragment.address, rkey: fragment.rkey),
                                                       scatterGather: [sink.sge(length: 6000)]))
        #expect(try CacheTestPair.completion(pair.server.sendQueue).status == .success)
        #expect(sink.bytes[0..<6000].elementsEqual(memory.bytes[512..<6512]))
        #expect(cache.statistics.entries == 1 && cache.statistics.remoteGrants == 1)
        grant.release()
        #expect(grant.bindRequests.isEmpty)
        #expect(cache.statistics.entriesInUse == 0 && cache.statistics.entries == 1, "the local registration stays cached")
        try pair.server.queuePair.post(SendWorkRequest(id: 11, operation: .rdmaRead(remoteAddress: fragment.address, rkey: fragment.rkey),
                                                       scatterGather: [sink.sge(length: 6000)]))
        #expect(try CacheTestPair.completion(pair.server.sendQueue).status == .remoteAccessError)
    }
}
