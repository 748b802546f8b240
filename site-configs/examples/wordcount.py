"""The map-reduce example (site-configs/mapreduce.toml): the words of a text file counted in parts.

One token (examples/wordcount.jsonl) starts it. Its task, the split, writes the rest of the workflow
to $PILOT_NEW_TOKENS: a map token per part, and a reduce token that comes `after` all of them. The
pilot adds them when the split succeeds; pilots run the maps in parallel and the reduce once every
map is done. Results go to .demo/wordcount/ beside site-configs/ (a real task would copy them to
durable storage).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

config_dir = Path(os.environ["PILOT_CONFIG_DIR"])
out = config_dir.parent / ".demo" / "wordcount"
role = os.environ["PILOT_TOKEN_ROLE"]
parts = int(os.environ["PILOT_TOKEN_PARTS"])


def save(path: Path, counts: Counter[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(counts, sort_keys=True))
    partial.replace(path)  # a reader never sees half a file


if role == "split":  # the whole workflow after this token, in two kinds of line
    me = os.environ["PILOT_TOKEN_ID"]
    with Path(os.environ["PILOT_NEW_TOKENS"]).open("w") as new:
        for part in range(parts):  # ids <my id>.1 to <my id>.<parts>: the line numbers
            line = {"role": "map", "input": os.environ["PILOT_TOKEN_INPUT"], "part": part, "parts": parts}
            new.write(json.dumps(line) + "\n")
        maps = [f"{me}.{number}" for number in range(1, parts + 1)]
        new.write(json.dumps({"id": f"{me}.reduce", "role": "reduce", "parts": parts, "after": maps}) + "\n")
elif role == "map":  # every parts-th line, from line `part` on
    part = int(os.environ["PILOT_TOKEN_PART"])
    lines = (config_dir / os.environ["PILOT_TOKEN_INPUT"]).read_text().splitlines()[part::parts]
    save(out / f"part-{part}.json", Counter(word for line in lines for word in line.split()))
else:  # reduce: every map is done, so every part is there
    total: Counter[str] = Counter()
    for part in range(parts):
        total.update(json.loads((out / f"part-{part}.json").read_text()))
    save(out / "total.json", total)
    print("most common:", ", ".join(f"{word} {n}" for word, n in total.most_common(5)))
