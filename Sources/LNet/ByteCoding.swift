/// Little-endian writing into, and bounds-checked reading from, raw message buffers: the one byte coder of the
/// stack, used by the RDMA LND's wire format and handshake and by the self-test protocol.
///
/// For LNDs and protocols built on LNet, to encode their wire formats. Everything is `@inlinable` and public, so a
/// client module specializes it for its integer types and its error type: the RDMA LND's wire coding costs the same
/// as when the coder lived in RDMALND (Benchmarks/callgrind.sh, `wire`). (`@inlinable package` would not do: this
/// toolchain, Swift 6.3.1, does not inline `package` bodies into another module of the package; measured, the wire
/// coding went from 3,071 to 25,655 instructions per message.)

/// An error a ``ByteReader`` can throw: the decoder's own, made for a read past the end.
public protocol ByteDecodingError: Error {
    /// A read needed `needed` bytes from the start of input that has `have`.
    static func truncated(needed: Int, have: Int) -> Self
}

/// Writes little-endian integers and bytes into a buffer; running past its end is a bug in the encoder (it traps).
public struct ByteWriter {
    /// The buffer written into.
    public let buffer: UnsafeMutableRawBufferPointer
    /// Bytes written so far.
    public var offset = 0

    @inlinable public init(_ buffer: UnsafeMutableRawBufferPointer) { self.buffer = buffer }

    @inlinable public var remaining: Int { buffer.count - offset }

    @inlinable public mutating func write<T: FixedWidthInteger>(_ value: T) {
        precondition(remaining >= MemoryLayout<T>.size, "message encoding overran its buffer")
        buffer.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
    }

    @inlinable public mutating func write(bytes: UnsafeRawBufferPointer) {
        precondition(remaining >= bytes.count, "message encoding overran its buffer")
        if let base = bytes.baseAddress, bytes.count > 0 {
            (buffer.baseAddress! + offset).copyMemory(from: base, byteCount: bytes.count)
        }
        offset += bytes.count
    }

    @inlinable public mutating func skip(_ count: Int) {
        precondition(remaining >= count, "message encoding overran its buffer")
        offset += count
    }

    /// A new array of exactly `count` bytes, filled by `body` (which must write all of them).
    @inlinable public static func bytes(count: Int, _ body: (inout ByteWriter) -> Void) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { storage, initialized in
            var writer = ByteWriter(UnsafeMutableRawBufferPointer(storage))
            body(&writer)
            precondition(writer.offset == count, "message encoding wrote \(writer.offset) of \(count) bytes")
            initialized = count
        }
    }
}

/// Reads little-endian integers and bytes from a buffer. Never traps on short or hostile input: every read checks
/// the remaining length and throws `Failure.truncated`.
public struct ByteReader<Failure: ByteDecodingError> {
    /// The bytes read from.
    public let buffer: UnsafeRawBufferPointer
    /// Bytes read so far.
    public var offset = 0

    @inlinable public init(_ buffer: UnsafeRawBufferPointer) { self.buffer = buffer }

    @inlinable public var remaining: Int { buffer.count - offset }

    /// Runs `body` with a reader over `bytes`, keeping the typed error.
    @inlinable public static func withReader<T>(_ bytes: [UInt8], _ body: (inout ByteReader) throws(Failure) -> T) throws(Failure) -> T {
        let result: Result<T, Failure> = bytes.withUnsafeBytes { raw in
            var reader = ByteReader(raw)
            do throws(Failure) { return .success(try body(&reader)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    @inlinable public mutating func read<T: FixedWidthInteger>(_: T.Type = T.self) throws(Failure) -> T {
        guard remaining >= MemoryLayout<T>.size else { throw Failure.truncated(needed: offset + MemoryLayout<T>.size, have: buffer.count) }
        let value = buffer.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: value)
    }

    @inlinable public mutating func bytes(_ count: Int) throws(Failure) -> UnsafeRawBufferPointer {
        guard count >= 0, remaining >= count else { throw Failure.truncated(needed: offset + max(count, 0), have: buffer.count) }
        let slice = UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + count])
        offset += count
        return slice
    }
}
