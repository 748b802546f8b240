# Sourced by the install-*.sh scripts that take a Debian package: apt_install PACKAGE... installs them
# without a terminal (DEBIAN_FRONTEND=noninteractive) and without starting their services (a temporary
# /usr/sbin/policy-rc.d), waiting up to 5 minutes for apt's lock. Needs root. Not run by install.sh itself.

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$0: need root to run apt-get (or install $* yourself)" >&2
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
    trap 'if [ -n "$made_policy" ]; then rm -f "$policy"; fi' EXIT
    apt-get -o DPkg::Lock::Timeout=300 update -q
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "$@"
}
