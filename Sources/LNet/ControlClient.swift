#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Asks a node's control socket (``LNetControlServer``): what `lnetctl net show`, `peer show`, `conns show` and
/// `stats show`/`reset` use.
public enum LNetControlClient {
    /// The node's status.
    public static func status(socket path: String, timeout: Duration = .seconds(10)) throws(LNetControlError) -> LNetNodeStatus {
        let response = try request("status", socket: path, timeout: timeout)
        guard let status = response.status else { throw LNetControlError("\(path): the answer has no status") }
        return status
    }

    /// Makes the node's counters count from now on.
    public static func reset(socket path: String, timeout: Duration = .seconds(10)) throws(LNetControlError) {
        _ = try request("reset", socket: path, timeout: timeout)
    }

    /// Sends one request line and decodes the answer; an answer with `ok: false` throws its error.
    public static func request(_ line: String, socket path: String, timeout: Duration = .seconds(10)) throws(LNetControlError) -> LNetControlResponse {
        let bytes = try exchange(Array((line + "\n").utf8), socket: path, timeout: timeout)
        let response: LNetControlResponse
        do { response = try JSONDecoder().decode(LNetControlResponse.self, from: Data(bytes)) } catch {
            throw LNetControlError("\(path): the answer is not what a control socket sends (\(bytes.count) bytes): \(error)")
        }
        guard response.ok else { throw LNetControlError("\(path): \(response.error ?? "the node refused the request")") }
        return response
    }

    /// Sends `bytes` and reads until the server closes (at most `maxBytes`), all within `timeout`.
    public static func exchange(_ bytes: [UInt8], socket path: String, timeout: Duration = .seconds(10),
                                maxBytes: Int = 256 << 20) throws(LNetControlError) -> [UInt8] {
        let fd = try UnixSocket.connect(to: path)
        defer { UnixSocket.close(fd) }
        let deadline = ContinuousClock.now + timeout
        var sent = 0
        while sent < bytes.count {
            try UnixSocket.wait(fd, for: Int16(POLLOUT), until: deadline, path: path)
            let written = bytes.withUnsafeBytes { raw in
                send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                // The server may answer (an error) and close before it read everything: read what it said.
                if errno == EPIPE || errno == ECONNRESET { break }
                throw LNetControlError("\(path): cannot send the request: \(String(cString: strerror(errno)))")
            }
            sent += written
        }
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            try UnixSocket.wait(fd, for: Int16(POLLIN), until: deadline, path: path)
            let received = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if received < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                if errno == ECONNRESET, !answer.isEmpty { break }
                throw LNetControlError("\(path): cannot read the answer: \(String(cString: strerror(errno)))")
            }
            if received == 0 { break }
            answer.append(contentsOf: chunk[0..<received])
            guard answer.count <= maxBytes else { throw LNetControlError("\(path): the answer is longer than \(maxBytes) bytes") }
        }
        guard !answer.isEmpty else { throw LNetControlError("\(path): the node closed the connection without an answer") }
        return answer
    }
}

/// The few socket calls the control server and client make (AF_UNIX, SOCK_STREAM).
enum UnixSocket {
    #if canImport(Glibc)
    static let stream = Int32(SOCK_STREAM.rawValue)
    #else
    static let stream = Int32(SOCK_STREAM)
    #endif

    static func close(_ fd: Int32) {
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    static func message(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// `sockaddr_un` for `path`, or nil when the path does not fit (107 bytes).
    static func address(_ path: String) -> sockaddr_un? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    static func withSockaddr<R>(_ address: inout sockaddr_un, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// A non-blocking connection to `path`, with errors in words.
    static func connect(to path: String) throws(LNetControlError) -> Int32 {
        guard var address = address(path) else { throw LNetControlError("socket path '\(path)' is empty or longer than 107 bytes") }
        let fd = socket(AF_UNIX, stream, 0)
        guard fd >= 0 else { throw LNetControlError("cannot make a socket: \(message(errno))") }
        setNonBlocking(fd)
        let result = withSockaddr(&address) { Glibc.connect(fd, $0, $1) }
        if result != 0 {
            let code = errno
            close(fd)
            switch code {
            case ENOENT: throw LNetControlError("no control socket at \(path) (is the node running with --control-socket \(path)?)")
            case ECONNREFUSED: throw LNetControlError("nothing listens at \(path) (a node that stopped without removing it?)")
            case EACCES, EPERM: throw LNetControlError("permission denied on \(path) (the socket is its owner's only, mode 0600)")
            case EAGAIN: throw LNetControlError("\(path): the node has too many connections waiting; try again")
            case ENOTSOCK: throw LNetControlError("\(path) is not a socket")
            default: throw LNetControlError("cannot connect to \(path): \(message(code))")
            }
        }
        return fd
    }

    /// Waits until `fd` is ready for `events` or `deadline` passes.
    static func wait(_ fd: Int32, for events: Int16, until deadline: ContinuousClock.Instant, path: String) throws(LNetControlError) {
        while true {
            let left = deadline - .now
            guard left > .zero else { throw LNetControlError("\(path): no answer in time") }
            var descriptor = pollfd(fd: fd, events: events, revents: 0)
            let timeout = Int32(min(60_000, max(1, LNetControlServer.milliseconds(left))))
            let ready = poll(&descriptor, 1, timeout)
            if ready < 0 && errno == EINTR { continue }
            if ready < 0 { throw LNetControlError("\(path): poll failed: \(message(errno))") }
            if ready > 0 { return }
        }
    }

    /// Sends what fits now and ignores the rest (a short error to a client that is being closed anyway).
    static func sendBestEffort(_ fd: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { raw in send(fd, raw.baseAddress, raw.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)) }
    }

    /// The connected peer's user id (SO_PEERCRED), or nil when the system does not say.
    static func peerUID(_ fd: Int32) -> uid_t? {
        #if os(Linux)
        // struct ucred (pid, uid, gid), which the Glibc module does not import.
        struct Credentials {
            var pid: Int32 = 0
            var uid: UInt32 = 0
            var gid: UInt32 = 0
        }
        var credentials = Credentials()
        var length = socklen_t(MemoryLayout<Credentials>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0,
              length == socklen_t(MemoryLayout<Credentials>.size) else { return nil }
        return uid_t(credentials.uid)
        #else
        return nil
        #endif
    }

    /// Makes a listening socket at `path` whose file has mode 0600 from the moment it can be reached: bound inside a
    /// fresh 0700 directory next to `path`, set to 0600, then renamed into place (no window in which another user
    /// could connect). A socket already at `path` that nothing listens on (left by a crash) is replaced; a live one,
    /// or a file that is not a socket, is an error.
    static func listen(at path: String, backlog: Int32) throws(LNetControlError) -> Int32 {
        guard address(path) != nil else { throw LNetControlError("socket path '\(path)' is empty or longer than 107 bytes") }
        var existing = stat()
        if lstat(path, &existing) == 0 {
            guard existing.st_mode & S_IFMT == S_IFSOCK else { throw LNetControlError("\(path) exists and is not a socket") }
            if let fd = try? connect(to: path) {
                close(fd)
                throw LNetControlError("\(path) is in use: another node serves its control socket there")
            }
        }
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        var template = Array("\(directory)/.lnet-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw LNetControlError("cannot make the control socket in \(directory): \(message(errno))")
        }
        let scratch = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { rmdir(scratch) }
        let temporary = "\(scratch)/s"
        guard var address = address(temporary) else {
            throw LNetControlError("socket path '\(path)' is too long (107 bytes at most, with room for a temporary name)")
        }
        let fd = socket(AF_UNIX, stream, 0)
        guard fd >= 0 else { throw LNetControlError("cannot make a socket: \(message(errno))") }
        setNonBlocking(fd)
        let bound = withSockaddr(&address) { bind(fd, $0, $1) }
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw LNetControlError("cannot bind the control socket: \(message(code))")
        }
        guard chmod(temporary, 0o600) == 0, Glibc.listen(fd, backlog) == 0, rename(temporary, path) == 0 else {
            let code = errno
            close(fd)
            unlink(temporary)
            throw LNetControlError("cannot set up the control socket at \(path): \(message(code))")
        }
        return fd
    }
}
