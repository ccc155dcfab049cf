"""What a token store knows: projects, running jobs and inbound allowlists, plus the YAML
interchange file every store loads from (`store load`, the `file://` backend).

The values are small frozen dataclasses read on the hot path. The file model is pydantic with
`extra="forbid"`; `load_grants` validates everything and names the file, the entry
(`jobs[2].project`) and the reason of the first problems found, or returns a complete `Grants`.

A project may also carry its visibility (`private`, the default, `internal` or `public`) and the
access levels of the features GitLab consults for job tokens on public and internal projects
(`gateway.core.visibility`); they only change decisions for sources the allowlist does not admit.

GitLab's model (app/models/ci/job_token/allowlist.rb, project_scope_link.rb, group_scope_link.rb):
an allowlist belongs to the *accessed* project; each entry admits a source project or a group
(which covers its subgroups) with `default_permissions` (legacy, unrestricted) or a list of
`job_token_policies`, where `admin_X` implies `read_X`
(app/models/concerns/ci/job_token/expanded_job_token_policies.rb).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.errors import PolicyFileError
from gateway.routing.permissions import KNOWN_POLICIES

__all__ = [
    "FEATURES",
    "FEATURE_LEVELS",
    "Allowlist",
    "AllowlistEntry",
    "EntryKind",
    "Grants",
    "Job",
    "Project",
    "Visibility",
    "ancestors",
    "build_grants",
    "expand",
    "load_grants",
    "parse_grants",
    "project_key",
]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PATH = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.][A-Za-z0-9_.\-]*)*")
_NUMERIC = re.compile(r"-?[0-9]+")
MAX_ID = 2**63 - 1  # GitLab's ids are bigints
GROUP_LINK_LIMIT = 200  # app/models/ci/job_token/group_scope_link.rb; the doc caps entries at 200


class Visibility(StrEnum):
    """`Gitlab::VisibilityLevel` (lib/gitlab/visibility_level.rb): PRIVATE 0, INTERNAL 10, PUBLIC 20."""

    PRIVATE = "private"
    INTERNAL = "internal"
    PUBLIC = "public"


# `ProjectFeature` access levels (app/models/project_feature.rb): DISABLED 0, PRIVATE 10 (project
# members only), ENABLED 20 (everyone with access to the project), PUBLIC 30.
FEATURE_LEVELS: Mapping[str, int] = {"disabled": 0, "private": 10, "enabled": 20, "public": 30}
# The features GitLab's routes name in `allow_public_access_for_enabled_project_features` and
# `ProjectPolicy` consults for job tokens (`job_token_access_allowed_to?`), app/policies/project_policy.rb.
FEATURES = frozenset(
    {
        "builds",
        "container_registry",
        "environments",
        "issues",
        "package_registry",
        "releases",
        "repository",
    }
)
_UNLISTED_FEATURE = FEATURE_LEVELS["private"]  # not stated: members only (fail closed)


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    path: str  # full path as written; compared case-insensitively (find_by_full_path)
    visibility: Visibility = Visibility.PRIVATE  # GitLab's default for a new project
    features: tuple[tuple[str, int], ...] = ()  # (feature, ProjectFeature level), sorted

    @property
    def key(self) -> str:
        return self.path.lower()

    @property
    def slug(self) -> str:
        """Rails' `Project#path`: the project's own path segment (`app` for `acme/app`)."""
        return self.path.rpartition("/")[2]

    @property
    def public_or_internal(self) -> bool:
        return self.visibility is not Visibility.PRIVATE

    def feature_level(self, feature: str) -> int:
        """The feature's `ProjectFeature` level; an unlisted feature counts as PRIVATE (10)."""
        for name, level in self.features:
            if name == feature:
                return level
        return _UNLISTED_FEATURE

    def describe(self) -> dict[str, Any]:
        """The interchange form (`projects[]` of a grants file), for stores that keep JSON."""
        data: dict[str, Any] = {"id": self.id, "path": self.path}
        if self.visibility is not Visibility.PRIVATE:
            data["visibility"] = self.visibility.value
        if self.features:
            data["features"] = {name: _level_name(level) for name, level in self.features}
        return data

    @classmethod
    def from_description(cls, data: Mapping[str, Any]) -> Project:
        """The inverse of `describe` (raises KeyError/ValueError on a malformed record)."""
        features = data.get("features") or {}
        return cls(
            int(data["id"]),
            str(data["path"]),
            Visibility(data.get("visibility", "private")),
            tuple(sorted((str(k), FEATURE_LEVELS[v]) for k, v in features.items())),
        )


def _level_name(level: int) -> str:
    for name, value in FEATURE_LEVELS.items():
        if value == level:
            return name
    raise ValueError(f"unknown feature level {level}")


@dataclass(frozen=True, slots=True)
class Job:
    digest: str
    job_id: int
    project: Project
    expires_at: float | None = None  # epoch seconds; None = until revoked
    revoked: bool = False

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class EntryKind(StrEnum):
    PROJECT = "project"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class AllowlistEntry:
    kind: EntryKind
    source: str  # lower-case full path of the admitted project or group
    source_id: int | None = None  # the project id, for project entries
    default_permissions: bool = True  # GitLab's column default is true (legacy behaviour)
    policies: tuple[str, ...] = ()
    granted: frozenset[str] = field(init=False)
    granted_sorted: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "granted", expand(self.policies))
        object.__setattr__(self, "granted_sorted", tuple(sorted(self.granted)))


@dataclass(frozen=True, slots=True)
class Allowlist:
    """The inbound allowlist of one accessed project."""

    project_id: int
    enabled: bool = True
    entries: tuple[AllowlistEntry, ...] = ()
    _by_key: Mapping[str, AllowlistEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, AllowlistEntry] = {}
        for entry in self.entries:
            index[f"{entry.kind}:{entry.source}"] = entry
            if entry.source_id is not None:
                index[f"id:{entry.source_id}"] = entry
        object.__setattr__(self, "_by_key", index)

    def nearest(self, source: Project) -> AllowlistEntry | None:
        """The entry that admits `source`: its project entry, else the entry of its nearest
        ancestor group. Entries are never merged (Ci::JobToken::Allowlist
        #nearest_scope_for_target_project: the project link first, then group links ordered by
        the source's `parent_groups`)."""
        index = self._by_key
        entry = index.get(f"id:{source.id}") or index.get(f"project:{source.key}")
        if entry is not None:
            return entry
        for group in ancestors(source.key):
            if (entry := index.get(f"group:{group}")) is not None:
                return entry
        return None


def project_key(ref: str | int) -> int | str | None:
    r"""How GitLab reads a project reference (`find_project`, lib/api/helpers.rb): `/^-?\d+$/`
    (ASCII digits: Ruby's `\d`) is a numeric id, anything else a full path (lower-cased here).

    Returns the id, the lower-case path, or None for a number no project can have (ids are
    positive bigints): such a reference is "no such project", never a store fault.
    """
    if isinstance(ref, int):
        return ref if 0 < ref <= MAX_ID else None
    if _NUMERIC.fullmatch(ref):
        number = int(ref)
        return number if 0 < number <= MAX_ID else None
    return ref.lower()


def ancestors(path: str) -> list[str]:
    """The groups above a project path, nearest first: a/b/c -> [a/b, a]."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def expand(policies: Sequence[str]) -> frozenset[str]:
    """`admin_X` also grants `read_X`; `read_X` never grants `admin_X`."""
    granted = set(policies)
    granted.update("read_" + p[len("admin_") :] for p in policies if p.startswith("admin_"))
    return frozenset(granted)


@dataclass(frozen=True, slots=True)
class Grants:
    """A complete store content, as loaded from one interchange file."""

    projects: tuple[Project, ...] = ()
    jobs: tuple[Job, ...] = ()
    allowlists: tuple[Allowlist, ...] = ()


# --- the interchange file ---------------------------------------------------------------

_Strict = ConfigDict(extra="forbid", frozen=True)


class _ProjectModel(BaseModel):
    model_config = _Strict
    id: int = Field(gt=0)
    path: str = Field(pattern=_PATH.pattern)
    visibility: Literal["private", "internal", "public"] = "private"
    features: dict[str, Literal["disabled", "private", "enabled", "public"]] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _known_features(self) -> _ProjectModel:
        unknown = sorted(set(self.features) - FEATURES)
        if unknown:
            raise ValueError(
                f"unknown feature {', '.join(unknown)} (known: {', '.join(sorted(FEATURES))})"
            )
        return self


class _JobModel(BaseModel):
    model_config = _Strict
    token: str | None = Field(None, min_length=1, repr=False)
    token_sha256: str | None = Field(None, pattern=_SHA256.pattern)
    job_id: int = Field(gt=0)
    project: int | str
    expires_at: datetime | None = None

    @model_validator(mode="after")
    def _one_token(self) -> _JobModel:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of `token` and `token_sha256`")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a timezone (e.g. 2030-01-01T00:00:00Z)")
        return self


class _EntryModel(BaseModel):
    model_config = _Strict
    source: int | str
    kind: Literal["project", "group"] | None = None
    default_permissions: bool = True
    policies: list[str] = Field(default_factory=list)


class _AllowlistModel(BaseModel):
    model_config = _Strict
    project: int | str
    enabled: bool = True
    entries: list[_EntryModel] = Field(default_factory=list, max_length=GROUP_LINK_LIMIT)


class _GrantsModel(BaseModel):
    model_config = _Strict
    projects: list[_ProjectModel] = Field(default_factory=list)
    jobs: list[_JobModel] = Field(default_factory=list)
    allowlists: list[_AllowlistModel] = Field(default_factory=list)


def load_grants(path: Path) -> Grants:
    """Read and validate a grants file; raises `PolicyFileError` naming the file and entries."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"{path}: cannot read: {exc}") from None
    return parse_grants(text, str(path))


def parse_grants(text: str, origin: str) -> Grants:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyFileError(f"{origin}: not valid YAML: {exc}") from None
    if document is None:
        document = {}
    try:
        model = _GrantsModel.model_validate(document)
    except ValidationError as exc:
        raise PolicyFileError(f"{origin}: " + _describe(exc)) from None
    problems: list[str] = []
    grants = build_grants(model, problems)
    if problems:
        raise PolicyFileError(f"{origin}: " + "; ".join(problems))
    return grants


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors()[:10]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        lines.append(f"{where.lstrip('.') or 'file'}: {error['msg']}")
    return "; ".join(lines)


class _Index:
    def __init__(self, projects: list[_ProjectModel], problems: list[str]) -> None:
        self.by_id: dict[int, Project] = {}
        self.by_path: dict[str, Project] = {}
        for i, item in enumerate(projects):
            features = tuple(sorted((k, FEATURE_LEVELS[v]) for k, v in item.features.items()))
            project = Project(item.id, item.path, Visibility(item.visibility), features)
            if item.id in self.by_id:
                problems.append(f"projects[{i}].id: duplicate project id {item.id}")
            if project.key in self.by_path:
                problems.append(f"projects[{i}].path: duplicate project path {item.path!r}")
            self.by_id[item.id] = project
            self.by_path[project.key] = project

    def find(self, ref: int | str) -> Project | None:
        key = project_key(ref)
        if isinstance(key, int):
            return self.by_id.get(key)
        return None if key is None else self.by_path.get(key)


def build_grants(model: Any, problems: list[str]) -> Grants:
    """Turn a validated `_GrantsModel` into values, appending cross-reference problems."""
    index = _Index(model.projects, problems)
    jobs = tuple(_jobs(model.jobs, index, problems))
    allowlists = tuple(_allowlists(model.allowlists, index, problems))
    return Grants(tuple(index.by_id.values()), jobs, allowlists)


def _jobs(items: list[_JobModel], index: _Index, problems: list[str]) -> list[Job]:
    jobs: list[Job] = []
    seen_ids: set[int] = set()
    seen_digests: set[str] = set()
    for i, item in enumerate(items):
        project = index.find(item.project)
        if project is None:
            problems.append(f"jobs[{i}].project: unknown project {item.project!r}")
            continue
        if item.token is not None:
            token_digest = hashlib.sha256(item.token.encode()).hexdigest()
        else:
            token_digest = str(item.token_sha256)
        if token_digest in seen_digests:
            problems.append(f"jobs[{i}].token: the same token is listed twice")
        if item.job_id in seen_ids:
            problems.append(f"jobs[{i}].job_id: duplicate job id {item.job_id}")
        seen_ids.add(item.job_id)
        seen_digests.add(token_digest)
        expires = None if item.expires_at is None else item.expires_at.astimezone(UTC).timestamp()
        jobs.append(Job(token_digest, item.job_id, project, expires))
    return jobs


def _allowlists(
    items: list[_AllowlistModel], index: _Index, problems: list[str]
) -> list[Allowlist]:
    lists: list[Allowlist] = []
    seen: set[int] = set()
    for i, item in enumerate(items):
        project = index.find(item.project)
        if project is None:
            problems.append(f"allowlists[{i}].project: unknown project {item.project!r}")
            continue
        if project.id in seen:
            problems.append(f"allowlists[{i}].project: a second allowlist for {project.path!r}")
        seen.add(project.id)
        entries = [
            _entry(entry, index, problems, f"allowlists[{i}].entries[{j}]")
            for j, entry in enumerate(item.entries)
        ]
        lists.append(Allowlist(project.id, item.enabled, tuple(e for e in entries if e)))
    return lists


def _entry(
    item: _EntryModel, index: _Index, problems: list[str], where: str
) -> AllowlistEntry | None:
    unknown = sorted(set(item.policies) - KNOWN_POLICIES)
    if unknown:
        problems.append(f"{where}.policies: unknown policy {', '.join(unknown)}")
    if item.default_permissions and item.policies:
        problems.append(f"{where}: policies are ignored when default_permissions is true")
    if len(set(item.policies)) != len(item.policies):
        problems.append(f"{where}.policies: duplicate policy")
    source = _source(item, index, problems, where)
    if source is None:
        return None
    kind, path, source_id = source
    return AllowlistEntry(kind, path, source_id, item.default_permissions, tuple(item.policies))


def _source(
    item: _EntryModel, index: _Index, problems: list[str], where: str
) -> tuple[EntryKind, str, int | None] | None:
    project = index.find(item.source)
    if item.kind == "group" or (item.kind is None and project is None):
        if isinstance(item.source, int) or not isinstance(project_key(item.source), str):
            problems.append(f"{where}.source: unknown project id {item.source}")
            return None
        if not _PATH.fullmatch(item.source):
            problems.append(f"{where}.source: not a group path {item.source!r}")
            return None
        return EntryKind.GROUP, item.source.lower(), None
    if project is None:
        problems.append(f"{where}.source: unknown project {item.source!r}")
        return None
    return EntryKind.PROJECT, project.key, project.id
