"""Operating the gateway: the record of each request, its log line and metrics, the admin
listener, the container's health probe, the worker supervisor and the observation aggregate.

OWNS: `exchange` (the request record and its one log line), `log` (structlog configuration and
redaction), `metrics` (Prometheus), `admin` (health, readiness, metrics listener), `healthcheck`
(`python -m gateway.ops.healthcheck`: standard library only, so this package imports nothing
at its top), `supervisor` (`--workers N`), `observe` (the Redis aggregate `suggest` reads).
MAY IMPORT: `gateway.core`'s values (`decision`, `tokens` for fingerprints), `gateway.settings`,
`gateway.errors`; `supervisor` also starts the worker (`gateway.proxy.server`).
"""
