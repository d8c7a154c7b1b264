import Foundation
import Testing

/// The Examples/ binaries where there is no RDMA device: the client over 0@lo (playing the server's part in
/// its own process), and both refusing bad arguments.
@Suite(.timeLimit(.minutes(2)))
struct ExamplesTests {
    @Test(arguments: [1 << 20, 3000, 1])
    func theClientPutsAndGetsBackOverLoopback(_ size: Int) async throws {
        let (status, output) = try await ExampleProcess.run("ExampleClient", ["0@lo", "0@lo", "\(size)"])
        #expect(status == 0, "\(output)")
        #expect(output.contains("PUT \(size) bytes (ACK), GET \(size) bytes back: identical"), "\(output)")
    }

    /// The server comes up over 0@lo too (nobody else can reach it there) and serves until it is stopped.
    @Test func theServerComesUpOverLoopback() async throws {
        let server = try ExampleProcess("ExampleServer", ["0@lo"])
        let up = try await server.waitForLine(containing: "serving 0@lo pid 12345 portal 42")
        #expect(up, "\(server.text)")
        #expect(server.process.isRunning)
        kill(server.process.processIdentifier, SIGTERM)
        _ = try await server.finish()
    }

    @Test func badArgumentsGetTheUsage() async throws {
        for (name, arguments) in [("ExampleClient", ["0@lo"]), ("ExampleClient", ["0@lo", "nonsense"]),
                                  ("ExampleClient", ["0@lo", "0@lo", "0"]), ("ExampleServer", [])] {
            let (status, output) = try await ExampleProcess.run(name, arguments)
            #expect(status == 2 && output.contains("usage:"), "\(name) \(arguments): \(status) \(output)")
        }
    }

    /// An o2ib client with a bad tunable stops with the error that names it (TunableError through
    /// addInterfaces), before any device is touched.
    @Test func aBadTunableStopsTheClientWithItsName() async throws {
        let (status, output) = try await ExampleProcess.run("ExampleClient", ["192.0.2.2@o2ib", "192.0.2.1@o2ib"],
                                                            environment: ["LND_PEER_CREDITS": "0"])
        #expect(status == 1 && output.contains("LND_PEER_CREDITS=0"), "\(status) \(output)")
    }
}
