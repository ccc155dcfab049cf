"""The gateway's error tree. Denials are values (`gateway.core.decision.Decision`); these are faults.

    GatewayError
    ├── ConfigError          bad settings, route table, grants file: stops start-up (exit 2)
    │   └── PolicyFileError  a data file that does not parse or validate (file, line/entry, reason)
    ├── StoreUnavailable     the token store cannot answer: 503, fail closed
    └── UpstreamError        the forwarding leg failed
        ├── UpstreamUnreachable  connect failure: 502
        └── UpstreamTimeout      connect/read timeout: 504

Third-party exceptions are mapped onto these at the boundary (`raise ... from exc`).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GatewayError",
    "PolicyFileError",
    "StoreUnavailable",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A setting or data file is invalid; the message names it and says why."""


class PolicyFileError(ConfigError):
    """A policy or grants file is malformed: the message carries the file, the line or entry."""


class StoreUnavailable(GatewayError):
    """The token store could not answer (down, locked, timed out)."""


class UpstreamError(GatewayError):
    """The upstream leg failed."""


class UpstreamUnreachable(UpstreamError):
    """Could not connect to the upstream (-> 502)."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time (-> 504)."""
