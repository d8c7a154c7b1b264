import LNet

/// Little-endian writing into, and bounds-checked reading from, raw message buffers.
///
/// The reader never traps on short or hostile input: every read checks the remaining length and throws.
struct ByteWriter {
    let buffer: UnsafeMutableRawBufferPointer
    private(set) var offset = 0

    init(_ buffer: UnsafeMutableRawBufferPointer) { self.buffer = buffer }

    var remaining: Int { buffer.count - offset }

    mutating func write<T: FixedWidthInteger>(_ value: T) {
        precondition(remaining >= MemoryLayout<T>.size, "message encoding overran its buffer")
        buffer.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
    }

    mutating func write(bytes: UnsafeRawBufferPointer) {
        precondition(remaining >= bytes.count, "message encoding overran its buffer")
        if let base = bytes.baseAddress, bytes.count > 0 {
            (buffer.baseAddress! + offset).copyMemory(from: base, byteCount: bytes.count)
        }
        offset += bytes.count
    }

    mutating func skip(_ count: Int) {
        precondition(remaining >= count, "message encoding overran its buffer")
        offset += count
    }

    /// Writes an embedded LNet header (``LNetHeader/encodedSize`` bytes).
    mutating func write(_ header: LNetHeader) {
        precondition(remaining >= LNetHeader.encodedSize, "message encoding overran its buffer")
        try? header.encode(into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset...]))
        offset += LNetHeader.encodedSize
    }
}

struct ByteReader {
    let buffer: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ buffer: UnsafeRawBufferPointer) { self.buffer = buffer }

    var remaining: Int { buffer.count - offset }

    /// Runs `body` with a reader over `bytes`, keeping the typed error.
    static func withReader<T>(_ bytes: [UInt8], _ body: (inout ByteReader) throws(WireError) -> T) throws(WireError) -> T {
        let result: Result<T, WireError> = bytes.withUnsafeBytes { raw in
            var reader = ByteReader(raw)
            do throws(WireError) { return .success(try body(&reader)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type = T.self) throws(WireError) -> T {
        guard remaining >= MemoryLayout<T>.size else { throw WireError.truncated(needed: offset + MemoryLayout<T>.size, have: buffer.count) }
        let value = buffer.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: value)
    }

    /// Reads an embedded LNet header.
    mutating func readLNetHeader() throws(WireError) -> LNetHeader {
        let bytes = try bytes(LNetHeader.encodedSize)
        do throws(LNetHeader.CodingError) { return try LNetHeader(decoding: bytes) } catch { throw WireError.badLNetHeader(error) }
    }

    mutating func bytes(_ count: Int) throws(WireError) -> UnsafeRawBufferPointer {
        guard count >= 0, remaining >= count else { throw WireError.truncated(needed: offset + max(count, 0), have: buffer.count) }
        let slice = UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + count])
        offset += count
        return slice
    }
}
