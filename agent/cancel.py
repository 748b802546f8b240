"""`pilot.pyz tokens cancel`: tokens to error with the reason ``cancelled``, never claimed again until
`reset --errors`. A running token keeps its lease; its pilot learns at its next renewal (every
server.lease / 3) that the token was cancelled, not lost, stops the task as on a timeout (TERM, grace,
KILL) and records the attempt as cancelled: not charged, not counted by the black-hole breaker."""

from __future__ import annotations

from collections.abc import Sequence

from agent.errors import UsageError
from agent.pools import Pool
from agent.units import format_duration


def cancel(pool: Pool, token_ids: Sequence[str], *, all_todo: bool, lease: float) -> str:
    """Cancel and say what was done, in one line."""
    if bool(token_ids) == all_todo:
        raise UsageError("give the ids of the tokens to cancel, or --all-todo (not both)")
    count = pool.cancel(list(token_ids), all_todo=all_todo)
    return (
        f"{count} token(s) cancelled in {pool.where}; running ones are stopped by their pilots within "
        f"{format_duration(lease / 3)}"
    )
