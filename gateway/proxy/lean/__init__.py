"""The lean forwarding engine: the proxy listener on asyncio Protocols, llhttp both ways.

OWNS: `serve --engine lean` (the `engine` setting's default). A client connection
(`gateway.proxy.lean.connection`) parses heads with httptools and runs one Task per request; the
pipeline (`gateway.proxy.lean.pipeline`) applies the aiohttp handler's rules (`gateway.proxy.plan`,
`gateway.proxy.headers`, `gateway.proxy.bodyguard`, `gateway.ops.exchange`) and forwards over a keep-alive
pool of upstream connections (`gateway.wire.client`). `gateway.proxy.lean.listener` binds it and
runs a worker's lifecycle. The aiohttp engine (`gateway.proxy.app`, `gateway.proxy.handler`,
`gateway.proxy.forward`) stays selectable with `--engine aiohttp`.
"""

from gateway.proxy.lean.listener import LeanListener, run_lean_worker, start_proxy

__all__ = ["LeanListener", "run_lean_worker", "start_proxy"]
