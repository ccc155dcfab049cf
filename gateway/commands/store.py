"""`store` sub-command: load a grants file into a token store, revoke tokens, list the content.

    python -m gateway store load FILE --store URL [--create]   validate, then replace atomically
    python -m gateway store revoke --store URL (--token T | --token-sha256 H | --job-id N) [--force]
    python -m gateway store unrevoke --store URL (--token T | --token-sha256 H | --job-id N)
    python -m gateway store list --store URL [--json]  fingerprints only, never tokens

`--store` falls back to GATEWAY_STORE, then to the default embedded SQLite store. The store must
exist; only `load --create` creates a new one (a mistyped path is an error, not an empty store).
Revocations are kept across loads until `unrevoke` lifts them. `revoke --job-id` refuses a job
id the store does not hold (a typo would pre-revoke some future job) unless `--force`.
Exit 2 for a usage, configuration or store error.
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

from gateway.core import tokens
from gateway.errors import StoreUnavailable
from gateway.settings import Settings
from gateway.stores import Listing, Store, open_store
from gateway.stores.grants import Allowlist, Job, load_grants

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
    load.add_argument(
        "--create",
        action="store_true",
        help="create the store (a SQLite file and its directories) if it does not exist yet",
    )
    load.set_defaults(func=_load)

    revoke = actions.add_parser(
        "revoke", help="revoke a job token (kept across loads until `unrevoke`)"
    )
    _add_which(revoke, "revoke")
    revoke.add_argument(
        "--force",
        action="store_true",
        help="revoke a job id the store does not hold (yet): a job it will be loaded with later",
    )
    revoke.set_defaults(func=_revoke)

    unrevoke = actions.add_parser("unrevoke", help="lift a revocation made by `revoke`")
    _add_which(unrevoke, "unrevoke")
    unrevoke.set_defaults(func=_unrevoke)

    listing = actions.add_parser("list", help="show projects, jobs (by fingerprint) and allowlists")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)

    for sub in (load, revoke, unrevoke, listing):
        Settings.add_arguments(sub, only={"store", "store_timeout"})


def _add_which(parser: argparse.ArgumentParser, verb: str) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--token", help="the raw token (hashed here; never stored or printed)")
    which.add_argument("--token-sha256", help="the token's SHA-256 digest (hex)")
    which.add_argument("--job-id", type=int, help=f"the job whose token to {verb}")


def _with_store(
    args: argparse.Namespace, work: Callable[[Store], Awaitable[T]], *, create: bool = False
) -> T:
    """Run `work` on the store `--store` names (ConfigError, exit 2, if it does not exist)."""
    settings = Settings.from_args(args)

    async def run() -> T:
        store = open_store(settings.store, timeout=settings.store_timeout, create=create)
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

    async def load_and_list(store: Store) -> Listing:
        await store.load(grants)
        return await store.listing()

    try:
        listing = _with_store(args, load_and_list, create=args.create)
    except StoreUnavailable as exc:
        return _fail(str(exc))
    revoked = sorted(job.job_id for job in listing.grants.jobs if job.revoked)
    print(
        f"loaded {args.file}: {len(grants.projects)} projects, {len(grants.jobs)} jobs, "
        f"{len(grants.allowlists)} allowlists"
    )
    if revoked:
        # Revocations survive a load: say which of the loaded jobs stay refused.
        shown = ", ".join(str(i) for i in revoked)
        print(
            f"revoked (kept from earlier `store revoke`; lift with `store unrevoke`): jobs {shown}"
        )
    return 0


def _digest(args: argparse.Namespace) -> str | None:
    """The digest `--token` or `--token-sha256` names (ValueError for a malformed digest)."""
    if args.token is not None:
        return tokens.digest(args.token)
    if args.token_sha256 is not None:
        digest: str = args.token_sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("--token-sha256 must be 64 hex digits")
        return digest
    return None


def _revoke(args: argparse.Namespace) -> int:
    try:
        digest = _digest(args)
    except ValueError as exc:
        return _fail(str(exc))

    async def revoke(store: Store) -> int | None:
        if args.job_id is not None and not args.force:
            job = await store.job_by_id(args.job_id)
            if job is None or (job.revoked and not job.project.id):  # unknown, or only revoked
                return None
        return await store.revoke(digest=digest, job_id=args.job_id)

    try:
        hits = _with_store(args, revoke)
    except StoreUnavailable as exc:
        return _fail(str(exc))
    if hits is None:
        return _fail(
            f"the store holds no job {args.job_id}: nothing revoked (a mistyped id would "
            "refuse some future job); pass --force to revoke it before it is loaded"
        )
    what = f"token {tokens.fingerprint(digest)}" if digest else f"job {args.job_id}"
    known = "a known job" if hits else "no job in the store yet; it stays revoked"
    print(f"revoked {what} ({known}); lift with `store unrevoke`")
    return 0


def _unrevoke(args: argparse.Namespace) -> int:
    try:
        digest = _digest(args)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        removed = _with_store(args, lambda store: store.unrevoke(digest=digest, job_id=args.job_id))
    except StoreUnavailable as exc:
        return _fail(str(exc))
    what = f"token {tokens.fingerprint(digest)}" if digest else f"job {args.job_id}"
    if not removed:
        print(f"{what} was not revoked; nothing changed")
        return 0
    print(f"lifted the revocation of {what}")
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
