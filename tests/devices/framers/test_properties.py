"""Property tests: garbage interleaved with valid frames never crashes a framer and never
loses a valid frame, however the stream is cut into reads.

What counts as garbage depends on what the framing can promise. A 16-bit CRC makes a false
frame vanishingly unlikely, so there garbage includes cut-off and corrupted frames. An 8-bit
sum or XOR matches by chance once in 256 candidates, so there garbage is kept free of the
header's first byte (cut-off frames are covered by the CRC framers, whose resync code is the
same). Garbage before a line must end its own line: without a terminator it is part of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devices.definitions import BinaryFraming
from gateway.devices.framers.binary import BinaryFramer, encode_frame
from gateway.devices.framers.checksums import ChecksumKind
from gateway.devices.framers.espa import ETX, RS, SOH, STX, US, EspaFramer, bcc
from gateway.devices.framers.lines import LineFramer
from gateway.devices.model import Frame

SETTINGS = settings(derandomize=True, max_examples=150, deadline=None)


def is_subsequence(wanted: Sequence[bytes], got: Sequence[bytes]) -> bool:
    it = iter(got)
    return all(any(w == g for g in it) for w in wanted)


def run(
    framer: BinaryFramer | LineFramer | EspaFramer, stream: bytes, cuts: list[int]
) -> list[bytes]:
    out: list[object] = []
    last = 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        out += framer.feed(stream[last:cut])
        last = cut
    out += framer.feed(stream[last:])
    out += framer.flush()
    assert framer.pending == 0
    return [item.data for item in out if isinstance(item, Frame)]


# ---- binary framers: one per checksum kind and length style ---------------------------------

FRAMINGS: dict[str, BinaryFraming] = {
    "crc16_modbus": BinaryFraming.model_validate(
        {"header": "AA55", "length": {"offset": 2, "counts_from": 3},
         "checksum": {"kind": "crc16_modbus", "start": 2}, "command_offset": 3,
         "payload_offset": 4, "max_length": 64}
    ),
    "crc16_arc": BinaryFraming.model_validate(
        {"header": "7E7E", "length": {"offset": 2, "width": 2, "order": "big", "counts_from": 0,
         "includes_checksum": True}, "checksum": {"kind": "crc16_arc", "order": "big"},
         "command_offset": 4, "payload_offset": 5, "max_length": 80}
    ),
    "sum8": BinaryFraming.model_validate(
        {"header": "55", "fixed_length": 12, "checksum": {"kind": "sum8"},
         "command_offset": 1, "payload_offset": 2}
    ),
    "xor8": BinaryFraming.model_validate(
        {"header": "FE01", "length": {"offset": 2, "counts_from": 4},
         "checksum": {"kind": "xor8", "start": 0}, "command_offset": 3,
         "payload_offset": 4, "max_length": 40}
    ),
}  # fmt: skip


def garbage_for(kind: ChecksumKind, spec: BinaryFraming) -> st.SearchStrategy[bytes]:
    first = spec.header_bytes[0]
    clean = st.binary(max_size=40).map(lambda b: bytes(x for x in b if x != first))
    if kind in ("sum8", "xor8"):
        return clean
    bodies = st.binary(min_size=2, max_size=20)
    frames = bodies.map(lambda b: encode_frame(spec, b))
    truncated = st.tuples(frames, st.integers(1, 30)).map(
        lambda t: t[0][: max(1, len(t[0]) - t[1])]
    )
    corrupted = st.tuples(frames, st.integers(0, 200)).map(
        lambda t: (
            t[0][: t[1] % len(t[0])]
            + bytes([t[0][t[1] % len(t[0])] ^ 0x10])
            + t[0][t[1] % len(t[0]) + 1 :]
        )
    )
    absurd = st.just(spec.header_bytes + b"\xff\xff\xff")
    return st.one_of(st.binary(max_size=40), clean, truncated, corrupted, absurd)


def binary_case(kind: ChecksumKind) -> Callable[..., None]:
    spec = FRAMINGS[kind]

    @SETTINGS
    @given(
        st.lists(
            st.tuples(garbage_for(kind, spec), st.binary(min_size=2, max_size=20)), max_size=8
        ),
        st.lists(st.integers(0, 10_000), max_size=6),
    )
    def prop(parts: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
        frames = [encode_frame(spec, body) for _, body in parts]
        stream = b"".join(g + f for (g, _), f in zip(parts, frames, strict=True))
        got = run(BinaryFramer(spec), stream, cuts)
        assert is_subsequence(frames, got)

    return prop


test_binary_crc16_modbus = binary_case("crc16_modbus")
test_binary_crc16_arc = binary_case("crc16_arc")
test_binary_sum8_fixed_length = binary_case("sum8")
test_binary_xor8 = binary_case("xor8")


# ---- lines ----------------------------------------------------------------------------------

line_text = st.binary(min_size=1, max_size=60).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"")
)


@SETTINGS
@given(
    st.lists(st.tuples(st.binary(max_size=80), line_text.filter(lambda b: b.strip())), max_size=8),
    st.lists(st.integers(0, 10_000), max_size=6),
    st.sampled_from([b"\n", b"\r", b"\r\n"]),
)
def test_lines(parts: list[tuple[bytes, bytes]], cuts: list[int], end: bytes) -> None:
    stream = b"".join(g + b"\n" + line + end for g, line in parts)
    got = run(LineFramer(max_line=64), stream, cuts)
    assert is_subsequence([line for _, line in parts], got)


# ---- ESPA -----------------------------------------------------------------------------------

espa_record = st.tuples(st.sampled_from("12345678"), st.binary(max_size=12)).map(
    lambda r: r[0].encode() + bytes([US]) + bytes(b & 0x7F for b in r[1] if b & 0x7F > 0x1F)
)


def espa_block(header: str, records: list[bytes]) -> bytes:
    body = header.encode() + bytes([STX]) + bytes([RS]).join(records) + bytes([ETX])
    return bytes([SOH]) + body + bytes([bcc(body)])


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=30),
            st.sampled_from("12345"),
            st.lists(espa_record, min_size=1, max_size=4),
        ),
        max_size=6,
    ),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_espa(parts: list[tuple[bytes, str, list[bytes]]], cuts: list[int]) -> None:
    blocks = [espa_block(h, recs) for _, h, recs in parts]
    stream = b"".join(g + b for (g, _, _), b in zip(parts, blocks, strict=True))
    got = run(EspaFramer(), stream, cuts)
    assert is_subsequence(blocks, got)
