#!/bin/sh
# tmux for tests/test_watch.py, which drives `watch` in a real pseudo-terminal (a tmux pane) and
# reads its screen back, from Debian's packages, installed when missing.
# Needs root (as here and in CI) and no terminal; no package service is started (a temporary policy-rc.d).
set -eu

if command -v tmux >/dev/null 2>&1; then
    exit 0
fi
echo "install-tmux: tmux not found; installing it from Debian's packages"
if [ "$(id -u)" -ne 0 ]; then
    echo "install-tmux: need root to run apt-get (or install tmux yourself)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=yes
fi
cleanup() { if [ -n "$made_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
apt-get -o DPkg::Lock::Timeout=300 update -q
apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    tmux
