import Configuration
import Foundation
import LNet

/// How bulk data moves for an operation.
public enum BulkMode: String, Sendable, CaseIterable {
    /// The side that holds the data stages it and tells the other side to RDMA READ it ("transmit-first").
    case pull
    /// The side that holds the data RDMA WRITEs it into the other side's sink.
    case push
}

/// How a scheduler thread waits for completions (`LND_POLL`).
public enum PollMode: String, Sendable, CaseIterable {
    /// Sleep on the completion channel once quiet (polling up to `LND_POLL_US` for this node's own work requests
    /// in flight first): idle nodes stay idle, and a message costs one wake-up.
    case events
    /// As `events`, and keep polling `LND_POLL_US` after the last completion, to catch the next message awake.
    case adaptive
    /// Never sleep: poll every queue continuously (lowest latency; one CPU per scheduler thread stays busy).
    case busy
}

/// The RDMA LND's tunables, read from environment variables with the `LND_` prefix (through swift-configuration,
/// so any other `ConfigProvider` works too) and validated at start-up: a bad value stops start-up with an error
/// naming the variable and its allowed range.
///
/// `lnetctl tunables` prints each with its value, where the value came from, its variable and its range.
public struct LNDTunables: Sendable, Equatable {
    /// Receive buffers (and so sends in flight) per connection: the queue depth proposed in the handshake.
    public var peerCredits = 8
    /// Sends in flight over all connections of the interface.
    public var credits = 256
    /// Work requests in flight on one connection's send queue (0: twice the peer credits).
    public var concurrentSends = 0
    /// Transmit descriptors (messages the LND may hold at once, queued or in flight).
    public var ntx = 512
    /// Largest payload sent eagerly in one message; larger ones go by RDMA.
    public var immediateSize = 4096
    /// Bulk transfer mode for GET (who moves the REPLY data).
    public var getMode = BulkMode.pull
    /// Bulk transfer mode for PUT.
    public var putMode = BulkMode.pull
    /// Scheduler threads that poll completion queues (0: one per CPU).
    public var schedulers = 0
    /// How scheduler threads wait for completions.
    public var poll = PollMode.events
    /// Microseconds a scheduler keeps polling before it sleeps (`events`: while its own work requests are in
    /// flight; `adaptive`: after the last completion).
    public var pollMicroseconds = 50
    /// Seconds a message may wait for completion before it fails with a timeout.
    public var timeout = 50
    /// Seconds of silence after which a NOOP is sent to check the peer (0: never).
    public var keepalive = 100
    /// Transport retries before a send fails (the QP's retry_cnt).
    public var retryCount = 5
    /// Local ACK timeout exponent of the QPs: a packet not acknowledged is resent after 4.096 us x 2^n (17: about
    /// 0.54 s); a send fails after `retryCount` + 1 such timeouts. Set explicitly: with rdma_cm's default, 1%
    /// packet loss between two rxe hosts stalled connections until LND_TIMEOUT (scripts/fault-suite.sh).
    public var ackTimeout = 17
    /// Receiver-not-ready retries (7 means forever). Credits make RNR retries unnecessary in normal operation.
    public var rnrRetryCount = 6
    /// Path MTU in bytes (0: the port's active MTU).
    public var ibMTU = 0
    /// rdma_cm port the interface listens on and connects to.
    public var servicePort = 987
    /// Checksum every message (CRC32C of the wire message).
    public var checksum = false
    /// Bytes the memory registration cache may keep registered (0: no cache, register per transfer).
    public var registrationCacheSize = 256 << 20
    /// Registrations of at least this many bytes that the cache cannot answer (misses, and the per-transfer
    /// registrations of remote access) run on the registration thread instead of the scheduler thread that
    /// needs them, so a slow one does not hold up the scheduler's other connections (0: none; every
    /// registration runs on the thread that needs it).
    public var registrationOffload = 1 << 20
    /// Fragments in one RDMA descriptor (the most a transfer may be split into).
    public var maxFragments = 256
    /// The verbs device (empty: the one that carries the interface's address).
    public var device = ""

    public init() {}

    /// The smallest queue depth (`LND_PEER_CREDITS`) the LND runs with, and accepts in a handshake: one credited
    /// message in flight each way, one transaction of its own per side.
    public static let minimumQueueDepth = 1

    /// Effective send-queue depth of one connection.
    public var effectiveConcurrentSends: Int { concurrentSends == 0 ? 2 * peerCredits : concurrentSends }
    /// Effective scheduler count.
    public var effectiveSchedulers: Int { schedulers == 0 ? max(1, ProcessInfo.processInfo.activeProcessorCount) : schedulers }
}

/// A tunable value that could not be accepted.
public struct TunableError: Error, CustomStringConvertible, Equatable, Sendable {
    public let variable: String
    public let value: String
    public let allowed: String
    public var description: String { "\(variable)=\(value) is not valid; allowed: \(allowed)" }
}

/// Where a tunable's value came from.
public enum TunableSource: String, Sendable {
    case defaultValue = "default"
    case environment
}

/// One line of `lnetctl tunables`.
public struct TunableReport: Sendable, Equatable {
    public let key: String
    public let variable: String
    public let value: String
    public let defaultValue: String
    public let allowed: String
    public let source: TunableSource
    public let summary: String
}

extension LNDTunables {
    /// One tunable: its configuration key (`lnd.peerCredits` is the variable `LND_PEER_CREDITS`), range, and how
    /// to parse, check and print it.
    struct Definition: Sendable {
        let key: String
        let summary: String
        let allowed: String
        let parse: @Sendable (String, inout LNDTunables) -> Bool
        let show: @Sendable (LNDTunables) -> String

        var variable: String {
            // The environment provider's transformation: components joined by "_", camelCase split, upper-cased.
            key.split(separator: ".").map { component in
                var out = ""
                for ch in component {
                    if ch.isUppercase, !out.isEmpty { out += "_" }
                    out += ch.uppercased()
                }
                return out
            }.joined(separator: "_")
        }

        static func integer(_ key: String, _ path: any WritableKeyPath<LNDTunables, Int> & Sendable, _ range: ClosedRange<Int>,
                            size: Bool = false, _ summary: String) -> Definition {
            Definition(key: key, summary: summary, allowed: size ? "\(range.lowerBound)...\(range.upperBound) bytes (K, M, G suffixes)" : "\(range.lowerBound)...\(range.upperBound)",
                       parse: { text, tunables in
                           guard let value = size ? parseSize(text) : Int(text.trimmingCharacters(in: .whitespaces)),
                                 range.contains(value) else { return false }
                           tunables[keyPath: path] = value
                           return true
                       },
                       show: { "\($0[keyPath: path])" })
        }

        static func choice(_ key: String, _ path: any WritableKeyPath<LNDTunables, Int> & Sendable, _ choices: [Int], _ summary: String) -> Definition {
            Definition(key: key, summary: summary, allowed: choices.map(String.init).joined(separator: ", "),
                       parse: { text, tunables in
                           guard let value = Int(text.trimmingCharacters(in: .whitespaces)), choices.contains(value) else { return false }
                           tunables[keyPath: path] = value
                           return true
                       },
                       show: { "\($0[keyPath: path])" })
        }

        static func choice<Choice: RawRepresentable & CaseIterable & Sendable>(
            _ key: String, _ path: any WritableKeyPath<LNDTunables, Choice> & Sendable, _ summary: String
        ) -> Definition where Choice.RawValue == String {
            Definition(key: key, summary: summary, allowed: Choice.allCases.map(\.rawValue).joined(separator: ", "),
                       parse: { text, tunables in
                           guard let choice = Choice(rawValue: text.lowercased().trimmingCharacters(in: .whitespaces)) else { return false }
                           tunables[keyPath: path] = choice
                           return true
                       },
                       show: { $0[keyPath: path].rawValue })
        }

        static func flag(_ key: String, _ path: any WritableKeyPath<LNDTunables, Bool> & Sendable, _ summary: String) -> Definition {
            Definition(key: key, summary: summary, allowed: "0, 1",
                       parse: { text, tunables in
                           switch text.lowercased().trimmingCharacters(in: .whitespaces) {
                           case "1", "true", "yes", "on": tunables[keyPath: path] = true
                           case "0", "false", "no", "off": tunables[keyPath: path] = false
                           default: return false
                           }
                           return true
                       },
                       show: { $0[keyPath: path] ? "1" : "0" })
        }

        static func name(_ key: String, _ path: any WritableKeyPath<LNDTunables, String> & Sendable, _ summary: String) -> Definition {
            Definition(key: key, summary: summary, allowed: "a device name, or empty for automatic",
                       parse: { text, tunables in
                           let name = text.trimmingCharacters(in: .whitespaces)
                           guard name.count <= 64, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else { return false }
                           tunables[keyPath: path] = name
                           return true
                       },
                       show: { $0[keyPath: path] })
        }
    }

    /// Every tunable, in the order `lnetctl tunables` prints them.
    static let definitions: [Definition] = [
        .integer("lnd.peerCredits", \.peerCredits, minimumQueueDepth...255, "receive buffers and sends in flight per connection (queue depth)"),
        .integer("lnd.credits", \.credits, 1...65_535, "sends in flight over all connections"),
        .integer("lnd.concurrentSends", \.concurrentSends, 0...4096, "send work requests in flight per connection (0: 2 x peer credits)"),
        .integer("lnd.ntx", \.ntx, 16...65_536, "transmit descriptors"),
        .integer("lnd.immediateSize", \.immediateSize, 0...65_536, size: true, "largest payload sent eagerly"),
        .choice("lnd.getMode", \.getMode, "GET bulk mode: pull (target stages, requester READs) or push (target WRITEs)"),
        .choice("lnd.putMode", \.putMode, "PUT bulk mode: pull (sink READs) or push (source WRITEs after PUT_ACK)"),
        .integer("lnd.schedulers", \.schedulers, 0...256, "scheduler threads (0: one per CPU)"),
        .choice("lnd.poll", \.poll, "how schedulers wait: events (sleep when quiet), adaptive (poll LND_POLL_US more), busy (never sleep)"),
        .integer("lnd.pollUs", \.pollMicroseconds, 0...100_000, "microseconds a scheduler polls before sleeping"),
        .integer("lnd.timeout", \.timeout, 1...3600, "seconds before a message fails with a timeout"),
        .integer("lnd.keepalive", \.keepalive, 0...3600, "seconds of silence before a keepalive NOOP (0: off)"),
        .integer("lnd.retryCount", \.retryCount, 0...7, "transport retries before a send fails"),
        .integer("lnd.ackTimeout", \.ackTimeout, 1...31, "QP local ACK timeout: resend after 4.096 us x 2^n (17: 0.54 s)"),
        .integer("lnd.rnrRetryCount", \.rnrRetryCount, 0...7, "receiver-not-ready retries (7: forever)"),
        .choice("lnd.ibMtu", \.ibMTU, [0, 256, 512, 1024, 2048, 4096], "path MTU in bytes (0: the port's active MTU)"),
        .integer("lnd.servicePort", \.servicePort, 1...65_535, "rdma_cm service port"),
        .flag("lnd.checksum", \.checksum, "checksum every message"),
        .integer("lnd.registrationCacheSize", \.registrationCacheSize, 0...(1 << 40), size: true, "bytes the registration cache may keep registered (0: off)"),
        .integer("lnd.registrationOffload", \.registrationOffload, 0...(1 << 40), size: true,
                 "registrations of at least this many bytes the cache cannot answer run on the registration thread (0: none)"),
        .integer("lnd.maxFragments", \.maxFragments, 1...256, "fragments per RDMA descriptor"),
        .name("lnd.device", \.device, "verbs device (empty: the one carrying the interface address)"),
    ]

    /// Reads and validates every tunable from `config`; the first bad value throws.
    public init(config: ConfigReader) throws(TunableError) {
        self.init()
        for definition in Self.definitions {
            guard let text = config.string(forKey: ConfigKey(definition.key)) else { continue }
            guard definition.parse(text, &self) else {
                throw TunableError(variable: definition.variable, value: text, allowed: definition.allowed)
            }
        }
        try validateTogether()
    }

    /// Reads the tunables from the process environment (or the given variables).
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(TunableError) -> LNDTunables {
        try LNDTunables(config: ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: environment)))
    }

    /// Rules that involve more than one tunable.
    func validateTogether() throws(TunableError) {
        if credits < peerCredits {
            throw TunableError(variable: "LND_CREDITS", value: "\(credits)", allowed: "at least LND_PEER_CREDITS (\(peerCredits))")
        }
        if ntx < peerCredits {
            throw TunableError(variable: "LND_NTX", value: "\(ntx)", allowed: "at least LND_PEER_CREDITS (\(peerCredits))")
        }
    }

    /// Every tunable with its value and where it came from, given the variables that were set.
    public func report(environment: [String: String] = ProcessInfo.processInfo.environment) -> [TunableReport] {
        let defaults = LNDTunables()
        return Self.definitions.map { definition in
            TunableReport(key: definition.key, variable: definition.variable, value: definition.show(self),
                          defaultValue: definition.show(defaults), allowed: definition.allowed,
                          source: environment[definition.variable] == nil ? .defaultValue : .environment,
                          summary: definition.summary)
        }
    }
}
