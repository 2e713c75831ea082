"""Decoders: BLE JSON lines, field maps, ESPA text, SIA; and the reasons for refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.contract import validator
from gateway.devices.decoders.binary import BinaryDecoder
from gateway.devices.decoders.contact_id import decode_line, with_checksum
from gateway.devices.decoders.espa import decode_block
from gateway.devices.decoders.jsonlines import JsonLinesDecoder
from gateway.devices.decoders.sia import decode_dcs
from gateway.devices.definitions import BinarySpec, CodeMap, DefinitionFile
from gateway.devices.events import to_event
from gateway.devices.framers.binary import encode_frame
from gateway.devices.framers.espa import ETX
from gateway.devices.model import RESTORABLE, Decoded, Kind
from gateway.devices.simulate import espa_block
from gateway.events import compact_json
from tests.devices.conftest import definition

BTHOME_PRESS = "0201060A16D2FC40002A015A3A01"
TLM = "0201060303AAFE1116AAFE20000BB81900000004D2000003E8"
# the reference base station's framing, for definitions written in a test
AA55_FRAMING = {
    "header": "AA55",
    "length": {"offset": 2, "counts_from": 3},
    "checksum": {"kind": "crc16_modbus", "start": 2},
    "command_offset": 3,
    "payload_offset": 4,
}


def vendor_sos(device: str, *fields: dict[str, object]) -> BinarySpec:
    """A vendor's AA55 definition with one SOS message (command 1) of these fields and a
    field named ``seq``."""
    spec = DefinitionFile.model_validate(
        {
            "name": "vendor",
            "binary": {
                "framing": AA55_FRAMING,
                "messages": [
                    {
                        "command": 1,
                        "name": "call",
                        "device": device,
                        "seq": "seq",
                        "kind": "sos",
                        "fields": list(fields),
                    }
                ],
            },
        }
    ).binary
    assert spec is not None
    return spec


def ble() -> JsonLinesDecoder:
    spec = definition("minew-ble-jsonlines").jsonlines
    assert spec is not None
    return JsonLinesDecoder(spec)


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_gateway_line_names_the_station_and_button_is_sos() -> None:
    d = ble()
    assert d.decode(line({"type": "Gateway", "mac": "AC:23:3F:00:00:01"})).station == (
        "AC233F000001"
    )
    out = d.decode(line({"mac": "c3:00:00:00:00:07", "rssi": -61, "rawData": BTHOME_PRESS}))
    seen, sos = out.events
    assert (seen.kind, seen.device, seen.seq, seen.battery, seen.rssi) == (
        Kind.SEEN,
        "C30000000007",
        42,
        90,
        -61,
    )
    assert (sos.kind, sos.code) == (Kind.SOS, "button:01")
    assert sos.raw.hex().upper() == BTHOME_PRESS


def test_a_ble_gateway_line_is_read_as_the_definition_says() -> None:
    """The second button of a two-button band raises the SOS though the first reports
    nothing; an iBeacon is seen when no UUIDs are listed, and only those listed when some
    are; a MAC two digits long is refused; an rssi of ``true`` is no signal strength."""
    d = ble()
    two_buttons = "020106" + "0A16D2FC40002B3A003A01"
    out = d.decode(line({"mac": "C30000000010", "rssi": -61, "rawData": two_buttons}))
    assert [e.kind for e in out.events] == [Kind.SEEN, Kind.SOS]
    uuid = "E2C56DB5DFFB48D2B060D0F5A71096E0"
    beacon = "0201061AFF4C000215" + uuid + "0001" + "0002" + "C5"
    (seen,) = d.decode(line({"mac": "C30000000011", "rssi": -61, "rawData": beacon})).events
    assert (seen.ids["uuid"], seen.ids["minor"]) == (uuid, 2)
    spec = definition("minew-ble-jsonlines").jsonlines
    assert spec is not None
    listed = JsonLinesDecoder(spec.model_copy(update={"ibeacon_uuids": ["00" * 16]}))
    assert listed.decode(line({"mac": "C30000000011", "rssi": -61, "rawData": beacon})).events == ()
    long_mac = {"mac": "C3:00:00:00:00:12:34", "rssi": -61, "rawData": BTHOME_PRESS}
    assert d.decode(line(long_mac)).rejects[0].reason == "bad_field"
    no_rssi = d.decode(line({"mac": "C30000000013", "rssi": True, "rawData": BTHOME_PRESS}))
    assert {e.rssi for e in no_rssi.events} == {None}


def test_a_bthome_press_that_is_encrypted_or_not_version_2_raises_no_alarm() -> None:
    """Its bytes are not the objects they look like: an encrypted advert is seen, nothing
    more, and another BTHome version is not ours at all."""
    d = ble()
    encrypted = BTHOME_PRESS.replace("D2FC40", "D2FC41")
    (seen,) = d.decode(line({"mac": "C3000000000B", "rssi": -61, "rawData": encrypted})).events
    assert (seen.kind, seen.ids["encrypted"]) == (Kind.SEEN, True)
    version_1 = BTHOME_PRESS.replace("D2FC40", "D2FC20")
    out = d.decode(line({"mac": "C3000000000C", "rssi": -61, "rawData": version_1}))
    assert out.events == () and out.rejects == ()


def test_eddystone_tlm_and_batches() -> None:
    batch = [{"mac": "C30000000008", "rssi": -70, "rawData": TLM}] * 2
    out = ble().decode(line(batch))
    assert len(out.events) == 2
    tlm = out.events[0]
    assert tlm.seq == 1234 and tlm.ids["battery_mv"] == 3000 and tlm.ids["uptime_s"] == 100.0


def test_a_number_too_long_to_read_in_one_advert_keeps_the_others_of_its_batch() -> None:
    """An integer of more digits than Python converts refused the whole line: the presses
    beside it were lost."""
    press = {"mac": "C30000000021", "rssi": -61, "rawData": BTHOME_PRESS}
    batch = [press, {**press, "mac": "C30000000022", "rssi": 12345}, press]
    text = json.dumps(batch).replace("12345", "9" * 5000)
    out = ble().decode(text.encode())
    assert [(e.device, e.rssi) for e in out.events if e.kind is Kind.SOS] == [
        ("C30000000021", -61),
        ("C30000000022", None),
        ("C30000000021", -61),
    ]


def test_bands_sending_only_eddystone_uid_or_url_frames_are_seen() -> None:
    uid = "0201061516AAFE00E7" + "00112233445566778899" + "A1B2C3D4E5F6"
    url = "020106" + f"{3 + 3 + len('care-home') + 1:02X}" + "16AAFE10E703"
    url += b"care-home".hex() + "07"
    for raw, ids in (
        (uid, {"namespace": "00112233445566778899", "instance": "A1B2C3D4E5F6", "tx_power": -25}),
        (url, {"url": "https://care-home.com", "tx_power": -25}),
    ):
        (seen,) = ble().decode(line({"mac": "C30000000009", "rssi": -61, "rawData": raw})).events
        assert seen.kind is Kind.SEEN and seen.device == "C30000000009" and seen.rssi == -61
        assert {k: seen.ids[k] for k in ids} == ids
    # bytes that no Eddystone URL has: not ours, nothing made up
    bad = "020106" + "0A16AAFE10E703" + "636172" + "FF" + "6868"
    assert ble().decode(line({"mac": "C3000000000F", "rssi": -61, "rawData": bad})).events == ()


def test_eddystone_frames_at_the_edges_of_their_format() -> None:
    """A UID frame with its two reserved bytes and a URL frame of the longest form are seen;
    a URL frame with no such scheme, or a space or DEL in it, is not ours and breaks nothing."""

    def advert(data: str) -> str:
        return "020106" + f"{len(data) // 2 + 1:02X}" + "16" + data

    uid = advert("AAFE00E7" + "00112233445566778899" + "A1B2C3D4E5F6" + "0000")
    url = advert("AAFE10E703" + b"care-home-dining1".hex())
    for raw, ids in (
        (uid, {"namespace": "00112233445566778899", "instance": "A1B2C3D4E5F6"}),
        (url, {"url": "https://care-home-dining1"}),
    ):
        (seen,) = ble().decode(line({"mac": "C3000000000D", "rssi": -61, "rawData": raw})).events
        assert {k: seen.ids[k] for k in ids} == ids
    for data in ("AAFE10E704636172", "AAFE10E70363206172", "AAFE10E703637F6172"):
        out = ble().decode(line({"mac": "C3000000000E", "rssi": -61, "rawData": advert(data)}))
        assert out.events == () and out.rejects == ()


def test_ble_bad_input_reasons() -> None:
    d = ble()
    assert d.decode(b"\xff\xfe{").rejects[0].reason == "bad_text"
    assert d.decode(b"{not json").rejects[0].reason == "bad_json"
    assert d.decode(b"[" * 100_000).rejects[0].reason == "bad_json"  # too deep to parse
    assert d.decode(line({"mac": "C3", "rssi": -1, "rawData": ""})).rejects[0].reason == (
        "bad_field"
    )
    truncated_ad = {"mac": "C30000000009", "rssi": -50, "rawData": "0201060A16D2FC"}
    assert d.decode(line(truncated_ad)).rejects[0].reason == "bad_advert"
    phone = {"mac": "C3000000000A", "rssi": -50, "rawData": "020106"}
    assert d.decode(line(phone)).events == ()


def test_contact_id_lines_are_checked_as_the_receiver_sends_them() -> None:
    """A 0 digit weighs 10 in the checksum: an SOS with two of them (sum 60 with the A) is
    valid. A line a digit short is refused even when its digits happen to add up, and a
    code the site maps as a restore keeps what it restores when sent as one."""
    codes = definition("contact-id-serial").codes
    (sos,) = decode_line(b"123418110111015A", codes).events
    assert (sos.kind, sos.device) == (Kind.SOS, "1234-015")
    (alternate,) = decode_line(with_checksum("123498110111015").encode(), codes).events
    assert alternate.kind is Kind.SOS  # message type 98, as some receivers send it
    assert with_checksum("123418110101016") == "123418110101016F"
    assert decode_line(b"123418110101016", codes).rejects[0].reason == "bad_format"
    site = {"145": CodeMap(kind=Kind.RESTORE, restores=Kind.DEVICE_ALARM, name="expander")}
    (restore,) = decode_line(with_checksum("123418314501015").encode(), site).events
    assert (restore.kind, restore.restores) == (Kind.RESTORE, Kind.DEVICE_ALARM)
    # the restore of a code that raises nothing (a sighting) ends nothing: the contract's
    # `restores` has no "seen", and a platform checking it would refuse the event
    seen = {"602": CodeMap(kind=Kind.SEEN, name="periodic_test")}
    (ended,) = decode_line(with_checksum("123418360201015").encode(), seen).events
    assert (ended.kind, ended.restores) == (Kind.RESTORE, None)


def test_what_a_restore_may_end_is_what_the_contract_lists() -> None:
    schema = json.loads(
        (Path(__file__).parents[2] / "gateway/contract/schemas/data/alarm.restore.json").read_text()
    )
    listed = set(schema["properties"]["restores"]["enum"]) - {None}
    assert {kind.value for kind in RESTORABLE} == listed
    with pytest.raises(ValidationError, match="a restore cannot end 'band_worn'"):
        CodeMap(kind=Kind.RESTORE, restores=Kind.BAND_WORN)


def test_sia_modifiers_before_the_event_code_with_or_without_a_slash() -> None:
    """Area, user and time are written straight before the code by some transmitters
    (dc09-spt) and after a '/' by others: the same alarm either way, the modifiers in ids."""
    codes = definition("dc09-receiver").sia_codes

    def sia(data: str) -> list[tuple[str, str, str | None, dict[str, object]]]:
        out = decode_dcs(data, codes, b"", 1, {})
        assert out.rejects == ()
        return [(e.code or "", e.device, e.text, e.ids) for e in out.events]

    assert sia("#1234|Nri2PA3") == sia("#1234|Nri2/PA3")
    assert sia("#1234|Nri2PA3") == [
        ("PA", "1234-3", None, {"account": "1234", "area": "2", "zone": "3"})
    ]
    assert sia("#1234|Nid7MA4")[0][3]["user"] == "7"
    # a user's label (perhaps a resident's name) is not kept: ids only
    assert sia("#1234|Nid7^Mr Li^MA4") == sia("#1234|Nid7MA4")
    assert sia("#1234|Nti23:22:26QA5")[0][3]["time"] == "23:22:26"
    assert sia("#1234|NMA6|Ahelp")[0][:3] == ("MA", "1234-6", "help")
    # several events in one block; a modifier holds until it is given anew
    assert [(code, ids["area"]) for code, _, _, ids in sia("#1234|Nri1/MA015/PA016/ri2QA3")] == [
        ("MA", "1"),
        ("PA", "1"),
        ("QA", "2"),
    ]


def test_a_sia_block_whose_event_code_cannot_be_read_is_refused() -> None:
    """Refused (so the panel is not acknowledged for an alarm that was not recorded)."""
    codes = definition("dc09-receiver").sia_codes
    for data in ("#1234|Nri1", "#1234|N", "#1234|Nri1/MA015^Mr Li^x", "#1234|Nri1/ma015"):
        out = decode_dcs(data, codes, b"", 1, {})
        assert out.events == () and [r.reason for r in out.rejects] == ["bad_format"], data
        assert "Li" not in out.rejects[0].detail


def test_a_slash_in_a_sia_text_is_text_and_an_unreadable_field_beside_events_is_recorded() -> None:
    """A '/' inside ^text^ cut a fire alarm out of the block, and the message was ACKed for
    the alarm before it: both are events now. A field that cannot be read beside one that can
    is a device alarm of its own, with the raw message, not dropped behind an ACK."""
    codes = definition("dc09-receiver").sia_codes
    out = decode_dcs("#1234|NBA01^kitchen^/FA02^hall/west^", codes, b"", 1, {})
    assert [(e.code, e.device, e.text) for e in out.events] == [
        ("BA", "1234-01", "kitchen"),
        ("FA", "1234-02", "hall/west"),
    ]
    assert "bad_format" not in [r.reason for r in out.rejects]
    (alone,) = decode_dcs("#1234|NMA3^Room 3/4 | bed 2^", codes, b"", 1, {}).events
    assert alone.text == "Room 3/4 | bed 2"
    out = decode_dcs("#1234|NidA1BA01/MA02", codes, b"\x0aD0F1", 7, {})
    assert [(e.kind, e.code, e.name) for e in out.events] == [
        (Kind.SOS, "MA", "medical"),
        (Kind.DEVICE_ALARM, None, "unreadable SIA field"),
    ]
    assert out.events[-1].raw == b"\x0aD0F1" and out.events[-1].device == "1234-0"
    assert [r.reason for r in out.rejects] == ["bad_format"]


def test_a_sia_message_is_taken_only_from_its_data_block() -> None:
    """A first block that is not ``N`` is refused whole; a block other than ``N`` or ``A``
    after it is counted beside the event; an event without a zone is the panel's zone 0."""
    codes = definition("dc09-receiver").sia_codes
    out = decode_dcs("#1234|XMA015", codes, b"", 1, {})
    assert out.events == () and [r.reason for r in out.rejects] == ["bad_format"]
    out = decode_dcs("#1234|NMA015|Xjunk", codes, b"", 1, {})
    assert [e.device for e in out.events] == ["1234-015"]
    assert [r.reason for r in out.rejects] == ["bad_format"]
    (alarm,) = decode_dcs("#1234|NMA", codes, b"", 1, {}).events
    assert alarm.device == "1234-0"


def test_binary_unknown_command_event_and_short_payload() -> None:
    spec = definition("aa55-reference").binary
    assert spec is not None
    decoder = BinaryDecoder(spec)
    assert decoder.decode(encode_frame(spec.framing, bytes.fromhex("07 00"))).rejects[0].reason == (
        "unknown_command"
    )
    unknown_event = encode_frame(spec.framing, bytes.fromhex("01 A1B2C3D4E5F6 09 C6 01"))
    assert decoder.decode(unknown_event).rejects[0].detail == "wristband event 09"
    short = encode_frame(spec.framing, bytes.fromhex("01 A1B2C3"))
    assert decoder.decode(short).rejects[0].reason == "short_payload"


def test_a_binary_frame_one_byte_short_is_refused_not_read_into_its_checksum() -> None:
    """Without its seq byte the SOS would take the checksum's first byte for its seq."""
    spec = definition("aa55-reference").binary
    assert spec is not None
    short = encode_frame(spec.framing, bytes.fromhex("01 A1B2C3D4E5F6 02 C6"))
    out = BinaryDecoder(spec).decode(short)
    assert out.events == () and out.rejects[0].reason == "short_payload"


def test_an_espa_block_is_a_call_only_when_it_is_one() -> None:
    """A call needs header 1 or 4, one-character data ids, its ETX and a call address;
    anything else raises no call (a status block is acknowledged, the rest refused)."""
    spec = definition("espa444-nurse-call").espa
    assert spec is not None
    assert len(decode_block(espa_block([("1", "0301")]), spec).events) == 1
    assert decode_block(espa_block([("1", "0301")], header="2"), spec) == Decoded()
    for damaged in (
        espa_block([("1", "0301")]).replace(bytes([ETX]), b"5"),
        espa_block([("1", "0301"), ("12", "x")]),
        espa_block([("1", ""), ("2", "SOS")]),
    ):
        out = decode_block(damaged, spec)
        assert out.events == () and [r.reason for r in out.rejects] == ["bad_format"]


def test_espa_gbk_text_and_invalid_text_keeps_the_call() -> None:
    shipped = definition("espa444-nurse-call").espa
    assert shipped is not None
    spec = shipped.model_copy(update={"encoding": "gbk"})  # a site whose link is 8N1
    (call,) = decode_block(
        espa_block([("1", "0301"), ("2", "3号房呼叫")], encoding="gbk"), spec
    ).events
    assert call.text == "3号房呼叫"
    broken = espa_block([("1", "0302")]).replace(b"0302", b"0302\x1e2\x1f\xff\xfe")
    from gateway.devices.framers.espa import bcc

    broken = broken[:-1] + bytes([bcc(broken[1:-1])])
    out = decode_block(broken, spec)
    assert out.events[0].device == "0302"
    assert [r.reason for r in out.rejects] == ["bad_text"]
    # a codec whose errors are plain UnicodeError, not UnicodeDecodeError: the same outcome
    out = decode_block(broken, spec.model_copy(update={"encoding": "idna"}))
    assert out.events[0].device == "0302"
    assert [r.reason for r in out.rejects] == ["bad_text"]


def test_text_decoded_to_half_a_surrogate_pair_keeps_the_call_storable() -> None:
    """UTF-7 and unicode_escape can decode to half a surrogate pair, which no UTF-8 JSON
    holds: the call was NAKed at every retry, never stored. Now its text is replaced and
    counted, like text that is not valid in its encoding."""
    shipped = definition("espa444-nurse-call").espa
    assert shipped is not None
    for encoding, text in (("utf-7", b"+2AA-"), ("unicode_escape", b"\\ud800")):
        spec = shipped.model_copy(update={"encoding": encoding})
        out = decode_block(espa_block([("1", "0301"), ("2", "x")]).replace(b"x", text), spec)
        assert [r.reason for r in out.rejects] == ["bad_text"]
        (call,) = out.events
        event = to_event(call, port="p", station="s", definition="d")
        compact_json(event.data).encode()  # as the store writes it
        assert call.device == "0301" and call.text == "?"
    spec = DefinitionFile.model_validate(
        {
            "name": "utf7-band",
            "binary": {
                "framing": AA55_FRAMING,
                "messages": [
                    {
                        "command": 1,
                        "name": "sos",
                        "kind": "sos",
                        "device": "band",
                        "fields": [{"name": "band", "offset": 0, "width": 5, "type": "text",
                                    "encoding": "utf-7"}],
                    }
                ],
            },
        }
    )  # fmt: skip
    assert spec.binary is not None
    frame = encode_frame(spec.binary.framing, b"\x01+2AA-")
    assert BinaryDecoder(spec.binary).decode(frame).rejects[0].reason == "bad_field"


def test_an_espa_priority_mapped_by_the_site_decides_the_kind_of_a_call() -> None:
    """A vendor sends every call as type 2 (staff presence) and marks emergencies by priority:
    the site maps priority 1 to an SOS; a call status (a cancel) still comes first."""
    shipped = definition("espa444-nurse-call").espa
    assert shipped is not None
    spec = shipped.model_copy(update={"priorities": {"1": "sos"}})
    routine = espa_block([("1", "0301"), ("4", "2"), ("6", "3")])
    urgent = espa_block([("1", "0301"), ("4", "2"), ("6", "1")])
    cancel = espa_block([("1", "0301"), ("4", "2"), ("6", "1"), ("7", "2")])
    assert decode_block(routine, spec).events[0].kind is Kind.DEVICE_ALARM
    assert decode_block(urgent, spec).events[0].kind is Kind.SOS
    assert decode_block(cancel, spec).events[0].kind is Kind.RESTORE
    assert decode_block(urgent, shipped).events[0].kind is Kind.DEVICE_ALARM  # not mapped


def test_values_outside_the_contract_are_null_not_a_lost_alarm() -> None:
    """A base station writing 0x80 for "no RSSI", a BLE gateway writing "n/a", a battery byte
    of 200: the SOS is still an alarm, published within the contract, the device's own value
    kept in ids."""
    spec = definition("aa55-reference")
    assert spec.binary is not None
    decode = BinaryDecoder(spec.binary).decode
    payload = bytes.fromhex("01 A1B2C3D4E5F6 02 80 07")
    (sos,) = decode(encode_frame(spec.binary.framing, payload)).events
    press = "0201060A16D2FC40002A01C83A01"  # battery byte 0xC8 = 200
    ble_events = ble().decode(line({"mac": "C30000000007", "rssi": "n/a", "rawData": press}))
    events = [
        to_event(ev, port="p", station="s", definition="d") for ev in (sos, *ble_events.events)
    ]
    assert [e.type.name for e in events] == ["alarm.sos", "wristband.seen", "alarm.sos"]
    for event in events:
        validator(f"data/{event.type.name}.json").validate(dict(event.data))
    assert (events[0].data["rssi"], events[0].data["ids"]["rssi_raw"]) == (None, -128)
    assert (events[2].data["battery"], events[2].data["ids"]["battery_raw"]) == (None, 200)
    assert events[2].data["rssi"] is None and not ble_events.rejects


def test_a_signed_sequence_and_an_empty_text_id_still_give_an_alarm_within_the_contract() -> None:
    """A vendor definition reading the sequence byte as signed (0x9C is -100) and the band id
    as text that came as NULs: the SOS goes out, valid, the odd values kept in ids."""
    spec = vendor_sos(
        "id",
        {"name": "id", "offset": 0, "width": 8, "type": "text"},
        {"name": "seq", "offset": 8, "width": 1, "type": "int"},
    )
    frame = encode_frame(spec.framing, b"\x01" + bytes(8) + b"\x9c")
    (sos,) = BinaryDecoder(spec).decode(frame).events
    event = to_event(sos, port="p", station="s", definition="vendor")
    validator("data/alarm.sos.json").validate(dict(event.data))
    assert (event.data["device"], event.data["ids"]["device_missing"]) == ("unknown", True)
    assert (event.data["seq"], event.data["ids"]["seq_raw"]) == (None, -100)


def test_a_bcd_id_and_a_field_in_its_own_byte_order_are_read_as_the_definition_says() -> None:
    """A vendor's band number in BCD and a little-endian seq in a big-endian protocol; a band
    number with a digit that is not decimal is refused, not recorded as another band."""
    spec = vendor_sos(
        "band",
        {"name": "band", "offset": 0, "width": 3, "type": "bcd"},
        {"name": "seq", "offset": 3, "width": 2, "order": "little"},
    )
    decode = BinaryDecoder(spec).decode
    (sos,) = decode(encode_frame(spec.framing, bytes.fromhex("01 123456 0102"))).events
    assert (sos.device, sos.seq) == ("123456", 0x0201)
    out = decode(encode_frame(spec.framing, bytes.fromhex("01 123A56 0102")))
    assert out.events == () and out.rejects[0].reason == "bad_field"
