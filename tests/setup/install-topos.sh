#!/bin/sh
# The real ToPoS 4.1 for the integration tests needs Apache with mod_php, PHP's MySQL driver and MariaDB,
# from Debian's packages, installed when missing (plus patch, for ToPoS's PHP 8 fixes). Needs root (as
# here and in CI), no terminal: the install runs with DEBIAN_FRONTEND=noninteractive and without starting
# the packages' services (the tests start a private mariadbd and Apache; see tests/servers/topos.py).
set -eu

missing=""
for program in apache2 mariadbd mariadb mariadb-install-db patch; do
    command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing="$missing $program"
done
for file in /usr/lib/apache2/modules/libphp8.2.so /etc/php/8.2/mods-available/mysqli.ini; do
    [ -e "$file" ] || missing="$missing $file"
done
if [ -z "$missing" ]; then
    exit 0
fi
echo "install-topos: missing:$missing; installing Apache, mod_php, php-mysql and MariaDB from Debian's packages"
if [ "$(id -u)" -ne 0 ]; then
    echo "install-topos: need root to run apt-get (or install apache2 libapache2-mod-php8.2 php8.2-mysql" \
        "mariadb-server mariadb-client patch yourself)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Keep the packages' own services (Apache on :80, MariaDB on :3306) from starting: the tests start their own.
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
    apache2 libapache2-mod-php8.2 php8.2-mysql mariadb-server mariadb-client patch
