"""The headline chart: hand-written SVG, no plotting library."""
from .common import SC_TITLES, TITLES, fmt


def svg_chart(rows, meta, rounds):
    """Grouped bars: per scenario, one bar per figure = Remora ÷ best peer; a line at 1.0. Hand-written SVG."""
    esc = lambda t: str(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    groups = []
    for r in rows:
        if not groups or groups[-1][0] != r["scenario"]:
            groups.append((r["scenario"], []))
        groups[-1][1].append(r)
    kind = lambda r: ("throughput" if r["higher_is_better"] else  # noqa: E731
                      "latency" if r["key"].startswith("added_") else
                      "memory" if r["scenario"] == "rss" else "cpu")
    colors = {"throughput": "#4e79a7", "cpu": "#f28e2b", "latency": "#b07aa1", "memory": "#59a14f"}
    legend = [("throughput", "throughput (req/s, Gbit/s, conn/s): > 1 = Remora better"),
              ("cpu", "CPU per request / GB / connection: < 1 = Remora better"),
              ("latency", "latency added over direct: < 1 = Remora better"),
              ("memory", "memory (RSS): < 1 = Remora better")]
    vals = [r["ratio_to_best"] for r in rows if r["ratio_to_best"] is not None]
    ymax = max([1.5] + [min(v, 3.0) * 1.1 for v in vals])
    ymax = max(1.5, round(ymax * 4 + 0.5) / 4)
    bw, gap, left, top, ph, gw_min = 32, 22, 70, 70, 330, 96
    gwidth = lambda rs: max(len(rs) * bw, gw_min)  # noqa: E731
    right = left + sum(gwidth(g[1]) + gap for g in groups)  # end of the plot area; labels to its right
    width = max(right + 110, 760)
    height = top + ph + 110 + 20 * len(legend)
    y = lambda v: top + ph - (min(v, ymax) / ymax) * ph  # noqa: E731
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
         'font-family="sans-serif" font-size="12">' % (width, height, width, height),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="24" font-size="16" font-weight="bold">Remora ÷ best peer (HAProxy, nginx, nghttpx), per scenario</text>' % left,
         '<text x="%d" y="44" fill="#555">%s · %s, %s CPUs · medians of %d rounds · bar labels green = Remora better, red = worse</text>' % (
             left, esc(meta["date"]), esc(meta["cpu_model"]),
             meta["ncpu"], rounds)]
    t = 0.0
    while t <= ymax + 1e-9:  # grid + y axis labels
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e5e5e5"/>' % (left, right, y(t), y(t)))
        o.append('<text x="%d" y="%.1f" text-anchor="end" fill="#555">%.2f</text>' % (left - 6, y(t) + 4, t))
        t += 0.25
    x0 = left + gap / 2
    for name, rs in groups:
        gx = x0
        x = x0 + (gwidth(rs) - len(rs) * bw) / 2
        for r in rs:
            v = r["ratio_to_best"]
            c = colors[kind(r)]
            title = "%s — %s: Remora %s, best peer %s %s" % (
                SC_TITLES.get(name, name), r["metric"], fmt(r["remora"], r["fmt"]),
                TITLES.get(r["best"], "—"), fmt(r["best_value"], r["fmt"]))
            if v is None:
                o.append('<text x="%.1f" y="%.1f" text-anchor="middle" fill="#999" font-size="10">%s</text>' % (
                    x + bw / 2, top + ph - 4, "fail" if r["remora_failed"] else "n/a"))
            else:
                good = v >= 1 if r["higher_is_better"] else v <= 1
                o.append('<rect x="%.1f" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s</title></rect>' % (
                    x + 2, y(v), bw - 4, top + ph - y(v), c, esc(title + " → %.2f" % v)))
                o.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10" fill="%s" stroke="white" '
                         'stroke-width="3" paint-order="stroke">%.2f%s</text>' % (
                    x + bw / 2, y(v) - 4, "#1a7f37" if good else "#c62828", v, "↑" if v > ymax else ""))
            short = {"rps": "rate", "cpu_us_per_req": "CPU", "gbps": "Gbit/s", "cpu_s_per_gb": "CPU",
                     "added_p50_ms": "p50", "added_p99_ms": "p99", "added_p999_ms": "p99.9", "idle_rss": "idle", "held_rss": "held",
                     "per_conn_kb": "/conn"}.get(r["key"], r["key"])
            o.append('<text x="%.1f" y="%d" text-anchor="middle" font-size="9" fill="#555">%s</text>' % (
                x + bw / 2, top + ph + 12, esc(short)))
            x += bw
        words, lines = SC_TITLES.get(name, name).split(), [""]
        for wd in words:  # at most ~14 characters per line under the group
            if lines[-1] and len(lines[-1]) + 1 + len(wd) > 14:
                lines.append(wd)
            else:
                lines[-1] = (lines[-1] + " " + wd).strip()
        for i, ln in enumerate(lines[:2]):
            o.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (
                gx + gwidth(rs) / 2, top + ph + 28 + 14 * i, esc(ln)))
        x0 += gwidth(rs) + gap
    o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#000" stroke-width="1.5" stroke-dasharray="6 3"/>' % (
        left, right, y(1.0), y(1.0)))
    o.append('<text x="%d" y="%.1f" font-size="11">1.0 = best peer</text>' % (right + 6, y(1.0) + 4))
    o.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#000"/>' % (left, right, top + ph, top + ph))
    ly = top + ph + 72
    for k, text in legend:
        o.append('<rect x="%d" y="%d" width="14" height="14" fill="%s"/>' % (left, ly - 11, colors[k]))
        o.append('<text x="%d" y="%d">%s</text>' % (left + 20, ly, esc(text)))
        ly += 20
    o.append('<text x="%d" y="%d" fill="#555" font-size="11">Ratios above %.2f are drawn at the top (↑). perf/bench.py</text>' % (
        left, ly + 6, ymax))
    o.append("</svg>")
    return "\n".join(o) + "\n"
