#!/usr/bin/env bash
# Install the Debian packages the SLURM tests need (tests/slurm_cluster.py
# starts its own munged, mariadbd, slurmdbd, slurmctld and slurmd from them,
# with private configs, sockets and ports) plus graphviz for the DAG plots.
#
# Idempotent: exits early when everything is installed already.  It never
# leaves the distribution's daemons running: while installing, a temporary
# /usr/sbin/policy-rc.d (exit 101) forbids invoke-rc.d to start them, and on
# a host booted with systemd the units of packages *this run* installed are
# disabled and stopped again.  A pre-existing policy-rc.d is left alone.
#
# Usage: scripts/install-system-deps.sh   (as root, or with passwordless sudo)
set -euo pipefail

PACKAGES=(slurm-wlm munge slurmdbd mariadb-server graphviz)
# systemd units shipped by those packages
UNITS=(munge.service slurmctld.service slurmd.service slurmdbd.service mariadb.service)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        echo "install-system-deps.sh: needs root (or sudo)" >&2
        exit 1
    fi
fi

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system-deps.sh: already installed: ${PACKAGES[*]}"
    exit 0
fi
echo "install-system-deps.sh: installing ${missing[*]}"

# Units that are active before we start must be left alone afterwards.
was_active=()
systemd_running=0
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemd_running=1
    for unit in "${UNITS[@]}"; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then
            was_active+=("$unit")
        fi
    done
fi

policy=/usr/sbin/policy-rc.d
own_policy=0
cleanup() {
    if [ "$own_policy" -eq 1 ]; then
        "${SUDO[@]}" rm -f "$policy"
    fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from scripts/install-system-deps.sh\nexit 101\n' |
        "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    own_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${PACKAGES[@]}"

if [ "$systemd_running" -eq 1 ]; then
    for unit in "${UNITS[@]}"; do
        skip=0
        for active in "${was_active[@]+"${was_active[@]}"}"; do
            [ "$unit" = "$active" ] && skip=1
        done
        if [ "$skip" -eq 0 ] && systemctl cat "$unit" >/dev/null 2>&1; then
            "${SUDO[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
        fi
    done
fi

for bin in munged slurmctld slurmd slurmdbd sbatch sacct sacctmgr mariadb-install-db dot; do
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
        echo "install-system-deps.sh: $bin missing after install" >&2
        exit 1
    fi
done
echo "install-system-deps.sh: done"
