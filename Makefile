# Two commands do all the set-up on a fresh machine: `make demo` and `make test`; `make lab`
# opens the tutorials in JupyterLab.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo lab test lint bench stress strip clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

# Widget state saved in the notebooks: a wheel installs jupyter-config/lab-settings/pgvz_nb.json
# into JupyterLab's overrides.d (pyproject.toml, data-files), but setuptools' editable installs
# leave data files out (pypa/setuptools#3399), so the editable venv gets the same file here.
LAB_SETTING := $(VENV)/share/jupyter/lab/settings/overrides.d/pgvz_nb.json
$(LAB_SETTING): jupyter-config/lab-settings/pgvz_nb.json $(VENV)/.core
	mkdir -p $(dir $@) && cp $< $@

# Tests also need: the original timescale_vector, to test against (--no-deps, or it
# builds psycopg2 from source; psycopg2-binary and asyncpg come with the test extra), and
# the sentence-transformers reference of the default model (CPU torch first, pinned, so
# pip takes the local CPU build instead of a multi-GB CUDA one).
$(VENV)/.test: $(VENV)/.core $(LAB_SETTING)
	$(PIP) install -e '.[test,lab,browser]'
	$(PIP) install --no-deps 'timescale-vector==0.0.7'
	$(PIP) install 'torch==2.13.0'
	$(PIP) install -e '.[sentence-transformers]'
	@# a real browser for the widget test: Debian's chromium (Playwright's own download cannot work here)
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi
	touch $@

$(VENV)/.bench: $(VENV)/.test
	touch $@

# JupyterLab and what every tutorial imports: the `lab` extra, as `pip install "pgvz_nb[lab]"`
$(VENV)/.lab: $(VENV)/.core
	$(PIP) install -e '.[lab]'
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/pgvz demo

# The tutorials in JupyterLab on http://127.0.0.1:$(PORT)/lab. The launcher starts the embedded
# server first (initdb on the first run; PGVZ_DATA_DIR / PGVZ_DSN as everywhere) and holds it
# while JupyterLab runs, so kernels attach to a running server; it stops when the last one
# exits. No token: the server listens on 127.0.0.1 only. LAB_ARGS goes to `jupyter lab`.
PORT ?= 8888
define LAB_LAUNCHER
import os, shlex, signal, subprocess, sys
import pgvz_nb as pgvz
port = os.environ["PORT"]
db = pgvz.connect()
print(f"PostgreSQL ready: {db}", flush=True)
pgvz.default_embedder().embed_query("warm up")
args = [sys.argv[1], "lab", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={sys.argv[2]}", "--IdentityProvider.token="]
if os.geteuid() == 0:
    args.append("--allow-root")
args += shlex.split(os.environ.get("LAB_ARGS", ""))
# Ctrl-C reaches JupyterLab itself, which asks first; SIGTERM/SIGHUP are passed on. Either
# way this process waits for it, so that its exit can stop the server.
labs = []
signal.signal(signal.SIGINT, lambda *_: None)
for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, lambda signum, _: [p.send_signal(signum) for p in labs])
print(f"JupyterLab: http://127.0.0.1:{port}/lab (no token, 127.0.0.1 only; Ctrl-C twice stops it)", flush=True)
labs.append(subprocess.Popen(args))
sys.exit(labs[0].wait())
endef
export LAB_LAUNCHER

lab: $(VENV)/.lab $(LAB_SETTING)
	PORT=$(PORT) $(PY) -c "$$LAB_LAUNCHER" $(VENV)/bin/jupyter $(CURDIR)/notebooks

# lint and types of the package, the test suite, then every tutorial notebook top to bottom (nbmake)
test: $(VENV)/.test lint
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest --nbmake --nbmake-kernel=python3 --durations=0 -p no:cacheprovider notebooks/

# ruff and mypy on the package (configured in pyproject.toml); make test runs this first
lint: $(VENV)/.test
	$(VENV)/bin/ruff check pgvz_nb
	$(VENV)/bin/mypy

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
