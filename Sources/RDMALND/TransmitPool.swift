import Synchronization
import Verbs

/// The interface's transmit descriptors (`LND_NTX`): pre-registered message buffers shared by every connection,
/// and the interface-wide send credits (`LND_CREDITS`: LNet messages in flight over all connections).
///
/// A connection that finds no buffer or no credit parks itself as a waiter; whoever returns one wakes the
/// waiters (after releasing its own locks), and they post what they queued.
final class TransmitPool: @unchecked Sendable {
    let buffers: MemoryRegion
    let messageSize: Int
    let count: Int
    let credits: Int

    private struct State {
        var free: [Int]
        var creditsInUse = 0
        var waiters: [ObjectIdentifier: Connection] = [:]
    }
    private let state: Mutex<State>

    init(protectionDomain: ProtectionDomain, count: Int, messageSize: Int, credits: Int) throws(VerbsError) {
        self.buffers = try MemoryRegion(protectionDomain: protectionDomain, length: count * messageSize, access: [])
        self.messageSize = messageSize
        self.count = count
        self.credits = credits
        self.state = Mutex(State(free: Array((0..<count).reversed())))
    }

    /// The buffer of descriptor `index`.
    func buffer(_ index: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: buffers.bytes[index * messageSize..<(index + 1) * messageSize])
    }

    func sge(_ index: Int, length: Int) -> ScatterGatherElement {
        buffers.sge(offset: index * messageSize, length: length)
    }

    /// Takes a descriptor, and an interface credit when `credit` is set; on failure parks `waiter`.
    func take(credit: Bool, waiter: Connection) -> Int? {
        state.withLock { state in
            if credit && state.creditsInUse >= credits || state.free.isEmpty {
                state.waiters[ObjectIdentifier(waiter)] = waiter
                return nil
            }
            if credit { state.creditsInUse += 1 }
            return state.free.removeLast()
        }
    }

    /// Returns a descriptor; the waiters to wake (call `wake` on them once no lock is held).
    func give(_ index: Int) -> [Connection] {
        state.withLock { state in
            state.free.append(index)
            return takeWaiters(&state)
        }
    }

    /// Returns an interface credit (the LNet message it covered is done).
    func returnCredit() -> [Connection] {
        state.withLock { state in
            state.creditsInUse -= 1
            return takeWaiters(&state)
        }
    }

    private func takeWaiters(_ state: inout State) -> [Connection] {
        guard !state.waiters.isEmpty else { return [] }
        let waiters = Array(state.waiters.values)
        state.waiters.removeAll()
        return waiters
    }

    /// Descriptors and credits in use, for counters and tests.
    var inUse: (descriptors: Int, credits: Int) {
        state.withLock { (count - $0.free.count, $0.creditsInUse) }
    }
}
