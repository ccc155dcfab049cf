"""The lean forwarding engine: the proxy listener on asyncio Protocols, llhttp both ways.

OWNS: `serve --engine lean` (the `engine` setting's default). A client connection
(`gateway.engine.connection`) parses heads with httptools and runs one Task per request; the
pipeline (`gateway.engine.proxy`) applies the aiohttp handler's rules (`gateway.engine.plan`,
`gateway.headers`, `gateway.bodyguard`, `gateway.exchange`) and forwards over a keep-alive
pool of upstream connections (`gateway.wire.client`). `gateway.engine.listener` binds it and
runs a worker's lifecycle. The aiohttp engine (`gateway.app`, `gateway.handler`,
`gateway.forward`) stays selectable with `--engine aiohttp`.
"""

from gateway.engine.listener import LeanListener, run_lean_worker, start_proxy

__all__ = ["LeanListener", "run_lean_worker", "start_proxy"]
