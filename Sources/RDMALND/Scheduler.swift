import Foundation
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
    private let wakePipe: WakePipe
    private let connections = Mutex<[ObjectIdentifier: Connection]>([:])
    private let running = Atomic<Bool>(true)
    private let finished = Mutex<Bool>(false)
    private let logger: Logger
    /// How long to keep polling after the last completion before going back to sleep.
    private let busyPollWindow: Duration

    init(index: Int, context: DeviceContext, logger: Logger, busyPollWindow: Duration = .microseconds(50)) throws(VerbsError) {
        self.index = index
        self.channel = try CompletionChannel(context: context)
        self.wakePipe = try WakePipe()
        var logger = logger
        logger[metadataKey: "scheduler"] = "\(index)"
        self.logger = logger
        self.busyPollWindow = busyPollWindow
    }

    func start(name: String) {
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.start()
    }

    func register(_ connection: Connection, queue: CompletionQueue) {
        connections.withLock { $0[ObjectIdentifier(queue)] = connection }
    }

    func closed(_ connection: Connection) {
        guard let queue = connection.resources?.completionQueue else { return }
        _ = connections.withLock { $0.removeValue(forKey: ObjectIdentifier(queue)) }
    }

    var connectionCount: Int { connections.withLock { $0.count } }

    func wake() {
        wakePipe.wake()
    }

    /// Stops the thread and waits for it to end.
    func stop() {
        running.store(false, ordering: .releasing)
        wake()
        let deadline = ContinuousClock.now + .seconds(10)
        while !finished.withLock({ $0 }) && ContinuousClock.now < deadline {
            Thread.sleep(forTimeInterval: 0.001)
        }
    }

    private func run() {
        defer { finished.withLock { $0 = true } }
        var lastTimers = ContinuousClock.now
        var fds = [pollfd(fd: channel.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wakePipe.readFD, events: Int16(POLLIN), revents: 0)]
        while running.load(ordering: .acquiring) {
            _ = poll(&fds, 2, 100)
            if fds[1].revents != 0 {
                wakePipe.drain()
            }
            var ready: [Connection] = []
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
    }

    /// Handles the CQs that fired: poll, re-arm, poll again (closing the race with a completion that arrived
    /// between the two), then keep polling for a short window while completions keep coming.
    private func serve(_ ready: [Connection]) {
        var active = ready
        var idleSince = ContinuousClock.now
        while !active.isEmpty {
            var anything = false
            for connection in active where connection.poll() > 0 { anything = true }
            let now = ContinuousClock.now
            if anything {
                idleSince = now
                continue
            }
            if now - idleSince < busyPollWindow { continue }
            // Quiet: re-arm, and catch anything that slipped in before arming.
            var again: [Connection] = []
            for connection in active {
                try? connection.resources?.completionQueue.requestNotification()
                if connection.poll() > 0 { again.append(connection) }
            }
            active = again
            idleSince = ContinuousClock.now
        }
    }
}
