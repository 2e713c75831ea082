"""Every event type the gateway publishes, from every stage: the topic contract is built from
this list, and a test checks that each type has its data schema."""

from __future__ import annotations

from gateway.devices.events import DEVICE_EVENT_TYPES
from gateway.events import BACKBONE_EVENT_TYPES, EventType
from gateway.vision.events import VISION_EVENT_TYPES

EVENT_TYPES: tuple[EventType, ...] = (
    *BACKBONE_EVENT_TYPES,
    *DEVICE_EVENT_TYPES,
    *VISION_EVENT_TYPES,
)
