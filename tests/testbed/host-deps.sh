#!/usr/bin/env bash
# Install the Debian packages that the tests and the demo need on this machine.
# Safe to re-run: installs only what is missing; says what it adds.
set -euo pipefail

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "host-deps: run as root (apt-get is needed), or install by hand: $*" >&2
    exit 1
  fi
}

# shellcheck source=/dev/null
. /etc/os-release
codename=${VERSION_CODENAME:-unknown}

# prometheus: promtool (metrics, rule and dashboard tests); python3-prometheus-client: the jobs' metrics
# when they run under /usr/bin/python3 (bench), as on the hosts.
packages=(podman runc debootstrap rsync openssh-client openssh-server acl attr
          python3-venv iproute2 shellcheck curl git make prometheus python3-prometheus-client)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# Borg >= 1.4.0 (the oldest grus.backup is tested with). bookworm's main archive has 1.2.4: take
# bookworm-backports (1.4.0) there; trixie and later carry a recent one.
borg_ok() {
  command -v borg >/dev/null 2>&1 || return 1
  v=$(borg --version 2>/dev/null | awk '{print $2}')
  [ "$(printf '%s\n1.4.0\n' "$v" | sort -V | head -n1)" = "1.4.0" ]
}

apt_updated=0
apt_update() { [ "$apt_updated" = 1 ] || { apt-get update -qq; apt_updated=1; }; }

if [ ${#missing[@]} -gt 0 ]; then
  need_root "${missing[*]}"
  echo "host-deps: installing ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! borg_ok; then
  need_root borgbackup
  if [ "$codename" = bookworm ]; then
    list=/etc/apt/sources.list.d/grus-backup-bookworm-backports.list
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "host-deps: adding $list (borg >= 1.4.0 comes from bookworm-backports)"
      echo "deb http://deb.debian.org/debian bookworm-backports main" > "$list"
      apt_updated=0
    fi
    apt_update
    echo "host-deps: installing borgbackup from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports borgbackup >/dev/null
  else
    apt_update
    echo "host-deps: installing borgbackup"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq borgbackup >/dev/null
  fi
  borg_ok || { echo "host-deps: borg >= 1.4.0 could not be installed" >&2; exit 1; }
fi
