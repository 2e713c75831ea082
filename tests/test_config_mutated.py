"""Mutated configs and device definitions (bit flips, cuts, lines dropped, doubled or swapped,
values of the wrong kind, other encodings) through ``gateway validate-config``: it ends with
0 or 2, never a traceback, and each problem names a file, its line and the key. Seeded: the
same files on every run."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[1]
VALUES = ('""', "-1", "0", "1e999", "nan", "inf", "true", "[]", "{}", '"\\u0000"', '"' + "x" * 300)
# a problem without a line: a key the file lacks, or a file tomllib cannot take apart
NO_LINE = ("required key is missing", "nested too deeply")
PROBLEM = re.compile(
    r"^(?P<file>\S+\.toml)(?P<line>:\d+)?: (?P<key>\(top level\)|\S+): (?P<message>.+)$"
)


def mutate(rng: random.Random, text: str) -> bytes:
    lines = text.splitlines(keepends=True)
    at = rng.randrange(len(lines))
    kind = rng.randrange(7)
    if kind == 0:
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 1:
        return text.encode()[: rng.randrange(len(text))]
    if kind == 2:
        del lines[at]
    elif kind == 3:
        lines.insert(at, lines[at])
    elif kind == 4:
        lines[at], lines[-1] = lines[-1], lines[at]
    elif kind == 5 and "=" in lines[at]:
        lines[at] = lines[at].split("=")[0] + "= " + rng.choice(VALUES) + "\n"
    else:
        return text.encode(rng.choice(["utf-16", "latin-1", "utf-8-sig"]), "replace")
    return "".join(lines).encode()


@pytest.fixture
def site(tmp_path: Path) -> tuple[list[str], Path]:
    """The example configs, each pointed at a copy of the device definitions."""
    defs = tmp_path / "device_configs"
    shutil.copytree(ROOT / "device_configs", defs)
    production = (ROOT / "examples" / "gateway.toml").read_text()
    demo = (ROOT / "examples" / "demo.toml").read_text()
    return [
        production.replace("/opt/eldercare-gateway/device_configs", str(defs)),
        demo.replace('"device_configs"', f'"{defs}"'),
    ], defs


def test_mutated_files_get_exit_0_or_2_and_each_problem_its_file_line_and_key(
    tmp_path: Path, site: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(20261207)
    configs, defs = site
    originals = {p: p.read_text() for p in defs.glob("*.toml")}
    path = tmp_path / "gateway.toml"
    exits = {0: 0, 2: 0}
    for _ in range(300):
        for definition, text in originals.items():
            definition.write_text(text)
        config = rng.choice(configs)
        if rng.random() < 0.5:
            path.write_bytes(mutate(rng, config))
        else:
            path.write_text(config)
            definition = rng.choice(sorted(originals))
            definition.write_bytes(mutate(rng, originals[definition]))
        code = main(["validate-config", str(path)])
        err = capsys.readouterr().err
        assert code in exits, err
        exits[code] += 1
        for problem in err.splitlines() if code else ():
            found = PROBLEM.match(problem)
            assert found, problem
            assert found["line"] or found["message"].endswith(NO_LINE), problem
    assert min(exits.values()) > 50, exits  # the mutations leave some files valid
