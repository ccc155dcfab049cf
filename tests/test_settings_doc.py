"""The configuration reference (docs/configuration.md) is generated from the Settings fields and
never drifts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings

from gateway.settings import Settings, env_for, flag_for
from gateway.tools import settings_doc

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "configuration.md"


def run_doc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.tools.settings_doc", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def table_rows() -> dict[str, list[str]]:
    """The generated table's rows keyed by environment variable: [flag, env, default, meaning]."""
    rows: dict[str, list[str]] = {}
    for line in settings_doc.render_table().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[1].strip("`")] = cells
    return rows


def test_the_page_block_is_the_generated_one() -> None:
    text = PAGE.read_text(encoding="utf-8")
    regenerated = settings_doc.replace_block(text, settings_doc.render_block())
    assert text == regenerated, (
        "docs/configuration.md's configuration reference differs from gateway/settings.py: "
        f"run `.venv/bin/{settings_doc.REGENERATE}` and commit docs/configuration.md"
    )


def test_every_setting_has_one_row_with_its_flag_env_and_description() -> None:
    rows = table_rows()
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        flag, env, _default, meaning = rows[env_for(name)]
        assert flag.startswith(f"`{flag_for(name)}`")
        assert env == f"`{env_for(name)}`"
        assert meaning == field.description


@pytest.mark.parametrize(
    ("env", "default"),
    [
        ("GATEWAY_PORT", "`8080`"),
        ("GATEWAY_UPSTREAM", "*(unset)*"),
        ("GATEWAY_GRACE_PERIOD", "`30`"),
        ("GATEWAY_MODE", "`enforce`"),
        ("GATEWAY_GIT_HTTP", "`true`"),
        ("GATEWAY_TRUSTED_PROXIES", "*(empty)*"),
        ("GATEWAY_BODY_INSPECT_LIMIT", "`1048576` (1 MiB)"),
        ("GATEWAY_ROUTES", "`policies/routes.yaml`"),
    ],
)
def test_defaults_read_as_a_user_types_them(env: str, default: str) -> None:
    assert table_rows()[env][2] == default


def test_booleans_show_both_flags() -> None:
    assert table_rows()["GATEWAY_GIT_HTTP"][0] == "`--git-http` / `--no-git-http`"


def test_table_does_not_depend_on_the_machine() -> None:
    # The route table's default is absolute at run time; the page must not carry this checkout.
    assert str(REPO) not in settings_doc.render_block()


def test_a_setting_without_description_stops_generation() -> None:
    class Undocumented(BaseSettings):
        documented: int = Field(1, description="Has one.")
        mystery: int = 2

    with pytest.raises(ValueError, match="mystery"):
        settings_doc.render_table(Undocumented)


def test_pipes_in_descriptions_do_not_break_the_table() -> None:
    class Piped(BaseSettings):
        choice: str = Field("a", description="Either a | b.")

    assert "Either a \\| b." in settings_doc.render_table(Piped)


@pytest.mark.parametrize(
    "text",
    [
        "no markers",
        f"{settings_doc.BEGIN}\nonly begin",
        f"{settings_doc.END}\nx\n{settings_doc.BEGIN}",
    ],
)
def test_markers_must_appear_once_in_order(text: str) -> None:
    with pytest.raises(ValueError, match=r"marker|before"):
        settings_doc.replace_block(text, settings_doc.render_block())


def test_only_the_block_is_rewritten(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    before, after = "# Title\n\nintro\n\n", "\n\n## Deployment\n\nmore text\n"
    page.write_text(f"{before}{settings_doc.BEGIN}\nold table\n{settings_doc.END}{after}")

    stale = run_doc("--check", "--file", str(page))
    assert stale.returncode == 1
    assert settings_doc.REGENERATE in stale.stdout

    assert run_doc("--write", "--file", str(page)).returncode == 0
    text = page.read_text()
    assert text == before + settings_doc.render_block() + after
    assert run_doc("--check", "--file", str(page)).returncode == 0


def test_missing_markers_are_a_clear_error(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    page.write_text("# Title\n")
    result = run_doc("--write", "--file", str(page))
    assert result.returncode == 2
    assert "marker" in result.stderr
    assert page.read_text() == "# Title\n"


def test_the_default_target_is_the_configuration_page() -> None:
    assert settings_doc.TARGET == PAGE
    assert run_doc("--check").returncode == 0
    assert settings_doc.BEGIN in PAGE.read_text(encoding="utf-8")
    assert settings_doc.BEGIN not in (REPO / "README.md").read_text(encoding="utf-8")
