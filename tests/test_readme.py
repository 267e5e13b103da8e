"""The README's configuration table is checked against ReplayConfig (STYLE 22)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from replay_middleware import ReplayConfig

README = (Path(__file__).parent.parent / "README.md").read_text()


def table_rows() -> dict[str, str]:
    section = README.split("<!-- config-table", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(\w+)` \| (.+?) \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_option_is_documented_once_in_order() -> None:
    names = [f.name for f in dataclasses.fields(ReplayConfig)]
    assert list(table_rows()) == names


def test_documented_defaults_match() -> None:
    rows = table_rows()
    config = ReplayConfig()
    for f in dataclasses.fields(ReplayConfig):
        if f.name in ("inject_status", "sample_rate"):
            continue  # described in words; sample_rate below
        value = getattr(config, f.name)
        documented = rows[f.name].strip("`")
        if isinstance(value, (dict, type(config.privacy))) and not value:
            assert documented == "{}", f.name
        else:
            expected = f'"{value}"' if isinstance(value, str) else repr(value)
            assert documented == expected, f.name


def test_documented_sample_rate_default_names_both_modes() -> None:
    local = ReplayConfig().sample_rate
    keyed = ReplayConfig(api_key="key123", secret_key="s" * 16).sample_rate
    expected = f"`{local!r}` in local mode, `{keyed!r}` with an `api_key`"
    assert table_rows()["sample_rate"] == expected


def test_quick_start_is_exactly_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
