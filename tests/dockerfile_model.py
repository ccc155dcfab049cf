"""Just enough of a Dockerfile reader for the tests: stages, and the final stage's ENV, ENTRYPOINT,
CMD, HEALTHCHECK, USER, EXPOSE, VOLUME and STOPSIGNAL, the way the Docker builder reads them.

It reads the forms our Dockerfile uses (continuation lines, `ENV k=v ...`, exec-form JSON arrays,
`${VAR}` expansion from ARG/ENV) and fails loudly on anything else, so a Dockerfile edit that
leaves those forms breaks a test instead of being misread.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Dockerfile", "Healthcheck", "Instruction", "Stage", "expand"]

# What the python:*-slim images set before our ENV lines (docker-library/python Dockerfiles).
BASE_IMAGE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"}
_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def expand(value: str, env: dict[str, str]) -> str:
    """`$VAR` and `${VAR}` as the builder expands them; an unknown variable is an error here."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if name not in env:
            raise ValueError(f"Dockerfile uses ${name}, which is not defined before it")
        return env[name]

    return _VAR.sub(substitute, value)


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass(frozen=True)
class Healthcheck:
    options: dict[str, str]
    command: list[str]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        if not found:
            raise AssertionError(f"stage {self.name or self.base} has no {keyword}")
        return found[-1]

    def exec_form(self, keyword: str) -> list[str]:
        args = self.last(keyword).args
        value = json.loads(args)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AssertionError(f"{keyword} must be an exec-form JSON array of strings: {args}")
        return value

    @property
    def entrypoint(self) -> list[str]:
        return self.exec_form("ENTRYPOINT")

    @property
    def cmd(self) -> list[str]:
        return self.exec_form("CMD")

    @property
    def healthcheck(self) -> Healthcheck:
        words = self.last("HEALTHCHECK").args.split(None)
        options: dict[str, str] = {}
        while words and words[0].startswith("--"):
            key, _, value = words.pop(0)[2:].partition("=")
            options[key] = value
        if not words or words[0] != "CMD":
            raise AssertionError("HEALTHCHECK must be `HEALTHCHECK [options] CMD [exec form]`")
        command = json.loads(" ".join(words[1:]))
        return Healthcheck(options, command)

    @property
    def exposed(self) -> set[int]:
        return {int(p.split("/")[0]) for i in self.all("EXPOSE") for p in i.args.split()}

    @property
    def volumes(self) -> list[str]:
        found: list[str] = []
        for instruction in self.all("VOLUME"):
            args = instruction.args
            found += json.loads(args) if args.startswith("[") else args.split()
        return found


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        global_args: dict[str, str] = {}
        stages: list[Stage] = []
        for instruction in _instructions(path.read_text()):
            if instruction.keyword == "FROM":
                words = instruction.args.split()
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
                stage = Stage(expand(words[0], global_args), name, env=dict(BASE_IMAGE_ENV))
                stages.append(stage)
            elif not stages:
                if instruction.keyword != "ARG":
                    raise AssertionError(f"line {instruction.line}: only ARG may precede FROM")
                key, _, value = instruction.args.partition("=")
                global_args[key.strip()] = value.strip()
            else:
                stages[-1].instructions.append(instruction)
                if instruction.keyword == "ENV":
                    stages[-1].env.update(_env_pairs(instruction, stages[-1].env))
        return cls(path, global_args, stages)


def _env_pairs(instruction: Instruction, env: dict[str, str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for word in shlex.split(instruction.args):
        key, sep, value = word.partition("=")
        if not sep:
            raise AssertionError(f"line {instruction.line}: use the ENV key=value form")
        # The builder expands every pair against the environment before this instruction.
        pairs[key] = expand(value, env)
    return pairs


def _instructions(text: str) -> list[Instruction]:
    found: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue  # comments and parser directives; also inside continuations, as the builder does
        if not buffer:
            start = number
        continued = stripped.endswith("\\")
        buffer.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(part for part in buffer if part).partition(" ")
            found.append(Instruction(start, keyword.upper(), args.strip()))
            buffer = []
    if buffer:
        raise AssertionError("Dockerfile ends inside a continuation line")
    return found
