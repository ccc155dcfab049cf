"""The proxy listener: a client's request in, the gate's decision applied, the upstream's answer out.

OWNS: what both forwarding engines share (`headers`: end-to-end and forwarding headers;
`responses`: GitLab-shaped answers; `bodyguard`: the streamed multipart check; `plan`: the
pipeline's checks over plain values), the aiohttp engine (`app`, `handler`, `forward`), the lean
engine on `gateway.wire` (`lean/`: connection, pipeline, listener) and the worker's process
lifecycle (`server`: listeners, signals, drain; `worker`: the same for the listeners on
`gateway.wire`, the lean proxy's and the decision listener's).
MAY IMPORT: `gateway.core` (through `Gate.evaluate` and its values), `gateway.routing`'s target
checks, `gateway.ops` (the request record, log line and metrics), `gateway.wire`,
`gateway.settings` and `gateway.errors`. Nothing in `gateway.core` imports from here.
"""
