"""A pilot's whole life around its loop: learn the walltime, ready the cache, then claim, run, report."""

from __future__ import annotations

import time
from collections.abc import Mapping

from agent.config import Config
from agent.identity import Identity
from agent.pilot import Ending, Pilot
from agent.pools import Pool
from agent.walltime import Walltime, find_end


def run_pilot(config: Config, pool: Pool, identity: Identity, environ: Mapping[str, str]) -> Ending:
    end = find_end(config.walltime, environ, time.time(), time.monotonic())
    walltime = Walltime(end, config.walltime)
    pilot = Pilot(config, pool, identity, walltime, environ=environ, cache_paths={})
    return pilot.run()
