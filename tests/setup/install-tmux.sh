#!/bin/sh
# tmux for tests/test_watch.py, which drives `watch` in a real pseudo-terminal (a tmux pane) and
# reads its screen back: Debian's package, installed when missing (see apt.sh).
set -eu
if command -v tmux >/dev/null 2>&1; then
    exit 0
fi
echo "install-tmux: tmux not found; installing it from Debian's packages"
. "$(cd "$(dirname "$0")" && pwd)/apt.sh"
apt_install tmux
