#!/usr/bin/env bash
# System packages the test suite needs: graphviz (DAG pictures) and a real
# single-node SLURM with accounting (slurm-wlm, munge, slurmdbd, mariadb-server).
# Idempotent; installs nothing when everything is already there. The tests start
# and stop their own daemons; nothing is left running or enabled at boot.
set -euo pipefail

packages=(graphviz slurm-wlm munge slurmdbd mariadb-server)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages present: ${packages[*]}"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Keep the distribution's service scripts from starting daemons during install.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
