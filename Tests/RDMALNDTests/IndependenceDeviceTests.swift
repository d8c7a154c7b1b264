import Foundation
import LNet
import Synchronization
import Testing
import Verbs
@testable import RDMALND

/// Order and independence over o2ib (seed 003): a connection that cannot make progress does not delay another
/// peer on the same scheduler thread.
///
/// Node S (192.0.2.1) runs one scheduler thread (`LND_SCHEDULERS=1`), so every connection it has is served by
/// that thread. Peer P (192.0.2.2, a normal LND node) pings S back to back (8-byte GETs: a GET_REQ and a REPLY,
/// both handled by S's scheduler thread) from the start to the end of the test; a raw peer R (192.0.2.3, hand-
/// driven verbs) loads S in two steps:
/// - **stuck**: R completed the handshake, then stops reposting receives. S sends R more eager PUTs than R gave
///   it credits (the rest queue for credits that never come), and R asks for more REPLYs (control messages, no
///   credit) than it has receive buffers left: S's queue pair toward R is stuck in receiver-not-ready retries
///   (R's connection request asks for retries forever, so it never fails), with sends posted and messages queued
///   behind them.
/// - **registering**: R, still stuck, sends push PUT_REQs that match large sink MDs of fresh memory (anonymous
///   memory never touched, as a large malloc gives): each needs a registration with remote write, which on rxe
///   also brings the pages into being: alone in the VM 256 MiB took 0.22 s and 1 GiB 0.95 s, where memory already
///   touched took 6 and 29 ms; more in the test, with the pings running (measured there and printed). S's
///   scheduler thread matches them; the registrations must not hold it up.
///
/// The bound, and why: under load P's pings may slow down somewhat (the VM has 2 CPUs, shared with the rest of
/// the machine, and the registration thread's page zeroing and rxe's retries take CPU time: loaded p99 went up to
/// 25 ms against an unloaded 4.5 ms, and to 33 ms against 24 ms), but no ping may wait for a registration or
/// for R. A ping answered by a scheduler thread that registers inline waits for the whole registration: with one
/// ping in flight at a time, each registration shows up as one ping about as long as the registration, so the
/// measure is the slowest ping (p99 is printed and bounded too, but a few stalls among hundreds of pings need not
/// move it). The baseline is the larger p99 of two phases without registrations, one before the loaded phases
/// and one after them ("settled"), so load from outside that starts in between moves the bound with the pings
/// (one run of 20 failed so when the bound came from the first phase alone: every ping slowed, none stalled).
/// Bound, in each loaded phase: the slowest ping at most max(5 x the baseline p99, 100 ms), p99 at most
/// max(5 x the baseline p99, 50 ms); and one registration (timed before and after the phases, the longer
/// counts) must take at least twice the bound for the slowest ping, so that a scheduler thread that registered
/// inline could not pass (with `LND_REGISTRATION_OFFLOAD=0` S registers inline, and the test fails).
@Suite(.requiresDevice, .serialized) struct IndependenceDeviceTests {
    /// Bytes of each sink MD R PUTs into, and how many (each stays registered until R's connection closes).
    static let sinkSize = 512 << 20
    static let sinks = 2

    @Test func stuckPeerAndSlowRegistrationDoNotDelayAnotherPeersPings() async throws {
        var tunables = LNDTunables()
        tunables.servicePort = LNDTestDevice.port()
        tunables.schedulers = 1
        // Nothing may time out while R is stuck: the test keeps it stuck for its whole length.
        tunables.timeout = 120
        // The sinks: fresh anonymous memory (as a large malloc gives), whose pages do not exist until first
        // touched - here, by the registration that pins them when R's PUT_REQ matches. Unmapped last (declared
        // before S: S has let go of them by then).
        let sinkMaps = try (0..<Self.sinks).map { _ in try FreshMemory(count: Self.sinkSize) }
        defer { withExtendedLifetime(sinkMaps) {} }
        let s = try LNDNode(address: LNDTestDevice.serverAddress, tunables: tunables)
        defer { s.shutdown() }
        let p = try LNDNode(address: LNDTestDevice.clientAddress, tunables: tunables)
        defer { p.shutdown() }
        let started = ContinuousClock.now

        // S's memory: the ping MD, an MD for R's GETs, and the large sink MDs (the fresh memory above).
        _ = try s.lnet.attach(MatchEntry(portal: 90, matchBits: 1, unlink: .retain),
                              descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 64)), threshold: .infinite,
                                                           options: [.get, .manageRemote]))
        _ = try s.lnet.attach(MatchEntry(portal: 91, matchBits: 1, unlink: .retain),
                              descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 64)), threshold: .infinite,
                                                           options: [.get, .manageRemote]))
        let sinkEvents = EventQueue(capacity: 64)
        for (index, map) in sinkMaps.enumerated() {
            _ = try s.lnet.attach(MatchEntry(portal: 92, matchBits: UInt64(index)),
                                  descriptor: MemoryDescriptor(storage: .unsafeFragments([map.bytes]), options: [.put], eventQueue: sinkEvents))
        }

        // P pings S from here to the end; each sample keeps when it started.
        let recorder = PingRecorder()
        let pinger = Task { try await recorder.run(from: p, to: s.id, portal: 90) }
        defer { pinger.cancel() }
        #expect(await eventually(timeout: .seconds(30)) { recorder.count >= 50 }, "P's pings do not come back")

        // R asks for retries forever: S's queue pair toward it stays stuck, and does not fail.
        let raw = try RawPeer(address: MalformedMessageDeviceTests.rawAddress, victim: s, retryCount: 7, rnrRetryCount: 7)
        // How long one registration of a sink takes here (in R's protection domain, memory of the same size got
        // the same way), and of the same amount of memory already touched, while only P's pings run.
        let registration = try FreshMemory(count: Self.sinkSize).timeRegistration(in: raw.protectionDomain)
        let resident = try FreshMemory(count: Self.sinkSize, touched: true).timeRegistration(in: raw.protectionDomain)
        try await Task.sleep(for: .milliseconds(200))

        // Unloaded.
        let unloaded = try await recorder.phase("unloaded", for: .seconds(3))

        // Stuck: S's eager PUTs to R beyond its 8 credits, and R's GETs whose REPLYs overrun its receive buffers.
        let rnrBefore = Self.rxeCounter(s, "rcvd_rnr_err")
        let rawTarget = ProcessID(nid: raw.nid, pid: 1)
        for sequence in 0..<32 {
            let md = try s.lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 8)))
            try s.lnet.put(md, to: rawTarget, portal: 1, matchBits: 1, ackRequested: false, headerData: UInt64(sequence))
        }
        for cookie in 0..<24 {
            try raw.send(.getRequest(lnet: raw.lnetHeader(.get, portal: 91, matchBits: 1, length: 8), cookie: UInt64(100 + cookie),
                                     sink: RDMADescriptor()))
        }
        let stuckReached = await eventually(timeout: .seconds(10)) {
            guard let connection = s.lnd.connections.first(where: { $0.peer == raw.nid }) else { return false }
            return connection.credits == 0 && connection.queuedEager > 0 && connection.posted > 0
        }
        try await Task.sleep(for: .milliseconds(500))
        let rawConnection = s.lnd.connections.first { $0.peer == raw.nid }
        #expect(stuckReached, "S's connection to R did not get stuck: \(String(describing: rawConnection))")
        let stuck = try await recorder.phase("stuck", for: .seconds(3))
        let rnrAfter = Self.rxeCounter(s, "rcvd_rnr_err")

        // Registering: R's push PUT_REQs into the fresh sinks, one every 800 ms, while R stays stuck.
        let offloadedBefore = s.lnd.counters?.registrationsOffloaded ?? 0
        recorder.begin("registering")
        for index in 0..<Self.sinks {
            try raw.send(.putRequest(lnet: raw.lnetHeader(.put, portal: 92, matchBits: UInt64(index), length: 0, payload: Self.sinkSize),
                                     cookie: UInt64(200 + index), source: RDMADescriptor()))
            try await Task.sleep(for: .milliseconds(800))
        }
        // Each sink, once registered, is an open transaction on R's connection (its PUT_ACK stuck behind the REPLYs).
        let registered = await eventually(timeout: .seconds(30)) {
            (s.lnd.connections.first { $0.peer == raw.nid }?.transactions ?? 0) >= Self.sinks
        }
        try await Task.sleep(for: .milliseconds(600))
        let loaded = await recorder.end()
        let offloaded = (s.lnd.counters?.registrationsOffloaded ?? 0) - offloadedBefore
        let finalConnection = s.lnd.connections.first { $0.peer == raw.nid }

        // Settled: the same machine after the loaded phases (R still stuck, the registrations done), and one more
        // timed registration. Load from outside the VM that starts after the unloaded phase (a build beside it)
        // slows every ping and every registration alike; it shows here, so the bound follows it, where a bound
        // taken from the unloaded phase alone failed a run whose pings all slowed together.
        let settled = try await recorder.phase("settled", for: .seconds(3))
        let registrationAfter = try FreshMemory(count: Self.sinkSize).timeRegistration(in: raw.protectionDomain)

        // The bound.
        let baseline = max(unloaded.p99, settled.p99)
        let slowestBound = max(baseline * 5, .milliseconds(100))
        let p99Bound = max(baseline * 5, .milliseconds(50))
        let stall = max(registration.register, registrationAfter.register)
        print("""
            independence: registering \(Self.sinkSize >> 20) MiB of fresh memory took \(PingPhase.ms(registration.register)) \
            before the phases and \(PingPhase.ms(registrationAfter.register)) after them \
            (deregistering \(PingPhase.ms(registration.deregister))); of touched memory \(PingPhase.ms(resident.register)) \
            (\(PingPhase.ms(resident.deregister)))
              \(unloaded)
              \(stuck)  (R stuck: rcvd_rnr_err \(rnrBefore.map(String.init) ?? "-") -> \(rnrAfter.map(String.init) ?? "-"), \
            connection \(rawConnection.map { "credits \($0.credits), queued eager \($0.queuedEager), posted \($0.posted)" } ?? "-"))
              \(loaded)  (\(Self.sinks) sinks of \(Self.sinkSize >> 20) MiB registered, \(offloaded) on the registration thread; \
            R's connection then: \(finalConnection.map { "\($0.phase), transactions \($0.transactions), posted \($0.posted)" } ?? "-"))
              \(settled)
              bound (from the larger baseline p99, \(PingPhase.ms(baseline))): slowest ping <= \(slowestBound), \
            p99 <= \(p99Bound); test took \(ContinuousClock.now - started)
            """)
        #expect(registered, "S did not register the \(Self.sinks) sinks")
        #expect(offloaded == Self.sinks, "\(offloaded) of \(Self.sinks) registrations ran on the registration thread")
        #expect(stall >= slowestBound * 2, "one registration (\(stall)) is too quick for this test to tell a stall")
        #expect(finalConnection?.phase == "established", "R's connection did not stay up, stuck")
        if let rnrBefore, let rnrAfter { #expect(rnrAfter > rnrBefore, "S's sends to R met no receiver-not-ready") }
        for phase in [stuck, loaded] {
            #expect(phase.count >= 100, "\(phase.name): only \(phase.count) pings")
            #expect(phase.slowest <= slowestBound, "\(phase.name): the slowest ping took \(phase.slowest), bound \(slowestBound)")
            #expect(phase.p99 <= p99Bound, "\(phase.name): p99 \(phase.p99), bound \(p99Bound)")
        }
        #expect(recorder.failures == 0, "\(recorder.failures) pings failed")

        recorder.stop()
        _ = try? await pinger.value
        try? raw.id.disconnect()
        #expect(await eventually(timeout: .seconds(30)) { !s.lnd.connections.contains { $0.peer == raw.nid } })
    }

    /// An rxe hardware counter of S's device (nil where there is none).
    static func rxeCounter(_ node: LNDNode, _ name: String) -> Int? {
        guard let device = node.lnd.deviceName,
              let text = try? String(contentsOfFile: "/sys/class/infiniband/\(device)/ports/1/hw_counters/\(name)", encoding: .utf8)
        else { return nil }
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// Anonymous memory mapped for the test, unmapped when it goes; `touched`: every page written once (else the
/// pages come into being when first touched, e.g. by a registration pinning them).
final class FreshMemory: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer

    init(count: Int, touched: Bool = false) throws {
        guard let base = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), base != MAP_FAILED else {
            throw RawPeerError("mmap of \(count) bytes failed")
        }
        bytes = UnsafeMutableRawBufferPointer(start: base, count: count)
        if touched { memset(base, 0, count) }
    }

    deinit { munmap(bytes.baseAddress, bytes.count) }

    /// How long registering the memory (local and remote write) and deregistering it take.
    func timeRegistration(in protectionDomain: ProtectionDomain) throws -> (register: Duration, deregister: Duration) {
        let start = ContinuousClock.now
        var region: MemoryRegion? = try MemoryRegion(protectionDomain: protectionDomain, bytes: bytes, access: [.localWrite, .remoteWrite])
        let registered = ContinuousClock.now
        _ = region
        region = nil
        return (registered - start, ContinuousClock.now - registered)
    }
}

/// Ping latencies by phase.
struct PingPhase: CustomStringConvertible {
    let name: String
    let samples: [Duration]

    var count: Int { samples.count }
    func percentile(_ q: Double) -> Duration {
        guard !samples.isEmpty else { return .zero }
        let sorted = samples.sorted()
        return sorted[min(sorted.count - 1, Int((Double(sorted.count) * q).rounded(.up)) - 1)]
    }
    var p50: Duration { percentile(0.5) }
    var p99: Duration { percentile(0.99) }
    var slowest: Duration { samples.max() ?? .zero }

    static func ms(_ duration: Duration) -> String {
        let value = Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
        return String(format: "%.2f ms", value)
    }

    var description: String {
        "\(name): \(count) pings, p50 \(Self.ms(p50)), p99 \(Self.ms(p99)), slowest \(Self.ms(slowest))"
    }
}

/// P's pinger: one 8-byte GET at a time, each timed; a phase is the pings that started within it.
final class PingRecorder: Sendable {
    private struct State {
        var total = 0
        var failures = 0
        var current: (name: String, samples: [Duration])?
    }

    private let state = Mutex(State())
    private let stopped = Atomic<Bool>(false)

    var count: Int { state.withLock { $0.total } }
    var failures: Int { state.withLock { $0.failures } }

    func run(from node: LNDNode, to target: ProcessID, portal: UInt32) async throws {
        let sink = try LNetBuffer(count: 8)
        while !stopped.load(ordering: .relaxed), !Task.isCancelled {
            let phase = state.withLock { $0.current?.name }
            let start = ContinuousClock.now
            let ok: Bool
            do {
                _ = try await node.lnet.get(into: .buffer(sink), from: target, portal: portal, matchBits: 1, deadline: start + .seconds(30))
                ok = true
            } catch {
                ok = false
            }
            let took = ContinuousClock.now - start
            state.withLock { state in
                state.total += 1
                if !ok { state.failures += 1 }
                if let phase, state.current?.name == phase { state.current?.samples.append(took) }
            }
        }
    }

    func begin(_ name: String) {
        state.withLock { $0.current = (name, []) }
    }

    /// The phase begun last (a ping that started in it counts, however long it took, once it is back).
    func end() async -> PingPhase {
        // The ping in flight belongs to the phase: wait for it (at most a few seconds).
        let before = count
        _ = await eventually(timeout: .seconds(5)) { count != before }
        return state.withLock { state in
            defer { state.current = nil }
            return PingPhase(name: state.current?.name ?? "-", samples: state.current?.samples ?? [])
        }
    }

    func phase(_ name: String, for duration: Duration) async throws -> PingPhase {
        begin(name)
        try await Task.sleep(for: duration)
        return await end()
    }

    func stop() { stopped.store(true, ordering: .relaxed) }
}
