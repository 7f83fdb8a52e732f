# maou-sweep: `make demo` runs a real sweep on the bundled corpus; `make test` runs the test suite.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install system-packages test test-fast lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q torch==2.13.0
	$(VENV)/bin/python -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

# the Debian packages the tests use (engine, browser, PostgreSQL, ss, ps): installed where this runs as
# root with apt-get, else one line names what is missing
system-packages:
	@bash scripts/system-packages.sh

# Test processes (pytest-xdist): the suite is sized for a 2-core machine. The tests of a file run in
# one process (--dist loadfile), so a module's fixtures (a real sweep its tests read, a Ray session)
# run once. TEST_WORKERS=0 runs every test in this one.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# everything: unit tests, real sweeps through the CLI, Ray sessions, real servers
test: $(STAMP) system-packages
	$(VENV)/bin/python -m pytest -q $(XDIST)

# unit tests only (no real sweeps through the CLI, no Ray)
test-fast: $(STAMP) system-packages
	$(VENV)/bin/python -m pytest -q $(XDIST) -m "not slow and not ray"

lint: $(STAMP)
	$(VENV)/bin/ruff check maou tests bench
	$(VENV)/bin/mypy

demo: $(STAMP)
	$(VENV)/bin/sweep run sweeps/demo.yaml
	$(VENV)/bin/sweep export sweeps/demo.yaml

bench: $(STAMP)
	$(VENV)/bin/python bench/data_build.py
	$(VENV)/bin/python bench/train_throughput.py

clean:
	rm -rf $(VENV) data/build studies/*.db results/*/
