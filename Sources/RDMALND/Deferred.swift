import LNet

/// What a locked section of a connection decided, run once the lock is released: LNet may call back into the
/// LND (an inline event handler that sends, a REPLY served at once), so nothing calls out while a connection
/// lock is held.
struct Deferred {
    private var finalizations = SmallList<(LNetMessage, LNetStatus)>()
    private var gets = SmallList<(LNetMessage, LNetStatus, Int)>()
    private var wakeups = SmallList<Connection>()
    private var other = SmallList<() -> Void>()

    /// Finalize `message` with `status`.
    mutating func finalize(_ message: LNetMessage, _ status: LNetStatus) { finalizations.append((message, status)) }

    /// Report a GET we sent as over (see ``Connection/completeGet(_:status:length:)``).
    mutating func completeGet(_ get: LNetMessage, _ status: LNetStatus, length: Int) { gets.append((get, status, length)) }

    /// Let connections that waited for a transmit descriptor or credit try again.
    mutating func wake(_ connections: [Connection]) { for connection in connections { wakeups.append(connection) } }

    /// Anything else (the rare paths: closing, logging what was decided).
    mutating func add(_ action: @escaping () -> Void) { other.append(action) }

    func run() {
        finalizations.forEach { message, status in message.ni.finalize(message, status: status) }
        gets.forEach { get, status, length in Connection.completeGet(get, status: status, length: length) }
        other.forEach { $0() }
        wakeups.forEach { $0.wake() }
    }
}
