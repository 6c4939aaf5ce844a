# Every target installs what it needs into .venv, so a fresh clone with
# only python3 on the machine can run `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install demo test test-compat soak bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(PY) manage.py migrate --noinput
	@echo
	@echo "Chat page: http://$(HOST):$(PORT)/"
	@echo "Metrics:   http://$(HOST):$(PORT)/metrics"
	@echo
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) example_project.asgi:application

# pytest exits 5 when it collected no tests; make treats that as a failure.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The unit and end-to-end tests on Python 3.10 with Django 4.2 and on
# Python 3.12 with Django 6.0, each in its own virtualenv.
test-compat:
	scripts/test-compat.sh

# The storm of tests/storm/test_storm.py at a larger size than `make test`
# runs. STORM_CONNECTIONS, STORM_CONCURRENCY, STORM_TIME_LIMIT and
# STORM_SEED, from the environment or the make command line, override it.
soak: install
	STORM_CONNECTIONS=$${STORM_CONNECTIONS:-20000} \
	STORM_CONCURRENCY=$${STORM_CONCURRENCY:-100} \
	STORM_TIME_LIMIT=$${STORM_TIME_LIMIT:-600} \
	$(PY) -m pytest tests/storm/test_storm.py $(PYTEST_ARGS)

# Runs about 20 minutes on a quiet machine; BENCH_QUICK=1 shrinks every
# size so the whole run takes about two minutes. See docs/benchmarks.md.
# The instruction counts need valgrind: installed here when running as
# root on Debian, and skipped with a message otherwise.
bench: install
	$(PY) -m pip install --quiet 'matplotlib>=3.7' 'psutil>=5.9'
	command -v valgrind >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends valgrind; }
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .venv-compat build dist *.egg-info .pytest_cache
