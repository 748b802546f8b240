"""The PiCaS token layout and the claim arithmetic as pure functions: no server, no clock, no sleep."""

from __future__ import annotations

import base64
import random
from dataclasses import replace
from typing import Any

import pytest

from agent.pools import picas
from agent.pools.couchdb import BACKOFF_MAX, conflict_backoff, lease_scan_interval
from agent.pools.couchdb_windows import window_size
from agent.resources import Fit, Request
from agent.token import Attempt, Outcome, Report, Result, State

NOW = 1_800_000_000.0


def token(**changes: Any) -> dict[str, Any]:
    return {**picas.new_token("t1", {"input": "x"}), "_rev": "1-a", **changes}


def attempt(pilot: str = "p1") -> Attempt:
    return Attempt(pilot=pilot, host="node1", batch_job=None, claimed=NOW)


def lock(doc: dict[str, Any], by: str = "p1", lease: str = "L1", now: float = NOW) -> tuple[dict, list]:
    return picas.claimed(doc, attempt(by), lease_id=lease, expires=now + 60, design="Monitor", now=now)


def report(
    state: State, outcome: Outcome, code: int | None, failures: int = 0, sig: int | None = None
) -> Report:
    result = Result(outcome, f"exit code {code}", NOW, NOW + 1, code, sig, b"out", b"")
    return Report(result=result, state=state, failures=failures)


@pytest.mark.parametrize(
    ("doc", "state"),
    [
        ({"lock": 0, "done": 0}, State.TODO),
        ({"lock": 5, "done": 0}, State.LOCKED),
        ({"lock": 5, "done": 6, "exit_code": 0}, State.DONE),
        ({"lock": 5, "done": 6, "exit_code": "0"}, State.DONE),
        ({"lock": 5, "done": 6, "exit_code": 2}, State.ERROR),
        ({"lock": 99, "done": 99, "exit_code": ""}, State.ERROR),  # picas Task.error(): parseInt('') is NaN
        ({"lock": 0, "done": 6}, None),  # in none of the PiCaS views
        ({"done": 0}, None),
    ],
)
def test_the_state_follows_the_picas_view_conditions(doc: dict[str, Any], state: State | None) -> None:
    assert picas.state_of(doc) is state


@pytest.mark.parametrize(("value", "number"), [(0, 0), ("12abc", 12), (" -3", -3), ("", None), (None, None)])
def test_parse_int_is_javascripts(value: Any, number: int | None) -> None:
    assert picas.parse_int(value) == number


def test_the_monitor_views_use_the_picas_conditions_and_emit_ids() -> None:
    views = picas.monitor_views()
    assert list(views) == ["todo", "locked", "done", "error", "overview_total"]
    start = 'function(doc) {\n   if(doc.type == "token") {\n    if(doc.lock == 0 && '
    assert views["todo"]["map"].startswith(start)
    assert "emit(doc._id, doc._id);" in views["error"]["map"]
    assert "parseInt(doc.exit_code) != 0" in views["error"]["map"]
    reduce = "function (key, values, rereduce) {\n   return sum(values);\n}\n"
    assert views["overview_total"]["reduce"] == reduce
    assert "emit('locked', 1);" in views["overview_total"]["map"]


def test_a_claim_locks_as_picas_does_and_records_the_lease() -> None:
    new, attempts = lock(token())
    assert (new["lock"], new["done"], new["hostname"]) == (int(NOW), 0, "node1")
    assert new["pilot"]["lease"] == {"id": "L1", "expires": NOW + 60, "design": "Monitor"}
    assert new["_rev"] == "1-a"  # the write is conditional on the revision read
    assert attempts == [attempt()]
    assert picas.state_of(new) is State.LOCKED


def test_claiming_an_expired_lease_closes_the_old_attempt() -> None:
    first, _ = lock(token())
    second, attempts = lock(first, "p2", "L2", NOW + 100)
    assert [a.pilot for a in attempts] == ["p1", "p2"]
    assert attempts[0].outcome == Outcome.LEASE_EXPIRED.value
    assert attempts[0].ended == NOW + 60
    assert picas.lease_id_of(second) == "L2"


def test_a_done_report_sets_done_and_exit_code_zero_and_attaches_the_log() -> None:
    locked, _ = lock(token())
    new = picas.reported(locked, "L1", 0, report(State.DONE, Outcome.DONE, 0), NOW + 5)
    assert (new["done"], new["exit_code"], picas.state_of(new)) == (int(NOW + 5), 0, State.DONE)
    assert new["pilot"]["lease"] is None
    assert new["pilot"]["reported"] == "L1"
    assert new["pilot"]["attempts"][0]["outcome"] == "done"
    attachments = new["_attachments"]
    assert list(attachments) == ["logs_t1.out"]  # the empty stderr is left out
    assert base64.b64decode(attachments["logs_t1.out"]["data"]) == b"out"


def test_a_failure_goes_to_error_with_a_non_zero_exit_code_and_an_error_entry() -> None:
    locked, _ = lock(token())
    killed = picas.reported(locked, "L1", 0, report(State.ERROR, Outcome.TIMEOUT, None, 1, sig=15), NOW)
    assert killed["exit_code"] == 143
    assert picas.state_of(killed) is State.ERROR
    assert killed["error"] == [{"time": int(NOW), "message": "exit code None"}]
    assert killed["pilot"]["failures"] == 1


def test_a_failure_with_attempts_left_is_scrubbed_back_to_todo() -> None:
    locked, _ = lock(token())
    again = picas.reported(locked, "L1", 0, report(State.TODO, Outcome.FAILED, 3, 1), NOW)
    assert (again["lock"], again["done"], again["exit_code"], again["scrub_count"]) == (0, 0, "", 1)
    assert picas.state_of(again) is State.TODO
    assert "logs_t1.out" in again["_attachments"]  # the failed attempt's log stays until the next one


def test_reset_is_resettokens_and_keeps_attachments_that_are_not_ours() -> None:
    other = {"input.dat": {"stub": True, "content_type": "text/plain"}}
    locked, _ = lock(token())
    locked["_attachments"] = {**other, "logs_t1.out": {"stub": True}}
    locked["slurm_job_id"] = "7"
    back = picas.reset(locked, NOW + 9, fresh_budget=True)
    assert (back["lock"], back["done"], back["hostname"], back["scrub_count"]) == (0, 0, "", 1)
    assert back["_attachments"] == other
    assert "slurm_job_id" not in back
    assert back["pilot"]["lease"] is None
    assert back["pilot"]["attempts"][-1]["outcome"] == Outcome.RESET.value


def test_the_token_fields_leave_out_the_bookkeeping() -> None:
    doc = {**token(), "output": {}, "pilot": {"failures": 2}, "_attachments": {}}
    converted = picas.to_token(doc)
    assert converted.fields == {"input": "x", "output": {}}
    assert converted.failures == 2


def test_conflict_backoff_is_jittered_grows_and_is_capped() -> None:
    rng = random.Random(3)
    first = [conflict_backoff(1, rng) for _ in range(200)]
    late = [conflict_backoff(30, rng) for _ in range(200)]
    assert all(0 <= x <= 0.02 for x in first)
    assert all(0 <= x <= BACKOFF_MAX for x in late)
    assert max(late) > 0.5  # grown to the cap
    assert len(set(first)) == 200  # no two pilots wait in step


def test_windows_and_lease_scans_scale_within_bounds() -> None:
    assert window_size(1) == 16  # one slot: few candidates held, few met by other pilots first
    assert window_size(2) == 32
    assert window_size(8) == 128
    assert window_size(1000) == 500
    assert lease_scan_interval(600) == 60
    assert lease_scan_interval(8) == 2
    assert lease_scan_interval(1) == 1


def _matches(branch: dict[str, Any], doc: dict[str, Any]) -> bool:
    """A plain Mango branch (``$lte``, ``$gt`` on numbers, ``$exists`` false) against a document."""
    for path, condition in branch.items():
        value: Any = doc
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        for operator, limit in condition.items():
            if operator == "$exists" and (value is not None) != limit:
                return False
            if operator in ("$lte", "$gt") and not isinstance(value, int):
                return False  # strings collate above numbers: never $lte here; $gt is joined with a $lte
            if (operator == "$lte" and value > limit) or (operator == "$gt" and value <= limit):
                return False
    return True


def test_a_probe_selector_takes_exactly_the_tokens_bigger_than_what_is_free_that_fit_the_node() -> None:
    # pouchdb-server merges the $or's of an $and pairwise and drops every pair that names one field twice:
    # a probe written as the fit's $or's plus an $or for "bigger than what is free" matched no token
    # bigger in cores, and a whole-node token was found only by a window that happened to hold it.
    default = Request(cores=1, max_cores=1, gpus=0, memory=0)
    free = Fit(cores=1, gpus=0, memory=4, default=default)
    probe = Fit(cores=4, gpus=1, memory=8, default=default, tasks=1, largest_first=True, beyond=free)
    todo, *conditions = picas.fit_selector(picas.todo_selector(""), probe)["$and"]
    assert (
        todo == picas.todo_selector("") and len(conditions) == 1
    )  # one $or: nothing for the server to merge
    branches = conditions[0]["$or"]
    assert all(not name.startswith("$") for branch in branches for name in branch)  # plain branches
    rng = random.Random(3)
    sizes = {"cores": [None, 1, 2, 4, 5, "4"], "gpus": [None, 0, 1, 2], "memory": [None, 0, 4, 8, 9]}
    for _ in range(500):
        fields = {name: rng.choice(values) for name, values in sizes.items()}
        doc = {name: value for name, value in fields.items() if value is not None}
        if rng.random() < 0.5:  # added by pilot.pyz: the numbers under pilot.needs
            needs = {k: v for k, v in doc.items() if isinstance(v, int)}
            doc["pilot"] = {"needs": needs} if needs else {}
        wanted = probe.admits(picas.needs_of(doc))
        assert any(_matches(branch, doc) for branch in branches) == wanted, doc
    nothing = picas.fit_selector({}, replace(probe, beyond=replace(free, cores=4, gpus=1, memory=8)))
    assert nothing["$and"][1] == {"_id": {"$lt": ""}}  # nothing can be bigger than a whole node
