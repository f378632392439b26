#!/usr/bin/env bash
# The second toolchains the SDK, isolation and docs tests build plugins with, on Debian/Ubuntu:
#   clang      C and C++ (clang, clang++): tests/test_sdk.py checks that a mismatched export is a
#              compile error under clang as well as gcc/g++/mingw
#   golang-go  Go c-shared plugins: tests/test_isolation.py proves a Go plugin really unloads
#              when isolated (benchmarks/proof_go_unload.py: 200 reloads), and
#              tests/test_doc_examples.py builds and runs docs/guide/go-and-rust.md's Go plugin
#   rustc      Rust plugins: tests/test_doc_examples.py builds and runs the same page's Rust
#              plugin (a static library linked with its desc.c), and
#              tests/test_rollback_and_safety.py checks that a Rust cdylib is retained unless
#              declared unload safe
set -euo pipefail
cd "$(dirname "$0")"
bash apt-install.sh sdk-deps clang golang-go rustc
command -v clang >/dev/null 2>&1 && clang --version | head -n 1 || true
command -v go >/dev/null 2>&1 && go version || true
command -v rustc >/dev/null 2>&1 && rustc --version || true
