"""The map-reduce example of site-configs/ (mapreduce.toml, examples/wordcount.*), run as its comments
say through pilot.pyz, in a copy of the folder: the split adds the maps and the reduce, two pilots run
them, and the reduce's total is the word count of the input."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace

from conftest import REPO, Site


def test_the_map_reduce_example_counts_the_words_of_its_input(site: Site, reaper: list) -> None:
    configs = site.folder / "site-configs"
    shutil.copytree(REPO / "site-configs", configs)
    site = replace(site, config=configs / "mapreduce.toml")
    added = site.run("tokens", "add", "--jsonl", str(configs / "examples" / "wordcount.jsonl"))
    assert added.returncode == 0, added.stderr
    pilots = [site.start(log_name=f"pilot-{i}.log") for i in range(2)]
    reaper.extend(pilots)
    assert [pilot.wait(timeout=120) for pilot in pilots] == [0, 0], (site.folder / "pilot-0.log").read_text()
    assert site.status() == {"todo": 0, "locked": 0, "done": 6, "error": 0, "waiting": 0, "total": 6}
    words = (configs / "examples" / "genomes.txt").read_text().split()
    total = json.loads((site.folder / ".demo" / "wordcount" / "total.json").read_text())
    assert total == Counter(words)
    reduce = site.token("wordcount.reduce")
    assert reduce["fields"]["after"] == [f"wordcount.{i}" for i in range(1, 5)]
    ends = [site.token(f"wordcount.{i}")["attempts"][-1]["ended"] for i in range(1, 5)]
    assert reduce["attempts"][-1]["started"] >= max(ends)
