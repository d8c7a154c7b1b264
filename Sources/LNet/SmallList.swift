/// A list that keeps its first element inline: per-message lists (the work a locked section leaves for after
/// the lock, the completions one poll reaps) hold one element nearly always, and then cost no heap allocation.
package struct SmallList<Element> {
    private var first: Element?
    private var rest: [Element] = []

    package init() {}

    package var isEmpty: Bool { first == nil }

    package mutating func append(_ element: Element) {
        if first == nil { first = element } else { rest.append(element) }
    }

    package func forEach(_ body: (Element) throws -> Void) rethrows {
        guard let first else { return }
        try body(first)
        for element in rest { try body(element) }
    }
}

extension SmallList: Sendable where Element: Sendable {}
