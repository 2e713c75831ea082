"""Sync: the outbox to the platform's MQTT broker and requests back (the only paho user)."""

from gateway.sync.downlink import Operation, Reply, RequestError
from gateway.sync.service import Sync
from gateway.sync.topics import Topics

__all__ = ["Operation", "Reply", "RequestError", "Sync", "Topics"]
