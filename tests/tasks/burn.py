"""A task that holds MB mebibytes (touched, so resident), burns CPU_SECONDS of CPU, then sleeps.

burn.py MB CPU_SECONDS [SLEEP_SECONDS]
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    size = int(float(sys.argv[1]) * 2**20)
    cpu = float(sys.argv[2])
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    held = bytearray(size)
    for offset in range(0, size, 4096):  # touch every page: resident, not merely reserved
        held[offset] = 1
    start = time.process_time()
    while time.process_time() - start < cpu:
        pass
    time.sleep(pause)
    print(len(held))


if __name__ == "__main__":
    main()
