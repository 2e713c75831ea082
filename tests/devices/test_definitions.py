"""Every shipped device definition is valid; a broken one is an error naming file and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.configfile import ConfigFileError
from gateway.devices.config import DevicesSection
from gateway.devices.decoders.binary import BinaryDecoder
from gateway.devices.definitions import definition_files, load_definition
from gateway.devices.framers.binary import BinaryFramer, encode_frame
from gateway.devices.model import Frame
from gateway.devices.service import load_definitions
from tests.devices.conftest import CONFIGS


@pytest.mark.parametrize("path", definition_files(CONFIGS), ids=lambda p: p.name)
def test_shipped_definition_is_valid(path: Path) -> None:
    assert load_definition(path).name == path.stem


def test_the_five_required_kinds_are_shipped() -> None:
    protocols = {load_definition(p).protocol for p in definition_files(CONFIGS)}
    assert protocols == {"binary", "jsonlines", "espa", "contact_id", "dc09"}


def test_typo_names_file_line_and_key(tmp_path: Path) -> None:
    text = (CONFIGS / "aa55-reference.toml").read_text().replace("max_length", "max_lenght")
    bad = tmp_path / "vendor.toml"
    bad.write_text(text)
    with pytest.raises(ConfigFileError) as err:
        load_definition(bad)
    message = str(err.value)
    assert f"{bad}:" in message
    assert "binary.framing.max_lenght: unknown key; did you mean 'max_length'?" in message
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "max_lenght" in t)
    assert f"{bad}:{line}:" in message


def test_bad_values_are_explained(tmp_path: Path) -> None:
    text = (CONFIGS / "aa55-reference.toml").read_text()
    bad = tmp_path / "vendor.toml"
    bad.write_text(text.replace('device = "band"', 'device = "bnad"').replace('"AA 55"', '"AZ"'))
    with pytest.raises(ConfigFileError) as err:
        load_definition(bad)
    message = str(err.value)
    assert "binary.framing.header" in message and "hex" in message
    assert "device = 'bnad' is not one of the fields" in message


@pytest.mark.parametrize(
    ("table", "added", "problem"),
    [
        ("[binary.messages.events]", '"02" = "seen"', "codes '02' and '2' are the same number, 2"),
        ("[binary.messages.events]", '256 = "sos"', "events [256] can never match"),
        ("[binary.messages.events]", '"-1" = "sos"', "code '-1' is not a whole number"),
    ],
)
def test_event_codes_that_collide_or_cannot_match_are_refused(
    tmp_path: Path, table: str, added: str, problem: str
) -> None:
    """Written "02" beside "2", a sighting code took the SOS code's place in silence: every
    press of the button would have been recorded as a band seen."""
    text = (CONFIGS / "aa55-reference.toml").read_text()
    assert table in text
    vendor = tmp_path / "vendor.toml"
    vendor.write_text(text.replace(table, f"{table}\n{added}"))
    with pytest.raises(ConfigFileError, match=re.escape(problem)):
        load_definition(vendor)


EVENT_FIELD = '{ name = "event", offset = 6, width = 1, type = "uint" }'
SEQ_FIELD = '{ name = "seq", offset = 8, width = 1, type = "uint" }'


INT_EVENT = EVENT_FIELD.replace("uint", "int")


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({EVENT_FIELD: EVENT_FIELD.replace("uint", "hex")}, "event = 'event' is read as hex"),
        ({EVENT_FIELD: EVENT_FIELD.replace("uint", "text")}, "event = 'event' is read as text"),
        ({SEQ_FIELD: SEQ_FIELD.replace("uint", "text")}, "seq = 'seq' is read as text"),
        ({EVENT_FIELD: EVENT_FIELD.replace(" }", ", scale = 0.1 }")}, "it takes no scale"),
        ({EVENT_FIELD: INT_EVENT, '5 = "band_worn"': '130 = "sos"'}, "events [130] can never"),
        ({"command_offset = 3": "command_offset = 70"}, "(71) and the 2-byte checksum"),
        ({"offset = 2, width = 1, counts_from": "offset = 80, width = 1, counts_from"}, "(81)"),
        ({"counts_from = 3": "counts_from = 200"}, "length.counts_from (200)"),
        ({"payload_offset = 4": "payload_offset = 63"}, "payload_offset (63)"),
    ],
    ids=[
        "event-hex",
        "event-text",
        "seq-text",
        "event-scaled",
        "signed-event-130",
        "command-beyond",
        "length-beyond",
        "counts-from-beyond",
        "payload-beyond",
    ],
)
def test_a_file_that_would_refuse_every_frame_is_refused_when_it_loads(
    tmp_path: Path, changes: dict[str, str], problem: str
) -> None:
    """An event byte read as hex (the docs write codes as "02") or as a signed int beyond 127,
    a sequence read as text, a command beyond the longest frame: the file loaded without a
    word, and every SOS from the station was refused or its radio repeats all taken as new."""
    text = (CONFIGS / "aa55-reference.toml").read_text()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new, 1)
    vendor = tmp_path / "vendor.toml"
    vendor.write_text(text)
    with pytest.raises(ConfigFileError, match=re.escape(problem)):
        load_definition(vendor)


def test_an_event_and_sequence_sent_as_bcd_are_read_as_their_numbers(tmp_path: Path) -> None:
    text = (CONFIGS / "aa55-reference.toml").read_text()
    bcd = text.replace(EVENT_FIELD, EVENT_FIELD.replace("uint", "bcd"))
    bcd = bcd.replace(SEQ_FIELD, SEQ_FIELD.replace("uint", "bcd"))
    vendor = tmp_path / "vendor.toml"
    vendor.write_text(bcd)
    spec = load_definition(vendor).binary
    assert spec is not None
    frame = encode_frame(spec.framing, bytes.fromhex("01 A1B2C3D4E5F6 02 BF 12"))
    (sos,) = BinaryDecoder(spec).decode(frame).events
    assert (sos.kind, sos.code, sos.seq) == ("sos", "02", 12)


def test_a_blank_header_is_refused(tmp_path: Path) -> None:
    """Blanks only: no header, so every byte of the stream would start a candidate frame."""
    bad = tmp_path / "vendor.toml"
    bad.write_text((CONFIGS / "aa55-reference.toml").read_text().replace('"AA 55"', '"  "'))
    with pytest.raises(ConfigFileError, match=r"binary\.framing\.header: .*holds no bytes"):
        load_definition(bad)


RSSI_FIELD = '{ name = "rssi", offset = 7, width = 1, type = "int" }'


@pytest.mark.parametrize("scale", ["1e306", "-1e7", "inf", "nan", "0"])
def test_an_absurd_scale_is_refused_when_the_file_loads(tmp_path: Path, scale: str) -> None:
    """A scale of 1e306 made every frame's field infinite, so every frame was counted as a
    decode_error; a scale of 0 reads every value as 0. Such a file is refused, naming the
    file, line and key."""
    text = (CONFIGS / "aa55-reference.toml").read_text()
    assert RSSI_FIELD in text
    bad = tmp_path / "vendor.toml"
    bad.write_text(text.replace(RSSI_FIELD, RSSI_FIELD.replace(" }", f", scale = {scale} }}")))
    with pytest.raises(ConfigFileError) as err:
        load_definition(bad)
    assert re.match(
        rf"{re.escape(str(bad))}:\d+: binary\.messages\[0\]\.fields\[2\]\.scale: ", str(err.value)
    )


def test_a_scale_a_device_may_need_is_taken(tmp_path: Path) -> None:
    """-1 for a station that sends the RSSI's magnitude (0x41 for -65 dBm), down to a
    millionth and up to a million either way."""
    from gateway.devices.decoders.binary import BinaryDecoder
    from gateway.devices.framers.binary import encode_frame

    text = (CONFIGS / "aa55-reference.toml").read_text()
    vendor = tmp_path / "vendor.toml"
    for scale in ("0.000001", "1e6", "-1e6", "-1"):
        vendor.write_text(
            text.replace(RSSI_FIELD, RSSI_FIELD.replace(" }", f", scale = {scale} }}"))
        )
        spec = load_definition(vendor).binary
        assert spec is not None and spec.messages[0].fields[2].scale == float(scale)
    frame = encode_frame(spec.framing, bytes.fromhex("01 A1B2C3D4E5F6 00 41 07"))
    (seen,) = BinaryDecoder(spec).decode(frame).events
    assert seen.rssi == -65


LENGTH_FIELD = "length = { offset = 2, width = 1, counts_from = 3, includes_checksum = false }"


@pytest.mark.parametrize(
    ("framing", "room"),
    [
        ("max_length = 64", 58),  # 64 - the payload's offset 4 - the CRC's 2
        ("max_length = 4096", 254),  # a 1-byte length counts 255 from byte 3: 260 - 4 - 2
        ("fixed_length = 16", 10),
    ],
)
def test_a_field_beyond_the_longest_payload_is_refused_when_the_file_loads(
    tmp_path: Path, framing: str, room: int
) -> None:
    """A field the framing leaves no room for had every frame refused as short_payload at run
    time, an SOS among them; the file is refused, naming file and key, and a field ending on
    the last byte a frame can hold is taken."""
    text = (CONFIGS / "aa55-reference.toml").read_text()
    assert LENGTH_FIELD in text and "max_length = 64" in text
    if framing.startswith("fixed_length"):
        text = text.replace(LENGTH_FIELD, framing)
    else:
        text = text.replace("max_length = 64", framing)
    vendor = tmp_path / "vendor.toml"
    for offset in (room - 1, room):
        field = RSSI_FIELD.replace("offset = 7", f"offset = {offset}")
        vendor.write_text(text.replace(RSSI_FIELD, field))
        if offset < room:
            spec = load_definition(vendor).binary
            assert spec is not None
            payload = bytes.fromhex("A1B2C3D4E5F6 00") + bytes(room - 8) + b"\xbf"  # -65 dBm
            (frame,) = BinaryFramer(spec.framing).feed(
                encode_frame(spec.framing, b"\x01" + payload)
            )
            assert isinstance(frame, Frame)
            (seen,) = BinaryDecoder(spec).decode(frame.data).events
            assert seen.rssi == -65
            continue
        with pytest.raises(ConfigFileError) as err:
            load_definition(vendor)
        assert re.fullmatch(
            rf"{re.escape(str(vendor))}:\d+: binary\.messages\[0\]\.fields\[2\]\.offset: "
            rf"offset {room} \+ width 1 ends beyond the {room} payload bytes a frame can hold "
            r"\(binary\.framing\), so every frame would be refused",
            str(err.value),
        )


@pytest.mark.parametrize(
    ("encoding", "problem"),
    [
        ("hex", "is not a text encoding"),
        ("base64", "is not a text encoding"),
        ("rot13", "is not a text encoding"),
        ("undefined", "decodes no text"),
    ],
)
def test_a_codec_that_is_not_a_text_encoding_is_refused(
    tmp_path: Path, encoding: str, problem: str
) -> None:
    """Python knows these codecs, but they decode no text: every call would fail."""
    text = (CONFIGS / "espa444-nurse-call.toml").read_text()
    bad = tmp_path / "vendor.toml"
    bad.write_text(text.replace('encoding = "ascii"', f'encoding = "{encoding}"'))
    with pytest.raises(ConfigFileError, match=f"'{encoding}' {problem}"):
        load_definition(bad)


def test_gateway_config_devices_section(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f"""
[devices]
definitions_dir = "{CONFIGS}"

[[devices.ports]]
name = "ward-a"
definition = "aa55-reference.toml"
url = "/dev/serial/by-id/usb-FTDI-if00"

[[devices.dc09]]
name = "hubs"
definition = "dc09-receiver.toml"
port = 9000
keys = [{{ account = "1234", key = "000102030405060708090A0B0C0D0E0F" }}]
"""
    )
    cfg.chmod(0o644)  # the panels' AES keys for any local user to copy: refused
    with pytest.raises(
        ConfigFileError, match=r"devices.dc09\[0\].keys: a secret in a file readable"
    ):
        load_config(cfg)
    cfg.chmod(0o640)
    section = load_config(cfg).config.devices
    assert set(load_definitions(section)) == {"aa55-reference.toml", "dc09-receiver.toml"}


def test_a_definition_used_for_the_wrong_transport_is_refused() -> None:
    section = DevicesSection.model_validate(
        {
            "definitions_dir": str(CONFIGS),
            "ports": [{"name": "x", "definition": "dc09-receiver.toml", "url": "loop://"}],
            "dc09": [{"name": "y", "definition": "missing.toml", "port": 1}],
        }
    )
    with pytest.raises(ConfigFileError) as err:
        load_definitions(section)
    assert "devices.ports[0].definition: a dc09 device cannot be a port" in str(err.value)
    assert "missing.toml: devices.dc09[0].definition: file not found" in str(err.value)


def test_two_readers_of_one_device_or_one_port_are_refused() -> None:
    port = {"definition": "aa55-reference.toml", "url": "/dev/serial/by-id/usb-FTDI-if00"}
    hub = {"definition": "dc09-receiver.toml", "port": 9000}
    cases = [
        ({"ports": [{"name": "a", **port}, {"name": "b", **port}]}, "read the same device"),
        (
            {"dc09": [{"name": "a", **hub}, {"name": "b", **hub, "tcp": False}]},
            "listen on the same port: ['udp 0.0.0.0:9000 and 0.0.0.0:9000']",
        ),
    ]
    for section, expected in cases:
        with pytest.raises(ValueError, match=re.escape(expected)):
            DevicesSection.model_validate(section)
    apart = {"dc09": [{"name": "a", **hub}, {"name": "b", **hub, "port": 0}]}
    assert len(DevicesSection.model_validate(apart).dc09) == 2  # 0: any free port


def test_dc09_receivers_that_could_not_both_listen_are_refused_when_the_config_loads() -> None:
    """Both passed the check and then failed the start ("Address already in use", "Address
    family not supported"), taking every port of the gateway down with them."""
    hub = {"definition": "dc09-receiver.toml", "port": 9000}
    every = {"dc09": [{"name": "a", **hub}, {"name": "b", **hub, "host": "127.0.0.1"}]}
    with pytest.raises(ValueError, match=re.escape("tcp 0.0.0.0:9000 and 127.0.0.1:9000")):
        DevicesSection.model_validate(every)
    with pytest.raises(ValueError, match="IPv6 is not supported"):
        DevicesSection.model_validate({"dc09": [{"name": "a", **hub, "host": "::"}]})
    two = [{"name": "a", **hub, "host": "127.0.0.1"}, {"name": "b", **hub, "host": "10.0.0.2"}]
    assert len(DevicesSection.model_validate({"dc09": two}).dc09) == 2  # two addresses
    # one address, two spellings
    alias = [{"name": "a", **hub, "host": "localhost"}, {"name": "b", **hub, "host": " 127.0.0.1"}]
    with pytest.raises(ValueError, match=re.escape("tcp 127.0.0.1:9000 and 127.0.0.1:9000")):
        DevicesSection.model_validate({"dc09": alias})
    with pytest.raises(ValueError, match=re.escape("'300.1.1.1' is not an IPv4 address")):
        DevicesSection.model_validate({"dc09": [{"name": "a", **hub, "host": "300.1.1.1"}]})


def test_two_ports_on_one_path_written_two_ways_are_refused(tmp_path: Path) -> None:
    """A path and a spy:// capture of it, or the path written with a ./ in it, are one device:
    the second port could never open it (it is locked), and would stay down with its station.
    A serial server's port is one device however its host is written: the two connections
    would share (or, on most servers, fight over) its bytes."""
    port = {"definition": "aa55-reference.toml"}
    ports = [
        {"name": "ward-a", "url": str(tmp_path / "ttyUSB0"), **port},
        {"name": "ward-b", "url": f"spy://{tmp_path}/./ttyUSB0?file={tmp_path / 'c.txt'}", **port},
        {"name": "ward-c", "url": str(tmp_path / "ttyUSB1"), **port},
    ]
    with pytest.raises(ValueError, match=r"two ports read the same device: ward-a .*, ward-b "):
        DevicesSection.model_validate({"ports": ports})
    assert len(DevicesSection.model_validate({"ports": ports[::2]}).ports) == 2
    servers = [
        {"name": "ward-a", "url": "socket://Serial-Server:4001", **port},
        {"name": "ward-b", "url": "socket://serial-server:4001?logging=debug", **port},
        {"name": "ward-c", "url": "socket://serial-server:4002", **port},
    ]
    with pytest.raises(ValueError, match=r"two ports read the same device: ward-a .*, ward-b "):
        DevicesSection.model_validate({"ports": servers})
    assert len(DevicesSection.model_validate({"ports": servers[::2]}).ports) == 2


def test_a_config_loads_whatever_the_device_links_lead_to_now(tmp_path: Path) -> None:
    """Two ports whose links lead to one device node at this moment (a stale link to a pty
    number reused, an adapter replugged under the other's kernel name) still load: a config
    error would take every station down until /dev changes. The ports tell such a clash apart
    when they open (see test_link)."""
    node = tmp_path / "pts-0"
    node.touch()
    for name in ("ttyWRIST", "ttyESPA"):
        (tmp_path / name).symlink_to(node)
    port = {"definition": "aa55-reference.toml"}
    ports = [
        {"name": "wristbands", "url": str(tmp_path / "ttyWRIST"), **port},
        {"name": "nursecall", "url": str(tmp_path / "ttyESPA"), **port},
    ]
    assert len(DevicesSection.model_validate({"ports": ports}).ports) == 2


def test_a_dc09_receiver_that_would_listen_on_neither_tcp_nor_udp_is_refused() -> None:
    deaf = {"name": "a", "definition": "dc09-receiver.toml", "port": 9000, "tcp": False}
    with pytest.raises(ValueError, match="tcp and udp are both false"):
        DevicesSection.model_validate({"dc09": [deaf | {"udp": False}]})
    assert DevicesSection.model_validate({"dc09": [deaf]}).dc09[0].udp


def test_validate_config_checks_the_definitions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.toml").write_text('name = "broken"\n[binary]\n')
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f'[devices]\ndefinitions_dir = "{tmp_path}"\n[[devices.ports]]\nname = "a"\n'
        'definition = "broken.toml"\nurl = "loop://"\n'
    )
    assert main(["validate-config", str(cfg)]) == 2
    assert "broken.toml:2: binary.framing: required key is missing" in capsys.readouterr().err


@pytest.mark.parametrize("path", definition_files(CONFIGS), ids=lambda p: p.name)
def test_shipped_text_encoding_fits_the_serial_format(path: Path) -> None:
    """7 data bits carry ASCII only: an 8-bit encoding there promises text that cannot come."""
    spec = load_definition(path)
    if spec.serial.format.startswith("7"):
        sections = (spec.espa, spec.jsonlines, spec.contact_id)
        assert {s.encoding for s in sections if s is not None} <= {"ascii"}
