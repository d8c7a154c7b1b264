import CShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a device offers for memory windows (`ibv_query_device`: `max_mw` and the capability flags).
public struct MemoryWindowSupport: Sendable, Hashable {
    /// Windows the device can allocate (0: none).
    public let maxWindows: Int
    /// Type 1 windows (`IBV_DEVICE_MEM_WINDOW`), bound with the `ibv_bind_mw` verb.
    public let type1: Bool
    /// Type 2A windows (associated with a QP number).
    public let type2A: Bool
    /// Type 2B windows (associated with a QP number and PD). rxe offers these.
    public let type2B: Bool

    /// Type 2 windows of either flavour, the kind `MemoryWindow` allocates.
    public var type2: Bool { maxWindows > 0 && (type2A || type2B) }
}

extension DeviceContext {
    /// Whether, and which, memory windows the device supports.
    public func memoryWindowSupport() throws(VerbsError) -> MemoryWindowSupport {
        var attr = ibv_device_attr()
        try VerbsError.check("ibv_query_device", ibv_query_device(pointer, &attr), detail: name)
        let flags = attr.device_cap_flags
        return MemoryWindowSupport(
            maxWindows: Int(attr.max_mw),
            type1: flags & IBV_DEVICE_MEM_WINDOW.rawValue != 0,
            type2A: flags & IBV_DEVICE_MEM_WINDOW_TYPE_2A.rawValue != 0,
            type2B: flags & IBV_DEVICE_MEM_WINDOW_TYPE_2B.rawValue != 0)
    }
}

/// A type 2 memory window (`ibv_mw`): a remote key over part of a `MemoryRegion`, granted and revoked on the send
/// queue without registering anything. Deallocated exactly once when the last reference goes away, before its PD
/// (it holds it).
///
/// Life of a grant: `binding(region:offset:length:access:)` describes it with the next key; posting
/// `.bindMemoryWindow(binding)` on a QP of the same PD makes the key valid for that QP's peer only (type 2 windows
/// are tied to the QP that bound them). Work requests run in order, so a SEND posted after the bind that carries
/// the key reaches the peer only once the key is valid. `.localInvalidate(rkey:)` here, or the peer's
/// `.sendWithInvalidate(rkey:)`, revokes it; so does deallocating the window. The window can then be bound again,
/// with a new key (the 8-bit tag incremented: a stale key no longer matches).
///
/// The region must be registered with `.memoryWindowBind` (and `.localWrite` if the window grants `.remoteWrite`);
/// it needs no remote access of its own. The window keeps the region it was last bound over alive until it is
/// deallocated, because a region with a bound window cannot be deregistered (`ibv_dereg_mr` fails with EINVAL).
///
/// Bind and invalidate one window from one thread at a time (the owner of the connection).
///
/// Verified on rxe (Linux 6.1, rdma-core 44), and what the caller must know there:
/// - Keys and access rights are enforced: a read through an invalidated, deallocated or write-only window
///   completes with `.remoteAccessError`.
/// - The window's *range* is not: rxe checks a window access against the range of the underlying region, so the
///   peer can reach every byte of the region (with the window's rights). Bind over a region that covers exactly
///   what may be exposed.
/// - Invalidating a type 2 window that is not bound (a second LOCAL_INV of a key, a LOCAL_INV after the peer's
///   SEND_WITH_INV, or a peer's SEND_WITH_INV naming an unbound window's key) dereferences NULL in
///   `rxe_invalidate_mw` and panics the kernel. Invalidate each key at most once; deallocating is always safe.
///   Because a peer can send that SEND_WITH_INV, do not allocate windows on rxe for untrusted peers.
/// - A receive completion for SEND_WITH_INV carries the kernel's flag bit, so `IBV_WC_WITH_INV` is never seen.
/// - The provider sends the window's *current* key with each bind and the kernel requires it: posting a bind
///   through `QueuePair.post` updates it here.
public final class MemoryWindow: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_mw>
    /// The PD the window (and every region and QP it is used with) belongs to.
    public let protectionDomain: ProtectionDomain
    private let state: Mutex<State>

    private struct State {
        var rkey: UInt32
        /// The region of the last bind posted: kept registered while the window may be bound over it.
        var region: MemoryRegion?
    }

    /// Allocates an unbound type 2 window in `protectionDomain`.
    public init(protectionDomain: ProtectionDomain) throws(VerbsError) {
        let mw = try VerbsError.unwrap("ibv_alloc_mw", ibv_alloc_mw(protectionDomain.pointer, IBV_MW_TYPE_2),
                                       detail: "type 2 on \(protectionDomain.context.name)")
        self.pointer = mw
        self.protectionDomain = protectionDomain
        self.state = Mutex(State(rkey: mw.pointee.rkey, region: nil))
    }

    deinit {
        Release.record("ibv_dealloc_mw", ibv_dealloc_mw(pointer))
    }

    /// The key of the last bind posted (before any, the key the device allocated the window with).
    public var rkey: UInt32 { state.withLock { $0.rkey } }

    /// The key the next bind gives the window: `rkey` with its 8-bit tag incremented (`ibv_inc_rkey`).
    public var nextRkey: UInt32 { Self.incrementedKey(rkey) }

    /// `rkey` with its low 8 bits (the consumer tag) incremented, wrapping; the upper 24 bits name the window.
    public static func incrementedKey(_ rkey: UInt32) -> UInt32 {
        ibv_inc_rkey(rkey)
    }

    /// Describes a bind of this window over `length` bytes at `offset` into `region`, granting `access` (a
    /// non-empty mix of `.remoteRead`, `.remoteWrite`, `.remoteAtomic`) with the key `nextRkey`.
    ///
    /// Checks here what the device would otherwise reject with a failed completion (and a QP in error).
    public func binding(region: MemoryRegion, offset: Int = 0, length: Int? = nil,
                        access: MemoryAccess) throws(VerbsError) -> MemoryWindowBinding {
        let length = length ?? (region.length - offset)
        func invalid(_ detail: String) -> VerbsError { VerbsError(call: "ibv_bind_mw", errno: EINVAL, detail: detail) }
        guard region.protectionDomain === protectionDomain else {
            throw invalid("the region and the window are in different protection domains")
        }
        guard region.access.contains(.memoryWindowBind) else {
            throw invalid("the region is not registered with memory-window bind access (\(region.access))")
        }
        let remote: MemoryAccess = [.remoteRead, .remoteWrite, .remoteAtomic]
        guard !access.isEmpty, remote.isSuperset(of: access) else {
            throw invalid("a window grants remote read, write or atomic access, not \(access)")
        }
        if !access.isDisjoint(with: [.remoteWrite, .remoteAtomic]), !region.access.contains(.localWrite) {
            throw invalid("remote write through a window needs a region with local write")
        }
        guard offset >= 0, length > 0, offset <= region.length - length else {
            throw invalid("\(length) bytes at offset \(offset) are not inside the region's \(region.length) bytes")
        }
        return MemoryWindowBinding(window: self, region: region, address: region.address + UInt64(offset),
                                   length: length, access: access, rkey: nextRkey)
    }

    /// Called once a bind of this window was posted: its key (and the region it is bound over) change.
    func didPostBind(_ binding: MemoryWindowBinding) {
        state.withLock { state in
            state.rkey = binding.rkey
            state.region = binding.region
            pointer.pointee.rkey = binding.rkey
        }
    }
}

/// One bind of a memory window: the window, the region and range it covers, the rights, and the new key.
/// Made by `MemoryWindow.binding(region:offset:length:access:)`; posted as `.bindMemoryWindow(_:)`.
public struct MemoryWindowBinding: Sendable, Hashable {
    public let window: MemoryWindow
    public let region: MemoryRegion
    /// Where the window starts, as the peer addresses it (a virtual address inside the region).
    public let address: UInt64
    public let length: Int
    public let access: MemoryAccess
    /// The key the window has once bound; what the peer uses.
    public let rkey: UInt32

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.window === rhs.window && lhs.region === rhs.region && lhs.address == rhs.address
            && lhs.length == rhs.length && lhs.access == rhs.access && lhs.rkey == rhs.rkey
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(window))
        hasher.combine(ObjectIdentifier(region))
        hasher.combine(address)
        hasher.combine(length)
        hasher.combine(access)
        hasher.combine(rkey)
    }
}
