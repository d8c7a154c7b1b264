import Dispatch
import LNet
import Logging
import Synchronization

/// The server side of the self-test: answers pings, sets up sessions on request, serves their bulk reads and
/// writes, checks verified writes, and tears sessions down.
///
/// A session is set up by a ``SessionRequest`` PUT to ``SelftestProtocol/controlPortal``. The server allocates
/// `concurrency x size` bytes (`size` is the largest operation when the session has mixed sizes) (bounded by ``Configuration/maxSessionMemory`` and ``Configuration/maxTotalMemory``):
/// for a write session a sink, for a read session a source holding each slot's pattern. It attaches it on
/// ``SelftestProtocol/dataPortal`` under the session's match bits with remotely managed offsets (slot `i` is at
/// `i x size`), admitting only the requesting process, and answers with a "ready" ``SessionReply`` PUT to the
/// client's ``SelftestProtocol/replyPortal``. In a verified write session, each landed write is checked over the
/// bytes that landed (its length, from the event, must be within the session's sizes and not truncated; the sequence
/// number in its first 8 bytes equal to the PUT's header data, pattern in the rest), those bytes zeroed, and a
/// ``Verdict`` PUT back to the client. Teardown detaches the session and answers "closed" with the session's
/// figures (operations, verification failures, server CPU time and peak memory).
public final class SelftestServer: Sendable {
    public struct Configuration: Sendable {
        /// The most memory one session may take (its bulk buffer plus, when verified, its pattern).
        public var maxSessionMemory: Int
        /// The most memory all sessions together may take.
        public var maxTotalMemory: Int
        /// The most sessions at once.
        public var maxSessions: Int
        /// The largest concurrency a session may ask for.
        public var maxConcurrency: Int
        /// The bulk modes of this node's LND, told to clients in "ready" replies (the server's LND decides how a
        /// read's data moves: its GET mode).
        public var getMode: AdvertisedBulkMode
        public var putMode: AdvertisedBulkMode
        /// Also run a ``PingService``.
        public var servePing: Bool
        /// Test hooks (leave empty outside tests).
        public var testHooks: TestHooks

        public init(maxSessionMemory: Int = 256 << 20, maxTotalMemory: Int = 1 << 30, maxSessions: Int = 64,
                    maxConcurrency: Int = 1024, getMode: AdvertisedBulkMode = .unknown,
                    putMode: AdvertisedBulkMode = .unknown, servePing: Bool = true, testHooks: TestHooks = TestHooks()) {
            self.maxSessionMemory = maxSessionMemory
            self.maxTotalMemory = maxTotalMemory
            self.maxSessions = maxSessions
            self.maxConcurrency = maxConcurrency
            self.getMode = getMode
            self.putMode = putMode
            self.servePing = servePing
            self.testHooks = testHooks
        }
    }

    /// Ways for tests to break things on purpose.
    public struct TestHooks: Sendable {
        /// Called for each landed write of a verified session before it is checked, with the write's sequence
        /// number; returning `true` flips a byte of the slot (so the check must fail).
        public var corruptWrite: (@Sendable (_ sequence: UInt64) -> Bool)?

        public init(corruptWrite: (@Sendable (_ sequence: UInt64) -> Bool)? = nil) {
            self.corruptWrite = corruptWrite
        }
    }

    /// Counters over the server's life.
    public struct Statistics: Sendable, Equatable {
        public var sessionsOpened = 0
        public var sessionsActive = 0
        public var sessionsRefused = 0
        public var operationsServed = 0
        public var bytesServed = 0
        public var verificationFailures = 0
        public var pingsServed = 0
        public var badRequests = 0
        public var memoryInUse = 0
    }

    private struct Key: Hashable {
        let client: ProcessID
        let session: UInt64
    }

    private struct State {
        var sessions: [Key: Session] = [:]
        var memoryInUse = 0
        var started = false
        var stopped = false
        /// Posted control buffers: MD -> ME.
        var controlMEs: [MDHandle: MEHandle] = [:]
        var opened = 0
        var refused = 0
        var badRequests = 0
        var retiredOperations = 0
        var retiredBytes = 0
        var retiredFailures = 0
        /// Sessions torn down whose last writes are still being checked (counted as active until retired).
        var closing: [Key: Session] = [:]
    }

    public let lnet: LNet
    public let configuration: Configuration
    public let nid: NID
    private let logger: Logger
    private let state = Mutex(State())
    private let pingService: PingService?
    /// Control requests are handled one at a time, in order, here.
    private let controlQueue = DispatchQueue(label: "lnet.selftest.control")

    /// A server on `lnet`, describing itself as `nid` in ping replies.
    public init(lnet: LNet, nid: NID, configuration: Configuration = Configuration(), logger: Logger? = nil) {
        self.lnet = lnet
        self.nid = nid
        self.configuration = configuration
        self.logger = logger ?? Logger(label: "lnet.selftest.server", factory: { _ in SwiftLogNoOpLogHandler() })
        self.pingService = configuration.servePing ? PingService(lnet: lnet, nid: nid) : nil
    }

    private let replyQueue = Mutex<EventQueue?>(nil)

    /// Posts the control buffers (the control portal is lazy, so requests wait for a buffer rather than fail) and
    /// starts the ping service.
    public func start() throws(LNetError) {
        let first = state.withLock { state -> Bool in
            defer { state.started = true }
            return !state.started
        }
        guard first else { return }
        lnet.setLazy(portal: SelftestProtocol.controlPortal, true)
        for _ in 0..<SelftestProtocol.controlBufferCount { try postControlBuffer() }
        try pingService?.start()
        logger.info("self-test server up", metadata: ["nid": "\(nid)"])
    }

    /// Detaches everything: control buffers, sessions, the ping MD.
    public func stop() {
        let (mes, sessions) = state.withLock { state -> ([MEHandle], [Session]) in
            state.stopped = true
            defer {
                state.controlMEs.removeAll()
                state.sessions.removeAll()
                state.memoryInUse = 0
            }
            return (Array(state.controlMEs.values), Array(state.sessions.values))
        }
        lnet.setLazy(portal: SelftestProtocol.controlPortal, false)
        for me in mes { try? lnet.unlink(me) }
        for session in sessions { session.detach() }
        pingService?.stop()
    }

    /// Counters now.
    public var statistics: Statistics {
        state.withLock { state in
            var stats = Statistics()
            stats.sessionsOpened = state.opened
            stats.sessionsActive = state.sessions.count + state.closing.count
            stats.sessionsRefused = state.refused
            stats.badRequests = state.badRequests
            stats.memoryInUse = state.memoryInUse
            let live = Array(state.sessions.values) + Array(state.closing.values)
            stats.operationsServed = state.retiredOperations + live.reduce(0) { $0 + $1.operations }
            stats.bytesServed = state.retiredBytes + live.reduce(0) { $0 + $1.bytes }
            stats.verificationFailures = state.retiredFailures + live.reduce(0) { $0 + $1.failures }
            stats.pingsServed = pingService?.pingsServed ?? 0
            return stats
        }
    }

    // MARK: - Control

    private func postControlBuffer() throws(LNetError) {
        let buffer = try LNetBuffer(count: SelftestProtocol.controlBufferSize)
        // The handler holds the server: a started server lives until stop() (or LNet's shutdown) drops its buffers.
        let queue = EventQueue(label: "lst-control", delivery: .inline { [self] event in
            guard event.kind == .put else { return }
            let bytes = buffer.read(length: event.matchedLength)
            controlQueue.async { self.control(event, bytes: bytes) }
        })
        let attached = try lnet.attach(
            MatchEntry(portal: SelftestProtocol.controlPortal, matchBits: SelftestProtocol.controlMatchBits, unlink: .unlink),
            descriptor: MemoryDescriptor(buffer: buffer, threshold: .count(1), options: [.put], eventQueue: queue))
        let keep = state.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.controlMEs[attached.md] = attached.me
            return true
        }
        if !keep { try? lnet.unlink(attached.me) }
    }

    private func control(_ event: LNetEvent, bytes: [UInt8]) {
        let stillRunning = state.withLock { state -> Bool in
            state.controlMEs.removeValue(forKey: event.md)
            return !state.stopped
        }
        guard stillRunning else { return }
        // The buffer was single-use: put a fresh one in its place first.
        do { try postControlBuffer() } catch {
            logger.error("cannot re-post a self-test control buffer", metadata: ["error": "\(error)"])
        }
        guard event.status.isOK else { return }
        let request: SessionRequest
        do { request = try SessionRequest(decoding: bytes) } catch {
            state.withLock { $0.badRequests += 1 }
            logger.warning("undecodable self-test request", metadata: ["from": "\(event.initiator)", "error": "\(error)"])
            return
        }
        let client = event.initiator
        switch request.kind {
        case .setup: setUp(request, client: client)
        case .teardown: tearDown(request, client: client)
        }
    }

    private func refuse(_ request: SessionRequest, client: ProcessID, _ status: SessionStatus, _ message: String) {
        state.withLock {
            $0.refused += 1
            if status == .badRequest { $0.badRequests += 1 }
        }
        logger.notice("self-test session refused", metadata: [
            "client": "\(client)", "session": "\(request.session)", "status": "\(status)", "reason": "\(message)",
        ])
        reply(SessionReply(kind: .ready, session: request.session, status: status, getMode: configuration.getMode,
                           putMode: configuration.putMode, sessionMemoryLimit: UInt64(configuration.maxSessionMemory),
                           message: message), to: client)
    }

    private func setUp(_ request: SessionRequest, client: ProcessID) {
        guard request.op != .ping else {
            return refuse(request, client: client, .badRequest, "ping needs no session")
        }
        guard request.size >= 1, request.size < Int(UInt32.max) else {
            return refuse(request, client: client, .badRequest, "size \(request.size) is outside 1...\(UInt32.max - 1)")
        }
        guard request.minSize >= 1, request.minSize <= request.size else {
            return refuse(request, client: client, .badRequest, "minimum size \(request.minSize) is outside 1...\(request.size) (the size)")
        }
        guard request.concurrency >= 1, request.concurrency <= configuration.maxConcurrency else {
            return refuse(request, client: client, .badRequest,
                          "concurrency \(request.concurrency) is outside 1...\(configuration.maxConcurrency)")
        }
        let (bulk, overflow) = request.size.multipliedReportingOverflow(by: request.concurrency)
        let memory = bulk + (request.op == .write && request.verify ? request.size : 0)
        guard !overflow, memory <= configuration.maxSessionMemory else {
            return refuse(request, client: client, .tooMuchMemory,
                          "session needs \(formatBytes(memory)) (\(request.concurrency) x \(formatBytes(request.size))); "
                              + "this server allows \(formatBytes(configuration.maxSessionMemory)) per session")
        }
        let key = Key(client: client, session: request.session)
        let admitted = state.withLock { state -> (SessionStatus, String)? in
            guard !state.stopped else { return (.failed, "the server is stopping") }
            guard state.sessions[key] == nil else { return (.badRequest, "session \(request.session) already exists") }
            guard state.sessions.count < configuration.maxSessions else {
                return (.tooManySessions, "the server has \(state.sessions.count) sessions, its limit")
            }
            guard state.memoryInUse + memory <= configuration.maxTotalMemory else {
                return (.tooMuchMemory, "session needs \(formatBytes(memory)); the server has \(formatBytes(state.memoryInUse)) of "
                            + "\(formatBytes(configuration.maxTotalMemory)) in use")
            }
            state.memoryInUse += memory
            return nil
        }
        if let (status, message) = admitted { return refuse(request, client: client, status, message) }
        let session: Session
        do {
            session = try Session(server: self, request: request, client: client, memory: memory)
            try session.attach()
        } catch {
            state.withLock { $0.memoryInUse -= memory }
            return refuse(request, client: client, .failed, "cannot set up the session: \(error)")
        }
        let added = state.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.sessions[key] = session
            state.opened += 1
            return true
        }
        guard added else {
            session.detach()
            return
        }
        logger.info("self-test session up", metadata: [
            "client": "\(client)", "session": "\(request.session)", "op": "\(request.op)", "size": "\(request.sizes)",
            "concurrency": "\(request.concurrency)", "verify": "\(request.verify)",
        ])
        reply(SessionReply(kind: .ready, session: request.session, status: .ok, getMode: configuration.getMode,
                           putMode: configuration.putMode, sessionMemoryLimit: UInt64(configuration.maxSessionMemory)),
              to: client)
    }

    private func tearDown(_ request: SessionRequest, client: ProcessID) {
        let key = Key(client: client, session: request.session)
        let session = state.withLock { state -> Session? in
            guard let session = state.sessions.removeValue(forKey: key) else { return nil }
            state.memoryInUse -= session.memory
            state.closing[key] = session
            return session
        }
        guard let session else {
            return reply(SessionReply(kind: .closed, session: request.session, status: .unknownSession,
                                      message: "no session \(request.session) from \(client)"), to: client)
        }
        session.detach()
        // Writes still being checked finish first: the reply goes out after them, from the session's queue.
        session.checks.async { [self] in
            let usage = ResourceUsage.current()
            state.withLock { state in
                state.closing[key] = nil
                state.retiredOperations += session.operations
                state.retiredBytes += session.bytes
                state.retiredFailures += session.failures
            }
            logger.info("self-test session closed", metadata: [
                "client": "\(client)", "session": "\(request.session)", "operations": "\(session.operations)",
                "verificationFailures": "\(session.failures)",
            ])
            reply(SessionReply(kind: .closed, session: request.session, status: .ok, getMode: configuration.getMode,
                               putMode: configuration.putMode, sessionMemoryLimit: UInt64(configuration.maxSessionMemory),
                               operationsServed: UInt64(session.operations), bytesServed: UInt64(session.bytes),
                               verificationFailures: UInt64(session.failures),
                               serverCPUNanoseconds: usage.since(session.startUsage).cpuNanoseconds,
                               serverMaxRSSKiB: usage.maxRSSKiB),
                  to: client)
        }
    }

    private func reply(_ reply: SessionReply, to client: ProcessID) {
        send(reply.encoded(), to: client, matchBits: SelftestProtocol.matchBits(.reply, session: reply.session), offset: 0)
    }

    /// A small PUT without ACK to the client's reply portal.
    /// A reply or verdict PUT in flight, with what it takes to send it again.
    private final class Reply: Sendable {
        let bytes: [UInt8]
        let client: ProcessID
        let matchBits: UInt64
        let offset: Int
        let headerData: UInt64
        let attempts: Int
        init(bytes: [UInt8], client: ProcessID, matchBits: UInt64, offset: Int, headerData: UInt64, attempts: Int) {
            self.bytes = bytes
            self.client = client
            self.matchBits = matchBits
            self.offset = offset
            self.headerData = headerData
            self.attempts = attempts
        }
    }

    /// The SEND events of every reply and verdict (one queue for all, each MD carrying its `Reply`): a failed one
    /// goes again.
    private var replyEvents: EventQueue {
        replyQueue.withLock { queue in
            if let queue { return queue }
            let made = EventQueue(label: "lst-replies", delivery: .inline { [weak self] event in
                guard event.kind == .send, !event.status.isOK, let reply = event.userInfo as? Reply, reply.attempts > 1,
                      let self else { return }
                // Not from inside the failed send's own call chain: after a pause, from a task.
                Task {
                    try? await Task.sleep(for: .milliseconds(200))
                    self.send(reply.bytes, to: reply.client, matchBits: reply.matchBits, offset: reply.offset,
                              headerData: reply.headerData, attempts: reply.attempts - 1)
                }
            })
            queue = made
            return made
        }
    }

    /// Sends a reply or verdict PUT to the client. If it fails on the way (its connection closed under it), it is
    /// sent again (the LND connects anew), up to `attempts` times: a client waiting for a verdict then gets it
    /// instead of running into its own timeout.
    fileprivate func send(_ bytes: [UInt8], to client: ProcessID, matchBits: UInt64, offset: Int, headerData: UInt64 = 0,
                          attempts: Int = 3) {
        do {
            let reply = Reply(bytes: bytes, client: client, matchBits: matchBits, offset: offset, headerData: headerData, attempts: attempts)
            let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: bytes), threshold: .count(1), eventQueue: replyEvents,
                                                    userInfo: reply))
            do {
                try lnet.put(md, to: client, portal: SelftestProtocol.replyPortal, matchBits: matchBits, offset: offset,
                             ackRequested: false, headerData: headerData)
            } catch {
                try? lnet.unlink(md)
                throw error
            }
        } catch {
            logger.warning("cannot send a self-test reply", metadata: ["client": "\(client)", "error": "\(error)"])
        }
    }

    fileprivate var hooks: TestHooks { configuration.testHooks }

    // MARK: - Sessions

    fileprivate final class Session: Sendable {
        let request: SessionRequest
        let client: ProcessID
        let memory: Int
        let buffer: LNetBuffer
        /// The pattern a verified write's bytes 8... must match.
        let expected: LNetBuffer?
        let startUsage = ResourceUsage.current()
        /// Verified writes are checked here, in order; the teardown reply goes out after them.
        let checks = DispatchQueue(label: "lnet.selftest.session")
        private let counters = Mutex<(operations: Int, bytes: Int, failures: Int)>((0, 0, 0))
        private let handles = Mutex<MEHandle?>(nil)
        private let server: SelftestServer

        init(server: SelftestServer, request: SessionRequest, client: ProcessID, memory: Int) throws(LNetError) {
            self.server = server
            self.request = request
            self.client = client
            self.memory = memory
            buffer = try LNetBuffer(count: request.size * request.concurrency)
            switch request.op {
            case .read:
                for slot in 0..<request.concurrency {
                    let region = UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[slot * request.size..<(slot + 1) * request.size])
                    SelftestPattern.fill(region, seed: SelftestPattern.readSeed(session: request.session, slot: slot))
                }
                expected = nil
            case .write, .ping:
                if request.verify {
                    let pattern = try LNetBuffer(count: request.size)
                    SelftestPattern.fill(pattern.bytes, seed: SelftestPattern.writeSeed(session: request.session))
                    expected = pattern
                } else {
                    expected = nil
                }
            }
        }

        /// Verified writes up to this size are checked on the thread that delivered their event.
        static let inlineCheckLimit = 64 << 10

        var operations: Int { counters.withLock { $0.operations } }
        var bytes: Int { counters.withLock { $0.bytes } }
        var failures: Int { counters.withLock { $0.failures } }

        func attach() throws(LNetError) {
            let verifyWrites = request.op == .write && request.verify
            let queue = EventQueue(label: "lst-session", delivery: .inline { [self] event in
                guard event.kind == .put || event.kind == .get else { return }
                if event.status.isOK {
                    counters.withLock {
                        $0.operations += 1
                        $0.bytes += event.matchedLength
                    }
                }
                if verifyWrites, event.kind == .put {
                    // A small write is checked where it landed (a hand-off would cost more than the check); a large
                    // one on the session's queue, so a long check never holds up the thread that delivers events.
                    if event.matchedLength <= Self.inlineCheckLimit {
                        check(event)
                    } else {
                        checks.async { [self] in check(event) }
                    }
                }
            })
            let options: MemoryDescriptor.Options = request.op == .read ? [.get, .manageRemote] : [.put, .manageRemote]
            let attached = try server.lnet.attach(
                MatchEntry(portal: SelftestProtocol.dataPortal,
                           matchBits: SelftestProtocol.matchBits(.data, session: request.session),
                           source: client, unlink: .retain),
                descriptor: MemoryDescriptor(buffer: buffer, threshold: .infinite, options: options, eventQueue: queue))
            handles.withLock { $0 = attached.me }
        }

        func detach() {
            if let me = handles.withLock({ handle -> MEHandle? in
                defer { handle = nil }
                return handle
            }) {
                try? server.lnet.unlink(me)
            }
        }

        /// Checks one landed write (the bytes that landed), zeroes them and sends the verdict.
        private func check(_ event: LNetEvent) {
            let size = request.size  // slot stride: the largest operation
            let slot = event.offset / size
            let sequence = event.headerData
            // The write's own length: with mixed sizes each write moves the start of its slot, of any length in
            // minSize...size; it must not have been cut short either.
            let length = event.matchedLength
            var status = VerdictStatus.ok
            var badOffset = 0
            if !event.status.isOK {
                status = .failed
            } else if event.offset % size != 0 || slot >= request.concurrency {
                status = .failed
                badOffset = event.offset
            } else if length != event.requestedLength || length < request.minSize || length > size {
                status = .lengthMismatch
                badOffset = length
            } else {
                let region = UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[event.offset..<event.offset + length])
                if server.hooks.corruptWrite?(sequence) == true {
                    region[length / 2] ^= 0x5A
                }
                if SelftestPattern.readStamp(UnsafeRawBufferPointer(region)) != SelftestPattern.truncatedSequence(sequence, size: length) {
                    status = .sequenceMismatch
                } else if length > 8, let expected,
                          let difference = SelftestPattern.firstDifference(UnsafeRawBufferPointer(rebasing: region[8...]),
                                                                           UnsafeRawBufferPointer(rebasing: expected.bytes[8..<length])) {
                    status = .patternMismatch
                    badOffset = difference + 8
                }
                region.initializeMemory(as: UInt8.self, repeating: 0)
            }
            if !event.status.isOK {
                // The PUT itself failed here (e.g. its connection died): an error, not bad data.
                server.logger.info("self-test write failed in transfer", metadata: [
                    "client": "\(client)", "session": "\(request.session)", "slot": "\(slot)", "sequence": "\(sequence)",
                    "status": "\(event.status)",
                ])
            } else if status != .ok {
                counters.withLock { $0.failures += 1 }
                server.logger.warning("self-test write failed verification", metadata: [
                    "client": "\(client)", "session": "\(request.session)", "slot": "\(slot)", "sequence": "\(sequence)",
                    "status": "\(status)", "offset": "\(badOffset)",
                ])
            }
            let verdict = Verdict(session: request.session, slot: slot, sequence: sequence, status: status,
                                  badOffset: UInt64(badOffset))
            server.send(verdict.encoded(), to: client,
                        matchBits: SelftestProtocol.matchBits(.verdict, session: request.session),
                        offset: min(slot, request.concurrency - 1) * SelftestProtocol.verdictSize, headerData: sequence)
        }
    }
}
