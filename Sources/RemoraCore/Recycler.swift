/// Objects kept for reuse (a stack: the last given is the next taken), which also knows the fewest
/// it held since the last `trim`. Those below that mark were not taken during the whole period, so
/// `trim` lets them go: what a burst left behind goes back to malloc, while a steady load keeps
/// what it uses. One per owner thread (not thread-safe).
public struct Recycler<T: AnyObject> {
    @usableFromInline var stack: [T] = []
    /// The fewest items held since the last `trim`.
    @usableFromInline var lowest = 0

    public init() {}

    @inlinable @inline(__always)
    public mutating func take() -> T? {
        guard let x = stack.popLast() else { return nil }
        if stack.count < lowest { lowest = stack.count }
        return x
    }

    @inlinable @inline(__always)
    public mutating func give(_ x: T) { stack.append(x) }

    /// Lets go of the items no `take` reached since the last call (`dropping` sees each first);
    /// returns how many.
    @discardableResult
    public mutating func trim(_ dropping: (T) -> Void = { _ in }) -> Int {
        let n = lowest
        if n > 0 {
            for x in stack[..<n] { dropping(x) }
            stack.removeFirst(n)
        }
        lowest = stack.count
        return n
    }

    /// Lets go of every item (`dropping` sees each first).
    public mutating func removeAll(_ dropping: (T) -> Void = { _ in }) {
        for x in stack { dropping(x) }
        stack = []
        lowest = 0
    }
}
