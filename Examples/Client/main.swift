// A client: PUTs a buffer to ExampleServer's match entry, GETs it back and checks every byte.
//
//   ExampleClient 192.0.2.2@o2ib 192.0.2.1@o2ib [BYTES]   to an ExampleServer over o2ib (LND_* tunables apply)
//   ExampleClient 0@lo 0@lo [BYTES]                       anywhere: over 0@lo it attaches the server's ME itself
import Foundation
import LNet
import RDMALND

let arguments = CommandLine.arguments
guard arguments.count > 2, let me = try? NID(parsing: arguments[1]), let server = try? NID(parsing: arguments[2]),
      let size = arguments.count > 3 ? Int(arguments[3]) : 1 << 20, size > 0 else {
    print("usage: ExampleClient MY-NID SERVER-NID [BYTES]   (e.g. 192.0.2.2@o2ib 192.0.2.1@o2ib, or 0@lo 0@lo)")
    exit(2)
}

let lnet = LNet()
do {
    try lnet.addInterfaces(NetworkConfiguration(interfaces: [.init(network: me.network, address: me.address)])) { interface in
        if interface.network == .loopback { return LoopbackLND() }
        return try RDMALND()  // reads the LND_* tunables: a bad one throws a TunableError, which composes
    }
    if server == .loopback {  // nobody else can reach 0@lo: play the server's part in this process
        _ = try lnet.attach(MatchEntry(portal: 42, matchBits: 0x5EED, unlink: .retain),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 1 << 20), threshold: .infinite,
                                                         options: [.put, .get, .manageRemote]))
    }
    let target = ProcessID(nid: server, pid: ProcessID.defaultPID)
    let sent = try LNetBuffer(copying: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
    let put = try await lnet.put(.buffer(sent), to: target, portal: 42, matchBits: 0x5EED, deadline: .now + .seconds(30))
    let back = try LNetBuffer(count: size)
    let get = try await lnet.get(into: .buffer(back), from: target, portal: 42, matchBits: 0x5EED, deadline: .now + .seconds(30))
    let same = get.matchedLength == size && memcmp(sent.baseAddress, back.baseAddress, size) == 0
    print("PUT \(put.matchedLength) bytes (ACK), GET \(get.matchedLength) bytes back: \(same ? "identical" : "DIFFERENT")")
    lnet.shutdown()
    exit(same ? 0 : 1)
} catch {
    print("ExampleClient: \(error)")
    lnet.shutdown()
    exit(1)
}
