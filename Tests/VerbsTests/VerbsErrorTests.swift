import Testing
@testable import Verbs

@Suite struct VerbsErrorTests {
    @Test func describesCallErrnoAndDetail() {
        let error = VerbsError(call: "ibv_create_qp", errno: 12, detail: "rxe0")
        #expect(error.description == "ibv_create_qp: Cannot allocate memory (errno 12) [rxe0]")
    }

    @Test func checkAcceptsZeroAndMapsBothConventions() throws {
        try VerbsError.check("ok", 0)
        #expect(throws: VerbsError(call: "ibv_post_send", errno: 22)) { try VerbsError.check("ibv_post_send", 22) }
    }

    @Test func workCompletionStatusUsesTheLibraryText() {
        #expect(WorkCompletionStatus.success.description == "success")
        #expect(WorkCompletionStatus.remoteAccessError.description == "remote access error")
        #expect(WorkCompletionStatus.flushed.isSuccess == false)
    }
}
