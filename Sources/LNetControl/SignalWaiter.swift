import ArgumentParser
import Foundation
import LNet
import LNetSelftest
import Logging
import RDMALND
import Synchronization

/// Waits for SIGINT or SIGTERM (their default actions are turned off so the process can shut down cleanly).
final class SignalWaiter: @unchecked Sendable {
    private let queue = DispatchQueue(label: "lnetctl.signals")
    private var sources: [DispatchSourceSignal] = []
    private let state = Mutex<(received: Int32?, continuation: CheckedContinuation<Int32, Never>?)>((nil, nil))

    /// Starts listening now (so a signal during start-up is not lost).
    init(signals: [Int32] = [SIGINT, SIGTERM]) {
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [weak self] in
                let continuation = self?.state.withLock { state -> CheckedContinuation<Int32, Never>? in
                    if state.received == nil { state.received = number }
                    defer { state.continuation = nil }
                    return state.continuation
                }
                continuation?.resume(returning: number)
            }
            source.resume()
            sources.append(source)
        }
    }

    /// The first signal received (waits for one if none came yet).
    func wait() async -> Int32 {
        await withCheckedContinuation { continuation in
            let already = state.withLock { state -> Int32? in
                if let received = state.received { return received }
                state.continuation = continuation
                return nil
            }
            if let already { continuation.resume(returning: already) }
        }
    }

    deinit {
        for source in sources { source.cancel() }
    }
}
