import ArgumentParser

/// `lnetctl`: look at RDMA devices and LND tunables, serve and run LNet self-tests and pings.
public struct Lnetctl: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "lnetctl",
        abstract: "LNet control: RDMA devices, LND tunables, self-test server, ping and self-test.",
        discussion: """
            The local node's NID comes from --nid (e.g. 192.0.2.2@o2ib, or 0@lo for a node that talks only to itself), \
            else from the first interface of LNET_NETWORKS (e.g. LNET_NETWORKS='o2ib(rxe0:192.0.2.2)'). The o2ib LND is \
            tuned by LND_* environment variables (see `lnetctl tunables`). With --json every command prints exactly one \
            JSON object on stdout (keys sorted); errors go to stderr as one line, with a non-zero exit status. \
            `net show`, `peer show`, `conns show` and `stats show`/`reset` read a running node through its control \
            socket (`serve --control-socket PATH`; --socket PATH or LNET_CONTROL_SOCKET).
            """,
        subcommands: [DevicesCommand.self, TunablesCommand.self, ServeCommand.self, PingCommand.self, SelftestCommand.self,
                      NetCommand.self, PeerCommand.self, ConnsCommand.self, StatsCommand.self]
    )

    public init() {}
}

extension Lnetctl {
    /// The program's entry point: parses the command line and runs the (asynchronous) subcommand.
    public static func runMain() async {
        await (Self.self as any AsyncParsableCommand.Type).main()
    }
}
