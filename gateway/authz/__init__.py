"""The decision listener: the gateway's verdicts for a proxy that asks an authorizer.

OWNS: the decision endpoint (issue 12): reading the original request from nginx
`auth_request`, Traefik/Caddy forward-auth or Envoy HTTP `ext_authz` check requests, asking
the same `Gate.evaluate` the proxy asks, and answering 200 / 401 / 403 with the gateway's
headers; its listener's start/stop hook for `serve`.
MAY IMPORT: gateway.wire (HTTP machinery), the decision core (gateway.core.gate via its contract,
gateway.core.request, gateway.core.decision, gateway.core.tokens, gateway.proxy.headers' name sets,
gateway.proxy.responses' messages), gateway.ops.exchange/log/metrics for the log line and metrics, and
gateway.settings, and `gateway.proxy.worker` (the worker lifecycle and listener limits it shares
with the lean proxy). Never aiohttp's server or client: the forwarding is the asking proxy's.

    service = DecisionService(settings, gate, recorder)   # a gateway.wire.Handler
    listener = await start_listener(settings, gate, reuse_port=...)   # ConfigError if unusable
    await listener.stop(grace)
"""

from gateway.authz.listener import DecisionListener, start_listener
from gateway.authz.service import DecisionService

__all__ = ["DecisionListener", "DecisionService", "start_listener"]
