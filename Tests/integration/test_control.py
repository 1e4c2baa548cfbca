"""The control server (`remora control`) and its CLI (`remora ctl`), driven over the wire.

docs/control-plane.md is the contract: PUT/GET of group documents with versions that only grow, the
split edit, long polls answered the moment a group changes (304 when `wait` runs out), node status
from polls/ACKs/NACKs, 400 with every error as `file:line: path: message`, state that survives a
restart, a bearer token off loopback, and `ctl split --canary` walking a canary through real proxies
and rolling it back when its 5xx rate climbs.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness import Client, IO_TIMEOUT, poll, remora_bin

DOC = """\
# The web group: every proxy of the web service.
workers: 1
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      # The canary split.
      - name: split
        backends: [ { cluster: v1, weight: 90 }, { cluster: v2, weight: 10 } ]   # stable / canary
clusters:
  - { name: v1, endpoints: [ "127.0.0.1:1" ] }
  - { name: v2, endpoints: [ "127.0.0.1:2" ] }
"""

BAD = """\
listeners:
  - name: web
    address: nope
    routes:
      - name: split
        backends: [ { cluster: missing } ]
"""

ERROR_LINE = re.compile(r"^web:\d+: [^ :]+: .+$")


class Control:
    """One `remora control` process on a state directory. .stop() or .kill() always ends it."""

    def __init__(self, state: Path, listen: str = "127.0.0.1:0", token_file: Path | None = None,
                 env: dict | None = None, wait: bool = True, extra: list[str] = ()):
        args = [str(remora_bin()), "control", "--state", str(state), "--listen", listen, *extra]
        if token_file is not None:
            args += ["--token-file", str(token_file)]
        self.stderr_path = state.parent / f"control-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        e = dict(os.environ)
        e.pop("REMORA_CONTROL_TOKEN", None)
        e.update(env or {})
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=e)
        self.lines: queue.Queue = queue.Queue()
        self.stdout: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self.host = ""
        self.port = 0
        if wait:
            self.wait_ready()

    def _pump(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"control did not print ready: {self.stdout!r}\n{self.stderr()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"control exited with {self.proc.wait(5)}: {self.stdout!r}\n{self.stderr()}")
            parts = line.split()
            if parts[:2] == ["listening", "control"] and len(parts) == 3:
                host, _, port = parts[2].rpartition(":")
                self.host, self.port = host.strip("[]"), int(port)
            elif parts == ["ready"]:
                assert self.port, "ready before 'listening control'"
                return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}" if ":" not in self.host else f"http://[{self.host}]:{self.port}"

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    @property
    def authority(self) -> str:
        return self.url[len("http://"):]

    def call(self, method: str, target: str, body: bytes | str | None = None, headers=None, timeout: float = IO_TIMEOUT,
             host: str | None = None):
        """One request with `Host: <its address>` (or `host`): the server refuses names (DNS rebinding)."""
        if isinstance(body, str):
            body = body.encode()
        if body is None and method in ("PUT", "POST"):
            body = b""
        with Client(self.port, self.host, timeout) as cl:
            return cl.request(method, target, headers, body, host=host or self.authority)

    def stop(self, timeout: float = 5.0) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            return self.proc.returncode
        finally:
            self._close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self._close()

    def _close(self):
        try:
            self.proc.stdout.close()
        except Exception:
            pass
        self._reader.join(2)
        self._stderr.close()


@pytest.fixture
def control(tmp_path):
    """control(state_dir=tmp_path/"state", **kw) -> a ready Control; stopped at teardown."""
    started: list[Control] = []

    def start(state: Path | None = None, **kw) -> Control:
        c = Control(state or tmp_path / "state", **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        if c.proc.poll() is None:
            try:
                c.stop()
            except Exception:
                c.kill()
        elif not c._stderr.closed:
            c._close()


def ctl(c: Control | None, *args: str, url: str | None = None, timeout: float = 60, env: dict | None = None,
        stdin: bytes | None = None) -> subprocess.CompletedProcess:
    argv = [str(remora_bin()), "ctl"]
    if c is not None or url is not None:
        argv += ["--control", url or c.url]
    e = dict(os.environ)
    e.pop("REMORA_CONTROL_TOKEN", None)
    e.update(env or {})
    return subprocess.run(argv + list(args), capture_output=True, timeout=timeout, env=e, input=stdin)


def status_lines(c: Control) -> list[list[str]]:
    r = c.call("GET", "/v1/status")
    assert r.status == 200
    rows = [line.split(" ") for line in r.body.decode().splitlines()]
    for row in rows:
        assert len(row) == 7, row
    return rows


# -- documents and versions -----------------------------------------------------------------------

def test_put_get_versions(control):
    c = control()
    r = c.call("PUT", "/v1/groups/web", DOC)
    assert r.status == 200 and r.body == b"version 1\n" and r.header("x-remora-version") == "1"
    r = c.call("GET", "/v1/groups/web")
    assert r.status == 200 and r.body == DOC.encode() and r.header("x-remora-version") == "1"
    # The same document again is not a new version; a changed one is.
    assert c.call("PUT", "/v1/groups/web", DOC).body == b"version 1\n"
    assert c.call("PUT", "/v1/groups/web", DOC + "# edited\n").body == b"version 2\n"
    assert c.call("PUT", "/v1/groups/api", DOC).body == b"version 1\n"
    assert c.call("GET", "/v1/groups").body == b"api 1\nweb 2\n"
    assert c.call("GET", "/v1/groups/nope").status == 404
    assert c.call("GET", "/v1/nope").status == 404
    assert c.call("DELETE", "/v1/groups/web").status == 405
    assert c.call("GET", "/v1/snapshot?group=web").status == 400          # node missing
    assert c.call("GET", "/v1/snapshot?group=web&node=n1&version=x").status == 400
    # A poll without a version gets the current document at once.
    r = c.call("GET", "/v1/snapshot?group=web&node=n1&wait=10", timeout=5)
    assert r.status == 200 and r.header("x-remora-version") == "2" and r.body == (DOC + "# edited\n").encode()


def test_bad_document_gets_400_with_every_error(control, tmp_path):
    c = control()
    r = c.call("PUT", "/v1/groups/web", BAD)
    assert r.status == 400
    lines = r.body.decode().splitlines()
    assert len(lines) >= 2, lines
    for line in lines:
        assert ERROR_LINE.match(line), line
    assert any(line.startswith("web:3: listeners[0].address: ") for line in lines), lines
    assert c.call("GET", "/v1/groups/web").status == 404                     # nothing stored
    # ctl apply prints the same errors and exits 1; --force stores it anyway (to test NACKs).
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    p = ctl(c, "apply", "web", str(f))
    assert p.returncode == 1
    assert p.stderr.decode().strip().splitlines() == lines
    p = ctl(c, "apply", "web", str(f), "--force")
    assert p.returncode == 0 and p.stdout == b"web: version 1\n"
    assert c.call("GET", "/v1/groups/web").body == BAD.encode()


def test_split_edits_only_the_weights(control, tmp_path):
    c = control()
    assert c.call("PUT", "/v1/groups/web", DOC).status == 200
    r = c.call("POST", "/v1/groups/web/split?route=split", "v1=95 v2=5")
    assert r.status == 200 and r.body == b"version 2\n"
    doc = c.call("GET", "/v1/groups/web").body.decode()
    assert doc == DOC.replace("weight: 90", "weight: 95").replace("weight: 10", "weight: 5")
    # The result is a valid config for the proxy.
    f = tmp_path / "edited.yaml"
    f.write_text(doc)
    v = subprocess.run([str(remora_bin()), "validate", str(f)], capture_output=True, timeout=10)
    assert v.returncode == 0, v.stderr
    # Refusals: unknown route, unknown cluster, bad weights, unknown group; nothing stored.
    assert c.call("POST", "/v1/groups/web/split?route=nope", "v1=1").status == 404
    r = c.call("POST", "/v1/groups/web/split?route=split", "v3=1")
    assert r.status == 400 and b"v3 is not a backend" in r.body
    assert c.call("POST", "/v1/groups/web/split?route=split", "v1=-1").status == 400
    assert c.call("POST", "/v1/groups/web/split?route=split", "v1=0 v2=0").status == 400   # no weight above 0
    assert c.call("POST", "/v1/groups/nope/split?route=split", "v1=1").status == 404
    assert c.call("GET", "/v1/groups").body == b"web 2\n"
    # ctl split, by listener/route.
    p = ctl(c, "split", "web", "web/split", "v1=50", "v2=50")
    assert p.returncode == 0 and p.stdout == b"web: version 3\n", p.stderr
    assert "{ cluster: v1, weight: 50 }, { cluster: v2, weight: 50 }" in c.call("GET", "/v1/groups/web").body.decode()
    p = ctl(c, "split", "web", "split", "v9=1")
    assert p.returncode == 1 and b"v9 is not a backend" in p.stderr


def test_ctl_apply_get_roundtrip(control, tmp_path):
    c = control()
    f = tmp_path / "web.yaml"
    f.write_text(DOC)
    p = ctl(c, "apply", "web", str(f))
    assert p.returncode == 0 and p.stdout == b"web: version 1\n", p.stderr
    p = ctl(c, "apply", "web", "-", stdin=(DOC + "# two\n").encode())
    assert p.returncode == 0 and p.stdout == b"web: version 2\n", p.stderr
    p = ctl(c, "get", "web")
    assert p.returncode == 0 and p.stdout == (DOC + "# two\n").encode()
    p = ctl(c, "get", "nope")
    assert p.returncode == 1 and b"404" in p.stderr
    p = ctl(None, "status", url="http://127.0.0.1:1")
    assert p.returncode == 1 and b"cannot connect" in p.stderr


def test_ctl_argument_errors():
    for args, message in [
        ([], b"name a command"),
        (["bogus"], b"unknown command bogus"),
        (["get"], b"usage: get GROUP"),
        (["split", "web", "split"], b"give the weights"),
        (["split", "web", "split", "v1=x"], b"v1: expected a weight"),
        (["split", "web", "split", "--canary", "v2", "--step", "5"], b"needs --every"),
        (["status", "--control", "ftp://x"], b"--control: expected http://HOST:PORT"),
    ]:
        p = ctl(None, *args)
        assert p.returncode == 2, (args, p.stderr)
        assert message in p.stderr, (args, p.stderr)
        assert b"usage: remora ctl" in p.stderr


# -- long polls -----------------------------------------------------------------------------------

def test_long_poll_answered_at_once_on_change(control):
    c = control()
    assert c.call("PUT", "/v1/groups/web", DOC).status == 200
    got = {}

    def poller():
        got["response"] = c.call("GET", "/v1/snapshot?group=web&node=n1&version=1&wait=10&admin=127.0.0.1:9901",
                                  timeout=15)
        got["at"] = time.monotonic()

    t = threading.Thread(target=poller, daemon=True)
    t.start()
    time.sleep(0.5)
    assert t.is_alive(), "the poll did not wait"
    put_at = time.monotonic()
    assert c.call("POST", "/v1/groups/web/split?route=split", "v1=80 v2=20").status == 200
    t.join(5)
    assert not t.is_alive()
    r = got["response"]
    assert r.status == 200 and r.header("x-remora-version") == "2"
    assert b"{ cluster: v2, weight: 20 }" in r.body
    assert got["at"] - put_at < 1.0, f"the waiting poll got the change after {got['at'] - put_at:.3f} s"


def test_long_poll_304_after_wait(control):
    c = control()
    assert c.call("PUT", "/v1/groups/web", DOC).status == 200
    t0 = time.monotonic()
    r = c.call("GET", "/v1/snapshot?group=web&node=n1&version=1&wait=1", timeout=10)
    took = time.monotonic() - t0
    assert r.status == 304 and r.body == b""
    assert 0.9 <= took < 2.5, took
    # wait=0: at once.
    t0 = time.monotonic()
    assert c.call("GET", "/v1/snapshot?group=web&node=n1&version=1&wait=0").status == 304
    assert time.monotonic() - t0 < 0.5
    # Many waiting polls at once all get the change.
    results = queue.Queue()
    threads = [threading.Thread(target=lambda i=i: results.put(
        c.call("GET", f"/v1/snapshot?group=web&node=m{i}&version=1&wait=10", timeout=15).status), daemon=True)
        for i in range(20)]
    for th in threads:
        th.start()
    poll(lambda: len([r for r in status_lines(c) if r[0].startswith("m")]) == 20, 5, what="20 pollers seen")
    assert c.call("PUT", "/v1/groups/web", DOC + "# 2\n").status == 200
    for th in threads:
        th.join(5)
    assert sorted(results.get_nowait() for _ in range(20)) == [200] * 20


def test_sigterm_answers_waiting_polls_and_exits_0(control):
    c = control()
    assert c.call("PUT", "/v1/groups/web", DOC).status == 200
    got = {}

    def poller():
        got["response"] = c.call("GET", "/v1/snapshot?group=web&node=n1&version=1&wait=30", timeout=15)
        got["at"] = time.monotonic()

    t = threading.Thread(target=poller, daemon=True)
    t.start()
    time.sleep(0.3)
    sent = time.monotonic()
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(5) == 0
    t.join(5)
    assert got["response"].status == 304
    assert got["at"] - sent < 1.0
    assert "handles left" not in c.stderr()


# -- nodes ----------------------------------------------------------------------------------------

def test_status_lines_and_ctl_status(control):
    c = control()
    assert c.call("PUT", "/v1/groups/web", DOC).status == 200
    assert c.call("GET", "/v1/snapshot?group=web&node=web-1&version=0&admin=127.0.0.1:9901").status == 200
    assert c.call("GET", "/v1/snapshot?group=web&node=web-2&version=0&admin=%5B::1%5D:9902").status == 200
    assert c.call("GET", "/v1/snapshot?group=web&node=web-3&version=0&wait=0").status == 200
    assert c.call("POST", "/v1/ack?group=web&node=web-1&version=1").status == 204
    reason = "web@1:3: listeners[0].address: bad\nweb@1:9: second error"
    assert c.call("POST", "/v1/nack?group=web&node=web-2&version=1", reason).status == 204
    rows = {r[0]: r for r in status_lines(c)}
    assert rows["web-1"][1:5] == ["web", "1", "ACK", "-"] and rows["web-1"][6] == "127.0.0.1:9901"
    assert rows["web-2"][1:4] == ["web", "1", "NACK"]
    assert rows["web-2"][4] == "web@1:3:%20listeners[0].address:%20bad%0Aweb@1:9:%20second%20error"
    assert rows["web-2"][6] == "[::1]:9902"
    assert rows["web-3"][1:5] == ["web", "1", "PENDING", "-"] and rows["web-3"][6] == "-"
    assert all(int(r[5]) <= 2 for r in rows.values())
    p = ctl(c, "status")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode().splitlines()
    assert out[0].split() == ["NODE", "GROUP", "VERSION", "STATE", "REASON", "LAST", "SEEN", "ADMIN"]
    line2 = next(line for line in out if line.startswith("web-2"))
    assert "NACK" in line2 and "web@1:3: listeners[0].address: bad (+1 more)" in line2 and "[::1]:9902" in line2


# -- state on disk --------------------------------------------------------------------------------

def test_restart_keeps_versions(control, tmp_path):
    state = tmp_path / "state"
    c = control(state)
    assert c.call("PUT", "/v1/groups/web", DOC).status == 200
    assert c.call("POST", "/v1/groups/web/split?route=split", "v1=70 v2=30").status == 200
    doc = c.call("GET", "/v1/groups/web").body
    # A second server on the same directory is refused.
    p = subprocess.run([str(remora_bin()), "control", "--state", str(state), "--listen", "127.0.0.1:0"],
                       capture_output=True, timeout=10)
    assert p.returncode != 0 and b"in use by another control server" in p.stderr
    assert c.stop() == 0
    # `ca/`: the mesh CA's root, made on first start (docs/control-plane.md "Mesh CA").
    assert sorted(x.name for x in state.iterdir()) == [".lock", "ca", "web.version", "web.yaml"]
    assert sorted(x.name for x in (state / "ca").iterdir()) == ["root-key.pem", "root.pem"]
    assert (state / "web.version").read_text() == "2\n"
    assert (state / "web.yaml").read_bytes() == doc
    c2 = control(state)
    r = c2.call("GET", "/v1/groups/web")
    assert r.status == 200 and r.header("x-remora-version") == "2" and r.body == doc
    assert c2.call("PUT", "/v1/groups/web", DOC).body == b"version 3\n"
    # A proxy that saw a newer version than this state holds (restored from an old copy) makes the
    # version jump past its own, so the versions a proxy sees only grow.
    r = c2.call("GET", "/v1/snapshot?group=web&node=n1&version=40")
    assert r.status == 200 and r.header("x-remora-version") == "41"


# -- tokens ---------------------------------------------------------------------------------------

def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback (traffic to it stays on the machine)."""
    candidates = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            candidates.add(info[4][0])
    except OSError:
        pass
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, timeout=5).stdout.decode().split()
        candidates.update(a for a in out if "." in a)
    except (OSError, subprocess.SubprocessError):
        pass
    for a in sorted(candidates):
        if a.startswith("127."):
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((a, 0))
            return a
        except OSError:
            continue
        finally:
            s.close()
    return None


def test_token_on_loopback_when_configured(control, tmp_path):
    tf = tmp_path / "token"
    tf.write_text("s3cret\n")
    c = control(token_file=tf)
    assert c.call("GET", "/v1/groups").status == 401
    assert c.call("GET", "/v1/groups", headers=[("Authorization", "Bearer nope")]).status == 401
    assert c.call("GET", "/v1/groups", headers=[("Authorization", "Bearer s3cret")]).status == 200
    assert ctl(c, "status").returncode == 1
    assert ctl(c, "status", "--token-file", str(tf)).returncode == 0
    assert ctl(c, "status", env={"REMORA_CONTROL_TOKEN": "s3cret"}).returncode == 0


def test_bearer_token_required_off_loopback(control, tmp_path):
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    # Without a token it refuses to start.
    p = subprocess.run([str(remora_bin()), "control", "--state", str(tmp_path / "s0"), "--listen", f"{addr}:0"],
                       capture_output=True, timeout=10, env={k: v for k, v in os.environ.items() if k != "REMORA_CONTROL_TOKEN"})
    assert p.returncode != 0
    assert b"bearer token is required" in p.stderr
    # With one, every request needs it.
    tf = tmp_path / "token"
    tf.write_text("t0ken-for-test\n")
    c = control(listen=f"{addr}:0", token_file=tf)
    assert c.host == addr
    assert c.call("PUT", "/v1/groups/web", DOC).status == 401
    assert c.call("GET", "/v1/snapshot?group=web&node=n1&wait=0").status == 401
    auth = [("Authorization", "Bearer t0ken-for-test")]
    assert c.call("PUT", "/v1/groups/web", DOC, headers=auth).status == 200
    assert c.call("GET", "/v1/groups/web", headers=auth).status == 200
    p = ctl(c, "status", "--token-file", str(tf))
    assert p.returncode == 0, p.stderr
    # The token also comes from the environment.
    c2 = control(tmp_path / "s2", listen=f"{addr}:0", env={"REMORA_CONTROL_TOKEN": "env-token"})
    assert c2.call("GET", "/v1/groups").status == 401
    assert c2.call("GET", "/v1/groups", headers=[("Authorization", "Bearer env-token")]).status == 200


# -- canary walk through real proxies -------------------------------------------------------------

class StatusBackend:
    """A keep-alive HTTP/1.1 backend answering every request with .status (changeable) and its name."""

    def __init__(self, name: str, status: int = 200):
        self.name = name
        self.status = status
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopping = False
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        conn.settimeout(IO_TIMEOUT)
        buf = b""
        try:
            while not self.stopping:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if m:
                    n = int(m.group(1))
                    while len(buf) < n:
                        buf += conn.recv(65536)
                    buf = buf[n:]
                body = f"{self.name}\n".encode()
                conn.sendall(f"HTTP/1.1 {self.status} X\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stopping = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.thread.join(2)


class Proxy:
    """`remora run --control URL --node ID --group G --admin 127.0.0.1:0`, ready once configured."""

    def __init__(self, c: Control, node: str, workdir: Path):
        self.stderr_path = workdir / f"{node}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([str(remora_bin()), "run", "--control", c.url, "--node", node, "--group", "web",
                                      "--admin", "127.0.0.1:0"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)
        self.port = self.admin = 0
        deadline = time.monotonic() + 10
        for raw in self.proc.stdout:
            parts = raw.decode().split()
            if parts[:2] == ["listening", "admin"]:
                self.admin = int(parts[2].rpartition(":")[2])
            elif parts[:3] == ["listening", "listener", "web"]:
                self.port = int(parts[3].rpartition(":")[2])
            elif parts == ["ready"]:
                break
            if time.monotonic() > deadline:
                break
        assert self.port and self.admin, f"proxy {node} not ready: {self.stderr_path.read_text()}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self._stderr.close()


class Load:
    """Keeps sending GETs through each proxy (one keep-alive connection each) until stopped."""

    def __init__(self, ports: list[int]):
        self.stopping = False
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in ports]
        for t in self.threads:
            t.start()

    def _run(self, port: int):
        c = Client(port, timeout=5)
        try:
            while not self.stopping:
                r = c.request("GET", "/")
                key = f"{r.body.decode().strip()} {r.status}"
                with self.lock:
                    self.counts[key] = self.counts.get(key, 0) + 1
                if r.wants_close:
                    c.close()
                    c = Client(port, timeout=5)
                time.sleep(0.002)
        finally:
            c.close()

    def stop(self):
        self.stopping = True
        for t in self.threads:
            t.join(5)


def canary_doc(v1: StatusBackend, v2: StatusBackend) -> str:
    return DOC.replace('"127.0.0.1:1"', f'"{v1.endpoint}"').replace('"127.0.0.1:2"', f'"{v2.endpoint}"') \
              .replace("{ cluster: v1, weight: 90 }, { cluster: v2, weight: 10 }",
                       "{ cluster: v1, weight: 100 }, { cluster: v2, weight: 0 }")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("healthy", [True, False], ids=["healthy-walks-to-100", "failing-rolls-back"])
def test_ctl_canary_walk(control, tmp_path, healthy):
    v1 = StatusBackend("v1")
    v2 = StatusBackend("v2", 200 if healthy else 500)
    proxies: list[Proxy] = []
    load = None
    try:
        c = control()
        assert c.call("PUT", "/v1/groups/web", canary_doc(v1, v2)).status == 200
        proxies = [Proxy(c, f"p{i}", tmp_path) for i in range(2)]
        poll(lambda: sum(1 for r in status_lines(c) if r[3] == "ACK") == 2, 10, what="both proxies ACK")
        load = Load([p.port for p in proxies])
        p = ctl(c, "split", "web", "split", "--canary", "v2", "--step", "50", "--every", "1s", "--max-5xx-rate", "0.05",
                timeout=60)
        out, err = p.stdout.decode(), p.stderr.decode()
        doc = c.call("GET", "/v1/groups/web").body.decode()
        if healthy:
            assert p.returncode == 0, out + err
            assert "step 1/2: v2 at 50%" in out and "step 2/2: v2 at 100%" in out, out
            assert "v2 now takes 100% of web/split" in out
            assert "{ cluster: v1, weight: 0 }, { cluster: v2, weight: 100 }" in doc
        else:
            assert p.returncode == 1, out + err
            assert "step 1/2: v2 at 50%" in out and "step 2/2" not in out, out
            assert re.search(r"canary stopped: v2's 5xx rate over the last step was \d+\.\d\d% \(\d+ of \d+\), above 5\.00%; "
                             r"v2 set back to 0% \(version \d+\)", err), err
            assert "{ cluster: v1, weight: 100 }, { cluster: v2, weight: 0 }" in doc
            # The proxies applied the rollback: no new request reaches v2.
            poll(lambda: all(r[2] == c.call("GET", "/v1/groups/web").header("x-remora-version") and r[3] == "ACK"
                             for r in status_lines(c)), 10, what="rollback ACKed")
            time.sleep(0.2)   # requests routed before the swap finish on the old snapshot
            before = dict(load.counts)
            time.sleep(0.5)
            assert load.counts.get("v2 500", 0) == before.get("v2 500", 0)
        # Every request was answered by a backend (no proxy error on a weight change).
        assert set(load.counts) <= {"v1 200", "v2 200", "v2 500"}, load.counts
    finally:
        if load:
            load.stop()
        for px in proxies:
            px.stop()
        v1.close()
        v2.close()
