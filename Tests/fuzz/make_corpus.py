#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (Tests/fuzz/corpus/{http1,http2,config,tls}/).

    python3 Tests/fuzz/make_corpus.py        # needs hyper-h2 (pip h2==4.4.1), as the integration suite

The output is committed; rerun after changing the seeds below. File names are stable (the seed's
name), so a rerun rewrites the same files. See Tests/fuzz/README.md.
"""
import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "corpus")

# --- HTTP/1.1 requests: byte 0 chooses the cuts (0 whole, 1 one byte, 2 up to 16, 3 up to 512);
# the rest is what a client sends. From the integration suite (test_http1.py, test_bad_input.py,
# test_routing.py) and issue #19's smuggling cases.
H1 = {
    "get": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "get_headers": b"GET /echo?x=1&y=2 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: curl/8\r\n"
                   b"Accept: */*\r\nCookie: a=1\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    "post_length": b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "post_chunked_trailers": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n"
                             b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcHEAD /d HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute_form": b"GET http://other.example:81/p?q HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute_no_path": b"GET http://other.example HTTP/1.1\r\nHost: a\r\n\r\n",
    "expect_continue": b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    "http10": b"GET /echo HTTP/1.0\r\n\r\n",
    "http10_keepalive": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nHost: a\r\n\r\nGET / HTTP/1.0\r\n\r\n",
    "connection_close": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "hop_by_hop": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
                  b"TE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n\r\n",
    "upgrade": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "connect": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    "options_star": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "grpc": b"POST /pkg.Svc/Method HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\nTE: trailers\r\n"
            b"grpc-timeout: 5S\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00",
    "garbage_request_line": b"GARBAGE\r\n\r\n",
    "bad_http_version": b"GET / HTTX/1.1\r\nHost: a\r\n\r\n",
    "control_char_in_target": b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
    "header_without_colon": b"GET / HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n",
    "missing_host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "duplicate_host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "gzip_chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "header_ws": b"GET / HTTP/1.1\r\nHost:  a  \r\nX-A:\t v \t\r\nX-Empty:\r\n\r\n",
    # issue #19 smuggling shapes
    "conn_content_length": b"POST /public HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 41\r\n\r\n"
                           b"GET /admin/delete-all HTTP/1.1\r\nHost: x\r\n\r\n",
    "conn_keepalive_cl": b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Content-Length\r\nContent-Length: 3\r\n\r\nabc",
    "cl_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
    "te_te": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "te_obfuscated": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
    "two_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: x\r\n Transfer-Encoding: chunked\r\n\r\n",
    "underscore": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
    "empty_name": b"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n",
    "huge_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n",
    "http10_chunked": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "long_header": b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * 3000 + b"\r\n\r\n",
    "many_headers": b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
}

# Inputs the fuzzer found, cut byte included (kept as regression seeds; Tests/fuzz/README.md).
H1_FOUND = {
    # became "POST ? HTTP/1.1" with an empty Host upstream (now 400)
    "found_scheme_prefix_no_path": b"\x00POST httpu://? HTTP/1.0\r\nHost: g: chunked\r\n\r\n1\r\n\r\n",
    # a malformed 101st field: 400 in one piece, 431 in 1-byte pieces (both refusals)
    "found_limit_vs_malformed_cut": b"\x01GET / HTTP/1.1\r\nHost: a\r\n"
                                    + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"X-60v\r\n\r\n",
}

# Dictionary for libFuzzer (-dict): HTTP/1.1 tokens.
H1_DICT = ["GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", " HTTP/1.1\r\n", " HTTP/1.0\r\n", "\r\n", "\r\n\r\n",
           ": ", "Host", "Content-Length", "Transfer-Encoding", "chunked", "Connection", "keep-alive", "close",
           "Expect", "100-continue", "Upgrade", "TE", "trailers", "Keep-Alive", "Proxy-Connection", "Trailer",
           "X-Forwarded-For", "Cookie", "http://", "0\r\n\r\n", ";ext=", "content-length", "host"]


def dict_entry(t):
    """A libFuzzer dictionary line: quotes and backslashes escaped, anything else outside printable ASCII as \\xHH."""
    out = ""
    for ch in t:
        if ch in '"\\':
            out += "\\" + ch
        elif " " <= ch <= "~":
            out += ch
        else:
            out += "\\x%02X" % ord(ch)
    return '"%s"\n' % out


def cut_byte(i):
    return bytes([i % 4])


def write(kind, name, data):
    d = os.path.join(OUT, kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def http1():
    for i, (name, req) in enumerate(H1.items()):
        write("http1", name, cut_byte(i) + req)
    for name, data in H1_FOUND.items():
        write("http1", name, data)
    with open(os.path.join(HERE, "http1.dict"), "w") as f:
        f.write("# HTTP/1.1 tokens for FuzzHTTP1 (written by make_corpus.py)\n")
        for t in H1_DICT:
            f.write(dict_entry(t))


# --- HTTP/2: byte 0 = cuts (bits 0-1) and how the server answers (bit 2 bodies, bit 3 trailers,
# bit 4 resets, bit 5 no credit); the rest is what an h2c client sends after the preface, written
# by hyper-h2's client connection (the frames test_http2.py and test_grpc.py drive).
def http2():
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    def client():
        c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
        c.initiate_connection()
        c.data_to_send()
        # the preface is added by the target; keep the client's SETTINGS
        c2 = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
        c2.initiate_connection()
        raw = c2.data_to_send()
        assert raw.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        return c2, raw[24:]

    req = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/echo")]
    post = [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/echo"), ("content-length", "5")]
    grpc = [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/pkg.Svc/M"),
            ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "1S")]
    seeds = {}

    c, out = client()
    c.send_headers(1, req, end_stream=True)
    seeds["get"] = (0x04, out + c.data_to_send())

    c, out = client()
    c.send_headers(1, post)
    c.send_data(1, b"hello", end_stream=True)
    seeds["post"] = (0x05, out + c.data_to_send())

    c, out = client()
    c.send_headers(1, grpc)
    c.send_data(1, b"\x00\x00\x00\x00\x03abc")
    c.send_headers(1, [("x-checksum", "1")], end_stream=True)
    seeds["grpc_trailers"] = (0x0e, out + c.data_to_send())

    c, out = client()
    for sid in (1, 3, 5, 7):
        c.send_headers(sid, req + [("x-stream", str(sid))], end_stream=sid != 7)
    c.reset_stream(7)
    seeds["multi_reset"] = (0x17, out + c.data_to_send())

    c, out = client()
    c.send_headers(1, post[:-1])
    c.send_data(1, b"x" * 16000)
    c.send_data(1, b"y" * 4000)
    c.increment_flow_control_window(1 << 20)
    c.increment_flow_control_window(1000, stream_id=1)
    c.end_stream(1)
    seeds["window_update"] = (0x27, out + c.data_to_send())

    c, out = client()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10,
                       h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384,
                       h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    c.ping(b"12345678")
    c.send_headers(1, req + [("cookie", "a=1"), ("cookie", "b=2"), ("connection", "x")], end_stream=True)
    seeds["settings_ping"] = (0x06, out + c.data_to_send())

    c, out = client()
    c.send_headers(1, req, end_stream=True)
    c.prioritize(1, weight=200, depends_on=0, exclusive=True)
    c.close_connection()
    seeds["priority_goaway"] = (0x04, out + c.data_to_send())

    # A big header block split over CONTINUATION frames (hyper-h2 splits at max_outbound_frame_size).
    c, out = client()
    c.max_outbound_frame_size = 64
    c.send_headers(1, req + [("x-long-%d" % i, "v" * 30) for i in range(10)], end_stream=True)
    seeds["continuation"] = (0x0c, out + c.data_to_send())

    # Hand-made frames hyper-h2 will not send: DATA padded, empty DATA, a frame of an unknown type,
    # HEADERS on stream 2 (even: a protocol error).
    c, out = client()
    c.send_headers(1, post[:-1])
    frames = c.data_to_send()

    def frame(ftype, flags, sid, payload):
        return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload
    frames += frame(0, 0x08, 1, b"\x03abc\x00\x00\x00")       # DATA, PADDED
    frames += frame(0, 0, 1, b"")                              # empty DATA
    frames += frame(0xEE, 0, 0, b"unknown")                     # unknown type
    frames += frame(0, 0x01, 1, b"")                            # END_STREAM
    frames += frame(1, 0x05, 2, b"\x82")                        # HEADERS on an even stream
    seeds["handmade"] = (0x03, out + frames)

    for name, (mode, data) in seeds.items():
        write("http2", name, bytes([mode]) + data)


# --- Config: the YAML examples in README.md and docs/config.md, plus a few edge cases.
CONFIG_EXTRA = {
    "empty": "",
    "anchors": "clusters:\n  - &c {name: a, endpoints: [\"127.0.0.1:1\"]}\nlisteners:\n"
               "  - name: l\n    address: 127.0.0.1:0\n    routes: [{cluster: a}]\n",
    "two_docs": "listeners: []\n---\nlisteners: []\n",
    "bad_indent": "listeners:\n - name: x\n   address: [\n",
}


def config():
    n = 0
    for src in ("README.md", os.path.join("docs", "config.md")):
        text = open(os.path.join(ROOT, src)).read()
        for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
            n += 1
            write("config", "%s_%02d.yaml" % (os.path.basename(src).split(".")[0].lower(), n), block.encode())
    for name, text in CONFIG_EXTRA.items():
        write("config", name + ".yaml", text.encode())
    with open(os.path.join(HERE, "config.dict"), "w") as f:
        f.write("# YAML syntax and config keys for FuzzConfig (written by make_corpus.py)\n")
        keys = set(re.findall(r"^\s*-?\s*([a-z_]+):", "\n".join(
            open(p).read() for p in [os.path.join(OUT, "config", x) for x in os.listdir(os.path.join(OUT, "config"))]),
            re.M))
        # every key the schema knows (ConfigLoader's `keys: [...]` lists)
        loader = open(os.path.join(ROOT, "Sources", "RemoraConfig", "ConfigLoader.swift")).read()
        for group in re.findall(r"keys: \[([^\]]*)\]", loader):
            keys.update(re.findall(r'"([a-z_]+)"', group))
        keys = sorted(keys)
        for k in keys:
            f.write(dict_entry(k + ":"))
        for t in ["&a ", "*a", "<<: ", "- ", "{", "}", "[", "]", "'", '"', "|\n", ">\n", "---\n", "!!str ",
                  "~", "null", "true", "1s", "100ms", "64KiB", "50%", "127.0.0.1:0", "[::1]:0", "^/a(.*)$"]:
            f.write(dict_entry(t))


def tls():
    """FuzzTLS: the ClientHellos of Tests/RemoraHTTPTests/ClientHelloSamples.swift (openssl s_client and
    Python ssl), the same cut into small records, and the first bytes of other protocols. Byte 0 of
    each input picks how many prefixes the target checks."""
    src = open(os.path.join(ROOT, "Tests", "RemoraHTTPTests", "ClientHelloSamples.swift")).read()
    samples = {name: bytes.fromhex("".join(body.split()))
               for name, body in re.findall(r'static let (\w+) = hex\("""\n(.*?)"""\)', src, re.S)}

    def rerecord(data, size):
        body = b""
        i = 0
        while i < len(data):          # the handshake bytes of every record
            n = int.from_bytes(data[i + 3:i + 5], "big")
            body += data[i + 5:i + 5 + n]
            i += 5 + n
        out = b""
        for j in range(0, len(body), size):
            part = body[j:j + size]
            out += bytes([22, 3, 1]) + len(part).to_bytes(2, "big") + part
        return out

    for i, (name, data) in enumerate(samples.items()):
        write("tls", name, bytes([i]) + data)
        write("tls", name + "_records_7", bytes([i + 3]) + rerecord(data, 7))
    for name, data in {"http1": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                       "h2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
                       "ssh": b"SSH-2.0-OpenSSH_9.2\r\n",
                       "postgres_sslrequest": bytes([0, 0, 0, 8, 4, 210, 22, 47])}.items():
        write("tls", name, bytes([7]) + data)


if __name__ == "__main__":
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    http1()
    http2()
    config()
    tls()
    for k in ("http1", "http2", "config", "tls"):
        print(k, len(os.listdir(os.path.join(OUT, k))), "files", file=sys.stderr)
