import CSystemShims
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One named pthread that runs a service loop until stopped, in the shape of swift-subprocess's Linux I/O
/// thread: it sleeps in ppoll(2) on the descriptors it serves and an eventfd, ``wake()`` writes the eventfd, and
/// ``stop()`` joins the thread.
///
/// Every thread of the stack that blocks is one of these: the RDMA LND's scheduler, rdma_cm and registration
/// threads, the queuelet service threads and their deadline ticker, the control socket server. None of them runs
/// on the Swift concurrency pool or on Dispatch.
///
/// A wake-up costs a system call only when the thread is asleep: ``wake()`` on a running thread just leaves a flag
/// that its next sleep sees. The thread applies its name (seen in `top -H`, `perf`, gdb) and binds itself to its
/// CPUs (when given any) before its body starts.
package final class ServiceThread: @unchecked Sendable {
    package let name: String
    /// The CPUs the thread is bound to (empty: not bound).
    package let cpus: [Int]
    private let eventFD: Int32
    private let running = Atomic<Bool>(true)
    private let sleeping = Atomic<Bool>(false)
    private let wakePending = Atomic<Bool>(false)
    private let handle = Mutex<pthread_t?>(nil)
    /// The thread's pthread id once it runs (0 before), for `isCurrent`.
    private let threadID = Atomic<UInt>(0)
    /// Where the binding to `cpus` ended up: the CPUs the thread may run on, read back after binding.
    private let boundCPUs = Mutex<[Int]>([])

    /// The CPU partition the thread serves (``CPUPartitionTable/servedByCurrentThread`` on it), if any.
    package let partition: Int?

    /// Makes the thread's eventfd; ``start(_:)`` starts it.
    package init(name: String, cpus: [Int] = [], partition: Int? = nil) throws(LNetError) {
        self.partition = partition
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else { throw LNetError.systemCallFailed(call: "eventfd", errno: errno, detail: name) }
        self.name = name
        self.cpus = cpus
        self.eventFD = fd
    }

    deinit {
        close(eventFD)
    }

    /// Whether ``stop()`` has not been called yet.
    package var isRunning: Bool { running.load(ordering: .acquiring) }

    /// Whether the caller runs on this thread.
    package var isCurrent: Bool {
        let id = threadID.load(ordering: .acquiring)
        return id != 0 && pthread_equal(pthread_self(), pthread_t(id)) != 0
    }

    /// Whether ``wake()`` was called since the thread last slept (a busy loop checks this instead of sleeping).
    package var wakeRequested: Bool { wakePending.load(ordering: .relaxed) }

    /// The CPUs the thread may run on, as the kernel reports them after binding (empty before it started).
    package var affinity: [Int] { boundCPUs.withLock { $0 } }

    /// Starts the thread: it names and binds itself, then runs `body` (which loops while ``isRunning``, calling
    /// a `sleep`), then exits.
    package func start(_ body: @escaping @Sendable (ServiceThread) -> Void) throws(LNetError) {
        let box = Unmanaged.passRetained(ThreadStart(thread: self, body: body))
        var id = pthread_t()
        let rc = pthread_create(&id, nil, { argument in
            let start = Unmanaged<ThreadStart>.fromOpaque(argument!).takeRetainedValue()
            start.thread.run(start.body)
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw LNetError.systemCallFailed(call: "pthread_create", errno: rc, detail: name)
        }
        handle.withLock { $0 = id }
    }

    private func run(_ body: @Sendable (ServiceThread) -> Void) {
        threadID.store(UInt(pthread_self()), ordering: .releasing)
        _ = name.withCString { CSystemShims_name_current_thread($0) }
        if !cpus.isEmpty {
            _ = cpus.map(Int32.init).withUnsafeBufferPointer { CSystemShims_bind_current_thread($0.baseAddress, Int32($0.count)) }
        }
        var current = [Int32](repeating: 0, count: 1024)
        let n = current.withUnsafeMutableBufferPointer { CSystemShims_current_thread_cpus($0.baseAddress, Int32($0.count)) }
        boundCPUs.withLock { $0 = n > 0 ? current.prefix(Int(n)).map(Int.init) : [] }
        if let partition { CPUPartitionTable.setServedByCurrentThread(partition) }
        body(self)
    }

    /// Sleeps until `descriptor` is readable, ``wake()`` is called, or `timeoutNanoseconds` pass (negative: no
    /// limit). Returns at once if ``wake()`` was called since the last sleep, or the thread is stopping. Returns
    /// whether `descriptor` is readable (as far as this sleep saw).
    @discardableResult
    package func sleep(watching descriptor: Int32? = nil, timeoutNanoseconds: Int64 = -1) -> Bool {
        guard enterSleep() else { return false }
        var fds = (pollfd(fd: eventFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: descriptor ?? -1, events: Int16(POLLIN), revents: 0))
        _ = withUnsafeMutableBytes(of: &fds) { raw in
            CSystemShims_poll(raw.baseAddress!.assumingMemoryBound(to: pollfd.self), descriptor == nil ? 1 : 2, timeoutNanoseconds)
        }
        leaveSleep(woken: fds.0.revents != 0)
        return descriptor != nil && fds.1.revents != 0
    }

    /// ``sleep(watching:timeoutNanoseconds:)`` with the timeout as a duration (`nil`: no limit).
    @discardableResult
    package func sleep(watching descriptor: Int32? = nil, timeout: Duration?) -> Bool {
        sleep(watching: descriptor, timeoutNanoseconds: timeout.map { max(0, $0.inNanoseconds) } ?? -1)
    }

    /// Sleeps until one of `descriptors` has an event it asks for, ``wake()`` is called, or `timeout` passes
    /// (`nil`: no limit), as ``sleep(watching:timeoutNanoseconds:)`` does; their `revents` say which. Returns
    /// how many of them have an event (0 when woken or timed out: check ``isRunning``), or -1 with `errno` set
    /// when ppoll failed.
    @discardableResult
    package func sleep(polling descriptors: inout [pollfd], timeout: Duration?) -> Int32 {
        for index in descriptors.indices { descriptors[index].revents = 0 }
        guard enterSleep() else { return 0 }
        descriptors.append(pollfd(fd: eventFD, events: Int16(POLLIN), revents: 0))
        let ready = descriptors.withUnsafeMutableBufferPointer { fds in
            CSystemShims_poll(fds.baseAddress, UInt(fds.count), timeout.map { max(0, $0.inNanoseconds) } ?? -1)
        }
        let failure = errno
        let wake = descriptors.removeLast()
        leaveSleep(woken: wake.revents != 0)
        guard ready >= 0 else {
            errno = failure
            return -1
        }
        return ready - (wake.revents != 0 ? 1 : 0)
    }

    /// Marks the thread asleep; false (and not asleep) when a wake-up is pending or the thread is stopping.
    private func enterSleep() -> Bool {
        sleeping.store(true, ordering: .sequentiallyConsistent)
        if wakePending.exchange(false, ordering: .sequentiallyConsistent) || !isRunning {
            sleeping.store(false, ordering: .sequentiallyConsistent)
            return false
        }
        return true
    }

    private func leaveSleep(woken: Bool) {
        sleeping.store(false, ordering: .sequentiallyConsistent)
        wakePending.store(false, ordering: .sequentiallyConsistent)
        if woken {
            var value: UInt64 = 0
            _ = read(eventFD, &value, 8)
        }
    }

    /// Wakes the thread if it is asleep, claiming that sleep: a second call before the thread runs again finds it
    /// awake and returns false (so a caller waking one of several threads, as a semaphore's signal would, moves
    /// on to another sleeper). Returns whether it woke the thread.
    package func wakeIfSleeping() -> Bool {
        guard sleeping.compareExchange(expected: true, desired: false, ordering: .sequentiallyConsistent).exchanged else {
            return false
        }
        wakePending.store(true, ordering: .sequentiallyConsistent)
        signal()
        return true
    }

    /// Makes the thread's current or next sleep return at once.
    package func wake() {
        wakePending.store(true, ordering: .sequentiallyConsistent)
        if sleeping.load(ordering: .sequentiallyConsistent) { signal() }
    }

    private func signal() {
        var one: UInt64 = 1
        _ = write(eventFD, &one, 8)
    }

    /// Stops the thread and joins it. Called on the thread itself (a handler that shuts the LND down), it only
    /// asks the loop to end and detaches the thread: it finishes when the handler returns, nothing waits for
    /// itself, and its resources go when it ends.
    package func stop() {
        running.store(false, ordering: .releasing)
        wakePending.store(true, ordering: .sequentiallyConsistent)
        signal()
        guard let id = handle.withLock({ handle -> pthread_t? in
            defer { handle = nil }
            return handle
        }) else { return }
        if isCurrent {
            pthread_detach(id)
        } else {
            pthread_join(id, nil)
        }
    }
}

private final class ThreadStart {
    let thread: ServiceThread
    let body: @Sendable (ServiceThread) -> Void
    init(thread: ServiceThread, body: @escaping @Sendable (ServiceThread) -> Void) {
        self.thread = thread
        self.body = body
    }
}

extension ServiceThread {
    /// The rdma_cm thread's shape: `body` after every wake-up (or readable `descriptor`), and at least every
    /// `interval`, until stopped; then `tearDown`.
    package func startLoop(watching descriptor: Int32, interval: Duration = .milliseconds(100), body: @escaping @Sendable () -> Void,
                           tearDown: @escaping @Sendable () -> Void = {}) throws(LNetError) {
        let nanoseconds = interval.inNanoseconds
        try start { thread in
            while thread.isRunning {
                body()
                thread.sleep(watching: descriptor, timeoutNanoseconds: nanoseconds)
            }
            tearDown()
        }
    }
}
