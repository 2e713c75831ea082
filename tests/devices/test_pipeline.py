"""A port's handling of bad input: counted per reason, valid frames around it still decoded,
radio repeats dropped but never a new seq, nothing held longer than the frame timeout; a
frame that fails (our fault, or the store's) is refused alone, and the sender's retry is stored."""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
from pathlib import Path

import pytest

from gateway.clock import ClockSync, SystemClock
from gateway.config import StoreSection
from gateway.devices.config import DevicesSection, PortConfig
from gateway.devices.dedup import Dedup
from gateway.devices.framers.binary import encode_frame
from gateway.devices.model import Decoded
from gateway.devices.pipeline import FramedHandler, definition_dedup, framed_handler
from gateway.devices.recorder import Recorder
from gateway.devices.service import build_services
from gateway.devices.simulate import contact_id_line
from gateway.store import Store, db
from tests.devices.conftest import CONFIGS, definition, stored
from tests.devices.support import Pty, failing_inserts
from tests.devices.test_decoders import BTHOME_PRESS
from tests.support.wait import eventually

SPEC = definition("aa55-reference")


def frame(event: int, seq: int, band: str = "A1B2C3D4E5F6") -> bytes:
    assert SPEC.binary is not None
    return encode_frame(SPEC.binary.framing, bytes.fromhex(f"01 {band} {event:02X} C6 {seq:02X}"))


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def handler(store: Store, clock: Clock) -> FramedHandler:
    recorder = Recorder(store, port="p", station="s", definition=SPEC.name, record_timeout_s=5)
    dedup = definition_dedup(SPEC, clock)
    return framed_handler(SPEC, recorder, frame_timeout_s=1.0, silence_s=30.0, dedup=dedup)


def test_bad_input_counted_and_valid_frames_kept(store: Store) -> None:
    h = handler(store, Clock())
    noise = random.Random(7).randbytes(300).replace(b"\xaa", b"\x00")
    bad_crc = bytearray(frame(2, 9))
    bad_crc[-1] ^= 0xFF
    absurd = bytes.fromhex("AA 55 F0 01 00")
    stream = noise + frame(2, 1) + bytes(bad_crc) + absurd + frame(3, 2) + frame(0, 3)[:6]
    h.on_data(stream, 100.0)
    h.on_data(frame(4, 4), 100.1)
    eventually(lambda: len(stored(store.path)) == 3)
    types = [e["type"] for e in stored(store.path)]
    assert types == ["alarm.sos", "alarm.fall", "band.removed"]
    rejected = h.recorder.stats.rejected
    # the corrupted frame, and the cut one that the next frame ran into
    assert rejected["bad_checksum"] == 2 and rejected["bad_length"] == 1
    assert rejected["garbage"] >= 1


def test_repeats_dropped_new_seq_kept(store: Store) -> None:
    clock = Clock()
    h = handler(store, clock)
    h.on_data(frame(2, 7) * 3, clock.t)  # one SOS, repeated by the radio
    h.on_data(frame(2, 8), clock.t)  # a new press: a new seq
    clock.t += 31  # past the 30 s window: the same seq again is a new transmission (wrapped)
    h.on_data(frame(2, 7), clock.t)
    eventually(lambda: h.recorder.stats.events == 3)
    assert [e["data"]["seq"] for e in stored(store.path, "alarm.sos")] == [7, 8, 7]
    assert h.recorder.stats.duplicates == 2


def test_the_window_runs_from_the_first_transmission_not_from_its_last_repeat(
    store: Store,
) -> None:
    """A band repeating its SOS every 20 s: the same seq past the window from the first is
    a new transmission (the counter wrapped), however recent the repeat before it."""
    clock = Clock()
    h = handler(store, clock)
    h.on_data(frame(2, 7), clock.t)
    clock.t += 20
    h.on_data(frame(2, 7), clock.t)  # a repeat
    clock.t += 15
    h.on_data(frame(2, 7), clock.t)
    eventually(lambda: h.recorder.stats.events == 2)
    assert h.recorder.stats.duplicates == 1


def test_a_full_repeat_filter_forgets_its_oldest_key_not_the_newest() -> None:
    """At a busy site the newest SOS must still have its repeats dropped."""
    clock = Clock()
    dedup = Dedup(30.0, clock, max_keys=2)
    assert not any(dedup.is_repeat(key) for key in ("old", "mid", "new"))
    assert dedup.is_repeat("new") and dedup.is_repeat("mid")
    assert not dedup.is_repeat("old")


def test_frame_timeout_releases_a_cut_frame_and_silence_is_reported(store: Store) -> None:
    h = handler(store, Clock())
    h.on_data(frame(0, 1)[:9], 100.0)
    h.on_idle(100.5)
    assert h.framer.pending == 9
    h.on_idle(101.0)
    assert h.framer.pending == 0
    assert h.recorder.stats.rejected == {"truncated": 1}
    h.on_idle(131.0)
    h.on_data(frame(1, 2), 140.0)
    eventually(lambda: len(stored(store.path)) == 3)
    status = [
        (e["data"]["name"], e["data"]["ids"].get("gap_s")) for e in stored(store.path, "device")
    ]
    assert status == [("silent", 31.0), ("active", 40.0)]
    assert stored(store.path, "battery.low")[0]["data"]["seq"] == 2


def test_a_replugged_port_gives_its_station_the_full_silence_time_again(store: Store) -> None:
    """Unplugged for longer than the silence time: the station is not reported silent the
    moment the port is back, and its silence is counted from then, not across the outage."""
    h = handler(store, Clock())
    h.on_up(None)
    h.on_data(frame(1, 1), 100.0)
    h.on_idle(110.0)
    h.on_down("read: device disconnected")
    h.on_up(40.0)  # no reads while down: the next idle read is at once
    h.on_idle(150.0)
    h.on_idle(175.0)
    h.on_data(frame(1, 2), 176.0)  # the station speaks within its time
    h.on_idle(210.0)
    eventually(lambda: len(stored(store.path, "device.status")) == 4)
    status = [
        (e["data"]["name"], e["data"]["ids"].get("gap_s"))
        for e in stored(store.path, "device.status")
    ]
    assert status == [("up", None), ("down", None), ("up", 40.0), ("silent", 34.0)]


def test_sos_behind_a_cut_frame_is_not_held_back(store: Store) -> None:
    h = handler(store, Clock())
    h.on_data(frame(0, 1)[:7] + frame(2, 5), 100.0)
    eventually(lambda: len(stored(store.path, "alarm.sos")) == 1, timeout=1)
    assert h.framer.pending == 0


ACK, NAK = b"\x06", b"\x15"


def replying(h: FramedHandler) -> list[bytes]:
    """What the handler sends back to the device, in order."""
    sent: list[bytes] = []

    def write(data: bytes) -> bool:
        sent.append(data)
        return True

    h.write = write
    return sent


def test_store_error_is_naked_and_the_retry_not_taken_for_a_repeat(store: Store) -> None:
    """A source that is ACKed (as Contact ID is) and numbers its frames (as bands do)."""
    h = handler(store, Clock())
    h.ack, h.nak = ACK, NAK
    sent = replying(h)
    with failing_inserts(store):
        h.on_data(frame(2, 7), 100.0)
    h.on_data(frame(2, 7), 100.5)  # the sender's retry after our NAK
    assert sent == [NAK, ACK]
    assert [e["data"]["seq"] for e in stored(store.path, "alarm.sos")] == [7]
    stats = h.recorder.stats
    assert (stats.store_errors, stats.duplicates) == (1, 0)


def test_a_radio_repeat_after_a_failed_commit_is_stored_not_dropped(store: Store) -> None:
    """No ACK on a radio link (AA55, BLE): a band repeats its SOS on its own. A first copy the
    store could not take must not make the next copy a "repeat"."""
    clock = Clock()
    h = handler(store, clock)
    with failing_inserts(store):
        h.on_data(frame(2, 7), clock.t)
        eventually(lambda: h.recorder.stats.store_errors == 1)
    clock.t += 0.5
    h.on_data(frame(2, 7), clock.t)  # the band's next copy, same seq
    clock.t += 0.5
    h.on_data(frame(2, 7), clock.t)  # and a real repeat of that one
    eventually(lambda: h.recorder.stats.events == 1)
    assert [e["data"]["seq"] for e in stored(store.path, "alarm.sos")] == [7]
    assert h.recorder.stats.duplicates == 1


def test_a_fault_on_one_line_is_naked_and_the_next_line_still_acked(store: Store) -> None:
    spec = definition("contact-id-serial")
    recorder = Recorder(store, port="p", station="s", definition=spec.name, record_timeout_s=5)
    h = framed_handler(spec, recorder, frame_timeout_s=1.0, silence_s=None)
    decode = h.decode

    def faulty(line: bytes) -> Decoded:
        if line.startswith(b"9999"):
            raise IndexError("a bug of ours")
        return decode(line)

    h.decode = faulty
    sent = replying(h)
    h.on_data(b"9999181101010159\r\n" + contact_id_line("1234", "1", "101", "01", "015"), 100.0)
    assert sent == [NAK, ACK]
    (sos,) = stored(store.path, "alarm.sos")
    assert sos["data"]["device"] == "1234-015"
    assert recorder.stats.rejected == {"decode_error": 1}


def test_a_line_naked_while_another_program_held_the_journal_is_stored_once_when_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An sqlite3 shell in the middle of a change holds the journal's lock: the line waits
    record_timeout_s and is NAKed, and its write is taken back, so the receiver's resend once
    the shell is closed is the one alarm in the journal, not the second of two."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 100)
    store = Store(StoreSection(), tmp_path / "g.db", SystemClock(), ClockSync("assume_synced", 30))
    store.start()
    try:
        spec = definition("contact-id-serial")
        recorder = Recorder(
            store, port="p", station="s", definition=spec.name, record_timeout_s=0.3
        )
        h = framed_handler(spec, recorder, frame_timeout_s=1.0, silence_s=None)
        sent = replying(h)
        line = contact_id_line("1234", "1", "101", "01", "015")
        with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as shell:
            shell.execute("BEGIN IMMEDIATE")
            h.on_data(line, 100.0)
            assert sent == [NAK]
            shell.execute("ROLLBACK")
        h.on_data(line, 103.0)  # the receiver's resend
        assert sent == [NAK, ACK]
        store.write(lambda _conn: None).result(10)  # anything still queued is committed
        assert len(stored(store.path, "alarm.sos")) == 1
        assert recorder.stats.store_errors == 1
    finally:
        store.stop()


def test_only_a_contact_id_resend_sent_before_the_late_ack_could_arrive_is_taken_for_one(
    store: Store,
) -> None:
    """A line's 16 digits take 16.7 ms at 9600 baud 8N1: a copy complete sooner after the ACK
    was on its way before the receiver heard it; one complete later is an event of its own."""
    spec = definition("contact-id-serial")
    recorder = Recorder(store, port="p", station="s", definition=spec.name, record_timeout_s=5)
    clock = [0.0]
    h = framed_handler(
        spec, recorder, frame_timeout_s=1.0, silence_s=None, char_s=1 / 960, now=lambda: clock[0]
    )
    sent = replying(h)
    line = contact_id_line("1234", "1", "101", "01", "015")
    clock[0] = 104.5  # the commit returned 4.5 s after the line came
    h.on_data(line, 100.0)
    h.on_data(line, 104.51)  # the receiver's resend, waiting when the ACK went out
    assert sent == [ACK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 1
    h.on_data(line, 104.52)  # the receiver had the ACK and sent the line again
    assert sent == [ACK, ACK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 2
    assert recorder.stats.duplicates == 1


def test_a_line_sent_anew_on_hearing_a_late_ack_is_recorded_though_the_ack_write_returned_late(
    store: Store,
) -> None:
    """The ACK left at once, but the port's thread ran again only 30 ms later (a busy Pi):
    the receiver, having heard the ACK, sent the same line again (a pendant pressed twice),
    complete before the thread was back. That line is an event of its own, not a resend."""
    spec = definition("contact-id-serial")
    recorder = Recorder(store, port="p", station="s", definition=spec.name, record_timeout_s=5)
    clock = [104.5]  # the commit returned 4.5 s after the line came
    h = framed_handler(
        spec, recorder, frame_timeout_s=1.0, silence_s=None, char_s=1 / 960, now=lambda: clock[0]
    )
    sent: list[bytes] = []

    def write(data: bytes) -> bool:
        sent.append(data)
        clock[0] += 0.03
        return True

    h.write = write
    line = contact_id_line("1234", "1", "101", "01", "015")
    h.on_data(line, 100.0)
    heard = 104.5 + 1 / 960  # the ACK is one character on the line
    h.on_data(line, heard + len(line) / 960 + 0.001)
    assert sent == [ACK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 2
    assert recorder.stats.duplicates == 0


def test_deeply_nested_json_is_refused_and_the_sos_behind_it_kept(store: Store) -> None:
    spec = definition("minew-ble-jsonlines")
    recorder = Recorder(store, port="p", station="s", definition=spec.name, record_timeout_s=5)
    h = framed_handler(spec, recorder, frame_timeout_s=1.0, silence_s=None)
    sos = json.dumps({"mac": "AA:BB:CC:DD:EE:FF", "rssi": -61, "rawData": BTHOME_PRESS})
    h.on_data(b"[" * 4000 + b"\n" + sos.encode() + b"\n", 100.0)
    eventually(lambda: len(stored(store.path, "alarm.sos")) == 1, timeout=5)
    assert recorder.stats.rejected == {"bad_json": 1}


def test_an_sos_advert_whose_last_ad_structure_is_cut_is_recorded(store: Store) -> None:
    """An advert whose last AD structure runs past the end (a gateway that cut the data) still
    holds the complete button press before it: the SOS is recorded and the cut tail counted.
    Only complete structures are read: nothing after one of length 0, nor a cut payload."""
    spec = definition("minew-ble-jsonlines")
    recorder = Recorder(store, port="p", station="s", definition=spec.name, record_timeout_s=5)
    h = framed_handler(spec, recorder, frame_timeout_s=1.0, silence_s=None)

    def advert(mac: str, raw: str) -> bytes:
        return json.dumps({"mac": mac, "rssi": -61, "rawData": raw}).encode() + b"\n"

    h.on_data(advert("AABBCCDDEEFF", BTHOME_PRESS + "09FF4C0002"), 100.0)
    h.on_data(advert("AABBCCDDEE01", "02010600" + BTHOME_PRESS[6:]), 100.1)  # ends at the 0
    h.on_data(advert("AABBCCDDEE02", BTHOME_PRESS[:-2]), 100.2)  # the press itself cut
    eventually(lambda: recorder.stats.events == 2, timeout=5)
    (sos,) = stored(store.path, "alarm.sos")
    assert (sos["data"]["device"], sos["data"]["seq"]) == ("AABBCCDDEEFF", 42)
    assert [e["data"]["device"] for e in stored(store.path, "wristband.seen")] == ["AABBCCDDEEFF"]
    assert recorder.stats.rejected == {"bad_advert_tail": 1, "bad_advert": 1}
    assert recorder.stats.ignored == 1


def test_a_batching_ble_gateway_s_line_of_adverts_is_read_whole(store: Store) -> None:
    """Gateways that batch write one JSON array of all they heard, 5 kB for 31 adverts: the
    SOS among them is an alarm, and every band in it is seen."""
    spec = definition("minew-ble-jsonlines")
    recorder = Recorder(store, port="p", station="s", definition=spec.name, record_timeout_s=5)
    h = framed_handler(spec, recorder, frame_timeout_s=1.0, silence_s=None)
    ibeacon = "0201061AFF4C000215E2C56DB5DFFB48D2B060D0F5A71096E000010002C5"
    batch: list[dict[str, object]] = [{"type": "Gateway", "mac": "AC233FA00001"}]
    batch += [
        {
            "timestamp": "2025-09-25T14:12:04.123Z",
            "type": "iBeacon",
            "mac": f"AC233FA1{n:04X}",
            "bleName": "",
            "rssi": -61,
            "rawData": ibeacon,
        }
        for n in range(30)
    ]
    batch.append({"type": "Unknown", "mac": "AC233FA00002", "rssi": -61, "rawData": BTHOME_PRESS})
    line = json.dumps(batch).encode() + b"\n"
    assert len(line) > 5000
    h.on_data(line, 100.0)
    eventually(lambda: len(stored(store.path, "alarm.sos")) == 1, timeout=5)
    eventually(lambda: len(stored(store.path, "wristband.seen")) == 31, timeout=5)
    (sos,) = stored(store.path, "alarm.sos")
    assert (sos["data"]["device"], sos["data"]["station"]) == ("AC233FA00002", "AC233FA00001")
    assert recorder.stats.rejected == {}


def test_a_ble_gateway_s_station_is_forgotten_when_its_port_goes_down(store: Store) -> None:
    """Another BLE gateway may be behind the port after a reopen: until one announces itself,
    its adverts are the port's station's, not those of the gateway heard before."""
    spec = definition("minew-ble-jsonlines")
    recorder = Recorder(store, port="p", station="s", definition=spec.name, record_timeout_s=5)
    h = framed_handler(spec, recorder, frame_timeout_s=1.0, silence_s=None)

    def heard(band: str) -> bytes:
        return json.dumps({"mac": band, "rssi": -61, "rawData": BTHOME_PRESS}).encode() + b"\n"

    h.on_data(b'{"type":"Gateway","mac":"AC233FA00001"}\n' + heard("C30000000001"), 100.0)
    h.on_down("read: device disconnected")
    h.on_up(3.0)
    h.on_data(heard("C30000000002"), 104.0)
    h.on_data(b'{"type":"Gateway","mac":"AC233FA00002"}\n' + heard("C30000000003"), 105.0)
    eventually(lambda: len(stored(store.path, "alarm.sos")) == 3, timeout=5)
    assert [e["data"]["station"] for e in stored(store.path, "alarm.sos")] == [
        "AC233FA00001",
        "s",
        "AC233FA00002",
    ]


@pytest.mark.parametrize("second", ["aa55-reference.toml", "./aa55-reference.toml"])
def test_a_band_heard_by_two_stations_raises_one_alarm(
    tmp_path: Path, store: Store, second: str
) -> None:
    """Base stations whose coverage overlaps all hear a band's SOS (the same band and seq):
    the platform gets one alarm, from the station that heard it first, while every station's
    sighting of the band is kept (where it is heard, and how well). Also with the one file
    named two ways in the config (it made two repeat filters, and two alarms)."""
    ptys = [Pty(tmp_path / f"ttyBASE{i}") for i in (1, 2)]
    section = DevicesSection(
        definitions_dir=CONFIGS,
        ports=[
            PortConfig(name=f"hall-{i}", definition=name, url=str(pty.path))
            for i, (pty, name) in enumerate(
                zip(ptys, ["aa55-reference.toml", second], strict=True), 1
            )
        ],
    )
    services = build_services(section, store)
    for service in services:
        service.start()
    try:
        for service in services:
            eventually(lambda s=service: s.health()["link"]["state"] == "up")  # type: ignore[misc]
        ptys[0].write(frame(2, 7) + frame(0, 8))
        eventually(lambda: len(stored(store.path, "wristband.seen")) == 1)
        ptys[1].write(frame(2, 7) + frame(0, 8))  # the same radio transmissions, a hall away
        eventually(lambda: len(stored(store.path, "wristband.seen")) == 2)
        ptys[1].write(frame(2, 9))  # a second press, heard by one station: a second alarm
        eventually(lambda: len(stored(store.path, "alarm.sos")) == 2)
    finally:
        for service in services:
            service.stop()
        for pty in ptys:
            pty.close()
    sos = stored(store.path, "alarm.sos")
    assert [(e["data"]["seq"], e["data"]["port"]) for e in sos] == [(7, "hall-1"), (9, "hall-2")]
    seen = stored(store.path, "wristband.seen")
    assert sorted(e["data"]["port"] for e in seen) == ["hall-1", "hall-2"]
    assert [s.health()["duplicates"] for s in services] == [0, 1]


def test_a_line_after_a_quiet_spell_that_ended_an_overlong_one_is_acked(store: Store) -> None:
    """Noise with no line end (a receiver's banner at the wrong baud rate) is refused as too
    long; the frame timeout ends it, so the emergency call sent after a pause is not taken
    for the rest of the noise."""
    spec = definition("contact-id-serial")
    recorder = Recorder(store, port="p", station="s", definition=spec.name, record_timeout_s=5)
    h = framed_handler(spec, recorder, frame_timeout_s=1.0, silence_s=None)
    sent = replying(h)
    h.on_data(b"\x00" * 70, 0.0)
    assert h.idle_due(0.0) == 1.0
    h.on_idle(5.0)
    h.on_data(contact_id_line("1234", "1", "101", "01", "015"), 20.0)
    assert sent == [ACK]
    (sos,) = stored(store.path, "alarm.sos")
    assert sos["data"]["device"] == "1234-015"
    assert recorder.stats.rejected == {"too_long": 1}
