"""`pilot.pyz report`: the HTML page opened in headless Chromium (file URL, no network), its own counts
checked against the pool (`tokens export`, `status --json`), and the aggregated timeline of a big run."""

from __future__ import annotations

import json
import random
import re
import sqlite3
import statistics
import time
from pathlib import Path

import pytest
from browser import Elements, dump_dom, screenshot
from conftest import Site, local_config

from agent.identity import Identity
from agent.pools.local import LocalPool
from agent.views import figures

# Fails for inputs divisible by 5, times out (1 s) for those divisible by 7, else takes 50 ms.
TASK = "if [ $(($1 % 5)) = 0 ]; then exit 3; elif [ $(($1 % 7)) = 0 ]; then sleep 5; else sleep 0.05; fi"


def exported(site: Site) -> list[dict]:
    result = site.run("tokens", "export", "--jsonl", "-")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def self_contained(text: str) -> None:
    """Nothing that a browser would fetch: no script, no link, no external URL (SVG's xmlns is a name)."""
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    assert set(re.findall(r"https?://[^\"' )]+", text)) <= {"http://www.w3.org/2000/svg"}


@pytest.mark.slow
def test_report_of_a_run_opens_in_chromium_and_counts_what_the_pool_holds(site: Site, reaper: list) -> None:
    command = ["sh", "-c", TASK, "task", "{input}"]
    site.write(
        local_config(site.folder, command, task={"timeout": "1s", "max_attempts": 2}, pilot={"slots": 2})
    )
    assert site.run("tokens", "add", "--range", "20").returncode == 0
    pilots = [site.start(log_name=f"pilot-{i}.log") for i in range(2)]
    reaper.extend(pilots)
    assert [pilot.wait(timeout=180) for pilot in pilots] == [0, 0]
    result = site.run("report", "--html", "run.html", "--json", "run.json")
    assert result.returncode == 0, result.stderr
    page = site.folder / "run.html"
    self_contained(page.read_text())

    tokens = exported(site)
    attempts = [a for token in tokens for a in token["attempts"]]
    outcomes: dict[str, int] = {}
    for attempt in attempts:
        outcomes[attempt["outcome"]] = outcomes.get(attempt["outcome"], 0) + 1
    assert {"done", "failed", "timeout"} <= set(outcomes)  # the run had every kind the task makes

    dom = Elements(dump_dom(page))
    bars = dom.find("rect", class_="bar")
    assert len(bars) == len(attempts) == int(dom.by_id("timeline")["data-bars"])
    assert dom.by_id("timeline")["data-aggregated"] == "false"
    drawn: dict[str, int] = {}
    for bar in bars:
        drawn[bar["data-outcome"]] = drawn.get(bar["data-outcome"], 0) + 1
    legend = {li["data-outcome"]: int(li["data-count"]) for li in dom.find("li") if "data-outcome" in li}
    assert drawn == legend == outcomes
    assert sorted({bar["data-token"] for bar in bars}) == sorted(t["id"] for t in tokens)
    assert 2 <= int(dom.by_id("timeline")["data-rows"]) <= 4  # two pilots of two slots

    status = site.status()
    summary = {td["data-key"]: td["data-value"] for td in dom.find("td") if "data-key" in td}
    for key in ("done", "error", "todo", "locked"):
        assert int(summary[key]) == status[key], key
    assert int(summary["tokens"]) == status["total"] == 20
    assert int(summary["attempts"]) == len(attempts)
    assert (int(summary["pilots"]), int(summary["hosts"])) == (2, 1)
    first = min(a["started"] if a["started"] is not None else a["claimed"] for a in attempts)
    assert float(summary["makespan"]) == pytest.approx(max(a["ended"] for a in attempts) - first, abs=1e-3)
    assert 0 < float(summary["utilisation"]) <= 1
    done = [a["duration"] for a in attempts if a["outcome"] == "done"]
    assert float(summary["median_duration"]) == pytest.approx(statistics.median(done))
    data = json.loads((site.folder / "run.json").read_text())
    assert data["summary"]["attempts"] == len(attempts) and data["outcomes"] == outcomes
    assert (
        sum(item["count"] for item in data["failures_by_reason"]) == outcomes["failed"] + outcomes["timeout"]
    )
    charts = (
        "concurrency",
        "throughput",
        "durations",
        "failures-by-reason",
        "failures-by-host",
        "utilisation",
    )
    for chart in charts:
        dom.by_id(chart)
    bars = [
        item for item in dom.find("rect", class_="item") if re.fullmatch(r"\d+ attempts?", item["data-label"])
    ]
    per_token = {int(item["data-label"].split()[0]): int(item["data-count"]) for item in bars}
    expected: dict[int, int] = {}
    for token in tokens:
        expected[len(token["attempts"])] = expected.get(len(token["attempts"]), 0) + 1
    assert per_token == expected
    shown_pilots = sorted(row["data-pilot"] for row in dom.find("tr") if "data-pilot" in row)
    assert shown_pilots == sorted({a["pilot"] for a in attempts})  # utilisation per pilot
    measured = [a for a in attempts if None not in (a["cores"], a["cpu_user"], a["cpu_system"])]
    assert measured  # pilots record what each attempt was given and used
    asked = sum(a["cores"] * (a["ended"] - (a["started"] or a["claimed"])) for a in measured)
    used = sum(a["cpu_user"] + a["cpu_system"] for a in measured)
    assert float(summary["core_hours_asked"]) == pytest.approx(asked / 3600, abs=1e-4)
    assert float(summary["core_hours_used"]) == pytest.approx(used / 3600, abs=1e-4)
    assert screenshot(page, site.folder / "run.png") == (1200, 2600)
    assert (site.folder / "run.png").stat().st_size > 20_000  # a page, not a blank


def big_pool(path: Path, attempts: int, pilots: int) -> None:
    """A finished run of ``attempts`` attempts by ``pilots`` pilots of two slots on 8 hosts, written
    straight into the pool's tables (the layout LocalPool makes), each pilot running its tasks in turn."""
    LocalPool(path, Identity("t", "t", None), 600, create=True).close()
    rng = random.Random(3)
    start = time.time() - 3600
    rows = []
    for number in range(attempts):
        pilot = number % pilots
        slot_start = start + (number // (2 * pilots)) * 10 + (number % 2) * 0.1
        outcome = "failed" if rng.random() < 0.1 else "done"
        attempt = {
            "pilot": f"pilot-{pilot}",
            "host": f"node{pilot % 8}",
            "batch_job": None,
            "claimed": slot_start,
            "started": slot_start + 0.01,
            "ended": slot_start + rng.uniform(1, 9),
            "exit_code": 0 if outcome == "done" else 1,
            "signal": None,
            "outcome": outcome,
            "reason": f"exit code {0 if outcome == 'done' else 1}",
        }
        state = "done" if outcome == "done" else "error"
        rows.append((f"t-{number}", state, json.dumps([attempt]), attempt["ended"]))
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO tokens (id, state, fields, attempts, updated) VALUES (?, ?, '{}', ?, ?)", rows
        )


@pytest.mark.slow
def test_a_big_run_is_aggregated_into_cells_and_says_so(site: Site) -> None:
    site.write(local_config(site.folder, ["/bin/true"]))
    attempts = figures.MAX_BARS + 2000
    big_pool(site.folder / "pool.db", attempts, pilots=40)
    result = site.run("report", "--html", "run.html")
    assert result.returncode == 0, result.stderr
    page = site.folder / "run.html"
    self_contained(page.read_text())
    dom = Elements(dump_dom(page))
    timeline = dom.by_id("timeline")
    assert timeline["data-aggregated"] == "true" and timeline["data-bars"] == "0"
    assert timeline["data-rows"] == "8"  # 80 pilot slots are more than 60 rows: one row per host
    assert dom.find("rect", class_="bar") == []
    cells = dom.find("rect", class_="cell")
    assert 0 < len(cells) <= 8 * figures.COLUMNS
    assert sum(int(cell["data-attempts"]) for cell in cells) == attempts
    note = page.read_text()
    assert f"{attempts:,} attempts are more than a browser draws comfortably" in note
    assert "One row per host" in note
