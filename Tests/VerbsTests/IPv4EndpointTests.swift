import Testing
@testable import Verbs

@Suite struct IPv4EndpointTests {
    @Test func parsesAndPrints() throws {
        let endpoint = try IPv4Endpoint("192.0.2.1", port: 987)
        #expect(endpoint.description == "192.0.2.1:987")
        #expect(IPv4Endpoint(endpoint.sockaddr) == endpoint)
    }

    @Test(arguments: ["", "192.0.2", "192.0.2.256", "o2ib", "::1"])
    func rejectsBadText(_ text: String) {
        #expect(throws: VerbsError.self) { try IPv4Endpoint(text) }
    }
}
