#!/usr/bin/env bash
# Install what the Windows build and its wine proof need, on Debian/Ubuntu:
#   gcc-mingw-w64-x86-64  the cross compiler (build.py --target windows, the harness)
#   wine64, wine          runs the harness and the .dll plugins (wine gives the `wine` command)
# Idempotent: does nothing (not even apt-get update) when all are installed.
# Without apt-get it only says so: tests/test_windows.py then skips with a reason.
set -euo pipefail

packages=(gcc-mingw-w64-x86-64 wine64 wine)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "windows-deps: already installed: ${packages[*]}"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "windows-deps: no apt-get here; install ${missing[*]} (or equivalents) by hand;" \
         "the Windows tests skip without them" >&2
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "windows-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q -o Dpkg::Use-Pty=0 "${missing[@]}"
x86_64-w64-mingw32-gcc --version | head -n 1
export WINEDEBUG=-all  # no "wine32 is missing" hint: the 64-bit harness needs no wine32
command -v wine >/dev/null 2>&1 && wine --version || /usr/lib/wine/wine64 --version
