# hotload: two commands on a fresh machine
#   make demo   - set up the virtualenv, build the plugins, run the demo (main job)
#   make test   - set up the virtualenv, build the plugins, run lint, the docs build and the test suite
#   make test-slow - the soak tests that make test leaves out (CI runs both)

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all venv plugins test test-steps test-slow test-slow-steps lint docs bench demo \
	demo-interactive clean

all: plugins

$(STAMP): pyproject.toml setup.py src/hotload/_engine/_crouter.c src/hotload/_state/_convert.c \
	src/hotload/_process/_spin.c
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
# Python router (HOTLOAD_PURE_PYTHON=1): same semantics, both proven.  Of the contract
# suites, those whose assertions depend on the router: events (the emit loop, in C or
# Python), types (struct arguments, the router's "bad arguments" SignatureError across a
# layout change) and wire parity (the router's error for every kind of bad argument, in
# process and isolated); services and handles only make plain calls through it.  Events
# and types run again in process only (ROUTING_SKIP): a router calls an isolated
# version's proxy as it calls a C function, the same gate and the same error mapping,
# and what a proxy raises for a bad argument is wire parity's isolated side, kept.
ROUTING_CORE := tests/test_router.py tests/test_swap.py tests/test_contract_events.py \
	tests/test_contract_types.py tests/test_wire_parity.py tests/test_metrics.py \
	tests/test_canary.py tests/test_release.py tests/test_replay.py
# The rest of the routed-call suites make test runs once, with the compiled router; the
# Python router's pass over them is in make test-slow (CI runs both), so that make test
# stays under 5 minutes here.
ROUTING_MORE := tests/test_soak.py tests/test_load_and_call.py tests/test_core.py \
	tests/test_rollback_and_safety.py tests/test_bad_input.py tests/test_quarantine.py
ROUTING_TESTS := $(ROUTING_CORE) $(ROUTING_MORE)
ROUTING_SKIP := not ((test_contract_events or test_contract_types) and isolated)

# make test leaves out the tests marked soak (long loops, many swaps, each with a short
# variant that stays in); make test-slow runs them.  CI (.ci/run) runs both.
# Three pytest-xdist workers on the two cores (much of the suite waits on worker processes,
# compilers, Redis and sockets: a third worker fills those waits; one make test here took
# 324 s with three against 364 s with two, both beside other jobs), each test its own unit
# of work, except the tests that share a module-scoped fixture such as the wine prefix: one
# xdist_group per module, built once (tests/conftest.py); `make test XDIST=` runs serially.
XDIST  ?= -n 3 --dist loadgroup
PYTEST := $(VPY) -m pytest -q $(XDIST)
# Plugins the tests compile, kept by content (source, flags, SDK header, compiler) for
# every pass of this and later runs: the same source is compiled by many tests.
export HOTLOAD_TEST_CACHE ?= $(CURDIR)/build/test-cache

# Prints the total time (setup, lint, docs and both pytest passes) at the end.
test:
	@t0=$$(date +%s); $(MAKE) --no-print-directory test-steps; rc=$$?; \
	echo "make test: $$(( $$(date +%s) - t0 )) s in all (exit $$rc)"; exit $$rc

test-steps: plugins lint docs
	$(VENV)/bin/hotload --version
	$(PYTEST) -m "not soak" --durations=12
	HOTLOAD_PURE_PYTHON=1 $(VENV)/bin/hotload --version
	HOTLOAD_PURE_PYTHON=1 $(PYTEST) -m "not soak" -k "$(ROUTING_SKIP)" $(ROUTING_CORE)

# The soak tests (~5 min on 2 shared cores): the full activity soak, the 1000-swap soak with its
# C side under ASan (HOTLOAD_SLOW=1), 128 CLI processes at once, the fleet demo...;
# the routing ones again with the Python router, and the routed-call suites make test runs
# with the compiled router only (ROUTING_MORE).
test-slow: plugins
	@t0=$$(date +%s); $(MAKE) --no-print-directory test-slow-steps; rc=$$?; \
	echo "make test-slow: $$(( $$(date +%s) - t0 )) s in all (exit $$rc)"; exit $$rc

test-slow-steps:
	HOTLOAD_SLOW=1 $(PYTEST) -m soak --durations=12
	HOTLOAD_SLOW=1 HOTLOAD_PURE_PYTHON=1 $(PYTEST) -m soak $(ROUTING_TESTS)
	HOTLOAD_PURE_PYTHON=1 $(PYTEST) -m "not soak" $(ROUTING_MORE)

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
