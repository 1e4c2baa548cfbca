"""Config files and documents that must not hurt the proxy (issue 19, findings 7, 9 and 11).

  7. `run --config F --watch` applies F only once it has stayed unchanged for 500 ms: a file written
     in place in two halves with a 300 ms pause is never applied half-way (no listener disappears,
     one new version); a rename over F, a Kubernetes ConfigMap `..data` symlink swap and an in-place
     edit of a symlink's target in another directory are all applied.
  9. YAML alias amplification ("billion laughs") and deep nesting: `remora validate` and a control
     PUT refuse them in milliseconds with file:line.
 11. Errors found when a reloaded file is applied (a changed `workers`, a listener that cannot
     bind) name the file and the line of their field.

Every process binds port 0 and is killed at teardown; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from harness import poll, remora_bin
from test_control import control  # noqa: F401  (fixture)
from test_mesh import MeshProxy, file_doc, mesh, replace_file, served_by  # noqa: F401  (mesh is a fixture)


def two_listener_doc(cluster: str, endpoints: dict[str, str]) -> tuple[str, str]:
    """A document with listeners `web` (routed to `cluster`) and `extra`, split in two halves: the
    first half alone is a valid document without `extra` (what a reader sees mid-write)."""
    first = "\n".join([
        "# watched file, written in two halves",
        "workers: 1",
        "admin: { address: 127.0.0.1:0 }",
        "drain_timeout: 1s",
        "clusters:",
        *[f'  - {{ name: {n}, endpoints: [ "{ep}" ] }}' for n, ep in endpoints.items()],
        "listeners:",
        "  - name: web",
        "    address: 127.0.0.1:0",
        f"    routes: [ {{ name: all, backends: [ {{ cluster: {cluster} }} ] }} ]",
        "",
    ])
    second = "\n".join([
        "  - name: extra",
        "    address: 127.0.0.1:0",
        "    routes: [ { name: all, backends: [ { cluster: a } ] } ]",
        "",
    ])
    return first, second


class ConnectProbe:
    """Connects to a port every 5 ms from a thread until stopped; counts refusals."""

    def __init__(self, port: int):
        self.port = port
        self.tries = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set() and self.tries < 5000:
            self.tries += 1
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                self.refused += 1
            self._stop.wait(0.005)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


# -- 7. --watch ----------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_watch_never_applies_a_half_written_file(mesh):
    """F rewritten in place (truncate, first half, 300 ms pause, second half): the listener only the
    second half names never stops listening, and exactly one new version is applied: the whole file."""
    a, b = mesh.backend("a"), mesh.backend("b")
    eps = {"a": a.endpoint, "b": b.endpoint}
    p = mesh.file_proxy("halves", "".join(two_listener_doc("a", eps)))
    assert served_by(p.port("web")) == "a" and p.stat("server.config_version") == 1
    probe = ConnectProbe(p.port("extra"))
    try:
        first, second = two_listener_doc("b", eps)
        with open(p.config_path, "w") as f:
            f.write(first)
            f.flush()
            time.sleep(0.3)
            f.write(second)
        poll(lambda: served_by(p.port("web")) == "b", 5, 0.02, what="the whole file applied")
        time.sleep(0.2)
    finally:
        probe.stop()
    assert probe.tries > 20
    assert probe.refused == 0, f"listener extra refused {probe.refused} of {probe.tries} connects during the write"
    assert p.stat("server.config_version") == 2, "a half-written file was applied"
    assert "not applied" not in p.stderr_tail(), p.stderr_tail()


@pytest.mark.timeout(20)
def test_watch_applies_a_rename_over_the_file(mesh):
    """As editors save: a temp file in the same directory renamed over F."""
    a, b = mesh.backend("a"), mesh.backend("b")
    eps = {"a": a.endpoint, "b": b.endpoint}
    p = mesh.file_proxy("renamed", file_doc("a", eps))
    replace_file(p.config_path, file_doc("b", eps))
    t0 = time.monotonic()
    poll(lambda: served_by(p.port("web")) == "b", 5, 0.02, what="the renamed file applied")
    assert time.monotonic() - t0 < 2.0


@pytest.mark.timeout(20)
def test_watch_applies_a_configmap_symlink_swap(mesh):
    """A kubectl-mounted ConfigMap: dir/remora.yaml -> ..data/remora.yaml, dir/..data ->
    ..2026_01_01_00_00_00.1; kubelet writes a new timestamped directory, points ..data_tmp at it,
    renames ..data_tmp over ..data, then deletes the old directory. Twice, so the watch follows."""
    a, b = mesh.backend("a"), mesh.backend("b")
    eps = {"a": a.endpoint, "b": b.endpoint}
    d = mesh.tmp / "configmap"
    d.mkdir()

    def publish(n: int, text: str):
        ts = f"..2026_01_01_00_00_0{n}.{n}"
        (d / ts).mkdir()
        (d / ts / "remora.yaml").write_text(text)
        os.symlink(ts, d / "..data_tmp")
        os.rename(d / "..data_tmp", d / "..data")
        if n > 1:
            old = d / f"..2026_01_01_00_00_0{n - 1}.{n - 1}"
            (old / "remora.yaml").unlink()
            old.rmdir()

    publish(1, file_doc("a", eps))
    os.symlink("..data/remora.yaml", d / "remora.yaml")
    p = MeshProxy(mesh.binary, mesh.tmp, "cm", ["--watch", "--config", str(d / "remora.yaml")])
    mesh.proxies.append(p)
    p.wait_ready(10)
    assert served_by(p.port("web")) == "a"
    for n, name in ((2, "b"), (3, "a")):
        publish(n, file_doc(name, eps))
        poll(lambda: served_by(p.port("web")) == name, 5, 0.02, what=f"ConfigMap update {n} applied")
    assert p.stat("server.config_version") == 3


@pytest.mark.timeout(20)
def test_watch_follows_a_symlink_into_another_directory(mesh):
    """F is a symlink to a file in another directory, which is edited in place: the watch covers the
    target's directory too (the old watcher saw only F's directory and missed it)."""
    a, b = mesh.backend("a"), mesh.backend("b")
    eps = {"a": a.endpoint, "b": b.endpoint}
    (mesh.tmp / "etc").mkdir()
    (mesh.tmp / "srv").mkdir()
    target = mesh.tmp / "srv" / "remora.yaml"
    target.write_text(file_doc("a", eps))
    os.symlink("../srv/remora.yaml", mesh.tmp / "etc" / "remora.yaml")
    p = MeshProxy(mesh.binary, mesh.tmp, "link", ["--watch", "--config", str(mesh.tmp / "etc" / "remora.yaml")])
    mesh.proxies.append(p)
    p.wait_ready(10)
    assert served_by(p.port("web")) == "a"
    target.write_text(file_doc("b", eps))
    poll(lambda: served_by(p.port("web")) == "b", 5, 0.02, what="the edited target applied")


# -- 11. errors of a reload name the file and line ----------------------------------------------------

@pytest.mark.timeout(20)
def test_reload_errors_name_the_file_and_the_line(mesh):
    """A reload that changes `workers` (fixed at start), then one whose new listener cannot bind:
    each refusal is logged as `F:LINE: path: ...` with the field's line, and the old file serves."""
    a = mesh.backend("a")
    eps = {"a": a.endpoint}
    p = mesh.file_proxy("reload", file_doc("a", eps), watch=False)
    doc = file_doc("a", eps).replace("workers: 1", "workers: 2")
    line = doc.splitlines().index("workers: 2") + 1
    p.config_path.write_text(doc)
    p.proc.send_signal(signal.SIGHUP)
    want = f"{p.config_path}:{line}: workers: fixed at start"
    poll(lambda: want in p.stderr_tail(), 5, 0.02, what=want)
    assert ":0: workers" not in p.stderr_tail()

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    try:
        port = held.getsockname()[1]
        lines = file_doc("a", eps).splitlines()
        at = lines.index("clusters:")
        lines[at:at] = ["  - name: taken", f"    address: 127.0.0.1:{port}", "    routes: []"]
        p.config_path.write_text("\n".join(lines) + "\n")
        p.proc.send_signal(signal.SIGHUP)
        want = f"{p.config_path}:{at + 2}: listeners.taken.address: "
        poll(lambda: want in p.stderr_tail(), 5, 0.02, what=want)
    finally:
        held.close()
    assert served_by(p.port("web")) == "a" and p.stat("server.config_version") == 1
    p.assert_alive()


# -- 9. alias amplification ---------------------------------------------------------------------------

def amplified_doc(listeners: int = 3000, routes: int = 200) -> tuple[str, int]:
    """A valid-looking document (184 KB) whose listeners all alias one list of `routes` routes:
    600,000 routes once expanded (it took `validate` 6 s and 200 MB). Returns it and the line of the
    alias that crosses the limit of 100,000 repeated nodes (the 36th alias: each repeats the list's
    2,801 nodes)."""
    rs = ", ".join(f"{{name: r{i}, match: {{path: {{prefix: /p{i}}}}}, backends: [{{cluster: c}}]}}" for i in range(routes))
    lines = ['clusters: [{name: c, endpoints: ["127.0.0.1:9"]}]', "listeners:",
             f'  - {{name: l0, address: "127.0.0.1:1000", routes: &R [{rs}]}}']
    lines += [f'  - {{name: l{n}, address: "127.0.0.1:{1000 + n}", routes: *R}}' for n in range(1, listeners)]
    return "\n".join(lines) + "\n", 3 + 36


def laughs_doc() -> tuple[str, int]:
    """The classic: nine levels of ten aliases (10^9 nodes); refused on line 5 (*a3)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lines.append("listeners: *a8")
    return "\n".join(lines) + "\n", 5


def deep_doc() -> tuple[str, int]:
    """100,000 nested flow lists (libyaml alone took > 10 s on them)."""
    return "listeners: " + "[" * 100_000 + "]" * 100_000 + "\n", 1


BOMBS = {"amplified": amplified_doc, "laughs": laughs_doc, "deep": deep_doc}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", list(BOMBS))
def test_validate_refuses_yaml_bombs_fast(tmp_path, kind):
    doc, line = BOMBS[kind]()
    f = tmp_path / "bomb.yaml"
    f.write_text(doc)
    t0 = time.monotonic()
    try:
        r = subprocess.run([str(remora_bin()), "validate", str(f)], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"validate ran for more than 10 s on the {kind} document")
    took = time.monotonic() - t0
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 1, out
    assert took < 2.0, f"validate took {took:.2f} s"
    assert f"{f}:{line}: " in out, out
    assert ("nested more than 64 deep" if kind == "deep" else "aliases would repeat more than") in out, out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", list(BOMBS))
def test_control_put_refuses_yaml_bombs_fast(control, kind):
    c = control()
    doc, line = BOMBS[kind]()
    t0 = time.monotonic()
    r = c.call("PUT", "/v1/groups/web", doc, timeout=20)
    took = time.monotonic() - t0
    assert r.status == 400, (r.status, r.body[:300])
    assert took < 2.0, f"the PUT took {took:.2f} s"
    body = r.body.decode()
    assert f"web:{line}: " in body, body[:300]
    assert ("nested more than 64 deep" if kind == "deep" else "aliases would repeat more than") in body, body[:300]
    assert c.call("GET", "/v1/groups/web").status == 404
