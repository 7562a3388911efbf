# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requant-installed

.PHONY: setup test demo bench clean

setup: $(STAMP)

# torch goes in first and pinned: its CPU build lies on this machine's disk, while an
# unpinned torch pulled in by another package would download several GB of CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m requant.tools.cli demo

bench: $(STAMP)
	$(PY) -m requant.tools.bench.rewrite_scaling

clean:
	rm -rf $(VENV) build *.egg-info
