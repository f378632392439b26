# hotload: two commands on a fresh machine
#   make demo   - set up the virtualenv, build the plugins, run the demo (main job)
#   make test   - set up the virtualenv, build the plugins, run lint, the docs build and the test suite

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all venv plugins test lint docs bench demo demo-interactive clean

all: plugins

$(STAMP): pyproject.toml setup.py
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

test: plugins lint docs
	$(VPY) -m pytest -q

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
