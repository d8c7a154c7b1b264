import Synchronization
import Testing

@testable import LNet

@Suite struct LNetBufferTests {
    @Test func isPageAlignedAndZeroed() throws {
        let buffer = try LNetBuffer(count: 10_000)
        #expect(Int(bitPattern: buffer.baseAddress) % LNetBuffer.pageSize == 0)
        #expect(buffer.read().allSatisfy { $0 == 0 })
        #expect(buffer.count == 10_000)
    }

    @Test func readsAndWrites() throws {
        let buffer = try LNetBuffer(copying: [1, 2, 3, 4])
        #expect(buffer.read() == [1, 2, 3, 4])
        #expect(buffer.write([9, 9, 9], at: 2) == 2)
        #expect(buffer.read() == [1, 2, 9, 9])
        #expect(buffer.read(offset: 1, length: 2) == [2, 9])
        #expect(buffer.read(offset: 10, length: 2) == [])
        #expect(buffer.write([1], at: -1) == 0)
        buffer.fill(7)
        #expect(buffer.read() == [7, 7, 7, 7])
        #expect(try LNetBuffer(count: 0).read() == [])
        #expect(throws: LNetError.self) { try LNetBuffer(count: -1) }
    }

    @Test func releaseObserversHearOfFreedBuffers() throws {
        let seen = Mutex<[(UInt, Int)]>([])
        let token = LNetBuffer.releaseObservers.add { base, length in seen.withLock { $0.append((UInt(bitPattern: base), length)) } }
        defer { LNetBuffer.releaseObservers.remove(token) }
        var address: UInt = 0
        do {
            let buffer = try LNetBuffer(count: 12345)
            address = UInt(bitPattern: buffer.baseAddress)
        }
        #expect(seen.withLock { $0.contains { $0.0 == address && $0.1 == 12345 } })
    }
}
