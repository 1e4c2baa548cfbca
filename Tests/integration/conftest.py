"""Fixtures for the Remora integration suite.

Every process and server started here is ended in fixture teardown, even when the test fails.
Every test also runs under a hard wall-clock limit (SIGALRM, default 60 s, `@pytest.mark.timeout(N)`).
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import HTTPBackend, TCPBackend, refused_endpoint_socket  # noqa: E402
from harness import Remora, cluster, http_listener, made_and_closed, make_config, remora_bin  # noqa: E402

DEFAULT_TEST_TIMEOUT = 60


class TestTimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    marker = item.get_closest_marker("timeout")
    limit = marker.args[0] if marker else DEFAULT_TEST_TIMEOUT

    def on_alarm(signum, frame):
        raise TestTimeout(f"test exceeded its {limit}s wall-clock limit")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for r in getattr(item, "_remoras", []):
            rep.sections.append((f"remora stderr ({r.name}, pid {r.pid}, "
                                 f"exit {r.proc.returncode})", r.stderr_tail(80)))
            rep.sections.append((f"remora stdout ({r.name})", "\n".join(r.stdout_lines)))
        for b in getattr(item, "_backends", []):
            if b.errors:
                rep.sections.append((f"backend errors ({b.endpoint})", "\n".join(b.errors)))
        for title, text in getattr(item, "_diagnostics", lambda: [])():
            rep.sections.append((title, text))


@pytest.fixture(scope="session")
def remora_binary() -> Path:
    path = remora_bin()
    if not path.is_file() or not path.stat().st_mode & 0o111:
        pytest.fail(f"remora binary not found at {path} (build it, or set REMORA_BIN)", pytrace=False)
    return path


@pytest.fixture
def start_remora(remora_binary, tmp_path, request):
    """start_remora(config_dict_or_yaml_text, name="remora") -> a ready Remora. Killed at teardown."""
    started: list[Remora] = []
    request.node._remoras = started

    def start(config, name: str = "remora", wait: bool = True) -> Remora:
        r = Remora(remora_binary, config, tmp_path, name=f"{name}{len(started) or ''}")
        started.append(r)
        if wait:
            r.wait_ready()
        return r

    yield start
    crashed = []
    unclean = []
    for r in started:
        exited = r.proc.poll() is not None
        if exited and r.proc.returncode < 0 and r.proc.returncode != -signal.SIGTERM:
            crashed.append(f"{r.name}: killed by signal {-r.proc.returncode}")
        try:
            code = r.stop(timeout=5)
        except Exception:
            r.kill()
            code = r.proc.returncode
        # A remora still running here must drain and exit 0 on SIGTERM; one the test ended itself
        # (a signal, /quitquitquit, a refused start) is exempt from the exit code, not from this:
        # every loop it ran closed with no handle left (Server.run, Worker.run print "handles left").
        if not exited and code != 0:
            unclean.append(f"{r.name}: exit {code} on SIGTERM (expected 0)")
        left = [line for line in r.stderr_tail(10_000).splitlines() if "handles left" in line]
        if left:
            unclean.append(f"{r.name}: " + "; ".join(left))
    if crashed:
        pytest.fail("remora crashed during the test: " + "; ".join(crashed), pytrace=False)
    if unclean:
        pytest.fail("remora did not stop cleanly: " + "; ".join(unclean), pytrace=False)


@pytest.fixture
def http_backend(request):
    """http_backend(host="127.0.0.1", mode="normal", ...) -> a running HTTPBackend, closed at teardown."""
    yield from made_and_closed(lambda host="127.0.0.1", mode="normal", **kw: HTTPBackend(host, mode, **kw),
                               request=request, failure="backend saw malformed traffic from the proxy: ")


@pytest.fixture
def tcp_backend():
    yield from made_and_closed(lambda host="127.0.0.1", mode="echo_bye": TCPBackend(host, mode))


@pytest.fixture
def refused_endpoint():
    """An endpoint "127.0.0.1:PORT" whose port is bound but not listening: connects are refused."""
    s = refused_endpoint_socket()
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.fixture
def proxy(start_remora, http_backend):
    """The common setup: one HTTP backend behind listener "web" -> cluster "app"."""
    backend = http_backend()
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])]))
    return SimpleNamespace(remora=remora, backend=backend, port=remora.port("web"))


def ipv6_available() -> bool:
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.bind(("::1", 0))
        finally:
            s.close()
        return True
    except OSError:
        return False
