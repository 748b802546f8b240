"""Checks of the node before the first claim: a node that cannot run tasks must not burn tokens.

Each check raises NodeUnhealthy naming what is wrong; ``check_node`` runs them all and returns what it
found, for the pilot's first log lines.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from agent import template
from agent.config import Config
from agent.errors import NodeUnhealthy
from agent.spawn import executable
from agent.units import format_size

# What to do next, for the checks that fail.
WRITABLE_WORKDIR = "set pilot.workdir to a writable node-local folder"
INSTALL_PROGRAM = "install it, or give its full path in task.command"
FREE_SPACE = "free some space there, or lower pilot.min_free_space"


def check_node(config: Config, environ: Mapping[str, str]) -> list[str]:
    return [check_workdir(config.pilot.workdir, config.pilot.min_free_space), check_program(config, environ)]


def check_workdir(workdir: Path, min_free: int) -> str:
    """The workdir exists or can be made, takes a file, and has ``min_free`` bytes free."""
    probe = workdir / f".probe-{os.urandom(16).hex()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as file:
            file.write(b"pilot")
            file.flush()
            os.fsync(file.fileno())
        probe.unlink()
    except OSError as err:
        raise NodeUnhealthy(
            "workdir", f"cannot write in {workdir}: {err.strerror or err}; {WRITABLE_WORKDIR}"
        ) from None
    free = shutil.disk_usage(workdir).free
    if free < min_free:
        wanted = format_size(min_free)
        raise NodeUnhealthy(
            "workdir",
            f"{workdir} has {format_size(free)} free, less than pilot.min_free_space ({wanted}); "
            + FREE_SPACE,
        )
    return f"workdir {workdir}: writable, {format_size(free)} free"


def check_program(config: Config, environ: Mapping[str, str]) -> str:
    """The command's program exists and is executable, when it can be known before a token is claimed
    (it may use {pilot.config_dir}, not a token's fields)."""
    first = config.task.command[0]
    if any(not name.startswith("pilot.") for name in first.fields):
        return "program: named by the token, checked per task"
    program = template.render(first, {"pilot.config_dir": str(config.path.resolve().parent)})
    if "/" in program and not program.startswith("/"):
        return f"program {program}: relative to the task folder, checked per task"
    try:
        found = executable(program, {**environ, **config.task.env})  # the lookup tasks are started with
    except FileNotFoundError:
        found = None
    if found is None or not os.access(found, os.X_OK) or Path(found).is_dir():
        raise NodeUnhealthy(
            "program", f"{program!r} from task.command is not found or not executable here; {INSTALL_PROGRAM}"
        )
    return f"program {program}: {found}"
