"""The field simulators against the gateway's own receivers."""

from __future__ import annotations

import os
import select
import threading
import tty
from pathlib import Path

import pytest

from gateway.devices.config import Dc09Receiver
from gateway.devices.dc09 import Dc09Service
from gateway.devices.decode import decode_capture
from gateway.devices.decoders import dc09
from gateway.devices.events import TYPE_OF_KIND
from gateway.devices.framers.espa import ACK, ENQ, NAK
from gateway.devices.model import Kind
from gateway.devices.simulate import Dc09Transmitter, EspaMaster, Traffic
from gateway.store import Store
from tests.devices.conftest import definition, stored
from tests.devices.support import Pty
from tests.support.wait import eventually


def test_a_panel_sending_less_often_than_the_idle_timeout_goes_on_sending(store: Store) -> None:
    """The demo's alarm panel sends every 2 minutes; the receiver closes a connection idle for
    one: the next message goes on a new connection instead of ending the panel."""
    cfg = Dc09Receiver(
        name="hubs", definition="dc09-receiver.toml", host="127.0.0.1", port=0, idle_timeout_s=0.5
    )
    service = Dc09Service(cfg, definition("dc09-receiver"), store, 10.0)
    service.start()
    panel = Dc09Transmitter("127.0.0.1", service.port, "1234")
    try:
        assert dc09.parse(panel.cid("1", "101", "001").decode().strip(), {}).id == "ACK"
        # the receiver closes the connection as idle (its thread ends with it)
        eventually(lambda: not any(t.name == "dc09-hubs-conn" for t in threading.enumerate()))
        assert dc09.parse(panel.cid("1", "101", "002").decode().strip(), {}).id == "ACK"
        assert len(stored(store.path)) == 2 and service.connections == 2
    finally:
        panel.close()
        service.stop()


def test_a_late_answer_is_not_taken_for_the_next_selection(tmp_path: Path) -> None:
    """The pager ACKed a block after the control station had given up on it (a slow commit):
    the next selection waits for its own answer instead of staying one answer behind."""
    pty = Pty(tmp_path / "ttyNURSE")
    pager = os.open(pty.path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(pager)
    try:
        os.write(pager, bytes([ACK]))  # the late answer
        eventually(lambda: bool(select.select([pty.master], [], [], 0)[0]))

        def refuse_the_selection() -> None:
            heard = b""
            while not heard.endswith(b"2" + bytes([ENQ])):
                heard += os.read(pager, 16)
            os.write(pager, bytes([NAK]))

        pager_side = threading.Thread(target=refuse_the_selection)
        pager_side.start()
        selected = EspaMaster(pty).select()
        pager_side.join(5)
        assert selected is False
    finally:
        os.close(pager)
        pty.close()


@pytest.mark.parametrize("name", ["aa55-reference", "minew-ble-jsonlines"])
def test_each_alarm_a_simulated_station_sends_is_recorded_as_that_alarm(name: str) -> None:
    """A BLE gateway's bands signal by button: a fall it has no button for was sent as an
    SOS, and a band taken off as a plain sighting, while the simulator reported them sent."""
    traffic = Traffic(definition(name), bands=4, repeats=1)
    kinds = traffic.alarm_kinds
    assert Kind.SOS in kinds
    station = b"".join(s.frame for s in traffic.tick(1.0) if s.kind is Kind.STATUS)
    for kind in kinds:
        frame = b"".join(s.frame for s in traffic.transmit(traffic.bands[0], kind))
        decoded = decode_capture(definition(name), station + frame)
        # a BLE advert with a button press is a sighting as well
        alarms = [e["type"] for e in decoded if e["type"] != TYPE_OF_KIND[Kind.SEEN].name]
        assert alarms == [TYPE_OF_KIND[kind].name], kind
