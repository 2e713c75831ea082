from __future__ import annotations

import tomllib
from pathlib import Path

from gateway.config import load_config
from gateway.configdoc import reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_reference_is_what_the_models_say() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == reference(), "run `gateway config-reference > docs/configuration.md`"


def test_every_key_is_described() -> None:
    undescribed = [line for line in reference().splitlines() if line.endswith("|  |")]
    assert not undescribed


def test_the_example_configs_are_valid() -> None:
    for path in sorted((ROOT / "examples").glob("*.toml")):
        tomllib.loads(path.read_text())
        load_config(path)
