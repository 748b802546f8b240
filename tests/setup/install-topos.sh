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
. "$(cd "$(dirname "$0")" && pwd)/apt.sh"
apt_install apache2 libapache2-mod-php8.2 php8.2-mysql mariadb-server mariadb-client patch
