"""Fixtures for the devices stage: a real store on disk, the shipped definitions, and a check
that every device event a test recorded matches its JSON Schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.clock import ClockSync, SystemClock
from gateway.config import StoreSection
from gateway.devices.definitions import DefinitionFile, load_definition
from gateway.devices.events import DEVICE_EVENT_TYPES
from gateway.store import Store
from tests.support.journal import journal

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "device_configs"
SCHEMAS = ROOT / "gateway" / "contract" / "schemas" / "data"
DEVICE_TYPES = {t.name for t in DEVICE_EVENT_TYPES}


def definition(name: str) -> DefinitionFile:
    return load_definition(CONFIGS / f"{name}.toml")


def schema_for(type_name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{type_name}.json").read_text())
    return schema


def stored(path: Path, type_prefix: str = "") -> list[dict[str, Any]]:
    """Committed events (read back from the file, as the publisher would), in seq order."""
    return [{"seq": e.seq, "type": e.type, "data": e.data} for e in journal(path, type_prefix)]


def check_schemas(path: Path) -> int:
    checked = 0
    for ev in stored(path):
        if ev["type"] in DEVICE_TYPES:
            jsonschema.Draft202012Validator(schema_for(ev["type"])).validate(ev["data"])
            checked += 1
    return checked


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(
        StoreSection(), tmp_path / "gateway.db", SystemClock(), ClockSync("assume_synced", 30)
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()
    check_schemas(s.path)
