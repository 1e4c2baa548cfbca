"""Starting the real Remora binary, writing its config, and small bounded client helpers."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from wire import Reader, Response, build_request, read_response

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / ".build" / "release" / "remora"
IO_TIMEOUT = 10.0
READY_TIMEOUT = 10.0


def remora_bin() -> Path:
    return Path(os.environ.get("REMORA_BIN", str(DEFAULT_BIN)))


# -- config ---------------------------------------------------------------------------------------

def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a double-quoted YAML scalar for ASCII text
    raise TypeError(f"cannot emit {v!r}")


def _emit(obj, ind: int) -> list[str]:
    pad = " " * ind
    if isinstance(obj, dict):
        lines = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines += _emit(v, ind + 2)
            elif isinstance(v, list):
                lines.append(f"{pad}{k}: []")
            elif isinstance(v, dict):
                lines.append(f"{pad}{k}: {{}}")
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
        return lines
    if isinstance(obj, list):
        lines = []
        for item in obj:
            sub = _emit(item, ind + 2)
            lines.append(pad + "- " + sub[0][ind + 2:])
            lines += sub[1:]
        return lines
    return [pad + _scalar(obj)]


def to_yaml(obj) -> str:
    """Block-style YAML for dicts/lists/str/int (strings always double-quoted)."""
    return "\n".join(_emit(obj, 0)) + "\n"


def route(cluster: str = "app", name: str = "all", prefix: str | None = "/", exact: str | None = None,
          timeout: str | None = None) -> dict:
    r = {"name": name,
         "match": {"path": {"exact": exact} if exact is not None else {"prefix": prefix}},
         "backends": [{"cluster": cluster}]}
    if timeout is not None:
        r["timeout"] = timeout
    return r


def http_listener(name: str = "web", routes: list[dict] | None = None, address: str = "127.0.0.1:0",
                  **opts) -> dict:
    d = {"name": name, "address": address, "protocol": "http"}
    d.update(opts)
    d["routes"] = routes if routes is not None else [route()]
    return d


def tcp_listener(name: str, cluster: str, address: str = "127.0.0.1:0", **opts) -> dict:
    d = {"name": name, "address": address, "protocol": "tcp", "cluster": cluster}
    d.update(opts)
    return d


def cluster(name: str, endpoints: list[str], **opts) -> dict:
    d = {"name": name, "endpoints": list(endpoints)}
    d.update(opts)
    return d


def make_config(listeners: list[dict], clusters: list[dict], admin: bool = True, workers: int = 2,
                drain_timeout: str = "2s") -> dict:
    cfg: dict = {}
    if admin:
        cfg["admin"] = {"address": "127.0.0.1:0"}
    cfg["workers"] = workers
    cfg["drain_timeout"] = drain_timeout
    cfg["listeners"] = listeners
    cfg["clusters"] = clusters
    return cfg


# -- the process ----------------------------------------------------------------------------------

def _split_hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


class Remora:
    """One `remora run` process. Construct, then .wait_ready(); .stop() or .kill() always ends it."""

    def __init__(self, binary: Path, config, workdir: Path, name: str = "remora"):
        self.workdir = workdir
        self.name = name
        text = config if isinstance(config, str) else to_yaml(config)
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(text)
        self.stderr_path = workdir / f"{name}.stderr"
        self._stderr_file = open(self.stderr_path, "wb")
        self.stdout_lines: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        self.listeners: dict[str, tuple[str, int]] = {}
        self.admin_port: int | None = None
        self.returncode: int | None = None
        self.proc = subprocess.Popen([str(binary), "run", "--config", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr_file)
        self._reader = threading.Thread(target=self._pump_stdout, daemon=True)
        self._reader.start()

    def _pump_stdout(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "Remora":
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"remora did not print 'ready' within {timeout}s; "
                                     f"stdout={self.stdout_lines!r}\nstderr:\n{self.stderr_tail()}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                rc = self.proc.wait(5)
                raise AssertionError(f"remora exited with {rc} before 'ready'; stdout={self.stdout_lines!r}\n"
                                     f"stderr:\n{self.stderr_tail()}")
            parts = line.split()
            if parts[:2] == ["listening", "admin"] and len(parts) == 3:
                self.admin_port = _split_hostport(parts[2])[1]
            elif parts[:2] == ["listening", "listener"] and len(parts) == 4:
                self.listeners[parts[2]] = _split_hostport(parts[3])
            elif parts == ["ready"]:
                return self

    def port(self, listener: str = "web") -> int:
        return self.listeners[listener][1]

    def host(self, listener: str = "web") -> str:
        return self.listeners[listener][0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def assert_alive(self):
        if not self.alive():
            raise AssertionError(f"remora died (exit {self.proc.returncode})\nstderr:\n{self.stderr_tail()}")

    def stderr_tail(self, n: int = 60) -> str:
        try:
            if not self._stderr_file.closed:
                self._stderr_file.flush()
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no stderr>"
        return "\n".join(lines[-n:])

    # admin
    def admin_get(self, path: str, timeout: float = 5.0) -> Response:
        assert self.admin_port, "no admin listener"
        return get(self.admin_port, path, timeout=timeout, host=f"127.0.0.1:{self.admin_port}")

    def stats(self) -> dict[str, int]:
        r = self.admin_get("/stats")
        assert r.status == 200, f"/stats answered {r.status}"
        out = {}
        for line in r.body.decode().splitlines():
            parts = line.split()
            if len(parts) == 2:
                try:
                    out[parts[0]] = int(parts[1])
                except ValueError:
                    try:
                        out[parts[0]] = float(parts[1])
                    except ValueError:
                        pass
        return out

    def stat(self, name: str) -> int:
        return self.stats().get(name, 0)

    def wait_stat(self, name: str, pred, timeout: float = 5.0, what: str = "") -> int:
        """Polls /stats until pred(value) holds (counters may be published with a small delay)."""
        deadline = time.monotonic() + timeout
        value = None
        while True:
            stats = self.stats()
            value = stats.get(name)
            if value is not None and pred(value):
                return value
            if time.monotonic() > deadline:
                known = sorted(k for k in stats if k.split(".")[0] in ("listener", "cluster"))
                raise AssertionError(f"stat {name} = {value!r} never satisfied {what or pred} within {timeout}s; "
                                     f"stats names: {known}")
            time.sleep(0.05)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    # lifecycle
    def terminate(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within timeout. Returns the exit code."""
        try:
            if self.alive():
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            return self.proc.returncode
        finally:
            self._close_files()

    def kill(self):
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(5)
        finally:
            self._close_files()

    def _close_files(self):
        try:
            self.proc.stdout.close()
        except Exception:
            pass
        self._reader.join(2)
        try:
            self._stderr_file.close()
        except Exception:
            pass


# -- clients --------------------------------------------------------------------------------------

def connect(port: int, host: str = "127.0.0.1", timeout: float = IO_TIMEOUT, rcvbuf: int | None = None,
            sndbuf: int | None = None) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    try:
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Client:
    """One keep-alive HTTP/1.1 client connection."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = IO_TIMEOUT, **kw):
        self.sock = connect(port, host, timeout, **kw)
        self.reader = Reader(self.sock)

    def request(self, method: str, target: str, headers=None, body: bytes | None = None,
                chunked_sizes=None, host: str | None = "remora.test") -> Response:
        self.sock.sendall(build_request(method, target, headers, body, chunked_sizes, host))
        return read_response(self.reader, method)

    def send(self, data: bytes):
        self.sock.sendall(data)

    def read_response(self, method: str = "GET") -> Response:
        return read_response(self.reader, method)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def get(port: int, target: str, headers=None, timeout: float = IO_TIMEOUT, host: str = "remora.test",
        addr: str = "127.0.0.1") -> Response:
    with Client(port, addr, timeout) as c:
        return c.request("GET", target, headers, host=host)


def request(port: int, method: str, target: str, headers=None, body: bytes | None = None,
            timeout: float = IO_TIMEOUT, chunked_sizes=None, addr: str = "127.0.0.1") -> Response:
    with Client(port, addr, timeout) as c:
        return c.request(method, target, headers, body, chunked_sizes)


def assert_healthy(remora: Remora, listener: str = "web"):
    """The process is alive and a fresh connection still gets a 200 through the proxy."""
    remora.assert_alive()
    r = get(remora.port(listener), "/echo?health=1", timeout=5)
    assert r.status == 200, f"health request got {r.status}: {r.body[:200]!r}"
    remora.assert_alive()


def run_curl(args: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", str(int(timeout - 2)),
                           "--noproxy", "*", *args],
                          capture_output=True, timeout=timeout)


def free_port() -> int:
    """A port free when returned, for configs that must name one before the process binds it (LDS listeners,
    Envoy's admin). It lies below the ephemeral range (Linux: 32768-60999), so no client socket's automatic
    bind can take it in the meantime; the OS confirms it is free."""
    for _ in range(200):
        p = random.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p
    raise AssertionError("no free port below the ephemeral range")


def poll(pred, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Waits for pred() to return a truthy value, bounded by time. Returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


def made_and_closed(ctor, close=lambda b: b.close(), request=None, failure: str | None = None):
    """The body of a fixture that hands out backends: yields `make(*args, **kw)` -> `ctor(*args, **kw)`
    and, at teardown, closes every one made. With `request`, a failed test's report shows their errors
    (conftest); with `failure`, errors they saw fail the test, prefixed by it."""
    made: list = []
    if request is not None:
        request.node._backends = made

    def make(*args, **kw):
        b = ctor(*args, **kw)
        made.append(b)
        return b

    yield make
    errors = []
    for b in made:
        close(b)
        if failure:
            errors += b.errors
    if errors:
        pytest.fail(failure + "; ".join(errors), pytrace=False)
