"""Typed, strict gateway configuration (one TOML file).

Every key has a default that runs out of the box (SQLite under ``var/``, no broker needed), so an
empty file is a valid config. Relative paths are taken from the working directory, which the
systemd unit sets to the install directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.configfile import (
    NAME_PATTERN,
    ConfigFileError,
    Issue,
    Loc,
    Strict,
    check_order,
    drop_retired,
    key_path,
    line_index,
    read_toml,
    validate_model,
)
from gateway.devices.config import DevicesSection
from gateway.vision.config import VisionSection, source_holds_secret

DAY_S = 86_400


class GatewaySection(Strict):
    id: str = Field("gw-dev", pattern=NAME_PATTERN, description="This gateway's id in topics.")
    site: str = Field("site-dev", pattern=NAME_PATTERN, description="Site (canteen/centre) id.")
    data_dir: Path = Field(Path("var"), description="Where the database and keys live.")


class ClockSection(Strict):
    sync_source: Literal["kernel", "timedatectl", "chrony", "assume_synced", "never"] = Field(
        "kernel",
        description="How to tell whether the wall clock is synchronised (a Pi has no RTC). "
        "'kernel' asks adjtimex, which systemd-timesyncd and chrony both keep up to date.",
    )
    check_interval_s: float = Field(
        30.0, ge=1, le=3600, description="How often the synchronisation state is checked."
    )


def _quota(mb: float) -> Any:
    return Field(mb, gt=0, le=1_000_000, description="Pending bytes allowed in this lane.")


class KeptLane(Strict):
    """Alarms and records: pending events are never evicted or expired, whatever their age."""

    quota_mb: float


class AlarmLane(KeptLane):
    """Alarms (P0): pending events are never evicted or expired, whatever their age."""

    quota_mb: float = _quota(64.0)


class RecordLane(KeptLane):
    """Records (P1): pending events are never evicted or expired, whatever their age."""

    quota_mb: float = _quota(512.0)


class TelemetryLane(Strict):
    """Telemetry (P2): over the quota its oldest pending events are evicted, and past ttl_s
    they expire (both counted). A quota lowered below what the lane holds is reached by
    housekeeping, a batch at a time; meanwhile new telemetry evicts as much as it adds."""

    quota_mb: float = _quota(256.0)
    ttl_s: float = Field(
        7.0 * DAY_S,
        ge=0,
        le=365 * DAY_S,
        description="Pending events older than this are expired (counted); 0 keeps them until "
        "the quota evicts them.",
    )


class LanesSection(Strict):
    """Each lane's table may give one key; the other keeps its default."""

    p0: AlarmLane = AlarmLane()
    p1: RecordLane = RecordLane()
    p2: TelemetryLane = TelemetryLane()


class StoreSection(Strict):
    path: Path | None = Field(None, description="SQLite file; default <data_dir>/gateway.db.")
    key_file: Path | None = Field(
        None,
        description="Key of the events' data, encrypted at rest (made at the first start, "
        "mode 0600); default <database>.key. Keep it with any backup of the database: "
        "without it the events cannot be read or sent.",
    )
    batch_max_rows: int = Field(512, ge=1, le=20_000, description="Most rows in one commit.")
    batch_linger_ms: float = Field(
        0.0,
        ge=0,
        le=200,
        description="Wait this long for more rows before a commit; 0 commits as soon as the "
        "writer is free (rows that arrive during a commit share the next one). "
        "P0 events never wait.",
    )
    telemetry_linger_ms: float = Field(
        1000.0,
        ge=0,
        le=5000,
        description="A commit holding only telemetry (P2) that no source waits for waits this "
        "long for more, and the deletions of delivered telemetry wait as long to ride along "
        "with the next events: every commit writes several database pages to the SD card "
        "however little it holds. Alarms and records never wait for it. 0: commit at once.",
    )
    synchronous: Literal["full", "normal"] = Field(
        "full", description="'full' survives power loss; 'normal' only a process crash."
    )
    min_free_disk_mb: float = Field(
        200.0,
        ge=0,
        le=1_000_000,
        description="Below this free space an event is written only if old telemetry can make "
        "room for it; otherwise it is refused (and its source is not acknowledged), except "
        "alarms and records while the disk reserve (reserve_mb) is kept for them.",
    )
    reserve_mb: float = Field(
        16.0,
        ge=0,
        le=10_000,
        description="Disk space held back in a file beside the database (<db>.reserve) and "
        "given up when the disk is full (filled by another program), so that alarms can still "
        "be written; taken back once free space is above the floor plus this. 0: none (a file "
        "left from a larger value is reduced at start).",
    )
    delivered_retention_days: float = Field(
        30.0,
        ge=0,
        le=3650,
        description="Delivered events stay in the local journal this long for audit (an erased "
        "elder's face decisions go at her erasure, or at their delivery; other elders' "
        "acceptances naming her stay, without her).",
    )
    housekeeping_interval_s: float = Field(
        10.0,
        ge=1,
        le=3600,
        description="How often TTLs, journal retention and the P2 quota are applied: in "
        "commits of at most batch_max_rows rows each, until done. A pass that finds "
        "something to remove commits, so a shorter interval only wears the SD card.",
    )
    lanes: LanesSection = LanesSection()

    def db_path(self, data_dir: Path) -> Path:
        return self.path if self.path is not None else data_dir / "gateway.db"

    def key_path(self, db_path: Path) -> Path:
        return self.key_file or db_path.with_name(db_path.name + ".key")


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_PORT = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d+))?")


def _broker_url(value: str) -> str:
    """A typo (``host;8883``, a space, port 0, a path) would otherwise pass here and only show
    as a gateway that never connects, or connects somewhere else than the installer meant."""
    parts = urlsplit(value)  # checks an IPv6 address in brackets
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("broker must look like mqtts://host:8883 or mqtt://host:1883")
    if parts.username is not None or parts.password is not None:
        # never used for the connection, and every message quoting the url would leak it
        raise ValueError(
            "broker url must not hold a user or password: use mqtt.username and mqtt.password_file"
        )
    if parts.path not in ("", "/") or "?" in value or "#" in value:
        raise ValueError("broker url must end after host:port (no path, query or fragment)")
    found = _HOST_PORT.fullmatch(parts.netloc)
    if found is None:
        raise ValueError(
            f"broker host:port {parts.netloc!r} is not a host name (letters, digits, hyphens, "
            "dots) or a bracketed IPv6 address, with an optional port"
        )
    if found["port"] is not None and not 1 <= int(found["port"]) <= 65535:
        raise ValueError(f"broker port {found['port']} is not between 1 and 65535")
    return value


BrokerUrl = Annotated[str, AfterValidator(_broker_url)]
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class TlsSection(Strict):
    ca_file: Path | None = Field(None, description="CA bundle; default: the system's.")
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Client key for mutual TLS (mode 0600).")

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSection(Strict):
    brokers: list[BrokerUrl] = Field(
        default_factory=list,
        description="Tried in order, failing over to the next; empty = buffer only.",
    )
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT protocol version. With 3.1.1 the gateway cannot tell the broker the "
        "largest request it takes (downlink.max_payload_bytes): a larger one arrives whole in "
        "memory before it is refused, so set the broker's message size limit. Nor can a 3.1.1 "
        "broker say it refused a message: one its ACL denies is acknowledged and dropped, and "
        "counted delivered here; keep 5 wherever the broker has ACLs.",
    )
    client_id: str | None = Field(None, description="Default: <site>-<gateway id>.")
    username: str | None = Field(None, description="Broker user name, if it asks for one.")
    password: SecretStr | None = Field(
        None,
        description="Broker password (prefer password_file: it keeps the secret out of "
        "the config). A config file holding it must not be readable by every user.",
    )
    password_file: Path | None = Field(
        None,
        description="Read the password from this file (0600, or 0640 with the gateway's "
        "group; one every user can read is refused).",
    )
    topic_prefix: str = Field(
        "eldercare",
        # levels joined by single '/': a leading, trailing or doubled one makes an empty
        # level, which subscriptions written from the contract would not match
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        max_length=64,
        description="Topics are <prefix>/<site>/<gateway id>/...; the prefix may have several "
        "levels (a/b), none of them empty.",
    )
    keepalive_s: int = Field(
        30,
        ge=5,
        le=3600,
        description="The broker notices a silent gateway after 1.5x this; the gateway notices "
        "a silent connection after up to 2x (with an alarm waiting: alarm_ack_timeout_s).",
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        le=120,
        description="How long each step of a connection may take: the TCP connection, the TLS "
        "handshake, the broker's CONNACK. A stop does not wait for a step under way.",
    )
    inflight_window: int = Field(32, ge=1, le=1000, description="Messages awaiting PUBACK.")
    inflight_max_bytes: int = Field(
        262_144,
        ge=1024,
        le=64_000_000,
        description="Bytes awaiting PUBACK (P0 exempt): keeps the pipe short, so an alarm is "
        "not queued behind megabytes of telemetry batches.",
    )
    p0_reserved: int = Field(
        4, ge=1, le=100, description="Extra in-flight slots only P0 alarms may use."
    )
    max_packet_bytes: int | None = Field(
        None,
        ge=1024,
        le=268_435_455,
        description="The broker's limit on a packet, for a broker that enforces one without "
        "announcing it (MQTT 3.1.1); an MQTT 5 broker's own limit counts too (the smaller "
        "wins). A message above it is not sent: the broker would only close the connection.",
    )
    batch_max_events: int = Field(200, ge=1, le=10_000, description="P2 events per message.")
    batch_max_bytes: int = Field(
        65_536, ge=1024, le=4_000_000, description="Size bound of one P2 batch message."
    )
    # The floors keep a broker that refuses the login from being hammered: 0.001 s gave over
    # 200 attempts a second; these allow at most about 10.
    reconnect_min_s: float = Field(
        1.0,
        ge=0.05,
        le=60,
        description="First reconnect delay; doubles per failure (jittered).",
    )
    reconnect_max_s: float = Field(60.0, ge=0.2, le=3600, description="Longest reconnect delay.")
    alarm_reconnect_max_s: float = Field(
        10.0,
        ge=0.2,
        le=3600,
        description="Longest reconnect delay while a P0 alarm waits to be delivered (never "
        "longer than reconnect_max_s); a new alarm cuts a longer wait short. Also the longest "
        "an alarm type the broker refused is held back before it is tried again.",
    )
    alarm_ack_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="A P0 alarm unacknowledged this long means the connection is dead though "
        "it looks open (half-open): drop it and send again on a new one. Never below 4x the "
        "PUBACK latency the link shows (telemetry included), up to 1.5x keepalive_s; doubles "
        "after each such drop, so a slow link is not churned; falls back as messages are "
        "acknowledged in time.",
    )
    session_expiry_s: int = Field(
        86_400,
        ge=0,
        le=4_294_967_295,
        description="Broker keeps downlink requests for us while offline (the MQTT maximum, "
        "4294967295, means for ever).",
    )
    health_interval_s: float = Field(
        30.0, ge=1, le=3600, description="How often the retained health message is published."
    )
    allow_plaintext_remote: bool = Field(
        False, description="Permit mqtt:// (no TLS) to a host other than this machine."
    )
    tls: TlsSection = TlsSection()

    @model_validator(mode="after")
    def _plaintext(self) -> MqttSection:
        for url in self.brokers:
            parts = urlsplit(url)
            if (
                parts.scheme == "mqtt"
                and parts.hostname not in LOOPBACK
                and not self.allow_plaintext_remote
            ):
                raise ValueError(
                    f"{url}: plaintext MQTT to a remote host; use mqtts:// "
                    "(or set allow_plaintext_remote = true on a closed network)"
                )
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.username is None and (self.password or self.password_file) is not None:
            raise ValueError("a password needs username too: MQTT sends no password without one")
        check_order(
            self.reconnect_min_s, self.reconnect_max_s, "reconnect_min_s", "reconnect_max_s"
        )
        return self


class DownlinkSection(Strict):
    max_payload_bytes: int = Field(
        4_194_304,
        ge=256,
        le=16_000_000,
        description="Larger requests are refused unread (face.enrol carries photos).",
    )
    remember_transactions: int = Field(
        10_000, ge=100, le=1_000_000, description="Answered requests kept to recognise repeats."
    )
    waiting_max_bytes: int = Field(
        16_777_216,
        ge=65_536,
        le=268_435_456,
        description="Memory that requests waiting their turn may hold; one more is answered "
        "busy (send it again later). A request is always taken when none waits.",
    )


class LoggingSection(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level (logs go to stderr, i.e. the journal under systemd)."
    )


class GatewayConfig(Strict):
    gateway: GatewaySection = GatewaySection()
    clock: ClockSection = ClockSection()
    store: StoreSection = StoreSection()
    mqtt: MqttSection = MqttSection()
    downlink: DownlinkSection = DownlinkSection()
    logging: LoggingSection = LoggingSection()
    devices: DevicesSection = DevicesSection()
    vision: VisionSection = VisionSection()

    @property
    def db_path(self) -> Path:
        return self.store.db_path(self.gateway.data_dir)


# Keys an earlier version accepted that this one has not: a site's config holding one still
# loads after an upgrade, with a warning naming the line and what became of the key.
RETIRED: dict[Loc, str] = {
    ("store", "lanes", lane, "ttl_s"): "ignored, removed on 2026-11-23: P0 and P1 events are "
    "never expired (quota_mb still bounds the lane); delete the line"
    for lane in ("p0", "p1")
}


# The keys that name a file read after the config itself: a problem found inside a definition
# never has one of these keys (its own keys stop at "devices" or "mqtt", unknown there).
_NAMES_A_FILE = re.compile(
    r"mqtt\.password_file|mqtt\.tls\.[a-z_]+(/[a-z_]+)?|devices\.(ports|dc09)\[\d+\]\.definition"
)


_LAST_PART = re.compile(r"(\.[^.\[]+|\[\d+\])$")


class LoadedConfig(BaseModel):
    """A validated config plus where it came from (its hash goes into the status message) and
    the retired keys it held (warnings, not errors)."""

    model_config = ConfigDict(frozen=True)
    config: GatewayConfig
    source: str
    version: str
    retired: tuple[Issue, ...] = ()
    lines: dict[str, int] = Field(default_factory=dict)  # key path -> the line that sets it

    def at_its_key(self, exc: ConfigFileError) -> ConfigFileError:
        """A file the config names (the password, a CA, a device definition) that cannot be
        used: each problem is said at the key that names the file, with that key's line, so
        the installer knows which line to fix; the file's own name stays in the message.
        Problems found inside such a file (with a line of their own) are left as they are."""
        issues = [
            Issue(
                self.source,
                self._line_of(issue.key.split("/")[0]),
                issue.key,
                f"{issue.file}: {issue.message}",
            )
            if issue.line is None and _NAMES_A_FILE.fullmatch(issue.key)
            else issue
            for issue in exc.issues
        ]
        return ConfigFileError(issues)

    def _line_of(self, key: str) -> int | None:
        """The line that sets ``key``, or else its nearest table's (a key written inside an
        inline table, ``mqtt = { password_file = ... }``, has no line of its own)."""
        while key not in self.lines:
            parent = _LAST_PART.sub("", key)
            if parent == key:
                return None
            key = parent
        return self.lines[key]


def load_config(path: Path | None) -> LoadedConfig:
    """Load and validate; raise ConfigFileError listing every problem with file, line and key."""
    if path is None:
        return LoadedConfig(config=GatewayConfig(), source="(defaults)", version="defaults")
    data, text = read_toml(path)
    index = line_index(text)
    retired = drop_retired(data, RETIRED, str(path), index)
    try:
        cfg = validate_model(data, GatewayConfig, str(path), index, across=files_apart)
    except ConfigFileError as exc:
        raise ConfigFileError(exc.issues, retired) from None
    secret = _inline_secret(cfg)
    if secret is not None and readable_by_all(path):
        raise ConfigFileError(
            [Issue(str(path), None, secret, f"a secret in a file {PRIVATE_FILE}")]
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    lines = {key_path(loc): line for loc, line in index.items()}
    return LoadedConfig(
        config=cfg, source=str(path), version=digest, retired=tuple(retired), lines=lines
    )


def files_apart(cfg: GatewayConfig) -> list[tuple[Loc, str]]:
    """The event journal and the face gallery each need a database and a key file of their
    own (the two keys may be one file: each use derives its own key from it). One database
    for both validated, and then the face stage never started ("exists but its key does not")
    or, given the key too, wrote faces into the events' file under one meta table."""
    data_dir = cfg.gateway.data_dir
    gallery = cfg.vision.gallery
    files: list[tuple[Loc, Path]] = [
        (("store", "path"), cfg.db_path),
        (("store", "key_file"), cfg.store.key_path(cfg.db_path)),
        (("vision", "gallery", "path"), gallery.db_path(data_dir)),
        (("vision", "gallery", "key_file"), gallery.key_path(data_dir)),
    ]
    seen: dict[str, Loc] = {}
    problems = []
    for loc, path in files:
        first = seen.setdefault(os.path.abspath(path), loc)
        if first == loc or first[-1] == loc[-1] == "key_file":
            continue
        at, other = (loc, first) if _given(cfg, loc) else (first, loc)
        default = "" if _given(cfg, other) else " (its default)"
        problems.append(
            (
                at,
                f"{path} is also {key_path(other)}{default}: the journal and the gallery "
                "each need a database and a key file of their own",
            )
        )
    return problems


def _given(cfg: GatewayConfig, loc: Loc) -> bool:
    """Whether the file sets the key, rather than leaving it to its default."""
    section: BaseModel = cfg
    for table in loc[:-1]:
        section = getattr(section, str(table))
    return loc[-1] in section.model_fields_set


PRIVATE_FILE = "readable by every user: chmod o-rw (0600, or 0640 with the gateway's group)"


def _inline_secret(cfg: GatewayConfig) -> str | None:
    """The first key that holds a secret in the config file itself (not in a file of its own)."""
    if cfg.mqtt.password is not None:
        return "mqtt.password"
    for i, receiver in enumerate(cfg.devices.dc09):
        if receiver.keys:
            return f"devices.dc09[{i}].keys"
    source = cfg.vision.camera.source
    if source is not None and source_holds_secret(source):
        return "vision.camera.source"  # the camera's password lets anyone watch the counter
    return None


def readable_by_all(path: Path) -> bool:
    """A secret file (password, client key) that any local user could copy. A directory is
    none: reading it fails with its own message ("Is a directory"), the one to act on."""
    mode = path.stat().st_mode
    return stat.S_ISREG(mode) and bool(mode & stat.S_IROTH)


def read_password(mqtt: MqttSection) -> str | None:
    if mqtt.password is not None:
        return mqtt.password.get_secret_value()
    if mqtt.password_file is not None:
        try:
            if readable_by_all(mqtt.password_file):
                raise ConfigFileError(
                    [Issue(str(mqtt.password_file), None, "mqtt.password_file", PRIVATE_FILE)]
                )
            return mqtt.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
            raise ConfigFileError(
                [Issue(str(mqtt.password_file), None, "mqtt.password_file", f"cannot read: {why}")]
            ) from None
    return None


__all__ = [
    "ConfigFileError",
    "GatewayConfig",
    "LoadedConfig",
    "load_config",
    "read_password",
    "validate_model",
]
