"""Serial links: unplugging the adapter (the pty goes away, a new one appears at the same
path) never ends the gateway; reading resumes and the health shows the gap."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import serial

from gateway.cli import main
from gateway.devices.config import PortConfig
from gateway.devices.link import AdapterClaims, SerialLink, SerialSettings
from gateway.devices.service import PortService
from gateway.devices.simulate import contact_id_line
from gateway.lifecycle import Supervisor
from gateway.store import Store
from gateway.sync.service import service_state
from tests.devices.conftest import CONFIGS, definition, stored
from tests.devices.support import Pty
from tests.support.deadpeer import Unanswered
from tests.support.netns import other_host
from tests.support.wait import eventually

SOS = bytes.fromhex("AA 55 0A 01 A1 B2 C3 D4 E5 F6 02 C6 01 A5 25")
FALL_SEQ2 = bytes.fromhex("AA550A01A1B2C3D4E5F603C602")


def aa55(body_hex: str) -> bytes:
    from gateway.devices.framers.binary import encode_frame

    spec = definition("aa55-reference").binary
    assert spec is not None
    return encode_frame(spec.framing, bytes.fromhex(body_hex))


def started_station(
    store: Store,
    url: str,
    *,
    reopen_max_s: float,
    name: str = "ward-a",
    claims: AdapterClaims | None = None,
) -> PortService:
    """The reference base station's port, reopened quickly after an unplug; ``claims``: the
    gateway's, with udev's names of the adapters in a directory the test makes."""
    cfg = PortConfig(
        name=name,
        definition="aa55-reference.toml",
        url=url,
        reopen_min_s=0.1,
        reopen_max_s=reopen_max_s,
    )
    service = PortService(cfg, definition("aa55-reference"), store, 10.0, claims=claims)
    service.start()
    return service


def test_unplug_and_replug_resumes_within_5s(tmp_path: Path, store: Store) -> None:
    pty = Pty(tmp_path / "ttyBASE")
    service = started_station(store, str(pty.path), reopen_max_s=1.0)
    try:
        eventually(lambda: service.link.stats.state == "up")
        pty.write(SOS)
        eventually(lambda: len(stored(store.path, "alarm.sos")) == 1)
        pty.unplug()
        eventually(lambda: service.link.stats.state == "down")
        assert service.healthy()  # an unplugged adapter is a state, not a dead service
        assert service_state(service.health()) == "link DOWN"  # the journal's health line
        time.sleep(0.3)
        pty.replug()
        replugged = time.monotonic()
        eventually(lambda: service.link.stats.state == "up", timeout=5)
        assert service_state(service.health()) == "ok"
        pty.write(aa55("01 A1B2C3D4E5F6 03 C6 02"))
        eventually(lambda: len(stored(store.path, "alarm.fall")) == 1, timeout=5)
        assert time.monotonic() - replugged < 5
    finally:
        service.stop()
        pty.close()
    link = service.health()["link"]
    assert link["gaps"] == 1 and link["opens"] == 2
    assert link["last_gap_s"] >= 0.3
    states = [e["data"]["name"] for e in stored(store.path, "device.status")]
    assert states == ["up", "down", "up"]
    (down, up) = stored(store.path, "device.status")[1:]
    assert up["data"]["ids"]["gap_s"] >= 0.3
    assert down["data"]["text"].startswith("read")


class Adapters:
    """USB serial adapters as udev shows them: a kernel name in ``dev`` (``ttyUSB0``, a pty
    behind it) and a name of their own in ``by_id`` (``usb-FTDI_..._<serial>``)."""

    def __init__(self, root: Path) -> None:
        self.dev = root
        self.by_id = root / "by-id"
        self.by_id.mkdir()
        self.claims = AdapterClaims(self.by_id)  # the gateway's
        self._plugged: dict[str, Pty] = {}

    def station(self, store: Store, kernel_name: str, name: str = "ward-a") -> PortService:
        """A base station's port configured with a kernel name, started."""
        path = str(self.dev / kernel_name)
        return started_station(store, path, reopen_max_s=0.2, name=name, claims=self.claims)

    def plug(self, serial_no: str, kernel_name: str, *, named: bool = True) -> Pty:
        """``named``: udev has made the by-id name (it does so a moment after the kernel's)."""
        pty = Pty(self.dev / kernel_name)
        self._plugged[serial_no] = pty
        if named:
            self.name(serial_no)
        return pty

    def name(self, serial_no: str) -> None:
        self._by_id(serial_no).symlink_to(self._plugged[serial_no].path)

    def pull(self, serial_no: str) -> None:
        self._plugged.pop(serial_no).unplug()
        self._by_id(serial_no).unlink(missing_ok=True)

    def unplug_hub(self, ports: list[PortService]) -> None:
        """Every adapter pulled at once, once ``ports`` are all up; returns once all are down."""
        eventually(lambda: all(p.link.stats.state == "up" for p in ports))
        for serial_no in list(self._plugged):
            self.pull(serial_no)
        eventually(lambda: all(p.link.stats.state == "down" for p in ports))

    def _by_id(self, serial_no: str) -> Path:
        return self.by_id / f"usb-FTDI_FT232R_USB_UART_{serial_no}-if00-port0"

    def close(self) -> None:
        for serial_no in list(self._plugged):
            self.pull(serial_no)


@contextmanager
def adapters(root: Path) -> Iterator[Adapters]:
    plugged = Adapters(root)
    try:
        yield plugged
    finally:
        plugged.close()


def test_an_adapter_back_under_another_kernel_name_is_read_there(
    tmp_path: Path, store: Store
) -> None:
    """The port is configured as /dev/ttyUSB0. Its adapter is pulled and comes back as
    ttyUSB1 (ttyUSB0 was still held): the port reads it there, and its health says where."""
    with adapters(tmp_path) as usb:
        base = usb.plug("A10K1234", "ttyUSB0")
        service = usb.station(store, "ttyUSB0")
        try:
            eventually(lambda: service.link.stats.state == "up")
            base.write(SOS)
            eventually(lambda: len(stored(store.path, "alarm.sos")) == 1)
            usb.pull("A10K1234")
            eventually(lambda: service.link.stats.state == "down")
            back = usb.plug("A10K1234", "ttyUSB1")
            where = os.path.realpath(back.path)  # the tty udev's names lead to
            eventually(lambda: service.link.stats.state == "up")
            back.write(aa55("01 A1B2C3D4E5F6 03 C6 02"))
            eventually(lambda: len(stored(store.path, "alarm.fall")) == 1)
        finally:
            service.stop()
    link = service.health()["link"]
    assert (link["opens"], link["device"]) == (2, where)


def test_a_replacement_adapter_at_the_old_path_is_read_and_followed(
    tmp_path: Path, store: Store
) -> None:
    """The installer swaps the station's broken adapter for a new one while the gateway runs:
    the new one, unknown to the gateway, is read at the configured path once udev has named it
    (before, it could be another port's); it is the port's adapter from then on, followed when
    it comes back under another name."""
    with adapters(tmp_path) as usb:
        usb.plug("A10K1234", "ttyUSB0")
        service = usb.station(store, "ttyUSB0")
        try:
            eventually(lambda: service.link.stats.state == "up")
            usb.pull("A10K1234")
            eventually(lambda: service.link.stats.state == "down")
            new = usb.plug("C30K9012", "ttyUSB0", named=False)
            eventually(lambda: "nor a named adapter" in service.link.stats.last_error)
            time.sleep(0.3)  # a few attempts to reopen
            assert service.link.stats.state == "down"
            usb.name("C30K9012")
            eventually(lambda: service.link.stats.state == "up")
            new.write(SOS)
            eventually(lambda: len(stored(store.path, "alarm.sos")) == 1)
            assert service.health()["link"]["device"] is None
            usb.pull("C30K9012")
            eventually(lambda: service.link.stats.state == "down")
            back = usb.plug("C30K9012", "ttyUSB1")
            where = os.path.realpath(back.path)
            eventually(lambda: service.link.stats.opens == 3)
            back.write(aa55("01 A1B2C3D4E5F6 03 C6 02"))
            eventually(lambda: len(stored(store.path, "alarm.fall")) == 1)
        finally:
            service.stop()
    assert service.health()["link"]["device"] == where


def test_another_ports_adapter_at_the_old_path_is_refused_until_the_own_is_back(
    tmp_path: Path, store: Store
) -> None:
    """Two base stations, on ttyUSB0 and ttyUSB1. Both adapters are pulled (a hub unplugged);
    the second station's comes back first, as ttyUSB0. The first port refuses it, naming the
    port whose adapter it is; the second port reads it; the first station's adapter comes
    back as ttyUSB1 and the first port reads that. No alarm is read by the wrong port."""
    with adapters(tmp_path) as usb:
        usb.plug("A10K1234", "ttyUSB0")
        usb.plug("B20K5678", "ttyUSB1")
        ports = [usb.station(store, "ttyUSB0"), usb.station(store, "ttyUSB1", "ward-b")]
        first, second = ports
        try:
            usb.unplug_hub(ports)
            theirs = usb.plug("B20K5678", "ttyUSB0")
            eventually(lambda: second.link.stats.state == "up")
            eventually(lambda: "port ward-b's adapter" in first.link.stats.last_error)
            theirs.write(aa55("01 0000000000B2 02 C6 01"))
            eventually(lambda: len(stored(store.path, "alarm.sos")) == 1)
            assert first.link.stats.state == "down"
            ours = usb.plug("A10K1234", "ttyUSB1")
            eventually(lambda: first.link.stats.state == "up")
            ours.write(aa55("01 A1B2C3D4E5F6 03 C6 02"))
            eventually(lambda: len(stored(store.path, "alarm.fall")) == 1)
        finally:
            for port in ports:
                port.stop()
    assert [(e["data"]["port"], e["data"]["device"]) for e in stored(store.path, "alarm.")] == [
        ("ward-b", "0000000000B2"),
        ("ward-a", "A1B2C3D4E5F6"),
    ]
    assert [p.health()["link"]["opens"] for p in ports] == [2, 2]


def test_a_port_captured_with_spy_keeps_its_adapter_and_follows_it(
    tmp_path: Path, store: Store
) -> None:
    """The first station's port is captured (spy://ttyUSB0?file=...) while its adapter is
    diagnosed. Both adapters are pulled and the first station's comes back first, as ttyUSB1:
    the second port refuses it, and the captured port reads it there, into its capture."""
    capture = tmp_path / "capture.txt"
    with adapters(tmp_path) as usb:
        usb.plug("A10K1234", "ttyUSB0")
        usb.plug("B20K5678", "ttyUSB1")
        url = f"spy://{usb.dev / 'ttyUSB0'}?file={capture}"
        first = started_station(store, url, reopen_max_s=0.2, claims=usb.claims)
        second = usb.station(store, "ttyUSB1", "ward-b")
        ports = [first, second]
        try:
            usb.unplug_hub(ports)
            ours = usb.plug("A10K1234", "ttyUSB1")
            eventually(lambda: first.link.stats.state == "up")
            ours.write(SOS)
            eventually(lambda: len(stored(store.path, "alarm.sos")) == 1)
            assert second.link.stats.state == "down"
            assert "port ward-a's adapter" in second.link.stats.last_error
        finally:
            for port in ports:
                port.stop()
    assert [e["data"]["port"] for e in stored(store.path, "alarm.")] == ["ward-a"]
    assert "A5 25" in capture.read_text().upper()
    # a nurse call's display text may name a resident: the gateway's alone to read
    assert capture.stat().st_mode & 0o777 == 0o600


def test_a_stopped_port_gives_up_its_adapter(tmp_path: Path, store: Store) -> None:
    """A port removed (stopped) no longer holds its adapter: another port may read it."""
    with adapters(tmp_path) as usb:
        usb.plug("A10K1234", "ttyUSB0")
        old = usb.station(store, "ttyUSB0")
        try:
            eventually(lambda: old.link.stats.state == "up")
        finally:
            old.stop()
        new = usb.station(store, "ttyUSB0", "ward-b")
        try:
            eventually(lambda: new.link.stats.state == "up")
        finally:
            new.stop()


def held_open(path: Path) -> bool:
    """Whether this process has ``path`` open."""
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path.resolve()):
                return True
    return False


def test_a_spy_capture_keeps_the_traffic_from_before_the_adapter_was_pulled(
    tmp_path: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """The field recipe for a flaky adapter: the port's url is spy://...?file=CAPTURE. After
    the adapter was pulled and came back, the capture still holds what the station sent before
    and after, and gateway decode reads it all. The file is closed whenever the port is."""
    pty = Pty(tmp_path / "ttyBASE")
    capture = tmp_path / "capture.txt"
    service = started_station(store, f"spy://{pty.path}?file={capture}", reopen_max_s=0.2)
    try:
        eventually(lambda: service.link.stats.state == "up")
        pty.write(SOS)
        eventually(lambda: len(stored(store.path, "alarm.sos")) == 1)
        pty.unplug()
        eventually(lambda: service.link.stats.state == "down")
        assert not held_open(capture)
        time.sleep(0.5)  # attempts to reopen while the adapter is out
        pty.replug()
        eventually(lambda: service.link.stats.state == "up")
        pty.write(aa55("01 A1B2C3D4E5F6 03 C6 02"))
        eventually(lambda: len(stored(store.path, "alarm.fall")) == 1)
    finally:
        service.stop()
        pty.close()
    assert service.health()["link"]["opens"] == 2
    assert not held_open(capture)
    device = str(CONFIGS / "aa55-reference.toml")
    assert main(["decode", "--device", device, "--file", str(capture)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o.get("type") or o.get("rejected") for o in out] == ["alarm.sos", "alarm.fall"]


def test_port_missing_at_start_comes_later(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "ttyLATE"
    cfg = PortConfig(
        name="late", definition="aa55-reference.toml", url=str(path), reopen_min_s=0.05
    )
    service = PortService(cfg, definition("aa55-reference"), store, 10.0)
    service.start()
    try:
        eventually(lambda: service.link.stats.state == "down")
        pty = Pty(path)
        eventually(lambda: service.link.stats.state == "up", timeout=5)
        pty.write(SOS)
        eventually(lambda: len(stored(store.path, "alarm.sos")) == 1)
    finally:
        service.stop()
    pty.close()


@contextmanager
def contact_id_panel(tmp_path: Path, store: Store) -> Iterator[tuple[Pty, PortService]]:
    """A Contact ID receiver port, up, on a pty whose other end is the panel."""
    pty = Pty(tmp_path / "ttyCID")
    cfg = PortConfig(name="panel", definition="contact-id-serial.toml", url=str(pty.path))
    service = PortService(cfg, definition("contact-id-serial"), store, 10.0)
    service.start()
    try:
        eventually(lambda: service.link.stats.state == "up")
        yield pty, service
    finally:
        service.stop()
        pty.close()


def test_contact_id_receiver_acks_after_store_naks_garbage(tmp_path: Path, store: Store) -> None:
    with contact_id_panel(tmp_path, store) as (pty, service):
        pty.write(contact_id_line("1234", "1", "101", "01", "015"))
        assert pty.read() == b"\x06"
        assert len(stored(store.path, "alarm.sos")) == 1
        pty.write(b"1234181101010152\r\n")  # wrong checksum
        assert pty.read() == b"\x15"
        pty.write(contact_id_line("1234", "1", "384", "01", "003"))
        assert pty.read() == b"\x06"
    assert stored(store.path, "battery.low")[0]["data"]["name"] == "rf_low_battery"
    health = service.health()
    assert health["rejected"] == {"bad_checksum": 1}
    assert health["replies"] == {"ACK": 2, "NAK": 1}


def test_a_line_acked_late_is_recorded_once_and_the_receivers_resend_acked(
    tmp_path: Path, store: Store
) -> None:
    """The store took longer than the receiver waits for our ACK (a slow SD card): it sent
    the line again while the gateway was still committing it. The platform gets one
    alarm.sos and the resend its ACK; the same line sent once the ACK was heard is new."""
    pty = Pty(tmp_path / "ttyCID")
    cfg = PortConfig(
        name="panel", definition="contact-id-serial.toml", url=str(pty.path), baudrate=1200
    )
    service = PortService(cfg, definition("contact-id-serial"), store, 10.0)
    service.start()
    slow_disk = threading.Event()
    line = contact_id_line("1234", "1", "101", "01", "015")
    try:
        eventually(lambda: service.link.stats.state == "up")
        busy = store.write(lambda _conn: slow_disk.wait(10))
        pty.write(line)
        assert pty.read(1, timeout=0.5) == b""  # the receiver's ACK timeout, shortened
        pty.write(line)  # its resend, while the gateway still waits for the store
        slow_disk.set()
        busy.result(5)
        assert pty.read(1) + pty.read(1) == b"\x06\x06"
        time.sleep(0.4)  # 18 characters at 1200 baud: the same line sent after the ACK
        pty.write(line)
        assert pty.read(1) == b"\x06"
    finally:
        service.stop()
        pty.close()
    assert [e["data"]["device"] for e in stored(store.path, "alarm.sos")] == ["1234-015"] * 2
    assert service.health()["duplicates"] == 1


def test_an_unmapped_code_is_taken_and_does_not_hold_up_the_sos_behind_it(
    tmp_path: Path, store: Store
) -> None:
    """Refused, the receiver would send it again and again with the SOS queued behind it; it
    may be a pendant's fall code nobody mapped, so the platform hears of it too."""
    with contact_id_panel(tmp_path, store) as (pty, service):
        pty.write(contact_id_line("1234", "1", "110", "01", "007"))
        assert pty.read() == b"\x06"
        pty.write(contact_id_line("1234", "1", "101", "01", "015"))
        assert pty.read() == b"\x06"
    (unmapped,) = stored(store.path, "device.alarm")
    assert unmapped["data"]["name"] == "unmapped code 110"
    assert unmapped["data"]["device"] == "1234-007"
    assert len(stored(store.path, "alarm.sos")) == 1
    assert service.health()["rejected"] == {"unknown_code": 1}  # to be added to the file


def test_a_hangup_while_an_ack_drains_neither_naks_a_stored_alarm_nor_drops_the_next(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tty hangs up while our ACKs drain (termios.error from tcdrain, not an OSError):
    the write is given up and counted, the alarm stays stored, no NAK follows its ACK, and the
    other alarm in the same read is still handled."""
    drain = serial.Serial.flush
    hangups = [termios.error(5, "Input/output error")] * 2

    def flush(port: serial.Serial) -> None:
        if hangups:
            raise hangups.pop()
        drain(port)

    monkeypatch.setattr(serial.Serial, "flush", flush)
    with contact_id_panel(tmp_path, store) as (pty, service):
        pty.write(
            contact_id_line("1234", "1", "101", "01", "001")
            + contact_id_line("1234", "1", "120", "01", "002")
        )
        eventually(lambda: len(stored(store.path, "alarm.sos")) == 2)
        assert pty.read(1) + pty.read(1) == b"\x06\x06"  # what the panel reads: two ACKs
        assert pty.read(1, timeout=0.2) == b""
    health = service.health()
    assert health["rejected"] == {} and health["link"]["errors"] == 2
    assert health["replies"] == {"ACK": 2, "NAK": 0}
    assert health["link"]["last_error"].startswith("write")


def test_a_second_reader_cannot_take_a_port_in_use(tmp_path: Path, store: Store) -> None:
    """A second gateway started on the same config, or a terminal program left open, would
    split the line's bytes with this one: the port is locked, and the second says why."""
    pty = Pty(tmp_path / "ttyBASE")
    cfg = PortConfig(name="ward-a", definition="aa55-reference.toml", url=str(pty.path))
    first = PortService(cfg, definition("aa55-reference"), store, 10.0)
    second = PortService(cfg, definition("aa55-reference"), store, 10.0)
    first.start()
    try:
        eventually(lambda: first.link.stats.state == "up")
        second.start()
        eventually(lambda: second.link.stats.state == "down")
        assert "lock" in second.link.stats.last_error
        pty.write(SOS)
        eventually(lambda: len(stored(store.path, "alarm.sos")) == 1)
        assert second.health()["link"]["bytes_in"] == 0
    finally:
        second.stop()
        first.stop()
        pty.close()


def test_an_ack_the_panel_never_reads_does_not_wedge_the_port(tmp_path: Path, store: Store) -> None:
    """The other end stops draining the line (a panel hung mid-send): the ACK write gives up,
    the alarms after it are still stored, and the gateway can still stop."""
    pty = Pty(tmp_path / "ttyCID")
    cfg = PortConfig(name="panel", definition="contact-id-serial.toml", url=str(pty.path))
    service = PortService(cfg, definition("contact-id-serial"), store, 10.0)
    service.start()
    try:
        eventually(lambda: service.link.stats.state == "up")
        towards_panel = os.open(pty.path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(towards_panel, b"\0" * 1024)  # the queue the panel should read
        finally:
            os.close(towards_panel)
        for zone in ("002", "003"):
            pty.write(contact_id_line("1234", "1", "101", "01", zone))
        eventually(lambda: len(stored(store.path, "alarm.sos")) == 2, timeout=10)
    finally:
        stopper = threading.Thread(target=service.stop, daemon=True)
        stopper.start()
        stopper.join(10)
        pty.close()
    assert not stopper.is_alive(), "stop() hung on an ACK write"
    assert service.link.stats.last_error.startswith("write")


def test_a_port_that_fails_as_soon_as_it_opens_backs_off(store: Store) -> None:
    """A serial server that accepts and hangs up at once (busy, restarting) must not flap
    the link several times a second, each time a log line and two device.status events."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.1)
        cfg = PortConfig(
            name="remote",
            definition="aa55-reference.toml",
            url=f"socket://127.0.0.1:{server.getsockname()[1]}",
            reopen_min_s=0.25,
            reopen_max_s=1.0,
        )
        service = PortService(cfg, definition("aa55-reference"), store, 10.0)
        service.start()
        try:
            until = time.monotonic() + 2.5
            while time.monotonic() < until:
                with contextlib.suppress(TimeoutError):
                    server.accept()[0].close()
        finally:
            service.stop()
    # each open fails about 0.3 s in; then 0.25, 0.5, 1 s of backoff: 3 opens, not 8 or more
    assert 2 <= service.link.stats.opens <= 5, service.link.stats.opens


def test_a_stop_does_not_wait_for_serial_servers_out_of_reach(store: Store) -> None:
    """Serial servers out of reach (a network outage): pyserial's connect waits up to 5 s
    and nothing wakes it, so a stop that waited would add 5 s per port towards systemd's
    30 s. The connects are let go; one that gets through after the stop is closed at once,
    not left holding the serial server's only connection."""
    peers = [Unanswered(), Unanswered()]
    services = []
    for name, peer in zip(("hall", "garden"), peers, strict=True):
        cfg = PortConfig(
            name=name, definition="aa55-reference.toml", url=f"socket://127.0.0.1:{peer.port}"
        )
        services.append(PortService(cfg, definition("aa55-reference"), store, 10.0))
    supervisor = Supervisor(services)
    try:
        supervisor.start_all()
        time.sleep(0.3)  # both connects under way: their SYNs go unanswered
        supervisor.stop_all()
        assert {"open-hall", "open-garden"} <= _threads(), "the stop waited for the connects"
        assert [s.link.stats.state for s in services] == ["stopped", "stopped"]
        assert not any(s.link.alive() for s in services)
        # the hall's connect gets through at its next SYN, after the stop: closed at once
        late = peers[0].answer(timeout=5)
        late.settimeout(5)
        assert late.recv(1) == b""
        late.close()
    finally:
        for peer in peers:
            peer.close()


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


SERIAL_SERVER = """
import socket, sys, time
frames = [bytes.fromhex(h) for h in sys.argv[2:]]
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
held = []
while True:
    conn, _ = server.accept()
    time.sleep(0.3)  # pyserial flushes what arrives while it opens the port
    conn.sendall(frames[min(len(held), len(frames) - 1)])
    held.append(conn)  # never closed: the server forgets nothing, it just goes unreachable
"""


def test_a_serial_server_whose_path_dies_without_a_reset_is_reopened(store: Store) -> None:
    """A serial server (socket://) behind a cable that is cut: no FIN, no RST, and a base
    station that only sends. Without keepalive the port stays "up" and the next SOS is
    lost; with it the link notices within `dead_path_s`, reopens once the path is back, and
    the station's next alarm is stored."""
    with other_host() as host:
        frames = (SOS.hex(), aa55("01 A1B2C3D4E5F6 03 C6 02").hex())
        server = host.run_python(SERIAL_SERVER, host.address, *frames)
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            cfg = PortConfig(
                name="hall",
                definition="aa55-reference.toml",
                url=f"socket://{host.address}:{port}",
                reopen_min_s=0.2,
                reopen_max_s=1.0,
                dead_path_s=4,
            )
            service = PortService(cfg, definition("aa55-reference"), store, 10.0)
            service.start()
            try:
                eventually(lambda: len(stored(store.path, "alarm.sos")) == 1, timeout=10)
                host.cut()
                eventually(lambda: service.link.stats.state == "down", timeout=15)
                assert "read" in service.link.stats.last_error
                host.mend()
                eventually(lambda: len(stored(store.path, "alarm.fall")) == 1, timeout=15)
                assert service.link.stats.state == "up" and service.link.stats.opens >= 2
            finally:
                service.stop()
        finally:
            server.kill()
            server.communicate()  # waits, and closes its pipe


def test_a_station_not_heard_for_30_s_is_reported_by_default(store: Store) -> None:
    """The protocols guide: a station is heard at least every 10 s; a fault after 3 misses.
    A receiver that speaks only when an alarm comes is not supervised unless asked."""

    def silence(name: str, **kw: float) -> float | None:
        cfg = PortConfig(name="p", definition=f"{name}.toml", url="loop://", **kw)
        return PortService(cfg, definition(name), store, 10.0).handler.silence_s

    assert silence("aa55-reference") == 30.0
    assert silence("minew-ble-jsonlines") == 30.0
    assert silence("espa444-nurse-call") == 120.0
    assert silence("contact-id-serial") is None
    assert silence("aa55-reference", silence_s=300.0) == 300.0


def _wakeups(thread_id: int) -> int:
    status = Path(f"/proc/self/task/{thread_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_a_quiet_line_lets_its_reader_sleep_and_an_alarm_still_wakes_it(
    tmp_path: Path, store: Store
) -> None:
    pty = Pty(tmp_path / "ttyBASE")
    service = started_station(store, str(pty.path), reopen_max_s=1.0)
    try:
        eventually(lambda: service.link.stats.state == "up")
        reader = next(t for t in threading.enumerate() if t.name == "link-ward-a")
        assert reader.native_id is not None
        before = _wakeups(reader.native_id)
        time.sleep(2.0)
        slept = _wakeups(reader.native_id) - before  # was 40: a read timeout of 50 ms
        pty.write(SOS)
        eventually(lambda: len(stored(store.path, "alarm.sos")) == 1)
    finally:
        service.stop()
        pty.close()
    assert slept <= 6
    assert not reader.is_alive()


class Received:
    """A link's sink that keeps what it was handed, one entry per ``on_data``."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def on_up(self, gap_s: float | None) -> None:
        pass

    def on_down(self, reason: str) -> None:
        pass

    def on_data(self, data: bytes, at: float) -> None:
        self.chunks.append(data)

    def on_idle(self, at: float) -> None:
        pass

    def idle_due(self, at: float) -> float:
        return 1.0


@pytest.mark.parametrize(("fails", "opens"), [("_reconfigure_port", 1), ("read", 2)])
def test_an_adapter_dropping_out_in_a_termios_call_leaves_the_port_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str, opens: int
) -> None:
    """An adapter that drops out while pyserial sets the tty up (tcsetattr, tcflush) raises
    termios.error, not an OSError; neither there nor in a read may it end the reader."""
    real = getattr(serial.Serial, fails)
    once = [termios.error(5, "Input/output error")]

    def dropping_out(port: serial.Serial, *args: object, **kwargs: object) -> object:
        if once:
            raise once.pop()
        return real(port, *args, **kwargs)

    monkeypatch.setattr(serial.Serial, fails, dropping_out)
    pty = Pty(tmp_path / "ttyBASE")
    sink = Received()
    link = SerialLink("ward-a", str(pty.path), SerialSettings(9600, "8N1"), sink, reopen_min_s=0.01)
    link.start()
    try:
        eventually(lambda: link.stats.opens == opens, timeout=5)  # the tty set up again
        pty.write(SOS)
        eventually(lambda: b"".join(sink.chunks) == SOS, timeout=5)
        assert link.alive()
        assert link.stats.errors == 1 and "Input/output error" in link.stats.last_error
    finally:
        link.begin_stop()
        link.stop()
        pty.close()


def test_a_serial_servers_bytes_are_read_as_they_came_not_one_at_a_time() -> None:
    """pyserial's in_waiting on a socket is 0 or 1: read by it, every byte of a serial
    server's line was a read and a frame parse of its own."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sink = Received()
        url = f"socket://127.0.0.1:{server.getsockname()[1]}"
        link = SerialLink("remote", url, SerialSettings(115200, "8N1"), sink)
        link.start()
        try:
            conn, _ = server.accept()
            with conn:
                eventually(lambda: link.stats.state == "up", timeout=5)
                conn.sendall(SOS * 20)
                eventually(lambda: b"".join(sink.chunks) == SOS * 20, timeout=5)
        finally:
            link.begin_stop()
            link.stop()
    assert len(sink.chunks) <= 2
