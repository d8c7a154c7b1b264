import Testing
import Verbs

/// Type 2 memory windows on a connected pair: the server exposes part of a region through a window, the client
/// reads (or writes) through the window's key.
///
/// A remote access error moves both QPs to the error state, so each test provokes at most one, last. No test
/// invalidates a key twice: on rxe (Linux 6.1) that panics the kernel (see `MemoryWindow`).
@Suite(.requiresDevice, .serialized) struct MemoryWindowDeviceTests {
    static let size = 64 * 1024

    /// A connected pair, a server region that windows may be bound over (local access only, no remote rights)
    /// filled with a pattern, and a client sink.
    struct Fixture {
        let pair: ConnectedPair
        let region: MemoryRegion
        let sink: MemoryRegion

        init(receives: Int = 0) throws {
            pair = try ConnectedPair { server in
                for i in 0..<receives {
                    try server.queuePair.post(ReceiveWorkRequest(id: 900 + UInt64(i), scatterGather: []))
                }
            }
            region = try MemoryRegion(protectionDomain: pair.server.protectionDomain, length: MemoryWindowDeviceTests.size,
                                      access: [.localWrite, .memoryWindowBind])
            for i in 0..<region.length { region.bytes[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 3) }
            sink = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: MemoryWindowDeviceTests.size,
                                    access: [.localWrite])
        }

        func window() throws -> MemoryWindow { try MemoryWindow(protectionDomain: pair.server.protectionDomain) }

        /// Binds on the server QP and waits for the bind's completion.
        @discardableResult
        func bind(_ window: MemoryWindow, offset: Int, length: Int, access: MemoryAccess) throws -> MemoryWindowBinding {
            let binding = try window.binding(region: region, offset: offset, length: length, access: access)
            try pair.server.queuePair.post(SendWorkRequest(id: 1, operation: .bindMemoryWindow(binding), scatterGather: []))
            let done = try #require(waitForCompletions(pair.server.sendQueue).first)
            #expect(done.status == .success, "bind: \(done.status)")
            #expect(done.opcode == .bindMemoryWindow)
            return binding
        }

        /// Invalidates on the server QP and waits for the completion.
        func invalidate(_ rkey: UInt32) throws {
            try pair.server.queuePair.post(SendWorkRequest(id: 2, operation: .localInvalidate(rkey: rkey), scatterGather: []))
            let done = try #require(waitForCompletions(pair.server.sendQueue).first)
            #expect(done.status == .success, "local invalidate: \(done.status)")
            #expect(done.opcode == .localInvalidate)
        }

        /// The client RDMA READs `length` bytes at `address` through `rkey` into the start of its sink.
        func read(_ address: UInt64, rkey: UInt32, length: Int) throws -> WorkCompletion {
            sink.bytes.initializeMemory(as: UInt8.self, repeating: 0)
            try pair.client.queuePair.post(SendWorkRequest(
                id: 3, operation: .rdmaRead(remoteAddress: address, rkey: rkey), scatterGather: [sink.sge(length: length)]))
            return try #require(waitForCompletions(pair.client.sendQueue).first)
        }

        /// Whether the sink's first `length` bytes are the region's bytes at `offset`.
        func sinkHolds(offset: Int, length: Int) -> Bool {
            sink.bytes[0..<length].elementsEqual(region.bytes[offset..<(offset + length)])
        }
    }

    @Test func deviceOffersType2Windows() throws {
        let context = try DeviceContext(deviceName: TestDevice.name)
        let support = try context.memoryWindowSupport()
        #expect(support.type2, "\(support)")
        #expect(support.maxWindows > 0)
        #expect(MemoryAccess([.localWrite, .memoryWindowBind]).description == "local-write,mw-bind")
    }

    @Test func peerReadsThroughABoundWindow() throws {
        let fixture = try Fixture()
        let window = try fixture.window()
        let initial = window.rkey
        let binding = try fixture.bind(window, offset: 4096, length: 8192, access: .remoteRead)
        #expect(binding.rkey == MemoryWindow.incrementedKey(initial))
        #expect(window.rkey == binding.rkey)
        #expect(binding.address == fixture.region.address + 4096)
        let read = try fixture.read(binding.address, rkey: binding.rkey, length: 8192)
        #expect(read.status == .success)
        #expect(read.opcode == .rdmaRead)
        #expect(fixture.sinkHolds(offset: 4096, length: 8192))
    }

    @Test func localInvalidateRevokesTheKey() throws {
        let fixture = try Fixture()
        let window = try fixture.window()
        let binding = try fixture.bind(window, offset: 4096, length: 8192, access: .remoteRead)
        #expect(try fixture.read(binding.address, rkey: binding.rkey, length: 4096).status == .success)
        try fixture.invalidate(binding.rkey)
        #expect(try fixture.read(binding.address, rkey: binding.rkey, length: 4096).status == .remoteAccessError)
    }

    @Test func sendWithInvalidateFromThePeerRevokesTheKey() throws {
        let fixture = try Fixture(receives: 1)
        let window = try fixture.window()
        let binding = try fixture.bind(window, offset: 0, length: 4096, access: .remoteRead)
        #expect(try fixture.read(binding.address, rkey: binding.rkey, length: 4096).status == .success)
        try fixture.pair.client.queuePair.post(SendWorkRequest(id: 4, operation: .sendWithInvalidate(rkey: binding.rkey),
                                                               scatterGather: []))
        let sent = try #require(waitForCompletions(fixture.pair.client.sendQueue).first)
        #expect(sent.status == .success)
        #expect(sent.opcode == .send)
        let received = try #require(waitForCompletions(fixture.pair.server.receiveQueue).first)
        #expect(received.status == .success)
        #expect(received.opcode == .receive)
        // The window is invalid now: it must not be invalidated again (rxe would panic). Deallocating is safe.
        #expect(try fixture.read(binding.address, rkey: binding.rkey, length: 4096).status == .remoteAccessError)
    }

    @Test func writeOnlyWindowAcceptsAWriteAndRefusesARead() throws {
        let fixture = try Fixture()
        let window = try fixture.window()
        let binding = try fixture.bind(window, offset: 0, length: 4096, access: .remoteWrite)
        let text = Array("written by the peer".utf8)
        fixture.sink.bytes.copyBytes(from: text)
        try fixture.pair.client.queuePair.post(SendWorkRequest(
            id: 5, operation: .rdmaWrite(remoteAddress: binding.address + 100, rkey: binding.rkey),
            scatterGather: [fixture.sink.sge(length: text.count)]))
        let written = try #require(waitForCompletions(fixture.pair.client.sendQueue).first)
        #expect(written.status == .success)
        #expect(Array(fixture.region.bytes[100..<(100 + text.count)]) == text)
        #expect(try fixture.read(binding.address, rkey: binding.rkey, length: 64).status == .remoteAccessError)
    }

    @Test func rebindWithTheIncrementedKeyWorksAndTheOldKeyStaysRevoked() throws {
        let fixture = try Fixture()
        let window = try fixture.window()
        let first = try fixture.bind(window, offset: 4096, length: 8192, access: .remoteRead)
        #expect(try fixture.read(first.address, rkey: first.rkey, length: 8192).status == .success)
        try fixture.invalidate(first.rkey)
        #expect(window.nextRkey == MemoryWindow.incrementedKey(first.rkey))
        let second = try fixture.bind(window, offset: 16384, length: 4096, access: .remoteRead)
        #expect(second.rkey == MemoryWindow.incrementedKey(first.rkey))
        #expect(second.rkey != first.rkey)
        #expect(second.rkey & 0xFFFF_FF00 == first.rkey & 0xFFFF_FF00, "the same window, a new tag")
        #expect(try fixture.read(second.address, rkey: second.rkey, length: 4096).status == .success)
        #expect(fixture.sinkHolds(offset: 16384, length: 4096))
        #expect(try fixture.read(first.address, rkey: first.rkey, length: 4096).status == .remoteAccessError)
    }

    @Test func deallocatingTheWindowRevokesTheKey() throws {
        let fixture = try Fixture()
        var window: MemoryWindow? = try fixture.window()
        // Keep only the key and address: a binding holds its window.
        let (address, rkey) = try { () throws -> (UInt64, UInt32) in
            let binding = try fixture.bind(try #require(window), offset: 0, length: 8192, access: .remoteRead)
            return (binding.address, binding.rkey)
        }()
        #expect(try fixture.read(address, rkey: rkey, length: 8192).status == .success)
        #expect(fixture.sinkHolds(offset: 0, length: 8192))
        let unique = isKnownUniquelyReferenced(&window!)
        #expect(unique, "nothing else holds the window")
        window = nil
        let status = try fixture.read(address, rkey: rkey, length: 8192).status
        #expect(status == .remoteAccessError)
    }

    @Test func unsignaledBindIsInPlaceForTheSendThatAdvertisesTheKey() throws {
        let pair = try ConnectedPair { server in
            try server.queuePair.post(ReceiveWorkRequest(id: 8, scatterGather: []))
        }
        // The client exposes; the server reads after receiving the key, as an LND's pull would.
        let source = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 16384,
                                      access: [.memoryWindowBind])
        for i in 0..<source.length { source.bytes[i] = UInt8(truncatingIfNeeded: i &* 5 &+ 1) }
        let window = try MemoryWindow(protectionDomain: pair.client.protectionDomain)
        let binding = try window.binding(region: source, access: .remoteRead)
        try pair.client.queuePair.post([
            SendWorkRequest(id: 6, operation: .bindMemoryWindow(binding), scatterGather: [], signaled: false),
            SendWorkRequest(id: 7, operation: .sendWithImmediate(binding.rkey), scatterGather: []),
        ])
        let sent = try #require(waitForCompletions(pair.client.sendQueue).first)
        #expect(sent.id == 7)
        #expect(sent.status == .success)
        let received = try #require(waitForCompletions(pair.server.receiveQueue).first)
        let rkey = try #require(received.immediateData)
        let sink = try MemoryRegion(protectionDomain: pair.server.protectionDomain, length: 16384, access: [.localWrite])
        try pair.server.queuePair.post(SendWorkRequest(id: 9, operation: .rdmaRead(remoteAddress: binding.address, rkey: rkey),
                                                       scatterGather: [sink.sge()]))
        #expect(try waitForCompletions(pair.server.sendQueue).first?.status == .success)
        #expect(sink.bytes.elementsEqual(source.bytes))
    }

    @Test func bindingChecksItsArgumentsBeforeTheDeviceDoes() throws {
        let fixture = try Fixture()
        let window = try fixture.window()
        let key = window.rkey
        let otherPD = try MemoryRegion(protectionDomain: fixture.pair.client.protectionDomain, length: 4096,
                                       access: [.localWrite, .memoryWindowBind])
        let noBind = try MemoryRegion(protectionDomain: fixture.pair.server.protectionDomain, length: 4096, access: [.localWrite])
        let readOnly = try MemoryRegion(protectionDomain: fixture.pair.server.protectionDomain, length: 4096,
                                        access: [.memoryWindowBind])
        #expect(throws: VerbsError.self) { try window.binding(region: otherPD, access: .remoteRead) }
        #expect(throws: VerbsError.self) { try window.binding(region: noBind, access: .remoteRead) }
        #expect(throws: VerbsError.self) { try window.binding(region: readOnly, access: .remoteWrite) }
        #expect(throws: VerbsError.self) { try window.binding(region: fixture.region, access: .localWrite) }
        #expect(throws: VerbsError.self) { try window.binding(region: fixture.region, offset: 4096, length: Self.size, access: .remoteRead) }
        #expect(throws: Never.self) { try window.binding(region: readOnly, access: .remoteRead) }
        #expect(window.rkey == key, "making a binding changes nothing until it is posted")
    }

    /// rxe checks a window access against the underlying region's range, not the window's: a read outside the
    /// window but inside the region succeeds. Recorded as a known issue on rxe; enforced elsewhere.
    @Test func windowRangeIsEnforced() throws {
        let fixture = try Fixture()
        let window = try fixture.window()
        let binding = try fixture.bind(window, offset: 8192, length: 4096, access: .remoteRead)
        let outside = try fixture.read(binding.address - 4096, rkey: binding.rkey, length: 4096)
        withKnownIssue("rxe (Linux 6.1) checks window accesses against the region's range only") {
            #expect(outside.status == .remoteAccessError)
        } when: {
            TestDevice.name.hasPrefix("rxe")
        }
    }
}

@Suite struct MemoryWindowKeyTests {
    @Test func incrementingAKeyChangesOnlyItsTag() {
        #expect(MemoryWindow.incrementedKey(0x0800_0273) == 0x0800_0274)
        #expect(MemoryWindow.incrementedKey(0x0800_02FF) == 0x0800_0200)
        #expect(MemoryWindow.incrementedKey(0xFFFF_FFFF) == 0xFFFF_FF00)
    }
}
