"""Outlier detection (issue 12): failures in a row reported by the outcome hook, decided once per
process (max_ejection_percent holds across workers, never the last endpoint), logged, counted, and
ejections end by themselves."""

from __future__ import annotations

import time

import pytest

from backends import HTTPBackend
from harness import Client, cluster, http_listener, make_config


class FailingBackend(HTTPBackend):
    """Answers 500 to everything."""

    def _respond(self, conn, req, path):
        self._send(conn, 500, [("content-length", "0")], b"", req["method"] == "HEAD")
        return True


@pytest.fixture
def failing(request):
    made = []

    def make():
        b = FailingBackend()
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def test_consecutive_5xx_ejects_and_traffic_moves_then_returns(start_remora, http_backend, failing):
    bad = failing()
    good = [http_backend(), http_backend()]
    remora = start_remora(make_config(
        [http_listener("web")],
        [cluster("app", [bad.endpoint] + [g.endpoint for g in good], lb="round_robin",
                 outlier_detection={"consecutive_5xx": 5, "interval": "300ms", "base_ejection_time": "1s"})]))
    statuses = []
    with Client(remora.port("web"), timeout=5) as c:
        for _ in range(60):
            statuses.append(c.request("GET", "/echo").status)
            if remora.stat("cluster.app.outlier_detection.ejections_active") == 1:
                break
    assert remora.stat("cluster.app.outlier_detection.ejections_active") == 1, statuses
    assert statuses.count(500) == 5, f"ejected after exactly 5 in a row (over both workers): {statuses}"
    assert remora.stat("cluster.app.outlier_detection.ejections_consecutive_5xx") == 1
    assert remora.stat("cluster.app.outlier_detection.ejections_total") == 1
    before = len(bad.requests)
    with Client(remora.port("web"), timeout=5) as c:
        after = [c.request("GET", "/echo").status for _ in range(40)]
    assert after == [200] * 40, "no client error once the endpoint is out"
    assert len(bad.requests) == before
    assert f"endpoint {bad.endpoint} ejected" in remora.stderr_tail(200)
    # base_ejection_time × 1, reviewed every 300 ms: back within ~1.3 s.
    remora.wait_stat("cluster.app.outlier_detection.ejections_active", lambda v: v == 0, timeout=3)
    assert "back in service" in remora.stderr_tail(200)
    with Client(remora.port("web"), timeout=5) as c:
        for _ in range(9):
            c.request("GET", "/echo")
    assert len(bad.requests) > before, "a returned endpoint gets traffic again"


def test_never_more_than_max_ejection_percent(start_remora, failing):
    backends = [failing() for _ in range(4)]
    remora = start_remora(make_config(
        [http_listener("web")],
        [cluster("app", [b.endpoint for b in backends],
                 outlier_detection={"consecutive_5xx": 5, "max_ejection_percent": 50, "base_ejection_time": "30s"})]))
    peak = 0
    with Client(remora.port("web"), timeout=5) as c:
        for i in range(150):
            assert c.request("GET", "/echo").status == 500
            if i % 10 == 0:
                peak = max(peak, remora.stat("cluster.app.outlier_detection.ejections_active"))
    final = remora.stat("cluster.app.outlier_detection.ejections_active")
    assert max(peak, final) <= 2 and final == 2, (peak, final)
    assert remora.stat("cluster.app.outlier_detection.ejections_overflow") > 0
    assert "max_ejection_percent allows 2 of 4" in remora.stderr_tail(300)


def test_the_last_endpoint_is_never_ejected(start_remora, failing):
    bad = failing()
    remora = start_remora(make_config(
        [http_listener("web")],
        [cluster("app", [bad.endpoint], outlier_detection={"consecutive_5xx": 2, "max_ejection_percent": 100})]))
    with Client(remora.port("web"), timeout=5) as c:
        assert [c.request("GET", "/").status for _ in range(10)] == [500] * 10
    assert remora.stat("cluster.app.outlier_detection.ejections_active") == 0
    assert remora.stat("cluster.app.outlier_detection.ejections_overflow") >= 1


def test_panic_threshold_spreads_over_all(start_remora, http_backend, failing):
    """Two of three ejected with panic_threshold 50 %: fewer than half available, so all three get traffic."""
    bad = [failing(), failing()]
    good = http_backend()
    remora = start_remora(make_config(
        [http_listener("web")],
        [cluster("app", [b.endpoint for b in bad] + [good.endpoint], lb="round_robin", panic_threshold="50%",
                 outlier_detection={"consecutive_5xx": 3, "max_ejection_percent": 100, "base_ejection_time": "30s"})],
        workers=1))
    with Client(remora.port("web"), timeout=5) as c:
        for _ in range(30):
            c.request("GET", "/echo")
        remora.wait_stat("cluster.app.outlier_detection.ejections_active", lambda v: v == 2)
        n = [len(b.requests) for b in bad] + [len(good.requests)]
        for _ in range(30):
            c.request("GET", "/echo")
    m = [len(b.requests) for b in bad] + [len(good.requests)]
    assert all(after - before >= 8 for before, after in zip(n, m)), (n, m)
    assert remora.stat("cluster.app.lb_healthy_panic") >= 30
