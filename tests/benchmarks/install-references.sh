#!/bin/sh
# The two tools the issue quotes as references for bench_local.py, installed when missing: GNU parallel
# (Debian's package; needs root) and QCG-PilotJob (PyPI `qcg-pilotjob`, into its own virtual environment
# .deps/qcg-venv, as it brings pyzmq and psutil). Called by `make bench`. Best effort: a tool that cannot
# be installed is reported as "not measured" by the bench, which runs anyway.
set -u
qcg_version=0.14.2
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.deps/qcg-venv"
stamp="$venv/.qcg-pilotjob-$qcg_version"

if ! command -v parallel >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-references: installing GNU parallel from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o DPkg::Lock::Timeout=300 parallel >/dev/null ||
            echo "install-references: could not install GNU parallel" >&2
    else
        echo "install-references: GNU parallel missing (needs root and apt-get to install)" >&2
    fi
fi

if [ ! -e "$stamp" ] || [ ! -x "$venv/bin/qcg-pm-service" ]; then
    echo "installing qcg-pilotjob $qcg_version into $venv"
    rm -rf "$venv"
    if python3 -m venv "$venv" &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "qcg-pilotjob==$qcg_version"; then
        touch "$stamp"
    else
        echo "install-references: could not install qcg-pilotjob" >&2
    fi
fi
exit 0
