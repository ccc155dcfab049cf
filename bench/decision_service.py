"""The minimal decision service behind the peer architectures: it allows every request.

nginx `auth_request` sends it a body-less subrequest carrying the client's headers; Envoy
`ext_authz` (HTTP) sends the original method and path with the token headers. It answers 200
with an empty body and reads nothing: the peers measure the cost of the architecture (an extra
hop to a Python service per request), not of a policy.

Usage: python bench/decision_service.py --port 8082
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web


async def allow(request: web.BaseRequest) -> web.Response:
    return web.Response(status=200)


async def serve(host: str, port: int) -> None:
    server = web.Server(allow, access_log=None)
    await asyncio.get_running_loop().create_server(server, host, port, backlog=4096)
    print(f"decision service on http://{host}:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
