#!/bin/sh
# Slurm for the integration tests: slurm-wlm (slurmctld, slurmd, the client commands) and munge, from
# Debian's packages, installed when missing. Needs root (as here and in CI), no terminal: the install runs
# with DEBIAN_FRONTEND=noninteractive and without starting the packages' services (the tests start their
# own slurmctld, slurmd and munged with their own state folders; see tests/slurm/conftest.py).
set -eu

missing=""
for program in slurmctld slurmd sbatch squeue scancel munged; do
    command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing="$missing $program"
done
if [ -z "$missing" ]; then
    exit 0
fi
echo "install-slurm: missing:$missing; installing slurm-wlm and munge from Debian's packages"
. "$(cd "$(dirname "$0")" && pwd)/apt.sh"
apt_install slurm-wlm munge
