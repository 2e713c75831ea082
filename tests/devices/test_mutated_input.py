"""Mutated test vectors (bit flips, cuts, splices, runs of 0x00 and 0xFF, random bytes) never
raise out of a framer or decoder, never leave a framer holding more than a frame, and the valid
frame sent after them is still decoded. Seeded: the same streams on every run."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from gateway.devices.decoders import dc09
from gateway.devices.decoders.contact_id import decode_dc09
from gateway.devices.decoders.espa import decode_block
from gateway.devices.decoders.sia import decode_dcs
from gateway.devices.framers.espa import EspaFramer
from gateway.devices.model import Decoded, Frame, Kind
from gateway.devices.pipeline import Framer, framer_and_decoder
from tests.devices.conftest import definition
from tests.devices.test_vectors import AA55_SOS, DC09_EVENT, ESPA_CALL

BLE_PRESS = b'{"mac":"AC233FA00001","rssi":-61,"rawData":"0201060A16D2FC40002A015A3A01"}'
CID_SOS = b"1234181101010151"
POOL = (AA55_SOS, ESPA_CALL, BLE_PRESS, CID_SOS, DC09_EVENT)


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        at = rng.randint(0, len(out))
        op = rng.randrange(6)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            del out[at:]
        elif op == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 40))
        elif op == 3:
            spliced = rng.choice(POOL)
            out[at:at] = spliced[rng.randrange(len(spliced)) :]
        elif op == 4:
            out[at:at] = bytes([rng.choice((0x00, 0xFF))]) * rng.randint(1, 3000)
        elif out:
            del out[min(at, len(out) - 1)]
    return bytes(out)


def reads(rng: random.Random, stream: bytes) -> Iterator[bytes]:
    """The stream as a port may hand it over: cut anywhere."""
    cuts = sorted(rng.randint(0, len(stream)) for _ in range(rng.randint(0, 6)))
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        yield stream[start:end]


def frames_of(
    framer: Framer | EspaFramer, rng: random.Random, stream: bytes, most: int
) -> list[bytes]:
    out: list[object] = []
    for data in reads(rng, stream):
        out += framer.feed(data)
        assert framer.pending <= most
    out += framer.flush()
    assert framer.pending == 0
    return [item.data for item in out if isinstance(item, Frame)]


@pytest.mark.parametrize(
    ("name", "valid", "end", "most", "kind"),
    [
        ("aa55-reference", AA55_SOS, b"", 64, Kind.SOS),
        ("minew-ble-jsonlines", BLE_PRESS, b"\n", 65_536, Kind.SOS),
        ("contact-id-serial", CID_SOS, b"\r\n", 64, Kind.SOS),
    ],
    ids=["binary", "jsonlines", "contact_id"],
)
def test_a_valid_frame_after_mutated_ones_is_decoded(
    name: str, valid: bytes, end: bytes, most: int, kind: Kind
) -> None:
    """A line protocol's garbage ends its own line: without a terminator it is the line."""
    spec = definition(name)
    rng = random.Random(name)
    for _ in range(300):
        framer, decode = framer_and_decoder(spec)
        garbage = mutate(rng, valid + end)
        frames = frames_of(framer, rng, garbage + end + valid + end, most)
        decoded = [decode(f) for f in frames]
        assert frames and frames[-1] == valid, garbage
        assert kind in [ev.kind for ev in decoded[-1].events]


def test_a_valid_espa_block_after_mutated_ones_is_decoded() -> None:
    spec = definition("espa444-nurse-call").espa
    assert spec is not None
    rng = random.Random("espa")
    for _ in range(300):
        garbage = mutate(rng, ESPA_CALL)
        frames = frames_of(EspaFramer(), rng, garbage + ESPA_CALL, 1025)
        decoded = [decode_block(f, spec) for f in frames]
        assert frames and frames[-1] == ESPA_CALL, garbage
        assert decoded[-1].events[0].device == "0815"


def test_mutated_dc09_messages_are_refused_by_reason_only() -> None:
    """Whatever the bytes, parsing ends in a message or a Dc09Error with a counter name."""
    spec = definition("dc09-receiver")
    decoders: dict[str, Callable[..., Decoded]] = {
        "ADM-CID": lambda m, raw: decode_dc09(m.data, spec.codes, raw, m.seq, {}),
        "SIA-DCS": lambda m, raw: decode_dcs(m.data, spec.sia_codes, raw, m.seq, {}),
    }
    rng = random.Random("dc09")
    parsed = 0
    for _ in range(2000):
        raw = mutate(rng, DC09_EVENT.strip(b"\n\r"))
        try:
            msg = dc09.parse(raw.decode("latin-1"), {"1234": bytes(16)})
        except dc09.Dc09Error as exc:
            assert exc.reason.isidentifier()
            continue
        parsed += 1
        if msg.id in decoders:
            decoders[msg.id](msg, raw)
    assert parsed > 0
