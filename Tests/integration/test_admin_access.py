"""Who may use the admin server and the control server (issue #19, finding 8).

A web page in an operator's browser can send requests to 127.0.0.1 (CSRF) and, through a name it
rebinds to 127.0.0.1, read the answers (DNS rebinding). It cannot choose the Host and Origin headers
its browser writes, nor add an Authorization header. So both servers refuse a Host that is a name
(421), a state change sent from another origin (403), a state change by GET (405), and, with a token
configured, a state change without it (401); curl, `remora ctl` and the proxy's subscriber (no Origin,
an IP or localhost as Host) keep working. docs/config.md "Admin endpoints", docs/control-plane.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from harness import Client, cluster, get, http_listener, make_config, poll, remora_bin, run_curl
from test_control import DOC, Control, ctl, status_lines

EVIL = [("Origin", "http://evil.example"), ("Content-Type", "text/plain")]


def admin_request(remora, method: str, path: str, headers=None, host: str | None = None, body: bytes | None = None):
    with Client(remora.admin_port, timeout=5) as c:
        return c.request(method, path, headers, b"" if body is None and method == "POST" else body,
                         host=host or f"127.0.0.1:{remora.admin_port}")


def still_serving(remora, port: int):
    time.sleep(0.3)   # a drain would have begun by now: /ready 503, then the process exits
    remora.assert_alive()
    assert remora.admin_get("/ready").status == 200
    assert get(port, "/echo").status == 200


@pytest.fixture
def admin_proxy(start_remora, http_backend):
    def start(admin: dict | None = None):
        backend = http_backend()
        cfg = make_config([http_listener("web")], [cluster("app", [backend.endpoint])])
        if admin is not None:
            cfg["admin"] = admin
        return start_remora(cfg)
    return start


# -- admin ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/quitquitquit", "/drain"])
def test_cross_origin_post_is_refused_and_the_proxy_keeps_serving(admin_proxy, path):
    r = admin_proxy()
    port = r.port("web")
    # The reported attack: a page's form post, its own name as Host.
    resp = admin_request(r, "POST", path, EVIL, host=f"evil.example:{r.admin_port}")
    assert resp.status == 421, (resp.status, resp.body)
    # The same page posting to http://127.0.0.1:PORT (Host passes, Origin does not).
    resp = admin_request(r, "POST", path, EVIL)
    assert resp.status == 403, (resp.status, resp.body)
    resp = admin_request(r, "POST", path, [("Origin", "null")])
    assert resp.status == 403, (resp.status, resp.body)
    resp = admin_request(r, "POST", path, [("Sec-Fetch-Site", "cross-site")])
    assert resp.status == 403, (resp.status, resp.body)
    # Another local web app's page (same site, other port) is another origin.
    resp = admin_request(r, "POST", path, [("Origin", "http://127.0.0.1:3000"), ("Sec-Fetch-Site", "same-site")])
    assert resp.status == 403, (resp.status, resp.body)
    # Nothing changes state on GET.
    resp = admin_request(r, "GET", path)
    assert resp.status == 405 and resp.header("allow") == "POST", (resp.status, resp.headers)
    still_serving(r, port)


def test_rebinding_host_is_refused_on_reads_too(admin_proxy):
    r = admin_proxy()
    for path in ["/config_dump", "/stats", "/ready"]:
        resp = admin_request(r, "GET", path, host=f"evil.example:{r.admin_port}")
        assert resp.status == 421, (path, resp.status, resp.body)
        assert b"listeners" not in resp.body and b"127.0.0.1" not in resp.body
    # A name that merely starts like an address is a name.
    assert admin_request(r, "GET", "/config_dump", host="127.0.0.1.evil.example").status == 421
    # IP literals and localhost are addresses of this machine, whatever the port (a port forward changes it).
    for host in [f"127.0.0.1:{r.admin_port}", "127.0.0.1", f"localhost:{r.admin_port}", f"LOCALHOST:{r.admin_port}",
                 f"[::1]:{r.admin_port}", "localhost:19901", "10.1.2.3:9901"]:
        resp = admin_request(r, "GET", "/config_dump", host=host)
        assert resp.status == 200 and b"listeners" in resp.body, (host, resp.status, resp.body)
    # A read from another origin changes nothing: answered.
    assert admin_request(r, "GET", "/stats", EVIL).status == 200
    # A read-only endpoint takes no POST.
    resp = admin_request(r, "POST", "/stats")
    assert resp.status == 405 and resp.header("allow") == "GET, HEAD"
    assert admin_request(r, "HEAD", "/stats").status == 200
    r.assert_alive()


def test_curl_and_same_origin_posts_still_work(admin_proxy):
    r = admin_proxy()
    # A same-origin post (a page served by the admin server itself) is allowed.
    resp = admin_request(r, "POST", "/nothing-here", [("Origin", f"http://127.0.0.1:{r.admin_port}")])
    assert resp.status == 404
    p = run_curl(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", f"http://127.0.0.1:{r.admin_port}/drain"])
    assert p.stdout == b"200", (p.stdout, p.stderr)
    poll(lambda: not r.alive(), 5, what="exit after POST /drain from curl")
    assert r.proc.returncode == 0

    r2 = admin_proxy()
    resp = admin_request(r2, "POST", "/quitquitquit", [("Origin", f"http://127.0.0.1:{r2.admin_port}"),
                                                         ("Sec-Fetch-Site", "same-origin")])
    assert resp.status == 200, (resp.status, resp.body)
    poll(lambda: not r2.alive(), 5, what="exit after a same-origin /quitquitquit")


def test_admin_token(admin_proxy):
    r = admin_proxy({"address": "127.0.0.1:0", "token": "adm1n-t0ken"})
    port = r.port("web")
    assert "admin listens" not in r.stderr_tail()
    assert admin_request(r, "POST", "/quitquitquit").status == 401
    resp = admin_request(r, "POST", "/drain", [("Authorization", "Bearer wrong")])
    assert resp.status == 401 and resp.header("www-authenticate") == "Bearer"
    # Reads need no token.
    assert admin_request(r, "GET", "/stats").status == 200
    # With the token a name is accepted as Host (a page cannot add the header).
    auth = [("Authorization", "Bearer adm1n-t0ken")]
    assert admin_request(r, "GET", "/config_dump", auth, host="admin.internal:9901").status == 200
    assert admin_request(r, "GET", "/config_dump", host="admin.internal:9901").status == 421
    # The token does not make a cross-origin post acceptable.
    assert admin_request(r, "POST", "/quitquitquit", auth + EVIL).status == 403
    still_serving(r, port)
    p = run_curl(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Authorization: Bearer adm1n-t0ken",
                  f"http://127.0.0.1:{r.admin_port}/quitquitquit"])
    assert p.stdout == b"200", (p.stdout, p.stderr)
    poll(lambda: not r.alive(), 5, what="exit after /quitquitquit with the token")


def test_admin_token_is_fixed_at_start(admin_proxy):
    """A reload that changes admin.token is refused (as one that moves admin.address): the running
    token stays, and the log says so."""
    r = admin_proxy({"address": "127.0.0.1:0", "token": "first"})
    r.config_path.write_text(r.config_path.read_text().replace("first", "second"))
    os.kill(r.pid, signal.SIGHUP)
    poll(lambda: "admin.token: fixed at start" in r.stderr_tail(), 5, what="the refused reload")
    assert admin_request(r, "POST", "/drain", [("Authorization", "Bearer second")]).status == 401
    still_serving(r, r.port("web"))


def test_admin_token_must_be_a_token(tmp_path):
    path = tmp_path / "c.yaml"
    for bad in ['""', '"has space"']:
        path.write_text(f"admin: {{ address: 127.0.0.1:0, token: {bad} }}\n"
                        "listeners: [ { name: web, address: 127.0.0.1:0 } ]\n")
        p = subprocess.run([str(remora_bin()), "validate", str(path)], capture_output=True, timeout=10)
        assert p.returncode == 1 and b"admin.token" in p.stderr, (bad, p.stderr)
        assert b"has space" not in p.stderr   # a secret is not echoed


def test_admin_off_loopback_without_token_warns(admin_proxy):
    r = admin_proxy({"address": "0.0.0.0:0"})
    poll(lambda: "off loopback, without admin.token" in r.stderr_tail(), 5, what="the off-loopback warning")
    # Only 127.0.0.1 is talked to.
    assert r.admin_get("/ready").status == 200
    assert admin_request(r, "POST", "/quitquitquit", EVIL).status == 403
    r.assert_alive()
    r2 = admin_proxy({"address": "0.0.0.0:0", "token": "t"})
    assert r2.admin_get("/ready").status == 200
    assert "off loopback" not in r2.stderr_tail()


# -- control --------------------------------------------------------------------------------------

@pytest.fixture
def control(tmp_path):
    started: list[Control] = []

    def start(**kw) -> Control:
        c = Control(tmp_path / f"state{len(started)}", **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        try:
            c.stop()
        except Exception:
            c.kill()


def test_control_refuses_cross_origin_and_rebinding(control):
    c = control()
    assert c.call("PUT", "/v1/groups/web", DOC).status == 200
    before = c.call("GET", "/v1/groups/web")
    # The reported attack: the canary split moved from a page.
    r = c.call("POST", "/v1/groups/web/split?route=split", "v1=0 v2=100", headers=EVIL, host=f"evil.example:{c.port}")
    assert r.status == 421, (r.status, r.body)
    r = c.call("POST", "/v1/groups/web/split?route=split", "v1=0 v2=100", headers=EVIL)
    assert r.status == 403, (r.status, r.body)
    r = c.call("PUT", "/v1/groups/web", DOC.replace("weight: 90", "weight: 1"), headers=[("Sec-Fetch-Site", "cross-site")])
    assert r.status == 403, (r.status, r.body)
    # Reads through a rebinding name are refused; even a poll from a page is (it records a node).
    assert c.call("GET", "/v1/groups/web", host=f"evil.example:{c.port}").status == 421
    assert c.call("GET", "/v1/snapshot?group=web&node=phantom&wait=0", headers=[("Sec-Fetch-Site", "cross-site")]).status == 403
    after = c.call("GET", "/v1/groups/web")
    assert after.body == before.body and after.header("x-remora-version") == before.header("x-remora-version") == "1"
    assert not any(row[0] == "phantom" for row in status_lines(c))
    # ctl (Host: its --control authority, no Origin) still works, by IP and by localhost.
    p = ctl(c, "split", "web", "split", "v1=95", "v2=5")
    assert p.returncode == 0, p.stderr
    assert ctl(c, "status", url=f"http://localhost:{c.port}").returncode == 0
    assert c.call("GET", "/v1/groups/web").header("x-remora-version") == "2"


def test_control_with_token_accepts_a_name_with_the_token(control, tmp_path):
    tf = tmp_path / "token"
    tf.write_text("ctl-t0ken\n")
    c = control(token_file=tf)
    auth = [("Authorization", "Bearer ctl-t0ken")]
    assert c.call("GET", "/v1/groups", headers=auth, host="control.mesh.svc:9911").status == 200
    assert c.call("GET", "/v1/groups", host="control.mesh.svc:9911").status == 421
    assert c.call("GET", "/v1/groups", headers=[("Authorization", "Bearer nope")], host="control.mesh.svc:9911").status == 421
    assert c.call("POST", "/v1/groups/web/split?route=split", "v1=1", headers=auth + EVIL).status == 403
    assert ctl(c, "status", "--token-file", str(tf)).returncode == 0
