"""A pilot's whole life around its loop: learn the walltime, ready the cache, then claim, run, report; its
guard (started with the first task) outlives it only if it dies without stopping its tasks."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping

from agent.config import CacheConfig, Config
from agent.errors import ConfigError
from agent.guard import Guard
from agent.health import check_node
from agent.identity import Identity
from agent.pilot import Ending, Pilot
from agent.pools import Pool
from agent.resources import ResourceError, detect
from agent.signals import Signals
from agent.spawn import background
from agent.walltime import Walltime, find_end

log = logging.getLogger(__name__)


def run_pilot(config: Config, pool: Pool, identity: Identity, environ: Mapping[str, str]) -> Ending:
    signals = Signals()
    with Guard(identity.pilot_id) as guard, signals.drain_requests():
        # A node that cannot run tasks must not take tokens: check it before anything is claimed.
        for line in check_node(config, environ):
            log.info("node check: %s", line)
        try:
            node = detect(config.pilot.node, environ, slots=config.pilot.slots)
        except ResourceError as err:
            raise ConfigError(config.path, "pilot.cores", str(err)) from None
        end = find_end(config.walltime, environ, time.time(), time.monotonic())
        walltime = Walltime(end, config.walltime)
        # The entries stay held (shared flock) until the pilot ends, so no eviction takes them from tasks.
        with _ready_cache(config.cache) as cache_paths, background(config.pilot.slots):
            pilot = Pilot(
                config,
                pool,
                identity,
                walltime,
                environ=environ,
                cache_paths=cache_paths,
                signals=signals,
                guard=guard,
                node=node,
            )
            return pilot.run()


def _ready_cache(config: CacheConfig) -> contextlib.AbstractContextManager[Mapping[str, str]]:
    """The cache module (hashing, downloads, archives) is imported only by pilots that have entries: it
    costs about 15 ms of a pilot's 90 ms start-up."""
    if not config.files:
        return contextlib.nullcontext({})
    from agent.cache import ready_cache

    return ready_cache(config)
