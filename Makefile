# Two commands do everything on a fresh machine: `make generate` and `make test`.
# `make test-fast` skips the tests marked slow (training runs, torchrun, QM9 processing): under
# two minutes on two cores, for the edit-test loop; `make test` (CI) runs everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast generate clean

install: $(STAMP)

# The CPU build of torch is pinned first on machines without CUDA: an unpinned torch
# resolves to a multi-GB CUDA build that a laptop or CI runner does not need.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[test,relax]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

generate: install
	$(VENV)/bin/symdiff generate --n 100 --out mols.sdf

clean:
	rm -rf $(VENV) build *.egg-info
