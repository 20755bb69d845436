# Two commands do everything on a fresh machine: `make generate` and `make test`.
# (`make test` also installs chromium for the report's browser tests where it can: `make browser`.)
# `make test-fast` skips the tests marked slow (training runs, torchrun, QM9 processing): under
# two minutes on two cores, for the edit-test loop; `make test` (CI) runs everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser test test-fast generate clean

install: $(STAMP)

# The CPU build of torch is pinned first on machines without CUDA: an unpinned torch
# resolves to a multi-GB CUDA build that a laptop or CI runner does not need.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[test,relax]'
	touch $(STAMP)

# The report's browser tests (tests/test_report_browser.py) open the HTML report in Debian's
# headless chromium. Installed here when missing and this is root with apt-get; any failure
# only means those tests are skipped, with the reason, so it never stops the test run.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver for the report's browser tests"; \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
	      >/dev/null 2>&1 || echo "could not install chromium: the report's browser tests will be skipped"; \
	  else \
	    echo "chromium not found (needs root and apt-get to install): the report's browser tests will be skipped"; \
	  fi; \
	fi

test: install browser
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

generate: install
	$(VENV)/bin/symdiff generate --n 100 --out mols.sdf

clean:
	rm -rf $(VENV) build *.egg-info
