// LNetInstructionBench: one kind of message exchange N times on one thread, for instruction counting under
// `valgrind --tool=callgrind` (Benchmarks/callgrind.sh runs it twice, with N and 2N, and divides the difference by
// N). Not a timed benchmark: it prints nothing but a check line; the count is the figure.
//
//   put-ack N     bind an 8-byte MD, PUT it with an ACK to a match entry of this node over the loopback LND (inline
//                 delivery: the whole exchange on this thread), events on inline queues at both ends
//   get-reply N   bind an 8-byte MD, GET 8 bytes from a match entry of this node, the same way
//   wire N        encode and decode an RDMA LND IMMEDIATE (LNet header + 8 B payload), and encode and decode a
//                 GET_REQ with a one-fragment sink descriptor
//
// Run: swift run -c release LNetInstructionBench put-ack 1000

import LNet
import RDMALND
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String) -> Never {
    print("LNetInstructionBench: \(message)")
    exit(1)
}

let arguments = CommandLine.arguments
guard arguments.count == 3, let count = Int(arguments[2]), count > 0 else {
    fail("usage: LNetInstructionBench put-ack|get-reply|wire N")
}

/// Counts events at one end; the exchange is synchronous, so a plain atomic is enough.
final class Tally: Sendable {
    let events = Atomic<Int>(0)
    let failures = Atomic<Int>(0)
    func record(_ event: LNetEvent) {
        events.add(1, ordering: .relaxed)
        if !event.status.isOK { failures.add(1, ordering: .relaxed) }
    }
}

func lnetExchange(get: Bool) throws(LNetError) {
    let lnet = LNet()
    defer { lnet.shutdown() }
    let ni = try lnet.addInterface(.loopback, lnd: LoopbackLND(delivery: .inline))
    let target = ProcessID(nid: ni.nid, pid: lnet.pid)
    let initiator = Tally()
    let responder = Tally()
    let initiatorQueue = EventQueue(label: "initiator", delivery: .inline { initiator.record($0) })
    let responderQueue = EventQueue(label: "responder", delivery: .inline { responder.record($0) })
    let targetBuffer = try LNetBuffer(count: 8)
    _ = try lnet.attach(MatchEntry(portal: 1, matchBits: 7, unlink: .retain),
                        descriptor: MemoryDescriptor(buffer: targetBuffer, threshold: .infinite,
                                                     options: [.put, .get, .manageRemote], eventQueue: responderQueue))
    let buffer = try LNetBuffer(count: 8)
    for _ in 0..<count {
        let md = try lnet.bind(MemoryDescriptor(buffer: buffer, threshold: .count(2), eventQueue: initiatorQueue))
        if get {
            try lnet.get(md, from: target, portal: 1, matchBits: 7)
        } else {
            try lnet.put(md, to: target, portal: 1, matchBits: 7, ackRequested: true)
        }
    }
    // SEND + ACK (or REPLY) at the initiator, PUT (or GET) at the responder, per exchange.
    let events = (initiator.events.load(ordering: .relaxed), responder.events.load(ordering: .relaxed))
    guard events == (2 * count, count), initiator.failures.load(ordering: .relaxed) == 0,
          responder.failures.load(ordering: .relaxed) == 0 else {
        fail("expected \(2 * count) and \(count) events without failures, got \(events)")
    }
    print("\(get ? "get-reply" : "put-ack") x\(count): ok")
}

func wireRoundTrips() {
    let source = ProcessID(nid: NID(address: 0xC000_0202, network: .o2ib), pid: 12345)
    let destination = ProcessID(nid: NID(address: 0xC000_0201, network: .o2ib), pid: 12345)
    let addressing = WireAddressing(source: source.nid.rawValue, sourceStamp: 1, destination: destination.nid.rawValue,
                                    destinationStamp: 2)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 64)
    defer { buffer.deallocate() }
    let payload: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
    var decoded = 0
    for sequence in 0..<count {
        let put = LNetHeader(type: .put, source: source, destination: destination, payloadLength: 8, portal: 1,
                             matchBits: UInt64(sequence), mdCookie: 9, ackRequested: true)
        let immediate = WireMessage.encode(.immediate(lnet: put, payloadOffset: 0, payloadLength: 8), credits: 1,
                                           addressing: addressing, checksum: false, into: buffer) { payloadBytes in
            payload.withUnsafeBytes { payloadBytes.copyMemory(from: $0) }
        }
        if let message = try? WireMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[0..<immediate]), maxFragments: 256),
           case .immediate(let lnet, _, 8) = message.body, lnet.matchBits == UInt64(sequence) {
            decoded += 1
        }
        let get = LNetHeader(type: .get, source: source, destination: destination, length: 65536, portal: 1,
                             matchBits: UInt64(sequence), mdCookie: 9)
        let sink = RDMADescriptor(fragments: [RDMAFragment(address: 0x10000, length: 65536, rkey: 0x1234)])
        let request = WireMessage.encode(.getRequest(lnet: get, cookie: UInt64(sequence), sink: sink), credits: 0,
                                         addressing: addressing, checksum: false, into: buffer)
        if let message = try? WireMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[0..<request]), maxFragments: 256),
           case .getRequest(_, let cookie, let descriptor) = message.body, cookie == UInt64(sequence), descriptor == sink {
            decoded += 1
        }
    }
    guard decoded == 2 * count else { fail("decoded \(decoded) of \(2 * count) messages") }
    print("wire x\(count): ok")
}

switch arguments[1] {
case "put-ack", "get-reply":
    do { try lnetExchange(get: arguments[1] == "get-reply") } catch { fail("\(error)") }
case "wire":
    wireRoundTrips()
default:
    fail("unknown exchange \(arguments[1]) (put-ack, get-reply, wire)")
}
