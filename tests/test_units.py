from __future__ import annotations

import pytest

from agent.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("500ms", 0.5), ("1.5h", 5400)],
)
def test_durations_are_read_as_people_write_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "10 x", "h", "-5s", "10m5"])
def test_malformed_duration_names_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration like"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("50GB", 50 * 10**9), ("1GiB", 2**30), ("4KiB", 4096), ("123", 123), ("1.5 MB", 1_500_000)],
)
def test_sizes_accept_decimal_and_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_malformed_size_is_refused() -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size("lots")


def test_durations_format_short() -> None:
    assert [format_duration(s) for s in (0.42, 42, 360, 3900, 90000)] == [
        "0.4s",
        "42s",
        "6m",
        "1h05m",
        "1d01h",
    ]
