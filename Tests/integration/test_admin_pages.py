"""Admin pages (issue 13): GET /clusters, GET /routes, the GET / dashboard in a real headless browser,
and `remora ctl top` against a proxy under traffic."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from harness import Client, cluster, http_listener, make_config, remora_bin


def split_route(name: str, prefix: str, weights: dict[str, int]) -> dict:
    return {"name": name, "match": {"path": {"prefix": prefix}},
            "backends": [{"cluster": c, "weight": w} for c, w in weights.items()]}


@pytest.fixture
def canary_proxy(start_remora, http_backend, refused_endpoint):
    stable, canary = http_backend(), http_backend()
    cfg = make_config([http_listener("web", routes=[split_route("api", "/", {"stable": 80, "canary": 20})])],
                      [{"name": "stable", "endpoints": [{"address": stable.endpoint, "weight": 3}, refused_endpoint],
                        "lb": "round_robin", "health_check": {"tcp": {}, "interval": "100ms", "timeout": "200ms",
                                                              "unhealthy_threshold": 1, "healthy_threshold": 1}},
                       cluster("canary", [canary.endpoint], circuit_breaker={"max_requests": 100})])
    remora = start_remora(cfg)
    remora.wait_stat("cluster.stable.health_check.healthy", lambda v: v == 1, timeout=5)
    return remora, stable, canary, refused_endpoint


def send(port: int, n: int, path: str = "/status/200"):
    with Client(port) as c:
        for _ in range(n):
            assert c.request("GET", path).status == 200


def test_clusters_text_and_json(canary_proxy):
    remora, stable, canary, refused = canary_proxy
    send(remora.port("web"), 50)
    text = remora.admin_get("/clusters")
    assert text.status == 200
    lines = text.body.decode().splitlines()
    assert "stable::lb::round_robin" in lines
    assert f"stable::{stable.endpoint}::health_flags::healthy" in lines
    assert f"stable::{stable.endpoint}::weight::3" in lines
    assert f"stable::{refused}::health_flags::/failed_active_hc" in lines
    assert "canary::default_priority::max_requests::100" in lines
    assert any(re.fullmatch(r"stable::rq_total::\d+", l) for l in lines)
    j = json.loads(remora.admin_get("/clusters?format=json").body)
    by_name = {c["name"]: c for c in j["cluster_statuses"]}
    hosts = {h["address"]: h for h in by_name["stable"]["host_statuses"]}
    assert hosts[stable.endpoint]["healthy"] is True and hosts[stable.endpoint]["weight"] == 3
    assert hosts[refused]["healthy"] is False and hosts[refused]["failed_active_health_check"] is True
    assert hosts[refused]["failed_outlier_check"] is False
    assert by_name["stable"]["stats"]["rq_total"] + by_name["canary"]["stats"]["rq_total"] == 50
    # Per endpoint, the numbers the workers keep for it: every request went to a healthy endpoint.
    canary_host = by_name["canary"]["host_statuses"][0]
    assert hosts[stable.endpoint]["stats"]["rq_total"] == by_name["stable"]["stats"]["rq_total"]
    assert canary_host["stats"]["rq_total"] == by_name["canary"]["stats"]["rq_total"]
    assert hosts[refused]["stats"]["rq_total"] == 0
    assert hosts[stable.endpoint]["stats"]["rq_active"] == 0 and hosts[stable.endpoint]["stats"]["rq_error"] == 0
    assert f"stable::{stable.endpoint}::rq_total::{hosts[stable.endpoint]['stats']['rq_total']}" in lines


def test_routes_text_and_json_with_backend_hits(canary_proxy):
    remora, *_ = canary_proxy
    send(remora.port("web"), 200)
    j = json.loads(remora.admin_get("/routes?format=json").body)
    (r,) = j["routes"]
    assert (r["listener"], r["name"], r["match"], r["action"]) == ("web", "api", "prefix /", "forward")
    got = {b["cluster"]: (b["weight"], b["requests"]) for b in r["backends"]}
    assert got["stable"][0] == 80 and got["canary"][0] == 20
    assert got["stable"][1] + got["canary"][1] == 200 and 10 <= got["canary"][1] <= 80
    text = remora.admin_get("/routes").body.decode()
    assert "web::default::api::match::prefix /" in text
    assert re.search(rf"web::default::api::backend::canary::weight::20::requests::{got['canary'][1]}::share::", text), text


CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (Debian chromium-headless-shell or chromium): "
                                             "the dashboard test needs a real browser")
def test_dashboard_in_headless_chromium_shows_the_live_split(canary_proxy, tmp_path):
    remora, *_ = canary_proxy
    port = remora.port("web")
    page = remora.admin_get("/")
    assert page.status == 200 and page.header("content-type").startswith("text/html")
    assert b"<script src" not in page.body and b"<link" not in page.body and b"http://" not in page.body, \
        "self-contained: no external assets"
    stop = threading.Event()

    def traffic():   # traffic flows while the page polls
        with Client(port) as c:
            while not stop.is_set():
                assert c.request("GET", "/status/200").status == 200

    # Four clients: the share is per poll (the counters' growth between two), and one client beside
    # Chromium on a busy 2-core machine sent as few as 13 requests in one (one canary request: 7.7 %).
    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        # Real time for the page's polls: --virtual-time-budget lets its timers (1 s) run; fetches
        # pause virtual time until they answer.
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000",
                              "--dump-dom", f"http://127.0.0.1:{remora.admin_port}/"],
                             capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    html = dom.stdout
    assert 'id="updated"' in html, dom.stderr[-2000:]
    polls = int(re.search(r'id="updated" data-polls="(\d+)"', html).group(1))
    assert polls >= 2, "the page polled /stats more than once"
    rows = {m.group(2): (float(m.group(3)), m.group(4))
            for m in re.finditer(r'<tr class="backend" data-route="([^"]+)" data-cluster="([^"]+)" data-share="([\d.]+)" '
                                 r'data-rps="([^"]+)"', html)}
    assert set(rows) == {"stable", "canary"}, html[-3000:]
    share_canary = rows["canary"][0]
    assert 8 <= share_canary <= 35, f"the canary's share on the page: {share_canary}% (weight 20 of 100)"
    assert abs(rows["stable"][0] + share_canary - 100) < 0.2
    assert float(rows["stable"][1]) > 0, "requests per second while traffic flows"
    assert re.search(r'<tr class="endpoint" data-cluster="stable" data-address="[^"]+" data-healthy="false">', html)


def ctl(*args, timeout=30, **kw):
    return subprocess.run([str(remora_bin()), "ctl", *args], capture_output=True, text=True, timeout=timeout, **kw)


def test_ctl_top_piped_prints_one_table(canary_proxy):
    remora, *_ = canary_proxy
    port = remora.port("web")
    stop = threading.Event()

    def traffic():
        with Client(port) as c:
            while not stop.is_set():
                assert c.request("GET", "/status/200").status == 200

    t = threading.Thread(target=traffic)
    t.start()
    try:
        started = time.monotonic()
        r = ctl("top", f"http://127.0.0.1:{remora.admin_port}")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        t.join(10)
    assert r.returncode == 0, r.stderr
    assert elapsed < 5, "piped: one interval, one table, exit"
    lines = r.stdout.splitlines()
    assert "\x1b[" not in r.stdout, "no terminal escapes when piped"
    header = next(i for i, l in enumerate(lines) if l.startswith("ROUTE"))
    assert lines[header].split() == ["ROUTE", "BACKEND", "SHARE", "RPS", "SUCCESS", "P50", "MS", "P99", "MS"]
    rows = {l.split()[1]: l.split() for l in lines[header + 1:] if l.strip()}
    assert set(rows) == {"stable", "canary"}
    assert rows["stable"][0] == "web/api"
    shares = {k: float(v[2].rstrip("%")) for k, v in rows.items()}
    assert abs(sum(shares.values()) - 100) < 0.5 and 5 <= shares["canary"] <= 40, shares
    assert float(rows["stable"][3]) > 0 and rows["stable"][4] == "100.00%"
    assert float(rows["stable"][5]) >= 0 and float(rows["stable"][6]) >= float(rows["stable"][5])


def test_ctl_top_refuses_a_bad_url_and_an_unreachable_proxy(refused_endpoint):
    r = ctl("top", "not a url")
    assert r.returncode == 2 and "ADMIN_URL" in r.stderr
    r = ctl("top", f"http://{refused_endpoint}")
    assert r.returncode == 1 and "remora ctl" in r.stderr
