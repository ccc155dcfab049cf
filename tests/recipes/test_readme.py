"""The decision-endpoint recipes docs/deployment.md shows are the deploy/ files the recipe tests
run."""

from __future__ import annotations

import re
import shlex

import pytest

from gateway.settings import Settings

from .conftest import REPO

BLOCK = re.compile(r"<!-- deploy-file: (\S+) -->\n```\w*\n(.*?)```\n", re.S)


def test_every_recipe_in_the_readme_is_its_deploy_file() -> None:
    page = (REPO / "docs" / "deployment.md").read_text()
    blocks = BLOCK.findall(page)
    assert {path for path, _ in blocks} == {
        "deploy/nginx/jobtoken-decision-http.conf",
        "deploy/nginx/jobtoken-decision-locations.conf",
        "deploy/omnibus/gitlab.rb",
        "deploy/omnibus/jobtoken-decision-api.conf",
        "deploy/envoy/jobtoken-ext-authz.yaml",
        "deploy/traefik/jobtoken-forward-auth.yml",
        "deploy/caddy/Caddyfile",
    }
    for path, text in blocks:
        assert text == (REPO / path).read_text(), (
            f"docs/deployment.md's block for {path} differs from the file"
        )


def test_the_omnibus_location_is_the_nginx_one_for_the_api() -> None:
    nginx = (REPO / "deploy/nginx/jobtoken-decision-locations.conf").read_text()
    omnibus = (REPO / "deploy/omnibus/jobtoken-decision-api.conf").read_text()
    start = "location ~ ^/api/v4(/|$)|\\.git(/|$)|/info/refs$ {"
    shared = nginx[nginx.index(start) :].replace(start, "location ^~ /api/v4/ {", 1)
    assert omnibus.endswith(shared)


RECIPES = [
    "deploy/nginx/jobtoken-decision-http.conf",
    "deploy/omnibus/gitlab.rb",
    "deploy/envoy/jobtoken-ext-authz.yaml",
    "deploy/traefik/jobtoken-forward-auth.yml",
    "deploy/caddy/Caddyfile",
]


@pytest.mark.parametrize("path", RECIPES)
def test_the_settings_a_recipe_names_are_valid(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    found = dict(re.findall(r"(GATEWAY_[A-Z_]+)=('[^']*'|\S+)", (REPO / path).read_text()))
    assert "GATEWAY_DECISION_PORT" in found
    for name, value in found.items():
        monkeypatch.setenv(name, shlex.split(value.rstrip(",."))[0])
    settings = Settings.build()
    assert settings.decision_port == 8082
    assert settings.upstream == "http://127.0.0.1:8181"
