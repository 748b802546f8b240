"""Packing: a fixed mixed workload of tasks of 1, 2, 4 and 8 cores on 8 declared cores, pilot.pyz against
QCG-PilotJob's local mode in the same run.

300 tokens (a fixed shuffle, 75 of each size) sleep 0.2 to 0.8 s each, so the work is known exactly: the
core-seconds asked, sum(cores x sleep). Each side's makespan is its whole run, start-up included; its
utilisation is that work over (8 x makespan), set against the ideal, the work over (8 x the least makespan
any schedule could have: work / 8, or the longest task). Targets: utilisation >= 95% of the ideal, and a
makespan no longer than QCG-PilotJob's. Sleeps use no CPU, so 8 cores run unbound on this machine's few.

    .venv/bin/python tests/benchmarks/bench_packing.py [--tokens 300] [--no-references]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_pyz, report
from conftest import to_toml
from references import QCG_SERVICE, qcg_report, qcg_service

CORES = 8
SIZES = (1, 2, 4, 8)
SLEEPS = (0.2, 0.4, 0.6, 0.8)


def workload(count: int) -> list[dict[str, Any]]:
    """The same tokens every run: sizes and sleeps in turn, in a fixed shuffle."""
    tokens = [
        {"id": f"t{i:04d}", "cores": SIZES[i % 4], "seconds": SLEEPS[(i // 4) % 4]} for i in range(count)
    ]
    random.Random(19).shuffle(tokens)
    return tokens


def ideal(tokens: list[dict[str, Any]]) -> tuple[float, float]:
    """(core-seconds of work, the least makespan any schedule could have)."""
    work = sum(token["cores"] * token["seconds"] for token in tokens)
    return work, max([work / CORES, *(token["seconds"] for token in tokens)])


def pilot_side(pyz: Path, folder: Path, tokens: list[dict[str, Any]]) -> float:
    """Seconds for one pilot.pyz with 8 declared, unbound cores to run the tokens, start-up included."""
    config = folder / "site.toml"
    sections = {
        "server": {"backend": "local", "path": str(folder / "pool.db")},
        "task": {"command": ["sleep", "{seconds}"]},
        "pilot": {"cores": CORES, "bind": False, "slots": CORES, "workdir": str(folder / "work")},
    }
    config.write_text(to_toml(sections))
    (folder / "tokens.jsonl").write_text("".join(json.dumps(token) + "\n" for token in tokens))
    add = [str(pyz), "tokens", "add", "--jsonl", str(folder / "tokens.jsonl"), "--config", str(config)]
    subprocess.run(add, check=True, stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(pyz), "--config", str(config)], capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - start
    if done.returncode != 0 or f"tasks: {len(tokens)} done, 0 failed" not in done.stderr:
        raise SystemExit(f"pilot exited {done.returncode}: {done.stderr[-2000:]}")
    return took


def qcg_side(folder: Path, tokens: list[dict[str, Any]]) -> Optional[float]:
    """Seconds for QCG-PilotJob's service in local mode on 8 cores, start-up included; None when it is not
    installed. Every job must be reported SUCCEED."""
    if not QCG_SERVICE.exists():
        return None
    jobs = [
        {
            "name": token["id"],
            "execution": {"exec": "sleep", "args": [str(token["seconds"])]},
            "resources": {"numCores": {"exact": token["cores"]}},
        }
        for token in tokens
    ]
    requests = [
        {"request": "submit", "jobs": jobs},
        {"request": "control", "command": "finishAfterAllTasksDone"},
    ]
    took = qcg_service(folder, requests, CORES)
    states = [record.get("state") for record in qcg_report(folder)]
    succeeded = states.count("SUCCEED")
    if succeeded != len(tokens):
        raise SystemExit(f"QCG-PilotJob: {succeeded} of {len(tokens)} jobs succeeded")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--no-references", action="store_true", help="skip QCG-PilotJob")
    args = parser.parse_args()
    tokens = workload(args.tokens)
    work, least = ideal(tokens)
    pyz = ensure_pyz()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "pilot").mkdir()
        (folder / "qcg").mkdir()
        ours = pilot_side(pyz, folder / "pilot", tokens)
        theirs = None if args.no_references else qcg_side(folder / "qcg", tokens)
    best = work / (CORES * least)
    rows = [
        ("workload", f"{len(tokens)} tasks of {'/'.join(map(str, SIZES))} cores, {work:.0f} core-seconds"),
        ("ideal", f"makespan {least:.1f}s, utilisation {best:.1%}"),
    ]
    for name, seconds in (("pilot.pyz", ours), ("QCG-PilotJob local", theirs)):
        if seconds is None:
            rows.append((name, "not measured (tests/benchmarks/install-references.sh installs it)"))
            continue
        used = work / (CORES * seconds)
        rows.append(
            (name, f"makespan {seconds:.1f}s, utilisation {used:.1%}, {used / best:.1%} of the ideal")
        )
    verdict = f"utilisation {work / (CORES * ours) / best:.1%} of the ideal (target >= 95%)"
    if theirs is not None:
        verdict += f"; makespan {ours / theirs:.2f} x QCG-PilotJob's (target <= 1)"
    rows.append(("targets", verdict))
    report(f"packing on {CORES} declared cores", rows)


if __name__ == "__main__":
    main()
