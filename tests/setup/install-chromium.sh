#!/bin/sh
# chromium for tests/test_report.py, which opens the HTML report in headless Chromium: Debian's package, installed when missing (see apt.sh).
set -eu
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
echo "install-chromium: chromium not found; installing it from Debian's packages"
. "$(cd "$(dirname "$0")" && pwd)/apt.sh"
apt_install chromium
