#!/bin/sh
# pouchdb-server, the CouchDB-compatible server the CouchDB pool tests start, into .deps/node.
# Idempotent: does nothing when the pinned version is already there. Needs node (>= 18) and npm.
set -eu
version=4.2.0
root="$(cd "$(dirname "$0")/../.." && pwd)"
prefix="$root/.deps/node"
bin="$prefix/node_modules/.bin/pouchdb-server"
stamp="$prefix/.pouchdb-server-$version"
if [ -x "$bin" ] && [ -e "$stamp" ]; then
    exit 0
fi
for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 || { echo "install-node.sh: $tool not found; install Node.js 20" >&2; exit 1; }
done
mkdir -p "$prefix"
echo "installing pouchdb-server $version into $prefix"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "pouchdb-server@$version"
"$bin" --help >/dev/null
touch "$stamp"
