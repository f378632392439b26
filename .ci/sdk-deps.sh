#!/usr/bin/env bash
# Install the second C/C++ compiler the SDK tests build plugins with, on Debian/Ubuntu:
#   golang-go  Go c-shared plugins: tests/test_isolation.py proves a Go plugin really unloads
#              when isolated (skipped without it)
#   clang  C and C++ (clang, clang++): tests/test_sdk.py checks that a mismatched export is a
#          compile error under clang as well as gcc/g++/mingw (those tests skip without it)
# Idempotent: does nothing (not even apt-get update) when it is installed.
# Without apt-get it only says so: the clang cases of tests/test_sdk.py then skip with a reason.
set -euo pipefail

packages=(clang golang-go)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "sdk-deps: already installed: ${packages[*]}"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "sdk-deps: no apt-get here; install ${missing[*]} by hand;" \
         "the clang cases of tests/test_sdk.py skip without it" >&2
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "sdk-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q -o Dpkg::Use-Pty=0 "${missing[@]}"
clang --version | head -n 1
