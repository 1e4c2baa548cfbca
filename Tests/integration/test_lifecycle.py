"""Process lifecycle: validate, config errors, /ready, SIGTERM drain."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time

from harness import Client, cluster, connect, get, http_listener, make_config, poll, to_yaml
from wire import Reader, read_response, wait_closed

GOOD = """\
admin: { address: 127.0.0.1:0 }
workers: 2
drain_timeout: 5s
listeners:
  - name: web
    address: 127.0.0.1:0
    protocol: http
    request_header_timeout: 10s
    max_request_header_bytes: 60KiB
    idle_timeout: 60s
    routes:
      - name: all
        match: { path: { prefix: / } }
        backends: [ { cluster: app } ]
        timeout: 15s
  - name: echo
    address: 127.0.0.1:0
    protocol: tcp
    cluster: tcpecho
clusters:
  - name: app
    endpoints: [ "127.0.0.1:8080" ]
    connect_timeout: 5s
  - name: tcpecho
    endpoints: [ "[::1]:9000" ]
"""

BAD = """\
admin:
  address: 127.0.0.1:0
listeners:
  - name: web
    address: 127.0.0.1:0
    protocol: http
    routes:
      - name: all
        match:
          path:
            prefix: /
        backends:
          - cluster: nosuch
        tiemout: 5s
clusters:
  - name: app
    endpoints: ["127.0.0.1:1"]
"""


def line_of(text: str, needle: str) -> int:
    return next(i for i, l in enumerate(text.splitlines(), 1) if needle in l)


def check_bad_errors(stderr: str, path: str):
    lines = stderr.splitlines()
    unknown_key = re.compile(rf"^{re.escape(path)}:(\d+): listeners\[0\]\.routes\[0\](\.tiemout)?: .*tiemout")
    unknown_cluster = re.compile(
        rf"^{re.escape(path)}:(\d+): listeners\[0\]\.routes\[0\]\.backends\[0\](\.cluster)?: .*nosuch")
    k = [m for m in map(unknown_key.match, lines) if m]
    c = [m for m in map(unknown_cluster.match, lines) if m]
    assert k, f"no 'file:line: path: message' error for the unknown key in:\n{stderr}"
    assert c, f"no 'file:line: path: message' error for the unknown cluster in:\n{stderr}"
    assert int(k[0].group(1)) == line_of(BAD, "tiemout"), k[0].group(0)
    assert int(c[0].group(1)) == line_of(BAD, "nosuch"), c[0].group(0)


def test_validate_good_file(remora_binary, tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    p = subprocess.run([str(remora_binary), "validate", str(path)], capture_output=True, timeout=10)
    assert p.returncode == 0, p.stderr.decode()
    assert f"{path}: ok" in p.stdout.decode()


def test_validate_generated_config(remora_binary, tmp_path):
    """The suite's own YAML emitter produces configs the binary accepts."""
    path = tmp_path / "gen.yaml"
    path.write_text(to_yaml(make_config([http_listener("web", idle_timeout="1s")],
                                        [cluster("app", ["127.0.0.1:1"], connect_timeout="250ms")])))
    p = subprocess.run([str(remora_binary), "validate", str(path)], capture_output=True, timeout=10)
    assert p.returncode == 0, p.stderr.decode() + "\n" + path.read_text()


def test_validate_bad_file_lists_every_error(remora_binary, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    p = subprocess.run([str(remora_binary), "validate", str(path)], capture_output=True, timeout=10)
    assert p.returncode == 1
    assert b": ok" not in p.stdout
    check_bad_errors(p.stderr.decode(), str(path))


def test_run_with_bad_config_exits_1(remora_binary, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    p = subprocess.run([str(remora_binary), "run", "--config", str(path)], capture_output=True, timeout=10)
    assert p.returncode == 1
    assert b"ready" not in p.stdout
    check_bad_errors(p.stderr.decode(), str(path))


def test_ready_endpoint_200_while_serving(proxy):
    r = proxy.remora.admin_get("/ready")
    assert r.status == 200
    assert get(proxy.port, "/echo").status == 200


def _slow_request(port: int, target: str, out: dict):
    try:
        with Client(port, timeout=15) as c:
            out["response"] = c.request("GET", target)
    except Exception as e:
        out["error"] = e


def _wait_backend_got(backend, target: str):
    """The backend records a request once its head and body are in, before sleeping/answering."""
    poll(lambda: any(q["target"] == target for q in backend.requests), 5, what=f"backend receiving {target}")


def test_sigterm_drains_in_flight_request(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])],
                                      drain_timeout="5s"))
    port = remora.port("web")
    assert remora.admin_get("/ready").status == 200

    idle = Client(port, timeout=5)
    assert idle.request("GET", "/echo?idle=1").status == 200  # now an idle keep-alive connection

    out: dict = {}
    t = threading.Thread(target=_slow_request, args=(port, "/sleep/2500", out), daemon=True)
    t.start()
    _wait_backend_got(backend, "/sleep/2500")
    t0 = time.monotonic()
    remora.proc.send_signal(signal.SIGTERM)

    # /ready turns 503 while draining
    def ready_status():
        try:
            return remora.admin_get("/ready", timeout=1).status == 503
        except OSError:
            return False
    poll(ready_status, 1.0, what="/ready answering 503 during the drain")

    # the idle keep-alive connection is closed, before the in-flight request finishes
    how, _ = wait_closed(idle.sock, 1.5)
    idle.close()
    assert how in ("eof", "reset"), "idle keep-alive connection not closed during the drain"
    assert t.is_alive(), "in-flight request finished before the checks: the test's timing is off"

    # new connections are no longer served
    try:
        s = connect(port, timeout=2)
        try:
            s.sendall(b"GET /echo?late=1 HTTP/1.1\r\nHost: a\r\n\r\n")
            late = read_response(Reader(s)).status
        except (OSError, EOFError):
            late = None
        finally:
            s.close()
    except OSError:
        late = None
    assert late != 200, "a connection made after SIGTERM was served"

    t.join(10)
    assert "error" not in out, f"in-flight request failed during the drain: {out.get('error')!r}"
    assert out["response"].status == 200
    assert out["response"].json()["target"] == "/sleep/2500"
    rc = remora.proc.wait(6)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"exit code {rc} after SIGTERM"
    assert elapsed < 5.0, f"exit {elapsed:.2f}s after SIGTERM, beyond drain_timeout"


def test_sigterm_gives_up_after_drain_timeout(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])],
                                      drain_timeout="1s"))
    port = remora.port("web")
    out: dict = {}
    t = threading.Thread(target=_slow_request, args=(port, "/sleep/8000", out), daemon=True)
    t.start()
    _wait_backend_got(backend, "/sleep/8000")
    t0 = time.monotonic()
    remora.proc.send_signal(signal.SIGTERM)
    rc = remora.proc.wait(5)
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert 0.8 <= elapsed <= 3.0, f"exited {elapsed:.2f}s after SIGTERM with drain_timeout 1s"
    t.join(5)
    assert not t.is_alive()
    assert "response" not in out or out["response"].status != 200


def test_sigterm_idle_process_exits_promptly(proxy):
    assert get(proxy.port, "/echo").status == 200
    t0 = time.monotonic()
    proxy.remora.proc.send_signal(signal.SIGTERM)
    rc = proxy.remora.proc.wait(5)
    assert rc == 0
    assert time.monotonic() - t0 < 1.5, "an idle proxy should not wait for drain_timeout"
