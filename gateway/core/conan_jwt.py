"""Reading the token a GitLab-issued JWT wraps, WITHOUT verifying the JWT.

Conan clients trade their credential for a JWT at `…/packages/conan/v1/users/authenticate` and
send it as `Authorization: Bearer` afterwards. GitLab signs it with an HMAC of its
`db_key_base` (Gitlab::ConanToken, lib/gitlab/conan_token.rb) and, on every Conan route,
verifies it and runs the job finder on its `access_token` claim
(`API::Helpers::Packages::Conan::ApiHelpers#find_job_from_conan_jwt`, which also requires the
`user_id` claim: `decode_oauth_token_from_jwt`). The Terraform module registry does the same
with the `token` claim of the JWT in its `token` parameter (Gitlab::TerraformRegistryToken;
`Gitlab::APIAuthentication::TokenResolver#resolve_job_token_from_jwt`).

The gateway cannot verify the signature (GitLab's secret) and does not need to: it judges the
job token the claim names. A forged JWT naming a job token the sender does not hold is refused
by GitLab (bad signature) whatever the gateway decides; a genuine one is judged like the job
token it wraps. So the claim is read only as a job-token *candidate*, never as proof.
"""

from __future__ import annotations

import base64
import binascii
import json

__all__ = ["MAX_JWT_BYTES", "claim", "conan_access_token"]

# A Conan or Terraform JWT holds one token and a few claims; anything far larger is not one.
MAX_JWT_BYTES = 16384


def claim(jwt: str, name: str, *, also: tuple[str, ...] = ()) -> str | None:
    """The string claim `name` of a compact JWS (`header.payload.signature`), or None when `jwt`
    is not shaped like one, does not decode, or lacks a non-empty string `name` (or any of the
    claims in `also`). The signature is not checked (see the module docstring)."""
    if len(jwt) > MAX_JWT_BYTES or jwt.count(".") != 2:
        return None
    payload = jwt.split(".")[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(claims, dict):
        return None
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        return None
    if any(claims.get(other) in (None, "") for other in also):
        return None
    return value


def conan_access_token(jwt: str) -> str | None:
    """The token a Conan JWT wraps when it is a string (a job or deploy token; a personal access
    token is wrapped by its numeric id), else None. `user_id` must be present, as GitLab
    requires (`token.access_token_id && token.user_id`)."""
    return claim(jwt, "access_token", also=("user_id",))
