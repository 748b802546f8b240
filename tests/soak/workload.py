"""The soak's workload: the tokens it adds, each one's fields following from a hash of its id, so that a
run, a rerun and the checks agree on what every token should do.

- plain tokens: most work, some are bad (fail every time, so they end in error after task.max_attempts),
  some are flaky (fail their first attempt only, so retries show); 0.05 to 0.8 seconds each.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


def digest(token_id: str) -> bytes:
    return hashlib.sha256(token_id.encode()).digest()


def plain(token_id: str) -> dict[str, Any]:
    """A token's fields, the same on every run: 2% bad, 5% flaky, the rest work; 0.05 to 0.8 seconds."""
    hashed = digest(token_id)
    roll = int.from_bytes(hashed[:4], "big") % 1000
    mode = "bad" if roll < 20 else "flaky" if roll < 70 else "ok"
    return {"id": token_id, "mode": mode, "seconds": round(0.05 + hashed[4] / 255 * 0.75, 2)}


@dataclass(frozen=True)
class Workload:
    """What one scenario adds: ``tokens`` plain tokens, and the parts its backend can run."""

    tokens: int
    features: frozenset[str]

    def lines(self) -> list[dict[str, Any]]:
        """The JSON lines for `tokens add --jsonl`, in the order they are added."""
        return [plain(f"soak-{i:04d}") for i in range(self.tokens)]
