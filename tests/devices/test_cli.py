"""``gateway decode``: decoded events and the reason for every refused frame, as JSON lines."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.cli import EXIT_INTERRUPTED, main
from tests.devices.conftest import CONFIGS
from tests.devices.support import Pty

SOS = "AA 55 0A 01 A1 B2 C3 D4 E5 F6 02 C6 01 A5 25"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert main(["decode", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_decode_hex_with_rejects(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(
        capsys, "--device", str(CONFIGS / "aa55-reference.toml"), "--hex", f"00 01 {SOS} AA 55 0A"
    )
    assert out[0] == {"rejected": "garbage", "hex": "0001"}
    assert out[1]["type"] == "alarm.sos" and out[1]["lane"] == "P0"
    assert out[2] == {"rejected": "truncated", "hex": "AA550A"}


def test_decode_capture_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "dc09.bin"
    capture.write_bytes(
        b'\nD0F1003D"ADM-CID"0001R0L0#1234[#1234|1101 01 015]_14:12:04,09-25-2025\r'
        b'\n0000003D"ADM-CID"0002R0L0#1234[#1234|1101 01 015]_14:12:04,09-25-2025\r'
    )
    out = run(capsys, "--device", str(CONFIGS / "dc09-receiver.toml"), "--file", str(capture))
    assert [o.get("type") or o.get("rejected") for o in out] == ["alarm.sos", "bad_crc"]


def test_decode_names_the_station_a_ble_gateway_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the live port does: the adverts after a gateway's station line are its MAC's."""
    capture = tmp_path / "ble.jsonl"
    capture.write_bytes(
        b'{"type":"Gateway","mac":"AC233FA00001"}\n'
        b'{"mac":"C30000000001","rssi":-61,"rawData":"0201060A16D2FC40002A015A3A01"}\n'
    )
    out = run(capsys, "--device", str(CONFIGS / "minew-ble-jsonlines.toml"), "--file", str(capture))
    assert [(o["type"], o["data"]["station"]) for o in out] == [  # type: ignore[index]
        ("wristband.seen", "AC233FA00001"),
        ("alarm.sos", "AC233FA00001"),
    ]


def test_decode_a_spy_capture_of_what_the_device_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The field recipe: open the port as spy://, send the capture to decode as it is. What
    the device sent (RX, over several reads and rows) is decoded; the gateway's own writes (TX)
    and control lines are not."""
    import serial

    capture = tmp_path / "spy.txt"
    sos = bytes.fromhex(SOS)
    station = Pty(tmp_path / "ttyBASE")
    port = serial.serial_for_url(f"spy://{station.path}?file={capture}", timeout=1)
    try:
        port.reset_input_buffer()  # a control line in the dump
        station.write(b"\x00\x01" + sos + sos[:5])
        assert port.read(22) == b"\x00\x01" + sos + sos[:5]
        port.write(b"\x06")  # the gateway's own reply
        station.write(sos[5:])
        assert port.read(len(sos) - 5) == sos[5:]
    finally:
        port.close()
        station.close()
    text = capture.read_text()
    assert " TX " in text and " RX " in text and "Q-RX" in text
    out = run(capsys, "--device", str(CONFIGS / "aa55-reference.toml"), "--file", str(capture))
    assert [o.get("type") or o.get("rejected") for o in out] == [
        "garbage",
        "alarm.sos",
        "alarm.sos",
    ]


def test_decode_a_spy_capture_of_a_7e1_nurse_call_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 7E1 port is read as 8 bits (parity is checked in software), so its spy:// dump holds
    the parity bits: decode checks and strips them as the port does, and finds the call (and
    a byte with a flipped parity bit refused as the port would). The guide's hex, typed
    without parity bits, decodes too."""
    import serial

    from gateway.devices.simulate import espa_block

    capture = tmp_path / "spy.txt"
    nurse = Pty(tmp_path / "ttyNURSE", "7E1")
    port = serial.serial_for_url(f"spy://{nurse.path}?file={capture}", timeout=1)
    block = espa_block([("1", "0815"), ("2", "SOS ROOM 12"), ("4", "3")])
    wire = nurse.parity.encode(b"\x041\x052\x05" + block + block + b"\x04")
    flipped = 5 + len(block) + 6
    wire = wire[:flipped] + bytes([wire[flipped] ^ 0x80]) + wire[flipped + 1 :]
    try:
        nurse.write_raw(wire)
        assert port.read(len(wire)) == wire
    finally:
        port.close()
        nurse.close()
    device = str(CONFIGS / "espa444-nurse-call.toml")
    out = run(capsys, "--device", device, "--file", str(capture))
    assert [o.get("type") or o.get("control") or o.get("rejected") for o in out] == [
        "eot",
        "enq",
        "enq",
        "alarm.sos",
        "parity",
        "eot",
    ]
    assert out[3]["data"]["text"] == "SOS ROOM 12"  # type: ignore[index]
    (call,) = run(capsys, "--device", device, "--hex", block.hex())
    assert call["type"] == "alarm.sos"


def test_a_spy_dump_cut_off_mid_row_keeps_its_whole_bytes() -> None:
    """Copied while the port was still writing: the last row ends half-way."""
    from gateway.devices.decode import spy_received

    row = "000000.200 RX   0000  AA 55 0A 01 A1 B2 C3 D4  E5 F6 02 C6 01 A5 25     .U.....\n"
    cut = (row + "000000.300 RX   0000  AA 55 0A 0").encode()
    assert spy_received(cut) == bytes.fromhex(SOS + " AA 55 0A")


def test_invalid_definition_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[binary]\nbyte_order = "middle"\n')
    assert main(["decode", "--device", str(bad), "--hex", "00"]) == 2
    assert f"{bad}:3: binary.byte_order" in capsys.readouterr().err


def test_field_commands_say_what_is_wrong_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device = str(CONFIGS / "aa55-reference.toml")
    cases = [
        ["decode", "--device", device, "--file", str(tmp_path / "missing.bin")],
        ["simulate", "basestation", "--device", device, "--port", str(tmp_path / "ttyUSB9")],
        ["simulate", "dc09", "--port", "1", "--key", "zz"],
    ]
    for argv in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["basestation", "--bands", "-5"], "--bands: must be 1 or more, not -5"),
        (["basestation", "--interval", "-1"], "--interval: must be above 0, not -1"),
        (["basestation", "--duration", "nan"], "--duration: must be above 0, not nan"),
        (["basestation", "--baud", "0"], "--baud: must be 1 or more, not 0"),
        (["basestation", "--burst-every", "-2"], "--burst-every: must be 0 or more, not -2"),
        (["espa", "--port", "x", "--calls", "ten"], "--calls: not a whole number: 'ten'"),
        (["dc09", "--port", "70000"], "--port: must be a port number up to 65535, not 70000"),
    ],
)
def test_simulator_values_that_cannot_run_are_refused_by_name(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative interval would be a loop that never sleeps, on the installer's laptop."""
    device = ["--device", str(CONFIGS / "aa55-reference.toml"), "--pty", "/tmp/x"]
    argv = ["simulate", *args, *(device if args[0] == "basestation" else [])]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert said in capsys.readouterr().err


def test_ctrl_c_ends_a_simulator_without_a_traceback() -> None:
    """An installer stops `simulate dc09` with Ctrl-C while it waits for the receiver."""
    with socket.create_server(("127.0.0.1", 0)) as receiver:
        port = receiver.getsockname()[1]
        # A handler here, not SIG_IGN, makes the child's SIGINT its default, as from a
        # terminal, also when the suite itself runs in the background with SIGINT ignored.
        before = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            panel = subprocess.Popen(
                [sys.executable, "-m", "gateway", "simulate", "dc09", "--port", str(port)],
                stderr=subprocess.PIPE,
                text=True,
            )
        finally:
            signal.signal(signal.SIGINT, before)
        conn, _ = receiver.accept()
        with conn:
            conn.recv(1)  # the first message is on its way; its answer never comes
            panel.send_signal(signal.SIGINT)
            _, err = panel.communicate(timeout=10)
    assert panel.returncode == EXIT_INTERRUPTED
    assert "Traceback" not in err


def test_the_simulated_alarm_panel_sends_a_message_again_until_the_receiver_answers() -> None:
    """A receiver that closes the connection over a message (a restart, a slow commit) does
    not end the demo's alarm panel for good: as a panel does, it sends the same message, the
    same seq, until it gets an answer."""
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as receiver:
        port = receiver.getsockname()[1]

        def serve() -> None:
            for answered in (False, False, True):
                conn, _ = receiver.accept()
                with conn:
                    received.append(conn.recv(4096))
                    if answered:
                        conn.sendall(b'"ACK"0001R0L0#1234[]\r')

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        argv = ["simulate", "dc09", "--port", str(port), "--count", "1", "--interval", "0.01"]
        assert main(argv) == 0
        server.join(5)
    assert len(received) == 3 and len(set(received)) == 1
