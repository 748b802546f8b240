"""The real ToPoS 4.1 on 127.0.0.1: a private MariaDB and a private Apache with mod_php, started and stopped
by pid. Used by the pytest fixtures (tests/pools/conftest.py) and by the benchmark, so it depends on the
standard library only, and talks to ToPoS with urllib, never with the code under test.

The source comes from ``../shared/third-party/topos/`` beside the repository (or ``$TOPOS_SRC``, a folder
with the same files): ToPoS's tree at a pinned commit, the REST library it loads, two one-line PHP 8
patches and a schema fix (see that folder's README). Debian's packages provide the servers
(tests/setup/install-topos.sh). MariaDB listens on a socket only; Apache on two free loopback ports, one
open and one behind HTTP basic auth, as sites put ToPoS behind it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
SOURCE_FILES = ("topos-e58e626.tar.gz", "rest-dede979.tar.gz", "php8.patch", "schema-fix.sql")
APACHE_MODULES = Path("/usr/lib/apache2/modules")
MODULES = (
    ("mpm_prefork_module", "mod_mpm_prefork.so"),
    ("authz_core_module", "mod_authz_core.so"),
    ("authz_host_module", "mod_authz_host.so"),
    ("authz_user_module", "mod_authz_user.so"),
    ("authn_core_module", "mod_authn_core.so"),
    ("authn_file_module", "mod_authn_file.so"),
    ("auth_basic_module", "mod_auth_basic.so"),
    ("access_compat_module", "mod_access_compat.so"),
    ("mime_module", "mod_mime.so"),
    ("dir_module", "mod_dir.so"),
    ("rewrite_module", "mod_rewrite.so"),
    ("alias_module", "mod_alias.so"),
    ("php_module", "libphp8.2.so"),
)
USER = ("alice", "alice-topos-secret")  # the one user of the basic-auth port
DB_PASSWORD = "topos-db-secret"  # the database user ToPoS connects as; only on a private socket
START_TIMEOUT = 60.0


class ToposMissing(RuntimeError):
    """Something the real server needs is not here: the message says what and how to get it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def source_folder() -> Path:
    """$TOPOS_SRC, else ../shared/third-party/topos/ beside the repository; every file must be there."""
    given = os.environ.get("TOPOS_SRC")
    folder = Path(given) if given else REPO.parent / "shared" / "third-party" / "topos"
    missing = [name for name in SOURCE_FILES if not (folder / name).is_file()]
    if missing:
        raise ToposMissing(
            f"ToPoS sources: {', '.join(missing)} not found in {folder} "
            "(set TOPOS_SRC to a folder with the ToPoS archives, patch and schema fix)"
        )
    return folder


def _program(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if found is None:
        raise ToposMissing(f"{name} is not installed: run `make test-deps` (tests/setup/install-topos.sh)")
    return found


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass
class ToposServer:
    """MariaDB and Apache with ToPoS, in one folder that the test session removes."""

    folder: Path
    port: int = field(default_factory=free_port)
    auth_port: int = field(default_factory=free_port)
    mariadb: Optional[subprocess.Popen[bytes]] = None
    apache: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/4.1/"

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.auth_port}/4.1/"

    @property
    def socket(self) -> Path:
        return self.folder / "db" / "mysqld.sock"

    # -- setting up --------------------------------------------------------------------------------

    def start(self) -> ToposServer:
        """Unpack and patch ToPoS, make a fresh database, start both servers; ToposMissing or
        RuntimeError (with the servers' own words) when that fails."""
        # Apache's workers run as www-data when we are root: every folder they read must be open to them.
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        source = source_folder()
        self._unpack(source)
        self._start_mariadb()
        self._load_schema(source)
        self.start_apache()
        return self

    def _unpack(self, source: Path) -> None:
        www = self.folder / "www"
        shutil.rmtree(www, ignore_errors=True)
        www.mkdir()
        for archive in ("topos-e58e626.tar.gz", "rest-dede979.tar.gz"):
            with tarfile.open(source / archive) as tar:
                _safe_extract(tar, www)
        tree = www / "topos-4.1"
        rest = tree / "include" / "REST"
        rest.mkdir(exist_ok=True)
        for name in ("REST.php", "RESTDir.php"):
            shutil.copy(www / "rest" / name, rest / name)
        patch = subprocess.run(
            ["patch", "-p1", "--quiet", "-i", str(source / "php8.patch")],
            cwd=tree,
            capture_output=True,
            text=True,
            check=False,
        )
        if patch.returncode != 0:
            raise RuntimeError(f"php8.patch did not apply: {patch.stdout}{patch.stderr}")
        (tree / "include" / "db_passwd.php").write_text(f"<?php define('DB_PASSWD', '{DB_PASSWORD}');\n")
        tree.rename(www / "4.1")
        for path in [www, *www.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)

    def _start_mariadb(self) -> None:
        db = self.folder / "db"
        shutil.rmtree(db, ignore_errors=True)
        (db / "data").mkdir(parents=True)
        db.chmod(0o755)  # www-data's PHP reaches the socket in here
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        install = subprocess.run(
            [
                _program("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={db / 'data'}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                *as_root,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if install.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {install.stdout[-1500:]}{install.stderr[-1500:]}")
        self.start_mariadb()

    def start_mariadb(self) -> None:
        db = self.folder / "db"
        argv = [
            _program("mariadbd"),
            "--no-defaults",
            f"--datadir={db / 'data'}",
            f"--socket={self.socket}",
            f"--pid-file={db / 'mariadbd.pid'}",
            f"--log-error={db / 'error.log'}",
            "--skip-networking",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=32M",
            "--max-connections=300",
            *(["--user=root"] if os.geteuid() == 0 else []),
        ]
        self.mariadb = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._sql_works():
            if self.mariadb.poll() is not None:
                raise RuntimeError(
                    f"mariadbd exited with {self.mariadb.returncode}: {self._tail(db / 'error.log')}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"mariadbd did not answer within {START_TIMEOUT}s: {self._tail(db / 'error.log')}"
                )
            time.sleep(0.1)
        self.socket.chmod(0o777)

    def _sql_works(self) -> bool:
        if not self.socket.exists():
            return False
        return self.sql("SELECT 1;", check=False).returncode == 0

    def sql(
        self, statements: str, *, database: str = "", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run SQL as the database's root, over the private socket."""
        argv = [_program("mariadb"), "--no-defaults", f"--socket={self.socket}", "-u", "root", "--batch"]
        result = subprocess.run(
            [*argv, *([database] if database else [])],
            input=statements,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"SQL failed: {result.stderr[-1500:]}")
        return result

    def _load_schema(self, source: Path) -> None:
        self.sql(
            "CREATE DATABASE topos_4_1;\n"
            f"CREATE USER 'topos'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';\n"
            "GRANT ALL ON topos_4_1.* TO 'topos'@'localhost';\n"
        )
        dump = (self.folder / "www" / "4.1" / "include" / "topos_4_1.sql").read_text(encoding="latin-1")
        self.sql(dump, database="topos_4_1")
        self.sql((source / "schema-fix.sql").read_text(), database="topos_4_1")

    def _apache_config(self) -> Path:
        conf = self.folder / "apache"
        conf.mkdir(exist_ok=True)
        digest = base64.b64encode(hashlib.sha1(USER[1].encode()).digest()).decode()  # noqa: S324 - Apache's {SHA}
        (conf / "htpasswd").write_text(f"{USER[0]}:{{SHA}}{digest}\n")
        (conf / "htpasswd").chmod(0o644)
        www = self.folder / "www"
        loads = "\n".join(f"LoadModule {name} {APACHE_MODULES / so}" for name, so in MODULES)
        user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        text = f"""{loads}
ServerRoot "{conf}"
ServerName 127.0.0.1
DefaultRuntimeDir "{conf}"
PidFile "{conf / "httpd.pid"}"
ErrorLog "{conf / "error.log"}"
LogLevel warn
LogFormat "%h %t \\"%r\\" %>s %b %D" timed
CustomLog "{conf / "access.log"}" timed
{user}Listen 127.0.0.1:{self.port}
Listen 127.0.0.1:{self.auth_port}
StartServers 4
MinSpareServers 4
MaxSpareServers 32
MaxRequestWorkers 64
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5
TypesConfig /etc/mime.types
DirectoryIndex index.php
DocumentRoot "{www}"
<Directory />
    AllowOverride None
    Require all denied
</Directory>
<Directory "{www}">
    Options FollowSymLinks
    AllowOverride All
    Require all granted
</Directory>
<FilesMatch "\\.php$">
    SetHandler application/x-httpd-php
</FilesMatch>
# A site that moved: every request under /moved/ is redirected to ToPoS (what a wrong server.url meets).
RedirectMatch 301 ^/moved/(.*)$ /4.1/$1
php_admin_value mysqli.default_socket "{self.socket}"
php_admin_value sendmail_path /bin/true
<VirtualHost 127.0.0.1:{self.auth_port}>
    <Location />
        AuthType Basic
        AuthName "ToPoS"
        AuthUserFile "{conf / "htpasswd"}"
        Require valid-user
    </Location>
</VirtualHost>
"""
        path = conf / "httpd.conf"
        path.write_text(text)
        return path

    # -- running -----------------------------------------------------------------------------------

    def start_apache(self) -> None:
        config = self._apache_config()
        self.apache = subprocess.Popen(
            [_program("apache2"), "-f", str(config), "-DFOREGROUND"],
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "apache" / "stderr.log").open("ab"),
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.apache.poll() is not None:
                log = self._tail(self.folder / "apache" / "stderr.log") + self._tail(
                    self.folder / "apache" / "error.log"
                )
                raise RuntimeError(f"apache2 exited with {self.apache.returncode}: {log}")
            with contextlib.suppress(OSError):
                if self.request("GET", "").status == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ToPoS did not answer within {START_TIMEOUT}s")
            time.sleep(0.05)

    def stop_apache(self) -> None:
        _stop(self.apache)
        self.apache = None

    def stop_mariadb(self) -> None:
        _stop(self.mariadb)
        self.mariadb = None

    def stop(self) -> None:
        self.stop_apache()
        self.stop_mariadb()

    def _tail(self, path: Path) -> str:
        try:
            return path.read_text(errors="replace")[-1500:]
        except OSError:
            return f"(no {path.name})"

    def request_count(self, pool: str) -> int:
        """Requests Apache logged for ``pool`` and its companion pools (``pool.done``, ...)."""
        log = (self.folder / "apache" / "access.log").read_text(errors="replace")
        pattern = re.compile(rf"/4\.1/pools/{re.escape(pool)}[/.]")
        return sum(1 for line in log.splitlines() if pattern.search(line))

    # -- ToPoS over HTTP (urllib, as curl would) ---------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        *,
        headers: Optional[dict[str, str]] = None,
        user: Optional[tuple[str, str]] = None,
        auth_port: bool = False,
    ) -> Answer:
        base = self.auth_url if auth_port else self.url
        all_headers = dict(headers or {})
        if user is not None:
            all_headers["Authorization"] = (
                "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
            )
        request = urllib.request.Request(base + path, data=body, headers=all_headers, method=method)  # noqa: S310
        try:
            with _OPENER.open(request, timeout=30) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as err:
            return Answer(err.code, dict(err.headers), err.read())

    def new_pool(self) -> str:
        return f"t{os.urandom(6).hex()}"

    def add_lines(self, pool: str, data: bytes) -> None:
        """What the bash client's createTokensFromLinesInFile sends."""
        answer = self.request(
            "POST",
            f"pools/{pool}/tokens/",
            data,
            headers={"Content-Type": 'text/plain; charset="UTF-8"'},
        )
        assert answer.status == 202, (answer.status, answer.text[-500:])

    def token_ids(self, pool: str) -> list[int]:
        answer = self.request("GET", f"pools/{pool}/tokens/", headers={"Accept": "text/plain"})
        assert answer.status == 200, answer.status
        return [int(line.split("\t", 1)[0]) for line in answer.text.splitlines()[1:] if line]

    def listing(self, pool: str) -> list[dict[str, str]]:
        """The pool's tokens as ToPoS lists them (``Accept: application/json``)."""
        import json

        answer = self.request("GET", f"pools/{pool}/tokens/", headers={"Accept": "application/json"})
        assert answer.status == 200, answer.status
        return json.loads(answer.body) or []

    def token(self, pool: str, token_id: int) -> Answer:
        return self.request("GET", f"pools/{pool}/tokens/{token_id}", headers={"Accept": "text/plain"})

    def locks(self, pool: str) -> int:
        answer = self.request("GET", f"pools/{pool}/", headers={"Accept": "text/plain"})
        found = re.search(r"(\d+) locks", answer.text)
        assert found, answer.text[-500:]
        return int(found.group(1))


def _stop(process: Optional[subprocess.Popen[bytes]]) -> None:
    """TERM by pid (the process leads its own group: Apache's workers go with it), KILL after 20 s."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _safe_extract(tar: tarfile.TarFile, target: Path) -> None:
    root = target.resolve()
    for member in tar.getmembers():
        if not (member.isfile() or member.isdir()):
            continue
        destination = (root / member.name).resolve()
        if root not in destination.parents and destination != root:
            raise RuntimeError(f"{tar.name}: member {member.name!r} points outside the folder")
        tar.extract(member, root)  # checked above: nothing lands outside


def make_server(base: Optional[Path] = None) -> ToposServer:
    """A started server in a fresh folder (under ``base``, or the system's temporary folder)."""
    folder = Path(tempfile.mkdtemp(prefix="topos-", dir=base))
    return ToposServer(folder).start()
