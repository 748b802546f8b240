"""The resources module: what the node has, what tokens ask, what fits, and the anti-starvation rule."""

from __future__ import annotations

from typing import Optional

import pytest

from agent.resources import (
    Book,
    Fit,
    Node,
    NodeSpec,
    Probe,
    Request,
    ResourceError,
    detect,
    format_cpus,
    probe_interval,
    request_of,
    stored_needs,
)

GIB = 2**30


def probe(
    affinity: tuple[int, ...] = (0, 1, 2, 3),
    files: Optional[dict[str, str]] = None,
    commands: Optional[dict[str, str]] = None,
) -> Probe:
    files = files or {}
    commands = commands or {}
    return Probe(
        affinity=lambda: set(affinity),
        read=files.get,
        run=lambda argv: commands.get(" ".join(argv)),
    )


MEMINFO = {"/proc/meminfo": "MemTotal:       16384 kB\nMemFree: 1 kB\n"}


def test_auto_takes_the_affinity_and_names_its_source() -> None:
    node = detect(NodeSpec(), {}, probe(files=MEMINFO))
    assert node.cpus == (0, 1, 2, 3)
    assert node.gpus == ()
    assert node.memory == 16384 * 1024
    assert "CPU affinity 4" in node.found[0] and "bound to CPUs 0-3" in node.found[0]
    assert "MemTotal" in node.found[2]


def test_auto_takes_the_smallest_of_affinity_slurm_and_cgroup_quota() -> None:
    files = {
        "/proc/self/cgroup": "0::/job/step\n",
        "/sys/fs/cgroup/job/cpu.max": "300000 100000\n",
        "/sys/fs/cgroup/job/step/cpu.max": "max 100000\n",
    }
    assert detect(NodeSpec(), {"SLURM_CPUS_ON_NODE": "2"}, probe(files=files)).cpus == (0, 1)
    assert detect(NodeSpec(), {}, probe(affinity=tuple(range(8)), files=files)).cores == 3
    node = detect(NodeSpec(), {"SLURM_JOB_CPUS_PER_NODE": "6(x2)"}, probe(affinity=tuple(range(8))))
    assert node.cores == 6 and "SLURM_JOB_CPUS_PER_NODE 6" in node.found[0]


def test_gpus_come_from_the_environment_first_then_nvidia_smi() -> None:
    listing = {"nvidia-smi -L": "GPU 0: A100 (UUID: x)\nGPU 1: A100 (UUID: y)\n"}
    assert detect(NodeSpec(), {"CUDA_VISIBLE_DEVICES": "2,3"}, probe(commands=listing)).gpus == ("2", "3")
    assert detect(NodeSpec(), {"CUDA_VISIBLE_DEVICES": ""}, probe(commands=listing)).gpus == ()
    assert detect(NodeSpec(), {"SLURM_JOB_GPUS": "1"}, probe()).gpus == ("1",)
    node = detect(NodeSpec(), {}, probe(commands=listing))
    assert node.gpus == ("0", "1") and "nvidia-smi" in node.found[1]
    assert detect(NodeSpec(), {}, probe()).gpus == ()


def test_memory_is_the_smallest_of_cgroup_slurm_and_memtotal() -> None:
    files = {**MEMINFO, "/proc/self/cgroup": "0::/a\n", "/sys/fs/cgroup/a/memory.max": "4194304\n"}
    assert detect(NodeSpec(), {}, probe(files=files)).memory == 4194304
    assert detect(NodeSpec(), {"SLURM_MEM_PER_NODE": "2"}, probe(files=files)).memory == 2 * 2**20
    unlimited = {**MEMINFO, "/proc/self/cgroup": "0::/a\n", "/sys/fs/cgroup/a/memory.max": "max\n"}
    assert detect(NodeSpec(), {}, probe(files=unlimited)).memory == 16384 * 1024
    assert detect(NodeSpec(), {}, probe()).memory is None


def test_declared_cores_bind_to_the_first_cpus_or_are_logical_unbound() -> None:
    assert detect(NodeSpec(cores=2), {}, probe(affinity=(4, 5, 6))).cpus == (4, 5)
    assert detect(NodeSpec(cores=8, bind=False), {}, probe(affinity=(0, 1))).cpus == tuple(range(8))
    with pytest.raises(ResourceError, match=r"only 2 CPU\(s\) \(0-1\).*pilot.bind = false"):
        detect(NodeSpec(cores=4), {}, probe(affinity=(0, 1)))


def test_token_fields_else_defaults_and_ranges() -> None:
    default = Request(cores=2, max_cores=2, gpus=0, memory=0)
    assert request_of({}, default) == default
    assert request_of({"cores": "4-16", "gpus": 1, "memory": "2GiB"}, default) == Request(4, 16, 1, 2 * GIB)
    assert request_of({"cores": 3}, default) == Request(3, 3, 0, 0)
    for fields, problem in (
        ({"cores": 0}, "field cores"),
        ({"cores": "8-4"}, "field cores"),
        ({"gpus": -1}, "field gpus"),
        ({"memory": "lots"}, "field memory"),
    ):
        with pytest.raises(ValueError, match=problem):
            request_of(fields, default)
    assert stored_needs({"input": 1}) is None
    assert stored_needs({"cores": "4-16", "memory": "1KB"}) == {"cores": 4, "memory": 1000}


def test_fit_picks_first_fit_together_within_the_free_resources() -> None:
    fit = Fit(cores=4, gpus=1, memory=None, default=Request(), tasks=10)
    candidates = [{"cores": 2}, {"cores": 4}, None, {"gpus": 1}, {"gpus": 1}, {"cores": 1}]
    assert fit.pick(candidates) == [0, 2, 3]  # 2 + 1 + 1 cores; the second GPU token would need a GPU
    assert Fit(cores=4, gpus=0, memory=None, default=Request(), tasks=2).pick([None] * 4) == [0, 1]
    assert not fit.admits({"cores": 5})
    biggest = Fit(cores=4, gpus=0, memory=None, default=Request(), tasks=1, largest_first=True)
    assert biggest.pick([None, {"cores": 3}, {"cores": 4}, {"cores": 2}]) == [2]
    assert Fit(4, 0, 100, Request()).admits({"memory": 100}) and not Fit(4, 0, 100, Request()).admits(
        {"memory": 101}
    )


def node(cores: int = 4, gpus: tuple[str, ...] = ()) -> Node:
    return Node(cpus=tuple(range(cores)), gpus=gpus, memory=None, bind=True)


def test_grants_give_disjoint_cpus_and_exactly_the_gpus_and_take_them_back() -> None:
    book = Book(node(4, ("0", "1")), Request(), slots=None)
    a = book.grant("a", Request(2, 2, 1, 0))
    b = book.grant("b", Request(1, 3, 0, 0))  # a range takes what is free, up to its top
    assert a is not None and b is not None
    assert a.cpus == (0, 1) and a.gpus == ("0",) and b.cpus == (2, 3)
    assert book.grant("c", Request()) is None
    book.release("a")
    c = book.grant("c", Request(1, 1, 1, 0))
    assert c is not None and c.cpus == (0,) and c.gpus == ("0",)
    env = c.environment({})
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["PILOT_CPUS"] == "0" and env["OMP_NUM_THREADS"] == "1"
    assert b.environment({"OMP_NUM_THREADS": "7"}).get("OMP_NUM_THREADS") is None
    assert b.environment({})["CUDA_VISIBLE_DEVICES"] == ""


def test_slots_cap_tasks_at_once() -> None:
    book = Book(node(4), Request(), slots=2)
    fit = book.fit(0.0, 60.0)
    assert fit is not None and fit.tasks == 2
    book.grant("a", Request())
    book.grant("b", Request())
    assert book.fit(0.0, 60.0) is None
    assert book.grant("c", Request()) is None


def test_a_claim_beside_running_tasks_may_look_at_part_of_the_pool_one_on_a_free_node_may_not() -> None:
    # A claim beside running tasks is made again as they end; one with the node wholly free is the last
    # before the pilot stops for an empty pool, so it must see every token.
    book = Book(node(4), Request(), slots=None)
    free = book.fit(0.0, 60.0)
    assert free is not None and not free.partial
    book.grant("a", Request(2, 2, 0, 0))
    beside = book.fit(0.0, 60.0)
    assert beside is not None and beside.partial and beside.cores == 2
    book.release("a")
    again = book.fit(0.0, 60.0)
    assert again is not None and not again.partial


def test_a_held_token_backfills_until_patience_then_blocks_until_it_fits() -> None:
    book = Book(node(4), Request(), slots=None)
    book.grant("small", Request(2, 2, 0, 0))
    assert book.place("big", {"cores": 4}, "big-lease", now=100.0).grant is None
    fit = book.fit(100.0, patience=30.0)
    assert fit is not None and fit.cores == 2  # backfill beside the held token
    assert book.take_held("big") is None
    assert book.fit(129.0, 30.0) is not None and not book.blocking(129.0, 30.0)
    assert book.fit(130.0, 30.0) is None and book.blocking(130.0, 30.0)  # waited long enough: nothing else
    book.release("small")
    assert book.fit(131.0, 30.0) is None  # it fits now: its cores are kept for it
    assert book.take_held("big") == "big-lease"
    assert book.grants["big"].cpus == (0, 1, 2, 3)


def test_node_holds_only_what_could_ever_fit() -> None:
    assert node(4).holds(Request(4, 8, 0, 0))
    assert not node(4).holds(Request(5, 5, 0, 0))
    assert not node(4).holds(Request(1, 1, 1, 0))
    assert not Node((0,), (), 10, True).holds(Request(1, 1, 0, 11))


def test_format_cpus_writes_ranges() -> None:
    assert format_cpus([3, 0, 1, 2, 8, 10, 11]) == "0-3,8,10-11"
    assert format_cpus([]) == ""


def test_a_probe_looks_for_one_token_bigger_than_what_is_free_only_while_tasks_run() -> None:
    book = Book(node(4), Request(), slots=None)
    assert book.probe_fit(0.0, 60.0) is None  # everything free: a bigger token is bigger than the node
    book.grant("a", Request(3, 3, 0, 0))
    probe = book.probe_fit(0.0, 60.0)
    assert probe is not None and probe.cores == 4 and probe.tasks == 1
    assert probe.pick([{"cores": 1}, {"cores": 2}, {"cores": 5}]) == [1]  # fits the node, not the free core
    assert probe.after([]).pick([{"cores": 1}, {"cores": 2}]) == [1]  # what is left is still a probe
    book.grant("b", Request())
    assert book.probe_fit(0.0, 60.0) is None  # nothing free: every token would be bigger


def test_probes_look_a_few_times_per_expected_task_but_between_1_and_30_seconds_apart() -> None:
    assert [probe_interval(p) for p in (0.5, 8.0, 40.0, 3600.0)] == [1.0, 2.0, 10.0, 30.0]
