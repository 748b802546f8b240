"""Many pilots on one local pool file, and one pilot with many slots (a fat node, whose tasks start from
spawner threads), end to end through pilot.pyz: no pilot fails or meets a lock error, every token runs
exactly once."""

from __future__ import annotations

import collections

import pytest
from conftest import Site, local_config

PILOTS = 16
TOKENS = 320
RECORD = ["/bin/sh", "-c", 'echo "$1" >> "$2"', "record"]  # one write with O_APPEND: lines never mix


@pytest.mark.slow
def test_sixteen_pilots_on_one_local_pool_run_every_token_once(site: Site, reaper: list) -> None:
    ran = site.folder / "ran.log"
    site.write(local_config(site.folder, [*RECORD, "{id}", str(ran)], pilot={"slots": 1}))
    assert site.run("tokens", "add", "--range", str(TOKENS)).returncode == 0
    pilots = [site.start(log_name=f"pilot-{i}.log") for i in range(PILOTS)]
    reaper.extend(pilots)
    codes = [pilot.wait(timeout=600) for pilot in pilots]
    logs = [(site.folder / f"pilot-{i}.log").read_text() for i in range(PILOTS)]
    assert codes == [0] * PILOTS, [log[-2000:] for code, log in zip(codes, logs) if code]
    assert not [log for log in logs if "locked" in log.lower() and "database" in log.lower()]
    counts = collections.Counter(ran.read_text().split())
    assert sorted(counts) == sorted(f"range-{i}" for i in range(TOKENS))  # none missing
    assert [token for token, n in counts.items() if n > 1] == []  # none twice
    assert site.status() == {
        "todo": 0,
        "locked": 0,
        "done": TOKENS,
        "error": 0,
        "waiting": 0,
        "total": TOKENS,
    }
    assert sum("pool empty" in log for log in logs) == PILOTS


def test_a_fat_node_pilot_with_32_slots_runs_every_token_once(site: Site) -> None:
    """Its tasks start from spawner threads (spawn.background); one of them cannot start at all."""
    ran = site.folder / "ran.log"
    site.write(
        local_config(
            site.folder,
            ["{program}", "-c", 'echo "$1" >> "$2"', "record", "{id}", str(ran)],
            pilot={"slots": 32},
        )
    )
    site.add_tokens(
        [{"id": f"t-{i}", "program": "/bin/sh"} for i in range(300)] + [{"id": "bad", "program": "nope"}]
    )
    result = site.run(timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = collections.Counter(ran.read_text().split())
    assert sorted(counts) == sorted(f"t-{i}" for i in range(300)) and set(counts.values()) == {1}
    status = site.status()
    assert (status["done"], status["error"]) == (300, 1)
    assert all(a["reason"] == "command not found: nope" for a in site.token("bad")["attempts"])
