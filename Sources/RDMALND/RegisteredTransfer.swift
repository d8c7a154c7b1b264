import Synchronization
import Verbs

/// One fragment of a registered transfer, ready for a work request or an RDMA descriptor.
public struct RegisteredFragment: Sendable, Hashable {
    /// The fragment's virtual address (what both the local SGE and the peer's RDMA address use).
    public var address: UInt64
    public var length: UInt32
    /// For our own work requests on this memory.
    public var lkey: UInt32
    /// For the peer; 0 when the transfer granted no remote access.
    public var rkey: UInt32

    public init(address: UInt64, length: UInt32, lkey: UInt32, rkey: UInt32) {
        self.address = address
        self.length = length
        self.lkey = lkey
        self.rkey = rkey
    }
}

/// The memory of one transfer, made reachable by the NIC: what it holds (cached registrations in use,
/// per-transfer registrations, bound windows) is given back by `release()`, which also revokes any remote access.
/// Releasing is idempotent, and happens at the latest when the object goes away.
///
/// After `release()` a peer using one of the fragments' rkeys gets a remote access error. Release only once the
/// transfer is over: every work request on this memory completed (or was flushed), and the peer was told it is done.
///
/// A class, not a noncopyable value with a consuming `release()` as `MemoryGrant` is: its public contract is a
/// release that is idempotent, callable from any thread through a shared reference, and answered after it
/// (`isReleased`, an empty `bindRequests`), with `deinit` as the backstop; and callers keep transfers in arrays,
/// which hold no noncopyable elements.
public final class RegisteredTransfer: @unchecked Sendable {
    /// The fragments, in the order given (zero-length fragments left out).
    public let fragments: [RegisteredFragment]
    /// What was asked for.
    public let access: MemoryAccess

    private struct Held {
        var regions: [MemoryRegion]
        var windows: [Verbs.MemoryWindow]
        var bindings: [MemoryWindowBinding]
    }

    private let held: Mutex<Held?>

    init(fragments: [RegisteredFragment], access: MemoryAccess, regions: [MemoryRegion],
         windows: [Verbs.MemoryWindow] = [], bindings: [MemoryWindowBinding] = []) {
        self.fragments = fragments
        self.access = access
        self.held = Mutex(Held(regions: regions, windows: windows, bindings: bindings))
    }

    deinit {
        release()
    }

    /// For a window-backed grant: the window binds to post on the connection's queue pair *before* (or chained
    /// ahead of) the message that advertises the rkeys. Work requests run in order, so the keys are valid by the
    /// time the peer can know them. Unsignaled; post them once, and keep no copy (a copy keeps the windows, and
    /// so the grant, alive past `release()`). Empty when no windows are involved, and after `release()`.
    public var bindRequests: [SendWorkRequest] {
        held.withLock { held in
            (held?.bindings ?? []).map { SendWorkRequest(id: 0, operation: .bindMemoryWindow($0), scatterGather: [], signaled: false) }
        }
    }

    /// Whether `release()` has run.
    public var isReleased: Bool { held.withLock { $0 == nil } }

    /// Revokes remote access (windows are deallocated, per-transfer registrations deregistered) and gives the
    /// cached registrations back to the cache, which may keep them for the next transfer.
    public func release() {
        guard var taken = held.withLock({ held -> Held? in
            let taken = held
            held = nil
            return taken
        }) else { return }
        // Windows first: deallocating one revokes its key before its region can go.
        taken.bindings.removeAll()
        for index in taken.windows.indices {
            assert(isKnownUniquelyReferenced(&taken.windows[index]),
                   "a copy of the bind requests keeps a memory window (and its rkey) alive after release")
        }
        taken.windows.removeAll()
        taken.regions.removeAll()
    }

    /// Hands the registrations to another holder (a `MemoryGrant`) instead of releasing them.
    func takeRegions() -> [MemoryRegion] {
        held.withLock { held in
            let regions = held?.regions ?? []
            held?.regions = []
            return regions
        }
    }
}
