"""The written contract matches the code, and every schema in it is sound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from gateway.catalog import EVENT_TYPES
from gateway.contract import ASYNCAPI, SCHEMAS, validator
from gateway.contract.asyncapi import operations_in_schemas, render
from gateway.store import Store
from gateway.sync import Sync
from tests.support.gateway import config, running


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    return loaded


def test_the_committed_document_is_the_rendering_of_the_code() -> None:
    assert document() == render(EVENT_TYPES), "run scripts/render-asyncapi and commit the result"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves() -> None:
    doc = document()
    for ref in _refs(doc):
        if ref.startswith("#/"):
            node: Any = doc
            for part in ref[2:].split("/"):
                node = node[part]
        else:
            path, _, pointer = ref.partition("#")
            target = ASYNCAPI.parent / path
            assert target.is_file(), ref
            node = json.loads(target.read_text())
            for part in filter(None, pointer.split("/")):
                node = node[part]


@pytest.mark.parametrize(
    "path", sorted(SCHEMAS.rglob("*.json")), ids=lambda p: p.relative_to(SCHEMAS).as_posix()
)
def test_every_schema_is_valid_and_named_by_its_path(path: Path) -> None:
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == path.relative_to(SCHEMAS).as_posix()
    if path.parent.name in ("data", "request", "reply"):
        assert schema.get("additionalProperties") is False, "closed objects only"


def test_each_event_type_has_a_data_schema_and_no_schema_is_orphaned() -> None:
    names = {t.name for t in EVENT_TYPES}
    assert len(names) == len(EVENT_TYPES), "two stages define the same event type"
    on_disk = {p.stem for p in (SCHEMAS / "data").glob("*.json")}
    assert names == on_disk


def test_the_operations_the_gateway_answers_are_the_documented_ones(tmp_path: Path) -> None:
    with running(config(tmp_path / "var", None)) as gw:
        assert isinstance(gw.sync, Sync) and isinstance(gw.store, Store)
        served = set(gw.sync.downlink.operations)
    assert served == set(operations_in_schemas())
    for op in served:
        assert (SCHEMAS / "reply" / f"{op}.json").is_file()


def test_the_envelope_schema_rejects_what_the_platform_must_not_receive() -> None:
    good = {
        "event_id": "01a20589-1afd-70af-88b3-4f52542d7b97",
        "seq": 1,
        "session": 1,
        "type": "alarm.sos",
        "schema": 1,
        "ts": "2026-11-22T08:00:00.000Z",
        "clock_synced": False,
        "replay": False,
        "data": {},
    }
    envelope = validator("envelope.json")
    assert envelope.is_valid(good)
    for key in good:
        broken = dict(good)
        broken.pop(key)
        assert not envelope.is_valid(broken), key
    assert not envelope.is_valid({**good, "event_id": "not-a-uuid"})
    assert not envelope.is_valid({**good, "seq": 0})
    assert not envelope.is_valid({**good, "ts": "2026-11-22 08:00"})
    assert not envelope.is_valid({**good, "name": "张三"})  # no identity fields beside ids
