extension LNet {
    /// Brings up every interface of a network list, using `makeLND` to create the driver for each; `makeLND` may
    /// throw any error, so an LND's own constructor composes as it is:
    ///
    /// ```swift
    /// try lnet.addInterfaces(networks) { interface in
    ///     interface.network.type == .loopback ? LoopbackLND() : try RDMALND()   // RDMALND() throws TunableError
    /// }
    /// ```
    ///
    /// An ``LNetError`` from `makeLND` is rethrown as it is; any other error becomes
    /// ``LNetError/lndStartupFailed(network:reason:cause:)`` for that interface's network, with the error as its
    /// ``LNetError/cause`` (so `error.cause(as: TunableError.self)?.variable` names the bad variable). Interfaces
    /// brought up before the failure stay up, as with the `throws(LNetError)` form.
    public func addInterfaces<Failure: Error>(
        _ networks: NetworkConfiguration, makeLND: (NetworkInterfaceConfiguration) throws(Failure) -> any LNetLND
    ) throws(LNetError) {
        for entry in networks.interfaces {
            let lnd: any LNetLND
            do {
                lnd = try makeLND(entry)
            } catch {
                throw LNetError(lndFailure: error, network: entry.network)
            }
            try addInterface(entry, lnd: lnd)
        }
    }
}
