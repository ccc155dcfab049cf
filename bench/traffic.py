"""The benchmark's request mix, generated from the seed's route table, plus the grants it needs.

One deterministic (seeded) list of raw HTTP/1.1 requests is written twice: as a wrk Lua script
(`mix.lua`) and as JSON for the Python load generator (`mix.json`). Both replay the list in
order, forever. The bench world it assumes (and writes as a grants file for the token store):

- 8 projects `bench/proj-1..8` (ids 1001..1008), addressed by numeric id or by the URL-encoded
  full path (`bench%2Fproj-3`, the `%2F` form GitLab accepts for `:id`);
- 16 *hot* job tokens (2 per project) reused all the time: their resolutions stay cached;
- `cold_tokens` *cold* job tokens, each used once per pass: every one is a cache miss and a
  store lookup. The scripts take the first cold index as an argument so the warm-up and the
  measured run never share cold tokens;
- a few unknown tokens (401), and requests without a token;
- project N allowlists project N+1 with fine-grained policies (`GRANTED`), project N+2 with
  the default permissions, and no other project.

Each entry carries a prediction (forwarded or denied) from this simple model of GitLab's rules;
`bench/run.py` compares it with the non-2xx share the gateway answers, as a sanity check that
enforcement is really on. The prediction ignores finer rules (e.g. the container registry's
own-project-only routes), so expect it to be close, not exact.

Usage: python bench/traffic.py --out DIR [--seed 1] [--size 10000] [--cold-tokens 50000]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ROUTES_YAML = REPO / "policies" / "routes.yaml"
SEED_PAGE = REPO.parent / "shared" / "seed" / "000_bfd2f6b9226250fa.txt"
API = "/api/v4"
PROJECTS = 8
FIRST_PROJECT_ID = 1001
GROUP = "bench"
HOT_PER_PROJECT = 2
UNKNOWN_TOKENS = 64
COLD_MARK = "\x00COLD\x00"
# What an allowlisted project with fine-grained permissions is granted (GitLab policy names).
GRANTED = ("read_packages", "read_releases", "read_deployments", "read_environments", "read_jobs")

# Weights of the mix (documented in bench/README.md, "Setups").
TOKEN_KINDS = {"hot": 85, "cold": 5, "unknown": 5, "none": 5}
RELATIONS = {"own": 40, "policies": 35, "default": 10, "not_allowlisted": 15}
CARRIERS = {"header": 80, "bearer": 10, "query": 10}
WRITE_SHARE = 0.3
JOB_ENDPOINT_SHARE = 0.05
NUMERIC_ID_SHARE = 0.6

ROW = re.compile(r"^\|[^|]*\|([^|]*)\|\s*`(GET|POST|PUT|PATCH|DELETE|HEAD) ([^`]+)`\s*\|")
PARAM_VALUES = {
    "package_name": "bench-pkg",
    "package_version": "1.0.0",
    "package_username": "bench",
    "package_channel": "stable",
    "file_name": "bench-1.0.0.tgz",
    "path": "com/example/bench/1.0.0",
    "module_name": "example.com/bench",
    "module_version": "v1.0.0",
    "tag_name": "v1.0.0",
    "tag": "latest",
    "ref_name": "main",
    "name": "bench",
    "sha": "0123456789abcdef0123456789abcdef01234567",
    "sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "file_identifier": "bench-1.0.0.tar.gz",
    "artifact_path": "out/report.json",
    "direct_asset_path": "bin/bench",
    "conan_package_reference": "0123456789abcdef",
    "recipe_revision": "0",
    "package_revision": "0",
}


@dataclass(frozen=True, slots=True)
class RouteSpec:
    method: str
    template: str  # Grape template without /api/:version, e.g. /projects/:id/releases
    permissions: tuple[str, ...]  # lower case; () for the page's `None` rows


@dataclass(frozen=True, slots=True)
class Entry:
    raw: str  # a complete HTTP/1.1 request; COLD_MARK stands for a cold token's number
    token_kind: str
    forwarded: bool  # the model's prediction


@dataclass
class Mix:
    entries: list[Entry]
    source: str
    routes: int
    cold_tokens: int
    stats: dict[str, Any] = field(default_factory=dict)


# --- the route table


def load_routes() -> tuple[list[RouteSpec], str]:
    """The project-scoped routes of the job-token table (policies/routes.yaml, else the seed page)."""
    routes: list[RouteSpec] = []
    source = "builtin"
    if ROUTES_YAML.exists():
        routes, source = _routes_from_yaml(ROUTES_YAML), str(ROUTES_YAML.relative_to(REPO))
    if not routes and SEED_PAGE.exists():
        routes, source = _routes_from_page(SEED_PAGE), "seed page " + SEED_PAGE.name
    if not routes:
        routes = [
            RouteSpec(
                "GET",
                "/projects/:id/packages/generic/:package_name/*package_version/:file_name",
                ("read_packages",),
            ),
            RouteSpec("GET", "/projects/:id/releases", ("read_releases",)),
            RouteSpec(
                "POST", "/projects/:id/deployments", ("admin_deployments", "admin_environments")
            ),
        ]
    usable = [r for r in routes if r.template.startswith("/projects/:id/")]
    return usable, source


def _routes_from_page(page: Path) -> list[RouteSpec]:
    routes = []
    for line in page.read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            names = tuple(n.strip(" `").lower() for n in match.group(1).split(",") if n.strip(" `"))
            routes.append(RouteSpec(match.group(2), match.group(3).strip(), names))
    return routes


def _routes_from_yaml(path: Path) -> list[RouteSpec]:
    """Reads any mapping with method + path (+ permissions) keys, wherever the file nests it."""
    import yaml

    found: list[RouteSpec] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            method, template = node.get("method"), node.get("path")
            if isinstance(method, str) and isinstance(template, str):
                perms = node.get("permissions") or ()
                names = tuple(str(p).lower() for p in perms) if isinstance(perms, list) else ()
                found.append(RouteSpec(method.upper(), template, names))
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    try:
        walk(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError):
        return []
    return [r for r in found if r.template.startswith("/")]


def instantiate(template: str, project_ref: str) -> str:
    """A concrete raw path for a Grape template: optional groups dropped, parameters filled."""
    path = re.sub(r"\([^()]*\)", "", template)  # `(*path/)`, `(/)(*suffix_path)`
    path = path.replace(":id", project_ref, 1)

    def value(match: re.Match[str]) -> str:
        name = match.group(2)
        if name in PARAM_VALUES:
            return PARAM_VALUES[name]
        return "42" if name.endswith("id") or name in {"iid", "serial"} else "bench"

    return re.sub(r"([:*])([a-z_]+)", value, path)


# --- tokens and the bench world


def hot_token(i: int) -> str:
    return f"glcbt-1_benchhot{i:016x}"


COLD_PREFIX = "glcbt-1_benchcold"


def cold_token(i: int) -> str:
    return f"{COLD_PREFIX}{i:016x}"  # mix.lua and loadgen.py format the same string


def unknown_token(i: int) -> str:
    return f"glcbt-1_benchunknown{i:016x}"


def project_of_hot(i: int) -> int:
    return i % PROJECTS


def project_of_cold(i: int) -> int:
    return i % PROJECTS


def project_path(p: int) -> str:
    return f"{GROUP}/proj-{p + 1}"


def project_id(p: int) -> int:
    return FIRST_PROJECT_ID + p


def grants_document(cold_tokens: int) -> dict[str, Any]:
    """The bench world in the store's interchange format (see gateway/stores/grants.py)."""
    projects = [{"id": project_id(p), "path": project_path(p)} for p in range(PROJECTS)]
    allowlists = [
        {
            "project": project_path(p),
            "entries": [
                {
                    "source": project_path((p + 1) % PROJECTS),
                    "default_permissions": False,
                    "policies": list(GRANTED),
                },
                {"source": project_path((p + 2) % PROJECTS), "default_permissions": True},
            ],
        }
        for p in range(PROJECTS)
    ]
    jobs = [
        {"token": hot_token(i), "job_id": 1 + i, "project": project_path(project_of_hot(i))}
        for i in range(PROJECTS * HOT_PER_PROJECT)
    ]
    jobs += [
        {"token": cold_token(i), "job_id": 100_000 + i, "project": project_path(project_of_cold(i))}
        for i in range(cold_tokens)
    ]
    return {"projects": projects, "jobs": jobs, "allowlists": allowlists}


def source_for(relation: str, target: int, rng: random.Random) -> int:
    """A source project standing in `relation` to the target project."""
    if relation == "own":
        return target
    if relation == "policies":
        return (target + 1) % PROJECTS  # project N allowlists N+1 (see grants_document)
    if relation == "default":
        return (target + 2) % PROJECTS
    return (target + rng.randint(3, PROJECTS - 1)) % PROJECTS  # not allowlisted


def predicted_forward(kind: str, relation: str, route: RouteSpec) -> bool:
    if kind == "none":
        return True  # forwarded as is (require_job_token is off by default)
    if kind == "unknown":
        return False  # 401
    if relation == "own":
        return True
    if "/registry/" in route.template:
        return False  # container registry routes are own-project only (gateway/routing/facts.py)
    if relation == "default":
        return True
    if relation == "not_allowlisted":
        return False
    return not route.permissions or set(route.permissions) <= set(GRANTED)


# --- the mix


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _raw(method: str, target: str, headers: list[tuple[str, str]], body: bytes | None) -> str:
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "User-Agent: jtg-bench/1",
        "Accept: */*",
    ]
    lines += [f"{k}: {v}" for k, v in headers]
    payload = ""
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        payload = body.decode()
    return "\r\n".join(lines) + "\r\n\r\n" + payload


def _token_for(kind: str, source: int, rng: random.Random) -> str | None:
    if kind == "hot":
        return hot_token(source + PROJECTS * rng.randrange(HOT_PER_PROJECT))
    if kind == "cold":
        return (
            COLD_PREFIX + COLD_MARK
        )  # run-time: cold_token(n) with n chosen so that n % PROJECTS == source
    if kind == "unknown":
        return unknown_token(rng.randrange(UNKNOWN_TOKENS))
    return None


def one_request(routes: list[RouteSpec], rng: random.Random) -> Entry:
    kind = _pick(rng, TOKEN_KINDS)
    relation = _pick(rng, RELATIONS)
    target = rng.randrange(PROJECTS)
    if kind == "cold":
        relation = "own"  # a cold token's project is fixed by its index (see mix.lua)
    source = source_for(relation, target, rng)
    if kind != "none" and rng.random() < JOB_ENDPOINT_SHARE:
        route = RouteSpec("GET", "/job", ())
        path, relation = API + "/job", "own"
    else:
        writes = rng.random() < WRITE_SHARE
        pool = [r for r in routes if (r.method != "GET") == writes] or routes
        route = rng.choice(pool)
        ref = (
            str(project_id(target))
            if rng.random() < NUMERIC_ID_SHARE
            else project_path(target).replace("/", "%2F")
        )
        path = API + instantiate(route.template, ref)
    token = _token_for(kind, source, rng)
    headers: list[tuple[str, str]] = []
    if token is not None:
        carrier = _pick(rng, CARRIERS)
        if carrier == "query":
            path += ("&" if "?" in path else "?") + "job_token=" + token
        else:
            headers.append(
                ("JOB-TOKEN", token)
                if carrier == "header"
                else ("Authorization", f"Bearer {token}")
            )
    body = b'{"bench":true}' if route.method in {"POST", "PUT", "PATCH"} else None
    if kind == "cold":
        # The cold token must belong to the target project: mix.lua advances its counter to
        # the next index with `index % PROJECTS == target` (encoded after the mark).
        raw = _raw(route.method, path, headers, body).replace(
            COLD_MARK, f"{COLD_MARK}{target}{COLD_MARK}"
        )
    else:
        raw = _raw(route.method, path, headers, body)
    return Entry(raw, kind, predicted_forward(kind, relation, route))


def build(seed: int = 1, size: int = 10_000, cold_tokens: int = 50_000) -> Mix:
    cold_tokens = max(PROJECTS, cold_tokens - cold_tokens % PROJECTS)  # keeps index % PROJECTS
    routes, source = load_routes()
    rng = random.Random(seed)
    entries = [one_request(routes, rng) for _ in range(size)]
    kinds = Counter(e.token_kind for e in entries)
    forwarded = sum(e.forwarded for e in entries)
    stats = {
        "token_kinds": dict(kinds),
        "predicted_denied_share": round(1 - forwarded / len(entries), 4),
        "methods": dict(Counter(e.raw.split(" ", 1)[0] for e in entries)),
    }
    return Mix(entries, source, len(routes), cold_tokens, stats)


# --- writers


def _split(raw: str) -> list[str] | tuple[str, int, str]:
    if COLD_MARK not in raw:
        return [raw]
    pre, project, post = raw.split(COLD_MARK)
    return (pre, int(project), post)


def _lua_string(text: str) -> str:
    return (
        '"'
        + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
        + '"'
    )


def write_lua(mix: Mix, path: Path) -> None:
    """A wrk script: `wrk ... -s mix.lua -- FIRST_COLD_INDEX` replays the mix in order."""
    rows = []
    for entry in mix.entries:
        part = _split(entry.raw)
        if isinstance(part, list):
            rows.append(_lua_string(part[0]))
        else:
            rows.append("{" + f"{_lua_string(part[0])},{part[1]},{_lua_string(part[2])}" + "}")
    script = LUA_TEMPLATE.replace("@ROWS@", ",\n".join(rows))
    script = script.replace("@PROJECTS@", str(PROJECTS)).replace("@COLD_N@", str(mix.cold_tokens))
    path.write_text(script, encoding="utf-8")


LUA_TEMPLATE = """-- Generated by bench/traffic.py: the benchmark's request mix (do not edit).
local reqs = {
@ROWS@
}
local n = #reqs
local i = 0
local cold = 0
local projects = @PROJECTS@
local cold_n = @COLD_N@

function init(args)
  cold = tonumber(args[1] or "0")
end

-- The next cold token index at or after `cold` that belongs to project `p`.
local function next_cold(p)
  local base = cold - (cold % projects) + p
  if base < cold then base = base + projects end
  base = base % cold_n
  cold = base + 1
  return base
end

function request()
  i = i + 1
  if i > n then i = 1 end
  local r = reqs[i]
  if type(r) == "string" then return r end
  return r[1] .. string.format("%016x", next_cold(r[2])) .. r[3]
end
"""


def write_json(mix: Mix, path: Path) -> None:
    rows = [_split(e.raw) for e in mix.entries]
    doc = {"projects": PROJECTS, "cold_tokens": mix.cold_tokens, "requests": rows}
    path.write_text(json.dumps(doc), encoding="utf-8")


def write_grants(cold_tokens: int, path: Path) -> None:
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump(grants_document(cold_tokens), Dumper=dumper, sort_keys=False)
    path.write_text(text, encoding="utf-8")


def describe(mix: Mix) -> dict[str, Any]:
    return {
        "route_source": mix.source,
        "routes": mix.routes,
        "size": len(mix.entries),
        "cold_tokens": mix.cold_tokens,
        "weights": {
            "token_kinds": TOKEN_KINDS,
            "relations": RELATIONS,
            "carriers": CARRIERS,
            "write_share": WRITE_SHARE,
            "numeric_id_share": NUMERIC_ID_SHARE,
        },
        **mix.stats,
    }


def write_all(out: Path, seed: int, size: int, cold_tokens: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    mix = build(seed, size, cold_tokens)
    write_lua(mix, out / "mix.lua")
    write_json(mix, out / "mix.json")
    write_grants(mix.cold_tokens, out / "grants.yaml")
    return describe(mix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--cold-tokens", type=int, default=50_000)
    args = parser.parse_args()
    print(json.dumps(write_all(args.out, args.seed, args.size, args.cold_tokens), indent=2))


if __name__ == "__main__":
    main()
