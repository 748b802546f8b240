"""The soak's task: log the run, pause for the token's `seconds`, exit as the token's `mode` says.

mode ok: exit 0. bad: exit 3, every time. flaky: exit 1 on the first attempt, 0 after. On a black-hole
node (SOAK_BROKEN set in the pilot's environment) every run fails at once, as with a missing library.

Two lines go to $SOAK_LOG, each one O_APPEND write so lines of parallel tasks never mix:
    S <token> <attempt> <pilot> <start>                  when it starts
    E <token> <attempt> <pilot> <start> <end> <exit>     when it ends by itself (not when killed)
Standard library only, run with ``python -S``: it starts thousands of times.
"""

import os
import sys
import time


def main() -> int:
    start = time.time()
    token = os.environ["PILOT_TOKEN_ID"]
    attempt = int(os.environ["PILOT_TASK_DIR"].rsplit(".", 1)[1])  # <workdir>/<pilot>/<token>.<attempt>
    pilot = os.environ["PILOT_ID"]
    fd = os.open(os.environ["SOAK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"S {token} {attempt} {pilot} {start:.6f}\n".encode())
    if os.environ.get("SOAK_BROKEN"):
        sys.stderr.write(f"error while loading shared libraries: {os.environ['SOAK_BROKEN']}\n")
        code = 42
    else:
        time.sleep(float(os.environ["PILOT_TOKEN_SECONDS"]))
        mode = os.environ["PILOT_TOKEN_MODE"]
        code = 3 if mode == "bad" else 1 if mode == "flaky" and attempt == 1 else 0
    os.write(fd, f"E {token} {attempt} {pilot} {start:.6f} {time.time():.6f} {code}\n".encode())
    return code


if __name__ == "__main__":
    sys.exit(main())
