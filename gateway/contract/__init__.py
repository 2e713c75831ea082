"""The topic contract: JSON Schemas for every message (asyncapi.yaml ties them to topics).

The gateway validates downlink requests with these same files, so the documented contract and
the running code cannot drift apart; the tests validate every uplink payload against them too.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).parent / "schemas"
ASYNCAPI = Path(__file__).parent / "asyncapi.yaml"


@cache
def registry() -> Registry[Any]:
    resources = []
    for path in sorted(SCHEMAS.rglob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((path.relative_to(SCHEMAS).as_posix(), Resource.from_contents(contents)))
    return Registry().with_resources(resources)


def schema(name: str) -> dict[str, Any]:
    """A schema by its id, e.g. ``health.json`` or ``data/alarm.sos.json``."""
    contents: dict[str, Any] = registry()[name].contents
    return contents


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), registry=registry())


def request_validator(op: str) -> Draft202012Validator:
    return validator(f"request/{op}.json")


def data_schema_name(event_type: str) -> str:
    return f"data/{event_type}.json"
