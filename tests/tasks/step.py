"""Test task for workflows: appends "<token id> <start> <end>" (epoch seconds) to a shared log in one
write when it ends, so tests can check that no token started before the tokens it comes after ended.

argv: LOG TOKEN_ID. The token's fields steer it, through the environment the pilot gives every task:
``fail`` (exit 1), ``children`` (write that many new tokens to $PILOT_NEW_TOKENS, or the line itself
when it is a string), ``hold`` (a file: on the first run only, after writing the children, wait until
the test kills the pilot; the file marks that first run), ``gate`` (a file: wait until it exists).
"""

import json
import os
import sys
import time
from pathlib import Path

log, token_id = sys.argv[1], sys.argv[2]
start = time.time()
Path("pid").write_text(str(os.getpid()))
children = os.environ.get("PILOT_TOKEN_CHILDREN")
if children is not None:
    with Path(os.environ["PILOT_NEW_TOKENS"]).open("w") as file:
        if children.isdigit():
            file.writelines(json.dumps({"input": i}) + "\n" for i in range(int(children)))
        else:
            file.write(children + "\n")
gate = os.environ.get("PILOT_TOKEN_GATE")
while gate is not None and not Path(gate).exists():
    time.sleep(0.05)
hold = os.environ.get("PILOT_TOKEN_HOLD")
if hold is not None and not Path(hold).exists():
    Path(hold).write_text("first run")
    time.sleep(600)
if os.environ.get("PILOT_TOKEN_FAIL"):
    sys.exit(1)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, f"{token_id} {start} {time.time()}\n".encode())
os.close(fd)
