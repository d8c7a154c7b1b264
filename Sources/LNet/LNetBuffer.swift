import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An owned, page-aligned, zero-filled block of memory for MDs.
///
/// The memory is allocated with `posix_memalign` at the system page size, so an RDMA LND can register it with
/// the NIC directly, and freed in `deinit`. An MD built from an `LNetBuffer` keeps the buffer alive until it is
/// unlinked and every message using it is finalized.
///
/// Concurrency: the buffer is `@unchecked Sendable` because LNet hands its memory to LNDs and peers. The
/// protocol, not the type system, keeps access race-free: an application must not touch the bytes of an MD
/// while an operation on it is in flight (between posting and the operation's event).
public final class LNetBuffer: @unchecked Sendable {
    /// The start of the memory (page aligned).
    public let baseAddress: UnsafeMutableRawPointer
    /// The number of usable bytes.
    public let count: Int

    /// The system page size used for alignment.
    public static let pageSize: Int = {
        let size = sysconf(Int32(_SC_PAGESIZE))
        return size > 0 ? Int(size) : 4096
    }()

    /// Allocates `count` zeroed bytes aligned to ``pageSize``.
    public init(count: Int) throws(LNetError) {
        guard count >= 0 else { throw LNetError.invalidArgument("buffer size \(count) is negative") }
        var pointer: UnsafeMutableRawPointer?
        // Round the allocation up to whole pages so registration never covers a neighbour's memory.
        let pages = max(1, (count + Self.pageSize - 1) / Self.pageSize)
        let result = posix_memalign(&pointer, Self.pageSize, pages * Self.pageSize)
        guard result == 0, let pointer else {
            throw LNetError.systemCallFailed(call: "posix_memalign", errno: result, detail: "\(count) bytes")
        }
        memset(pointer, 0, pages * Self.pageSize)
        self.baseAddress = pointer
        self.count = count
    }

    /// Allocates a buffer holding a copy of `bytes`.
    public convenience init(copying bytes: some Collection<UInt8>) throws(LNetError) {
        try self.init(count: bytes.count)
        var index = 0
        for byte in bytes {
            baseAddress.storeBytes(of: byte, toByteOffset: index, as: UInt8.self)
            index += 1
        }
    }

    deinit {
        LNetBuffer.releaseObservers.notify(baseAddress, count)
        free(baseAddress)
    }

    /// Observers told when an `LNetBuffer`'s memory is about to be freed, such as an LND's memory registration
    /// cache, which must forget the pages before the allocator can hand the address to someone else.
    public static let releaseObservers = MemoryReleaseObservers()

    /// The whole buffer as a raw buffer pointer.
    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: baseAddress, count: count) }

    /// A copy of `length` bytes starting at `offset` (clamped to the buffer).
    public func read(offset: Int = 0, length: Int? = nil) -> [UInt8] {
        let start = min(max(0, offset), count)
        let end = min(count, start + max(0, length ?? count - start))
        return Array(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
    }

    /// Copies `source` into the buffer at `offset`; bytes that would fall past the end are not written.
    /// Returns the number of bytes written.
    @discardableResult
    public func write(_ source: some Collection<UInt8>, at offset: Int = 0) -> Int {
        guard offset >= 0, offset < count else { return 0 }
        var written = 0
        for byte in source {
            guard offset + written < count else { break }
            baseAddress.storeBytes(of: byte, toByteOffset: offset + written, as: UInt8.self)
            written += 1
        }
        return written
    }

    /// Sets every byte to `value`.
    public func fill(_ value: UInt8) {
        memset(baseAddress, Int32(value), count)
    }
}

/// Callbacks run (on the freeing thread, before the memory is freed) for every `LNetBuffer` released.
public final class MemoryReleaseObservers: Sendable {
    private let observers = Mutex<[UInt64: @Sendable (UnsafeMutableRawPointer, Int) -> Void]>([:])
    private let nextToken = Atomic<UInt64>(1)
    private let count = Atomic<Int>(0)

    /// Adds an observer; keep the token to remove it.
    public func add(_ observer: @escaping @Sendable (UnsafeMutableRawPointer, Int) -> Void) -> UInt64 {
        let token = nextToken.add(1, ordering: .relaxed).oldValue
        observers.withLock { $0[token] = observer }
        count.add(1, ordering: .releasing)
        return token
    }

    public func remove(_ token: UInt64) {
        if observers.withLock({ $0.removeValue(forKey: token) }) != nil { count.subtract(1, ordering: .releasing) }
    }

    func notify(_ base: UnsafeMutableRawPointer, _ length: Int) {
        guard count.load(ordering: .acquiring) > 0 else { return }
        for observer in observers.withLock({ Array($0.values) }) { observer(base, length) }
    }
}
