# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

# The original timescale_vector, to test and benchmark against: --no-deps, or it
# builds psycopg2 from source (psycopg2-binary and asyncpg come with the test extra).
$(VENV)/.test: $(VENV)/.core
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps 'timescale-vector==0.0.7'
	touch $@

$(VENV)/.bench: $(VENV)/.test
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/pgvz demo

test: $(VENV)/.test
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.bench
	$(PY) benchmarks/write_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
