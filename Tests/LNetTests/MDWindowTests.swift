import Testing

@testable import LNet

@Suite struct MDWindowTests {
    private func window(_ parts: [[UInt8]], offset: Int, length: Int) throws -> (LNetMDWindow, [LNetBuffer]) {
        let buffers = try parts.map { try LNetBuffer(copying: $0) }
        let storage = try MemoryDescriptor(storage: .buffers(buffers)).makeStorage()
        return (LNetMDWindow(storage: storage, offset: offset, length: length), buffers)
    }

    @Test func segmentsCoverExactlyTheWindowAcrossFragments() throws {
        let (w, _) = try window([[0, 1, 2], [3, 4], [5, 6, 7, 8]], offset: 2, length: 5)
        #expect(w.segments.map(\.count) == [1, 2, 2])
        #expect(w.bytes() == [2, 3, 4, 5, 6])
        #expect(w.fragments.count == 3)
        #expect(w.mdLength == 9)
        #expect(w.slice(offset: 1, length: 10).bytes() == [3, 4, 5, 6])
    }

    @Test func copiesBetweenDifferentlyFragmentedWindows() throws {
        let (source, _) = try window([[1, 2], [3, 4, 5], [6]], offset: 0, length: 6)
        let (sink, buffers) = try window([[0, 0, 0, 0], [0, 0, 0, 0]], offset: 1, length: 6)
        #expect(sink.copy(from: source) == 6)
        #expect(buffers[0].read() == [0, 1, 2, 3])
        #expect(buffers[1].read() == [4, 5, 6, 0])
    }

    @Test func copiesRawBytesInAndOut() throws {
        let (w, _) = try window([[0, 0], [0, 0, 0]], offset: 1, length: 3)
        let input: [UInt8] = [7, 8, 9, 10]
        #expect(input.withUnsafeBytes { w.copy(from: $0) } == 3)
        var out = [UInt8](repeating: 0, count: 5)
        #expect(out.withUnsafeMutableBytes { w.copy(into: $0) } == 3)
        #expect(out == [7, 8, 9, 0, 0])
    }

    @Test func acceptsCallerMemoryAndRejectsBadRegions() throws {
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
        defer { raw.deallocate() }
        let storage = try MemoryDescriptor(storage: .unsafeFragments([raw, UnsafeMutableRawBufferPointer(rebasing: raw[0..<0])])).makeStorage()
        #expect(storage.fragments.count == 1)
        #expect(storage.fragments[0].baseAddress == raw.baseAddress)
        let buffer = try LNetBuffer(count: 8)
        #expect(throws: LNetError.self) { try MemoryDescriptor(storage: .region(buffer, offset: 4, length: 8)).makeStorage() }
        #expect(try MemoryDescriptor(storage: .region(buffer, offset: 4, length: 4)).makeStorage().length == 4)
        #expect(try MemoryDescriptor(storage: .none).makeStorage().length == 0)
    }
}
