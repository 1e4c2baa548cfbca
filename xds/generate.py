#!/usr/bin/env python3
"""Generates xds/Sources/RemoraXDSProto/*.pb.swift from the Envoy API (run once; the output is committed).

Inputs: the compiled descriptors of the PyPI wheel `xds-protos` (Envoy's data-plane-api, cncf/xds, udpa,
protoc-gen-validate), protoc from PyPI `grpcio-tools`, and protoc-gen-swift built from apple/swift-protobuf
1.39.0 (`swift build --product protoc-gen-swift --scratch-path .build-protoc` in a checkout of it).

Only what remora-xds reads is generated, to keep the build short. The messages in KEEP are generated
with all their fields; a field of a message type outside KEEP (and outside the well-known types that
SwiftProtobuf ships) is rewritten to `bytes` with the same number and name: the wire format is the same
(length-delimited), the agent never decodes it, and it still shows by its proto name in the text format,
which is how remora-xds names every field it does not support in a NACK's error_detail. Enum fields whose
enum is not generated become int32 (same varint). Options are dropped (validate/udpa annotations).

  pip install xds-protos==1.85.0; pip install --target /tmp/gt grpcio-tools==1.85.1 --no-deps
  PYTHONPATH=/tmp/gt python3 xds/generate.py --plugin PATH/protoc-gen-swift
"""
import argparse, os, subprocess, sys, tempfile, importlib, pkgutil

from google.protobuf import descriptor_pb2, descriptor_pool

KEEP = """
envoy.service.discovery.v3.DiscoveryRequest envoy.service.discovery.v3.DiscoveryResponse
envoy.config.core.v3.Node envoy.config.core.v3.Address envoy.config.core.v3.SocketAddress
envoy.config.core.v3.ConfigSource envoy.config.core.v3.AggregatedConfigSource
envoy.config.core.v3.HeaderValueOption envoy.config.core.v3.HeaderValue envoy.config.core.v3.DataSource
envoy.config.core.v3.HealthCheck envoy.config.core.v3.HealthCheck.HttpHealthCheck envoy.config.core.v3.HealthCheck.TcpHealthCheck
envoy.config.core.v3.Http2ProtocolOptions envoy.config.core.v3.HttpProtocolOptions envoy.config.core.v3.Http1ProtocolOptions
envoy.config.core.v3.TypedExtensionConfig
envoy.type.v3.Int64Range
envoy.config.listener.v3.Listener envoy.config.listener.v3.FilterChain envoy.config.listener.v3.Filter
envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
envoy.extensions.filters.network.http_connection_manager.v3.Rds
envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter
envoy.extensions.filters.http.router.v3.Router
envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
envoy.config.route.v3.RouteConfiguration envoy.config.route.v3.VirtualHost envoy.config.route.v3.Route
envoy.config.route.v3.RouteMatch envoy.config.route.v3.HeaderMatcher envoy.config.route.v3.QueryParameterMatcher
envoy.config.route.v3.RouteAction envoy.config.route.v3.WeightedCluster envoy.config.route.v3.WeightedCluster.ClusterWeight
envoy.config.route.v3.RetryPolicy envoy.config.route.v3.RetryPolicy.RetryBackOff
envoy.config.route.v3.RedirectAction envoy.config.route.v3.DirectResponseAction
envoy.type.matcher.v3.StringMatcher envoy.type.matcher.v3.RegexMatcher envoy.type.matcher.v3.RegexMatchAndSubstitute
envoy.config.cluster.v3.Cluster envoy.config.cluster.v3.Cluster.EdsClusterConfig
envoy.config.cluster.v3.CircuitBreakers envoy.config.cluster.v3.CircuitBreakers.Thresholds
envoy.config.cluster.v3.OutlierDetection
envoy.config.endpoint.v3.ClusterLoadAssignment envoy.config.endpoint.v3.LocalityLbEndpoints
envoy.config.endpoint.v3.LbEndpoint envoy.config.endpoint.v3.Endpoint
envoy.extensions.upstreams.http.v3.HttpProtocolOptions envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig
google.rpc.Status
envoy.config.route.v3.RouteAction.RequestMirrorPolicy envoy.config.core.v3.RuntimeFractionalPercent envoy.type.v3.FractionalPercent
envoy.config.route.v3.RouteAction.HashPolicy envoy.config.route.v3.RouteAction.HashPolicy.Header
envoy.config.route.v3.RouteAction.HashPolicy.Cookie envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties
envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget envoy.type.v3.Percent
envoy.extensions.filters.http.fault.v3.HTTPFault envoy.extensions.filters.http.fault.v3.FaultAbort
envoy.extensions.filters.common.fault.v3.FaultDelay
envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit envoy.type.v3.TokenBucket
envoy.config.accesslog.v3.AccessLog envoy.extensions.access_loggers.file.v3.FileAccessLog
envoy.config.cluster.v3.Cluster.CommonLbConfig envoy.config.core.v3.SubstitutionFormatString
envoy.config.route.v3.RetryPolicy.RetryHostPredicate envoy.config.route.v3.RouteAction.MaxStreamDuration
envoy.config.core.v3.TransportSocket
envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
envoy.extensions.transport_sockets.tls.v3.CommonTlsContext envoy.extensions.transport_sockets.tls.v3.TlsCertificate
envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext envoy.extensions.transport_sockets.tls.v3.TlsParameters
envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher
envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails
envoy.extensions.transport_sockets.tls.v3.Secret envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig
envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext
envoy.config.listener.v3.FilterChainMatch envoy.config.core.v3.CidrRange envoy.config.listener.v3.ListenerFilter
envoy.service.discovery.v3.DeltaDiscoveryRequest envoy.service.discovery.v3.DeltaDiscoveryResponse
envoy.service.discovery.v3.Resource
""".split()

# Shipped by SwiftProtobuf itself.
WKT_FILES = {"google/protobuf/any.proto", "google/protobuf/duration.proto", "google/protobuf/wrappers.proto",
             "google/protobuf/struct.proto", "google/protobuf/empty.proto", "google/protobuf/timestamp.proto"}

ROOT_MODULES = [
    "envoy.service.discovery.v3.discovery_pb2", "envoy.config.listener.v3.listener_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2", "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
    "envoy.config.route.v3.route_pb2", "envoy.config.cluster.v3.cluster_pb2", "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2", "google.rpc.status_pb2",
    "envoy.extensions.filters.http.fault.v3.fault_pb2", "envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2",
    "envoy.extensions.access_loggers.file.v3.file_pb2", "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
    "envoy.extensions.transport_sockets.tls.v3.secret_pb2",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "Sources/RemoraXDSProto"))
    a = ap.parse_args()
    for m in ROOT_MODULES:
        importlib.import_module(m)
    pool = descriptor_pool.Default()
    keep = set(KEEP)
    for k in keep:
        pool.FindMessageTypeByName(k)   # fails loudly on a typo

    files = {}     # name -> FileDescriptorProto (original)
    def load(fname):
        if fname in files: return
        fd = pool.FindFileByName(fname)
        p = descriptor_pb2.FileDescriptorProto(); fd.CopyToProto(p)
        files[fname] = p
        for d in p.dependency: load(d)
    for k in keep:
        load(pool.FindMessageTypeByName(k).file.name)

    def msg_file(full): return pool.FindMessageTypeByName(full).file.name
    def enum_keepable(full):
        e = pool.FindEnumTypeByName(full)
        c = e.containing_type
        return c is None or c.full_name in keep

    out_files = {}
    def ensure(fname):
        if fname not in out_files:
            src = files[fname]
            f = descriptor_pb2.FileDescriptorProto(name=src.name, package=src.package, syntax=src.syntax or "proto3")
            out_files[fname] = (f, set(), set())     # (proto, deps, kept enum names)
        return out_files[fname]

    def rewrite_msg(desc_proto, full, fname):
        m = descriptor_pb2.DescriptorProto(); m.name = desc_proto.name
        f, deps, _ = ensure(fname)
        for fld in desc_proto.field:
            n = descriptor_pb2.FieldDescriptorProto(); n.CopyFrom(fld); n.ClearField("options")
            if fld.type == fld.TYPE_MESSAGE:
                t = fld.type_name.lstrip(".")
                tfile = msg_file(t)
                entry = next((x for x in desc_proto.nested_type if full + "." + x.name == t and x.options.map_entry), None)
                if entry is not None:
                    # map<K, V>: keep the entry only if V is kept or scalar
                    vf = entry.field[1]
                    vt = vf.type_name.lstrip(".")
                    if vf.type != vf.TYPE_MESSAGE or vt in keep or msg_file(vt) in WKT_FILES:
                        e = descriptor_pb2.DescriptorProto(); e.CopyFrom(entry)
                        m.nested_type.append(e)
                        if vf.type == vf.TYPE_MESSAGE: deps.add(msg_file(vt))
                    else:
                        n.type = n.TYPE_BYTES; n.ClearField("type_name")
                elif t in keep or tfile in WKT_FILES:
                    deps.add(tfile)
                else:
                    n.type = n.TYPE_BYTES; n.ClearField("type_name")
            elif fld.type == fld.TYPE_ENUM:
                t = fld.type_name.lstrip(".")
                if enum_keepable(t):
                    deps.add(pool.FindEnumTypeByName(t).file.name)
                    need_enum.add(t)
                else:
                    n.type = n.TYPE_INT32; n.ClearField("type_name")
            m.field.append(n)
        for o in desc_proto.oneof_decl:
            od = descriptor_pb2.OneofDescriptorProto(name=o.name); m.oneof_decl.append(od)
        for nt in desc_proto.nested_type:
            nfull = full + "." + nt.name
            if nt.options.map_entry: continue
            if nfull in keep: m.nested_type.append(rewrite_msg(nt, nfull, fname))
        for en in desc_proto.enum_type:
            e = descriptor_pb2.EnumDescriptorProto(); e.CopyFrom(en); e.ClearField("options")
            for v in e.value: v.ClearField("options")
            m.enum_type.append(e)   # nested enums of a kept message are kept (cheap)
        return m

    need_enum = set()
    for fname, src in files.items():
        for mt in src.message_type:
            full = (src.package + "." if src.package else "") + mt.name
            if full in keep and fname not in WKT_FILES:
                ensure(fname)[0].message_type.append(rewrite_msg(mt, full, fname))
    # Top-level enums referenced by kept fields.
    for t in sorted(need_enum):
        e = pool.FindEnumTypeByName(t)
        if e.containing_type is None and e.file.name not in WKT_FILES:
            f, _, kept = ensure(e.file.name)
            if t not in kept:
                src = files[e.file.name]
                en = next(x for x in src.enum_type if x.name == e.name)
                c = descriptor_pb2.EnumDescriptorProto(); c.CopyFrom(en); c.ClearField("options")
                for v in c.value: v.ClearField("options")
                f.enum_type.append(c); kept.add(t)

    fds = descriptor_pb2.FileDescriptorSet()
    for fname in WKT_FILES:
        p = descriptor_pb2.FileDescriptorProto(); pool.FindFileByName(fname).CopyToProto(p)
        fds.file.append(p)
    names = []
    for fname, (f, deps, _) in sorted(out_files.items()):
        if not f.message_type and not f.enum_type: continue
        for d in sorted(deps):
            if d != fname: f.dependency.append(d)
        fds.file.append(f); names.append(fname)
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ds = os.path.join(tmp, "set.pb")
        open(ds, "wb").write(fds.SerializeToString())
        cmd = [sys.executable, "-m", "grpc_tools.protoc", "--descriptor_set_in=" + ds, "--plugin=protoc-gen-swift=" + a.plugin,
               "--swift_out=" + a.out, "--swift_opt=Visibility=Public,FileNaming=PathToUnderscores"] + names
        subprocess.run(cmd, check=True)
    print("generated", len(names), "files:", *names, sep="\n  ")


if __name__ == "__main__":
    main()
