#!/usr/bin/env bash
# Runs the README's first command, unchanged but for the repository's
# address and `sudo` (root here), in a fresh Debian 12 root file system:
# system Python with its PEP 668 marker, nothing of the project's installed.
#
#   sudo .ci/fresh_debian12.sh [ROOTFS_DIR]
#
# Needs root, debootstrap and network access to deb.debian.org and PyPI.
# Clones the checkout's HEAD into the new system and prints the command's
# output; exits with its status. ROOTFS_DIR (default /tmp/debian12) is
# reused when it holds a system already.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-/tmp/debian12}

if [ ! -x "$root/usr/bin/apt-get" ]; then
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
fi
for fs in proc sys dev; do
  mountpoint -q "$root/$fs" || mount --bind "/$fs" "$root/$fs"
done
trap 'for fs in proc sys dev; do umount "$root/$fs" || true; done' EXIT
cp /etc/resolv.conf "$root/etc/resolv.conf"
# A proxy's certificate authority, where this machine trusts one.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt \
    "$root/usr/local/share/ca-certificates/"
  cert=(PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
else
  cert=()
fi

rm -rf "$root/srv/sslprune_jax.git" "$root/root/sslprune_jax"
git clone -q --bare . "$root/srv/sslprune_jax.git"

command=$(awk '/^## Quick start/ {q = 1} q && /^```bash/ {getline; print; exit}' \
  README.md)
command=${command//<repository-url>//srv/sslprune_jax.git}
command=${command//sudo /}
echo "+ $command"
chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb "${cert[@]}" \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /bin/bash -c "cd /root && $command"

# PEP 668 holds there: the system pip refuses to install.
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /bin/bash -c 'apt-get install -y -qq python3-pip >/dev/null &&
    python3 -m pip install tqdm 2>&1 | grep -q externally-managed-environment'
echo 'PEP 668: the system pip refused to install, as expected.'
