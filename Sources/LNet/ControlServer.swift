#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Logging
import Synchronization

/// Why the control socket could not be served or asked.
public struct LNetControlError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    /// The error underneath, when there is one (the failed system call of a thread that could not start).
    public var cause: LNetError.Cause?
    public init(_ message: String, cause: (any Error)? = nil) {
        self.message = message
        self.cause = cause.map(LNetError.Cause.init)
    }
    public var description: String { message }
}

/// A running node's control socket (as Lustre's `lnetctl` talks to the kernel): a Unix stream socket, created with
/// mode 0600 so only its owner (and root) may connect, that answers one request per connection with one line of
/// JSON (``LNetControlResponse``) and then closes.
///
/// Requests are one line of text: `status` (an ``LNetNodeStatus``), `reset` (counters count from now on, for
/// `lnetctl stats reset`). The server is one thread polling every client with non-blocking I/O: it never blocks
/// the node (the data path never waits for it; a snapshot takes each lock it reads briefly, as `lnet.counters()`
/// does), and a client cannot block it or the other clients:
/// - at most ``Limits/maxClients`` clients at once; one more is told `busy` and closed;
/// - a request is at most ``Limits/maxRequestBytes`` bytes up to its newline; a longer one, or one that is not a
///   known request (garbage, binary), gets an error and the connection is closed;
/// - a client that sends no complete request within ``Limits/requestTimeout`` gets an error and is closed; one
///   that does not read its answer within ``Limits/responseTimeout`` is closed.
///
/// Opt in with ``LNet/startControlServer(path:limits:)`` (`lnetctl serve --control-socket PATH`, or
/// `LNET_CONTROL_SOCKET`, ``environmentVariable``); ``stop()`` closes it and removes the socket file.
public final class LNetControlServer: Sendable {
    /// Bounds on what clients may take.
    public struct Limits: Sendable, Equatable {
        public var maxClients: Int
        public var maxRequestBytes: Int
        public var requestTimeout: Duration
        public var responseTimeout: Duration
        /// The largest answer sent (a larger one is an error answer instead).
        public var maxResponseBytes: Int

        public init(maxClients: Int = 16, maxRequestBytes: Int = 1024, requestTimeout: Duration = .seconds(5),
                    responseTimeout: Duration = .seconds(10), maxResponseBytes: Int = 64 << 20) {
            self.maxClients = maxClients
            self.maxRequestBytes = maxRequestBytes
            self.requestTimeout = requestTimeout
            self.responseTimeout = responseTimeout
            self.maxResponseBytes = maxResponseBytes
        }
    }

    /// What the server did, for tests and logs.
    public struct Statistics: Sendable, Equatable {
        /// Connections accepted (including those refused as busy or not the owner).
        public var accepted = 0
        /// Requests answered (ok or with an error).
        public var answered = 0
        /// Requests answered with an error (unknown, too long, malformed).
        public var badRequests = 0
        /// Clients refused because ``Limits/maxClients`` were connected.
        public var refusedBusy = 0
        /// Clients refused because they are not the socket's owner (or root).
        public var refusedUser = 0
        /// Clients closed for sending no request in time.
        public var requestTimeouts = 0
        /// Clients closed for not reading their answer in time.
        public var responseTimeouts = 0
        /// Clients connected now.
        public var connected = 0
    }

    /// The environment variable naming the socket path (`lnetctl serve`, `lnetctl net show` ...).
    public static let environmentVariable = "LNET_CONTROL_SOCKET"

    /// The requests a client may send.
    public static let requests = ["status", "reset"]

    public let path: String
    public let limits: Limits
    private let lnet: LNet
    private let logger: Logger
    private let listener: Int32
    /// The socket file's identity, so ``stop()`` removes only our own file.
    private let identity: (device: UInt64, inode: UInt64)
    private let started = ContinuousClock.now
    private let thread: ServiceThread
    private let stopped = Atomic<Bool>(false)
    private let stats = Mutex(Statistics())
    private let baseline = Mutex<(status: LNetNodeStatus, at: ContinuousClock.Instant)?>(nil)

    /// Binds the socket (mode 0600; a stale socket at `path`, one nothing listens on, is replaced) and starts the
    /// server's thread.
    init(lnet: LNet, path: String, limits: Limits) throws(LNetControlError) {
        guard limits.maxClients > 0, limits.maxRequestBytes > 0, limits.maxResponseBytes > 0 else {
            throw LNetControlError("control socket limits must be positive")
        }
        self.lnet = lnet
        self.path = path
        self.limits = limits
        var logger = lnet.logger
        logger[metadataKey: "control"] = "\(path)"
        self.logger = logger
        listener = try UnixSocket.listen(at: path, backlog: Int32(min(128, 4 * limits.maxClients)))
        var info = stat()
        lstat(path, &info)
        identity = (UInt64(info.st_dev), UInt64(info.st_ino))
        do throws(LNetError) {
            thread = try ServiceThread(name: "lnet-control")
        } catch {
            UnixSocket.close(listener)
            unlink(path)
            throw LNetControlError("cannot make the control server's thread: \(error)", cause: error)
        }
        do throws(LNetError) {
            try thread.start { [self] thread in serve(thread) }
        } catch {
            closeEverything()
            throw LNetControlError("cannot start the control server's thread: \(error)", cause: error)
        }
        logger.info("control socket listening", metadata: ["path": "\(path)"])
    }

    /// What the server did so far.
    public var statistics: Statistics { stats.withLock { $0 } }

    /// Closes every client and the socket, removes the socket file (if it is still ours) and ends the thread.
    /// Idempotent; call before the process exits (a file left behind by a crash is replaced by the next server).
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        thread.stop()
        closeEverything()
        logger.info("control socket closed", metadata: ["path": "\(path)"])
    }

    private func closeEverything() {
        UnixSocket.close(listener)
        var info = stat()
        if lstat(path, &info) == 0, UInt64(info.st_dev) == identity.device, UInt64(info.st_ino) == identity.inode {
            unlink(path)
        }
    }

    // MARK: - The snapshot

    /// The node's status now (counters less the last reset's baseline).
    public func status() -> LNetNodeStatus {
        let raw = takeStatus()
        guard let (base, at) = baseline.withLock({ $0 }) else { return raw }
        var status = raw.subtracting(base)
        status.secondsSinceReset = (ContinuousClock.now - at).inSeconds
        return status
    }

    /// Makes counters count from now on (`lnetctl stats reset`): gauges and the exactly-once accounting stay.
    public func resetCounters() {
        let raw = takeStatus()
        baseline.withLock { $0 = (raw, ContinuousClock.now) }
    }

    private func takeStatus() -> LNetNodeStatus {
        let live = lnet.interfaces
        let interfaces = lnet.counters().interfaces.map { counters -> LNetInterfaceStatus in
            let ni = live.first { $0.nid == counters.nid }
            var lndStatus = ni.flatMap { ni in (ni.lnd as? any LNetLNDStatusReporting)?.controlStatus(ni: ni) }
            var connections: [String: [LNDConnectionStatus]] = [:]
            for connection in lndStatus?.connections ?? [] { connections[connection.peer, default: []].append(connection) }
            lndStatus?.connections = []
            var peers = counters.peers.sorted { $0.key < $1.key }.map { nid, set in
                LNetPeerStatus(nid: nid.description, traffic: LNetTrafficStatus(set), connections: connections.removeValue(forKey: nid.description) ?? [])
            }
            // Peers the LND is connected to that have no finalized traffic yet.
            for (peer, list) in connections.sorted(by: { $0.key < $1.key }) {
                peers.append(LNetPeerStatus(nid: peer, traffic: LNetTrafficStatus(LNetCounterSet()), connections: list))
            }
            let state = ni.map { $0.isStopping ? "stopping" : "up" } ?? "down"
            return LNetInterfaceStatus(
                nid: counters.nid.description, lnd: counters.nid.network.type.name, state: state,
                interfaceName: ni?.configuration.interfaceName, traffic: LNetTrafficStatus(counters.totals),
                sentByType: LNetTypeCountStatus(counters.sentByType), receivedByType: LNetTypeCountStatus(counters.receivedByType),
                accounting: LNetAccountingStatus(counters), peers: peers, lndStatus: lndStatus)
        }
        return LNetNodeStatus(processId: getpid(), lnetPid: lnet.pid, uptimeSeconds: (ContinuousClock.now - started).inSeconds,
                              interfaces: interfaces)
    }

    // MARK: - The server's thread

    private struct Client {
        enum Phase {
            case reading([UInt8])
            case writing([UInt8], sent: Int)
        }

        let fd: Int32
        var phase: Phase
        var deadline: ContinuousClock.Instant
        /// Close once the answer is out (always: one request per connection).
        var answeredWithError = false
    }

    private func serve(_ thread: ServiceThread) {
        var clients: [Client] = []
        defer { for client in clients { UnixSocket.close(client.fd) } }
        var fds: [pollfd] = []
        while thread.isRunning {
            let now = ContinuousClock.now
            // Clients past their deadline: a silent one is told why; one that does not read is just closed.
            clients.removeAll { client in
                guard client.deadline <= now else { return false }
                switch client.phase {
                case .reading:
                    stats.withLock { $0.requestTimeouts += 1 }
                    UnixSocket.sendBestEffort(client.fd, Self.errorLine("no request within \(Self.seconds(limits.requestTimeout)) s"))
                case .writing:
                    stats.withLock { $0.responseTimeouts += 1 }
                    logger.debug("control client did not read its answer in time; closing")
                }
                UnixSocket.close(client.fd)
                return true
            }
            stats.withLock { $0.connected = clients.count }
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: listener, events: Int16(POLLIN), revents: 0))
            for client in clients {
                let events: Int32
                switch client.phase {
                case .reading: events = Int32(POLLIN)
                case .writing: events = Int32(POLLOUT)
                }
                fds.append(pollfd(fd: client.fd, events: Int16(events), revents: 0))
            }
            let nearest = clients.map(\.deadline).min()
            let timeout = nearest.map { max(0, min(1000, Int32(Self.milliseconds($0 - now)) + 1)) } ?? 1000
            let ready = thread.sleep(polling: &fds, timeout: .milliseconds(timeout))
            if ready < 0 {
                if errno == EINTR { continue }
                logger.error("control server poll failed: \(String(cString: strerror(errno)))")
                return
            }
            // Clients first (their indices match fds[1...]), then new connections.
            var keep: [Client] = []
            keep.reserveCapacity(clients.count)
            for (index, var client) in clients.enumerated() {
                let revents = Int32(fds[index + 1].revents)
                if revents == 0 || step(&client, revents: revents) { keep.append(client) } else { UnixSocket.close(client.fd) }
            }
            clients = keep
            if fds[0].revents != 0 { acceptWaiting(into: &clients) }
        }
    }

    /// Accepts what is waiting (bounded per pass), refusing clients over the limit or of another user.
    private func acceptWaiting(into clients: inout [Client]) {
        for _ in 0..<64 {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            UnixSocket.setNonBlocking(fd)
            stats.withLock { $0.accepted += 1 }
            if let uid = UnixSocket.peerUID(fd), uid != geteuid(), uid != 0 {
                stats.withLock { $0.refusedUser += 1 }
                UnixSocket.sendBestEffort(fd, Self.errorLine("permission denied: uid \(uid) does not own this node"))
                UnixSocket.close(fd)
                continue
            }
            guard clients.count < limits.maxClients else {
                stats.withLock { $0.refusedBusy += 1 }
                UnixSocket.sendBestEffort(fd, Self.errorLine("busy: \(limits.maxClients) clients are connected; try again"))
                UnixSocket.close(fd)
                continue
            }
            clients.append(Client(fd: fd, phase: .reading([]), deadline: .now + limits.requestTimeout))
        }
    }

    /// Moves one client along; false when it is done (answered, gone, or broken) and must be closed.
    private func step(_ client: inout Client, revents: Int32) -> Bool {
        switch client.phase {
        case .reading(var buffer):
            var chunk = [UInt8](repeating: 0, count: 4096)
            let received = chunk.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if received < 0 {
                return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR
            }
            let end = received == 0
            buffer.append(contentsOf: chunk[0..<received])
            let line: ArraySlice<UInt8>
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")), newline <= limits.maxRequestBytes {
                line = buffer[..<newline]
            } else if buffer.count > limits.maxRequestBytes {
                answer(&client, Self.errorLine("request longer than \(limits.maxRequestBytes) bytes"), bad: true)
                return flush(&client)
            } else if end {
                // A request without its newline, then end of input (`printf status | socat ...`).
                guard !buffer.isEmpty else { return false }
                line = buffer[...]
            } else {
                client.phase = .reading(buffer)
                return true
            }
            respond(to: line, &client)
            return flush(&client)
        case .writing:
            if revents & (Int32(POLLERR) | Int32(POLLHUP)) != 0 && revents & Int32(POLLOUT) == 0 { return false }
            return flush(&client)
        }
    }

    private func respond(to line: ArraySlice<UInt8>, _ client: inout Client) {
        let text = Self.trimmed(String(decoding: line, as: UTF8.self))
        switch text {
        case "status":
            let response = LNetControlResponse(ok: true, status: status())
            let bytes = Self.encode(response)
            if bytes.count > limits.maxResponseBytes {
                answer(&client, Self.errorLine("status is \(bytes.count) bytes, more than the limit of \(limits.maxResponseBytes)"), bad: false)
            } else {
                answer(&client, bytes, bad: false)
            }
        case "reset":
            resetCounters()
            logger.info("counters reset by a control client")
            answer(&client, Self.encode(LNetControlResponse(ok: true, reset: true)), bad: false)
        default:
            let shown = String(text.unicodeScalars.prefix(40).map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F ? Character($0) : "?" })
            answer(&client, Self.errorLine("unknown request '\(shown)\(text.unicodeScalars.count > 40 ? "..." : "")'; "
                                           + "requests: \(Self.requests.joined(separator: ", "))"), bad: true)
        }
    }

    private func answer(_ client: inout Client, _ bytes: [UInt8], bad: Bool) {
        stats.withLock { stats in
            stats.answered += 1
            if bad { stats.badRequests += 1 }
        }
        client.answeredWithError = bad
        client.phase = .writing(bytes, sent: 0)
        client.deadline = .now + limits.responseTimeout
    }

    /// Sends what the socket takes now; false once all is sent (close) or the client is gone.
    private func flush(_ client: inout Client) -> Bool {
        guard case .writing(let bytes, var sent) = client.phase else { return true }
        while sent < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                send(client.fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                    client.phase = .writing(bytes, sent: sent)
                    return true
                }
                return false
            }
            sent += written
        }
        shutdown(client.fd, Int32(SHUT_WR))
        return false
    }

    // MARK: - Encoding

    static func encode(_ response: LNetControlResponse) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(response) else { return errorLine("cannot encode the answer") }
        return Array(data) + [UInt8(ascii: "\n")]
    }

    static func errorLine(_ message: String) -> [UInt8] {
        encode(LNetControlResponse(ok: false, error: message))
    }

    static func trimmed(_ text: String) -> String {
        let isSpace: (Unicode.Scalar) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }
        let scalars = text.unicodeScalars
        guard let first = scalars.firstIndex(where: { !isSpace($0) }), let last = scalars.lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(scalars[first...last])
    }

    static func seconds(_ duration: Duration) -> String {
        let value = duration.inSeconds
        return value == value.rounded() ? String(Int(value)) : String(value)
    }

    static func milliseconds(_ duration: Duration) -> Int { Int(duration.inMilliseconds) }
}

/// One answer on the control socket: `{"ok": true, "status": {...}}`, `{"ok": true, "reset": true}` or
/// `{"ok": false, "error": "..."}`, one line.
public struct LNetControlResponse: Codable, Sendable, Equatable {
    public var ok: Bool
    public var error: String?
    public var status: LNetNodeStatus?
    public var reset: Bool?

    public init(ok: Bool, error: String? = nil, status: LNetNodeStatus? = nil, reset: Bool? = nil) {
        self.ok = ok
        self.error = error
        self.status = status
        self.reset = reset
    }
}

extension LNet {
    /// Serves this node's status on a Unix socket at `path` (mode 0600) until ``LNetControlServer/stop()``; see
    /// ``LNetControlServer``. `lnetctl net show --socket PATH` (and `peer`, `conns`, `stats`) read it.
    public func startControlServer(path: String, limits: LNetControlServer.Limits = .init()) throws(LNetControlError) -> LNetControlServer {
        try LNetControlServer(lnet: self, path: path, limits: limits)
    }

    /// ``startControlServer(path:limits:)`` at the path `LNET_CONTROL_SOCKET` names; nil when it names none.
    public func startControlServerFromEnvironment(_ environment: [String: String]? = nil) throws(LNetControlError) -> LNetControlServer? {
        let value: String?
        if let environment {
            value = environment[LNetControlServer.environmentVariable]
        } else {
            value = getenv(LNetControlServer.environmentVariable).map { String(cString: $0) }
        }
        guard let path = value, !path.isEmpty else { return nil }
        return try startControlServer(path: path)
    }
}
