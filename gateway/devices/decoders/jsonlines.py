"""JSON lines from BLE gateways (Minew-style): a station line, then one object per advert.

A line may also hold a JSON array of such objects (gateways that batch).
"""

from __future__ import annotations

from typing import Any

from gateway import jsonin
from gateway.devices.decoders.ble import AdvertError, decode_advert
from gateway.devices.definitions import JsonLinesSpec, as_code_map
from gateway.devices.model import Decoded, DeviceEvent, Kind, Reject, rejected


def _mac(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    mac = value.replace(":", "").replace("-", "").upper()
    return mac if len(mac) == 12 and all(c in "0123456789ABCDEF" for c in mac) else None


class JsonLinesDecoder:
    def __init__(self, spec: JsonLinesSpec) -> None:
        self.spec = spec
        self._uuids = {u.upper() for u in spec.ibeacon_uuids}

    def decode(self, line: bytes) -> Decoded:
        try:
            text = line.decode(self.spec.encoding)
        except UnicodeError:  # idna and punycode raise the base class
            return rejected("bad_text", line)
        try:
            doc = jsonin.parse(text, long_ints=True)
        except ValueError:  # not JSON, or nested deeper than any device's line
            return rejected("bad_json", line)
        items = doc if isinstance(doc, list) else [doc]
        events: list[DeviceEvent] = []
        rejects: list[Reject] = []
        station = None
        for item in items:
            if not isinstance(item, dict):
                rejects.append(Reject("bad_json", line, "not an object"))
                continue
            if item.get(self.spec.keys.type) == self.spec.gateway_type:
                station = _mac(item.get(self.spec.keys.mac))
                if station is None:
                    rejects.append(Reject("bad_field", line, "gateway line without a valid mac"))
                continue
            found = self._advert(item, line)
            events.extend(found.events)
            rejects.extend(found.rejects)
        return Decoded(events=tuple(events), rejects=tuple(rejects), station=station)

    def _advert(self, item: dict[str, Any], line: bytes) -> Decoded:
        keys = self.spec.keys
        mac = _mac(item.get(keys.mac))
        rssi = item.get(keys.rssi)
        raw_hex = item.get(keys.raw)
        if mac is None or not isinstance(raw_hex, str):
            return rejected("bad_field", line, "advert without mac or raw data")
        if not isinstance(rssi, int) or isinstance(rssi, bool):
            rssi = None  # a button press counts, whatever the gateway made of the signal
        try:
            raw = bytes.fromhex(raw_hex)
            advert = decode_advert(raw, self.spec.formats)
        except (ValueError, AdvertError) as exc:
            return rejected("bad_advert", line, str(exc))
        if advert is None:
            return Decoded()
        if advert.format == "ibeacon" and self._uuids and advert.ids["uuid"] not in self._uuids:
            return Decoded()
        ids = {"format": advert.format, **advert.ids}
        seen = DeviceEvent(
            Kind.SEEN,
            mac,
            seq=advert.packet_id,
            rssi=rssi,
            battery=advert.battery,
            ids=ids,
            raw=raw,
        )
        out = [seen]
        for button in advert.buttons:
            mapped = self.spec.bthome_buttons.get(button)
            if mapped is None:
                continue
            cmap = as_code_map(mapped)
            if cmap.kind is Kind.IGNORE:
                continue
            out.append(
                DeviceEvent(
                    cmap.kind,
                    mac,
                    code=f"button:{button:02X}",
                    seq=advert.packet_id,
                    rssi=rssi,
                    battery=advert.battery,
                    name=cmap.name or None,
                    restores=cmap.restores,
                    ids=ids,
                    raw=raw,
                )
            )
        # the complete structures before a malformed one are kept, and the rest counted
        tail = (Reject("bad_advert_tail", line, advert.malformed),) if advert.malformed else ()
        return Decoded(events=tuple(out), rejects=tail)
