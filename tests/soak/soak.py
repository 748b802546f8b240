"""Chaos soak (`make soak`, `make soak BACKEND=topos`; minutes, not part of `make test`): on each backend,
many pilots, kills, a black-hole node and a server outage at once, then a check that no token and no
result went astray. docs/soak.md says what it does and shows its figures.

The parts, each its own module here:
- backends.py: each backend's real server (started as the tests start it), its outage, its tokens at the end;
- workload.py: the tokens (plans that follow from a hash of the id);
- chaos.py: SIGKILLs of pilots (with or without their tasks) and the outage;
- scenario.py: the driver, 8 nodes of 1 to 4 slots, node 0 a black hole, a new pilot for every one that ends;
- task.py: the task, which logs every run to the execution log;
- checks.py: the checks, each with the change that makes it fail; figures.py: the tables.

    .venv/bin/python tests/soak/soak.py [--backend local|couchdb|...] [--tokens 2000] [--pilots 8]
        [--outage 30] [--seed 6] [--keep]

Exits 1 when a check fails on any backend, keeping that scenario's folder (also kept with --keep).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from backends import BACKENDS, FEATURES, built_features  # noqa: E402
from benchmarks.common import ensure_pyz, report  # noqa: E402
from checks import Analysis  # noqa: E402
from figures import checks_table, figures, summary_table  # noqa: E402
from scenario import Scenario  # noqa: E402


def run_scenario(args: argparse.Namespace, name: str, pyz: Path) -> Optional[Analysis]:
    """One backend's soak, from its server's start to its checks; None when its server cannot start."""
    folder = Path(tempfile.mkdtemp(prefix=f"pilot-soak-{name}-"))
    print(
        f"\n### {name}: soak in {folder}: {args.tokens} tokens, {args.pilots} pilots of 1 to 4 slots",
        flush=True,
    )
    backend = BACKENDS[name](folder)
    try:
        backend.start()
    except Exception as err:  # noqa: BLE001 - the server's own words, and on to the next backend
        print(f"soak: {name}: the server did not start: {err}", file=sys.stderr)
        backend.stop()
        return None
    scenario = Scenario(args, folder, pyz, backend)
    try:
        scenario.prepare()
        scenario.run()
        finals = backend.finals()
    finally:
        try:
            scenario.stop_all()
        finally:
            backend.stop()
    analysis = Analysis(scenario, finals)
    analysis.check()
    (folder / "pilots.json").write_text(json.dumps([pilot.record() for pilot in scenario.pilots], indent=1))
    if analysis.ok and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(
            f"\nkept {folder}: site*.toml, logs/, runs.log, pilots.json, nodes/ (workdirs), "
            "the server's folder"
        )
    return analysis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend", action="append", choices=sorted(BACKENDS), help="repeat for more; default all"
    )
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--pilots", type=int, default=8)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--black-hole-failures", type=int, default=3)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the server stays away")
    parser.add_argument("--seed", type=int, default=6, help="for the kills")
    parser.add_argument("--max-minutes", type=float, default=12.0, help="per scenario")
    parser.add_argument("--keep", action="store_true", help="keep the soak's folders even when they pass")
    parser.add_argument(
        "--features",
        help=f"the parts to run where the backend has them, comma separated, of {','.join(FEATURES)} "
        "(default: those whose module this checkout's agent/ has)",
    )
    args = parser.parse_args()
    args.features = built_features() if args.features is None else frozenset(args.features.split(",")) - {""}
    names = args.backend or list(BACKENDS)
    pyz = ensure_pyz()
    started = time.time()
    analyses, failed = [], []
    for name in names:
        analysis = run_scenario(args, name, pyz)
        if analysis is None:
            failed.append(name)
        else:
            analyses.append(analysis)
    for analysis in analyses:
        report(f"figures ({analysis.scenario.backend.name})", figures(analysis))
        analysis.print_checks()
    if analyses:
        summary_table(analyses)
        checks_table(analyses)
    print(f"\nsoak over {', '.join(names)}: {time.time() - started:.0f}s in all")
    if failed:
        print(f"soak: no scenario on {', '.join(failed)}: the server did not start", file=sys.stderr)
    return 0 if not failed and all(analysis.ok for analysis in analyses) else 1


if __name__ == "__main__":
    sys.exit(main())
