"""Real servers the tests and benchmarks start on 127.0.0.1 (installed by `make test-deps`)."""
