#!/usr/bin/env bash
# apt-install.sh LABEL PACKAGE...: install the Debian/Ubuntu packages that are missing.
# Idempotent: does nothing (not even apt-get update) when all are installed.
# Without apt-get it only says so and succeeds: the tests that need them skip with a reason.
set -euo pipefail

label=$1
shift
missing=()
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "$label: already installed: $*"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$label: no apt-get here; install ${missing[*]} (or equivalents) by hand;" \
         "the tests that need them skip without them" >&2
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "$label: installing ${missing[*]}"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q -o Dpkg::Use-Pty=0 "${missing[@]}"
