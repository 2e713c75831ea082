"""Strict TOML loading shared by the gateway config and device definitions.

Installers edit these files by hand on site, so every error names the file, the key path and the
line, and suggests the key they probably meant (a typo must never silently become a default).
"""

from __future__ import annotations

import codecs
import difflib
import errno
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_FILE_BYTES = 1 << 20  # a config or a device definition; the shipped ones are a few KiB


class Strict(BaseModel):
    """Base of every model read from a file: unknown keys are errors, values are frozen, and
    numbers are finite (``inf`` would pass every ``ge`` bound and fail later, at run time)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, value: Any, info: ValidationInfo) -> Any:
        """TOML values have types, and a wrong one is a mistake to point out, not a value to
        convert: ``reserve_mb = true`` would be a 1 MiB disk reserve, ``enabled = "no"`` off."""
        if value is None or info.field_name is None:
            return value
        kinds = _kinds(cls.model_fields[info.field_name].annotation)
        if kinds and kinds <= {int, float} and isinstance(value, bool | str):
            raise ValueError(f"must be a number, not {_toml(value)}")
        if kinds == {bool} and not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {_toml(value)}")
        if Path in kinds and isinstance(value, str) and not value.strip():
            # "" is the working directory: wherever the gateway happened to be started
            raise ValueError("must not be empty: name a file or folder")
        return value


def _kinds(annotation: Any) -> set[Any]:
    """The types a field takes, None left out (``float | None`` -> {float})."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return {a for a in args if a is not type(None)}


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true or false"
    return "text (write it without quotes)" if isinstance(value, str) else type(value).__name__


@dataclass(frozen=True)
class Issue:
    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key or '(top level)'}: {self.message}"


class ConfigFileError(Exception):
    """A file that must not be used; carries every problem found, not just the first, and the
    warnings the same file gives (a retired key): the installer mends it all in one go."""

    def __init__(self, issues: Sequence[Issue], warnings: Sequence[Issue] = ()) -> None:
        self.issues = list(issues)
        self.warnings = list(warnings)
        lines = [str(i) for i in self.issues] + [f"warning: {w}" for w in self.warnings]
        super().__init__("\n".join(lines))


def check_order(low: float, high: float, low_name: str, high_name: str) -> None:
    """For backoff pairs and the like: the upper bound must not be below the lower one."""
    if high < low:
        raise ValueError(f"{high_name} must be >= {low_name}")


def key_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\".]+)\s*=")


def _split_dotted(text: str) -> list[str]:
    return [p.strip().strip('"') for p in text.split(".")]


def line_index(text: str) -> dict[Loc, int]:
    """Map key paths to the line that defines them.

    tomllib keeps no positions; a line scan is enough for the tables and keys people write by
    hand (including arrays of tables, counted in order).
    """
    index: dict[Loc, int] = {}
    table: Loc = ()
    array_counts: dict[Loc, int] = {}  # by the array's full path, its parents' indexes in it
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _TABLE.match(line)
        if m and not _KEY.match(line):
            # a header below an array of tables is in that array's latest element
            *parents, name = _split_dotted(m.group(2))
            path: Loc = ()
            for part in parents:
                path = (*path, part)
                if path in array_counts:
                    path = (*path, array_counts[path] - 1)
            path = (*path, name)
            if m.group(1) == "[[":
                n = array_counts.get(path, 0)
                array_counts[path] = n + 1
                path = (*path, n)
            table = path
            index.setdefault(table, number)
            continue
        k = _KEY.match(line)
        if k:
            parts = _split_dotted(k.group(1))
            for end in range(1, len(parts) + 1):  # a.b.c = 1 defines a and a.b here too
                index.setdefault((*table, *parts[:end]), number)
    return index


def _line_for(index: dict[Loc, int], loc: Loc) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in index:
            return index[loc[:end]]
    # a key written only as part of deeper tables ("[vison.camera]" for an unknown "vison"):
    # the first line that names it
    below = [line for path, line in index.items() if loc and path[: len(loc)] == loc]
    return min(below, default=None)


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """Follow a validation location down the model tree to find which keys were allowed."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _inner_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def issues_from_validation(
    err: ValidationError, model: type[BaseModel], file: str, index: dict[Loc, int]
) -> list[Issue]:
    issues = []
    for e in err.errors():
        loc: Loc = tuple(e["loc"])
        message = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            message = "unknown key"
            if parent is not None and isinstance(loc[-1], str):
                close = difflib.get_close_matches(loc[-1], list(parent.model_fields), n=1)
                if close:
                    message += f"; did you mean '{close[0]}'?"
        elif e["type"] == "missing":
            message = "required key is missing"
        issues.append(Issue(file, _line_for(index, loc), key_path(loc), message))
    return issues


Across = Callable[[M], list[tuple[Loc, str]]]


def load_toml_model(
    path: Path,
    model: type[M],
    across: Across[M] | None = None,
) -> M:
    """Read and validate a TOML file; raise ConfigFileError naming file, line and key."""
    data, text = read_toml(path)
    return validate_model(data, model, str(path), line_index(text), across)


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The file's values and its text (for line numbers); ConfigFileError if unreadable."""
    name = str(path)
    try:
        raw = _read_file(path)
    except FileNotFoundError:
        raise ConfigFileError([Issue(name, None, "", "file not found")]) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigFileError([Issue(name, None, "", f"cannot read: {exc}")]) from None
    # Notepad and some editors start a UTF-8 file with a byte-order mark: not TOML, but it
    # says nothing either, and "invalid statement at line 1" would not tell anyone why
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # an editor's other encoding: the line to look at
        at = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigFileError(
            [Issue(name, at, "", f"not UTF-8 text: byte {exc.object[exc.start]:#04x}")]
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        line = int(m.group(1)) if m else None
        if line is None and "at end of document" in str(exc):  # an unclosed string, say
            line = max(1, len(text.splitlines()))
        raise ConfigFileError([Issue(name, line, "", f"not valid TOML: {exc}")]) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigFileError(
            [Issue(name, None, "", "not valid TOML: nested too deeply")]
        ) from None
    return data, text


def _read_file(path: Path) -> bytes:
    """A regular file of a sensible size: a FIFO would wait for a writer for ever, and a
    device (``/dev/zero``) would be read until memory ran out."""
    with open(path, "rb", opener=_nonblocking) as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES // 1024} KiB", str(path))
    return data


def _nonblocking(path: str, flags: int) -> int:
    """Opening a FIFO for reading blocks until a writer comes: not with O_NONBLOCK."""
    return os.open(path, flags | os.O_NONBLOCK)


def drop_retired(
    data: dict[str, Any], retired: Mapping[Loc, str], name: str, index: dict[Loc, int]
) -> list[Issue]:
    """Take out the keys an earlier version accepted and this one no longer has; one Issue
    each, saying what became of it, for the caller to warn with. A site's file that was valid
    must not stop the gateway (its alarms with it) at an upgrade for a setting that is gone."""
    found = []
    for loc, why in retired.items():
        table: Any = data
        for part in loc[:-1]:
            table = table.get(part) if isinstance(table, dict) else None
        if isinstance(table, dict) and loc[-1] in table:
            del table[loc[-1]]
            found.append(Issue(name, _line_for(index, loc), key_path(loc), why))
    return found


def _nul_strings(data: Any) -> list[Loc]:
    """Where a string holds a NUL (TOML's \\u0000): no id, path, host or secret is meant to,
    and the operating system refuses one in a path only later, at run time. Walked without
    recursion, so a deeply nested value cannot overflow the stack."""
    found: list[Loc] = []
    stack: list[tuple[Loc, Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, str) and "\0" in value:
            found.append(loc)
        elif isinstance(value, dict):
            stack.extend(((*loc, str(k)), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((*loc, i), v) for i, v in enumerate(value))
    return sorted(found, key=key_path)


def validate_model(
    data: Any,
    model: type[M],
    name: str,
    index: dict[Loc, int] | None = None,
    across: Across[M] | None = None,
) -> M:
    """``across``: checks between sections, which no section's own validator can see; each
    problem is reported at the key it names, with that key's line."""
    index = index or {}
    if nul := _nul_strings(data):
        raise ConfigFileError(
            [
                Issue(name, _line_for(index, loc), key_path(loc), "contains a NUL character")
                for loc in nul
            ]
        )
    try:
        validated = model.model_validate(data)
    except ValidationError as err:
        raise ConfigFileError(issues_from_validation(err, model, name, index)) from None
    problems = across(validated) if across is not None else []
    if problems:
        raise ConfigFileError(
            [Issue(name, _line_for(index, loc), key_path(loc), text) for loc, text in problems]
        )
    return validated
