"""Todo tokens of known sizes for `status`'s todo sizes, and the check of what it shows: the same on
every backend that can tell (local, CouchDB)."""

from __future__ import annotations

import json

from conftest import Site

GIB = 2**30
# (id, fields): three of 4 cores, two of 2 cores and a GPU, one of memory alone, two of the [task] size,
# and one of 4 cores waiting on another (not todo yet: not counted).
TOKENS = [
    *((f"big-{n}", {"cores": 4}) for n in range(3)),
    *((f"gpu-{n}", {"cores": 2, "gpus": 1}) for n in range(2)),
    ("mem-0", {"memory": 4 * GIB}),
    *((f"plain-{n}", {}) for n in range(2)),
    ("later-0", {"cores": 4, "after": ["plain-0"]}),
]
EXPECTED = [
    {"cores": 4, "gpus": None, "memory": None, "count": 3},
    {"cores": 2, "gpus": 1, "memory": None, "count": 2},
    {"cores": None, "gpus": None, "memory": 4 * GIB, "count": 1},
]


def add_sized(site: Site) -> None:
    path = site.folder / "sized.jsonl"
    path.write_text("".join(json.dumps({"id": token_id, **fields}) + "\n" for token_id, fields in TOKENS))
    added = site.run("tokens", "add", "--jsonl", "sized.jsonl")
    assert added.returncode == 0, added.stderr


def check_status(site: Site) -> None:
    shown = site.run("status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert (status["todo"], status["waiting"]) == (8, 1)
    assert status["todo_sizes"] == EXPECTED
    text = site.run("status").stdout
    assert "todo size      3  4 cores\n" in text, text
    assert "\n               2  2 cores, 1 GPU\n" in text
    assert "\n               1  4.0GiB of memory\n" in text
    assert "\n               2  the [task] size\n" in text
