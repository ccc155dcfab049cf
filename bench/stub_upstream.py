"""A fast upstream stub for the benchmarks (the Python fallback; nginx is preferred when present).

    GET  .../blob-<N>       streams N bytes of generated data (1 MiB chunks) with a Content-Length
    any request with a body drains it and answers {"received": N} (checks uploads arrive whole)
    anything else           a small JSON answer, like most API responses

Usage: python bench/stub_upstream.py --port 8081 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

import uvloop
from aiohttp import web

SMALL = b'{"id":1,"name":"bench","status":"ok","web_url":"http://127.0.0.1/bench/proj"}'
CHUNK = bytes(range(256)) * 4096  # 1 MiB of generated, non-zero data
BLOB = re.compile(r"/blob-(\d+)$")


async def _download(request: web.BaseRequest, size: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    left = size
    while left > 0:
        piece = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        await response.write(piece)
        left -= len(piece)
    await response.write_eof()
    return response


async def handle(request: web.BaseRequest) -> web.StreamResponse:
    if request.body_exists:
        received = 0
        async for data in request.content.iter_any():
            received += len(data)
        body = json.dumps({"received": received}).encode()
        return web.Response(body=body, content_type="application/json")
    if request.method == "GET" and (blob := BLOB.search(request.path)):
        return await _download(request, int(blob.group(1)))
    return web.Response(body=SMALL, content_type="application/json")


async def serve(host: str, port: int) -> None:
    server = web.Server(handle, access_log=None, auto_decompress=False)
    loop = asyncio.get_running_loop()
    await loop.create_server(server, host, port, backlog=4096)
    print(f"stub upstream on http://{host}:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
