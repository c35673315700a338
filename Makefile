# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench stress strip clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

# Tests also need: the original timescale_vector, to test against (--no-deps, or it
# builds psycopg2 from source; psycopg2-binary and asyncpg come with the test extra), and
# the sentence-transformers reference of the default model (CPU torch first, pinned, so
# pip takes the local CPU build instead of a multi-GB CUDA one).
$(VENV)/.test: $(VENV)/.core
	$(PIP) install -e '.[test,notebook,browser]'
	$(PIP) install --no-deps 'timescale-vector==0.0.7'
	$(PIP) install 'torch==2.13.0'
	$(PIP) install -e '.[sentence-transformers]'
	@# a real browser for the widget test: Debian's chromium (Playwright's own download cannot work here)
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi
	touch $@

$(VENV)/.bench: $(VENV)/.test
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/pgvz demo

# the test suite, then every tutorial notebook top to bottom (nbmake)
test: $(VENV)/.test
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest --nbmake --nbmake-kernel=python3 --durations=0 -p no:cacheprovider notebooks/

# strip notebook outputs before committing (CI checks that they are stripped)
strip: $(VENV)/.test
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

# every benchmark side by side, JSON + PNG in benchmarks/results/, then the goals table
bench: $(VENV)/.bench
	$(PY) benchmarks/write_overhead.py
	$(PY) benchmarks/model_efficiency.py
	$(PY) benchmarks/sync_throughput.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/search_latency.py --vectors real
	$(PY) benchmarks/search_latency.py --vectors synthetic
	$(PY) benchmarks/report.py

# The randomized stress tests: 10,000 changes, 4 workers, a worker SIGKILLed every 400 changes;
# the DDL property test at size (100 sequences of 80 statements, three roles); a statement
# whose keys pass 1 GB (about a minute for its data alone).
stress: $(VENV)/.test
	$(PY) -m pytest -m slow -s tests/test_model_based.py tests/test_ddl_property.py tests/test_first_rule.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
