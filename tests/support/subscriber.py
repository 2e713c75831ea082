"""An MQTT subscriber that collects what the platform would receive (a test peer).

The callback only appends: a subscriber that falls behind makes the broker queue messages in
memory, and a broker killed by a test would then lose messages the gateway had correctly
delivered. Parsing and contract checks happen outside the callback.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.contract import check_message


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Collects messages; at close, every message the gateway published is checked against the
    contract (requests, which tests publish themselves, are skipped)."""

    def __init__(
        self,
        port: int,
        topic: str = "#",
        client_id: str = "test-platform",
        persistent: bool = False,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._topic = topic
        self._parsed: list[dict[str, Any]] = []
        self._parsed_upto = 0
        self._parse_lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if login is not None:
            self._client.username_pw_set(*login)
        self._client.on_connect = self._on_connect
        self.connects = 0
        self._last_at: float | None = None
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.reconnect_delay_set(0.05, 0.5)
        props = None
        if persistent:
            # The broker keeps the subscription and queues for us while we reconnect.
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self._client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("subscriber did not subscribe")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        # QoS 0 on the platform side on purpose: a subscriber that sends PUBACKs leaves unread
        # bytes in the broker's socket, so a SIGKILLed broker resets the connection (RST) and
        # Linux discards what had already reached us. The gateway's side is QoS 1 throughout.
        self.connects += 1
        client.subscribe(self._topic, qos=0)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received = Received(msg.topic, bytes(msg.payload), bool(msg.retain))
        with self._cond:
            self.messages.append(received)
            self._last_at = time.monotonic()
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                snapshot = list(self.messages)
            if predicate(snapshot):
                return snapshot
            left = deadline - time.monotonic()
            if left <= 0:
                quiet = (
                    "never"
                    if self._last_at is None
                    else f"{time.monotonic() - self._last_at:.1f} s"
                )
                raise TimeoutError(
                    f"condition not met; {len(snapshot)} messages seen, "
                    f"{self.connects} connects, last message {quiet} ago"
                )
            with self._cond:
                if len(self.messages) == len(snapshot):
                    self._cond.wait(min(left, 0.2))

    def events(self) -> list[dict[str, Any]]:
        """Every event envelope received, unpacking P2 batches, in arrival order."""
        with self._parse_lock:
            with self._cond:
                new = self.messages[self._parsed_upto :]
                self._parsed_upto += len(new)
            for m in new:
                if "/event/" in m.topic:
                    body = m.json()
                    self._parsed.extend(body if isinstance(body, list) else [body])
            return list(self._parsed)

    def event_ids(self) -> set[str]:
        return {e["event_id"] for e in self.events()}

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def of_topic(self, suffix: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def violations(self) -> list[str]:
        with self._cond:
            msgs = list(self.messages)
        problems: list[str] = []
        for m in msgs:
            if "/request/" not in m.topic:
                problems.extend(check_message(m.topic, m.payload))
        return problems

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
        problems = self.violations()
        assert not problems, "contract violations:\n" + "\n".join(problems[:20])
