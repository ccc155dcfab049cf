"""Offline tools: they read what the gateway wrote (its request log lines, a store's content)
and never run on the hot path. Nothing in `gateway.proxy.handler`, `gateway.core.gate` or the stores
imports from here.

- `observations`: parse the JSON request lines `serve` writes into `Observation`s.
- `suggest`: the least-privilege allowlists those observations call for, and their difference
  from a store's current grants (`python -m gateway suggest`).
- `audit`: who called what, per source and target project (`python -m gateway audit`).
"""
