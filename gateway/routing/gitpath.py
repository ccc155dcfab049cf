"""Recognizing git over HTTP (smart HTTP and LFS) outside the API, and whose repository it is.

GitLab's routes (config/routes/git_http.rb, `Gitlab::PathRegex.repository_git_route_regex`):
`<full path>.git/info/refs`, `/git-upload-pack`, `/git-receive-pack`, LFS under
`info/lfs/objects[/batch|/<oid>]`, `info/lfs/locks...` and `gitlab-lfs/objects/<oid>[/<size>]`;
`<full path>/info/refs` (no `.git`) only redirects to the `.git` form. Wiki and design
repositories (`.wiki.git`, `.design.git`) belong to their project. A job token authenticates with
HTTP Basic user `gitlab-ci-token` (doc/ci/jobs/ci_job_token.md).

`parse(method, raw_path, raw_query)` returns the project path and whether the request writes
(push, LFS upload, LFS locks), or None when it is not git over HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from gateway.core import params

__all__ = ["GitAccess", "parse"]

_READ = frozenset({"GET", "HEAD"})
_REPO_SUFFIXES = (".wiki.git", ".design.git", ".git")


@dataclass(frozen=True, slots=True)
class GitAccess:
    project: str  # decoded full path, as written
    push: bool
    operation: str  # e.g. "git-upload-pack", "lfs-download"


def parse(method: str, raw_path: str, raw_query: str) -> GitAccess | None:
    segments = [unquote(part) for part in raw_path.split("/") if part]
    if any("/" in segment for segment in segments):
        return None  # an encoded slash inside a segment: not a repository path we can trust
    for i, segment in enumerate(segments):
        for suffix in _REPO_SUFFIXES:
            if segment.endswith(suffix) and len(segment) > len(suffix) and i > 0:
                project = "/".join([*segments[:i], segment[: -len(suffix)]])
                return _operation(method, segments[i + 1 :], raw_query, project)
    # `<path>/info/refs` without .git: GitLab answers with a redirect to the .git form.
    if len(segments) >= 4 and segments[-2:] == ["info", "refs"] and method in _READ:
        return _refs("/".join(segments[:-2]), raw_query)
    return None


def _refs(project: str, raw_query: str) -> GitAccess:
    services = [value for key, value in params.parse_form(raw_query) if key == "service"]
    push = "git-receive-pack" in services
    return GitAccess(project, push, "git-receive-pack" if push else "git-upload-pack")


def _operation(method: str, rest: list[str], raw_query: str, project: str) -> GitAccess | None:
    match rest:
        case ["info", "refs"] if method in _READ:
            return _refs(project, raw_query)
        case ["git-upload-pack"] if method == "POST":
            return GitAccess(project, False, "git-upload-pack")
        case ["git-receive-pack"] if method == "POST":
            return GitAccess(project, True, "git-receive-pack")
        case ["info", "lfs", "objects", *_] if method in _READ or method == "POST":
            # The batch API only negotiates; uploads go to gitlab-lfs/objects with PUT.
            return GitAccess(project, False, "lfs-download")
        case ["info", "lfs", "locks", *_]:
            return GitAccess(project, method not in _READ, "lfs-locks")
        case ["gitlab-lfs", "objects", *_] if method in _READ:
            return GitAccess(project, False, "lfs-download")
        case ["gitlab-lfs", "objects", *_] if method == "PUT":
            return GitAccess(project, True, "lfs-upload")
    return None
