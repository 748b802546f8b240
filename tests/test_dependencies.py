"""The pure graph logic of `after`: checks of new tokens, what they wait on, who fails downstream."""

from __future__ import annotations

import pytest

from agent.dependencies import downstream_failures, plan, topological
from agent.errors import DependencyError
from agent.token import NewToken, State


def tokens(**after: list[str]) -> list[NewToken]:
    return [NewToken(token_id, {"after": deps} if deps else {}) for token_id, deps in after.items()]


def no_pool(ids: object) -> dict[str, State]:
    return {}


def test_a_diamond_waits_on_its_own_tokens_and_orders_them() -> None:
    new = tokens(merge=["m1", "m2"], m1=["split"], m2=["split"], split=[])
    result = plan(new, no_pool)
    assert result.waiting_on == {"split": (), "m1": ("split",), "m2": ("split",), "merge": ("m1", "m2")}
    assert result.failed == {}
    assert result.dependents == {"split": ("m1", "m2"), "m1": ("merge",), "m2": ("merge",)}
    order = topological(result.after)
    assert order.index("split") < order.index("m1") < order.index("merge")


def test_tokens_in_the_pool_count_by_state() -> None:
    states = {"old-done": State.DONE, "old-todo": State.TODO, "old-error": State.ERROR}
    asked: list[list[str]] = []

    def lookup(ids: list[str]) -> dict[str, State]:
        asked.append(list(ids))
        return {i: states[i] for i in ids if i in states}

    new = tokens(a=["old-done", "old-todo"], b=["old-error"], c=["b"], d=["old-done"])
    result = plan(new, lookup)
    assert asked == [["old-done", "old-error", "old-todo"]]  # one look-up for the whole batch
    assert result.waiting_on["a"] == ("old-todo",)
    assert result.waiting_on["d"] == ()
    assert result.failed == {"b": "old-error", "c": "b"}


def test_an_unknown_dependency_is_named_and_nothing_is_planned() -> None:
    with pytest.raises(DependencyError) as caught:
        plan(tokens(a=["ghost", "b"], b=["phantom"]), no_pool)
    assert str(caught.value) == (
        "`after` names tokens in neither the pool nor the input: ghost, phantom; nothing was added; "
        "add those tokens first (or earlier in the same input), or fix the ids in `after`"
    )


def test_a_cycle_is_named_with_its_ids() -> None:
    with pytest.raises(DependencyError) as caught:
        plan(tokens(a=["b"], b=["c"], c=["a"], d=[]), no_pool)
    assert str(caught.value) == "`after` makes a cycle: a -> b -> c -> a; nothing was added"


def test_a_token_after_itself_is_a_cycle() -> None:
    with pytest.raises(DependencyError, match="cycle: a -> a"):
        plan(tokens(a=["a"]), no_pool)


@pytest.mark.parametrize("after", ["x", [1], [""], {"a": 1}])
def test_a_malformed_after_names_the_token(after: object) -> None:
    with pytest.raises(DependencyError, match="token 'a': `after` must be a list of token ids"):
        plan([NewToken("a", {"after": after})], no_pool)


def test_a_long_chain_needs_no_recursion() -> None:
    chain = {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(50_000)}
    assert topological(chain)[-1] == "t49999"


def test_duplicate_dependencies_count_once() -> None:
    assert plan(tokens(a=[], b=["a", "a"]), no_pool).waiting_on["b"] == ("a",)


def test_failures_go_down_the_graph_nearest_first_each_once() -> None:
    graph = {"x": ["a", "b"], "a": ["c"], "b": ["c"], "c": ["d"]}
    assert downstream_failures("x", lambda i: graph.get(i, [])) == [
        ("a", "x"),
        ("b", "x"),
        ("c", "a"),
        ("d", "c"),
    ]
