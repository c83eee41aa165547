# The two commands of the README: `make demo` (the main job on its embedded default) and
# `make test`. Both create the virtual environment on first use. `make docs` builds the manual.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast test-core lint docs test-slow test-gpu clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dip demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Material for MkDocs prints a banner about MkDocs 2 on every build unless told not to
export NO_MKDOCS_2_WARNING = 1

# the benchmark tables regenerated from benchmarks/results, then the site built strictly into site/
docs: $(STAMP)
	$(PY) -m benchmarks.tables && $(VENV)/bin/mkdocs build --strict --site-dir site

# ruff, then the manual built strictly (a broken link or a missing page fails), then the suite
test: lint
	$(VENV)/bin/mkdocs build --strict --site-dir site
	$(PY) -m pytest

# everything but the S3 server, Ray, multi-node clusters and torch.compile: a few minutes
test-fast: lint
	$(PY) -m pytest -m 'not slow and not gpu and not integration and not cluster and not compile'

test-core: $(STAMP)
	$(PY) -m pytest tests/core -m 'not slow and not gpu and not compile'

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu

clean:
	rm -rf $(VENV) out site
