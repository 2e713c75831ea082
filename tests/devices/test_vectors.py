"""Every example in the protocols guide, byte for byte."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.devices.decoders import dc09
from gateway.devices.decoders.binary import BinaryDecoder
from gateway.devices.decoders.ble import decode_advert
from gateway.devices.decoders.contact_id import decode_line
from gateway.devices.decoders.espa import decode_block
from gateway.devices.framers.binary import BinaryFramer
from gateway.devices.framers.checksums import crc16_arc, crc16_modbus
from gateway.devices.framers.espa import Control, EspaFramer
from gateway.devices.model import Frame, Kind
from tests.devices.conftest import definition

AA55_SOS = bytes.fromhex("AA 55 0A 01 A1 B2 C3 D4 E5 F6 02 C6 01 A5 25")
ESPA_CALL = bytes.fromhex(
    "01 31 02 31 1F 30 38 31 35 1E 32 1F 53 4F 53 20 52 4F 4F 4D 20 31 32 1E 33 1F 32 1E"
    " 34 1F 33 1E 35 1F 31 1E 36 1F 31 03 77"
)
DC09_EVENT = b'\nD0F1003D"ADM-CID"0001R0L0#1234[#1234|1101 01 015]_14:12:04,09-25-2025\r'
DC09_ACK = b'\nDBE70014"ACK"0001R0L0#1234[]\r'


def test_crc_check_values() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37
    assert crc16_arc(b"123456789") == 0xBB3D
    assert crc16_modbus(AA55_SOS[2:-2]) == 0x25A5


def test_aa55_sos_frame() -> None:
    spec = definition("aa55-reference").binary
    assert spec is not None
    assert BinaryFramer(spec.framing).feed(AA55_SOS) == [Frame(AA55_SOS)]
    (ev,) = BinaryDecoder(spec).decode(AA55_SOS).events
    assert (ev.kind, ev.device, ev.rssi, ev.seq, ev.code) == (
        Kind.SOS,
        "A1B2C3D4E5F6",
        -58,
        1,
        "02",
    )
    assert ev.raw == AA55_SOS


def test_bthome_example() -> None:
    raw = bytes.fromhex("02 01 06 0A 16 D2 FC 40 00 2A 01 5A 3A 01")
    advert = decode_advert(raw, ["bthome"])
    assert advert is not None
    assert (advert.packet_id, advert.battery, advert.buttons) == (42, 90, (1,))


def test_ibeacon_layout() -> None:
    uuid = bytes(range(16))
    raw = bytes.fromhex("02 01 06 1A FF 4C 00 02 15") + uuid + bytes.fromhex("00 07 01 2C C5")
    advert = decode_advert(raw, ["ibeacon"])
    assert advert is not None
    assert advert.ids == {"uuid": uuid.hex().upper(), "major": 7, "minor": 300, "tx_power": -59}


def test_espa_exchange_and_block() -> None:
    framer = EspaFramer()
    assert framer.feed(bytes.fromhex("04 31 05 32 05")) == [
        Control("eot"),
        Control("enq", "1"),
        Control("enq", "2"),
    ]
    assert framer.feed(ESPA_CALL) == [Frame(ESPA_CALL)]
    spec = definition("espa444-nurse-call").espa
    assert spec is not None
    (ev,) = decode_block(ESPA_CALL, spec).events
    assert (ev.device, ev.text, ev.code, ev.kind) == ("0815", "SOS ROOM 12", "3", Kind.SOS)
    assert ev.ids == {"header": "1", "beep": "2", "call_type": "3", "transmissions": "1",
                      "priority": "1"}  # fmt: skip


def test_contact_id_lines() -> None:
    codes = definition("contact-id-serial").codes
    (new,) = decode_line(b"1234181101010151", codes).events
    assert (new.kind, new.device, new.code, new.ids["qualifier"]) == (
        Kind.SOS,
        "1234-015",
        "101",
        "new",
    )
    (restore,) = decode_line(b"123418310101015E", codes).events
    assert (restore.kind, restore.restores) == (Kind.RESTORE, Kind.SOS)
    # qualifier 6, "still present": the panel repeats an alarm already raised; a status
    # report, never a second emergency
    (still,) = decode_line(b"123418610101015B", codes).events
    assert (still.kind, still.device, still.ids["qualifier"]) == (Kind.STATUS, "1234-015", "status")
    assert still.name == "still present: personal_emergency"
    assert decode_line(b"1234181101010152", codes).rejects[0].reason == "bad_checksum"


def test_dc09_event_and_ack() -> None:
    when = datetime(2025, 9, 25, 14, 12, 4, tzinfo=UTC)
    built = dc09.build("ADM-CID", 1, "1234", "#1234|1101 01 015", receiver="0", line="0", now=when)
    assert built == DC09_EVENT
    msg = dc09.parse(DC09_EVENT.decode().strip("\n\r"), {})
    assert (msg.id, msg.seq, msg.account, msg.data, msg.timestamp) == (
        "ADM-CID",
        1,
        "1234",
        "#1234|1101 01 015",
        when,
    )
    assert dc09.ack(msg, None, when) == DC09_ACK
