"""Observability (issue 13): Prometheus and JSON stats with histograms, access logs, request ids.

The Prometheus output is read with `prometheus_client`'s own text parser (PyPI), so what a real
Prometheus scrape would reject fails here too.
"""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Client, cluster, get, http_listener, make_config, poll


def status_route(name: str, prefix: str, cluster_name: str) -> dict:
    return {"name": name, "match": {"path": {"prefix": prefix}}, "backends": [{"cluster": cluster_name}]}


def scrape(remora) -> dict:
    r = remora.admin_get("/stats/prometheus")
    assert r.status == 200
    assert (r.header("content-type") or "").startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.body.decode())}


def samples(families: dict, family: str, sample: str | None = None, **labels) -> list:
    f = families[family]
    return [s for s in f.samples if (sample is None or s.name == sample)
            and all(s.labels.get(k) == v for k, v in labels.items())]


def total(families: dict, family: str, sample: str, **labels) -> float:
    return sum(s.value for s in samples(families, family, sample, **labels))


@pytest.fixture
def metrics_proxy(start_remora, http_backend, refused_endpoint):
    backend = http_backend()
    cfg = make_config([http_listener("web", routes=[status_route("ok", "/status", "app"),
                                                     status_route("down", "/down", "gone")])],
                      [cluster("app", [backend.endpoint]), cluster("gone", [refused_endpoint])])
    cfg["node"] = "edge-1"
    remora = start_remora(cfg)
    return remora


def test_prometheus_families_typed_histograms_cumulative_counts_match(metrics_proxy):
    remora = metrics_proxy
    port = remora.port("web")
    sent = {"200": 0, "503": 0, "404": 0, "down": 0}
    with Client(port) as c:
        for i in range(40):
            kind = ("200", "200", "503", "404", "down")[i % 5]
            target = {"200": "/status/200", "503": "/status/503", "404": "/nothing", "down": "/down"}[kind]
            r = c.request("GET", target)
            assert r.status == {"200": 200, "503": 503, "404": 404, "down": 503}[kind]
            sent[kind] += 1
    n = sum(sent.values())
    upstream = sent["200"] + sent["503"]

    poll(lambda: total(scrape(remora), "envoy_http_downstream_rq_time", "envoy_http_downstream_rq_time_count") == n,
         timeout=5, what="downstream_rq_time counts every request")
    fams = scrape(remora)

    # Every family is typed; histograms are cumulative and end at +Inf == _count.
    for name, f in fams.items():
        assert f.type in ("counter", "gauge", "histogram"), f"{name} has type {f.type}"
        assert f.documentation, f"{name} has no HELP"
        if f.type != "histogram":
            continue
        series: dict = {}
        for s in f.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(key, {"buckets": [], "count": None})
            if s.name.endswith("_bucket"):
                series[key]["buckets"].append((s.labels["le"], s.value))
            elif s.name.endswith("_count"):
                series[key]["count"] = s.value
        for key, v in series.items():
            les = [le for le, _ in v["buckets"]]
            assert les[-1] == "+Inf", f"{name}{key}: last bucket {les[-1]}"
            assert les[0] == "0.5" and les[-2] in ("3600000", "3600000.0") and len(les) == 20, f"{name}: {les}"
            counts = [c for _, c in v["buckets"]]
            assert counts == sorted(counts), f"{name}{key}: buckets not cumulative: {counts}"
            assert counts[-1] == v["count"], f"{name}{key}: +Inf {counts[-1]} != count {v['count']}"

    # Envoy's names and labels.
    assert total(fams, "envoy_http_downstream_rq", "envoy_http_downstream_rq_total",
                 envoy_http_conn_manager_prefix="web") == n
    assert total(fams, "envoy_cluster_upstream_rq", "envoy_cluster_upstream_rq_total", envoy_cluster_name="app") == upstream
    assert total(fams, "envoy_cluster_upstream_rq_xx", None, envoy_cluster_name="app",
                 envoy_response_code_class="5") == sent["503"]
    assert total(fams, "envoy_cluster_upstream_rq_xx", None, envoy_cluster_name="app",
                 envoy_response_code_class="2") == sent["200"]
    assert total(fams, "envoy_http_downstream_rq_xx", None, envoy_http_conn_manager_prefix="web",
                 envoy_response_code_class="4") == sent["404"]
    assert fams["envoy_http_downstream_rq_active"].type == "gauge"
    assert fams["envoy_cluster_upstream_cx_active"].type == "gauge"
    assert total(fams, "envoy_cluster_upstream_rq_time", "envoy_cluster_upstream_rq_time_count",
                 envoy_cluster_name="app") == upstream
    assert total(fams, "envoy_route_upstream_rq", "envoy_route_upstream_rq_total", envoy_route_name="ok",
                 envoy_cluster_name="app") == upstream

    # Istio's standard metrics.
    assert total(fams, "istio_requests", "istio_requests_total") == n
    assert total(fams, "istio_requests", "istio_requests_total", destination_service="app", response_code="200",
                 response_flags="-", request_protocol="http", source_workload="edge-1") == sent["200"]
    assert total(fams, "istio_requests", "istio_requests_total", destination_service="app", response_code="503",
                 response_flags="-") == sent["503"]
    assert total(fams, "istio_requests", "istio_requests_total", destination_service="unknown", response_code="404",
                 response_flags="NR") == sent["404"]
    assert total(fams, "istio_requests", "istio_requests_total", destination_workload="gone", response_code="503",
                 response_flags="UF") == sent["down"]
    assert fams["istio_request_duration_milliseconds"].type == "histogram"
    assert total(fams, "istio_request_duration_milliseconds", "istio_request_duration_milliseconds_count") == n

    # The same numbers as JSON, and histogram lines in the text format.
    r = remora.admin_get("/stats?format=json")
    assert r.status == 200 and r.header("content-type") == "application/json"
    doc = json.loads(r.body)
    values = {s["name"]: s["value"] for s in doc["stats"]}
    assert values["listener.web.downstream_rq_total"] == n
    hist = {h["name"]: h for h in doc["histograms"]}
    assert hist["listener.web.downstream_rq_time"]["count"] == n
    assert hist["cluster.app.upstream_rq_time"]["count"] == upstream
    assert hist["listener.web.downstream_rq_time"]["buckets"][-1][1] == n
    assert sum(q["count"] for q in doc["requests"]) == n
    text = remora.admin_get("/stats").body.decode()
    assert f"listener.web.downstream_rq_time: count={n} " in text
    assert remora.stats()["listener.web.downstream_rq_total"] == n   # the text format still parses as before
