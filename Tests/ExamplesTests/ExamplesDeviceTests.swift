import DeviceTestSupport
import Foundation
import Testing

/// ExampleServer and ExampleClient as two processes over rxe (o2ib), in both bulk modes, bulk and eager sizes.
@Suite(.requiresDevice,
       .serialized, .timeLimit(.minutes(5)))
struct ExamplesDeviceTests {
    static let port = String(18_000 + Int(getpid() % 900))

    @Test(arguments: ["pull", "push"])
    func theClientPutsAndGetsBackFromTheServerOverRxe(_ mode: String) async throws {
        // A GET's bulk mode is the target's (the server's), a PUT's the source's (the client's).
        let environment = ["LND_SERVICE_PORT": Self.port, "LND_TIMEOUT": "20", "LND_GET_MODE": mode, "LND_PUT_MODE": mode]
        let sizes = [1 << 20, 3000]
        let server = try ExampleProcess("ExampleServer", ["\(TestBed.serverAddress)@o2ib", "\(2 * sizes.count)"],
                                        environment: environment)
        let up = try await server.waitForLine(containing: "serving")
        #expect(up, "server did not come up: \(server.text)")
        if up {
            for size in sizes {
                let (status, output) = try await ExampleProcess.run(
                    "ExampleClient", ["\(TestBed.clientAddress)@o2ib", "\(TestBed.serverAddress)@o2ib", "\(size)"],
                    environment: environment)
                #expect(status == 0, "\(mode) \(size): \(output)")
                #expect(output.contains("PUT \(size) bytes (ACK), GET \(size) bytes back: identical"), "\(mode) \(size): \(output)")
            }
        } else {
            kill(server.process.processIdentifier, SIGTERM)
        }
        let (status, output) = try await server.finish()
        #expect(status == 0, "server: \(output)")
        // The server saw each client's PUT and GET, in that order.
        let kinds = output.split(separator: "\n").compactMap { line in ["PUT(ok)", "GET(ok)"].first { line.hasPrefix($0) } }
        #expect(kinds == Array(repeating: ["PUT(ok)", "GET(ok)"], count: sizes.count).flatMap { $0 }, "\(output)")
    }
}
