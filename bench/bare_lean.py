"""The bare lean forwarder: the gateway's lean engine (gateway/proxy/lean) with no policy at all.

The second yardstick (issue 13): the same listener, parser, header rules, upstream pool and
relay as `serve --engine lean`, with a gate that allows every request without looking at it,
the request line off (`--log-level warning`); the metrics are still counted. Next to
bench/bare_proxy.py (the bare aiohttp forwarder) it shows what the machinery costs; next to
the gateway on the lean engine, what the policy costs.

Usage: python bench/bare_lean.py --upstream http://127.0.0.1:8081 --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop

from gateway.core.decision import Decision, Reason
from gateway.core.request import RequestView
from gateway.ops import log
from gateway.proxy.lean import start_proxy
from gateway.settings import Settings

_ALLOW = Decision(allowed=True, reason=Reason.NO_TOKEN)


class AllowAll:
    """The Gate contract, allowing everything at once (no credential read, no route)."""

    def needs_body(self, view: RequestView) -> bool:
        return False

    def evaluate_now(self, view: RequestView) -> Decision:
        return _ALLOW

    async def evaluate(self, view: RequestView) -> Decision:
        return _ALLOW


async def serve(upstream: str, host: str, port: int) -> None:
    settings = Settings(upstream=upstream, host=host, port=port, log_level="warning")
    log.configure(settings)
    listener = await start_proxy(settings, AllowAll())
    print(f"bare lean forwarder on http://{host}:{listener.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await listener.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.upstream, args.host, args.port))


if __name__ == "__main__":
    main()
