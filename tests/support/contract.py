"""Check a published MQTT message against the contract, by its topic."""

from __future__ import annotations

import json
from typing import Any

from jsonschema.exceptions import ValidationError

from gateway.contract import data_schema_name, validator


def check_message(topic: str, payload: bytes) -> list[str]:
    """Return the contract violations of one message (empty when it conforms)."""
    parts = topic.split("/")
    if len(parts) < 4:
        return [f"{topic}: not under prefix/site/gateway/"]
    kind = parts[3]
    try:
        body: Any = json.loads(payload)
    except ValueError as exc:
        return [f"{topic}: not JSON: {exc}"]
    problems: list[str] = []

    def check(name: str, value: Any) -> None:
        try:
            validator(name).validate(value)
        except ValidationError as exc:
            problems.append(f"{topic}: {name}: {exc.message} at {list(exc.absolute_path)}")

    if kind in ("status", "health"):
        check(f"{kind}.json", body)
    elif kind == "event":
        event_type = "/".join(parts[4:])
        envelopes = body if isinstance(body, list) else [body]
        if isinstance(body, list) and not body:
            problems.append(f"{topic}: empty batch")
        for env in envelopes:
            check("envelope.json", env)
            if isinstance(env, dict) and env.get("type") != event_type:
                problems.append(f"{topic}: envelope type {env.get('type')} != topic")
            if isinstance(env, dict) and "data" in env and not event_type.startswith("test."):
                check(data_schema_name(event_type), env["data"])
    elif kind == "response":
        op = "/".join(parts[4:])
        check("response.json", body)
        if isinstance(body, dict) and body.get("status") == "ok":
            check(f"reply/{op}.json", body.get("data", {}))
    elif kind == "request":
        op = "/".join(parts[4:])
        check(f"request/{op}.json", body)
    else:
        problems.append(f"{topic}: unknown topic kind {kind}")
    return problems
