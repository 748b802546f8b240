"""The floor for bench_local: the least a claim-run-report loop in Python does per task, and nothing more.

Per task, as the issue asks of the pilot: one SQLite transaction (WAL) that reports the last task and claims
the next (state, a lease expiry, an attempt record with host, times and exit status, the tails of the
output), a folder of its own with stdout and stderr files, the token's id in the environment,
posix_spawn in a new session, and a SIGCHLD wake-up to reap it. Left out: everything else the pilot does
(renewals, timeouts, retries and the breaker, walltime, journal, logs, signals, folder reuse, cookies
and sweeps, template expansion, the CLI and its configuration). Its rate says how close to the baseline
any agent written this way can come on this machine.

    python floor_loop.py POOL.db WORKDIR SLOTS COMMAND...    (POOL.db: made by ``make_pool``)
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sqlite3
import sys
import time

CLAIM = "SELECT id, attempts FROM tokens WHERE state = 'todo' ORDER BY seq LIMIT 1"
LOCK = "UPDATE tokens SET state = 'locked', lease_expires = ?, attempts = ? WHERE id = ?"
REPORT = (
    "UPDATE tokens SET state = ?, lease_expires = NULL, attempts = ?, stdout_tail = ?, stderr_tail = ? "
    "WHERE id = ?"
)
TAIL = 4096


def make_pool(path: str, count: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(
        "CREATE TABLE tokens (seq INTEGER PRIMARY KEY, id TEXT UNIQUE, state TEXT, fields TEXT, "
        "attempts TEXT, lease_expires REAL, stdout_tail BLOB, stderr_tail BLOB)"
    )
    db.execute("CREATE INDEX tokens_state ON tokens (state, seq)")
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO tokens (id, state, fields, attempts) VALUES (?, 'todo', ?, '[]')",
        ((f"range-{n}", json.dumps({"input": str(n)})) for n in range(count)),
    )
    db.execute("COMMIT")
    db.close()


def main() -> None:
    pool, workdir, slots, command = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    db = sqlite3.connect(pool, isolation_level=None, timeout=60)
    db.execute("PRAGMA synchronous = NORMAL")
    host, env = socket.gethostname(), dict(os.environ)
    stdin = os.open(os.devnull, os.O_RDONLY)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    os.makedirs(workdir, exist_ok=True)
    running: dict[int, tuple[str, str, str, int, int, float]] = {}

    def claim() -> None:
        row = db.execute(CLAIM).fetchone()
        if row is None:
            return
        token_id, attempts = row
        now = time.time()
        attempt = {"host": host, "pilot": os.getpid(), "claimed": now}
        history = json.dumps([*json.loads(attempts), attempt])
        db.execute(LOCK, (now + 600, history, token_id))
        folder = os.path.join(workdir, token_id)
        os.mkdir(folder)
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        out = os.open(os.path.join(folder, "stdout"), flags, 0o644)
        err = os.open(os.path.join(folder, "stderr"), flags, 0o644)
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate((stdin, out, err))]
        pid = os.posix_spawn(
            command[0], command, {**env, "PILOT_TOKEN_ID": token_id}, file_actions=actions, setsid=True
        )
        running[pid] = (token_id, history, folder, out, err, now)

    def report(pid: int, status: int) -> None:
        token_id, history, folder, out, err, started = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        attempts = json.loads(history)
        attempts[-1].update(started=started, ended=time.time(), exit_code=code, reason=f"exit code {code}")
        tails = [os.pread(fd, TAIL, max(0, os.fstat(fd).st_size - TAIL)) for fd in (out, err)]
        state = "done" if code == 0 else "error"
        db.execute(REPORT, (state, json.dumps(attempts), *tails, token_id))
        for fd in (out, err):
            os.close(fd)
        os.unlink(os.path.join(folder, "stdout"))
        os.unlink(os.path.join(folder, "stderr"))
        os.rmdir(folder)

    db.execute("BEGIN IMMEDIATE")
    for _ in range(slots):
        claim()
    db.execute("COMMIT")
    while running:
        select.select([wake_read], [], [])
        os.read(wake_read, 512)
        for pid in list(running):
            reaped, status = os.waitpid(pid, os.WNOHANG)
            if reaped:
                db.execute("BEGIN IMMEDIATE")
                report(pid, status)
                claim()
                db.execute("COMMIT")


if __name__ == "__main__":
    main()
