/// GET / on the admin address: one self-contained HTML page (no external assets, no build step)
/// that polls `/stats?format=json`, `/clusters?format=json` and `/routes?format=json` every second and shows, per route
/// and backend, requests per second, success rate, p50/p99 latency (the backend cluster's
/// upstream time), the live canary split as bars, and each cluster's endpoint health.
///
/// What it shows is also in the DOM as data attributes, so a headless browser can read it:
/// `tr.backend[data-route="listener/route"][data-cluster=…]` with `data-share` (percent of the
/// route's requests over the last interval, or of all when idle), `data-rps`, `data-success`;
/// `#updated[data-polls]` counts successful polls. docs/observability.md has a screenshot command.
public enum Dashboard {
    public static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Remora</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  :root { --bg: #0f1419; --fg: #e6e6e6; --dim: #8b949e; --ok: #3fb950; --bad: #f85149; --warn: #d29922; --bar: #388bfd; }
  body { background: var(--bg); color: var(--fg); font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.4em 0 .4em; color: var(--dim); }
  table { border-collapse: collapse; width: 100%; } th, td { padding: .3em .6em; text-align: left; border-bottom: 1px solid #222; }
  th { color: var(--dim); font-weight: normal; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
  .bar { background: #21262d; height: 1em; width: 14em; position: relative; border-radius: 3px; overflow: hidden; }
  .bar > div { background: var(--bar); height: 100%; }
  .ok { color: var(--ok); } .bad { color: var(--bad); } .warn { color: var(--warn); } .dim { color: var(--dim); }
</style>
</head>
<body>
<h1>Remora</h1>
<div class="dim">updated <span id="updated" data-polls="0">never</span> · <span id="total"></span></div>
<h2>Routes and backends</h2>
<table id="routes"><thead><tr><th>route</th><th>backend</th><th>split</th><th class="n">share</th><th class="n">req/s</th>
<th class="n">success</th><th class="n">p50 ms</th><th class="n">p99 ms</th><th class="n">requests</th></tr></thead><tbody></tbody></table>
<h2>Endpoints</h2>
<table id="endpoints"><thead><tr><th>cluster</th><th>endpoint</th><th>health</th><th class="n">weight</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
let last = null, lastAt = 0, polls = 0;
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]); }
function fmt(v, d) { return v === null || v === undefined || isNaN(v) ? "–" : v.toFixed(d); }
// Per backend of each route (from /routes, so names may hold dots): its counters in /stats.
function routeStats(stats, routes) {
  const v = {};
  for (const s of stats) v[s.name] = s.value;
  const m = {};
  for (const r of routes) {
    for (const b of r.backends) {
      const prefix = "route." + r.listener + "." + r.name + "." + b.cluster + ".", route = r.listener + "/" + r.name;
      m[route + "|" + b.cluster] = {route: route, cluster: b.cluster, weight: b.weight,
        upstream_rq_total: v[prefix + "upstream_rq_total"] || 0, upstream_rq_5xx: v[prefix + "upstream_rq_5xx"] || 0};
    }
  }
  return m;
}
function hist(h, cluster) { return h.find(x => x.name === "cluster." + cluster + ".upstream_rq_time") || {}; }
async function poll() {
  let stats, clusters, routes;
  try {
    stats = await (await fetch("/stats?format=json", {cache: "no-store"})).json();
    clusters = await (await fetch("/clusters?format=json", {cache: "no-store"})).json();
    routes = await (await fetch("/routes?format=json", {cache: "no-store"})).json();
  } catch (e) { document.getElementById("updated").textContent = "failed: " + e; return; }
  const now = performance.now(), cur = routeStats(stats.stats, routes.routes || []), dt = last ? (now - lastAt) / 1000 : 0;
  const byRoute = {};
  for (const k of Object.keys(cur)) {
    const c = cur[k], p = last && last[k] ? last[k] : null;
    const total = c.upstream_rq_total || 0, bad = c.upstream_rq_5xx || 0;
    const dTotal = p ? total - (p.upstream_rq_total || 0) : 0, dBad = p ? bad - (p.upstream_rq_5xx || 0) : 0;
    c.rps = dt > 0 ? dTotal / dt : null;
    c.success = dTotal > 0 ? 100 * (1 - dBad / dTotal) : (total > 0 ? 100 * (1 - bad / total) : null);
    c.delta = dTotal;
    (byRoute[c.route] = byRoute[c.route] || []).push(c);
  }
  const rows = [];
  for (const route of Object.keys(byRoute).sort()) {
    const bs = byRoute[route], dSum = bs.reduce((a, b) => a + b.delta, 0), sum = bs.reduce((a, b) => a + (b.upstream_rq_total || 0), 0);
    for (const b of bs) {
      const share = dSum > 0 ? 100 * b.delta / dSum : (sum > 0 ? 100 * (b.upstream_rq_total || 0) / sum : 0);
      const h = hist(stats.histograms || [], b.cluster);
      const cls = b.success === null ? "dim" : (b.success >= 99 ? "ok" : (b.success >= 90 ? "warn" : "bad"));
      rows.push(`<tr class="backend" data-route="${esc(route)}" data-cluster="${esc(b.cluster)}" data-share="${share.toFixed(1)}" ` +
        `data-rps="${fmt(b.rps, 1)}" data-success="${fmt(b.success, 2)}"><td>${esc(route)}</td><td>${esc(b.cluster)}</td>` +
        `<td><div class="bar"><div style="width:${share.toFixed(1)}%"></div></div></td><td class="n">${share.toFixed(1)}%</td>` +
        `<td class="n">${fmt(b.rps, 1)}</td><td class="n ${cls}">${fmt(b.success, 2)}%</td><td class="n">${fmt(h.p50, 1)}</td>` +
        `<td class="n">${fmt(h.p99, 1)}</td><td class="n">${b.upstream_rq_total || 0}</td></tr>`);
    }
  }
  document.querySelector("#routes tbody").innerHTML = rows.join("") || '<tr><td colspan="9" class="dim">no routes with backends</td></tr>';
  const eps = [];
  for (const c of clusters.cluster_statuses || []) {
    for (const e of c.host_statuses || []) {
      eps.push(`<tr class="endpoint" data-cluster="${esc(c.name)}" data-address="${esc(e.address)}" data-healthy="${e.healthy}">` +
        `<td>${esc(c.name)}</td><td>${esc(e.address)}</td><td class="${e.healthy ? "ok" : "bad"}">${esc(e.health_flags)}</td>` +
        `<td class="n">${e.weight}</td></tr>`);
    }
  }
  document.querySelector("#endpoints tbody").innerHTML = eps.join("");
  const total = (stats.stats || []).filter(s => /^listener\.[^.]+\.downstream_rq_total$/.test(s.name)).reduce((a, s) => a + s.value, 0);
  document.getElementById("total").textContent = total + " requests since start";
  last = cur; lastAt = now; polls++;
  const u = document.getElementById("updated");
  u.textContent = new Date().toLocaleTimeString(); u.dataset.polls = polls;
}
poll();
setInterval(poll, 1000);
</script>
</body>
</html>
"""#
}
