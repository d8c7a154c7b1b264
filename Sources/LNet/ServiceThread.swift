#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A dedicated OS thread (for service loops that block, which must not run on the Swift concurrency pool).
final class ServiceThread: @unchecked Sendable {
    private final class Body {
        let name: String
        let run: @Sendable () -> Void
        init(name: String, run: @escaping @Sendable () -> Void) {
            self.name = name
            self.run = run
        }
    }

    private let thread: pthread_t

    init(name: String, _ run: @escaping @Sendable () -> Void) throws(LNetError) {
        let body = Unmanaged.passRetained(Body(name: name, run: run)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            let body = Unmanaged<Body>.fromOpaque(argument).takeRetainedValue()
            body.run()
            return nil
        }, body)
        guard result == 0 else {
            Unmanaged<Body>.fromOpaque(body).release()
            throw LNetError.invalidArgument("pthread_create failed with error \(result)")
        }
        self.thread = thread
    }

    /// Whether the calling thread is this thread.
    var isCurrent: Bool { pthread_equal(thread, pthread_self()) != 0 }

    /// Waits for the thread to end (no-op when called from the thread itself).
    func join() {
        guard !isCurrent else { return }
        pthread_join(thread, nil)
    }
}
