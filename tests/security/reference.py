"""A slow, obviously-correct reference for the gateway's verdict, used by the differential fuzz.

It shares no code with `gateway/`: it reads `policies/routes.yaml` and a grants YAML text with
PyYAML only, and spells out each rule once, in the order the gateway documents them
(gateway/core/gate.py): target refusals, credentials, route, job, accessed project, allowlist.

How it reads a request-target (what GitLab would route, see docs/security.md):
- anything another reader could resolve differently is `Refuse` (the gateway must answer 400):
  a target not in origin-form, raw bytes outside printable ASCII, `#`, a backslash or an
  encoded one, an encoded control byte, an invalid or non-UTF-8 escape, a double-encoded
  escape, and any `.`/`..` segment however it is spelled (encoded, double-encoded, with
  `;params`, or behind an encoded slash);
- otherwise the path is normalized like Grape (`//` squeezed, trailing `/` stripped), split
  on literal `/` and every segment decoded exactly once (`%2F` stays inside its segment, an
  encoded `a` is an `a`, as Mustermann matches literals in their encoded forms);
- routes are tried most specific first (literal < literal + `.json` < `:param.ext` < `:param`
  < `*splat`, shorter splats first), HEAD as GET.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import yaml

__all__ = ["Deny", "Forward", "Reference", "Refuse", "Verdict"]

API = ("api", "v4")
# Params GitLab declares with `requirements: { ref_name: /.+/ }` (lib/api/ci/job_artifacts.rb).
SPANNING = {
    "/projects/:id/jobs/artifacts/:ref_name/download": {"ref_name"},
    "/projects/:id/jobs/artifacts/:ref_name/raw/*artifact_path": {"ref_name"},
    "/projects/:id/(ref/:ref/)trigger/pipeline": {"ref"},  # lib/api/ci/triggers.rb
}
NOT_AVAILABLE = "route_not_available"


@dataclass(frozen=True)
class Refuse:
    """The target is ambiguous: only a 400 is acceptable. `strict_only` refusals apply to
    requests with a job token (there is nothing to authorize in the others)."""

    why: str
    strict_only: bool = False
    status: int = 400


@dataclass(frozen=True)
class Forward:
    """The request must reach the upstream, byte-for-byte."""

    why: str
    status: int = 200


@dataclass(frozen=True)
class Deny:
    """The gateway must answer itself with this status (and forward nothing)."""

    why: str
    status: int = 403


Verdict = Refuse | Forward | Deny


# --------------------------------------------------------------------------- the target

_HEX = re.compile(r"%[0-9A-Fa-f]{2}")


def canonical_segments(target: str) -> list[str] | Refuse:
    """The decoded path segments GitLab would route, or why the target is ambiguous."""
    if not target.startswith("/"):
        return Refuse("not origin-form")
    if any(not 0x20 < ord(char) < 0x7F for char in target) or "#" in target:
        return Refuse("raw byte outside printable ASCII, or a fragment")
    path = target.partition("?")[0]
    if "\\" in path:
        return Refuse("backslash")
    decoded = unquote_to_bytes(path.encode("ascii"))
    if any(byte < 0x20 or byte in (0x5C, 0x7F) for byte in decoded):
        return Refuse("encoded control byte or backslash")
    if _has_dot_segment(path):
        return Refuse("dot segment")
    if path.count("%") != len(_HEX.findall(path)):
        return Refuse("invalid escape", strict_only=True)
    if _HEX.search(decoded.decode("latin-1")):
        return Refuse("double encoding", strict_only=True)
    try:
        segments = [unquote(seg, errors="strict") for seg in path.split("/") if seg]
    except UnicodeDecodeError:
        return Refuse("escape is not UTF-8", strict_only=True)
    return segments


def _has_dot_segment(path: str) -> bool:
    """A `.` or `..` segment for any reader: decode to a fixpoint, split on every slash."""
    text = path
    for _ in range(8):
        text, previous = unquote(text, errors="replace"), text
        if text == previous:
            break
    return any(piece.split(";")[0] in (".", "..") for piece in text.split("/"))


# --------------------------------------------------------------------------- the route table


@dataclass(frozen=True)
class Element:
    kind: int  # 0 literal, 2 mixed, 4 param, 5 splat (the ranks below)
    text: str
    names: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    permissions: tuple[str, ...]
    shapes: tuple[tuple[Element, ...], ...] = field(repr=False)
    rule: str = (
        "page"  # policies/routes-supplementary.yaml: allowlist, trigger, runner_token, own_job
    )


def _expand(text: str) -> list[str]:
    """Grape optional groups: `a(b)c` -> `abc`, `ac` (nested groups too)."""
    start = text.find("(")
    if start < 0:
        return [text]
    depth = 0
    for end in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0:
            heads = [*_expand(text[start + 1 : end]), ""]
            return [text[:start] + h + t for h in heads for t in _expand(text[end + 1 :])]
    raise ValueError(text)


def _element(part: str, spanning: set[str]) -> Element | None:
    if re.fullmatch(r"[:*]\w+", part):
        splat = part[0] == "*" or part[1:] in spanning
        return Element(5 if splat else 4, part, (part[1:],))
    tokens = re.findall(r"[:*]\w+", part)
    if not tokens:
        return Element(0, part)
    if any(token[0] == "*" for token in tokens):
        return None  # `latest*suffix_path`: a shape GitLab's page produces but nobody routes
    pattern = re.sub(r"[:*]\w+", "\0", part)
    regex = "(.+?)".join(re.escape(piece) for piece in pattern.split("\0"))
    return Element(2, part, tuple(t[1:] for t in tokens), re.compile(regex, re.DOTALL))


def _shapes(path: str) -> tuple[tuple[Element, ...], ...]:
    spanning = SPANNING.get(path, set())
    found = []
    for text in _expand(path):
        elements = [_element(part, spanning) for part in text.split("/") if part]
        if elements and all(e is not None for e in elements):
            found.append(tuple(e for e in elements if e is not None))
    return tuple(found)


def _ways(shape: tuple[Element, ...], segs: list[str], e: int, i: int) -> Iterator[tuple[Any, ...]]:
    """Every way shape[e:] matches segs[i:]: (rank key, captures) with captures in order."""
    if e == len(shape):
        if i == len(segs):
            yield (), ()
        return
    if i == len(segs):
        return
    element, seg = shape[e], segs[i]
    last = e == len(shape) - 1 and i == len(segs) - 1
    options: list[tuple[tuple[int, int], tuple[str, ...], int]] = []
    if element.kind == 0:
        if seg == element.text:
            options.append(((0, 0), (), i + 1))
        elif last and seg == element.text + ".json":
            options.append(((1, 0), (), i + 1))
    elif element.kind == 2 and element.regex is not None:
        hit = element.regex.fullmatch(seg)
        if hit is not None:
            options.append(((2, 0), hit.groups(), i + 1))
        elif last and seg.endswith(".json"):
            hit = element.regex.fullmatch(seg[:-5])
            if hit is not None:
                options.append(((3, 0), hit.groups(), i + 1))
    elif element.kind == 4:
        options.append(((4, 0), (seg,), i + 1))
    else:
        for end in range(i + 1, len(segs) + 1):
            options.append(((5, end - i), ("/".join(segs[i:end]),), end))
    for rank, caps, nxt in options:
        for key, rest in _ways(shape, segs, e + 1, nxt):
            yield (rank, *key), caps + rest


# --------------------------------------------------------------------------- grants


@dataclass(frozen=True)
class Entry:
    source: str
    group: bool
    default: bool
    policies: frozenset[str]


class Reference:
    """The verdict for (method, target, token) under one route file and one grants text."""

    def __init__(
        self, routes_file: Path, grants_yaml: str, now: float, supplementary: Path | None = None
    ) -> None:
        data = yaml.safe_load(routes_file.read_text())
        self.routes = [
            Route(r["method"], r["path"], tuple(r["permissions"]), _shapes(r["path"]))
            for r in data["routes"]
        ]
        if supplementary is not None:
            extra = yaml.safe_load(supplementary.read_text())["routes"]
            self.routes += [
                Route(r["method"], r["path"], (), _shapes(r["path"]), r["rule"]) for r in extra
            ]
        grants = yaml.safe_load(grants_yaml)
        self.projects = {p["id"]: p["path"].lower() for p in grants["projects"]}
        self.by_path = {path: pid for pid, path in self.projects.items()}
        self.jobs: dict[str, tuple[int, int | None, bool]] = {}  # digest -> (job, project, expired)
        self.job_projects: dict[int, int | None] = {}
        for job in grants["jobs"]:
            project = self._project_id(str(job["project"]))
            expires = job.get("expires_at")
            expired = expires is not None and _epoch(expires) <= now
            digest = sha256(job["token"].encode()).hexdigest()
            self.jobs[digest] = (job["job_id"], project, expired)
            self.job_projects[job["job_id"]] = project
        self.allowlists: dict[int, tuple[bool, list[Entry]]] = {}
        for allowlist in grants.get("allowlists", []):
            pid = self._project_id(str(allowlist["project"]))
            if pid is None:
                raise ValueError(f"allowlist of an unknown project: {allowlist['project']}")
            entries = [_entry(raw, self) for raw in allowlist.get("entries", [])]
            self.allowlists[pid] = (allowlist.get("enabled", True), entries)

    def _project_id(self, ref: str) -> int | None:
        if re.fullmatch(r"[0-9]{1,18}", ref):  # ASCII digits, like Ruby's /\A\d+\z/
            return int(ref) if int(ref) in self.projects else None
        return self.by_path.get(ref.lower())

    # ---- the verdict

    def verdict(
        self, method: str, target: str, token: str | None, carrier: str = "JOB-TOKEN"
    ) -> Verdict:
        """`carrier`: where `token` travels (`JOB-TOKEN`, `job_token`, `token`, `Bearer`)."""
        segments = canonical_segments(target)
        if token is None:
            return (
                segments
                if isinstance(segments, Refuse) and not segments.strict_only
                else (Forward("no_token"))
            )
        if isinstance(segments, Refuse):
            return segments
        route, params = self.match(method, segments) or (None, {})
        if route is None:
            return Deny(NOT_AVAILABLE)
        if route.rule == "runner_token":  # `token` is the runner's credential (runner.rb)
            return Forward("runner_token")
        job = self.jobs.get(sha256(token.encode()).hexdigest())
        if route.rule == "own_job":
            return self._own_job(params, job, carrier)
        if route.rule == "trigger" and job is None and carrier == "token" and "glcbt-" not in token:
            return Forward("trigger_token")  # not a job token: a pipeline trigger token
        if job is None or job[2]:
            return Deny("token_invalid_or_expired", 401)
        return self._decide(route, params, job[1])

    @staticmethod
    def _own_job(
        params: Mapping[str, str], job: tuple[int, int | None, bool] | None, carrier: str
    ) -> Verdict:
        """authenticate_job! (lib/api/ci/helpers/runner.rb): the token, read from `token` or
        JOB-TOKEN only, must be the job `:id`'s own, and that job running; else 403."""
        if carrier not in ("JOB-TOKEN", "token") or job is None:
            return Deny("job_token_mismatch")
        if str(job[0]) != params["id"] or job[2]:
            return Deny("job_token_mismatch")
        return Forward("own_job")

    def match(self, method: str, segments: list[str]) -> tuple[Route, dict[str, str]] | None:
        if tuple(segments[:2]) != API or len(segments) == 2:
            return None
        rest, method = segments[2:], "GET" if method == "HEAD" else method
        best: tuple[Any, ...] | None = None
        for index, route in enumerate(self.routes):
            if route.method != method:
                continue
            for shape in route.shapes:
                for key, caps in _ways(shape, rest, 0, 0):
                    names = [name for element in shape for name in element.names]
                    candidate = (key, index, route, dict(zip(names, caps, strict=True)))
                    if best is None or candidate[:2] < best[:2]:
                        best = candidate
        return None if best is None else (best[2], best[3])

    def _decide(self, route: Route, params: Mapping[str, str], source: int | None) -> Verdict:
        template = route.path
        if template in ("/job", "/job/allowed_agents"):
            return Forward("own_project")
        if template.startswith(("/packages/conan/v1/ping", "/packages/conan/v1/users")) or (
            template == "/packages/conan/v1/conans/search"
        ):
            return Forward("uncontrolled_endpoint")
        if template.endswith(("/npm/-/npm/v1/security/advisories/bulk", "/audits/quick")) and (
            not template.startswith("/projects/")
        ):
            # No package name, so GitLab's `project_id_or_nil` finds nothing and no project is
            # checked (lib/api/concerns/packages/npm_endpoints.rb, redirect_or_present_audit_report).
            return Forward("package_not_found")
        ref = self._target_ref(template, params)
        if ref is None:
            return Deny("target_unresolved")
        target = self._project_id(ref)
        if target == source or ref.lower() == self.projects.get(source or 0):
            return Forward("own_project")
        if template.startswith("/projects/:id/registry/repositories"):
            return Deny("registry_other_project")
        enabled, entries = self.allowlists.get(target or 0, (True, []))
        if not enabled:
            return Forward("allowlist_disabled")
        entry = self._nearest(entries, source)
        if entry is None:
            return Deny("not_allowlisted")
        if not route.permissions or entry.default:
            return Forward("granted")
        if set(route.permissions) <= entry.policies:
            return Forward("policies_granted")
        return Deny("insufficient_permissions")

    def _target_ref(self, template: str, params: Mapping[str, str]) -> str | None:
        if template.startswith("/projects/:id"):
            return params["id"]
        if template.startswith("/jobs/:id"):
            job_id = params["id"]
            if not re.fullmatch(r"[0-9]{1,18}", job_id):
                return None
            project = self.job_projects.get(int(job_id))
            return None if project is None else str(project)
        if template.startswith(("/packages/conan/v1/conans/", "/packages/conan/v1/files/")):
            return params["package_username"].replace("+", "/")
        if template == "/packages/maven/*path/:file_name":
            return params["path"].rpartition("/")[0] or None
        return None  # groups, npm instance routes, DAST: the project is not in the URL

    def _nearest(self, entries: list[Entry], source: int | None) -> Entry | None:
        path = self.projects.get(source or 0, "")
        for entry in entries:
            if not entry.group and entry.source == path:
                return entry
        groups = ["/".join(path.split("/")[:i]) for i in range(path.count("/"), 0, -1)]
        for group in groups:
            for entry in entries:
                if entry.group and entry.source == group:
                    return entry
        return None


def _entry(raw: dict[str, Any], reference: Reference) -> Entry:
    source = str(raw["source"])
    if re.fullmatch(r"[0-9]+", source):
        source = reference.projects[int(source)]
    policies = set(raw.get("policies", []))
    policies |= {"read_" + p[len("admin_") :] for p in policies if p.startswith("admin_")}
    return Entry(
        source.lower(),
        raw.get("kind") == "group",
        raw.get("default_permissions", True),
        frozenset(policies),
    )


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or UTC).timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
