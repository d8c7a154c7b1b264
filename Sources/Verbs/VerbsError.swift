#if canImport(Glibc)
import Glibc
#endif

/// A failed verbs or rdma_cm call: which call, and the errno it reported, in words.
///
/// libibverbs reports errors three ways (their man pages, e.g. ibv_create_qp(3), ibv_post_send(3), rdma_connect(3)):
/// `ibv_create_*` return NULL and set errno, `ibv_destroy_*`, `ibv_post_*` and `ibv_modify_*` return the errno
/// value, and `rdma_*` return -1 and set errno. The helpers below turn each convention into this one error type.
public struct VerbsError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The C function that failed, e.g. `ibv_create_qp`.
    public let call: String
    /// The errno value (positive), or 0 when the call failed without setting errno.
    public let errno: Int32
    /// Extra context (device name, address, state), if any.
    public let detail: String?

    public init(call: String, errno: Int32, detail: String? = nil) {
        self.call = call
        self.errno = errno
        self.detail = detail
    }

    /// The errno's text, as `strerror` gives it.
    public var reason: String {
        if errno == 0 { return "failed without an errno" }
        return String(cString: strerror(errno))
    }

    public var description: String {
        var text = "\(call): \(reason) (errno \(errno))"
        if let detail { text += " [\(detail)]" }
        return text
    }

    /// The calling thread's current errno.
    static var current: Int32 { Glibc.errno }

    /// Checks an int-returning call under either convention: 0 is success; a positive value is the errno
    /// itself (`ibv_post_*`, `ibv_destroy_*`, `ibv_modify_qp`, `ibv_query_port`); -1 means "see errno"
    /// (`rdma_*`, `ibv_query_gid`, `poll`).
    static func check(_ call: String, _ result: Int32, detail: String? = nil) throws(VerbsError) {
        if result == 0 { return }
        throw VerbsError(call: call, errno: result > 0 ? result : current, detail: detail)
    }

    /// Unwraps a pointer from a call that returns NULL and sets errno on failure (`ibv_create_*`, `ibv_reg_mr`).
    static func unwrap<T>(_ call: String, _ pointer: T?, detail: String? = nil) throws(VerbsError) -> T {
        guard let pointer else { throw VerbsError(call: call, errno: current, detail: detail) }
        return pointer
    }
}
