"""The execution log that tests/soak/task.py writes: one S line when a run starts, one E line when it
ends by itself, one T line when it is stopped with SIGTERM (by its pilot: a lease lost, a cancel, a
timeout). Read by the checks at the end, and by the scenario while it runs (to pick tasks to cancel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class Run:
    """One run of a task, from the execution log."""

    token: str
    attempt: int
    pilot: str
    start: float
    end: Optional[float] = None
    code: Optional[int] = None
    extra: dict[str, str] = field(default_factory=dict)  # key=value words of its S line
    terminated: Optional[float] = None  # when it got SIGTERM (and exited at once)

    @property
    def pid(self) -> int:
        return int(self.extra.get("pid", "0"))

    @property
    def cores(self) -> Optional[int]:
        value = self.extra.get("cores", "-")
        return None if value == "-" else int(value)

    @property
    def cpus(self) -> Optional[frozenset[int]]:
        """The CPUs $PILOT_CPUS gave it ("0-1,3"), or None where the pilot sets none."""
        value = self.extra.get("cpus", "-")
        if value == "-":
            return None
        cpus: set[int] = set()
        for part in value.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
        return frozenset(cpus)


def read_runs(path: Path) -> dict[tuple[str, int, str], Run]:
    runs: dict[tuple[str, int, str], Run] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if parts[0] == "S" and len(parts) >= 5:
            key = (parts[1], int(parts[2]), parts[3])
            extra = dict(word.split("=", 1) for word in parts[5:] if "=" in word)
            runs[key] = Run(parts[1], int(parts[2]), parts[3], float(parts[4]), extra=extra)
        elif parts[0] == "E" and len(parts) == 7 and (parts[1], int(parts[2]), parts[3]) in runs:
            run = runs[(parts[1], int(parts[2]), parts[3])]
            run.end, run.code = float(parts[5]), int(parts[6])
        elif parts[0] == "T" and len(parts) == 5 and (parts[1], int(parts[2]), parts[3]) in runs:
            runs[(parts[1], int(parts[2]), parts[3])].terminated = float(parts[4])
    return runs
