"""What the node has, what a token asks, what is free, which CPUs and GPUs a task gets, and what may start.

Pure logic with the clock passed in; the probes of the machine (CPU affinity, files, one command) come in
as a ``Probe`` so that the tests can answer for the machine. ``detect`` runs once at start; ``Book`` is the
loop's ledger: it hands out CPUs, GPUs and memory to a task and takes them back, and says what a claim may
take now (a ``Fit``, which the pool turns into a query condition).

Anti-starvation: a token that fits the node but not what is free is held (its lease kept) instead of
left in the pool. Smaller tasks go on starting beside it (backfill) until it has waited ``patience`` (one
expected task duration); from then on nothing else starts until it fits.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from agent.units import format_size, parse_size

FIELDS = ("cores", "gpus", "memory")  # token fields of a request
_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")
_GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "SLURM_JOB_GPUS")
_CGROUP_ROOT = "/sys/fs/cgroup"


class ResourceError(ValueError):
    """A node that cannot be as declared (more cores than this process may use, with binding on)."""


# -- what a token asks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    cores: int = 1  # at least
    max_cores: int = 1  # at most: a range "4-16" takes what is free up to this
    gpus: int = 0
    memory: int = 0  # bytes; 0: no request

    def __str__(self) -> str:
        cores = str(self.cores) if self.max_cores == self.cores else f"{self.cores}-{self.max_cores}"
        text = f"{cores} core(s)"
        if self.gpus:
            text += f", {self.gpus} GPU(s)"
        return text + (f", {format_size(self.memory)}" if self.memory else "")


def parse_cores(value: Any) -> tuple[int, int]:
    """A core count (4) or range ("4-16") as (at least, at most); ValueError says what is wrong."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"expected at least 1 core, got {value}")
        return value, value
    match = _RANGE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f'expected a core count like 4 or a range like "4-16", got {value!r}')
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if low < 1 or high < low:
        raise ValueError(f"expected a range of at least 1 core, low to high, got {value!r}")
    return low, high


def parse_gpus(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a GPU count >= 0, got {value!r}")
    return value


def parse_memory(value: Any) -> int:
    """Bytes: a number of bytes or a size like "4GB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        return parse_size(value)
    raise ValueError(f'expected a size like "4GB" or a number of bytes, got {value!r}')


def request_of(fields: Mapping[str, Any], default: Request) -> Request:
    """What a token asks: its fields ``cores``, ``gpus``, ``memory``, else the ``[task]`` defaults.
    ValueError names the field that is wrong."""
    try:
        cores, max_cores = (
            parse_cores(fields["cores"]) if "cores" in fields else (default.cores, default.max_cores)
        )
    except ValueError as err:
        raise ValueError(f"field cores: {err}") from None
    try:
        gpus = parse_gpus(fields["gpus"]) if "gpus" in fields else default.gpus
    except ValueError as err:
        raise ValueError(f"field gpus: {err}") from None
    try:
        memory = parse_memory(fields["memory"]) if "memory" in fields else default.memory
    except ValueError as err:
        raise ValueError(f"field memory: {err}") from None
    return Request(cores, max_cores, gpus, memory)


def stored_needs(fields: Mapping[str, Any]) -> Optional[dict[str, int]]:
    """The token's own request as numbers a pool can compare (cores is the lower bound of a range), only
    for the fields it has; None when it has none. ValueError names a field that is wrong."""
    if fields.keys().isdisjoint(FIELDS):  # a quarter of what any() over them costs, for a million adds
        return None
    needs: dict[str, int] = {}
    parsers: dict[str, Callable[[Any], int]] = {
        "cores": lambda value: parse_cores(value)[0],
        "gpus": parse_gpus,
        "memory": parse_memory,
    }
    for name, parse in parsers.items():
        if name in fields:
            try:
                needs[name] = parse(fields[name])
            except ValueError as err:
                raise ValueError(f"field {name}: {err}") from None
    return needs


# -- what a claim may take -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """What a claim may take now: at most ``tasks`` tokens whose requests together fit in ``cores``,
    ``gpus`` and ``memory``. A token without a field asks the ``default`` of it. Pools turn this into a
    query condition and pick with ``pick``; one that cannot look into tokens may ignore it."""

    cores: int
    gpus: int
    memory: Optional[int]  # bytes; None: memory is not counted on this node
    default: Request
    tasks: int = 1
    largest_first: bool = False  # pick the biggest of the candidates first (a probe for held tokens)
    beyond: Optional[Fit] = None  # only tokens that do not fit in this (bigger than what is free)
    # Tasks run beside this claim: one that finds nothing is made again as they end, so a pool may look
    # through its first tokens only, as Slurm's backfill tests its first jobs (bf_max_job_test), not a
    # million that do not fit at each task's end.
    partial: bool = False

    @property
    def spent(self) -> bool:
        """Nothing more can be taken: no task or no core left (every token asks a core at least)."""
        return self.tasks < 1 or self.cores < 1

    def needs(self, stored: Optional[Mapping[str, int]]) -> tuple[int, int, int]:
        stored = stored or {}
        return (
            stored.get("cores", self.default.cores),
            stored.get("gpus", self.default.gpus),
            stored.get("memory", self.default.memory),
        )

    def admits(self, stored: Optional[Mapping[str, int]]) -> bool:
        """For a token's ``stored_needs``: whether it fits alone."""
        cores, gpus, memory = self.needs(stored)
        fits = cores <= self.cores and gpus <= self.gpus and (self.memory is None or memory <= self.memory)
        return fits and (self.beyond is None or not self.beyond.admits(stored))

    def exceeds(self, other: Optional[Fit]) -> bool:
        """Whether this fit takes tokens ``other`` did not: more of something is free."""
        if other is None:
            return False
        more_memory = self.memory is not None and other.memory is not None and self.memory > other.memory
        return self.cores > other.cores or self.gpus > other.gpus or more_memory

    def after(self, taken: Sequence[Mapping[str, Any]]) -> Fit:
        """What is left of this fit once tokens with these fields were claimed."""
        cores, gpus, memory = self.cores, self.gpus, self.memory
        for fields in taken:
            try:
                stored = stored_needs(fields)
            except ValueError:
                stored = None  # refused when placed
            need_cores, need_gpus, need_memory = self.needs(stored)
            cores, gpus = cores - need_cores, gpus - need_gpus
            memory = None if memory is None else memory - need_memory
        return replace(self, cores=cores, gpus=gpus, memory=memory, tasks=self.tasks - len(taken))

    def pick(self, candidates: Sequence[Optional[Mapping[str, int]]]) -> list[int]:
        """Which of the candidates (in claim order) to take: first fit, until ``tasks`` are taken or
        nothing more fits. A smaller token behind one that does not fit is taken (backfill)."""
        cores, gpus, memory = self.cores, self.gpus, self.memory
        taken: list[int] = []
        order = list(enumerate(candidates))
        if self.largest_first:
            order.sort(key=lambda item: -self.needs(item[1])[0])
        for index, stored in order:
            if len(taken) >= self.tasks or cores < 1:
                break
            if self.beyond is not None and self.beyond.admits(stored):
                continue
            need_cores, need_gpus, need_memory = self.needs(stored)
            if need_cores > cores or need_gpus > gpus or (memory is not None and need_memory > memory):
                continue
            taken.append(index)
            cores, gpus = cores - need_cores, gpus - need_gpus
            memory = None if memory is None else memory - need_memory
        return sorted(taken)


# -- what the node has ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """``[pilot] cores``, ``gpus``, ``memory`` and ``bind`` as configured; None means "auto"."""

    cores: Optional[int] = None
    gpus: Optional[tuple[str, ...]] = None
    memory: Optional[int] = None
    bind: bool = True


@dataclass(frozen=True)
class Node:
    cpus: tuple[int, ...]  # the CPU ids handed out: real ones when bound, 0..n-1 otherwise
    gpus: tuple[str, ...]
    memory: Optional[int]  # bytes; None when unknown (nothing counted)
    bind: bool
    found: tuple[str, ...] = ()  # what was found and where from, for the first log lines

    @property
    def cores(self) -> int:
        return len(self.cpus)

    def __str__(self) -> str:
        memory = "memory not counted" if self.memory is None else format_size(self.memory)
        return f"{self.cores} core(s), {len(self.gpus)} GPU(s), {memory}"

    def holds(self, request: Request) -> bool:
        """Whether the request could ever fit here, with everything free."""
        memory_ok = self.memory is None or request.memory <= self.memory
        return request.cores <= self.cores and request.gpus <= len(self.gpus) and memory_ok


def read_file(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return None


def run_probe(argv: Sequence[str]) -> Optional[str]:
    """The output of a probe command, None when it is not there or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


@dataclass(frozen=True)
class Probe:
    """How ``detect`` looks at the machine: injected so the tests answer for it."""

    affinity: Callable[[], Collection[int]] = field(default=lambda: os.sched_getaffinity(0))
    read: Callable[[str], Optional[str]] = field(default=read_file)
    run: Callable[[Sequence[str]], Optional[str]] = field(default=run_probe)


def detect(spec: NodeSpec, environ: Mapping[str, str], probe: Optional[Probe] = None, slots: int = 1) -> Node:
    """What this job may use, decided once at start. ResourceError when the declaration cannot be met.

    With ``cores`` left at "auto" and more ``slots`` than the cores found, each slot is one core and
    nothing is bound, as before pilots counted cores: pilot.slots keeps meaning tasks at once."""
    probe = probe or Probe()
    found: list[str] = []
    affinity = sorted(probe.affinity())
    bind = spec.bind
    if spec.cores is not None:
        count = spec.cores
        found.append(f"cores: {count} (pilot.cores)")
    else:
        count, where = _auto_cores(affinity, environ, probe)
        found.append(f"cores: {count} ({where})")
        if slots > count:
            found[-1] = f"cores: {slots}, one per slot (pilot.slots {slots} > {count} found: {where})"
            count, bind = slots, False
    if bind:
        if count > len(affinity):
            raise ResourceError(
                f"{count} cores, but this process may use only {len(affinity)} CPU(s) "
                f"({format_cpus(affinity)}): set pilot.cores to at most {len(affinity)}, or pilot.bind = "
                "false to share them without binding"
            )
        cpus = tuple(affinity[:count])
        found[-1] += f", bound to CPUs {format_cpus(cpus)}"
    else:
        cpus = tuple(range(count))
        found[-1] += ", not bound" + (" (pilot.bind = false)" if not spec.bind else "")
    if spec.gpus is not None:
        gpus, where = spec.gpus, "pilot.gpus"
    else:
        gpus, where = _auto_gpus(environ, probe)
    found.append(f"GPUs: {', '.join(gpus) if gpus else 'none'} ({where})")
    if spec.memory is not None:
        memory, where = spec.memory, "pilot.memory"
    else:
        memory, where = _auto_memory(environ, probe)
    found.append(f"memory: {format_size(memory) if memory is not None else 'unknown'} ({where})")
    return Node(cpus=cpus, gpus=tuple(gpus), memory=memory, bind=bind, found=tuple(found))


def _auto_cores(affinity: Sequence[int], environ: Mapping[str, str], probe: Probe) -> tuple[int, str]:
    """The smallest of the limits that answer: the CPU affinity (Slurm's cpuset), Slurm's count (a Slurm
    without cpuset leaves the affinity at the whole node), the cgroup's CPU quota."""
    answers = [(len(affinity), "CPU affinity")]
    for name in ("SLURM_CPUS_ON_NODE", "SLURM_JOB_CPUS_PER_NODE"):
        match = re.match(r"\d+", environ.get(name, ""))
        if match and int(match.group()) > 0:
            answers.append((int(match.group()), name))
            break
    quota = _cgroup_values(probe, "cpu.max")
    for text in quota:
        parts = text.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]):
            answers.append((max(1, math.ceil(int(parts[0]) / int(parts[1]))), "cgroup cpu.max"))
    count = min(value for value, _ in answers)
    return count, ", ".join(f"{where} {value}" for value, where in answers) + ": the smallest"


def _auto_gpus(environ: Mapping[str, str], probe: Probe) -> tuple[tuple[str, ...], str]:
    for name in _GPU_VARIABLES:
        value = environ.get(name)
        if value is not None:
            ids = tuple(part.strip() for part in value.split(",") if part.strip() and part != "NoDevFiles")
            return ids, name
    listing = probe.run(["nvidia-smi", "-L"])
    if listing is not None:
        ids = tuple(re.findall(r"^GPU (\d+):", listing, re.MULTILINE))
        return ids, "nvidia-smi -L"
    return (), "no CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES, SLURM_JOB_GPUS or nvidia-smi"


def _auto_memory(environ: Mapping[str, str], probe: Probe) -> tuple[Optional[int], str]:
    """The smallest that answers: the cgroup's memory.max, SLURM_MEM_PER_NODE (MB), MemTotal."""
    answers = []
    for text in _cgroup_values(probe, "memory.max"):
        if text.strip().isdigit():
            answers.append((int(text), "cgroup memory.max"))
    slurm = environ.get("SLURM_MEM_PER_NODE", "")
    if slurm.isdigit() and int(slurm) > 0:
        answers.append((int(slurm) * 2**20, "SLURM_MEM_PER_NODE"))
    meminfo = probe.read("/proc/meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    if match:
        answers.append((int(match.group(1)) * 1024, "MemTotal"))
    if not answers:
        return None, "no cgroup limit, SLURM_MEM_PER_NODE or /proc/meminfo"
    memory = min(value for value, _ in answers)
    return memory, ", ".join(f"{where} {format_size(value)}" for value, where in answers) + ": the smallest"


def _cgroup_values(probe: Probe, name: str) -> list[str]:
    """``name`` in this process's cgroup (v2) and its parents: a limit may sit on any of them."""
    text = probe.read("/proc/self/cgroup") or ""
    match = re.search(r"^0::(/\S*)$", text, re.MULTILINE)
    if not match:
        return []
    values = []
    path = match.group(1).rstrip("/")
    while True:
        value = probe.read(f"{_CGROUP_ROOT}{path}/{name}")
        if value is not None:
            values.append(value.strip())
        if not path:
            return values
        path = path.rsplit("/", 1)[0]


def format_cpus(cpus: Collection[int]) -> str:
    """0-3,8,10-11: the list form of taskset and Slurm."""
    ordered = sorted(cpus)
    parts: list[str] = []
    start = previous = None
    for cpu in [*ordered, None]:
        if start is not None and (cpu is None or cpu != previous + 1):  # type: ignore[operator]
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = None
        if cpu is not None and start is None:
            start = cpu
        previous = cpu
    return ",".join(parts)


# -- what a task gets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    cpus: tuple[int, ...]
    gpus: tuple[str, ...]
    memory: int  # bytes asked; 0: no request

    def environment(self, task_env: Mapping[str, str]) -> dict[str, str]:
        """The variables that tell the task what it got; OMP_NUM_THREADS only when the task's own
        environment (``[task] env``) does not set it."""
        gpus = ",".join(self.gpus)
        env = {
            "PILOT_CORES": str(len(self.cpus)),
            "PILOT_CPUS": format_cpus(self.cpus),
            "PILOT_GPUS": gpus,
            "CUDA_VISIBLE_DEVICES": gpus,  # empty when none: a CPU task cannot take a GPU by accident
            "ROCR_VISIBLE_DEVICES": gpus,
            "PILOT_MEMORY": str(self.memory),
        }
        if "OMP_NUM_THREADS" not in task_env:
            env["OMP_NUM_THREADS"] = str(len(self.cpus))
        return env


@dataclass(frozen=True)
class Placed:
    """Where a claimed token went: ``grant`` to run now; else held (no reason) or given back."""

    grant: Optional[Grant]
    reason: str = ""
    charged: bool = False  # the token's own fault (a wrong field): a charged failure, not a give-back
    request: Optional[Request] = None


@dataclass
class Held:
    """A claimed token that fits the node but not what is free: it starts first once it fits."""

    item: Any  # the pilot's lease
    request: Request
    since: float  # monotonic


def probe_interval(patience: float) -> float:
    """Seconds between looks for a token bigger than what is free: a few per expected task duration."""
    return max(1.0, min(30.0, patience / 4))


class Book:
    """Which running task holds which CPUs, GPUs and memory; what is free; what a claim may take."""

    def __init__(self, node: Node, default: Request, slots: Optional[int]) -> None:
        self.node = node
        self.default = default
        self.slots = slots  # tasks at once, at most (pilot.slots); None: no cap
        self.free_cpus = list(node.cpus)
        self.free_gpus = list(node.gpus)
        self.free_memory = node.memory
        self.grants: dict[str, Grant] = {}
        self.held: Optional[Held] = None

    # -- questions ---------------------------------------------------------------------------------

    def holds(self, request: Request) -> bool:
        return self.node.holds(request)

    def fits(self, request: Request) -> bool:
        if self.slots is not None and len(self.grants) >= self.slots:
            return False
        memory_ok = self.free_memory is None or request.memory <= self.free_memory
        return request.cores <= len(self.free_cpus) and request.gpus <= len(self.free_gpus) and memory_ok

    def fit(self, now: float, patience: float) -> Optional[Fit]:
        """What claims may take now, or None for nothing. A held token that fits is started first:
        claims take what it leaves. A held token that has waited ``patience`` stops every other claim
        until it fits."""
        cores, gpus, memory = len(self.free_cpus), len(self.free_gpus), self.free_memory
        tasks = cores if self.slots is None else min(cores, self.slots - len(self.grants))
        held = self.held
        if held is not None:
            if not self.fits(held.request):
                if now - held.since >= patience:
                    return None
            else:
                cores, gpus, tasks = cores - held.request.cores, gpus - held.request.gpus, tasks - 1
                memory = None if memory is None else memory - held.request.memory
        if cores < 1 or tasks < 1:
            return None
        partial = bool(self.grants)
        return Fit(cores=cores, gpus=gpus, memory=memory, default=self.default, tasks=tasks, partial=partial)

    def probe_fit(self, now: float, patience: float) -> Optional[Fit]:
        """What a probe for a token bigger than what is free may take: one token that fits the node but
        not ``fit`` (the biggest of those a backend looks at; the local pool gives the oldest). None when
        there is no point: a token is held already, or nothing is free (every token is bigger then)."""
        free = self.fit(now, patience)
        if self.held is not None or free is None or not self.grants:
            return None
        node = self.node
        return Fit(
            len(node.cpus), len(node.gpus), node.memory, self.default, 1, largest_first=True, beyond=free
        )

    def blocking(self, now: float, patience: float) -> bool:
        """Whether a held token has waited long enough to stop others from starting."""
        return (
            self.held is not None and not self.fits(self.held.request) and now - self.held.since >= patience
        )

    # -- hand out and take back ----------------------------------------------------------------------

    def grant(self, key: str, request: Request) -> Optional[Grant]:
        """The CPUs, GPUs and memory for a task, or None when it does not fit now. A range of cores
        takes what is free, up to its top."""
        if not self.fits(request):
            return None
        take = min(request.max_cores, len(self.free_cpus))
        cpus = tuple(self.free_cpus[:take])
        del self.free_cpus[:take]
        gpus = tuple(self.free_gpus[: request.gpus])
        del self.free_gpus[: request.gpus]
        if self.free_memory is not None:
            self.free_memory -= request.memory
        grant = Grant(cpus, gpus, request.memory)
        self.grants[key] = grant
        return grant

    def release(self, key: str) -> None:
        grant = self.grants.pop(key, None)
        if grant is None:
            return
        # Lowest ids first: the next task gets neighbouring CPUs where it can.
        self.free_cpus = sorted([*self.free_cpus, *grant.cpus])
        order = {gpu: i for i, gpu in enumerate(self.node.gpus)}
        self.free_gpus = sorted([*self.free_gpus, *grant.gpus], key=order.__getitem__)
        if self.free_memory is not None:
            self.free_memory += grant.memory

    def place(self, key: str, fields: Mapping[str, Any], item: Any, now: float) -> Placed:
        """A claimed token: granted what it asks, held for later, or to be given back (``reason``)."""
        try:
            request = request_of(fields, self.default)
        except ValueError as err:
            return Placed(None, f"not started: {err}", charged=True)
        if not self.node.holds(request):
            return Placed(None, f"not started: it asks {request}, more than this node has ({self.node})")
        grant = self.grant(key, request)
        if grant is not None:
            return Placed(grant)
        if self.held is None:
            self.held = Held(item, request, now)
            return Placed(None, request=request)
        return Placed(None, "not started: it does not fit in what is free now")

    def take_held(self, key: str) -> Optional[Any]:
        """The held token, granted, once it fits."""
        held = self.held
        if held is None or not self.fits(held.request):
            return None
        self.held = None
        self.grant(key, held.request)
        return held.item

    def drop_held(self) -> Optional[Any]:
        item = None if self.held is None else self.held.item
        self.held = None
        return item
