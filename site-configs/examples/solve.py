"""A stand-in for a multi-threaded solver: one busy thread per core it was given, for a moment."""

import os
import sys
import threading
import time


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


cores = int(os.environ.get("PILOT_CORES", "1"))
threads = [threading.Thread(target=spin, args=(0.2,)) for _ in range(cores)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(f"{sys.argv[1]}: {cores} core(s), CPUs {os.environ.get('PILOT_CPUS', '?')}")
