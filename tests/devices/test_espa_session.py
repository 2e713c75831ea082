"""A full ESPA 4.4.4 session over a pty pair, the gateway as paging system '2' at 7E1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devices.config import PortConfig
from gateway.devices.framers.espa import ACK, EOT, NAK
from gateway.devices.service import PortService
from gateway.devices.simulate import EspaMaster, corrupt, espa_block
from gateway.store import Store
from tests.devices.conftest import definition, stored
from tests.devices.support import Pty
from tests.support.wait import eventually

CALL = [("1", "0815"), ("2", "SOS ROOM 12"), ("3", "2"), ("4", "3"), ("5", "1"), ("6", "1")]


@pytest.fixture
def session(tmp_path: Path, store: Store) -> Iterator[tuple[Pty, PortService]]:
    pty = Pty(tmp_path / "nursecall", "7E1")
    cfg = PortConfig(name="nurse", definition="espa444-nurse-call.toml", url=str(pty.path))
    service = PortService(cfg, definition("espa444-nurse-call"), store, 10.0)
    service.start()
    eventually(lambda: service.link.stats.state == "up")
    try:
        yield pty, service
    finally:
        service.stop()
        pty.close()


def test_poll_select_block_ack_with_bcc_retry(
    session: tuple[Pty, PortService], store: Store
) -> None:
    pty, service = session
    master = EspaMaster(pty)
    pty.write(b"2\x05")  # a poll: nothing to send
    assert pty.read() == bytes([EOT])
    assert master.select()
    block = espa_block(CALL)
    pty.write(corrupt(block))
    assert master.reply() == NAK
    pty.write(block)
    assert master.reply() == ACK
    # ACK is sent only after the commit: the call is in the file the moment the ACK arrives.
    (call,) = stored(store.path, "alarm.sos")
    master.end()
    data = call["data"]
    assert (data["device"], data["text"], data["code"], data["port"]) == (
        "0815",
        "SOS ROOM 12",
        "3",
        "nurse",
    )
    assert data["ids"]["priority"] == "1"
    assert data["raw"] == block.hex().upper()
    health = service.health()
    assert health["rejected"] == {"bad_bcc": 1}
    assert (service.handler.blocks_acked, service.handler.blocks_naked) == (1, 1)  # type: ignore[attr-defined]


def test_wrong_parity_is_naked_then_retry(session: tuple[Pty, PortService], store: Store) -> None:
    pty, service = session
    master = EspaMaster(pty)
    assert master.select()
    block = espa_block([("1", "0207"), ("2", "BED 7"), ("4", "5")])
    wire = bytearray(pty.parity.encode(block))
    wire[6] ^= 0x80  # flip one parity bit: the data bits are intact, the BCC still matches
    pty.write_raw(bytes(wire))
    assert master.reply() == NAK
    assert master.send_block(block) == ACK
    master.end()
    (fall,) = stored(store.path, "alarm.fall")
    assert fall["data"]["device"] == "0207"
    assert service.link.stats.parity_errors == 1
    assert service.health()["rejected"] == {"parity": 1}


def test_cancelled_call_restores(session: tuple[Pty, PortService], store: Store) -> None:
    pty, _service = session
    master = EspaMaster(pty)
    assert master.select()
    assert master.send_block(espa_block([("1", "0815"), ("7", "2")])) == ACK
    master.end()
    (restore,) = stored(store.path, "alarm.restore")
    assert restore["data"]["restores"] == "sos"
    assert restore["data"]["name"] == "call_cancelled"
