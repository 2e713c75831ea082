"""Render the AsyncAPI 3.0 document from the event catalog and the schema files.

``asyncapi.yaml`` is this rendering (written by ``scripts/render-asyncapi``), committed so the
platform team can read it without running anything; a test fails when the committed file and
the code disagree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.contract import SCHEMAS
from gateway.events import EventType, Lane

CONTRACT_VERSION = "1.0.0"
BASE = "{prefix}/{site}/{gateway}"
LANE_TEXT = {
    Lane.P0: "P0 (alarm: sent before anything else, one event per message)",
    Lane.P1: "P1 (records and alarm lifecycle: one event per message)",
    Lane.P2: "P2 (telemetry: an array of 1..N events of this type per message, in seq order)",
}

DESCRIPTION = "\n\n".join(
    (
        "Topics between an eldercare site gateway and the city elderly-care platform.",
        "Delivery: every uplink message is published at QoS 1. The gateway keeps an event in "
        "its local outbox until the broker's PUBACK for that very message arrives, so an alarm or "
        "record is never lost (telemetry, P2, may be evicted over its quota or expire, which "
        "shows as gaps in seq), and is sent again only if a PUBACK was lost; a redelivery "
        "carries the "
        "same event_id. Deduplicate on event_id. Order by seq (per gateway, strictly increasing, "
        "never reused), never by ts: a gateway has no RTC and says in clock_synced whether ts "
        "can be trusted.",
        "Priorities: when a backlog drains after an outage, P0 alarms go first, then P1 "
        "records, then P2 telemetry; within a lane in seq order. replay=true marks events sent "
        "from such a backlog.",
        "Requests: publish a JSON object with a transaction id (1..64 chars) to request/<op>; "
        "the answer comes on response/<op> echoing it. A repeated transaction is answered again "
        "from the stored response (repeat=true) and is never applied twice. A request on "
        "request/<op> for an op not listed here is answered on response/<op> too, with "
        "status error and the message \"unknown op '<op>'\"; one whose <op> is not an op name "
        "(lowercase letters, digits, '_' and '-', in dot-separated parts that each begin with "
        "a letter, up to 64 characters) is not answered, only counted (health "
        "downlink.errors.bad_topic). The answer always goes to response/<op> and is matched by "
        "transaction: an MQTT 5 response topic or "
        "correlation data on the request is not used.",
    )
)


def _ref(path: str) -> dict[str, str]:
    return {"$ref": f"schemas/{path}"}


def _title(path: str) -> str:
    contents = json.loads((SCHEMAS / path).read_text(encoding="utf-8"))
    return str(contents.get("title") or contents.get("description") or path)


def _channel(address: str, message: str) -> dict[str, Any]:
    params = {p: {"$ref": f"#/components/parameters/{p}"} for p in ("prefix", "site", "gateway")}
    return {
        "address": address,
        "parameters": params,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
    }


def _event_payload(t: EventType) -> dict[str, Any]:
    one = {
        "allOf": [
            _ref("envelope.json"),
            {
                "type": "object",
                "properties": {
                    "type": {"const": t.name},
                    "schema": {"const": t.schema},
                    "data": _ref(f"data/{t.name}.json"),
                },
            },
        ]
    }
    if t.lane is Lane.P2:
        return {"type": "array", "minItems": 1, "items": one}
    return one


def _operation(action: str, channel: str, summary: str, retain: bool = False) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "bindings": {"mqtt": {"qos": 1, "retain": retain, "bindingVersion": "0.2.0"}},
    }


def operations_in_schemas() -> list[str]:
    return sorted(p.stem for p in (SCHEMAS / "request").glob("*.json"))


def render(event_types: Sequence[EventType]) -> dict[str, Any]:
    channels: dict[str, Any] = {
        "status": _channel(f"{BASE}/status", "status"),
        "health": _channel(f"{BASE}/health", "health"),
    }
    messages: dict[str, Any] = {
        "status": {
            "name": "status",
            "title": "Gateway status (retained)",
            "summary": _title("status.json"),
            "payload": _ref("status.json"),
        },
        "health": {
            "name": "health",
            "title": "Gateway health (retained, periodic)",
            "payload": _ref("health.json"),
        },
    }
    operations: dict[str, Any] = {
        "publishStatus": _operation("send", "status", "Birth, last will and goodbye.", True),
        "publishHealth": _operation("send", "health", "Backlog, broker and devices.", True),
    }
    for t in sorted(event_types, key=lambda e: (e.lane, e.name)):
        key = f"event.{t.name}"
        channels[key] = _channel(f"{BASE}/event/{t.name}", key)
        messages[key] = {
            "name": t.name,
            "title": t.name,
            "summary": t.description,
            "description": f"Lane {LANE_TEXT[t.lane]}. Data schema version {t.schema}.",
            "payload": _event_payload(t),
        }
        operations[f"publish.{t.name}"] = _operation("send", key, t.description)
    for op in operations_in_schemas():
        req, resp = f"request.{op}", f"response.{op}"
        channels[req] = _channel(f"{BASE}/request/{op}", req)
        channels[resp] = _channel(f"{BASE}/response/{op}", resp)
        messages[req] = {
            "name": req,
            "title": _title(f"request/{op}.json"),
            "payload": _ref(f"request/{op}.json"),
        }
        messages[resp] = {
            "name": resp,
            "title": f"Response to {op}",
            "description": f"status ok: data as in schemas/reply/{op}.json.",
            "payload": _ref("response.json"),
        }
        operation = _operation("receive", req, _title(f"request/{op}.json"))
        operation["reply"] = {"channel": {"$ref": f"#/channels/{resp}"}}
        operations[f"handle.{op}"] = operation
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Eldercare gateway - city platform topics",
            "version": CONTRACT_VERSION,
            "description": DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {
            "platform": {
                "host": "{broker}",
                "protocol": "secure-mqtt",
                "protocolVersion": "5",
                "description": "The city platform's broker (MQTT 3.1.1 also supported). "
                "TLS with the platform CA; mutual TLS where the platform issues client "
                "certificates. The gateway never falls back to plaintext.",
                "variables": {"broker": {"default": "platform-broker:8883"}},
                "security": [{"$ref": "#/components/securitySchemes/mutualTLS"}],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "parameters": {
                "prefix": {
                    "description": "Topic prefix (config mqtt.topic_prefix); may be several topic "
                    "levels (a/b): subscribe with '#' or the prefix written out, not with '+'.",
                    "default": "eldercare",
                },
                "site": {"description": "Site id (config gateway.site)."},
                "gateway": {"description": "Gateway id (config gateway.id)."},
            },
            "messages": messages,
            "securitySchemes": {
                "mutualTLS": {
                    "type": "X509",
                    "description": "Client certificate (config mqtt.tls.cert_file/key_file).",
                }
            },
        },
    }
