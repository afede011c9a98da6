# Two commands on a fresh clone:  `make demo` (train on the embedded dataset)  and  `make test`.
# Both create .venv when it is missing. torch is pinned so that pip takes the local CPU build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: demo test lint install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install  # runs/demo is the demo's own folder: a second `make demo` replaces it (--overwrite)
	$(VENV)/bin/graph-mtl train --out runs/demo --overwrite

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
