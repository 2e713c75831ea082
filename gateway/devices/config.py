"""The ``[devices]`` section of the gateway config: which ports and receivers to run.

Each port or receiver names a definition file in ``definitions_dir``; serial settings left
out here come from the definition's ``[serial]`` defaults.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.configfile import NAME_PATTERN, Strict, check_order

SerialFormat = Literal["8N1", "8E1", "8O1", "8N2", "7E1", "7O1", "7E2", "7O2"]
URL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "alt", "hwgrep")  # what pyserial opens


def _serial_url(value: str) -> str:
    """A typo here passed the check and left the port reopening for ever, with pyserial's
    words for it ("'<=' not supported between instances of 'int' and 'NoneType'" for a
    socket:// URL without its port)."""
    if not value.strip():
        raise ValueError("is empty; give the device, e.g. /dev/serial/by-id/usb-...")
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value  # a device path
    scheme = scheme.lower()  # as pyserial reads it, and as the link looks for it
    if scheme not in URL_SCHEMES:
        raise ValueError(
            f"{scheme}:// is not a kind of port the gateway opens; a device path "
            "(/dev/serial/by-id/...), socket://host:port, rfc2217://host:port, loop:// or "
            "spy://<device path>"
        )
    if scheme in ("socket", "rfc2217"):
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or port == 0:
            raise ValueError(f"{scheme}:// needs a host and a port, e.g. {scheme}://10.0.0.20:4001")
    elif scheme in ("spy", "alt", "hwgrep") and not rest.partition("?")[0]:
        raise ValueError(f"{scheme}:// needs the device after it, e.g. {scheme}:///dev/ttyUSB0")
    return f"{scheme}://{rest}"


class PortConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Names the port in health and events.")
    definition: str = Field(description="File in definitions_dir, e.g. 'aa55-reference.toml'.")
    url: str = Field(
        description="pyserial URL: /dev/serial/by-id/..., /dev/ttyUSB0, socket://host:port, "
        "loop://, or spy://... for field debugging."
    )
    station: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Station id in events; default: the port name. A BLE gateway that sends "
        "its own line (type Gateway) is named by its MAC from then on.",
    )
    baudrate: int | None = Field(
        None, ge=50, le=4_000_000, description="Default: the definition's."
    )
    format: SerialFormat | None = Field(
        None, description="Data bits, parity, stop bits. 7-bit formats are checked in software."
    )
    frame_timeout_s: float | None = Field(
        None,
        gt=0,
        le=30,
        description="A partial frame is dropped this long after its last byte, an ESPA block "
        "this long after its SOH; default: 1 s, for ESPA the definition's response_timeout_s "
        "(3 s in the shipped file).",
    )
    reopen_min_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="First delay before reopening a lost port; doubles per failure.",
    )
    reopen_max_s: float = Field(
        5.0, gt=0, le=600, description="Longest delay between reopen attempts."
    )
    silence_s: float | None = Field(
        None,
        gt=0,
        description="Report the link silent after this long without bytes; default: the "
        "definition's (30 s for base stations and BLE gateways, 120 s for ESPA, none for "
        "Contact ID receivers).",
    )
    dead_path_s: int = Field(
        30,
        ge=3,
        le=3600,
        description="socket:// ports: a serial server whose network path dies without a reset "
        "(a reboot, a cut cable) is noticed and reopened within about this long (TCP "
        "keepalive); a base station that only sends would otherwise look up for ever.",
    )

    @property
    def station_id(self) -> str:
        return self.station or self.name

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _serial_url(value)

    @model_validator(mode="after")
    def _backoff(self) -> PortConfig:
        check_order(self.reopen_min_s, self.reopen_max_s, "reopen_min_s", "reopen_max_s")
        return self


class AccountKey(Strict):
    account: str = Field(
        pattern=r"^[0-9A-Fa-f]{3,16}$", description="The panel account (as sent in #acct)."
    )
    key: SecretStr = Field(description="AES key as 32 or 64 hex digits (AES-128/256).")

    @field_validator("key")
    @classmethod
    def _key(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError("key must be hex") from None
        if len(raw) not in (16, 24, 32):
            raise ValueError("key must be 16, 24 or 32 bytes (32, 48 or 64 hex digits)")
        return value


ANY_ADDRESS = "0.0.0.0"


class Dc09Receiver(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Names the receiver in health and events.")
    definition: str = Field(description="A definition file with a [dc09] section.")
    host: str = Field(
        "0.0.0.0",
        description="IPv4 address (or host name) to listen on; 0.0.0.0: every address.",
    )
    port: int = Field(ge=0, le=65535, description="TCP and UDP port (0 = any free, for tests).")
    tcp: bool = Field(True, description="Listen on TCP.")
    udp: bool = Field(True, description="Listen on UDP.")
    station: str | None = Field(
        None, pattern=NAME_PATTERN, description="Station id in events; default: the name."
    )
    max_connections: int = Field(
        32, ge=1, le=1000, description="Simultaneous TCP connections; more are refused."
    )
    idle_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="A TCP connection that sends no message the receiver acknowledges this "
        "long is closed (a byte or a refused message now and then does not count: it would "
        "hold a slot for ever).",
    )
    frame_timeout_s: float = Field(
        2.0, gt=0, le=30, description="A partial message older than this is dropped."
    )
    keys: list[AccountKey] = Field(
        default_factory=list,
        description="AES keys per account. A config file holding them must not be readable "
        "by every user.",
    )

    @property
    def station_id(self) -> str:
        return self.station or self.name

    @field_validator("host")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        """The receiver's sockets are IPv4: an IPv6 address passed the check and then failed
        the start, taking every port of the gateway down with it."""
        value = value.strip()
        if ":" in value:
            raise ValueError(f"{value!r}: IPv6 is not supported; give an IPv4 address or 0.0.0.0")
        if not value:
            raise ValueError("empty: give an IPv4 address, or 0.0.0.0 for every address")
        # one spelling per address, so that two receivers on one port are seen as such
        if value.lower() == "localhost":
            return "127.0.0.1"
        if all(c.isdigit() or c == "." for c in value):
            try:
                return str(ipaddress.IPv4Address(value))
            except ValueError:
                raise ValueError(f"{value!r} is not an IPv4 address") from None
        return value

    @model_validator(mode="after")
    def _listens(self) -> Dc09Receiver:
        """With neither, the receiver would say it listens while no panel could reach it."""
        if not (self.tcp or self.udp):
            raise ValueError("tcp and udp are both false: the receiver would listen on neither")
        return self

    def key_for(self, account: str) -> bytes | None:
        for k in self.keys:
            if k.account.upper() == account.upper():
                return bytes.fromhex(k.key.get_secret_value())
        return None


class DevicesSection(Strict):
    definitions_dir: Path = Field(Path("device_configs"), description="Device definition files.")
    ports: list[PortConfig] = Field(
        default_factory=list, description="Serial ports, one table each."
    )
    dc09: list[Dc09Receiver] = Field(
        default_factory=list, description="SIA DC-09 network receivers, one table each."
    )
    record_timeout_s: float = Field(
        10.0, gt=0, le=120, description="Longest wait for the store before a source is NAKed."
    )

    @model_validator(mode="after")
    def _unique(self) -> DevicesSection:
        """Caught here, not at start: two readers of one device split its bytes, and of two
        DC-09 receivers on one port only the first would start."""
        dupes = _repeated([p.name for p in self.ports] + [r.name for r in self.dc09])
        if dupes:
            raise ValueError(f"port and receiver names must be unique: {dupes}")
        devices = [_device(p.url) for p in self.ports]
        shared = [
            ", ".join(
                f"{p.name} ({p.url})"
                for p, d in zip(self.ports, devices, strict=True)
                if d == device
            )
            for device in _repeated(devices)
        ]
        if shared:
            raise ValueError(f"two ports read the same device: {'; '.join(shared)}")
        # 0.0.0.0 listens on every address, and takes the port from any other
        listening = [
            (kind, r.port, r.host)
            for r in self.dc09
            for kind in ("tcp", "udp")
            if getattr(r, kind) and r.port
        ]
        taken = sorted(
            {
                f"{kind} {one}:{port} and {other}:{port}"
                for i, (kind, port, one) in enumerate(listening)
                for kind2, port2, other in listening[i + 1 :]
                if (kind, port) == (kind2, port2) and (one == other or ANY_ADDRESS in (one, other))
            }
        )
        if taken:
            raise ValueError(f"two DC-09 receivers listen on the same port: {taken}")
        return self


def _device(url: str) -> str:
    """The device a port's URL names: a ``spy://`` URL reads the same device as its path. Paths
    are compared as written, not where their links lead now: /dev changes under a running
    site (an adapter replugged, a stale link to a reused pty), and a config must not fail to
    load over it, taking every station down. Two names that lead to one adapter while the
    gateway runs are told apart by the ports themselves (``AdapterClaims`` in link.py), and
    host names are not looked up."""
    path = url.removeprefix("spy://").partition("?")[0]
    if path.startswith("/"):
        return os.path.normpath(path)
    # a serial server: its host in capitals or with options after it is the same one
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return url
    if parts.hostname is None or port is None:
        return url
    return f"{parts.scheme.lower()}://{parts.hostname}:{port}"


def _repeated(items: list[str]) -> list[str]:
    return sorted({x for x in items if items.count(x) > 1})
