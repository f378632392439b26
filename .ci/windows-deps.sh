#!/usr/bin/env bash
# What the Windows build and its wine proof need, on Debian/Ubuntu:
#   gcc-mingw-w64-x86-64  the cross compiler (build.py --target windows, the harness)
#   wine64, wine          runs the harness and the .dll plugins (wine gives the `wine` command)
# tests/test_windows.py skips with a reason without them.
set -euo pipefail
cd "$(dirname "$0")"
bash apt-install.sh windows-deps gcc-mingw-w64-x86-64 wine64 wine
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 && x86_64-w64-mingw32-gcc --version | head -n 1
export WINEDEBUG=-all  # no "wine32 is missing" hint: the 64-bit harness needs no wine32
command -v wine >/dev/null 2>&1 && wine --version || /usr/lib/wine/wine64 --version || true
