import CShims
#if canImport(Glibc)
import Glibc
#endif

/// What a memory region allows (`ibv_access_flags`).
///
/// A READ source needs `remoteRead`; a READ sink and any receive buffer need `localWrite`; a WRITE sink needs
/// `remoteWrite` (which verbs also requires `localWrite` for). A region that memory windows are bound over needs
/// `memoryWindowBind` (and `localWrite` if a window grants `remoteWrite`).
public struct MemoryAccess: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let localWrite = MemoryAccess(rawValue: Int32(IBV_ACCESS_LOCAL_WRITE.rawValue))
    public static let remoteWrite = MemoryAccess(rawValue: Int32(IBV_ACCESS_REMOTE_WRITE.rawValue))
    public static let remoteRead = MemoryAccess(rawValue: Int32(IBV_ACCESS_REMOTE_READ.rawValue))
    public static let remoteAtomic = MemoryAccess(rawValue: Int32(IBV_ACCESS_REMOTE_ATOMIC.rawValue))
    /// Memory windows may be bound over the region (`IBV_ACCESS_MW_BIND`); grants no remote access by itself.
    public static let memoryWindowBind = MemoryAccess(rawValue: Int32(IBV_ACCESS_MW_BIND.rawValue))

    public var description: String {
        var names: [String] = []
        if contains(.localWrite) { names.append("local-write") }
        if contains(.remoteWrite) { names.append("remote-write") }
        if contains(.remoteRead) { names.append("remote-read") }
        if contains(.remoteAtomic) { names.append("remote-atomic") }
        if contains(.memoryWindowBind) { names.append("mw-bind") }
        return names.isEmpty ? "local-read" : names.joined(separator: ",")
    }
}

/// A scatter/gather element: `length` bytes at `address`, reached through local key `lkey`.
public struct ScatterGatherElement: Sendable, Hashable {
    public var address: UInt64
    public var length: UInt32
    public var lkey: UInt32

    public init(address: UInt64, length: UInt32, lkey: UInt32) {
        self.address = address
        self.length = length
        self.lkey = lkey
    }
}

/// A registered memory region (`ibv_mr`), deregistered exactly once when the last reference goes away.
///
/// Either it owns its memory (page-aligned, zeroed, freed after deregistration), or it registers memory the
/// caller owns and keeps alive for as long as the region exists.
public final class MemoryRegion: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_mr>
    private let ownsMemory: Bool
    public let protectionDomain: ProtectionDomain
    /// The registered bytes.
    public let bytes: UnsafeMutableRawBufferPointer
    public let access: MemoryAccess

    /// The region's start as the device addresses it (the virtual address).
    public var address: UInt64 { UInt64(UInt(bitPattern: bytes.baseAddress)) }
    public var length: Int { bytes.count }
    public var lkey: UInt32 { pointer.pointee.lkey }
    public var rkey: UInt32 { pointer.pointee.rkey }

    /// Registers memory the caller owns; the caller keeps it alive until this region is gone.
    public init(protectionDomain: ProtectionDomain, bytes: UnsafeMutableRawBufferPointer, access: MemoryAccess) throws(VerbsError) {
        guard let base = bytes.baseAddress, bytes.count > 0 else {
            throw VerbsError(call: "ibv_reg_mr", errno: EINVAL, detail: "empty buffer")
        }
        self.pointer = try VerbsError.unwrap(
            "ibv_reg_mr", CShims_ibv_reg_mr(protectionDomain.pointer, base, bytes.count, access.rawValue),
            detail: "\(bytes.count) bytes, \(access)")
        self.ownsMemory = false
        self.protectionDomain = protectionDomain
        self.bytes = bytes
        self.access = access
    }

    /// Allocates `length` zeroed, page-aligned bytes and registers them.
    public init(protectionDomain: ProtectionDomain, length: Int, access: MemoryAccess) throws(VerbsError) {
        guard length > 0 else { throw VerbsError(call: "ibv_reg_mr", errno: EINVAL, detail: "length 0") }
        var raw: UnsafeMutableRawPointer?
        let rc = posix_memalign(&raw, Int(sysconf(Int32(_SC_PAGESIZE))), length)
        guard rc == 0, let raw else { throw VerbsError(call: "posix_memalign", errno: rc, detail: "\(length) bytes") }
        memset(raw, 0, length)
        guard let mr = CShims_ibv_reg_mr(protectionDomain.pointer, raw, length, access.rawValue) else {
            let error = VerbsError(call: "ibv_reg_mr", errno: VerbsError.current, detail: "\(length) bytes, \(access)")
            free(raw)
            throw error
        }
        self.pointer = mr
        self.ownsMemory = true
        self.protectionDomain = protectionDomain
        self.bytes = UnsafeMutableRawBufferPointer(start: raw, count: length)
        self.access = access
    }

    deinit {
        Release.record("ibv_dereg_mr", ibv_dereg_mr(pointer))
        if ownsMemory { free(bytes.baseAddress) }
    }

    /// A scatter/gather element for `length` bytes at `offset` into this region.
    public func sge(offset: Int = 0, length: Int? = nil) -> ScatterGatherElement {
        let length = length ?? (self.length - offset)
        precondition(offset >= 0 && length >= 0 && offset + length <= self.length, "sge outside the region")
        return ScatterGatherElement(address: address + UInt64(offset), length: UInt32(length), lkey: lkey)
    }
}
