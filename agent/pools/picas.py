"""The PiCaS token layout: the Monitor views as the PiCaS examples define them, and how a claim, a lease
renewal, a report and a reset change a token document. Pure functions on JSON objects, no I/O.

A token is a CouchDB document with ``type: "token"``, ``lock`` and ``done`` (integer epoch seconds, 0 when
not set), ``hostname``, ``scrub_count``, ``exit_code``, ``error`` (a list of ``{time, message}``) and the
user's fields (``input``, ...). Which view a token is in follows from ``lock``, ``done`` and ``exit_code``
alone, so picas pilots, the PiCaS web views and ``resetTokens.py`` keep working on tokens we touch.

What we add lives under one key, ``pilot``, that picas ignores: the lease (id, expiry, design document),
the attempt history, the charged failure count, and the id of the last lease whose report was saved (so a
report whose answer was lost and is sent again is recognised as ours).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from agent.dependencies import failure_reason
from agent.resources import FIELDS, Fit
from agent.token import Attempt, Outcome, Report, State, Token, close_attempt

OURS = "pilot"  # the one key of a token document that holds what picas does not know
PICAS_FIELDS = ("type", "lock", "done", "hostname", "scrub_count", "exit_code", "error")
JOB_ID_FIELDS = ("slurm_job_id", "pbs_job_id", "dirac_job_id", "wms_job_id", "cream_job_id")
RESERVED = frozenset((OURS, *PICAS_FIELDS, *JOB_ID_FIELDS))
VIEWS = ("todo", "locked", "done", "error", "overview_total")

# The conditions of examples/create_views.py in the picasclient repository, and the map and reduce
# functions as couchdb-python's ViewDefinition stores them (leading newline stripped, dedented).
CONDITIONS = {
    "todo": "doc.lock == 0 && doc.done == 0",
    "locked": "doc.lock > 0 && doc.done == 0",
    "done": "doc.lock > 0 && doc.done > 0 && parseInt(doc.exit_code) == 0",
    "error": "doc.lock > 0 && doc.done > 0 && parseInt(doc.exit_code) != 0",
}
_STATE_MAP = """function(doc) {
   if(doc.type == "token") {
    if(%s) {
      emit(doc._id, doc._id);
    }
  }
}
"""
_OVERVIEW_MAP = """function(doc) {
   if(doc.type == "token") {
       if (%(todo)s){
          emit('todo', 1);
       }
       if(%(locked)s) {
          emit('locked', 1);
       }
       if(%(done)s) {
          emit('done', 1);
       }
       if(%(error)s) {
          emit('error', 1);
       }
   }
}
"""
_OVERVIEW_REDUCE = """function (key, values, rereduce) {
   return sum(values);
}
"""
# Claims find tokens through two Mango indexes of our own (``POST /db/_index``), each in its own design
# document so that neither is updated for the other. Mango indexes are built by the server itself, not by
# a JavaScript map function: on pouchdb-server a JS view runs every changed document through a fresh VM
# context (about 1 ms each), a Mango index a third of that; CouchDB builds them without couchjs. The
# Monitor views stay as PiCaS defines them, for picas pilots, the web views and `status`.
TODO_INDEX = {
    "ddoc": "pilot-todo",
    "name": "todo",
    "type": "json",
    "index": {"fields": ["type", "done", "lock", "_id"]},
}
LEASE_INDEX = {
    "ddoc": "pilot-leases",
    "name": "leases",
    "type": "json",
    "index": {"fields": ["pilot.lease.expires"]},  # only tokens that carry a lease are in it
}
INDEXES = (TODO_INDEX, LEASE_INDEX)

# The views that `status`, `watch` and `report` read, in a design document of our own (picas never reads
# it, and pilots never query it, so claims never wait for its index). CouchDB and pouchdb-server build a
# view when it is queried, from the documents changed since the last query: the first `status` on a big
# pool builds it once. Every reduce is the server's own `_count`, computed in the index, never in
# JavaScript at query time. The conditions are PiCaS's, as in the Monitor views.
STATS_DESIGN = "pilot-stats"
_LAST = (
    "var attempts = (doc.pilot && doc.pilot.attempts) || [];\n"
    "    var last = attempts.length ? attempts[attempts.length - 1] : null;"
)
STATS_VIEWS = {
    # done and error tokens by state and the time they finished; the value is the last attempt's duration
    "finished": {
        "map": f"""function (doc) {{
  if (doc.type == "token" && doc.lock > 0 && doc.done > 0) {{
    {_LAST}
    var took = last && last.started != null && last.ended != null ? last.ended - last.started : null;
    emit([parseInt(doc.exit_code) == 0 ? "done" : "error", doc.done], took);
  }}
}}
""",
        "reduce": "_count",
    },
    # tokens with an attempt history by the time of their last change, for the recent sample
    "activity": {
        "map": f"""function (doc) {{
  if (doc.type == "token") {{
    {_LAST}
    if (last) {{
      emit(last.ended || last.claimed || 0, null);
    }}
  }}
}}
""",
    },
    # error tokens by the reason of their last attempt (a picas token's: its last error message)
    "reasons": {
        "map": f"""function (doc) {{
  if (doc.type == "token" && doc.lock > 0 && doc.done > 0 && parseInt(doc.exit_code) != 0) {{
    {_LAST}
    var errors = doc.error || [];
    var reason = last ? last.reason : (errors.length ? errors[errors.length - 1].message : "");
    emit(reason || "", null);
  }}
}}
""",
        "reduce": "_count",
    },
    # locked tokens by the host that holds them: the tasks running now
    "running": {
        "map": """function (doc) {
  if (doc.type == "token" && doc.lock > 0 && doc.done == 0) {
    emit(doc.hostname || "?", null);
  }
}
""",
        "reduce": "_count",
    },
}


# A token that waits on others (``after``) has ``lock`` -1: in none of the PiCaS views, so picas pilots
# and our todo index leave it alone, and a token without our fields (an older pool's) is claimed as ever.
# ``pilot.waiting_on`` lists the tokens it still waits on; each, once done, takes itself off the list and
# the last one sets ``lock`` 0. ``pilot.dependents`` on a token lists who waits on it.
WAITING_LOCK = -1
# Todo tokens by the size they ask for (cores, GPUs, memory; null where not given), only those that ask
# for one: what `status` shows as todo sizes. A design document of its own, so that pools made before it
# keep their pilot-stats index as it is built (a changed design document is indexed again, whole).
SIZES_DESIGN = "pilot-sizes"
SIZES_VIEWS = {
    "todo": {
        "map": """function (doc) {
  if (doc.type == "token" && doc.lock == 0 && doc.done == 0) {
    var stored = (doc.pilot && doc.pilot.needs) || {};
    var asked = ["cores", "gpus", "memory"].map(function (name) {
      var value = stored[name] != null ? stored[name] : doc[name];
      return typeof value == "number" ? value : null;
    });
    if (asked[0] != null || asked[1] != null || asked[2] != null) {
      emit(asked, null);
    }
  }
}
""",
        "reduce": "_count",
    },
}

WAITING_DESIGN = "pilot-waiting"
_WAITING_MAP = """function(doc) {
  if (doc.type == "token" && doc.lock < 0 && doc.done == 0) {
    emit(doc._id, null);
  }
}
"""


def waiting_views() -> dict[str, dict[str, str]]:
    """Our design document's one view: waiting tokens, counted by ``status`` and looked over by claims
    that find nothing else (a pilot that died between a report and the release leaves some behind)."""
    return {"waiting": {"map": _WAITING_MAP, "reduce": "_count"}}


def todo_selector(from_id: str, below: Optional[str] = None) -> dict[str, Any]:
    """Todo tokens from ``from_id`` on (and below the id ``below``), in id order. PiCaS's todo view tests
    ``lock == 0 && done == 0`` in JavaScript, where "0" and "" equal 0 too; picas and pilot.pyz write the
    number 0, as this finds."""
    ids = {"$gte": from_id} if below is None else {"$gte": from_id, "$lt": below}
    return {"type": "token", "done": 0, "lock": 0, "_id": ids}


def locked_selector() -> dict[str, Any]:
    """Locked tokens (PiCaS's ``lock > 0 && done == 0``), through the same index as todo ones."""
    return {"type": "token", "done": 0, "lock": {"$gt": 0}, "_id": {"$gte": ""}}


def waiting_selector() -> dict[str, Any]:
    """Waiting tokens (``lock`` -1), through the same index as todo ones."""
    return {"type": "token", "done": 0, "lock": WAITING_LOCK, "_id": {"$gte": ""}}


def fit_selector(selector: Mapping[str, Any], fit: Fit) -> dict[str, Any]:
    """``selector`` and tokens that fit alone, under one ``$and`` (pouchdb-server finds no index for an
    ``$and`` beside the indexed fields). A token's request is what pilot.pyz wrote under ``pilot.needs``
    when it added the token (ranges and sizes as numbers), else its own field where that is a number
    (written by another client; a string collates above every number, so it is left out), else the
    default when it has no such field.

    With ``fit.beyond`` (a probe), only tokens that do not fit in it either: the server returns the few
    bigger than what is free, not a window of small ones that hides them. That condition names the same
    fields as the fit's own, and pouchdb-server drops every pair of branches of two ``$or`` that share a
    field when it merges them (it takes them to contradict), so the probe's is one ``$or`` of plain
    branches, each both conditions at once."""
    limits = _limits(fit)
    if fit.beyond is None:
        return {"$and": [dict(selector), *({"$or": _within(*limit)} for limit in limits)]}
    over = [branch for limit in _limits(fit.beyond) for branch in _over(*limit)]
    branches = _all_of([*(_within(*limit) for limit in limits), over])
    return {"$and": [dict(selector), {"$or": branches} if branches else _NOTHING]}


_NOTHING = {"_id": {"$lt": ""}}  # no document: every id is a string, and none sorts below ""


def _limits(fit: Fit) -> list[tuple[str, int, int]]:
    """(field, what the fit has, the default request) for the fields the fit counts."""
    limits = (
        ("cores", fit.cores, fit.default.cores),
        ("gpus", fit.gpus, fit.default.gpus),
        ("memory", fit.memory, fit.default.memory),
    )
    return [(name, free, default) for name, free, default in limits if free is not None]


def _within(name: str, free: int, default: int) -> list[dict[str, Any]]:
    """Branches of an ``$or`` that a token asking at most ``free`` of ``name`` matches."""
    stored = f"{OURS}.needs.{name}"
    branches: list[dict[str, Any]] = [
        {stored: {"$lte": free}},
        {stored: {"$exists": False}, name: {"$lte": free}},
    ]
    if default <= free:
        branches.append({stored: {"$exists": False}, name: {"$exists": False}})
    return branches


def _over(name: str, free: int, default: int) -> list[dict[str, Any]]:
    """Branches of an ``$or`` that a token asking more than ``free`` of ``name`` matches. A string field
    matches ``$gt`` too (it collates above numbers), but never the ``$lte`` it is joined with."""
    stored = f"{OURS}.needs.{name}"
    branches: list[dict[str, Any]] = [
        {stored: {"$gt": free}},
        {stored: {"$exists": False}, name: {"$gt": free}},
    ]
    if default > free:
        branches.append({stored: {"$exists": False}, name: {"$exists": False}})
    return branches


def _all_of(alternatives: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """An ``$and`` of ``$or``s (lists of plain branches) as one list of plain branches: one per way to
    take a branch of each, without those that cannot match."""
    branches: list[dict[str, Any]] = [{}]
    for choices in alternatives:
        joined = (_both(branch, choice) for branch in branches for choice in choices)
        branches = [branch for branch in joined if branch is not None]
    return branches


def _both(one: Mapping[str, Any], other: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """One plain branch with both branches' conditions (``$exists`` false, ``$lte``, ``$gt`` on numbers),
    or None where no document can match it."""
    joined = {name: dict(condition) for name, condition in one.items()}
    for name, condition in other.items():
        merged = joined.setdefault(name, {})
        for operator, value in condition.items():
            tighter = {"$lte": min, "$gt": max}.get(operator)
            merged[operator] = tighter(merged[operator], value) if tighter and operator in merged else value
        if merged.get("$exists") is False and len(merged) > 1:
            return None  # missing, and compared: never
        if "$lte" in merged and "$gt" in merged and merged["$gt"] >= merged["$lte"]:
            return None
    return joined


_NEVER = 2**62  # a request no node has: a field that is neither a stored need nor a number


def needs_of(doc: Mapping[str, Any]) -> dict[str, int]:
    """The token's request as ``fit_selector`` reads it, for choosing among documents read."""
    stored = ours(doc).get("needs")
    needs = {k: v for k, v in stored.items() if isinstance(v, int)} if isinstance(stored, dict) else {}
    for name in FIELDS:
        if name in needs or name not in doc:
            continue
        value = doc[name]
        needs[name] = value if isinstance(value, int) and not isinstance(value, bool) else _NEVER
    return needs


def expired_selector(now: float) -> dict[str, Any]:
    """Tokens whose lease ran out, not ended: a token cancelled while it ran keeps its lease (for its
    pilot's renewal), and keeps it for good when that pilot is dead; such tokens, oldest first in the
    index, would fill every window of the scan and hide the tokens of dead pilots."""
    return {"pilot.lease.expires": {"$lt": now}, "done": 0}


def monitor_views() -> dict[str, dict[str, str]]:
    """The views of the PiCaS ``Monitor`` design document, exactly as the PiCaS examples create them."""
    views = {name: {"map": _STATE_MAP % condition} for name, condition in CONDITIONS.items()}
    views["overview_total"] = {"map": _OVERVIEW_MAP % CONDITIONS, "reduce": _OVERVIEW_REDUCE}
    return views


# -- reading a token -------------------------------------------------------------------------------


def parse_int(value: Any) -> Optional[int]:
    """JavaScript's ``parseInt`` as the views apply it to ``exit_code``: None where it gives NaN."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        end = 0
        while end < len(digits) and digits[end].isdigit():
            end += 1
        return sign * int(digits[:end]) if end else None
    return None


def _number(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def state_of(doc: Mapping[str, Any]) -> Optional[State]:
    """The view a token is in, by the PiCaS conditions; None for a document in none of them."""
    lock, done = _number(doc.get("lock")), _number(doc.get("done"))
    if lock == 0 and done == 0 and "lock" in doc and "done" in doc:
        return State.TODO
    if lock < 0 and done == 0 and "done" in doc:
        return State.WAITING
    if lock > 0 and done == 0 and "done" in doc:
        return State.LOCKED
    if lock > 0 and done > 0:
        return State.DONE if parse_int(doc.get("exit_code")) == 0 else State.ERROR
    return None


def ours(doc: Mapping[str, Any]) -> dict[str, Any]:
    value = doc.get(OURS)
    return value if isinstance(value, dict) else {}


def lease_of(doc: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    lease = ours(doc).get("lease")
    return lease if isinstance(lease, dict) else None


def lease_id_of(doc: Mapping[str, Any]) -> Optional[str]:
    lease = lease_of(doc)
    return lease.get("id") if lease else None


def lease_expired(doc: Mapping[str, Any], now: float) -> bool:
    """Locked under one of our leases, and that lease ran out: its pilot is gone."""
    lease = lease_of(doc)
    expires = lease.get("expires") if lease else None
    return state_of(doc) is State.LOCKED and isinstance(expires, (int, float)) and expires < now


def claimable(doc: Mapping[str, Any], now: float) -> bool:
    return doc.get("type") == "token" and (state_of(doc) is State.TODO or lease_expired(doc, now))


def tails_of(doc: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The output tails from a document read with ``attachments=true`` (inline, base64)."""
    attachments = doc.get("_attachments") if isinstance(doc.get("_attachments"), dict) else {}
    tails = []
    for name in log_names(doc["_id"]):
        data = (attachments.get(name) or {}).get("data")
        tails.append(base64.b64decode(data) if isinstance(data, str) else b"")
    return tails[0], tails[1]


def _ids(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def waiting_on(doc: Mapping[str, Any]) -> list[str]:
    return _ids(ours(doc).get("waiting_on"))


def dependents_of(doc: Mapping[str, Any]) -> list[str]:
    return _ids(ours(doc).get("dependents"))


def attempts_of(doc: Mapping[str, Any]) -> list[Attempt]:
    raw = ours(doc).get("attempts")
    return (
        [Attempt.from_json(item) for item in raw if isinstance(item, dict)] if isinstance(raw, list) else []
    )


def user_fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The token's own data for the task's ``{field}``: everything but CouchDB's and the bookkeeping."""
    return {k: v for k, v in doc.items() if not k.startswith("_") and k not in RESERVED}


def to_token(doc: Mapping[str, Any]) -> Token:
    state = state_of(doc) or State.ERROR  # in none of the views: not something a pilot may claim
    failures = ours(doc).get("failures", 0)
    errors = doc.get("error") if isinstance(doc.get("error"), list) else []
    last = errors[-1] if errors and isinstance(errors[-1], dict) else {}
    return Token(
        id=doc["_id"],
        fields=user_fields(doc),
        state=state,
        attempts=tuple(attempts_of(doc)),
        failures=failures if isinstance(failures, int) else 0,
        reason=str(last.get("message", "")) if state is State.ERROR else "",
    )


# -- writing a token -------------------------------------------------------------------------------


def new_token(
    token_id: str,
    fields: Mapping[str, Any],
    *,
    waiting_on: Sequence[str] = (),
    dependents: Sequence[str] = (),
    failed: Optional[str] = None,
    now: float = 0.0,
    needs: Optional[Mapping[str, int]] = None,
) -> dict[str, Any]:
    """A todo token as picas's ``create_tokens`` makes it (a ``Task`` with ``type: "token"``); waiting
    while ``waiting_on`` is not empty, failed at once when ``failed`` (a dependency) is in error; its
    resource request as numbers under ``pilot.needs``, where it has one, for claims to compare."""
    doc: dict[str, Any] = {
        "_id": token_id,
        "type": "token",
        "lock": 0,
        "done": 0,
        "hostname": "",
        "scrub_count": 0,
        "exit_code": "",
        "error": [],
        **fields,
    }
    mine: dict[str, Any] = {}
    if dependents:
        mine["dependents"] = list(dependents)
    if waiting_on:
        mine["waiting_on"] = list(waiting_on)
        doc["lock"] = WAITING_LOCK
    if needs:
        mine["needs"] = dict(needs)
    if mine:
        doc[OURS] = mine
    if failed is not None:
        doc.update(_failed(doc, failed, now))
    return doc


def _failed(doc: Mapping[str, Any], dependency: str, now: float) -> dict[str, Any]:
    return _in_error(doc, failure_reason(dependency), now)


def _in_error(doc: Mapping[str, Any], reason: str, now: float) -> dict[str, Any]:
    """The fields that put a token in the PiCaS error view, with ``reason`` in its ``error`` list."""
    errors = doc.get("error") if isinstance(doc.get("error"), list) else []
    message = {"time": _epoch(now), "message": reason}
    lock = _epoch(now) if _number(doc.get("lock")) <= 0 else doc["lock"]
    return {"lock": lock, "done": _epoch(now), "exit_code": 1, "error": [*errors, message]}


def cancelled(doc: Mapping[str, Any], now: float) -> Optional[dict[str, Any]]:
    """The token in error as cancelled (None when it ended already). A running one keeps its lease, so
    its pilot's renewal can tell cancelled from lost."""
    if state_of(doc) not in (State.TODO, State.WAITING, State.LOCKED):
        return None
    new = _with_ours(doc, cancelled=True)
    new.update(_in_error(doc, Outcome.CANCELLED.value, now))
    return new


def is_cancelled(doc: Mapping[str, Any]) -> bool:
    return state_of(doc) is State.ERROR and ours(doc).get("cancelled") is True


def released(doc: Mapping[str, Any], dependency: str) -> Optional[dict[str, Any]]:
    """The waiting token with ``dependency`` (now done) off its list, todo when it was the last; None
    when it did not wait on it (already released: a report sent twice releases once)."""
    left = waiting_on(doc)
    if state_of(doc) is not State.WAITING or dependency not in left:
        return None
    left.remove(dependency)
    new = _with_ours(doc, waiting_on=left)
    if not left:
        new["lock"] = 0
    return new


def dependency_failed(doc: Mapping[str, Any], dependency: str, now: float) -> Optional[dict[str, Any]]:
    """The waiting token in error because ``dependency`` is; None when it is not waiting any more."""
    if state_of(doc) is not State.WAITING:
        return None
    new = _copied(dict(doc))
    new.update(_failed(doc, dependency, now))
    return new


def with_dependents(doc: Mapping[str, Any], token_ids: Sequence[str]) -> Optional[dict[str, Any]]:
    """The token with these ids added to those that wait on it; None when they are there already."""
    present = dependents_of(doc)
    missing = [token_id for token_id in token_ids if token_id not in present]
    return _with_ours(doc, dependents=present + missing) if missing else None


def waiting_again(doc: dict[str, Any], not_done: Sequence[str]) -> dict[str, Any]:
    """A token put back to todo (reset) that comes after tokens not done: waiting on them again."""
    new = _with_ours(doc, waiting_on=list(not_done))
    new["lock"] = WAITING_LOCK
    return new


def _epoch(seconds: float) -> int:
    return max(1, int(seconds))  # PiCaS keeps whole seconds; 0 would mean "not set"


def _with_ours(doc: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    new = {key: _copied(value) for key, value in doc.items() if key != OURS}  # ours is made anew
    new[OURS] = {**ours(doc), **changes}
    return new


def _copied(value: Any) -> Any:
    """A deep copy of a document's value, which JSON made (dicts, lists, scalars): a fourth of the time
    of ``copy.deepcopy``, called twice per task."""
    if type(value) is dict:
        return {key: _copied(item) for key, item in value.items()}
    if type(value) is list:
        return [_copied(item) for item in value]
    return value


def claimed(
    doc: Mapping[str, Any], attempt: Attempt, *, lease_id: str, expires: float, design: str, now: float
) -> tuple[dict[str, Any], list[Attempt]]:
    """The document locked for ``attempt``, and the attempt history with it last.

    A token still locked under an expired lease gets its open attempt closed as lease-expired first.
    """
    attempts = attempts_of(doc)
    if state_of(doc) is State.LOCKED and attempts and attempts[-1].outcome is None:
        old = lease_of(doc) or {}
        ended = old.get("expires", now)
        attempts[-1] = attempts[-1].closed(Outcome.LEASE_EXPIRED, ended, "lease expired, pilot gone")
    attempts.append(attempt)
    new = _with_ours(
        doc,
        lease={"id": lease_id, "expires": expires, "design": design},
        attempts=[a.to_json() for a in attempts],
    )
    new.update({"lock": _epoch(now), "done": 0, "hostname": attempt.host})
    return new, attempts


def renewed(doc: Mapping[str, Any], expires: float) -> dict[str, Any]:
    lease = {**(lease_of(doc) or {}), "expires": expires}
    return _with_ours(doc, lease=lease)


def picas_exit_code(exit_code: Optional[int], signal: Optional[int]) -> int:
    """A non-zero exit code for a failed attempt (the error view needs one): 128 + signal as shells do."""
    if exit_code:
        return exit_code
    return 128 + signal if signal else 1


def log_names(token_id: str) -> tuple[str, str]:
    return f"logs_{token_id}.out", f"logs_{token_id}.err"


def with_logs(doc: dict[str, Any], stdout: bytes, stderr: bytes) -> None:
    """``logs_<id>.out`` and ``logs_<id>.err`` as inline attachments, as the PiCaS examples attach them;
    an empty log is left out, and the logs of an earlier attempt go. Other attachments stay."""
    attachments = doc.get("_attachments") if isinstance(doc.get("_attachments"), dict) else {}
    for name, data in zip(log_names(doc["_id"]), (stdout, stderr)):
        attachments.pop(name, None)
        if data:
            attachments[name] = {"content_type": "text/plain", "data": base64.b64encode(data).decode("ascii")}
    if attachments:
        doc["_attachments"] = attachments
    else:
        doc.pop("_attachments", None)


def reported(
    doc: Mapping[str, Any], lease_id: str, attempt_index: int, report: Report, now: float
) -> dict[str, Any]:
    """The document after the report of the attempt at ``attempt_index`` of the history.

    done: ``done`` set, ``exit_code`` 0. error: ``done`` set, a non-zero ``exit_code`` and an entry in
    ``error``, as picas does. Back to todo: ``lock`` and ``done`` 0, ``scrub_count`` up by one, as a picas
    scrub. The logs go on as attachments either way. A token cancelled while the task ran stays
    cancelled (see ``_still_cancelled``).
    """
    result = report.result
    attempts = attempts_of(doc)
    if 0 <= attempt_index < len(attempts):
        attempts[attempt_index] = close_attempt(attempts[attempt_index], result)
    new = _with_ours(
        doc,
        lease=None,
        reported=lease_id,
        failures=report.failures,
        attempts=[a.to_json() for a in attempts],
    )
    with_logs(new, result.stdout_tail, result.stderr_tail)
    if is_cancelled(doc):
        return _still_cancelled(new, report, now)
    if report.state is State.DONE:
        new.update({"done": _epoch(now), "exit_code": 0})
        return new
    if result.outcome.charged:
        errors = new.get("error") if isinstance(new.get("error"), list) else []
        new["error"] = [*errors, {"time": _epoch(now), "message": result.reason}]
    if report.state is State.ERROR:
        new.update({"done": _epoch(now), "exit_code": picas_exit_code(result.exit_code, result.signal)})
        if _number(new.get("lock")) <= 0:
            new["lock"] = _epoch(now)
        return new
    return _scrubbed(new, drop_logs=False)


def _still_cancelled(new: dict[str, Any], report: Report, now: float) -> dict[str, Any]:
    """A report that reached a token cancelled while it ran (the task ended before its pilot's renewal
    learnt of the cancel): the attempt is closed as it ended, but the token stays in error as cancelled,
    even after a success, never back to todo. A charged failure's entry goes before the cancel's, which
    stays last: the reason the views show."""
    result = report.result
    if report.state is not State.DONE:
        new["exit_code"] = picas_exit_code(result.exit_code, result.signal)
    errors = new.get("error") if isinstance(new.get("error"), list) else []
    if result.outcome.charged and errors:
        new["error"] = [*errors[:-1], {"time": _epoch(now), "message": result.reason}, errors[-1]]
    return new


def _scrubbed(doc: dict[str, Any], *, drop_logs: bool) -> dict[str, Any]:
    """Back to todo as PiCaS's ``resetTokens.py`` does it; it drops all attachments, we only our logs."""
    scrubs = doc.get("scrub_count")
    doc.update(
        {
            "lock": 0,
            "done": 0,
            "hostname": "",
            "exit_code": "",
            "scrub_count": (scrubs if isinstance(scrubs, int) else 0) + 1,
        }
    )
    for name in JOB_ID_FIELDS:
        doc.pop(name, None)
    if drop_logs:
        with_logs(doc, b"", b"")
    return doc


def reset(doc: Mapping[str, Any], now: float, *, fresh_budget: bool) -> dict[str, Any]:
    """A locked or error token back to todo; an open attempt is closed as reset."""
    attempts = attempts_of(doc)
    if attempts and attempts[-1].outcome is None:
        attempts[-1] = attempts[-1].closed(Outcome.RESET, now, "reset by `pilot reset`")
    changes: dict[str, Any] = {"lease": None, "attempts": [a.to_json() for a in attempts]}
    if fresh_budget:
        changes["failures"] = 0
        changes["cancelled"] = None
    return _scrubbed(_with_ours(doc, **changes), drop_logs=True)
