#!/bin/sh
# Install what the tests start, into ignored folders (or from Debian packages for Slurm).
# Called by `make test-deps`; each part is idempotent and quick when already done.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
for part in "$here"/install-*.sh; do
    [ -e "$part" ] || continue
    sh "$part"
done
