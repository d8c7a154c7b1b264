import Testing

@testable import LNet

@Suite struct ProcessIDTests {
    @Test func parsesAndPrints() throws {
        let id = try ProcessID(parsing: "12345-192.0.2.1@o2ib")
        #expect(id.pid == 12345)
        #expect(id.nid == (try NID(parsing: "192.0.2.1@o2ib")))
        #expect(id.description == "12345-192.0.2.1@o2ib")
        #expect(try ProcessID(parsing: "0@lo") == ProcessID(nid: .loopback, pid: ProcessID.defaultPID))
        #expect(try ProcessID(parsing: "*-0@lo").pid == ProcessID.anyPID)
        #expect(try ProcessID(parsing: "*") == .any)
    }

    @Test(arguments: ["x-0@lo", "-0@lo", "12-", "99999999999-0@lo", "1-2-0@lo", "5-1.2.3.4"])
    func rejectsBadText(_ text: String) {
        #expect(throws: LNetError.self) { try ProcessID(parsing: text) }
    }

    @Test func wildcardsAdmit() throws {
        let a = try ProcessID(parsing: "7-10.0.0.1@tcp")
        #expect(ProcessID.any.admits(a))
        #expect(ProcessID(nid: a.nid, pid: ProcessID.anyPID).admits(a))
        #expect(ProcessID(nid: .any, pid: 7).admits(a))
        #expect(!ProcessID(nid: .any, pid: 8).admits(a))
        #expect(!(try ProcessID(parsing: "7-10.0.0.2@tcp")).admits(a))
    }
}
