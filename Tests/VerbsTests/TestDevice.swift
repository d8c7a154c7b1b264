import DeviceTestSupport
import Foundation
import Testing
import Verbs

/// Which RDMA device the device tests use (whether they run: ``TestBed``).
enum TestDevice {

    /// The device name: `RDMA_DEVICE`, else the first with an active port.
    static var name: String {
        if let name = ProcessInfo.processInfo.environment["RDMA_DEVICE"] { return name }
        let devices = (try? Devices.list()) ?? []
        return devices.first { $0.ports.contains { $0.state == .active } }?.name ?? "rxe0"
    }

    static var serverAddress: String { TestBed.serverAddress }
    static var clientAddress: String { TestBed.clientAddress }
}

struct TestTimeout: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}

/// Polls `cq` until `count` completions arrived or `timeout` passed.
func waitForCompletions(_ cq: CompletionQueue, count: Int = 1, timeout: Duration = .seconds(20)) throws -> [WorkCompletion] {
    let deadline = ContinuousClock.now + timeout
    var result: [WorkCompletion] = []
    while result.count < count {
        result += try cq.poll(max: count - result.count)
        if result.count < count {
            if ContinuousClock.now > deadline { throw TestTimeout(what: "\(count) completions, got \(result.count)") }
            Thread.sleep(forTimeInterval: 0.0005)
        }
    }
    return result
}

/// Waits on `channel` for an event of `kind`; any other event kind is a test failure.
func expectEvent(_ kind: CMEvent.Kind, on channel: CMEventChannel, timeout: Duration = .seconds(20)) throws -> CMEvent {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if let event = try channel.waitForEvent(timeout: .milliseconds(100)) {
            guard event.kind == kind else {
                throw TestTimeout(what: "\(kind) but got \(event.kind) (status \(event.status))")
            }
            return event
        }
    }
    throw TestTimeout(what: "rdma_cm event \(kind)")
}
