import CShims
import Synchronization
import Verbs
#if canImport(Glibc)
import Glibc
#endif

/// One named pthread that runs a service loop until stopped, in the shape of swift-subprocess's Linux I/O
/// thread: it sleeps in poll(2) on the descriptor it serves and an eventfd, `wake()` writes the eventfd, and
/// `stop()` joins the thread.
///
/// A wake-up costs a system call only when the thread is asleep: `wake()` on a running thread just leaves a flag
/// that its next `sleep` sees. The thread applies its name (seen in `top -H`, `perf`, gdb) and binds itself to
/// its CPUs (when given any) before the loop starts. The LND's scheduler threads and its rdma_cm thread are of
/// this kind.
final class ServiceThread: @unchecked Sendable {
    let name: String
    /// The CPUs the thread is bound to (empty: not bound).
    let cpus: [Int]
    private let eventFD: Int32
    private let running = Atomic<Bool>(true)
    private let sleeping = Atomic<Bool>(false)
    private let wakePending = Atomic<Bool>(false)
    private let handle = Mutex<pthread_t?>(nil)
    /// The thread's pthread id once it runs (0 before), for `isCurrent`.
    private let threadID = Atomic<UInt>(0)
    /// Where the binding to `cpus` ended up: the CPUs the thread may run on, read back after binding.
    private let boundCPUs = Mutex<[Int]>([])

    init(name: String, cpus: [Int] = []) throws(VerbsError) {
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else { throw VerbsError(call: "eventfd", errno: errno, detail: name) }
        self.name = name
        self.cpus = cpus
        self.eventFD = fd
    }

    deinit {
        close(eventFD)
    }

    /// Whether `stop()` has not been called yet.
    var isRunning: Bool { running.load(ordering: .acquiring) }

    /// Whether the caller runs on this thread.
    var isCurrent: Bool {
        let id = threadID.load(ordering: .acquiring)
        return id != 0 && pthread_equal(pthread_self(), pthread_t(id)) != 0
    }

    /// Whether `wake()` was called since the thread last slept (a busy loop checks this instead of sleeping).
    var wakeRequested: Bool { wakePending.load(ordering: .relaxed) }

    /// The CPUs the thread may run on, as the kernel reports them after binding (empty before it started).
    var affinity: [Int] { boundCPUs.withLock { $0 } }

    /// Starts the thread: it names and binds itself, then runs `body` (which loops while `isRunning`, calling
    /// `sleep`), then exits.
    func start(_ body: @escaping @Sendable (ServiceThread) -> Void) throws(VerbsError) {
        let box = Unmanaged.passRetained(ThreadStart(thread: self, body: body))
        var id = pthread_t()
        let rc = pthread_create(&id, nil, { argument in
            let start = Unmanaged<ThreadStart>.fromOpaque(argument!).takeRetainedValue()
            start.thread.run(start.body)
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw VerbsError(call: "pthread_create", errno: rc, detail: name)
        }
        handle.withLock { $0 = id }
    }

    private func run(_ body: @Sendable (ServiceThread) -> Void) {
        threadID.store(UInt(pthread_self()), ordering: .releasing)
        _ = name.withCString { CShims_name_current_thread($0) }
        if !cpus.isEmpty {
            _ = cpus.map(Int32.init).withUnsafeBufferPointer { CShims_bind_current_thread($0.baseAddress, Int32($0.count)) }
        }
        var current = [Int32](repeating: 0, count: 1024)
        let n = current.withUnsafeMutableBufferPointer { CShims_current_thread_cpus($0.baseAddress, Int32($0.count)) }
        boundCPUs.withLock { $0 = n > 0 ? current.prefix(Int(n)).map(Int.init) : [] }
        body(self)
    }

    /// Sleeps until `descriptor` is readable, `wake()` is called, or `timeoutMilliseconds` pass (-1: no limit).
    /// Returns at once if `wake()` was called since the last sleep. Returns whether `descriptor` is readable (as
    /// far as this sleep saw).
    @discardableResult
    func sleep(watching descriptor: Int32?, timeoutMilliseconds: Int32) -> Bool {
        sleeping.store(true, ordering: .sequentiallyConsistent)
        if wakePending.exchange(false, ordering: .sequentiallyConsistent) || !isRunning {
            sleeping.store(false, ordering: .sequentiallyConsistent)
            return false
        }
        var fds = (pollfd(fd: eventFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: descriptor ?? -1, events: Int16(POLLIN), revents: 0))
        _ = withUnsafeMutableBytes(of: &fds) { raw in
            poll(raw.baseAddress!.assumingMemoryBound(to: pollfd.self), descriptor == nil ? 1 : 2, timeoutMilliseconds)
        }
        sleeping.store(false, ordering: .sequentiallyConsistent)
        wakePending.store(false, ordering: .sequentiallyConsistent)
        if fds.0.revents != 0 {
            var value: UInt64 = 0
            _ = read(eventFD, &value, 8)
        }
        return descriptor != nil && fds.1.revents != 0
    }

    /// Makes the thread's current or next `sleep` return at once.
    func wake() {
        wakePending.store(true, ordering: .sequentiallyConsistent)
        if sleeping.load(ordering: .sequentiallyConsistent) { signal() }
    }

    private func signal() {
        var one: UInt64 = 1
        _ = write(eventFD, &one, 8)
    }

    /// Stops the thread and joins it. Called on the thread itself (a handler that shuts the LND down), it only
    /// asks the loop to end: the thread finishes when the handler returns, and nothing waits for itself.
    func stop() {
        running.store(false, ordering: .releasing)
        wakePending.store(true, ordering: .sequentiallyConsistent)
        signal()
        guard !isCurrent, let id = handle.withLock({ handle -> pthread_t? in
            defer { handle = nil }
            return handle
        }) else { return }
        pthread_join(id, nil)
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
    /// `interval` milliseconds, until stopped; then `tearDown`.
    func startLoop(watching descriptor: Int32, interval: Int32 = 100, body: @escaping @Sendable () -> Void,
                   tearDown: @escaping @Sendable () -> Void = {}) throws(VerbsError) {
        try start { thread in
            while thread.isRunning {
                body()
                thread.sleep(watching: descriptor, timeoutMilliseconds: interval)
            }
            tearDown()
        }
    }
}
