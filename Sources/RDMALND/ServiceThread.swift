import Foundation
import Synchronization
import Verbs
#if canImport(Glibc)
import Glibc
#endif

/// A named thread that sleeps in poll(2) on one descriptor (a completion or rdma_cm channel) and a wake-up pipe,
/// and runs its body each time it wakes, or at least every `interval` milliseconds, until stopped.
///
/// The LND's scheduler threads and its rdma_cm thread are both of this shape.
final class ServiceThread: @unchecked Sendable {
    private let wakePipe: WakePipe
    private let running = Atomic<Bool>(true)
    private let finished = Mutex<Bool>(false)

    init() throws(VerbsError) {
        wakePipe = try WakePipe()
    }

    /// Starts the thread: `setUp` once, then `body` after every wake-up until `stop()`, then `tearDown`.
    func start(name: String, watching fd: Int32, interval: Int32 = 100, setUp: @escaping @Sendable () -> Void = {},
               body: @escaping @Sendable () -> Void, tearDown: @escaping @Sendable () -> Void = {}) {
        let thread = Thread { [self] in
            defer {
                tearDown()
                finished.withLock { $0 = true }
            }
            setUp()
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakePipe.readFD, events: Int16(POLLIN), revents: 0)]
            while running.load(ordering: .acquiring) {
                _ = poll(&fds, 2, interval)
                if fds[1].revents != 0 { wakePipe.drain() }
                body()
            }
        }
        thread.name = name
        thread.start()
    }

    /// Wakes the thread now (its body runs).
    func wake() {
        wakePipe.wake()
    }

    /// Stops the thread and waits (at most 10 s) for it to end.
    func stop() {
        running.store(false, ordering: .releasing)
        wake()
        let deadline = ContinuousClock.now + .seconds(10)
        while !finished.withLock({ $0 }) && ContinuousClock.now < deadline {
            Thread.sleep(forTimeInterval: 0.001)
        }
    }
}

/// A non-blocking pipe that wakes a thread sleeping in poll(2).
final class WakePipe: @unchecked Sendable {
    let readFD: Int32
    private let writeFD: Int32

    init() throws(VerbsError) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw VerbsError(call: "pipe", errno: errno) }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        readFD = fds[0]
        writeFD = fds[1]
    }

    deinit {
        close(readFD)
        close(writeFD)
    }

    func wake() {
        var byte: UInt8 = 1
        _ = write(writeFD, &byte, 1)
    }

    /// Empties the pipe after a wake-up.
    func drain() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(readFD, &buffer, buffer.count) > 0 {}
    }
}
