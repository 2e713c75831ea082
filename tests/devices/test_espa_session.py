"""A full ESPA 4.4.4 session over a pty pair, the gateway as paging system '2' at 7E1."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.devices import espa
from gateway.devices.config import PortConfig
from gateway.devices.decoders.espa import decode_block
from gateway.devices.definitions import EspaSpec
from gateway.devices.espa import EspaSession
from gateway.devices.framers.espa import ACK, EOT, NAK, PARITY_ERROR
from gateway.devices.model import Decoded
from gateway.devices.recorder import Recorder
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
    # the poll; the selection and the block; the corrupt block
    assert health["replies"] == {"EOT": 1, "ACK": 2, "NAK": 1}


def test_a_block_outside_a_session_is_recorded_answered_and_counted(
    session: tuple[Pty, PortService], store: Store
) -> None:
    """A block that comes unselected (the selection lost to noise, a restart mid-session) is
    still a nurse call: kept and ACKed, so the master does not send it a second time, and
    counted, so an installer sees that the line's sessions and ours disagree."""
    pty, service = session
    master = EspaMaster(pty)
    pty.write(espa_block(CALL))  # no selection before it
    assert master.reply() == ACK
    assert len(stored(store.path, "alarm.sos")) == 1
    assert master.select()
    pty.write(espa_block([("1", "0816"), *CALL[1:]]))
    assert master.reply() == ACK
    master.end()
    assert [e["data"]["device"] for e in stored(store.path, "alarm.sos")] == ["0815", "0816"]
    health = service.health()
    assert health["unselected"] == 1
    assert health["replies"] == {"EOT": 0, "ACK": 3, "NAK": 0}


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


def test_a_noise_byte_does_not_make_the_gateway_deaf(
    session: tuple[Pty, PortService], store: Store
) -> None:
    pty, service = session
    master = EspaMaster(pty)
    pty.write(b"\x01")  # one noise SOH on the idle line
    assert master.select()  # its EOT ends the "block" the SOH began
    assert master.send_block(espa_block(CALL)) == ACK
    master.end()
    assert len(stored(store.path, "alarm.sos")) == 1
    assert service.health()["rejected"] == {"truncated": 1}


def test_the_ports_frame_timeout_drops_a_cut_block(tmp_path: Path, store: Store) -> None:
    """frame_timeout_s set on an ESPA port is the time a block has from its SOH: a block cut
    off is NAKed after it (not after the definition's 3 s), and the master's resend is taken."""
    pty = Pty(tmp_path / "nursecall", "7E1")
    cfg = PortConfig(
        name="nurse", definition="espa444-nurse-call.toml", url=str(pty.path), frame_timeout_s=0.5
    )
    service = PortService(cfg, definition("espa444-nurse-call"), store, 10.0)
    service.start()
    try:
        eventually(lambda: service.link.stats.state == "up")
        master = EspaMaster(pty)
        assert master.select()
        block = espa_block(CALL)
        pty.write(block[:10])
        cut = time.monotonic()
        assert master.reply() == NAK
        assert time.monotonic() - cut < 2.0
        assert master.send_block(block) == ACK
        master.end()
    finally:
        service.stop()
        pty.close()
    assert len(stored(store.path, "alarm.sos")) == 1
    assert service.health()["rejected"] == {"truncated": 1}


def test_an_8bit_gbk_call_whose_bcc_is_ff_is_taken(tmp_path: Path, store: Store) -> None:
    """On an 8N1 port (GBK text, as devices.md says to set it up) 0xFF is a byte like any
    other: a call whose BCC comes out as 0xFF is ACKed and stored, not NAKed as bad parity
    on every retry until the master gives up."""
    shipped = definition("espa444-nurse-call")
    assert shipped.espa is not None
    gbk = shipped.model_copy(update={"espa": shipped.espa.model_copy(update={"encoding": "gbk"})})
    pty = Pty(tmp_path / "nursecall", "8N1")
    cfg = PortConfig(
        name="nurse", definition="espa444-nurse-call.toml", url=str(pty.path), format="8N1"
    )
    service = PortService(cfg, gbk, store, 10.0)
    service.start()
    block = espa_block([("1", "0001"), ("2", "1床 丂奶奶 呼叫"), ("4", "3")], encoding="gbk")
    assert block[-1] == 0xFF
    try:
        eventually(lambda: service.link.stats.state == "up")
        master = EspaMaster(pty)
        assert master.select()
        assert master.send_block(block, retries=0) == ACK
        master.end()
    finally:
        service.stop()
        pty.close()
    (call,) = stored(store.path, "alarm.sos")
    assert (call["data"]["device"], call["data"]["text"]) == ("0001", "1床 丂奶奶 呼叫")
    assert service.health()["rejected"] == {}


# ---- the session's timing and refusals, with the clock in the test's hand --------------------

SELECT = b"\x041\x052\x05"  # EOT, the master '1' identifies itself, selects us ('2')


def session_at(
    store: Store, now: Callable[[], float] = time.monotonic
) -> tuple[EspaSession, list[int]]:
    """At 9600 baud 7E1: a character takes 1/960 s."""
    spec = definition("espa444-nurse-call").espa
    assert isinstance(spec, EspaSpec)
    recorder = Recorder(store, port="nurse", station="nurse", definition="espa", record_timeout_s=5)
    handler = EspaSession(spec, recorder, silence_s=None, char_s=1 / 960, now=now)
    sent: list[int] = []

    def write(data: bytes) -> bool:
        sent.extend(data)
        return True

    handler.write = write
    return handler, sent


def test_a_call_the_site_ignores_is_acked_though_it_has_a_flaw(store: Store) -> None:
    """A call of a type the site maps to "ignore", with a data id the definition does not
    know: ACKed like the same call of a recorded type, not NAKed for the master to send it
    three times over, holding the half-duplex line from the calls behind it."""
    spec = definition("espa444-nurse-call").espa
    assert isinstance(spec, EspaSpec)
    spec = spec.model_copy(update={"call_types": {**spec.call_types, "4": "ignore"}})
    recorder = Recorder(store, port="nurse", station="nurse", definition="espa", record_timeout_s=5)
    s = EspaSession(spec, recorder, silence_s=None, char_s=1 / 960, now=lambda: 0.0)
    sent: list[int] = []
    s.write = lambda data: bool(sent.extend(data)) or True
    s.on_data(SELECT, 0.0)
    s.on_data(espa_block([("1", "0815"), ("4", "4"), ("9", "x")]), 0.5)
    assert sent == [ACK, ACK]
    assert stored(store.path) == [] and recorder.stats.ignored == 1
    assert recorder.stats.rejected == {"unknown_field": 1}


def test_a_partial_block_times_out_from_its_soh(store: Store) -> None:
    s, sent = session_at(store)
    s.on_data(b"\x01", 0.0)  # noise, then more noise every second: never 3 s of quiet
    for t in (1.0, 2.0, 2.9):
        s.on_data(b"0", t)
        s.on_idle(t + 0.05)
    s.on_idle(3.0)
    assert s.recorder.stats.rejected == {"truncated": 1}
    s.on_data(b"1\x052\x05", 3.1)  # a select without the leading EOT
    assert sent == [ACK]
    block = espa_block(CALL)
    s.on_data(block[:10], 5.0)  # a block of its own, slow but within 3 s of its SOH
    s.on_idle(7.0)
    s.on_data(block[10:], 7.5)
    assert sent == [ACK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 1


def test_a_damaged_block_outside_a_session_is_naked_at_once(store: Store) -> None:
    """As a good block outside a session is ACKed, a damaged one is NAKed: unanswered, the
    master would wait out its response timeout before it sends the call again. What is no
    whole block (noise, a block cut short) gets no answer outside a session."""
    s, sent = session_at(store)
    block = espa_block(CALL)
    s.on_data(corrupt(block), 0.0)
    assert sent == [NAK]
    s.on_data(block[:6] + bytes([PARITY_ERROR]) + block[7:], 0.1)
    assert sent == [NAK, NAK]
    s.on_data(b"\x7f" + block[:10] + b"\x04", 0.2)
    assert sent == [NAK, NAK]
    s.on_data(block, 0.3)
    assert sent == [NAK, NAK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 1
    assert s.recorder.stats.rejected == {"bad_bcc": 1, "parity": 1, "garbage": 1, "truncated": 1}
    assert s.unselected == 3


def test_eot_in_a_block_is_the_master_giving_up_and_enq_aborts_it(store: Store) -> None:
    s, sent = session_at(store)
    block = espa_block(CALL)
    s.on_data(SELECT, 0.0)
    s.on_data(block[:10] + b"\x04", 0.5)  # the master abandons the block: no reply owed
    assert (sent, s.state) == ([ACK], "neutral")
    s.on_data(SELECT, 1.0)
    s.on_data(block[:10] + b"\x05", 1.5)  # the master aborts the block: NAK, it sends again
    assert sent == [ACK, ACK, NAK]
    s.on_data(block, 1.6)
    assert sent == [ACK, ACK, NAK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 1
    assert s.recorder.stats.rejected == {"truncated": 2}


def test_a_fault_on_a_block_is_naked_and_the_retry_acked(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    faults = [KeyError("a bug of ours")]

    def faulty_once(raw: bytes, spec: EspaSpec) -> Decoded:
        if faults:
            raise faults.pop()
        return decode_block(raw, spec)

    monkeypatch.setattr(espa, "decode_block", faulty_once)
    s, sent = session_at(store)
    s.on_data(SELECT, 0.0)
    s.on_data(espa_block(CALL), 0.5)
    assert sent == [ACK, NAK]
    s.on_data(espa_block(CALL) + b"\x04", 0.6)
    assert (sent, s.state) == ([ACK, NAK, ACK], "neutral")
    assert len(stored(store.path, "alarm.sos")) == 1
    assert s.recorder.stats.rejected == {"decode_error": 1}
    (logged,) = [r.getMessage() for r in caplog.records if "decode_error" in r.getMessage()]
    assert "KeyError at gateway.devices.espa:" in logged  # where to look, for a bug report
    assert "SOS" not in logged and "53 4f 53" not in logged  # never the call's display text


def test_a_call_acked_late_is_recorded_once_and_the_masters_resend_acked(
    tmp_path: Path, store: Store
) -> None:
    """The store took longer than the master's response timeout (a slow SD card): the master
    sent the block again while the gateway was still committing it. The platform gets one
    alarm.sos; the resend is ACKed; the same call sent again after the exchange is a new one."""
    pty = Pty(tmp_path / "nursecall", "7E1")
    cfg = PortConfig(
        name="nurse", definition="espa444-nurse-call.toml", url=str(pty.path), baudrate=1200
    )
    service = PortService(cfg, definition("espa444-nurse-call"), store, 10.0)
    service.start()
    slow_disk = threading.Event()
    try:
        eventually(lambda: service.link.stats.state == "up")
        master = EspaMaster(pty)
        assert master.select()
        block = espa_block(CALL)
        busy = store.write(lambda _conn: slow_disk.wait(10))
        pty.write(block)
        assert pty.read(1, timeout=0.5) == b""  # the master's response timeout, shortened
        pty.write(block)  # its resend, while the gateway still waits for the store
        slow_disk.set()
        busy.result(5)
        assert (master.reply(), master.reply()) == (ACK, ACK)
        master.end()
        time.sleep(0.4)  # 45 characters at 1200 baud: EOT, a new selection and the block
        assert master.select()
        assert master.send_block(block, retries=0) == ACK  # the same call, a new one
        master.end()
    finally:
        service.stop()
        pty.close()
    assert [c["data"]["device"] for c in stored(store.path, "alarm.sos")] == ["0815", "0815"]
    assert service.health()["duplicates"] == 1


def test_only_a_resend_sent_before_the_late_ack_could_arrive_is_taken_for_one(store: Store) -> None:
    """The block's 41 characters take 42.7 ms at 9600 baud: a copy complete sooner after the
    ACK was on its way before the master heard it; one complete later is a call of its own."""
    clock = [0.0]
    s, sent = session_at(store, lambda: clock[0])
    block = espa_block(CALL)
    assert len(block) == 41
    s.on_data(SELECT, 0.0)
    clock[0] = 3.5  # the commit returned 3.5 s after the block came
    s.on_data(block, 0.05)
    s.on_data(block, 3.54)  # the master's resend, waiting when the ACK went out
    assert sent == [ACK, ACK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 1
    s.on_data(block, 3.55)  # the master had the ACK and sent the call again
    s.on_data(b"\x04", 3.6)
    assert sent == [ACK, ACK, ACK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 2
    assert s.recorder.stats.duplicates == 1


def test_a_call_sent_anew_on_hearing_the_ack_is_recorded_though_the_ack_write_returned_late(
    store: Store,
) -> None:
    """The ACK left at once, but the port's thread ran again only 30 ms later (a busy Pi):
    the master, having heard the ACK, sent the same call again, complete before the thread
    was back. That block is a call of its own, not a resend."""
    clock = [3.5]  # the commit returned 3.5 s after the block came
    s, sent = session_at(store, lambda: clock[0])

    def write(data: bytes) -> bool:
        sent.extend(data)
        clock[0] += 0.03
        return True

    block = espa_block(CALL)
    s.on_data(SELECT, 0.0)
    s.write = write
    s.on_data(block, 0.05)
    heard = 3.5 + 1 / 960  # the ACK is one character on the line
    s.on_data(block, heard + len(block) / 960 + 0.001)
    assert sent == [ACK, ACK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 2
    assert s.recorder.stats.duplicates == 0


def test_a_virtual_nurse_call_system_is_a_port_the_gateway_opens(
    tmp_path: Path, store: Store
) -> None:
    """`simulate espa --pty LINK`: an installer tries a nurse-call port's config with no
    nurse-call system at hand; the gateway opens LINK at 7E1 and acknowledges every call."""
    link = tmp_path / "ttyNURSE"
    cmd = [sys.executable, "-m", "gateway", "simulate", "espa", "--pty", str(link)]
    cmd += ["--calls", "5", "--interval", "0.2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert "virtual nurse-call control station at" in proc.stderr.readline()
    cfg = PortConfig(name="nurse", definition="espa444-nurse-call.toml", url=str(link))
    service = PortService(cfg, definition("espa444-nurse-call"), store, 10.0)
    service.start()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        service.stop()
    assert proc.returncode == 0, err
    # a call under way while the gateway opened the port goes unanswered, and is tried again
    assert [line for line in err.splitlines() if line.endswith(": ACK")] == [
        f"call {i}: ACK" for i in range(1, 6)
    ]
    calls = stored(store.path, "alarm.sos")
    assert len(calls) == 5
    assert {c["data"]["port"] for c in calls} == {"nurse"}
    assert service.health()["rejected"] == {}
    assert not link.exists(), "the simulator removes its port when it ends"


def test_an_adapter_pulled_in_a_session_ends_it_with_no_reply_owed(
    session: tuple[Pty, PortService], store: Store
) -> None:
    """Unplugged between the selection and the end of a block: no NAK can go out (health says
    none went), and the port comes back neutral, so the master's poll is a poll (EOT), not
    taken for the selection of the session the outage ended."""
    pty, service = session
    master = EspaMaster(pty)
    assert master.select()
    before = service.link.stats.bytes_in
    pty.write(espa_block(CALL)[:10])
    eventually(lambda: service.link.stats.bytes_in == before + 10)
    pty.unplug()
    eventually(lambda: service.link.stats.state == "down")
    pty.replug()
    eventually(lambda: service.link.stats.state == "up")
    assert service.health()["replies"] == {"EOT": 0, "ACK": 1, "NAK": 0}
    pty.write(b"2\x05")
    assert pty.read() == bytes([EOT])
    assert master.call("0815", "SOS ROOM 12")
    assert len(stored(store.path, "alarm.sos")) == 1
    health = service.health()
    assert health["replies"] == {"EOT": 1, "ACK": 3, "NAK": 0}
    assert health["rejected"] == {"truncated": 1}


def test_another_station_on_a_shared_line_has_its_exchange_to_itself(store: Store) -> None:
    """The master polls station 3, absent, then us: a poll, answered EOT, not a selection.
    It selects station 3 and sends it a page: not a nurse call of ours, and our ACK would
    collide with station 3's. An identification the master did not follow up is forgotten."""
    s, sent = session_at(store)
    s.on_data(b"\x043\x05", 0.0)
    s.on_idle(4.0)
    s.on_data(b"2\x05", 4.0)
    assert sent == [EOT]
    s.on_data(b"\x041\x053\x05\x06", 5.0)  # station 3 answers the selection
    s.on_data(espa_block(CALL) + b"\x06\x04", 5.2)  # its page, its ACK, the master's EOT
    assert sent == [EOT]
    assert stored(store.path, "alarm.sos") == [] and s.for_others == 1
    s.on_data(b"\x041\x05", 6.0)
    s.on_idle(9.5)  # no selection followed
    s.on_data(b"2\x05", 9.5)
    assert sent == [EOT, EOT]
    s.on_data(SELECT, 10.0)
    s.on_data(espa_block(CALL), 10.2)
    assert sent == [EOT, EOT, ACK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 1 and s.unselected == 0


def test_a_control_station_identifying_with_another_address_still_selects_us(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A site whose master is '3', not the usual '1': its '3 ENQ 2 ENQ' was taken for a poll
    of station 3 and then one of us, answered EOT, and not one call got through."""
    s, sent = session_at(store)
    s.on_data(b"\x043\x052\x05", 0.0)
    s.on_data(espa_block(CALL), 0.2)
    assert sent == [ACK, ACK]
    assert len(stored(store.path, "alarm.sos")) == 1 and s.unselected == 0
    assert "'3 ENQ' came right before our address, not master_address '1'" in caplog.text
    s.on_data(b"\x04", 1.0)
    s.on_data(b"3\x05", 2.0)  # a poll of station 3, absent: the master waits, then polls us
    s.on_data(b"2\x05", 3.0)
    assert sent == [ACK, ACK, EOT]


def test_at_110_baud_a_control_station_with_another_address_still_selects_us(
    store: Store,
) -> None:
    """Each character read on its own at 110 baud 7E2 (0.1 s a character): our address and
    ENQ came 0.2 s after the other address's ENQ, past a fixed 0.1 s, and every selection
    was answered EOT."""
    spec = definition("espa444-nurse-call").espa
    assert isinstance(spec, EspaSpec)
    recorder = Recorder(store, port="nurse", station="nurse", definition="espa", record_timeout_s=5)
    s = EspaSession(spec, recorder, silence_s=None, char_s=11 / 110, now=lambda: 0.0)
    sent: list[int] = []
    s.write = lambda data: bool(sent.extend(data)) or True
    for i, byte in enumerate(b"\x043\x052\x05"):
        s.on_data(bytes([byte]), i * 0.1)
    assert sent == [ACK]


def test_the_masters_resend_of_a_page_for_a_slow_station_is_not_taken_for_ours(
    store: Store,
) -> None:
    """Station 3 takes longer than the master's response timeout to ACK its page, and the
    master sends it again: still station 3's, not a call outside a session of ours."""
    s, sent = session_at(store)
    s.on_data(b"\x041\x053\x05", 0.0)
    s.on_data(b"\x06", 0.05)
    s.on_data(espa_block(CALL), 0.1)
    s.on_idle(3.1)
    s.on_data(espa_block(CALL), 3.1)
    s.on_data(b"\x06\x04", 4.0)
    assert sent == [] and stored(store.path, "alarm.sos") == []
    assert (s.for_others, s.unselected, s.state) == (2, 0, "neutral")
