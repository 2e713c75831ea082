import json

import pytest

from gateway.jsonin import MAX_DEPTH, parse, too_deep


def nested(levels: int) -> str:
    return (
        '{"a":' * (levels // 2)
        + "[" * (levels - levels // 2)
        + "1"
        + "]" * (levels - levels // 2)
        + "}" * (levels // 2)
    )


def test_text_as_deep_as_allowed_parses_and_one_level_more_is_refused() -> None:
    assert parse(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))
    with pytest.raises(ValueError, match=f"nested too deeply \\(over {MAX_DEPTH} levels\\)"):
        parse(nested(MAX_DEPTH + 1))


def test_a_stack_exhausting_text_is_refused_like_any_other_that_is_not_json() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse("[" * 200_000 + "]" * 200_000)


def test_brackets_inside_strings_do_not_count() -> None:
    deep_text = {"display": "[" * 100 + "{" * 100, "quote": '\\"[[[[' * 50}
    assert parse(json.dumps(deep_text)) == deep_text
    assert not too_deep('["\\\\", "' + "[" * 100 + '"]')  # an escaped backslash ends no string


def test_many_shallow_arrays_are_not_deep() -> None:
    wide = [[i] for i in range(100_000)]
    assert parse(json.dumps(wide)) == wide


def test_text_with_a_string_never_closed_is_refused() -> None:
    """json.loads stops at the open string; the brackets after it are not reached."""
    with pytest.raises(ValueError, match="Unterminated string"):
        parse('["never closed' + "[" * 100)
    with pytest.raises(ValueError, match="nested too deeply"):
        parse("[" * 100 + '"never closed')


def test_depth_carries_across_the_chunks_the_scan_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.jsonin._CHUNK", 7)
    for levels in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 2):
        shallow_first = "[[]]" * 20 + "[1," * levels + "2" + "]" * levels
        assert too_deep(shallow_first) == (levels > MAX_DEPTH), levels
