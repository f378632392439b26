#!/usr/bin/env bash
# The second toolchains the SDK and isolation tests build plugins with, on Debian/Ubuntu:
#   clang      C and C++ (clang, clang++): tests/test_sdk.py checks that a mismatched export is a
#              compile error under clang as well as gcc/g++/mingw
#   golang-go  Go c-shared plugins: tests/test_isolation.py proves a Go plugin really unloads
#              when isolated (benchmarks/proof_go_unload.py: 200 reloads)
set -euo pipefail
cd "$(dirname "$0")"
bash apt-install.sh sdk-deps clang golang-go
command -v clang >/dev/null 2>&1 && clang --version | head -n 1 || true
