"""The soak's task: log the run, pause for the token's `seconds`, exit as the token's `mode` says.

mode ok: exit 0. bad: exit 3, every time. flaky: exit 1 on the first attempt, 0 after. On a black-hole
node (SOAK_BROKEN set in the pilot's environment) every run fails at once, as with a missing library.
A token with `children` = K writes K child tokens to $PILOT_NEW_TOKENS before it sleeps (so a run killed
later has written them too, and its rerun writes the same ones), each `{"mode": "ok", "parent": <id>}`.

Lines go to $SOAK_LOG, each one O_APPEND write so lines of parallel tasks never mix:
    S <token> <attempt> <pilot> <start> pid=<pid> cores=<n> cpus=<list>   when it starts
    E <token> <attempt> <pilot> <start> <end> <exit>                      when it ends by itself
    T <token> <attempt> <pilot> <when>                                    when it gets SIGTERM (and exits)
(cores and cpus: $PILOT_CORES and $PILOT_CPUS, "-" where the pilot sets none.)
Standard library only, run with ``python -S``: it starts thousands of times.
"""

import json
import os
import signal
import sys
import time


def main() -> int:
    start = time.time()
    token = os.environ["PILOT_TOKEN_ID"]
    attempt = int(os.environ["PILOT_TASK_DIR"].rsplit(".", 1)[1])  # <workdir>/<pilot>/<token>.<attempt>
    pilot = os.environ["PILOT_ID"]
    fd = os.open(os.environ["SOAK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    cores, cpus = os.environ.get("PILOT_CORES") or "-", os.environ.get("PILOT_CPUS") or "-"
    os.write(
        fd, f"S {token} {attempt} {pilot} {start:.6f} pid={os.getpid()} cores={cores} cpus={cpus}\n".encode()
    )

    def stopped(number: int, frame: object) -> None:
        os.write(fd, f"T {token} {attempt} {pilot} {time.time():.6f}\n".encode())
        os._exit(128 + number)

    signal.signal(signal.SIGTERM, stopped)
    if os.environ.get("SOAK_BROKEN"):
        sys.stderr.write(f"error while loading shared libraries: {os.environ['SOAK_BROKEN']}\n")
        code = 42
    else:
        children = int(os.environ.get("PILOT_TOKEN_CHILDREN") or 0)
        if children and os.environ.get("PILOT_NEW_TOKENS"):
            line = json.dumps({"mode": "ok", "seconds": 0.1, "parent": token}) + "\n"
            out = os.open(os.environ["PILOT_NEW_TOKENS"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(out, (line * children).encode())
            os.close(out)
        time.sleep(float(os.environ["PILOT_TOKEN_SECONDS"]))
        mode = os.environ["PILOT_TOKEN_MODE"]
        code = 3 if mode == "bad" else 1 if mode == "flaky" and attempt == 1 else 0
    os.write(fd, f"E {token} {attempt} {pilot} {start:.6f} {time.time():.6f} {code}\n".encode())
    return code


if __name__ == "__main__":
    sys.exit(main())
