# Windows plugins and their wine proof.  The Makefile includes this file:
#     include mk/windows.mk
# after it defines PYTHON, VPY and STAMP.
#
#   make windows-deps     install mingw-w64 and wine (Debian/Ubuntu, idempotent)
#   make plugins-windows  native/plugins/*.c -> build/plugins-win/*.dll (= python build.py --target windows)
#   make check-windows    run native/harness/win_harness.c under wine on build/plugins-win/double_xp.dll
#   make test-windows     tests/test_windows.py (pure logic, pecheck on real DLLs, the harness under wine)

WIN_CC      ?= x86_64-w64-mingw32-gcc
WIN_OBJDIR  := build/harness-win
WIN_HARNESS := $(WIN_OBJDIR)/win_harness.exe
# Debian's `wine` wrapper, else the 64-bit loader itself (package wine64 alone)
WINE        ?= $(shell command -v wine 2>/dev/null || command -v wine64 2>/dev/null || echo /usr/lib/wine/wine64)
# a prefix of our own: a wine 8 prefix is ~700 MB, made once (about 6-10 s) and kept under build/
WINEPREFIX_DIR ?= $(CURDIR)/build/wineprefix

.PHONY: windows-deps plugins-windows harness-windows check-windows test-windows

windows-deps:
	bash .ci/windows-deps.sh

plugins-windows: $(STAMP)
	$(VPY) build.py --target windows

$(WIN_HARNESS): native/harness/win_harness.c native/include/hotload.h
	mkdir -p $(WIN_OBJDIR)
	$(WIN_CC) -std=c11 -O1 -municode -Wall -Wextra -Werror -Inative/include $< -o $@

harness-windows: $(WIN_HARNESS)

check-windows: plugins-windows $(WIN_HARNESS)
	WINEPREFIX=$(WINEPREFIX_DIR) WINEDEBUG=-all WINEDLLOVERRIDES='mscoree,mshtml=' \
	    $(WINE) $(WIN_HARNESS) build/plugins-win/double_xp.dll $(WIN_OBJDIR)/private

test-windows: $(STAMP)
	$(VPY) -m pytest -q tests/test_windows.py
