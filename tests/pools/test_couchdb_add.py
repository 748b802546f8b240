"""`tokens add` into CouchDB, end to end through pilot.pyz: resumable, not atomic (see docs/sizing.md)."""

from __future__ import annotations

import json

import pytest
from conftest import Site, one_line_error
from servers.pouchdb import PouchDBServer

from agent.errors import DependencyError, ExitCode
from agent.pools import NewToken
from pools.conftest import couch_config
from pools.test_couchdb import make_pool

pytestmark = pytest.mark.couchdb


def test_couchdb_add_stopped_by_a_duplicate_says_what_is_in_and_a_second_run_finishes(
    site: Site, pouchdb: PouchDBServer, couch_db: str
) -> None:
    """Resumable, not atomic: the error names the duplicate and how much of the input is in the pool;
    the same command, once the input is fixed, adds the rest and nothing twice."""
    site.write(couch_config(site.folder, pouchdb, couch_db, ["/bin/true"]))
    assert site.run("init").returncode == 0
    (site.folder / "old.jsonl").write_text(json.dumps({"id": "taken", "x": "old"}) + "\n")
    assert site.run("tokens", "add", "--jsonl", "old.jsonl").returncode == 0
    count, deep = 9_000, 6_500  # in the fourth batch of 2,000
    rows = [{"id": f"p-{n}", "x": n} for n in range(count)]
    rows[deep] = {"id": "taken", "x": "new"}
    path = site.folder / "params.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    line = one_line_error(site.run("tokens", "add", "--jsonl", "params.jsonl"), ExitCode.POOL)
    assert "token 'taken': already in the pool" in line and "with other fields" in line
    assert "the input's first 8000 tokens (up to 'p-7999') are in the pool, none after them" in line
    docs = pouchdb.docs(couch_db)
    assert docs["taken"]["x"] == "old"  # left as it was
    assert sorted(k for k in docs if k.startswith("p-")) == sorted(f"p-{n}" for n in range(8000) if n != deep)

    rows[deep] = {"id": "p-fixed", "x": deep}
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    again = site.run("tokens", "add", "--jsonl", "params.jsonl")
    assert again.returncode == 0, again.stderr
    assert f"added {count - 7999} tokens" in again.stdout  # p-8000 to p-8999 and p-fixed
    assert "7999 already there with the same fields, skipped" in again.stdout
    docs = pouchdb.docs(couch_db)
    assert len(docs) == count + 1
    assert site.status()["todo"] == count + 1


def test_couchdb_next_weeks_file_of_the_same_name_says_where_ids_come_from_and_how_to_add_it(
    site: Site, pouchdb: PouchDBServer, couch_db: str
) -> None:
    """Issue 21's newcomer: a new inputs.txt into a pool that holds last week's has the same ids (the
    file's name and line numbers); the line says so and that --prefix adds it under other ids."""
    site.write(couch_config(site.folder, pouchdb, couch_db, ["/bin/true"]))
    inputs = site.folder / "inputs.txt"
    inputs.write_text("week-1-a\nweek-1-b\n")
    assert site.run("tokens", "add", "--lines", "inputs.txt").returncode == 0
    inputs.write_text("week-2-a\nweek-2-b\n")
    line = one_line_error(site.run("tokens", "add", "--lines", "inputs.txt"), ExitCode.POOL)
    assert "token 'inputs-1': already in the pool" in line and "with other fields (and 1 more)" in line
    assert "Ids are inputs-<line number>, from the file's name and its line numbers" in line
    assert line.endswith("give them other ids with --prefix (e.g. --prefix inputs-2)"), line
    again = site.run("tokens", "add", "--lines", "inputs.txt", "--prefix", "inputs-2")
    assert again.returncode == 0, again.stderr
    assert site.token("inputs-2-1")["fields"]["input"] == "week-2-a"
    assert site.token("inputs-1")["fields"]["input"] == "week-1-a"


def test_an_unknown_token_after_in_a_later_batch_says_which_tokens_are_in(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    pool = make_pool(pouchdb, couch_db)
    pool.init()
    tokens = [NewToken(f"z-{n}", {"input": n}) for n in range(3000)]
    tokens[2100] = NewToken("z-2100", {"input": 2100, "after": ["nowhere"]})
    with pytest.raises(DependencyError) as raised:
        pool.add(tokens)
    assert "`after` names tokens in neither the pool nor the input: nowhere; the input's first 2000" in str(
        raised.value
    )
    assert len(pouchdb.docs(couch_db)) == 2000


@pytest.mark.parametrize("second", [30, 2_500], ids=["same-batch", "later-batch"])
def test_couchdb_an_id_given_twice_by_one_file_names_both_lines(
    site: Site, pouchdb: PouchDBServer, couch_db: str, second: int
) -> None:
    """In one batch the pool sees the two itself; in a later one the first is in the pool by then and
    reads as already there: either way the line names the file's two lines, and what the add left in."""
    site.write(couch_config(site.folder, pouchdb, couch_db, ["/bin/true"]))
    assert site.run("init").returncode == 0
    rows = [{"id": f"p-{n}", "x": n} for n in range(3_000)]
    rows[second] = {"id": "p-10", "x": "again"}
    (site.folder / "params.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    line = one_line_error(site.run("tokens", "add", "--jsonl", "params.jsonl"), ExitCode.POOL)
    assert f"token 'p-10': given twice in params.jsonl, on lines 11 and {second + 1};" in line, line
    if second < 2_000:
        assert "; nothing was added." in line
    else:
        assert "the input's first 3000 tokens (up to 'p-2999') are in the pool" in line
    assert "already in the pool" not in line
