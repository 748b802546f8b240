"""Durations ("90s", "10m", "1h30m") and sizes ("50GB", "1GiB") as people write them in site.toml."""

from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]I?B|B|)", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in ``text``, one or more number-unit parts: "90s", "10m", "2h", "1h30m", "500ms".

    Raises ValueError with the expected form when ``text`` is not a duration.
    """
    compact = text.strip().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f'expected a duration like "90s", "10m" or "2h", got {text!r}')
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def format_duration(seconds: float) -> str:
    """A short human form: 0.4s, 42s, 6m, 1h05m, 2d03h."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m" if minutes >= 10 or not secs else f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def parse_size(text: str) -> int:
    """Bytes in ``text``: "50GB" (powers of ten), "1GiB" (powers of two), or a plain byte count."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f'expected a size like "500MB", "50GB" or "1GiB", got {text!r}')
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])


def format_size(size: float) -> str:
    """A short human form with binary units: 512B, 1.5KiB, 3.2GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")
