#!/usr/bin/env python3
"""One gRPC unary call with Python grpcio (PyPI `grpcio`; no generated stubs: bytes in, bytes out).

Used by bench.py (scenario grpc) to check that what the backend answers -- directly and through each
proxy -- is something a real gRPC client accepts. Prints one JSON line; exit 0 = status OK and the
expected response message.

usage: grpc_check.py HOST:PORT /pkg.Svc/Method REQUEST_HEX EXPECTED_RESPONSE_HEX
"""
import json
import sys

try:
    import grpc
except ImportError:
    print(json.dumps({"ok": False, "skipped": True, "error": "grpcio not installed (pip install grpcio)"}))
    sys.exit(2)


def main():
    target, method, req_hex, want_hex = sys.argv[1:5]
    out = {"grpcio": grpc.__version__, "target": target, "method": method}
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(method)  # no serializers: the message bytes are sent/received as they are
        try:
            resp, c = call.with_call(bytes.fromhex(req_hex), timeout=5,
                                     metadata=(("x-bench-check", "1"),))
            out.update(code=c.code().name, response_hex=resp.hex(),
                       initial_metadata=[list(m) for m in c.initial_metadata() or ()],
                       trailing_metadata=[list(m) for m in c.trailing_metadata() or ()])
            out["ok"] = c.code() == grpc.StatusCode.OK and resp.hex() == want_hex
        except grpc.RpcError as e:
            out.update(ok=False, code=e.code().name, details=e.details())
    print(json.dumps(out))
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
