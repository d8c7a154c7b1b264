import Verbs

/// A piece of local memory for an RDMA transfer: where it is and the local key that reaches it.
struct LocalPiece: Sendable, Hashable {
    var address: UInt64
    var length: Int
    var lkey: UInt32
}

/// One RDMA READ or WRITE work request of a transfer: a contiguous remote range and the local pieces that
/// scatter (READ) or gather (WRITE) it.
struct TransferStep: Sendable, Hashable {
    var remoteAddress: UInt64
    var rkey: UInt32
    var local: [ScatterGatherElement]
    var length: Int { local.reduce(0) { $0 + Int($1.length) } }
}

enum TransferPlanError: Error, Equatable, CustomStringConvertible {
    /// The remote descriptor covers fewer bytes than the transfer moves.
    case remoteTooShort(need: Int, have: Int)
    case localTooShort(need: Int, have: Int)

    var description: String {
        switch self {
        case .remoteTooShort(let need, let have): "remote descriptor covers \(have) bytes, the transfer moves \(need)"
        case .localTooShort(let need, let have): "local memory covers \(have) bytes, the transfer moves \(need)"
        }
    }
}

/// Maps `length` bytes between a list of local pieces and a list of remote fragments: one work request per
/// contiguous remote range, each with at most `maxScatterGather` local elements. The first `length` bytes of
/// both lists correspond in order.
func planTransfer(local: [LocalPiece], remote: [RDMAFragment], length: Int, maxScatterGather: Int,
                  maxStepLength: Int = 1 << 30) throws(TransferPlanError) -> [TransferStep] {
    let remoteTotal = remote.reduce(0) { $0 + Int($1.length) }
    guard remoteTotal >= length else { throw .remoteTooShort(need: length, have: remoteTotal) }
    let localTotal = local.reduce(0) { $0 + $1.length }
    guard localTotal >= length else { throw .localTooShort(need: length, have: localTotal) }

    var steps: [TransferStep] = []
    var remaining = length
    var localIndex = 0
    var localOffset = 0
    var remoteIndex = 0
    var remoteOffset = 0
    while remaining > 0 {
        let fragment = remote[remoteIndex]
        let fragmentLeft = Int(fragment.length) - remoteOffset
        if fragmentLeft == 0 {
            remoteIndex += 1
            remoteOffset = 0
            continue
        }
        // Wrapping arithmetic: a hostile address near the top of the range must fail at the NIC, not trap here.
        var step = TransferStep(remoteAddress: fragment.address &+ UInt64(remoteOffset), rkey: fragment.rkey, local: [])
        var stepLength = 0
        let stepLimit = min(fragmentLeft, remaining, maxStepLength)
        while stepLength < stepLimit && step.local.count < maxScatterGather {
            let piece = local[localIndex]
            let pieceLeft = piece.length - localOffset
            if pieceLeft == 0 {
                localIndex += 1
                localOffset = 0
                continue
            }
            let take = min(pieceLeft, stepLimit - stepLength)
            step.local.append(ScatterGatherElement(address: piece.address &+ UInt64(localOffset), length: UInt32(take), lkey: piece.lkey))
            localOffset += take
            stepLength += take
        }
        steps.append(step)
        remoteOffset += stepLength
        remaining -= stepLength
    }
    return steps
}
