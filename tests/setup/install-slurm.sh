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
if [ "$(id -u)" -ne 0 ]; then
    echo "install-slurm: need root to run apt-get (or install slurm-wlm and munge yourself)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Keep the packages' own services from starting inside containers and CI: the tests start their own.
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
    slurm-wlm munge
