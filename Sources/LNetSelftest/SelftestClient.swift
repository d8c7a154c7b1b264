import Dispatch
import LNet
import Logging
import Synchronization

/// The client side of the self-test.
///
/// A run sets up a session with the target's ``SelftestServer`` (not for ping), then keeps ``SelftestConfiguration/concurrency``
/// slots busy: each slot issues its next operation from the completion of its previous one (inline event handlers,
/// which re-enter LNet), until the count is reached or the duration is over. Then it tears the session down.
///
/// - Read: a GET of slot `i`'s part of the server's source into slot `i`'s sink. With verify the sink is zeroed
///   before the GET and compared with slot `i`'s pattern after the REPLY.
/// - Write: a PUT (ACK requested) of slot `i`'s source into slot `i`'s part of the server's sink, header data = the
///   operation's sequence number, which also fills the first 8 bytes. With verify the server checks the data and
///   sends a verdict; the write completes when both the ACK and the verdict are in.
/// - Ping: a GET of the server's ping MD; with verify the answer must name the target.
///
/// With mixed sizes (``SelftestConfiguration/minSize``) slots are sized for the largest operation and each read or
/// write moves only its own length (``OperationSizes/length(session:sequence:)``) from the start of its slot; the
/// checks above cover exactly those bytes, and a REPLY or ACK of another length fails the operation.
///
/// An operation completes on its MD's last event, so its memory is free for the next operation of its slot.
public final class SelftestClient: Sendable {
    public let lnet: LNet
    private let logger: Logger

    public init(lnet: LNet, logger: Logger? = nil) {
        self.lnet = lnet
        self.logger = logger ?? Logger(label: "lnet.selftest.client", factory: { _ in SwiftLogNoOpLogHandler() })
    }

    /// Runs one session against `target` and returns its figures.
    public func run(_ configuration: SelftestConfiguration, target: ProcessID) async throws(SelftestError) -> SelftestResult {
        try validate(configuration)
        let usageBefore = ResourceUsage.current()
        var session: UInt64 = 0
        while session == 0 { session = UInt64.random(in: 1...SelftestProtocol.sessionMask) }
        var ready: SessionReply?
        if configuration.op != .ping {
            let reply = try await exchange(SessionRequest(kind: .setup, session: session, op: configuration.op, size: configuration.size,
                                                          minSize: configuration.minSize, concurrency: configuration.concurrency,
                                                          verify: configuration.verify),
                                           target: target, timeout: configuration.controlTimeout)
            guard reply.status == .ok else { throw .sessionRefused(status: reply.status, message: reply.message) }
            ready = reply
            if configuration.op == .read, let required = configuration.requiredServerGetMode, reply.getMode != .unknown,
               reply.getMode != required {
                _ = try? await teardown(session: session, configuration: configuration, target: target)
                throw .serverModeMismatch(required: required, actual: reply.getMode)
            }
        }
        let engine: RunEngine
        do {
            engine = try RunEngine(lnet: lnet, configuration: configuration, target: target, session: session, logger: logger)
        } catch {
            if ready != nil { _ = try? await teardown(session: session, configuration: configuration, target: target) }
            throw error
        }
        var result = await engine.run()
        engine.release()
        result.ready = ready
        if ready != nil {
            do {
                let closed = try await teardown(session: session, configuration: configuration, target: target)
                if closed.status == .ok {
                    result.closed = closed
                } else {
                    result.teardownError = "\(closed.status): \(closed.message)"
                }
            } catch {
                result.teardownError = error.description
            }
        }
        result.clientUsage = ResourceUsage.current().since(usageBefore)
        return result
    }

    private func validate(_ configuration: SelftestConfiguration) throws(SelftestError) {
        guard configuration.concurrency >= 1 else { throw .invalidConfiguration("concurrency must be at least 1") }
        guard configuration.op == .ping || (configuration.size >= 1 && configuration.size < Int(UInt32.max)) else {
            throw .invalidConfiguration("size \(configuration.size) is outside 1...\(UInt32.max - 1)")
        }
        if configuration.op != .ping, let minSize = configuration.minSize, minSize < 1 || minSize > configuration.size {
            throw .invalidConfiguration("minimum size \(minSize) is outside 1...\(configuration.size) (the size)")
        }
        guard configuration.count != nil || configuration.duration != nil else {
            throw .invalidConfiguration("give a count or a duration")
        }
        if let count = configuration.count, count < 1 { throw .invalidConfiguration("count must be at least 1") }
        if let duration = configuration.duration, duration <= .zero { throw .invalidConfiguration("duration must be positive") }
        let (_, overflow) = configuration.size.multipliedReportingOverflow(by: configuration.concurrency * 2)
        guard !overflow else { throw .invalidConfiguration("size x concurrency is too large") }
    }

    private func teardown(session: UInt64, configuration: SelftestConfiguration, target: ProcessID) async throws(SelftestError) -> SessionReply {
        try await exchange(SessionRequest(kind: .teardown, session: session, op: configuration.op, size: configuration.size,
                                          minSize: configuration.minSize, concurrency: configuration.concurrency,
                                          verify: configuration.verify),
                           target: target, timeout: configuration.controlTimeout)
    }

    /// Sends a control request (PUT with ACK) and waits for the server's reply PUT.
    func exchange(_ request: SessionRequest, target: ProcessID, timeout: Duration) async throws(SelftestError) -> SessionReply {
        let events = EventQueue(label: "lst-control-client", capacity: 64)
        let replyBuffer: LNetBuffer
        let requestBuffer: LNetBuffer
        let replyHandles: (me: MEHandle, md: MDHandle)
        let requestMD: MDHandle
        do {
            replyBuffer = try LNetBuffer(count: SelftestProtocol.replyBufferSize)
            requestBuffer = try LNetBuffer(copying: request.encoded())
            replyHandles = try lnet.attach(
                MatchEntry(portal: SelftestProtocol.replyPortal,
                           matchBits: SelftestProtocol.matchBits(.reply, session: request.session), unlink: .unlink),
                descriptor: MemoryDescriptor(buffer: replyBuffer, threshold: .count(1), options: [.put], eventQueue: events))
        } catch {
            throw .lnet(error)
        }
        do {
            requestMD = try lnet.bind(MemoryDescriptor(buffer: requestBuffer, threshold: .count(2), eventQueue: events))
        } catch {
            try? lnet.unlink(replyHandles.me)
            throw .lnet(error)
        }
        var replyLinked = true
        var requestLinked = true
        defer {
            if replyLinked { try? lnet.unlink(replyHandles.me) }
            if requestLinked { try? lnet.unlink(requestMD) }
        }
        do {
            try lnet.put(requestMD, to: target, portal: SelftestProtocol.controlPortal,
                         matchBits: SelftestProtocol.controlMatchBits, ackRequested: true)
        } catch {
            throw .lnet(error)
        }
        let deadline = ContinuousClock.now + timeout
        var reply: SessionReply?
        while true {
            if reply != nil && !requestLinked { break }
            let remaining = deadline - .now
            if remaining <= .zero {
                if let reply { return reply }
                throw .timeout("no answer from \(target) to the self-test \(request.kind == .setup ? "set-up" : "teardown") request")
            }
            let event: LNetEvent
            do { event = try await events.next(timeout: reply != nil ? min(remaining, .seconds(2)) : remaining) } catch {
                if let reply { return reply }
                continue
            }
            if event.md == replyHandles.md {
                if event.unlinked { replyLinked = false }
                guard event.kind == .put else { continue }
                guard event.status.isOK else { throw .controlFailed("the reply failed: \(event.status)") }
                do { reply = try SessionReply(decoding: replyBuffer.read(length: event.matchedLength)) } catch {
                    throw .controlFailed(error.description)
                }
            } else if event.md == requestMD {
                if event.unlinked { requestLinked = false }
                // A failed SEND (nobody listening, connection refused) or a negative ACK (no control portal there).
                if !event.status.isOK { throw .noServer(target: target, status: event.status) }
            }
        }
        guard let reply else { throw .controlFailed("no reply") }
        return reply
    }
}
