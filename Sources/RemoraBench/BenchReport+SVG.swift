import Glibc

import Histogram

/// Latency by percentile, drawn as HdrHistogram's plotter does: x is the percentile on a log
/// scale of 1/(1-p) (0%, 90%, 99%, 99.9%, … evenly spaced), y the latency in ms. One line per run.
public enum LatencyChart {
    public struct Series {
        public var label: String
        public var latency: Histogram<UInt64>
        public init(label: String, latency: Histogram<UInt64>) { self.label = label; self.latency = latency }
    }

    static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]

    /// x position (0…1 of the axis) of percentile `p` (0…100) when the axis ends at 1 − 10^−decades.
    public static func xFraction(percentile p: Double, decades: Int) -> Double {
        let remaining = 1 - p / 100
        let x = remaining <= 0 ? Double(decades) : min(Double(decades), log10(1 / remaining))
        return x / Double(decades)
    }

    /// A "nice" axis maximum and step (1, 2, 5 × 10^k) covering `v`.
    public static func niceAxis(_ v: Double) -> (max: Double, step: Double) {
        let v = v > 0 ? v : 1
        var step = 1.0
        while step * 10 <= v { step *= 10 }
        while step > v { step /= 10 }
        // aim for 4-10 gridlines
        for m in [0.1, 0.2, 0.5, 1.0, 2.0] where v / (step * m) <= 10 {
            let s = step * m
            return ((v / s).rounded(.up) * s, s)
        }
        return ((v / step).rounded(.up) * step, step)
    }

    public static func svg(_ runs: [Series], title: String = "Latency by percentile") -> String {
        let w = 960.0, h = 540.0
        let left = 80.0, right = 30.0, top = 60.0, bottom = 70.0
        let pw = w - left - right, ph = h - top - bottom
        let maxCount = runs.map { $0.latency.totalCount }.max() ?? 0
        let decades = maxCount > 1_000_000 ? 6 : 5
        let maxMs = runs.map { Double($0.latency.maxRecorded) / 1000 }.max() ?? 1
        let (yMax, yStep) = niceAxis(maxMs)

        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(Int(w / 2))" y="28" text-anchor="middle" font-size="16">\(xml(title))</text>

        """
        // grid and axes
        var y = 0.0
        while y <= yMax + yStep / 2 {
            let py = top + ph - y / yMax * ph
            s += "<line x1=\"\(f(left))\" y1=\"\(f(py))\" x2=\"\(f(left + pw))\" y2=\"\(f(py))\" stroke=\"#e0e0e0\"/>\n"
            s += "<text x=\"\(f(left - 8))\" y=\"\(f(py + 4))\" text-anchor=\"end\">\(axisLabel(y, yStep))</text>\n"
            y += yStep
        }
        var labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
        labels = Array(labels.prefix(decades + 1))
        for (d, label) in labels.enumerated() {
            let px = left + Double(d) / Double(decades) * pw
            s += "<line x1=\"\(f(px))\" y1=\"\(f(top))\" x2=\"\(f(px))\" y2=\"\(f(top + ph))\" stroke=\"#e0e0e0\"/>\n"
            s += "<text x=\"\(f(px))\" y=\"\(f(top + ph + 18))\" text-anchor=\"middle\">\(label)</text>\n"
        }
        s += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(pw))\" height=\"\(f(ph))\" fill=\"none\" stroke=\"#888\"/>\n"
        s += "<text x=\"\(f(left + pw / 2))\" y=\"\(f(h - 20))\" text-anchor=\"middle\">percentile (log scale of 1/(1-p))</text>\n"
        s += "<text transform=\"translate(22 \(f(top + ph / 2))) rotate(-90)\" text-anchor=\"middle\">latency (ms)</text>\n"

        // legend background, then the series
        let legendChars = runs.map { $0.label.count + 70 }.max() ?? 0
        s += "<rect x=\"\(f(left + 6))\" y=\"\(f(top + 4))\" width=\"\(f(min(pw - 12, Double(legendChars) * 6.6 + 40)))\" "
        s += "height=\"\(f(Double(runs.count) * 18 + 8))\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#ccc\"/>\n"
        for (i, run) in runs.enumerated() {
            let color = colors[i % colors.count]
            var points: [String] = []
            for v in run.latency.percentiles(ticksPerHalfDistance: 5) {
                let px = left + xFraction(percentile: v.percentileLevelIteratedTo, decades: decades) * pw
                let py = top + ph - min(Double(v.value) / 1000 / yMax, 1) * ph
                points.append("\(f(px)),\(f(py))")
            }
            if !points.isEmpty {
                s += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(points.joined(separator: " "))\"/>\n"
            }
            let ly = top + 18 + Double(i) * 18
            let hist = run.latency
            let stats = hist.totalCount == 0 ? "no responses" :
                "p50 \(Fmt.ms(hist.valueAtPercentile(50))) · p99 \(Fmt.ms(hist.valueAtPercentile(99))) · p99.9 \(Fmt.ms(hist.valueAtPercentile(99.9))) · max \(Fmt.ms(hist.maxRecorded)) ms"
            s += "<line x1=\"\(f(left + 12))\" y1=\"\(f(ly - 4))\" x2=\"\(f(left + 36))\" y2=\"\(f(ly - 4))\" stroke=\"\(color)\" stroke-width=\"3\"/>\n"
            s += "<text x=\"\(f(left + 42))\" y=\"\(f(ly))\">\(xml(run.label)) — \(stats)</text>\n"
        }
        s += "</svg>\n"
        return s
    }

    static func f(_ v: Double) -> String { Fmt.fixed(v, 1) }

    static func axisLabel(_ v: Double, _ step: Double) -> String {
        var decimals = 0
        var s = step
        while s < 1 && decimals < 6 { s *= 10; decimals += 1 }
        return Fmt.fixed(v, decimals)
    }

    static func xml(_ s: String) -> String {
        var out = ""
        for ch in s {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(ch)
            }
        }
        return out
    }
}

extension BenchReport {
    /// This run's chart, with `others` (read from their --json) drawn on it.
    public func svg(comparing others: [SavedRun] = []) -> String {
        LatencyChart.svg([LatencyChart.Series(label: label, latency: result.latency)]
                         + others.map { LatencyChart.Series(label: $0.label, latency: $0.latency) })
    }
}
