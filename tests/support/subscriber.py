"""An MQTT subscriber that collects what the platform would receive."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    def __init__(self, port: int, topic: str = "#", client_id: str = "test-platform") -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._topic = topic
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.reconnect_delay_set(0.05, 0.5)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("subscriber did not subscribe")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self._topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met; {len(self.messages)} messages seen")
                self._cond.wait(left)
            return list(self.messages)

    def events(self) -> list[dict[str, Any]]:
        """Every event envelope received, unpacking P2 batches, in arrival order."""
        out: list[dict[str, Any]] = []
        with self._cond:
            msgs = list(self.messages)
        for m in msgs:
            if "/event/" not in m.topic:
                continue
            body = m.json()
            out.extend(body if isinstance(body, list) else [body])
        return out

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
