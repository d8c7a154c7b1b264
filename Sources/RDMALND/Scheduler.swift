import Foundation
import LNet
import Logging
import Synchronization
import Verbs
#if canImport(Glibc)
import Glibc
#endif

/// One scheduler thread: it owns a completion channel; every connection placed on it (by the hash of its peer
/// NID) has its CQ on that channel. The thread sleeps in poll(2) on the channel (and an eventfd for wake-ups),
/// handles the CQs that fired, then busy-polls them for a bounded window before re-arming and sleeping again.
/// It also runs each connection's timers.
final class Scheduler: @unchecked Sendable {
    let index: Int
    let channel: CompletionChannel
    private let thread: ServiceThread
    private let connections = Mutex<[ObjectIdentifier: Connection]>([:])
    private let kicked = Mutex<[Connection]>([])
    private let logger: Logger
    /// When the connections' timers last ran (only the scheduler thread touches it).
    private var lastTimers = ContinuousClock.now
    /// How long to keep polling after the last completion before going back to sleep.
    private let busyPollWindow: Duration

    /// The CPU partition this scheduler serves (its thread is bound to that partition's CPUs).
    let partition: Int
    private let cpus: [Int]
    private let vectors: Int

    init(index: Int, context: DeviceContext, logger: Logger, partitions: CPUPartitionTable,
         busyPollWindow: Duration = .microseconds(50)) throws(VerbsError) {
        self.index = index
        self.partition = index % max(1, partitions.count)
        self.cpus = partitions.count > 0 ? partitions.cpus[partition] : []
        self.vectors = max(1, context.completionVectorCount)
        self.channel = try CompletionChannel(context: context)
        self.thread = try ServiceThread()
        var logger = logger
        logger[metadataKey: "scheduler"] = "\(index)"
        self.logger = logger
        self.busyPollWindow = busyPollWindow
    }

    func start(name: String) {
        thread.start(name: name, watching: channel.fileDescriptor, setUp: { [self] in bindToPartition() },
                     body: { [self] in serveOnce() })
    }

    func register(_ connection: Connection, queue: CompletionQueue) {
        connections.withLock { $0[ObjectIdentifier(queue)] = connection }
    }

    func closed(_ connection: Connection) {
        guard let queue = connection.resources?.completionQueue else { return }
        _ = connections.withLock { $0.removeValue(forKey: ObjectIdentifier(queue)) }
    }

    var connectionCount: Int { connections.withLock { $0.count } }

    /// Asks the thread to poll `connection` even without a completion event.
    func kick(_ connection: Connection) {
        kicked.withLock { $0.append(connection) }
        wake()
    }

    func wake() {
        thread.wake()
    }

    /// Stops the thread and waits for it to end.
    func stop() {
        thread.stop()
    }

    /// The completion vector for a peer's CQ: hashed from its NID, like the scheduler.
    func completionVector(for peer: NID) -> Int {
        Int(CPUPartitionTable.mix(peer.rawValue ^ 0x5EED) % UInt64(vectors))
    }

    /// Binds the calling thread to this partition's CPUs (best effort: a failure is logged, not fatal).
    private func bindToPartition() {
        guard !cpus.isEmpty else { return }
        var set = cpu_set_t()
        withUnsafeMutableBytes(of: &set) { bytes in
            for cpu in cpus where cpu / 8 < bytes.count { bytes[cpu / 8] |= UInt8(1 << (cpu % 8)) }
        }
        // glibc declares sched_setaffinity only under _GNU_SOURCE, which Swift's Glibc module does not see.
        typealias SetAffinity = @convention(c) (pid_t, Int, UnsafeRawPointer) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sched_setaffinity") else { return }
        let setAffinity = unsafeBitCast(symbol, to: SetAffinity.self)
        if withUnsafeBytes(of: &set, { setAffinity(0, $0.count, $0.baseAddress!) }) != 0 {
            logger.debug("cannot bind to CPUs \(cpus): errno \(errno)")
        }
    }

    /// One pass of the scheduler thread: the CQs that fired (or were kicked), then timers every 100 ms.
    private func serveOnce() {
        var ready = kicked.withLock { list -> [Connection] in
            defer { list.removeAll() }
            return list
        }
        do {
            while let queue = try channel.nextEvent() {
                if let connection = connections.withLock({ $0[ObjectIdentifier(queue)] }) { ready.append(connection) }
            }
        } catch {
            logger.error("completion channel failed: \(error)")
        }
        if !ready.isEmpty { serve(ready) }
        let now = ContinuousClock.now
        if now - lastTimers > .milliseconds(100) {
            lastTimers = now
            for connection in connections.withLock({ Array($0.values) }) { connection.checkTimers(now: now) }
        }
    }

    /// Handles the CQs that fired: poll, and keep polling for a short window while completions keep coming
    /// (bounded, so one busy peer cannot keep the thread from its channel, wake-ups and timers), then re-arm
    /// and poll once more to catch a completion that slipped in before arming.
    private func serve(_ ready: [Connection]) {
        let started = ContinuousClock.now
        var idleSince = started
        while ContinuousClock.now - started < .milliseconds(2) {
            var anything = false
            for connection in ready where connection.poll() > 0 { anything = true }
            let now = ContinuousClock.now
            if anything {
                idleSince = now
            } else if now - idleSince >= busyPollWindow {
                break
            }
        }
        for connection in ready {
            try? connection.resources?.completionQueue.requestNotification()
            connection.poll()
        }
    }
}
