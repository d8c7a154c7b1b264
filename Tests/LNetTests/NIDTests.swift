import Testing

@testable import LNet

@Suite struct NIDTests {
    @Test(arguments: ["192.0.2.1@o2ib", "0@lo", "10.1.2.3@tcp", "10.1.2.3@o2ib3", "255.255.255.255@tcp1"])
    func roundTrips(_ text: String) throws {
        let nid = try NID(parsing: text)
        #expect(nid.description == text)
        #expect(NID(rawValue: nid.rawValue) == nid)
    }

    @Test func fieldsAndEncoding() throws {
        let nid = try NID(parsing: "192.0.2.1@o2ib")
        #expect(nid.address == 0xC000_0201)
        #expect(nid.network == .o2ib)
        #expect(nid.rawValue == (UInt64(5) << 48) | 0xC000_0201)
        #expect(try NID(parsing: "0@lo") == .loopback)
        #expect(try NID(parsing: "1.2.3.4@o2ib0") == NID(address: 0x0102_0304, network: .o2ib))
    }

    @Test(arguments: ["", "192.0.2.1", "192.0.2.1@", "@o2ib", "192.0.2@o2ib", "192.0.2.256@o2ib", "1.2.3.4@ib",
                      "1@lo", "a.b.c.d@tcp", "1.2.3.4@tcp@tcp", "1.2.3.4@lo1", "1.2.3.4@o2ib99999", "01234.1.1.1@tcp"])
    func rejectsBadText(_ text: String) {
        #expect(throws: LNetError.self) { try NID(parsing: text) }
    }

    @Test func errorsDescribeTheProblem() {
        do {
            _ = try NID(parsing: "1.2.3.4@ib")
            Issue.record("should have thrown")
        } catch {
            #expect(error.description.contains("1.2.3.4@ib"))
            #expect(error.description.contains("unknown network type"))
        }
    }

    @Test func networks() throws {
        #expect(try LNetNetwork(parsing: "o2ib1").description == "o2ib1")
        #expect(try LNetNetwork(parsing: "tcp0").description == "tcp")
        #expect(LNetNetwork(rawValue: LNetNetwork(type: .o2ib, number: 7).rawValue) == LNetNetwork(type: .o2ib, number: 7))
        #expect(NID.any.isAny)
        #expect(try NID(parsing: "*") == .any)
    }
}
