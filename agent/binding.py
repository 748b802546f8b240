"""Which spawner thread starts a task: one already bound to the task's CPUs where there is one.

A spawner thread binds itself to a task's CPUs before it starts the task, which inherits the binding, and
keeps that binding after (spawn.bind_thread). A rebinding costs about 70 us: the kernel moves the thread
at once. With one queue for all spawner threads, tasks that alternate CPU 0 and CPU 1 went to whichever
thread was free, and nearly every start rebound. Here each CPU set has at most one thread, the one bound
to it, and its jobs queue behind that thread: two running tasks never share a CPU, so two starts for the
same CPU set never overlap a running task's and queueing them costs nothing. A CPU set seen for the first
time takes an idle thread, else the one used longest ago, which rebinds once.

The thread's binding is still checked where the task starts (spawn.bind_thread): the routing only saves
system calls, a task's CPUs never depend on it.
"""

from __future__ import annotations

from typing import Optional

Cpus = Optional[frozenset[int]]  # None: an unbound task, which runs with the pilot's own CPUs


class Routes:
    """The routing of start jobs over ``count`` spawner threads, numbered from 0. The loop calls ``route``,
    each thread calls ``finished`` after each of its jobs; no lock: each counter has one writer."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"spawner threads: {count}, need at least 1")
        self.count = count
        self.bound: list[Cpus] = [None] * count  # each thread's binding once its queued jobs are done
        self.sent = [0] * count  # jobs routed to each thread (the loop writes)
        self.done = [0] * count  # jobs each thread has finished (that thread writes)
        self.used = [0] * count  # when each thread last got a job, by a count of jobs routed
        self.routed = 0

    @property
    def owner(self) -> dict[frozenset[int], int]:
        """The thread bound to each CPU set: never two for one, as a set only takes a thread it has none."""
        return {cpus: thread for thread, cpus in enumerate(self.bound) if cpus is not None}

    def route(self, cpus: Cpus) -> int:
        """The thread that starts a task bound to ``cpus``; its binding is then ``cpus``."""
        if cpus is not None and cpus in self.bound:
            thread = self.bound.index(cpus)  # a few threads: a look through them costs less than a dict kept
        else:
            thread = self._unbound() if cpus is None else self._least_recent()
            self.bound[thread] = cpus
        self.sent[thread] += 1
        self.routed += 1
        self.used[thread] = self.routed
        return thread

    def finished(self, thread: int) -> None:
        """In spawner thread ``thread``: one of its jobs is done."""
        self.done[thread] += 1

    def busy(self, thread: int) -> int:
        """How many jobs ``thread`` has queued or running."""
        return self.sent[thread] - self.done[thread]

    def _unbound(self) -> int:
        """Any thread will do: an idle one left unbound if there is one (the first found: this runs for
        every task of a pilot that does not bind), else the least busy, one unbound before a bound one,
        the one used longest ago."""
        sent, done, bound = self.sent, self.done, self.bound
        for thread in range(self.count):
            if sent[thread] == done[thread] and bound[thread] is None:
                return thread
        return min(range(self.count), key=lambda n: (self.busy(n), bound[n] is not None, self.used[n]))

    def _least_recent(self) -> int:
        """For a new CPU set: an idle thread, else any; of those, the one used longest ago."""
        return min(range(self.count), key=lambda n: (self.busy(n) > 0, self.used[n]))
