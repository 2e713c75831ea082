"""Device definitions: a vendor is a TOML file in ``device_configs/``, not a code change.

A file names the device and has exactly one protocol section (``binary``, ``jsonlines``,
``espa``, ``contact_id`` or ``dc09``), plus code maps where the protocol has event codes.
Loading goes through the same strict loader as the gateway config, so a typo is an error
naming file, line and key.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.configfile import NAME_PATTERN, Strict, load_toml_model
from gateway.devices.config import SerialFormat
from gateway.devices.framers.checksums import CHECKSUMS, ChecksumKind
from gateway.devices.model import RESTORABLE, Kind

ByteOrder = Literal["big", "little"]


def _hex(value: str) -> str:
    cleaned = value.replace(" ", "")
    try:
        bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError("must be hex bytes, e.g. 'AA 55'") from None
    return cleaned.upper()


def _encoding(value: str) -> str:
    """A text encoding: codecs also knows bytes-to-bytes ones ("hex", "base64", "zlib") that
    ``bytes.decode`` refuses, which would fail every frame at run time instead of here."""
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown text encoding {value!r}") from None
    try:
        b"A".decode(value)  # not b"": decoding nothing never looks the codec up
    except LookupError:
        raise ValueError(f"{value!r} is not a text encoding") from None
    except UnicodeDecodeError:  # a text encoding in which one byte says nothing (UTF-16)
        pass
    except UnicodeError:  # "undefined": refuses every text
        raise ValueError(f"{value!r} decodes no text") from None
    return value


HexBytes = Annotated[str, AfterValidator(_hex)]
Encoding = Annotated[str, AfterValidator(_encoding)]
DedupWindow = Annotated[
    float,
    Field(ge=0, le=600, description="Repeats of one (device, seq) this long are one event."),
]
StationSilence = Annotated[
    float | None,
    Field(
        gt=0,
        description="Station fault (link silent) after this long without a byte: stations are "
        "heard at least every 10 s (their bands' heartbeats); 3 missed.",
    ),
]


class SerialDefaults(Strict):
    """What the device usually speaks; a port in the gateway config may override it."""

    baudrate: int = Field(9600, ge=50, le=4_000_000)
    format: SerialFormat = "8N1"


# ---- binary frames ("AA 55" family) --------------------------------------------------------


class LengthField(Strict):
    offset: int = Field(ge=0, description="Offset of the length field from the frame start.")
    width: Literal[1, 2] = 1
    order: ByteOrder = "little"
    counts_from: int = Field(
        ge=0, description="Offset of the first byte the length counts (0 = the whole frame)."
    )
    includes_checksum: bool = Field(False, description="Whether the count includes the checksum.")


class Checksum(Strict):
    kind: ChecksumKind
    start: int = Field(0, ge=0, description="Offset of the first byte covered.")
    order: ByteOrder = Field("little", description="Byte order of a 16-bit checksum on the wire.")

    @property
    def size(self) -> int:
        return CHECKSUMS[self.kind][1]


class BinaryFraming(Strict):
    header: HexBytes = Field(min_length=2, description="Bytes every frame starts with.")
    length: LengthField | None = None
    fixed_length: int | None = Field(None, ge=2, le=4096)
    max_length: int = Field(256, ge=4, le=4096, description="Longer frames are absurd: rejected.")
    checksum: Checksum
    command_offset: int = Field(ge=0)
    command_width: Literal[1, 2] = 1
    payload_offset: int = Field(ge=0)

    @property
    def header_bytes(self) -> bytes:
        return bytes.fromhex(self.header)

    @field_validator("header")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        """A header of blanks ("  ") is no header: every byte would start a candidate frame."""
        if not bytes.fromhex(value):
            raise ValueError("holds no bytes; give the bytes every frame starts with, e.g. 'AA 55'")
        return value

    @model_validator(mode="after")
    def _one_length(self) -> BinaryFraming:
        if (self.length is None) == (self.fixed_length is None):
            raise ValueError("give either length or fixed_length")
        if self.length is not None and self.length.offset < len(self.header_bytes):
            raise ValueError("length.offset lies inside the header")
        self._parts_fit()
        return self

    def _parts_fit(self) -> None:
        """A command, length or payload that starts beyond the longest frame taken, or a length
        field whose shortest count already passes it, had every frame refused (an SOS among
        them) as bad_length, from a file that loaded without a word."""
        csize = self.checksum.size
        if self.fixed_length is not None:
            longest, limit = self.fixed_length, "fixed_length"
        else:
            longest, limit = self.max_length, "max_length"
        ends = {
            "command_offset + command_width": self.command_offset + self.command_width,
            "payload_offset": self.payload_offset,
        }
        if self.length is not None:
            lf = self.length
            ends["length.offset + length.width"] = lf.offset + lf.width
            ends["length.counts_from"] = lf.counts_from
        for what, end in ends.items():
            if end + csize > longest:
                raise ValueError(
                    f"{what} ({end}) and the {csize}-byte checksum do not fit in {limit} "
                    f"({longest}), so every frame would be refused"
                )

    @property
    def max_payload(self) -> int:
        """The most payload bytes a frame can hold: the framer takes no frame longer than
        ``fixed_length``, or than ``max_length`` and what the length field can count."""
        csize = self.checksum.size
        if self.fixed_length is not None:
            longest = self.fixed_length
        else:
            assert self.length is not None
            lf = self.length
            countable = lf.counts_from + 256**lf.width - 1 + (0 if lf.includes_checksum else csize)
            longest = min(self.max_length, countable)
        return max(0, longest - self.payload_offset - csize)


FieldType = Literal["uint", "int", "hex", "bcd", "text"]
MAX_SCALE = 1e6


def _scale(value: float | None) -> float | None:
    """A scale turns a device's count into the unit it stands for (0.1 for tenths of a
    degree, 10 for a count of 10 mV, -1 for an RSSI sent as its magnitude); none needs a
    factor beyond a million either way (micro to unit). Within it the widest field (32 bytes)
    stays a finite number: a scale near the float limit made every field infinite, so every
    frame was a decode_error, and 0 reads every value as 0."""
    if value is not None and not 0 < abs(value) <= MAX_SCALE:
        raise ValueError("must be non-zero and at most 1e6 either way, e.g. 0.1")
    return value


class FieldSpec(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    offset: int = Field(ge=0, description="From the start of the payload.")
    width: int = Field(ge=1, le=32)
    type: FieldType = "uint"
    order: ByteOrder | None = Field(None, description="Default: the definition's byte_order.")
    scale: Annotated[float | None, AfterValidator(_scale)] = Field(
        None, description="Multiplies the value read; non-zero, at most 1e6 either way."
    )
    encoding: Encoding = "ascii"


class CodeMap(Strict):
    kind: Kind
    name: str = Field("", max_length=64, description="A label, e.g. 'tamper'.")
    restores: Kind | None = Field(None, description="With kind = 'restore': what it ends.")

    @field_validator("restores")
    @classmethod
    def _restorable(cls, value: Kind | None) -> Kind | None:
        """The contract lists what a restore can end; any other value would be sent in an
        alarm.restore that a platform checking it refuses, and the alarm would stay open."""
        if value is not None and value not in RESTORABLE:
            allowed = ", ".join(sorted(RESTORABLE))
            raise ValueError(f"a restore cannot end {value.value!r}; one of {allowed}")
        return value


EventMap = Kind | CodeMap


def _code_keys(value: Any) -> Any:
    """A table's codes are numbers written as text ("2", "02"): two that are the same number
    would leave one of the two meanings silently (an SOS button recorded as a sighting)."""
    if not isinstance(value, dict):
        return value
    codes: dict[int, Any] = {}
    written: dict[int, str] = {}
    for key, item in value.items():
        text = str(key).strip()
        if not text.isdigit():
            raise ValueError(f"code {key!r} is not a whole number of 0 or more")
        code = int(text)
        if code in codes:
            raise ValueError(f"codes {written[code]!r} and {key!r} are the same number, {code}")
        codes[code], written[code] = item, str(key)
    return codes


CodeTable = Annotated[dict[int, EventMap], BeforeValidator(_code_keys)]


def as_code_map(value: EventMap) -> CodeMap:
    return value if isinstance(value, CodeMap) else CodeMap(kind=value)


def unmapped(code: str) -> CodeMap:
    """An alarm panel's event code the definition does not list (Contact ID or SIA). It is
    still an event the panel wants taken, perhaps a fire or a vendor's fall code nobody has
    mapped: refused, a serial receiver would resend it with the next SOS queued behind it and
    a DC-09 panel would drop it. So it is recorded as a ``device_alarm`` named after its code
    (and counted as ``unknown_code`` by the caller, so that the file gets it)."""
    return CodeMap(kind=Kind.DEVICE_ALARM, name=f"unmapped code {code}")


NUMBER_ROLES = ("event", "seq", "rssi", "battery")
NUMBER_TYPES = ("uint", "int", "bcd")


class MessageSpec(Strict):
    command: int = Field(ge=0, le=0xFFFF)
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    fields: list[FieldSpec]
    device: str = Field(description="The field that identifies the device.")
    seq: str | None = None
    rssi: str | None = None
    battery: str | None = None
    event: str | None = Field(None, description="The field whose value selects the event.")
    events: CodeTable = Field(default_factory=dict)
    kind: Kind | None = Field(None, description="Fixed kind when the message has no event field.")

    @property
    def min_payload(self) -> int:
        return max((f.offset + f.width for f in self.fields), default=0)

    @model_validator(mode="after")
    def _refs(self) -> MessageSpec:
        names = {f.name for f in self.fields}
        for role in ("device", "seq", "rssi", "battery", "event"):
            ref = getattr(self, role)
            if ref is not None and ref not in names:
                raise ValueError(f"{role} = {ref!r} is not one of the fields {sorted(names)}")
        if (self.event is None) == (self.kind is None):
            raise ValueError("give either event (with events) or a fixed kind")
        if self.event is not None and not self.events:
            raise ValueError("event needs an events table")
        by_name = {f.name: f for f in self.fields}
        for role in NUMBER_ROLES:
            ref = getattr(self, role)
            if ref is None:
                continue
            read = by_name[ref]
            if read.type not in NUMBER_TYPES:
                raise ValueError(
                    f"{role} = {ref!r} is read as {read.type}, not a number: give its field "
                    f"type {', '.join(NUMBER_TYPES)}"
                )
            if role in ("event", "seq") and read.scale is not None:
                raise ValueError(f"{role} = {ref!r} is a code, not a measure: it takes no scale")
        selector = by_name.get(self.event) if self.event is not None else None
        if selector is not None and selector.width <= 8:
            largest = {
                "uint": (1 << (8 * selector.width)) - 1,
                "int": (1 << (8 * selector.width - 1)) - 1,
                "bcd": 10 ** (2 * selector.width) - 1,
            }[selector.type]
            beyond = sorted(code for code in self.events if code > largest)
            if beyond:
                raise ValueError(
                    f"events {beyond} can never match: field {selector.name!r} is "
                    f"{selector.width} byte(s) read as {selector.type}, at most {largest}"
                )
        return self


class BinarySpec(Strict):
    byte_order: ByteOrder = "big"
    framing: BinaryFraming
    messages: list[MessageSpec] = Field(min_length=1)
    dedup_window_s: DedupWindow = 30.0
    silence_s: StationSilence = 30.0

    @model_validator(mode="after")
    def _unique(self) -> BinarySpec:
        commands = [m.command for m in self.messages]
        if len(commands) != len(set(commands)):
            raise ValueError("two messages share a command")
        self._fields_fit()
        return self

    def _fields_fit(self) -> None:
        """A field that ends beyond the longest payload a frame can hold is never read: every
        frame of its message would be refused as short_payload, an SOS among them."""
        room = self.framing.max_payload
        errors = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "field_beyond_payload",
                    "offset {offset} + width {width} ends beyond the {room} payload bytes a "
                    "frame can hold (binary.framing), so every frame would be refused",
                    {"offset": f.offset, "width": f.width, "room": room},
                ),
                loc=("messages", m, "fields", i, "offset"),
                input=f.offset,
            )
            for m, message in enumerate(self.messages)
            for i, f in enumerate(message.fields)
            if f.offset + f.width > room
        ]
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)


# ---- JSON-lines BLE gateways ---------------------------------------------------------------

BleFormat = Literal["bthome", "ibeacon", "eddystone_tlm", "eddystone_uid", "eddystone_url"]


class JsonKeys(Strict):
    type: str = "type"
    mac: str = "mac"
    rssi: str = "rssi"
    raw: str = "rawData"


class JsonLinesSpec(Strict):
    encoding: Encoding = "utf-8"
    max_line: int = Field(
        4096,
        ge=64,
        le=65_536,
        description="Longest line in bytes; a longer one is refused whole (too_long). A gateway "
        "that batches writes all it heard as one JSON array on one line.",
    )
    keys: JsonKeys = JsonKeys()
    gateway_type: str = Field("Gateway", description="Lines of this type name the station.")
    formats: tuple[BleFormat, ...] = (
        "bthome",
        "ibeacon",
        "eddystone_tlm",
        "eddystone_uid",
        "eddystone_url",
    )
    ibeacon_uuids: list[HexBytes] = Field(
        default_factory=list, description="Only these iBeacon UUIDs are bands; empty = all."
    )
    bthome_buttons: CodeTable = Field(
        default_factory=lambda: dict[int, EventMap]({1: Kind.SOS, 4: Kind.SOS, 0x80: Kind.SOS}),
        description="BTHome button value (01 press, 02 double, 03 triple, 04 long, 80 hold).",
    )
    dedup_window_s: DedupWindow = 30.0
    silence_s: StationSilence = 30.0


# ---- ESPA 4.4.4 ---------------------------------------------------------------------------


class EspaSpec(Strict):
    address: str = Field("2", pattern=r"^[1-9]$", description="Our address: the paging system.")
    master_address: str = Field(
        "1",
        pattern=r"^[1-9]$",
        description="The control station's: its '<address> ENQ' comes before it selects us. "
        "Any other station addressed on a shared line has its exchange to itself: we keep "
        "silent and record nothing until EOT.",
    )
    encoding: Encoding = "latin-1"
    call_types: dict[str, EventMap] = Field(default_factory=dict)
    default_call_kind: Kind | None = Field(
        Kind.SOS, description="Kind for call types not in call_types; none = refuse them."
    )
    call_status: dict[str, EventMap] = Field(
        default_factory=dict, description="Call status values (data id 7), e.g. a cancel."
    )
    priorities: dict[str, EventMap] = Field(
        default_factory=dict,
        description="Call priority values (data id 6), vendor-specific: where one is mapped it "
        "decides the kind before call_types (e.g. an emergency priority on a routine call type).",
    )
    response_timeout_s: float = Field(3.0, gt=0, le=60)
    silence_s: float = Field(120.0, gt=0, description="Link alarm after this much silence.")

    @model_validator(mode="after")
    def _two_addresses(self) -> EspaSpec:
        if self.master_address == self.address:
            raise ValueError(f"address and master_address are both {self.address!r}")
        return self


# ---- Contact ID lines and SIA DC-09 -------------------------------------------------------


class ContactIdSpec(Strict):
    encoding: Encoding = "ascii"
    ack: HexBytes | None = Field(None, description="Sent after a line is stored, e.g. '06'.")
    nak: HexBytes | None = Field(None, description="Sent when a line is refused, e.g. '15'.")
    dedup_window_s: DedupWindow = 30.0


class Dc09Spec(Strict):
    accept_ids: tuple[Literal["ADM-CID", "SIA-DCS", "NULL"], ...] = ("ADM-CID", "SIA-DCS", "NULL")
    max_past_s: float = Field(40.0, ge=0, description="Oldest message timestamp accepted.")
    max_future_s: float = Field(20.0, ge=0, description="Furthest-ahead timestamp accepted.")
    dedup_window_s: float = Field(120.0, ge=0, le=3600, description="A retry reuses its seq.")


CodeKey = Annotated[str, Field(pattern=r"^[0-9]{3}$")]
SiaKey = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class DefinitionFile(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    vendor: str = ""
    model: str = ""
    description: str = ""
    serial: SerialDefaults = SerialDefaults()
    binary: BinarySpec | None = None
    jsonlines: JsonLinesSpec | None = None
    espa: EspaSpec | None = None
    contact_id: ContactIdSpec | None = None
    dc09: Dc09Spec | None = None
    codes: dict[CodeKey, EventMap] = Field(
        default_factory=dict, description="Contact ID event codes (3 digits)."
    )
    sia_codes: dict[SiaKey, EventMap] = Field(
        default_factory=dict, description="SIA DC-03 event codes (2 letters)."
    )

    @property
    def protocol(self) -> str:
        for name in ("binary", "jsonlines", "espa", "contact_id", "dc09"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated definitions have a protocol")

    @model_validator(mode="after")
    def _one_protocol(self) -> DefinitionFile:
        present = [
            n
            for n in ("binary", "jsonlines", "espa", "contact_id", "dc09")
            if getattr(self, n) is not None
        ]
        if len(present) != 1:
            raise ValueError(
                "give exactly one protocol section: [binary], [jsonlines], [espa], "
                f"[contact_id] or [dc09] (found {present or 'none'})"
            )
        if present[0] in ("contact_id", "dc09") and not (self.codes or self.sia_codes):
            raise ValueError("a Contact ID or DC-09 device needs a [codes] table")
        return self


def load_definition(path: Path) -> DefinitionFile:
    """Read and validate one device definition; ConfigFileError names file, line and key."""
    return load_toml_model(path, DefinitionFile)


def definition_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.toml"))
