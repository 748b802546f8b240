"""Tests of the pool backends (tests/pools/conftest.py starts pouchdb-server for the CouchDB ones)."""
