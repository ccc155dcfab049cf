"""The gateway's decision endpoint on aiohttp's low-level server instead of gateway/wire.

Issue 12 point 5 asks for the lean server to be measured against aiohttp's low-level server
(`aiohttp.web.Server`, what bench/decision_service.py runs on): this serves the very same
`DecisionService` (gateway/authz) with the same gate, store, log line and metrics, adapting each
aiohttp request to a `gateway.wire.Request`. Only the HTTP machinery differs.

Usage: python bench/decision_lowlevel.py --port 8083 --store sqlite:///store.sqlite3
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web

from gateway.authz import DecisionService
from gateway.core.gate import Gate
from gateway.ops import log
from gateway.ops.exchange import Recorder
from gateway.settings import Settings
from gateway.wire import Request, Response


async def serve(host: str, port: int, store: str) -> None:
    settings = Settings.build(store=store, decision_port=port, port=0)
    log.configure(settings)
    gate = await Gate.open(settings)
    service = DecisionService(settings, gate, Recorder())

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read() if request.body_exists else b""
        version = f"{request.version.major}.{request.version.minor}"
        adapted = Request(
            request.method,
            request.raw_path,
            version,
            list(request.headers.items()),
            body,
            request.keep_alive,
            request.remote,
        )
        answer = service.handle(adapted)
        if not isinstance(answer, Response):
            answer = await answer
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, host, port, backlog=4096)
    print(f"decision endpoint on aiohttp's low-level server: http://{host}:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.store))


if __name__ == "__main__":
    main()
