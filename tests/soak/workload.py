"""The soak's workload: the tokens it adds, each one's fields following from a hash of its id, so that a
run, a rerun and the checks agree on what every token should do. Which parts a scenario gets depends on
what its backend can do (``Backend.features``):

- plain tokens (every backend): most work, some are bad (fail every time, so they end in error after
  task.max_attempts), some are flaky (fail their first attempt only, so retries show); 0.05 to 0.8 s;
- sizes ("sizes"): plain tokens ask 1 to 4 cores (`cores`), on pilots with `cores = 4` declared;
- a DAG ("after"): groups of a split, a fan-out of maps that come `after` it, and a merge `after` every
  map; one map of some groups is bad, so its merge must fail (dependency failed) and never run;
- parents ("children"): tasks that add `children` = K child tokens through $PILOT_NEW_TOKENS;
- long tokens ("cancel"): 10 to 20 seconds each, for the cancels to find running (chaos.py).

Ids: plain `soak-NNNN`, long `long-NN`, DAG `dag-G-split`, `dag-G-map-I`, `dag-G-merge`, parents
`kid-NNN` (their children `kid-NNN.<line>`, named by the pilot).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

DAG_GROUPS = 12
DAG_FAN_OUT = 10
DAG_BAD_EVERY = 4  # groups 0, 4, 8, ... have one bad map: their merge fails without running
LONG = 24  # tokens of 10 to 20 seconds, running long enough to be cancelled while they run
PARENTS = 40
CHILDREN = 5
SIZES = (1, 1, 1, 1, 1, 2, 2, 2, 3, 4)  # cores asked, by a hash byte: half of them one core


def digest(token_id: str) -> bytes:
    return hashlib.sha256(token_id.encode()).digest()


def plain(token_id: str) -> dict[str, Any]:
    """A token's fields, the same on every run: 2% bad, 5% flaky, the rest work; 0.05 to 0.8 seconds."""
    hashed = digest(token_id)
    roll = int.from_bytes(hashed[:4], "big") % 1000
    mode = "bad" if roll < 20 else "flaky" if roll < 70 else "ok"
    return {"id": token_id, "mode": mode, "seconds": round(0.05 + hashed[4] / 255 * 0.75, 2)}


def sized(token_id: str) -> dict[str, Any]:
    return {**plain(token_id), "cores": SIZES[digest(token_id)[5] % len(SIZES)]}


def dag_group(group: int) -> list[dict[str, Any]]:
    """A split, its fan-out, and the merge; short tasks (0.1 to 0.4 s) that all work but one map of
    every DAG_BAD_EVERY-th group."""
    split = f"dag-{group:02d}-split"
    maps = [f"dag-{group:02d}-map-{i:02d}" for i in range(DAG_FAN_OUT)]
    bad = maps[group % DAG_FAN_OUT] if group % DAG_BAD_EVERY == 0 else None
    lines = [{"id": split, "mode": "ok", "seconds": 0.3}]
    lines += [{"id": m, "mode": "bad" if m == bad else "ok", "seconds": 0.2, "after": [split]} for m in maps]
    lines.append({"id": f"dag-{group:02d}-merge", "mode": "ok", "seconds": 0.4, "after": maps})
    return lines


@dataclass(frozen=True)
class Workload:
    """What one scenario adds: ``tokens`` in all (before children), and the parts its backend can run."""

    tokens: int
    features: frozenset[str]

    def lines(self) -> list[dict[str, Any]]:
        """The JSON lines for `tokens add --jsonl`, in the order they are added."""
        lines: list[dict[str, Any]] = []
        if "after" in self.features:
            for group in range(DAG_GROUPS):
                lines += dag_group(group)
        if "children" in self.features:
            lines += [{**plain(f"kid-{i:03d}"), "children": CHILDREN} for i in range(PARENTS)]
        if "cancel" in self.features:
            lines += [{"id": f"long-{i:02d}", "mode": "ok", "seconds": 10 + i % 11} for i in range(LONG)]
        make = sized if "sizes" in self.features else plain
        lines += [make(f"soak-{i:04d}") for i in range(max(0, self.tokens - len(lines)))]
        return interleaved(lines)

    def parents(self) -> int:
        return PARENTS if "children" in self.features else 0


def interleaved(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The DAG and parent tokens spread among the plain ones (by a hash of the id, the same every run),
    keeping the order within a DAG group: an `after` may name a later line, but splits first reads
    better in a listing."""
    special = [line for line in lines if not line["id"].startswith("soak-")]
    common = [line for line in lines if line["id"].startswith("soak-")]
    if not special or not common:
        return lines
    step = max(1, len(common) // len(special))
    result: list[dict[str, Any]] = []
    for i, line in enumerate(common):
        result.append(line)
        if i % step == step - 1 and special:
            result.append(special.pop(0))
    return result + special
