import Testing
@testable import RDMALND

@Suite struct HandshakeTests {
    let limits = ConnectionLimits(queueDepth: 8, maxFragments: 256, maxMessageSize: 8192)

    @Test func requestFitsTheConnectPrivateDataAndRoundTrips() throws {
        let request = ConnectRequest(source: 1, sourceStamp: 2, destination: 3, limits: limits)
        let bytes = request.encoded()
        #expect(bytes.count <= 56)
        // rdma_cm pads private data with zeros: trailing bytes are ignored.
        #expect(try ConnectRequest.decode(bytes + [UInt8](repeating: 0, count: 16)) == request)
    }

    @Test func acceptAndRejectRoundTrip() throws {
        let accept = ConnectAccept(source: 3, sourceStamp: 4, requesterStamp: 2, limits: limits, destination: 1)
        #expect(try ConnectAccept.decode(accept.encoded()) == accept)
        for reason in RejectReason.allCases {
            let reject = ConnectReject(reason: reason, stamp: 9, limits: limits, servedNID: 3)
            #expect(reject.encoded().count <= 148)
            #expect(ConnectReject.decode(reject.encoded()) == reject)
        }
    }

    @Test func badHandshakeDataIsAnError() {
        #expect(throws: WireError.badMagic(0)) { _ = try ConnectRequest.decode([UInt8](repeating: 0, count: 40)) }
        #expect(throws: WireError.self) { _ = try ConnectRequest.decode([0x4C, 0x4E]) }
        #expect(ConnectReject.decode([]) == nil)
        #expect(ConnectReject.decode([UInt8](repeating: 0xFF, count: 32)) == nil)
    }

    @Test func anotherVersionDecodesSoItCanBeRejectedByName() throws {
        var bytes = ConnectRequest(source: 1, sourceStamp: 2, destination: 3, limits: limits).encoded()
        bytes[4] = 2
        #expect(try ConnectRequest.decode(bytes).version == 2)
    }

    @Test func retryableReasons() {
        #expect(RejectReason.queueDepthTooLarge.isRetryable)
        #expect(!RejectReason.staleIncarnation.isRetryable)
        #expect(!RejectReason.versionMismatch.isRetryable)
    }
}
