"""pilot.pyz against pouchdb-server behind TLS (a proxy on 127.0.0.1 with a self-signed certificate): the
certificate is verified by default, `server.ca_bundle` makes it trusted, and a pilot that cannot verify
its server says so at once instead of waiting out server.max_outage."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest import Site
from servers.pouchdb import PouchDBServer
from servers.tls import CERT, TLSProxy

from pools.conftest import couch_config

pytestmark = pytest.mark.couchdb


@pytest.fixture
def tls(pouchdb: PouchDBServer) -> Iterator[TLSProxy]:
    proxy = TLSProxy(pouchdb.port).start()
    yield proxy
    proxy.stop()


def tls_config(site: Site, pouchdb: PouchDBServer, database: str, tls: TLSProxy, **server: str) -> None:
    sections = couch_config(site.folder, pouchdb, database, ["/bin/true"])
    sections["server"].update({"url": tls.url, "max_outage": "15m", **server})
    site.write(sections)


def test_a_server_whose_certificate_is_not_trusted_is_refused_in_one_line(
    site: Site, pouchdb: PouchDBServer, couch_db: str, tls: TLSProxy
) -> None:
    tls_config(site, pouchdb, couch_db, tls)
    check = site.run("check")
    assert check.returncode == 4, check.stderr
    assert "Traceback" not in check.stderr
    assert "TLS certificate verification failed" in check.stderr.strip().splitlines()[-1]


def test_ca_bundle_makes_the_servers_certificate_trusted_end_to_end(
    site: Site, pouchdb: PouchDBServer, couch_db: str, tls: TLSProxy
) -> None:
    tls_config(site, pouchdb, couch_db, tls, ca_bundle=str(CERT))
    assert site.run("init").returncode == 0
    check = site.run("check")
    assert check.returncode == 0, check.stderr
    assert f"server {tls.url}: reachable" in check.stdout
    assert site.run("tokens", "add", "--range", "5").returncode == 0
    run = site.run("run")
    assert run.returncode == 0, run.stderr
    assert site.status()["done"] == 5


def test_a_pilot_that_cannot_verify_its_server_exits_at_once_not_after_max_outage(
    site: Site, pouchdb: PouchDBServer, couch_db: str, tls: TLSProxy
) -> None:
    tls_config(site, pouchdb, couch_db, tls)
    started = time.monotonic()
    run = site.run("run", timeout=120)
    assert run.returncode == 4, run.stderr
    assert time.monotonic() - started < 60  # server.max_outage is 15 minutes
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "TLS certificate verification failed" in last
    assert "trust its certificate with server.ca_bundle" in last
