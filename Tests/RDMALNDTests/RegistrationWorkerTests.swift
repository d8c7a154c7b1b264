import Foundation
import Synchronization
import Testing
@testable import RDMALND

/// The registration thread runs every job exactly once: on its thread while it runs, on the stopping thread for
/// what is queued when it stops, and on the submitting thread afterwards (nothing is lost at shutdown).
@Suite struct RegistrationWorkerTests {
    @Test func everyJobRunsExactlyOnceAroundStop() async throws {
        let worker = try RegistrationWorker()
        try worker.start()
        let runs = Mutex<[Int: Int]>([:])
        let onWorker = Atomic<Int>(0)
        let gate = Mutex(false)
        // The first job holds the thread until released, so that the ones behind it are still queued at stop.
        worker.submit {
            while !gate.withLock({ $0 }) { Thread.sleep(forTimeInterval: 0.001) }
            runs.withLock { $0[0, default: 0] += 1 }
            _ = onWorker.add(1, ordering: .relaxed)
        }
        for index in 1...50 {
            worker.submit { runs.withLock { $0[index, default: 0] += 1 } }
        }
        let stopping = Thread { worker.stop() }
        stopping.start()
        try await Task.sleep(for: .milliseconds(50))
        gate.withLock { $0 = true }
        #expect(await eventually(timeout: .seconds(10)) { runs.withLock { $0.count } == 51 })
        // After stop, a job runs at once on the submitting thread.
        #expect(await eventually(timeout: .seconds(10)) { worker.queuedCount == 0 && stopping.isFinished })
        let here = Mutex(false)
        let caller = pthread_self()
        worker.submit { here.withLock { $0 = pthread_equal(pthread_self(), caller) != 0 } }
        #expect(here.withLock { $0 }, "a job submitted after stop runs inline")
        #expect(runs.withLock { $0.values.allSatisfy { $0 == 1 } }, "a job ran twice")
        #expect(onWorker.load(ordering: .relaxed) == 1)
    }
}
