"""Tasks of different sizes through pilot.pyz on a CouchDB pool (pouchdb-server): the claims' selector
takes only what fits, a token too big stays todo, and a whole-node token is not starved."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Site
from servers.pouchdb import PouchDBServer
from sized_tasks import check_packing, mixed_tokens, read_records, sized_command

from pools.conftest import couch_config


def setup(site: Site, server: PouchDBServer, database: str, tokens: list, **keys: dict) -> Path:
    records = site.folder / "records"
    records.mkdir()
    site.write(couch_config(site.folder, server, database, sized_command(records), **keys))
    assert site.run("init").returncode == 0
    site.add_tokens(tokens)
    return records


def test_mixed_sizes_on_four_cores_couchdb(site: Site, pouchdb: PouchDBServer, couch_db: str) -> None:
    tokens = mixed_tokens(18)
    records = setup(site, pouchdb, couch_db, tokens, pilot={"cores": 4, "bind": False, "slots": 8})
    done = site.run("run", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert check_packing(read_records(records), tokens, 4, bound=False) > 2
    assert site.status()["done"] == 18


def test_a_token_too_big_stays_todo_unclaimed_couchdb(
    site: Site, pouchdb: PouchDBServer, couch_db: str
) -> None:
    tokens = [{"id": "fits", "cores": 1, "seconds": 0.1}, {"id": "too-big", "cores": "5-8", "seconds": 0.1}]
    setup(site, pouchdb, couch_db, tokens, pilot={"cores": 4, "bind": False})
    done = site.run("run", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 todo token(s) left for a bigger node" in done.stderr
    doc = pouchdb.request("GET", f"/{couch_db}/too-big").body
    assert (doc["lock"], doc["done"]) == (0, 0)
    assert doc["pilot"] == {"needs": {"cores": 5}}  # never claimed: no lease, no attempt
    shown = json.loads(site.run("tokens", "show", "fits").stdout)
    assert shown["attempts"][-1]["cores"] == 1 and shown["attempts"][-1]["max_rss"] > 0


def test_a_whole_node_token_is_not_starved_couchdb(site: Site, pouchdb: PouchDBServer, couch_db: str) -> None:
    ones = [{"id": f"one-{i:03d}", "cores": 1, "seconds": round(0.2 + 0.07 * (i % 5), 2)} for i in range(60)]
    tokens = [
        {"id": "a-whole", "cores": 4, "seconds": 0.2},
        *ones,
    ]  # CouchDB claims go in id order, at random
    records = setup(
        site,
        pouchdb,
        couch_db,
        tokens,
        pilot={"cores": 4, "bind": False, "slots": 8},
        walltime={"expected": "1s"},
    )
    done = site.run("run", timeout=300)
    (site.folder / "pilot.log").write_text(done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    ran = read_records(records)
    check_packing(ran, tokens, 4, bound=False)
    whole = next(record for record in ran if record["token"] == "a-whole")
    after = [record for record in ran if record["start"] >= whole["end"]]
    assert len(after) >= 10, f"only {len(after)} one-core tasks started after the whole-node one"
