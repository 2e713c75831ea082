"""The ESPA framer on a dirty line: control characters inside a block end it, and a block
refused at its BCC still lets the next block through."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gateway.devices.framers.espa import ENQ, EOT, Control, EspaFramer, bcc
from gateway.devices.model import Frame, Reject
from gateway.devices.simulate import espa_block

BLOCK = espa_block([("1", "0815"), ("2", "SOS ROOM 12"), ("4", "3")])
SELECT = b"\x041\x052\x05"  # EOT, the master '1' identifies itself, selects us ('2')


def tokens(items: Sequence[object]) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, Control):
            out.append(f"{item.kind}{item.address or ''}")
        elif isinstance(item, Reject):
            out.append(item.reason)
        else:
            assert isinstance(item, Frame)
            out.append("block")
    return out


def test_a_noise_soh_does_not_swallow_the_masters_select() -> None:
    framer = EspaFramer()
    assert tokens(framer.feed(b"\x01" + SELECT + BLOCK)) == [
        "eot",
        "truncated",
        "enq1",
        "enq2",
        "block",
    ]
    assert framer.pending == 0


def test_enq_inside_a_block_aborts_it() -> None:
    framer = EspaFramer()
    assert tokens(framer.feed(BLOCK[:9] + b"\x05")) == ["truncated"]
    assert framer.pending == 0
    assert tokens(framer.feed(BLOCK)) == ["block"]


def test_eot_or_enq_as_the_bcc_is_the_bcc() -> None:
    """After ETX any byte is the BCC, even one that ends a block anywhere else."""
    for wanted in (EOT, ENQ):
        head = b"1\x021\x1f081"
        last = wanted ^ bcc(head + b"\x03")  # the text's last character makes the BCC so
        body = head + bytes([last]) + b"\x03"
        assert bcc(body) == wanted
        assert tokens(EspaFramer().feed(b"\x01" + body + bytes([wanted]))) == ["block"]


@pytest.mark.parametrize(
    ("cut", "reason"),
    [(b"\x01\x31\x02\x31\x1f\x30\x03", "bad_bcc"), (b"\x01\x31\x02\x31\x1f\xff\x03", "parity")],
    ids=["bad_bcc", "parity"],
)
def test_a_block_cut_before_its_bcc_does_not_cost_the_next(cut: bytes, reason: str) -> None:
    """The next block's SOH is read as the cut block's BCC: refused, and a block begins."""
    assert tokens(EspaFramer().feed(cut + BLOCK)) == [reason, "block"]
