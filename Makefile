# hotload: two commands on a fresh machine
#   make demo   - set up the virtualenv, build the plugins, run the demo (main job)
#   make test   - set up the virtualenv, build the plugins, run lint, the docs build and the test suite

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all venv plugins test test-slow lint docs bench demo demo-interactive clean

all: plugins

$(STAMP): pyproject.toml setup.py src/hotload/_engine/_crouter.c
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Compiles native/plugins/*.c -> build/plugins/*.so (temp name + rename).
plugins: $(STAMP)
	$(VPY) build.py

LINTED := src tests benchmarks build.py setup.py

lint: $(STAMP)
	$(VPY) -m ruff check $(LINTED)
	$(VPY) -m ruff format --check $(LINTED)
	$(VPY) -m mypy

# The documentation (docs/, mkdocs.yml) with every link and reference checked; offline.
docs: $(STAMP)
	$(VPY) -m mkdocs build --strict --site-dir build/site

# The suite runs with the compiled router, then the routing tests again with the
# Python router (HOTLOAD_PURE_PYTHON=1): same semantics, both proven.
ROUTING_TESTS := tests/test_router.py tests/test_swap.py tests/test_soak.py \
	tests/test_load_and_call.py tests/test_core.py tests/test_rollback_and_safety.py \
	tests/test_bad_input.py tests/test_contract_events.py

test: plugins lint docs
	$(VENV)/bin/hotload --version
	$(VPY) -m pytest -q --durations=12
	HOTLOAD_PURE_PYTHON=1 $(VENV)/bin/hotload --version
	HOTLOAD_PURE_PYTHON=1 $(VPY) -m pytest -q $(ROUTING_TESTS)

# Long runs left out of make test: the 1000-swap activity soak with its C side under ASan (~1 min),
# and memory over 1000 isolated reloads and 1000 fresh builds after their warm-ups (minutes).
test-slow: plugins
	HOTLOAD_SLOW=1 $(VPY) -m pytest -q tests/test_contract_soak.py
	HOTLOAD_SLOW=1 $(VPY) -m pytest -q tests/test_memory.py

bench: plugins
	$(VPY) benchmarks/run.py

demo: plugins
	$(VENV)/bin/hotload demo

demo-interactive: plugins
	$(VENV)/bin/hotload demo --interactive

clean:
	rm -rf build $(VENV) .pytest_cache

# Windows: make windows-deps | plugins-windows | check-windows | test-windows
include mk/windows.mk
