"""`store` sub-command: load a grants file into a token store, revoke tokens, list the content.

    python -m gateway store load FILE --store URL      validate everything, then replace atomically
    python -m gateway store revoke --store URL (--token T | --job-id N)
    python -m gateway store list --store URL [--json]  fingerprints only, never tokens

`--store` falls back to GATEWAY_STORE, then to the default embedded SQLite store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway import tokens
from gateway.errors import StoreUnavailable
from gateway.grants import Allowlist, Job, load_grants
from gateway.settings import Settings
from gateway.stores import Listing, Store, open_store

__all__ = ["register"]

T = TypeVar("T")
EXIT_FAILED = 2


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "store", help="load grants into a token store, revoke tokens, list the content"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    load = actions.add_parser(
        "load", help="validate a grants file, then replace the store's content"
    )
    load.add_argument("file", type=Path, help="grants YAML file (see policies/grants.example.yaml)")
    load.set_defaults(func=_load)

    revoke = actions.add_parser("revoke", help="revoke a job token (permanent; survives loads)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--token", help="the raw token (hashed here; never stored or printed)")
    which.add_argument("--token-sha256", help="the token's SHA-256 digest (hex)")
    which.add_argument("--job-id", type=int, help="the job whose token to revoke")
    revoke.set_defaults(func=_revoke)

    listing = actions.add_parser("list", help="show projects, jobs (by fingerprint) and allowlists")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)

    for sub in (load, revoke, listing):
        Settings.add_arguments(sub, only={"store", "store_timeout"})


def _with_store(args: argparse.Namespace, work: Callable[[Store], Awaitable[T]]) -> T:
    settings = Settings.from_args(args)

    async def run() -> T:
        store = open_store(settings.store, timeout=settings.store_timeout)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _fail(message: str) -> int:
    print(f"jobtoken-gateway: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def _load(args: argparse.Namespace) -> int:
    grants = load_grants(
        args.file
    )  # PolicyFileError -> exit 2 with file and entry, nothing written
    try:
        _with_store(args, lambda store: store.load(grants))
    except StoreUnavailable as exc:
        return _fail(str(exc))
    print(
        f"loaded {args.file}: {len(grants.projects)} projects, {len(grants.jobs)} jobs, "
        f"{len(grants.allowlists)} allowlists"
    )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    digest: str | None = None
    if args.token is not None:
        digest = tokens.digest(args.token)
    elif args.token_sha256 is not None:
        digest = args.token_sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            return _fail("--token-sha256 must be 64 hex digits")
    try:
        hits = _with_store(args, lambda store: store.revoke(digest=digest, job_id=args.job_id))
    except StoreUnavailable as exc:
        return _fail(str(exc))
    what = f"token {tokens.fingerprint(digest)}" if digest else f"job {args.job_id}"
    known = "a known job" if hits else "no job in the store yet; it stays revoked"
    print(f"revoked {what} ({known})")
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        listing = _with_store(args, lambda store: store.listing())
    except StoreUnavailable as exc:
        return _fail(str(exc))
    document = _document(listing)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        _print_text(document)
    return 0


def _document(listing: Listing) -> dict[str, Any]:
    grants = listing.grants
    return {
        "projects": [p.describe() for p in grants.projects],  # with visibility when not private
        "jobs": [_job(job) for job in grants.jobs],
        "allowlists": [_allowlist(a) for a in grants.allowlists],
        "revoked": {
            "tokens": sorted(tokens.fingerprint(d) for d in listing.revoked_digests),
            "job_ids": sorted(listing.revoked_job_ids),
        },
    }


def _job(job: Job) -> dict[str, Any]:
    expires = None
    if job.expires_at is not None:
        expires = datetime.fromtimestamp(job.expires_at, UTC).isoformat().replace("+00:00", "Z")
    return {
        "fingerprint": tokens.fingerprint(job.digest),
        "job_id": job.job_id,
        "project": job.project.path,
        "expires_at": expires,
        "revoked": job.revoked,
    }


def _allowlist(allowlist: Allowlist) -> dict[str, Any]:
    return {
        "project_id": allowlist.project_id,
        "enabled": allowlist.enabled,
        "entries": [
            {
                "kind": e.kind.value,
                "source": e.source,
                "default_permissions": e.default_permissions,
                "policies": list(e.policies),
            }
            for e in allowlist.entries
        ],
    }


def _visibility_text(project: dict[str, Any]) -> str:
    """`  (public; repository enabled)` for a project that is not private, else nothing."""
    if "visibility" not in project and "features" not in project:
        return ""
    features = ", ".join(f"{k} {v}" for k, v in project.get("features", {}).items())
    return f"  ({project.get('visibility', 'private')}{'; ' + features if features else ''})"


def _print_text(document: dict[str, Any]) -> None:
    paths = {p["id"]: p["path"] for p in document["projects"]}
    print(f"projects ({len(document['projects'])}):")
    for p in document["projects"]:
        print(f"  #{p['id']:<8} {p['path']}{_visibility_text(p)}")
    print(f"jobs ({len(document['jobs'])}):")
    for j in document["jobs"]:
        state = "revoked" if j["revoked"] else f"expires {j['expires_at'] or 'never'}"
        print(f"  job {j['job_id']:<8} {j['fingerprint']}  {j['project']}  {state}")
    print(f"allowlists ({len(document['allowlists'])}):")
    for a in document["allowlists"]:
        name = paths.get(a["project_id"], f"#{a['project_id']}")
        print(f"  {name}: {'enabled' if a['enabled'] else 'disabled (all groups and projects)'}")
        for e in a["entries"]:
            grant = (
                "default permissions"
                if e["default_permissions"]
                else ", ".join(e["policies"]) or "(none)"
            )
            print(f"    {e['kind']} {e['source']}: {grant}")
    revoked = document["revoked"]
    if revoked["tokens"] or revoked["job_ids"]:
        print(f"revoked: tokens {revoked['tokens']}, job ids {revoked['job_ids']}")
