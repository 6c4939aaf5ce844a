# Every target installs what it needs into .venv, so a fresh clone with
# only python3 on the machine can run `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install demo test clean

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

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
