"""Services for the supervisor: one per serial port, one per DC-09 receiver."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.configfile import ConfigFileError, Issue
from gateway.devices.config import DevicesSection, PortConfig
from gateway.devices.dedup import Dedup
from gateway.devices.definitions import DefinitionFile, load_definition
from gateway.devices.espa import EspaSession
from gateway.devices.link import AdapterClaims, SerialLink, SerialSettings
from gateway.devices.pipeline import (
    FRAME_TIMEOUT_S,
    PortHandler,
    definition_dedup,
    framed_handler,
)
from gateway.devices.recorder import Recorder
from gateway.lifecycle import Service
from gateway.store import Store


class PortService:
    """A serial port: its link (reader thread, reopen) and the handler for its protocol."""

    def __init__(
        self,
        cfg: PortConfig,
        definition: DefinitionFile,
        store: Store,
        record_timeout_s: float,
        dedup: Dedup | None = None,
        *,
        claims: AdapterClaims | None = None,
    ) -> None:
        """``dedup``: the repeat filter shared by the definition's ports (default: its own);
        ``claims``: the adapters the gateway's ports have opened (default: its own)."""
        self.name = f"port:{cfg.name}"
        self.cfg = cfg
        self.definition = definition
        self.recorder = Recorder.for_source(store, cfg, definition.name, record_timeout_s)
        settings = SerialSettings(
            baudrate=cfg.baudrate or definition.serial.baudrate,
            format=cfg.format or definition.serial.format,
        )
        self.handler: PortHandler
        if definition.espa is not None:
            self.handler = EspaSession(
                definition.espa,
                self.recorder,
                silence_s=cfg.silence_s,
                frame_timeout_s=cfg.frame_timeout_s,
                parity_checked=settings.software_parity,
                char_s=settings.char_s,
            )
        else:
            self.handler = framed_handler(
                definition,
                self.recorder,
                frame_timeout_s=cfg.frame_timeout_s or FRAME_TIMEOUT_S,
                silence_s=cfg.silence_s if cfg.silence_s is not None else _silence(definition),
                dedup=dedup,
                char_s=settings.char_s,
            )
        self.link = SerialLink(
            cfg.name,
            cfg.url,
            settings,
            self.handler,
            reopen_min_s=cfg.reopen_min_s,
            reopen_max_s=cfg.reopen_max_s,
            dead_path_s=cfg.dead_path_s,
            claims=claims,
        )
        self.handler.write = self.link.write

    def start(self) -> None:
        self.link.start()

    def begin_stop(self) -> None:
        self.link.begin_stop()

    def stop(self) -> None:
        self.link.stop()

    def healthy(self) -> bool:
        # An unplugged adapter is reported, not "unhealthy": restarting the process would not
        # bring the cable back, and the watchdog must not restart the gateway over it.
        return self.link.alive()

    def health(self) -> dict[str, Any]:
        return {
            "url": self.cfg.url,
            "definition": self.definition.name,
            "link": self.link.stats.as_dict(time.monotonic()),
            "silent": self.handler.silent,
            "replies": dict(self.handler.replies),
            **self.handler.counters(),
            **self.recorder.stats.as_dict(),
        }


def _silence(definition: DefinitionFile) -> float | None:
    """The definition's own station supervision (None: a receiver that speaks only when an
    alarm comes, like a Contact ID receiver, is not expected to be heard)."""
    spec = definition.binary or definition.jsonlines
    return spec.silence_s if spec is not None else None


def load_definitions(section: DevicesSection) -> dict[str, DefinitionFile]:
    """Every definition the config names, loaded and checked against its use."""
    issues: list[Issue] = []
    loaded: dict[str, DefinitionFile] = {}
    uses = [(f"devices.ports[{i}]", p.definition, "port") for i, p in enumerate(section.ports)]
    uses += [(f"devices.dc09[{i}]", r.definition, "dc09") for i, r in enumerate(section.dc09)]
    for key, name, use in uses:
        path = section.definitions_dir / name
        if name not in loaded:
            try:
                loaded[name] = load_definition(path)
            except ConfigFileError as exc:
                # a file that cannot be read at all is a problem of the key that names it
                issues.extend(
                    Issue(i.file, None, f"{key}.definition", i.message)
                    if i.line is None and not i.key
                    else i
                    for i in exc.issues
                )
                continue
        protocol = loaded[name].protocol
        if (use == "dc09") != (protocol == "dc09"):
            issues.append(
                Issue(name, None, f"{key}.definition", f"a {protocol} device cannot be a {use}")
            )
    if issues:
        raise ConfigFileError(issues)
    return loaded


def build_services(
    section: DevicesSection, store: Store, clock_synced: Callable[[], bool] = lambda: True
) -> list[Service]:
    """The services for every configured port and receiver (definitions checked first)."""
    from gateway.devices.dc09 import Dc09Service

    definitions = load_definitions(section)

    def file_of(name: str) -> Path:  # one file, however the config writes its name
        return (section.definitions_dir / name).resolve()

    # a band heard by several base stations (radio ports of one definition) is filtered once
    dedups: dict[Path, Dedup] = {}
    for name, d in definitions.items():
        if d.protocol in ("binary", "jsonlines") and file_of(name) not in dedups:
            radios = sum(file_of(p.definition) == file_of(name) for p in section.ports)
            dedups[file_of(name)] = definition_dedup(d, ports=radios)
    claims = AdapterClaims()  # a port never takes another port's adapter (see link.py)
    services: list[Service] = [
        PortService(
            p,
            definitions[p.definition],
            store,
            section.record_timeout_s,
            dedups.get(file_of(p.definition)),
            claims=claims,
        )
        for p in section.ports
    ]
    services += [
        Dc09Service(r, definitions[r.definition], store, section.record_timeout_s, clock_synced)
        for r in section.dc09
    ]
    return services
