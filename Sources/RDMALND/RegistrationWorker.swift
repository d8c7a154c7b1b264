import DequeModule
import LNet
import Synchronization
import Verbs

/// The registration thread (`o2ib-reg`): registers memory that would hold up a scheduler thread.
///
/// A scheduler thread serves every connection placed on it, so a registration it makes (an incoming PUT's sink,
/// a GET's source) delays all of them for as long as the registration takes: on rxe, pinning and mapping a
/// large buffer takes tens to hundreds of milliseconds. Registrations of at least `LND_REGISTRATION_OFFLOAD`
/// bytes that the cache cannot answer come here instead; the transfer goes on, on its connection's scheduler
/// thread, once the grant is ready (``Connection/withGrant(_:access:_:)``). One thread, jobs in the order given.
///
/// Every job runs exactly once: on the thread, or - once the worker is stopping - on the thread that stops it
/// or submits it. A job for a connection that closed meanwhile does not register; it hands the connection
/// an error so the message it carries is finalized (once, by the connection).
final class RegistrationWorker: @unchecked Sendable {
    typealias Job = @Sendable () -> Void

    private struct Queue {
        var jobs: Deque<Job> = []
        var stopped = false
    }

    private let thread: ServiceThread
    private let queue = Mutex(Queue())

    init() throws(LNetError) {
        thread = try ServiceThread(name: "o2ib-reg")
    }

    func start() throws(LNetError) {
        try thread.start { [self] thread in
            while thread.isRunning {
                runQueued()
                thread.sleep()
            }
        }
    }

    /// Runs `job` on the registration thread (or here, once the worker is stopping).
    func submit(_ job: @escaping Job) {
        let inline = queue.withLock { queue -> Bool in
            if queue.stopped { return true }
            queue.jobs.append(job)
            return false
        }
        if inline { job() } else { thread.wake() }
    }

    /// Jobs waiting to run (for lnetctl and tests).
    var queuedCount: Int { queue.withLock { $0.jobs.count } }

    private func runQueued() {
        while let job = queue.withLock({ $0.jobs.popFirst() }) { job() }
    }

    /// Stops the thread (after the job it is running) and runs the jobs still queued on the caller's thread; jobs
    /// submitted afterwards run on the thread that submits them.
    func stop() {
        thread.stop()
        while true {
            let jobs = queue.withLock { queue -> Deque<Job> in
                if queue.jobs.isEmpty { queue.stopped = true }
                defer { queue.jobs.removeAll() }
                return queue.jobs
            }
            if jobs.isEmpty { return }
            for job in jobs { job() }
        }
    }
}
