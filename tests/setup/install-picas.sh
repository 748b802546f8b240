#!/bin/sh
# The picas client (PiCaS, PyPI `picas`), for the interop tests and the benchmark, into its own virtual
# environment .deps/picas-venv: it pins old setuptools and cryptography, which must not meet the repo's.
# Idempotent: does nothing when the pinned version imports. PICAS_PYTHON picks the interpreter.
set -eu
version=1.1.2
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.deps/picas-venv"
stamp="$venv/.picas-$version"
if [ -e "$stamp" ] && "$venv/bin/python" -c "import picas.actors" 2>/dev/null; then
    exit 0
fi
python="${PICAS_PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || {
    echo "install-picas.sh: $python is older than 3.9; set PICAS_PYTHON" >&2
    exit 1
}
echo "installing picas $version into $venv"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "picas==$version"
"$venv/bin/python" -c "import picas.actors, picas.clients, picas.iterators"
touch "$stamp"
