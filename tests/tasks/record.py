"""Test task: append the token id to a shared file (one write, O_APPEND), optionally after a pause.

argv: LOG TOKEN_ID [SECONDS]. Writes its pid to ./pid first so tests can find it.
"""

import os
import sys
import time
from pathlib import Path

log, token_id = sys.argv[1], sys.argv[2]
Path("pid").write_text(str(os.getpid()))
if len(sys.argv) > 3:
    time.sleep(float(sys.argv[3]))
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, (token_id + "\n").encode())
os.close(fd)
