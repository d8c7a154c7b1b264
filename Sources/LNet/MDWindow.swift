#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One contiguous piece of an MD's memory: what an RDMA LND registers with the NIC.
public struct LNetFragment: @unchecked Sendable, Equatable {
    /// The first byte of the fragment.
    public let baseAddress: UnsafeMutableRawPointer
    /// The number of bytes.
    public let length: Int

    public init(baseAddress: UnsafeMutableRawPointer, length: Int) {
        self.baseAddress = baseAddress
        self.length = length
    }
}

/// The memory of an MD: its fragments plus the owners that keep them alive.
final class MDStorage: @unchecked Sendable {
    let fragments: [LNetFragment]
    /// Start offset of each fragment within the MD (prefix sums), for seeking.
    let starts: [Int]
    let length: Int
    /// Keeps owned buffers alive for as long as any window refers to them.
    let owners: [LNetBuffer]

    init(fragments: [LNetFragment], owners: [LNetBuffer]) {
        self.fragments = fragments
        self.owners = owners
        var starts: [Int] = []
        starts.reserveCapacity(fragments.count)
        var total = 0
        for fragment in fragments {
            starts.append(total)
            total += fragment.length
        }
        self.starts = starts
        self.length = total
    }

    static let empty = MDStorage(fragments: [], owners: [])

    /// Index of the fragment holding byte `offset` (offset < length).
    func fragmentIndex(containing offset: Int) -> Int {
        var low = 0
        var high = starts.count - 1
        while low < high {
            let mid = (low + high + 1) / 2
            if starts[mid] <= offset { low = mid } else { high = mid - 1 }
        }
        return low
    }
}

/// A window onto an MD's memory for one message: all of the MD's fragments plus the `offset` and `length` of the
/// bytes this message moves.
///
/// An LND copies eager payloads straight from or into the window's segments and can register ``fragments`` for RDMA
/// (using ``offset``/``length`` to select the part in play). The window keeps owned buffers alive.
public struct LNetMDWindow: @unchecked Sendable {
    let storage: MDStorage
    /// Where this message's bytes start within the MD.
    public let offset: Int
    /// How many bytes this message moves.
    public let length: Int

    init(storage: MDStorage, offset: Int, length: Int) {
        self.storage = storage
        self.offset = offset
        self.length = length
    }

    /// An empty window (no memory).
    public static let empty = LNetMDWindow(storage: .empty, offset: 0, length: 0)

    /// Every fragment of the MD (not only the part in the window).
    public var fragments: [LNetFragment] { storage.fragments }
    /// The MD's total length.
    public var mdLength: Int { storage.length }

    /// Whether all of the MD's memory lives in `LNetBuffer`s (whose release LNet announces through
    /// `LNetBuffer.releaseObservers`), as opposed to caller-owned memory that may be freed unannounced.
    public var isBufferBacked: Bool { !storage.fragments.isEmpty && storage.owners.count == storage.fragments.count }

    /// The pieces of memory covering exactly `[offset, offset + length)`, in order.
    public var segments: [UnsafeMutableRawBufferPointer] {
        var result: [UnsafeMutableRawBufferPointer] = []
        forEachSegment { result.append($0) }
        return result
    }

    /// Calls `body` with each contiguous piece of memory covering the window, in order.
    public func forEachSegment(_ body: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        guard length > 0, offset < storage.length else { return }
        var remaining = min(length, storage.length - offset)
        var index = storage.fragmentIndex(containing: offset)
        var within = offset - storage.starts[index]
        while remaining > 0, index < storage.fragments.count {
            let fragment = storage.fragments[index]
            let take = min(remaining, fragment.length - within)
            if take > 0 {
                try body(UnsafeMutableRawBufferPointer(start: fragment.baseAddress + within, count: take))
            }
            remaining -= take
            within = 0
            index += 1
        }
    }

    /// A sub-window: `length` bytes starting `offset` bytes into this window (clamped).
    public func slice(offset relative: Int, length: Int) -> LNetMDWindow {
        let start = min(max(0, relative), self.length)
        return LNetMDWindow(storage: storage, offset: offset + start, length: min(max(0, length), self.length - start))
    }

    /// Copies up to `min(length, source.length)` bytes from `source` into this window; returns the bytes copied.
    @discardableResult
    public func copy(from source: LNetMDWindow) -> Int {
        let total = min(length, source.length)
        var destinations = segments[...]
        var copied = 0
        var destinationOffset = 0
        source.forEachSegment { piece in
            var pieceOffset = 0
            while pieceOffset < piece.count, copied < total, let destination = destinations.first {
                let take = min(piece.count - pieceOffset, destination.count - destinationOffset, total - copied)
                memcpy(destination.baseAddress! + destinationOffset, piece.baseAddress! + pieceOffset, take)
                pieceOffset += take
                destinationOffset += take
                copied += take
                if destinationOffset == destination.count {
                    destinations = destinations.dropFirst()
                    destinationOffset = 0
                }
            }
        }
        return copied
    }

    /// Copies `bytes` into the window (up to the window's length); returns the bytes copied.
    @discardableResult
    public func copy(from bytes: UnsafeRawBufferPointer) -> Int {
        var copied = 0
        forEachSegment { piece in
            let take = min(piece.count, bytes.count - copied)
            guard take > 0, let source = bytes.baseAddress else { return }
            memcpy(piece.baseAddress!, source + copied, take)
            copied += take
        }
        return copied
    }

    /// Copies the window's bytes out into `destination` (up to its size); returns the bytes copied.
    @discardableResult
    public func copy(into destination: UnsafeMutableRawBufferPointer) -> Int {
        var copied = 0
        forEachSegment { piece in
            let take = min(piece.count, destination.count - copied)
            guard take > 0, let target = destination.baseAddress else { return }
            memcpy(target + copied, piece.baseAddress!, take)
            copied += take
        }
        return copied
    }

    /// The window's bytes as an array (for tests and small payloads).
    public func bytes() -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(length)
        forEachSegment { result.append(contentsOf: $0) }
        return result
    }
}
