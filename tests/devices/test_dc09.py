"""The DC-09 receiver over real TCP and UDP sockets, with our simulator and dc09-spt as peers."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from gateway.devices.config import AccountKey, Dc09Receiver
from gateway.devices.dc09 import Dc09Service
from gateway.devices.decoders import dc09
from gateway.devices.model import Decoded, Kind
from gateway.devices.simulate import Dc09Transmitter
from gateway.lifecycle import StartupError
from gateway.store import Store
from tests.devices.conftest import definition, stored
from tests.devices.support import failing_inserts
from tests.support.wait import eventually

KEY = bytes(range(16))


@pytest.fixture
def receiver(store: Store) -> Iterator[Dc09Service]:
    cfg = Dc09Receiver(
        name="hubs",
        definition="dc09-receiver.toml",
        host="127.0.0.1",
        port=0,
        keys=[AccountKey(account="5678", key=KEY.hex())],  # type: ignore[arg-type]
    )
    service = Dc09Service(cfg, definition("dc09-receiver"), store, 10.0)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def reply_of(raw: bytes, key: bytes = KEY) -> dc09.Dc09Message:
    return dc09.parse(raw.decode("latin-1").strip("\n\r"), {"5678": key, "4321": key})


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_event_acked_after_store_and_retry_not_doubled(
    receiver: Dc09Service, store: Store, udp: bool
) -> None:
    panel = Dc09Transmitter("127.0.0.1", receiver.port, "1234", udp=udp)
    try:
        msg = panel.message("ADM-CID", "#1234|1101 01 015")
        reply = panel.exchange(msg)
        assert reply_of(reply).id == "ACK"
        assert reply_of(reply).seq == panel.seq
        (sos,) = stored(store.path, "alarm.sos")  # committed before the ACK left
        assert panel.exchange(msg) == reply  # a retry after a lost ACK: ACKed, not re-recorded
        assert len(stored(store.path, "alarm.sos")) == 1
        assert reply_of(panel.link_test()).id == "ACK"
    finally:
        panel.close()
    data = sos["data"]
    assert (data["device"], data["code"], data["seq"]) == ("1234-015", "101", 1)
    assert data["ids"]["zone"] == "015" and data["ids"]["dc09_id"] == "ADM-CID"
    assert stored(store.path, "device.status")[0]["data"]["name"] == "link_test"
    assert receiver.health()["duplicates"] == 1


def test_panels_sending_at_once_do_not_wait_in_line_for_each_others_commits(
    receiver: Dc09Service, store: Store
) -> None:
    """The SD card stalls on a commit: the alarms of three panels that come meanwhile wait
    side by side and share the next commit. (One at a time, the third panel heard its ACK
    after three commits, and panels past their ACK timeout resend, lengthening the line.)"""
    held, release = threading.Event(), threading.Event()
    store.write(lambda _conn: held.set() or release.wait(10))  # the stalled commit
    held.wait(10)
    panels = [Dc09Transmitter("127.0.0.1", receiver.port, f"12{n}4") for n in range(3)]
    replies: list[bytes] = []
    senders = [
        threading.Thread(
            target=lambda p=p: replies.append(
                p.exchange(p.message("ADM-CID", f"#{p.account}|1101 01 015"))
            )
        )
        for p in panels
    ]
    try:
        for sender in senders:
            sender.start()
        eventually(lambda: store._queue.qsize() == 3)  # all three wait for the card at once
        commits = store.commits
        release.set()
        for sender in senders:
            sender.join(10)
    finally:
        for panel in panels:
            panel.close()
    assert sorted(reply_of(r).id for r in replies) == ["ACK"] * 3
    assert store.commits - commits <= 2  # the stalled one, then one for the three
    assert len(stored(store.path, "alarm.sos")) == 3


def test_a_retry_over_another_connection_waits_for_the_first_try_to_be_stored(
    receiver: Dc09Service, store: Store
) -> None:
    """The panel gave up on its first connection while the commit stalled and sent the same
    message again over a new one: the retry is not ACKed before the first try is stored, nor
    recorded a second time once it is."""
    held, release = threading.Event(), threading.Event()
    store.write(lambda _conn: held.set() or release.wait(10))
    held.wait(10)
    first = Dc09Transmitter("127.0.0.1", receiver.port, "1234")
    again = Dc09Transmitter("127.0.0.1", receiver.port, "1234")
    msg = first.message("ADM-CID", "#1234|1101 01 015")
    replies: list[bytes] = []
    try:
        tries = [
            threading.Thread(target=lambda t=t: replies.append(t.exchange(msg)))
            for t in (first, again)
        ]
        tries[0].start()
        eventually(lambda: store._queue.qsize() == 1)
        tries[1].start()
        time.sleep(0.3)  # the retry has arrived, and waits
        assert replies == []
        release.set()
        for t in tries:
            t.join(10)
    finally:
        first.close()
        again.close()
    assert [reply_of(r).id for r in replies] == ["ACK", "ACK"]
    assert len(stored(store.path, "alarm.sos")) == 1 and receiver.health()["duplicates"] == 1


def test_a_restarted_panel_counting_from_0001_again_is_not_taken_for_repeats(
    receiver: Dc09Service, store: Store
) -> None:
    """Its sequence numbers repeat those of its last minutes; its messages do not."""
    start = datetime.now(UTC) - timedelta(seconds=25)  # within the receiver's time window
    before = Dc09Transmitter("127.0.0.1", receiver.port, "1234", clock=lambda: start)
    after = Dc09Transmitter(
        "127.0.0.1", receiver.port, "1234", clock=lambda: start + timedelta(seconds=20)
    )
    try:
        sent = before.message("ADM-CID", "#1234|1101 01 015")
        assert reply_of(before.exchange(sent)).id == "ACK"
        again = after.message("ADM-CID", "#1234|1101 01 015")  # seq 0001 again, 20 s later
        assert reply_of(after.exchange(again)).id == "ACK"
        assert reply_of(after.exchange(again)).id == "ACK"  # its own retry
    finally:
        before.close()
        after.close()
    assert [e["data"]["seq"] for e in stored(store.path, "alarm.sos")] == [1, 1]
    assert receiver.health()["duplicates"] == 1


def test_bad_crc_nak_with_time_and_an_unmapped_code_taken_as_a_device_alarm(
    receiver: Dc09Service, store: Store
) -> None:
    """An unmapped code may be a vendor's fall code: DUH would have the panel drop it."""
    panel = Dc09Transmitter("127.0.0.1", receiver.port, "1234")
    try:
        good = panel.message("ADM-CID", "#1234|1101 01 015")
        broken = good[:1] + b"0000" + good[5:]
        nak = panel.exchange(broken)
        assert b'"NAK"0000R0L0A0[]_' in nak
        stamp = datetime.strptime(nak[-20:-1].decode(), dc09.TS_FORMAT).replace(tzinfo=UTC)
        assert abs((stamp - datetime.now(UTC)).total_seconds()) < 5
        assert reply_of(panel.cid("1", "999", "001")).id == "ACK"
        stale = Dc09Transmitter(
            "127.0.0.1",
            receiver.port,
            "1234",
            clock=lambda: datetime.now(UTC) - timedelta(minutes=5),
        )
        try:
            assert b'"NAK"' in stale.cid("1", "101", "002")
        finally:
            stale.close()
    finally:
        panel.close()
    assert stored(store.path, "alarm.") == []
    (unmapped,) = stored(store.path, "device.alarm")
    assert unmapped["data"]["name"] == "unmapped code 999" and unmapped["data"]["code"] == "999"
    assert receiver.health()["rejected"] == {
        "bad_crc": 1,
        "unknown_code": 1,
        "bad_timestamp": 1,
    }


def test_udp_datagrams_that_are_not_dc09_get_no_reply_but_dc09_errors_still_do(
    receiver: Dc09Service, store: Store
) -> None:
    """A datagram's source address can be forged: answering junk would send our replies to a
    third party. A DC-09 message with a bad CRC is still NAKed (the panel resends), and one
    with a good CRC but a body we cannot use still gets its DUH, over TCP as before."""
    panel = Dc09Transmitter("127.0.0.1", receiver.port, "1234", udp=True)
    good = panel.message("ADM-CID", "#1234|1101 01 015")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", receiver.port))
        for junk in (
            b"\x00" * 8,  # a scan
            b"GET / HTTP/1.1\r\n\r\n",
            b'\n00000000"' + b"A" * 40 + b"\r",  # a CRC/length header, then no DC-09 body
        ):
            sock.send(junk)
        sock.send(good[:1] + b"0000" + good[5:])  # a DC-09 message with a bad CRC
        assert b'"NAK"0000R0L0A0[]_' in sock.recv(4096)  # the first reply is to that one
        sock.send(good)
        assert reply_of(sock.recv(4096)).id == "ACK"
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as tcp:
        tcp.sendall(b"GET / HTTP/1.1\r\n")
        assert b'"DUH"' in tcp.recv(4096)
    assert len(stored(store.path, "alarm.sos")) == 1
    health = receiver.health()
    assert health["unanswered"] == 3
    assert health["replies"] == {"ACK": 1, "NAK": 1, "DUH": 1}
    assert health["rejected"] == {"bad_format": 3, "bad_crc": 2}


def test_a_sia_code_the_file_does_not_map_is_taken_alone_or_beside_a_mapped_one(
    receiver: Dc09Service, store: Store
) -> None:
    """A fire alarm (FA) nobody mapped: DUHed, the panel drops it; beside a medical alarm in
    the same message, it was ACKed with the message and never recorded."""
    panel = Dc09Transmitter("127.0.0.1", receiver.port, "1234")
    try:
        assert reply_of(panel.exchange(panel.message("SIA-DCS", "#1234|Nri1/FA007"))).id == "ACK"
        both = panel.message("SIA-DCS", "#1234|Nri1/MA015/FA008")
        assert reply_of(panel.exchange(both)).id == "ACK"
    finally:
        panel.close()
    assert [e["data"]["device"] for e in stored(store.path, "alarm.sos")] == ["1234-015"]
    fires = stored(store.path, "device.alarm")
    assert [(e["data"]["device"], e["data"]["name"]) for e in fires] == [
        ("1234-007", "unmapped code FA"),
        ("1234-008", "unmapped code FA"),
    ]
    assert receiver.health()["rejected"] == {"unknown_code": 2}  # to be added to the file


def test_encrypted_account_and_sia_dcs(receiver: Dc09Service, store: Store) -> None:
    panel = Dc09Transmitter("127.0.0.1", receiver.port, "5678", key=KEY)
    try:
        reply = panel.exchange(panel.message("SIA-DCS", "#5678|Nri1/MA015^BEDROOM^"))
        assert reply[10:11] == b"*"  # an encrypted account gets an encrypted ACK
        assert reply_of(reply).id == "ACK"
        panel.exchange(panel.message("SIA-DCS", "#5678|Nri1/MH015"))
    finally:
        panel.close()
    (sos,) = stored(store.path, "alarm.sos")
    (restore,) = stored(store.path, "alarm.restore")
    assert sos["data"]["text"] == "BEDROOM" and sos["data"]["ids"]["area"] == "1"
    assert sos["data"]["ids"]["encrypted"] is True
    assert restore["data"]["restores"] == "sos"


def test_a_panel_with_the_wrong_key_is_told_so_and_counted_as_bad_decrypt(
    receiver: Dc09Service, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every message refused as not decrypting: none NAKed as if the panel's clock were off,
    none taken for a message and counted as a frame. (Random padding made repeatable.)"""
    pad = random.Random(9)
    monkeypatch.setattr(dc09, "_pad", lambda n: "".join(pad.choices("ABCDEFGH", k=n)))
    sent_at = datetime(2025, 9, 25, 14, 12, 4, tzinfo=UTC)
    panel = Dc09Transmitter(
        "127.0.0.1", receiver.port, "5678", key=bytes(16), clock=lambda: sent_at
    )
    try:
        replies = {panel.cid("1", "101", f"{n:03d}").split(b'"')[1] for n in range(300)}
    finally:
        panel.close()
    assert replies == {b"DUH"}
    health = receiver.health()
    assert (health["rejected"], health["frames"]) == ({"bad_decrypt": 300}, 0)
    assert stored(store.path, "alarm.") == []


def test_plaintext_for_an_account_with_a_key_is_refused_and_cannot_steal_a_seq(
    receiver: Dc09Service, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the key, nobody may raise or cancel this panel's alarms, nor take the
    sequence number of its next real alarm so that it is dropped as a repeat."""
    intruder = Dc09Transmitter("127.0.0.1", receiver.port, "5678")  # no key
    panel = Dc09Transmitter("127.0.0.1", receiver.port, "5678", key=KEY)
    try:
        for data in ("#5678|Nri1/MA015^Mr Li Lei bed 3^", "#5678|Nri1/MH015"):
            assert reply_of(intruder.exchange(intruder.message("SIA-DCS", data, seq=77))).id == (
                "DUH"
            )
        real = panel.exchange(panel.message("SIA-DCS", "#5678|Nri1/MA015^BEDROOM^", seq=77))
        assert reply_of(real).id == "ACK"
        garbled = panel.exchange(panel.message("SIA-DCS", "#5678|Nri1/ZZ^Mr Li Lei bed 3^x"))
        assert reply_of(garbled).id == "DUH"
    finally:
        intruder.close()
        panel.close()
    (sos,) = stored(store.path, "alarm.sos")
    assert sos["data"]["text"] == "BEDROOM" and stored(store.path, "alarm.restore") == []
    assert receiver.health()["rejected"]["not_encrypted"] == 2
    assert "Li Lei" not in caplog.text  # a decrypted display text is never logged


def test_a_keyed_account_inside_another_accounts_message_is_refused(
    receiver: Dc09Service, store: Store
) -> None:
    """Events take their account from the data (``[#5678|...]``), not the header: a message
    under another account, plaintext or encrypted with another key, must not carry a keyed
    panel's alarms either."""
    KEY2 = bytes(range(16, 32))
    receiver.handler.keys["4321"] = KEY2
    spoofer = Dc09Transmitter("127.0.0.1", receiver.port, "9999")  # no key
    other = Dc09Transmitter("127.0.0.1", receiver.port, "4321", key=KEY2)
    try:
        forged = [
            spoofer.message("SIA-DCS", "#5678|Nri1/MH015"),
            spoofer.message("ADM-CID", "#5678|1101 01 015"),
            other.message("SIA-DCS", "#5678|Nri1/MA015"),
        ]
        assert [reply_of(spoofer.exchange(m)).id for m in forged[:2]] == ["DUH", "DUH"]
        assert reply_of(other.exchange(forged[2]), KEY2).id == "DUH"
        # an unkeyed account named inside an unkeyed header is the panel's own business
        assert reply_of(spoofer.exchange(spoofer.message("SIA-DCS", "#1111|Nri1/MA015"))).id == (
            "ACK"
        )
    finally:
        spoofer.close()
        other.close()
    (sos,) = stored(store.path, "alarm.sos")
    assert sos["data"]["device"] == "1111-015" and stored(store.path, "alarm.restore") == []
    assert receiver.health()["rejected"]["not_encrypted"] == 3


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_store_error_is_naked_and_the_retry_stored(
    receiver: Dc09Service, store: Store, udp: bool
) -> None:
    panel = Dc09Transmitter("127.0.0.1", receiver.port, "1234", udp=udp)
    try:
        msg = panel.message("ADM-CID", "#1234|1101 01 015")
        with failing_inserts(store):
            assert b'"NAK"' in panel.exchange(msg)
        assert reply_of(panel.exchange(msg)).id == "ACK"  # the panel's retry: stored now
        assert reply_of(panel.cid("1", "101", "016")).id == "ACK"  # the receiver goes on
    finally:
        panel.close()
    assert [e["data"]["device"] for e in stored(store.path, "alarm.sos")] == [
        "1234-015",
        "1234-016",
    ]
    health = receiver.health()
    assert (health["store_errors"], health["duplicates"]) == (1, 0)
    assert receiver.healthy()


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_a_fault_in_handling_is_naked_and_the_retry_stored(
    receiver: Dc09Service, store: Store, udp: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode = receiver.handler._decode
    faults = [ZeroDivisionError("a bug of ours")]

    def faulty_once(msg: dc09.Dc09Message, raw: bytes) -> Decoded:
        if faults:
            raise faults.pop()
        return decode(msg, raw)

    monkeypatch.setattr(receiver.handler, "_decode", faulty_once)
    panel = Dc09Transmitter("127.0.0.1", receiver.port, "1234", udp=udp)
    try:
        msg = panel.message("ADM-CID", "#1234|1101 01 015")
        assert b'"NAK"' in panel.exchange(msg)
        assert reply_of(panel.exchange(msg)).id == "ACK"
    finally:
        panel.close()
    assert len(stored(store.path, "alarm.sos")) == 1
    assert receiver.health()["rejected"] == {"decode_error": 1}
    assert receiver.healthy()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_dc09_spt_transmitter_as_peer(receiver: Dc09Service, store: Store, transport: str) -> None:
    """dc09-spt, an independent transmitter implementation (no timestamp, per connection)."""
    from dc09_spt.dc09_spt import dc09_spt  # installed by scripts/lib.sh (see there why)

    spt = dc09_spt("1234", receiver=0, line=0)
    spt.set_path("main", "primary", "127.0.0.1", receiver.port, type=transport)
    spt.send_msg("CID", {"code": "120", "q": "1", "zone": "7", "area": "2"})
    spt.send_msg("SIA", {"code": "MA", "zone": "3"})
    eventually(lambda: len(stored(store.path, "alarm.sos")) == 2, timeout=10)
    eventually(lambda: spt.state()["msgs sent"] == 2 and spt.notSent() == 0, timeout=10)
    eventually(lambda: receiver.handler.replies["ACK"] >= 2)  # counted after the store's commit
    cid, sia = stored(store.path, "alarm.sos")
    assert (cid["data"]["device"], cid["data"]["code"], cid["data"]["ids"]["group"]) == (
        "1234-007",
        "120",
        "02",
    )
    assert (sia["data"]["device"], sia["data"]["code"]) == ("1234-3", "MA")
    assert receiver.handler.replies["ACK"] == 2


def test_dc09_spt_alarms_with_area_user_time_or_text_are_recorded(
    receiver: Dc09Service, store: Store
) -> None:
    """dc09-spt writes area, user and time straight before the event code (``Nri2PA3``) and
    a text as a block of its own (``NMA6|Ahelp``): each is an alarm, acknowledged once stored."""
    from dc09_spt.dc09_spt import dc09_spt

    spt = dc09_spt("1234", receiver=0, line=0)
    spt.set_path("main", "primary", "127.0.0.1", receiver.port, type="tcp")
    sent = [
        {"code": "PA", "zone": "3", "area": "2"},
        {"code": "MA", "zone": "4", "user": "7"},
        {"code": "QA", "zone": "5", "time": "now"},
        {"code": "MA", "zone": "6", "text": "help"},
    ]
    try:
        for params in sent:
            spt.send_msg("SIA", params)
        eventually(lambda: receiver.handler.replies["ACK"] == len(sent), timeout=10)
    finally:
        with spt.queuelock:  # what was not acknowledged would be sent again for ever
            spt.queue.clear()
    alarms = [e["data"] for e in stored(store.path, "alarm.sos")]
    assert [(a["device"], a["code"]) for a in alarms] == [
        ("1234-3", "PA"),
        ("1234-4", "MA"),
        ("1234-5", "QA"),
        ("1234-6", "MA"),
    ]
    assert (alarms[0]["ids"]["area"], alarms[1]["ids"]["user"]) == ("2", "7")
    assert "time" in alarms[2]["ids"] and alarms[3]["text"] == "help"
    assert receiver.handler.replies == {"ACK": 4, "NAK": 0, "DUH": 0}
    assert receiver.health()["rejected"] == {}


def test_a_sia_message_without_a_readable_event_code_is_not_acknowledged(
    receiver: Dc09Service, store: Store
) -> None:
    panel = Dc09Transmitter("127.0.0.1", receiver.port, "1234")
    try:
        assert reply_of(panel.exchange(panel.message("SIA-DCS", "#1234|Nri1"))).id == "DUH"
        assert reply_of(panel.exchange(panel.message("SIA-DCS", "#1234|Nri1/MA015"))).id == "ACK"
    finally:
        panel.close()
    assert len(stored(store.path, "alarm.sos")) == 1
    assert receiver.health()["rejected"] == {"bad_format": 1}


def test_codes_the_site_ignores_are_acknowledged_and_counted_as_ignored(store: Store) -> None:
    spec = definition("dc09-receiver")
    spec = spec.model_copy(
        update={
            "codes": {**spec.codes, "602": Kind.IGNORE},
            "sia_codes": {**spec.sia_codes, "RP": Kind.IGNORE},
        }
    )
    cfg = Dc09Receiver(name="hubs", definition="dc09-receiver.toml", host="127.0.0.1", port=0)
    service = Dc09Service(cfg, spec, store, 10.0)
    service.start()
    panel = Dc09Transmitter("127.0.0.1", service.port, "1234")
    try:
        assert reply_of(panel.cid("1", "602", "000")).id == "ACK"  # a periodic test
        assert reply_of(panel.exchange(panel.message("SIA-DCS", "#1234|NRP0"))).id == "ACK"
    finally:
        panel.close()
        service.stop()
    health = service.health()
    assert (health["frames"], health["events"], health["ignored"]) == (2, 0, 2)
    assert stored(store.path) == []


def test_a_udp_port_in_use_fails_the_start_and_leaves_nothing_listening(store: Store) -> None:
    """Otherwise the TCP accept thread keeps a gateway that failed to start from exiting."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        cfg = Dc09Receiver(
            name="hubs", definition="dc09-receiver.toml", host="127.0.0.1", port=port
        )
        service = Dc09Service(cfg, definition("dc09-receiver"), store, 10.0)
        before = threading.active_count()
        with pytest.raises(StartupError, match=f"dc09 hubs: cannot listen on 127.0.0.1:{port}"):
            service.start()
        assert threading.active_count() == before
        # nothing listens on the TCP port (binding it could fail for another reason: the
        # same number in use as the local port of some other program's connection)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.parametrize("junk", [b"\n", b"not a message\r"], ids=["newline", "refused"])
def test_a_client_trickling_bytes_without_messages_is_cut_off(store: Store, junk: bytes) -> None:
    """A slowloris: one newline, or one line the receiver refuses, every half-second on every
    slot would keep panels out for ever if it counted as activity. Idle means no message
    acknowledged."""
    cfg = Dc09Receiver(
        name="hubs", definition="dc09-receiver.toml", host="127.0.0.1", port=0, idle_timeout_s=1.0
    )
    service = Dc09Service(cfg, definition("dc09-receiver"), store, 10.0)
    service.start()
    try:
        with socket.create_connection(("127.0.0.1", service.port)) as trickle:
            closed_after = None
            started = time.monotonic()
            while time.monotonic() - started < 10:
                try:
                    trickle.sendall(junk)
                except OSError:
                    closed_after = time.monotonic() - started
                    break
                trickle.settimeout(0.5)
                try:
                    if trickle.recv(4096) == b"":  # replies to junk come first
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    pass
                except ConnectionResetError:  # closed with our last junk unread
                    closed_after = time.monotonic() - started
                    break
            assert closed_after is not None and closed_after < 5
    finally:
        service.stop()


def test_a_panel_that_keeps_its_connection_and_sends_link_tests_stays_connected(
    store: Store,
) -> None:
    """Some panels hold one TCP connection and poll with link tests: each is acknowledged, so
    the connection is not idle, however long it lasts."""
    cfg = Dc09Receiver(
        name="hubs", definition="dc09-receiver.toml", host="127.0.0.1", port=0, idle_timeout_s=2.0
    )
    service = Dc09Service(cfg, definition("dc09-receiver"), store, 10.0)
    service.start()
    panel = Dc09Transmitter("127.0.0.1", service.port, "1234")
    try:
        # 4.8 s on one connection, past two idle timeouts; 1.7 s of margin for a loaded machine
        for _ in range(16):
            assert reply_of(panel.link_test()).id == "ACK"
            time.sleep(0.3)
        assert service.connections == 1
    finally:
        panel.close()
        service.stop()


@pytest.mark.parametrize("synced_before", [True, False], ids=["synced", "synced-meanwhile"])
def test_a_retry_after_a_lost_ack_is_acked_once_whatever_its_age(
    receiver: Dc09Service, store: Store, synced_before: bool
) -> None:
    """A panel whose ACK was lost retries with the message as first stamped. A retry a minute
    later (its third try), or the first one after our clock has synchronised (the panel had
    set its clock from an earlier NAK of ours), was NAKed as stale although its alarm was
    stored: the panel then sent it afresh, restamped, and it was recorded a second time."""
    ours = datetime.now(UTC)
    synced = synced_before
    receiver.handler.clock_synced = lambda: synced
    # before the sync the panel runs on the time our unsynchronised clock gave it
    sent_at = ours if synced_before else ours - timedelta(hours=6)
    panel = Dc09Transmitter("127.0.0.1", receiver.port, "5678", key=KEY, clock=lambda: sent_at)
    try:
        receiver.handler.wall = lambda: ours
        sent = panel.message("SIA-DCS", "#5678|Nri1/MA015")
        assert reply_of(panel.exchange(sent)).id == "ACK"  # the ACK is lost on the way back
        synced = True
        receiver.handler.wall = lambda: ours + timedelta(seconds=60)
        retry = panel.exchange(sent)
        assert b'"NAK"' not in retry
        assert reply_of(retry).id == "ACK"  # its retry
    finally:
        panel.close()
    assert len(stored(store.path, "alarm.sos")) == 1
    assert receiver.health()["duplicates"] == 1
    assert "bad_timestamp" not in receiver.health()["rejected"]


def test_a_message_is_read_as_its_format_allows() -> None:
    """A CRC in lower-case hex is the same CRC; a wrong length field is only noted (some
    transmitters get it wrong); an encrypted part that is not whole AES blocks, data without
    its ']' and an impossible date are refused, not left to fail further on."""
    body = '"ADM-CID"0001R0L0#1234[#1234|1101 01 015]'
    crc = dc09.crc_hex(body)
    assert crc != crc.lower()
    msg = dc09.parse(f"{crc.lower()}{len(body):04X}{body}", {})
    assert (msg.account, msg.data, msg.length_ok) == ("1234", "#1234|1101 01 015", True)
    assert not dc09.parse(f"{crc}{len(body) + 1:04X}{body}", {}).length_ok
    for damaged, reason in (
        ('"*SIA-DCS"0001R0L0#5678[' + "00" * 17, "bad_format"),  # 17 bytes: not whole blocks
        ('"ADM-CID"0001R0L0#1234[#1234|1101 01 015', "bad_format"),  # no closing ']'
        ('"ADM-CID"0001R0L0#1234[#1234|1101 01 015]_14:12:04,13-25-2025', "bad_timestamp"),
    ):
        with pytest.raises(dc09.Dc09Error) as refused:
            dc09.parse(f"{dc09.crc_hex(damaged)}{len(damaged):04X}{damaged}", {"5678": KEY})
        assert refused.value.reason == reason
    # keys are held by account in upper case: a panel writing its account in lower case
    sent = dc09.build("SIA-DCS", 1, "5a7b", "#5a7b|NMA1", key=KEY, now=datetime.now(UTC))
    assert dc09.parse(sent.decode("latin-1").strip("\n\r"), {"5A7B": KEY}).data == "#5a7b|NMA1"
