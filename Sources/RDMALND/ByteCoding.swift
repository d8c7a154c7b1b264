import LNet

// The RDMA LND's use of LNet's byte coder (LNet/ByteCoding.swift): its reader throws ``WireError``, and both carry
// an embedded LNet header.

extension WireError: ByteDecodingError {}

/// The reader of wire messages and handshakes.
typealias WireReader = ByteReader<WireError>

extension ByteWriter {
    /// Writes an embedded LNet header (``LNetHeader/encodedSize`` bytes).
    mutating func write(_ header: LNetHeader) {
        precondition(remaining >= LNetHeader.encodedSize, "message encoding overran its buffer")
        try? header.encode(into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset...]))
        offset += LNetHeader.encodedSize
    }
}

extension ByteReader where Failure == WireError {
    /// Reads an embedded LNet header.
    mutating func readLNetHeader() throws(WireError) -> LNetHeader {
        let bytes = try bytes(LNetHeader.encodedSize)
        do throws(LNetHeader.CodingError) { return try LNetHeader(decoding: bytes) } catch { throw WireError.badLNetHeader(error) }
    }
}
