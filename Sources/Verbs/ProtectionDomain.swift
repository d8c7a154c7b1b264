import CShims

/// A protection domain (`ibv_pd`): memory regions and queue pairs in one PD may be used together.
///
/// Holds its device context, so the context is released only after the PD.
public final class ProtectionDomain: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_pd>
    /// The device this PD belongs to.
    public let context: DeviceContext

    public init(context: DeviceContext) throws(VerbsError) {
        self.pointer = try VerbsError.unwrap("ibv_alloc_pd", ibv_alloc_pd(context.pointer), detail: context.name)
        self.context = context
    }

    deinit {
        Release.record("ibv_dealloc_pd", ibv_dealloc_pd(pointer))
    }
}
