"""The topic layout under ``{prefix}/{site}/{gateway}/`` (documented in contract/asyncapi.yaml)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

OP_NAME = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*")


@dataclass(frozen=True)
class Topics:
    prefix: str
    site: str
    gateway: str

    @functools.cached_property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.gateway}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    def event(self, event_type: str) -> str:
        return f"{self.base}/event/{event_type}"

    @property
    def requests(self) -> str:
        return f"{self.base}/request/+"

    def request(self, op: str) -> str:
        return f"{self.base}/request/{op}"

    def response(self, op: str) -> str:
        return f"{self.base}/response/{op}"

    def op_of(self, topic: str) -> str | None:
        head = f"{self.base}/request/"
        if not topic.startswith(head):
            return None
        op = topic[len(head) :]
        return op if len(op) <= 64 and OP_NAME.fullmatch(op) else None
