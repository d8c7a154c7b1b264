import Testing
@testable import RDMALND

@Suite struct TransferPlanTests {
    @Test func oneToOneIsOneStep() throws {
        let steps = try planTransfer(local: [LocalPiece(address: 0x1000, length: 4096, lkey: 1)],
                                     remote: [RDMAFragment(address: 0x9000, length: 4096, rkey: 2)], length: 4096, maxScatterGather: 4)
        #expect(steps.count == 1)
        #expect(steps[0].remoteAddress == 0x9000)
        #expect(steps[0].rkey == 2)
        #expect(steps[0].local.map(\.length) == [4096])
    }

    @Test func manyLocalPiecesGatherIntoOneRemoteFragmentUpToTheSGELimit() throws {
        let local = (0..<5).map { LocalPiece(address: UInt64(0x10000 * ($0 + 1)), length: 100, lkey: UInt32($0)) }
        let steps = try planTransfer(local: local, remote: [RDMAFragment(address: 0x1, length: 500, rkey: 9)], length: 500, maxScatterGather: 2)
        #expect(steps.map(\.local.count) == [2, 2, 1])
        #expect(steps.map(\.remoteAddress) == [0x1, 0x1 + 200, 0x1 + 400])
        #expect(steps.reduce(0) { $0 + $1.length } == 500)
    }

    @Test func remoteFragmentsSplitALocalPiece() throws {
        let steps = try planTransfer(local: [LocalPiece(address: 0x1000, length: 300, lkey: 1)],
                                     remote: [RDMAFragment(address: 0xA000, length: 100, rkey: 5), RDMAFragment(address: 0xB000, length: 250, rkey: 6)],
                                     length: 300, maxScatterGather: 4)
        #expect(steps.count == 2)
        #expect(steps[0].local == [.init(address: 0x1000, length: 100, lkey: 1)])
        #expect(steps[1].remoteAddress == 0xB000)
        #expect(steps[1].rkey == 6)
        #expect(steps[1].local == [.init(address: 0x1000 + 100, length: 200, lkey: 1)])
    }

    @Test func lengthShorterThanBothMovesOnlyThatMuch() throws {
        let steps = try planTransfer(local: [LocalPiece(address: 0, length: 1000, lkey: 1)],
                                     remote: [RDMAFragment(address: 0, length: 1000, rkey: 1)], length: 10, maxScatterGather: 1)
        #expect(steps.map(\.length) == [10])
        #expect(try planTransfer(local: [], remote: [], length: 0, maxScatterGather: 1).isEmpty)
    }

    @Test func shortDescriptorsAreErrors() {
        #expect(throws: TransferPlanError.remoteTooShort(need: 200, have: 100)) {
            try planTransfer(local: [LocalPiece(address: 0, length: 200, lkey: 1)], remote: [RDMAFragment(address: 0, length: 100, rkey: 1)],
                             length: 200, maxScatterGather: 1)
        }
        #expect(throws: TransferPlanError.localTooShort(need: 200, have: 10)) {
            try planTransfer(local: [LocalPiece(address: 0, length: 10, lkey: 1)], remote: [RDMAFragment(address: 0, length: 300, rkey: 1)],
                             length: 200, maxScatterGather: 1)
        }
    }

    @Test func zeroLengthFragmentsAreSkipped() throws {
        let steps = try planTransfer(local: [LocalPiece(address: 0, length: 0, lkey: 1), LocalPiece(address: 64, length: 64, lkey: 2)],
                                     remote: [RDMAFragment(address: 0, length: 0, rkey: 1), RDMAFragment(address: 128, length: 64, rkey: 3)],
                                     length: 64, maxScatterGather: 1)
        #expect(steps == [TransferStep(remoteAddress: 128, rkey: 3, local: [.init(address: 64, length: 64, lkey: 2)])])
    }

    /// A hostile address near the top of the range must not trap while planning (the NIC refuses it later).
    @Test func addressesNearTheTopWrapInsteadOfTrapping() throws {
        let local = (0..<4).map { LocalPiece(address: UInt64($0) * 0x1000, length: 8, lkey: 1) }
        let steps = try planTransfer(local: local, remote: [RDMAFragment(address: UInt64.max - 8, length: 32, rkey: 1)],
                                     length: 32, maxScatterGather: 2)
        #expect(steps.count == 2)
    }
}
