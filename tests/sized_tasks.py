"""Tokens of different sizes run by tests/tasks/sized.py, and the checks on what the tasks recorded."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

from conftest import REPO

SIZED = REPO / "tests" / "tasks" / "sized.py"


def sized_command(records: Path, seconds: str = "{seconds}") -> list[str]:
    return [sys.executable, str(SIZED), str(records), "{id}", seconds]


def mixed_tokens(count: int, sizes: tuple[int, ...] = (1, 2, 4)) -> list[dict[str, Any]]:
    """Tokens of the given core counts in turn, with sleeps that differ so that tasks end apart."""
    return [
        {"id": f"t{i:03d}", "cores": sizes[i % len(sizes)], "seconds": round(0.15 + 0.05 * (i % 4), 2)}
        for i in range(count)
    ]


def read_records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def parse_cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def overlapping(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (a, b)
        for a, b in itertools.combinations(records, 2)
        if a["start"] < b["end"] and b["start"] < a["end"]
    ]


def check_packing(
    records: list[dict[str, Any]], tokens: list[dict[str, Any]], cores: int, *, bound: bool
) -> int:
    """Every token ran once with the cores it asked; at no instant more than ``cores`` in use; tasks that
    overlapped in time had disjoint CPU lists (their own affinity, when ``bound``). Returns the most cores
    seen in use at once."""
    assert sorted(record["token"] for record in records) == sorted(token["id"] for token in tokens)
    asked = {token["id"]: token["cores"] for token in tokens}
    for record in records:
        cpus = parse_cpus(record["env"]["PILOT_CPUS"])
        assert len(cpus) == asked[record["token"]] == int(record["env"]["PILOT_CORES"]), record
        assert record["env"]["OMP_NUM_THREADS"] == str(len(cpus))
        if bound:
            assert set(record["affinity"]) == cpus, record
    events = sorted(
        [(record["start"], asked[record["token"]]) for record in records]
        + [(record["end"], -asked[record["token"]]) for record in records],
        key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
    )
    in_use = peak = 0
    for _, change in events:
        in_use += change
        peak = max(peak, in_use)
    assert peak <= cores, f"{peak} cores in use at once on a pilot with {cores}"
    for a, b in overlapping(records):
        key = "affinity" if bound else None
        first = set(a[key]) if key else parse_cpus(a["env"]["PILOT_CPUS"])
        second = set(b[key]) if key else parse_cpus(b["env"]["PILOT_CPUS"])
        assert not first & second, f"{a['token']} and {b['token']} ran at once on CPUs {first & second}"
    return peak
