"""Which spawner thread starts a task (agent/binding.py): pure bookkeeping, no threads."""

from __future__ import annotations

import pytest

from agent.binding import Routes

CPU0, CPU1, CPU2, BOTH = frozenset({0}), frozenset({1}), frozenset({2}), frozenset({0, 1})


def run(routes: Routes, thread: int) -> None:
    """The thread finishes one of its jobs."""
    routes.finished(thread)


def test_tasks_alternating_two_cpus_keep_to_one_thread_each() -> None:
    routes = Routes(2)
    threads = []
    for n in range(10):
        thread = routes.route(CPU0 if n % 2 == 0 else CPU1)
        threads.append(thread)
        run(routes, thread)
    assert threads[0] != threads[1]
    assert threads == [threads[0], threads[1]] * 5  # each set keeps its thread: no rebinding after the first


def test_the_same_cpus_queue_behind_their_thread_even_while_it_is_busy() -> None:
    routes = Routes(4)
    first = routes.route(CPU0)
    assert routes.route(CPU0) == first and routes.busy(first) == 2
    assert routes.route(CPU1) != first  # another set takes an idle thread instead


def test_a_new_cpu_set_takes_an_idle_thread_before_a_busy_one() -> None:
    routes = Routes(2)
    busy = routes.route(CPU0)  # not finished
    idle = routes.route(CPU1)
    run(routes, idle)
    assert routes.route(CPU2) == idle  # the busy one was used longer ago, but it is busy
    assert busy == 0 and routes.bound == [CPU0, CPU2]
    assert routes.owner == {CPU0: busy, CPU2: idle}  # CPU1 has no thread any more


def test_with_every_thread_busy_a_new_cpu_set_takes_the_one_used_longest_ago() -> None:
    routes = Routes(3)
    order = [routes.route(cpus) for cpus in (CPU0, CPU1, CPU2)]
    assert sorted(order) == [0, 1, 2]
    routes.route(CPU0)  # CPU0's thread used again: CPU1's is now the least recent
    assert routes.route(BOTH) == order[1]
    assert routes.owner[BOTH] == order[1] and CPU1 not in routes.owner


def test_with_more_cpu_sets_than_threads_each_set_still_has_at_most_one_thread() -> None:
    routes = Routes(3)
    sets = [frozenset({n}) for n in range(8)]
    for n in range(40):
        thread = routes.route(sets[(n * 3) % 8])
        run(routes, thread)
        assert len(set(routes.owner.values())) == len(routes.owner) <= 3
        assert all(routes.bound[thread] == cpus for cpus, thread in routes.owner.items())


def test_unbound_tasks_spread_over_idle_threads_as_one_shared_queue_would() -> None:
    routes = Routes(3)
    assert sorted(routes.route(None) for _ in range(3)) == [0, 1, 2]  # all busy now, none twice
    run(routes, 1)
    assert routes.route(None) == 1  # the one that is free
    assert routes.owner == {}


def test_an_unbound_task_prefers_a_thread_left_unbound_and_unbinds_the_one_it_takes() -> None:
    routes = Routes(2)
    bound = routes.route(CPU0)
    run(routes, bound)
    unbound = routes.route(None)
    run(routes, unbound)
    assert unbound != bound  # the idle thread bound to CPU0 keeps its binding
    assert routes.route(None) == unbound  # still preferred: no rebinding of the other
    assert routes.owner == {CPU0: bound}
    blocked = routes.route(None)  # the unbound one is busy now: the idle bound one takes it, unbound after
    assert blocked == bound and routes.owner == {} and routes.bound == [None, None]


def test_no_threads_is_refused() -> None:
    with pytest.raises(ValueError, match="spawner threads: 0"):
        Routes(0)
