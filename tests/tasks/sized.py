"""A task that records what it got: start, end, its CPU affinity, and the resource variables the pilot set.

    sized.py RECORD_FOLDER TOKEN_ID SECONDS

One JSON file per run in RECORD_FOLDER, written when the task ends (a file per run: tasks run at once).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

VARIABLES = (
    "PILOT_CORES",
    "PILOT_CPUS",
    "PILOT_GPUS",
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "PILOT_MEMORY",
)


def main() -> None:
    folder, token_id, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    start = time.time()
    time.sleep(seconds)
    record = {
        "token": token_id,
        "start": start,
        "end": time.time(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "env": {name: os.environ.get(name) for name in VARIABLES},
    }
    path = Path(folder) / f"{token_id}.{os.getpid()}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record))
    temporary.rename(path)


if __name__ == "__main__":
    main()
