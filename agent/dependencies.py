"""Dependencies between tokens: a token's ``after`` names the tokens that must be done before it runs.

Pure graph logic, no I/O: checking new tokens (ids that exist nowhere, cycles), what each new token
waits on, and which tokens fail when one they wait on fails. The pools keep the state (a waiting count
or list on each token, and who waits on whom) and call these functions inside their writes.

A batch of new tokens is checked as a whole: its ids and ``after`` lists are collected first (a few
bytes per token, even for a streamed input), then ids outside the batch are looked up in the pool once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.errors import DependencyError
from agent.token import NewToken, State

AFTER = "after"  # the token field that lists what a token waits on
ADD_FIRST = "add those tokens first (or earlier in the same input), or fix the ids in `after`"

#: looks up tokens in the pool: {id: state} for those of ``ids`` that exist
States = Callable[[Sequence[str]], Mapping[str, State]]


def after_of(token_id: str, fields: Mapping[str, object]) -> tuple[str, ...]:
    """The ids a token waits on, each once, in the order given; DependencyError for a malformed list."""
    value = fields.get(AFTER, ())
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise DependencyError(f"token {token_id!r}: `{AFTER}` must be a list of token ids", [token_id])
    return tuple(dict.fromkeys(value))


def failure_reason(dependency: str) -> str:
    return f"dependency {dependency} failed"


@dataclass(frozen=True)
class Plan:
    """What new tokens start as: waiting on the ids in ``waiting_on`` (empty: todo), or failed at once
    because a token they come after is in error (``failed``: token id to that dependency's id)."""

    after: Mapping[str, tuple[str, ...]]  # every new token's dependencies, each once
    waiting_on: Mapping[str, tuple[str, ...]]
    failed: Mapping[str, str]
    dependents: Mapping[str, tuple[str, ...]]  # id (new or in the pool): the new tokens that wait on it


def plan(tokens: Sequence[NewToken], states: States) -> Plan:
    """Check the ``after`` lists of new tokens against each other and the pool; raise DependencyError
    naming the ids of an unknown dependency or of a cycle. Nothing is written here."""
    edges = {token.id: after_of(token.id, token.fields) for token in tokens}
    outside = sorted({dep for deps in edges.values() for dep in deps if dep not in edges})
    known = states(outside) if outside else {}
    unknown = [dep for dep in outside if dep not in known]
    if unknown:
        raise DependencyError("`after` names tokens in neither the pool nor the input", unknown, ADD_FIRST)
    order = topological(edges)
    failed: dict[str, str] = {}
    waiting_on: dict[str, tuple[str, ...]] = {}
    dependents: dict[str, list[str]] = {}
    for token_id in order:
        deps = edges[token_id]
        for dep in deps:
            dependents.setdefault(dep, []).append(token_id)
        bad = next((dep for dep in deps if dep in failed or known.get(dep) is State.ERROR), None)
        if bad is not None:
            failed[token_id] = bad
        waiting_on[token_id] = tuple(dep for dep in deps if dep in edges or known[dep] is not State.DONE)
    return Plan(edges, waiting_on, failed, {dep: tuple(ids) for dep, ids in dependents.items()})


def topological(edges: Mapping[str, Sequence[str]]) -> list[str]:
    """The ids of ``edges`` (id: the ids it comes after) with every id after those it waits on; ids not
    in ``edges`` are taken as already there. DependencyError naming the ids of a cycle."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: placed
    for root in edges:
        if state.get(root):
            continue
        path = [root]
        stack = [iter(edges[root])]
        state[root] = 1
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                stack.pop()
                done = path.pop()
                state[done] = 2
                order.append(done)
            elif dep in edges and state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                raise DependencyError("`after` makes a cycle", [" -> ".join(cycle)])
            elif dep in edges and not state.get(dep):
                state[dep] = 1
                path.append(dep)
                stack.append(iter(edges[dep]))
    return order


def downstream_failures(failed: str, dependents: Callable[[str], Iterable[str]]) -> list[tuple[str, str]]:
    """Every token that waits, directly or through others, on ``failed``, as (token, the dependency that
    failed it), nearest first. ``dependents(id)`` gives the tokens still waiting on ``id``."""
    found: list[tuple[str, str]] = []
    seen = {failed}
    queue = deque([failed])
    while queue:
        current = queue.popleft()
        for token_id in dependents(current):
            if token_id not in seen:
                seen.add(token_id)
                found.append((token_id, current))
                queue.append(token_id)
    return found
