#!/usr/bin/env bash
# Everything `make test` and `make demo` need, on a fresh Debian 12 machine:
#   1. PostgreSQL 15 server binaries, wal2json and pg_recvlogical (apt, as root only);
#   2. a virtualenv in .venv with pgtape installed editable with its test and lint extras.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PG_MAJOR=15
PG_LIB=/usr/lib/postgresql/$PG_MAJOR
PG_PACKAGES=(postgresql-$PG_MAJOR postgresql-$PG_MAJOR-wal2json postgresql-client-$PG_MAJOR)
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.pgtape-installed  # newer than pyproject.toml = the install is current

say() { echo "bootstrap: $*" >&2; }

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

# Tests run their own throwaway clusters: keep Debian's postgresql-common from creating and
# starting a system cluster "main". Its createcluster.conf only exists once postgresql-common is
# installed (and ucf manages it), so install that first and edit it, as the official image does.
disable_main_cluster() {
    local conf=/etc/postgresql-common/createcluster.conf
    [[ -f $conf ]] || apt_install postgresql-common
    if ! grep -Eq '^[[:space:]]*create_main_cluster[[:space:]]*=[[:space:]]*false' "$conf"; then
        sed -i -E 's/^[[:space:]]*#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf"
        grep -q '^create_main_cluster = false' "$conf" || echo 'create_main_cluster = false' >>"$conf"
    fi
}

missing_packages() {
    local -a pkgs=()
    if [[ ! -x $PG_LIB/bin/postgres || ! -f $PG_LIB/lib/wal2json.so || ! -x $PG_LIB/bin/pg_recvlogical ]]; then
        pkgs+=("${PG_PACKAGES[@]}")
    fi
    if ! command -v "$PYTHON" >/dev/null; then
        pkgs+=(python3 python3-venv)
    elif ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        pkgs+=(python3-venv)  # Debian splits venv/ensurepip out of python3
    fi
    echo "${pkgs[@]}"
}

install_system_packages() {
    local -a pkgs
    read -r -a pkgs <<<"$(missing_packages)"
    ((${#pkgs[@]})) || return 0
    if [[ $(id -u) -ne 0 ]]; then
        say "missing system packages; as root, run:"
        say "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${pkgs[*]}"
        say "then run this again."
        exit 1
    fi
    say "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    if [[ " ${pkgs[*]} " == *" postgresql-$PG_MAJOR "* ]]; then
        disable_main_cluster
    fi
    apt_install "${pkgs[@]}"
}

setup_venv() {
    # A venv without a working pip (e.g. made before python3-venv was installed) is rebuilt.
    if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        say "creating $VENV"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
        rm -f "$STAMP"
    fi
    if [[ ! -f $STAMP || pyproject.toml -nt $STAMP ]]; then
        say "installing pgtape (editable, with test and lint extras) into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test,lint]'
        touch "$STAMP"
    fi
}

install_system_packages
setup_venv
