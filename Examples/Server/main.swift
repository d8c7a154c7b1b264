// A server: one match entry on portal 42 whose MD takes PUTs into a 1 MiB buffer and serves GETs from it.
//
//   ExampleServer 192.0.2.1@o2ib [COUNT]   next to an RDMA device (the LND_* tunables apply)
//   ExampleServer 0@lo [COUNT]             anywhere, though only its own process can reach 0@lo (see ExampleClient)
//
// It prints each event of the MD and stops after COUNT of them (default: runs until it is killed).
import Foundation
import LNet
import RDMALND

func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }  // unbuffered, for pipes
let arguments = CommandLine.arguments
guard arguments.count > 1, let nid = try? NID(parsing: arguments[1]) else {
    say("usage: ExampleServer NID [COUNT]   (e.g. 192.0.2.1@o2ib, or 0@lo)")
    exit(2)
}
let count = arguments.count > 2 ? Int(arguments[2]) ?? 0 : 0

let lnet = LNet()
do {
    let networks = NetworkConfiguration(interfaces: [.init(network: nid.network, address: nid.address)])
    try lnet.addInterfaces(networks) { interface in
        if interface.network == .loopback { return LoopbackLND() }
        return try RDMALND()  // reads the LND_* tunables: a bad one throws a TunableError, which composes
    }
    let events = EventQueue(label: "server")
    _ = try lnet.attach(MatchEntry(portal: 42, matchBits: 0x5EED, unlink: .retain),
                        descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 1 << 20), threshold: .infinite,
                                                     options: [.put, .get, .manageRemote], eventQueue: events))
    say("serving \(nid) pid \(lnet.pid) portal 42")
    var seen = 0
    for try await event in events.events {
        say("\(event)")
        seen += 1
        if seen == count { break }
    }
} catch {
    say("ExampleServer: \(error)")
    lnet.shutdown()
    exit(1)
}
lnet.shutdown()
