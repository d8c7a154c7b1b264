/// An LNet process identifier: a NID plus a process number, written `PID-NID` (`12345-192.0.2.1@o2ib`).
public struct ProcessID: Hashable, Sendable, CustomStringConvertible {
    public var nid: NID
    public var pid: UInt32

    public init(nid: NID, pid: UInt32) {
        self.nid = nid
        self.pid = pid
    }

    /// The wildcard pid (`LNET_PID_ANY`).
    public static let anyPID: UInt32 = .max
    /// The default pid of an LNet instance when none is given (Lustre's `LNET_PID_LUSTRE`).
    public static let defaultPID: UInt32 = 12345
    /// Matches any process: used as a match-entry source filter.
    public static let any = ProcessID(nid: .any, pid: anyPID)

    /// Parses `12345-192.0.2.1@o2ib`; a bare NID (`0@lo`) gets ``defaultPID``; `*` is ``any``.
    public init(parsing text: some StringProtocol) throws(LNetError) {
        let text = String(text)
        if text == "*" { self = .any; return }
        guard let dash = text.firstIndex(of: "-") else {
            let nid: NID
            do { nid = try NID(parsing: text) } catch {
                throw LNetError.invalidProcessID(text: text, reason: error.description)
            }
            self.init(nid: nid, pid: Self.defaultPID)
            return
        }
        let pidText = text[..<dash]
        let pid: UInt32
        if pidText == "*" {
            pid = Self.anyPID
        } else {
            guard pidText.allSatisfy({ $0.isASCII && $0.isNumber }), let value = UInt32(pidText) else {
                throw LNetError.invalidProcessID(text: text, reason: "'\(pidText)' is not a 32-bit pid")
            }
            pid = value
        }
        do {
            self.init(nid: try NID(parsing: text[text.index(after: dash)...]), pid: pid)
        } catch {
            throw LNetError.invalidProcessID(text: text, reason: error.description)
        }
    }

    public var description: String {
        "\(pid == Self.anyPID ? "*" : String(pid))-\(nid)"
    }

    /// Whether `other` passes this id used as a filter (wildcard NID and/or pid match anything).
    public func admits(_ other: ProcessID) -> Bool {
        (nid.isAny || nid == other.nid) && (pid == Self.anyPID || pid == other.pid)
    }
}
