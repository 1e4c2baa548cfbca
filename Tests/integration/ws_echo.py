"""A WebSocket echo server (PyPI `websockets`, asyncio) in its own process, for test_websocket.py.

    python3 ws_echo.py            prints "port N" on stdout once listening, serves until killed

Paths: any path echoes every message back (text as text, binary as binary, any size); `/close`
echoes the first message, then closes with code 4000 "bye"; `/hello` sends "hello" as soon as the
handshake is done (the first tunnel bytes come from the server). The 101 carries
`x-ws-path: <path>` (and `x-ws-env: <x-env values>` when the request had any) so a test can see what
the backend received.
"""

import asyncio
import sys

from websockets.asyncio.server import serve


async def handler(ws):
    path = ws.request.path
    if path.startswith("/hello"):
        await ws.send("hello")
    async for message in ws:
        await ws.send(message)
        if path.startswith("/close"):
            await ws.close(4000, "bye")
            return


def process_response(connection, request, response):
    response.headers["x-ws-path"] = request.path
    if "x-env" in request.headers:   # what the proxy's request header actions made of it
        response.headers["x-ws-env"] = ",".join(request.headers.get_all("x-env"))
    return response


async def main():
    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None, ping_interval=None,
                     process_response=process_response, backlog=2048) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
